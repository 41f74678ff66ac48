"""The only Ray-aware training code: one Tune trial trains one experiment.

``trial_driver`` is the Tune trainable (a plain function, Train V2): it resolves the trial's
experiment config and its training split (ids and labels, no images) and runs ``worker_loop``,
which reads its rows and draws its batches, in one of two ways:

- one worker (``resources.in_trial``): in the trial's own Tune process, reporting and
  checkpointing to Tune, which retries a failed trial from its last checkpoint
  (``tune.FailureConfig``); its views are drawn by DataLoader workers it forks
  (``fgray.data.forked_views``). No TorchTrainer, no view process to start: a laptop trial
  trains seconds sooner.
- several workers (DDP): a Ray Train ``TorchTrainer`` whose workers run ``worker_loop``, each with
  a Ray Data pipeline; Train restarts a worker group a node preemption stopped, and Tune retries
  a trial that failed otherwise (``tune.FailureConfig``), resuming the Train run's last checkpoint.

Both draw the same batches (the same index, view code and per-image seeds).

Either way the loop reports once per epoch (loss parts, ``val/...`` metrics and the 1-based
``epoch`` ASHA keys on) and rank 0 checkpoints, so a retried trial or a ``--resume``d sweep
continues from the last finished epoch with the same random streams.

Model code (timm, torchvision, fgray's engine) is imported inside ``worker_loop``: the Tune driver
of a DDP trial and its Train controller import this module too (the controller to unpickle
``worker_loop``) but never build a model, and the seconds of imports they skip are on every
trial's start-up path.
"""
from __future__ import annotations

import concurrent.futures
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

import ray
import ray.train
from ray import tune
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from fgray import ray_compat
from fgray.cluster.cuda_check import refuse_if_failed
from fgray.config import FORKED_VIEWS, ExperimentConfig, SweepConfig
from fgray.data import pipeline
from fgray.data.inputs import DatasetFacts
from fgray.results import (checkpoint_epoch, objective, overrides_from, settings_failure, train_run_dir,
                           train_run_name)
from fgray.storage import ray_storage
from fgray.trial_inputs import frozen_inputs
from fgray.validation import ConfigError, validate

# torch (ray.train.torch, fgray.checkpoint, the engine) is imported where it is used: a DDP worker
# starts its data pipeline first, and the pipeline's actor starts while torch loads here.


def trial_driver(params: dict[str, Any], sweep: dict[str, Any], storage: str) -> None:
    """Tune trainable: train the experiment these params select, here (one worker) or through a
    TorchTrainer (DDP).

    It resolves exactly the inputs the method declares (``fgray.trial_inputs``): its frozen encoders'
    embeddings (once per storage, ``embedding_cache``), the training split (which images, their labels) and the validation
    images. It reads no image: each trainer reads the rows it uses (``worker_loop``).

    Settings that cannot train (a ConfigError: a split too small for a batch, one without a class to
    score) fail every retry the same way, and Tune retries whatever a trial raises: such a trial
    reports the reason as its last result instead (``results.settings_failure``) and ends, and the
    sweep records it as failed with that reason. The sweep's start refuses the cases it can foresee.
    """
    # The sweep was validated whole before its trials started: the schema pass here skips timm's checks.
    sweep_cfg = validate(SweepConfig, sweep, deep=False)
    try:
        _drive(params, sweep_cfg, storage)
    except ConfigError as err:
        tune.report(settings_failure(err, *objective(sweep_cfg)))


