"""Plain-PyTorch training and evaluation loops (no Ray): used by trial.py, benchmarks and tests.

Batches arrive as dicts of CPU tensors or numpy arrays from any iterable (a trial's view workers,
a list in tests); images (any uint8 array shaped (..., 3, H, W)) are normalised here, on
the device. A method reads only the keys its config declares (``DeclaredBatch``); its stages
(``cfg.stages``) are run by ``fgray.stages``.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fgray.config import ExperimentConfig, TrainConfig
from fgray.data.inputs import DEFERRED_SUFFIX, ENCODED_KEY, DatasetFacts
from fgray.eval import retrieval_metrics
from fgray.methods import create_method
from fgray.methods.base import Method
from fgray.methods.configs import Stage
from fgray.models import build_backbone
from fgray.optimizers import CombinedOptimizer, make_optimizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: the trial fails with this message instead of training on garbage."""


def build_method(experiment: ExperimentConfig, facts: DatasetFacts) -> Method:
    """The experiment's method around a freshly built timm backbone (weights: ``backbone.pretrained``)."""
    backbone = build_backbone(experiment.backbone.name, experiment.backbone.pretrained,
                              image_size=experiment.data.image_size,
                              drop_path_rate=experiment.backbone.drop_path_rate,
                              model_kwargs=experiment.backbone.model_kwargs)
    return create_method(experiment.method, backbone, facts)


class UndeclaredInputError(KeyError):
    """A method read a batch key its config's ``inputs`` does not declare."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class DeclaredBatch(dict):
    """A training batch that names the method and its declared keys when an undeclared key is read."""

    def __init__(self, values: dict, method: str, declared: tuple[str, ...]):
        super().__init__(values)
        self.method, self.declared = method, declared

    def __missing__(self, key):
        raise UndeclaredInputError(f"method {self.method!r} read batch key {key!r}, which its config does "
                                   f"not declare in inputs (declared: {', '.join(self.declared) or 'none'})")

    def get(self, key, default=None):
        return self[key] if key in self or key not in self.declared else default


def unwrap(model: nn.Module) -> Method:
    """The Method inside torch.compile's and DDP's wrappers (or the model itself)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def place_method(method: Method, device: torch.device, train: TrainConfig) -> Method:
    """Move ``method`` to ``device``, its convolution weights channels-last when ``train.channels_last``
    (a conv with channels-last weights returns channels-last activations, so the whole CNN follows:
    cuDNN's tensor-core kernels and oneDNN's CPU kernels both read NHWC); on CUDA, cuDNN may benchmark
    its algorithms unless ``train.deterministic``."""
    method = method.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not train.deterministic  # a trial's input sizes are fixed
    if train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method


def to_device(batch: dict, device: torch.device) -> dict:
    """Move arrays to ``device``; uint8 images (..., 3, H, W) become normalised float, after their
    deferred colour ops and blur where the batch carries them (``<key>@ops``: views finished on the
    trainer's device, ``data.views_on``; the rows are consumed here); strings (image ids) stay on the
    host as numpy arrays. A batch of encoded images (``@encoded``: ``data.decode_on``) is decoded here
    first, its views cut from the regions their workers drew (``<key>@crop``)."""
    batch = _decoded(batch, device)
    rows = _deferred(batch)
    out = {}
    for key, value in batch.items():
        if key.endswith(DEFERRED_SUFFIX):
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            value = _host_tensor(value, device)
        if not isinstance(value, Tensor):
            out[key] = value
            continue
        value = value.to(device, non_blocking=True)
        if is_image(value):
            value = normalize_images(value, rows.get(key))
        out[key] = value
    return out


