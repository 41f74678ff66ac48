"""Ray Data pipelines: prepared Parquet shards -> decoded, augmented batches for Ray Train.

The encoded rows of a split are read once (pyarrow, predicate pushed into the scan) into the
object store. Training batches hold exactly the inputs a method declares (``fgray.data.inputs``):
a tiny index dataset lists (row, epoch) in a seeded whole-split permutation per epoch, and a Ray
Data actor pool turns each index row into that image's views (``fgray.data.views``), columns and
cached embeddings, under a per-image seed, so a trial's batches are reproducible. Evaluation rows
stay encoded until the process that embeds them (``EvalViews``): a Train worker
for the small validation split, the embedding actors for large test splits.

torchvision (``fgray.data.transforms``) is imported only where images are decoded: the Tune
driver, Train controller and dataset manager of every trial unpickle these datasets but never
decode, and each ~2 s of imports saved there shortens every trial's start-up.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from fgray import storage
from fgray.config import ConfigError, DataConfig
from fgray.data.inputs import DatasetFacts, Inputs, image_seed
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


def _shards(prepared: PreparedDataset) -> pads.Dataset:
    """The prepared shards as one pyarrow dataset (local or in object storage)."""
    filesystem, root = storage.filesystem(prepared.root)
    return pads.dataset([posixpath.join(root, name) for name in prepared.manifest.shards], format="parquet",
                        filesystem=filesystem)


def row_blocks(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    # Encoded rows go to the object store once, in blocks of the batch size; reading them here
    # avoids Ray Data read tasks competing with the trainers for CPUs.
    blocks = [table.slice(start, rows_per_block) for start in range(0, table.num_rows, rows_per_block)]
    return local_dataset(blocks or [table])


def local_dataset(blocks: list[pa.Table]) -> ray.data.Dataset:
    """A dataset of Arrow tables held here. ``from_blocks``, not ``from_arrow``: from_arrow reads
    each block's metadata in a 1-CPU task, which never runs while trials hold all but a fraction
    of a CPU (a one-worker trial holds its CPUs from its start); from_blocks reads it here."""
    return ray.data.from_blocks(blocks)


class _Views:
    """Ray Data actor: index rows (``row``, ``epoch``) -> the declared inputs of each image.

    It holds the split's encoded rows (one shared copy in the object store) and draws every
    image's views under its own seed, ``image_seed(train.seed, epoch, image_id)``: the batches are
    bit-identical whichever actor or worker draws them and however many there are. An actor lives
    for the whole trial; plain tasks were each started in a fresh worker process after the first
    trial (measured: ~5 s of imports per 64-image task, the Train worker idle).
    """

    def __init__(self, table_ref: list, inputs: Inputs, image_size: int, seed: int,
                 label_map: dict[int, int] | None, caches: dict[str, str], selector: str | None = None,
                 rank: int = 0):
        import torch

        from fgray.data import transforms, views

        self.torch, self.decode = torch, transforms.decode
        # An object-store reference in a pipeline; a table itself where the actor runs without Ray (bench/).
        self.table = ray.get(table_ref[0]) if isinstance(table_ref[0], ray.ObjectRef) else table_ref[0]
        self.inputs, self.seed, self.rank = inputs, seed, rank
        self.recipes = [views.build_recipe(view, image_size) for view in inputs.views]
        self.label_map = label_map
        ids = self.table.column("image_id").to_numpy(zero_copy_only=False).astype(str)
        self.embeddings = {key: lookup_embeddings(path, ids) for key, path in caches.items()}
        self.selector = None  # the frozen selector's embedding of every row (ASS)
        if selector is not None:
            positions, matrix = lookup_embeddings(selector, ids)
            self.selector = matrix[[positions[i] for i in ids]]

    def __call__(self, index: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "candidate" in index:
            index = self.compose(index)
        rows = self.table.take(pa.array(index["row"]))
        ids = rows.column("image_id").to_numpy(zero_copy_only=False).astype(str)
        out: dict[str, list] = {key: [] for view in self.inputs.views for key in view.keys}
        boxes = _boxes(rows) if "bbox" in rows.column_names else None
        for i, (encoded, image_id, epoch) in enumerate(zip(rows.column("image").to_pylist(), ids, index["epoch"])):
            image = self.decode(encoded)
            box = None if boxes is None or np.isnan(boxes[i]).any() else self.torch.from_numpy(boxes[i])
            self.torch.manual_seed(image_seed(self.seed, int(epoch), image_id))
            for recipe in self.recipes:
                for key, value in recipe(image, box).items():
                    out[key].append(value)
        batch = {key: self.torch.stack(values).numpy() for key, values in out.items()}
        columns = self.inputs.columns
        if "label" in columns:
            labels = rows.column("label").to_numpy()
            batch["label"] = np.array([self.label_map[int(v)] for v in labels], dtype=np.int64)
        if "bbox" in columns:
            batch["bbox"] = boxes
        if "image_id" in columns:
            batch["image_id"] = ids
        for key, (positions, matrix) in self.embeddings.items():
            batch[key] = matrix[[positions[i] for i in ids]]
        return batch

    def compose(self, index: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Index rows of whole steps (``group``: the step; ``candidate``: the K*N candidates after the
        N anchors) -> each composed step's N anchors then its N selected negatives (ASS Algorithm 1,
        ``fgray.data.selection``); steps without candidates pass unchanged. Only these are decoded."""
        from fgray.data.selection import gamma_at, select_negatives, selection_rng

        spec = self.inputs.selection
        rows, epochs, out_rows, out_epochs = index["row"], index["epoch"], [], []
        steps = epochs.astype(np.int64) << 32 | index["group"].astype(np.int64)  # a step of an epoch
        for group in _runs(steps):
            candidate = index["candidate"][group]
            if not candidate.any():  # a plain step: its rows as they are
                if spec.composes(int(epochs[group][0])):
                    raise ValueError(f"selection: a step of composed epoch {int(epochs[group][0]) + 1} arrived "
                                     "without its candidates (split across batches)")
                out_rows.append(rows[group])
                out_epochs.append(epochs[group])
                continue
            anchors, candidates = rows[group][~candidate], rows[group][candidate]
            epoch, step = int(epochs[group][0]), int(index["group"][group][0])
            if len(candidates) != spec.pool_factor * len(anchors):
                raise ValueError(f"selection: step {step} of epoch {epoch + 1} arrived split across batches "
                                 f"({len(anchors)} anchors, {len(candidates)} candidates)")
            gamma = gamma_at(spec.schedule, spec.tau, epoch - spec.first + 1, spec.epochs)
            if not spec.replacement:  # a split smaller than K*N + N repeats candidates: B must not
                candidates = np.unique(candidates)
            chosen = select_negatives(self.selector[anchors], self.selector[candidates], gamma, len(anchors),
                                      selection_rng(self.seed, epoch, step, self.rank), spec.replacement)
            out_rows.append(np.concatenate([anchors, candidates[chosen]]))
            out_epochs.append(np.full(2 * len(anchors), epoch))
        return {"row": np.concatenate(out_rows), "epoch": np.concatenate(out_epochs)}