def _drive(params: dict[str, Any], sweep_cfg: SweepConfig, storage: str) -> None:
    experiment = sweep_cfg.experiment(overrides_from(params, sweep_cfg), deep=False)
    res, data = experiment.resources, experiment.data
    frozen = frozen_inputs(experiment, storage)
    prepared, splits = frozen.prepared, frozen.splits
    needed = ("train", "val") if experiment.has_validation else ("train",)
    empty = [name for name in needed if len(getattr(splits, name)) == 0]
    if empty:  # fail before any worker starts, with the reason, rather than after an epoch
        raise ConfigError(f"data: the {' and '.join(empty)} split is empty ({splits.description}); "
                          f"more images per class or another data.val_fraction (now {data.val_fraction})")
    split = pipeline.training_split(prepared, splits.train, data, frozen.inputs, experiment.method.name,
                                    frozen.caches, boxes=frozen.boxes)
    val = (pipeline.Rows(prepared, splits.val, ("image", "label", "image_id"))
           if experiment.has_validation else None)
    config = {"experiment": experiment.model_dump(mode="json"), "split": split, "val": val,
              "inputs": frozen.inputs, "selector": frozen.selector, "trial_id": tune.get_context().get_trial_id()}
    if res.in_trial:  # Tune restores a retried or resumed (``--resume``) trial's checkpoint
        worker_loop(config, TrialSession(tune.get_checkpoint(), use_gpu=res.gpus_per_worker > 0))
        return
    import ray.train.torch

    trial_id = config["trial_id"]
    # One Train run per trial (its name): a driver retried by Tune, or resumed with the sweep, starts
    # the same run again, and Train V2 hands its last checkpoint to the workers (ray.train.get_checkpoint).
    run_path, filesystem = ray_storage(train_run_dir(storage, sweep_cfg.name))
    trainer = ray.train.torch.TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=res.workers_per_trial,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker,
                                  **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
        ),
        run_config=RunConfig(
            name=train_run_name(trial_id),
            # (path, filesystem): an S3-compatible endpoint reaches Train's uploads (fgray.storage)
            storage_path=run_path,
            storage_filesystem=filesystem,
            callbacks=ray_compat.report_to_tune(),  # every ray.train.report reaches Tune
            # Node preemptions (spot) are retried here, unlimited. A real failure ends the run at once: Train
            # V2 has no public way to skip retrying a deterministic error (a ConfigError in a worker), so
            # Tune retries real failures (resources.max_failures, one budget for either host) and the
            # driver stops a settings error first (``fit``).
            failure_config=FailureConfig(max_failures=0, max_preemption_failures=-1),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    fit(trainer)


def fit(trainer) -> None:
    """``trainer.fit()``; a worker group that failed on its settings (a ``ConfigError`` raised by any rank)
    raises that ConfigError here, which ``trial_driver`` reports without a retry. Any other failure
    raises as Train raised it, and Tune retries the trial: the retried driver starts the same Train run
    (its name), which resumes from the run's last checkpoint."""
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as err:
        cause = settings_cause(err)
        if cause is None:
            raise
        raise ConfigError(str(cause)) from err


def settings_cause(err: "ray.train.WorkerGroupError") -> ConfigError | None:
    """The first ``ConfigError`` a failed worker group's ranks raised (``worker_failures``: rank -> the
    exception, or a ``RayTaskError`` whose ``cause`` it is: taken first, its text is a whole traceback),
    else None."""
    for _, failure in sorted(err.worker_failures.items()):
        seen = set()
        while isinstance(failure, BaseException) and id(failure) not in seen:
            seen.add(id(failure))
            wrapped = getattr(failure, "cause", None)
            if isinstance(wrapped, BaseException):
                failure = wrapped
            elif isinstance(failure, ConfigError):
                return failure
            else:
                failure = failure.__cause__
    return None


class TrainSession:
    """What ``worker_loop`` needs from its host, in a Ray Train worker: rank, device, DDP wrapper,
    the checkpoint to resume from, per-epoch reports to Train, and where views are drawn (a Ray Data
    actor pool on the worker's node)."""

    forks_views = False

    def __init__(self) -> None:
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.wrap = ray.train.torch.prepare_model
        self.device = ray.train.torch.get_device()
        if self.device.type != "cpu":
            refuse_if_failed()  # this GPU node failed its CUDA check at start: fail here, with its reason

    def checkpoint(self) -> Checkpoint | None:
        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, float], directory: str | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory) if directory else None)


