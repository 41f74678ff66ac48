"""Trial bookkeeping, without Ray: where a trial's Train run and checkpoints live, which trials
finished, with what metrics and checkpoint, and which are best.

The sweep (``fgray.sweep``), the trial driver (``fgray.trial``) and the test evaluation all read
these records; ``fgray.report`` only renders them. A Tune ``ResultGrid`` is accepted as it is:
``collect_trials`` reads four attributes of each result and never imports Ray.
"""
from __future__ import annotations

import json
import math
import posixpath
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence

import pyarrow.fs as pafs

from fgray import storage

if TYPE_CHECKING:  # annotations only: importing config would pull the method registry in
    from fgray.config import SweepConfig

POINT_KEY = "point"  # param-space key of a ``search.points`` row index
# Param a seed-repeating searcher sets to the repeat's index (ray.tune.search.repeater.TRIAL_INDEX,
# repeated so bookkeeping needs no Ray; a test keeps the two equal). It becomes ``train.seed``.
REPEAT_KEY = "__trial_index__"
SEED_KEY = "train.seed"
# The name fgray.checkpoint.save gives its meta file; read here through pyarrow (checkpoints may
# sit in cloud storage), and repeated so bookkeeping needs no torch (tests keep the two equal).
META_FILE = "meta.json"
SUMMARY_FILE = "summary.json"  # written by fgray.report.write_outputs into <storage>/<sweep name>/
# A trial whose settings cannot train reports this key (the one-line reason) as its last result and
# ends: Tune has no exception type it does not retry, and a retry would fail the same way (trial.py).
SETTINGS_ERROR = "error/settings"


class TrialResult(Protocol):
    """What ``collect_trials`` reads of a trial's outcome (a ``ray.tune.Result`` has these)."""

    metrics: dict[str, Any] | None  # last reported metrics (Tune adds ``trial_id``)
    path: str | None  # the trial's folder in the experiment
    config: dict[str, Any] | None  # the sampled params
    error: BaseException | None  # why it failed, or None


def overrides_from(params: dict[str, Any], sweep: SweepConfig) -> dict[str, Any]:
    """Tune's sampled params (dotted keys, maybe a table-row index or a repeat index) -> dotted overrides."""
    return _overrides(params, sweep.search.points, sweep.train.seed)


def _overrides(params: dict[str, Any], points: Sequence[dict[str, Any]], base_seed: int = 0) -> dict[str, Any]:
    overrides = {k: v for k, v in params.items() if k not in (POINT_KEY, REPEAT_KEY)}
    if POINT_KEY in params:
        overrides.update(points[int(params[POINT_KEY])])
    if REPEAT_KEY in params:  # the i-th repeat of a sampled configuration runs seed train.seed + i
        overrides[SEED_KEY] = base_seed + int(params[REPEAT_KEY])
    return overrides


def objective(sweep: SweepConfig) -> tuple[str, str]:
    """(metric, mode) Tune ranks trials by: the search metric, or without a validation split (nothing to
    compare while trials run) the epoch count."""
    return (sweep.search.metric, sweep.search.mode) if sweep.has_validation else ("epoch", "max")


def settings_failure(error: BaseException, metric: str, mode: str) -> dict[str, Any]:
    """The last result of a trial whose settings cannot train: the reason (``SETTINGS_ERROR``) and the
    worst value of Tune's metric, which Tune requires in every result and a searcher then ranks last
    (Optuna refuses NaN). No ``epoch``: ASHA ignores a result without its time attribute."""
    return {SETTINGS_ERROR: error_line(error), metric: -math.inf if mode == "max" else math.inf}


def train_run_dir(storage: str, sweep_name: str) -> str:
    """Where the Train runs (and so the checkpoints) of a sweep's trials live."""
    return f"{storage.rstrip('/')}/{sweep_name}"


def train_run_name(trial_id: str) -> str:
    return f"train-{trial_id}"


