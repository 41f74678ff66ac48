"""ASS's typed config (paper 000; spec ``../shared/specs/ass.md``), torch-free like every method
config: the joint masked-generative / contrastive pre-training, the Adaptive Sample Selector that
composes its batches, and the supervised fine-tuning stage. Values marked [guess] are the spec's
resolutions of what the paper lost (its §6 knob table); [draft] / [code] are the authors' earlier
manuscript and code skeleton.
"""
from __future__ import annotations

import functools
import os
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fgray.data.inputs import EncoderSpec, Inputs, Selection, ViewRecipe
from fgray.methods.configs import CropViews, MethodConfig, Stage, method_config
from fgray.node_paths import WEIGHTS_HOW, ReadPath, is_object_store, local_path

# ``selector.weights`` values that name no file: timm's hub weights of ``selector.model``, or a
# seeded random encoder (smoke runs and tests).
HUB_WEIGHTS, RANDOM_WEIGHTS = "hub", "random"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class SelectorConfig(_Section):
    """The frozen selector g_phi (spec §1, §2.1) and Algorithm 1's knobs. Its embeddings are
    computed once per (weights, dataset, transform) in the embedding cache and never per step."""

    enabled: bool = True  # false: uniform negatives (the "selector off" ablation row)
    model: str = "vit_small_patch16_224.dino"  # timm name; paper: ViT-S/16 (its own weights are private)
    # hub | random | a timm weights file | an fgray checkpoint folder of a selector pre-training run
    # (sweeps/ass_selector_pretrain.yaml: its encoder + 128-d head embed, spec §1 "128-d projection head");
    # local, file:///mount/..., or s3:// / gs:// (copied once per node: fgray.weights_uri)
    weights: Annotated[str, ReadPath(how=WEIGHTS_HOW)] = HUB_WEIGHTS
    seed: int = 0  # init seed of weights: random
    tau: float = Field(16.0, gt=0)  # [draft, code sigma]
    pool_factor: int = Field(10, ge=1)  # K: candidates per anchor [draft]
    schedule: Literal["easy_to_hard", "published", "constant"] = "easy_to_hard"  # [guess], spec §2.1 step 6
    replacement: bool = False  # [guess]; the code draws with replacement

    @property
    def is_checkpoint(self) -> bool:
        if is_object_store(self.weights):
            return _stored_checkpoint(self.weights)
        return os.path.isfile(os.path.join(local_path(self.weights), "meta.json"))

    def encoder(self) -> EncoderSpec:
        """The cached-embedding encoder: an fgray checkpoint's selector head, or a timm model."""
        if self.weights not in (HUB_WEIGHTS, RANDOM_WEIGHTS) and self.is_checkpoint:
            return EncoderSpec(kind="fgray", model="selector", pretrained=self.weights)
        pretrained = "true" if self.weights == HUB_WEIGHTS else self.weights
        return EncoderSpec(kind="timm", model=self.model, pretrained=pretrained, seed=self.seed)


@functools.lru_cache(maxsize=None)  # asked at each ``inputs``: one request per process
def _stored_checkpoint(uri: str) -> bool:
    from fgray.weights_uri import stored_type

    return stored_type(f"{uri.rstrip('/')}/meta.json") == "file"


class MAEDecoderConfig(_Section):
    """f^d: timm transformer blocks over the visible tokens plus mask tokens (spec §2.2 [guess]:
    MAE's 8 blocks of 512 with 16 heads)."""

    depth: int = Field(8, ge=1)
    width: int = Field(512, ge=8)
    heads: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> "MAEDecoderConfig":
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


class FinetuneConfig(_Section):
    """Stage 3 (spec §1 fine-tuning row, §7.9): supervised fine-tuning of the encoder on the training
    classes with a proxy loss on the L2-normalised embedding; the loss is unstated [guess: Proxy-Anchor]."""

    epochs: int = Field(20, ge=0)  # 0: off (frozen-feature retrieval of the pre-trained encoder) [guess]
    lr: float = Field(1e-4, gt=0)  # AdamW [draft: searched over 1e-4..4e-4]
    loss: Literal["proxy_anchor", "proxynca"] = "proxy_anchor"
    proxy_lr_scale: float = Field(100.0, gt=0)  # Proxy-Anchor's proxies learn 100x faster
    proxy_scale: float = Field(9.0, gt=0)  # s of ProxyNCA


