"""Plain-PyTorch training and evaluation loops (no Ray): used by trial.py, benchmarks and tests.

Batches arrive as dicts of CPU tensors from any iterable (Ray Data shards in a trial, a
list in tests); images are uint8 (B, 3, H, W) and are normalised here, on the device.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fgray.config import ExperimentConfig, TrainConfig
from fgray.eval import retrieval_metrics
from fgray.methods import create_method
from fgray.methods.base import Method
from fgray.models import build_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_KEYS = ("view1", "view2", "image")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: the trial fails with this message instead of training on garbage."""


def build_method(experiment: ExperimentConfig) -> Method:
    """The experiment's method around a freshly built timm backbone (weights: ``backbone.pretrained``)."""
    backbone = build_backbone(experiment.backbone.name, experiment.backbone.pretrained,
                              image_size=experiment.data.image_size,
                              drop_path_rate=experiment.backbone.drop_path_rate,
                              model_kwargs=experiment.backbone.model_kwargs)
    return create_method(experiment.method, backbone)


def unwrap(model: nn.Module) -> Method:
    """The Method inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def to_device(batch: dict, device: torch.device) -> dict[str, Tensor]:
    """Move tensors to ``device``; uint8 image tensors become normalised float (B, 3, H, W)."""
    out = {}
    for key, value in batch.items():
        if not isinstance(value, Tensor):
            value = torch.as_tensor(np.asarray(value)) if isinstance(value, np.ndarray) else value
        if not isinstance(value, Tensor):
            continue  # strings (image ids) stay on the host
        value = value.to(device, non_blocking=True)
        if key in IMAGE_KEYS and value.dtype == torch.uint8:
            value = normalize_images(value)
        out[key] = value
    return out


def normalize_images(images: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def build_optimizer(param_groups: list[dict], cfg: TrainConfig, world_size: int = 1) -> torch.optim.Optimizer:
    lr = cfg.lr * cfg.batch_size * world_size / 256 if cfg.scale_lr else cfg.lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step LR schedule from torch.optim.lr_scheduler: linear warm-up, then cosine/step/constant."""
    sched = torch.optim.lr_scheduler
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if cfg.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    elif cfg.schedule == "step":  # x0.1 at 60% and 80% of training
        main = sched.MultiStepLR(optimizer, milestones=[int(0.6 * total) - warmup, int(0.8 * total) - warmup])
    else:
        main = sched.ConstantLR(optimizer, factor=1.0)
    if warmup == 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked (``on``) or available (``auto``); a no-op on CPU."""
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@dataclass
class EpochStats:
    losses: dict[str, float]  # mean of each loss part over the epoch
    steps: int
    images_per_second: float
    data_wait_fraction: float  # share of the epoch spent waiting for the next batch


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    *,
    epoch: int,
    epochs: int,
    steps_per_epoch: int,
    amp: str = "auto",
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochStats:
    """One pass over ``batches`` (at most ``steps_per_epoch`` steps); ``epoch`` is 0-based."""
    model.train()
    method = unwrap(model)
    sums: dict[str, float] = defaultdict(float)
    steps = images = 0
    wait = 0.0
    start = time.perf_counter()
    iterator: Iterator[dict] = iter(batches)
    while steps < steps_per_epoch:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        batch = to_device(batch, device)
        with autocast_context(device, amp):
            out = model(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            parts = {k: float(v) for k, v in out.items() if k != "loss"}
            raise NonFiniteLossError(f"non-finite loss {float(loss)} at epoch {epoch + 1} step {steps + 1}: {parts}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            _clip(method, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            _clip(method, grad_clip)
            optimizer.step()
        scheduler.step()
        steps += 1
        images += batch["view1"].shape[0]
        method.after_step(min(1.0, (epoch * steps_per_epoch + steps) / (epochs * steps_per_epoch)))
        for key, value in out.items():
            sums[key] += float(value.detach())
    elapsed = max(time.perf_counter() - start, 1e-9)
    return EpochStats(
        losses={k: v / max(steps, 1) for k, v in sums.items()},
        steps=steps,
        images_per_second=images / elapsed,
        data_wait_fraction=wait / elapsed,
    )


def _clip(method: Method, grad_clip: float | None) -> None:
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(method.parameters(), grad_clip)


@torch.no_grad()
def extract_embeddings(method: Method, batches: Iterable[dict], device: torch.device,
                       amp: str = "off") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed every batch (key ``image``): returns (embeddings (N, D) float32, labels (N,), image ids (N,))."""
    was_training = method.training
    method.eval()
    embeddings, labels, ids = [], [], []
    for batch in batches:
        images = to_device({"image": batch["image"]}, device)["image"]
        with autocast_context(device, amp):
            emb = method.embed(images)
        embeddings.append(emb.float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        ids.append(np.asarray(batch["image_id"]).astype(str))
    method.train(was_training)
    if not embeddings:
        raise ValueError("no images to evaluate")
    return np.concatenate(embeddings), np.concatenate(labels), np.concatenate(ids)


def evaluate(method: Method, batches: Iterable[dict], device: torch.device, ks: tuple[int, ...],
             prefix: str = "val/") -> dict[str, float]:
    """Leave-one-out retrieval metrics of ``method.embed`` over ``batches``, keys prefixed."""
    embeddings, labels, _ = extract_embeddings(method, batches, device)
    metrics = retrieval_metrics(embeddings, labels, ks=ks)
    return {f"{prefix}{k}": v for k, v in metrics.items() if not math.isnan(v)}