def latest_checkpoint(storage: str, sweep_name: str, trial_id: str, trial_dir: str | None = None) -> str | None:
    """The newest checkpoint folder of a trial, or None: in its Train run (a TorchTrainer trial) or,
    given ``trial_dir`` (the basename of Tune's trial folder), there (a trial trained in-process).

    ``storage`` is a local folder or a URI (``s3://...``, ``gs://...``, ``file:///...``); a
    checkpoint in a URI storage is returned as a URI, which ``ray.train.Checkpoint`` opens.
    """
    found: dict[str, int] = {}
    for name in (train_run_name(trial_id), trial_dir):
        if name:
            found.update(_checkpoints(f"{train_run_dir(storage, sweep_name)}/{name}"))
    return max(found, key=found.__getitem__) if found else None


def _checkpoints(folder: str) -> dict[str, int]:
    """checkpoint_* folders in ``folder`` -> the epoch each finished, for the complete ones."""
    folder = storage.absolute(folder)
    filesystem, base = storage.filesystem(folder)
    entries = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    folders = [e for e in entries
               if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")]
    found = {}
    for entry in folders:
        meta = _complete_meta(filesystem, entry.path)
        if meta is not None:
            found[posixpath.join(folder, entry.base_name)] = int(meta["epoch"])
    return found


def _complete_meta(filesystem: pafs.FileSystem, folder: str) -> dict[str, Any] | None:
    """A checkpoint folder's meta when the folder is whole: Ray may be mid-way through writing it,
    or a node lost mid-upload may have left it cut short (an empty meta, a truncated state)."""
    try:
        meta = _read_json(filesystem, posixpath.join(folder, META_FILE))
    except (FileNotFoundError, ValueError):
        return None
    sizes = meta.get("sizes", {})
    infos = filesystem.get_file_info([posixpath.join(folder, name) for name in sizes])
    return meta if all(info.size == size for info, size in zip(infos, sizes.values())) else None


def resolve_checkpoint(path: str) -> str | None:
    """The checkpoint folder that ``path`` names (``backbone.pretrained``): ``path`` itself when it
    holds a meta file, or for a sweep's output folder (``<storage>/<sweep name>``, holding
    summary.json) the checkpoint of its best trial, else of its only trial with one, so a chained
    sweep can name a stable path. ``path``: a local folder (returned absolute) or a URI pyarrow reads
    (``s3://``, ``gs://``, ``file://``); a sweep's checkpoint is returned as its summary names it (a
    URI for a sweep whose storage is a bucket, a local path for a local one). None when ``path`` is
    neither; ValueError when the sweep's choice is ambiguous or its checkpoint is gone."""
    path = storage.absolute(path)
    if _is_file(storage.join(path, META_FILE)):
        return path
    if not _is_file(storage.join(path, SUMMARY_FILE)):
        return None
    summary = json.loads(storage.read_bytes(storage.join(path, SUMMARY_FILE)))
    trials = [t for t in summary.get("trials", []) if t.get("checkpoint")]
    chosen = [t for t in trials if t["trial_id"] == summary.get("best")] or (trials if len(trials) == 1 else [])
    if not chosen:
        raise ValueError(f"{path}: {len(trials)} trials with a checkpoint and no best one in {SUMMARY_FILE}; "
                         f"name one trial's checkpoint_* folder instead")
    folder = chosen[0]["checkpoint"].removeprefix("file://")
    if not _is_file(storage.join(folder, META_FILE)):
        raise ValueError(f"{path}: trial {chosen[0]['trial_id']}'s checkpoint {folder} is not a "
                         f"checkpoint folder (no {META_FILE})")
    return folder


def _is_file(path: str) -> bool:
    filesystem, inner = storage.filesystem(path)
    return filesystem.get_file_info(inner).type == pafs.FileType.File


def checkpoint_epoch(checkpoint: str | None, filesystem: pafs.FileSystem | None = None) -> int:
    """How many epochs the checkpoint (a folder or URI from ``latest_checkpoint``; a path in
    ``filesystem`` when given) has finished, from its meta file alone; 0 for None, so a trial
    without one starts from the beginning."""
    if checkpoint is None:
        return 0
    filesystem, base = (filesystem, checkpoint) if filesystem is not None else storage.filesystem(checkpoint)
    return int(_read_json(filesystem, posixpath.join(base, META_FILE))["epoch"])


def _read_json(filesystem: pafs.FileSystem, path: str) -> dict[str, Any]:
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read())


