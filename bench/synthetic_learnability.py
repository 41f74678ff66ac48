"""Does self-supervised training learn the synthetic birds? Plain PyTorch (no Ray), CPU-sized.

For each seed, on fgray's built-in synthetic dataset with the demo's setup (sweeps/demo.yaml:
narrow resnet10t, AdamW lr 1e-3, batch 32, 6 epochs over the 18 training classes the open protocol
keeps after carving 6 validation classes, 132 steps), it trains from the seed's random init

  * MoCo v2 as fgray's (Linear-ReLU-Linear head, momentum key encoder with shuffle-BN, queue 256,
    InfoNCE from ``fgray.losses``),
  * SimSiam as fgray's, sized as sweeps/simsiam.yaml (projector, predictor, ``negative_cosine``),
  * a supervised upper bound (cross-entropy on the training classes, crop + flip views),

and reports test-class Recall@1 (leave-one-out, cosine, whole 64 px image, as fgray's test
evaluation) of each next to the same seed's *untrained* backbone, with the paired difference
(trained - untrained) per seed: its mean +- std and its minimum.

    python bench/synthetic_learnability.py                   # 5 seeds, all three (~5-6 min on 2 cores)
    python bench/synthetic_learnability.py --methods moco    # ~2 min
    python bench/synthetic_learnability.py --methods moco --impl fgray      # fgray's own MoCo v2 code
    python bench/synthetic_learnability.py --views published --batch-size 64 --spec '{"lighting": 0.5}'
        # the demo before the fix: MoCo v2's published views, batch 64, generator lighting 0.5
    python bench/synthetic_learnability.py --view-stats --methods none     # what two views share

The SSL views are ``fgray.data.views.transforms.moco_v2_augmentation``. ``--views demo`` (default): crop
0.6-1, jitter strength 0.1 (sweeps/demo.yaml's ``method.views``); ``--views published``:
MoCo v2's recipe (crop 0.2-1, jitter 0.4); the flags override single parameters.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout
from fgray.data.protocols import assign_splits  # noqa: E402
from fgray.data.sources.synthetic import PARTS, SyntheticSpec, class_parts, render_arrays  # noqa: E402
from fgray.data.views.transforms import moco_v2_augmentation  # noqa: E402
from fgray.losses import info_nce, negative_cosine  # noqa: E402
from fgray.models.heads import ProjectionHead  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
DEMO_BACKBONE_KWARGS = {"channels": [32, 64, 128, 256], "stem_width": 16}


# ----------------------------------------------------------------------------- evaluation


def recall_at_1(features: Tensor, labels: Tensor) -> float:
    """Leave-one-out Recall@1 under cosine similarity; the query is excluded by its index."""
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-float("inf"))
    return (labels[sim.argmax(dim=1)] == labels).float().mean().item()


def part_recalls(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Diagnostic: Recall@1 where a 'hit' only needs one part to match (what do features see?)."""
    out = {}
    for name in PARTS:
        part = torch.tensor([PARTS[name].index(class_parts(int(c))[name]) for c in labels])
        out[name] = recall_at_1(features, part)
    return out


