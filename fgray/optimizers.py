"""Optimisers built from a method's parameter groups (plain PyTorch, no Ray): one kind by name, and
several stepped as one, for a stage whose groups carry optimisers of their own
(``fgray.methods.configs.GroupOptimizer``: OLDFS's decoder on Adam beside the encoder's SGD).
"""
from __future__ import annotations

from typing import Any

import torch

KINDS = ("sgd", "adam", "adamw")


def make_optimizer(kind: str, groups: list[dict], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """A torch optimiser of ``kind`` over ``groups`` (each carrying its own ``lr``)."""
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r} (known: {', '.join(KINDS)})")


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimisers over disjoint groups, stepped, zeroed and checkpointed as one.

    Its ``param_groups`` are the parts' own group dicts (the first part's first), so one LR
    scheduler, the GradScaler's unscale and ``fixed_lr`` holding reach every part's rates; each part
    keeps its own state (moments, momentum buffers). ``state_dict`` is ``{"optimizers": [...]}``,
    one entry per part in order.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        super().__init__(groups, {})  # checks that no parameter is in two parts
        self.param_groups = groups  # the very dicts the parts step with

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("CombinedOptimizer.step takes no closure (each part would re-evaluate it)")
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict.get("optimizers")
        if parts is None or len(parts) != len(self.optimizers):
            found = "one optimiser" if parts is None else f"{len(parts)} optimisers"
            raise ValueError(f"the saved optimiser state holds {found}, this stage has {len(self.optimizers)} "
                             "(a checkpoint from before its groups got optimisers of their own)")
        for optimizer, state in zip(self.optimizers, parts):
            optimizer.load_state_dict(state)
        # torch's load_state_dict gives each part new group dicts: share them again, or a scheduler
        # would set rates on the old ones
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