def _runs(values: np.ndarray) -> list[slice]:
    """Slices of the runs of equal consecutive values."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    return [slice(int(a), int(b)) for a, b in zip(starts, ends)]


def _boxes(rows: pa.Table) -> np.ndarray:
    """(N, 4) float32 x1, y1, x2, y2; NaN rows where an image has no box."""
    values = rows.column("bbox").to_pylist()
    return np.array([v if v is not None else [np.nan] * 4 for v in values], dtype=np.float32).reshape(-1, 4)


def read_embeddings(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids (N,), embeddings (N, d) float32) of an embedding-cache folder (``embedding_cache``)."""
    table = storage.read_folder(path)
    column = table.column("embedding").combine_chunks()
    embeddings = np.asarray(column.flatten(), dtype=np.float32).reshape(len(table), -1)
    return table.column("image_id").to_numpy(zero_copy_only=False).astype(str), embeddings


def lookup_embeddings(path: str, image_ids: np.ndarray) -> tuple[dict[str, int], np.ndarray]:
    """(image id -> row, (N, d) float32) of a cache folder, checked to cover ``image_ids``."""
    ids, matrix = read_embeddings(path)
    positions = {image_id: row for row, image_id in enumerate(ids)}
    missing = [i for i in image_ids if i not in positions]
    if missing:
        raise KeyError(f"{len(missing)} images have no cached embedding in {path}, e.g. {missing[0]!r}: "
                       "delete the cache folder to rebuild it")
    return positions, matrix


