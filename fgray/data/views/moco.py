"""MoCo v2's views, drawn as ``transforms.moco_v2_augmentation`` draws them (``params``), rendered
the way fast image libraries do: a reduced JPEG decode where every crop allows it, one PIL resize
per crop (crop, antialiased bilinear resize and flip), the jitter and greyscale as one 3-D colour
lookup table and a separable Gaussian blur (``worker_colour``). Deferred (``defer``), a view
is only cropped and flipped here; its colour ops and blur travel as ``<key>@ops`` for the trainer.
Decoded on the trainer too (``decode``), nothing is decoded here: the views travel as their drawn
regions, ``<key>@crop``, beside the encoded image (``trainer_decode``).

Same parameters per seed as the torchvision reference, same distribution of pixels
(tests/test_view_ops.py); bench/view_path.py measures both.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from fgray.data.inputs import CROP_SUFFIX, ENCODED_KEY
from fgray.data.views.transforms import moco_blur
from fgray.data.views.worker_colour import apply_colour, blur
from fgray.data.views.params import Crop, MocoDraw, draw_moco
from fgray.data.views.registry import DEFERRED_SUFFIX, Views, register
from fgray.data.views.source import Source, as_source, draft_reduction, to_tensor
from fgray.data.views.trainer_decode import crop_row, window_row


def resized_crop(source: Source, image: Image.Image, box: tuple[float, float, float, float], size: int,
                 flip: bool = False) -> Image.Image:
    """Region ``box`` (left, top, right, bottom in stored pixels) of ``image`` (``source`` decoded at
    some scale) resized to size x size (PIL's antialiased bilinear, as torchvision's), mirrored if
    ``flip``."""
    sx, sy = source.scale_of(image)
    left, top, right, bottom = box
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=(left * sx, top * sy, right * sx, bottom * sy))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


def crop_box(crop: Crop) -> tuple[float, float, float, float]:
    return float(crop.left), float(crop.top), float(crop.left + crop.width), float(crop.top + crop.height)


class MocoView:
    """One MoCo v2 view (options: ``moco_v2_augmentation``'s)."""

    def __init__(self, size: int, scale=(0.2, 1.0), jitter: float = 0.4, p_jitter: float = 0.8,
                 p_gray: float = 0.2, p_blur: float = 0.5):
        self.size, self.scale, self.jitter = size, tuple(scale), jitter
        self.p_jitter, self.p_gray, self.p_blur = p_jitter, p_gray, p_blur
        self.kernel, self.sigma = moco_blur(size)

    def draw(self, source: Source) -> MocoDraw:
        width, height = source.size
        return draw_moco(height, width, self.scale, self.jitter, self.p_jitter, self.p_gray, self.p_blur,
                         self.sigma)

    def render(self, source: Source, image: Image.Image, draw: MocoDraw, defer: bool) -> Views:
        """{key: (3, S, S) uint8} and, deferred, {key@ops: (OPS_WIDTH,) float32} under key ``""``."""
        view = resized_crop(source, image, crop_box(draw.crop), self.size, draw.flip)
        if defer:
            return {"": to_tensor(view), DEFERRED_SUFFIX: torch.from_numpy(draw.ops.row())}
        return {"": blur(to_tensor(apply_colour(view, draw.ops)), draw.ops.sigma)}


def _views(source: Source, views: dict[str, tuple[MocoView, MocoDraw]], defer: bool,
           fixed: dict[str, tuple[float, float, float, float]] | None = None, size: int = 0) -> Views:
    """Render drawn views (and ``fixed`` regions, resized plainly) from one decode of ``source``."""
    fixed = fixed or {}
    sides = [min(d.crop.height, d.crop.width) for _, d in views.values()]
    sides += [min(b[2] - b[0], b[3] - b[1]) for b in fixed.values()]
    image = source.pil(draft_reduction(sides, size or next(iter(views.values()))[0].size))
    out: Views = {key: to_tensor(resized_crop(source, image, box, size)) for key, box in fixed.items()}
    for key, (view, draw) in views.items():
        out.update({key + suffix: value for suffix, value in view.render(source, image, draw, defer).items()})
    return out


def _regions(source: Source, views: dict[str, tuple[MocoView, MocoDraw]]) -> Views:
    """Drawn views left whole to the trainer: each one's region and ops rows, and the encoded image."""
    out: Views = {}
    for key, (view, draw) in views.items():
        out[key + CROP_SUFFIX] = torch.from_numpy(crop_row(draw.crop, view.size, draw.flip))
        out[key + DEFERRED_SUFFIX] = torch.from_numpy(draw.ops.row())
    out[ENCODED_KEY] = source.encoded  # bytes: the view worker keeps one per image for every recipe
    return out


@register("moco_pair")
class MocoPair:
    """Two independent MoCo v2 views: view1, view2 (3, S, S) uint8 (options: moco_v2_augmentation's)."""

    def __init__(self, size: int, scale=(0.2, 1.0), jitter: float = 0.4, p_jitter: float = 0.8,
                 p_gray: float = 0.2, p_blur: float = 0.5, defer: bool = False, decode: bool = False):
        self.view, self.defer, self.decode = MocoView(size, scale, jitter, p_jitter, p_gray, p_blur), defer, decode

    def __call__(self, image: "Tensor | Source", box: Tensor | None = None) -> Views:
        source = as_source(image)
        draws = {key: (self.view, self.view.draw(source)) for key in ("view1", "view2")}  # view1's first
        if self.decode and source.encoded is not None:  # a decoded tensor (tests) is cropped here
            return _regions(source, draws)
        return _views(source, draws, self.defer)


def eval_resize(width: int, height: int, size: int, crop_fraction: float) -> tuple[int, int, int, int]:
    """``transforms.eval_transform``'s geometry: its Resize of the short side to round(size /
    crop_fraction) makes the image new_w x new_h, its CenterCrop of size starts at (top, left)."""
    short = int(round(size / crop_fraction))
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    return new_w, new_h, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def eval_box(width: int, height: int, size: int, crop_fraction: float) -> tuple[float, float, float, float]:
    """The stored-image region ``transforms.eval_transform`` keeps (``eval_resize``), mapped back."""
    new_w, new_h, top, left = eval_resize(width, height, size, crop_fraction)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


@register("clean_augmented")
class CleanAugmented:
    """clean: resize + centre crop (``eval_crop`` = crop fraction); view1, view2: MoCo v2 views."""

    def __init__(self, size: int, eval_crop: float = 0.875, scale=(0.2, 1.0), jitter: float = 0.4,
                 p_jitter: float = 0.8, p_gray: float = 0.2, p_blur: float = 0.5, defer: bool = False,
                 decode: bool = False):
        self.size, self.eval_crop, self.defer, self.decode = size, eval_crop, defer, decode
        self.view = MocoView(size, scale, jitter, p_jitter, p_gray, p_blur)

    def __call__(self, image: "Tensor | Source", box: Tensor | None = None) -> Views:
        source = as_source(image)
        draws = {key: (self.view, self.view.draw(source)) for key in ("view1", "view2")}
        if self.decode and source.encoded is not None:  # the clean view: eval_transform's own resize and crop
            window = window_row(*source.size, *eval_resize(*source.size, self.size, self.eval_crop), self.size)
            return {"clean" + CROP_SUFFIX: torch.from_numpy(window), **_regions(source, draws)}
        clean = {"clean": eval_box(*source.size, self.size, self.eval_crop)}
        return _views(source, draws, self.defer, clean, self.size)
