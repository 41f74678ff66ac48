"""The body of tests/test_two_node.py, in its own process (it starts and stops a Ray cluster of its
own, which must not touch the test session's Ray): a head with no CPUs and the ``TRAIN_DRIVER``
resource, as cluster.yaml's, plus one worker node with its own raylet (Ray's ``cluster_utils``:
each node a separate ``ray start``-style raylet on this machine). Results go to the S3 bucket the
test serves. Writes what happened to a JSON file:

1. a sweep with a folder of this machine as storage is refused (exit 2) before any trial starts;
2. a spot loss: the worker node is removed (its raylet and every process on it killed) once the
   trial has checkpointed, a new node joins, and the trial finishes from its checkpoint;
3. a 2-worker DDP MoCo v2 trial (gloo) runs, its driver on the head and its workers on the worker
   node, and the state DDP neither syncs nor broadcasts (queue, key encoder) agrees across ranks.

    python tests/two_node_cluster.py s3://bucket/prefix OUT.json
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "sweeps", "demo.yaml")
ON_HEAD = ["--set", "resources.driver_resources={TRAIN_DRIVER: 1}"]
SHORT = ["--profile", "smoke", "--set", "search.space={}", "--set", "search.num_samples=1",
         "--set", "search.scheduler.name=none", "--set", "eval.baseline=false"]


def committed(storage: str, sweep: str) -> bool:
    """Whether Tune has taken in a checkpointed epoch of the sweep's trial: its result.json (written
    when Tune processes a result, after the checkpoint it carries is registered) has a line. A node
    lost between a checkpoint's upload and that moment costs the epoch: the retry starts from the
    checkpoint before."""
    import pyarrow.fs as pafs

    from fgray.storage import filesystem

    fs, base = filesystem(f"{storage}/{sweep}")
    entries = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return any(e.path.endswith("/result.json") and e.size for e in entries)


def epoch_ends(checkpoint: str) -> list[tuple[int, float]]:
    """(epoch, when it ended) of every result the trial reported, in order (Tune's result.json, beside
    the checkpoints): a trial resumed from a checkpoint reports no epoch twice."""
    from fgray.storage import read_bytes

    lines = read_bytes(f"{checkpoint.rsplit('/', 1)[0]}/result.json").decode().splitlines()
    return [(r["epoch"], r["time/epoch_end"]) for r in map(json.loads, filter(None, lines))]


def summary(storage: str, sweep: str) -> dict:
    from fgray.storage import read_bytes

    return json.loads(read_bytes(f"{storage}/{sweep}/summary.json"))


def main(storage: str, out: str) -> None:
    from ray.cluster_utils import Cluster

    from fgray.sweep import main as sweep

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"TRAIN_DRIVER": 2}, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    os.environ["RAY_ADDRESS"] = cluster.address
    report: dict = {}
    try:
        with tempfile.TemporaryDirectory() as local:
            started = time.perf_counter()
            report["local_storage_exit"] = sweep([DEMO, *SHORT, *ON_HEAD, "--storage", local])
            report["local_storage_s"] = time.perf_counter() - started

        # The sweep runs in a thread; this thread plays the cloud: it takes the worker node away once
        # Tune has taken in a checkpointed epoch, then the autoscaler's replacement joins (node
        # processes are started from the main thread, as Ray's cluster_utils expects).
        outcome: dict = {}
        started = time.perf_counter()
        run = threading.Thread(target=lambda: outcome.update(exit=sweep(
            [DEMO, *SHORT, *ON_HEAD, "--set", "name=spot", "--set", "train.epochs=8",
             "--set", "train.steps_per_epoch=6", "--storage", storage])), daemon=True)
        run.start()
        deadline = time.monotonic() + 300
        while run.is_alive() and time.monotonic() < deadline and not committed(storage, "spot"):
            time.sleep(0.2)
        lost = run.is_alive()
        if lost:
            report["lost_at"] = time.time()
            cluster.remove_node(worker)  # its raylet and every process on it, as a reclaimed spot node
            time.sleep(3)
            cluster.add_node(num_cpus=2)
        run.join(timeout=600)
        report["spot_exit"] = outcome.get("exit")
        report["spot_s"] = time.perf_counter() - started
        report["node_lost"] = lost
        report["spot"] = summary(storage, "spot")["trials"][0]
        report["spot_epochs"] = epoch_ends(report["spot"]["checkpoint"])

        started = time.perf_counter()
        ddp = ["--set", "name=ddp", "--set", "train.epochs=3", "--set", "resources.workers_per_trial=2",
               "--set", "resources.cpus_per_worker=0.5", "--set", "resources.max_concurrent_trials=1"]
        report["ddp_exit"] = sweep([DEMO, *SHORT, *ON_HEAD, *ddp, "--storage", storage])
        report["ddp_s"] = time.perf_counter() - started
        report["ddp"] = summary(storage, "ddp")["trials"][0]
    finally:
        with open(out, "w") as f:
            json.dump(report, f, default=str)
        import ray

        ray.shutdown()  # cluster_utils refuses to remove the node this driver is attached to
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
