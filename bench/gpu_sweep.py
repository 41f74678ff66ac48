"""GPU sweep check: does a one-GPU trial at the papers' size run at its GPU's step rate?

For MoCo v2 and PP-SSL (ResNet-50, 224 px, the papers' batches, random weights) it runs, one after the
other, a one-trial Ray sweep (``python -m fgray.sweep``, a local Ray) on the synthetic set rendered at
224 px and stored as JPEG (as CUB stores its images), with the views finished by the view workers
(``data.views_on: cpu``), on the GPU (``gpu``), and decoded there too (``gpu+decode``: ``data.decode_on:
trainer``, nvJPEG; the view workers only draw), and reports per run: the trial's images/s and data wait (``train/images_per_s``, ``train/data_wait`` of
its last epoch), the step rate ``bench/gpu_check.py`` measures for the method on the same GPU (no data
path; and with the views finished on the GPU), the feed ratio (trial images/s / step images/s) and the
GPU's utilisation over the trial's last epoch (nvidia-smi, every 0.5 s). JSON and markdown go to
``--out`` after every measurement.

    bash bench/gpu_sweep.sh download     # here, once: the wheels the GPU image lacks -> .whl/
    bash bench/gpu_sweep.sh              # on the GPU machine: install them, write $OUT/gpu_sweep.{json,md}
    python bench/gpu_sweep.py --tiny --device cpu --out /tmp/gs   # CPU plumbing (a slow test: starts Ray)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

CASES = ("mocov2", "ppssl")  # gpu_check's cases: MoCo v2 (batch 256) and PP-SSL (batch 128), ResNet-50 at 224


def sweep_file(case: str, arm: str, args) -> dict[str, Any]:
    """A one-trial sweep of gpu_check's ``case`` (its method, backbone and batch; tiny sizes with
    ``--tiny``) on the synthetic set, with every image trained and no evaluation beyond the training.
    ``arm``: ``data.views_on``, with ``+decode`` for ``data.decode_on: trainer``."""
    from gpu_check import case_experiment

    views_on, _, decode = arm.partition("+")

    experiment = case_experiment(case, args.tiny)
    gpu = args.device != "cpu"
    cores = os.cpu_count() or 2
    return {
        "name": f"gpu_sweep_{case}_{views_on}{'_decode' if decode else ''}",
        "method": experiment.method.model_dump(mode="json"),
        "backbone": experiment.backbone.model_dump(mode="json"),
        "data": {"name": "synthetic", "image_size": experiment.data.image_size, "val_fraction": 0,
                 "views_on": views_on, "decode_on": "trainer" if decode else "worker",
                 "synthetic": {"num_classes": args.classes, "images_per_class": args.per_class,
                               "image_format": "jpeg"}},
        "train": {**experiment.train.model_dump(mode="json", include={"batch_size", "optimizer", "lr"}),
                  "epochs": args.epochs, "amp": "auto", "warmup_epochs": 0,
                  **({"steps_per_epoch": args.steps_per_epoch} if args.steps_per_epoch else {})},
        "eval": {"test_top": 0, "baseline": False},
        # One trial: the trainer 2 cores, its view workers every other core but two (Ray, the driver).
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 2 if gpu else 0.5, "gpus_per_worker": int(gpu),
                      "data_actors": max(1, cores - 4) if gpu else 1, "data_cpus": 1 if gpu else 0.25,
                      "max_concurrent_trials": 1, "max_failures": 0},
        "search": {"scheduler": {"name": "none"}},
    }


class GpuSampler:
    """nvidia-smi's utilisation (%) every 0.5 s, with wall times; empty without nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, memory MiB)
        try:
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                             "--format=csv,noheader,nounits", "-lms", "500"],
                                            stdout=subprocess.PIPE, text=True)
        except OSError:
            self.process = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                util, memory = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, memory))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def over(self, start: float, end: float) -> dict[str, float] | None:
        window = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not window:
            return None
        utils = sorted(u for u, _ in window)
        return {"mean": sum(utils) / len(utils), "p10": utils[len(utils) // 10], "samples": len(window),
                "memory_mib_max": max(m for _, m in window)}


def run_sweep(case: str, views_on: str, args, storage: Path) -> dict[str, Any]:
    """One sweep in its own process (a local Ray each); the trial's last-epoch metrics and the GPU's
    utilisation over that epoch."""
    raw = sweep_file(case, views_on, args)
    path = storage / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    sampler = GpuSampler()
    start = time.time()
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "fgray.sweep", str(path), "--storage", str(storage)],
                          capture_output=True, text=True, timeout=args.sweep_timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": pythonpath})
    sampler.stop()
    row: dict[str, Any] = {"case": case, "views_on": views_on, "wall_s": time.time() - start, "rc": done.returncode,
                           "data_actors": raw["resources"]["data_actors"], "batch": raw["train"]["batch_size"]}
    summary_path = storage / raw["name"] / "summary.json"
    if done.returncode != 0 or not summary_path.exists():
        return {**row, "error": (done.stderr or done.stdout)[-3000:]}
    trial = json.loads(summary_path.read_text())["trials"][0]
    metrics = trial.get("metrics") or {}
    end, epoch_s = metrics.get("time/epoch_end"), metrics.get("time/epoch_s")
    row.update({"epochs": metrics.get("epoch"), "steps_per_epoch": metrics.get("train/steps"),
                "images_per_s": metrics.get("train/images_per_s"), "data_wait": metrics.get("train/data_wait"),
                "epoch_s": epoch_s,
                "gpu_util": sampler.over(end - epoch_s, end) if end and epoch_s else None})
    return row


