"""A method's training-step cost across the rows of a sweep, on the CPU at the sweep's size:
per row (``search.points``), samples/s, step time and its ratio to the first row with the same
base, and the trainable share of the parameters. The step is fgray's own (StageRunner +
train_one_epoch of the method's main stage on one declared batch, ``gpu_check.measure_step``).

    python bench/method_cost.py sweeps/oldfs_demo.yaml   # OLDFS vs MoCo v2 / SimSiam alone
    python bench/method_cost.py sweeps/dva_demo.yaml     # DVA (ICA) vs full fine-tuning

On a GPU at the paper's size: bench/gpu_check.py with ``--extra`` rows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import case_facts, measure_step  # noqa: E402

from fgray.data.declared import declared_batch  # noqa: E402
from fgray.engine import build_method  # noqa: E402
from fgray.sweep_file import load_sweep  # noqa: E402


def trainable_share(experiment) -> tuple[int, float]:
    """(parameters the optimiser trains, their share of all parameters) of the main stage."""
    method = build_method(experiment, case_facts(experiment))
    trained = {id(p) for group in method.param_groups() for p in group["params"]}
    every = list(method.parameters())
    count = sum(p.numel() for p in every if id(p) in trained)
    return count, count / sum(p.numel() for p in every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a sweep file whose search.points are the rows")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sweep = load_sweep(args.sweep)
    variant = {"variant": "eager", "channels_last": False, "compile": False}
    first: dict[str, float] = {}
    print("| row | samples/s | step ms | x first | trained params | share |\n| --- | --- | --- | --- | --- | --- |")
    for point in sweep.search.points or [{}]:
        experiment = sweep.experiment(point)
        batch = declared_batch(experiment.method.inputs, case_facts(experiment), n=experiment.train.batch_size)
        row = measure_step(experiment, variant, batch, torch.device("cpu"), args.steps, args.warmup, flops=0.0)
        base = str(getattr(experiment.method, "base", ""))
        first.setdefault(base, row["step_ms"])
        count, share = trainable_share(experiment)
        label = ", ".join(f"{k}={v}" for k, v in point.items()) or "base"
        print(f"| {label} | {row['samples_per_s']:.0f} | {row['step_ms']:.0f} | {row['step_ms'] / first[base]:.2f} "
              f"| {count:,} | {100 * share:.2f} % |", flush=True)


if __name__ == "__main__":
    main()
