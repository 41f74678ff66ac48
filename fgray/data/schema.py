"""The on-disk contract between dataset preparation and training: Parquet shards + a manifest.

A prepared dataset is a folder (local path or ``s3://...``) holding ``part-*.parquet`` shards
with the columns of :data:`SHARD_SCHEMA` and a ``manifest.json`` (:class:`Manifest`).
Readers of the published layouts produce :class:`Record` rows; ``prepare`` encodes them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

SHARD_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # stable key "<dataset>/<path relative to root>"; caches key on it
        ("image", pa.binary()),  # encoded image bytes (JPEG or PNG)
        ("label", pa.int64()),  # dense 0-based class index in the dataset's official class order
        ("class_name", pa.string()),
        ("bbox", pa.list_(pa.float32(), 4)),  # x1, y1, x2, y2 in pixels of the *stored* image; null if none
        ("split", pa.string()),  # the dataset's official split: train / test / query / gallery
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
MANIFEST_NAME = "manifest.json"
SHARD_GLOB = "part-*.parquet"


@dataclass(frozen=True)
class Record:
    """One image as a dataset layout describes it, before it is encoded into a shard."""

    path: str  # absolute path or URI of the image file
    image_id: str
    label: int
    class_name: str
    split: str
    bbox: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in original pixels


@dataclass
class Manifest:
    """What a prepared dataset folder holds; written last, so its presence means 'complete'."""

    dataset: str  # reader name, e.g. "cub200" or "synthetic"
    fgray_version: str
    content_hash: str  # hash of the inputs + options: same hash => preparing again does nothing
    num_images: int
    counts: dict[str, int]  # images per official split
    classes: list[str]  # class names, index = label
    shards: list[str]  # shard file names, relative to the folder
    short_side: int | None = None  # images were resized so their short side is this (None: as shipped)
    corrupt: list[dict] = field(default_factory=list)  # [{"path": ..., "error": ...}] skipped images
    extra: dict = field(default_factory=dict)  # dataset-specific facts (e.g. synthetic generator options)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls(**json.loads(text))
