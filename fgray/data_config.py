"""The experiment's data section (DESIGN.md §2): which dataset a trial trains on, where its prepared
shards are, its splits and image size, and where its views are drawn and decoded. Part of the schema
of ``fgray.config``, which re-exports it; imports no Ray, torch or pyarrow."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fgray.node_paths import ReadPath
from fgray.validation import Strict


class SyntheticOptions(Strict):
    num_classes: int = Field(48, ge=4)  # half train (open split), half test
    images_per_class: int = Field(40, ge=2)
    seed: int = 0  # the generator's seed: the same seed always renders the same images
    # png: lossless; jpeg: quality 90, as photo datasets store theirs (what data.decode_on: trainer decodes
    # with nvJPEG on a GPU; PNGs decode on the trainer's CPU)
    image_format: Literal["png", "jpeg"] = "png"


# Prepared shards: a URI or a folder every node mounts on a cluster; the synthetic set is rendered on each node.
PREPARED = "written by `python -m fgray.data prepare ... --out s3://BUCKET/PREFIX`"


class DataConfig(Strict):
    name: str = "synthetic"  # "synthetic" or a prepared dataset's reader name (cub200, sop, ...)
    # folder of prepared shards (local or s3://); synthetic: cache folder
    root: Annotated[str | None, ReadPath(per_node=lambda data: data.name == "synthetic", how=PREPARED)] = None
    protocol: Literal["open", "closed"] = "open"  # open: disjoint test classes; closed: official image split
    image_size: int = Field(64, ge=16)  # network input side (pixels)
    # Of training classes (open) / images (closed). 0: no validation split, for sweeps of fixed rows
    # (a paper's table): every trial trains on the whole training split and its final model is tested.
    val_fraction: float = Field(0.25, ge=0, lt=1)
    split_seed: int = 0  # which training classes/images become validation
    eval_crop: float = Field(0.875, gt=0, le=1)  # eval view: resize to image_size / eval_crop, centre-crop
    synthetic: SyntheticOptions = SyntheticOptions()
    # Where a view recipe's deferrable ops (MoCo v2's jitter, greyscale, blur) run. cpu: in the view
    # workers. gpu: on the trainer's GPU, per image from the parameters its worker drew under the image's
    # seed (the workers only decode, crop and flip: a core feeds ~2x the images, bench/README.md,
    # view_path.py); refused without one. auto: gpu when the trial has a GPU. trainer: on the trainer's
    # device whatever it is (a CPU trial: tests, or spare trainer cores when the view workers bound it).
    views_on: Literal["auto", "cpu", "gpu", "trainer"] = "auto"
    # Who decodes the stored images of those recipes, when views_on finishes them on the trainer (refused
    # otherwise). worker: the view workers (PIL). trainer: the trainer's device, batched (torchvision's
    # decode_jpeg: nvJPEG on a GPU; stored PNGs decode on the trainer's CPU); the workers then only read each
    # header and draw (MoCo v2's pair: 0.2 ms a CUB image against 3.1: bench/README.md, view_path.py). Same draws.
    decode_on: Literal["worker", "trainer"] = "worker"

    @model_validator(mode="after")
    def _root_needed(self) -> "DataConfig":
        if self.name != "synthetic" and not self.root:
            raise ValueError(f"dataset '{self.name}' needs root: the folder written by `python -m fgray.data prepare`")
        return self
