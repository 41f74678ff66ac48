"""Is the synthetic dataset learnable? Plain PyTorch (no Ray), CPU-sized.

Measures test-class Recall@1 (leave-one-out, cosine, query excluded by index) of
  * chance (random features) and raw pixels,
  * randomly initialised timm backbones (global-pooled features),
  * a quick self-supervised model (MoCo v2 or SimCLR, MoCo v2 augmentations) trained on the
    training classes only, before and after training,
  * optionally a supervised classifier on the training classes (an upper-bound sanity check).

    python bench/synthetic_learnability.py --epochs 8 --supervised
    python bench/synthetic_learnability.py --method simclr --backbone resnet10t --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # run from a checkout
from fgray.data.synthetic import PARTS, SyntheticSpec, class_parts, render_arrays  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- evaluation


def recall_at_1(features: Tensor, labels: Tensor) -> float:
    """Leave-one-out Recall@1 under cosine similarity; the query is excluded by its index."""
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-float("inf"))  # exclude the query itself (by index, not by rank)
    return (labels[sim.argmax(dim=1)] == labels).float().mean().item()


def part_recalls(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Diagnostic: Recall@1 where a 'hit' only needs one part to match (what do features see?)."""
    out = {}
    for name in PARTS:
        part = torch.tensor([PARTS[name].index(class_parts(int(c))[name]) for c in labels])
        out[name] = recall_at_1(features, part)
    return out


def to_input(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> ImageNet-normalised float."""
    return (images.float() / 255.0 - MEAN) / STD


@torch.no_grad()
def embed(backbone: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Pooled backbone features of un-augmented images (eval-mode BatchNorm)."""
    was_training = backbone.training
    backbone.eval()
    out = torch.cat([backbone(to_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])
    backbone.train(was_training)
    return out


# ----------------------------------------------------------------------------- augmentation


def mocov2_augment(size: int) -> v2.Compose:
    """MoCo v2 views (no blur: at 64 px it would erase the parts), on uint8 tensors."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomHorizontalFlip(),
    ])


def augment_batch(aug: v2.Compose, images: Tensor) -> Tensor:
    """Per-sample random views (a v2 transform on a batch would share one draw)."""
    return torch.stack([aug(img) for img in images])


_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


class FastMoCoV2Augment:
    """The same MoCo v2 views with per-sample parameters, as a few batched tensor ops.

    ~20x cheaper than a per-image v2 loop on CPU (augmentation otherwise dominates a small
    model's step). Differences from v2: jitter order is fixed (brightness, contrast,
    saturation, hue) and hue is a YIQ rotation; crops that do not fit are clamped.
    """

    def __init__(self, size: int, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, p_gray=0.2):
        self.size, self.scale, self.jitter, self.p_jitter, self.p_gray = size, scale, jitter, p_jitter, p_gray

    def __call__(self, images: Tensor, g: torch.Generator) -> Tensor:
        b = len(images)
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
        x = self._crop_flip(images.float() / 255.0, u)
        on = torch.rand(b, generator=g) < self.p_jitter  # identity factors where jitter is off
        bj, cj, sj, hj = self.jitter
        bright = torch.where(on, u(1 - bj, 1 + bj), torch.ones(b)).view(b, 1, 1, 1)
        contrast = torch.where(on, u(1 - cj, 1 + cj), torch.ones(b)).view(b, 1, 1, 1)
        sat = torch.where(on, u(1 - sj, 1 + sj), torch.ones(b)).view(b, 1, 1, 1)
        hue = torch.where(on, u(-hj, hj), torch.zeros(b))
        x = (x * bright).clamp(0, 1)
        mean = (x * _GRAY).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean).clamp(0, 1)
        gray = (x * _GRAY).sum(1, keepdim=True)
        x = ((x - gray) * sat + gray).clamp(0, 1)
        x = self._hue(x, hue).clamp(0, 1)
        to_gray = (torch.rand(b, generator=g) < self.p_gray).view(b, 1, 1, 1)
        x = torch.where(to_gray, (x * _GRAY).sum(1, keepdim=True).expand_as(x), x)
        return (x - MEAN) / STD

    def _crop_flip(self, x: Tensor, u) -> Tensor:
        """RandomResizedCrop(scale, ratio 3/4..4/3) + horizontal flip via one grid_sample."""
        b = len(x)
        area, log_r = u(*self.scale), u(math.log(3 / 4), math.log(4 / 3))
        w = (area * log_r.exp()).sqrt().clamp(max=1.0)  # half-extent in [-1, 1] coordinates
        h = (area / log_r.exp()).sqrt().clamp(max=1.0)
        cx, cy = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
        flip = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    @staticmethod
    def _hue(x: Tensor, shift: Tensor) -> Tensor:
        """Rotate chroma in YIQ space by shift * 2pi (a linear stand-in for an HSV hue shift)."""
        yiq = torch.einsum("ij,bjhw->bihw", _RGB2YIQ, x)
        a = shift * 2 * math.pi
        cos, sin = a.cos().view(-1, 1, 1), a.sin().view(-1, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2YIQ), yiq)


def make_views(kind: str, size: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    """A function uint8 batch -> normalised float views: ``v2`` (per image) or ``fast`` (batched)."""
    if kind == "fast":
        return FastMoCoV2Augment(size)
    aug = mocov2_augment(size)
    return lambda images, g: to_input(augment_batch(aug, images))  # v2 draws from torch's global RNG


# ----------------------------------------------------------------------------- SSL methods


def mlp_head(in_dim: int, out_dim: int = 128) -> nn.Module:
    """MoCo v2 / SimCLR projection head."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))


class MoCoV2(nn.Module):
    """Minimal MoCo v2: momentum key encoder + FIFO queue of negatives, InfoNCE."""

    def __init__(self, backbone: nn.Module, queue: int = 1024, momentum: float = 0.99, temperature: float = 0.2):
        super().__init__()
        self.q = nn.Sequential(backbone, mlp_head(backbone.num_features))
        self.k = copy.deepcopy(self.q).requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue, 128), dim=1))
        self.ptr = 0

    def loss(self, v1: Tensor, v2_: Tensor) -> Tensor:
        q = F.normalize(self.q(v1), dim=1)  # (B, 128)
        with torch.no_grad():
            k = F.normalize(self.k(v2_), dim=1)
        pos = (q * k).sum(1, keepdim=True)  # (B, 1)
        neg = q @ self.queue.clone().T  # (B, K); cloned: the queue is updated before backward
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        self._enqueue(k)
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))

    @torch.no_grad()
    def _enqueue(self, k: Tensor) -> None:
        idx = (self.ptr + torch.arange(len(k))) % len(self.queue)
        self.queue[idx] = k
        self.ptr = int(idx[-1] + 1) % len(self.queue)

    @torch.no_grad()
    def after_step(self) -> None:
        for pk, pq in zip(self.k.parameters(), self.q.parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)
        for bk, bq in zip(self.k.buffers(), self.q.buffers()):  # BN running stats follow q
            bk.copy_(bq)


