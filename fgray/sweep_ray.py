"""The sweep's Ray: joining the cluster named by RAY_ADDRESS or starting a local one, and keeping
its console to fgray's lines (the notices a new user reads as errors, each harmless here, are
dropped unless ``--verbose``)."""
from __future__ import annotations

import logging
import os


def start_ray(verbose: bool = False) -> bool:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local Ray;
    False when this process was connected already. ``verbose``: keep the notices
    ``_quiet_known_notices`` drops."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the dashboard's Train tab
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's tables off: ProgressPrinter prints instead
    # Tune snapshots its state whenever a trial checkpoints (num_to_keep=1) and warns when that is
    # often: short laptop epochs always trigger it, and a local snapshot costs milliseconds.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    if not verbose:
        _quiet_known_notices()
    # Worker logs stay in Ray's log folder / dashboard: the console shows one line per trial-epoch.
    ray.init(log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}})
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset INFO lines and progress-bar notices
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return True


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


WORKER_POOL_NOTICE = "worker processes have been started on node"


def _quiet_known_notices() -> None:
    """Ray notices a new user reads as errors, each harmless here (``--verbose`` keeps them): the
    local cluster's token auth turning itself on (it stays on), Optuna's grid sampler calling
    ``Study.stop`` once every grid point is out (Ray logs the RuntimeError; the sweep goes on), and
    a raylet's "N PYTHON worker processes have been started" (every trial starts a few processes:
    its driver, a DDP trial's workers and Ray Data actors; the raylet's own log keeps the line), and
    after Ctrl-C Tune's ``Tuner.restore`` hint and its list of the trials the stop left unfinished."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _DropMessages("Token authentication is enabled"))
    logging.getLogger("ray.tune.search.optuna.optuna_search").addFilter(_DropMessages("`Study.stop`"))
    # After a stop signal Tune names its own restore call; fgray prints its --resume command instead.
    logging.getLogger("ray.tune.tune").addFilter(_DropMessages("Tuner.restore(", "Trials did not complete"))
    _drop_console_lines(WORKER_POOL_NOTICE)


def _drop_console_lines(fragment: str) -> None:
    """Drop the lines holding ``fragment`` from what Ray's driver prints for the cluster (job errors:
    its listener thread prints them straight to stdout, through ``print_to_stdstream``, with no
    logger or option to filter them); every other line, a real error included, still prints."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "fgray_drops", None) == fragment:
        return

    def filtered(data: dict, ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if fragment not in line]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    filtered.fgray_drops = fragment
    ray_worker.print_to_stdstream = filtered
