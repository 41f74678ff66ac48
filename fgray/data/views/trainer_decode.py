"""Decoding on the trainer (``data.decode_on: trainer``): a recipe with deferred keys draws on its view
worker exactly as before (the same torch calls in the same order, so seeds and resumes are unchanged)
but neither decodes nor crops. Each of its keys travels as ``<key>@crop``, the region drawn (``crop_row``,
``window_row``), beside ``@encoded``, the image's stored bytes; the trainer decodes the batch on its
device (``torchvision.io.decode_jpeg``: nvJPEG, batched, on a GPU; the same call on a CPU), cuts each
view (``resized_crop``, antialiased bilinear, as PIL's resize on the worker), flips, and hands the uint8
views to the deferred colour ops (``deferred``). ``engine.to_device`` calls ``decode_views`` for any
batch with ``@encoded``, so the engine never names a recipe or a method.

Stored images that are not JPEG (the synthetic set's PNGs; ``prepare --image-format png``) decode on the
trainer's CPU one by one (``decode_image``) and are then moved: fine for small images, slow for large PNGs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from fgray.data.inputs import CROP_SUFFIX, ENCODED_KEY
from fgray.data.views.params import Crop

# A view's region as CROP_WIDTH int32 numbers, column by column: the stored-image region (top, left,
# height, width); the size it is resized to (height, width); the square window of that resize kept (top,
# left, side); flip (1: mirrored). A random-resized crop resizes its region to side x side (window 0, 0);
# the clean view resizes the whole image and keeps a centred window (eval_transform's Resize, CenterCrop).
CROP_WIDTH = 10
JPEG_MAGIC = b"\xff\xd8\xff"  # SOI and the first marker's prefix: what decode_jpeg accepts

_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def crop_row(crop: Crop, side: int, flip: bool) -> np.ndarray:
    """A random-resized crop's row: ``crop`` resized to side x side, mirrored if ``flip``."""
    return np.array([crop.top, crop.left, crop.height, crop.width, side, side, 0, 0, side, int(flip)], np.int32)


def window_row(width: int, height: int, resized_w: int, resized_h: int, top: int, left: int,
               side: int) -> np.ndarray:
    """A window's row: the whole width x height image resized to resized_w x resized_h, the side x side
    window at (top, left) of that kept."""
    return np.array([0, 0, height, width, resized_h, resized_w, top, left, side, 0], np.int32)


def decode_views(batch: dict, device: torch.device) -> dict:
    """The batch with each ``<key>@crop`` replaced by ``key``: (B, 3, S, S) uint8 on ``device``, cut from
    the ``@encoded`` images decoded there; ``@encoded`` dropped; the other keys (``<key>@ops`` among them,
    for ``engine.to_device``) as they were, in their order."""
    images = decode(batch[ENCODED_KEY], device)
    out = {}
    for key, value in batch.items():
        if key.endswith(CROP_SUFFIX):
            rows = np.asarray(value.cpu() if isinstance(value, Tensor) else value)  # host copies: no device sync
            out[key[:-len(CROP_SUFFIX)]] = render(images, rows)
        elif key != ENCODED_KEY:
            out[key] = value
    return out


def render(images: list[Tensor], rows: np.ndarray) -> Tensor:
    """Each image's view (``rows``: (B, CROP_WIDTH)): (B, 3, S, S) uint8 on the images' device. One
    resize per view (the regions differ in size); the flips as one indexed op."""
    views = []
    for image, (top, left, height, width, resized_h, resized_w, win_top, win_left, side, _) in zip(images,
                                                                                                  rows.tolist()):
        view = F.resized_crop(image, top, left, height, width, [resized_h, resized_w], antialias=True)
        views.append(view[:, win_top:win_top + side, win_left:win_left + side])
    out = torch.stack(views)
    flipped = np.flatnonzero(rows[:, 9])
    if len(flipped):  # known on the host: an integer index, no boolean mask to read back (as colour.py)
        index = torch.from_numpy(flipped).to(out.device, non_blocking=True)
        out[index] = out[index].flip(-1)
    return out


def decode(encoded, device: torch.device) -> list[Tensor]:
    """Stored images (a sequence of bytes: Ray Data's binary column as an object array) -> (3, H, W) uint8
    RGB on ``device``: the JPEGs in one batched call, any other format on the CPU."""
    from torchvision.io import ImageReadMode, decode_image

    data = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in encoded]  # writable copies
    jpeg = [i for i, item in enumerate(encoded) if bytes(item[:3]) == JPEG_MAGIC]
    images: list[Tensor | None] = [None] * len(data)
    if jpeg:
        try:
            decoded = _decode_jpegs([data[i] for i in jpeg], torch.device(device))
        except RuntimeError:  # a JPEG nvJPEG rejects (a rare encoding) would fail this batch on every retry
            decoded = [decode_image(data[i], mode=ImageReadMode.RGB).to(device, non_blocking=True) for i in jpeg]
        for i, image in zip(jpeg, decoded):
            images[i] = image
    for i in sorted(set(range(len(data))) - set(jpeg)):
        images[i] = decode_image(data[i], mode=ImageReadMode.RGB).to(device, non_blocking=True)
    return images


def _decode_jpegs(data: list[Tensor], device: torch.device) -> list[Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type != "cuda":
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    # torchvision allocates the outputs on the caller's current stream but nvJPEG's hardware decoder
    # writes them without waiting for that stream's queued work (pytorch/vision#9606, torchcodec#1634):
    # a block the last step freed, which its queued kernels still read, could be overwritten. Decoding
    # under a stream of its own takes the outputs from that stream's blocks, which only ever held earlier
    # outputs, each freed only once the caller's stream has finished with it (record_stream).
    device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
    caller = torch.cuda.current_stream(device)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    side = _SIDE_STREAMS[device]
    with torch.cuda.stream(side):
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    caller.wait_stream(side)
    for image in images:
        image.record_stream(caller)
    return images
