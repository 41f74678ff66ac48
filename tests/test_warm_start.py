"""``backbone.pretrained`` naming a previous fgray run: a trial's checkpoint folder or a sweep's output
folder (summary.json), resolved at validation and loaded into the new backbone; and the VAPNet
mechanism sweeps (sweeps/vapnet_mechanism_warmup.yaml -> sweeps/vapnet_mechanism.yaml) built on it.

No Ray: checkpoints are written by ``fgray.checkpoint.save`` and summaries by hand.
"""
from __future__ import annotations

import json

import pytest
import torch

from fgray import checkpoint as ckpt
from fgray.config import ConfigError, ExperimentConfig
from fgray.data.inputs import DatasetFacts
from fgray.engine import build_method
from fgray.models import build_backbone
from fgray.results import resolve_checkpoint
from fgray.sweep import planned_trials
from fgray.sweep_file import load_sweep
from fgray.validation import validate

FACTS = DatasetFacts(num_classes=5, image_size=64)


def experiment(method: dict, pretrained: bool | str = False) -> ExperimentConfig:
    return validate(ExperimentConfig, {"method": method, "backbone": {"name": "test_resnet", "pretrained": pretrained}})


def saved_run(folder, method: dict, seed: int = 3) -> ExperimentConfig:
    """A trained-looking run: random weights (and BN statistics) of ``seed``, saved as a checkpoint."""
    exp = experiment(method)
    torch.manual_seed(seed)
    model = build_method(exp, FACTS)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if "running_mean" in name:
                buffer.normal_()  # statistics a fresh model would not have
    ckpt.save(str(folder), model, exp, FACTS, "train", 2, {})
    return exp


def write_summary(folder, trials: list[tuple[str, str]], best: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"trial_id": t, "checkpoint": c} for t, c in trials]
    (folder / "summary.json").write_text(json.dumps({"best": best, "trials": records}))


def test_a_checkpoint_folder_warm_starts_the_backbone_with_its_statistics(tmp_path):
    saved_run(tmp_path / "ckpt", {"name": "vapnet", "attr_dim": 8})
    warm = build_backbone("test_resnet", str(tmp_path / "ckpt"))
    state = torch.load(tmp_path / "ckpt" / ckpt.STATE_FILE, weights_only=False)["method"]
    theirs = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    ours = warm.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any("running_mean" in k for k in ours)
    fresh = build_backbone("test_resnet", False)
    assert any(not torch.equal(fresh.state_dict()[k], ours[k]) for k in ours)
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("resnet10t", str(tmp_path / "ckpt"))  # another architecture


def test_the_online_backbone_is_taken_never_the_momentum_copy(tmp_path):
    moco = {"name": "mocov2", "queue_size": 64, "proj_dim": 16, "hidden_dim": 32}
    torch.manual_seed(0)
    method = build_method(experiment(moco), FACTS)
    with torch.no_grad():  # the key encoder (moco.key_backbone) differs from the query encoder
        for p in method.moco.key_backbone.parameters():
            p.add_(1.0)
    ckpt.save(str(tmp_path), method, experiment(moco), FACTS, "train", 2, {})
    state = ckpt.backbone_state(str(tmp_path))
    online = method.moco.backbone.state_dict()
    assert state.keys() == online.keys() and all(torch.equal(state[k], online[k]) for k in state)


def test_a_sweep_folder_resolves_to_its_best_or_only_trials_checkpoint(tmp_path):
    for name in ("a", "b"):
        saved_run(tmp_path / name, {"name": "vapnet", "attr_dim": 8})
    sweep = tmp_path / "sweep"
    write_summary(sweep, [("t1", str(tmp_path / "a")), ("t2", str(tmp_path / "b"))], best="t2")
    assert resolve_checkpoint(str(sweep)) == str(tmp_path / "b")
    assert resolve_checkpoint(str(tmp_path / "a")) == str(tmp_path / "a")
    assert resolve_checkpoint(str(tmp_path)) is None  # neither
    write_summary(sweep, [("t1", str(tmp_path / "a"))], best=None)  # no validation metric: the only trial
    assert resolve_checkpoint(str(sweep)) == str(tmp_path / "a")
    write_summary(sweep, [("t1", str(tmp_path / "a")), ("t2", str(tmp_path / "b"))], best=None)
    with pytest.raises(ValueError, match="no best one"):
        resolve_checkpoint(str(sweep))
    # validation records the checkpoint the trials load, and names the key when nothing is there
    write_summary(sweep, [("t1", str(tmp_path / "a"))], best="t1")
    assert experiment({"name": "vapnet"}, str(sweep)).backbone.pretrained == str(tmp_path / "a")
    with pytest.raises(ConfigError, match="backbone.pretrained: weights file not found"):
        experiment({"name": "vapnet"}, str(tmp_path / "missing"))


def test_mechanism_sweeps_chain_and_plan_ten_rows_of_three_seeds(tmp_path, monkeypatch):
    warmup = load_sweep("sweeps/vapnet_mechanism_warmup.yaml")
    assert planned_trials(warmup)[1] == 1
    ce = warmup.experiment({})
    assert ce.method.name == "vapnet" and not ce.method.uses_views and ce.backbone.pretrained is False
    # step 1's output, where step 2's backbone.pretrained looks for it (~ = tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    run = tmp_path / "fgray_results" / "vapnet_mechanism_warmup"
    exp = experiment(ce.method.model_dump(), False)
    torch.manual_seed(0)
    ckpt.save(str(run / "trial" / "checkpoint_000006"), build_method(ce, FACTS), exp, FACTS, "train", 6, {})
    write_summary(run, [("t1", str(run / "trial" / "checkpoint_000006"))], best="t1")
    sweep = load_sweep("sweeps/vapnet_mechanism.yaml")
    rows, count = planned_trials(sweep)
    assert count == 30 and len(rows) == 10 and sweep.search.seeds == 3
    assert sweep.eval.test_top >= count and sweep.search.scheduler.name == "none"  # every trial tested
    experiments = [sweep.experiment(row) for row in sweep.search.points]
    assert {(e.method.lam, e.method.lc_reduction) for e in experiments if e.method.lam > 0} == {
        (lam, r) for lam in (0.01, 1.0, 10.0) for r in ("batchmean", "sum", "mean")}
    assert [e.method.uses_views for e in experiments].count(False) == 1  # the CE continuation
    assert {e.backbone.pretrained for e in experiments} == {str(run / "trial" / "checkpoint_000006")}
    assert {(e.data.synthetic, e.data.val_fraction, e.data.split_seed, e.method.views) for e in experiments} == {
        (ce.data.synthetic, ce.data.val_fraction, ce.data.split_seed, ce.method.views)}  # step 1's data and views
    assert load_sweep("sweeps/vapnet_mechanism.yaml", profile="smoke").backbone.pretrained is False
