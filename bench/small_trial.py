"""A one-trial fgray sweep against a plain PyTorch script doing the same work, as ratios in one run.

Both train the demo's best configuration (``sweeps/demo.yaml`` without its search: one trial)
on the same synthetic images, split, model (``fgray.engine.build_method``), views (the
``moco_pair`` recipe), optimiser and schedule, then score the test classes:

* fgray: ``python -m fgray.sweep sweeps/demo.yaml --set search.space={} ...`` as a user runs it,
  local Ray start, Tune (the one-worker trial trains in its Tune trial process, its views drawn by
  a process it forks; ``--set resources.train_in_trial=false`` times a TorchTrainer with a Ray Data
  pipeline instead), test evaluation and report included;
* plain: this file with ``--plain``: one process, the train split decoded once, views drawn in
  the process, ``train_one_epoch``, then ``retrieval_metrics`` on the test classes.

Printed: each side's whole-command wall time and steady epoch time (epochs 2..N: fgray's from
its per-epoch ``time/epoch_s``, the plain one's measured around ``train_one_epoch``), and the
two ratios the small-trial goals are about (fgray / plain wall; plain / fgray steady epoch).
The sides run in turn (``--repeats`` pairs) so a load drift hits both.

    python bench/small_trial.py                   # ~3 min on 2 cores
    python bench/small_trial.py --repeats 2 --set train.epochs=3

``--demo`` times the whole demo instead (``sweeps/demo.yaml`` as it is: 3 trials, 2 at a time):
its wall time and the share of it during which some trial is training (the union over trials
of each epoch's training time, ``time/epoch_s`` less the data wait, ending at ``time/epoch_end``);
``--fresh`` gives it an empty data cache, so it first generates the synthetic set as a fresh
machine does.

    python bench/small_trial.py --demo --fresh --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=str(REPO / "sweeps" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="experiment override for both sides (repeatable)")
    parser.add_argument("--repeats", type=int, default=1, help="fgray/plain pairs, run in turn")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # the plain side itself
    parser.add_argument("--demo", action="store_true", help="time the whole demo sweep (no plain side)")
    parser.add_argument("--fresh", action="store_true", help="--demo: an empty data cache (generate the set)")
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args(argv)


def experiment_of(args: argparse.Namespace):
    from fgray.sweep_file import load_sweep

    return load_sweep(args.sweep, ["search.space={}", "search.num_samples=1", "search.scheduler.name=none",
                                   *args.set]).experiment()


# ----------------------------------------------------------------------------- the plain side


def plain(args: argparse.Namespace) -> dict:
    """One process: the demo's trial in plain PyTorch; prints a JSON line of its figures."""
    import numpy as np
    import torch

    from fgray.data import pipeline
    from fgray.data.views import transforms
    from fgray.data.views.transforms import EvalViews
    from fgray.data.views import build_recipe
    from fgray.engine import (build_method, build_optimizer, build_scheduler, extract_embeddings,
                              train_one_epoch)
    from fgray.eval import retrieval_metrics
    from fgray.stages import StagePlan, stage_param_groups

    experiment = experiment_of(args)
    train, data = experiment.train, experiment.data
    torch.set_num_threads(max(1, int(experiment.resources.cpus_per_worker + experiment.resources.data_cpus)))
    prepared = pipeline.resolve_dataset(data)
    splits = pipeline.assign(prepared, data)
    facts, _ = pipeline.dataset_facts(prepared, splits.train, data)
    decode = transforms.decode
    images = [decode(b) for b in pipeline.read_rows(prepared, splits.train, ["image"])["image"].to_pylist()]
    recipes = [build_recipe(v, data.image_size) for v in experiment.method.inputs.views]

    def batches():
        generator = np.random.default_rng(train.seed)
        while True:
            order = generator.permutation(len(images))
            for start in range(0, len(order) - train.batch_size + 1, train.batch_size):
                out: dict[str, list] = {}
                for i in order[start:start + train.batch_size]:
                    for recipe in recipes:
                        for key, value in recipe(images[i], None).items():
                            out.setdefault(key, []).append(value)
                yield {k: torch.stack(v) for k, v in out.items()}

    torch.manual_seed(train.seed)
    method = build_method(experiment, facts)
    if train.channels_last:  # the model's layout as fgray places it (engine.place_method)
        method = method.to(memory_format=torch.channels_last)
    stage = StagePlan.of(experiment).stages[0]
    steps = min(len(images) // train.batch_size, train.steps_per_epoch or 10**9)
    optimizer = build_optimizer(stage_param_groups(method, stage), train, stage=stage)
    scheduler = build_scheduler(optimizer, train, steps)
    stream, epochs = batches(), []
    for epoch in range(train.epochs):
        started = time.perf_counter()
        train_one_epoch(method, stream, optimizer, scheduler, torch.device("cpu"), epoch=epoch,
                        epochs=train.epochs, steps_per_epoch=steps, amp="off")
        epochs.append(time.perf_counter() - started)
    views = EvalViews(data.image_size, data.eval_crop)
    rows = pipeline.read_rows(prepared, splits.test, ["image", "label", "image_id"]).to_pydict()
    test_batches = [views({k: np.asarray(v[i:i + 256], dtype=object if k == "image" else None)
                           for k, v in rows.items()}) for i in range(0, len(rows["image_id"]), 256)]
    embeddings, labels, _ = extract_embeddings(method, test_batches, torch.device("cpu"))
    recall = retrieval_metrics(embeddings, labels, ks=experiment.eval.ks)["recall@1"]
    return {"epoch_s": epochs, "test_recall@1": recall}


# ----------------------------------------------------------------------------- the fgray side


def fgray_side(args: argparse.Namespace, storage: str) -> dict:
    command = [sys.executable, "-m", "fgray.sweep", args.sweep, "--storage", storage, "--set", "search.space={}",
               "--set", "search.scheduler.name=none",
               "--set", "search.num_samples=1", *[x for s in args.set for x in ("--set", s)]]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    import pandas as pd

    trial = json.loads(next(Path(storage).glob("*/summary.json")).read_text())["trials"][0]
    epochs = pd.read_csv(next(Path(storage).glob("*/*/progress.csv")))["time/epoch_s"].tolist()
    return {"wall_s": wall, "epoch_s": epochs, "test_recall@1": (trial.get("test") or {}).get("recall@1")}


def demo_side(args: argparse.Namespace, storage: str) -> dict:
    """The demo sweep as a user runs it: wall time and the share of it some trial spends training."""
    import pandas as pd

    env = {**os.environ, **({"FGRAY_CACHE": str(Path(storage) / "data-cache")} if args.fresh else {})}
    command = [sys.executable, "-m", "fgray.sweep", args.sweep, "--storage", storage,
               *[x for s in args.set for x in ("--set", s)]]
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ended = time.time()
    spans = []  # (start, end) of each epoch's training, without its wait for data
    trials = list(Path(storage).glob("*/*/progress.csv"))
    epochs = 0  # trial-epochs trained: ASHA's stops (which depend on the trials' order) change it
    for path in trials:
        frame = pd.read_csv(path)
        epochs += len(frame)
        training = frame["time/epoch_s"] * (1 - frame["train/data_wait"])
        spans += list(zip(frame["time/epoch_end"] - frame["time/epoch_s"],
                          frame["time/epoch_end"] - frame["time/epoch_s"] + training))
    return {"wall_s": ended - started, "training_share": union(spans) / (ended - started),
            "first_training_s": min(start for start, _ in spans) - started, "trials": len(trials),
            "trial_epochs": epochs}


def union(spans: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def plain_side(args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--plain", "--sweep", args.sweep, *[x for s in args.set for x in ("--set", s)]]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return {"wall_s": time.perf_counter() - started, **json.loads(out.strip().splitlines()[-1])}


def steady(epochs: list[float]) -> float:
    return statistics.median(epochs[1:] or epochs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain:
        print(json.dumps(plain(args)))
        return 0
    if args.demo:
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as storage:
                runs.append(demo_side(args, storage))
            print(f"demo: wall {runs[-1]['wall_s']:.1f} s, training {100 * runs[-1]['training_share']:.0f} % of it, "
                  f"first step after {runs[-1]['first_training_s']:.1f} s, {runs[-1]['trials']} trials, "
                  f"{runs[-1]['trial_epochs']} trial-epochs", flush=True)
        print(f"demo wall {statistics.median(r['wall_s'] for r in runs):.1f} s (goal <= 60), training share "
              f"{100 * statistics.median(r['training_share'] for r in runs):.0f} % (goal >= 75); "
              f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=2))
        return 0
    pairs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as storage:
            ours = fgray_side(args, storage)
        theirs = plain_side(args)
        pairs.append({"fgray": ours, "plain": theirs,
                      "wall_ratio": ours["wall_s"] / theirs["wall_s"],
                      "epoch_ratio": steady(theirs["epoch_s"]) / steady(ours["epoch_s"])})
        print(f"fgray: wall {ours['wall_s']:.1f} s, steady epoch {steady(ours['epoch_s']):.2f} s, test R@1 "
              f"{100 * (ours['test_recall@1'] or float('nan')):.2f} % | plain: wall {theirs['wall_s']:.1f} s, "
              f"steady epoch {steady(theirs['epoch_s']):.2f} s, test R@1 {100 * theirs['test_recall@1']:.2f} %",
              flush=True)
    wall = statistics.median(p["wall_ratio"] for p in pairs)
    epoch = statistics.median(p["epoch_ratio"] for p in pairs)
    print(f"wall fgray / plain: {wall:.2f} (goal <= 1.5); steady epoch plain / fgray: {epoch:.2f} (goal >= 0.95); "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(pairs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
