"""Image decoding and augmentation (torchvision v2), plain functions with no Ray imports.

All outputs are uint8 (3, H, W) numpy arrays: small to move between processes; the trainer
normalises them on its device (engine.to_device).
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


def decode(encoded: bytes) -> torch.Tensor:
    """Encoded JPEG/PNG bytes -> uint8 (3, H, W) tensor (RGB)."""
    with Image.open(io.BytesIO(encoded)) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def moco_blur(image_size: int) -> tuple[int, tuple[float, float]]:
    """MoCo v2's Gaussian blur at this view side: (odd kernel side, sigma range in px)."""
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # ~10% of the side, odd
    # MoCo v2's sigma range (0.1, 2.0) is in pixels of a 224 px view; scaled with the side so a
    # small view is blurred as much relative to its content (sigma 2 at 64 px erases small parts).
    return kernel, (0.1 * image_size / 224, 2.0 * image_size / 224)


def moco_v2_augmentation(image_size: int, scale: tuple[float, float] = (0.2, 1.0), jitter: float = 0.4,
                         p_jitter: float = 0.8, p_gray: float = 0.2, p_blur: float = 0.5) -> v2.Compose:
    """MoCo v2's view augmentation: crop 0.2-1, colour jitter p=0.8, grey p=0.2, blur p=0.5, flip.

    The defaults are the published recipe, and this is the reference the training views are tested
    against: ``fgray.data.views.moco`` draws the same parameters and renders them with PIL (or
    defers the colour ops to the trainer's device). ``scale``: RandomResizedCrop's area range;
    ``jitter``: ColorJitter strength s as (s, s, s, s / 4) (MoCo v2: 0.4); ``p_*``: probabilities.
    """
    blur_kernel, sigma = moco_blur(image_size)
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True),
        v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, jitter / 4)], p=p_jitter),
        v2.RandomGrayscale(p=p_gray),
        v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=sigma)], p=p_blur),
        v2.RandomHorizontalFlip(),
    ])


def eval_transform(image_size: int, crop_fraction: float = 0.875) -> v2.Compose:
    """Resize the short side to image_size / crop_fraction, then centre-crop image_size."""
    return v2.Compose([
        v2.Resize(int(round(image_size / crop_fraction)), antialias=True),
        v2.CenterCrop(image_size),
    ])


def two_views(encoded_images, augment: v2.Compose) -> dict[str, np.ndarray]:
    """Decode each image once and draw two independent augmented views of it."""
    view1, view2 = [], []
    for encoded in encoded_images:
        image = decode(encoded)
        view1.append(augment(image))
        view2.append(augment(image))
    return {"view1": torch.stack(view1).numpy(), "view2": torch.stack(view2).numpy()}


def eval_images(encoded_images, transform: v2.Compose) -> np.ndarray:
    return torch.stack([transform(decode(encoded)) for encoded in encoded_images]).numpy()


class EvalViews:
    """Encoded rows -> deterministic eval views: ``image`` (B, 3, S, S) uint8 (resize + centre crop);
    the other columns (``label``, ``image_id``, ...) pass through. A Ray Data batch function (the
    embedding caches' actors) and the validating trainer's."""

    def __init__(self, image_size: int, crop_fraction: float):
        self.transform = eval_transform(image_size, crop_fraction)

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        return {**batch, "image": eval_images(batch["image"], self.transform)}
