"""MoCo v2: queue FIFO behaviour, momentum update, key encoder outside the gradient."""
from __future__ import annotations

import torch

from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts
from fgray.methods.mocov2 import MoCoV2
from fgray.methods.parts import KeyQueue, momentum_update
from fgray.engine import build_method


def small_moco(**overrides) -> MoCoV2:
    torch.manual_seed(0)
    method = {"name": "mocov2", "queue_size": 8, "proj_dim": 4, "hidden_dim": 16, **overrides}
    return build_method(ExperimentConfig(method=method, backbone={"name": "test_resnet"}, data={"image_size": 32}),
                        DatasetFacts(num_classes=2, image_size=32))


def test_queue_is_fifo_and_wraps():
    queue = KeyQueue(dim=2, size=5)
    first = torch.arange(6, dtype=torch.float32).view(3, 2)
    queue.enqueue(first)
    assert torch.equal(queue.keys[:3], first) and int(queue.pointer) == 3
    second = torch.full((3, 2), -1.0)
    queue.enqueue(second)  # positions 3, 4, then wraps to 0
    assert torch.equal(queue.keys[3:], second[:2]) and torch.equal(queue.keys[0], second[2])
    assert torch.equal(queue.keys[1:3], first[1:3]) and int(queue.pointer) == 1


def test_momentum_update_is_ema_of_parameters():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    momentum_update(online, target, 0.9)
    for b, o, t in zip(before, online.parameters(), target.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)


def test_training_step_fills_queue_and_key_encoder_gets_no_gradient():
    method = small_moco()
    images = torch.randn(4, 3, 32, 32)
    keys_before = method.moco.queue.keys.clone()
    out = method.training_step({"view1": images, "view2": images.flip(3)})
    out["loss"].backward()
    assert int(method.moco.queue.pointer) == 4
    assert not torch.equal(method.moco.queue.keys[:4], keys_before[:4])
    assert all(p.grad is None for p in method.moco.key_backbone.parameters())
    assert all(p.grad is None for p in method.moco.key_head.parameters())
    trainable = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not trainable & {id(p) for p in method.moco.key_backbone.parameters()}


def test_after_step_moves_key_encoder_towards_query_encoder():
    method = small_moco(momentum=0.5)
    with torch.no_grad():
        for p in method.moco.backbone.parameters():
            p.add_(1.0)
    q = next(method.moco.backbone.parameters())
    k = next(method.moco.key_backbone.parameters())
    gap = (q - k).abs().mean()
    method.after_step(0.5)
    assert torch.allclose((q - k).abs().mean(), gap / 2, rtol=1e-4)
