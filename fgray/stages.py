"""A trial's training stages (DESIGN.md §3), plain PyTorch: the plan on one continuous epoch counter,
which parameter groups each stage trains, and the loop that runs them in order and resumes inside
the right stage. ``trial.worker_loop`` drives it with Ray's device, DDP wrapper and reporting;
tests and benchmarks drive it with plain lists of batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from fgray.checkpoint import restore_optimizer
from fgray.config import ExperimentConfig
from fgray.data.inputs import image_seed
from fgray.engine import EpochStats, build_optimizer, build_scheduler, train_one_epoch
from fgray.methods.base import Method
from fgray.methods.configs import Stage
from fgray.methods.parts import ddp_ignore


@dataclass(frozen=True)
class StagePlan:
    """A trial's stages laid on one continuous, 0-based epoch counter (what Tune and ASHA see)."""

    stages: tuple[Stage, ...]

    @classmethod
    def of(cls, experiment: ExperimentConfig) -> "StagePlan":
        return cls(experiment.method.stages(experiment.train.epochs))

    @property
    def epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def start(self, index: int) -> int:
        """First epoch of stage ``index``."""
        return sum(stage.epochs for stage in self.stages[:index])

    def index_at(self, epoch: int) -> int:
        """The stage that epoch ``epoch`` (0-based) belongs to."""
        for index, stage in enumerate(self.stages):
            if epoch < self.start(index) + stage.epochs:
                return index
        raise ValueError(f"epoch {epoch + 1} is past the last stage ({self.epochs} epochs)")


def stage_param_groups(method: Method, stage: Stage) -> list[dict]:
    """The method's parameter groups a stage trains; parameters of the other groups are frozen for
    the stage (``requires_grad`` off, so DDP and autograd skip them) and thawed when a later stage
    trains them."""
    groups = method.param_groups()
    known = [g.get("name", "all") for g in groups]
    wanted = known if stage.groups is None else list(stage.groups)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"stage {stage.name!r} trains groups {unknown} that {method.name} does not have ({known})")
    active = [g for g in groups if g.get("name", "all") in wanted]
    for group in groups:
        for param in group["params"]:
            param.requires_grad_(group in active)
    return active


class StageRunner:
    """Runs epochs ``start_epoch..`` of a trial stage by stage.

    Entering a stage freezes the groups it does not train, wraps the method (``wrap``: DDP in a
    Train worker; identity elsewhere) and builds the stage's optimiser and schedule; a checkpoint
    ``state`` taken inside that stage restores them. Each epoch's in-model randomness is seeded
    from (seed, epoch, rank), so a resumed trial draws what the uninterrupted one drew.
    ``on_epoch(epoch, stats, runner)`` reports and checkpoints after every epoch.
    """

    def __init__(self, method: Method, experiment: ExperimentConfig, steps_per_epoch: int,
                 device: torch.device, rank: int = 0, world: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m):
        self.method, self.experiment, self.device = method, experiment, device
        self.plan = StagePlan.of(experiment)
        self.steps_per_epoch, self.rank, self.world, self.wrap = steps_per_epoch, rank, world, wrap
        self.stage_index: int | None = None
        self.model: nn.Module = method
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        train = experiment.train
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and train.amp != "off"
                                           and not torch.cuda.is_bf16_supported())

    @property
    def stage(self) -> Stage:
        return self.plan.stages[self.stage_index or 0]

    def enter(self, epoch: int, state: dict | None = None) -> None:
        """Set up the stage epoch ``epoch`` belongs to; ``state``: a checkpoint to continue from."""
        self.stage_index = self.plan.index_at(epoch)
        stage, train = self.stage, self.experiment.train
        groups = stage_param_groups(self.method, stage)
        ddp_ignore(self.method, self.method.ddp_ignore_prefixes)
        self.model = self.wrap(self.method)  # DDP tracks this stage's trainable parameters only
        if train.compile:
            self.model = torch.compile(self.model)  # around DDP, so its optimiser splits graphs at buckets
        self.optimizer = build_optimizer(groups, train, self.world, stage)
        self.scheduler = build_scheduler(self.optimizer, train, self.steps_per_epoch, epochs=stage.epochs)
        if state is not None and state.get("stage") == stage.name and epoch > self.plan.start(self.stage_index):
            restore_optimizer(state, self.optimizer, self.scheduler, self.scaler)  # resumed mid-stage
        self.method.start_stage(stage)

    def run(self, batches: Iterator[dict], start_epoch: int = 0, state: dict | None = None,
            on_epoch: Callable[[int, EpochStats, "StageRunner"], None] = lambda *a: None) -> None:
        train = self.experiment.train
        for epoch in range(start_epoch, self.plan.epochs):
            if self.plan.index_at(epoch) != self.stage_index:
                self.enter(epoch, state)
            torch.manual_seed(image_seed(train.seed, epoch, f"rank{self.rank}"))
            stats = train_one_epoch(self.model, batches, self.optimizer, self.scheduler, self.device, epoch=epoch,
                                    epochs=self.plan.epochs, steps_per_epoch=self.steps_per_epoch, amp=train.amp,
                                    grad_clip=train.grad_clip, scaler=self.scaler)
            on_epoch(epoch, stats, self)
