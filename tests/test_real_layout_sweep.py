"""A sweep on a prepared published layout: a tiny CUB-200-2011 (120 classes, 6 images each: 4 in
the official train split, 2 in test), under both protocols, with the linear probe."""
from __future__ import annotations

import json

import pytest
import yaml

from fgray.data.sources.prepare import prepare
from fgray.sweep import main
from layouts import make_cub200

pytestmark = pytest.mark.slow


def test_sweep_on_prepared_cub_open_and_closed(ray_local, tmp_path):
    layout = make_cub200(tmp_path, per_class=6, train_per_class=4, num_classes=120)
    shards = tmp_path / "cub_shards"
    prepare("cub200", str(layout.root), str(shards), short_side=32)
    sweep = {
        "name": "cub",
        "method": {"name": "mocov2", "queue_size": 16, "hidden_dim": 32, "proj_dim": 16},
        "data": {"name": "cub200", "root": str(shards), "image_size": 32},
        "backbone": {"name": "test_resnet"},
        "train": {"epochs": 1, "batch_size": 8, "steps_per_epoch": 2},
        "eval": {"ks": [1, 2], "test_top": 2, "baseline": False, "linear_probe": [1.0, 0.5]},
        "resources": {"cpus_per_worker": 0.5, "data_cpus": 0.25, "max_concurrent_trials": 2},
        "search": {"space": {"data.protocol": {"grid": ["open", "closed"]}}},
    }
    path = tmp_path / "cub.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main([str(path), "--storage", str(tmp_path / "results")]) == 0

    out = tmp_path / "results" / "cub"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["num_errors"] == 0
    tests = {t["overrides"]["data.protocol"]: t["test"] for t in summary["trials"]}
    # open: classes 101-120 (0-based labels >= 100) are the test set, leave-one-out over their 120 images
    assert tests["open"]["num_queries"] == 120.0 and 0.0 <= tests["open"]["recall@1"] <= 1.0
    assert tests["open"]["probe_note"].startswith("skipped")  # no test class was trained on
    # closed: the official image split, 2 test images of every class
    assert tests["closed"]["num_queries"] == 240.0 and 0.0 <= tests["closed"]["map"] <= 1.0
    assert 1.0 >= tests["closed"]["probe@100/top5"] >= tests["closed"]["probe@100/top1"] >= 0.0
    assert {"probe@50/top1", "probe@50/top5"} <= set(tests["closed"])
    assert "**Linear probe**" in (out / "report.md").read_text()
