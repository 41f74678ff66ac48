"""The trainer's side of deferred views (``data.views_on``): a batch's ``<key>@ops`` rows, drawn per
image by its view worker under the image's seed, applied to the uint8 views on the trainer's device.
Plain torch + Kornia, no Ray; ``engine.to_device`` calls it for any key that has rows, so the engine
never names a recipe or a method."""
from __future__ import annotations

import numpy as np
from torch import Tensor

from fgray.data.views.transforms import moco_blur
from fgray.data.views.colour import apply_rows
from fgray.data.views.registry import DEFERRED_SUFFIX


def deferred_rows(batch: dict) -> dict[str, np.ndarray]:
    """{image key: (B, OPS_WIDTH) float32 numpy} of the batch's deferred views (host copies: which
    images an op touches is decided here, without reading the device)."""
    return {key[:-len(DEFERRED_SUFFIX)]: np.asarray(value.cpu() if isinstance(value, Tensor) else value)
            for key, value in batch.items() if key.endswith(DEFERRED_SUFFIX)}


def finish(images: Tensor, rows: np.ndarray) -> Tensor:
    """uint8 views (B, 3, S, S) on any device -> float32 in [0, 1] after each one's jitter, greyscale
    and blur (MoCo v2's kernel for side S), on that device."""
    return apply_rows(images.float() / 255.0, rows, blur_kernel=moco_blur(images.shape[-1])[0])
