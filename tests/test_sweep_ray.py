"""End to end through Ray on CPU (shared Ray instance): a smoke sweep, --resume, a NaN trial."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from fgray.sweep import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "sweeps", "demo.yaml")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_sweep(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("sweeps")
    code = main([DEMO, "--profile", "smoke", "--storage", str(storage)])
    return code, storage / "demo-smoke"


def test_smoke_sweep_writes_real_metrics(smoke_sweep):
    code, out = smoke_sweep
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["num_errors"] == 0
    best = next(t for t in summary["trials"] if t["trial_id"] == summary["best"])
    # The best trial is ranked by its last validation: one that ASHA stopped after epoch 1 can still rank first.
    assert best["epochs"] in (1, 2) and os.path.isfile(os.path.join(best["checkpoint"], "state.pt"))
    assert max(t["epochs"] for t in summary["trials"]) == 2  # the first trial at ASHA's rung always goes on
    for key in ("val/recall@1", "val/map", "train/loss"):
        assert key in best["metrics"]
    assert 0.0 <= best["metrics"]["val/recall@1"] <= 1.0
    test = best["test"]
    assert 0.0 < test["recall@1"] <= test["recall@2"] <= test["recall@8"] <= 1.0 and test["num_queries"] > 0
    assert 0.0 < summary["baseline"]["recall@1"] <= 1.0
    assert "open" in summary["data"]["split"]
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 2 and {"config/method.temperature", "config/train.lr", "val/recall@1"} <= set(frame.columns)
    report = (out / "report.md").read_text()
    assert "| trial |" in report and "Untrained backbone" in report and (out / "curves.png").is_file()


def test_existing_sweep_needs_resume_and_resume_keeps_results(smoke_sweep, capsys):
    code, out = smoke_sweep
    storage = str(out.parent)
    assert main([DEMO, "--profile", "smoke", "--storage", storage]) == 2
    assert "pass --resume" in capsys.readouterr().err
    before = {t["trial_id"]: t["metrics"]["val/recall@1"] for t in json.loads((out / "summary.json").read_text())["trials"]}
    assert main([DEMO, "--profile", "smoke", "--storage", storage, "--resume"]) == 0
    after = {t["trial_id"]: t["metrics"]["val/recall@1"] for t in json.loads((out / "summary.json").read_text())["trials"]}
    assert after == before  # finished trials are not rerun


def test_nan_loss_is_a_recorded_failure(ray_local, tmp_path):
    # A temperature this small overflows the logits: the trial fails with a clear message, the sweep survives.
    code = main([DEMO, "--profile", "smoke", "--storage", str(tmp_path), "--set", "method.temperature=1e-45",
                 "--set", "search.space={}", "--set", "search.num_samples=1", "--set", "train.epochs=1"])
    summary = json.loads((tmp_path / "demo-smoke" / "summary.json").read_text())
    assert code == 1 and summary["num_trials"] == summary["num_errors"] == 1
    assert "non-finite loss" in summary["trials"][0]["error"]
