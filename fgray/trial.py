"""The only Ray-aware training code: one Tune trial = one Ray Train ``TorchTrainer`` (DDP).

``trial_driver`` is the Tune trainable (a plain function, Train V2): it resolves the trial's
experiment config, builds the Ray Data pipelines and fits a TorchTrainer whose workers run
``worker_loop``. Workers report once per epoch (loss parts, ``val/...`` metrics and the
1-based ``epoch`` ASHA keys on) and rank 0 checkpoints, so a restarted worker group or a
``--resume``d sweep continues from the last finished epoch.

Model code (timm, torchvision, fgray's engine) is imported inside ``worker_loop``: the Tune driver
and the Train controller import this module too (the controller to unpickle ``worker_loop``) but
never build a model, and the seconds of imports they skip are on every trial's start-up path.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, Iterator

import ray
import ray.train
import ray.train.torch
from ray import tune
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.tune.integration.ray_train import TuneReportCallback

from fgray import checkpoint as ckpt
from fgray.config import ExperimentConfig, SweepConfig
from fgray.data import pipeline

POINT_KEY = "point"  # param-space key of a ``search.points`` row index


def overrides_from(params: dict[str, Any], sweep: SweepConfig) -> dict[str, Any]:
    """Tune's sampled params (dotted keys, maybe a table-row index) -> dotted overrides."""
    overrides = {k: v for k, v in params.items() if k != POINT_KEY}
    if POINT_KEY in params:
        overrides.update(sweep.search.points[int(params[POINT_KEY])])
    return overrides


def train_run_dir(storage: str, sweep_name: str) -> str:
    """Where the Train runs (and so the checkpoints) of a sweep's trials live."""
    return f"{storage.rstrip('/')}/{sweep_name}"


def train_run_name(trial_id: str) -> str:
    return f"train-{trial_id}"


def trial_driver(params: dict[str, Any], sweep: dict[str, Any], storage: str) -> None:
    """Tune trainable: fit one TorchTrainer for the experiment these params select."""
    sweep_cfg = SweepConfig.model_validate(sweep)
    experiment = sweep_cfg.experiment(overrides_from(params, sweep_cfg))
    res = experiment.resources
    prepared = pipeline.resolve_dataset(experiment.data)
    splits = pipeline.assign(prepared, experiment.data)
    empty = [name for name in ("train", "val") if len(getattr(splits, name)) == 0]
    if empty:  # fail before any worker starts, with the reason, rather than after an epoch
        raise ValueError(f"data: the {' and '.join(empty)} split is empty ({splits.description}); "
                         f"more images per class or another data.val_fraction (now {experiment.data.val_fraction})")
    attach = None
    if "teacher_embedding" in experiment.method.required_columns:
        from fgray.data import teacher_cache  # PP-SSL teacher_mode cached: CLIP embeddings computed once

        cache = teacher_cache.ensure_cache(prepared, splits.train, experiment.data, experiment.method.teacher, storage,
                                           use_gpu=True if res.gpus_per_worker > 0 else None)
        attach = teacher_cache.attacher(cache, res.data_cpus)
    datasets = {
        # Every epoch in one dataset, read through one iterator (see pipeline.train_dataset); a
        # resumed run stops reading early, and the unread passes are never computed.
        "train": pipeline.train_dataset(prepared, splits.train, experiment.data, res.data_cpus,
                                        passes=experiment.train.epochs, actors=res.data_actors, attach=attach),
        "val": pipeline.eval_dataset(prepared, splits.val),  # decoded once, in the worker (ValBatches)
    }
    trainer = ray.train.torch.TorchTrainer(
        worker_loop,
        train_loop_config={"experiment": experiment.model_dump(mode="json"), "train_rows": len(splits.train)},
        scaling_config=ScalingConfig(
            num_workers=res.workers_per_trial,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
        ),
        run_config=RunConfig(
            name=train_run_name(tune.get_context().get_trial_id()),
            storage_path=train_run_dir(storage, sweep_cfg.name),
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=res.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
        datasets=datasets,
        # A single worker reads the dataset itself: streaming_split's coordinator actor costs a
        # whole CPU core on small blocks (measured: 93 % of a core, starving the worker).
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if res.workers_per_trial > 1 else []),
    )
    trainer.fit()  # a failed run raises here, and Tune records the trial as errored


