"""Distributed evaluation: embeddings extracted by the shared Ray Data actor pool
(``embedding_cache.EmbedActor``: one GPU per actor when the sweep asks for GPUs; several models per
pass), cached by (checkpoint, dataset, transform) with
image ids as keys, then exact search with faiss in a Ray task placed on a GPU when there is one.
Besides its own test split, a model is scored on the ``eval.transfer`` datasets it never trained on."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
import torch

from fgray import checkpoint as ckpt
from fgray import storage
from fgray.config import ExperimentConfig, TransferConfig
from fgray.data import pipeline
from fgray.data.frozen.embedding_cache import embed_rows
from fgray.data.inputs import DatasetFacts
from fgray.devices import local_device
from fgray.eval.linear_probe import linear_probe_fractions
from fgray.eval.metrics import retrieval_metrics


def trained_method(experiment_json: str, checkpoint: str | None, facts: DatasetFacts):
    """Model factory (runs in ``EmbedActor``): a method from its checkpoint (local or URI) with the
    dataset facts it was trained with, or the untrained backbone (checkpoint None); returns its ``embed``."""
    from fgray.engine import build_method, inference_embed

    experiment = ExperimentConfig.model_validate_json(experiment_json)
    torch.manual_seed(experiment.train.seed)  # untrained baseline == the trials' initial weights
    if checkpoint:
        path, filesystem = storage.ray_storage(checkpoint)
        with ray.train.Checkpoint(path, filesystem=filesystem).as_directory() as directory:
            method = build_method(experiment, ckpt.read_facts(directory))
            ckpt.load(directory, method)
    else:
        method = build_method(experiment, facts)
    return inference_embed(method, local_device(), experiment)


def uses_gpus(experiment: ExperimentConfig) -> bool:
    """Whether the evaluation runs on GPUs: because the sweep asks for them (``gpus_per_worker``), not
    because some happen to be up (an autoscaling cluster's GPU nodes come and go)."""
    return experiment.resources.gpus_per_worker > 0


def evaluation_actors(experiment: ExperimentConfig, most: int = 8) -> int:
    """The most embedding actors a test pass may grow to: the GPUs the sweep's trials held at full
    concurrency (the nodes the autoscaler started for them, still up after the trials), up to ``most``;
    an embedding pass should not start new GPU nodes the trials never needed."""
    res = experiment.resources
    return max(1, min(most, math.ceil(res.workers_per_trial * res.gpus_per_worker * res.max_concurrent_trials)))


def _metrics(*args, use_gpu: bool = False, **kwargs) -> dict[str, float]:
    """retrieval_metrics in a one-GPU Ray task when the sweep uses GPUs, else right here: on the CPU a
    task would only add a process start to the same work."""
    if not use_gpu:
        return retrieval_metrics(*args, **kwargs)
    return ray.get(_search_on_accelerator.remote(*args, **kwargs))


@ray.remote(num_cpus=1, num_gpus=1)
def _search_on_accelerator(*args, **kwargs) -> dict[str, float]:
    return retrieval_metrics(*args, device=local_device(), **kwargs)


Model = tuple[ExperimentConfig, "str | None"]  # (experiment, checkpoint path or None for the untrained backbone)


def embed_images(models: list[Model], prepared: pipeline.PreparedDataset, image_ids: np.ndarray,
                 cache_dir: str | None = None, trained_on: pipeline.PreparedDataset | None = None
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """([embeddings of each model], labels) of ``image_ids`` of ``prepared``, rows in their order.

    The models must share ``data`` (same images and eval views). Models already in the cache are
    read from it; the others are embedded together in one pass over the images. ``trained_on``: the
    dataset of the models' ``data`` when ``prepared`` is another one (a transfer dataset); an untrained
    model is built with its facts (class count), as the trials were.
    """
    data = models[0][0].data
    if any(experiment.data != data for experiment, _ in models):
        raise ValueError("embed_images: models of one pass must share their data config")
    ids = np.asarray(image_ids).astype(str)
    trained_on = trained_on or prepared
    keys = [_cache_key(experiment, checkpoint, prepared, ids, trained_on) 
            for experiment, checkpoint in models]
    paths = [posixpath.join(cache_dir, f"{key}.parquet") if cache_dir else None for key in keys]
    tables = [_read_cache(path) for path in paths]
    missing = [i for i, table in enumerate(tables) if table is None]
    if missing:
        computed = _embed_pass([models[i] for i in missing], prepared, ids, trained_on)
        for slot, i in enumerate(missing):
            tables[i] = computed.select(["image_id", "label"]).append_column("embedding", computed[f"embedding_{slot}"])
            if paths[i]:
                _write_cache(paths[i], tables[i])
    out, labels = [], None
    for table in tables:
        # map_batches does not keep row order: re-key by image id
        order = {image_id: row for row, image_id in enumerate(table["image_id"].to_pylist())}
        rows = np.array([order[i] for i in ids])
        out.append(np.stack(table["embedding"].to_numpy(zero_copy_only=False))[rows].astype(np.float32))
        labels = table["label"].to_numpy()[rows]
    return out, labels


def _embed_pass(models: list[Model], prepared: pipeline.PreparedDataset, ids: np.ndarray,
                trained_on: pipeline.PreparedDataset) -> pa.Table:
    """One pass over ``ids`` of ``prepared`` (Ray Data, or this process for a small CPU split): columns
    image_id, label, embedding_<i> for each of ``models``, built with the facts of ``trained_on``."""
    experiment = models[0][0]
    facts, _ = pipeline.dataset_facts(trained_on, pipeline.assign(trained_on, experiment.data).train,
                                      experiment.data)
    factories = [functools.partial(trained_method, e.model_dump_json(), c, facts) for e, c in models]
    rows = pipeline.Rows(prepared, ids, ("image", "label", "image_id"),
                         name=pipeline.dataset_name(experiment.name, "evaluation", prepared.manifest.dataset))
    return embed_rows(factories, rows, experiment.data, experiment.eval.batch_size, experiment.resources.data_cpus,
                      use_gpu=uses_gpus(experiment), max_actors=evaluation_actors(experiment),
                      local_max_rows=experiment.eval.local_max_images)


def _cache_key(experiment, checkpoint_path, prepared, image_ids, trained_on=None) -> str:
    meta = ckpt.read_meta(checkpoint_path) if checkpoint_path and "://" not in checkpoint_path else {}
    parts = {
        "checkpoint": checkpoint_path or f"init:{experiment.backbone.model_dump_json()}:{experiment.train.seed}",
        "epoch": meta.get("epoch"),
        "method": experiment.method.model_dump_json(),
        "dataset": prepared.manifest.content_hash,
        "transform": [experiment.data.image_size, experiment.data.eval_crop],
        "ids": hashlib.sha1("\n".join(sorted(np.asarray(image_ids).astype(str))).encode()).hexdigest(),
    }
    if trained_on is not None and trained_on.manifest.content_hash != prepared.manifest.content_hash:
        # Another dataset's images (transfer): an untrained model's heads follow its training data's facts.
        parts["trained_on"] = trained_on.manifest.content_hash
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _read_cache(path: str | None) -> pa.Table | None:
    if not path:
        return None
    filesystem, target = storage.filesystem(path)
    if filesystem.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    return pq.read_table(target, filesystem=filesystem)


def _write_cache(path: str, table: pa.Table) -> None:
    filesystem, target = storage.filesystem(path)
    filesystem.create_dir(posixpath.dirname(target), recursive=True)
    pq.write_table(table, target, filesystem=filesystem)


def evaluate_split(models: list[Model], cache_dir: str | None = None, split: str = "test") -> list[dict[str, Any]]:
    """Retrieval metrics of each model (checkpoint None: untrained backbone) on ``split`` of their dataset,
    and with ``eval.linear_probe`` the linear-probe accuracies (``probe@<percent>/top1|top5``).

    The models share one data config; one pass over the images embeds everything the evaluation
    needs (test split, query and gallery, the probe's training images) for every model.
    """
    data, settings = models[0][0].data, models[0][0].eval
    prepared = pipeline.resolve_dataset(data)
    splits = pipeline.assign(prepared, data)
    query_gallery = split == "test" and splits.test_query is not None
    parts = {"query": splits.test_query, "gallery": splits.test_gallery} if query_gallery \
        else {"test": getattr(splits, split)}
    if settings.linear_probe:  # fitted on every training image with a label (train and val)
        parts["probe_train"] = np.concatenate([splits.train, splits.val])
    parts = {name: np.asarray(ids).astype(str) for name, ids in parts.items()}
    every_id = np.unique(np.concatenate(list(parts.values())))
    embeddings, labels = embed_images(models, prepared, every_id, cache_dir)
    rows = {name: np.searchsorted(every_id, ids) for name, ids in parts.items()}

    results = []
    for (experiment, _), e in zip(models, embeddings):
        if query_gallery:
            q, g = rows["query"], rows["gallery"]
            result = _metrics(e[q], labels[q], e[g], labels[g], ks=settings.ks, use_gpu=uses_gpus(experiment),
                              query_ids=parts["query"], gallery_ids=parts["gallery"])
        else:
            result = _metrics(e[rows["test"]], labels[rows["test"]], ks=settings.ks, use_gpu=uses_gpus(experiment))
        if settings.linear_probe:
            result.update(_probe(e, labels, rows["probe_train"], rows["query" if query_gallery else "test"],
                                 settings.linear_probe, experiment.train.seed))
        results.append({**result, "split": splits.description})
    for transfer in settings.transfer if split == "test" else ():
        for result, scores in zip(results, evaluate_transfer(models, transfer, prepared, cache_dir)):
            result.update(scores)
    return results


def evaluate_transfer(models: list[Model], transfer: TransferConfig, trained_on: pipeline.PreparedDataset,
                      cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Leave-one-out retrieval metrics of each model on a dataset it was not trained on, keyed
    ``"<transfer.name>/<metric>"`` (and ``"<name>/split"``: which images), from one pass over its images."""
    experiment = models[0][0]
    prepared = pipeline.resolve_dataset(transfer.data_config(experiment.data))
    ids, description = transfer_images(prepared, transfer)
    embeddings, labels = embed_images(models, prepared, ids, cache_dir, trained_on=trained_on)
    ks = transfer.ks or experiment.eval.ks
    prefix = f"{transfer.name}/"
    use_gpu = uses_gpus(experiment)
    return [{**{prefix + k: v for k, v in _metrics(e, labels, ks=ks, use_gpu=use_gpu).items()},
             prefix + "split": description} for e in embeddings]


def transfer_images(prepared: pipeline.PreparedDataset, transfer: TransferConfig) -> tuple[np.ndarray, str]:
    """(image ids, description) of the images a transfer set is scored on (reads the index columns only)."""
    index = pipeline.read_rows(prepared, None, ["image_id", "label", "split"])
    splits = index["split"].to_numpy(zero_copy_only=False)
    keep, description = select_images(index["label"].to_numpy(), splits, transfer.images, transfer.classes)
    ids = index["image_id"].to_numpy(zero_copy_only=False).astype(str)[keep]
    return ids, f"{transfer.reader}: {description}; leave-one-out"


def select_images(labels: np.ndarray, splits: np.ndarray, images: str, classes: int | None
                  ) -> tuple[np.ndarray, str]:
    """(boolean mask, description): ``images`` "all" or the official "train" / "test" side (test: every
    image not in train, so query / gallery count as test), then the first ``classes`` labels among them."""
    keep = np.ones(len(labels), bool) if images == "all" else (splits == "train") == (images == "train")
    kept_classes = np.unique(labels[keep])
    what = "all images" if images == "all" else f"official {images} images"
    if classes is not None and classes < len(kept_classes):
        keep &= np.isin(labels, kept_classes[:classes])
        what += f" of the first {classes} classes"
    return keep, f"{what} ({int(keep.sum())} images, {len(np.unique(labels[keep]))} classes)"


def _probe(embeddings: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
           fractions: tuple[float, ...], seed: int) -> dict[str, Any]:
    """Linear probe accuracies, or a note when no test class was seen in training (an open split)."""
    if not np.isin(labels[test_rows], labels[train_rows]).any():
        return {"probe_note": "skipped: no test class occurs in the training images"}
    return linear_probe_fractions(embeddings[train_rows], labels[train_rows], embeddings[test_rows], labels[test_rows],
                                  fractions=fractions, seed=seed)
