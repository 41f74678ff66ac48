"""Registry-wide checks, driven by each method's declarations: a batch built from its declared inputs,
one step, gradients only where they belong, a falling loss, normalised embeddings; every variant of
a method's inputs (e.g. PP-SSL's cached teacher) is covered by ``VARIANTS``."""
from __future__ import annotations

import pytest
import torch

from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts
from fgray.engine import (DeclaredBatch, NonFiniteLossError, UndeclaredInputError, build_method, build_optimizer,
                          build_scheduler, place_method, train_one_epoch)
from fgray.stages import StagePlan, stage_param_groups
from fgray.methods import method_names
from fgray.methods.registry import method_class
from tests.declared import declared_batch

IMAGE_SIZE = 32
FACTS = DatasetFacts(num_classes=4, class_names=("a", "b", "c", "d"), image_size=IMAGE_SIZE)
# Config variants whose declared inputs (or trained modules) differ from the defaults.
VARIANTS = {"ppssl": [{"teacher_mode": "cached"}],
            "vapnet": [{"constraint": "none"}, {"constraint": "plain"}, {"use_ce": False},
                       {"crop_bn": "joint"}],
            "oldfs": [{"base": "simsiam"}, {"noise": "gradcam", "nu": 0}, {"noise": "none", "alpha": 0, "nu": 0}],
            "dva": [{"opa": False, "dpt": False}, {"dpt": False}, {"tune": "full"}, {"proxy_loss": "proxy_anchor"},
                    {"tune": "attn_qkv", "opa": False, "dpt": False}]}
CASES = [(name, {}) for name in method_names()] + [(n, v) for n, vs in VARIANTS.items() for v in vs]
IDS = [name + "".join(f"-{k}={v}" for k, v in variant.items()) for name, variant in CASES]


def make(name: str, variant: dict | None = None):
    torch.manual_seed(0)
    method_cfg = {"name": name, **method_class(name).smoke_overrides({"name": name}), **(variant or {})}
    family = "test_vit" if method_class(name).backbone_family == "vit" else "test_resnet"
    experiment = ExperimentConfig(method=method_cfg, backbone={"name": family},
                                  data={"image_size": IMAGE_SIZE}, train={"lr": 0.05})
    return build_method(experiment, FACTS), experiment


def batch_for(method) -> DeclaredBatch:
    inputs = method.cfg.inputs
    return DeclaredBatch(declared_batch(inputs, FACTS), method.name, inputs.keys)


