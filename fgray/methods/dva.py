"""DVA (paper 003; spec ``../shared/specs/dva.md``): Dual-Vision Adaptation of a frozen ViT.

- **ICA** (Eqs. 5-6, ``fgray.models.ica``): bias-free rank-r adapters on the chosen attention
  projections of every block; the ViT's own weights stay frozen. Table 1's fine-tuning rows
  instead train, without adapters, every weight (``tune: full``, also the measurement's
  comparison) or one part of every block: the fused q/k/v projection (``attn_qkv``), the
  attention's output projection (``attn_out``) or the MLP (``mlp``).
- **OPA** (§2.3): the step's object crops x_d (label y) and, where the box covers < half the
  image, its blurred background x_b (label C, the extra background class), from the
  ``object_background`` view recipe and the image's box.
- **Proxies** C in R^{(C+1) x D}: L_pl (Eq. 7) on x_d and x_b; **DPT** (Eq. 8): L_dpt on the
  original images x against the same proxies (detached by default), so the test-time embedding
  of an original image, the class token, carries what the proxies learnt from the objects.

L = L_dpt + lam L_pl (Eq. 9). Forward stages per step: ``objects`` (cls of [x_d; x_b],
(B + n_b, D)), then ``original`` (cls of x, (B, D)) when DPT is on. Table 8's rows: Base = the frozen
backbone (fgray's untrained baseline), +ICA = ``opa: false, dpt: false`` (L_pl on x), +ICA+OPA =
``dpt: false``, DVA = the defaults. Boxes come from the dataset (``boxes: dataset``, fgray's default)
or, as in the paper, from a zero-shot detector prompted with the class name (``boxes: detector``,
``detector.path``: a saved transformers detector), run once over the training split by
``fgray.data.frozen.detect`` and stored with the shards; the folder is checked when the sweep is validated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.data.inputs import DatasetFacts
from fgray.losses import proxy_anchor, proxy_nca
from fgray.methods.base import Method
from fgray.methods.configs_supervised import DVAConfig
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone
from fgray.models.ica import add_ica


# ``tune`` -> the parameter names it trains (timm's ViT blocks; ``.adapters.``: ICA's, under attn.qkv)
TUNED_PARTS = {"ica": ".adapters.", "attn_qkv": ".attn.qkv.", "attn_out": ".attn.proj.", "mlp": ".mlp."}


@register_method("dva")
class DVA(Method):
    backbone_family = "vit"

    def __init__(self, cfg: DVAConfig, backbone: Backbone, facts: DatasetFacts):
        super().__init__(cfg, facts)
        self.require_token_model(backbone, "class token and qkv attention")
        self.backbone = backbone
        self.embed_dim = backbone.num_features
        self.background_class = facts.num_classes  # proxies 0..C-1: the classes; C: background
        for p in backbone.parameters():
            p.requires_grad_(False)
        if cfg.tune == "ica":
            add_ica(backbone.model, cfg.ica.targets, cfg.ica.rank, cfg.ica.activation, cfg.ica.scale)
        for p in self.adapter_parameters():  # what ``tune`` trains (``full``: everything) thaws again
            p.requires_grad_(True)
        self.proxies = nn.Parameter(torch.empty(facts.num_classes + 1, self.embed_dim))
        # Proxy-Anchor's init: norms well above the step sizes, so one step cannot flip a direction.
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def adapter_parameters(self) -> list[nn.Parameter]:
        """What ``tune`` trains of the backbone: the ICA adapters, every weight, or one part of
        every block (timm's names: ``attn.qkv``, ``attn.proj``, ``mlp``)."""
        if self.cfg.tune == "full":
            return list(self.backbone.parameters())
        part = TUNED_PARTS[self.cfg.tune]
        return [p for name, p in self.backbone.named_parameters() if part in name]

    def param_groups(self) -> list[dict]:
        """adapters (or the tuned part of the ViT) and proxies, each with its rate."""
        return [{"name": "adapters", "params": self.adapter_parameters()},
                {"name": "proxies", "params": [self.proxies], "lr_scale": self.cfg.proxy_lr_scale}]

    def train(self, mode: bool = True) -> "DVA":
        super().train(mode)
        if self.cfg.tune != "full":
            self.backbone.eval()  # frozen (or partly): dropout / drop-path as at test
        return self

    # ---------------------------------------------------------------------------------------- stages

    def cls(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D): the last layer's class token after the final norm."""
        model = self.backbone.model
        return model.forward_head(model.forward_features(images), pre_logits=True)

    def _proxy_loss(self, embeddings: Tensor, labels: Tensor, proxies: Tensor) -> Tensor:
        if self.cfg.proxy_loss == "proxy_anchor":
            return proxy_anchor(embeddings, labels, proxies)
        return proxy_nca(embeddings, labels, proxies, self.cfg.proxy_scale)

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, labels = self.cfg, batch["label"]
        if not cfg.opa:  # Table 8's +ICA: the class proxies learn from the original images, no background class
            loss_pl = self._proxy_loss(self.cls(batch["image"]), labels, self.proxies[: self.background_class])
            return {"loss": loss_pl, "loss_pl": loss_pl.detach()}
        has_bg = batch["has_background"].bool()
        images = torch.cat([batch["object"], batch["background"][has_bg]])  # "objects"
        targets = torch.cat([labels, torch.full((int(has_bg.sum()),), self.background_class,
                                                dtype=labels.dtype, device=labels.device)])
        loss_pl = self._proxy_loss(self.cls(images), targets, self.proxies)  # Eq. 7
        loss, parts = cfg.lam * loss_pl, {"loss_pl": loss_pl.detach(), "background_share": has_bg.float().mean()}
        if cfg.dpt:
            proxies = self.proxies.detach() if cfg.detach_proxies else self.proxies
            loss_dpt = self._proxy_loss(self.cls(batch["image"]), labels, proxies)  # "original", Eq. 8
            loss, parts["loss_dpt"] = loss + loss_dpt, loss_dpt.detach()
        return {"loss": loss, **parts}

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.cls(images).float(), dim=1)
