"""Registry-wide checks: every registered method trains, and only what should train gets gradients."""
from __future__ import annotations

import pytest
import torch

from fgray.config import ExperimentConfig
from fgray.engine import build_optimizer
from fgray.methods import method_names
from fgray.methods.registry import method_class
from fgray.engine import build_method

IMAGE_SIZE = 32


def make(name: str):
    torch.manual_seed(0)
    method_cfg = {"name": name, **method_class(name).smoke_overrides({"name": name})}
    experiment = ExperimentConfig(method=method_cfg, backbone={"name": "test_resnet"},
                                  data={"image_size": IMAGE_SIZE}, train={"lr": 0.05})
    return build_method(experiment), experiment


def fixed_batch(method, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    batch = {"view1": images, "view2": images + 0.05 * torch.randn(images.shape, generator=g)}
    for column, dim in getattr(method, "extra_column_dims", {}).items():
        batch[column] = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    return batch


@pytest.mark.parametrize("name", method_names())
def test_step_runs_and_only_trainable_parameters_get_gradients(name):
    method, _ = make(name)
    out = method.training_step(fixed_batch(method))
    assert "loss" in out and torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    trainable = {id(p) for group in method.param_groups() for p in group["params"]}
    for pname, param in method.named_parameters():
        if id(param) in trainable:
            assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name}: no gradient for {pname}"
        else:
            assert param.grad is None, f"{name}: frozen/momentum parameter {pname} got a gradient"
            assert not param.requires_grad, f"{name}: {pname} requires grad but is not optimised"


@pytest.mark.parametrize("name", method_names())
def test_embedding_is_l2_normalised(name):
    method, _ = make(name)
    method.eval()
    emb = method.embed(torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert emb.shape[0] == 3 and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("name", method_names())
def test_loss_falls_on_a_fixed_batch(name):
    method, experiment = make(name)
    optimizer = build_optimizer(method.param_groups(), experiment.train)
    batch = fixed_batch(method)
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
