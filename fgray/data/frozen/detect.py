"""Zero-shot detector boxes for DVA's object views (spec dva.md §2.3), computed once per dataset.

The paper crops each training image to the box a zero-shot detector finds for the image's class
name. ``DetectActor`` is that pass for one batch: it loads a transformers zero-shot detector
(OWLv2, OWL-ViT or Grounding DINO, ``DetectorSpec.path``, local files only), prompts every image
with its class name (or one meta-category word), post-processes with the processor's own
``post_process_grounded_object_detection`` and keeps the best box, in the stored image's pixels.
When no box in the image scores above ``box_threshold`` the whole image is the box ([spec guess]
"fall back to the whole image when nothing passes"); ``detected`` is false there, to be counted.

``ensure_boxes`` runs it over a split, through a Ray Data actor pool (one GPU per actor when the
sweep asks for GPUs, up to ``max_actors`` that the autoscaler brings; in this process when Ray is
not running or the split is small), and stores the boxes with the shards: Parquet (``image_id``,
``bbox`` (4,) float32, ``score``, ``detected``) under ``<data root>/_boxes/<address>/<writer>/``,
``_COMPLETE`` written last, as the embedding cache does. The address hashes the detector folder's
content, the prompt and the threshold and the dataset's content hash. A writer folder holds the boxes
of every image detected so far at that address: a split it does not cover is completed (only the
missing images are detected) into a new writer folder, so trials under any split protocol, and the
CLI's ``detect``, share the work.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from fgray import ray_compat
from fgray.data.frozen.embedding_cache import cluster_gpus, embed_in_process, pool_size, weights_digest
from fgray.data.inputs import DetectorSpec
from fgray.data.rows import PreparedDataset, Rows, dataset_name, read_rows
from fgray.data.schema import SHARD_SCHEMA
from fgray.devices import local_device
from fgray.storage import complete_folders, read_folder, write_complete
from fgray.weights_uri import local_weights

BOXES_FOLDER = "_boxes"
BOX_TYPE = SHARD_SCHEMA.field("bbox").type  # fixed-size list<float32>[4], as the shards hold boxes
BOX_SCHEMA = pa.schema([("image_id", pa.string()), ("bbox", BOX_TYPE), ("score", pa.float32()),
                        ("detected", pa.bool_())])


def prompt_text(class_name: str) -> str:
    """A class name as a detector prompt: CUB's ``001.Black_footed_Albatross`` -> ``Black footed
    Albatross`` (the index and underscores are file-name conventions, not words)."""
    return re.sub(r"^\d+\.", "", class_name).replace("_", " ").strip() or class_name


class DetectActor:
    """Ray Data actor (also callable here on a numpy batch): encoded rows (``image``, ``image_id``,
    ``class_name``) -> ``image_id``, ``bbox`` (N, 4) float32 x1, y1, x2, y2 in stored-image pixels,
    ``score`` (N,) float32 (the best box's, also when it fails the threshold), ``detected`` (N,) bool."""

    def __init__(self, spec: DetectorSpec):
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        from fgray.data.views.transforms import decode

        self.torch, self.decode, self.spec = torch, decode, spec
        self.device = local_device()
        path = local_weights(spec.path)  # file:///mount/... as it is; s3:// / gs://: this node's copy
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True)
        self.model = model.to(self.device).eval()
        # OWLv2 pads each image to a square (bottom, right) before resizing: its boxes are relative to
        # that square. OWL-ViT and Grounding DINO boxes are relative to the image itself.
        self.square = model.config.model_type == "owlv2"
        post = self.processor.post_process_grounded_object_detection
        self.needs_ids = "input_ids" in inspect.signature(post).parameters  # Grounding DINO's signature

    def prompts(self, class_names) -> list[list[str]]:
        """One query per image: its class name, or the meta-category word (spec §2.3)."""
        if self.spec.prompt == "meta_category":
            return [[self.spec.meta_category] for _ in class_names]
        return [[prompt_text(str(name))] for name in class_names]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [self.decode(encoded) for encoded in batch["image"]]
        sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]  # (H, W)
        # truncation: a long class name is cut to the text encoder's context (OWL: 16 tokens)
        inputs = self.processor(text=self.prompts(batch["class_name"]), images=images, return_tensors="pt",
                                truncation=True).to(self.device)
        with self.torch.no_grad():
            outputs = self.model(**inputs)
        targets = [(max(h, w), max(h, w)) if self.square else (h, w) for h, w in sizes]
        extra = {"input_ids": inputs["input_ids"]} if self.needs_ids else {}
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=0.0, target_sizes=targets, **extra)  # every box: the best one is picked below
        picked = [self.best_box(result, h, w) for result, (h, w) in zip(results, sizes)]
        return {"image_id": np.asarray(batch["image_id"]).astype(str),
                "bbox": np.stack([box for box, _, _ in picked]).astype(np.float32),
                "score": np.array([score for _, score, _ in picked], dtype=np.float32),
                "detected": np.array([ok for _, _, ok in picked], dtype=bool)}

    def best_box(self, result: dict, height: int, width: int) -> tuple[np.ndarray, float, bool]:
        """(box, score, detected): the highest-scoring box that overlaps the image, clipped to it (OWLv2
        also boxes its square padding), or the whole image when it scores ``box_threshold`` or less
        (spec §2.3 guess); score 0 when no box overlaps the image."""
        whole = np.array([0, 0, width, height], dtype=np.float32)
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4).clip(0, [width, height, width, height])
        scores = result["scores"].float().cpu().numpy()
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not inside.any():
            return whole, 0.0, False
        best = int(np.where(inside, scores, -np.inf).argmax())
        passed = bool(scores[best] > self.spec.box_threshold)  # as transformers' threshold
        return (boxes[best].astype(np.float32) if passed else whole), float(scores[best]), passed


