"""DVA's In-Context Adaptation (paper 003 Eqs. 5-6; spec dva.md §2.2) on timm ViTs.

timm fuses W_q, W_k, W_v in one ``qkv`` Linear (C -> 3C, output laid out [q | k | v]). ICA adds
bias-free rank-r bottlenecks in parallel to the chosen projections: Q = X W_q + s act(X W_down)
W_up, and likewise K or V; the attention itself stays timm's. W_down: Kaiming-uniform, W_up:
zeros, so the adapted model starts as the frozen one.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "identity": nn.Identity}
PROJECTIONS = ("q", "k", "v")


class Bottleneck(nn.Module):
    """ICA(X) = act(X W_down) W_up (Eq. 5), no biases: 2 C r parameters."""

    def __init__(self, dim: int, rank: int, activation: str = "relu"):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x)))


class AdaptedQKV(nn.Module):
    """A frozen fused ``qkv`` Linear plus ICA on its q / k / v output slices (Eq. 6)."""

    def __init__(self, qkv: nn.Linear, targets: Sequence[str], rank: int, activation: str, scale: float):
        super().__init__()
        self.qkv, self.scale = qkv, scale
        self.adapters = nn.ModuleDict({t: Bottleneck(qkv.in_features, rank, activation) for t in targets})

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.qkv(x).chunk(3, dim=-1))  # (..., C) each: q, k, v
        for i, name in enumerate(PROJECTIONS):
            if name in self.adapters:
                parts[i] = parts[i] + self.scale * self.adapters[name](x)
        return torch.cat(parts, dim=-1)


def add_ica(vit: nn.Module, targets: Sequence[str], rank: int, activation: str = "relu",
            scale: float = 1.0) -> list[nn.Parameter]:
    """Wrap every block's ``attn.qkv`` of a timm ViT; returns the adapters' parameters."""
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown or not targets:
        raise ValueError(f"ICA targets must be a non-empty subset of {PROJECTIONS}, got {list(targets)}")
    params: list[nn.Parameter] = []
    for block in vit.blocks:
        block.attn.qkv = AdaptedQKV(block.attn.qkv, targets, rank, activation, scale)
        params += list(block.attn.qkv.adapters.parameters())
    return params
