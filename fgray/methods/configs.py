"""Typed configs of the registered methods (the ``method:`` section of a sweep file): the base
classes and the self-supervised methods here, the supervised ones (VAPNet, DVA) in
``configs_supervised``.

Pure pydantic, no torch: the sweep CLI validates a file and rejects bad input in well under a
second, before the method modules (torch, timm, open_clip) are imported.
"""
from __future__ import annotations

import functools
import os
from typing import Annotated, Literal

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fgray.data.inputs import EncoderSpec, Inputs, ViewRecipe
from fgray.node_paths import WEIGHTS_HOW, ReadPath, is_object_store, local_path

# name -> config class: the one registration point of a method's name (``@method_config``); the
# method's module ``fgray.methods.<name>`` registers its class against it (registry.register_method).
METHOD_CONFIGS: dict[str, type["MethodConfig"]] = {}


def method_config(cls: type["MethodConfig"]) -> type["MethodConfig"]:
    """Class decorator: make ``cls`` (whose ``name`` field defaults to the method's name) a method config."""
    name = cls.model_fields["name"].default
    if name in METHOD_CONFIGS:
        raise ValueError(f"method config {name!r} registered twice")
    METHOD_CONFIGS[name] = cls
    return cls


@dataclass(frozen=True)
class GroupOptimizer:
    """A parameter group a stage trains with an optimiser of its own (its own state and rate) beside
    the stage's optimiser, e.g. OLDFS's decoder on Adam 1e-4 while the encoder runs SGD. The stage's
    LR schedule shapes its rate too; the linear scaling rule (``train.scale_lr``) does not apply."""

    group: str  # a name among the method's param_groups
    optimizer: str  # sgd | adam | adamw
    lr: float  # its base rate, as given (a group's lr_scale still multiplies it)
    weight_decay: float = 0.0


@dataclass(frozen=True)
class Stage:
    """One training stage of a method (DESIGN.md §3): a trial runs its stages in order.

    ``groups``: names of the method's parameter groups (``Method.param_groups``) trained in the
    stage, the others frozen for it (None: all). ``lr`` / ``optimizer``: the stage's own base
    learning rate and optimiser (None: ``train.lr`` / ``train.optimizer``); a group's ``lr_scale``
    multiplies the base rate. ``group_optimizers``: groups that train with their own optimiser
    instead (``GroupOptimizer``).
    """

    name: str
    epochs: int
    groups: tuple[str, ...] | None = None
    lr: float | None = None
    optimizer: str | None = None
    group_optimizers: tuple[GroupOptimizer, ...] = ()


class MethodConfig(BaseModel):
    """Base of every method's config: the declarations the trial builds the data path from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str

    @property
    def inputs(self) -> Inputs:
        """What a training batch holds (views, columns, cached embeddings)."""
        raise NotImplementedError

    @property
    def supervised(self) -> bool:
        """Reads training labels (so needs a training split with classes)."""
        return "label" in self.inputs.columns

    @property
    def min_train_classes(self) -> int:
        """Training classes a trial needs (checked before trials start): a method that reads labels
        learns nothing from one class (its classifier or proxies have nothing to tell apart)."""
        return 2 if self.supervised else 1

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        """Ordered stages of a trial of ``epochs`` training epochs (``train.epochs``); one by default."""
        return (Stage("train", epochs),)


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # open_clip architecture; "<name>-quickgelu" for a local copy of OpenAI's weights; fgray-tiny-clip for tests
    model: str = "ViT-B-32"
    # open_clip tag (local cache, else the hub) | /path/to/weights | random (seeded); on a cluster the file is
    # s3://... / gs://... (copied once per node: fgray.weights_uri) or file:///mount/...
    pretrained: Annotated[str, ReadPath(how=WEIGHTS_HOW)] = "openai"
    image_size: int | None = Field(None, ge=16)  # CLIP input side; None: the architecture's own (224 for ViT-B-32)
    seed: int = 0  # init seed of pretrained=random, so every worker and cache actor builds the same teacher

    def encoder(self) -> EncoderSpec:
        """The image tower as a cached-embedding encoder."""
        return EncoderSpec(kind="open_clip", model=self.model, pretrained=self.pretrained,
                           image_size=self.image_size, seed=self.seed)


class CropViews(BaseModel):
    """Augmentation options of a method's views; ``scale``: RandomResizedCrop's area range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: tuple[float, float] = (0.2, 1.0)

    @field_validator("scale")
    @classmethod
    def _area_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"must satisfy 0 < low <= high <= 1, got {list(scale)}")
        return scale


