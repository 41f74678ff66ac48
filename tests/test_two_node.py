"""A two-node Ray cluster on this machine with results in S3 (tests/two_node_cluster.py, run in its
own process): node-local storage refused before any trial, a spot node lost after a checkpoint and
the trial finished from it on the replacement node, and a 2-worker DDP trial whose per-rank
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
    assert report["local_storage_exit"] == 2, report
    assert "folder of this machine" in run.stderr

    assert report["node_lost"] and report["spot_exit"] == 0, (report, run.stdout[-3000:])
    spot = report["spot"]
    assert spot["status"] == "completed" and spot["epochs"] == 8 and spot["error"] is None
    # Resumed from its checkpoint, not restarted: every epoch reported once, the loss in between two.
    epochs = report["spot_epochs"]
    assert [e for e, _ in epochs] == list(range(1, 9)), epochs
    lost = report["lost_at"]
    assert any(a < lost < b for (_, a), (_, b) in zip(epochs, epochs[1:])), (epochs, lost)
    assert 0 <= spot["test"]["recall@1"] <= 1

    ddp = report["ddp"]
    assert report["ddp_exit"] == 0 and ddp["status"] == "completed", (report, run.stdout[-3000:])
    assert ddp["metrics"]["train/replicas_agree"] == 1.0
    print(f"two-node suite: {wall:.0f} s (refusal {report['local_storage_s']:.0f} s, spot loss "
          f"{report['spot_s']:.0f} s, DDP {report['ddp_s']:.0f} s)")
