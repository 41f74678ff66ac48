"""What a sweep's results were produced from, stored beside them: the resolved sweep (after
``--set`` and ``--profile``) and the fgray version, in ``<storage>/<name>/sweep.json``. A ``--resume``
compares the sweep it is given with the stored one: trials that continue under other settings would
mix two experiments in one table, so a change is refused (one line naming what changed) unless
forced. Also the check that results go where every node of a cluster can write them.
"""
from __future__ import annotations

import json
from importlib import metadata
from typing import Any

from fgray import storage as store
from fgray.config import SweepConfig
from fgray.validation import ConfigError

RECORD_FILE = "sweep.json"
STORAGE_VARIABLE = "FGRAY_STORAGE"  # the default results location, e.g. set by cluster.yaml for every job


def fgray_version() -> str:
    try:
        return metadata.version("fgray")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def record(sweep: SweepConfig, storage: str) -> None:
    """Write the sweep's record (first start; a forced resume rewrites it)."""
    data = {"fgray": fgray_version(), "sweep": sweep.model_dump(mode="json", exclude={"storage"})}
    store.write_bytes(store.join(storage, sweep.name, RECORD_FILE), json.dumps(data, indent=2).encode())


def changes(sweep: SweepConfig, storage: str) -> list[str]:
    """``key: stored -> given`` for every setting that differs from the stored record (none stored:
    a sweep from before records existed, nothing to compare)."""
    path = store.join(storage, sweep.name, RECORD_FILE)
    if not store.exists(path):
        return []
    stored = json.loads(store.read_bytes(path))["sweep"]
    given = json.loads(json.dumps(sweep.model_dump(mode="json", exclude={"storage"})))
    return [f"{key}: {_short(a)} -> {_short(b)}" for key, a, b in _differences(stored, given)]


def check_resume(sweep: SweepConfig, storage: str, force: bool) -> None:
    different = changes(sweep, storage)
    if different and not force:
        raise ConfigError(f"--resume: the sweep differs from the one stored in {storage}/{sweep.name} "
                          f"({'; '.join(different)}); pass --force to continue it with these settings")


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [(prefix, a, b)]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_shared_storage(sweep: SweepConfig, storage: str, alive_nodes: int, cluster_gpus: int) -> None:
    """Results in a folder of this machine are invisible to other nodes: a trial on a worker node
    would fail at its first checkpoint upload, after burning its GPU time. Refused when the cluster
    has several nodes, pins trial drivers (``driver_resources``: a head/worker split) or asks for
    GPUs it does not have yet (the autoscaler will add nodes). A shared mount says so with file://."""
    refuse_local_storage(storage, cluster_reason(sweep, alive_nodes, cluster_gpus))


def refuse_local_storage(storage: str, why: str | None) -> None:
    """``check_shared_storage`` given why the sweep runs on a cluster (None: on this machine)."""
    if not store.is_uri(storage) and why is not None:
        raise ConfigError(f"storage {storage} is a folder of this machine, but the sweep runs on a cluster "
                          f"({why}): pass --storage s3://BUCKET/PREFIX (or set {STORAGE_VARIABLE}), or "
                          f"file:///shared/mount for a folder every node mounts")


def cluster_reason(sweep: SweepConfig, alive_nodes: int, cluster_gpus: int) -> str | None:
    """Why the sweep's trials may run on another node than this one (None: they run here): the cluster
    has several nodes, trial drivers are pinned (``driver_resources``: a head/worker split), or the sweep
    asks for GPUs the cluster does not have yet (the autoscaler will add nodes). The rule of every
    "a path of this machine" refusal: results storage, and the paths trials read (``fgray.node_paths``)."""
    res = sweep.resources
    if alive_nodes > 1:
        return f"{alive_nodes} nodes"
    if res.driver_resources:
        return "driver_resources pins trial drivers to the head"
    if res.gpus_per_worker > 0 and cluster_gpus == 0:
        return "GPU workers the cluster does not have yet"
    return None
