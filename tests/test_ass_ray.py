"""ASS end to end through Ray on CPU (shared Ray instance): the selector's embeddings cached once per
storage, batches composed in the view actors, both stages, the test evaluation; then a second sweep
whose selector is the first run's checkpoint (a selector pre-training run, spec ass.md §1)."""
from __future__ import annotations

import json
import os

import pytest

from fgray.sweep import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, "sweeps", "ass_selector.yaml")

pytestmark = pytest.mark.slow


def test_selector_cache_composed_batches_and_a_checkpoint_as_the_next_selector(ray_local, tmp_path):
    args = [SWEEP, "--profile", "smoke", "--storage", str(tmp_path), "--set", "search.space={}",
            "--set", "eval.baseline=false"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "ass_selector-smoke" / "summary.json").read_text())
    trial = summary["trials"][0]
    assert summary["num_errors"] == 0 and trial["status"] == "completed"
    assert "train/loss_finetune" in trial["metrics"]  # the fine-tuning stage ran last
    # Tune's per-epoch results (beside the checkpoint): the pre-training epochs report ASS's three terms.
    with open(os.path.join(os.path.dirname(trial["checkpoint"]), "result.json")) as f:
        epochs = [json.loads(line) for line in f if line.strip()]
    assert {"train/loss_gen", "train/loss_inter", "train/loss_intra"} <= set(epochs[0])
    assert 0 <= trial["test"]["recall@1"] <= 1
    caches = list((tmp_path / "_embedding_cache").glob("*/*/_COMPLETE"))
    assert len(caches) == 1  # the random-init selector, embedded once

    # The finished run's checkpoint serves as the selector of the next sweep: its encoder + 128-d head.
    checkpoint = trial["checkpoint"]
    assert os.path.isfile(os.path.join(checkpoint, "meta.json"))
    assert main([*args, "--set", "name=ass_next", "--set", f"method.selector.weights={checkpoint}"]) == 0
    after = json.loads((tmp_path / "ass_next" / "summary.json").read_text())
    assert after["num_errors"] == 0 and after["trials"][0]["status"] == "completed"
    assert len(list((tmp_path / "_embedding_cache").glob("*/*/_COMPLETE"))) == 2  # a second selector


def test_missing_selector_weights_are_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_checkpoint"
    code = main([SWEEP, "--profile", "smoke", "--storage", str(tmp_path),
                 "--set", f"method.selector.weights={missing}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(missing) in err[0] and "random" in err[0]