def collect_trials(results: Iterable[TrialResult], storage: str, sweep_name: str, epochs: int,
                   points: Sequence[dict[str, Any]] = (), base_seed: int = 0) -> list[dict[str, Any]]:
    """One record per trial: the params it ran, status, last metrics and checkpoint.

    A trial that reported its last epoch (all its stages: its ``trial_epochs``, else ``epochs``) is
    ``completed``, one stopped earlier (ASHA) is ``stopped``. ``points`` are the sweep's
    ``search.points`` rows that a ``POINT_KEY`` param indexes; ``base_seed`` its ``train.seed``.
    """
    trials = []
    for result in results:
        metrics = dict(result.metrics or {})
        # Tune puts trial_id in every result; the folder name is only a last resort (it holds the
        # id, but the params after it may contain underscores too).
        trial_id = metrics.get("trial_id") or posixpath.basename(str(result.path).rstrip("/"))
        params = dict(result.config or {})
        refused = metrics.get(SETTINGS_ERROR)  # ended by its own settings, not retried (settings_failure)
        status = ("error" if result.error or refused
                  else "completed" if metrics.get("epoch") == metrics.get("trial_epochs", epochs) else "stopped")
        trials.append({
            "trial_id": trial_id,
            "params": params,
            "overrides": _overrides(params, points, base_seed),
            "status": status,
            "error": error_line(result.error) or refused,
            "traceback": error_tail(result.error),  # a refusal's line says it all
            "epochs": metrics.get("epoch") if finite(metrics.get("epoch")) else None,
            "wall_s": metrics.get("time_total_s"),  # Tune's: the trial's training time, all its epochs
            "metrics": {k: v for k, v in metrics.items()
                        if k.startswith(("val/", "train/")) and finite(v)},
            "checkpoint": latest_checkpoint(storage, sweep_name, trial_id,
                                            posixpath.basename(str(result.path).rstrip("/")) if result.path else None),
        })
    return trials


def error_line(error: BaseException | str | None) -> str | None:
    """The root cause of a trial failure in one line (Ray wraps it in several tracebacks)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines
              if "Error: " in line and not line.startswith(("ray.", "File "))]
    return (causes or lines or [type(error).__name__])[-1]


def error_tail(error: BaseException | str | None, lines: int = 8) -> list[str]:
    """The last ``lines`` lines of a trial failure's innermost traceback: where it was raised. Tune's
    error.txt appends one section per failure ("Failure # N ..."); the last one is the trial's end."""
    if error is None:
        return []
    text = str(error).rsplit("Failure # ", 1)[-1]
    text = text.rsplit("Traceback (most recent call last):", 1)[-1]  # the root cause's own frames
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return kept[-lines:]


def finite(value: Any) -> bool:
    """A real number that is not NaN/inf (what JSON, tables and rankings can use)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def rank_trials(trials: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Trials with ``metric`` and a checkpoint, best first (``mode`` "max" or "min")."""
    scored = [t for t in trials if metric in t["metrics"] and t["checkpoint"]]
    return sorted(scored, key=lambda t: t["metrics"][metric], reverse=mode == "max")



# ------------------------------------------------------------------------------------------ seeds


def row_key(overrides: dict[str, Any]) -> str:
    """The configuration a trial ran, without its seed: trials of one row differ only by seed."""
    return json.dumps({k: v for k, v in overrides.items() if k != SEED_KEY}, sort_keys=True, default=str)


