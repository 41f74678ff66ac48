"""The trial data path: declared inputs, one multi-epoch training dataset per rank whose batches are
the same in every run, whole-split shuffling, and validation batches kept in memory."""
from __future__ import annotations

import multiprocessing
import subprocess
import sys

import numpy as np
import pytest

from fgray.config import DataConfig
from fgray.data import pipeline
from fgray.data.inputs import Inputs, ViewRecipe
from fgray.data.pipeline import epoch_order
from fgray.trial import ValBatches


def _synthetic(tmp_path, monkeypatch, **options):
    monkeypatch.setenv("FGRAY_CACHE", str(tmp_path))
    data = DataConfig(name="synthetic", image_size=32, synthetic={"num_classes": 4, "images_per_class": 5, **options})
    prepared = pipeline.resolve_dataset(data)
    return data, prepared, pipeline.assign(prepared, data)


def _batches(ds, size=8):
    return list(ds.iter_batches(batch_size=size, batch_format="numpy"))


def test_train_dataset_holds_the_declared_inputs_of_every_epoch(ray_local, tmp_path, monkeypatch):
    data, prepared, splits = _synthetic(tmp_path, monkeypatch)
    inputs = Inputs(views=(ViewRecipe("moco_pair"),), columns=("label", "image_id"))
    split = pipeline.training_split(prepared, splits.train, data, inputs, "test", {})
    # Labels are the training classes re-indexed 0..C-1 (never test classes).
    assert split.facts.num_classes == len(split.label_map) and sorted(split.label_map.values()) == list(
        range(split.facts.num_classes))
    ds = pipeline.train_dataset(split, inputs, data, seed=0, cpus_per_task=0.25, epochs=range(3), batch_rows=4,
                                name=pipeline.dataset_name("demo", "t1", "train views"))
    assert ds.name == "demo:t1:train views"  # the Ray dashboard's Data tab names it by sweep, trial and purpose
    batches = _batches(ds)
    assert all(set(b) == {"view1", "view2", "label", "image_id"} for b in batches)
    assert batches[0]["view1"].shape[1:] == (3, 32, 32) and batches[0]["view1"].dtype == np.uint8
    ids = np.concatenate([b["image_id"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert len(ids) == 3 * len(splits.train) and set(ids) == set(splits.train.astype(str))
    assert set(labels) == set(range(split.facts.num_classes))
    first, second = ids[: len(splits.train)], ids[len(splits.train): 2 * len(splits.train)]
    assert sorted(first) == sorted(second) and list(first) != list(second)  # a new permutation each epoch


def test_train_batches_are_identical_across_runs_and_actor_counts(ray_local, tmp_path, monkeypatch):
    data, prepared, splits = _synthetic(tmp_path, monkeypatch)
    inputs = Inputs(views=(ViewRecipe("moco_pair"),), columns=("image_id",))
    split = pipeline.training_split(prepared, splits.train, data, inputs, "test", {})

    def run(actors, epochs=range(2)):
        ds = pipeline.train_dataset(split, inputs, data, seed=7, cpus_per_task=0.25, epochs=epochs,
                                    batch_rows=4, actors=actors)
        return _batches(ds)

    one, again, two = run(1), run(1), run(2)
    for a, b, c in zip(one, again, two):
        assert list(a["image_id"]) == list(b["image_id"]) == list(c["image_id"])
        assert np.array_equal(a["view1"], b["view1"]) and np.array_equal(a["view1"], c["view1"])
    # A resumed trial builds its dataset from a later epoch: it draws what the full run drew there.
    rows = len(splits.train)
    resumed = np.concatenate([b["view2"] for b in run(1, range(1, 2))])
    assert np.array_equal(resumed[:rows], np.concatenate([b["view2"] for b in one])[rows: 2 * rows])


def test_forked_view_workers_draw_the_ray_data_pipelines_batches(ray_local, tmp_path, monkeypatch):
    # A one-worker trial draws its views in forked DataLoader workers, a Train worker through Ray Data:
    # the same batches either way, with any number of workers, and from a resumed epoch on.
    data, prepared, splits = _synthetic(tmp_path, monkeypatch, images_per_class=8)
    inputs = Inputs(views=(ViewRecipe("moco_pair"),), columns=("label", "image_id"))
    split = pipeline.training_split(prepared, splits.train, data, inputs, "test", {})
    batch, rows = 2, 6  # 3 steps an epoch
    assert split.num_rows > rows  # each epoch's cut drops rows

    def ray_data(epochs):
        return _batches(pipeline.train_dataset(split, inputs, data, seed=5, cpus_per_task=0.25, epochs=epochs,
                                               rows_per_epoch=rows), batch)

    def forked(epochs, workers):
        return list(pipeline.forked_train_batches(split, inputs, data, seed=5, epochs=epochs, batch_size=batch,
                                                  workers=workers, rows_per_epoch=rows))

    reference = ray_data(range(3))
    assert len(reference) == 9
    # A trial stopped early (ASHA) closes its stream: its view workers end with it.
    stream = pipeline.forked_train_batches(split, inputs, data, seed=5, epochs=range(3), batch_size=batch,
                                           workers=2, rows_per_epoch=rows)
    next(stream)
    assert len(multiprocessing.active_children()) == 2
    stream.close()
    assert not multiprocessing.active_children()
    for got in (forked(range(3), 1), forked(range(3), 2), [*ray_data(range(1)), *forked(range(1, 3), 1)]):
        assert len(got) == len(reference)
        for a, b in zip(got, reference):
            assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_each_epoch_reads_its_own_permutation_when_cut_to_whole_batches(ray_local, tmp_path, monkeypatch):
    # rows_per_epoch (steps x batch size) keeps an epoch's batches inside its permutation, so a trial
    # resumed at epoch 1 reads exactly what an uninterrupted trial read in epoch 1.
    data, prepared, splits = _synthetic(tmp_path, monkeypatch)
    inputs = Inputs(views=(ViewRecipe("crop_flip"),), columns=("image_id",))
    split = pipeline.training_split(prepared, splits.train, data, inputs, "test", {})
    ids = split.ids

    def run(epochs):
        ds = pipeline.train_dataset(split, inputs, data, seed=3, cpus_per_task=0.25, epochs=epochs,
                                    batch_rows=2, rows_per_epoch=4)
        return np.concatenate([b["image_id"] for b in _batches(ds, 2)])

    assert len(ids) > 4  # the cut drops rows
    whole = run(range(2))
    assert len(whole) == 8
    for epoch in range(2):
        assert list(whole[4 * epoch: 4 * epoch + 4]) == list(ids[epoch_order(len(ids), 3, epoch)[:4]])
    assert list(run(range(1, 2))) == list(whole[4:])


def test_epoch_order_mixes_classes_like_a_random_permutation():
    labels = np.repeat(np.arange(18), 64)  # class-sorted, as the synthetic shards are
    batch = 64
    classes = [len(set(labels[epoch_order(len(labels), seed, 0)][i: i + batch]))
               for seed in range(5) for i in range(0, len(labels) - batch + 1, batch)]
    rng = np.random.default_rng(123)
    reference = [len(set(rng.choice(labels, batch, replace=False))) for _ in range(len(classes))]
    assert abs(np.mean(classes) - np.mean(reference)) < 0.3 and np.mean(classes) > 17
    # Ranks deal one permutation: disjoint, together the whole split.
    parts = [epoch_order(10, 3, 1, rank, 3) for rank in range(3)]
    assert sorted(np.concatenate(parts)) == list(range(10))


def test_method_needing_boxes_on_a_dataset_without_boxes_is_one_line(tmp_path, monkeypatch):
    import pyarrow as pa

    data, prepared, splits = _synthetic(tmp_path, monkeypatch)
    inputs = Inputs(views=(ViewRecipe("object_background"),), columns=("label",))
    table = pipeline.read_rows(prepared, splits.train, ["image", "image_id", "label", "bbox"])
    no_boxes = table.set_column(table.schema.get_field_index("bbox"), "bbox",
                                pa.nulls(table.num_rows, table.schema.field("bbox").type))
    monkeypatch.setattr(pipeline, "read_rows", lambda *a, **k: no_boxes)
    with pytest.raises(ValueError) as err:
        pipeline.training_split(prepared, splits.train, data, inputs, "dva", {})
    assert "\n" not in str(err.value) and "needs boxes" in str(err.value) and "'dva'" in str(err.value)


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


def test_small_cpu_splits_embed_in_process_like_the_actor_pool(ray_local, tmp_path, monkeypatch):
    import functools

    from fgray.data.frozen.embedding_cache import embed_rows, frozen_encoder
    from fgray.data.inputs import EncoderSpec

    data, prepared, splits = _synthetic(tmp_path, monkeypatch)
    rows = pipeline.Rows(prepared, splits.test, ("image", "label", "image_id"))  # read here, or by Ray Data
    spec = EncoderSpec(kind="timm", model="test_resnet", pretrained="random", seed=3)
    encoder = functools.partial(frozen_encoder, spec.model_dump_json(), data.image_size)
    here = embed_rows([encoder], rows, data, 8, 0.25, use_gpu=False, local_max_rows=rows.num_rows)
    pool = embed_rows([encoder], rows, data, 8, 0.25, use_gpu=False, local_max_rows=0)
    assert here.num_rows == pool.num_rows == rows.num_rows
    pool = pool.take(np.argsort(pool["image_id"].to_numpy(zero_copy_only=False)))  # the pool reorders rows
    here = here.take(np.argsort(here["image_id"].to_numpy(zero_copy_only=False)))
    assert here["image_id"].to_pylist() == pool["image_id"].to_pylist()
    assert here["label"].to_pylist() == pool["label"].to_pylist()
    embedded = [np.stack(t["embedding_0"].to_numpy(zero_copy_only=False)) for t in (here, pool)]
    assert len(embedded[0]) == rows.num_rows and np.allclose(*embedded, atol=1e-5)


def test_ray_data_reads_exactly_the_rows_asked_for(ray_local, tmp_path, monkeypatch):
    # Shards in a bucket or on a shared mount are read by Ray Data's read tasks, ids pushed into the
    # scan (the synthetic set, rendered per node, is read here instead): the same rows either way.
    import dataclasses

    data, prepared, splits = _synthetic(tmp_path, monkeypatch)
    shared = dataclasses.replace(prepared, manifest=dataclasses.replace(prepared.manifest, dataset="imagefolder"))
    rows = pipeline.Rows(shared, splits.test, ("image_id", "label"),
                         name=pipeline.dataset_name("demo", "evaluation", "imagefolder"))
    assert rows.dataset(num_cpus=0.25).map_batches(lambda b: b).name == "demo:evaluation:imagefolder"
    # a model name's '/' would name a log folder Ray does not make: the names keep none
    cache = pipeline.Rows(prepared, splits.test, ("image_id",), name=pipeline.dataset_name("cache", "hf-hub:a/b"))
    assert cache.dataset(num_cpus=0.25).name == "cache:hf-hub:a-b" and len(cache.dataset(num_cpus=0.25).take_all())
    read = sorted(zip(*(rows.dataset(num_cpus=0.25).to_pandas()[c].tolist() for c in ("image_id", "label"))))
    here = sorted(zip(*(rows.read().column(c).to_pylist() for c in ("image_id", "label"))))
    assert read == here and [i for i, _ in read] == sorted(splits.test.astype(str))


def test_datasets_built_here_keep_their_types_and_blocks(ray_local, tmp_path, monkeypatch):
    # Built in this process without a Ray task (ray.data.from_items: trials may hold every CPU): the rendered
    # set's rows keep the Arrow types the actors read, and each training index block stays one block, whole.
    import pyarrow as pa

    _, prepared, splits = _synthetic(tmp_path, monkeypatch)
    rows = pipeline.Rows(prepared, splits.train, ("image", "label", "image_id", "class_name"))
    ds = rows.dataset(num_cpus=0.25, rows_per_block=4)
    schema = ds.schema()
    assert dict(zip(schema.names, schema.types)) == {"image": pa.binary(), "label": pa.int64(),
                                                      "image_id": pa.string(), "class_name": pa.string()}
    assert ds.materialize().num_blocks() == -(-len(splits.train) // 4)
    here = rows.read()
    got = {r["image_id"]: (r["image"], r["label"]) for r in ds.take_all()}
    assert got == {i: (b, lab) for i, b, lab in zip(*(here.column(c).to_pylist() for c in ("image_id", "image",
                                                                                           "label")))}
    order = [pa.table({"row": np.arange(10), "epoch": np.zeros(10, np.int64)})]
    blocks = pipeline.index_blocks(order, 2)  # 2, 4, 4 rows
    index = pipeline.index_dataset(blocks).materialize()
    assert index.num_blocks() == len(blocks) == index.count()
    assert [list(r["row"]) for r in index.take_all()] == [b.column("row").to_pylist() for b in blocks]
    assert pipeline.index_dataset([]).count() == 0  # no epochs left (a finished trial resumed)


def test_a_trials_driver_imports_neither_torch_nor_the_view_code():
    # A DDP trial's Tune driver and its Train controller import the trial and the pipeline but never draw
    # a view: torch and torchvision (seconds) load in the processes that draw or train, not on every
    # trial's start-up path.
    probe = ("import sys, fgray.trial, fgray.data.pipeline, fgray.data.frozen.detect\n"
             "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'fgray.data.views') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
