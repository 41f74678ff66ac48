"""What a method reads per training step, declared in its torch-free config (DESIGN.md §3).

A method's config has an ``inputs`` property returning :class:`Inputs`:

- ``views``: view recipes from the library below (implemented in ``fgray.data.views``); each
  recipe decodes an image once and emits a fixed set of named arrays;
- ``columns``: plain per-image columns of the shards: ``label`` (training classes re-indexed
  0..C-1 under the split protocol), ``bbox`` (x1, y1, x2, y2 in stored-image pixels), ``image_id``;
- ``embeddings``: batch key -> frozen encoder whose embedding of each image is computed once
  through the shared embedding cache (``fgray.data.frozen.embedding_cache``) and looked up by image id;
- ``selection``: batches composed by a frozen selector (ASS, ``fgray.data.selection``): each
  step's first half are anchors, its second half the negatives chosen for them; the batch then
  also holds ``negative_index`` (int64 per row: for anchor i, the position in the second half of
  its own negative; -1 on the negatives' rows and in steps that are not composed);
- ``detector``: the training images' ``bbox`` from a zero-shot detector run once
  (``fgray.data.frozen.detect``) instead of the dataset's boxes.

The trial builds exactly what is declared, so ``trial.py``, ``engine.py`` and the pipelines
never name a method, and a step that reads a key it did not declare fails with a one-line error.
Nothing here imports torch or Ray: sweep validation stays fast.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fgray.node_paths import WEIGHTS_HOW, ReadPath, is_object_store, local_path


@dataclass(frozen=True)
class Recipe:
    """A view recipe's contract: the batch keys it emits and whether it needs the image's box."""

    keys: tuple[str, ...]
    needs_boxes: bool = False
    doc: str = ""
    options: tuple[str, ...] = ()  # the option names its implementation takes (checked at config time)
    # Keys whose colour ops and blur can run on the trainer's device (data.views_on): the view worker
    # then only decodes, crops and flips them (fgray.data.views.deferred). A recipe with deferred keys
    # can also leave the decoding to the trainer (data.decode_on): its worker then only draws.
    deferred: tuple[str, ...] = ()


# MoCo v2's view parameters (fgray.data.views.transforms.moco_v2_augmentation): crop area range, colour
# jitter strength and the probabilities of jitter, greyscale and blur.
MOCO_VIEW_OPTIONS = ("scale", "jitter", "p_jitter", "p_gray", "p_blur")

# Shapes per image: S = data.image_size; M = the ``count`` option of grid_crops.
RECIPES: dict[str, Recipe] = {
    "moco_pair": Recipe(("view1", "view2"), options=MOCO_VIEW_OPTIONS, deferred=("view1", "view2"),
                        doc="two MoCo v2 views: (3, S, S) uint8 each"),
    "crop_flip": Recipe(("image",), options=("scale", "jitter"),
                        doc="one random-resized crop + horizontal flip (+ colour jitter): (3, S, S) uint8"),
    "clean_augmented": Recipe(("clean", "view1", "view2"), options=("eval_crop",) + MOCO_VIEW_OPTIONS,
                              deferred=("view1", "view2"),
                              doc="the un-augmented eval view (3, S, S) and two MoCo v2 views"),
    "object_background": Recipe(
        ("image", "object", "background", "has_background"), needs_boxes=True,
        options=("scale", "box_scale", "background_max_cover", "blur_kernel", "object_fill", "min_object_side"),
        doc="crop+flip image; the box's shape-preserving crop; the image with the box region "
            "mean-blurred; has_background: the box covers < half the image (bool)"),
    "grid_crops": Recipe(
        ("image", "crops", "crop_boxes"), options=("count", "grids", "scale", "sampling", "jitter"),
        doc="crop+flip image; M crops (M, 3, S, S) of boxes drawn from the grids' cells, resized to "
            "S; their boxes (M, 4) float32 x1, y1, x2, y2 in the image's pixels"),
}
COLUMNS = ("label", "bbox", "image_id")
# A deferred view's ops travel beside it as ``<key>@ops`` (B, OPS_WIDTH) float32 (``Inputs.defer_views``): the
# trainer applies them on its device (fgray.data.views.deferred) and drops the key before the method reads.
DEFERRED_SUFFIX = "@ops"
# Decoded on the trainer (``Inputs.decode_views``): a recipe's every key travels as ``<key>@crop`` (B, CROP_WIDTH)
# int32, the region its worker drew, beside one ``@encoded`` column of the stored images' bytes (B,) (an
# object array: Ray Data carries it as an Arrow binary column); the trainer decodes, crops and flips
# (fgray.data.views.trainer_decode) and drops both before the method reads.
CROP_SUFFIX = "@crop"
ENCODED_KEY = "@encoded"
NEGATIVE_INDEX = "negative_index"  # the batch key of a composed step's pairing (``Selection``)


@dataclass(frozen=True)
class ViewRecipe:
    """One recipe and its options (e.g. ``ViewRecipe("grid_crops", (("count", 4),))``)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in RECIPES:
            raise ValueError(f"unknown view recipe {self.name!r}; known: {sorted(RECIPES)}")
        unknown = sorted(set(dict(self.options)) - set(RECIPES[self.name].options))
        if unknown:
            raise ValueError(f"view recipe {self.name!r}: unknown options {unknown}; "
                             f"known: {list(RECIPES[self.name].options)}")
        # Lists (from YAML) become tuples: a recipe is hashable and compares by value.
        options = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(self.options).items())
        object.__setattr__(self, "options", options)

    @property
    def keys(self) -> tuple[str, ...]:
        return RECIPES[self.name].keys

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


