"""The interface every method implements (DESIGN.md §3).

A batch is a dict of tensors already on the method's device and normalised:
``view1``, ``view2``: (B, 3, H, W) two augmented views of each image (float, normalised);
``index``: (B,) int64 row positions (stable per image, for caches keyed by image id);
methods may declare extra per-image inputs in ``extra_columns`` (e.g. cached teacher embeddings).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Method(nn.Module, ABC):
    name: str  # set by @register_method
    extra_columns: tuple[str, ...] = ()  # per-image columns it can read; its config's required_columns says which
    state_exclude: tuple[str, ...] = ()  # state_dict prefixes not checkpointed (frozen pretrained teachers)

    @classmethod
    def preflight(cls, config) -> None:
        """Checks before Ray starts (e.g. that pretrained weights can be found); raise ConfigError."""

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

    @abstractmethod
    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised retrieval embedding."""

    def param_groups(self) -> list[dict]:
        """What the optimiser trains; frozen and momentum parameters are excluded."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
