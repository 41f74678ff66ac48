"""bench/gpu_sweep.py's CPU mode: the GPU sweep check's whole flow (gpu_check's step rates, one-trial Ray
sweeps of MoCo v2 and PP-SSL with the views finished by the workers and decoded and finished by the
trainer, the report) at
tiny sizes, so it cannot rot between GPU windows. Slow: each sweep starts a local Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_sweep_runs_every_arm_on_cpu(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_sweep.py"), "--tiny", "--device", "cpu", "--out", str(out),
           "--classes", "8", "--per-class", "6", "--epochs", "2", "--steps-per-epoch", "2", "--check-steps", "2",
           "--storage", str(tmp_path / "storage"), "--views-on", "cpu", "trainer+decode"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "FGRAY_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_sweep.json").read_text())
    assert {(r["case"], r["views_on"]) for r in report["runs"]} == {
        (case, arm) for case in ("mocov2", "ppssl") for arm in ("cpu", "trainer+decode")}
    for run in report["runs"]:
        assert "error" not in run, run["error"]
        assert run["images_per_s"] > 0 and 0 <= run["data_wait"] <= 1 and run["feed_ratio"] > 0
        assert run["gpu_util"] is None  # no nvidia-smi here
    for case in ("mocov2", "ppssl"):  # gpu_check's step with and without the views finished in it
        assert set(report["step_rates"][case]) == {"none", "gpu"}
    assert "| mocov2 | trainer+decode |" in (out / "gpu_sweep.md").read_text()
