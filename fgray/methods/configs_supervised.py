"""Typed configs of the supervised methods (VAPNet, DVA): their ``method:`` sections.

Pure pydantic, no torch, like ``fgray.methods.configs`` (the self-supervised methods and the base
classes), whose ``@method_config`` registers them; ``registry.method_configs`` imports both.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fgray.data.inputs import DetectorSpec, Inputs, ViewRecipe
from fgray.methods.configs import CropViews, MethodConfig, method_config


class GridViews(CropViews):
    """VAPNet's augmentation of the input X (paper §4.1: random crop, left-right flip, colour jitter)
    before the grid cells are cut from it (``grid_crops``; ``crop_flip`` when no cells are needed)."""

    # RandomResizedCrop area range. Paper: resize 256 x 256, random 224 x 224 crop, i.e. a fixed
    # (224 / 256)^2 = 0.77 of the image at a random place; timm's crop also varies the aspect ratio.
    scale: tuple[float, float] = (0.77, 0.77)
    jitter: float = Field(0.4, ge=0)  # ColorJitter(s, s, s) (brightness, contrast, saturation) [spec guess]
    # box: M distinct cells uniform over the pool (spec §7.4), so 3/4 of the draws are 16 x 16 cells;
    # grid: each grid equally likely, then a cell
    sampling: Literal["box", "grid"] = "box"


@method_config
class VAPNetConfig(MethodConfig):
    """VAPNet (paper 004, spec vapnet.md): CE on GAP(F) + lambda x the crossed KL between the
    attributes of M grid-cell crops (F_L) and of the same boxes RoIAligned from the global map (F_G)."""

    name: Literal["vapnet"] = "vapnet"
    num_views: int = Field(4, ge=1)  # M boxes per image per step (Table 4: 1, 2, 4, 8, 16)
    grids: tuple[int, ...] = (2, 4, 8, 16)  # n of the n x n grids; the paper's four give 340 cells
    attr_dim: int = Field(256, ge=1)  # k, width of the attribute encoders T_L, T_G (Table 5)
    ema_ratio: float = Field(0.2, ge=0, lt=1)  # alpha of Eq. 7: the weight of the *online* encoder
    lam: float = Field(10.0, ge=0)  # lambda of Eq. 9 (Table 7)
    use_ce: bool = True  # L_a, cross-entropy on the training classes (Eq. 8; Table 1)
    # none: CE only (no local views are drawn); plain: Eq. 5 (online encoders as targets);
    # mean: Eq. 6 (EMA mean encoders as targets) - Table 1
    constraint: Literal["none", "plain", "mean"] = "mean"
    # How L_c's KLs (each summed over the k attributes, one per image and view) are reduced; the paper
    # gives none (spec §7.6, fgray.losses.attribute_kl). batchmean: mean over the B x M rows, so lambda
    # weighs the same at any M (Table 4 is flat from M = 4 to 16); sum: summed over the M views, mean
    # over B (Eq. 6's sum literally: M x batchmean, lambda 10 at M = 4 weighs like 40); mean: mean
    # over all B x M x k elements (F.kl_div's "mean": batchmean / k)
    lc_reduction: Literal["batchmean", "sum", "mean"] = "batchmean"
    attr_temperature: float = Field(1.0, gt=0)  # softmax temperature over the k attributes [spec guess]
    roi_output: int = Field(7, ge=1)  # RoIAlign output side (then average-pooled by g) [spec guess]
    # lr multiplier of the new layers (T_L, T_G, classifier) over the backbone's; paper: one lr
    head_lr_scale: float = Field(1.0, gt=0)
    # BatchNorm over the crops. The paper names no BN scheme but writes F = F_CNN(X) (§3.1) and
    # F_L = F_CNN(V) (Eq. 1) as two applications, with batch size 32 (the images). separate: the
    # crops in their own pass, normalised by their own batch statistics without updating the
    # running ones (those stay the whole images', which the test-time embedding uses). joint: one
    # pass over B x (1 + M) images, whose running statistics are then mostly the crops'
    crop_bn: Literal["joint", "separate"] = "separate"
    views: GridViews = GridViews()

    @field_validator("grids")
    @classmethod
    def _grid_sides(cls, grids: tuple[int, ...]) -> tuple[int, ...]:
        if not grids or min(grids) < 1 or len(set(grids)) != len(grids):
            raise ValueError(f"must be distinct positive grid sides, got {list(grids)}")
        return grids

    @model_validator(mode="after")
    def _consistent(self) -> "VAPNetConfig":
        cells = sum(n * n for n in self.grids)
        if self.num_views > cells:
            raise ValueError(f"num_views {self.num_views} exceeds the {cells} cells of grids "
                             f"{list(self.grids)}")
        if not self.use_ce and (self.constraint == "none" or self.lam == 0):
            raise ValueError("nothing to train: use_ce is false and the constraint is off "
                             "(constraint none or lam 0)")
        return self

    @property
    def uses_views(self) -> bool:
        """Whether a step draws local views (the constraint is on)."""
        return self.constraint != "none" and self.lam > 0

    @property
    def inputs(self) -> Inputs:
        """The augmented image with M grid crops and their boxes (or the image alone: CE only);
        labels when the CE term is on (the constraint itself uses none)."""
        view = self.views.model_dump(exclude={"sampling"})
        if self.uses_views:
            cells = {"count": self.num_views, "grids": self.grids, "sampling": self.views.sampling}
            recipe = ViewRecipe("grid_crops", tuple({**view, **cells}.items()))
        else:  # the same draws for the image as grid_crops makes with this seed (views.GridCrops)
            recipe = ViewRecipe("crop_flip", tuple(view.items()))
        return Inputs(views=(recipe,), columns=("label",) if self.use_ce else ())


class ICAConfig(BaseModel):
    """DVA's adapters (fgray.models.ica; spec dva.md §2.2): which attention projections, rank,
    activation [spec guess: relu] and the scale s of Eq. 6 [spec guess: 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: tuple[Literal["q", "k", "v"], ...] = ("q", "k")  # paper: Q and K (Table 9)
    rank: int = Field(16, ge=1)
    activation: Literal["relu", "gelu", "identity"] = "relu"
    scale: float = Field(1.0, gt=0)

    @field_validator("targets")
    @classmethod
    def _distinct(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        if not targets or len(set(targets)) != len(targets):
            raise ValueError(f"must be distinct projections among q, k, v, got {list(targets)}")
        return targets


class ObjectViews(CropViews):
    """DVA's views (``object_background``): crop + flip of the image, the box's shape-preserving
    crop, and the image with the box mean-blurred when the box covers < ``background_max_cover``."""

    scale: tuple[float, float] = (0.77, 0.77)  # paper: resize 256, crop 224: (224 / 256)^2 of the image
    box_scale: float = Field(1.0, gt=0)
    background_max_cover: float = Field(0.5, gt=0, le=1)
    object_fill: Literal["context", "pad"] = "context"


@method_config
class DVAConfig(MethodConfig):
    """DVA (paper 003, spec dva.md): a frozen ViT with ICA adapters, class proxies trained on object
    crops and blurred backgrounds (OPA, L_pl) and transferred to the original images (DPT, L_dpt):
    L = L_dpt + lam L_pl (Eq. 9). Supervised; the retrieval embedding is the class token."""

    name: Literal["dva"] = "dva"
    # ica: adapters on the frozen ViT; Table 1's fine-tuning rows, no adapters: full (every weight),
    # attn_qkv (W_q, W_k, W_v), attn_out (W_o) or mlp of every block
    tune: Literal["ica", "full", "attn_qkv", "attn_out", "mlp"] = "ica"
    ica: ICAConfig = ICAConfig()
    lam: float = Field(3.0, ge=0)  # lambda of Eq. 9
    opa: bool = True  # L_pl on the object crops and backgrounds; off: on the original images (Table 8's +ICA)
    dpt: bool = True  # L_dpt on the original images against the proxies
    detach_proxies: bool = True  # L_dpt does not move the proxies [spec guess]
    proxy_loss: Literal["proxynca", "proxy_anchor"] = "proxynca"
    proxy_scale: float = Field(9.0, gt=0)  # s of ProxyNCA (ProxyNCA++'s 1/T) [spec guess]
    proxy_lr_scale: float = Field(1.0, gt=0)  # the proxies' learning rate over the adapters' (spec §7.4)
    views: ObjectViews = ObjectViews()
    # Where the training images' boxes come from (spec §2.3): the paper runs a zero-shot detector
    # prompted with the class name; fgray's default is the dataset's boxes (CUB, Cars, Dogs, Aircraft
    # and the synthetic set ship them) because no detector weights can be downloaded where it runs.
    boxes: Literal["dataset", "detector"] = "dataset"
    detector: DetectorSpec | None = None  # the saved detector (fgray.data.frozen.detect) when boxes: detector

    @model_validator(mode="after")
    def _dpt_needs_opa(self) -> "DVAConfig":
        if self.dpt and not self.opa:
            raise ValueError("dpt transfers what the proxies learnt on the object views: it needs opa: true")
        return self

    @model_validator(mode="after")
    def _detector_given(self) -> "DVAConfig":
        if self.boxes == "detector" and self.detector is None:
            raise ValueError("boxes: detector needs detector.path, a local folder holding a saved "
                             "transformers zero-shot detector (e.g. OWLv2's save_pretrained)")
        return self

    @property
    def inputs(self) -> Inputs:
        if not self.opa:  # the original images only: no boxes needed
            crop = ViewRecipe("crop_flip", (("scale", self.views.scale),))
            return Inputs(views=(crop,), columns=("label",))
        return Inputs(views=(ViewRecipe("object_background", tuple(self.views.model_dump().items())),),
                      columns=("label",), detector=self.detector if self.boxes == "detector" else None)
