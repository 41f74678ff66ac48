"""A sweep on a prepared published layout (tiny CUB-200-2011), closed protocol, with the linear probe."""
from __future__ import annotations

import json

import pytest
import yaml

from fgray.data.prepare import prepare
from fgray.sweep import main
from layouts import make_cub200

pytestmark = pytest.mark.slow


def test_sweep_on_prepared_cub_with_linear_probe(ray_local, tmp_path):
    layout = make_cub200(tmp_path, per_class=10, train_per_class=6)  # 3 classes: 18 train, 12 test images
    shards = tmp_path / "cub_shards"
    prepare("cub200", str(layout.root), str(shards), short_side=32)
    sweep = {
        "name": "cub-closed",
        "method": {"name": "mocov2", "queue_size": 16, "hidden_dim": 32, "proj_dim": 16},
        "data": {"name": "cub200", "root": str(shards), "protocol": "closed", "image_size": 32},
        "backbone": {"name": "test_resnet"},
        "train": {"epochs": 1, "batch_size": 4, "steps_per_epoch": 2},
        "eval": {"ks": [1, 2], "linear_probe": [1.0, 0.5]},
        "resources": {"cpus_per_worker": 0.5, "data_cpus": 0.25},
    }
    path = tmp_path / "cub.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main([str(path), "--storage", str(tmp_path / "results")]) == 0

    out = tmp_path / "results" / "cub-closed"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_trials"] == 1 and summary["num_errors"] == 0
    assert summary["data"]["split"].startswith("closed")
    test, baseline = summary["trials"][0]["test"], summary["baseline"]
    assert test["num_queries"] == 12.0  # leave-one-out over the 12 official test images
    for result in (test, baseline):
        for key in ("probe@100/top1", "probe@100/top5", "probe@50/top1", "probe@50/top5"):
            assert 0.0 <= result[key] <= 1.0
        assert result["probe@100/top5"] == 1.0  # 3 classes: the true one is always among the top 5
    assert "**Linear probe**" in (out / "report.md").read_text()
