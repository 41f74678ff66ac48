"""Ray Data pipelines: prepared Parquet shards -> decoded, augmented batches for Ray Train (the
dataset's rows themselves, and how they are read: ``fgray.data.rows``).

Rows are read where they are used, with the image ids pushed into the Parquet scan. A trial's
driver reads only small index columns (ids, labels, boxes); each trainer reads its split's encoded
rows once: a Train worker into its node's object store, for its view actors on the same node; a
one-worker trial's process into its memory, for the view workers it forks (``forked_train_batches``,
``fgray.data.forked_views``: the same batches). Training batches hold exactly the inputs a
method declares (``fgray.data.inputs``): a tiny index dataset lists (row, epoch) in a seeded
whole-split permutation per epoch, and a Ray Data actor pool (``fgray.data.view_actor``) turns each
index row into that image's views (``fgray.data.views``), columns and cached embeddings, under a
per-image seed, so a trial's batches are reproducible. Evaluation rows stay encoded until the
process that embeds them (``views.transforms.EvalViews``): the rank-0 trainer for the small validation split; for
large test splits and frozen-model caches, Ray Data's read tasks on the cluster stream them into
the embedding actors (``Rows.dataset``).

torchvision (``fgray.data.views.transforms``) is imported only where images are decoded: a DDP
trial's Tune driver and Train controller import this module but never decode, and each ~2 s of
imports saved there shortens every trial's start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from fgray import ray_compat
from fgray.config import ConfigError, DataConfig
from fgray.data.frozen.detect import with_boxes
from fgray.data.inputs import DatasetFacts, Inputs
from fgray.data.rows import (  # noqa: F401 (the dataset's rows; importers name them through pipeline)
    PreparedDataset, Rows, TableBatches, assign, dataset_name, on_this_node, read_manifest, read_rows,
    resolve_dataset, table_dataset)
from fgray.data.view_actor import ViewActor

# Every node's default label in Ray: its node id (Ray's docs, "Use labels to control scheduling").
NODE_ID_LABEL = "ray.io/node-id"


def index_dataset(blocks: list[pa.Table]) -> ray.data.Dataset:
    """``index_blocks``' blocks held here as a dataset of one row per block, each column a list, built in this
    process (``from_items``, as ``table_dataset``). One row per block because ``from_items`` cuts its rows into
    equal blocks: the blocks' growing sizes (the first step's wait) and whole composed steps survive as rows,
    one block each, which ``BlockViews`` draws."""
    items = index_items(blocks)
    return ray.data.from_items(items, override_num_blocks=max(1, len(items)))


def index_items(blocks: list[pa.Table]) -> list[dict[str, list]]:
    """``index_dataset``'s rows: one a block, each of its columns a list."""
    return [{name: block.column(name).to_pylist() for name in block.column_names} for block in blocks]


class BlockViews(ViewActor):
    """The view actor of ``train_dataset``: each row it is given is one index block (``index_dataset``), drawn
    ``batch_rows`` index rows at a time (one composed step of ASS), each part's views yielded as they are drawn,
    so the actor never holds a whole block's views at once."""

    def __init__(self, batch_rows: int, **kwargs):
        super().__init__(**kwargs)
        self.batch_rows = batch_rows

    def __call__(self, blocks: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(blocks["row"])):
            block = {name: np.asarray(column[i]) for name, column in blocks.items()}
            for start in range(0, len(block["row"]), self.batch_rows):
                yield super().__call__({name: v[start: start + self.batch_rows] for name, v in block.items()})


@dataclass(frozen=True)
class TrainingSplit:
    """A trial's training split as its driver knows it: which images, in the row order the epochs'
    permutations index, and what the method is built with. The encoded images are read by each
    trainer (``split_rows``), never by a DDP trial's driver."""

    prepared: PreparedDataset
    ids: np.ndarray  # image ids (str), in row order
    columns: tuple[str, ...]  # the encoded columns the declared inputs need (image_id included)
    # A detector's boxes (``fgray.data.frozen.detect``) in row order, replacing the dataset's ``bbox``:
    # carried here (16 bytes an image), as their folder may be on the driver's node only.
    boxes: pa.Array | None
    facts: DatasetFacts
    label_map: dict[int, int]  # dataset label -> training class 0..C-1

    @property
    def num_rows(self) -> int:
        return len(self.ids)


