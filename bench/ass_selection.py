"""What ASS's Adaptive Sample Selector costs, as ratios measured in one run (issue: selection <= 2 %
of an epoch, the trainer's data wait <= 5 %).

1. Algorithm 1 alone (``fgray.data.selection.select_negatives``) per step at the paper's sizes
   (N anchors, K = 10, 128-d) and the demo's.
2. The view actor (``view_actor.ViewActor``, run here without Ray) on the demo's data: one composed step
   (selection on the cached embeddings, then decode + crop of the 2N chosen images) against one
   plain step of 2N images; the selection's share of the actor's work.
3. The trainer's step at the demo's size (``gpu_check.measure_step``, fgray's own step): the
   selection's share of an epoch, whose critical path is the training step when data keeps up.
4. With ``--results``: the trainer's data wait (``train/data_wait``) of a finished sweep's trials
   (e.g. sweeps/ass_demo.yaml), composed vs uniform rows.

    python bench/ass_selection.py [--results ~/fgray_results/ass_demo/results.parquet]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import case_facts, measure_step  # noqa: E402

from fgray.data import pipeline  # noqa: E402
from fgray.data.declared import declared_batch  # noqa: E402
from fgray.data.selection import candidate_rows, select_negatives, selection_rng  # noqa: E402
from fgray.data.view_actor import ViewActor  # noqa: E402
from fgray.sweep_file import load_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def algorithm_cost(n: int, k: int, dim: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    anchors, candidates = unit(n), unit(k * n)
    return timed(lambda: select_negatives(anchors, candidates, 8.0, n, np.random.default_rng(1)), repeats)


def actor_costs(sweep_path: str, repeats: int) -> dict[str, float]:
    """Seconds per step of the view actor: composed (selection + decode) and plain, and selection alone."""
    experiment = load_sweep(sweep_path).experiment()
    data, inputs = experiment.data, experiment.method.inputs
    selection = inputs.selection.placed(experiment.method.stages(experiment.train.epochs))
    inputs = replace(inputs, selection=selection)
    prepared = pipeline.resolve_dataset(data)
    ids = pipeline.assign(prepared, data).train
    table = pipeline.read_rows(prepared, ids, sorted({*inputs.shard_columns, "label"}))
    label_map = {int(v): i for i, v in enumerate(sorted(set(table.column("label").to_pylist())))}
    rng = np.random.default_rng(0)  # a stand-in for the selector's cached 128-d embeddings
    selector = rng.standard_normal((table.num_rows, 128)).astype(np.float32)
    selector /= np.linalg.norm(selector, axis=1, keepdims=True)
    actor = ViewActor([table], inputs, data.image_size, 0, label_map, {})  # in this process
    actor.selector = selector
    batch = experiment.train.batch_size
    order = pipeline.epoch_order(table.num_rows, 0, 0)
    index = pipeline.composed_index(order, 0, batch, selection, table.num_rows, 0, 0).to_pydict()
    step = (selection.pool_factor + 1) * (batch // 2)
    composed = {key: np.asarray(values[:step]) for key, values in index.items()}
    plain = {"row": order[:batch], "epoch": np.zeros(batch, np.int64)}
    anchors = order[: batch // 2]
    candidates = candidate_rows(table.num_rows, selection.pool_factor * (batch // 2), 0, 0, 0, 0)
    def select():
        return select_negatives(selector[anchors], selector[candidates], selection.tau, batch // 2,
                                selection_rng(0, 0, 0, 0))

    return {"composed": timed(lambda: actor(composed), repeats), "plain": timed(lambda: actor(plain), repeats),
            "select": timed(lambda: actor.compose(composed), repeats), "algorithm": timed(select, repeats),
            "experiment": experiment}


def data_wait(results: str) -> None:
    import pandas as pd

    frame = pd.read_parquet(results)
    column = next((c for c in frame.columns if c.endswith("train/data_wait")), None)
    if column is None:
        print(f"no train/data_wait column in {results}")
        return
    key = next((c for c in frame.columns if c.endswith("selector.enabled")), None)
    groups = frame.groupby(key)[column] if key else [("all", frame[column])]
    for value, waits in groups:
        print(f"| data wait, selector.enabled={value} | {100 * waits.mean():.2f} % "
              f"(max {100 * waits.max():.2f} %, {len(waits)} trials, last epoch) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=str(ROOT / "sweeps/ass_demo.yaml"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--results", help="results.parquet of a finished ASS sweep (data wait per row)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| measurement | value |\n| --- | --- |")
    for n in (16, 64, 512):
        cost = algorithm_cost(n, 10, 128, args.repeats)
        print(f"| Algorithm 1, N={n}, K=10, d=128 | {1e3 * cost:.3f} ms/step |", flush=True)
    costs = actor_costs(args.sweep, args.repeats)
    experiment = costs["experiment"]
    batch = declared_batch(experiment.method.inputs, case_facts(experiment), n=experiment.train.batch_size)
    variant = {"variant": "eager", "channels_last": False, "compile": False}
    step = measure_step(experiment, variant, batch, torch.device("cpu"), args.steps, 2, flops=0.0)["step_ms"] / 1e3
    print(f"| view actor, composed step (select + decode 2N) | {1e3 * costs['composed']:.1f} ms |")
    print(f"| view actor, plain step (decode 2N) | {1e3 * costs['plain']:.1f} ms |")
    print(f"| selection in the actor (index -> 2N rows) | {1e3 * costs['select']:.2f} ms "
          f"({1e3 * costs['algorithm']:.2f} ms Algorithm 1) |")
    print(f"| training step (demo size, 1 thread) | {1e3 * step:.0f} ms |")
    print(f"| selection / actor's composed step | {100 * costs['select'] / costs['composed']:.2f} % |")
    print(f"| selection / epoch (training step the critical path) | {100 * costs['select'] / step:.2f} % |")
    if args.results:
        data_wait(args.results)


if __name__ == "__main__":
    main()