class EvalViews:
    """Encoded rows -> deterministic eval views: ``image`` (B, 3, S, S) uint8 (resize + centre crop);
    the other columns (``label``, ``image_id``, ...) pass through."""

    def __init__(self, image_size: int, crop_fraction: float):
        from fgray.data import transforms

        self.eval_images = transforms.eval_images
        self.transform = transforms.eval_transform(image_size, crop_fraction)

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        return {**batch, "image": self.eval_images(batch["image"], self.transform)}


@dataclass(frozen=True)
class TrainingSplit:
    """A trial's training rows and what the method is built with."""

    table: pa.Table  # encoded rows: image, image_id, label (+ bbox when the inputs need boxes)
    facts: DatasetFacts
    label_map: dict[int, int]  # dataset label -> training class 0..C-1
    table_ref: Any  # the table in the object store: one copy that every rank's view actors share


def dataset_facts(prepared: PreparedDataset, train_ids: np.ndarray, data: DataConfig,
                  caches: dict[str, str] | None = None) -> tuple[DatasetFacts, dict[int, int]]:
    """The facts a method is built with, and dataset label -> training class 0..C-1 (sorted labels)."""
    classes = np.unique(read_rows(prepared, train_ids, ["label"]).column("label").to_numpy())
    names = prepared.manifest.classes
    facts = DatasetFacts(num_classes=len(classes), image_size=data.image_size, caches=dict(caches or {}),
                         class_names=tuple(names[c] if c < len(names) else str(c) for c in classes))
    return facts, {int(c): i for i, c in enumerate(classes)}


def training_split(prepared: PreparedDataset, image_ids: np.ndarray, data: DataConfig, inputs: Inputs,
                   method: str, caches: dict[str, str], boxes: str | None = None) -> TrainingSplit:
    """The training rows a method's inputs need, its dataset facts and the re-indexed labels.
    ``boxes``: a folder of detected boxes (``fgray.data.detect``) that replace the dataset's."""
    table = read_rows(prepared, image_ids, sorted({*inputs.shard_columns, "label"}))
    if boxes is not None:
        from fgray.data.detect import with_boxes  # it imports this module

        table = with_boxes(table, boxes)
    if inputs.needs_boxes:
        missing = table.column("bbox").null_count
        if missing:
            raise ValueError(f"data: method {method!r} needs boxes, but {missing} of {table.num_rows} training "
                             f"images of '{prepared.name}' have none (prepare a layout that ships boxes)")
    facts, label_map = dataset_facts(prepared, image_ids, data, caches)
    return TrainingSplit(table, facts, label_map, ray.put(table))