class SimCLR(nn.Module):
    """Minimal SimCLR: NT-Xent over the 2B views of a batch."""

    def __init__(self, backbone: nn.Module, temperature: float = 0.2):
        super().__init__()
        self.q = nn.Sequential(backbone, mlp_head(backbone.num_features))
        self.temperature = temperature

    def loss(self, v1: Tensor, v2_: Tensor) -> Tensor:
        z = F.normalize(self.q(torch.cat([v1, v2_])), dim=1)
        sim = z @ z.T / self.temperature
        sim.fill_diagonal_(-float("inf"))
        b = len(v1)
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
        return F.cross_entropy(sim, target)

    def after_step(self) -> None:
        pass


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    steps: int
    epochs: float
    seconds: float  # wall clock
    cpu_seconds: float  # process CPU time (all threads): robust to other load on the machine
    final_loss: float


def _optimizer(params, lr: float, steps: int, kind: str = "sgd") -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD + momentum (the MoCo v2 recipe) or AdamW, with cosine decay over ``steps``."""
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return opt, sched


def train_ssl(model: nn.Module, images: Tensor, epochs: float, batch_size: int, lr: float, seed: int,
              aug: str = "v2", optim: str = "sgd", probe: Callable[[], float] | None = None, probe_every: int = 0) -> TrainResult:
    """Contrastive pre-training on ``images`` (uint8, N x 3 x H x W) for ``epochs``.

    ``probe`` (e.g. test Recall@1 of the backbone) is printed every ``probe_every`` steps.
    """
    g = torch.Generator().manual_seed(seed)
    views = make_views(aug, images.shape[-1])
    steps = max(1, int(epochs * len(images) / batch_size))
    opt, sched = _optimizer([p for p in model.parameters() if p.requires_grad], lr, steps, optim)
    model.train()
    start, cpu0, loss = time.time(), time.process_time(), torch.tensor(float("nan"))
    for step in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=g)]
        loss = model.loss(views(batch, g), views(batch, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.after_step()
        if step % 20 == 0:
            print(f"  step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s wall, "
                  f"{time.process_time() - cpu0:.0f}s cpu)", flush=True)
        if probe is not None and probe_every and (step + 1) % probe_every == 0:
            print(f"  step {step + 1}: probe {probe():.3f}", flush=True)
            model.train()
    return TrainResult(steps, steps * batch_size / len(images), time.time() - start, time.process_time() - cpu0, loss.item())


def train_supervised(backbone: nn.Module, images: Tensor, labels: Tensor, epochs: float, batch_size: int, lr: float,
                     seed: int, aug: str = "v2", optim: str = "sgd") -> TrainResult:
    """Cross-entropy on the training classes with the same augmentations (upper bound)."""
    g = torch.Generator().manual_seed(seed)
    views = make_views(aug, images.shape[-1])
    classes, targets = torch.unique(labels, return_inverse=True)
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, len(classes)))
    steps = max(1, int(epochs * len(images) / batch_size))
    opt, sched = _optimizer(model.parameters(), lr, steps, optim)
    model.train()
    start, cpu0, loss = time.time(), time.process_time(), torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        loss = F.cross_entropy(model(views(images[idx], g)), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return TrainResult(steps, steps * batch_size / len(images), time.time() - start, time.process_time() - cpu0, loss.item())


# ----------------------------------------------------------------------------- main


def load(spec: SyntheticSpec) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train / test images (uint8 N x 3 x H x W) and labels, by the open class split."""
    images, labels, _ = render_arrays(spec)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    train = y < spec.train_classes
    return x[train], y[train], x[~train], y[~train]


