"""Distributed evaluation: embeddings extracted by a Ray Data actor pool (one GPU per actor when
the cluster has GPUs; several models per pass), cached by (checkpoint, dataset, transform) with
image ids as keys, then exact search with faiss in a Ray task placed on a GPU when there is one."""
from __future__ import annotations

import hashlib
import json
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
from fgray.config import ExperimentConfig, SweepConfig
from fgray.data import pipeline
from fgray.eval.linear_probe import linear_probe_fractions
from fgray.eval.metrics import retrieval_metrics


class _Embedder:
    """Ray Data actor: the models of one evaluation, each loaded once; every batch is decoded once
    and embedded by each model (column ``embedding_<i>`` for the i-th model)."""

    def __init__(self, models: list[tuple[str, str | None]], image_size: int, eval_crop: float):
        from fgray.engine import build_method, to_device

        self.methods = []
        for experiment_json, checkpoint_path in models:
            experiment = ExperimentConfig.model_validate_json(experiment_json)
            torch.manual_seed(experiment.train.seed)  # untrained baseline == the trials' initial weights
            method = build_method(experiment)
            if checkpoint_path:
                with ray.train.Checkpoint(checkpoint_path).as_directory() as directory:
                    ckpt.load(directory, method)
            self.methods.append(method)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        for method in self.methods:
            method.to(self.device).eval()
        self.to_device = to_device
        # Decoding happens here too: one stage, so a CPU-only cluster never waits on a second pool.
        self.views = pipeline.EvalViews(image_size, eval_crop)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = self.to_device({"image": self.views(batch)["image"]}, self.device)["image"]
        embeddings = {f"embedding_{i}": method.embed(images).float().cpu().numpy()
                      for i, method in enumerate(self.methods)}
        return {**embeddings, "label": batch["label"], "image_id": batch["image_id"]}


def _metrics(*args, **kwargs) -> dict[str, float]:
    """retrieval_metrics on a GPU of the cluster when it has one (a Ray task), else right here: on a
    CPU-only cluster a task would only add a process start to the same CPU work."""
    if not _cluster_gpus():
        return retrieval_metrics(*args, **kwargs)
    search = ray.remote(num_cpus=1, num_gpus=1)(retrieval_metrics)
    return ray.get(search.remote(*args, device="cuda", **kwargs))


def _cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


Model = tuple[ExperimentConfig, "str | None"]  # (experiment, checkpoint path or None for the untrained backbone)


