"""Parts several methods share: momentum (EMA) encoders, the negative-key queue, all_gather."""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import Tensor, nn


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