def detect_rows(spec: DetectorSpec, rows: Rows, use_gpu: bool | None = None, cpus_per_actor: float = 1.0,
                max_actors: int = 4, local_max_rows: int = 0) -> pa.Table:
    """One pass of ``DetectActor`` over encoded ``rows`` -> the boxes table (``box_table``).

    Ray Data's read tasks stream the rows into an actor pool that runs it (one GPU per actor with
    ``use_gpu``; None: when the cluster has GPUs now; ``embedding_cache.pool_size``). Without Ray, or
    for at most ``local_max_rows`` rows on CPU, the rows are read and detected in this process instead:
    an actor's start (a process importing torch and transformers) costs more than detecting a small split.
    """
    if rows.num_rows == 0:
        return BOX_SCHEMA.empty_table()
    if use_gpu is None:  # the CLI's detect: the GPUs up now; a sweep's trials pass what the sweep asks for
        use_gpu = ray.is_initialized() and cluster_gpus() > 0
    if not ray.is_initialized() or (not use_gpu and rows.num_rows <= local_max_rows):
        return box_table(embed_in_process(DetectActor(spec), rows.read(), spec.batch_size))
    # GPUs: the autoscaler's to bring
    size = pool_size(use_gpu, max_actors, ray_compat.cluster_resources().get("CPU", 1))
    ds = rows.dataset(num_cpus=min(1.0, cpus_per_actor)).map_batches(
        DetectActor, fn_constructor_kwargs={"spec": spec},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        num_gpus=1 if use_gpu else 0, num_cpus=1 if use_gpu else cpus_per_actor,
        batch_size=spec.batch_size, batch_format="numpy")
    return box_table(pa.Table.from_pandas(ds.to_pandas(), preserve_index=False))


def box_table(table: pa.Table) -> pa.Table:
    """The stored columns and types, whichever way the actor's output was collected."""
    boxes = np.stack(table.column("bbox").to_numpy(zero_copy_only=False)).astype(np.float32).reshape(-1, 4)
    return pa.table({"image_id": table.column("image_id"),
                     "bbox": pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1)), 4),
                     "score": table.column("score"), "detected": table.column("detected")}).cast(BOX_SCHEMA)


# ------------------------------------------------------------------------------------------ storage


def boxes_address(spec: DetectorSpec, prepared: PreparedDataset) -> str:
    """What the boxes depend on: the detector's files, the prompt, the threshold and the images."""
    parts = {"weights": weights_digest(spec.path), "prompt": spec.prompt, "threshold": spec.box_threshold,
             "meta_category": spec.meta_category if spec.prompt == "meta_category" else None,
             "dataset": prepared.manifest.content_hash}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def ensure_boxes(spec: DetectorSpec, prepared: PreparedDataset, image_ids: np.ndarray | None,
                 root: str | None = None, use_gpu: bool | None = None, cpus_per_actor: float = 1.0,
                 local_max_rows: int = 256) -> str:
    """A complete writer folder holding the boxes of ``image_ids`` (None: every image), detecting
    those no folder at this address has yet. ``root``: where ``_boxes`` lives (the data root)."""
    base = f"{(root or prepared.root).rstrip('/')}/{BOXES_FOLDER}/{boxes_address(spec, prepared)}"
    wanted = read_rows(prepared, image_ids, ["image_id"]).column("image_id")
    known: list[pa.Table] = []
    for folder in complete_folders(base):
        table = read_folder(folder)
        if pc.all(pc.is_in(wanted, table.column("image_id"))).as_py():
            return folder
        known.append(table)
    done = pa.concat_tables(known).column("image_id") if known else pa.array([], pa.string())
    missing = pc.filter(wanted, pc.invert(pc.is_in(wanted, done)))
    rows = Rows(prepared, missing.to_numpy(zero_copy_only=False), ("image", "image_id", "class_name"),
                name=dataset_name("detector boxes", prepared.manifest.dataset))
    if rows.num_rows or not known:  # no rows but folders: together they cover the split, none alone
        known.append(detect_rows(spec, rows, use_gpu, cpus_per_actor, local_max_rows=local_max_rows))
    return write_complete(f"{base}/{uuid.uuid4().hex[:8]}", _union(known))


def _union(tables: list[pa.Table]) -> pa.Table:
    """One row per image id (the first table's row wins): writers that raced may overlap."""
    table = pa.concat_tables([t.select(BOX_SCHEMA.names).cast(BOX_SCHEMA) for t in tables])
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    return table.take(pa.array(np.sort(first)))


def with_boxes(table: pa.Table, folder: str) -> pa.Table:
    """``table`` (encoded training rows) with its ``bbox`` column replaced by the detected boxes of
    ``folder``, joined by image id; every row must have one."""
    boxes = read_folder(folder)
    ids = table.column("image_id")
    positions = pc.index_in(ids, boxes.column("image_id"))
    if positions.null_count:
        missing = pc.filter(ids, pc.is_null(positions))[0].as_py()
        raise KeyError(f"{positions.null_count} training images have no detected box in {folder}, e.g. "
                       f"{missing!r}: delete the folder to detect again")
    column = boxes.column("bbox").take(positions).cast(BOX_TYPE)
    if "bbox" in table.column_names:
        return table.set_column(table.column_names.index("bbox"), "bbox", column)
    return table.append_column("bbox", column)
