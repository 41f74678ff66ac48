"""Ray Data pipelines: prepared Parquet shards -> decoded, augmented batches for Ray Train.

The encoded rows of a split are read once (pyarrow, predicate pushed into the scan) into the
object store. Training views are decoded and augmented by a Ray Data actor pool, re-executed every
epoch so each epoch sees new views; block order plus a local buffer shuffle the rows each epoch.
Evaluation rows stay encoded until the process that embeds them (``EvalViews``): a Train worker
for the small validation split, the embedding actors for large test splits.

torchvision (``fgray.data.transforms``) is imported only where images are decoded: the Tune
driver, Train controller and dataset manager of every trial unpickle these datasets but never
decode, and each ~2 s of imports saved there shortens every trial's start-up.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from fgray.config import ConfigError, DataConfig
from fgray.data.protocols import SplitAssignment, assign_splits
from fgray.data.schema import MANIFEST_NAME, Manifest


@dataclass(frozen=True)
class PreparedDataset:
    """A folder of shards plus its manifest, local or remote."""

    root: str
    manifest: Manifest

    @property
    def shard_paths(self) -> list[str]:
        return [posixpath.join(self.root, name) for name in self.manifest.shards]

    @property
    def name(self) -> str:
        return self.manifest.dataset


def resolve_dataset(data: DataConfig) -> PreparedDataset:
    """Locate (and for ``synthetic``, generate once and cache) the shards a config names."""
    if data.name == "synthetic":
        from fgray.data.synthetic import SyntheticSpec
        from fgray.data.synthetic_shards import default_cache_dir, write_shards

        spec = SyntheticSpec(num_classes=data.synthetic.num_classes, images_per_class=data.synthetic.images_per_class,
                             image_size=data.image_size, seed=data.synthetic.seed)
        root = data.root or default_cache_dir(spec)
        return PreparedDataset(root, write_shards(spec, root))
    return PreparedDataset(data.root, read_manifest(data.root, expected=data.name))


def read_manifest(root: str, expected: str | None = None) -> Manifest:
    filesystem, path = pafs.FileSystem.from_uri(root) if "://" in root else (pafs.LocalFileSystem(), root)
    manifest_path = posixpath.join(path, MANIFEST_NAME)
    try:
        with filesystem.open_input_stream(manifest_path) as stream:
            manifest = Manifest.from_json(stream.read().decode())
    except FileNotFoundError:
        raise ConfigError(f"data.root: no {MANIFEST_NAME} in {root} "
                          "(prepare it with `python -m fgray.data prepare --dataset NAME --root RAW --out DIR`)") from None
    if expected and manifest.dataset != expected:
        raise ConfigError(f"data.name: {root} holds '{manifest.dataset}', not '{expected}'")
    return manifest


def assign(prepared: PreparedDataset, data: DataConfig) -> SplitAssignment:
    """Image ids per role under the config's protocol (reads only the small index columns)."""
    index = pads.dataset(prepared.shard_paths, format="parquet", filesystem=_filesystem(prepared.root)).to_table(columns=["image_id", "label", "split"])
    return assign_splits(prepared.name, data.protocol, index["image_id"].to_numpy(zero_copy_only=False),
                         index["label"].to_numpy(), index["split"].to_numpy(zero_copy_only=False),
                         val_fraction=data.val_fraction, seed=data.split_seed)


def read_rows(prepared: PreparedDataset, image_ids: np.ndarray, columns: list[str]) -> pa.Table:
    """The rows of ``image_ids`` (encoded images, not decoded), filtered inside the Parquet scan."""
    wanted = pc.field("image_id").isin(pa.array(np.asarray(image_ids).astype(str)))
    dataset = pads.dataset(prepared.shard_paths, format="parquet", filesystem=_filesystem(prepared.root))
    return dataset.to_table(columns=sorted({*columns, "image_id"}), filter=wanted).select(columns)


