"""Training stages (fgray.stages), without Ray: the plan on one epoch counter, groups frozen per stage,
per-stage optimisers and learning rates, checkpoints that know their stage, and a resumed run that
ends bit-identical to an uninterrupted one."""
from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from fgray import checkpoint as ckpt
from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts, Inputs, ViewRecipe
from fgray.methods.base import Method
from fgray.methods.configs import GroupOptimizer, MocoV2Config, Stage
from fgray.optimizers import CombinedOptimizer
from fgray.stages import StagePlan, StageRunner, stage_param_groups

FACTS = DatasetFacts(num_classes=3, image_size=8)


class TwoStageConfig(MocoV2Config):
    """A mocov2-named config (so the experiment schema accepts it) with OLDFS-like stages."""

    name: Literal["mocov2"] = "mocov2"

    @property
    def inputs(self) -> Inputs:
        return Inputs(views=(ViewRecipe("crop_flip"),))

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        return (Stage("decoder", 2, groups=("decoder",), lr=0.5, optimizer="sgd"), Stage("joint", epochs))


class TwoStage(Method):
    """encoder -> decoder; the decoder stage trains the decoder alone (encoder frozen)."""

    name = "two-stage"

    def __init__(self, cfg, facts):
        super().__init__(cfg, facts)
        self.encoder, self.decoder, self.embed_dim = nn.Linear(3, 4), nn.Linear(4, 3), 4
        self.stages_entered: list[str] = []

    def training_step(self, batch):
        x = batch["image"].mean(dim=(2, 3))  # (B, 3)
        loss = ((self.decoder(self.encoder(x)) - x) ** 2).mean() + 0.01 * torch.rand(()).item()
        return {"loss": loss}

    def param_groups(self):
        return [{"name": "encoder", "params": list(self.encoder.parameters())},
                {"name": "decoder", "params": list(self.decoder.parameters()), "lr_scale": 2.0}]

    def start_stage(self, stage):
        self.stages_entered.append(stage.name)

    def embed(self, images):
        return nn.functional.normalize(self.encoder(images.mean(dim=(2, 3))), dim=1)


def experiment(epochs: int = 3) -> ExperimentConfig:
    base = ExperimentConfig(method={"name": "mocov2"}, train={"epochs": epochs, "lr": 0.1, "optimizer": "adamw"},
                            data={"image_size": 16})
    return base.model_copy(update={"method": TwoStageConfig()})


def batches(n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)} for _ in range(n)]


def fresh() -> TwoStage:
    torch.manual_seed(0)
    return TwoStage(TwoStageConfig(), FACTS)


def test_plan_lays_stages_on_one_epoch_counter():
    plan = StagePlan.of(experiment(3))
    assert [s.name for s in plan.stages] == ["decoder", "joint"] and plan.epochs == 5 == experiment(3).total_epochs
    assert [plan.index_at(e) for e in range(5)] == [0, 0, 1, 1, 1] and plan.start(1) == 2
    with pytest.raises(ValueError, match="past the last stage"):
        plan.index_at(5)


def test_stage_trains_only_its_groups_at_its_own_rates():
    method, exp = fresh(), experiment()
    runner = StageRunner(method, exp, steps_per_epoch=3, device=torch.device("cpu"))
    encoder = [p.clone() for p in method.encoder.parameters()]
    decoder = [p.clone() for p in method.decoder.parameters()]
    runner.enter(0)
    assert isinstance(runner.optimizer, torch.optim.SGD)  # the stage's optimiser, not train.optimizer
    assert [g["lr"] for g in runner.optimizer.param_groups] == [1.0]  # stage lr 0.5 x the group's lr_scale 2
    with pytest.raises(_Stop):  # stop after the decoder stage's two epochs
        runner.run(iter(batches() * 2), start_epoch=0, on_epoch=lambda e, s, r: None if e < 1 else _stop())
    assert all(torch.equal(a, b) for a, b in zip(encoder, method.encoder.parameters()))  # frozen
    assert not any(torch.equal(a, b) for a, b in zip(decoder, method.decoder.parameters()))
    with pytest.raises(ValueError, match="does not have"):
        stage_param_groups(method, Stage("x", 1, groups=("projector",)))


class _Stop(Exception):
    pass


def _stop():
    raise _Stop


def test_stage_order_and_thawing(tmp_path):
    method = fresh()
    runner = StageRunner(method, experiment(), steps_per_epoch=2, device=torch.device("cpu"))
    seen = []
    runner.run(iter(batches() * 10), on_epoch=lambda e, s, r: seen.append((e, r.stage.name)))
    assert seen == [(0, "decoder"), (1, "decoder"), (2, "joint"), (3, "joint"), (4, "joint")]
    assert method.stages_entered == ["decoder", "joint"]
    assert all(p.requires_grad for p in method.parameters())  # the joint stage thawed the encoder
    assert [g["lr"] for g in runner.optimizer.param_groups][1] == pytest.approx(
        2 * runner.optimizer.param_groups[0]["lr"])


