"""The built-in synthetic dataset: determinism, boxes, classes, shards, cache, open split."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fgray.data.protocols import assign_splits
from fgray.data.schema import MANIFEST_NAME, SHARD_SCHEMA, Manifest
from fgray.data.sources.synthetic import MAX_CLASSES, SyntheticSpec, class_name, class_parts, render
from fgray.data.sources.synthetic_shards import content_hash, default_cache_dir, write_shards

SMALL = SyntheticSpec(num_classes=6, images_per_class=4, image_size=48)
PNG_DEFAULT_HASH = "0c6a6246e96bf3a2"  # content_hash(SyntheticSpec()) before image_format: caches stay valid


def test_same_spec_renders_identical_images():
    for c, i in [(0, 0), (3, 2), (5, 3)]:
        a, box_a = render(SMALL, c, i)
        b, box_b = render(SyntheticSpec(num_classes=6, images_per_class=4, image_size=48), c, i)
        assert a.dtype == np.uint8 and a.shape == (48, 48, 3)
        assert a.tobytes() == b.tobytes() and box_a == box_b


def test_seed_and_instance_change_the_image():
    a, _ = render(SMALL, 1, 0)
    other_seed, _ = render(SyntheticSpec(num_classes=6, images_per_class=4, image_size=48, seed=1), 1, 0)
    other_instance, _ = render(SMALL, 1, 1)
    assert not np.array_equal(a, other_seed)
    assert not np.array_equal(a, other_instance)


def test_bbox_inside_image_and_covers_the_bird():
    """Boxes lie in the image with a plausible size; on a flat background (no clutter, no
    noise) every pixel that differs from the background lies in the box, and the bird
    reaches every side of it (the box is tight)."""
    spec = SyntheticSpec(num_classes=4, images_per_class=6, image_size=64)
    bare = SyntheticSpec(num_classes=4, images_per_class=6, image_size=64, noise_std=0.0, clutter=0, distractors=0)
    for c in range(4):
        for i in range(6):
            _, (x1, y1, x2, y2) = render(spec, c, i)
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            assert 15 <= x2 - x1 and 8 <= y2 - y1

            image, (x1, y1, x2, y2) = render(bare, c, i)
            bg = image[0, 0].astype(int)  # corners are background: the bird keeps a margin
            ys, xs = np.nonzero(np.abs(image.astype(int) - bg).sum(-1) > 0)
            assert xs.min() >= np.floor(x1) and xs.max() <= np.ceil(x2)
            assert ys.min() >= np.floor(y1) and ys.max() <= np.ceil(y2)
            assert xs.min() <= x1 + 2 and xs.max() >= x2 - 3  # tips are thin: a little slack
            assert ys.min() <= y1 + 2 and ys.max() >= y2 - 3


def test_classes_are_distinct_combinations_of_parts():
    parts = [tuple(class_parts(c).values()) for c in range(MAX_CLASSES)]
    assert len(set(parts)) == MAX_CLASSES
    names = [class_name(c) for c in range(48)]
    assert len(set(names)) == 48 and names[7].startswith("bird-07 (head=")
    # Fine-grained: most classes have another class that differs in a single part.
    first = parts[:48]
    one_off = [any(sum(a != b for a, b in zip(p, q)) == 1 for q in first if q != p) for p in first]
    assert np.mean(one_off) > 0.7


def test_different_classes_render_differently_with_same_rng_stream():
    a, _ = render(SMALL, 0, 0)
    b, _ = render(SMALL, 1, 0)
    assert not np.array_equal(a, b)


def test_spec_validation_and_defaults():
    spec = SyntheticSpec()
    assert (spec.num_classes, spec.images_per_class, spec.image_size, spec.train_classes) == (48, 40, 64, 24)
    assert content_hash(spec) == content_hash(SyntheticSpec(train_classes=24))
    assert content_hash(spec) != content_hash(SyntheticSpec(seed=1))
    assert SyntheticSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticSpec(num_classes=MAX_CLASSES + 1)
    with pytest.raises(ValueError, match="train_classes"):
        SyntheticSpec(num_classes=4, train_classes=4)


def test_write_shards_schema_counts_and_cache(tmp_path):
    out = tmp_path / "syn"
    manifest = write_shards(SMALL, out, rows_per_shard=10)
    assert manifest.dataset == "synthetic" and manifest.content_hash == content_hash(SMALL)
    assert manifest.num_images == 24 and manifest.counts == {"train": 12, "test": 12}
    assert manifest.shards == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert len(manifest.classes) == 6 and SyntheticSpec.from_dict(manifest.extra) == SMALL
    assert Manifest.from_json((out / MANIFEST_NAME).read_text()) == manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder gone

    tables = [pq.read_table(out / s) for s in manifest.shards]
    assert all(t.schema.equals(SHARD_SCHEMA) for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    assert [r["image_id"] for r in rows][:2] == ["synthetic/000/0000", "synthetic/000/0001"]
    first = rows[0]
    decoded = np.asarray(Image.open(io.BytesIO(first["image"])))
    assert np.array_equal(decoded, render(SMALL, 0, 0)[0])  # PNG is lossless
    assert first["width"] == first["height"] == 48 and first["class_name"] == class_name(0)
    assert first["bbox"] == pytest.approx(list(render(SMALL, 0, 0)[1]), abs=1e-4)

    # Cached: a second call writes nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = write_shards(SMALL, out)
    assert again == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # A different spec in the same folder replaces it.
    other = SyntheticSpec(num_classes=4, images_per_class=2, image_size=48)
    assert write_shards(other, out).num_images == 8
    assert len(list(out.glob("part-*.parquet"))) == 1


def test_a_jpeg_set_stores_the_same_images_as_jpeg_files(tmp_path):
    # The format enters the hash (its own cache) except for PNG, whose sets keep the hash they had
    # before the field existed (a hash fixed here: GENERATOR_VERSION 2's default spec).
    jpeg = SyntheticSpec(num_classes=6, images_per_class=4, image_size=48, image_format="jpeg")
    assert content_hash(jpeg) != content_hash(SMALL)
    assert content_hash(SyntheticSpec()).startswith(PNG_DEFAULT_HASH)
    manifest = write_shards(jpeg, tmp_path / "jpeg")
    row = pq.read_table(tmp_path / "jpeg" / manifest.shards[0]).slice(0, 1).to_pylist()[0]
    stored = Image.open(io.BytesIO(row["image"]))
    assert stored.format == "JPEG"
    error = np.abs(np.asarray(stored, dtype=np.float32) - render(jpeg, 0, 0)[0]).mean()
    assert 0 < error < 8  # lossy at quality 90 (4.7 levels here: the pixel noise costs most), the same picture
    with pytest.raises(ValueError, match="image_format"):
        SyntheticSpec(image_format="webp")


def test_write_shards_refuses_to_replace_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError):
        write_shards(SMALL, tmp_path)
    assert (tmp_path / "mine.txt").exists()


def test_open_split_classes_are_disjoint(tmp_path):
    manifest = write_shards(SMALL, tmp_path / "syn")
    rows = [r for s in manifest.shards for r in pq.read_table(tmp_path / "syn" / s).to_pylist()]
    train = {r["label"] for r in rows if r["split"] == "train"}
    test = {r["label"] for r in rows if r["split"] == "test"}
    assert train == {0, 1, 2} and test == {3, 4, 5}
    ids = np.array([r["image_id"] for r in rows])
    split = assign_splits("synthetic", "open", ids, np.array([r["label"] for r in rows]),
                          np.array([r["split"] for r in rows]), val_fraction=0.34)
    labels = {r["image_id"]: r["label"] for r in rows}
    assert {labels[i] for i in split.test} == test
    assert not ({labels[i] for i in split.train} | {labels[i] for i in split.val}) & test


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FGRAY_CACHE", str(tmp_path))
    assert default_cache_dir(SMALL) == str(tmp_path / f"synthetic-{content_hash(SMALL)[:12]}")
    monkeypatch.delenv("FGRAY_CACHE")
    assert default_cache_dir(SMALL).endswith(f".cache/fgray/synthetic-{content_hash(SMALL)[:12]}")


def test_closed_protocol_validation_has_two_images_per_class():
    """Closed: val images are carved per class, at least 2 (leave-one-out needs a relevant item);
    a class with fewer than 3 training images keeps them all for training."""
    labels = np.repeat(np.arange(4), [2, 3, 4, 20])
    ids = np.array([f"img{i}" for i in range(len(labels))])
    split = assign_splits("cub200", "closed", ids, labels, np.full(len(labels), "train"), val_fraction=0.25)
    val_labels = labels[np.isin(ids, split.val)]
    assert {c: int((val_labels == c).sum()) for c in range(4)} == {0: 0, 1: 2, 2: 2, 3: 5}
    assert len(split.train) + len(split.val) == len(labels) and len(split.test) == 0


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_pool_of_processes_renders_the_same_shards(tmp_path, monkeypatch, start):
    # Sets of 200+ images render in a process pool (forked from a one-thread process, spawned from one
    # with Ray's threads): the shards are byte for byte those of rendering in this process.
    from fgray.data.sources import synthetic_shards

    spec = SyntheticSpec(num_classes=4, images_per_class=50, image_size=32)
    monkeypatch.setattr(synthetic_shards, "fork_is_safe", lambda: start == "fork")
    monkeypatch.setattr(synthetic_shards.os, "cpu_count", lambda: 2)
    pooled = write_shards(spec, tmp_path / "pool")
    monkeypatch.setattr(synthetic_shards.os, "cpu_count", lambda: 1)
    alone = write_shards(spec, tmp_path / "alone")
    assert pooled == alone
    for shard in alone.shards:
        assert (tmp_path / "pool" / shard).read_bytes() == (tmp_path / "alone" / shard).read_bytes()
