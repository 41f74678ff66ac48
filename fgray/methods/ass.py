"""ASS (paper 000; spec ``../shared/specs/ass.md``): joint masked-generative / contrastive ViT
pre-training on batches composed by an Adaptive Sample Selector, then supervised fine-tuning.

A pre-training batch holds 2N images: N anchors A, then the N negatives B the selector chose for
them from K*N uniform candidates by its cached embeddings (``fgray.data.selection``, run in the data
pipeline before decoding; with the selector off, B is uniform), and ``negative_index`` (N,): the
position in B of anchor i's own negative b_i, paired there too (``negative_pairing``: the nearest in the
selector's space, fgray's choice, or the i-th drawn; selector off: the i-th, read as ``arange``).
Forward stages of one step:

1. ``shared``: the ViT on each image's visible patches (``mask_ratio`` masked at random):
   s (2N, P + L_keep, D), the shared representation (spec §2.2).
2. ``decode``: f^d -> predicted patches (2N, L, p*p*3) and hidden patch tokens (2N, L, W);
   L_gen = masked-patch MSE (draft Eq. 1).
3. ``reconstruct``: X^ = the visible patches of X with the predicted masked ones (2N, 3, S, S).
4. ``contrast``: e(.) = normalize(h(cls of the ViT on all tokens)) of the anchors X_A (N) and every
   reconstruction X^ (2N); L_inter = triplet(e(X_i), e(X^_i), e(X^_{b_i})) (draft Eq. 3, code's
   distance form; b_i from ``negative_index``) or InfoNCE over the 2N reconstructions, every anchor
   against all of B (spec §2.3).
5. ``intra``: L_intra = InfoNCE(h_s(mean of s's patch tokens), h_a(mean of the decoder's hidden
   tokens)) over the 2N images (spec §2.4).

L = (1 - lam) L_gen + lam (L_inter + L_intra) (``convex``) or 0.7 L_gen + lam L_inter + (1 - lam)
L_intra (``code``) (spec §2.5). Fine-tuning (stage ``finetune``) trains the encoder and class proxies
with Proxy-Anchor (or ProxyNCA) on the normalised embedding. The selector is not part of the model:
its embeddings come from the cache, so nothing here can train it.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.data.inputs import DatasetFacts
from fgray.losses import masked_patch_mse, paired_info_nce, proxy_anchor, proxy_nca, reconstruction_triplet
from fgray.methods.base import Method
from fgray.methods.configs import Stage
from fgray.methods.configs_ass import HUB_WEIGHTS, RANDOM_WEIGHTS, ASSConfig
from fgray.methods.registry import register_method
from fgray.models.backbone import Backbone
from fgray.models.heads import ProjectionHead
from fgray.models.mae import MAEDecoder, encode_visible, patchify, unpatchify
from fgray.node_paths import is_object_store, local_path
from fgray.validation import ConfigError
from fgray.weights_uri import StoreUnreachable, stored_type


@register_method("ass")
class ASS(Method):
    backbone_family = "vit"

    def __init__(self, cfg: ASSConfig, backbone: Backbone, facts: DatasetFacts):
        super().__init__(cfg, facts)
        self.require_token_model(backbone, "masked patch tokens")
        vit = backbone.model
        self.backbone, self.embed_dim = backbone, backbone.num_features
        self.patch = vit.patch_embed.patch_size[0]
        dim, hidden = backbone.num_features, cfg.head_hidden
        d = cfg.decoder
        self.decoder = MAEDecoder(dim, vit.patch_embed.num_patches, vit.num_prefix_tokens, self.patch,
                                  d.width, d.depth, d.heads)
        self.head = ProjectionHead(dim, hidden, cfg.head_dim)  # h: the inter-image embedding
        self.shared_head = ProjectionHead(dim, hidden, cfg.head_dim)  # h_s
        self.aux_head = ProjectionHead(d.width, hidden, cfg.head_dim)  # h_a
        self.selector_dim = cfg.head_dim  # a checkpoint of this method can serve as a selector
        if cfg.finetune.epochs:
            self.proxies = nn.Parameter(torch.empty(facts.num_classes, dim))
            nn.init.kaiming_normal_(self.proxies, mode="fan_out")  # Proxy-Anchor's init
        self.stage_name = "pretrain"

    @classmethod
    def preflight(cls, config: ASSConfig) -> None:
        weights = config.selector.weights
        if config.composes and weights not in (HUB_WEIGHTS, RANDOM_WEIGHTS):
            path = weights if is_object_store(weights) else os.path.abspath(local_path(weights))
            try:  # an object-store URI: pyarrow asks the store
                found = stored_type(path) is not None if is_object_store(path) else os.path.exists(path)
            except StoreUnreachable as err:  # the store cannot be asked: no credentials, no network
                raise ConfigError(f"method.selector.weights: {err}") from None
            if not found:
                raise ConfigError(f"method.selector.weights: no file or checkpoint folder at {path}; pass a timm "
                                  "weights file, the checkpoint_* folder of a selector pre-training run "
                                  "(sweeps/ass_selector_pretrain.yaml), 'hub' (downloads) or 'random'")

    @classmethod
    def smoke_overrides(cls, config: dict) -> dict:
        selector = {**(config.get("selector") or {}), "model": "test_vit", "weights": RANDOM_WEIGHTS,
                    "pool_factor": min(int((config.get("selector") or {}).get("pool_factor", 10)), 4)}
        finetune = {**(config.get("finetune") or {})}
        if finetune.get("epochs", 1):
            finetune["epochs"] = 1
        return {"decoder": {"depth": 1, "width": 32, "heads": 2}, "head_hidden": 64, "selector": selector,
                "finetune": finetune}

    def start_stage(self, stage: Stage) -> None:
        self.stage_name = stage.name

    def param_groups(self) -> list[dict]:
        """encoder (the ViT), pretrain_heads (decoder, h, h_s, h_a: discarded after pre-training) and,
        with fine-tuning, proxies; by name: each stage picks its own."""
        heads = [*self.decoder.parameters(), *self.head.parameters(), *self.shared_head.parameters(),
                 *self.aux_head.parameters()]
        groups = [{"name": "encoder", "params": list(self.backbone.parameters())},
                  {"name": "pretrain_heads", "params": heads}]
        if self.cfg.finetune.epochs:
            scale = self.cfg.finetune.proxy_lr_scale
            groups.append({"name": "proxies", "params": [self.proxies], "lr_scale": scale})
        return groups

    # ---------------------------------------------------------------------------------------- stages

    def pooled(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, D): the ViT on all tokens, class token (``embed: cls``) or the mean
        of the patch tokens (``gap``), after the final norm."""
        tokens = self.backbone.model.forward_features(images)
        return tokens[:, 0] if self.cfg.embed == "cls" else tokens[:, self.backbone.num_prefix_tokens:].mean(1)

    def contrast(self, images: Tensor) -> Tensor:
        """e(X) = normalize(h(pooled(X))) (spec §2.3): (B, 3, S, S) -> (B, head_dim)."""
        return F.normalize(self.head(self.pooled(images)).float(), dim=1)

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.stage_name == "finetune":
            return self.finetune_step(batch)
        cfg, images = self.cfg, batch["image"]
        n = images.shape[0] // 2  # anchors A, then the selected negatives B
        tokens, mask, restore = encode_visible(self.backbone.model, images, cfg.mask_ratio)  # "shared"
        predicted, hidden = self.decoder(tokens, restore)  # "decode"
        target = patchify(images, self.patch)
        loss_gen = masked_patch_mse(predicted, target, mask)
        # Nothing masked (ratio 0, or a ratio rounding to no patch): X^ is the decoder's whole image, as
        # L_gen then counts every patch; else the visible patches of X with the predicted masked ones.
        masked = torch.where(mask.any(), mask, torch.ones_like(mask))[..., None]
        recon = unpatchify(torch.where(masked, predicted.to(target.dtype), target), self.patch)  # "reconstruct"
        if cfg.detach_reconstruction:
            recon = recon.detach()
        anchors, recons = self.contrast(images[:n]), self.contrast(recon)  # "contrast"
        if cfg.inter_loss == "triplet":
            negatives = recons[n:][self.negative_index(batch, n)]  # (N, head_dim): e(X^_{b_i})
            loss_inter = reconstruction_triplet(anchors, recons[:n], negatives, cfg.margin)
        else:
            loss_inter = paired_info_nce(anchors, recons, cfg.inter_temperature)
        prefix = self.backbone.num_prefix_tokens
        shared = F.normalize(self.shared_head(tokens[:, prefix:].mean(1)).float(), dim=1)  # "intra"
        aux = F.normalize(self.aux_head(hidden.mean(1)).float(), dim=1)
        loss_intra = paired_info_nce(shared, aux, cfg.intra_temperature)
        if cfg.intra_symmetric:
            loss_intra = (loss_intra + paired_info_nce(aux, shared, cfg.intra_temperature)) / 2
        if cfg.loss_form == "convex":
            loss = (1 - cfg.lam) * loss_gen + cfg.lam * (loss_inter + loss_intra)
        else:  # the authors' code: fixed 0.7 on L_gen, lam splits the two contrastive terms
            loss = 0.7 * loss_gen + cfg.lam * loss_inter + (1 - cfg.lam) * loss_intra
        return {"loss": loss, "loss_gen": loss_gen.detach(), "loss_inter": loss_inter.detach(),
                "loss_intra": loss_intra.detach()}

    def negative_index(self, batch: dict[str, Tensor], n: int) -> Tensor:
        """b_i (N,): the position in B of each anchor's negative. Composed batches carry it (paired on
        the data side by the selector's embeddings); uniform ones (selector off) pair by draw order."""
        if self.cfg.composes:
            return batch["negative_index"][:n]
        return torch.arange(n, device=batch["image"].device)

    def finetune_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Stage 3 (spec §1): a proxy loss on the normalised embedding of the training classes."""
        embeddings, labels, tune = self.pooled(batch["image"]), batch["label"], self.cfg.finetune
        if tune.loss == "proxy_anchor":
            loss = proxy_anchor(embeddings, labels, self.proxies)
        else:
            loss = proxy_nca(embeddings, labels, self.proxies, tune.proxy_scale)
        return {"loss": loss, "loss_finetune": loss.detach()}

    @torch.no_grad()
    def selector_embed(self, images: Tensor) -> Tensor:
        """The selector's embedding when this run pre-trains a selector (spec §1): e(X), 128-d."""
        return self.contrast(images)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.pooled(images).float(), dim=1)