def to_input(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> ImageNet-normalised float (fgray.engine.normalize_images)."""
    return (images.float() / 255.0 - MEAN) / STD


@torch.no_grad()
def embed(backbone: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Pooled backbone features of the whole un-augmented images (eval-mode BatchNorm)."""
    was_training = backbone.training
    backbone.eval()
    out = torch.cat([backbone(to_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])
    backbone.train(was_training)
    return out


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ViewParams:
    """``moco_v2_augmentation``'s knobs (defaults: MoCo v2's published recipe)."""

    scale: tuple[float, float] = (0.2, 1.0)
    jitter: float = 0.4
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.5


# The demo's SSL views (sweeps/demo.yaml) and MoCo v2's published recipe.
VIEW_PRESETS = {"demo": ViewParams(scale=(0.6, 1.0), jitter=0.1), "published": ViewParams()}


def batch_views(aug: v2.Compose) -> Callable[[Tensor], Tensor]:
    """uint8 batch -> normalised float views, one independent draw per image (torch's global RNG)."""
    return lambda images: to_input(torch.stack([aug(img) for img in images]))


def view_stats(boxes: np.ndarray, size: int, scale, pairs_per_image: int = 20, seed: int = 0) -> dict[str, float]:
    """What two RandomResizedCrop views of one image share, over the given bird boxes.

    iou: crop-box IoU of the two views; bird_in_view: fraction of the bird box inside one view;
    bird_in_both: fraction inside both views' intersection; both_see_80: pairs where both views
    hold >= 80 % of the bird; bird_share_of_overlap: the bird box's share of the overlap area.
    """
    torch.manual_seed(seed)
    crop = v2.RandomResizedCrop(size, scale=tuple(scale))
    dummy = torch.zeros(1, size, size)

    def params() -> np.ndarray:
        p = crop.make_params([dummy])  # the same draw as the transform's (torch's global RNG)
        return np.array([p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]], dtype=float)

    def inter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])

    def area(a: np.ndarray) -> float:
        return max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])

    rows = []
    for box in boxes.astype(float):
        bird = area(box)
        for _ in range(pairs_per_image):
            a, b = params(), params()
            ab = inter(a, b)
            seen_a, seen_b = area(inter(box, a)) / bird, area(inter(box, b)) / bird
            rows.append((area(ab) / (area(a) + area(b) - area(ab)), (seen_a + seen_b) / 2,
                         area(inter(box, ab)) / bird, float(min(seen_a, seen_b) >= 0.8),
                         area(inter(box, ab)) / max(area(ab), 1e-9), bird / size**2))
    keys = ("iou", "bird_in_view", "bird_in_both", "both_see_80", "bird_share_of_overlap", "bird_box_area")
    return dict(zip(keys, np.mean(rows, axis=0).round(3).tolist()))


def colour_stats(images: Tensor, aug: v2.Compose, n: int = 400, seed: int = 0) -> dict[str, float]:
    """How far apart two views' mean colours are: of one image (same) vs of two images (other).

    same / other near 1 or above: colour no longer tells an image's views from other images'
    (the augmentation's colour change is as large as the data's colour variation)."""
    torch.manual_seed(seed)
    x = images[torch.randperm(len(images))[:n]]
    mean1 = torch.stack([aug(img).float().mean((1, 2)) for img in x]) / 255
    mean2 = torch.stack([aug(img).float().mean((1, 2)) for img in x]) / 255
    dist = torch.cdist(mean1, mean2)
    same = dist.diagonal().mean().item()
    other = (dist.sum() - dist.diagonal().sum()).item() / (n * (n - 1))
    return {"colour_same": round(same, 4), "colour_other": round(other, 4), "same/other": round(same / other, 2)}


# ----------------------------------------------------------------------------- methods


class MoCoV2(nn.Module):
    """MoCo v2 as fgray's (methods/parts.py MoCoEncoders): query = Linear-ReLU-Linear head on f(v1);
    key = momentum copy with shuffle-BN (on one process: ``shuffle_bn_splits`` random sub-batches,
    BN statistics per sub-batch); FIFO queue of negatives; InfoNCE."""

    def __init__(self, backbone: nn.Module, queue: int, momentum: float, temperature: float,
                 hidden_dim: int = 256, proj_dim: int = 128, shuffle_bn_splits: int = 4):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.num_features, hidden_dim, proj_dim, hidden_bn=False)
        self.key_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        self.momentum, self.temperature, self.splits = momentum, temperature, shuffle_bn_splits
        self.register_buffer("queue", F.normalize(torch.randn(queue, proj_dim), dim=1))
        self.ptr = 0

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        groups = max(1, min(self.splits, len(x) // 2))
        if groups == 1:
            return F.normalize(self.key_head(self.key_backbone(x)), dim=1)
        perm = torch.randperm(len(x))
        out = torch.cat([F.normalize(self.key_head(self.key_backbone(c)), dim=1) for c in x[perm].tensor_split(groups)])
        return out[torch.argsort(perm)]

    def loss(self, v1: Tensor, v2_: Tensor) -> Tensor:
        q = F.normalize(self.head(self.backbone(v1)), dim=1)
        k = self._keys(v2_)
        loss = info_nce(q, k, self.queue.clone(), self.temperature)
        idx = (self.ptr + torch.arange(len(k))) % len(self.queue)
        self.queue[idx] = k
        self.ptr = int(idx[-1] + 1) % len(self.queue)
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        for online, target in ((self.backbone, self.key_backbone), (self.head, self.key_head)):
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.mul_(self.momentum).add_(p_o.detach(), alpha=1 - self.momentum)


class SimSiam(nn.Module):
    """SimSiam as fgray's, sized as sweeps/simsiam.yaml: projector (BN, last BN without affine),
    bottleneck predictor, symmetric negative cosine with stop-gradient."""

    def __init__(self, backbone: nn.Module, hidden_dim: int = 512, proj_dim: int = 512, pred_hidden_dim: int = 128,
                 proj_layers: int = 2):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.num_features, hidden_dim, proj_dim, layers=proj_layers, last_bn=True)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, layers=2)

    def loss(self, v1: Tensor, v2_: Tensor) -> Tensor:
        z1, z2 = self.projector(self.backbone(v1)), self.projector(self.backbone(v2_))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2

    def after_step(self) -> None:
        pass