def _host_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A tensor of ``array`` on the host. Ray Data hands its batches over as read-only views of Arrow
    buffers (the object store's memory), which a tensor must not alias where it reaches the method as
    it is (a CPU trainer): copied there. On an accelerator the tensor is only the source of the copy
    to the device, so it aliases the buffer (torch warns about any read-only array: not here)."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    if torch.device(device).type == "cpu":
        return torch.from_numpy(array.copy())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _decoded(batch: dict, device: torch.device) -> dict:
    if ENCODED_KEY not in batch:
        return batch
    from fgray.data.views.trainer_decode import decode_views  # torchvision.io, imported by trainers that decode only

    return decode_views(batch, device)


def _deferred(batch: dict) -> dict:
    if not any(key.endswith(DEFERRED_SUFFIX) for key in batch):
        return {}
    from fgray.data.views.deferred import deferred_rows  # Kornia, imported by trainers that defer only

    return deferred_rows(batch)


def is_image(value: Tensor) -> bool:
    """uint8 with 3 channels third from last: (B, 3, H, W) views or (B, M, 3, H, W) crops."""
    return value.dtype == torch.uint8 and value.ndim >= 4 and value.shape[-3] == 3


def normalize_images(images: Tensor, deferred: np.ndarray | None = None) -> Tensor:
    """uint8 (..., 3, H, W) -> float, ImageNet mean/std per channel; ``deferred`` (B, OPS_WIDTH): the
    views' colour ops and blur, applied first (``fgray.data.views.deferred``)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    if deferred is None:
        return (images.float() / 255.0 - mean) / std
    from fgray.data.views.deferred import finish

    return (finish(images, deferred) - mean) / std


def build_optimizer(param_groups: list[dict], cfg: TrainConfig, world_size: int = 1,
                    stage: Stage | None = None) -> torch.optim.Optimizer:
    """The stage's optimiser (default ``train.optimizer`` / ``train.lr``); a group's ``lr_scale``
    multiplies the base rate; other group keys (name, fixed_lr) stay in the optimiser's groups.
    Groups the stage gives optimisers of their own (``stage.group_optimizers``) get them, all
    stepped as one ``CombinedOptimizer`` (the stage's own groups first)."""
    lr = stage.lr if stage is not None and stage.lr is not None else cfg.lr
    lr = lr * cfg.batch_size * world_size / 256 if cfg.scale_lr else lr
    groups = [{**g, "lr": lr * g.get("lr_scale", 1.0)} for g in param_groups]
    kind = stage.optimizer if stage is not None and stage.optimizer else cfg.optimizer
    own = {o.group: o for o in (stage.group_optimizers if stage is not None else ())}
    shared = [g for g in groups if g.get("name") not in own]
    parts = [make_optimizer(kind, shared, lr, cfg.momentum, cfg.weight_decay)] if shared else []
    for group in (g for g in groups if g.get("name") in own):
        spec = own[group["name"]]
        rate = spec.lr * group.get("lr_scale", 1.0)
        parts.append(make_optimizer(spec.optimizer, [{**group, "lr": rate}], rate, cfg.momentum, spec.weight_decay))
    return parts[0] if len(parts) == 1 else CombinedOptimizer(parts)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    epochs: int | None = None):
    """Per-step LR schedule from torch.optim.lr_scheduler over ``epochs`` (default ``train.epochs``):
    linear warm-up, then cosine/step/constant."""
    sched = torch.optim.lr_scheduler
    total = max(1, (epochs or cfg.epochs) * steps_per_epoch)
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


def use_deterministic_kernels(on: bool = True) -> None:
    """Deterministic CUDA kernels for ``train.deterministic`` (off: torch's defaults again, as a
    reused trial process must); what stays non-deterministic on a GPU otherwise is atomics-based
    reductions (scatter/index_add backward, some convolution backward algorithms)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False  # place_method turns it on for a non-deterministic GPU trial
    torch.backends.cudnn.deterministic = on


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
    """One pass over ``batches`` (at most ``steps_per_epoch`` steps); ``epoch`` is 0-based.

    Nothing here waits for the device inside the epoch except the finiteness check of the previous
    step's loss, made once this step is queued: the host stays a step ahead of a GPU (loss sums
    stay on the device until the epoch ends). A non-finite loss stops the epoch one step later than
    an immediate check would, with its own step number; no checkpoint follows it.
    """
    model.train()
    method = unwrap(model)
    declared = method.cfg.inputs.keys
    sums: dict[str, Tensor] = {}
    previous: tuple[int, dict[str, Tensor]] | None = None
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
        batch = DeclaredBatch(to_device(batch, device), method.name, declared)
        with autocast_context(device, amp):
            out = model(batch)
        loss = out["loss"]
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
        _hold_fixed_lrs(optimizer)
        steps += 1
        images += len(next(iter(batch.values())))
        method.after_step(min(1.0, (epoch * steps_per_epoch + steps) / (epochs * steps_per_epoch)))
        if previous is not None:
            _check_finite(*previous, epoch)
        previous = (steps, {k: v.detach() for k, v in out.items()})
        for key, value in previous[1].items():
            sums[key] = sums[key] + value.double() if key in sums else value.double()
    if previous is not None:
        _check_finite(*previous, epoch)
    losses = {k: float(v) / steps for k, v in sums.items()}
    elapsed = max(time.perf_counter() - start, 1e-9)
    return EpochStats(
        losses=losses,
        steps=steps,
        images_per_second=images / elapsed,
        data_wait_fraction=wait / elapsed,
    )


def _check_finite(step: int, out: dict[str, Tensor], epoch: int) -> None:
    loss = out["loss"]
    if not torch.isfinite(loss):
        parts = {k: float(v) for k, v in out.items() if k != "loss"}
        raise NonFiniteLossError(f"non-finite loss {float(loss)} at epoch {epoch + 1} step {step}: {parts}")


def _hold_fixed_lrs(optimizer: torch.optim.Optimizer) -> None:
    # A group marked fixed_lr (SimSiam's predictor) keeps its initial rate whatever the schedule does.
    for group in optimizer.param_groups:
        if group.get("fixed_lr"):
            group["lr"] = group["initial_lr"]


def _clip(method: Method, grad_clip: float | None) -> None:
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(method.parameters(), grad_clip)


def inference_embed(method: Method, device: torch.device, experiment: ExperimentConfig) -> Callable[[Tensor], Tensor]:
    """``method.embed`` as evaluation runs it: on ``device`` in eval mode, placed as for training
    (``place_method``), under ``eval.amp``'s autocast; normalised images -> float32 embeddings."""
    method = place_method(method, device, experiment.train).eval()

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        with autocast_context(device, experiment.eval.amp):
            return method.embed(images).float()

    return embed


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
             prefix: str = "val/", amp: str = "off") -> dict[str, float]:
    """Leave-one-out retrieval metrics of ``method.embed`` over ``batches``, keys prefixed."""
    embeddings, labels, _ = extract_embeddings(method, batches, device, amp)
    metrics = retrieval_metrics(embeddings, labels, ks=ks)
    return {f"{prefix}{k}": v for k, v in metrics.items() if not math.isnan(v)}
