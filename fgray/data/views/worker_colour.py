"""MoCo v2's colour jitter, greyscale and Gaussian blur of one view, in a view worker, the way fast image
libraries do it: jitter and greyscale are one map of colours once the contrast op's image mean is known,
so the drawn ops (``params.ColourOps``) are evaluated on a 17^3 lattice of RGB colours and the view's
pixels go through PIL's ``Color3DLUT`` (trilinear); the blur is scipy's separable Gaussian.

The ops on the lattice are numpy, not ``colour``'s Kornia ops: ~0.1 ms against ~0.5 ms of per-call
overhead for 5k colours, a view worker's biggest cost after the lookup itself (bench/README.md). They
are the same functions (tests/test_view_ops.py compares them), and both are tested against torchvision.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter
from torch import Tensor

from fgray.data.views.colour import NEUTRAL
from fgray.data.views.params import ColourOps

LATTICE = 17  # points per channel: 4913 colours; 9 gives visible hue errors, 33 costs 7x the ops
MEAN_SIDE = 28  # the contrast op's mean is taken on a copy box-reduced to about this side (it keeps the mean)
GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Kornia's and PIL's
_HSV_OFFSETS = np.array([[5.0], [3.0], [1.0]], dtype=np.float32)  # R, G, B in the HSV -> RGB formula


def _brightness(x: np.ndarray, factor: float, mean: float | None) -> np.ndarray:
    return np.clip(x * factor, 0, 1)


def _contrast(x: np.ndarray, factor: float, mean: float | None) -> np.ndarray:
    return np.clip(x * factor + (1 - factor) * mean, 0, 1)


def _saturation(x: np.ndarray, factor: float, mean: float | None) -> np.ndarray:
    return np.clip(x * factor + (1 - factor) * (GREY @ x), 0, 1)


def _hue(x: np.ndarray, factor: float, mean: float | None) -> np.ndarray:
    """HSV hue + factor turns (Kornia's / torchvision's RGB -> HSV -> RGB): value and chroma stay."""
    r, g, b = x
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1)
    hue = np.where(high == r, (g - b) / safe, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    k = (_HSV_OFFSETS + (hue + 6 * factor)) % 6  # HSV -> RGB: channel c is high - chroma * clip(min(k, 4 - k))
    return high - chroma * np.clip(np.minimum(k, 4 - k), 0, 1)


OPS = (_brightness, _contrast, _saturation, _hue)


def chain(x: np.ndarray, row: np.ndarray, mean: float | None = None, start: int = 0, upto: int = 4) -> np.ndarray:
    """Colours (3, N) float32 in [0, 1] through a view's jitter ops at order positions start..upto-1
    (``mean``: the contrast op's image mean), then (upto 4) its greyscale."""
    if row[0] > 0.5:
        order, factors = row[1:5].astype(np.int64), row[5:9]
        for position in range(start, upto):
            op = int(order[position])
            if factors[op] != NEUTRAL[op]:
                x = OPS[op](x, float(factors[op]), mean)
    if upto == 4 and row[9] > 0.5:
        x = np.repeat((GREY @ x)[None], 3, axis=0)
    return x


def _colours(image: Image.Image) -> np.ndarray:
    """(3, N) float32 in [0, 1]: an RGB image's pixels, channel by channel."""
    return np.asarray(image, dtype=np.float32).reshape(-1, 3).T / 255


def _lattice(n: int) -> np.ndarray:
    """(3, n^3): every colour of an n^3 RGB grid, red fastest (Color3DLUT's table order)."""
    grid = np.linspace(0, 1, n, dtype=np.float32)
    blue, green, red = np.meshgrid(grid, grid, grid, indexing="ij")
    return np.stack([red.ravel(), green.ravel(), blue.ravel()])


_GRID = _lattice(LATTICE)


def apply_colour(image: Image.Image, ops: ColourOps) -> Image.Image:
    """The view's jitter and greyscale (not its blur: ``blur``) on an RGB PIL image."""
    if not ops.colour:
        return image
    if ops.grey and not (ops.jitter and any(f is not None for f in ops.factors)):
        return image.convert("L").convert("RGB")  # ITU-R 601 weights, as torchvision's
    row = ops.row()
    count = _GRID.shape[1]
    small = image.width * image.height <= count  # a view with fewer pixels than the lattice: its own
    points = _colours(image) if small else _GRID
    count = points.shape[1]
    order, factors = row[1:5].astype(int).tolist(), row[5:9]
    split = order.index(1) if row[0] > 0.5 and factors[1] != NEUTRAL[1] else 4
    mean = None
    if split < 4:  # the ops before contrast, on the colours and on a box-reduced copy, at once
        reduced = _colours(image.reduce(max(1, min(image.size) // MEAN_SIDE)))
        both = chain(np.concatenate([points, reduced], axis=1), row, upto=split)
        points, mean = both[:, :count], float((GREY @ both[:, count:]).mean())
    out = chain(points, row, mean, start=min(split, 4)).T  # (N, 3): a pixel's, or a table entry's, R, G, B
    if small:
        return Image.fromarray(np.rint(out * 255).astype(np.uint8).reshape(image.height, image.width, 3))
    return image.filter(ImageFilter.Color3DLUT(LATTICE, np.ascontiguousarray(out).reshape(-1)))


def blur(view: Tensor, sigma: float | None) -> Tensor:
    """(3, S, S) uint8 -> the same after a Gaussian blur of standard deviation ``sigma`` px: separable,
    4 sigma either side, mirrored at the border, rounded: torchvision's 23-tap kernel to within one level
    (bench/README.md: PIL's three box passes blur 0.5-1 px much less at the finest scale, at the same cost)."""
    if sigma is None:
        return view
    out = gaussian_filter(view.numpy(), (0, sigma, sigma), mode="mirror", truncate=4.0, output=np.float32)
    return torch.from_numpy(np.rint(out, out=out).astype(np.uint8))
