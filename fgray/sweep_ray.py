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
    from fgray.ray_compat import quiet_data_console

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset INFO lines and progress-bar notices
    quiet_data_console()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return True


# Ray's notices a new user reads as errors, each harmless here: logger (and its children) -> message fragments.
KNOWN_NOTICES = {
    # The local cluster's token auth turning itself on (it stays on).
    "ray": ("Token authentication is enabled",),
    # Optuna's grid sampler calls ``Study.stop`` once every grid point is out; Ray logs the RuntimeError, the
    # sweep goes on.
    "ray.tune.search.optuna.optuna_search": ("`Study.stop`",),
    # After a stop signal Tune names its own restore call and the unfinished trials; fgray prints its --resume
    # command instead.
    "ray.tune.tune": ("Tuner.restore(", "Trials did not complete"),
}


class _DropNotices(logging.Filter):
    """Drops a record whose logger is one of ``notices``' (or under it) and whose message holds one of that
    logger's fragments."""

    def __init__(self, notices: dict[str, tuple[str, ...]]):
        super().__init__()
        self.notices = notices

    def filter(self, record: logging.LogRecord) -> bool:
        fragments = [f for name, frags in self.notices.items()
                     if record.name == name or record.name.startswith(name + ".") for f in frags]
        return not (fragments and any(fragment in record.getMessage() for fragment in fragments))


def _quiet_known_notices() -> None:
    """Keeps ``KNOWN_NOTICES`` off the console (``--verbose`` keeps them). The filter sits on the handlers of
    Ray's "ray" logger, which every ``ray.*`` logger (Ray Data's aside) passes its records to: no private Ray
    module is named. A raylet's "N PYTHON worker processes have been started" notice still prints (every trial starts a
    few processes: its driver, a DDP trial's workers and Ray Data actors): Ray 2.60 prints it straight to
    stdout, with no logger or public switch (ray-project/ray#63800)."""
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _DropNotices) for f in handler.filters):  # a second start filters once
            handler.addFilter(_DropNotices(KNOWN_NOTICES))
