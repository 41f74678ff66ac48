"""A two-node Ray cluster on this machine with results in S3 (tests/two_node_cluster.py, run in its
own process): the worker node in its own mount namespace (its data cache apart from the head's),
node-local storage and a data root of the head refused before any trial, a spot node lost after a
checkpoint and the trial finished from it on the replacement node, and a 2-worker DDP trial whose
driver is killed mid-run, retried and resumed from its Train run's checkpoint, and whose per-rank
replicas (MoCo's queue and key encoder) agree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def test_two_node_cluster_spot_loss_and_ddp(s3_bucket, tmp_path):
    out = tmp_path / "report.json"
    started = time.perf_counter()
    run = subprocess.run([sys.executable, os.path.join(REPO, "tests", "two_node_cluster.py"),
                          f"{s3_bucket}/two_node", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "PYTHONPATH": REPO})
    wall = time.perf_counter() - started
    assert out.exists(), run.stderr[-3000:]
    report = json.loads(out.read_text())
    if report["namespace"]:  # root with unshare (CI): what one node writes to its cache, the other never sees
        assert not report["head_file_seen_on_worker"] and not report["worker_file_seen_on_head"], report
    assert report["local_storage_exit"] == 2, report
    assert "folder of this machine" in run.stderr
    # A data root of the head: one line naming the key, before any trial (nothing written to the bucket).
    assert report["local_data_exit"] == 2 and not report["local_data_stored"], report
    assert "error: data.root: " in run.stderr and "pass --set data.root=s3://BUCKET/PREFIX" in run.stderr

    assert report["node_lost"] and report["spot_exit"] == 0, (report, run.stdout[-3000:])
    spot = report["spot"]
    assert spot["status"] == "completed" and spot["epochs"] == 8 and spot["error"] is None
    # Resumed from its checkpoint, not restarted: every epoch reported once, the loss in between two.
    epochs = report["spot_epochs"]
    assert [e for e, _ in epochs] == list(range(1, 9)), epochs
    lost = report["lost_at"]
    assert any(a < lost < b for (_, a), (_, b) in zip(epochs, epochs[1:])), (epochs, lost)
    assert 0 <= spot["test"]["recall@1"] <= 1

    # Drained as a preemption (the spot watcher's command), then lost: not counted against max_failures 0.
    assert report["drained"] and report["drain_rc"] == 0, (report, run.stdout[-3000:])
    drained = report["drained_trial"]
    assert report["drained_exit"] == 0 and drained["status"] == "completed" and drained["epochs"] == 8, report

    ddp = report["ddp"]
    assert report["driver_killed"], report
    assert report["ddp_exit"] == 0 and ddp["status"] == "completed", (report, run.stdout[-3000:])
    assert ddp["epochs"] == 10 and ddp["metrics"]["train/replicas_agree"] == 1.0
    # The retried driver resumed the Train run's checkpoint: no epoch trained (reported) twice, and
    # the first epoch reported after the kill is not the first one.
    epochs = [e for e, _ in report["ddp_epochs"]]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 10, report["ddp_epochs"]
    after = [e for e, end in report["ddp_epochs"] if end > report["driver_killed_at"]]
    assert after and after[0] > 1, report["ddp_epochs"]
    print(f"two-node suite: {wall:.0f} s (refusals {report['local_storage_s']:.0f} s and "
          f"{report['local_data_s']:.0f} s, spot loss "
          f"{report['spot_s']:.0f} s, DDP with its driver killed {report['ddp_s']:.0f} s)")
