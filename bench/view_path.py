"""View path: images/s per CPU core of each method's declared views at its paper's size, from CUB-sized
JPEGs, per operation, and the cores each GPU case of bench/gpu_check.py needs to be fed.

Each stored image is a synthetic bird rendered at 500 x 375 and JPEG-encoded at quality 90 (~75 KB,
CUB-200's typical file: ``synthetic_shards.photo_jpegs``); each recipe is the one the method declares in
its paper-size case (``gpu_check.CASES``), at 224 px. Paths, timed in one process on one thread, in turn
(round by round, so a shared machine's load drifts over all of them alike):

- ``reference``: fgray's views before issue 28: torchvision v2 on the decoded tensor
  (``transforms.moco_v2_augmentation`` per MoCo view, ``eval_transform`` for the clean view). The other
  recipes did not change: their reference is their implementation.
- ``reference, no denormals``: the same with ``torch.set_flush_denormal(True)``: a small sigma's far
  taps in torchvision's 23-tap blur are denormal floats, which this kind of CPU multiplies ~10x slower
  (the blur at sigma 0.5: 59 ms; at 2: 10 ms), so the reference is also timed without them.
- ``cpu``: what a view worker does with ``data.views_on: cpu`` (the fast path for MoCo's views).
- ``gpu``: what a view worker still does with ``data.views_on: gpu`` (decode, crop, flip, the draws).
- ``trainer-decode``: what it still does with ``data.decode_on: trainer`` too (read the header, the
  draws, their rows), for the recipes with deferred ops; ``trainer decode`` times the trainer's side,
  decoding and cropping a batch of 32 on this CPU (information: on a GPU, nvJPEG does it).
- ``device ops``: the deferred ops themselves (``views.deferred.finish``) on this CPU, per image, in
  batches of 32: what the trainer's GPU does instead (information; not a view worker's cost).

Times are this process's CPU time (``time.process_time``), what a core spends per image: on a shared
machine wall time also counts the time other jobs hold the core.

    python bench/view_path.py                                # 200 images x 3 rounds: ~10 min on a loaded box
    python bench/view_path.py --images 40 --rounds 1 --out /tmp/vp
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from gpu_check import CASES, case_experiment  # noqa: E402

from fgray import feed  # noqa: E402
from fgray.data.views import transforms  # noqa: E402
from fgray.data.inputs import ViewRecipe  # noqa: E402
from fgray.data.sources.synthetic_shards import photo_jpegs  # noqa: E402
from fgray.data.views import Source, build_recipe, moco, recipes, source  # noqa: E402
from fgray.data.views.deferred import finish  # noqa: E402
from fgray.data.views.trainer_decode import decode_views  # noqa: E402

MOCO_RECIPES = ("moco_pair", "clean_augmented")
FLUSHED = "reference, no denormals"
DECODED = "trainer-decode"
PATHS = ("reference", FLUSHED, "cpu", "gpu", DECODED)


clock = time.process_time  # CPU seconds of this process (one thread)


class Timer:
    """CPU seconds per named operation, accumulated by wrappers (``patched``, ``timed``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def timed(self, name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += clock() - start
        return wrapper


@contextlib.contextmanager
def patched(timer: Timer):
    """Time the view modules' operations where the recipes call them (module attributes)."""
    targets = [(source.Source, "__init__", "header"), (source.Source, "_decode", "decode"),
               (moco.MocoView, "draw", "draws"), (moco, "_regions", "rows"),
               (moco, "resized_crop", "crop+flip"), (moco, "apply_colour", "jitter+grey"), (moco, "blur", "blur"),
               (moco, "to_tensor", "to tensor"), (recipes, "crop_flip_with_box", "crop+flip (box)"),
               (recipes, "object_crop", "object crop"), (recipes, "mean_blur_region", "background blur"),
               (recipes, "crop_regions", "grid crops")]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
    for owner, attr, name in targets:
        setattr(owner, attr, timer.timed(name, getattr(owner, attr)))
    try:
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def _timed_compose(compose, timer: Timer):
    """A torchvision Compose whose steps are timed by kind (crop, jitter, grey, blur, flip)."""
    names = {"RandomResizedCrop": "crop", "RandomGrayscale": "grey", "RandomHorizontalFlip": "flip",
             "Resize": "clean resize", "CenterCrop": "clean crop"}

    def name_of(step) -> str:
        inner = getattr(step, "transforms", [step])[0]
        kind = type(inner).__name__
        return {"ColorJitter": "jitter", "GaussianBlur": "blur"}.get(kind, names.get(kind, kind))

    compose.transforms = [timer.timed(name_of(step), step) for step in compose.transforms]
    return compose


def reference_recipe(view: ViewRecipe, size: int, timer: Timer) -> Callable:
    """fgray's recipe before issue 28, instrumented: (encoded, box) -> views."""
    options = view.kwargs
    decode = timer.timed("decode", transforms.decode)
    if view.name in MOCO_RECIPES:
        moco_options = {k: v for k, v in options.items() if k != "eval_crop"}
        augment = _timed_compose(transforms.moco_v2_augmentation(size, **moco_options), timer)
        clean = _timed_compose(transforms.eval_transform(size, options.get("eval_crop", 0.875)), timer)

        def draw(encoded: bytes, box) -> dict:
            image = decode(encoded)
            out = {"clean": clean(image)} if view.name == "clean_augmented" else {}
            return {**out, "view1": augment(image), "view2": augment(image)}
        return draw
    current = build_recipe(view, size)
    for attr in ("augment",):  # crop_flip's and grid_crops' torchvision Compose
        if hasattr(current, attr):
            setattr(current, attr, _timed_compose(getattr(current, attr), timer))
    return lambda encoded, box: current(decode(encoded), box)


def our_recipe(view: ViewRecipe, size: int, defer: bool, timer: Timer, decode: bool = False) -> Callable:
    recipe = build_recipe(view, size, defer, decode)
    for attr in ("augment",):
        if hasattr(recipe, attr):
            setattr(recipe, attr, _timed_compose(getattr(recipe, attr), timer))
    return lambda encoded, box: recipe(Source(encoded), box)


def run_path(draw: Callable, photos: list, timer: Timer) -> tuple[float, list]:
    """CPU seconds for all photos (image i seeded i, as a view actor seeds), and the outputs of the first 32."""
    kept = []
    start = clock()
    with torch.inference_mode():
        for i, (encoded, box) in enumerate(photos):
            torch.default_generator.manual_seed(i)
            out = draw(encoded, torch.tensor(box))
            if i < 32:
                kept.append(out)
    return clock() - start, kept


def device_ops_ms(outputs: list) -> float | None:
    """ms per image of the deferred ops applied here (CPU) to a batch of the kept views."""
    keys = [k for k in outputs[0] if k.endswith("@ops")] if outputs else []
    if not keys:
        return None
    start = clock()
    for key in keys:
        images = torch.stack([o[key[:-4]] for o in outputs])
        finish(images, torch.stack([o[key] for o in outputs]).numpy())
    return 1e3 * (clock() - start) / len(outputs)


def trainer_decode_ms(outputs: list) -> float | None:
    """ms per image of the trainer's side of ``data.decode_on: trainer`` on this CPU: a batch of the kept
    outputs decoded, cropped and flipped (``views.trainer_decode``; the colour ops are ``device ops``)."""
    if not outputs or "@encoded" not in outputs[0]:
        return None
    batch = {key: torch.stack([o[key] for o in outputs]).numpy() for key in outputs[0] if key != "@encoded"}
    batch["@encoded"] = [o["@encoded"] for o in outputs]
    start = clock()
    decode_views(batch, torch.device("cpu"))
    return 1e3 * (clock() - start) / len(outputs)


def measure(args) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    photos = photo_jpegs(args.images)
    cases: dict[tuple, list[str]] = defaultdict(list)  # one entry per distinct recipe at its paper's size
    for name in CASES:
        experiment = case_experiment(name, False)
        for view in experiment.method.inputs.views:
            cases[(view, experiment.data.image_size)].append(name)
    rows = []
    for (view, size), names in cases.items():
        if args.recipes and view.name not in args.recipes:
            continue
        timers = {path: Timer() for path in PATHS}
        draws = {"reference": reference_recipe(view, size, timers["reference"]),
                 FLUSHED: reference_recipe(view, size, timers[FLUSHED]),
                 "cpu": our_recipe(view, size, False, timers["cpu"]),
                 "gpu": our_recipe(view, size, True, timers["gpu"])}
        if view.name in MOCO_RECIPES:  # the recipes with deferred ops: the others decode on the worker
            draws[DECODED] = our_recipe(view, size, True, timers[DECODED], decode=True)
        seconds: dict[str, list[float]] = defaultdict(list)
        device_ms = decode_ms = None
        for _ in range(args.rounds):
            for path, draw in draws.items():
                with patched(timers[path]) if path in ("cpu", "gpu", DECODED) else contextlib.nullcontext():
                    torch.set_flush_denormal(path == FLUSHED)
                    elapsed, kept = run_path(draw, photos, timers[path])
                    torch.set_flush_denormal(False)
                seconds[path].append(elapsed)
                if path == "gpu":
                    device_ms = device_ops_ms(kept)
                if path == DECODED:
                    decode_ms = trainer_decode_ms(kept)
        for path in draws:
            ms = 1e3 * statistics.median(seconds[path]) / len(photos)
            ops = {k: 1e3 * v / (len(photos) * args.rounds) for k, v in timers[path].seconds.items()}
            rows.append({"recipe": view.name, "cases": names, "size": size, "path": path, "ms_per_image": ms,
                         "images_per_s_core": 1e3 / ms, "ops_ms": ops,
                         "x_reference": statistics.median(r / s for r, s in zip(seconds["reference"], seconds[path])),
                         **({"device_ops_ms_cpu": device_ms} if path == "gpu" else {}),
                         **({"trainer_decode_ms_cpu": decode_ms} if path == DECODED else {})})
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()
                              if k != "ops_ms"}), flush=True)
    return {"date": time.strftime("%Y-%m-%d"), "images": args.images, "rounds": args.rounds,
            "threads": args.threads, "load": os.getloadavg(), "torch": torch.__version__, "rows": rows,
            "cores": cores_needed(rows)}


