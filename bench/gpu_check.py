"""GPU check: every registered method's training step at its paper's size, and evaluation, on one GPU.

Needs no Ray and no faiss (the GPU image has neither): each method is built from its typed config
with random weights, placed as a trial places it (``engine.place_method``), and trained by fgray's
own ``StageRunner`` + ``train_one_epoch`` on one synthetic batch built from the method's declared
inputs (``fgray.data.declared``), kept on the GPU so the step, not the data path, is timed.

Per method and variant (eager, channels-last for CNNs, ``torch.compile``): steady-state samples/s
(a sample is one dataset image, however many views or crops the method encodes of it), step time,
peak GPU memory, FLOPs of one step (``torch.utils.flop_counter``) and the model FLOPs utilisation
(MFU) against the GPU's dense bf16 peak, with bf16 autocast on (``train.amp``). Evaluation:
embedding throughput (fp32 as fgray evaluates today, and bf16 + channels-last), and exact top-k
retrieval metrics of a 120k x 512 SOP-sized gallery with torch on the GPU, checked against the CPU
metrics on a 10k subset. Results go to ``--out``: gpu_check.json (rewritten after each
measurement, so a run cut short keeps what it measured) and gpu_check.md.

    bash bench/gpu_check.sh download        # here, once: wheels the GPU image lacks -> .whl/
    bash bench/gpu_check.sh                 # there: install them, run this into $OUT
    python bench/gpu_check.py --tiny --device cpu --out /tmp/gpu_check   # CPU plumbing (tests)
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from eval_large_gallery import synthetic_gallery  # noqa: E402

from fgray.config import ExperimentConfig  # noqa: E402
from fgray.data.declared import declared_batch  # noqa: E402
from fgray.data.inputs import DEFERRED_SUFFIX, DatasetFacts  # noqa: E402
from fgray.engine import (build_method, inference_embed, normalize_images, place_method,  # noqa: E402
                          train_one_epoch)
from fgray.eval import retrieval_metrics  # noqa: E402
from fgray.methods import method_names  # noqa: E402
from fgray.profiles import apply_profile  # noqa: E402
from fgray.stages import StageRunner  # noqa: E402
from fgray.validation import parse_set, set_dotted, validate  # noqa: E402

# Dense bf16 tensor-core peaks (datasheets, SXM parts); other GPUs: the measured matmul rate.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}
CLASSES = 100  # training classes of CUB's open split: the heads of supervised methods


def _paper_sweep(path: str, method: dict[str, Any] | None = None) -> dict[str, Any]:
    """A paper-size sweep file's method (``method``: keys replaced), backbone, training and image size
    (weights random)."""
    raw = yaml.safe_load((ROOT / path).read_text())
    return {"method": {**raw["method"], **(method or {})}, "backbone": {**raw["backbone"], "pretrained": False},
            "train": raw["train"], "data": {"image_size": raw["data"]["image_size"]}}


# name -> (registered method, raw experiment at the paper's size). Each registered method needs a
# case (checked at start-up), so a new method cannot skip the GPU check.
CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "mocov2": lambda: {  # MoCo v2 (Chen et al. 2020): ResNet-50, batch 256, K = 65536
        "method": {"name": "mocov2"}, "backbone": {"name": "resnet50"},
        "train": {"batch_size": 256, "optimizer": "sgd", "lr": 0.03}, "data": {"image_size": 224}},
    "simsiam": lambda: {  # SimSiam (Chen & He 2021): ResNet-50, batch 512, 3-layer 2048-d projector
        "method": {"name": "simsiam"}, "backbone": {"name": "resnet50"},
        "train": {"batch_size": 512, "optimizer": "sgd", "lr": 0.1}, "data": {"image_size": 224}},
    "ppssl": lambda: _paper_sweep("sweeps/ppssl_alpha_beta.yaml"),  # + its CLIP ViT-B/32 teacher
    "vapnet": lambda: _paper_sweep("sweeps/vapnet_main.yaml"),  # batch 32, M = 4 crops per image
    "oldfs": lambda: _paper_sweep("sweeps/oldfs_main.yaml"),  # MoCo v2 base, batch 128, the joint step
    "dva": lambda: _paper_sweep("sweeps/dva_main.yaml"),  # frozen ViT-B/16 + ICA, batch 32 (+ objects, backgrounds)
    # ViT-B/16, 64 anchors + 64 negatives, the joint pre-training step (its fine-tuning stage is off)
    "ass": lambda: _paper_sweep("sweeps/ass_selector.yaml", {"finetune": {"epochs": 0}}),
    "mocov2-vit": lambda: {  # the ViT-B/16 of ASS and DVA, in a MoCo step
        "method": {"name": "mocov2"}, "backbone": {"name": "vit_base_patch16_224"},
        "train": {"batch_size": 256, "optimizer": "adamw", "lr": 1.5e-4}, "data": {"image_size": 224}},
}


def case_experiment(name: str, tiny: bool, sets: tuple[str, ...] = ()) -> ExperimentConfig:
    """CASES[name] as a validated experiment (``sets``: ``key.path=value`` overrides, as --set)."""
    raw = CASES[name]()
    for assignment in sets:
        set_dotted(raw, *parse_set(assignment))
    if "teacher" in raw["method"]:  # no download: CLIP's architecture with random weights
        teacher = raw["method"].get("teacher", {})
        raw["method"] = {**raw["method"], "teacher": {**teacher, "pretrained": "random"}}
    raw = {**raw, "data": {"name": "synthetic", **raw["data"]},
           "train": {**raw["train"], "amp": "on", "epochs": 1, "warmup_epochs": 0}}
    return validate(ExperimentConfig, shrink(raw) if tiny else raw)


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """--profile smoke's tiny models of the same families, at a CPU-test size."""
    smoke = apply_profile("smoke", raw)
    return {"method": smoke["method"], "backbone": smoke["backbone"], "data": {**smoke["data"], "image_size": 32},
            "train": {**smoke["train"], "batch_size": 4}}


