"""The interface every method implements (DESIGN.md §3).

A method is built as ``Method(cfg, backbone, facts)``: its typed config, a timm backbone and the
dataset's facts (``fgray.data.inputs.DatasetFacts``: training classes, image size, cache folders).
Its config declares what a training batch holds (``cfg.inputs``) and its stages
(``cfg.stages(epochs)``). A batch is a dict of tensors already on the method's device: images
(uint8 in the pipeline) arrive as normalised float (B, 3, H, W), or (B, M, 3, H, W) for a
recipe's crops; ``label`` (B,) int64 in 0..num_classes-1; cached embeddings (B, d) float32.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from fgray.data.inputs import DatasetFacts
from fgray.methods.configs import MethodConfig, Stage


class Method(nn.Module, ABC):
    name: str  # set by @register_method
    state_exclude: tuple[str, ...] = ()  # state_dict prefixes not checkpointed (frozen pretrained teachers)
    # Parameter/buffer prefixes DDP neither synchronises nor broadcasts: momentum copies, queues and
    # frozen teachers that every rank updates identically by itself (parts.ddp_ignore).
    ddp_ignore_prefixes: tuple[str, ...] = ()
    # Of those, the state each rank keeps on purpose for itself (OLDFS's feature bank of its own
    # features); the rest must stay identical on every rank, which DDP trials check every epoch.
    per_rank_prefixes: tuple[str, ...] = ()
    embed_dim: int  # width D of ``embed``'s output, set by each method
    backbone_family: str = "any"  # "vit": needs a timm ViT (class token, fused qkv attention)

    def __init__(self, cfg: MethodConfig, facts: DatasetFacts):
        super().__init__()
        self.cfg = cfg
        self.facts = facts

    @property
    def replicated_prefixes(self) -> tuple[str, ...]:
        """State every rank keeps identical by itself (``ddp_ignore_prefixes`` minus the per-rank)."""
        return tuple(p for p in self.ddp_ignore_prefixes if p not in self.per_rank_prefixes)

    def require_token_model(self, backbone, why: str) -> None:
        """A ``backbone_family = "vit"`` method's check of its backbone (``why`` it needs tokens)."""
        if not backbone.is_token_model:
            raise ValueError(f"{self.name} needs a ViT backbone ({why}), got {backbone.timm_name}")

    @classmethod
    def preflight(cls, config) -> None:
        """Checks before trials start (e.g. that pretrained weights can be found); raise ConfigError."""

    @classmethod
    def smoke_overrides(cls, config: dict) -> dict:
        """Method-config changes of ``--profile smoke`` (given the raw method section)."""
        return {}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # DDP hooks run through forward(), so the training step is the forward pass.
        return self.training_step(batch)

    @abstractmethod
    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return ``{"loss": total, **named_parts}``; parts are detached scalars for logging."""

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with training progress in [0, 1] (EMA, schedules)."""

    def start_stage(self, stage: Stage) -> None:
        """Called when a stage starts (also when a resumed trial re-enters it)."""

    @abstractmethod
    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised retrieval embedding."""

    def param_groups(self) -> list[dict]:
        """What the optimiser trains, as named groups ``{"name", "params", "lr_scale"?}``; a stage's
        ``groups`` picks among the names. Frozen and momentum parameters are in no group."""
        return [{"name": "all", "params": [p for p in self.parameters() if p.requires_grad]}]
