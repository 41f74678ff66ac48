"""MoCo v2's colour jitter, greyscale and Gaussian blur on a batch of float images in [0, 1], applied
from drawn parameters (``params.ColourOps`` rows, one per image) with Kornia's functional ops: what the
trainer's device does with deferred views (``deferred``). The view workers' own rendering of the
same ops is ``worker_colour`` (a colour lookup table in PIL), tested equal to this.

Which images an op touches is known on the host (the rows are numpy), so the device is indexed with
integer tensors: no boolean mask, no host sync, the host stays a step ahead.

torchvision's ColorJitter order (``fn_idx``): 0 brightness, 1 contrast, 2 saturation, 3 hue.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_brightness_accumulative, adjust_hue, adjust_saturation_with_gray_subtraction
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from torch import Tensor

NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # the factor of each op that leaves an image as it is


def brightness(x: Tensor, factor: Tensor, mean: Tensor | None = None) -> Tensor:
    return adjust_brightness_accumulative(x, factor)  # x * factor, clamped (torchvision's)


def contrast(x: Tensor, factor: Tensor, mean: Tensor | None = None) -> Tensor:
    """Blend with the mean of the greyscale image (torchvision's), or with ``mean`` (B,) when given:
    a lattice of colours is not the image whose mean the op needs."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1)) if mean is None else mean
    factor, mean = factor.view(-1, 1, 1, 1), mean.view(-1, 1, 1, 1).to(x.dtype)
    return (x * factor + mean * (1 - factor)).clamp(0, 1)


def saturation(x: Tensor, factor: Tensor, mean: Tensor | None = None) -> Tensor:
    return adjust_saturation_with_gray_subtraction(x, factor)  # blend with the greyscale pixel


def hue(x: Tensor, factor: Tensor, mean: Tensor | None = None) -> Tensor:
    return adjust_hue(x, factor * (2 * math.pi))  # torchvision's turns -> Kornia's radians


OPS = (brightness, contrast, saturation, hue)


def _rows_on(x: Tensor, rows: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows)).to(x.device, non_blocking=True)


def apply_rows(x: Tensor, rows: np.ndarray, blur_kernel: int | None = None, means: np.ndarray | None = None,
               start: int = 0, upto: int = 4) -> Tensor:
    """x (B, 3, H, W) float in [0, 1] -> the same after each image's jitter (in its order), greyscale
    and (``blur_kernel``: odd side) Gaussian blur. ``rows`` (B, OPS_WIDTH) numpy; ``means`` (B,): the
    contrast op's image means (default: each image's own); ``start``, ``upto``: only the ops at order
    positions start..upto-1, and greyscale and blur only when ``upto`` is 4 (a chain split at its
    contrast op, whose mean comes from another image)."""
    rows = np.asarray(rows, dtype=np.float32).reshape(len(x), -1)
    jittered, order, factors = rows[:, 0] > 0.5, rows[:, 1:5].astype(np.int64), rows[:, 5:9]
    x = x.clone()
    for position in range(start, upto):
        for op, fn in enumerate(OPS):
            chosen = np.flatnonzero(jittered & (order[:, position] == op) & (factors[:, op] != NEUTRAL[op]))
            if not len(chosen):
                continue
            index = _rows_on(x, chosen)
            mean = None if means is None or op != 1 else _rows_on(x, means[chosen].astype(np.float32))
            x[index] = fn(x[index], _rows_on(x, factors[chosen, op]).to(x.dtype), mean)
    if upto < 4:
        return x
    grey = np.flatnonzero(rows[:, 9] > 0.5)
    if len(grey):
        index = _rows_on(x, grey)
        x[index] = rgb_to_grayscale(x[index]).expand(-1, 3, -1, -1)
    blurred = np.flatnonzero(rows[:, 10] > 0.5) if blur_kernel else []
    if len(blurred):
        index = _rows_on(x, blurred)
        kernel = get_gaussian_kernel1d(blur_kernel, _rows_on(x, rows[blurred, 11:12]).to(x.dtype))
        # Taps below 1e-30 of the whole are zero here: a small sigma's far taps are denormal floats, which
        # cost a CPU ~10x per multiply (torchvision's 23-tap blur at sigma 0.5: 59 ms against 10 at 2).
        kernel = kernel.masked_fill(kernel < 1e-30, 0.0)
        x[index] = filter2d_separable(x[index], kernel, kernel, border_type="reflect")
    return x
