"""Embeddings of frozen encoders, computed once per (encoder, weights, dataset, transform).

``EmbedActor`` is the one Ray Data actor that embeds images anywhere in fgray: it decodes the
eval view of each encoded row once and runs every model it was given (frozen encoders of a
method's declared ``embeddings`` here; trained methods from checkpoints in ``fgray.eval``).

``ensure_cache`` embeds every image of a prepared dataset with a frozen encoder
(``EncoderSpec``: open_clip image tower or timm model; hub, file or seeded random weights)
through a pool of those actors (one GPU per actor when the sweep asks for GPUs) and writes Parquet
(``image_id``, ``embedding`` (d,) float32) under ``<storage>/_embedding_cache/<address>/<writer>/``,
``_COMPLETE`` written last. The address hashes the encoder spec, a digest of its weights file,
the dataset's content hash and the eval transform, so every trial and every later sweep on the
same storage reuses it, whatever its split protocol. Trials that start together may each build it
once (each in its own writer folder; readers take any complete one). Rows are keyed by image id:
``map_batches`` does not keep row order.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from typing import Callable

import numpy as np
import pyarrow as pa
import ray

from fgray import ray_compat
from fgray.config import DataConfig
from fgray.data.inputs import EncoderSpec
from fgray.data.rows import PreparedDataset, Rows, TableBatches, dataset_name
from fgray.devices import local_device
from fgray.storage import complete_folders, write_complete
from fgray.weights_uri import local_weights
CACHE_FOLDER = "_embedding_cache"

# A model factory: called once in each actor, returns images (B, 3, S, S) normalised -> (B, d).
ModelFactory = Callable[[], Callable]


class EmbedActor:
    """Ray Data actor: encoded rows -> eval views -> column ``embedding_<i>`` per model factory;
    ``image_id`` (and ``label`` when the rows have it) pass through."""

    def __init__(self, factories: list[ModelFactory], image_size: int, eval_crop: float):
        import torch

        from fgray.data.views.transforms import EvalViews  # torchvision: in the actors, not in a trial's driver

        self.torch = torch
        self.device = local_device()
        self.models = [factory() for factory in factories]
        self.views = EvalViews(image_size, eval_crop)  # decoding here too: one stage, one pool

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from fgray.engine import normalize_images

        with self.torch.no_grad():
            images = normalize_images(self.torch.from_numpy(self.views(batch)["image"]).to(self.device))
            out = {f"embedding_{i}": model(images).float().cpu().numpy() for i, model in enumerate(self.models)}
        out["image_id"] = np.asarray(batch["image_id"]).astype(str)
        if "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out


def cluster_gpus() -> int:
    return ray_compat.cluster_gpus()


def pool_size(use_gpu: bool, max_actors: int, cluster_cpus: float) -> int:
    """The most actors a GPU or CPU actor pool may grow to (it starts with one). GPU actors: up to
    ``max_actors`` whatever is up now: pending actors ask the autoscaler for their GPUs, while sizing by
    the GPUs up now gave a fresh autoscaling cluster (0 GPUs) one actor for the whole dataset. CPU
    actors: the CPUs up now (a CPU pool never asks for nodes of its own: the GPU nodes bring CPUs)."""
    return max(1, max_actors if use_gpu else min(int(cluster_cpus), max_actors))


def embed_rows(factories: list[ModelFactory], rows: Rows, data: DataConfig, batch_rows: int,
               cpus_per_actor: float, use_gpu: bool | None = None, max_actors: int = 8,
               local_max_rows: int = 0) -> pa.Table:
    """One pass of ``EmbedActor`` over encoded ``rows`` (``image``, ``image_id`` (, ``label``)):
    ``image_id`` (, ``label``), ``embedding_<i>``, in no particular order.

    Ray Data's read tasks stream the rows into an actor pool that embeds them (one GPU per actor when
    the cluster has GPUs; ``use_gpu`` True: the sweep asks for GPUs, which the autoscaler may still be
    bringing, ``pool_size``); at most ``local_max_rows`` rows on CPU are read and embedded in this
    process instead: for a small split, an actor's start (a process importing torch and the model
    code) costs more than the embedding.
    """
    use_gpu = cluster_gpus() > 0 if use_gpu is None else use_gpu
    kwargs = {"factories": factories, "image_size": data.image_size, "eval_crop": data.eval_crop}
    if not use_gpu and 0 < rows.num_rows <= local_max_rows:
        return embed_in_process(EmbedActor(**kwargs), rows.read(), batch_rows)
    size = pool_size(use_gpu, max_actors, ray_compat.cluster_resources().get("CPU", 1))
    ds = rows.dataset(num_cpus=min(1.0, cpus_per_actor)).map_batches(
        EmbedActor, fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        num_gpus=1 if use_gpu else 0, num_cpus=1 if use_gpu else cpus_per_actor,
        batch_size=batch_rows, batch_format="numpy")
    return pa.Table.from_pandas(ds.to_pandas(), preserve_index=False)


def embed_in_process(actor: Callable[[dict], dict], rows: pa.Table, batch_rows: int) -> pa.Table:
    """``actor`` (``EmbedActor``, ``detect.DetectActor``) called in this process on ``rows`` in batches, as
    Ray Data would call it."""
    parts = [actor(batch) for batch in TableBatches(rows).iter_batches(batch_rows)]
    columns = {}
    for key in parts[0]:
        values = np.concatenate([part[key] for part in parts])
        columns[key] = (pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
                        if values.ndim == 2 else pa.array(values))
    return pa.table(columns)


# ------------------------------------------------------------------------------------------ cache


def frozen_encoder(spec_json: str, image_size: int):
    """Model factory of a frozen encoder (runs inside the actor: model code loads there only)."""
    from fgray.models.encoders import build_encoder

    device = local_device()
    return build_encoder(EncoderSpec.model_validate_json(spec_json), image_size).to(device)


def weights_digest(pretrained: str) -> str:
    """Content digest of a weights file or folder (a saved model, an fgray checkpoint: every file in
    it, by relative name), local or an object-store URI (of this node's copy, which its loader opens
    next); hub tags and ``random`` stand for themselves."""
    path = local_weights(pretrained)
    folder = os.path.isdir(path)
    if folder:
        files = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, names in os.walk(path) for f in names)
    elif os.path.isfile(path):
        path, files = os.path.dirname(path), [os.path.basename(path)]
    else:
        return pretrained
    digest = hashlib.sha1()
    for name in files:
        if folder:
            digest.update(name.encode())  # a folder's layout is part of its content; a file's name is not
        with open(os.path.join(path, name), "rb") as f:
            for chunk in iter(functools.partial(f.read, 2**22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cache_address(spec: EncoderSpec, prepared: PreparedDataset, data: DataConfig) -> str:
    parts = {"encoder": spec.model_dump(mode="json"), "weights": weights_digest(spec.pretrained),
             "dataset": prepared.manifest.content_hash, "transform": [data.image_size, data.eval_crop]}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def find_complete(base: str) -> str | None:
    """A finished writer folder under ``base`` (one cache address), or None: any one will do."""
    return next(iter(complete_folders(base)), None)


def ensure_cache(spec: EncoderSpec, prepared: PreparedDataset, data: DataConfig, storage: str,
                 cpus_per_actor: float = 1.0, use_gpu: bool | None = None, batch_rows: int = 64) -> str:
    """Path of a complete cache of ``spec``'s embeddings of every image of ``prepared``, computing it
    if there is none."""
    base = f"{storage.rstrip('/')}/{CACHE_FOLDER}/{cache_address(spec, prepared, data)}"
    found = find_complete(base)
    if found is not None:
        return found
    factory = functools.partial(frozen_encoder, spec.model_dump_json(), data.image_size)
    rows = Rows(prepared, None, ("image", "image_id"),
                name=dataset_name("frozen cache", spec.model, prepared.manifest.dataset))
    table = embed_rows([factory], rows, data, batch_rows, cpus_per_actor, use_gpu, 4)
    embeddings = np.stack(table["embedding_0"].to_numpy(zero_copy_only=False)).astype(np.float32)
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    written = pa.table({"image_id": table["image_id"].cast(pa.string()),
                        "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])})
    return write_complete(f"{base}/{uuid.uuid4().hex[:8]}", written)
