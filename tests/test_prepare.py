"""``prepare``: a tiny CUB layout -> Parquet shards + manifest through Ray Data; the CLI."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from fgray.data.sources.prepare import encode_image, prepare, read_manifest
from fgray.data.schema import MANIFEST_NAME, SHARD_SCHEMA, Manifest
from layouts import BUILDERS, corrupt_image, make_cub200, write_image

REPO = Path(__file__).resolve().parents[1]
SHORT = 32


def _run_cli(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fgray.data", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


# ---------------------------------------------------------------- encoding (no Ray)


def test_encode_image_resizes_short_side_and_scales_box(tmp_path):
    path = write_image(tmp_path / "a.jpg", (80, 40))
    data, w, h, box = encode_image(path.read_bytes(), (8.0, 4.0, 40.0, 40.0), 20, "jpeg", 90)
    assert (w, h) == (40, 20)
    assert box == pytest.approx((4.0, 2.0, 20.0, 20.0))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (40, 20) and im.mode == "RGB"


def test_encode_image_keeps_size_and_converts_mode(tmp_path):
    path = tmp_path / "g.png"
    Image.new("LA", (30, 50)).save(path)
    data, w, h, box = encode_image(path.read_bytes(), (-5.0, 0.0, 100.0, 10.0), None, "png", 90)
    assert (w, h, box) == (30, 50, (0.0, 0.0, 30.0, 10.0))  # clipped to the image
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == "RGB"


def test_encode_image_rejects_truncated(tmp_path):
    path = corrupt_image(write_image(tmp_path / "t.jpg", (64, 48)), kind="truncate")
    with pytest.raises(OSError):
        encode_image(path.read_bytes(), None, 32, "jpeg", 90)


# ---------------------------------------------------------------- through Ray


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepare")
    layout = make_cub200(tmp, per_class=3)
    ids = sorted(layout.expected)
    bad = {ids[1]: "garbage", ids[4]: "truncate"}
    for image_id, kind in bad.items():
        corrupt_image(Path(layout.expected[image_id]["path"]), kind)
    out = tmp / "out"
    manifest = prepare("cub200", str(layout.root), str(out), short_side=SHORT, rows_per_shard=3)
    return layout, out, manifest, bad


@pytest.mark.parametrize("name", sorted(set(BUILDERS) - {"cub200"}))  # cub200: the fixture above
def test_prepare_every_layout(ray_local, tmp_path, name):
    """Every published layout -> shards whose rows carry the reader's labels, splits and boxes."""
    layout = BUILDERS[name](tmp_path)
    manifest = prepare(name, str(layout.root), str(tmp_path / "out"), short_side=SHORT)
    assert manifest.dataset == name and manifest.counts == layout.counts and not manifest.corrupt
    rows = {r["image_id"]: r for r in _table(tmp_path / "out", manifest).to_pylist()}
    assert sorted(rows) == sorted(layout.expected)
    for image_id, exp in layout.expected.items():
        row = rows[image_id]
        assert (row["label"], row["class_name"], row["split"]) == (exp["label"], exp["class_name"], exp["split"])
        assert (row["bbox"] is None) == (exp["bbox"] is None)


def _table(out: Path, manifest: Manifest):
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(out / s) for s in manifest.shards])


def test_shards_match_schema_and_manifest(prepared):
    layout, out, manifest, bad = prepared
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == sorted([*manifest.shards, MANIFEST_NAME])  # no staging folder, no stray files
    assert all(s.startswith("part-") and s.endswith(".parquet") for s in manifest.shards)
    assert len(manifest.shards) >= 2  # rows_per_shard=3, 7 good images
    for s in manifest.shards:
        assert pq.read_schema(out / s).remove_metadata().equals(SHARD_SCHEMA)
    table = _table(out, manifest)
    good = {k: v for k, v in layout.expected.items() if k not in bad}
    assert sorted(table.column("image_id").to_pylist()) == sorted(good)
    for row in table.to_pylist():
        exp = good[row["image_id"]]
        assert (row["label"], row["class_name"], row["split"]) == (exp["label"], exp["class_name"], exp["split"])