def cores_needed(rows: list[dict]) -> list[dict]:
    """Per GPU case with a measured step rate: the cores its views need on each path."""
    out = []
    for name in CASES:
        experiment = case_experiment(name, False)
        step = feed.STEP_RATES.get((experiment.method.name, experiment.backbone.name.split(".")[0]))
        if step is None:
            continue
        recipe = experiment.method.inputs.views[0].name
        rates = {r["path"]: r["images_per_s_core"] for r in rows if r["recipe"] == recipe and name in r["cases"]}
        if not rates:
            continue
        out.append({"case": name, "step_images_per_s": step, **{f"cores_{p}": step / v for p, v in rates.items()}})
    return out


def markdown(report: dict) -> str:
    ops = sorted({k for r in report["rows"] for k in r["ops_ms"]})
    lines = [f"View path {report['date']}: {report['images']} CUB-sized JPEGs x {report['rounds']} rounds, "
             f"{report['threads']} thread(s), load {', '.join(f'{v:.1f}' for v in report['load'])}.", "",
             "| recipe (cases) | path | ms/image | images/s/core | x reference | " + " | ".join(ops) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in ops) + " |"]
    for r in report["rows"]:
        cells = " | ".join(f"{r['ops_ms'][k]:.2f}" if k in r["ops_ms"] else "" for k in ops)
        lines.append(f"| {r['recipe']} ({', '.join(r['cases'])}) | {r['path']} | {r['ms_per_image']:.2f} "
                     f"| {r['images_per_s_core']:.0f} | {r['x_reference']:.2f} | {cells} |")
    device = [r for r in report["rows"] if r.get("device_ops_ms_cpu")]
    if device:
        lines += ["", "Deferred ops on this CPU, batches of 32 (what the GPU does instead): " + ", ".join(
            f"{r['recipe']} {r['device_ops_ms_cpu']:.2f} ms/image" for r in device) + "."]
    decoded = [r for r in report["rows"] if r.get("trainer_decode_ms_cpu")]
    if decoded:
        lines += ["", "Trainer's decode + crop on this CPU, batches of 32 (what nvJPEG does instead): " + ", ".join(
            f"{r['recipe']} {r['trainer_decode_ms_cpu']:.2f} ms/image" for r in decoded) + "."]
    lines += ["", f"| case | {feed.STEP_GPU} step images/s | " + " | ".join(f"cores: {p}" for p in PATHS) + " |",
              "| --- | --- | " + " | ".join("---" for _ in PATHS) + " |"]
    for c in report["cores"]:
        cores = " | ".join(f"{c['cores_' + path]:.1f}" if "cores_" + path in c else "" for path in PATHS)
        lines.append(f"| {c['case']} | {c['step_images_per_s']:.0f} | {cores} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipes", nargs="*", default=None, help="only these recipes (default: every case's)")
    parser.add_argument("--out", default=os.environ.get("OUT", "out/view_path"))
    args = parser.parse_args(argv)
    report = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "view_path.json").write_text(json.dumps(report, indent=1))
    (out / "view_path.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
