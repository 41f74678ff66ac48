"""The synthetic dataset on disk: rendered once into Parquet shards + ``manifest.json``
(the contract of :mod:`fgray.data.schema`) and cached by the spec's content hash."""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import fgray
from fgray.data.schema import MANIFEST_NAME, SHARD_SCHEMA, Manifest
from fgray.data.sources.synthetic import GENERATOR_VERSION, JPEG_QUALITY, SyntheticSpec, class_name, render, split_of


def content_hash(spec: SyntheticSpec) -> str:
    """sha256 of the spec and GENERATOR_VERSION: equal hash => identical images."""
    described = spec.to_dict()
    if described["image_format"] == "png":  # the field came later: PNG sets keep their hash (and caches)
        del described["image_format"]
    payload = json.dumps({"generator_version": GENERATOR_VERSION, "spec": described}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def default_cache_dir(spec: SyntheticSpec) -> str:
    """``$FGRAY_CACHE/synthetic-<hash12>`` (``FGRAY_CACHE`` defaults to ``~/.cache/fgray``)."""
    root = os.environ.get("FGRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fgray")
    return os.path.join(root, f"synthetic-{content_hash(spec)[:12]}")


def _read_manifest(folder: Path) -> Manifest | None:
    try:
        return Manifest.from_json((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError, TypeError):
        return None


def _encode(image: np.ndarray, image_format: str = "png") -> bytes:
    buf = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def photo_jpegs(count: int, width: int = 500, height: int = 375, quality: int = 90, seed: int = 0,
                noise_std: float = 13.0) -> list[tuple[bytes, tuple[float, float, float, float]]]:
    """``count`` synthetic birds as a photo dataset stores them (CUB-200's typical 500 x 375, JPEG at
    ``quality``): each rendered at the longer side, centre-cropped to width x height; with its bird box
    clipped to the crop. ``noise_std`` 13 gives ~75 KB files, CUB's ~77 KB (the texture a decoder pays
    for). Benchmarks and tests of the view path (bench/view_path.py)."""
    spec = SyntheticSpec(num_classes=16, images_per_class=max(2, -(-count // 16)), image_size=max(width, height),
                         seed=seed, noise_std=noise_std)
    out = []
    for i in range(count):
        image, box = render(spec, i % spec.num_classes, i // spec.num_classes)
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        buf = io.BytesIO()
        Image.fromarray(image[top:top + height, left:left + width]).save(buf, format="JPEG", quality=quality)
        x1, y1, x2, y2 = box
        clipped = (min(max(x1 - left, 0), width), min(max(y1 - top, 0), height),
                   min(max(x2 - left, 0), width), min(max(y2 - top, 0), height))
        out.append((buf.getvalue(), tuple(float(v) for v in clipped)))
    return out


def _render_class(spec: SyntheticSpec, c: int) -> list[tuple[bytes, tuple, tuple[int, ...]]]:
    """Every image of class ``c``: (its encoded bytes, bird box, image shape)."""
    out = []
    for i in range(spec.images_per_class):
        image, box = render(spec, c, i)
        out.append((_encode(image, spec.image_format), tuple(box), image.shape))
    return out


def _render_classes(spec: SyntheticSpec, max_workers: int = 8) -> Iterator[list]:
    """``_render_class`` of every class in order, in a pool of processes (single-threaded Python: seconds
    on a laptop, and the first thing a fresh machine waits for); each image is the same whichever
    process draws it (its own seeded generator). Forked from a process with one thread (the sweep's
    ``render_ahead``: no imports to repeat); spawned from one with more (a trial's, with Ray's), where
    a renderer, unlike a trial's view workers, would gain little from the fork (a spawned worker's
    imports are short beside its rendering). A set of under ~200 images is rendered here."""
    workers = min(max_workers, os.cpu_count() or 1, spec.num_classes)
    if workers < 2 or spec.num_classes * spec.images_per_class < 200:
        yield from (_render_class(spec, c) for c in range(spec.num_classes))
        return
    context = multiprocessing.get_context("fork" if fork_is_safe() else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(functools.partial(_render_class, spec), range(spec.num_classes))


def fork_is_safe() -> bool:
    """Whether this process can fork a renderer: one thread and no Ray (a fork copies other threads'
    locks and state mid-flight)."""
    ray = sys.modules.get("ray")
    return threading.active_count() == 1 and not (ray is not None and ray.is_initialized())


def _write_shard(path: Path, rows: dict[str, list]) -> None:
    table = pa.Table.from_pydict(rows, schema=SHARD_SCHEMA)
    pq.write_table(table, path)


def write_shards(spec: SyntheticSpec, out_dir: str | os.PathLike, rows_per_shard: int = 1024) -> Manifest:
    """Render ``spec`` into ``out_dir`` as ``part-*.parquet`` + ``manifest.json``; cached.

    If ``out_dir`` already holds a manifest with this spec's hash, it is returned and
    nothing is written. Otherwise everything is written to a sibling temp folder that is
    renamed into place (manifest written last), so an interrupted run never looks complete.
    """
    out = Path(out_dir).expanduser()
    digest = content_hash(spec)
    existing = _read_manifest(out)
    if existing is not None and existing.content_hash == digest:
        return existing

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = _write_all(spec, tmp, digest, rows_per_shard)
        _publish(tmp, out, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return _read_manifest(out) or manifest


def _write_all(spec: SyntheticSpec, folder: Path, digest: str, rows_per_shard: int) -> Manifest:
    columns = [f.name for f in SHARD_SCHEMA]
    rows: dict[str, list] = {c: [] for c in columns}
    shards: list[str] = []
    counts: dict[str, int] = {}

    def flush() -> None:
        name = f"part-{len(shards):05d}.parquet"
        _write_shard(folder / name, rows)
        shards.append(name)
        for c in columns:
            rows[c].clear()

    for c, images in enumerate(_render_classes(spec)):
        name, split = class_name(c), split_of(spec, c)
        for i, (encoded, box, shape) in enumerate(images):
            row = {"image_id": f"synthetic/{c:03d}/{i:04d}", "image": encoded, "label": c,
                   "class_name": name, "bbox": list(box), "split": split, "width": shape[1], "height": shape[0]}
            for col in columns:
                rows[col].append(row[col])
            counts[split] = counts.get(split, 0) + 1
            if len(rows["image_id"]) >= rows_per_shard:
                flush()
    if rows["image_id"]:
        flush()

    manifest = Manifest(
        dataset="synthetic", fgray_version=fgray.__version__, content_hash=digest,
        num_images=spec.num_classes * spec.images_per_class, counts=counts,
        classes=[class_name(c) for c in range(spec.num_classes)], shards=shards,
        short_side=spec.image_size, extra=spec.to_dict(),
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())  # last: its presence means complete
    return manifest


def _publish(tmp: Path, out: Path, digest: str) -> None:
    """Move the finished temp folder to ``out``, replacing a stale or incomplete one."""
    if out.exists():
        current = _read_manifest(out)
        if current is not None and current.content_hash == digest:
            return  # a concurrent writer finished first: keep its (identical) copy
        if (current is None or current.dataset != "synthetic") and any(out.iterdir()):
            raise FileExistsError(f"{out} holds files that are not a synthetic dataset; not replacing them")
        stale = out.parent / f".{out.name}.stale-{uuid.uuid4().hex[:8]}"
        out.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:  # lost a race to another writer between the check and the rename
        current = _read_manifest(out)
        if current is None or current.content_hash != digest:
            raise
