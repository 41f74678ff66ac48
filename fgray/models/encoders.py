"""Frozen image encoders for the embedding cache (``fgray.data.frozen.embedding_cache``) from an
``EncoderSpec``: an open_clip image tower or any timm model (hub, local file or seeded random)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.data.inputs import EncoderSpec
from fgray.weights_uri import local_weights


class FrozenEncoder(nn.Module):
    """(B, 3, H, W) ImageNet-normalised images -> (B, dim) L2-normalised embeddings, no gradients."""

    def __init__(self, encode: nn.Module, dim: int):
        super().__init__()
        self.encoder, self.dim = encode.requires_grad_(False).eval(), dim

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)  # frozen: BN/dropout stay in inference mode

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.encoder(images).float(), dim=-1)


class _CLIPImage(nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, images: Tensor) -> Tensor:
        return self.teacher.encode_image(images)


def build_encoder(spec: EncoderSpec, image_size: int) -> FrozenEncoder:
    """The frozen encoder of ``spec``; ``image_size``: the data's input side (timm models built for it)."""
    if spec.kind == "open_clip":
        from fgray.methods.configs import TeacherConfig
        from fgray.models.clip import CLIPTeacher

        teacher = CLIPTeacher(TeacherConfig(model=spec.model, pretrained=spec.pretrained,
                                            image_size=spec.image_size, seed=spec.seed))
        return FrozenEncoder(_CLIPImage(teacher), teacher.embed_dim)
    if spec.kind == "fgray":
        return checkpoint_encoder(spec.pretrained)
    from fgray.models.backbone import build_backbone

    pretrained: bool | str = {"random": False, "true": True, "hub": True}.get(spec.pretrained.lower(), spec.pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # random init: every actor builds the same encoder
        backbone = build_backbone(spec.model, pretrained, image_size=spec.image_size or image_size)
    return FrozenEncoder(backbone, backbone.num_features)


class _MethodEmbed(nn.Module):
    """One of a method's embedding functions (``selector_embed``, ``embed``) as a module."""

    def __init__(self, method: nn.Module, function: str):
        super().__init__()
        self.method, self.function = method, function

    def forward(self, images: Tensor) -> Tensor:
        return getattr(self.method, self.function)(images)


def checkpoint_encoder(directory: str) -> FrozenEncoder:
    """The trained model of an fgray checkpoint folder as a frozen encoder: its method's
    ``selector_embed`` (ASS: encoder + 128-d contrastive head, the selector of spec ass.md §1), else
    its retrieval embedding."""
    from fgray import checkpoint as ckpt
    from fgray.engine import build_method

    directory = local_weights(directory)  # an object-store URI: this node's copy of the folder
    method = build_method(ckpt.read_experiment(directory), ckpt.read_facts(directory))
    ckpt.load(directory, method)
    if hasattr(method, "selector_embed"):
        return FrozenEncoder(_MethodEmbed(method, "selector_embed"), method.selector_dim)
    return FrozenEncoder(_MethodEmbed(method, "embed"), method.embed_dim)
