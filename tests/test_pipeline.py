"""The trial data path: one multi-pass training dataset, and validation batches kept in memory."""
from __future__ import annotations

import numpy as np

from fgray.config import DataConfig
from fgray.data import pipeline
from fgray.trial import ValBatches


def test_train_dataset_holds_every_pass_of_every_image(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("FGRAY_CACHE", str(tmp_path))
    data = DataConfig(name="synthetic", image_size=32, synthetic={"num_classes": 4, "images_per_class": 5})
    prepared = pipeline.resolve_dataset(data)
    ids = pipeline.assign(prepared, data).train
    rows = 0
    for batch in pipeline.train_dataset(prepared, ids, data, cpus_per_task=0.25, batch_rows=4, passes=3).iter_batches(
            batch_size=8, batch_format="numpy"):
        assert batch["view1"].shape[1:] == batch["view2"].shape[1:] == (3, 32, 32)
        assert batch["view1"].dtype == np.uint8 and not np.array_equal(batch["view1"], batch["view2"])
        rows += len(batch["view1"])
    assert rows == 3 * len(ids)


class _Shard:
    """Stands in for a Ray Train dataset shard; counts how often it is streamed."""

    def __init__(self, batches: int):
        self.batches, self.streams = batches, 0

    def iter_batches(self, batch_size: int, batch_format: str):
        self.streams += 1
        for i in range(self.batches):
            yield {"image": np.full((batch_size, 3, 4, 4), i, np.uint8), "label": np.arange(batch_size)}


def _values(batches) -> list[int]:
    return [int(b["image"][0, 0, 0, 0]) for b in batches]


def test_val_batches_streamed_once_when_they_fit():
    shard = _Shard(batches=3)
    val = ValBatches(shard, batch_size=2, decode=dict)
    assert _values(val) == _values(val) == [0, 1, 2]
    assert shard.streams == 1


def test_val_batches_streamed_every_time_when_too_big():
    shard = _Shard(batches=3)
    val = ValBatches(shard, batch_size=2, decode=dict, keep_bytes=100)  # each batch is 96 + 16 bytes
    assert _values(val) == _values(val) == [0, 1, 2]
    assert shard.streams == 2
