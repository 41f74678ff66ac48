"""A trial whose settings cannot train is not retried (issue 29): Tune retries whatever a trial raises,
so the trial reports the reason as its last result and ends; the sweep records it as failed with that
reason (summary.json, report.md), the console prints it once, the dashboard's gauge says failed. And
the dataset's index the sweep's start checks is read from the shards. No Ray is started."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from fgray import trial
from fgray.cli_progress import ProgressPrinter
from fgray.config import ConfigError, DataConfig
from fgray.results import SETTINGS_ERROR, collect_trials, objective, settings_failure
from fgray.sweep_file import load_sweep

DEMO = "sweeps/demo.yaml"


def test_the_trial_reports_a_settings_error_instead_of_raising(monkeypatch):
    sweep = load_sweep(DEMO, [], "smoke")
    reported = []

    def fails(params, sweep_cfg, storage):
        raise ConfigError("data: the val split is empty (open: ...); more images per class or another "
                          "data.val_fraction (now 0.25)")

    monkeypatch.setattr(trial, "_drive", fails)
    monkeypatch.setattr(trial.tune, "report", reported.append)
    trial.trial_driver({}, sweep.model_dump(mode="json"), "/nowhere")  # returns: Tune ends it, no retry
    assert reported == [{SETTINGS_ERROR: "data: the val split is empty (open: ...); more images per class or "
                                         "another data.val_fraction (now 0.25)", "val/recall@1": -math.inf}]


def test_other_errors_still_raise_and_are_retried(monkeypatch):
    sweep = load_sweep(DEMO, [], "smoke")

    def crashes(params, sweep_cfg, storage):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(trial, "_drive", crashes)
    with pytest.raises(RuntimeError):
        trial.trial_driver({}, sweep.model_dump(mode="json"), "/nowhere")


def test_the_worst_value_of_the_metric_tune_requires():
    assert settings_failure(ConfigError("x"), "val/map", "min") == {SETTINGS_ERROR: "x", "val/map": math.inf}
    no_validation = load_sweep(DEMO, ["data.val_fraction=0", "search.space={}"], None, deep=False)
    assert objective(no_validation) == ("epoch", "max")
    assert objective(load_sweep(DEMO, [], None, deep=False)) == ("val/recall@1", "max")


def test_the_sweep_records_it_as_failed_with_its_reason():
    refused = SimpleNamespace(metrics={"trial_id": "t1", "training_iteration": 1, "time_total_s": 2.0,
                                       **settings_failure(ConfigError("train.batch_size: too large"), "epoch", "max")},
                              path="/exp/t1", config={}, error=None)
    [record] = collect_trials([refused], "/nowhere", "s", epochs=2)
    assert record["status"] == "error" and record["error"] == "train.batch_size: too large"
    assert record["epochs"] is None and record["metrics"] == {} and record["traceback"] == []


def test_summary_and_report_keep_the_reason(tmp_path):
    import json

    from fgray.report import write_outputs

    sweep = load_sweep(DEMO, ["search.space={}"], None, deep=False)
    refused = SimpleNamespace(metrics={"trial_id": "t1", **settings_failure(
        ConfigError("train.batch_size: 100000 is more images than the training split holds"), "val/recall@1", "max")},
        path=str(tmp_path / "t1"), config={}, error=None)
    trials = collect_trials([refused], str(tmp_path), sweep.name, epochs=2)
    summary = write_outputs(sweep, str(tmp_path), trials, {})
    assert summary["num_errors"] == 1 and summary["num_completed"] == 0
    stored = json.loads((tmp_path / sweep.name / "summary.json").read_text())
    assert stored["trials"][0]["error"].startswith("train.batch_size: 100000 is more images")
    report = (tmp_path / sweep.name / "report.md").read_text()
    assert "## Failed trials" in report and "- t1: train.batch_size: 100000 is more images" in report


def test_the_console_prints_the_reason_once(capsys):
    printer = ProgressPrinter(epochs=2, metric="val/recall@1")
    failed = SimpleNamespace(trial_id="t1", config={}, last_result={SETTINGS_ERROR: "data: x"})
    printer.on_trial_result(0, [], failed, {SETTINGS_ERROR: "data: x", "val/recall@1": -math.inf})
    printer.on_trial_complete(0, [], failed)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["trial  1 (t1) FAILED (its settings cannot train; not retried): data: x"]


def test_the_dashboard_gauge_says_failed(monkeypatch):
    from fgray.sweep_metrics import MetricsExporter

    exporter = MetricsExporter("s", "val/recall@1")
    states = []
    monkeypatch.setattr(exporter, "_set_state", lambda trial, state: states.append(state))
    exporter.on_trial_complete(0, [], SimpleNamespace(trial_id="t1", last_result={SETTINGS_ERROR: "data: x"}))
    exporter.on_trial_complete(0, [], SimpleNamespace(trial_id="t2", last_result={"epoch": 2, "trial_epochs": 2}))
    assert states == ["failed", "finished"]


def test_a_batch_larger_than_the_split_is_a_settings_error():
    from fgray.data.forked_views import step_blocks

    with pytest.raises(ConfigError, match="not one step an epoch"):
        step_blocks([pa.table({"row": np.arange(10), "epoch": np.zeros(10, int)})], batch_size=16)


def test_the_sweep_reads_the_index_the_trials_split(tmp_path):
    from fgray.data.pipeline import resolve_dataset
    from fgray.preflight import check_data, planned_experiments
    from fgray.sweep_checks import dataset_index

    data = DataConfig(image_size=32, root=str(tmp_path), synthetic={"num_classes": 8, "images_per_class": 4})
    prepared = resolve_dataset(data)
    index = dataset_index(data, data, prepared)
    assert index.dataset == "synthetic" and len(index.image_ids) == 32 and set(index.splits) == {"train", "test"}
    assert sorted(np.unique(index.labels, return_counts=True)[1]) == [4] * 8
    sweep = load_sweep(DEMO, [f"data.root={tmp_path}", "data.image_size=32", "data.synthetic.num_classes=8",
                              "data.synthetic.images_per_class=4", "train.batch_size=64"], None, deep=False)
    with pytest.raises(ConfigError, match="^train.batch_size: 64 is more images than the training split holds"):
        check_data(planned_experiments(sweep), lambda d: dataset_index(d, sweep.data, prepared))
