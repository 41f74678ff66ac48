"""MoCo v2 (Chen et al. 2020): the contrastive base of PP-SSL and OLDFS, and fgray's baseline.

One step: q = head(f(view1)), k = momentum encoder(view2), InfoNCE of q against k and the
queue (``fgray.losses.info_nce``), then k enters the queue. As published (MoCo v2's code, the
``mlp`` option of ``moco/builder.py``): the head is Linear-ReLU-Linear, without BN, and the key
encoder runs with shuffle-BN (across DDP ranks; on one worker over random sub-batches,
``shuffle_bn_splits``). The encoder pair and queue are ``parts.MoCoEncoders``, shared with the
MoCo-based methods.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fgray.data.inputs import DatasetFacts
from fgray.methods.base import Method
from fgray.methods.configs import MocoV2Config
from fgray.methods.parts import MoCoEncoders
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone


@register_method("mocov2")
class MoCoV2(Method):
    ddp_ignore_prefixes = tuple(f"moco.{p}" for p in MoCoEncoders.IGNORED)

    def __init__(self, cfg: MocoV2Config, backbone: Backbone, facts: DatasetFacts):
        super().__init__(cfg, facts)
        self.moco = MoCoEncoders(backbone, cfg)  # MoCo v2's head: Linear-ReLU-Linear
        self.embed_dim = backbone.num_features  # embed(): the pooled backbone feature

    @classmethod
    def smoke_overrides(cls, config: dict) -> dict:
        return {"queue_size": min(int(config.get("queue_size", 65536)), 256), "hidden_dim": 128}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        query = self.moco.query(self.moco.backbone.feature_map(batch["view1"]))
        key = self.moco.key(batch["view2"])
        loss = self.moco.contrastive_loss(query, key)
        self.moco.enqueue_after_step(key)
        return {"loss": loss, "loss_cl": loss.detach()}

    def after_step(self, progress: float) -> None:
        self.moco.after_step(progress)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.moco.backbone(images), dim=1)
