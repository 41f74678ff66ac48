"""MoCo v2 (Chen et al. 2020): the contrastive base of PP-SSL and fgray's baseline.

Query encoder f = backbone + MLP head; key encoder g = momentum copy of f (no gradients, so
outside DDP's gradient bookkeeping); negatives from a FIFO queue of past keys that every DDP
rank fills with the keys all-gathered from all ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.losses import info_nce
from fgray.methods.base import Method
from fgray.methods.configs import MocoV2Config
from fgray.methods.parts import KeyQueue, all_gather_cat, frozen_copy, momentum_update
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone
from fgray.models.heads import ProjectionHead


class MoCoEncoders(nn.Module):
    """The query/key encoder pair and queue that MoCo-family methods share."""

    def __init__(self, backbone: Backbone, cfg: MocoV2Config, last_bn: bool = False):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = ProjectionHead(backbone.num_features, cfg.hidden_dim, cfg.proj_dim, last_bn=last_bn)
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        self.queue = KeyQueue(cfg.proj_dim, cfg.queue_size)
        self.current_momentum = cfg.momentum

    def query(self, feature_map: Tensor) -> Tensor:
        """(B, C, h, w) query feature map -> (B, proj_dim) L2-normalised query."""
        return F.normalize(self.head(self.backbone.pool(feature_map)), dim=1)

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, proj_dim) L2-normalised keys from the momentum encoder."""
        return F.normalize(self.key_head(self.key_backbone(images)), dim=1)

    def contrastive_loss(self, query: Tensor, key: Tensor) -> Tensor:
        return info_nce(query, key, self.queue.keys.clone().detach(), self.cfg.temperature)

    @torch.no_grad()
    def enqueue(self, key: Tensor) -> None:
        self.queue.enqueue(all_gather_cat(key))

    @torch.no_grad()
    def update_momentum(self, progress: float) -> None:
        m = self.cfg.momentum
        if self.cfg.momentum_schedule == "cosine":
            m = 1 - (1 - m) * (torch.cos(torch.tensor(torch.pi * progress)).item() + 1) / 2
        self.current_momentum = m
        momentum_update(self.backbone, self.key_backbone, m)
        momentum_update(self.head, self.key_head, m)


@register_method("mocov2", MocoV2Config)
class MoCoV2(Method):
    def __init__(self, cfg: MocoV2Config, backbone: Backbone):
        super().__init__()
        self.cfg = cfg
        self.moco = MoCoEncoders(backbone, cfg)

    @classmethod
    def smoke_overrides(cls, config: dict) -> dict:
        return {"queue_size": min(int(config.get("queue_size", 65536)), 256), "hidden_dim": 128}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        query = self.moco.query(self.moco.backbone.feature_map(batch["view1"]))
        key = self.moco.key(batch["view2"])
        loss = self.moco.contrastive_loss(query, key)
        self.moco.enqueue(key)
        return {"loss": loss, "loss_cl": loss.detach()}

    def after_step(self, progress: float) -> None:
        self.moco.update_momentum(progress)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.moco.backbone(images), dim=1)