class TrialSession:
    """The same for a one-worker trial training in its Tune trial process: the checkpoint Tune
    restored (a retry or ``--resume``), reports and checkpoints to Tune; on Linux, views drawn by
    processes it forks (``fgray.data.forked_views``: no process start, no imports)."""

    rank, world = 0, 1

    def __init__(self, resumed: tune.Checkpoint | None, use_gpu: bool):
        self.resumed, self.use_gpu = resumed, use_gpu
        self.forks_views = FORKED_VIEWS  # elsewhere a Ray Data pipeline

    @property
    def device(self):
        import torch  # Ray gives the trial process its GPU (CUDA_VISIBLE_DEVICES)

        if self.use_gpu:
            refuse_if_failed()  # this GPU node failed its CUDA check at start: fail here, with its reason
        return torch.device("cuda" if self.use_gpu else "cpu")

    @staticmethod
    def wrap(model):
        return model  # no DDP for one worker

    def checkpoint(self) -> tune.Checkpoint | None:
        return self.resumed

    def report(self, metrics: dict[str, float], directory: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)


def steps_per_epoch(rank_rows: int, experiment: ExperimentConfig) -> int:
    """Optimiser steps of one rank's epoch: its full batches, capped by ``train.steps_per_epoch``."""
    full = max(1, rank_rows // experiment.train.batch_size)
    return min(full, experiment.train.steps_per_epoch or full)


def _checkpoint_epoch(checkpoint: Checkpoint | tune.Checkpoint) -> int:
    return checkpoint_epoch(checkpoint.path, checkpoint.filesystem)  # its meta file, not a download


def fetch_ahead(batches: Iterable) -> Iterator:
    """``batches`` with its first item already being fetched in a background thread: a pipeline's
    actors start (a process importing torch) while the caller imports and builds the model."""
    iterator = iter(batches)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    first = pool.submit(next, iterator, StopIteration)
    pool.shutdown(wait=False)  # its thread ends with that fetch

    def chain() -> Iterator:
        item = first.result()
        if item is not StopIteration:
            yield item
            yield from iterator
    return chain()


def worker_loop(config: dict[str, Any], session: TrainSession | TrialSession | None = None) -> None:
    """One rank's training: the method's stages in order (``fgray.stages``), per-epoch validation
    and checkpoints; a retried trial or restarted worker group resumes inside the right stage.
    ``session``: the host (a Train worker when None, as TorchTrainer calls it)."""
    session = session or TrainSession()
    experiment = validate(ExperimentConfig, config["experiment"], deep=False)
    rank, world = session.rank, session.world
    split: pipeline.TrainingSplit = config["split"]
    resumed = session.checkpoint()
    start_epoch = _checkpoint_epoch(resumed) if resumed is not None else 0
    steps = steps_per_epoch(split.num_rows // world, experiment)
    # This rank's batches from the epoch it resumes at, its rows read here (the trainer's node).
    res, train_cfg = experiment.resources, experiment.train
    epochs, rows = range(start_epoch, experiment.total_epochs), steps * train_cfg.batch_size
    if session.forks_views:
        train_batches = pipeline.forked_train_batches(
            split, config["inputs"], experiment.data, train_cfg.seed, epochs, train_cfg.batch_size,
            workers=res.data_actors, rows_per_epoch=rows, selector=config["selector"])
    else:
        dataset = pipeline.train_dataset(
            split, config["inputs"], experiment.data, train_cfg.seed, res.data_cpus, epochs, rank, world,
            actors=res.data_actors, rows_per_epoch=rows, batch_size=train_cfg.batch_size,
            selector=config["selector"],
            name=pipeline.dataset_name(experiment.name, config.get("trial_id"), "train views"))
        train_batches = fetch_ahead(dataset.iter_batches(batch_size=train_cfg.batch_size, drop_last=True,
                                                         batch_format="numpy"))

    import torch

    from fgray import checkpoint as ckpt
    from fgray.data.views.transforms import EvalViews
    from fgray.engine import build_method, evaluate, place_method, use_deterministic_kernels
    from fgray.methods.parts import replicas_agree
    from fgray.stages import StageRunner

    facts, ks = split.facts, experiment.eval.ks
    # Never more threads than reserved cores: an extra OpenMP thread beside a Ray Data task on the
    # same cores made steps 4x slower (measured: 1.5 CPUs, 2 threads: 17-29 s/epoch; 1 thread: 5-7 s).
    torch.set_num_threads(max(1, int(res.cpus_per_worker)))
    torch.manual_seed(train_cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    use_deterministic_kernels(train_cfg.deterministic)  # both ways: Tune may reuse this process

    method = place_method(build_method(experiment, facts), session.device, train_cfg)
    runner = StageRunner(method, experiment, steps, session.device, rank, world, wrap=session.wrap)
    state, last_val = None, {}
    if resumed is not None:
        with resumed.as_directory() as directory:
            state = ckpt.load(directory, method)
            last_val = {k: v for k, v in ckpt.read_meta(directory)["metrics"].items() if k.startswith("val/")}
    # Validation images: read by the rank that validates, decoded once (ValBatches).
    val_batches = ValBatches(pipeline.TableBatches(config["val"].read()), experiment.eval.batch_size,
                             EvalViews(experiment.data.image_size, experiment.data.eval_crop)
                             ) if rank == 0 and config["val"] is not None else None
    started = time.perf_counter()

    def on_epoch(epoch: int, stats, runner: StageRunner) -> None:
        nonlocal last_val, started
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "trial_epochs": runner.plan.epochs,  # this trial's own length (stages can depend on its knobs)
            **{f"train/{k}": v for k, v in stats.losses.items()},
            "train/steps": stats.steps,
            "train/images_per_s": stats.images_per_second * world,
            "train/data_wait": stats.data_wait_fraction,
            "train/lr": runner.optimizer.param_groups[0]["lr"],
            "train/stage": runner.stage_index,
        }
        is_last = epoch + 1 == runner.plan.epochs
        # Validate when due, after the last epoch, and on the first report (Tune and ASHA need the metric).
        due = (epoch + 1) % experiment.eval.every == 0 or is_last or not last_val
        if rank == 0 and val_batches is not None and due:
            last_val = evaluate(method, val_batches, runner.device, ks, amp=experiment.eval.amp)
            if not last_val.get("val/num_queries"):  # every metric NaN: Tune would stop the whole sweep
                raise ConfigError("validation: no query has a relevant image (each validation class has one "
                                  "image); the split needs classes with 2+ images (data.val_fraction)")
        metrics.update(last_val)  # carried forward between evaluations so ASHA always sees the metric
        if world > 1:  # what DDP neither syncs nor broadcasts (MoCo's queue, key encoder) is still one copy
            agree = replicas_agree(runner.method, runner.method.replicated_prefixes)
            metrics["train/replicas_agree"] = float(agree)
        metrics["time/epoch_s"] = time.perf_counter() - started
        metrics["time/epoch_end"] = time.time()  # a sweep's timeline across trials (bench/small_trial.py)
        _report(session, metrics, runner, facts, epoch + 1)
        started = time.perf_counter()

    try:
        runner.run(train_batches, start_epoch, state, on_epoch)
    finally:  # a trial Tune stops (ASHA) exits at a report: its view workers end now, not at the next GC
        train_batches.close()


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


def _report(session: TrainSession | TrialSession, metrics: dict[str, float], runner, facts: DatasetFacts,
            epoch: int) -> None:
    from fgray import checkpoint as ckpt

    if runner.rank != 0:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as directory:
        ckpt.save(directory, runner.method, runner.experiment, facts, runner.stage.name, epoch, metrics,
                  runner.optimizer, runner.scheduler, runner.scaler)
        session.report(metrics, directory)
