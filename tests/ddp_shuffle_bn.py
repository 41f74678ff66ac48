"""The body of tests/test_mocov2.py's two-rank shuffle-BN test: one gloo process per rank, on CPU.

Kept apart from the test module so each spawned process imports only torch, timm and fgray's parts.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

IMAGES, SIZE = 4, 32  # per rank


def rank_images(rank: int) -> torch.Tensor:
    return torch.randn(IMAGES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100 + rank))


def row_ids(rows: torch.Tensor, every: torch.Tensor) -> list[int]:
    """Index in ``every`` (N, ...) of each of ``rows`` (n, ...)."""
    return [int((every.flatten(1) == row.flatten()).all(dim=1).nonzero()) for row in rows]


def worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        from fgray.methods.configs import MocoV2Config
        from fgray.methods.parts import MoCoEncoders, all_gather_cat
        from fgray.models import build_backbone

        torch.manual_seed(0)  # the same encoders on every rank (DDP would broadcast rank 0's)
        moco = MoCoEncoders(build_backbone("test_resnet", image_size=SIZE),
                            MocoV2Config(queue_size=16, proj_dim=8, hidden_dim=16))
        images = rank_images(rank)
        every = all_gather_cat(images)  # (world * IMAGES, 3, H, W), rank order
        torch.manual_seed(1)  # rank 0's permutation is the one used (broadcast)

        # BN in eval mode: a batch's keys do not depend on its batch-mates, so shuffling, encoding
        # and unshuffling must give each rank exactly the keys of its own images.
        moco.eval()
        with torch.no_grad():
            torch.testing.assert_close(moco.key(images), moco._encode_key(images))

        # BN in train mode: what the key encoder (its BN) saw on this rank.
        moco.train()
        seen: list[torch.Tensor] = []
        hook = moco.key_backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        keys = moco.key(images)
        hook.remove()
        assert len(seen) == 1 and seen[0].shape == images.shape
        seen_ids = row_ids(seen[0], every)
        own_ids = list(range(rank * IMAGES, (rank + 1) * IMAGES))
        # The keys came back to the rank that owns the images: recompute each sub-batch's keys
        # (train-mode BN on the same sub-batch), gather them and look up this rank's own.
        with torch.no_grad():
            sub_keys = moco._encode_key(seen[0])
        all_ids = all_gather_cat(torch.tensor(seen_ids))
        all_keys = all_gather_cat(sub_keys)
        by_id = {int(i): k for i, k in zip(all_ids, all_keys)}
        torch.testing.assert_close(keys, torch.stack([by_id[i] for i in own_ids]))
        torch.save({"seen": seen_ids, "own": own_ids}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
