"""Encode a dataset layout into Parquet shards + ``manifest.json`` (the contract of
:mod:`fgray.data.schema`), in parallel through Ray Data.

    prepare("cub200", "/data/CUB_200_2011", "/data/shards/cub200")   # or s3://... for either

Steps: read the layout's records (no Ray: a bad layout fails in a second with one line) ->
hash the inputs -> return at once when ``out/manifest.json`` carries the same hash ->
otherwise encode with Ray Data (decode, RGB, resize so the short side is ``short_side``,
scale boxes, re-encode) -> ``write_parquet`` -> publish the shards as ``part-NNNNN.parquet``
-> write ``manifest.json`` last.

Idempotency: the content hash covers the reader name, every record (image id, label, class
name, split, box), each image file's size and modification time (one ``stat`` per file
locally, one recursive listing for a remote root), the encoding options and
:data:`PREPARE_FORMAT` (bumped when the encoding changes). Same hash + shards present =>
nothing is done. ``force=True`` re-encodes.

Crash safety: a folder is complete iff it holds ``manifest.json``. A run that has work to do
first deletes the old manifest, then the old ``part-*.parquet`` files and any leftover
``_staging-*`` folder, writes the new shards into ``out/_staging-<hash>/``, moves them to
``out/part-NNNNN.parquet`` and writes the manifest last (to a temporary name, then moved).
A crash at any point leaves a folder without a manifest, which the next run clears; a
complete folder never mixes shards of two runs. Other files in ``out`` are never touched.

Corrupt or unreadable images are dropped by the encoding step and listed in
``Manifest.corrupt`` (found by comparing the written image ids with the records; the error
text is recomputed for those few images in the driver).

Cluster note: workers read the image files themselves, so on a multi-node cluster ``root``
must be visible to every node (``s3://...`` or a shared filesystem).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections import Counter

import pyarrow as pa

from fgray import __version__
from fgray.data.sources.readers import class_names, read_layout
from fgray.data.sources.readers.common import filesystem, is_uri, list_files, normalize_root, read_bytes
from fgray.data.schema import MANIFEST_NAME, SHARD_SCHEMA, Manifest, Record

log = logging.getLogger("fgray.data")

PREPARE_FORMAT = 1  # bump when the encoding below changes: it invalidates every prepared folder
DEFAULT_ROWS_PER_SHARD = 2048  # ~40-60 MB of 256-px JPEGs per shard
IMAGE_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}
STAGING_PREFIX = "_staging-"
SHARD_PREFIX = "part-"


# --------------------------------------------------------------------------- encoding (runs in Ray workers)


def encode_image(data: bytes, bbox, short_side: int | None, image_format: str, quality: int):
    """Decode ``data``, convert to RGB, resize so the short side is ``short_side`` (aspect kept;
    ``None``: size kept) and re-encode. Returns ``(bytes, width, height, bbox)`` with the box
    scaled to the stored pixels and clipped to the image (``None`` if it has no area left).
    Raises on unreadable or truncated images."""
    from PIL import Image

    fmt = IMAGE_FORMATS[image_format.lower()]
    with Image.open(io.BytesIO(data)) as im:
        w0, h0 = im.size
        if w0 < 1 or h0 < 1:
            raise ValueError(f"empty image ({w0}x{h0})")
        if short_side:
            scale = short_side / min(w0, h0)
            size = (short_side, max(1, round(h0 * scale))) if w0 <= h0 else (max(1, round(w0 * scale)), short_side)
            im.draft("RGB", size)  # JPEG: decode directly at a reduced scale (>= size); no-op otherwise
        else:
            size = (w0, h0)
        if not short_side and im.format == fmt and im.mode == "RGB":
            im.load()  # verify it decodes; keep the file's own bytes
            out = data
        else:
            rgb = im.convert("RGB")
            if rgb.size != size:
                rgb = rgb.resize(size, Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            if fmt == "JPEG":
                rgb.save(buf, fmt, quality=quality)
            else:
                rgb.save(buf, fmt)
            out = buf.getvalue()
    if bbox is not None:
        sx, sy = size[0] / w0, size[1] / h0
        x1, y1, x2, y2 = bbox
        x1, x2 = (min(max(v * sx, 0.0), size[0]) for v in (x1, x2))
        y1, y2 = (min(max(v * sy, 0.0), size[1]) for v in (y1, y2))
        bbox = (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None
    return out, size[0], size[1], bbox


def encode_batch(batch: pa.Table, short_side, image_format, quality) -> pa.Table:
    """Ray Data UDF: record rows in, :data:`SHARD_SCHEMA` rows out; unreadable images are dropped."""
    cols: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    for row in batch.to_pylist():
        try:
            data, w, h, bbox = encode_image(
                read_bytes(row["path"]), row["bbox"] if row["has_bbox"] else None, short_side, image_format, quality
            )
        except Exception:  # noqa: BLE001 - any failure = corrupt image, explained by the driver
            continue
        for k, v in (("image_id", row["image_id"]), ("image", data), ("label", row["label"]),
                     ("class_name", row["class_name"]), ("bbox", list(bbox) if bbox else None),
                     ("split", row["split"]), ("width", w), ("height", h)):
            cols[k].append(v)
    return pa.Table.from_pydict(cols, schema=SHARD_SCHEMA)


# --------------------------------------------------------------------------- hashing


def _file_stats(records: list[Record], root: str) -> list[tuple[int, int]]:
    """``(size, mtime_ns)`` per record, ``(-1, 0)`` for a missing file."""
    if not is_uri(root):
        out = []
        for r in records:
            try:
                st = os.stat(r.path)
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, 0))
        return out
    listing = {p: (size, mtime) for p, size, mtime in list_files(root)}
    return [listing.get(r.path, (-1, 0)) for r in records]


def content_hash(dataset: str, records: list[Record], stats: list[tuple[int, int]], options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"reader": dataset, "format": PREPARE_FORMAT, "options": options}, sort_keys=True).encode())
    for r, (size, mtime) in sorted(zip(records, stats), key=lambda t: t[0].image_id):
        h.update(json.dumps([r.image_id, r.label, r.class_name, r.split, r.bbox, size, mtime]).encode())
        h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- the output folder


def _out_path(fs_path: str, name: str) -> str:
    return f"{fs_path.rstrip('/')}/{name}"


def read_manifest(out: str) -> Manifest | None:
    """The manifest of a prepared folder, or None when there is none (or it is unreadable)."""
    fs, base = filesystem(normalize_root(out))
    try:
        with fs.open_input_stream(_out_path(base, MANIFEST_NAME)) as f:
            return Manifest.from_json(f.read().decode())
    except (FileNotFoundError, OSError, ValueError, TypeError):
        return None


def _shards_present(fs, base: str, shards: list[str]) -> bool:
    import pyarrow.fs as pafs

    infos = fs.get_file_info([_out_path(base, s) for s in shards])
    return all(i.type == pafs.FileType.File for i in infos)


def _clear(fs, base: str) -> None:
    """Remove what a previous run wrote (manifest first: the folder turns 'incomplete')."""
    import pyarrow.fs as pafs

    manifest = fs.get_file_info(_out_path(base, MANIFEST_NAME))
    if manifest.type == pafs.FileType.File:
        fs.delete_file(manifest.path)
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        name = info.base_name
        if info.type == pafs.FileType.File and (
            (name.startswith(SHARD_PREFIX) and name.endswith(".parquet")) or name == MANIFEST_NAME + ".tmp"
        ):
            fs.delete_file(info.path)
        elif info.type == pafs.FileType.Directory and name.startswith(STAGING_PREFIX):
            fs.delete_dir(info.path)


def _publish(fs, staging: str, base: str) -> list[str]:
    """Move Ray's output files (``<write uuid>_<task>.parquet``) to ``part-NNNNN.parquet``."""
    import pyarrow.fs as pafs

    written = sorted(
        i.path for i in fs.get_file_info(pafs.FileSelector(staging, recursive=True))
        if i.type == pafs.FileType.File and i.path.endswith(".parquet")
    )
    shards = []
    for i, path in enumerate(written):
        name = f"{SHARD_PREFIX}{i:05d}.parquet"
        fs.move(path, _out_path(base, name))
        shards.append(name)
    fs.delete_dir(staging)
    return shards