def embed_images(models: list[Model], prepared: pipeline.PreparedDataset, image_ids: np.ndarray,
                 cache_dir: str | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """([embeddings of each model], labels) of ``image_ids``, rows in the order of ``image_ids``.

    The models must share ``data`` (same images and eval views). Models already in the cache are
    read from it; the others are embedded together in one pass over the images.
    """
    data = models[0][0].data
    if any(experiment.data != data for experiment, _ in models):
        raise ValueError("embed_images: models of one pass must share their data config")
    ids = np.asarray(image_ids).astype(str)
    keys = [_cache_key(experiment, checkpoint, prepared, ids) for experiment, checkpoint in models]
    paths = [posixpath.join(cache_dir, f"{key}.parquet") if cache_dir else None for key in keys]
    tables = [_read_cache(path) for path in paths]
    missing = [i for i, table in enumerate(tables) if table is None]
    if missing:
        computed = _embed_pass([models[i] for i in missing], prepared, ids)
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


def _embed_pass(models: list[Model], prepared: pipeline.PreparedDataset, ids: np.ndarray) -> pa.Table:
    """One Ray Data pass: columns image_id, label, embedding_<i> for each of ``models``."""
    experiment = models[0][0]
    gpus = _cluster_gpus()
    ds = pipeline.eval_dataset(prepared, ids, experiment.eval.batch_size)
    ds = ds.map_batches(_Embedder,
                        fn_constructor_kwargs={"models": [(e.model_dump_json(), c) for e, c in models],
                                               "image_size": experiment.data.image_size,
                                               "eval_crop": experiment.data.eval_crop},
                        compute=ray.data.ActorPoolStrategy(size=max(1, min(gpus, 8))),
                        num_gpus=1 if gpus else 0, num_cpus=1 if gpus else experiment.resources.data_cpus,
                        batch_size=experiment.eval.batch_size, batch_format="numpy")
    return pa.Table.from_pandas(ds.to_pandas(), preserve_index=False)


def _cache_key(experiment, checkpoint_path, prepared, image_ids) -> str:
    meta = ckpt.read_meta(checkpoint_path) if checkpoint_path and "://" not in checkpoint_path else {}
    parts = {
        "checkpoint": checkpoint_path or f"init:{experiment.backbone.model_dump_json()}:{experiment.train.seed}",
        "epoch": meta.get("epoch"),
        "method": experiment.method.model_dump_json(),
        "dataset": prepared.manifest.content_hash,
        "transform": [experiment.data.image_size, experiment.data.eval_crop],
        "ids": hashlib.sha1("\n".join(sorted(np.asarray(image_ids).astype(str))).encode()).hexdigest(),
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _filesystem(path: str):
    return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)


def _read_cache(path: str | None) -> pa.Table | None:
    if not path:
        return None
    filesystem, target = _filesystem(path)
    if filesystem.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    return pq.read_table(target, filesystem=filesystem)


def _write_cache(path: str, table: pa.Table) -> None:
    filesystem, target = _filesystem(path)
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
            result = _metrics(e[q], labels[q], e[g], labels[g], ks=settings.ks,
                              query_ids=parts["query"], gallery_ids=parts["gallery"])
        else:
            result = _metrics(e[rows["test"]], labels[rows["test"]], ks=settings.ks)
        if settings.linear_probe:
            result.update(_probe(e, labels, rows["probe_train"], rows["query" if query_gallery else "test"],
                                 settings.linear_probe, experiment.train.seed))
        results.append({**result, "split": splits.description})
    return results


def _probe(embeddings: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
           fractions: tuple[float, ...], seed: int) -> dict[str, Any]:
    """Linear probe accuracies, or a note when no test class was seen in training (an open split)."""
    if not np.isin(labels[test_rows], labels[train_rows]).any():
        return {"probe_note": "skipped: no test class occurs in the training images"}
    return linear_probe_fractions(embeddings[train_rows], labels[train_rows], embeddings[test_rows], labels[test_rows],
                                  fractions=fractions, seed=seed)


def evaluate_best(sweep: SweepConfig, storage: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Test metrics of the best ``eval.test_top`` trials (chosen on validation) and of the untrained backbone.

    Models that share their data and eval settings are evaluated together: one decode and one actor
    start per split.
    """
    from fgray.report import rank_trials

    best = rank_trials(trials, sweep.search.metric, sweep.search.mode)[: sweep.eval.test_top]
    cache_dir = f"{storage}/{sweep.name}/_embeddings"
    models: list[tuple[str, Model]] = [(t["trial_id"], (sweep.experiment(t["overrides"]), t["checkpoint"])) for t in best]
    if best and sweep.eval.baseline:
        models.append(("baseline", (sweep.experiment(best[0]["overrides"]), None)))
    groups: dict[str, list[tuple[str, Model]]] = {}
    for name, model in models:
        groups.setdefault(model[0].data.model_dump_json() + model[0].eval.model_dump_json(), []).append((name, model))
    results: dict[str, dict[str, Any]] = {}
    for group in groups.values():
        results.update(zip([name for name, _ in group], evaluate_split([model for _, model in group], cache_dir)))

    out: dict[str, Any] = {"trials": {}}
    for trial in best:
        result = results[trial["trial_id"]]
        out["protocol"] = result.pop("split")
        out["trials"][trial["trial_id"]] = result
        print(f"test ({trial['trial_id']}): {_headline(result)}", flush=True)
    if "baseline" in results:
        experiment = models[-1][1][0]
        baseline = results["baseline"]
        baseline.pop("split")
        baseline["init"] = "pretrained weights" if experiment.backbone.pretrained else "random init"
        out["baseline"] = baseline
        print(f"test (untrained {experiment.backbone.name}, {baseline['init']}): {_headline(baseline)}", flush=True)
    return out


def _headline(result: dict[str, Any]) -> str:
    probe = [k for k in result if k.startswith("probe@") and k.endswith("/top1")]
    return f"recall@1 {100 * result['recall@1']:.2f}%" + (f", {probe[0]} {100 * result[probe[0]]:.2f}%" if probe else "")
