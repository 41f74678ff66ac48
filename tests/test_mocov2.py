"""MoCo v2: queue FIFO behaviour and its keys as the negatives, momentum update, key encoder
outside the gradient, MoCo v2's head, shuffle-BN on one worker and across two gloo ranks."""
from __future__ import annotations

import copy

import torch
from torch import nn

import fgray.methods.parts as parts
from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts
from fgray.losses import info_nce
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
    assert torch.equal(method.moco.queue.keys, keys_before)  # the step's keys wait for its update
    method.after_step(0.0)
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


def test_head_is_moco_v2s_linear_relu_linear_and_ppssl_keeps_its_own():
    from fgray.methods.configs import PPSSLConfig
    from fgray.methods.ppssl import PPSSL
    from fgray.models import build_backbone

    method = small_moco()
    layers = list(method.moco.head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear]  # no BN (MoCo v2's code)
    width = method.moco.backbone.num_features
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (width, 16, 4)
    cfg = PPSSLConfig(ais=False, iadm=False, queue_size=8, proj_dim=4, hidden_dim=16)
    ppssl = PPSSL(cfg, build_backbone("test_resnet"), DatasetFacts(num_classes=2, image_size=32))
    # PP-SSL: "two fully connected layers with ReLU activation and a linear layer with BN".
    assert [type(m) for m in ppssl.moco.head.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear,
                                                      nn.BatchNorm1d]


def test_queue_holds_the_enqueued_keys_and_they_are_the_negatives(monkeypatch):
    method = small_moco()  # queue of 8, batches of 4: the third batch overwrites the first
    calls = []

    def spy(query, key, negatives, temperature):
        calls.append((key.clone(), negatives.clone()))
        return info_nce(query, key, negatives, temperature)

    monkeypatch.setattr(parts, "info_nce", spy)
    keys = []
    encode = method.moco.key
    monkeypatch.setattr(method.moco, "key", lambda images: keys.append(encode(images)) or keys[-1])
    initial = method.moco.queue.keys.clone()
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        images = torch.randn(4, 3, 32, 32, generator=g)
        method.training_step({"view1": images, "view2": images.flip(3)})
        assert torch.equal(calls[step][0], keys[step])  # the positive is this step's key
        method.after_step(0.0)  # the step's keys join the queue after its optimiser step
    # The negatives are the queue as it stood: first the initial keys, then the enqueued ones.
    assert torch.equal(calls[0][1], initial)
    assert torch.equal(calls[1][1], torch.cat([keys[0], initial[4:]]))
    assert torch.equal(calls[2][1], torch.cat([keys[0], keys[1]]))
    # FIFO: the third batch replaced the oldest (the first); the queue holds exactly these keys.
    assert torch.equal(method.moco.queue.keys, torch.cat([keys[2], keys[1]]))
    assert int(method.moco.queue.pointer) == 4


def row_ids(rows: torch.Tensor, every: torch.Tensor) -> list[int]:
    return [int((every.flatten(1) == row.flatten()).all(dim=1).nonzero()) for row in rows]


def test_single_worker_shuffle_bn_encodes_random_sub_batches():
    method = small_moco(shuffle_bn_splits=2)
    moco = method.moco
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    seen = []
    hook = moco.key_backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    torch.manual_seed(0)
    keys = moco.key(images)
    hook.remove()
    # Two sub-batches of 4 that together hold every image, drawn at random (not the halves in order).
    groups = [row_ids(batch, images) for batch in seen]
    assert [len(g) for g in groups] == [4, 4] and sorted(groups[0] + groups[1]) == list(range(8))
    assert groups != [[0, 1, 2, 3], [4, 5, 6, 7]]
    # Each sub-batch had its own BN statistics and the keys came back in the images' order.
    with torch.no_grad():
        by_id = {i: k for batch, ids in zip(seen, groups)
                 for i, k in zip(ids, moco._encode_key(batch))}
        whole = moco._encode_key(images)
    torch.testing.assert_close(keys, torch.stack([by_id[i] for i in range(8)]))
    assert not torch.allclose(keys, whole, atol=1e-4)  # full-batch statistics give other keys
    # BN in eval mode: the shuffle changes nothing.
    moco.eval()
    torch.testing.assert_close(moco.key(images), moco._encode_key(images))
    # shuffle_bn_splits 1, or too few images for two per sub-batch: one pass, nothing drawn.
    moco.train()
    seen.clear()
    hook = moco.key_backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    state = torch.get_rng_state()
    moco.key(images[:3])
    hook.remove()
    assert len(seen) == 1 and torch.equal(seen[0], images[:3])
    assert torch.equal(torch.get_rng_state(), state)


def test_shuffle_bn_across_two_gloo_ranks(tmp_path):
    """MoCo's DDP batch shuffle: each rank's key BN sees a random slice of the gathered batch
    (not its own images), the slices partition it, and every rank gets its own keys back."""
    import torch.multiprocessing as mp

    from tests.ddp_shuffle_bn import IMAGES, worker

    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(2 * IMAGES))
    for result in ranks:
        assert len(result["seen"]) == IMAGES and set(result["seen"]) != set(result["own"])


def test_replica_digest_sees_the_replicated_state_but_not_per_rank_statistics():
    from fgray.methods.parts import replica_digest

    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    b = copy.deepcopy(a)
    assert torch.equal(replica_digest(a, ("0.", "1.")), replica_digest(b, ("0.", "1.")))
    b[1].running_mean += 1.0  # each rank's own batches move these: not part of the replica
    assert torch.equal(replica_digest(a, ("0.", "1.")), replica_digest(b, ("0.", "1.")))
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert not torch.equal(replica_digest(a, ("0.", "1.")), replica_digest(b, ("0.", "1.")))
    assert torch.equal(replica_digest(a, ("1.",)), replica_digest(b, ("1.",)))  # only what the prefixes name
