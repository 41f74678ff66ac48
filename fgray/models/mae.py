"""MAE-style masked encoding and decoding around a timm ViT (ASS, spec ass.md §2.2).

``encode_visible`` runs the ViT's own modules (patch embedding, ``_pos_embed`` with its class
token, blocks, final norm) on a random subset of each image's patch tokens; ``MAEDecoder`` is a
stack of timm ``Block``s over the visible tokens plus a learnt mask token at every masked position,
predicting each patch's pixels. Patch pixels are laid out as MAE's ``patchify``: (p, p, 3) per patch.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, 3, H, W) -> (B, L, p*p*3), L = (H/p)(W/p) in row-major grid order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Tensor, patch: int, channels: int = 3) -> Tensor:
    """(B, L, p*p*3) -> (B, 3, H, W) for a square grid; the inverse of ``patchify``."""
    b, count, _ = patches.shape
    side = int(round(count ** 0.5))
    x = patches.reshape(b, side, side, patch, patch, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, side * patch, side * patch)


def random_masking(tokens: Tensor, ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a uniformly random ``1 - ratio`` of each row's L tokens (MAE's per-image shuffle).

    tokens (B, L, D) -> visible (B, L_keep, D), mask (B, L) bool (True: masked), ids_restore (B, L)
    (position of each original token in [visible; masked] order). Draws from torch's global RNG,
    which the stage runner seeds per epoch and rank.
    """
    b, length, dim = tokens.shape
    keep = max(1, int(round(length * (1 - ratio))))
    order = torch.rand(b, length, device=tokens.device).argsort(dim=1)
    restore = order.argsort(dim=1)
    visible = tokens.gather(1, order[:, :keep, None].expand(-1, -1, dim))
    mask = torch.ones(b, length, dtype=torch.bool, device=tokens.device)
    mask[:, :keep] = False
    return visible, mask.gather(1, restore), restore


def encode_visible(vit: nn.Module, images: Tensor, ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ViT on the visible patches: (B, 3, H, W) -> tokens (B, P + L_keep, D) after the final
    norm (P prefix tokens first), mask (B, L), ids_restore (B, L). Position embeddings are added
    before masking, as in MAE, so every visible token knows where it sits."""
    x = vit._pos_embed(vit.patch_embed(images))
    prefix = vit.num_prefix_tokens
    visible, mask, restore = random_masking(x[:, prefix:], ratio)
    x = vit.norm_pre(torch.cat([x[:, :prefix], visible], dim=1))
    return vit.norm(vit.blocks(x)), mask, restore


class MAEDecoder(nn.Module):
    """f^d: visible tokens (B, P + L_keep, D) + ids_restore -> predicted patches (B, L, p*p*3) and the
    decoder's last hidden patch tokens (B, L, W) (the auxiliary representation's source, spec §2.2).
    Learnt position embeddings [guess; MAE uses fixed sin-cos ones]."""

    def __init__(self, in_dim: int, num_patches: int, prefix: int, patch: int, width: int = 512,
                 depth: int = 8, heads: int = 16, channels: int = 3):
        super().__init__()
        self.prefix = prefix
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, prefix + num_patches, width))
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch * patch * channels)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, ids_restore: Tensor) -> tuple[Tensor, Tensor]:
        x = self.embed(tokens)
        b, length = ids_restore.shape
        patches = x[:, self.prefix:]
        masks = self.mask_token.expand(b, length - patches.shape[1], -1)
        full = torch.cat([patches, masks], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = self.norm(self.blocks(torch.cat([x[:, :self.prefix], full], dim=1) + self.pos_embed))
        hidden = x[:, self.prefix:]
        return self.pred(hidden), hidden
