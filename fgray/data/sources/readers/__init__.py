"""Readers of dataset layouts as the datasets ship them: a folder in, :class:`Record` rows out.

Every reader is registered by its dataset name (the names of ``fgray.data.protocols.DATASETS``)
and returns records with

- ``label``: dense, 0-based, in the dataset's official class order (CUB class 1 -> label 0);
- ``image_id``: ``"<dataset>/<path of the image relative to the root>"``;
- ``split``: the official split (``train`` / ``test``, In-Shop ``train`` / ``query`` /
  ``gallery``); where a dataset ships a separate validation list (Aircraft, Flowers-102) it
  belongs to ``train`` (the official trainval);
- ``bbox``: ``(x1, y1, x2, y2)`` in pixel-edge coordinates of the original image
  (see :mod:`fgray.data.sources.readers.common`), ``None`` where the dataset has none.

``root`` may be a local folder or a ``s3://``/``gs://`` URI (pyarrow filesystems). A missing
or malformed file raises :class:`DatasetFormatError` whose message is one line.
"""
from __future__ import annotations

from collections.abc import Callable

from fgray.data.sources.readers.common import DatasetFormatError, exists, normalize_root
from fgray.data.schema import Record

Reader = Callable[[str], "list[Record]"]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Decorator: ``@register_reader("cub200")`` makes ``read_layout("cub200", root)`` use it."""

    def deco(fn: Reader) -> Reader:
        if name in READERS and READERS[name] is not fn:
            raise ValueError(f"reader {name!r} registered twice")
        READERS[name] = fn
        return fn

    return deco


def read_layout(name: str, root: str) -> list[Record]:
    """Records of the dataset ``name`` stored at ``root`` (unknown name: ``KeyError``)."""
    if name not in READERS:
        raise KeyError(f"unknown dataset {name!r}; readers: {', '.join(sorted(READERS))}")
    root = normalize_root(root)
    if not exists(root):
        raise DatasetFormatError(root, "no such file or folder; expected the dataset's root folder")
    records = READERS[name](root)
    if not records:
        raise DatasetFormatError(root, f"no images found in the {name} layout")
    seen: set[str] = set()
    for r in records:
        if r.image_id in seen:
            raise DatasetFormatError(root, f"image {r.image_id!r} is listed more than once")
        seen.add(r.image_id)
    return records


def class_names(records: list[Record]) -> list[str]:
    """Class names indexed by label (labels without any record get ``""``)."""
    if not records:
        return []
    names = [""] * (max(r.label for r in records) + 1)
    for r in records:
        names[r.label] = r.class_name
    return names


# Importing the family modules registers their readers.
from fgray.data.sources.readers import aircraft, cars, cub, dogs, flowers, generic, products  # noqa: E402,F401

__all__ = ["READERS", "DatasetFormatError", "Reader", "class_names", "read_layout", "register_reader"]
