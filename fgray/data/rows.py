"""A prepared dataset's rows, read where they are used: the dataset (shards + manifest), its split
assignment, its encoded rows read in this process (``read_rows``, ``TableBatches``) or by Ray Data's
read tasks on the cluster (``Rows.dataset``), and the names those datasets carry in the dashboard.
The training pipeline on top of them: ``fgray.data.pipeline``."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
import ray.data
from ray.data.expressions import col

from fgray import storage
from fgray.config import ConfigError, DataConfig
from fgray.data.protocols import SplitAssignment, assign_splits
from fgray.data.schema import MANIFEST_NAME, Manifest


@dataclass(frozen=True)
class PreparedDataset:
    """A folder of shards plus its manifest, local or remote."""

    root: str
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.dataset

    @property
    def rendered_per_node(self) -> bool:
        """The built-in synthetic set in a folder of this machine: each node renders its own copy."""
        return self.name == "synthetic" and not storage.is_uri(self.root)


def resolve_dataset(data: DataConfig) -> PreparedDataset:
    """Locate (and for ``synthetic``, generate once and cache) the shards a config names."""
    if data.name == "synthetic":
        from fgray.data.sources.synthetic import SyntheticSpec
        from fgray.data.sources.synthetic_shards import default_cache_dir, write_shards

        spec = SyntheticSpec(num_classes=data.synthetic.num_classes, images_per_class=data.synthetic.images_per_class,
                             image_size=data.image_size, seed=data.synthetic.seed,
                             image_format=data.synthetic.image_format)
        root = data.root or default_cache_dir(spec)
        return PreparedDataset(root, write_shards(spec, root))
    return PreparedDataset(data.root, read_manifest(data.root, expected=data.name))


def read_manifest(root: str, expected: str | None = None) -> Manifest:
    filesystem, path = storage.filesystem(root)
    manifest_path = posixpath.join(path, MANIFEST_NAME)
    try:
        with filesystem.open_input_stream(manifest_path) as stream:
            manifest = Manifest.from_json(stream.read().decode())
    except FileNotFoundError:
        raise ConfigError(f"data.root: no {MANIFEST_NAME} in {root} "
                          "(prepare it with `python -m fgray.data prepare --dataset NAME --root RAW "
                          "--out DIR`)") from None
    if expected and manifest.dataset != expected:
        raise ConfigError(f"data.name: {root} holds '{manifest.dataset}', not '{expected}'")
    return manifest


def assign(prepared: PreparedDataset, data: DataConfig) -> SplitAssignment:
    """Image ids per role under the config's protocol (reads only the small index columns)."""
    index = _shards(prepared).to_table(columns=["image_id", "label", "split"])
    return assign_splits(prepared.name, data.protocol, index["image_id"].to_numpy(zero_copy_only=False),
                         index["label"].to_numpy(), index["split"].to_numpy(zero_copy_only=False),
                         val_fraction=data.val_fraction, seed=data.split_seed)


def read_rows(prepared: PreparedDataset, image_ids: np.ndarray | None, columns: list[str]) -> pa.Table:
    """The rows of ``image_ids`` (None: every image), encoded, filtered inside the Parquet scan."""
    wanted = None if image_ids is None else pc.field("image_id").isin(pa.array(np.asarray(image_ids).astype(str)))
    return _shards(prepared).to_table(columns=sorted({*columns, "image_id"}), filter=wanted).select(columns)


def on_this_node(prepared: PreparedDataset) -> None:
    """The built-in synthetic set, in a folder of this machine, is rendered where it is read: on a
    cluster each node generates the same shards (deterministic, published atomically) into its own
    cache once, instead of every node needing the disk of the node that generated it first. A
    no-op (one manifest read) when they are there."""
    if prepared.rendered_per_node:
        from fgray.data.sources.synthetic import SyntheticSpec
        from fgray.data.sources.synthetic_shards import write_shards

        write_shards(SyntheticSpec.from_dict(prepared.manifest.extra), prepared.root)