def train_until(method, exp, data, folder, start=0, state=None, save_at=None):
    """Run ``method``'s stages from epoch ``start`` (``state``: a loaded checkpoint); with ``save_at``,
    checkpoint into ``folder`` after that epoch and stop there, as a killed trial would."""
    runner = StageRunner(method, exp, steps_per_epoch=2, device=torch.device("cpu"))

    def on_epoch(epoch, stats, r):
        if epoch + 1 == save_at:
            ckpt.save(str(folder), method, exp, FACTS, r.stage.name, epoch + 1, {}, r.optimizer, r.scheduler,
                      r.scaler)
            raise _Stop

    try:
        runner.run(iter(data * 10), start, state, on_epoch)
    except _Stop:
        pass
    return method


@pytest.mark.parametrize("stop_after", [1, 2, 3])  # inside the first stage, at the boundary, inside the second
def test_resume_from_a_checkpoint_ends_identical_to_an_uninterrupted_run(tmp_path, stop_after):
    data = batches(2)
    exp = experiment()

    def train(method, start=0, state=None, save_at=None):
        return train_until(method, exp, data, tmp_path, start, state, save_at)

    full = train(fresh())
    train(fresh(), save_at=stop_after)
    resumed = fresh()
    state = ckpt.load(str(tmp_path), resumed)
    assert state["epoch"] == stop_after and state["stage"] == ("decoder" if stop_after <= 2 else "joint")
    assert ckpt.read_facts(str(tmp_path)) == FACTS and ckpt.read_meta(str(tmp_path))["stage"] == state["stage"]
    train(resumed, start=stop_after, state=state)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


class OwnOptimizerConfig(TwoStageConfig):
    """The joint stage gives the decoder group an Adam of its own (OLDFS's decoder in its joint stage)."""

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        own = (GroupOptimizer("decoder", "adam", 0.01),)
        return (Stage("decoder", 2, groups=("decoder",), lr=0.5, optimizer="sgd"),
                Stage("joint", epochs, group_optimizers=own))


def own_optimizer_experiment() -> ExperimentConfig:
    return experiment().model_copy(update={"method": OwnOptimizerConfig()})


def fresh_own() -> TwoStage:
    torch.manual_seed(0)
    return TwoStage(OwnOptimizerConfig(), FACTS)


def test_a_group_with_its_own_optimizer_gets_it_beside_the_stages_and_both_follow_the_schedule():
    method, exp = fresh_own(), own_optimizer_experiment()
    runner = StageRunner(method, exp, steps_per_epoch=2, device=torch.device("cpu"))
    runner.enter(0)  # the decoder stage names no group optimiser: one SGD, as before
    assert type(runner.optimizer) is torch.optim.SGD
    runner.enter(2)
    combined = runner.optimizer
    assert isinstance(combined, CombinedOptimizer)
    shared, own = combined.optimizers
    assert type(shared) is torch.optim.AdamW and [g["name"] for g in shared.param_groups] == ["encoder"]
    assert shared.param_groups[0]["lr"] == pytest.approx(0.1)  # train.lr, untouched
    assert type(own) is torch.optim.Adam and [g["name"] for g in own.param_groups] == ["decoder"]
    assert own.param_groups[0]["lr"] == pytest.approx(0.02)  # its own 0.01 x the group's lr_scale 2
    assert own.param_groups[0]["weight_decay"] == 0.0
    assert combined.param_groups[0] is shared.param_groups[0] and combined.param_groups[1] is own.param_groups[0]
    decoder = [p.clone() for p in method.decoder.parameters()]
    runner.run(iter(batches() * 10), start_epoch=2)
    assert not any(torch.equal(a, b) for a, b in zip(decoder, method.decoder.parameters()))
    assert own.state and shared.state  # each part stepped, with its own moments
    # The stage's cosine reached both parts' rates (the same fraction of each base rate).
    ratio = [g["lr"] / g["initial_lr"] for g in combined.param_groups]
    assert ratio[0] == pytest.approx(ratio[1]) and ratio[0] < 1.0
    # A single optimiser's state (a checkpoint taken before the decoder had its own) is refused by name.
    with pytest.raises(ValueError, match="holds one optimiser"):
        combined.load_state_dict(shared.state_dict())


@pytest.mark.parametrize("stop_after", [2, 3, 4])  # at the boundary, then inside the joint stage
def test_resume_keeps_the_state_of_a_groups_own_optimizer(tmp_path, stop_after):
    data, exp = batches(2), own_optimizer_experiment()

    def train(method, start=0, state=None, save_at=None):
        return train_until(method, exp, data, tmp_path, start, state, save_at)

    full = train(fresh_own())
    train(fresh_own(), save_at=stop_after)
    resumed = fresh_own()
    state = ckpt.load(str(tmp_path), resumed)
    if stop_after > 2:  # saved inside the joint stage: both parts' states are in the checkpoint
        assert len(state["optimizer"]["optimizers"]) == 2 and state["optimizer"]["optimizers"][1]["state"]
    train(resumed, start=stop_after, state=state)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
