"""Cached CLIP teacher embeddings for PP-SSL's ``teacher_mode: cached`` (Ray Data).

``ensure_cache`` embeds every training image once (its un-augmented eval view) with the frozen
CLIP image encoder: ``map_batches`` over an ``ActorPoolStrategy`` pool, one CLIP per actor and
one GPU per actor when the cluster has (or the sweep asks for) GPUs. The result is Parquet
(``image_id``, ``teacher_embedding`` (d,) float32) under
``<storage>/_teacher_cache/<key>/<writer>/``, ``_COMPLETE`` written last; the key hashes the
dataset content, the image ids, the eval view and the teacher config, so later trials and
sweeps reuse it. Trials that start together may each build it once (each in its own writer
folder; readers take any complete one).

``attacher(path)`` returns the ``Dataset -> Dataset`` step that ``pipeline.train_dataset``
runs on the raw rows: an actor loads the table once and adds the ``teacher_embedding`` column
by ``image_id`` (then drops ``image_id``, so training batches stay numeric).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray

from fgray.config import DataConfig
from fgray.data.pipeline import EvalViews, PreparedDataset, read_rows
from fgray.methods.configs import TeacherConfig

COMPLETE_MARKER = "_COMPLETE"
COLUMN = "teacher_embedding"


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)


def cache_key(prepared: PreparedDataset, image_ids: np.ndarray, data: DataConfig, teacher: TeacherConfig) -> str:
    ids = hashlib.sha1("\n".join(sorted(np.asarray(image_ids).astype(str).tolist())).encode()).hexdigest()
    spec = {"dataset": prepared.manifest.content_hash, "ids": ids, "image_size": data.image_size,
            "eval_crop": data.eval_crop, "teacher": teacher.model_dump(mode="json")}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def find_complete(base: str) -> str | None:
    """A finished writer folder under ``base`` (one cache key), or None."""
    fs, path = _filesystem(base)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    for info in fs.get_file_info(pafs.FileSelector(path)):
        marker = posixpath.join(info.path, COMPLETE_MARKER)
        if info.type == pafs.FileType.Directory and fs.get_file_info(marker).type == pafs.FileType.File:
            return base.rstrip("/") + "/" + info.base_name
    return None


class _Embedder:
    """Ray Data actor: encoded images -> eval views -> L2-normalised CLIP embeddings (B, d)."""

    def __init__(self, teacher: dict, image_size: int, eval_crop: float):
        import torch

        from fgray.models.clip import CLIPTeacher

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.teacher = CLIPTeacher(TeacherConfig.model_validate(teacher)).to(self.device)
        self.views = EvalViews(image_size, eval_crop)

    def __call__(self, batch: dict) -> pa.Table:
        import torch

        from fgray.engine import normalize_images

        images = torch.from_numpy(self.views(batch)["image"]).to(self.device)
        embeddings = self.teacher.encode_image(normalize_images(images)).cpu().numpy().astype(np.float32)
        flat = pa.array(embeddings.reshape(-1), type=pa.float32())
        return pa.table({"image_id": pa.array(np.asarray(batch["image_id"]).astype(str), type=pa.string()),
                         COLUMN: pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])})


def ensure_cache(prepared: PreparedDataset, image_ids: np.ndarray, data: DataConfig, teacher: TeacherConfig,
                 storage: str, cpus_per_actor: float = 1.0, use_gpu: bool | None = None, batch_rows: int = 64) -> str:
    """Path of a complete teacher-embedding cache of ``image_ids``, computing it if there is none."""
    base = f"{storage.rstrip('/')}/_teacher_cache/{cache_key(prepared, image_ids, data, teacher)}"
    found = find_complete(base)
    if found is not None:
        return found
    resources = ray.cluster_resources()
    if use_gpu is None:
        use_gpu = resources.get("GPU", 0) > 0
    actors = max(1, min(4, int(resources.get("GPU" if use_gpu else "CPU", 1))))
    out = f"{base}/{uuid.uuid4().hex[:8]}"
    rows = read_rows(prepared, image_ids, ["image", "image_id"])
    blocks = [rows.slice(start, 4 * batch_rows) for start in range(0, rows.num_rows, 4 * batch_rows)] or [rows]
    ds = ray.data.from_arrow(blocks).map_batches(
        _Embedder,
        fn_constructor_kwargs={"teacher": teacher.model_dump(mode="json"), "image_size": data.image_size,
                               "eval_crop": data.eval_crop},
        batch_size=batch_rows, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=1 if use_gpu else 0, num_cpus=cpus_per_actor,
    )
    ds.write_parquet(out)
    fs, path = _filesystem(out)
    with fs.open_output_stream(posixpath.join(path, COMPLETE_MARKER)) as stream:
        stream.write(b"ok\n")
    return out


def read_cache(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids (N,), embeddings (N, d) float32) of a cache folder."""
    fs, local = _filesystem(path)
    table = pads.dataset(local, filesystem=fs, format="parquet").to_table()  # _COMPLETE is ignored (prefix "_")
    column = table.column(COLUMN).combine_chunks()
    embeddings = np.asarray(column.flatten(), dtype=np.float32).reshape(len(table), -1)
    return table.column("image_id").to_numpy(zero_copy_only=False).astype(str), embeddings


class _AttachEmbeddings:
    """Ray Data actor holding the id -> embedding table: adds ``teacher_embedding``, drops ``image_id``."""

    def __init__(self, path: str):
        ids, self.embeddings = read_cache(path)
        self.rows = {image_id: row for row, image_id in enumerate(ids)}
        self.path = path

    def __call__(self, batch: dict) -> dict:
        ids = np.asarray(batch["image_id"]).astype(str)
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise KeyError(f"{len(missing)} training images have no cached teacher embedding in {self.path}, "
                           f"e.g. {missing[0]!r}: delete the cache folder to rebuild it")
        out = {k: v for k, v in batch.items() if k != "image_id"}
        out[COLUMN] = self.embeddings[[self.rows[i] for i in ids]]
        return out


def attacher(path: str, cpus_per_actor: float = 0.5) -> Callable[[ray.data.Dataset], ray.data.Dataset]:
    """The ``Dataset -> Dataset`` step adding ``teacher_embedding`` (d,) float32 to rows with ``image_id``."""

    def attach(ds: ray.data.Dataset) -> ray.data.Dataset:
        return ds.map_batches(_AttachEmbeddings, fn_constructor_kwargs={"path": path}, batch_format="numpy",
                              compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cpus_per_actor)

    return attach