@method_config
class ASSConfig(MethodConfig):
    """ASS (paper 000): MAE-style masked reconstruction L_gen, an inter-image term between each
    anchor and its reconstruction against reconstructions of the selected negatives (L_inter) and an
    intra-image InfoNCE between the encoder's and decoder's representations (L_intra), combined by
    ``loss_form`` (spec §2.5); batches composed by the selector; then supervised fine-tuning."""

    name: Literal["ass"] = "ass"
    pretrain: bool = True  # stage 2, train.epochs epochs; false: fine-tune backbone.pretrained directly
    lam: float = Field(0.3, ge=0, le=1)  # lambda of spec §2.5 [draft / code]
    loss_form: Literal["convex", "code"] = "convex"  # convex: (1-l) L_gen + l (L_inter + L_intra) [guess]
    mask_ratio: float = Field(0.75, ge=0, lt=1)  # [paper for the selector; guess for the main model]
    inter_loss: Literal["triplet", "infonce"] = "triplet"  # [draft Eq. 3 / code]; infonce [guess]
    # The triplet's negative b_i of anchor i in a composed batch (selector on): nearest = the negative of
    # B nearest a_i in the selector's space [fgray's choice: Algorithm 1 picks B for the anchor set, so
    # the i-th drawn is as unrelated to a_i as a uniform one]; index = the i-th drawn [the draft code].
    # Selector off: B is uniform and the pairing is by index (no selector, no cache). InfoNCE reads all of B.
    negative_pairing: Literal["nearest", "index"] = "nearest"
    margin: float = Field(1.0, gt=0)  # triplet margin m [code]
    inter_temperature: float = Field(0.1, gt=0)  # InfoNCE option's T [guess]
    intra_temperature: float = Field(0.1, gt=0)  # [code]
    intra_symmetric: bool = False  # one direction, as the code [guess: symmetric option]
    detach_reconstruction: bool = False  # gradients flow through X^ into the decoder [guess]
    head_dim: int = Field(128, ge=1)  # h, h_s, h_a output (the selector's 128-d head) [paper]
    head_hidden: int = Field(2048, ge=1)  # [guess: MLP 768 -> 2048 -> 128]
    embed: Literal["cls", "gap"] = "cls"  # retrieval embedding [guess]
    decoder: MAEDecoderConfig = MAEDecoderConfig()
    selector: SelectorConfig = SelectorConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    views: CropViews = CropViews()  # random crop + flip only [paper]; scale (0.2, 1) [guess: MAE's]

    @model_validator(mode="after")
    def _some_stage(self) -> "ASSConfig":
        if not self.pretrain and self.finetune.epochs == 0:
            raise ValueError("nothing to train: pretrain is false and finetune.epochs is 0")
        return self

    @property
    def composes(self) -> bool:
        """Whether pre-training batches are composed by the selector."""
        return self.pretrain and self.selector.enabled

    @property
    def inputs(self) -> Inputs:
        """One crop + flip view per image; labels for fine-tuning; composed batches in pre-training
        (the trial places ``selection`` on the ``pretrain`` stage's epochs), with each anchor's negative
        paired on the data side (``negative_index``, ``fgray.data.selection.pair_negatives``)."""
        view = ViewRecipe("crop_flip", (("scale", self.views.scale),))
        selection = None
        if self.composes:
            s = self.selector
            selection = Selection(s.encoder(), s.pool_factor, s.tau, s.schedule, s.replacement,
                                  pairing=self.negative_pairing, stage="pretrain")
        return Inputs(views=(view,), columns=("label",) if self.finetune.epochs else (), selection=selection)

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        pretrain = (Stage("pretrain", epochs, groups=("encoder", "pretrain_heads")),) if self.pretrain else ()
        finetune = self.finetune
        tune = (Stage("finetune", finetune.epochs, groups=("encoder", "proxies"), lr=finetune.lr,
                      optimizer="adamw"),) if finetune.epochs else ()
        return (*pretrain, *tune)
