"""The view recipes without MoCo v2's colour ops, on decoded tensors (torchvision v2): one random-resized
crop + flip (+ jitter), DVA's object crop and blurred background, VAPNet's grid crops. Every random
draw comes from torch's global CPU RNG, which the view actor seeds per image and epoch."""
from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fgray.data.views.registry import Views, register
from fgray.data.views.source import Source, as_source


def _crop_flip(size: int, scale, jitter: float = 0.0) -> v2.Compose:
    """Random-resized crop + flip, then (jitter > 0) ColorJitter(jitter, jitter, jitter).

    The jitter comes last, so with jitter 0 the random draws are those of the plain crop + flip.
    """
    steps = [v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip()]
    if jitter > 0:
        steps.append(v2.ColorJitter(jitter, jitter, jitter))
    return v2.Compose(steps)


# ---------------------------------------------------------------- box-free recipes


@register("crop_flip")
class CropFlip:
    """One random-resized crop (area fraction ``scale``) + horizontal flip (+ colour jitter of
    strength ``jitter``: brightness, contrast, saturation): image (3, S, S)."""

    def __init__(self, size: int, scale=(0.2, 1.0), jitter: float = 0.0):
        self.augment = _crop_flip(size, scale, jitter)

    def __call__(self, image: "Tensor | Source", box: Tensor | None = None) -> Views:
        return {"image": self.augment(as_source(image).tensor())}


# ---------------------------------------------------------------- boxes


def crop_flip_with_box(image: Tensor, box: Tensor, size: int,
                       scale=(0.2, 1.0)) -> tuple[Tensor, Tensor]:
    """Random-resized crop + flip of ``image`` (3, H, W) with its box (4,) x1, y1, x2, y2 following.

    torchvision moves the box (crop offset, clamp to the crop, resize, mirror); a box the crop cut
    away comes back with zero width or height. Returns image (3, S, S) and box (4,) float32.
    """
    boxes = tv_tensors.BoundingBoxes(box.reshape(1, 4).float(), format="XYXY",
                                     canvas_size=tuple(image.shape[-2:]))
    out, followed = _crop_flip(size, scale)(image, boxes)
    return out, followed.as_subclass(Tensor).reshape(4)


def _clamp_box(box: Tensor, height: int, width: int) -> Tensor:
    """(4,) float32 box clipped to the image, x2 >= x1 and y2 >= y1 (an inverted box is empty)."""
    x1, y1, x2, y2 = box.float().tolist()
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return torch.tensor([x1, y1, max(x1, x2), max(y1, y2)])


def _scale_box(box: Tensor, factor: float, height: int, width: int) -> Tensor:
    """Enlarge (4,) box ``factor``-fold about its centre, then clip to the image."""
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * factor / 2
    return _clamp_box(torch.cat([centre - half, centre + half]), height, width)


