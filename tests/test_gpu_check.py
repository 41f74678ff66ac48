"""bench/gpu_check.py runs on the CPU with tiny sizes, so the GPU check cannot rot between GPU windows."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fgray.methods import method_names

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(out: Path, *args: str) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu", "--out", str(out),
           "--steps", "2", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


def test_gpu_check_measures_every_method_and_the_evaluation_on_cpu(tmp_path):
    report = gpu_check(tmp_path, "--no-compile", "--warmup", "1", "--gallery", "1500", "--dim", "32",
                       "--subset", "400", "--embed-batch", "8", "--embed-rounds", "1", "--profile", "vapnet")
    rows = report["train"]
    assert {r["method"] for r in rows} == set(method_names())  # every registered method has a case
    for row in rows:
        assert "error" not in row, row
        assert row["samples_per_s"] > 0 and row["step_ms"] > 0 and row["tflop_per_step"] > 0
        assert row["loss"] == row["loss"]  # finite training, not NaN
    # CNN cases also run channels-last (as trials do on every device), transformers only eager.
    assert {r["variant"] for r in rows if r["backbone"] == "test_resnet"} == {"eager", "eager+CL"}
    assert {r["backbone"] for r in report["embed"]} == {"resnet50", "vit_base_patch16_224"}
    assert all(r["images_per_s"] > 0 for r in report["embed"])
    assert all(r["cosine_min_vs_fp32"] > 0.999 for r in report["embed"] if "cosine_min_vs_fp32" in r)
    search = report["search"]
    assert search["gallery"] == 1500 and 0 < search["metrics"]["recall@1"] <= 1
    assert search["subset_max_abs_diff_vs_cpu"] == 0  # the same device here: identical metrics
    assert "aten::" in (tmp_path / "profile_vapnet.txt").read_text()  # the profiler's op table
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {case} |" in table for case in {r["case"] for r in rows})


@pytest.mark.slow
def test_train_compile_runs_the_moco_step_with_its_queue_and_shuffle(tmp_path):
    # train.compile through StageRunner on the CPU (~40 s of compilation): the queue enqueues after
    # the step and the shuffle's permutation is drawn outside the graph.
    report = gpu_check(tmp_path, "--cases", "mocov2", "--warmup", "2", "--gallery", "0", "--embed-rounds", "0")
    compiled = [r for r in report["train"] if r["compile"]]
    assert len(compiled) == 1 and "error" not in compiled[0], compiled
    assert compiled[0]["samples_per_s"] > 0 and compiled[0]["loss"] == compiled[0]["loss"]
