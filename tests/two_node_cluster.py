"""The body of tests/test_two_node.py, in its own process (it starts and stops a Ray cluster of its
own, which must not touch the test session's Ray). The head is Ray's ``cluster_utils`` head with no
CPUs and the ``TRAIN_DRIVER`` resource, as cluster.yaml's; the worker node is ``ray start --address``
in a process group of its own, with its own temp dir and, where this machine allows it (root and
``unshare``), its own mount namespace: a private tmpfs over the fgray data cache, so that neither
node sees what the other writes there (the built-in synthetic set is generated on each node). Results
go to the S3 bucket the test serves. Writes what happened to a JSON file:

1. the two nodes' caches are apart: a file the head writes is invisible on the worker node, and
   the reverse;
2. a sweep with a folder of this machine as storage is refused (exit 2) before any trial starts, and
   so is one whose data root is a folder of the head (results in the bucket);
3. a spot loss: the worker node's processes are killed once the trial has checkpointed, a new node
   joins, and the trial finishes from its checkpoint; then a spot reclaim as cluster.yaml's watcher
   reports it (``ray drain-node`` with the preemption reason, then the node goes) with
   ``max_failures: 0``: Tune does not count a preempted node's loss, and the trial finishes;
4. a 2-worker DDP MoCo v2 trial (gloo), its driver on the head and its workers on the worker node:
   the driver is killed once an epoch is in, Tune retries it, the retried driver resumes the Train
   run's checkpoint, and the state DDP neither syncs nor broadcasts (queue, key encoder) agrees across
   ranks.

    python tests/two_node_cluster.py s3://bucket/prefix OUT.json
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "sweeps", "demo.yaml")
# A DDP trial's driver on the head (cluster.yaml's TRAIN_DRIVER); a one-worker trial trains in its own
# process, which needs CPUs: on the worker node, as on cluster.yaml's GPU nodes.
ON_HEAD = ["--set", "resources.driver_resources={TRAIN_DRIVER: 1}"]
SHORT = ["--profile", "smoke", "--set", "search.space={}", "--set", "search.num_samples=1",
         "--set", "search.scheduler.name=none", "--set", "eval.baseline=false"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def can_unshare() -> bool:
    """Whether this process may give a child its own mount namespace (root, util-linux's unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


class WorkerNode:
    """``ray start --address`` for a second node: its own temp dir, its own session (the whole group
    is killed for a spot loss) and, with ``private``, a tmpfs over each folder of ``private``."""

    def __init__(self, address: str, private: list[str], namespace: bool, num_cpus: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="fgray-node-")
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        start = [ray, "start", f"--address={address}", f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}",
                 "--disable-usage-stats", "--block"]
        if namespace:
            mounts = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in private)
            start = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     f"{mounts} && exec \"$@\"", "node", *start]
        self.log = open(os.path.join(self.temp_dir, "ray-start.log"), "w")
        self.process = subprocess.Popen(start, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """Every process of the node at once, as a reclaimed spot instance."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_for_nodes(count: int, timeout: float = 120) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker node did not join within {timeout:.0f} s")
        time.sleep(0.5)


def caches_apart(cache: str) -> dict:
    """Write a file into the data cache here (the head) and one on the worker node (a task pinned
    there): whether each node sees the other's."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head_file = os.path.join(cache, "written-on-head")
    open(head_file, "w").close()
    worker = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))

    @ray.remote(num_cpus=0)
    def on_worker(folder: str) -> bool:
        open(os.path.join(folder, "written-on-worker"), "w").close()
        return os.path.exists(os.path.join(folder, "written-on-head"))

    seen_there = ray.get(on_worker.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(worker, soft=False)).remote(cache))
    return {"head_file_seen_on_worker": seen_there,
            "worker_file_seen_on_head": os.path.exists(os.path.join(cache, "written-on-worker"))}


def results_file(storage: str, sweep: str) -> tuple | None:
    """(filesystem, path) of the sweep's one trial's result.json in Tune's trial folder, once it
    has a line (Tune writes it when it takes in a result, after the checkpoint the result carries is
    registered); None before. A node lost between a checkpoint's upload and that moment costs the
    epoch: the retry starts from the checkpoint before."""
    import pyarrow.fs as pafs

    from fgray.storage import filesystem

    fs, base = filesystem(f"{storage}/{sweep}")
    entries = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    found = [e.path for e in entries if e.path.endswith("/result.json") and e.size
             and e.path.count("/") == base.count("/") + 2]  # <sweep>/<trial>/result.json
    return (fs, found[0]) if found else None


def exists(path: str) -> bool:
    from fgray.storage import exists as stored

    return stored(path)


def committed(storage: str, sweep: str) -> bool:
    return results_file(storage, sweep) is not None


def epoch_ends(storage: str, sweep: str) -> list[tuple[int, float]]:
    """(epoch, when it ended) of every result the trial reported, in order: a trial resumed from a
    checkpoint reports no epoch twice."""
    fs, path = results_file(storage, sweep)
    with fs.open_input_stream(path) as stream:
        lines = stream.read().decode().splitlines()
    return [(r["epoch"], r["time/epoch_end"]) for r in map(json.loads, filter(None, lines))]


def summary(storage: str, sweep: str) -> dict:
    from fgray.storage import read_bytes

    return json.loads(read_bytes(f"{storage}/{sweep}/summary.json"))


def trial_driver_pids() -> list[int]:
    """PIDs of the live Tune trial actors (a DDP trial's driver), from Ray's actor table."""
    from ray._private import state  # the actor table without the dashboard's state API

    return [a["Pid"] for a in state.actors().values()
            if a["ActorClassName"].endswith("ImplicitFunc") and a["State"] == "ALIVE" and a["Pid"]]