class PairViews(CropViews):
    """The two augmented views of MoCo-style methods (``moco_pair``); defaults: MoCo v2's recipe.

    Short runs on small images learn more with a larger crop and a weaker jitter (sweeps/demo.yaml,
    bench/synthetic_learnability.py): strong jitter makes two views of one image differ in colour
    more than two images do.
    """

    jitter: float = Field(0.4, ge=0)  # ColorJitter strength s: (s, s, s, s / 4)
    p_jitter: float = Field(0.8, ge=0, le=1)
    p_gray: float = Field(0.2, ge=0, le=1)
    p_blur: float = Field(0.5, ge=0, le=1)

    def recipe(self) -> ViewRecipe:
        return ViewRecipe("moco_pair", tuple(self.model_dump().items()))


@method_config
class MocoV2Config(MethodConfig):
    name: Literal["mocov2"] = "mocov2"
    temperature: float = Field(0.2, gt=0)  # T of InfoNCE (MoCo v2: 0.2)
    momentum: float = Field(0.999, ge=0, lt=1)  # key-encoder EMA ratio m
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # cosine: m -> 1 over training (BYOL style)
    queue_size: int = Field(65536, ge=1)  # K negatives
    proj_dim: int = Field(128, ge=1)  # output of the MLP head
    hidden_dim: int = Field(2048, ge=1)  # hidden width of the MLP head (MoCo v2: Linear-ReLU-Linear)
    # Shuffle-BN on a single worker: the key batch runs through the key encoder in this many random
    # sub-batches, BN statistics per sub-batch (MoCo's single-GPU emulation of its 8 GPUs; 4 gives
    # MoCo's 32 images per BN at PP-SSL's batch of 128). 1: off. Several DDP ranks shuffle across
    # ranks as MoCo does and ignore it.
    shuffle_bn_splits: int = Field(4, ge=1)
    views: PairViews = PairViews()

    @property
    def inputs(self) -> Inputs:
        return Inputs(views=(self.views.recipe(),))


@method_config
class SimSiamConfig(MethodConfig):
    """SimSiam (Chen & He 2021): no negatives, no momentum encoder; a predictor and a stop-gradient."""

    name: Literal["simsiam"] = "simsiam"
    proj_dim: int = Field(2048, ge=1)  # projector output (paper: 2048)
    proj_layers: int = Field(3, ge=2)  # projector depth (paper: 3 for ImageNet, 2 for CIFAR)
    hidden_dim: int = Field(2048, ge=1)  # projector hidden width
    pred_hidden_dim: int = Field(512, ge=1)  # predictor bottleneck (paper: 512)
    fix_pred_lr: bool = True  # the predictor keeps the base lr (paper Sec. 4.4): its own group, no decay
    views: PairViews = PairViews()  # SimSiam's views are MoCo v2's (paper Sec. 4)

    @property
    def inputs(self) -> Inputs:
        return Inputs(views=(self.views.recipe(),))


# The eight fine-grained descriptions of the PP-SSL code (DESIGN.md §5); the first is CUB's relevant one.
DEFAULT_CORPUS = (
    "an animal characterized by feathers, wings, and the ability to fly or perch",
    "a mammal known for loyalty, four legs, and fur, often kept as a pet",
    "a large vehicle designed for mass transportation, typically with multiple seats",
    "a reptile with a long, flexible, legless body and scales",
    "a large, carnivorous reptile with a robust body and strong jaws, found in water",
    "a motor vehicle with four wheels used for transporting people on roads",
    "a colorful plant with petals, often fragrant, commonly found in nature.",
    "a species of primate known for upright walking and advanced cognitive abilities",
)
GUIDANCE_SOURCES = ("image", "layer1", "layer2", "layer3", "layer4")


