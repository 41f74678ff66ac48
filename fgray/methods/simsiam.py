"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

One step, for two views x1, x2 of each image (B images, D = proj_dim):
  _project  z_i = projector(f(x_i))     (B, D)   f = backbone + global pooling
  _predict  p_i = predictor(z_i)        (B, D)   2-layer bottleneck MLP
  L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2   (Eq. 3, D = negative cosine, Eq. 1)
No negatives and no momentum encoder: the stop-gradient alone prevents collapse (paper Sec. 4).
Retrieval embedding: the backbone's pooled feature. OLDFS (paper 002) builds on it as a second base.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fgray.data.inputs import DatasetFacts
from fgray.losses import symmetric_negative_cosine
from fgray.methods.base import Method
from fgray.methods.configs import SimSiamConfig
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone
from fgray.models.heads import ProjectionHead


@register_method("simsiam")
class SimSiam(Method):
    def __init__(self, cfg: SimSiamConfig, backbone: Backbone, facts: DatasetFacts):
        super().__init__(cfg, facts)
        self.backbone = backbone
        self.embed_dim = backbone.num_features  # embed(): the pooled backbone feature
        # Projector: BN on every layer, the output's without affine (paper Sec. 3, "Projection MLP").
        self.projector = ProjectionHead(backbone.num_features, cfg.hidden_dim, cfg.proj_dim,
                                        layers=cfg.proj_layers, last_bn=True)
        # Predictor: Linear + BN + ReLU, then Linear; no BN on its output (paper Sec. 3).
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, layers=2)

    @classmethod
    def smoke_overrides(cls, config: dict) -> dict:
        return {"proj_dim": 128, "hidden_dim": 128, "pred_hidden_dim": 32}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z1, z2 = self._project(batch["view1"]), self._project(batch["view2"])
        loss = symmetric_negative_cosine(self.predictor(z1), self.predictor(z2), z1, z2)
        # Collapse monitor (paper Fig. 2): the per-dimension std of normalised z, ~1/sqrt(D) when healthy.
        spread = F.normalize(z1.detach(), dim=1).std(dim=0).mean()
        return {"loss": loss, "loss_sim": loss.detach(), "z_std": spread}

    def _project(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, proj_dim)."""
        return self.projector(self.backbone(images))

    def param_groups(self) -> list[dict]:
        """Encoder and projector follow the schedule; with ``fix_pred_lr`` the predictor keeps the base lr."""
        encoder = [p for name, p in self.named_parameters() if not name.startswith("predictor.")]
        predictor = {"name": "predictor", "params": list(self.predictor.parameters())}
        if self.cfg.fix_pred_lr:
            predictor["fixed_lr"] = True
        return [{"name": "encoder", "params": encoder}, predictor]

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone(images), dim=1)
