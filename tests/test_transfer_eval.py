"""Cross-dataset evaluation (``eval.transfer``) and published values by source (``paper`` / ``draft``):
the config, the selection of a transfer set's images, the test step with a fake scorer, report.md
and summary.json, the smoke profile's stand-ins, and one real evaluation through Ray."""
from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest

from fgray.config import ConfigError
from fgray.report import write_outputs
from fgray.sweep import evaluate_best
from fgray.sweep_file import load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERALIZATION = os.path.join(REPO, "sweeps", "dva_generalization.yaml")

BASE = """
name: t
method: {name: mocov2}
backbone: {name: test_resnet}
train: {epochs: 2, batch_size: 8}
eval:
  test_top: 1
  transfer:
    - {name: nab, dataset: nabirds, root: /data/nabirds, images: all}
    - {name: air, dataset: synthetic, synthetic: {seed: 7}, classes: 10, ks: [4, 1]}
"""


def sweep_file(tmp_path, text: str = BASE, sets=()):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return load_sweep(path, sets)


def error_of(tmp_path, sets) -> str:
    with pytest.raises(ConfigError) as err:
        sweep_file(tmp_path, sets=sets)
    return str(err.value)


# ------------------------------------------------------------------------------------------ config


def test_transfer_entries_are_validated_like_data(tmp_path):
    sweep = sweep_file(tmp_path)
    nab, air = sweep.eval.transfer
    assert (nab.reader, nab.images, nab.ks) == ("nabirds", "all", None)
    assert air.reader == "synthetic" and air.ks == (1, 4) and air.synthetic.seed == 7
    data = air.data_config(sweep.data)  # located at the training data's size and crop
    assert (data.name, data.image_size, data.eval_crop, data.synthetic.seed) == ("synthetic", 64, 0.875, 7)
    assert sweep_file(tmp_path, sets=["eval.transfer=[]"]).eval.transfer == ()


@pytest.mark.parametrize("override, expected", [
    ("eval.transfer=[{name: nab, rooot: /x}]", "eval.transfer.0.rooot: unknown key"),
    ("eval.transfer=[{name: nab}]", "eval.transfer.0: dataset 'nab' needs root: the folder written by"),
    ("eval.transfer=[{name: nab, root: /x, images: val}]", "eval.transfer.0.images: must be one of 'all', 'train'"),
    ("eval.transfer=[{name: n/a, root: /x}]", "eval.transfer.0.name: string should match pattern"),
    ("eval.transfer=[{name: a, root: /x}, {name: a, root: /y}]", "eval.transfer: names must be unique, got ['a']"),
    ("eval.transfer=[{name: a, root: /x, classes: 1}]", "eval.transfer.0.classes: must be >= 2, got 1"),
    ("eval.transfer=[{name: a, root: /x, ks: [0]}]", "eval.transfer.0.ks: must be a non-empty list of positive"),
    ("paper.rows=[{match: {}, metrics: {}, source: preprint}]", "paper.rows.0.source: must be one of 'paper' or"),
])
def test_bad_transfer_and_source_values_name_the_key(tmp_path, override, expected):
    assert expected in error_of(tmp_path, [override])


def test_select_images_by_split_and_first_classes():
    from fgray.eval.distributed import select_images

    labels = np.array([5, 5, 3, 3, 9, 9, 1, 1])
    splits = np.array(["train", "test", "train", "test", "train", "query", "test", "test"])
    keep, text = select_images(labels, splits, "all", None)
    assert keep.all() and text == "all images (8 images, 4 classes)"
    keep, text = select_images(labels, splits, "test", 2)  # test classes 1, 3, 5, 9: the first two
    assert keep.tolist() == [False, False, False, True, False, False, True, True]
    assert text == "official test images of the first 2 classes (3 images, 2 classes)"
    keep, _ = select_images(labels, splits, "train", None)
    assert keep.tolist() == [True, False, True, False, True, False, False, False]


# ------------------------------------------------------------------------------ test step, report

PAPER = """
paper:
  source: "a paper"
  rows:
    - {match: {method.temperature: 0.2}, metrics: {recall@1: 61.0, nab/recall@1: 40.5}}
    - {match: {method.temperature: 0.2}, metrics: {nab/recall@2: 50.5, nab/recall@1: 1.0}}
"""


def fake_evaluate(calls):
    """Scores like evaluate_split: the test split's metrics, then each transfer set's, keyed by name."""
    def evaluate(models, cache_dir):
        calls.append([c for _, c in models])
        out = []
        for i, (experiment, _) in enumerate(models):
            result = {"recall@1": 0.5 + i / 10, "recall@2": 0.7, "split": "open test"}
            for t in experiment.eval.transfer:
                result.update({f"{t.name}/recall@{k}": 0.2 + i / 10 + k / 100 for k in t.ks or experiment.eval.ks})
                result.update({f"{t.name}/map": 0.1, f"{t.name}/split": f"{t.reader}: some images"})
            out.append(result)
        return out
    return evaluate