@method_config
class PPSSLConfig(MocoV2Config):
    """MoCo v2's fields (temperature, momentum, queue_size, proj_dim, hidden_dim) plus PP-SSL's."""

    name: Literal["ppssl"] = "ppssl"  # type: ignore[assignment]
    alpha: float = Field(1.2, ge=0)  # weight of L_AIS (Eq. 9); 0 skips AIS
    beta: float = Field(0.01, ge=0)  # weight of L_IADM (Eq. 9); 0 skips IADM
    # AIS on/off (Table 4's "AIS" row); off: no teacher. psi and z' stay while IADM is on (its w is
    # z'), and so does the embedding AvgPool(z' * f) (Eq. 10); both off: embedding AvgPool(f).
    ais: bool = True
    iadm: bool = True  # Image-Aided Distinction Module on/off (Eqs. 5-8)
    kd_temperature: float = Field(1.0, gt=0)  # tau of Eq. 4 (the paper gives no value)
    # logits = scale * u T^T for teacher and student, before Eq. 4's 1 / tau. "teacher" (default): the
    # CLIP checkpoint's own learned exp(logit_scale), CLIP's zero-shot convention (100 for OpenAI ViT-B/32):
    # the teacher's distribution over the prompts is then the one CLIP was trained to give, and tau alone
    # is the paper's smoothness knob. The paper prints l = u T^T (scale 1): cosines of unit vectors, nearly
    # uniform over N prompts at tau = 1. A float: that scale (fgray's former default: 100.0).
    logit_scale: Literal["teacher"] | Annotated[float, Field(gt=0)] = "teacher"
    # prompts, or a text file with one prompt per line (# comments): local, file:///mount/..., s3:// or gs://
    corpus: Annotated[list[str] | str, ReadPath()] = list(DEFAULT_CORPUS)
    corpus_size: int | None = Field(None, ge=2)  # N: use the first N prompts (Fig. 6); None: all
    teacher: TeacherConfig = TeacherConfig()  # the frozen CLIP image/text encoders
    teacher_mode: Literal["online", "cached"] = "online"  # online: CLIP on the augmented query view (paper)
    # Where IADM's Grad-CAM target is taken: image | layer1..layer4, or several joined by "+"
    # (e.g. image+layer4; Table 4); w is the network's attention map z' for every source.
    guidance: str = "image"
    psi_channels: int = Field(32, ge=1)  # output channels of psi, the 1x1 conv of Eq. 2 (LCR: 32)
    # Form of L_IADM (Eq. 8). lcr (default): the authors' code (LCR, which PP-SSL builds on), the scale
    # the paper's beta (0.009-0.2) was set on: w min-max normalised over the whole batch, a softmax
    # along each map row, KL summed over the batch (losses.row_softmax_kl). normalized: fgray's former
    # form, per-image w, each map normalised to sum 1, batch mean (losses.attention_kl): beta on
    # another scale (bench/ppssl_scales.py), its gradient unbounded where w is 0.
    iadm_form: Literal["lcr", "normalized"] = "lcr"

    @field_validator("corpus")
    @classmethod
    def _corpus_readable(cls, corpus: list[str] | str, info: ValidationInfo) -> list[str] | str:
        from fgray.weights_uri import StoreUnreachable

        try:
            prompts = read_corpus(corpus)
        except StoreUnreachable as err:  # one line where the sweep starts; in a trial it raises, retried
            if (info.context or {}).get("schema_only"):
                raise
            raise ValueError(str(err)) from None
        if len(prompts) < 2:
            raise ValueError(f"needs at least 2 prompts (a softmax over 1 prompt is constant), got {len(prompts)}")
        return corpus

    @field_validator("guidance")
    @classmethod
    def _known_sources(cls, guidance: str) -> str:
        parts = guidance.split("+")
        unknown = [p for p in parts if p not in GUIDANCE_SOURCES]
        if unknown or len(set(parts)) != len(parts):
            raise ValueError(f"must be one of {list(GUIDANCE_SOURCES)} or several joined by '+', got {guidance!r}")
        return guidance

    @model_validator(mode="after")
    def _corpus_size_fits(self) -> "PPSSLConfig":
        if self.corpus_size is not None and self.corpus_size > len(read_corpus(self.corpus)):
            size = len(read_corpus(self.corpus))
            raise ValueError(f"corpus_size {self.corpus_size} exceeds the corpus ({size} prompts)")
        return self

    @property
    def inputs(self) -> Inputs:
        """MoCo's pair; with teacher_mode cached, CLIP's embedding of each (un-augmented) image too."""
        cached = self.teacher_mode == "cached" and self.ais and self.alpha > 0
        return Inputs(views=(self.views.recipe(),),
                      embeddings=(("teacher_embedding", self.teacher.encoder()),) if cached else ())

    @property
    def prompts(self) -> tuple[str, ...]:
        return read_corpus(self.corpus)[: self.corpus_size]


