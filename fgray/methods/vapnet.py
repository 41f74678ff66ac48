"""VAPNet (Wang et al., "Learning to Parameterize Visual Attributes for Open-set Fine-grained
Retrieval", NeurIPS 2023; paper 004, spec vapnet.md). Supervised, open-set.

One step, in named stages (B images, M boxes each, C channels, k attributes):
  _encode      the backbone over the augmented images X and their M grid-cell crops V (resized
               to the input size by the data recipe ``grid_crops``): F = F_CNN(X) (B, C, h, w)
               (§3.1) and F_L = F_CNN(V) (Eq. 1), pooled g(F_L) (B, M, C); two passes by default
               (``crop_bn``)
  _regions     F_G = RoIAlign(F, boxes): the same boxes cut from the global map, pooled (B, M, C)
  _attributes  A_L = T_L(g(F_L)) (Eq. 2), A_G = T_G(g(F_G)) (Eq. 3), and the crossed targets
               E[T_G](g(F_L)), E[T_L](g(F_G)) (Eq. 6; the online T_G, T_L for Eq. 5), (B, M, k)
  loss         L = L_a + lambda L_c (Eq. 9): L_a = CE(C(g(F)), y) (Eq. 8), L_c the crossed KL
               over softmaxed attributes (``losses.attribute_constraint``), each KL summed over
               the k attributes and, by default, averaged over the B x M (image, view) rows
               (``lc_reduction``: batchmean; sum = Eq. 6's sum over the M views, mean over B;
               mean = over every element)
  after_step   E <- (1 - alpha) E + alpha theta for both mean encoders (Eq. 7)
Retrieval embedding: normalize(g(F)) (E_R, §3.1); T_*, E[T_*], C and the crops are training-only.
Logged parts: loss_attr (L_c, before lambda), loss_ce, train_acc and feature_norm, the mean L2 norm
of g(F) before normalisation.

Why batchmean by default: the paper gives no reduction (spec §7.6), and its tables argue against the
sum over M: Table 4 is flat from M = 4 to 16 while Table 7 already loses 1.3 points from lambda 10
to 20, yet under the sum M = 16 at lambda 10 weighs like lambda 40 at M = 4.

The mean encoders have no trainable parameters, but their outputs are not detached: the paper's
reason for them is that L_c then "directly penalize[s] the retrieval model" (§3.3), i.e. the
gradient of the targets E[T](F) reaches the backbone through F. Any timm backbone with a spatial
map works: a ViT's patch tokens are laid on their grid (``Backbone.feature_map``) and RoIAligned
like a CNN's map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from fgray.data.inputs import DatasetFacts
from fgray.losses import attribute_constraint
from fgray.methods.base import Method
from fgray.methods.configs_supervised import VAPNetConfig
from fgray.methods.parts import frozen_copy, momentum_update
from fgray.methods.parts import frozen_running_stats as _frozen_running_stats
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone


@register_method("vapnet")
class VAPNet(Method):
    # EMA copies of T_L, T_G: every rank derives them from the same synchronised online weights.
    ddp_ignore_prefixes = ("mean_local.", "mean_global.")

    def __init__(self, cfg: VAPNetConfig, backbone: Backbone, facts: DatasetFacts):
        super().__init__(cfg, facts)
        self.backbone = backbone
        self.embed_dim = backbone.num_features  # embed(): GAP of the last map, E_R
        channels = backbone.num_features
        if cfg.use_ce:
            self.classifier = nn.Linear(channels, facts.num_classes)  # C of Eq. 8
        if cfg.uses_views:
            self.attr_local = nn.Linear(channels, cfg.attr_dim)  # T_L, Eq. 2
            self.attr_global = nn.Linear(channels, cfg.attr_dim)  # T_G, Eq. 3
        if cfg.uses_views and cfg.constraint == "mean":
            self.mean_local = frozen_copy(self.attr_local)  # E[T_L], E^(0) = theta_L
            self.mean_global = frozen_copy(self.attr_global)  # E[T_G], E^(0) = theta_G

    # ------------------------------------------------------------------------------------ stages

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = batch["image"]
        if not self.cfg.uses_views:  # CE only (Table 1, first row): no local views at all
            feature_map, parts = self.backbone.feature_map(images), {}
            loss = images.new_zeros(())
        else:
            feature_map, local = self._encode(images, batch["crops"])
            regions = self._regions(feature_map, batch["crop_boxes"], images.shape[-2:])
            attributes = self._attributes(local, regions)
            loss_c = attribute_constraint(*attributes, self.cfg.attr_temperature, self.cfg.lc_reduction)
            loss, parts = self.cfg.lam * loss_c, {"loss_attr": loss_c.detach()}
        pooled = self.backbone.pool(feature_map)  # g(F), the retrieval feature before normalisation
        # Its mean L2 norm, logged: a constant or shrinking g(F) meets the constraint without attributes
        # (equal inputs give equal attributes on both sides), and the normalised embedding hides the scale.
        parts["feature_norm"] = pooled.detach().float().norm(dim=1).mean()
        if self.cfg.use_ce:
            logits = self.classifier(pooled)
            loss_a = F.cross_entropy(logits.float(), batch["label"])  # Eq. 8
            loss = loss + loss_a
            parts["loss_ce"] = loss_a.detach()
            parts["train_acc"] = (logits.detach().argmax(1) == batch["label"]).float().mean()
        return {"loss": loss, **parts}

    def _encode(self, images: Tensor, crops: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, S, S), crops (B, M, 3, S, S) -> F (B, C, h, w) and g(F_L) (B, M, C).

        ``crop_bn`` separate (default): F_CNN(X) and F_CNN(V) as two passes, as §3.1 and Eq. 1
        write them, each normalised by its own batch; the crops' pass leaves BN's running statistics
        (the test-time embedding's) to the whole images. joint: one pass over the B * (1 + M)
        images, sharing their batch statistics (configs.VAPNetConfig.crop_bn)."""
        batch, views = crops.shape[:2]
        if self.cfg.crop_bn == "joint":
            maps = self.backbone.feature_map(torch.cat([images, crops.flatten(0, 1)]))
            feature_map, local_maps = maps[:batch], maps[batch:]
        else:
            feature_map = self.backbone.feature_map(images)
            with _frozen_running_stats(self.backbone):
                local_maps = self.backbone.feature_map(crops.flatten(0, 1))
        return feature_map, self.backbone.pool(local_maps).view(batch, views, -1)

    def _regions(self, feature_map: Tensor, boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """F_G: RoIAlign of F (B, C, h, w) at boxes (B, M, 4) x1, y1, x2, y2 in input pixels,
        pooled: (B, M, C).

        Boxes go to map coordinates per axis (w / W, h / H); ``aligned=True`` puts map cell j's
        centre at pixel (j + 0.5) * stride, so a box's continuous pixel edges cut the map where its
        pixels lie. Output ``roi_output`` squared bins of 2 x 2 bilinear samples each.
        """
        batch, views = boxes.shape[:2]
        height, width = feature_map.shape[-2:]
        scale = boxes.new_tensor([width / image_hw[1], height / image_hw[0]]).repeat(2)
        rois = boxes.float() * scale
        # float32 (torchvision's autocast rule for roi_align): bf16 box corners would be ~1 px off
        pooled = roi_align(feature_map.float(), list(rois.unbind(0)),
                           output_size=self.cfg.roi_output, spatial_scale=1.0, sampling_ratio=2,
                           aligned=True)  # (B*M, C, r, r)
        return self.backbone.pool(pooled).view(batch, views, -1)

    def _attributes(self, local: Tensor, regions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """g(F_L), g(F_G) (B, M, C) -> (target of A_L, A_L, target of A_G, A_G), each (B, M, k).

        Eq. 6 (constraint mean): targets E[T_G](F_L), E[T_L](F_G), not detached. Eq. 5 (plain): the
        online T_G(F_L), T_L(F_G)."""
        attr_local, attr_global = self.attr_local(local), self.attr_global(regions)  # Eqs. 2, 3
        if self.cfg.constraint == "mean":
            return self.mean_global(local), attr_local, self.mean_local(regions), attr_global
        return self.attr_global(local), attr_local, self.attr_local(regions), attr_global

    # ------------------------------------------------------------------------------------- hooks

    def after_step(self, progress: float) -> None:
        """Eq. 7: E <- (1 - alpha) E + alpha theta (``momentum_update``'s m = 1 - alpha)."""
        if hasattr(self, "mean_local"):
            momentum_update(self.attr_local, self.mean_local, 1.0 - self.cfg.ema_ratio)
            momentum_update(self.attr_global, self.mean_global, 1.0 - self.cfg.ema_ratio)

    def param_groups(self) -> list[dict]:
        """The backbone, and the new layers (T_L, T_G, C) at ``head_lr_scale`` x the lr."""
        heads = [p for name, p in self.named_parameters()
                 if p.requires_grad and not name.startswith("backbone.")]
        return [{"name": "backbone", "params": list(self.backbone.parameters())},
                {"name": "heads", "params": heads, "lr_scale": self.cfg.head_lr_scale}]

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """E_R = normalize(GAP(F)) (§3.1): the backbone alone, no extra cost at test time."""
        return F.normalize(self.backbone(images).float(), dim=1)