def epoch_order(rows: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Row positions of one rank in one epoch: a permutation of the whole split (seeded by the trial's
    seed and the epoch, so every class is spread over every batch), dealt round-robin to the ranks."""
    return np.random.default_rng([seed, epoch]).permutation(rows)[rank::world]


def train_dataset(split: TrainingSplit, inputs: Inputs, data: DataConfig, seed: int, cpus_per_task: float,
                  epochs: range, rank: int = 0, world: int = 1, batch_rows: int = 64,
                  actors: int = 1, rows_per_epoch: int | None = None, batch_size: int | None = None,
                  selector: str | None = None) -> ray.data.Dataset:
    """The declared inputs of every training image, for each epoch in ``epochs``, as one dataset.

    Each epoch is a fresh permutation of the whole split (``epoch_order``) with fresh views. A
    trial reads all its epochs through one iterator, so the pipeline keeps prefetching across
    epoch boundaries instead of restarting cold every epoch (measured in bench/trainer_overhead.py:
    data wait 18-31 % per-epoch iterators -> 0.2 % one iterator); the order of the rows is kept,
    so a trial's batches are the same in every run. ``actors``: view actors (each ``cpus_per_task``).
    """
    # ``rows_per_epoch`` (the epoch's steps x batch size) keeps each epoch's batches inside its own
    # permutation: a trial resumed at epoch e then reads exactly what an uninterrupted one read there.
    rows = [epoch_order(split.table.num_rows, seed, e, rank, world)[:rows_per_epoch] for e in epochs]
    # The index is tiny (two integers per row and epoch); the encoded images stay in one shared copy.
    order = [pa.table({"row": r, "epoch": np.full(len(r), e)}) for r, e in zip(rows, epochs)]
    selection = inputs.selection
    if selection is not None:  # ASS: every epoch's steps as index groups (composed ones with candidates)
        if batch_size is None or selector is None:
            raise ValueError("train_dataset: composed batches need batch_size and the selector's cache")
        order = [composed_index(r, e, batch_size, selection, split.table.num_rows, seed, rank)
                 for r, e in zip(rows, epochs)]
        batch_rows = (selection.pool_factor + 1) * (batch_size // 2)  # one composed step per call
    empty = {"row": np.zeros(0, np.int64), "epoch": np.zeros(0, np.int64)}
    index = local_dataset(order or [pa.table(empty)])
    index.context.execution_options.preserve_order = True
    # A fixed pool: an autoscaling one grew into logical CPUs that Train workers' threads use.
    return index.map_batches(
        _Views, fn_constructor_kwargs={"table_ref": [split.table_ref], "inputs": inputs,
                                       "image_size": data.image_size, "seed": seed,
                                       "label_map": split.label_map, "caches": split.facts.caches,
                                       "selector": selector, "rank": rank},
        concurrency=actors, batch_size=batch_rows, batch_format="numpy", num_cpus=cpus_per_task)


def composed_index(rows: np.ndarray, epoch: int, batch_size: int, selection, num_rows: int, seed: int,
                   rank: int) -> pa.Table:
    """One epoch's index for ASS: per step a ``group`` of its N = batch_size / 2 anchors (the next
    rows of the epoch's permutation) and, in a composed epoch, K*N uniform candidates
    (``candidate``); plain epochs keep the permutation, in groups of a batch."""
    from fgray.data.selection import candidate_rows

    if not selection.composes(epoch):
        return pa.table({"row": rows, "epoch": np.full(len(rows), epoch), "group": np.arange(len(rows)) // batch_size,
                         "candidate": np.zeros(len(rows), bool)})
    n = batch_size // 2
    parts = []
    for step in range(len(rows) // batch_size):
        anchors = rows[step * n: (step + 1) * n]
        candidates = candidate_rows(num_rows, selection.pool_factor * n, seed, epoch, step, rank, anchors)
        parts.append(pa.table({"row": np.concatenate([anchors, candidates]),
                               "epoch": np.full(len(anchors) + len(candidates), epoch),
                               "group": np.full(len(anchors) + len(candidates), step),
                               "candidate": np.r_[np.zeros(len(anchors), bool), np.ones(len(candidates), bool)]}))
    return pa.concat_tables(parts)


def eval_dataset(prepared: PreparedDataset, image_ids: np.ndarray, batch_rows: int = 128) -> ray.data.Dataset:
    """The encoded rows of an evaluation split: ``image`` (bytes), ``label``, ``image_id``; decode them
    with ``EvalViews`` where they are embedded (a validation pass in a Train worker decodes ~500 images
    once and keeps them: a Ray Data map stage would cost each trial a process start for that)."""
    return row_blocks(read_rows(prepared, image_ids, ["image", "label", "image_id"]), batch_rows)