def dataset_facts(prepared: PreparedDataset, train_ids: np.ndarray, data: DataConfig,
                  caches: dict[str, str] | None = None) -> tuple[DatasetFacts, dict[int, int]]:
    """The facts a method is built with, and dataset label -> training class 0..C-1 (sorted labels)."""
    return labels_facts(prepared, read_rows(prepared, train_ids, ["label"]).column("label").to_numpy(), data,
                        caches)


def labels_facts(prepared: PreparedDataset, labels: np.ndarray, data: DataConfig,
                 caches: dict[str, str] | None = None) -> tuple[DatasetFacts, dict[int, int]]:
    """``dataset_facts`` from the training images' labels, already read."""
    classes = np.unique(labels)
    names = prepared.manifest.classes
    facts = DatasetFacts(num_classes=len(classes), image_size=data.image_size, caches=dict(caches or {}),
                         class_names=tuple(names[c] if c < len(names) else str(c) for c in classes))
    return facts, {int(c): i for i, c in enumerate(classes)}


def training_split(prepared: PreparedDataset, image_ids: np.ndarray, data: DataConfig, inputs: Inputs,
                   method: str, caches: dict[str, str], boxes: str | None = None) -> TrainingSplit:
    """The training split a method's inputs need, its dataset facts and the re-indexed labels, from the
    index columns only (and the boxes, checked here before any worker starts, when the method needs
    them). ``boxes``: a folder of detected boxes (``fgray.data.frozen.detect``) that replace the dataset's."""
    columns = tuple(sorted({*inputs.shard_columns, "label", "image_id"}))
    index = read_rows(prepared, image_ids, [c for c in columns if c != "image"])
    if boxes is not None:

        index = with_boxes(index, boxes)
    if inputs.needs_boxes:
        missing = index.column("bbox").null_count
        if missing:
            raise ConfigError(f"data: method {method!r} needs boxes, but {missing} of {index.num_rows} training "
                              f"images of '{prepared.name}' have none (prepare a layout that ships boxes)")
    facts, label_map = labels_facts(prepared, index.column("label").to_numpy(), data, caches)
    ids = index.column("image_id").to_numpy(zero_copy_only=False).astype(str)
    detected = index.column("bbox").combine_chunks() if boxes is not None else None
    return TrainingSplit(prepared, ids, columns, detected, facts, label_map)


def split_rows(split: TrainingSplit) -> pa.Table:
    """The split's encoded rows in its row order, read (ids pushed into the scan) by the process that
    consumes them."""
    columns = [c for c in split.columns if split.boxes is None or c != "bbox"]
    table = read_rows(split.prepared, split.ids, columns)
    positions = pc.index_in(pa.array(split.ids), table.column("image_id").cast(pa.string()))
    if positions.null_count:
        missing = pc.filter(pa.array(split.ids), pc.is_null(positions))[0].as_py()
        raise KeyError(f"{positions.null_count} training images of '{split.prepared.name}' are not in "
                       f"{split.prepared.root} on this node, e.g. {missing!r}")
    table = table.take(positions)
    return table if split.boxes is None else table.append_column("bbox", split.boxes)


