"""OLDFS's training-step cost over its base method, on the CPU at the demo's size (the rows of
sweeps/oldfs_demo.yaml: narrow resnet10t, 64 px, batch 32): per row, samples/s and step time of
the joint step (fgray's StageRunner + train_one_epoch on one declared batch, as bench/gpu_check.py
measures it), and the ratio to the same base without synthesized pairs. On a GPU at the paper's
size: `bash bench/gpu_check.sh --cases oldfs --extra oldfs-base=oldfs,method.alpha=0,method.nu=0,method.noise=none`.

    python bench/oldfs_cost.py [--steps 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import ROOT, case_facts, measure_step  # noqa: E402

from fgray.data.declared import declared_batch  # noqa: E402
from fgray.sweep_file import load_sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sweep = load_sweep(ROOT / "sweeps" / "oldfs_demo.yaml")
    device, base_ms = torch.device("cpu"), {}
    variant = {"variant": "eager", "channels_last": False, "compile": False}
    print("| base | OLDFS | samples/s | step ms | x base |\n| --- | --- | --- | --- | --- |")
    for point in sweep.search.points:
        experiment = sweep.experiment(point)
        batch = declared_batch(experiment.method.inputs, case_facts(experiment), n=experiment.train.batch_size)
        row = measure_step(experiment, variant, batch, device, args.steps, args.warmup, flops=0.0)
        base = experiment.method.base
        synth = experiment.method.synthesizes
        base_ms.setdefault(base, row["step_ms"])
        print(f"| {base} | {'yes' if synth else 'no'} | {row['samples_per_s']:.0f} | {row['step_ms']:.0f} "
              f"| {row['step_ms'] / base_ms[base]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