class SimCLR(nn.Module):
    """SimCLR: NT-Xent over the 2B views of a batch (BN in the head, as SimCLR)."""

    def __init__(self, backbone: nn.Module, temperature: float, hidden_dim: int = 256, proj_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.num_features, hidden_dim, proj_dim)
        self.temperature = temperature

    def loss(self, v1: Tensor, v2_: Tensor) -> Tensor:
        z = F.normalize(self.head(self.backbone(torch.cat([v1, v2_]))), dim=1)
        sim = z @ z.T / self.temperature
        sim.fill_diagonal_(-float("inf"))
        b = len(v1)
        return F.cross_entropy(sim, torch.cat([torch.arange(b, 2 * b), torch.arange(b)]))

    def after_step(self) -> None:
        pass


class Supervised(nn.Module):
    """Cross-entropy on the training classes (the upper bound); ``loss`` takes images and targets."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def loss(self, x: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(self.fc(self.backbone(x)), targets)

    def after_step(self) -> None:
        pass


# ----------------------------------------------------------------------------- training


@dataclass
class TrainLog:
    steps: int
    seconds: float
    first_loss: float  # mean of the first epoch's steps
    last_loss: float  # mean of the last epoch's steps


def train(model: nn.Module, images: Tensor, labels: Tensor | None, views: Callable[[Tensor], Tensor],
          args: argparse.Namespace, lr: float) -> TrainLog:
    """``args.epochs`` shuffled passes over ``images`` (drop_last, as a Ray Data epoch), AdamW or SGD
    with a per-step cosine schedule; two views per image (SSL) or one view + label (supervised)."""
    steps_per_epoch = len(images) // args.batch_size
    total = args.epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optim == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    model.train()
    start, losses = time.time(), []
    for _ in range(args.epochs):
        order = torch.randperm(len(images))
        for s in range(steps_per_epoch):
            idx = order[s * args.batch_size : (s + 1) * args.batch_size]
            batch = images[idx]
            if labels is None:
                loss = model.loss(views(batch), views(batch))
            else:
                loss = model.loss(views(batch), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.after_step()
            losses.append(loss.item())
    first, last = losses[:steps_per_epoch], losses[-steps_per_epoch:]
    return TrainLog(total, round(time.time() - start, 1), round(sum(first) / len(first), 3),
                    round(sum(last) / len(last), 3))


def train_fgray(method_name: str, seed: int, data: dict[str, Tensor], args: argparse.Namespace,
                aug: v2.Compose) -> tuple[float, float, TrainLog]:
    """The same run through fgray's own code: the method built from the sweep file
    (``engine.build_method``: fgray's MoCo v2 / SimSiam classes), ``build_optimizer``,
    ``build_scheduler`` and ``train_one_epoch``; only the data path (Ray) is replaced by in-memory
    batches of the same views. Returns (untrained R@1, trained R@1, log)."""
    from fgray.sweep_file import load_sweep
    from fgray.data.inputs import DatasetFacts
    from fgray.engine import build_method, build_optimizer, build_scheduler, train_one_epoch

    if method_name == "moco":
        method = {"name": "mocov2", "temperature": args.temperature, "queue_size": args.queue,
                  "momentum": args.momentum, "proj_dim": 128, "hidden_dim": args.hidden_dim,
                  "shuffle_bn_splits": args.shuffle_bn_splits}
    else:  # sized as sweeps/simsiam.yaml (and this script's SimSiam)
        method = {"name": "simsiam", "hidden_dim": 512, "proj_dim": 512, "pred_hidden_dim": 128, "proj_layers": 2}
    overrides = {"method": method, "train.seed": seed, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
                 "train.lr": args.lr if method_name == "moco" else args.simsiam_lr or args.lr,
                 "train.optimizer": args.optim, "train.weight_decay": args.weight_decay,
                 "backbone.name": args.backbone, "backbone.model_kwargs": args.backbone_kwargs,
                 "data.image_size": int(data["xtr"].shape[-1])}
    experiment = load_sweep(args.sweep, args.set).experiment(overrides)
    torch.manual_seed(seed)
    model = build_method(experiment, DatasetFacts(num_classes=1, image_size=experiment.data.image_size))

    def recall() -> float:
        model.eval()
        with torch.no_grad():
            x = data["xte"]
            feats = torch.cat([model.embed(to_input(x[i : i + 256])) for i in range(0, len(x), 256)])
        return recall_at_1(feats, data["yte"])

    before = recall()
    steps_per_epoch = len(data["xtr"]) // args.batch_size
    optimizer = build_optimizer(model.param_groups(), experiment.train)
    scheduler = build_scheduler(optimizer, experiment.train, steps_per_epoch)
    torch.manual_seed(1000 + seed)

    def batches():
        order = torch.randperm(len(data["xtr"]))
        for s in range(steps_per_epoch):
            batch = data["xtr"][order[s * args.batch_size : (s + 1) * args.batch_size]]
            yield {"view1": torch.stack([aug(img) for img in batch]), "view2": torch.stack([aug(img) for img in batch])}

    start, losses = time.time(), []
    for epoch in range(experiment.train.epochs):
        stats = train_one_epoch(model, batches(), optimizer, scheduler, torch.device("cpu"), epoch=epoch,
                                epochs=experiment.train.epochs, steps_per_epoch=steps_per_epoch, amp="off")
        losses.append(stats.losses["loss"])
    log = TrainLog(experiment.train.epochs * steps_per_epoch, round(time.time() - start, 1), round(losses[0], 3),
                   round(losses[-1], 3))
    return before, recall(), log


# ----------------------------------------------------------------------------- data


def load(spec: SyntheticSpec, val_fraction: float) -> dict[str, Tensor]:
    """The open protocol as fgray's: test = unseen classes; validation classes carved from the
    training classes (``assign_splits``, split seed 0) are left out of training."""
    images, labels, boxes = render_arrays(spec)
    ids = np.array([f"synthetic/{c:03d}/{i:04d}" for c in range(spec.num_classes)
                    for i in range(spec.images_per_class)])
    official = np.where(labels < spec.train_classes, "train", "test")
    split = assign_splits("synthetic", "open", ids, labels, official, val_fraction=val_fraction, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    train, test = np.isin(ids, split.train), np.isin(ids, split.test)
    return {"xtr": x[train], "ytr": y[train], "btr": torch.from_numpy(boxes[train]), "xte": x[test], "yte": y[test]}


def new_backbone(name: str, seed: int, kwargs: dict) -> nn.Module:
    """The seed's random-init timm model with pooled features (as fgray.models.backbone)."""
    torch.manual_seed(seed)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


# ----------------------------------------------------------------------------- main


def run_seed(seed: int, data: dict[str, Tensor], args: argparse.Namespace, vp: ViewParams) -> dict:
    size = data["xtr"].shape[-1]
    out: dict = {"seed": seed}
    untrained = new_backbone(args.backbone, seed, args.backbone_kwargs)
    out["untrained"] = recall_at_1(embed(untrained, data["xte"]), data["yte"])
    ssl_views = batch_views(moco_v2_augmentation(size, vp.scale, vp.jitter, vp.p_jitter, vp.p_gray, vp.p_blur))
    for method in args.methods:
        if args.impl == "fgray" and method in ("moco", "simsiam"):
            before, out[method], log = train_fgray(method, seed, data, args, moco_v2_augmentation(
                size, vp.scale, vp.jitter, vp.p_jitter, vp.p_gray, vp.p_blur))
            out[f"{method}_log"] = asdict(log)
            out[f"{method}_untrained"] = before  # fgray's own init of the seed (should equal "untrained")
            print(f"  seed {seed} {method:10s} R@1 {100 * out[method]:5.1f} (untrained {100 * before:5.1f}, fgray) "
                  f"loss {log.first_loss:.3f} -> {log.last_loss:.3f}, {log.steps} steps, {log.seconds:.0f}s",
                  flush=True)
            continue
        backbone = new_backbone(args.backbone, seed, args.backbone_kwargs)  # the same init as "untrained"
        torch.manual_seed(1000 + seed)  # data order and view draws
        labels = None
        if method == "moco":
            model = MoCoV2(backbone, args.queue, args.momentum, args.temperature, args.hidden_dim,
                           shuffle_bn_splits=args.shuffle_bn_splits)
            lr, views = args.lr, ssl_views
        elif method == "simsiam":
            model, lr, views = SimSiam(backbone), args.simsiam_lr or args.lr, ssl_views
        elif method == "simclr":
            model, lr, views = SimCLR(backbone, args.temperature, args.hidden_dim), args.lr, ssl_views
        else:
            classes, labels = torch.unique(data["ytr"], return_inverse=True)
            model, lr = Supervised(backbone, len(classes)), args.lr
            crop = v2.RandomResizedCrop(size, scale=tuple(args.sup_crop_scale), antialias=True)
            views = batch_views(v2.Compose([crop, v2.RandomHorizontalFlip()]))
        log = train(model, data["xtr"], labels, views, args, lr)
        feats = embed(backbone, data["xte"])
        out[method] = recall_at_1(feats, data["yte"])
        out[f"{method}_log"] = asdict(log)
        if args.parts:
            out[f"{method}_parts"] = part_recalls(feats, data["yte"])
        print(f"  seed {seed} {method:10s} R@1 {100 * out[method]:5.1f} (untrained {100 * out['untrained']:5.1f}) "
              f"loss {log.first_loss:.3f} -> {log.last_loss:.3f}, {log.steps} steps, {log.seconds:.0f}s", flush=True)
    return out


def summarise(runs: list[dict], methods: list[str]) -> list[tuple[str, str]]:
    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):5.1f} +- {100 * sd:4.1f}"

    rows = [("untrained backbone", ms([r["untrained"] for r in runs]))]
    for m in methods:
        diffs = [r[m] - r["untrained"] for r in runs]
        rows.append((f"{m} trained", ms([r[m] for r in runs])))
        rows.append((f"{m} - untrained (paired)", f"{ms(diffs)}   min {100 * min(diffs):+5.1f}   "
                                                   f"per seed {' '.join(f'{100 * d:+.1f}' for d in diffs)}"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1 (init, data order, views)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--methods", default="moco,simsiam,supervised", help="of moco, simsiam, simclr, supervised; 'none'")
    # data (the demo's synthetic dataset; --spec adds SyntheticSpec fields)
    p.add_argument("--spec", type=json.loads, default={}, help='SyntheticSpec fields as JSON, e.g. \'{"clutter": 30}\'')
    p.add_argument("--val-fraction", type=float, default=0.25, help="training classes held out (not trained on)")
    # model
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--backbone-kwargs", type=json.loads, default=DEMO_BACKBONE_KWARGS)
    p.add_argument("--hidden-dim", type=int, default=256, help="MoCo v2 / SimCLR head width (SimSiam: simsiam.yaml's)")
    # recipe (demo.yaml)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optim", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--simsiam-lr", type=float, default=None, help="SimSiam's own lr (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--queue", type=int, default=256)
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--shuffle-bn-splits", type=int, default=4, help="MoCo key encoder's BN sub-batches (1: off)")
    # SSL views: moco_v2_augmentation's parameters; --views picks a preset, the flags override it
    p.add_argument("--views", choices=tuple(VIEW_PRESETS), default="demo",
                   help="demo: the demo's SSL views; published: MoCo v2's recipe (crop 0.2-1, jitter 0.4)")
    p.add_argument("--crop-scale", type=float, nargs=2, default=None)
    p.add_argument("--jitter", type=float, default=None, help="ColorJitter strength s: (s, s, s, s/4)")
    p.add_argument("--p-jitter", type=float, default=None)
    p.add_argument("--p-gray", type=float, default=None)
    p.add_argument("--p-blur", type=float, default=None)
    p.add_argument("--sup-crop-scale", type=float, nargs=2, default=(0.2, 1.0), help="the supervised bound's crop")
    # implementation
    p.add_argument("--impl", choices=("bench", "fgray"), default="bench",
                   help="fgray: train moco/simsiam with fgray's own method classes, optimiser, schedule and "
                        "train_one_epoch (built from --sweep), in-memory batches instead of Ray")
    p.add_argument("--sweep", default=str(REPO / "sweeps" / "demo.yaml"), help="--impl fgray: the base experiment")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="--impl fgray: extra override")
    # diagnostics
    p.add_argument("--view-stats", action="store_true",
                   help="print what two SSL views share: crop IoU, bird box in both, mean-colour distances")
    p.add_argument("--parts", action="store_true", help="also record per-part Recall@1 (what features see)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = one Ray trial's CPU)")
    p.add_argument("--json", help="write per-seed results and the summary here")
    args = p.parse_args()
    args.methods = [] if args.methods == "none" else args.methods.split(",")
    torch.set_num_threads(args.threads)

    spec = SyntheticSpec(**{"num_classes": 48, "images_per_class": 40, "image_size": 64, **args.spec})
    given = {"scale": tuple(args.crop_scale) if args.crop_scale else None, "jitter": args.jitter,
             "p_jitter": args.p_jitter, "p_gray": args.p_gray, "p_blur": args.p_blur}
    vp = replace(VIEW_PRESETS[args.views], **{k: v for k, v in given.items() if v is not None})
    t0 = time.time()
    data = load(spec, args.val_fraction)
    print(f"rendered: {len(data['xtr'])} training images ({len(data['ytr'].unique())} classes), "
          f"{len(data['xte'])} test images ({len(data['yte'].unique())} classes) in {time.time() - t0:.1f}s; "
          f"chance R@1 {100 * (spec.images_per_class - 1) / (len(data['xte']) - 1):.1f} %")
    print(f"views: {vp}")
    results: dict = {"spec": spec.to_dict(), "args": vars(args), "views": asdict(vp)}
    if args.view_stats:
        results["view_stats"] = view_stats(data["btr"].numpy(), spec.image_size, vp.scale)
        results["view_stats"].update(colour_stats(data["xtr"], moco_v2_augmentation(
            spec.image_size, vp.scale, vp.jitter, vp.p_jitter, vp.p_gray, vp.p_blur)))
        print(f"two SSL views share: {results['view_stats']}")

    runs = [run_seed(s, data, args, vp) for s in range(args.first_seed, args.first_seed + args.seeds)]
    results["runs"] = runs
    rows = summarise(runs, args.methods)
    results["summary"] = dict(rows)
    print(f"\ntest-class Recall@1 (%), {args.seeds} seeds, mean +- std:")
    for name, value in rows:
        print(f"  {name:32s} {value}")
    if args.parts and args.methods:
        for m in args.methods:
            mean = {k: round(100 * statistics.mean(r[f"{m}_parts"][k] for r in runs), 1) for k in PARTS}
            print(f"  {m} per-part R@1: {mean}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