def epoch_order(rows: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Row positions of one rank in one epoch: a permutation of the whole split (seeded by the trial's
    seed and the epoch, so every class is spread over every batch), dealt round-robin to the ranks."""
    return np.random.default_rng([seed, epoch]).permutation(rows)[rank::world]


def train_index(split: TrainingSplit, inputs: Inputs, seed: int, epochs: range, rank: int = 0, world: int = 1,
                rows_per_epoch: int | None = None, batch_size: int | None = None,
                selector: str | None = None) -> tuple[list[pa.Table], int | None]:
    """Each epoch's index rows (``row``, ``epoch``; ASS adds ``group``, ``candidate``) and the rows of one
    composed step (None: no composed steps). Each epoch is a fresh permutation of the whole split
    (``epoch_order``); ``rows_per_epoch`` (the epoch's steps x batch size) keeps each epoch's batches
    inside its own permutation: a trial resumed at epoch e then reads exactly what an uninterrupted one
    read there."""
    rows = [epoch_order(split.num_rows, seed, e, rank, world)[:rows_per_epoch] for e in epochs]
    selection = inputs.selection
    if selection is None:
        return [pa.table({"row": r, "epoch": np.full(len(r), e)}) for r, e in zip(rows, epochs)], None
    if batch_size is None or selector is None:  # ASS: every epoch's steps as index groups
        raise ValueError("train_index: composed batches need batch_size and the selector's cache")
    if batch_size % 2:
        raise ConfigError(f"train.batch_size: a composed step is N anchors + N negatives, so it must be even, "
                          f"got {batch_size}")
    order = [composed_index(r, e, batch_size, selection, split.num_rows, seed, rank) for r, e in zip(rows, epochs)]
    return order, (selection.pool_factor + 1) * (batch_size // 2)


def view_actor_kwargs(split: TrainingSplit, table, inputs: Inputs, data: DataConfig, seed: int, rank: int,
                      selector: str | None) -> dict:
    """``ViewActor``'s arguments: ``table`` the split's rows (an object-store reference in a list, or
    the table itself in the process that draws)."""
    return {"table_ref": [table], "inputs": inputs, "image_size": data.image_size, "seed": seed,
            "label_map": split.label_map, "caches": split.facts.caches, "selector": selector, "rank": rank}


def train_dataset(split: TrainingSplit, inputs: Inputs, data: DataConfig, seed: int, cpus_per_task: float,
                  epochs: range, rank: int = 0, world: int = 1, batch_rows: int = 64,
                  actors: int = 1, rows_per_epoch: int | None = None, batch_size: int | None = None,
                  selector: str | None = None, name: str | None = None) -> ray.data.Dataset:
    """The declared inputs of every training image, for each epoch in ``epochs`` (``train_index``), as
    one Ray Data dataset: the index, and a pool of ``actors`` view actors (``cpus_per_task`` each),
    named ``name`` in the dashboard.

    A trial reads all its epochs through one iterator, so the pipeline keeps prefetching across
    epoch boundaries instead of restarting cold every epoch (measured in bench/trainer_overhead.py:
    data wait 18-31 % per-epoch iterators -> 0.2 % one iterator); the order of the rows is kept,
    so a trial's batches are the same in every run.
    """
    order, step_rows = train_index(split, inputs, seed, epochs, rank, world, rows_per_epoch, batch_size, selector)
    batch_rows = step_rows or batch_rows  # one composed step per call
    # The index is tiny (two integers per row and epoch); the encoded images stay in one copy, below.
    index = ray_compat.keep_order(index_dataset(index_blocks(order, batch_rows)))
    index.set_name(name)  # the Ray dashboard's Data tab: "<sweep>:<trial>:train views"
    # The rows go to this node's object store, read here: the view actors run on this node too
    # (elsewhere only if it has no room), beside the trainer that consumes their batches.
    table_ref = ray.put(split_rows(split))
    here = {NODE_ID_LABEL: ray.get_runtime_context().get_node_id()}
    # A fixed pool: an autoscaling one grew into logical CPUs that Train workers' threads use.
    return index.map_batches(
        BlockViews, fn_constructor_kwargs={"batch_rows": batch_rows,
                                           **view_actor_kwargs(split, table_ref, inputs, data, seed, rank, selector)},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=1, batch_format="numpy", num_cpus=cpus_per_task,
        label_selector=here, fallback_strategy=[{"label_selector": {}}])


def forked_train_batches(split: TrainingSplit, inputs: Inputs, data: DataConfig, seed: int, epochs: range,
                         batch_size: int, workers: int = 1, rows_per_epoch: int | None = None,
                         selector: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``train_dataset``'s batches (one rank of one), drawn by ``workers`` forked processes of this one
    (``fgray.data.forked_views``) from the split's rows read here: a one-worker trial's pipeline."""
    from fgray.data.forked_views import forked_batches, step_blocks

    order, _ = train_index(split, inputs, seed, epochs, 0, 1, rows_per_epoch, batch_size, selector)
    views = ViewActor(**view_actor_kwargs(split, split_rows(split), inputs, data, seed, 0, selector))
    return forked_batches(step_blocks(order, batch_size), views, workers)


def index_blocks(order: list[pa.Table], batch_rows: int, largest: int = 16) -> list[pa.Table]:
    """Each epoch's index cut into blocks of 1, 2, 4, ... up to ``largest`` view batches. A view
    actor's task hands its output on when it ends, so the first block decides when the first step can
    start: one block per epoch kept a trial's first step waiting for a whole epoch of views (measured
    on the demo: ~5 s). The blocks then grow, so a long trial's index stays a few thousand objects.
    Cut per epoch, a block never holds part of a composed step (ASS: ``batch_rows`` rows a step)."""
    blocks, size = [], 1
    for epoch in order:
        start = 0
        while start < epoch.num_rows:
            blocks.append(epoch.slice(start, size * batch_rows))
            start += size * batch_rows
            size = min(2 * size, largest)
    return blocks


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