def variants(experiment: ExperimentConfig, compile_too: bool) -> list[dict[str, Any]]:
    """eager (fgray's default for ViTs); eager+CL (its default for CNNs); compiled."""
    cnn = "vit" not in experiment.backbone.name
    out = [{"variant": "eager", "channels_last": False, "compile": False}]
    if cnn:
        out.append({"variant": "eager+CL", "channels_last": True, "compile": False})
    if compile_too:
        out.append({"variant": "compile+CL" if cnn else "compile", "channels_last": cnn, "compile": True})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()


def on_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, Any]:
    """Numeric arrays as tensors on the device, once (uint8 images stay uint8: the step normalises and,
    with ``data.views_on`` gpu/trainer, finishes the views from their ``@ops`` rows, kept on the host
    as a trial's arrive)."""
    return {k: torch.from_numpy(v).to(device) if v.dtype.kind in "biuf" and not k.endswith(DEFERRED_SUFFIX) else v
            for k, v in batch.items()}


class _WholeProgram:
    """Stands in for FlopCounterMode's module tracker: its backward hooks fail inside the
    ``autograd.grad`` of PP-SSL's Grad-CAM, and only the whole step's total is wanted here."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(step: Callable[[], Any]) -> float:
    """FLOPs of one call of ``step`` (matrix products and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _WholeProgram()
    with counter:
        step()
    return float(counter.get_total_flops())


def case_facts(experiment: ExperimentConfig) -> DatasetFacts:
    return DatasetFacts(num_classes=CLASSES, class_names=tuple(f"class {i}" for i in range(CLASSES)),
                        image_size=experiment.data.image_size)


def write_profile(step: Callable[[], Any], device: torch.device, path: Path) -> None:
    """torch.profiler's table of ops by self device time (CPU: self CPU time) over ``step``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60))


def measure_step(experiment: ExperimentConfig, variant: dict, batch: dict[str, np.ndarray],
                 device: torch.device, steps: int, warmup: int, flops: float | None,
                 profile_to: Path | None = None) -> dict[str, Any]:
    """Steady-state training throughput of one method variant on ``batch`` (``flops``: of one
    step, counted here when None; ``profile_to``: a file for the profiler's op table of 3 steps)."""
    train = experiment.train.model_copy(update={"channels_last": variant["channels_last"],
                                                "compile": variant["compile"]})
    experiment = experiment.model_copy(update={"train": train})
    facts = case_facts(experiment)
    torch.manual_seed(0)
    method = place_method(build_method(experiment, facts), device, train)
    runner = StageRunner(method, experiment, steps, device)
    runner.enter(runner.plan.epochs - 1)  # the last stage: the method's main training (OLDFS: joint)
    batch = on_device(batch, device)

    def run(n: int):
        return train_one_epoch(runner.model, itertools.repeat(batch), runner.optimizer, runner.scheduler,
                               device, epoch=0, epochs=1, steps_per_epoch=n, amp=train.amp,
                               scaler=runner.scaler)

    start = time.perf_counter()
    run(warmup)  # cuDNN autotuning, allocator growth, compilation
    sync(device)
    first_s = time.perf_counter() - start
    if flops is None:
        flops = count_flops(lambda: run(1))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    stats = run(steps)
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if profile_to is not None:
        write_profile(lambda: run(3), device, profile_to)
    return {"batch": train.batch_size, "samples_per_s": stats.steps * train.batch_size / seconds,
            "step_ms": 1e3 * seconds / stats.steps, "warmup_s": first_s, "peak_gib": peak,
            "tflop_per_step": flops / 1e12, "achieved_tflops": flops * stats.steps / seconds / 1e12,
            "loss": stats.losses.get("loss")}


def measure_case(name: str, compiled: bool, args, device: torch.device, peak_tflops: float | None,
                 deadline: float, flops: dict[str, float], batches: dict, emit: Callable[[dict], None]) -> None:
    """The case's eager variants (``compiled`` False) or its compile variant; ``flops``: FLOPs of one
    step per case and batch size (counted by the first variant at that size); ``batches``: the
    declared batches per case and size. An ``--extra`` case runs the trial's default variant only."""
    base, *sets = args.extras.get(name, name).split(",")
    experiment = case_experiment(base, args.tiny, tuple(sets))
    cnn = "vit" not in experiment.backbone.name

    def profile_to(variant: dict) -> Path | None:  # the eager variant a trial would run
        if name in args.profile and not variant["compile"] and variant["channels_last"] == cnn:
            return Path(args.out) / f"profile_{name}.txt"
        return None

    for variant in variants(experiment, args.compile):
        if variant["compile"] != compiled or (sets and variant["channels_last"] != cnn):
            continue
        row = {"case": name, "method": experiment.method.name, "backbone": experiment.backbone.name,
               "image_size": experiment.data.image_size, **variant}
        if compiled and time.perf_counter() > deadline:
            emit({**row, "error": "skipped: the run's time budget was spent"})
            continue
        batch = experiment.train.batch_size
        while True:
            train = experiment.train.model_copy(update={"batch_size": batch})
            if (name, batch) not in batches:  # built once per case and size: the views run on the CPU
                inputs = replace(experiment.method.inputs, defer_views=experiment.defer_views)  # data.views_on
                batches[name, batch] = declared_batch(inputs, case_facts(experiment), n=batch)
            try:
                result = measure_step(experiment.model_copy(update={"train": train}), variant,
                                      batches[name, batch], device, args.steps, args.warmup,
                                      flops.get(f"{name}/{batch}"), profile_to(variant))
                break
            except torch.cuda.OutOfMemoryError:
                release(device)
                if batch <= 8:
                    result = {"error": "out of memory at batch 8"}
                    break
                batch //= 2  # the paper's batch where it fits, else the largest power-of-two share
            except Exception as exc:  # a variant that fails (e.g. compile) is recorded, not fatal
                text = str(exc).strip()
                result = {"error": f"{type(exc).__name__}: {text.splitlines()[0][:200]}",
                          "error_detail": text[-3000:]}  # inductor puts the cause last
                break
            finally:
                release(device)
        if "tflop_per_step" in result:
            flops[f"{name}/{batch}"] = result["tflop_per_step"] * 1e12
        if peak_tflops and "achieved_tflops" in result:
            result["mfu"] = result["achieved_tflops"] / peak_tflops
        emit({**row, **result})


def measure_embedding(backbone: str, args, device: torch.device) -> list[dict[str, Any]]:
    """Eval-view embedding throughput of ``backbone`` through ``engine.inference_embed`` (what the
    embedding actors run), float32 and as fgray evaluates by default (``eval.amp`` auto, channels-last
    CNNs); ``cosine_min_vs_fp32``: how close the default's embeddings are to float32's."""
    raw = {"method": {"name": "mocov2"}, "backbone": {"name": backbone}, "data": {"image_size": 224}}
    base = validate(ExperimentConfig, shrink(raw) if args.tiny else raw)
    facts = DatasetFacts(num_classes=CLASSES, image_size=base.data.image_size)
    size, n = base.data.image_size, args.embed_batch
    g = torch.Generator().manual_seed(0)
    batches = [normalize_images(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g).to(device))
               for _ in range(3)]  # a few distinct batches, rotated
    rows, reference = [], None
    for label, amp, channels_last in (("fp32", "off", False), ("default (eval.amp auto)", "auto", True)):
        experiment = base.model_copy(update={"eval": base.eval.model_copy(update={"amp": amp}),
                                             "train": base.train.model_copy(update={"channels_last": channels_last})})
        torch.manual_seed(0)
        embed = inference_embed(build_method(experiment, facts), device, experiment)
        embed(batches[0]).cpu()  # warm-up (cuDNN autotuning)
        sync(device)
        start = time.perf_counter()
        first = [embed(images).cpu() for _ in range(args.embed_rounds) for images in batches][0]
        seconds = time.perf_counter() - start
        row = {"backbone": backbone, "variant": label, "batch": n,
               "images_per_s": n * len(batches) * args.embed_rounds / seconds}
        if reference is None:
            reference = first
        else:
            row["cosine_min_vs_fp32"] = float(torch.nn.functional.cosine_similarity(first, reference).min())
        rows.append(row)
        del embed
        release(device)
    return rows


def measure_search(args, device: torch.device) -> dict[str, Any]:
    """Exact leave-one-out retrieval metrics of an SOP-sized gallery on ``device`` (torch path), and
    the largest metric difference against the CPU on a subset."""
    n, dim, subset = args.gallery, args.dim, args.subset
    x, y = synthetic_gallery(n, dim, max(2, n // 10), noise=2.0, seed=0)  # ~10 images per class, as SOP
    ks = (1, 10, 100, 1000) if n > 2000 else (1, 10)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    xd, yd = x.to(device), y.to(device)
    retrieval_metrics(xd[:subset], yd[:subset], ks=ks, backend="torch")  # warm-up
    sync(device)
    start = time.perf_counter()
    full = retrieval_metrics(xd, yd, ks=ks, backend="torch")
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    here = retrieval_metrics(xd[:subset], yd[:subset], ks=ks, backend="torch")
    cpu = retrieval_metrics(x[:subset], y[:subset], ks=ks, backend="torch")
    diff = max(abs(here[k] - cpu[k]) for k in cpu)
    return {"gallery": n, "dim": dim, "seconds": seconds, "peak_gib": peak, "metrics": full,
            "subset": subset, "subset_max_abs_diff_vs_cpu": diff}


def matmul_tflops(device: torch.device, side: int) -> float:
    """Measured bf16 matrix-product rate (TFLOP/s), the ceiling MFU can be read against too."""
    a, b = (torch.randn(side, side, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * side**3 * reps / (time.perf_counter() - start) / 1e12


def markdown(report: dict[str, Any]) -> str:
    info = report["device"]
    lines = [f"GPU check {report['date']}: {info['name']}, torch {info['torch']}, bf16 peak "
             f"{info['peak_tflops'] or '?'} TFLOP/s (datasheet), measured matmul {info['matmul_tflops']:.0f}.",
             "", "| case | backbone | batch | variant | samples/s | step ms | peak GiB | TFLOP/step | MFU % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in report["train"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['backbone']} | | {r['variant']} | {r['error']} | | | | |")
            continue
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        lines.append(f"| {r['case']} | {r['backbone']} | {r['batch']} | {r['variant']} | {r['samples_per_s']:.0f} "
                     f"| {r['step_ms']:.1f} | {fmt(r['peak_gib'], '.1f')} | {r['tflop_per_step']:.2f} "
                     f"| {fmt(mfu, '.1f')} |")
    lines += ["", "| embedding | variant | batch | images/s | min cosine to fp32 |", "| --- | --- | --- | --- | --- |"]
    for r in report["embed"]:
        lines.append(f"| {r['backbone']} | {r['variant']} | {r['batch']} | {r['images_per_s']:.0f} "
                     f"| {fmt(r.get('cosine_min_vs_fp32'), '.5f')} |")
    s = report.get("search")
    if s:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items())
        lines += ["", f"Exact search, {s['gallery']} x {s['dim']} leave-one-out: {s['seconds']:.1f} s, peak "
                  f"{fmt(s['peak_gib'], '.1f')} GiB; {metrics}. On a {s['subset']} subset the largest metric "
                  f"difference from the CPU is {s['subset_max_abs_diff_vs_cpu']:.2e}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out/gpu_check"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU tests)")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--extra", nargs="*", default=[], metavar="NAME=CASE,KEY=VALUE,...",
                        help="also a variant of a case, e.g. ppssl-noais=ppssl,method.alpha=0 (eager only)")
    parser.add_argument("--profile", nargs="*", default=[], metavar="CASE",
                        help="also write profile_CASE.txt: torch.profiler's op table of the eager step")
    parser.add_argument("--budget-s", type=float, default=420, help="no new compile variant after this")
    parser.add_argument("--gallery", type=int, default=120_000, help="0: no search measurement")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--embed-batch", type=int, default=256)
    parser.add_argument("--embed-rounds", type=int, default=10, help="0: no embedding measurement")
    args = parser.parse_args(argv)
    missing = sorted(set(method_names()) - {CASES[c]()["method"]["name"] for c in CASES})
    if missing:
        raise SystemExit(f"gpu_check: no case for registered methods {missing}: add one to CASES")
    args.extras = dict(extra.split("=", 1) for extra in args.extra)
    unknown = sorted((set(args.cases) | {e.split(",")[0] for e in args.extras.values()}) - set(CASES))
    if unknown:
        raise SystemExit(f"gpu_check: unknown cases {unknown}; known: {list(CASES)}")
    device = torch.device(args.device)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "args": vars(args), "train": [], "embed": [],
        "device": {"name": name, "torch": torch.__version__, "peak_tflops": peak,
                   "matmul_tflops": matmul_tflops(device, 256 if args.tiny else 8192)}}
    peak = peak or (report["device"]["matmul_tflops"] if device.type == "cuda" else None)

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(report))

    def emit(row: dict) -> None:
        report["train"].append(row)
        save()
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
        print(json.dumps(shown), flush=True)

    if args.gallery:
        report["search"] = measure_search(args, device)
        save()
    for backbone in ("resnet50", "vit_base_patch16_224") if args.embed_rounds else ():
        report["embed"] += measure_embedding(backbone, args, device)
        save()
    deadline, flops, batches = start + args.budget_s, {}, {}
    for case in [*args.cases, *args.extras]:  # eager variants of every case first
        measure_case(case, False, args, device, peak, deadline, flops, batches, emit)
    # then compile variants while time is left, the case of the slowest eager step (lowest FLOP/s) first
    best = {c: max((r.get("achieved_tflops", 0) for r in report["train"] if r["case"] == c), default=0)
            for c in args.cases}
    for case in sorted(args.cases, key=best.get):
        measure_case(case, True, args, device, peak, deadline, flops, batches, emit)
    report["seconds"] = time.perf_counter() - start
    save()
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
