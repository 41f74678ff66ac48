"""Distributed evaluation: embeddings extracted by a Ray Data actor pool (one GPU per actor when
the cluster has GPUs), cached by (checkpoint, dataset, transform) with image ids as keys, then
exact search with faiss in a Ray task placed on a GPU when there is one."""
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
import torch

from fgray import checkpoint as ckpt
from fgray.config import ExperimentConfig, SweepConfig
from fgray.data import pipeline, transforms
from fgray.eval.metrics import retrieval_metrics


class _Embedder:
    """Ray Data actor: one model per actor, loaded once, embedding batches of eval images."""

    def __init__(self, experiment_json: str, checkpoint_path: str | None):
        from fgray.engine import to_device
        from fgray.trial import build_method

        experiment = ExperimentConfig.model_validate_json(experiment_json)
        torch.manual_seed(experiment.train.seed)  # untrained baseline == the trials' initial weights
        self.method = build_method(experiment)
        if checkpoint_path:
            with ray.train.Checkpoint(checkpoint_path).as_directory() as directory:
                ckpt.load(directory, self.method)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.method.to(self.device).eval()
        self.to_device = to_device
        self.transform = transforms.eval_transform(experiment.data.image_size, experiment.data.eval_crop)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Decoding happens here too: one stage, so a CPU-only cluster never waits on a second pool.
        decoded = transforms.eval_images(batch["image"], self.transform)
        images = self.to_device({"image": decoded}, self.device)["image"]
        return {"embedding": self.method.embed(images).float().cpu().numpy(),
                "label": batch["label"], "image_id": batch["image_id"]}


def _metrics_on_local_device(*args, **kwargs) -> dict[str, float]:
    """retrieval_metrics on the GPU Ray gave this task, else on the CPU."""
    return retrieval_metrics(*args, device="cuda" if torch.cuda.is_available() else "cpu", **kwargs)


def _cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def embed_images(experiment: ExperimentConfig, checkpoint_path: str | None, prepared: pipeline.PreparedDataset,
                 image_ids: np.ndarray, cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, labels, image ids) of ``image_ids``, rows in the order of ``image_ids``."""
    key = _cache_key(experiment, checkpoint_path, prepared, image_ids)
    cache_path = posixpath.join(cache_dir, f"{key}.parquet") if cache_dir else None
    table = _read_cache(cache_path)
    if table is None:
        gpus = _cluster_gpus()
        rows = pipeline.read_rows(prepared, image_ids, ["image", "label", "image_id"])
        ds = pipeline.row_blocks(rows, experiment.eval.batch_size)
        ds = ds.map_batches(_Embedder, fn_constructor_kwargs={"experiment_json": experiment.model_dump_json(),
                                                              "checkpoint_path": checkpoint_path},
                            compute=ray.data.ActorPoolStrategy(size=max(1, min(gpus, 8))),
                            num_gpus=1 if gpus else 0, num_cpus=1 if gpus else experiment.resources.data_cpus,
                            batch_size=experiment.eval.batch_size, batch_format="numpy")
        table = pa.Table.from_pandas(ds.to_pandas(), preserve_index=False)
        if cache_path:
            _write_cache(cache_path, table)
    # map_batches does not keep row order: re-key by image id
    order = {image_id: i for i, image_id in enumerate(table["image_id"].to_pylist())}
    rows = np.array([order[i] for i in np.asarray(image_ids).astype(str)])
    embeddings = np.stack(table["embedding"].to_numpy(zero_copy_only=False))[rows].astype(np.float32)
    return embeddings, table["label"].to_numpy()[rows], np.asarray(image_ids).astype(str)


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


def evaluate_split(experiment: ExperimentConfig, checkpoint_path: str | None, cache_dir: str | None = None,
                   split: str = "test") -> dict[str, Any]:
    """Retrieval metrics of a checkpoint (None: untrained backbone) on ``split`` of its dataset."""
    prepared = pipeline.resolve_dataset(experiment.data)
    splits = pipeline.assign(prepared, experiment.data)
    search = ray.remote(num_cpus=1, num_gpus=1 if _cluster_gpus() else 0)(_metrics_on_local_device)
    if split == "test" and splits.test_query is not None:
        query, query_labels, query_ids = embed_images(experiment, checkpoint_path, prepared, splits.test_query, cache_dir)
        gallery, gallery_labels, gallery_ids = embed_images(experiment, checkpoint_path, prepared,
                                                            splits.test_gallery, cache_dir)
        job = search.remote(query, query_labels, gallery, gallery_labels, ks=experiment.eval.ks,
                            query_ids=query_ids, gallery_ids=gallery_ids)
    else:
        embeddings, labels, _ = embed_images(experiment, checkpoint_path, prepared, getattr(splits, split), cache_dir)
        job = search.remote(embeddings, labels, ks=experiment.eval.ks)
    return {**ray.get(job), "split": splits.description}


def evaluate_best(sweep: SweepConfig, storage: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Test metrics of the best ``eval.test_top`` trials (chosen on validation) and of the untrained backbone."""
    from fgray.report import rank_trials

    best = rank_trials(trials, sweep.search.metric, sweep.search.mode)[: sweep.eval.test_top]
    cache_dir = f"{storage}/{sweep.name}/_embeddings"
    out: dict[str, Any] = {"trials": {}}
    for trial in best:
        experiment = sweep.experiment(trial["overrides"])
        out["trials"][trial["trial_id"]] = evaluate_split(experiment, trial["checkpoint"], cache_dir)
        out["protocol"] = out["trials"][trial["trial_id"]].pop("split")
        print(f"test ({trial['trial_id']}): recall@1 {100 * out['trials'][trial['trial_id']]['recall@1']:.2f}%", flush=True)
    if best and sweep.eval.baseline:
        experiment = sweep.experiment(best[0]["overrides"])
        baseline = evaluate_split(experiment, None, cache_dir)
        baseline.pop("split")
        baseline["init"] = "pretrained weights" if experiment.backbone.pretrained else "random init"
        out["baseline"] = baseline
        print(f"test (untrained {experiment.backbone.name}, {baseline['init']}): "
              f"recall@1 {100 * baseline['recall@1']:.2f}%", flush=True)
    return out