def test_manifest_counts_classes_hash(prepared):
    layout, out, manifest, bad = prepared
    assert Manifest.from_json((out / MANIFEST_NAME).read_text()) == manifest == read_manifest(str(out))
    good_splits = [v["split"] for k, v in layout.expected.items() if k not in bad]
    assert manifest.counts == {s: good_splits.count(s) for s in sorted(set(good_splits))}
    assert manifest.num_images == len(good_splits)
    assert manifest.classes == layout.classes
    assert manifest.dataset == "cub200" and manifest.short_side == SHORT
    assert len(manifest.content_hash) == 64
    from fgray import __version__

    assert manifest.fgray_version == __version__


def test_resize_and_box_scaling(prepared):
    layout, out, manifest, _ = prepared
    for row in _table(out, manifest).to_pylist():
        with Image.open(io.BytesIO(row["image"])) as im:
            assert im.size == (row["width"], row["height"]) and im.format == "JPEG"
        assert min(row["width"], row["height"]) == SHORT
        with Image.open(layout.expected[row["image_id"]]["path"]) as orig:
            w0, h0 = orig.size
        x1, y1, x2, y2 = layout.expected[row["image_id"]]["bbox"]
        sx, sy = row["width"] / w0, row["height"] / h0
        assert row["bbox"] == pytest.approx([x1 * sx, y1 * sy, x2 * sx, y2 * sy], abs=1e-4)


def test_corrupt_images_are_listed(prepared):
    layout, _, manifest, bad = prepared
    listed = {c["image_id"]: c for c in manifest.corrupt}
    assert set(listed) == set(bad)
    for image_id, entry in listed.items():
        assert entry["path"] == layout.expected[image_id]["path"]
        assert entry["error"] and "\n" not in entry["error"]


def test_second_run_is_a_no_op(prepared):
    layout, out, manifest, _ = prepared
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = prepare("cub200", str(layout.root), str(out), short_side=SHORT, rows_per_shard=3)
    assert again == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_changed_options_rewrite_without_mixing(prepared, tmp_path):
    """A crashed earlier run (stale shard, staging folder, no manifest) is cleaned up; URIs work."""
    layout, out, manifest, _ = prepared
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / MANIFEST_NAME).unlink()  # as if a run crashed before writing its manifest
    (copy / "part-00077.parquet").write_bytes(b"stale")
    (copy / "_staging-deadbeef0000").mkdir()
    (copy / "keep-me.txt").write_text("not ours")
    # file:// URIs take the pyarrow-filesystem path that s3:// takes
    new = prepare("cub200", f"file://{layout.root}", f"file://{copy}", short_side=24, rows_per_shard=100)
    assert new.content_hash != manifest.content_hash
    assert sorted(p.name for p in copy.iterdir()) == sorted([*new.shards, MANIFEST_NAME, "keep-me.txt"])
    assert new.shards == ["part-00000.parquet"]
    assert min(pq.read_table(copy / new.shards[0], columns=["width", "height"]).to_pylist()[0].values()) == 24


# ---------------------------------------------------------------- CLI (no Ray)


def test_cli_missing_root_is_one_line_exit_2(tmp_path):
    res = _run_cli("prepare", "--dataset", "cub200", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_unknown_dataset_and_malformed_layout(tmp_path):
    res = _run_cli("prepare", "--dataset", "imagenet", "--root", str(tmp_path), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and res.stderr.strip().startswith("error: --dataset: unknown dataset 'imagenet'")
    layout = make_cub200(tmp_path)
    (layout.root / "classes.txt").write_text("1\n")
    res = _run_cli("prepare", "--dataset", "cub200", "--root", str(layout.root), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {layout.root / 'classes.txt'}:1: expected '<class_id> <class name>', got '1'"]


def test_cli_info(prepared):
    _, out, manifest, _ = prepared
    res = _run_cli("info", str(out))
    assert res.returncode == 0, res.stderr
    assert f"cub200, {manifest.num_images} images" in res.stdout and "corrupt" in res.stdout
    res = _run_cli("info", str(out / "nothing"))
    assert res.returncode == 2 and res.stderr.startswith("error: ")
