"""The random draws of a MoCo v2 view, made before any pixel is touched: the same torch calls, in the
same order, as torchvision v2's ``Compose`` of ``fgray.data.views.transforms.moco_v2_augmentation``.

A view's draws from torch's global CPU generator, which the view actor seeds per image and epoch
(``inputs.image_seed``), so an image's parameters are the reference's parameters for that seed:
the fast CPU path (``moco``) and the trainer's device (``deferred``) only apply them differently.
Drawing first also lets the decoder know every crop before it decodes (``source``: JPEG draft).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect range
# A deferred view's colour ops as one float32 row (``ColourOps.row``), column by column:
# applied, order (4: torchvision's fn_idx, 0 brightness, 1 contrast, 2 saturation, 3 hue),
# factors (4, neutral when the jitter has none), grey, blur, sigma (px).
OPS_WIDTH = 12


@dataclass(frozen=True)
class Crop:
    """A crop of the stored image, in its pixels (RandomResizedCrop's top, left, height, width)."""

    top: int
    left: int
    height: int
    width: int


def crop_params(height: int, width: int, scale: tuple[float, float], ratio=RATIO) -> Crop:
    """torchvision v2 ``RandomResizedCrop.make_params``: the same draws, the same fallback."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return Crop(top, left, h, w)
    in_ratio = width / height  # fallback: the central crop of the nearest allowed aspect
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return Crop((height - h) // 2, (width - w) // 2, h, w)


def applied(p: float) -> bool:
    """RandomApply's / a random transform's coin: applied unless ``torch.rand(1) >= p``."""
    return not bool(torch.rand(1) >= p)


def _factor_range(strength: float, centre: float, floor: bool = True) -> tuple[float, float] | None:
    """ColorJitter's ``_check_input``: [centre - s, centre + s] (clipped at 0), None when it is a point."""
    low, high = centre - strength, centre + strength
    low = max(low, 0.0) if floor else low
    return None if low == high == centre else (float(low), float(high))


@dataclass(frozen=True)
class ColourOps:
    """A view's colour and blur draws: ColorJitter (when ``jitter``) in ``order`` with its factors
    (None: that op is off), greyscale, Gaussian blur of standard deviation ``sigma`` px (None: none)."""

    jitter: bool = False
    order: tuple[int, ...] = (0, 1, 2, 3)
    factors: tuple[float | None, ...] = (None, None, None, None)  # brightness, contrast, saturation, hue
    grey: bool = False
    sigma: float | None = None

    @property
    def colour(self) -> bool:
        """Whether any pixel value changes (jitter with a factor, or greyscale)."""
        return self.grey or (self.jitter and any(f is not None for f in self.factors))

    def row(self) -> np.ndarray:
        """This view's ops as ``OPS_WIDTH`` float32 numbers (see OPS_WIDTH)."""
        neutral = (1.0, 1.0, 1.0, 0.0)
        factors = [n if f is None else f for f, n in zip(self.factors, neutral)]
        return np.array([float(self.jitter), *self.order, *factors, float(self.grey),
                         float(self.sigma is not None), self.sigma or 0.0], dtype=np.float32)


@dataclass(frozen=True)
class MocoDraw:
    """Everything random about one MoCo v2 view."""

    crop: Crop
    ops: ColourOps
    flip: bool


def draw_moco(height: int, width: int, scale, jitter: float, p_jitter: float, p_gray: float, p_blur: float,
              sigma: tuple[float, float]) -> MocoDraw:
    """One view's draws, in ``moco_v2_augmentation``'s order: crop, jitter coin (then randperm(4) and
    the brightness, contrast, saturation, hue factors that exist), grey coin, blur coin (then sigma),
    flip coin."""
    crop = crop_params(height, width, tuple(scale))
    jittered, order, factors = applied(p_jitter), (0, 1, 2, 3), (None, None, None, None)
    if jittered:
        order = tuple(int(i) for i in torch.randperm(4))
        ranges = [_factor_range(jitter, 1.0), _factor_range(jitter, 1.0), _factor_range(jitter, 1.0),
                  _factor_range(jitter / 4, 0.0, floor=False)]
        factors = tuple(None if r is None else float(torch.empty(1).uniform_(r[0], r[1]).item()) for r in ranges)
    grey = applied(p_gray)
    blurred = applied(p_blur)
    drawn_sigma = float(torch.empty(1).uniform_(sigma[0], sigma[1]).item()) if blurred else None
    flip = applied(0.5)
    return MocoDraw(crop, ColourOps(jittered, order, factors, grey, drawn_sigma), flip)