def _shards(prepared: PreparedDataset) -> pads.Dataset:
    """The prepared shards as one pyarrow dataset (local or in object storage)."""
    on_this_node(prepared)
    filesystem, root = storage.filesystem(prepared.root)
    return pads.dataset([posixpath.join(root, name) for name in prepared.manifest.shards], format="parquet",
                        filesystem=filesystem)


@dataclass(frozen=True)
class Rows:
    """The encoded rows of some images (``ids``; None: every image) of a prepared dataset, to be read
    where they are used: in this process (``read``) or by Ray Data's read tasks on the cluster,
    streamed into an actor pool (``dataset``). Rows in neither case arrive in ``ids``' order."""

    prepared: PreparedDataset
    ids: np.ndarray | None
    columns: tuple[str, ...]
    name: str = ""  # what the rows are for: their dataset's name in the Ray dashboard (``dataset_name``)

    @property
    def num_rows(self) -> int:
        return self.prepared.manifest.num_images if self.ids is None else len(self.ids)

    def read(self) -> pa.Table:
        return read_rows(self.prepared, self.ids, list(self.columns))

    def dataset(self, num_cpus: float, rows_per_block: int = 256) -> ray.data.Dataset:
        """Ray Data read tasks (``num_cpus`` each) anywhere in the cluster, the ids pushed into their
        scans (shards in object storage or on a mount every node has). The built-in synthetic set is
        rendered per node, so its rows are read here and handed to the pool as blocks instead: a task
        pinned to this node would never run on a head without CPUs."""
        ds = self._source(num_cpus, rows_per_block)
        ds.set_name(self.name or None)  # the datasets derived from it (an actor pool's) keep the name
        return ds

    def _source(self, num_cpus: float, rows_per_block: int) -> ray.data.Dataset:
        if self.prepared.rendered_per_node:
            return table_dataset(self.read(), rows_per_block)
        filesystem, root = storage.filesystem(self.prepared.root)
        # The columns as a projection Ray Data pushes into the scan (read_parquet's columns= is deprecated);
        # image_id stays in it until the ids have filtered the rows.
        ds = ray.data.read_parquet([posixpath.join(root, name) for name in self.prepared.manifest.shards],
                                   filesystem=filesystem, num_cpus=num_cpus
                                   ).select_columns(sorted({*self.columns, "image_id"}))
        if self.ids is not None:
            ds = ds.filter(expr=col("image_id").is_in(np.asarray(self.ids).astype(str).tolist()))
        return ds.select_columns(list(self.columns))


def dataset_name(*parts: object) -> str:
    """A Ray Data dataset's name in the dashboard's Data tab, e.g. ``demo:f3a1b_00000:train views``:
    the parts joined by ':'. Ray names each dataset's log file after it, so a '/' (a model name's
    ``hf-hub:timm/...``) would name a folder that does not exist: replaced by '-'."""
    return ":".join(str(part).replace("/", "-") for part in parts)


class TableBatches:
    """An Arrow table read in this process, iterated as Ray Data iterates a dataset (numpy batches)."""

    def __init__(self, table: pa.Table):
        self.table = table

    def iter_batches(self, batch_size: int, batch_format: str = "numpy") -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.table.num_rows, batch_size):
            batch = self.table.slice(start, batch_size)
            yield {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names}


def table_dataset(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    """An Arrow table held here as a dataset of blocks of about ``rows_per_block`` rows. ``from_items``, not
    ``from_arrow``: from_arrow reads each block's metadata in a 1-CPU task, which never runs while trials hold
    all but a fraction of a CPU (a one-worker trial holds its CPUs from its start); from_items builds the
    blocks in this process. The rows pass through Python objects: binary, string, int64 and bool columns come
    back with their types (the encoded rows' ``image``, ``image_id``, ``label``, ``class_name``); int32 would
    come back int64 and a fixed-size list a list."""
    blocks = max(1, -(-table.num_rows // rows_per_block))
    return ray.data.from_items(table.to_pylist(), override_num_blocks=blocks)