def new_backbone(name: str, seed: int, stem_pool: bool = True, **kwargs) -> nn.Module:
    """A random-init timm model with pooled features; ``stem_pool=False`` drops a ResNet's stem
    max-pool (the usual small-image tweak: 2x finer feature maps for 2-3 px parts)."""
    torch.manual_seed(seed)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if not stem_pool and hasattr(model, "maxpool"):
        model.maxpool = nn.Identity()
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-classes", type=int, default=48)
    p.add_argument("--images-per-class", type=int, default=40)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--spec", type=json.loads, default={}, help="extra SyntheticSpec fields as JSON")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--backbone-kwargs", type=json.loads, default={},
                   help='timm.create_model kwargs, e.g. \'{"channels": [32, 64, 128, 256], "stem_width": 32}\'')
    p.add_argument("--no-stem-pool", action="store_true", help="drop the ResNet stem max-pool")
    p.add_argument("--aug", choices=("v2", "fast"), default="v2", help="per-image torchvision v2 or batched")
    p.add_argument("--optim", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--baselines", default="resnet18,resnet10t", help="random-init backbones to score ('' = none)")
    p.add_argument("--method", choices=("moco", "simclr", "none"), default="moco")
    p.add_argument("--epochs", type=float, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--queue", type=int, default=1024)
    p.add_argument("--probe-every", type=int, default=0, help="print test Recall@1 every N steps (0: never)")
    p.add_argument("--supervised", action="store_true", help="also train a supervised upper bound")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 = one Ray trial's CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    spec = SyntheticSpec(num_classes=args.num_classes, images_per_class=args.images_per_class,
                         image_size=args.image_size, **args.spec)
    t0 = time.time()
    xtr, ytr, xte, yte = load(spec)
    results: dict = {"spec": spec.to_dict(), "args": vars(args), "render_s": round(time.time() - t0, 1)}
    n_test_classes = spec.num_classes - spec.train_classes
    print(f"rendered {len(xtr)} train / {len(xte)} test images ({n_test_classes} test classes) in {results['render_s']}s")

    r = results["recall@1"] = {}
    r["chance (expected)"] = (spec.images_per_class - 1) / (len(xte) - 1)
    r["random features"] = recall_at_1(torch.randn(len(xte), 128, generator=torch.Generator().manual_seed(0)), yte)
    r["raw pixels"] = recall_at_1(xte.flatten(1).float() - xte.flatten(1).float().mean(0), yte)
    for name in filter(None, args.baselines.split(",")):
        r[f"random-init {name}"] = recall_at_1(embed(new_backbone(name, args.seed), xte), yte)
        print(f"  {name}: {r[f'random-init {name}']:.3f}", flush=True)

    if args.method != "none":
        backbone = new_backbone(args.backbone, args.seed, not args.no_stem_pool, **args.backbone_kwargs)
        feats = embed(backbone, xte)
        r[f"{args.backbone} before SSL"] = recall_at_1(feats, yte)
        results["part_recall_before_ssl"] = part_recalls(feats, yte)
        results["part_recall_raw_pixels"] = part_recalls(xte.flatten(1).float() - xte.flatten(1).float().mean(0), yte)
        model = MoCoV2(backbone, queue=args.queue) if args.method == "moco" else SimCLR(backbone)
        res = train_ssl(model, xtr, args.epochs, args.batch_size, args.lr, args.seed, args.aug, args.optim,
                        probe=lambda: recall_at_1(embed(backbone, xte), yte), probe_every=args.probe_every)
        results["ssl"] = asdict(res)
        feats = embed(backbone, xte)
        r[f"{args.backbone} after {args.method}"] = recall_at_1(feats, yte)
        results["part_recall_after_ssl"] = part_recalls(feats, yte)
        r[f"{args.backbone} after {args.method} (train classes)"] = recall_at_1(embed(backbone, xtr), ytr)
    if args.supervised:
        backbone = new_backbone(args.backbone, args.seed, not args.no_stem_pool, **args.backbone_kwargs)
        res = train_supervised(backbone, xtr, ytr, args.epochs, args.batch_size, args.lr, args.seed, args.aug, args.optim)
        results["supervised"] = asdict(res)
        r[f"{args.backbone} supervised (train classes only)"] = recall_at_1(embed(backbone, xte), yte)

    for k, v in results.items():
        if k not in ("recall@1", "spec", "args"):
            print(f"{k}: {v}")
    print("test-class Recall@1:")
    for k, v in r.items():
        print(f"  {k:45s} {100 * v:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
