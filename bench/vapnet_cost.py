"""What VAPNet's local views cost: training-step throughput and peak memory against M.

A VAPNet step encodes B x (1 + M) images (the batch and its M grid crops each) and RoIAligns M boxes
per image from the global map; the CE-only baseline (``constraint: none``, "M = 0") encodes B.
For each M this script times ``VAPNet.training_step`` + backward + SGD step + the EMA update of the
mean encoders on a fixed random batch (the data pipeline is not included), and reports

  * batch images/s (B per step) and encoded images/s (B x (1 + M) per step),
  * the step time and the peak memory relative to the CE-only baseline (ratios; nothing is asserted).

Peak memory: CUDA ``max_memory_allocated`` during the timed steps; on CPU each case runs in its own
process and reports its peak resident set size (``ru_maxrss``) less its size before the first step
(the model, optimiser and batch built): the activations, gradients and optimiser state of a step.

    python bench/vapnet_cost.py                                   # CPU: the demo's narrow resnet10t, 64 px
    python bench/vapnet_cost.py --views 0 4 --steps 3             # quicker
    python bench/vapnet_cost.py --views 0 4 --crop-bn joint       # the one-pass BN scheme
    python bench/vapnet_cost.py --device cuda --amp --backbone resnet50 --image-size 224 --batch-size 32
        # the paper's setting on a GPU (bf16 autocast as fgray's trials use it)
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
from fgray.data.inputs import DatasetFacts  # noqa: E402
from fgray.data.views import GridCrops  # noqa: E402
from fgray.engine import autocast_context  # noqa: E402
from fgray.methods.configs_supervised import VAPNetConfig  # noqa: E402
from fgray.methods.vapnet import VAPNet  # noqa: E402
from fgray.models import build_backbone  # noqa: E402

DEMO_BACKBONE_KWARGS = {"channels": [32, 64, 128, 256], "stem_width": 16}  # sweeps/demo.yaml


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16],
                        help="M values; 0 = CE only (constraint none, no local views)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (CUDA only, as train.amp: on)")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--model-kwargs", type=json.loads, default=None,
                        help="JSON; default: the demo's half-width resnet10t for resnet10t, else none")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attr-dim", type=int, default=256)
    parser.add_argument("--crop-bn", choices=["separate", "joint"], default="separate",
                        help="method.crop_bn: crops in a second backbone pass (default) or one pass")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: run one M, print JSON
    return parser.parse_args(argv)


def build(args: argparse.Namespace, views: int, device: torch.device) -> tuple[VAPNet, dict]:
    """The method for M = ``views`` (0: CE only) and a fixed random batch on ``device``."""
    torch.manual_seed(0)
    cfg = VAPNetConfig(num_views=max(views, 1), constraint="mean" if views else "none",
                       attr_dim=args.attr_dim, crop_bn=args.crop_bn)
    kwargs = args.model_kwargs if args.model_kwargs is not None else (
        DEMO_BACKBONE_KWARGS if args.backbone == "resnet10t" else {})
    backbone = build_backbone(args.backbone, image_size=args.image_size, model_kwargs=kwargs)
    method = VAPNet(cfg, backbone, DatasetFacts(num_classes=args.classes, image_size=args.image_size))
    method.to(device).train()
    size, n = args.image_size, args.batch_size
    batch = {"image": torch.randn(n, 3, size, size), "label": torch.randint(0, args.classes, (n,))}
    if views:
        sampler = GridCrops(size, count=views)
        batch["crops"] = torch.randn(n, views, 3, size, size)
        batch["crop_boxes"] = torch.stack([sampler.sample() for _ in range(n)])
    return method, {k: v.to(device) for k, v in batch.items()}


def run_case(args: argparse.Namespace, views: int) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    method, batch = build(args, views, device)
    optimizer = torch.optim.SGD([p for g in method.param_groups() for p in g["params"]], lr=1e-4,
                                momentum=0.9)
    amp = "on" if args.amp else "off"
    setup_rss = _rss_kib()  # model, optimiser and batch built; no step yet

    def step() -> None:
        with autocast_context(device, amp):
            loss = method.training_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(0.0)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # the steps' growth over the resident size after setup (allocator caches included)
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - setup_rss) / 1024
    seconds = (time.perf_counter() - start) / args.steps
    encoded = args.batch_size * (1 + views)
    return {"M": views, "step_s": seconds, "batch_images_per_s": args.batch_size / seconds,
            "encoded_images_per_s": encoded / seconds, "encoded_per_step": encoded,
            "peak_mib": peak_mib}


def _rss_kib() -> int:
    """Current resident set size in KiB (Linux /proc), the unit of ru_maxrss."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def run_isolated(args: argparse.Namespace, views: int) -> dict:
    """One case in a fresh process, so that its peak RSS is its own."""
    argv = [sys.executable, __file__, "--case", str(views), "--device", args.device,
            "--backbone", args.backbone, "--image-size", str(args.image_size),
            "--batch-size", str(args.batch_size), "--attr-dim", str(args.attr_dim),
            "--crop-bn", args.crop_bn,
            "--classes", str(args.classes), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--threads", str(args.threads)]
    if args.model_kwargs is not None:
        argv += ["--model-kwargs", json.dumps(args.model_kwargs)]
    if args.amp:
        argv.append("--amp")
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        print(json.dumps(run_case(args, args.case)))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    cpu = args.device == "cpu"
    rows = [run_isolated(args, m) if cpu else run_case(args, m) for m in args.views]
    base = next((r for r in rows if r["M"] == 0), rows[0])
    print(f"VAPNet step cost: {args.backbone} {args.image_size} px, batch {args.batch_size}, "
          f"device {args.device}{' + AMP' if args.amp else ''}, crop_bn {args.crop_bn}, "
          f"{args.steps} timed steps"
          + (f", {args.threads} thread(s)" if cpu else ""))
    print(f"{'M':>11} {'encoded/step':>12} {'step s':>8} {'batch img/s':>11} {'enc. img/s':>10} "
          f"{'step x':>7} {'peak MiB':>9} {'peak x':>7}")
    for r in rows:
        r["step_ratio"] = r["step_s"] / base["step_s"]
        r["peak_ratio"] = r["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
        label = "0 (CE only)" if r["M"] == 0 else str(r["M"])
        print(f"{label:>11} {r['encoded_per_step']:>12} {r['step_s']:>8.3f} {r['batch_images_per_s']:>11.1f} "
              f"{r['encoded_images_per_s']:>10.1f} {r['step_ratio']:>7.2f} {r['peak_mib']:>9.0f} "
              f"{r['peak_ratio']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
