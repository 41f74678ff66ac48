"""Steady-state training throughput of one trial: Ray Data + Ray Train vs a plain PyTorch loop.

Both sides train the same MoCo v2 model (``fgray.engine.build_method``) with the same optimiser,
batch size, torch thread count and MoCo v2 augmentation, through ``fgray.engine.train_one_epoch``:

* plain (the baseline): one process; the train split is decoded once into memory and each batch
  is augmented in that same process right before its step, as a plain PyTorch script with
  ``DataLoader(num_workers=0)`` would. ``--dataloader`` adds a ``DataLoader(num_workers=1)``
  variant (augmentation in one forked worker, overlapping the step) for reference.
* ray: one ``TorchTrainer`` running the real ``fgray.trial.worker_loop`` on the datasets
  ``fgray.trial.worker_loop`` builds (``pipeline.train_dataset``, validation rows read in the worker). Its
  per-epoch ``train/images_per_s`` and ``train/data_wait`` are read (inside the worker,
  ``train_one_epoch`` is wrapped only to log them with per-batch wait times); steady state =
  epochs after the first.

The machine is shared, so its load drifts within minutes. The two sides are therefore
interleaved: the Train worker waits before each epoch while the plain loop runs a short segment
(plain, epoch 1, plain, epoch 2, ..., plain), and each steady Ray epoch is compared with the
plain segments just before and after it. The trial's one pipeline over all epochs keeps
prefetching (a bounded buffer) while the worker waits, so an epoch's first batch may be ready:
``--no-interleave`` runs the Ray epochs back to back instead, as a sweep does.

    python bench/trainer_overhead.py                          # the demo's model, 64 px, batch 64: a few minutes
    python bench/trainer_overhead.py --dataloader --json /tmp/overhead.json
    python bench/trainer_overhead.py --set resources.data_actors=2 --prefetch-batches 4   # try a change
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
from fgray.config import ExperimentConfig  # noqa: E402
from fgray.sweep_file import load_sweep  # noqa: E402
from fgray.data import pipeline  # noqa: E402
from fgray.data.views import transforms  # noqa: E402
from fgray.data.inputs import DatasetFacts  # noqa: E402
from fgray.engine import build_method, build_optimizer, build_scheduler, train_one_epoch  # noqa: E402

PAUSE_LIMIT_S = 1800.0  # a worker never waits longer than this for the driver's go-ahead


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default=str(REPO / "sweeps" / "demo.yaml"),
                   help="sweep file whose base experiment (method, data, optimiser) is used")
    p.add_argument("--backbone", default=None, help="timm name (default: the sweep's backbone, its model_kwargs too)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3,
                   help="measured plain steps per segment (one segment before each Ray epoch and one after the last)")
    p.add_argument("--warmup-steps", type=int, default=2, help="plain steps run first, not measured")
    p.add_argument("--epochs", type=int, default=3, help="Ray epochs (full passes); steady state = epochs 2..N")
    p.add_argument("--cpus", type=float, default=float(os.cpu_count() or 2),
                   help="logical CPUs of the local Ray instance (default: this machine's cores)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="resources.cpus_per_worker: the Train worker's CPUs and both sides' torch threads (ceil)")
    p.add_argument("--data-cpus", type=float, default=0.5, help="resources.data_cpus: CPUs per Ray Data augment task")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="extra experiment override, as in fgray.sweep (repeatable), e.g. resources.data_actors=2")
    p.add_argument("--prefetch-batches", type=int, default=None,
                   help="experiment: pass prefetch_batches=N to the worker's iter_torch_batches (Ray's default: 1)")
    p.add_argument("--no-interleave", action="store_true",
                   help="run the Ray epochs back to back (plain segments only before and after the Ray run)")
    p.add_argument("--dataloader", action="store_true",
                   help="also measure a plain DataLoader(num_workers=1) variant (reference, not the baseline)")
    p.add_argument("--address", default="local", help="Ray address (default: start a private local instance)")
    p.add_argument("--json", help="write all figures to this file")
    args = p.parse_args(argv)
    args.interleave = not args.no_interleave
    return args


def build_experiment(args: argparse.Namespace) -> ExperimentConfig:
    backbone = [f"backbone.name={args.backbone}", "backbone.model_kwargs={}"] if args.backbone else []
    sets = [*backbone, f"data.image_size={args.image_size}",
            f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
            f"eval.every={args.epochs}",  # validate only after the last epoch (outside the timed part anyway)
            "resources.workers_per_trial=1", f"resources.cpus_per_worker={args.cpus_per_worker}",
            f"resources.data_cpus={args.data_cpus}", "resources.max_failures=0", *args.set]
    return load_sweep(args.sweep, sets).experiment()


def torch_threads(experiment: ExperimentConfig) -> int:
    return max(1, math.ceil(experiment.resources.cpus_per_worker))  # as fgray.trial.worker_loop


def pooled(parts: list[dict], batch_size: int) -> dict[str, float]:
    """images/s and data-wait share over several train_one_epoch calls, each weighted by its time."""
    if not parts:
        return {"images_per_s": float("nan"), "data_wait": float("nan"), "steps": 0}
    images = [p["steps"] * batch_size for p in parts]
    elapsed = [n / p["images_per_s"] for n, p in zip(images, parts)]  # train_one_epoch's own clock
    return {"images_per_s": sum(images) / sum(elapsed),
            "data_wait": sum(p["data_wait"] * t for p, t in zip(parts, elapsed)) / sum(elapsed),
            "steps": sum(p["steps"] for p in parts)}


def timed(batches, starts: list[float], waits: list[float]) -> Iterator[dict]:
    """Pass ``batches`` through, noting when each batch was asked for and how long it took to come."""
    iterator = iter(batches)  # a persistent iterator stays open when this generator is closed
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        starts.append(t0)
        waits.append(time.perf_counter() - t0)
        yield batch


def step_times(starts: list[float], end: float) -> list[float]:
    """Wall time of each step, from asking for its batch to asking for the next one (or the end)."""
    return [b - a for a, b in zip(starts, starts[1:] + [end])]


# ----------------------------------------------------------------------------- plain PyTorch


class AugmentedViews(torch.utils.data.Dataset):
    """Decoded uint8 images in memory -> two MoCo v2 views per item (for the DataLoader variant)."""

    def __init__(self, images: list[torch.Tensor], image_size: int):
        self.images, self.augment = images, transforms.moco_v2_augmentation(image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.images[i]
        return {"view1": self.augment(image), "view2": self.augment(image)}


def inline_batches(images: list[torch.Tensor], batch_size: int, image_size: int) -> Iterator[dict]:
    """Endless shuffled batches, augmented in this process when asked for (num_workers=0)."""
    augment = transforms.moco_v2_augmentation(image_size)
    while True:
        order = torch.randperm(len(images)).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = [images[i] for i in order[start:start + batch_size]]
            yield {"view1": torch.stack([augment(x) for x in chosen]),
                   "view2": torch.stack([augment(x) for x in chosen])}


def loader_batches(images: list[torch.Tensor], batch_size: int, image_size: int, workers: int) -> Iterator[dict]:
    loader = torch.utils.data.DataLoader(AugmentedViews(images, image_size), batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0)
    while True:
        yield from loader


class PlainRun:
    """One model trained by train_one_epoch over in-process batches, measured in segments."""

    def __init__(self, experiment: ExperimentConfig, batches: Iterator[dict], steps_per_epoch: int):
        torch.manual_seed(experiment.train.seed)
        self.method = build_method(experiment, DatasetFacts(num_classes=1, image_size=experiment.data.image_size))
        self.optimizer = build_optimizer(self.method.param_groups(), experiment.train)
        self.scheduler = build_scheduler(self.optimizer, experiment.train, steps_per_epoch)
        self.batches, self.device, self.amp = batches, torch.device("cpu"), experiment.train.amp
        self.segments: list[dict[str, Any]] = []

    def run(self, steps: int, label: str | None = None) -> dict[str, Any]:
        starts: list[float] = []
        waits: list[float] = []
        cpu0, thread0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
        stats = train_one_epoch(self.method, timed(self.batches, starts, waits), self.optimizer, self.scheduler,
                                self.device, epoch=0, epochs=1, steps_per_epoch=steps, amp=self.amp)
        end = time.perf_counter()
        seg = {"label": label, "steps": stats.steps, "images_per_s": stats.images_per_second,
               "data_wait": stats.data_wait_fraction, "step_s": step_times(starts, end), "waits": waits,
               "cpu_util": (time.process_time() - cpu0) / (end - t0), "load1": os.getloadavg()[0],
               "cpu_s_per_step": (time.process_time() - cpu0) / max(stats.steps, 1),
               "train_thread_cpu_s_per_step": (time.thread_time() - thread0) / max(stats.steps, 1)}
        if label is not None:
            self.segments.append(seg)
        return seg


# ----------------------------------------------------------------------------- Ray Train


def instrumented_worker_loop(config: dict[str, Any]) -> None:
    """fgray.trial.worker_loop with train_one_epoch wrapped: per-batch waits logged to a file and,
    when interleaving, a wait for the driver's go-ahead before each epoch (outside the timing)."""
    import fgray.stages as stages
    import fgray.trial as trial

    bench = config["bench"]
    # worker_loop's StageRunner calls fgray.stages.train_one_epoch: patch it there
    original_epoch, original_dataset = stages.train_one_epoch, pipeline.train_dataset
    prefetch = bench.get("prefetch_batches")

    class Prefetching:  # the real training dataset, with the benchmark's experimental iterator options
        def __init__(self, dataset):
            self._dataset = dataset

        def iter_batches(self, **kwargs):
            if prefetch is not None:
                kwargs.setdefault("prefetch_batches", prefetch)
            return self._dataset.iter_batches(**kwargs)

    def train_dataset(*args, **kwargs):
        return Prefetching(original_dataset(*args, **kwargs))

    def timed_epoch(model, batches, *args, **kwargs):
        epoch = kwargs["epoch"] + 1
        if bench.get("sync"):
            Path(bench["sync"], f"ready-{epoch}").touch()
            deadline = time.monotonic() + PAUSE_LIMIT_S
            while not Path(bench["sync"], f"go-{epoch}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        starts: list[float] = []
        waits: list[float] = []
        cpu0, thread0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
        stats = original_epoch(model, timed(batches, starts, waits), *args, **kwargs)
        end = time.perf_counter()
        record = {"epoch": epoch, "steps": stats.steps, "images_per_s": stats.images_per_second,
                  "data_wait": stats.data_wait_fraction, "step_s": step_times(starts, end), "waits": waits,
                  "cpu_util": (time.process_time() - cpu0) / (end - t0), "load1": os.getloadavg()[0],
                  "cpu_s_per_step": (time.process_time() - cpu0) / max(stats.steps, 1),
                  "train_thread_cpu_s_per_step": (time.thread_time() - thread0) / max(stats.steps, 1),
                  "threads": torch.get_num_threads()}
        with open(bench["log"], "a") as f:
            f.write(json.dumps(record) + "\n")
        return stats

    stages.train_one_epoch, pipeline.train_dataset = timed_epoch, train_dataset
    try:
        trial.worker_loop(config)
    finally:
        stages.train_one_epoch, pipeline.train_dataset = original_epoch, original_dataset


def start_trainer(args: argparse.Namespace, experiment: ExperimentConfig, prepared, splits, workdir: str,
                  sync: str | None):
    """Start one TorchTrainer as fgray.trial.trial_driver builds it, fitting in a background thread."""
    import ray
    import ray.data
    import ray.train
    import ray.train.torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    res = experiment.resources
    ray.init(address=args.address, num_cpus=args.cpus if args.address == "local" else None,
             log_to_driver=False, logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # As fgray.trial.trial_driver configures it: the worker builds one dataset of every epoch, read
    # through one iterator.
    inputs = experiment.method.inputs
    split = pipeline.training_split(prepared, splits.train, experiment.data, inputs, experiment.method.name, {})
    trainer = ray.train.torch.TorchTrainer(
        instrumented_worker_loop,
        train_loop_config={"experiment": experiment.model_dump(mode="json"), "split": split, "inputs": inputs,
                           "val": pipeline.Rows(prepared, splits.val, ("image", "label", "image_id"))
                           if experiment.has_validation else None,
                           "selector": None,
                           "bench": {"log": os.path.join(workdir, "epochs.jsonl"), "sync": sync,
                                     "prefetch_batches": args.prefetch_batches}},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": res.cpus_per_worker}),
        run_config=RunConfig(name="trainer-overhead", storage_path=os.path.join(workdir, "storage"),
                             failure_config=FailureConfig(max_failures=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the main thread
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ray-fit", daemon=True)
    thread.start()
    return thread, outcome


def ray_summary(epochs: list[dict], batch_size: int) -> dict[str, float]:
    steady = epochs[1:] or epochs  # epochs after the first (all of them if there is only one)
    elapsed = sum(e["steps"] * batch_size / e["images_per_s"] for e in steady)
    first = [e["waits"][0] for e in steady if e["waits"]]
    waits = sum(sum(e["waits"]) for e in steady)
    return {**pooled(steady, batch_size), "first_batch_wait_s": sum(first) / max(len(first), 1),
            "data_wait_after_first_batch": (waits - sum(first)) / elapsed, "epochs_counted": len(steady)}


def epoch_line(e: dict) -> str:
    first = e["waits"][0] if e["waits"] else float("nan")
    return (f"  ray epoch {e['epoch']:<21} {e['images_per_s']:6.1f} img/s  data wait {e['data_wait']:6.1%}  "
            f"load {e['load1']:.1f}  CPU {e['cpu_s_per_step']:.2f} s/step (train thread "
            f"{e['train_thread_cpu_s_per_step']:.2f}), first batch {first:.2f} s")


# ----------------------------------------------------------------------------- main


def run_ray(args, experiment, prepared, splits, plain_segment) -> tuple[list[dict], dict, float]:
    """Fit the trainer; when interleaving, run a plain segment while the worker waits before each epoch."""
    import ray

    with tempfile.TemporaryDirectory(prefix="fgray-overhead-") as workdir:
        log = os.path.join(workdir, "epochs.jsonl")
        sync = os.path.join(workdir, "sync") if args.interleave else None
        if sync:
            os.makedirs(sync)
        started = time.perf_counter()
        thread, outcome = start_trainer(args, experiment, prepared, splits, workdir, sync)

        def logged() -> list[dict]:
            return [json.loads(x) for x in Path(log).read_text().splitlines()] if os.path.exists(log) else []

        try:
            for epoch in range(1, args.epochs + 1 if sync else 1):
                while thread.is_alive() and not Path(sync, f"ready-{epoch}").exists():
                    time.sleep(0.05)
                if not thread.is_alive():
                    break
                plain_segment(f"before epoch {epoch}")
                Path(sync, f"go-{epoch}").touch()
                while thread.is_alive() and len(logged()) < epoch:
                    time.sleep(0.05)
                for e in logged()[epoch - 1:epoch]:
                    print(epoch_line(e), flush=True)
            thread.join()
        finally:
            ray.shutdown()
        if "error" in outcome:
            raise outcome["error"]
        epochs = logged()
    if not sync:
        for e in epochs:
            print(epoch_line(e), flush=True)
    return epochs, dict(outcome["result"].metrics or {}), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    experiment = build_experiment(args)
    threads = torch_threads(experiment)
    torch.set_num_threads(threads)
    prepared = pipeline.resolve_dataset(experiment.data)
    splits = pipeline.assign(prepared, experiment.data)
    encoded = pipeline.read_rows(prepared, splits.train, ["image"])["image"].to_pylist()
    images = [transforms.decode(b) for b in encoded]  # decoded once, kept in memory
    bs, size, res = experiment.train.batch_size, experiment.data.image_size, experiment.resources
    steps_per_epoch = max(1, len(images) // bs)
    print(f"settings: backbone {experiment.backbone.name}, {size} px, batch {bs}, method {experiment.method.name}, "
          f"torch threads {threads}, train split {len(images)} images = {steps_per_epoch} steps/epoch, "
          f"Ray epochs {args.epochs}, plain segments of {args.steps} steps "
          f"({'interleaved' if args.interleave else 'before/after Ray'})\n"
          f"          Ray: {args.cpus:g} CPUs, worker {res.cpus_per_worker:g} CPU, data tasks {res.data_cpus:g} CPU, "
          f"view actors {res.data_actors}, prefetch_batches "
          f"{args.prefetch_batches if args.prefetch_batches is not None else 'default (1)'}"
          f"; "
          f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)

    plains = {"inline": PlainRun(experiment, inline_batches(images, bs, size), steps_per_epoch)}
    if args.dataloader:
        plains["dataloader1"] = PlainRun(experiment, loader_batches(images, bs, size, 1), steps_per_epoch)
    for plain in plains.values():
        plain.run(args.warmup_steps)

    def plain_segment(label: str) -> None:
        for name, plain in plains.items():
            seg = plain.run(args.steps, label)
            print(f"  plain {name:<11} {label:<16} {seg['images_per_s']:6.1f} img/s  "
                  f"data wait {seg['data_wait']:6.1%}  load {seg['load1']:.1f}  "
                  f"CPU {seg['cpu_s_per_step']:.2f} s/step (train thread {seg['train_thread_cpu_s_per_step']:.2f})",
                  flush=True)

    if not args.interleave:
        plain_segment("before Ray")
    epochs, reported, ray_wall = run_ray(args, experiment, prepared, splits, plain_segment)
    plain_segment("after Ray")

    # Plain segments next to the steady Ray epochs: interleaved, segment i ran before epoch i + 1 (0-based)
    # and the last one after the last epoch; otherwise every segment counts for every epoch.
    steady = epochs[1:] or epochs
    segments = {name: p.segments for name, p in plains.items()}
    if args.interleave:
        pairs = [segments["inline"][e["epoch"] - 1:e["epoch"] + 1] for e in steady]
        neighbours = {name: segs[1:] for name, segs in segments.items()}
    else:
        pairs = [segments["inline"] for _ in steady]
        neighbours = segments
    ray_s = ray_summary(epochs, bs)
    plain_s = {name: pooled(segs, bs) for name, segs in neighbours.items()}
    base = plain_s["inline"]["images_per_s"]
    ratio = ray_s["images_per_s"] / base
    per_epoch = [e["images_per_s"] / pooled(pair, bs)["images_per_s"] for e, pair in zip(steady, pairs)]
    plain_median = statistics.median(t for seg in neighbours["inline"] for t in seg["step_s"])
    ray_median = statistics.median(t for e in steady for t in e["step_s"])

    rows = [("plain, in-process augmentation (baseline)", plain_s["inline"])]
    if "dataloader1" in plain_s:
        rows.append(("plain, DataLoader(num_workers=1)", plain_s["dataloader1"]))
    rows.append((f"Ray Data + Ray Train, epochs {steady[0]['epoch']}-{steady[-1]['epoch']}", ray_s))
    print()
    print(f"{'path':<44} {'img/s':>8} {'data wait':>10} {'steps':>6} {'vs baseline':>12}")
    for label, s in rows:
        print(f"{label:<44} {s['images_per_s']:8.1f} {s['data_wait']:10.1%} {s['steps']:6d} "
              f"{s['images_per_s'] / base:12.3f}")
    print()
    print(f"ratio Ray/plain images/s: {ratio:.3f} (goal >= 0.9); per steady epoch vs the plain segments next to it: "
          + ", ".join(f"{r:.3f}" for r in per_epoch))
    print(f"Ray data-wait share: {ray_s['data_wait']:.1%} (goal <= 5%); first batch of an epoch "
          f"{ray_s['first_batch_wait_s']:.2f} s on average, data wait after it "
          f"{ray_s['data_wait_after_first_batch']:.1%}")
    print(f"median step time (robust to load bursts; leaves out the per-epoch first-batch wait): "
          f"plain {plain_median:.2f} s, Ray {ray_median:.2f} s -> ratio {plain_median / ray_median:.3f}")
    print(f"worker's last report: epoch {reported.get('epoch')}, "
          f"train/images_per_s {reported.get('train/images_per_s', float('nan')):.1f}, "
          f"train/data_wait {reported.get('train/data_wait', float('nan')):.1%}; "
          f"Ray part {ray_wall:.0f} s, total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "ratio": ratio, "per_epoch_ratio": per_epoch,
            "median_step_ratio": plain_median / ray_median, "ray": ray_s, "plain": plain_s,
            "ray_epochs": epochs, "plain_segments": segments,
            "reported_last": {k: reported.get(k) for k in ("epoch", "train/images_per_s", "train/data_wait")},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