def _pixels(box: Tensor) -> tuple[int, int, int, int]:
    """Continuous (4,) box -> the pixel rows/columns it covers: (top, left, bottom, right)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box.tolist())
    return y1, x1, y2, x2


def mean_blur_region(image: Tensor, region: tuple[int, int, int, int], kernel: int) -> Tensor:
    """Copy of ``image`` (3, H, W) uint8 with pixels region = (top, left, bottom, right) replaced
    by their ``kernel`` x ``kernel`` mean filter (odd kernel; windows clipped at the image border).

    Window sums from a summed-area table, so the cost does not grow with the kernel
    (two 1-D means cost 2 x kernel adds a pixel: 5 ms of an image's 8.6 at 224 px, bench/README.md).
    """
    top, left, bottom, right = region
    height, width = image.shape[-2:]
    out = image.clone()
    if bottom <= top or right <= left:
        return out
    pad = kernel // 2
    rows, cols = torch.arange(top, bottom), torch.arange(left, right)
    y0, y1 = (rows - pad).clamp(min=0), (rows + pad + 1).clamp(max=height)
    x0, x1 = (cols - pad).clamp(min=0), (cols + pad + 1).clamp(max=width)
    r0, c0 = int(y0[0]), int(x0[0])
    patch = image[:, r0:int(y1[-1]), c0:int(x1[-1])]
    # float32 holds every sum exactly up to 2^16 pixels (255 x 2^16 < 2^24), float64 beyond
    dtype = torch.float32 if patch[0].numel() <= 2**16 else torch.float64
    table = nnf.pad(patch.to(dtype).cumsum(1).cumsum(2), (1, 0, 1, 0))
    y0, y1, x0, x1 = y0 - r0, y1 - r0, x0 - c0, x1 - c0
    strips = table[:, y1] - table[:, y0]  # (3, rows, columns + 1): sums over each window's rows
    sums = strips[:, :, x1] - strips[:, :, x0]
    counts = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).to(dtype)
    out[:, top:bottom, left:right] = (sums / counts).round().clamp(0, 255).to(torch.uint8)
    return out


def object_crop(image: Tensor, box: Tensor, size: int, fill: str = "context") -> Tensor:
    """Shape-preserving crop of box (4,) from image (3, S', S'): (3, size, size) uint8.

    ``context`` (DVA spec §2.3 [guess]): the square with side = the box's longer side, centred on
    the box, cropped from the image (zeros where it leaves the image) and resized to ``size``.
    ``pad``: only the box's pixels, longer side resized to ``size``, centred on zeros.
    """
    top, left, bottom, right = _pixels(box)
    height, width = max(bottom - top, 1), max(right - left, 1)
    side = max(height, width)
    if fill == "context":
        centre_y, centre_x = (box[1] + box[3]).item() / 2, (box[0] + box[2]).item() / 2
        top, left = int(round(centre_y - side / 2)), int(round(centre_x - side / 2))
        return F.resized_crop(image, top, left, side, side, [size, size], antialias=True)
    shape = [max(1, round(height * size / side)), max(1, round(width * size / side))]
    resized = F.resized_crop(image, top, left, height, width, shape, antialias=True)
    return F.center_crop(resized, [size, size])  # pads with zeros, centred


@register("object_background")
class ObjectBackground:
    """DVA's object-perceptual views (spec dva.md §2.3) of one crop+flip draw of the image.

    Options: ``scale`` crop area range; ``box_scale`` box enlargement about its centre before
    anything (1.0: the spec finds no enlargement in the paper; DVF's x1.1 is unverified);
    ``background_max_cover`` (paper: 0.5); ``blur_kernel`` odd mean-filter side in output pixels
    (None: spec's guess, a quarter of the box's shorter side, at least 31 px per 224);
    ``object_fill`` ``context`` | ``pad`` (see :func:`object_crop`); ``min_object_side`` (px):
    a followed box thinner than this was cut away by the crop.

    Outputs: image (3, S, S); object (3, S, S); background (3, S, S) = image with the followed
    box's pixels mean-blurred; has_background () bool. has_background is decided on the stored
    image (the paper flags images offline: box area < max_cover x image area) and is False when
    the crop cut the box away; then object = the whole augmented image, background = image.
    """

    def __init__(self, size: int, scale=(0.2, 1.0), box_scale: float = 1.0,
                 background_max_cover: float = 0.5, blur_kernel: int | None = None,
                 object_fill: str = "context", min_object_side: float = 2.0):
        if object_fill not in ("context", "pad"):
            raise ValueError(f"object_background: object_fill must be context or pad, "
                             f"got {object_fill!r}")
        if blur_kernel is not None and (blur_kernel < 1 or blur_kernel % 2 == 0):
            raise ValueError(f"object_background: blur_kernel must be odd and >= 1, "
                             f"got {blur_kernel}")
        self.size, self.scale, self.box_scale = size, tuple(scale), box_scale
        self.max_cover, self.blur_kernel = background_max_cover, blur_kernel
        self.object_fill, self.min_side = object_fill, min_object_side

    def kernel(self, box: Tensor) -> int:
        """The mean filter's odd side for a followed box (4,) in output pixels."""
        if self.blur_kernel is not None:
            return self.blur_kernel
        shorter = float(min(box[2] - box[0], box[3] - box[1]))
        side = max(shorter / 4, 31 * self.size / 224)
        return int(side) // 2 * 2 + 1

    def __call__(self, image: "Tensor | Source", box: Tensor | None) -> Views:
        image = as_source(image).tensor()
        if box is None:
            raise ValueError("view recipe 'object_background' needs the image's box (bbox column)")
        height, width = image.shape[-2:]
        box = _clamp_box(torch.as_tensor(box, dtype=torch.float32), height, width)
        box = _scale_box(box, self.box_scale, height, width)
        cover = float((box[2] - box[0]) * (box[3] - box[1])) / (height * width)
        augmented, followed = crop_flip_with_box(image, box, self.size, self.scale)
        if float((followed[2:] - followed[:2]).min()) < self.min_side:  # crop removed the box
            return {"image": augmented, "object": augmented.clone(),
                    "background": augmented.clone(), "has_background": torch.tensor(False)}
        return {
            "image": augmented,
            "object": object_crop(augmented, followed, self.size, self.object_fill),
            "background": mean_blur_region(augmented, _pixels(followed), self.kernel(followed)),
            "has_background": torch.tensor(cover < self.max_cover),
        }


# ---------------------------------------------------------------- grid crops


def grid_boxes(size: float, grids=(2, 4, 8, 16)) -> Tensor:
    """Every cell of every n x n grid over a size x size image: (sum n^2, 4) float32 x1, y1, x2, y2.

    Cell (row r, column c) of the n-grid spans [c*size/n, (c+1)*size/n] x [r*size/n, (r+1)*size/n]
    (continuous pixel-edge coordinates); grids in the given order, cells row-major.
    """
    pool = []
    for n in grids:
        edges = torch.arange(n + 1, dtype=torch.float64) * size / n
        y1, x1 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
        y2, x2 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
        pool.append(torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4))
    return torch.cat(pool).float()


def crop_regions(image: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crops of image (3, H, W) uint8 at integer boxes (M, 4), each resized to size: (M, 3, S, S).

    Crop, then bilinear resize (spec vapnet.md §2 "crops them from X ... resized ... bilinear"):
    the crop's border pixels are clamped, never blended with the pixels outside the box.
    """
    crops = [F.resized_crop(image, y1, x1, y2 - y1, x2 - x1, [size, size], antialias=True)
             for x1, y1, x2, y2 in boxes.int().tolist()]
    return torch.stack(crops)


@register("grid_crops")
class GridCrops:
    """VAPNet's input sampling (spec vapnet.md §2): a crop+flip image and M grid-cell crops.

    Options: ``count`` (M, paper 4); ``grids`` (paper 2, 4, 8, 16: 340 cells); ``scale`` crop area
    range; ``sampling``: ``box`` draws M distinct cells uniformly from the pool (spec §7.4
    default), ``grid`` weights each cell by 1/n^2 so each grid is equally likely (without
    replacement); ``jitter``: colour jitter of the image (paper §4.1), before the cells are cut,
    so the crops are regions of the very input X the global map sees. Outputs: image (3, S, S);
    crops (M, 3, S, S); crop_boxes (M, 4) float32. Cell edges are rounded to whole pixels (exact
    when n divides S, e.g. 64 or 224 with the paper's grids), so each crop is exactly the pixels
    its box names. With the same seed, ``image`` is the one ``crop_flip`` of the same scale and
    jitter draws (the cells are drawn after it).
    """

    def __init__(self, size: int, count: int = 4, grids=(2, 4, 8, 16), scale=(0.2, 1.0),
                 sampling: str = "box", jitter: float = 0.0):
        self.size, self.count = size, int(count)
        self.pool = grid_boxes(size, tuple(grids)).round()
        if not 1 <= self.count <= len(self.pool):
            raise ValueError(f"grid_crops: count must be in 1..{len(self.pool)}, got {count}")
        if sampling not in ("box", "grid"):
            raise ValueError(f"grid_crops: sampling must be box or grid, got {sampling!r}")
        side = self.pool[:, 2] - self.pool[:, 0]
        self.weights = torch.ones(len(self.pool)) if sampling == "box" else (side / size) ** 2
        self.augment = _crop_flip(size, scale, jitter)

    def sample(self) -> Tensor:
        """M distinct cells of the pool: (M, 4) float32 x1, y1, x2, y2."""
        return self.pool[torch.multinomial(self.weights, self.count, replacement=False)]

    def __call__(self, image: "Tensor | Source", box: Tensor | None = None) -> Views:
        augmented = self.augment(as_source(image).tensor())
        boxes = self.sample()
        return {"image": augmented, "crops": crop_regions(augmented, boxes, self.size),
                "crop_boxes": boxes}