def run_and_interrupt(argv: list[str], storage: str, name: str, interrupt) -> tuple[dict, bool]:
    """The sweep in a thread; this thread plays the cloud: once Tune has taken in a checkpointed
    epoch it calls ``interrupt`` (a node lost, a process killed). Returns (outcome, interrupted)."""
    from fgray.sweep import main as sweep

    outcome: dict = {}
    run = threading.Thread(target=lambda: outcome.update(exit=sweep(argv)), daemon=True)
    run.start()
    deadline = time.monotonic() + 300
    while run.is_alive() and time.monotonic() < deadline and not committed(storage, name):
        time.sleep(0.2)
    interrupted = run.is_alive() and interrupt()
    run.join(timeout=300)
    return outcome, interrupted


def main(storage: str, out: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from fgray.sweep import main as sweep

    cache = tempfile.mkdtemp(prefix="fgray-cache-")
    os.environ["FGRAY_CACHE"] = cache  # the head's; the worker node gets a tmpfs over it
    namespace = can_unshare()
    # The dashboard as on a real head: Ray Train's placement-group cleaner asks its state API whether
    # a killed driver's Train controller is gone (without it, the dead run's CPUs stay reserved).
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"TRAIN_DRIVER": 2}, "include_dashboard": True,
        "dashboard_port": free_port()})  # the test session's Ray holds the default port
    nodes = [WorkerNode(cluster.address, [cache], namespace)]
    os.environ["RAY_ADDRESS"] = cluster.address
    report: dict = {"namespace": namespace}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        wait_for_nodes(1)
        report.update(caches_apart(cache))

        with tempfile.TemporaryDirectory() as local:
            started = time.perf_counter()
            report["local_storage_exit"] = sweep([DEMO, *SHORT, "--storage", local])
            report["local_storage_s"] = time.perf_counter() - started
        # Shards in a folder of the head: a trial on the worker node would find nothing there. Refused
        # before the data is even read (the folder is empty), so before any trial.
        with tempfile.TemporaryDirectory() as local:
            started = time.perf_counter()
            report["local_data_exit"] = sweep([DEMO, *SHORT, "--set", "name=local-data", "--set", "data.name=cub200",
                                               "--set", f"data.root={local}", "--storage", storage])
            report["local_data_s"] = time.perf_counter() - started
            report["local_data_stored"] = exists(f"{storage}/local-data")

        def spot_loss() -> bool:
            report["lost_at"] = time.time()
            nodes[-1].kill()
            time.sleep(3)
            nodes.append(WorkerNode(cluster.address, [cache], namespace))  # the autoscaler's replacement
            return True

        started = time.perf_counter()
        outcome, lost = run_and_interrupt(
            [DEMO, *SHORT, "--set", "name=spot", "--set", "train.epochs=8",
             "--set", "train.steps_per_epoch=6", "--storage", storage], storage, "spot", spot_loss)
        report.update(spot_exit=outcome.get("exit"), spot_s=time.perf_counter() - started, node_lost=lost)
        report["spot"] = summary(storage, "spot")["trials"][0]
        report["spot_epochs"] = epoch_ends(storage, "spot")

        def drained_preemption() -> bool:
            # What a reclaimed spot node does under cluster.yaml: its watcher sees EC2's notice and drains
            # the node with the preemption reason (the same command), then the instance goes away.
            from datetime import datetime, timedelta, timezone

            from fgray.cluster.spot_watcher import Notice, drain_command

            worker = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))
            now = datetime.now(timezone.utc)
            command = drain_command(Notice("terminate", now + timedelta(seconds=20)), now, node_id=worker,
                                    ray=os.path.join(os.path.dirname(sys.executable), "ray"))
            report["drain_rc"] = subprocess.run(command, capture_output=True, text=True, timeout=60).returncode
            report["drained_at"] = time.time()
            time.sleep(2)
            nodes[-1].kill()
            time.sleep(3)
            nodes.append(WorkerNode(cluster.address, [cache], namespace))
            return True

        started = time.perf_counter()
        outcome, drained = run_and_interrupt(
            [DEMO, *SHORT, "--set", "name=drained", "--set", "train.epochs=8", "--set", "train.steps_per_epoch=6",
             "--set", "resources.max_failures=0", "--storage", storage], storage, "drained", drained_preemption)
        report.update(drained_exit=outcome.get("exit"), drained_s=time.perf_counter() - started, drained=drained)
        report["drained_trial"] = summary(storage, "drained")["trials"][0]

        def kill_driver() -> bool:
            pids = trial_driver_pids()
            if len(pids) != 1:
                return False
            report["driver_killed_at"] = time.time()
            os.kill(pids[0], signal.SIGKILL)
            return True

        started = time.perf_counter()
        ddp = ["--set", "name=ddp", "--set", "train.epochs=10", "--set", "train.steps_per_epoch=6",
               "--set", "resources.workers_per_trial=2",
               "--set", "resources.cpus_per_worker=0.5", "--set", "resources.max_concurrent_trials=1"]
        outcome, killed = run_and_interrupt([DEMO, *SHORT, *ON_HEAD, *ddp, "--storage", storage], storage, "ddp",
                                            kill_driver)
        report.update(ddp_exit=outcome.get("exit"), ddp_s=time.perf_counter() - started, driver_killed=killed)
        report["ddp"] = summary(storage, "ddp")["trials"][0]
        report["ddp_epochs"] = epoch_ends(storage, "ddp")
    finally:
        with open(out, "w") as f:
            json.dump(report, f, default=str)
        ray.shutdown()
        for node in nodes:
            node.remove()
        cluster.shutdown()
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