def read_corpus(corpus: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """The prompts of a corpus value: the list itself, or the non-empty, non-# lines of a file (local,
    ``file:///mount/...``, or an object-store URI, read once per process)."""
    if not isinstance(corpus, str):
        return tuple(corpus)
    if is_object_store(corpus):
        return _stored_corpus(corpus)
    path = local_path(corpus)
    if not os.path.isfile(path):
        raise ValueError(f"corpus file not found: {corpus} (give a list of prompts or a text file, one per line)")
    with open(path, encoding="utf-8") as f:
        return _prompts(f.read())


def _prompts(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


@functools.lru_cache(maxsize=None)  # every validation of a config reads the corpus: one request per process
def _stored_corpus(uri: str) -> tuple[str, ...]:
    from fgray.storage import read_bytes  # pyarrow: a text file needs no copy on the node
    from fgray.weights_uri import stored_type

    if stored_type(uri) != "file":
        raise ValueError(f"corpus file not found: {uri} (give a list of prompts or a text file, one per line)")
    return _prompts(read_bytes(uri).decode("utf-8"))


class DecoderConfig(BaseModel):
    """OLDFS's decoder h (fgray.models.decoder) and its pre-training stage (spec oldfs.md §1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pretrain_epochs: int = Field(50, ge=0)  # stage 0: encoder frozen, L_R only [spec guess: 50]
    lr: float = Field(1e-4, gt=0)  # its Adam(W) rate in stage 0 [early code: Adam 1e-4]
    # Its optimiser in the joint stage: its own (adam: the early code's Adam, no weight decay, its own
    # cosine), or "encoder": a group of the encoder's optimiser at train.lr (fgray before issue 27)
    joint_optimizer: Literal["adam", "adamw", "sgd", "encoder"] = "adam"
    joint_lr: float = Field(1e-4, gt=0)  # that optimiser's rate, as given (no scale_lr) [early code: 1e-4]
    joint_weight_decay: float = Field(0.0, ge=0)  # its weight decay [early code: none]
    # A trained decoder: a state-dict file, or an fgray checkpoint (folder or its state file) of an
    # oldfs run; its decoder.* weights are loaded and stage 0 is skipped. Local, or a URI pyarrow reads.
    weights: Annotated[str | None, ReadPath()] = None
    width: int = Field(512, ge=8)  # channels of the 4 x 4 map after the linear layer (spec: 512)
    blocks: int = Field(1, ge=0)  # timm BasicBlocks per up-sampling scale

    @field_validator("weights")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value and not os.path.exists(os.path.expanduser(value)):
            raise ValueError(f"decoder weights not found: {value}")
        return value


@method_config
class OLDFSConfig(MocoV2Config):
    """OLDFS (paper 002, spec oldfs.md): a MoCo v2 or SimSiam base, plus a decoder that renders the
    clean feature v and a perturbed v_p (Grad-CAM and low-variance noise) into a synthesized pair
    for a second contrastive loss: L = L_C + alpha L_R + nu L_Cp (Eq. 8). The MoCo fields serve the
    mocov2 base; ``pred_hidden_dim`` the simsiam base (whose projector is hidden_dim -> proj_dim)."""

    name: Literal["oldfs"] = "oldfs"  # type: ignore[assignment]
    base: Literal["mocov2", "simsiam"] = "mocov2"
    alpha: float = Field(1.0, ge=0)  # weight of L_R (Eq. 8)
    nu: float = Field(0.5, ge=0)  # weight of L_Cp (Eq. 8)
    noise: Literal["none", "gradcam", "lowvar", "both"] = "both"  # Table 4's rows
    eps_g: float = Field(0.1, ge=0)  # Grad-CAM noise scale (Eq. 5)
    eps_var: float = Field(0.05, ge=0)  # low-variance noise scale (Eq. 6)
    kappa: float = Field(0.02, ge=0)  # low-variance threshold on s_i (Eq. 6; see lowvar_normalize)
    noise_param: Literal["std", "var"] = "std"  # eps scales the standard deviation (spec §7.2) or the variance
    bank_size: int = Field(5632, ge=2)  # D, features in the FIFO bank
    # Normalisation of the bank before the per-dimension variance: column (as printed; then s_i <= 1/D
    # and kappa = 0.02 never binds, spec §7.1), row (each feature), none (raw: kappa selects)
    lowvar_normalize: Literal["column", "row", "none"] = "column"
    detach_generated: bool = True  # L_Cp trains the encoder only; the decoder learns from L_R [spec guess]
    # The decoded pair's train-mode passes (L_Cp) normalise with their batch statistics but leave every
    # BatchNorm's running statistics (f's, which the test embedding uses, and the heads') to the real
    # images (spec §3); false: they update them too, ~half of f's statistics from decoded images
    bn_guard: bool = True
    pred_hidden_dim: int = Field(512, ge=1)  # simsiam base: the predictor's bottleneck
    decoder: DecoderConfig = DecoderConfig()

    @property
    def synthesizes(self) -> bool:
        """Whether the decoder is used at all (alpha = nu = 0 is the base method alone)."""
        return self.alpha > 0 or self.nu > 0

    @property
    def inputs(self) -> Inputs:
        """The clean eval view x (Eq. 2's target, v = f(x)) and the base method's two augmented views."""
        return Inputs(views=(ViewRecipe("clean_augmented", tuple(self.views.model_dump().items())),))

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        pretrain = self.decoder.pretrain_epochs if self.synthesizes and not self.decoder.weights else 0
        decoder = (Stage("decoder", pretrain, groups=("decoder",), lr=self.decoder.lr, optimizer="adamw"),)
        joint, own = self.decoder, ()
        if self.synthesizes and joint.joint_optimizer != "encoder":  # spec §3: SGD for f, g; Adam for h
            own = (GroupOptimizer("decoder", joint.joint_optimizer, joint.joint_lr, joint.joint_weight_decay),)
        return (*(decoder if pretrain else ()), Stage("train", epochs, group_optimizers=own))
