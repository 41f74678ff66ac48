"""OLDFS's feature-space noises (paper 002 Eqs. 3-6; spec oldfs.md §2), pure functions, and the
FIFO feature bank the low-variance score is read from.

v is the pooled feature of the clean image, (B, n). The Grad-CAM noise is small where a dimension
mattered to the contrastive loss; the low-variance noise is added on dimensions whose values vary
little across the bank. Random draws use torch's global generator (seeded per epoch by the trial).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.methods.parts import ring_write

NoiseForm = Literal["std", "var"]
BankNormalize = Literal["column", "row", "none"]


def min_max(x: Tensor, dim: int, eps: float = 1e-12) -> Tensor:
    """(x - min) / (max - min + eps) along ``dim`` (Eq. 4's normalisation)."""
    low = x.amin(dim=dim, keepdim=True)
    return (x - low) / (x.amax(dim=dim, keepdim=True) - low + eps)


def gradcam_scores(grad: Tensor, v: Tensor) -> Tensor:
    """Eqs. 3-4: eta = ReLU(dL_C/dv * v), min-max over each sample's n dimensions: (B, n) in [0, 1].
    ``grad`` is dL_C/dv (taken w.r.t. v alone); the score is detached (a weight, not a path)."""
    return min_max(F.relu(grad.detach().float() * v.detach().float()), dim=1)


def scaled_noise(scale: Tensor, form: NoiseForm = "std") -> Tensor:
    """N(0, scale) per element: ``std``: scale is the standard deviation (the paper's "eps controls the
    standard deviation", spec §7.2); ``var``: scale is the variance (the printed N(0, eps(1 - s)))."""
    std = scale if form == "std" else scale.clamp_min(0).sqrt()
    return std * torch.randn_like(scale)


def gradcam_noise(eta_bar: Tensor, eps_g: float, form: NoiseForm = "std") -> Tensor:
    """Eq. 5: v~g_i ~ N(0, eps_g (1 - eta_bar_i)), (B, n)."""
    return scaled_noise(eps_g * (1 - eta_bar), form)


def lowvar_scores(bank: Tensor, normalize: BankNormalize = "column") -> tuple[Tensor, Tensor]:
    """The low-variance score of each of the n dimensions from the bank M (D, n): s_i = the
    (population) variance of column i after ``normalize`` (``column``: each column l2-normalised, as
    printed; ``row``: each feature l2-normalised; ``none``: raw features), and s_bar = min-max(s).
    Column-normalised, s_i <= 1/D, so kappa = 0.02 selects every dimension (spec §7.1)."""
    bank = bank.float()
    if normalize == "column":
        bank = F.normalize(bank, dim=0)
    elif normalize == "row":
        bank = F.normalize(bank, dim=1)
    s = bank.var(dim=0, unbiased=False)
    return s, min_max(s, dim=0)


def lowvar_noise(s: Tensor, s_bar: Tensor, batch: int, eps_var: float, kappa: float,
                 form: NoiseForm = "std") -> Tensor:
    """Eq. 6: v~var_i ~ N(0, eps_var (1 - s_bar_i)) where s_i < kappa, else 0; (batch, n)."""
    scale = torch.where(s < kappa, eps_var * (1 - s_bar), torch.zeros_like(s))
    return scaled_noise(scale.expand(batch, -1).contiguous(), form)


class FeatureBank(nn.Module):
    """FIFO bank M of the last ``size`` clean features (buffers, so it checkpoints): each step's
    batch replaces the oldest rows. ``rows()`` is the filled part (order does not matter: only
    per-dimension statistics are read)."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, features: Tensor) -> None:
        size = self.features.shape[0]
        features = features.detach()[-size:]  # a push larger than the bank keeps its newest rows
        ring_write(self.features, self.pointer, features)
        self.filled.copy_((self.filled + features.shape[0]).clamp_max(size))

    def rows(self) -> Tensor:
        return self.features[: int(self.filled)]
