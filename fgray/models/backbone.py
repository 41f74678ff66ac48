"""timm backbones with one interface for CNNs and ViTs.

``Backbone.feature_map(x)`` is the last feature map as (B, C, h, w) for both families (ViT
patch tokens are laid back onto their grid), ``stage_maps(x, stages)`` returns intermediate
maps (PP-SSL's guidance layers), and ``pool(feature_map)`` is the model's own pooled embedding.
"""
from __future__ import annotations

import os

import timm
import torch
from torch import Tensor, nn

from fgray.weights_uri import local_weights


class Backbone(nn.Module):
    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.timm_name = name
        self.num_features: int = model.num_features
        # ViTs emit tokens: class/register tokens come first, patch tokens after.
        self.num_prefix_tokens: int = getattr(model, "num_prefix_tokens", 0)
        self.is_token_model = hasattr(model, "patch_embed") and hasattr(model, "blocks")

    def feature_map(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        features = self.model.forward_features(images)
        return self.tokens_to_map(features) if features.ndim == 3 else features

    def stage_maps(self, images: Tensor, stages: list[int]) -> list[Tensor]:
        """Feature maps after the given stages (1-based: 1 = first stage, timm's indices)."""
        indices = [s - 1 for s in stages] if self.is_token_model else stages
        maps = self.model.forward_intermediates(images, indices=indices,
                                                intermediates_only=True)
        return [self.tokens_to_map(m) if m.ndim == 3 else m for m in maps]

    def pool(self, feature_map: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C): global average pooling (ViTs: over patch tokens)."""
        return feature_map.mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.feature_map(images))

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        """(B, T, C) ViT tokens -> (B, C, h, w): the prefix (class/register) tokens dropped, patches on their grid."""
        patches = tokens[:, self.num_prefix_tokens:]
        batch, count, channels = patches.shape
        side = int(round(count ** 0.5))
        if side * side != count:
            raise ValueError(f"cannot lay {count} patch tokens on a square grid")
        return patches.transpose(1, 2).reshape(batch, channels, side, side)


def build_backbone(name: str, pretrained: bool | str = False, image_size: int | None = None,
                   drop_path_rate: float = 0.0, model_kwargs: dict | None = None) -> Backbone:
    """A timm model without its classifier. ``pretrained``: False, True (hub), a weights file or an
    fgray checkpoint folder (the one holding ``meta.json``: a previous trial's backbone, e.g. a warm
    start; ``fgray.checkpoint.backbone_state``), each local, ``file:///mount/...`` or an object-store
    URI (``s3://``, ``gs://``: copied to this node's cache, ``fgray.weights_uri``); ``model_kwargs``:
    extra ``timm.create_model`` arguments (e.g. a ResNet's ``channels``)."""
    kwargs: dict = {**(model_kwargs or {}), "num_classes": 0}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if image_size is not None and _accepts_img_size(name):
        kwargs["img_size"] = image_size
    path = local_weights(pretrained) if isinstance(pretrained, str) else None
    if path is not None and os.path.isdir(path):
        from fgray.checkpoint import backbone_state  # the checkpoint layer sits above models/

        backbone = Backbone(timm.create_model(name, pretrained=False, **kwargs), name)
        try:  # strict: the BN statistics come too, and a different architecture fails here
            backbone.load_state_dict(backbone_state(path))
        except RuntimeError as err:
            raise ValueError(f"backbone.pretrained {pretrained}: its backbone does not fit {name} "
                             f"{model_kwargs or ''}: {str(err).splitlines()[0]}") from None
        return backbone
    if path is not None:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)
    else:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    return Backbone(model, name)


def _accepts_img_size(name: str) -> bool:
    # Transformers fix their position embeddings to the input size; CNNs take any size.
    cfg = timm.get_pretrained_cfg(name)
    arch = (cfg.architecture if cfg is not None else name) or name
    return any(arch.startswith(p) for p in ("vit", "deit", "beit", "eva", "test_vit", "swin", "cait", "xcit"))


@torch.no_grad()
def output_channels(backbone: Backbone, image_size: int, stages: list[int] | None = None) -> list[int]:
    """Channels of the last map (or of ``stages``), measured with a dummy forward pass."""
    probe = torch.zeros(1, 3, image_size, image_size)
    was_training = backbone.training
    backbone.eval()
    maps = backbone.stage_maps(probe, stages) if stages else [backbone.feature_map(probe)]
    backbone.train(was_training)
    return [m.shape[1] for m in maps]
