"""report.md's pictures, rendered from small fixed result tables (no Ray): a table over one knob as
the metric against the knob, over two knobs as a heatmap with the paper's values beside; rows in
knob order; curves with a band for the seed spread; nothing embedded that was not drawn."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
from PIL import Image

from fgray.config import SweepConfig
from fgray.report import write_outputs
from fgray.report_plots import curves_figure, knobs, table_figure, table_grid


def _row(overrides, mean, std=1.0):
    return {"overrides": overrides, "ours": {"mean": mean, "std": std}}


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_two_knobs_make_a_heatmap_in_knob_order_with_the_papers_panel():
    rows = [_row({"method.alpha": 1.4, "method.beta": 0.01}, 50.0), _row({"method.alpha": 1.2, "method.beta": 0.2}, 40.0),
            _row({"method.alpha": 1.2, "method.beta": 0.01}, 45.0), _row({"method.alpha": 1.0, "method.beta": 0.01}, 42.0)]
    assert knobs(rows) == ["method.alpha", "method.beta"]
    grid = table_grid(rows, "method.alpha", "method.beta", [r["ours"]["mean"] for r in rows])
    assert list(grid.index) == ["1", "1.2", "1.4"] and list(grid.columns) == ["0.01", "0.2"]
    assert grid.loc["1.2", "0.01"] == 45.0 and grid.loc["1.4", "0.01"] == 50.0 and math.isnan(grid.loc["1", "0.2"])
    paper = [51.87, 51.34, 53.19, None]
    with_paper = table_figure(rows, paper, "test recall@1", "rank@1")
    alone = table_figure(rows, [None] * 4, "test recall@1", "")
    assert with_paper[:4] == b"\x89PNG" and _size(with_paper)[0] > 1.5 * _size(alone)[0]  # a second panel


def test_one_knob_is_a_plot_or_bars_and_more_knobs_draw_nothing():
    numeric = [_row({"method.lam": v}, 40 + v) for v in (10.0, 1.0, 0.01)]
    categorical = [_row({"method.name": n}, m) for n, m in (("simsiam", 30.0), ("mocov2", 45.0))]
    assert table_figure(numeric, [None] * 3, "test recall@1", "")[:4] == b"\x89PNG"
    assert table_figure(categorical, [None, 44.0], "test recall@1", "recall@1")[:4] == b"\x89PNG"
    three = [_row(dict(zip("abc", cell)), 1.0) for cell in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1))]
    assert knobs(three) == ["a", "b", "c"] and table_figure(three, [None] * 4, "m", "") is None
    assert table_figure([_row({}, 1.0)], [None], "m", "") is None  # one configuration: nothing to plot


def test_curves_draw_a_band_over_seeds():
    progress = {f"t{i}": pd.DataFrame({"epoch": [1, 2, 3], "val/recall@1": np.array([0.1, 0.2, 0.3]) + 0.01 * i})
                for i in range(4)}
    png = curves_figure(progress, {"t0": "a", "t1": "a", "t2": "b", "t3": "b"}, "val/recall@1")
    assert png[:4] == b"\x89PNG"
    assert curves_figure({"t0": pd.DataFrame({"epoch": [1]})}, {}, "val/recall@1") is None


def test_the_report_embeds_the_table_and_no_curves_without_validation(tmp_path):
    sweep = SweepConfig.model_validate({
        "name": "fixed", "method": {"name": "ppssl", "ais": False},
        "data": {"val_fraction": 0}, "search": {"points": [{"method.beta": 0.01}, {"method.beta": 0.1}], "seeds": 2},
        "paper": {"rows": [{"match": {"method.beta": 0.01}, "metrics": {"rank@1": 53.19}}]}})
    trials = []
    for beta, base in ((0.1, 0.30), (0.01, 0.40)):
        for seed in (0, 1):
            trials.append({"trial_id": f"b{beta}s{seed}", "status": "completed", "error": None, "epochs": 2,
                           "overrides": {"method.beta": beta, "train.seed": seed}, "metrics": {"train/loss": 1.0},
                           "checkpoint": None})
    tests = {"trials": {t["trial_id"]: {"recall@1": 0.3 + 0.1 * (t["overrides"]["method.beta"] == 0.01)
                                        + 0.01 * t["overrides"]["train.seed"]} for t in trials},
             "baseline": {"recall@1": 0.1, "seeds": {"0": {"recall@1": 0.1}, "1": {"recall@1": 0.12}}}}
    summary = write_outputs(sweep, str(tmp_path), trials, tests)
    out = tmp_path / "fixed"
    assert summary["plots"] == ["table.png"] and (out / "table.png").is_file() and not (out / "curves.png").exists()
    report = (out / "report.md").read_text()
    assert "(table.png)" in report and "curves.png" not in report
    # the trials table lists rows in knob order (beta 0.01 first), then by seed
    body = [line for line in report.splitlines() if line.startswith("| b0")]
    assert [line.split(" | ")[0] for line in body] == ["| b0.01s0", "| b0.01s1", "| b0.1s0", "| b0.1s1"]
    assert json.loads((out / "summary.json").read_text())["plots"] == ["table.png"]


def test_a_leaderboards_axis_is_the_method_not_what_follows_it():
    rows = [_row({"method.name": "mocov2", "backbone.name": "resnet10t"}, 45.0),
            _row({"method.name": "ppssl", "backbone.name": "resnet10t", "method.beta": 0.01}, 44.0),
            _row({"method.name": "dva", "backbone.name": "vit_tiny_patch16_224"}, 60.0)]
    assert knobs(rows) == ["method.name"]
    assert knobs([_row({"a": 1, "b": 1}, 0), _row({"a": 1, "b": 2}, 0), _row({"a": 2, "b": 1}, 0)]) == ["a", "b"]


def test_the_deciding_key_is_the_axis_whatever_the_key_order():
    # summary.json's rows carry their keys sorted by name: backbone.* and method.hidden_dim come first
    rows = [_row(dict(sorted(o.items())), 1.0) for o in (
        {"method.name": "simsiam", "method.hidden_dim": 512},
        {"method.name": "mocov2"},
        {"method.name": "oldfs", "method.hidden_dim": 256},
        {"method.name": "ppssl", "method.hidden_dim": 256},
        {"method.name": "ass", "backbone.name": "vit"},
        {"method.name": "dva", "backbone.name": "vit"})]
    assert knobs(rows) == ["method.name"]