def seed_rows(trials: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Trials grouped into rows (same configuration, different seeds), best row first by the mean of
    ``metric`` over its seeds that reported it. Each row: ``key``, ``overrides`` (without the seed),
    ``trials``, ``seeds``, ``values`` (per seed), ``mean``, ``std`` (sample std; 0 for one seed)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        groups.setdefault(row_key(trial["overrides"]), []).append(trial)
    rows = []
    for key, members in groups.items():
        values = [t["metrics"][metric] for t in members if metric in t["metrics"]]
        rows.append({"key": key, "overrides": json.loads(key), "trials": members,
                     "seeds": [t["overrides"].get(SEED_KEY) for t in members], "values": values,
                     **mean_std(values)})
    scored = sorted((r for r in rows if r["values"]), key=lambda r: r["mean"], reverse=mode == "max")
    return scored + [r for r in rows if not r["values"]]


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "std"} of ``values``: the sample standard deviation (n - 1), 0 for one value, NaN for none."""
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan}
    mean = sum(values) / n
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0}


def within_noise(row: dict[str, Any], best: dict[str, Any], alpha: float = 0.05) -> bool:
    """True when ``row``'s seeds do not differ from ``best``'s at level ``alpha`` (Welch's t-test);
    rows with fewer than two seeds on either side cannot be told apart, so they count as within noise."""
    if row is best:
        return True
    if len(row["values"]) < 2 or len(best["values"]) < 2:
        return True
    import warnings

    from scipy.stats import ttest_ind

    if row["std"] == 0 and best["std"] == 0:
        return row["mean"] == best["mean"]
    with warnings.catch_warnings():  # identical seeds in one row: scipy warns, the test still holds
        warnings.simplefilter("ignore", RuntimeWarning)
        return bool(ttest_ind(row["values"], best["values"], equal_var=False).pvalue >= alpha)


def seed_table(trials: list[dict[str, Any]], baseline: dict[str, Any] | None, metric: str, mode: str,
               test_metric: str = "recall@1", untrained: dict[str, dict[str, Any]] | None = None
               ) -> list[dict[str, Any]]:
    """One entry per row (configuration over its seeds), best first: validation ``metric`` and test
    ``test_metric`` mean +- std, the untrained backbone of the same seeds, the paired gain (trained
    minus untrained, seed by seed) and whether the row is within noise of the best one.
    ``trials`` carry their ``test`` metrics; ``baseline`` is ``evaluate_best``'s (per seed in "seeds");
    ``untrained``: its per-trial untrained models, for rows whose method or backbone is not the
    baseline's (trial id -> metrics)."""
    rows = seed_rows(trials, metric, mode)
    per_seed = {int(s): b for s, b in (baseline or {}).get("seeds", {}).items()}
    table = []
    for row in rows:
        tested = [t for t in row["trials"] if t.get("test")]
        seeds = [t["overrides"].get(SEED_KEY) for t in tested]
        tests = [t["test"][test_metric] for t in tested]
        own = untrained or {}  # a trial's own untrained model (a leaderboard's rows)
        paired_with = [own[t["trial_id"]][test_metric] if t["trial_id"] in own
                       else per_seed[s][test_metric] if s in per_seed else (baseline or {}).get(test_metric)
                       for t, s in zip(tested, seeds)]
        paired = [a - b for a, b in zip(tests, paired_with) if b is not None]
        table.append({
            "overrides": row["overrides"], "seeds": row["seeds"], "trials": [t["trial_id"] for t in row["trials"]],
            "val": {"values": row["values"], **mean_std(row["values"])},
            "test": {"seeds": seeds, "values": tests, **mean_std(tests)},
            "untrained": {"values": [u for u in paired_with if u is not None],
                          **mean_std([u for u in paired_with if u is not None])},
            "gain": {"values": paired, **mean_std(paired), "min": min(paired) if paired else math.nan},
            "within_noise_of_best": bool(rows[0]["values"]) and within_noise(row, rows[0]) if row["values"] else False,
        })
    return table
