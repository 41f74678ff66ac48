"""The view drawer of a trial's training batches: index rows -> each image's declared inputs (views,
columns, cached embeddings), and ASS's composed steps. A Ray Data actor in a Train worker's pipeline
(``pipeline.train_dataset``); in a one-worker trial, its forked view workers (``forked_views``)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from fgray import storage
from fgray.data.inputs import NEGATIVE_INDEX, Inputs, image_seed
# At import, not in compose: a forked view worker must not import (fgray.data.forked_views).
from fgray.data import selection


class ViewActor:
    """Index rows (``row``, ``epoch``) -> the declared inputs of each image: a Ray Data actor, or the
    state a one-worker trial's forked view workers share.

    It holds the split's encoded rows (one copy in its trainer's node's object store, or in the trial's
    memory) and draws every image's views under its own seed, ``image_seed(train.seed, epoch,
    image_id)``: the batches are bit-identical whichever actor or worker draws them and however many
    there are. An actor lives for the whole trial; plain tasks were each started in a fresh worker
    process after the first trial, which imported torch for every 64-image task while the Train worker
    waited.
    """

    def __init__(self, table_ref: list, inputs: Inputs, image_size: int, seed: int,
                 label_map: dict[int, int] | None, caches: dict[str, str], selector: str | None = None,
                 rank: int = 0):
        import torch
        from PIL import Image

        from fgray.data import views

        Image.preinit()  # PIL's format plugins here: forked view workers would each import them
        self.torch, self.source = torch, views.Source
        # An object-store reference in a pipeline; a table itself where the actor runs without Ray (bench/).
        self.table = ray.get(table_ref[0]) if isinstance(table_ref[0], ray.ObjectRef) else table_ref[0]
        self.inputs, self.seed, self.rank = inputs, seed, rank
        self.recipes = [views.build_recipe(view, image_size, inputs.defer_views, inputs.decode_views)
                        for view in inputs.views]
        self.label_map = label_map
        ids = self.table.column("image_id").to_numpy(zero_copy_only=False).astype(str)
        self.embeddings = {key: lookup_embeddings(path, ids) for key, path in caches.items()}
        self.selector = None  # the frozen selector's embedding of every row (ASS)
        if selector is not None:
            positions, matrix = lookup_embeddings(selector, ids)
            self.selector = matrix[[positions[i] for i in ids]]

    def __call__(self, index: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Views are data: no autograd bookkeeping, which small images spend much of their time on.
        with self.torch.inference_mode():
            return self._draw(self.compose(index) if "candidate" in index else index)

    def _draw(self, index: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = self.table.take(pa.array(index["row"]))
        ids = rows.column("image_id").to_numpy(zero_copy_only=False).astype(str)
        out: dict[str, list] = {key: [] for view in self.inputs.views for key in view.keys}
        boxes = _boxes(rows) if "bbox" in rows.column_names else None
        for i, (encoded, image_id, epoch) in enumerate(zip(rows.column("image").to_pylist(), ids, index["epoch"])):
            image = self.source(encoded)  # decoded by the recipes, at the scale their crops allow
            box = None if boxes is None or np.isnan(boxes[i]).any() else self.torch.from_numpy(boxes[i])
            # The CPU generator only: torch.manual_seed also queues a CUDA seeding with a stack trace
            # (torch.cuda._lazy_call), measured at ~20 % of a 64 px image's views.
            self.torch.default_generator.manual_seed(image_seed(self.seed, int(epoch), image_id))
            drawn = {}  # one entry per key and image: recipes decoded on the trainer each give its @encoded
            for recipe in self.recipes:
                drawn.update(recipe(image, box))  # declared keys, then any <key>@ops (or <key>@crop, @encoded)
            for key, value in drawn.items():
                out.setdefault(key, []).append(value)
        # Declared keys a recipe left to the trainer (data.decode_on) stay empty: the trainer makes them.
        batch = {key: stacked(values, self.torch) for key, values in out.items() if values}
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
        if NEGATIVE_INDEX in index:  # a composed step's pairing (``compose``), row for row
            batch[NEGATIVE_INDEX] = index[NEGATIVE_INDEX]
        return batch

    def compose(self, index: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Index rows of whole steps (``group``: the step; ``candidate``: the K*N candidates after the
        N anchors) -> each composed step's N anchors then its N selected negatives (ASS Algorithm 1,
        ``fgray.data.selection``), with ``negative_index``: anchor i's own negative among them (its
        position in the second half), -1 on the negatives' rows. Steps without candidates pass unchanged,
        ``negative_index`` -1: every batch of the trial has the column. Only these rows are decoded."""
        spec = self.inputs.selection
        rows, epochs, out_rows, out_epochs, out_pairs = index["row"], index["epoch"], [], [], []
        steps = epochs.astype(np.int64) << 32 | index["group"].astype(np.int64)  # a step of an epoch
        for group in runs(steps):
            candidate = index["candidate"][group]
            if not candidate.any():  # a plain step: its rows as they are
                if spec.composes(int(epochs[group][0])):
                    raise ValueError(f"selection: a step of composed epoch {int(epochs[group][0]) + 1} arrived "
                                     "without its candidates (split across batches)")
                out_rows.append(rows[group])
                out_epochs.append(epochs[group])
                out_pairs.append(np.full(len(rows[group]), -1, np.int64))
                continue
            anchors, candidates = rows[group][~candidate], rows[group][candidate]
            epoch, step = int(epochs[group][0]), int(index["group"][group][0])
            if len(candidates) != spec.pool_factor * len(anchors):
                raise ValueError(f"selection: step {step} of epoch {epoch + 1} arrived split across batches "
                                 f"({len(anchors)} anchors, {len(candidates)} candidates)")
            gamma = selection.gamma_at(spec.schedule, spec.tau, epoch - spec.first + 1, spec.epochs)
            if not spec.replacement:  # a split smaller than K*N + N repeats candidates: B must not
                candidates = np.unique(candidates)
            rng = selection.selection_rng(self.seed, epoch, step, self.rank)
            chosen, paired = selection.select_and_pair(self.selector[anchors], self.selector[candidates], gamma,
                                                       rng, spec.replacement, spec.pairing)
            out_rows.append(np.concatenate([anchors, candidates[chosen]]))
            out_epochs.append(np.full(2 * len(anchors), epoch))
            out_pairs.append(np.concatenate([paired, np.full(len(anchors), -1)]).astype(np.int64))
        return {"row": np.concatenate(out_rows), "epoch": np.concatenate(out_epochs),
                NEGATIVE_INDEX: np.concatenate(out_pairs)}


def stacked(values: list, torch) -> np.ndarray:
    """One batch column: tensors stacked, or bytes (``@encoded``) as an object array, which Ray Data
    carries as an Arrow binary column and hands back as an object array of bytes."""
    if isinstance(values[0], bytes):
        column = np.empty(len(values), dtype=object)
        column[:] = values
        return column
    return torch.stack(values).numpy()


def runs(values: np.ndarray) -> list[slice]:
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