def worker_loop(config: dict[str, Any]) -> None:
    """Runs in every Train worker: DDP training with per-epoch validation and checkpoints."""
    import torch

    from fgray.engine import build_method, build_optimizer, build_scheduler, evaluate, train_one_epoch, unwrap

    experiment = ExperimentConfig.model_validate(config["experiment"])
    train_cfg, ks = experiment.train, experiment.eval.ks
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Never more threads than reserved cores: an extra OpenMP thread beside a Ray Data task on the
    # same cores made steps 4x slower (measured: 1.5 CPUs, 2 threads: 17-29 s/epoch; 1 thread: 5-7 s).
    torch.set_num_threads(max(1, int(experiment.resources.cpus_per_worker)))
    torch.manual_seed(train_cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)

    device = ray.train.torch.get_device()
    method = build_method(experiment)
    model = ray.train.torch.prepare_model(method)
    method = unwrap(model)
    full_steps = max(1, config["train_rows"] // (train_cfg.batch_size * world))
    steps_per_epoch = min(full_steps, train_cfg.steps_per_epoch or full_steps)
    optimizer = build_optimizer(method.param_groups(), train_cfg, world)
    scheduler = build_scheduler(optimizer, train_cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and train_cfg.amp != "off"
                                  and not torch.cuda.is_bf16_supported())

    start_epoch, last_val = 0, {}
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            start_epoch = ckpt.load(directory, method, optimizer, scheduler, scaler)
            last_val = {k: v for k, v in ckpt.read_meta(directory)["metrics"].items() if k.startswith("val/")}

    train_batches = iter(ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=train_cfg.batch_size, drop_last=True,
        local_shuffle_buffer_size=experiment.data.shuffle_buffer or None))
    val_batches = ValBatches(ray.train.get_dataset_shard("val"), experiment.eval.batch_size,
                             pipeline.EvalViews(experiment.data.image_size, experiment.data.eval_crop))
    for epoch in range(start_epoch, train_cfg.epochs):
        started = time.perf_counter()
        stats = train_one_epoch(
            model, train_batches,
            optimizer, scheduler, device, epoch=epoch, epochs=train_cfg.epochs, steps_per_epoch=steps_per_epoch,
            amp=train_cfg.amp, grad_clip=train_cfg.grad_clip, scaler=scaler,
        )
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            **{f"train/{k}": v for k, v in stats.losses.items()},
            "train/steps": stats.steps,
            "train/images_per_s": stats.images_per_second * world,
            "train/data_wait": stats.data_wait_fraction,
            "train/lr": optimizer.param_groups[0]["lr"],
        }
        is_last = epoch + 1 == train_cfg.epochs
        # Validate when due, after the last epoch, and on the first report (Tune and ASHA need the metric).
        if rank == 0 and ((epoch + 1) % experiment.eval.every == 0 or is_last or not last_val):
            last_val = evaluate(method, val_batches, device, ks)
            if not last_val.get("val/num_queries"):  # every metric NaN: Tune would stop the whole sweep
                raise ValueError("validation: no query has a relevant image (each validation class has one image); "
                                 "the split needs classes with 2+ images (data.val_fraction)")
        metrics.update(last_val)  # carried forward between evaluations so ASHA always sees the metric
        metrics["time/epoch_s"] = time.perf_counter() - started
        _report(metrics, method, experiment, epoch + 1, optimizer, scheduler, scaler, rank)


class ValBatches:
    """The validation split's eval views: streamed and decoded (``decode``) on the first pass and
    kept in memory when they fit in ``keep_bytes``, so later validations skip a pipeline start and
    the decoding."""

    def __init__(self, shard, batch_size: int, decode: Callable[[dict], dict], keep_bytes: int = 512 * 2**20):
        self.shard, self.batch_size, self.decode, self.keep_bytes = shard, batch_size, decode, keep_bytes
        self.kept: list[dict] | None = None

    def __iter__(self) -> Iterator[dict]:
        if self.kept is not None:
            yield from self.kept
            return
        kept: list[dict] | None = []
        size = 0
        for encoded in self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy"):
            batch = self.decode(encoded)
            size += sum(v.nbytes for v in batch.values())
            if kept is not None and size <= self.keep_bytes:
                kept.append(batch)
            else:
                kept = None  # too big to keep: stream it every time
            yield batch
        self.kept = kept


def _report(metrics, method, experiment, epoch, optimizer, scheduler, scaler, rank) -> None:
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        ckpt.save(directory, method, experiment, epoch, metrics, optimizer, scheduler, scaler)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def latest_checkpoint(storage: str, sweep_name: str, trial_id: str) -> str | None:
    """The newest checkpoint folder of a trial's Train run (local storage), or None."""
    run_dir = os.path.join(os.path.expanduser(train_run_dir(storage, sweep_name)), train_run_name(trial_id))
    if not os.path.isdir(run_dir):
        return None
    candidates = [os.path.join(run_dir, d) for d in os.listdir(run_dir) if d.startswith("checkpoint_")]
    candidates = [d for d in candidates if os.path.isfile(os.path.join(d, ckpt.META_FILE))]
    return max(candidates, key=lambda d: ckpt.read_meta(d)["epoch"], default=None)