def test_every_method_is_covered():
    assert {"mocov2", "ppssl", "simsiam"} <= set(method_names())


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_declared_batch_holds_exactly_the_declared_keys(name, variant):
    method, _ = make(name, variant)
    assert set(batch_for(method)) == set(method.cfg.inputs.keys)


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_step_runs_and_only_trainable_parameters_get_gradients(name, variant):
    method, experiment = make(name, variant)
    for stage in StagePlan.of(experiment).stages:
        method.zero_grad(set_to_none=True)
        trainable = {id(p) for group in stage_param_groups(method, stage) for p in group["params"]}
        method.start_stage(stage)
        out = method.training_step(batch_for(method))
        assert "loss" in out and torch.isfinite(out["loss"]) and out["loss"].ndim == 0
        out["loss"].backward()
        for pname, param in method.named_parameters():
            if id(param) in trainable:
                assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name}: no gradient for {pname}"
            else:
                assert param.grad is None, f"{name}: frozen/momentum parameter {pname} got a gradient"
                assert not param.requires_grad, f"{name}: {pname} requires grad but is not optimised"
        # (timm zero-initialises each residual branch's last BN, so single weights may get exact zeros)
        assert sum(float(p.grad.abs().sum()) for p in method.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_channels_last_placement_gives_the_same_step(name, variant):
    """Placed as trials place it (``place_method``: CNN weights channels-last, on the CPU too), a
    method's first step gives the loss and gradients of its default-layout copy: no op of its own
    assumes contiguous activations. The layouts' kernels round differently, which small BatchNorm
    batches amplify (OLDFS's decoder most), hence the 1 %; a layout bug changes a gradient by its size."""
    reference, experiment = make(name, variant)
    placed = place_method(make(name, variant)[0], torch.device("cpu"), experiment.train)
    assert experiment.train.channels_last
    convs = [p for p in placed.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    batch, stage = batch_for(reference), StagePlan.of(experiment).stages[0]
    outs = []
    for method in (reference, placed):
        method.start_stage(stage)
        torch.manual_seed(1)  # the same in-step draws (MoCo's shuffle, OLDFS's noise) for both
        out = method.training_step(batch)
        out["loss"].backward()
        outs.append((out["loss"], {n: p.grad for n, p in method.named_parameters() if p.grad is not None}))
    (loss, grads), (placed_loss, placed_grads) = outs
    torch.testing.assert_close(placed_loss, loss, rtol=1e-5, atol=1e-6)
    assert placed_grads.keys() == grads.keys()
    scale = torch.cat([g.flatten() for g in grads.values()]).norm()  # a bias before a BatchNorm: ~0
    for pname, grad in grads.items():
        error = (placed_grads[pname] - grad).norm()
        assert error <= 1e-2 * grad.norm() + 1e-4 * scale, f"{name}: {pname} gradient differs by {error:.3g}"


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_embedding_is_l2_normalised_of_the_declared_dimension(name, variant):
    method, _ = make(name, variant)
    method.eval()
    emb = method.embed(torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert emb.shape == (3, method.embed_dim) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_loss_falls_on_a_fixed_batch(name, variant):
    method, experiment = make(name, variant)
    stage = StagePlan.of(experiment).stages[-1]
    optimizer = build_optimizer(stage_param_groups(method, stage), experiment.train, stage=stage)
    batch = batch_for(method)
    # Negative queues would fill with this very batch's keys and move the target; hold them fixed.
    queues = {n: b.clone() for n, b in method.named_buffers() if "queue" in n}
    losses = []
    for step in range(8):
        for n, b in method.named_buffers():
            if n in queues:
                b.copy_(queues[n])
        out = method.training_step(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.after_step(step / 8)
        losses.append(float(out["loss"].detach()))
    assert min(losses[-3:]) < losses[0], f"{name}: loss did not fall: {losses}"


@pytest.mark.parametrize("name,variant", CASES, ids=IDS)
def test_momentum_and_frozen_parameters_are_in_no_group(name, variant):
    method, _ = make(name, variant)
    grouped = [id(p) for group in method.param_groups() for p in group["params"]]
    assert len(grouped) == len(set(grouped)), f"{name}: a parameter sits in two groups"
    frozen = {id(p) for n, p in method.named_parameters() if n.startswith(method.ddp_ignore_prefixes)}
    assert not frozen & set(grouped)


def test_reading_an_undeclared_key_fails_the_first_step_with_one_line():
    method, experiment = make("mocov2")

    def reads_labels(batch):
        return {"loss": method.moco.query(method.moco.backbone.feature_map(batch["view1"])).sum() * batch["label"]}

    method.training_step = reads_labels
    stage = StagePlan.of(experiment).stages[0]
    optimizer = build_optimizer(stage_param_groups(method, stage), experiment.train, stage=stage)
    batch = {k: v.numpy() if torch.is_tensor(v) else v for k, v in batch_for(method).items()}
    with pytest.raises(UndeclaredInputError) as err:
        train_one_epoch(method, [batch], optimizer, build_scheduler(optimizer, experiment.train, 1),
                        torch.device("cpu"), epoch=0, epochs=1, steps_per_epoch=1)
    message = str(err.value)
    assert "\n" not in message and "'label'" in message and "mocov2" in message and "view1, view2" in message


def epoch_of(method, experiment, batches, steps):
    stage = StagePlan.of(experiment).stages[0]
    optimizer = build_optimizer(stage_param_groups(method, stage), experiment.train, stage=stage)
    return train_one_epoch(method, batches, optimizer, build_scheduler(optimizer, experiment.train, steps),
                           torch.device("cpu"), epoch=0, epochs=1, steps_per_epoch=steps)


def test_epoch_losses_are_step_means_and_a_non_finite_loss_names_its_step():
    method, experiment = make("mocov2")
    step = method.training_step
    seen = []

    def recorded(batch):
        out = step(batch)
        seen.append({k: float(v.detach()) for k, v in out.items()})
        return out

    method.training_step = recorded
    batch = {k: v.numpy() if torch.is_tensor(v) else v for k, v in batch_for(method).items()}
    stats = epoch_of(method, experiment, [batch] * 3, 3)
    assert stats.steps == 3 and set(stats.losses) == {"loss", "loss_cl"}
    assert stats.losses["loss"] == pytest.approx(sum(s["loss"] for s in seen) / 3, rel=1e-6)

    def nan_at_second_step(batch):
        seen.append(step(batch))
        out = seen[-1]
        return {**out, "loss": out["loss"] * float("nan")} if len(seen) == 2 else out

    seen.clear()
    method.training_step = nan_at_second_step
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at epoch 1 step 2: \{'loss_cl'"):
        epoch_of(method, experiment, [batch] * 3, 3)