def trial(name: str, temperature: float, recall: float, seed: int | None = None) -> dict:
    overrides = {"method.temperature": temperature, **({"train.seed": seed} if seed is not None else {})}
    return {"trial_id": name, "overrides": overrides, "checkpoint": f"/c/{name}", "status": "completed",
            "epochs": 2, "error": None, "metrics": {"val/recall@1": recall}}


def test_transfer_metrics_reach_the_console_summary_and_report(tmp_path, capsys):
    sweep = sweep_file(tmp_path, BASE + PAPER)
    trials = [trial("a", 0.1, 0.3), trial("b", 0.2, 0.6)]
    calls = []
    tests = evaluate_best(sweep, str(tmp_path), trials, evaluate=fake_evaluate(calls))
    assert calls == [["/c/b", None]]  # best + baseline, one call: it scores the test split and transfer sets
    assert tests["trials"]["b"]["nab/recall@1"] == pytest.approx(0.21) and "nab/split" not in tests["trials"]["b"]
    assert tests["transfer"] == {"nab": "nabirds: some images", "air": "synthetic: some images"}
    assert tests["baseline"]["air/recall@4"] == pytest.approx(0.34)
    printed = capsys.readouterr().out
    assert "test (b): recall@1 50.00%" in printed and "test (b) on nab: recall@1 21.00%" in printed
    assert "test (untrained test_resnet, random init) on air: recall@1 31.00%" in printed

    summary = write_outputs(sweep, str(tmp_path), trials, tests)
    nab = json.loads((tmp_path / "t" / "summary.json").read_text())["transfer"]["nab"]
    assert nab["images"] == "nabirds: some images" and nab["metrics"] == [
        "recall@1", "recall@2", "recall@4", "recall@8", "map@r", "map"]
    row = nab["rows"][0]  # the tested row; its paper values merge both matching rows, the first one wins
    assert row["trials"] == ["b"] and row["metrics"]["recall@1"]["mean"] == pytest.approx(0.21)
    assert row["paper"] == {"recall@1": 40.5, "recall@2": 50.5} and row["draft"] is None
    assert nab["untrained"]["recall@1"] == pytest.approx(0.31)
    assert summary["transfer"]["air"]["metrics"][:2] == ["recall@1", "recall@4"]  # its own K list

    report = (tmp_path / "t" / "report.md").read_text()
    assert "| paper recall@1 |" in report and "paper nab/recall@1" not in report  # the main table: test split only
    section = report.split("## Transfer: nab")[1].split("## Transfer: air")[0]
    assert "| trial | method.temperature | recall@1 | recall@2 | recall@4 | recall@8 | map@r | map | paper recall@1 " \
           "| paper recall@2 |" in section
    assert "| b | 0.2 | 21.00 | 22.00 | 24.00 | 28.00 | - | 10.00 | 40.50 | 50.50 |" in section
    assert "| untrained (random init) |  | 31.00 | 32.00 | 34.00 | 38.00 | - | 10.00 | - | - |" in section


def test_transfer_rows_over_seeds_show_mean_and_std(tmp_path):
    sweep = sweep_file(tmp_path, BASE, sets=["search.seeds=2"])
    trials = [trial("s0", 0.2, 0.5, seed=0), trial("s1", 0.2, 0.6, seed=1)]

    def evaluate(models, cache_dir):  # seed 1 scores 0.1 higher on nab
        return [{"recall@1": 0.5, "split": "s", "nab/recall@1": 0.2 + e.train.seed / 10, "nab/split": "n"}
                for e, _ in models]

    tests = evaluate_best(sweep, str(tmp_path), trials, evaluate=evaluate)
    summary = write_outputs(sweep, str(tmp_path), trials, tests)
    row = summary["transfer"]["nab"]["rows"][0]
    assert row["metrics"]["recall@1"]["values"] == pytest.approx([0.2, 0.3])
    assert summary["transfer"]["nab"]["untrained"]["recall@1"] == pytest.approx(0.25)  # mean over seeds
    report = (tmp_path / "t" / "report.md").read_text()
    assert "| s0, s1 | 0.2 | 25.00 ± 7.07 |" in report and "mean ± std over seeds" in report


