"""An image the recipes draw views from: its encoded bytes, decoded once on demand (at a reduced scale
when every view of it allows: a JPEG's DCT scaling, PIL's ``Image.draft``), or a decoded tensor."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

DRAFT_SCALES = (8, 4, 2)  # the reductions a JPEG decoder does in its DCT (libjpeg's 1/2, 1/4, 1/8)


class Source:
    """One stored image: ``encoded`` JPEG/PNG bytes, or ``tensor`` (3, H, W) uint8 RGB.

    ``size`` reads only the header; ``pil(reduce)`` decodes at 1/reduce or the finest JPEG scale above
    it (once per scale, kept); ``tensor()`` is the full-size (3, H, W) uint8 image. Crops are given in
    stored-image pixels and mapped to the decoded scale by ``scale_of``.
    """

    def __init__(self, encoded: bytes | None = None, tensor: Tensor | None = None):
        if (encoded is None) == (tensor is None):
            raise ValueError("Source: give encoded bytes or a tensor")
        self.encoded, self._tensor = encoded, tensor
        self._decoded: dict[int, Image.Image] = {}
        if tensor is not None:
            self.size = (int(tensor.shape[-1]), int(tensor.shape[-2]))  # (width, height), as PIL
        else:
            with Image.open(io.BytesIO(encoded)) as header:
                self.size = header.size

    def pil(self, reduce: int = 1) -> Image.Image:
        """The RGB image decoded at a scale no smaller than 1/``reduce`` (1: full size)."""
        reduce = max((s for s in DRAFT_SCALES if s <= reduce), default=1) if self.encoded is not None else 1
        if reduce not in self._decoded:
            self._decoded[reduce] = self._decode(reduce)
        return self._decoded[reduce]

    def _decode(self, reduce: int) -> Image.Image:
        if self._tensor is not None:
            return Image.fromarray(self._tensor.permute(1, 2, 0).contiguous().numpy())
        image = Image.open(io.BytesIO(self.encoded))
        if reduce > 1:  # a no-op for formats without DCT scaling (PNG)
            width, height = self.size
            image.draft("RGB", (width // reduce, height // reduce))  # PIL picks the scale s with size // s >= these
        image = image.convert("RGB") if image.mode != "RGB" else image
        image.load()
        return image

    def scale_of(self, image: Image.Image) -> tuple[float, float]:
        """(x, y) factors from stored-image pixels to ``image``'s (a reduced decode's) pixels."""
        return image.width / self.size[0], image.height / self.size[1]

    def tensor(self) -> Tensor:
        """The full-size image: (3, H, W) uint8, a channel-first view of HWC memory (as
        ``transforms.decode``: torchvision's resizes read that layout faster)."""
        if self._tensor is None:
            self._tensor = torch.from_numpy(np.array(self.pil(1))).permute(2, 0, 1)
        return self._tensor


def as_source(image: "Tensor | Source") -> Source:
    return image if isinstance(image, Source) else Source(tensor=image)


def to_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image -> (3, H, W) uint8 tensor (one copy: HWC -> CHW)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))


def draft_reduction(sides, out_size: int) -> int:
    """The largest JPEG reduction (1, 2, 4, 8) that keeps every region a view resizes (``sides``: each
    region's shorter side in stored pixels) at least ``out_size`` pixels: no view is then upsampled
    where the full decode would have been downsampled."""
    smallest = min(sides) if len(sides) else 0
    return max((s for s in (1, *DRAFT_SCALES) if smallest >= s * out_size), default=1)