def _write_manifest(fs, base: str, manifest: Manifest) -> None:
    tmp = _out_path(base, MANIFEST_NAME + ".tmp")
    with fs.open_output_stream(tmp) as f:
        f.write(manifest.to_json().encode())
    fs.move(tmp, _out_path(base, MANIFEST_NAME))


def _written_rows(fs, base: str, shards: list[str]) -> dict[str, str]:
    import pyarrow.parquet as pq

    out = {}
    for s in shards:
        t = pq.read_table(_out_path(base, s), columns=["image_id", "split"], filesystem=fs)
        out.update(zip(t.column("image_id").to_pylist(), t.column("split").to_pylist()))
    return out


def _explain(record: Record, options: dict) -> str:
    try:
        encode_image(read_bytes(record.path), record.bbox, **options)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return "not written (the image decodes in the driver; a worker failed to read it)"


# --------------------------------------------------------------------------- the entry point


def _ray_encode(records: list[Record], fs, staging: str, options: dict, rows_per_shard: int, batch_size: int) -> None:
    import ray

    if not ray.is_initialized():
        ray.init()
    items = [
        {"path": r.path, "image_id": r.image_id, "label": r.label, "class_name": r.class_name, "split": r.split,
         "has_bbox": r.bbox is not None, "bbox": [float(v) for v in (r.bbox or (0.0, 0.0, 0.0, 0.0))]}
        for r in records
    ]
    num_blocks = max(1, min(200, math.ceil(len(items) / batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=num_blocks)
    ds = ds.map_batches(encode_batch, fn_kwargs=options, batch_size=batch_size, batch_format="pyarrow")
    ds.write_parquet(staging, filesystem=fs, min_rows_per_file=rows_per_shard, max_rows_per_file=rows_per_shard)


def prepare(
    dataset: str,
    root: str,
    out: str,
    short_side: int | None = 256,
    image_format: str = "jpeg",
    quality: int = 90,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    force: bool = False,
    batch_size: int = 32,
) -> Manifest:
    """Prepare ``dataset`` (a reader name) from ``root`` into ``out``; see the module docstring.

    Raises ``KeyError`` (unknown dataset), ``DatasetFormatError`` (missing / malformed
    layout) or ``ValueError`` (bad option) before Ray starts.
    """
    if image_format.lower() not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be a positive number of pixels or None, got {short_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    root, out = normalize_root(root), normalize_root(out)
    t0 = time.time()
    records = read_layout(dataset, root)
    options = {"short_side": short_side, "image_format": IMAGE_FORMATS[image_format.lower()].lower(),
               "quality": quality}
    digest = content_hash(dataset, records, _file_stats(records, root), {**options, "rows_per_shard": rows_per_shard})
    log.info("%s: %d images in %s (read in %.1fs)", dataset, len(records), root, time.time() - t0)

    fs, base = filesystem(out)
    current = read_manifest(out)
    if (current is not None and not force and current.content_hash == digest
            and _shards_present(fs, base, current.shards)):
        log.info("%s is up to date (content hash %s): nothing to do", out, digest[:12])
        return current

    _clear(fs, base)
    fs.create_dir(base, recursive=True)
    staging = _out_path(base, STAGING_PREFIX + digest[:12])
    t1 = time.time()
    _ray_encode(records, fs, staging, options, rows_per_shard, batch_size)
    shards = _publish(fs, staging, base)
    written = _written_rows(fs, base, shards)
    corrupt = [
        {"path": r.path, "image_id": r.image_id, "error": _explain(r, options)}
        for r in records if r.image_id not in written
    ]
    counts = Counter(written.values())
    manifest = Manifest(
        dataset=dataset,
        fgray_version=__version__,
        content_hash=digest,
        num_images=len(written),
        counts={k: counts[k] for k in sorted(counts)},
        classes=class_names(records),
        shards=shards,
        short_side=short_side,
        corrupt=corrupt,
        extra={
            "root": root,
            "image_format": options["image_format"],
            "quality": quality,
            "rows_per_shard": rows_per_shard,
            "num_records": len(records),
            "has_bbox": any(r.bbox is not None for r in records),
            "prepare_format": PREPARE_FORMAT,
        },
    )
    _write_manifest(fs, base, manifest)
    log.info("%s: wrote %d images in %d shard(s) to %s in %.1fs; %d corrupt image(s) skipped",
             dataset, len(written), len(shards), out, time.time() - t1, len(corrupt))
    return manifest


__all__ = ["prepare", "read_manifest", "encode_image", "content_hash", "DEFAULT_ROWS_PER_SHARD"]
