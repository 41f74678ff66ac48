"""Parts several methods share (DESIGN.md §3): momentum (EMA) encoders, the negative-key queue,
MoCo's encoder pair, all_gather, Grad-CAM / attention-map helpers and the DDP ignore list."""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.losses import info_nce
from fgray.models.backbone import Backbone
from fgray.models.heads import ProjectionHead


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that receives no gradients (momentum/teacher encoders)."""
    target = copy.deepcopy(module)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online (MoCo's key-encoder update)."""
    # Only parameters: the target's BatchNorm statistics come from its own forward passes (as MoCo).
    for p_online, p_target in zip(online.parameters(), target.parameters()):
        p_target.mul_(momentum).add_(p_online.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every DDP rank along dim 0 (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered, dim=0)


class KeyQueue(nn.Module):
    """FIFO queue of L2-normalised keys (MoCo's dictionary), kept as buffers so it checkpoints.

    Every rank enqueues the same all-gathered keys, so the queue stays identical across ranks.
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("keys", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Insert (N, D) keys, overwriting the oldest; wraps around the end of the buffer."""
        keys = keys.detach().to(self.keys.dtype)[: self.size]
        start = int(self.pointer)
        positions = (torch.arange(keys.shape[0], device=keys.device) + start) % self.size
        self.keys[positions] = keys
        self.pointer.fill_((start + keys.shape[0]) % self.size)


class MoCoEncoders(nn.Module):
    """The query/key encoder pair and queue that MoCo-family methods share (MoCo v2, PP-SSL, OLDFS).

    Query encoder f = backbone + MLP head; key encoder = momentum copy of f (no gradients, so
    outside DDP's gradient bookkeeping); negatives from a FIFO queue of past keys that every DDP
    rank fills with the keys all-gathered from all ranks. ``cfg``: temperature, momentum,
    momentum_schedule, queue_size, proj_dim, hidden_dim (MocoV2Config's fields).
    """

    # Identical on every rank by construction: DDP need not broadcast them (``ddp_ignore``).
    IGNORED = ("key_backbone.", "key_head.", "queue.")

    def __init__(self, backbone: Backbone, cfg, last_bn: bool = False):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = ProjectionHead(backbone.num_features, cfg.hidden_dim, cfg.proj_dim, last_bn=last_bn)
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        self.queue = KeyQueue(cfg.proj_dim, cfg.queue_size)
        self.current_momentum = cfg.momentum

    def query(self, feature_map: Tensor) -> Tensor:
        """(B, C, h, w) query feature map -> (B, proj_dim) L2-normalised query."""
        return F.normalize(self.head(self.backbone.pool(feature_map)), dim=1)

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, proj_dim) L2-normalised keys from the momentum encoder."""
        return F.normalize(self.key_head(self.key_backbone(images)), dim=1)

    def contrastive_loss(self, query: Tensor, key: Tensor) -> Tensor:
        return info_nce(query, key, self.queue.keys.clone().detach(), self.cfg.temperature)

    @torch.no_grad()
    def enqueue(self, key: Tensor) -> None:
        self.queue.enqueue(all_gather_cat(key))

    @torch.no_grad()
    def update_momentum(self, progress: float) -> None:
        self.current_momentum = momentum_at(self.cfg.momentum, self.cfg.momentum_schedule, progress)
        momentum_update(self.backbone, self.key_backbone, self.current_momentum)
        momentum_update(self.head, self.key_head, self.current_momentum)


def momentum_at(momentum: float, schedule: str, progress: float) -> float:
    """The EMA ratio at ``progress`` in [0, 1]: constant, or cosine from ``momentum`` to 1 (BYOL)."""
    if schedule == "cosine":
        return 1 - (1 - momentum) * (torch.cos(torch.tensor(torch.pi * progress)).item() + 1) / 2
    return momentum


# ------------------------------------------------------------------------------ attention maps


def attention_map(x: Tensor, eps: float = 1e-7) -> Tensor:
    """PP-SSL Eqs. 2 / 7: max over channels of norm(relu(x)); (B, K, h, w) -> (B, 1, h, w) in [0, 1].

    norm is the paper's min-max over each channel's h x w map, (a - min) / (max - min + 1e-7):
    the paper prints the denominator as 1e-7 + max(alpha), the max of the already shifted map
    (as Grad-CAM code writes it: ``a -= a.min(); a /= 1e-7 + a.max()``). A constant map (e.g. a
    1 x 1 grid) has no range: it becomes 1 where positive, 0 where zero (a / max), not 0 everywhere.
    """
    a = F.relu(x.float()).flatten(2)  # (B, K, h*w)
    low, high = a.amin(dim=2, keepdim=True), a.amax(dim=2, keepdim=True)
    span = high - low
    normed = torch.where(span > eps, (a - low) / (span + eps), a / (high + eps))
    return normed.amax(dim=1, keepdim=True).view(x.shape[0], 1, *x.shape[2:])


def grad_cam_target(inputs: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM score ReLU(sum over channels of input * dL/dinput) (PP-SSL Eq. 6; OLDFS's eta before
    min-max): (B, C, H, W) -> (B, H, W), detached (a target, not a path for gradients)."""
    return F.relu((inputs.detach().float() * grad.detach().float()).sum(dim=1))


# ------------------------------------------------------------------------------ DDP


def ddp_ignore(module: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Tell DDP to neither synchronise nor broadcast the parameters and buffers under ``prefixes``
    (frozen teachers, momentum copies, queues: each rank keeps them identical by itself, and
    broadcasting a 65,536-key queue every step costs bandwidth for nothing). Call before wrapping."""
    prefixes = tuple(prefixes)
    named = (*module.named_parameters(), *module.named_buffers())
    names = [name for name, _ in named if name.startswith(prefixes)] if prefixes else []
    # The attribute DistributedDataParallel reads at construction (its documented helper,
    # DDP._set_params_and_buffers_to_ignore_for_model, sets exactly this).
    module._ddp_params_and_buffers_to_ignore = names
    return names