def test_paper_and_draft_values_print_in_their_own_column_groups(tmp_path):
    drafts = """
    paper:
      source: "ASS (paper 000)"
      rows:
        - {match: {method.temperature: 0.2}, metrics: {recall@1: 89.2}}
        - {match: {method.temperature: 0.2}, metrics: {recall@1: 77.3, recall@2: 85.6}, source: draft}
        - {match: {method.temperature: 0.1}, metrics: {recall@1: 70.6}, source: draft}
    """
    sweep = sweep_file(tmp_path, BASE + textwrap.dedent(drafts), sets=["eval.transfer=[]"])
    trials = [trial("a", 0.1, 0.3), trial("b", 0.2, 0.6)]
    tests = evaluate_best(sweep, str(tmp_path), trials, evaluate=fake_evaluate([]))
    summary = write_outputs(sweep, str(tmp_path), trials, tests)
    a, b = summary["trials"]
    assert (a["paper"], a["draft"]) == (None, {"recall@1": 70.6})
    assert (b["paper"], b["draft"]) == ({"recall@1": 89.2}, {"recall@1": 77.3, "recall@2": 85.6})
    report = (tmp_path / "t" / "report.md").read_text()
    assert "| paper recall@1 | draft recall@1 | draft recall@2 |" in report
    assert "| - | 70.60 | - |" in report and "| 89.20 | 77.30 | 85.60 |" in report
    assert "earlier manuscript's numbers" in report


def test_without_draft_rows_the_report_has_no_draft_columns(tmp_path):
    sweep = sweep_file(tmp_path, BASE + PAPER, sets=["eval.transfer=[]"])
    trials = [trial("b", 0.2, 0.6)]
    write_outputs(sweep, str(tmp_path), trials, evaluate_best(sweep, str(tmp_path), trials, fake_evaluate([])))
    report = (tmp_path / "t" / "report.md").read_text()
    assert "| paper recall@1 |" in report and "draft" not in report and "Transfer" not in report
    assert "| 61.00 |" in report  # the first matching row's value; its transfer keys go nowhere without the set


# ------------------------------------------------------------------------------------ smoke, Ray


def test_smoke_profile_turns_transfer_sets_into_synthetic_stand_ins():
    sweep = load_sweep(GENERALIZATION, profile="smoke")
    names = [t.name for t in sweep.eval.transfer]
    assert names == ["nabirds", "aircraft", "inat2021_100"]
    assert all(t.reader == "synthetic" and t.root is None for t in sweep.eval.transfer)
    seeds = [t.synthetic.seed for t in sweep.eval.transfer]
    assert len(set(seeds)) == 3 and not {0, 1} & set(seeds)  # none is a training stand-in's
    assert sweep.eval.transfer[2].classes == 100  # the selection stays (all 16 stand-in classes)
    matched = {json.dumps(r.match, sort_keys=True) for r in sweep.paper.rows}
    assert matched == {'{"data.synthetic.seed": 0}', '{"data.synthetic.seed": 1}'}  # CUB's and Cars' stand-ins


def test_real_transfer_evaluation_through_ray(ray_local, tmp_path, capsys):
    """A DVA checkpoint (proxies for its training classes) and the untrained backbone, scored on the
    smoke sweep's test split and three transfer stand-ins by the real evaluation; a second run reads
    every embedding from the cache."""
    import torch

    from fgray import checkpoint as ckpt
    from fgray.data import pipeline
    from fgray.engine import build_method

    sweep = load_sweep(GENERALIZATION, profile="smoke", sets=["search.points=[{data.synthetic.seed: 0}]"])
    experiment = sweep.experiment({"data.synthetic.seed": 0})
    prepared = pipeline.resolve_dataset(experiment.data)
    facts, _ = pipeline.dataset_facts(prepared, pipeline.assign(prepared, experiment.data).train, experiment.data)
    torch.manual_seed(1)
    folder = str(tmp_path / "checkpoint_000000")
    ckpt.save(folder, build_method(experiment, facts), experiment, facts, "train", 1, {})
    trials = [{**trial("x", 0.2, 0.5), "overrides": {"data.synthetic.seed": 0}, "checkpoint": folder}]

    tests = evaluate_best(sweep, str(tmp_path), trials)
    result = tests["trials"]["x"]
    for name in ("nabirds", "aircraft", "inat2021_100"):
        assert 0 < result[f"{name}/recall@1"] <= result[f"{name}/recall@8"] <= 1
        assert result[f"{name}/num_queries"] == 192  # every stand-in image is a query
        assert 0 < tests["baseline"][f"{name}/recall@1"] <= 1
    assert "synthetic: all images (192 images, 16 classes)" in tests["transfer"]["nabirds"]
    cached = sorted(os.listdir(tmp_path / "dva_generalization-smoke" / "_embeddings"))
    assert len(cached) == 8  # (test split + 3 transfer sets) x (trained, untrained)
    assert evaluate_best(sweep, str(tmp_path), trials)["trials"]["x"] == result
    assert sorted(os.listdir(tmp_path / "dva_generalization-smoke" / "_embeddings")) == cached
    assert "test (x) on inat2021_100: recall@1" in capsys.readouterr().out
