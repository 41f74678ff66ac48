"""Object storage end to end (issue: "cluster-true"): a sweep whose shards, results, checkpoints and
embedding cache all live in a bucket of a local S3-compatible server (moto), then --resume from it.
Nothing in fgray may branch on "is this a local path" where a URI must work."""
from __future__ import annotations

import json

import pytest
import yaml

from fgray.data.sources.prepare import prepare
from fgray.storage import exists, read_bytes
from fgray.sweep import main
from layouts import make_cub200

pytestmark = pytest.mark.slow


def test_shards_results_checkpoints_and_resume_live_in_the_bucket(ray_local, s3_bucket, tmp_path):
    layout = make_cub200(tmp_path, per_class=6, train_per_class=4, num_classes=12)
    shards = f"{s3_bucket}/shards/cub200"
    prepare("cub200", str(layout.root), shards, short_side=32)
    sweep = {
        "name": "s3",
        "method": {"name": "mocov2", "queue_size": 16, "hidden_dim": 32, "proj_dim": 16},
        "data": {"name": "cub200", "root": shards, "image_size": 32, "protocol": "closed"},
        "backbone": {"name": "test_resnet"},
        "train": {"epochs": 2, "batch_size": 8, "steps_per_epoch": 2},
        "eval": {"ks": [1, 2], "local_max_images": 0},  # the test split through the Ray Data actor pool
        "resources": {"cpus_per_worker": 0.5, "data_cpus": 0.25},
    }
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(sweep))
    storage = f"{s3_bucket}/results"
    assert main([str(path), "--storage", storage]) == 0

    summary = json.loads(read_bytes(f"{storage}/s3/summary.json"))
    trial = summary["trials"][0]
    assert summary["num_errors"] == 0 and summary["best"] == trial["trial_id"]
    assert 0 <= trial["test"]["recall@1"] <= 1 and 0 <= summary["baseline"]["recall@1"] <= 1
    for name in ("report.md", "results.parquet", "curves.png"):
        assert exists(f"{storage}/s3/{name}"), name
    assert trial["checkpoint"].startswith(f"{storage}/s3/") and exists(f"{trial['checkpoint']}/meta.json")
    assert exists(f"{storage}/s3/_embeddings")  # the test embeddings' cache

    assert main([str(path), "--storage", storage]) == 2  # a sweep is there: only --resume continues it
    assert main([str(path), "--storage", storage, "--resume"]) == 0
    resumed = json.loads(read_bytes(f"{storage}/s3/summary.json"))
    assert resumed["trials"][0]["test"] == trial["test"] and resumed["trials"][0]["trial_id"] == trial["trial_id"]