class EncoderSpec(BaseModel):
    """A frozen image encoder whose embeddings are cached once per (weights, dataset, transform).

    ``pretrained``: a hub tag (open_clip: ``openai``; timm: true), a weights file or checkpoint folder
    (local, ``file:///mount/...``, ``s3://`` / ``gs://``: ``fgray.weights_uri``), or ``random``
    (seeded: every actor builds the same encoder; smoke runs and tests).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # fgray: a checkpoint folder of an fgray run (``pretrained``), embedded by its method's ``selector_embed``
    kind: Literal["open_clip", "timm", "fgray"] = "open_clip"
    model: str = "ViT-B-32"  # open_clip architecture or timm model name
    pretrained: str = "openai"
    image_size: int | None = Field(None, ge=16)  # input side; None: the data's image size (timm) / CLIP's own
    seed: int = 0  # init seed when pretrained is random


class DetectorSpec(BaseModel):
    """A zero-shot detector whose boxes replace the dataset's for the training images (DVA, spec
    dva.md §2.3), detected once per (weights, prompt, threshold, dataset) by ``fgray.data.frozen.detect``.

    ``path``: a folder holding a transformers zero-shot detector and its processor (``save_pretrained``
    of e.g. google/owlv2-base-patch16-ensemble): local, ``file:///mount/...``, or ``s3://`` / ``gs://``
    (copied once per node, ``fgray.weights_uri``); loaded from there with local_files_only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, ReadPath(how=WEIGHTS_HOW)]  # on a cluster: s3://..., gs://... or file:///mount/...
    # class_name: each image's class name (the paper's prompt); meta_category: one word for every image
    prompt: Literal["class_name", "meta_category"] = "class_name"
    meta_category: str = "object"  # e.g. bird, car, dog (spec §2.3)
    box_threshold: float = Field(0.35, ge=0, le=1)  # below it: the whole image [spec guess: GroundingDINO's]
    batch_size: int = Field(16, ge=1)  # images per detector call

    @field_validator("path")
    @classmethod
    def _saved_detector(cls, path: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("schema_only"):  # checked where the sweep starts, not in every trial
            return path
        if is_object_store(path):
            from fgray.weights_uri import StoreUnreachable, stored_type  # pyarrow: imported where a URI is given

            try:
                found = stored_type(f"{path.rstrip('/')}/config.json") == "file"
            except StoreUnreachable as err:  # where the sweep starts: its one line
                raise ValueError(str(err)) from None
        else:
            found = os.path.isfile(os.path.join(local_path(path), "config.json"))
        if not found:
            raise ValueError(f"no saved detector in {path} (looked for {path}/config.json): where the hub "
                             "is reachable, save_pretrained(DIR) AutoModelForZeroShotObjectDetection and "
                             "AutoProcessor of google/owlv2-base-patch16-ensemble, copy DIR here")
        return path


@dataclass(frozen=True)
class Selection:
    """Batches composed by ASS's selector (spec ass.md §2.1) in the epochs of the method's stage
    ``stage``: of a step's batch of 2N rows, N anchors (the epoch's permutation) then N negatives
    chosen among ``pool_factor`` x N uniform candidates by ``encoder``'s cached embeddings, and in
    ``negative_index`` each anchor's own negative among them (``pairing``). The trial places it on its
    epoch counter (``placed``): ``first`` and ``epochs`` (T_max of the gamma schedule)."""

    encoder: EncoderSpec
    pool_factor: int = 10  # K
    tau: float = 16.0
    schedule: str = "easy_to_hard"  # fgray.data.selection.SCHEDULES
    replacement: bool = False
    pairing: str = "nearest"  # fgray.data.selection.PAIRINGS: anchor i's negative, nearest in B or i-th drawn
    stage: str = "train"
    first: int = 0  # first composed epoch (0-based, on the trial's epoch counter)
    epochs: int = 0  # composed epochs (0 until placed)

    def placed(self, stages) -> "Selection":
        """This selection on the epochs of its stage among ``stages`` (``Stage``s in trial order)."""
        first = 0
        for stage in stages:
            if stage.name == self.stage:
                return replace(self, first=first, epochs=stage.epochs)
            first += stage.epochs
        raise ValueError(f"selection: no stage {self.stage!r} among {[s.name for s in stages]}")

    def composes(self, epoch: int) -> bool:
        return self.first <= epoch < self.first + self.epochs


@dataclass(frozen=True)
class Inputs:
    views: tuple[ViewRecipe, ...] = ()
    columns: tuple[str, ...] = ()
    embeddings: tuple[tuple[str, EncoderSpec], ...] = ()  # (batch key, encoder), in a fixed order
    selection: Selection | None = None  # composed batches (ASS); None: uniform batches
    detector: DetectorSpec | None = None  # training images' boxes from this detector; None: the dataset's
    # Set by the trial, not the method (data.views_on): the recipes' deferred keys are finished on the
    # trainer's device, their view workers only decode, crop and flip them.
    defer_views: bool = False
    # Set by the trial too (data.decode_on: trainer, only with defer_views): the recipes with deferred keys
    # hand on the encoded image and their drawn regions; the trainer decodes (nvJPEG on a GPU) and crops.
    decode_views: bool = False

    def __post_init__(self) -> None:
        unknown = [c for c in self.columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; known: {list(COLUMNS)}")
        keys = list(self.keys)
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"batch keys declared twice: {duplicated}")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key a training batch holds, in declaration order."""
        return (*[k for view in self.views for k in view.keys], *self.columns, *[k for k, _ in self.embeddings],
                *((NEGATIVE_INDEX,) if self.selection is not None else ()))

    @property
    def needs_boxes(self) -> bool:
        return "bbox" in self.columns or any(RECIPES[v.name].needs_boxes for v in self.views)

    @property
    def shard_columns(self) -> tuple[str, ...]:
        """The shard columns the pipeline must read for these inputs."""
        wanted = {"image", "image_id"} | set(self.columns) | ({"bbox"} if self.needs_boxes else set())
        return tuple(sorted(wanted))


@dataclass(frozen=True)
class DatasetFacts:
    """What a method is built with besides its config and backbone."""

    num_classes: int  # training classes under the split protocol (labels are 0..num_classes-1)
    class_names: tuple[str, ...] = ()  # names of the training classes, by re-indexed label
    image_size: int = 64
    caches: dict[str, str] = field(default_factory=dict)  # embedding key -> cache folder (URI or path)


def image_seed(seed: int, epoch: int, image_id: str) -> int:
    """The seed of one image's random draws in one epoch: the same whichever actor or worker draws them."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