def _filesystem(root: str) -> pafs.FileSystem | None:
    return pafs.FileSystem.from_uri(root)[0] if "://" in root else None


def row_blocks(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    # Encoded rows go to the object store once, in blocks small enough to shuffle by block order;
    # reading in the driver avoids Ray Data read tasks competing with Train workers for CPUs.
    blocks = [table.slice(start, rows_per_block) for start in range(0, table.num_rows, rows_per_block)]
    return ray.data.from_arrow(blocks or [table])


class _TwoViews:
    """Ray Data actor: decodes and draws two MoCo v2 views per image.

    An actor lives for the whole trial; plain tasks were each started in a fresh worker process
    after the first trial (measured: ~5 s of imports per 64-image task, the Train worker idle).
    """

    def __init__(self, image_size: int):
        from fgray.data import transforms

        self.two_views = transforms.two_views
        self.augment = transforms.moco_v2_augmentation(image_size)

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        views = self.two_views(batch["image"], self.augment)
        # Per-image numeric columns added by an ``attach`` step (e.g. cached teacher embeddings) pass through.
        return {**views, **{k: np.asarray(v) for k, v in batch.items() if k not in ("image", "image_id")}}


class EvalViews:
    """Encoded rows -> deterministic eval views: ``image`` (B, 3, S, S) uint8 (resize + centre crop);
    the other columns (``label``, ``image_id``, ...) pass through."""

    def __init__(self, image_size: int, crop_fraction: float):
        from fgray.data import transforms

        self.eval_images = transforms.eval_images
        self.transform = transforms.eval_transform(image_size, crop_fraction)

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        return {**batch, "image": self.eval_images(batch["image"], self.transform)}


def train_dataset(prepared: PreparedDataset, image_ids: np.ndarray, data: DataConfig,
                  cpus_per_task: float, batch_rows: int = 64, passes: int = 1, actors: int = 1,
                  attach: Callable[[ray.data.Dataset], ray.data.Dataset] | None = None) -> ray.data.Dataset:
    """Two augmented uint8 views per image, columns ``view1``, ``view2``: (3, S, S).

    ``passes``: that many passes over the images, each in its own random block order with its own
    views, as one dataset. A trial reads all its epochs through one iterator, so the pipeline
    keeps prefetching across epoch boundaries instead of restarting cold every epoch (measured
    in bench/trainer_overhead.py: data wait 18-31 % per-epoch iterators -> 0.2 % one iterator).
    ``actors``: augmentation actors (each ``cpus_per_task``) feeding this dataset.
    ``attach``: an optional step on the raw rows (``image``, ``image_id``) that adds per-image numeric
    columns by id and drops ``image_id`` (e.g. ``teacher_cache.attacher``); they reach the batches as-is.
    """
    columns = ["image", "image_id"] if attach is not None else ["image"]
    rows = row_blocks(read_rows(prepared, image_ids, columns), batch_rows)
    shuffled = [rows.randomize_block_order() for _ in range(max(1, passes))]
    ds = shuffled[0].union(*shuffled[1:]) if len(shuffled) > 1 else shuffled[0]
    if attach is not None:
        ds = attach(ds)
    # A fixed pool: an autoscaling one grew into logical CPUs that Train workers' threads use.
    return ds.map_batches(_TwoViews, fn_constructor_kwargs={"image_size": data.image_size}, concurrency=actors,
                          batch_size=batch_rows, batch_format="numpy", num_cpus=cpus_per_task)


def eval_dataset(prepared: PreparedDataset, image_ids: np.ndarray, batch_rows: int = 128) -> ray.data.Dataset:
    """The encoded rows of an evaluation split: ``image`` (bytes), ``label``, ``image_id``; decode them
    with ``EvalViews`` where they are embedded (a validation pass in a Train worker decodes ~500 images
    once and keeps them: a Ray Data map stage would cost each trial a process start for that)."""
    return row_blocks(read_rows(prepared, image_ids, ["image", "label", "image_id"]), batch_rows)