def step_rates(args, out: Path) -> dict[str, dict[str, float]]:
    """gpu_check's step images/s per case on this device: eager+CL (no data path), and with the
    views finished on the device (``<case>-views``: data.views_on trainer, the deferred ops in the step)."""
    extras = [f"{case}-views={case},data.views_on=trainer" for case in CASES]
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cases", *CASES, "--extra", *extras,
           "--no-compile", "--gallery", "0", "--embed-rounds", "0", "--steps", str(args.check_steps),
           "--device", args.device, "--out", str(out / "gpu_check")] + (["--tiny"] if args.tiny else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.sweep_timeout, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"gpu_check failed:\n{done.stderr[-3000:]}")
    rates: dict[str, dict[str, float]] = {}
    for row in json.loads((out / "gpu_check" / "gpu_check.json").read_text())["train"]:
        if "samples_per_s" not in row or row["variant"] != "eager+CL":
            continue
        case, views = (row["case"][:-len("-views")], "gpu") if row["case"].endswith("-views") else (row["case"], "none")
        rates.setdefault(case, {})[views] = row["samples_per_s"]
    return rates


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU sweep check {report['date']}: {report['device']}, {report['cores']} cores; "
             f"{report['images']} training images at {report['image_size']} px, {report['epochs']} epochs.", "",
             "| case | views on | view workers | trial images/s | step images/s (gpu_check, no data) | feed ratio "
             "| data wait | GPU util mean (p10) | epoch s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(value, spec="") -> str:
        return "-" if value is None else format(value, spec)

    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['views_on']} | {r['data_actors']} | failed: "
                         f"{r['error'].strip().splitlines()[-1][:150] if r['error'].strip() else r['rc']} | | | | | |")
            continue
        util = r.get("gpu_util") or {}
        lines.append(f"| {r['case']} | {r['views_on']} | {r['data_actors']} | {fmt(r['images_per_s'], '.0f')} "
                     f"| {fmt(r.get('step_images_per_s'), '.0f')} | {fmt(r.get('feed_ratio'), '.2f')} "
                     f"| {fmt(r['data_wait'] and 100 * r['data_wait'], '.1f')} % "
                     f"| {fmt(util.get('mean'), '.0f')} ({fmt(util.get('p10'), '.0f')}) | {fmt(r['epoch_s'], '.1f')} |")
    steps = report.get("step_rates") or {}
    if steps:
        lines += ["", "gpu_check step images/s on this device: " + "; ".join(
            f"{case} {v.get('none', 0):.0f} (views finished in the step: {v.get('gpu', 0):.0f})"
            for case, v in steps.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out/gpu_sweep"))
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the plumbing (--tiny)")
    parser.add_argument("--tiny", action="store_true", help="gpu_check's tiny models and sizes (CPU tests)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--views-on", nargs="*", default=None,
                        help="arms: data.views_on, +decode for decode_on trainer; default: cpu gpu gpu+decode "
                             "(--device cpu: cpu trainer trainer+decode)")
    parser.add_argument("--classes", type=int, default=96, help="synthetic classes (half of them train)")
    parser.add_argument("--per-class", type=int, default=200, help="synthetic images per class")
    parser.add_argument("--epochs", type=int, default=6, help="the last one is the measured, steady epoch")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--check-steps", type=int, default=20, help="gpu_check's timed steps per case")
    parser.add_argument("--sweep-timeout", type=int, default=900)
    parser.add_argument("--storage", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    arms = args.views_on or (["cpu", "gpu", "gpu+decode"] if args.device != "cpu" else ["cpu", "trainer", "trainer+decode"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FGRAY_CACHE", str(Path(tempfile.gettempdir()) / "fgray_gpu_sweep_cache"))
    storage = Path(args.storage or tempfile.mkdtemp(prefix="gpu_sweep_"))
    storage.mkdir(parents=True, exist_ok=True)
    from gpu_check import case_experiment

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "device": args.device, "cores": os.cpu_count(), "args": vars(args),
        "images": args.classes // 2 * args.per_class, "epochs": args.epochs,
        "image_size": case_experiment(CASES[0], args.tiny).data.image_size, "runs": []}
    if args.device != "cpu":
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.strip()
        report["device"] = name or args.device

    def save() -> None:
        (out / "gpu_sweep.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu_sweep.md").write_text(markdown(report))

    report["step_rates"] = step_rates(args, out)
    save()
    for case in args.cases:
        for views_on in arms:
            row = run_sweep(case, views_on, args, storage)
            step = (report["step_rates"].get(case) or {}).get("none")
            if step and row.get("images_per_s"):
                row.update({"step_images_per_s": step, "feed_ratio": row["images_per_s"] / step})
            report["runs"].append(row)
            save()
            print(json.dumps({k: v for k, v in row.items() if k != "error"}, default=str), flush=True)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
