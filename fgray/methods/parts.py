"""Parts several methods share (DESIGN.md §3): momentum (EMA) encoders, the negative-key queue,
MoCo's encoder pair with its shuffle-BN, BatchNorm passes that leave the running statistics alone,
all_gather, Grad-CAM / attention-map helpers and the DDP ignore list."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fgray.losses import info_nce
from fgray.models.backbone import Backbone
from fgray.models.heads import ProjectionHead


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that receives no gradients (momentum/teacher encoders)."""
    target = copy.deepcopy(module)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online (MoCo's key-encoder update)."""
    # Only parameters: the target's BatchNorm statistics come from its own forward passes (as MoCo).
    for p_online, p_target in zip(online.parameters(), target.parameters()):
        p_target.mul_(momentum).add_(p_online.detach(), alpha=1.0 - momentum)


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module):
    """Train-mode BatchNorm that normalises by the batch's statistics but does not fold them into
    its running statistics (momentum 0: running = 1 x running + 0 x batch), for passes of inputs
    unlike the test images (VAPNet's grid crops, OLDFS's decoded images): the running statistics
    are what the test-time embedding normalises with."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    # the pass still counts a batch; momentum None (a cumulative average) divides by that count
    counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
              for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in zip(norms, momenta, counts):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


@torch.no_grad()
def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every DDP rank along dim 0 (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def ring_write(buffer: Tensor, pointer: Tensor, rows: Tensor) -> None:
    """Write ``rows`` (N <= len(buffer)) into the ring ``buffer`` from ``pointer`` on, wrapping
    around its end, and advance ``pointer`` (a 0-d long buffer). The arithmetic stays on the
    device: no host sync in the training step. MoCo's queue and OLDFS's bank are such rings."""
    positions = (torch.arange(rows.shape[0], device=rows.device) + pointer) % buffer.shape[0]
    buffer[positions] = rows.to(buffer.dtype)
    pointer.copy_((pointer + rows.shape[0]) % buffer.shape[0])


class KeyQueue(nn.Module):
    """FIFO queue of L2-normalised keys (MoCo's dictionary), kept as buffers so it checkpoints.

    Every rank enqueues the same all-gathered keys, so the queue stays identical across ranks.
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("keys", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Insert (N, D) keys, overwriting the oldest; wraps around the end of the buffer."""
        ring_write(self.keys, self.pointer, keys.detach()[: self.size])


class MoCoEncoders(nn.Module):
    """The query/key encoder pair and queue that MoCo-family methods share (MoCo v2, PP-SSL, OLDFS).

    Query encoder f = backbone + MLP head; key encoder = momentum copy of f (no gradients, so
    outside DDP's gradient bookkeeping); negatives from a FIFO queue of past keys that every DDP
    rank fills with the keys all-gathered from all ranks. ``cfg``: temperature, momentum,
    momentum_schedule, queue_size, proj_dim, hidden_dim, shuffle_bn_splits (MocoV2Config's fields).
    ``head``: the query head; default MoCo v2's Linear-ReLU-Linear (no BN, as MoCo v2's code).

    The key encoder runs with MoCo's shuffle-BN (``key``): its BatchNorm must not compute the
    statistics of the very samples the query encoder normalises together, or the pair can "cheat"
    through the batch statistics (MoCo Sec. 3.3) instead of learning features.
    """

    # Identical on every rank by construction: DDP need not broadcast them (``ddp_ignore``).
    IGNORED = ("key_backbone.", "key_head.", "queue.")

    def __init__(self, backbone: Backbone, cfg, head: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = head if head is not None else ProjectionHead(
            backbone.num_features, cfg.hidden_dim, cfg.proj_dim, hidden_bn=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        self.queue = KeyQueue(cfg.proj_dim, cfg.queue_size)
        self.current_momentum = cfg.momentum
        self.pending_keys: Tensor | None = None  # this step's keys, enqueued after its optimiser step

    def query(self, feature_map: Tensor) -> Tensor:
        """(B, C, h, w) query feature map -> (B, proj_dim) L2-normalised query."""
        return F.normalize(self.head(self.backbone.pool(feature_map)), dim=1)

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, proj_dim) L2-normalised keys from the momentum encoder, shuffle-BN.

        Several DDP ranks: MoCo's batch shuffle (``batch_shuffle_ddp``): each rank encodes a random
        slice of the all-gathered batch, then gets its own keys back. One worker (no other rank to
        trade samples with): the substitute ``split_shuffle_forward``, the batch in
        ``shuffle_bn_splits`` random sub-batches, each with its own BN statistics (MoCo's
        single-GPU SplitBatchNorm emulation does the same); the query's BN sees the whole batch.
        """
        if _world_size() > 1:
            shuffled, unshuffle = batch_shuffle_ddp(images)
            return batch_unshuffle_ddp(self._encode_key(shuffled), unshuffle)
        return split_shuffle_forward(self._encode_key, images, self.cfg.shuffle_bn_splits)

    def _encode_key(self, images: Tensor) -> Tensor:
        return F.normalize(self.key_head(self.key_backbone(images)), dim=1)

    def contrastive_loss(self, query: Tensor, key: Tensor) -> Tensor:
        """InfoNCE against the queue as it stands. This step's keys join it in ``after_step``: the
        backward pass still reads the queue, so it cannot change inside the step (MoCo's code
        clones it instead; under torch.compile that clone did not protect it)."""
        return info_nce(query, key, self.queue.keys.detach(), self.cfg.temperature)

    def enqueue_after_step(self, key: Tensor) -> None:
        self.pending_keys = key.detach()

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Enqueue the step's keys (all-gathered from every rank), then the momentum update."""
        if self.pending_keys is not None:
            self.queue.enqueue(all_gather_cat(self.pending_keys))
            self.pending_keys = None
        self.update_momentum(progress)

    @torch.no_grad()
    def update_momentum(self, progress: float) -> None:
        self.current_momentum = momentum_at(self.cfg.momentum, self.cfg.momentum_schedule, progress)
        momentum_update(self.backbone, self.key_backbone, self.current_momentum)
        momentum_update(self.head, self.key_head, self.current_momentum)


# ------------------------------------------------------------------------------ shuffle-BN


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.compiler.disable
def random_permutation(n: int, device: torch.device) -> Tensor:
    """``torch.randperm`` kept out of compiled graphs (a graph break under ``train.compile``):
    inductor's rewrite of a randperm followed by indexing failed to compile MoCo v2's and PP-SSL's
    steps (torch 2.11, bench/README.md's GPU check)."""
    return torch.randperm(n, device=device)


@torch.no_grad()
def batch_shuffle_ddp(x: Tensor) -> tuple[Tensor, Tensor]:
    """MoCo's batch shuffle across DDP ranks: (B, ...) local batch -> this rank's B samples of a
    random permutation of the all-gathered (W*B, ...) batch, and the inverse permutation (W*B,).

    Rank 0 draws the permutation and broadcasts it, so every rank takes a disjoint slice.
    Every rank must hold the same B (the trial's batches drop the last, short one).
    """
    gathered = all_gather_cat(x)  # (W*B, ...)
    permutation = random_permutation(gathered.shape[0], x.device)
    dist.broadcast(permutation, src=0)
    mine = permutation.view(dist.get_world_size(), -1)[dist.get_rank()]  # (B,)
    return gathered[mine], torch.argsort(permutation)


@torch.no_grad()
def batch_unshuffle_ddp(x: Tensor, unshuffle: Tensor) -> Tensor:
    """Undo ``batch_shuffle_ddp``: (B, ...) outputs of this rank's shuffled slice -> (B, ...)
    outputs of this rank's own samples, in their order."""
    gathered = all_gather_cat(x)  # (W*B, ...) in shuffled order
    return gathered[unshuffle.view(dist.get_world_size(), -1)[dist.get_rank()]]


@torch.no_grad()
def split_shuffle_forward(encode, x: Tensor, splits: int) -> Tensor:
    """Shuffle-BN on one worker: ``encode`` over ``splits`` random sub-batches of ``x`` (B, ...),
    outputs returned in ``x``'s order. BN's statistics are per sub-batch, as on ``splits`` GPUs.

    A sub-batch keeps at least two samples (BN's training statistics need two); with one sub-batch
    the permutation would change nothing (BN is permutation-invariant), so none is drawn.
    """
    groups = max(1, min(splits, x.shape[0] // 2))
    if groups == 1:
        return encode(x)
    permutation = random_permutation(x.shape[0], x.device)
    out = torch.cat([encode(chunk) for chunk in x[permutation].tensor_split(groups)])
    return out[torch.argsort(permutation)]


def momentum_at(momentum: float, schedule: str, progress: float) -> float:
    """The EMA ratio at ``progress`` in [0, 1]: constant, or cosine from ``momentum`` to 1 (BYOL)."""
    if schedule == "cosine":
        return 1 - (1 - momentum) * (torch.cos(torch.tensor(torch.pi * progress)).item() + 1) / 2
    return momentum


# ------------------------------------------------------------------------------ attention maps


def attention_map(x: Tensor, eps: float = 1e-7) -> Tensor:
    """A(.) of PP-SSL Eqs. 2 / 7: ReLU, max over channels, min-max over the map; (B, K, h, w) ->
    (B, 1, h, w) in [0, 1].

    The order is the authors' (LCR's ``max_mask``, which PP-SSL's AIS reuses): channel max first,
    then one min-max, (m - min) / (max - min + 1e-7); the paper's denominator 1e-7 + max(alpha) is
    the max of the already shifted map (``img -= img.min(); img /= 1e-7 + img.max()``). The min and
    max are over each image's h x w map (LCR's code takes them over the whole batch, which would
    make an image's embedding depend on its batch-mates). A constant map (e.g. a 1 x 1 grid) has
    no range: it becomes 1 where positive, 0 where zero (m / max), not 0 everywhere.
    """
    peak = F.relu(x.float()).amax(dim=1).flatten(1)  # (B, h*w): ReLU, then max over channels
    low, high = peak.amin(dim=1, keepdim=True), peak.amax(dim=1, keepdim=True)
    span = high - low
    # The minimum's cell is exactly 0 whatever the input, so its gradient is exactly 0; the where
    # keeps autograd from sending a large upstream gradient there (IADM's KL has 1/w) along the
    # two paths peak and min(peak), whose float difference would be noise, not 0.
    shifted = peak - low
    shifted = torch.where(shifted > 0, shifted, torch.zeros_like(shifted))
    normed = torch.where(span > eps, shifted / (span + eps), peak / (high + eps))
    return normed.view(x.shape[0], 1, *x.shape[2:])


def batch_attention_map(x: Tensor, eps: float = 1e-7) -> Tensor:
    """LCR's ``att_max`` (``moco/builder.py`` max_mask): ReLU, max over channels, then one min-max over
    the whole batch, (m - min) / (1e-7 + max(m - min)); (B, K, h, w) -> (B, 1, h, w) in [0, 1].

    PP-SSL's IADM w in the authors' form (``method.iadm_form: lcr``): the loss that compares it with
    Grad-CAM is summed over the batch, so one scale for all its maps is what LCR's nu (= beta) was set
    on. Never an embedding: through the batch min and max an image's map depends on its batch-mates.
    """
    peak = F.relu(x.float()).amax(dim=1)  # (B, h, w)
    shifted = peak - peak.min()
    return (shifted / (eps + shifted.max())).unsqueeze(1)


def grad_cam_target(inputs: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM score ReLU(sum over channels of input * dL/dinput) (PP-SSL Eq. 6; OLDFS's eta before
    min-max): (B, C, H, W) -> (B, H, W), detached (a target, not a path for gradients)."""
    return F.relu((inputs.detach().float() * grad.detach().float()).sum(dim=1))


# ------------------------------------------------------------------------------ DDP


def ddp_ignore(module: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Tell DDP to neither synchronise nor broadcast the parameters and buffers under ``prefixes``
    (frozen teachers, momentum copies, queues: each rank keeps them identical by itself, and
    broadcasting a 65,536-key queue every step costs bandwidth for nothing). Call before wrapping."""
    prefixes = tuple(prefixes)
    named = (*module.named_parameters(), *module.named_buffers())
    names = [name for name, _ in named if name.startswith(prefixes)] if prefixes else []
    # The attribute DistributedDataParallel reads at construction (its documented helper,
    # DDP._set_params_and_buffers_to_ignore_for_model, sets exactly this).
    module._ddp_params_and_buffers_to_ignore = names
    return names


# Per-rank statistics inside otherwise replicated modules: a key encoder's BatchNorm running
# statistics follow the rank's own (shuffled) batches, by design.
_PER_RANK_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@torch.no_grad()
def replica_digest(module: nn.Module, prefixes: Iterable[str]) -> Tensor:
    """float64 checksums (sum, position-weighted sum) of every parameter and buffer under ``prefixes``,
    BatchNorm running statistics left out: equal on every rank iff those replicas are (in practice)."""
    prefixes = tuple(prefixes)
    sums = []
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if prefixes and name.startswith(prefixes) and not name.endswith(_PER_RANK_BUFFERS):
            flat = tensor.detach().double().flatten()
            weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            sums += [flat.sum(), (flat * weights).sum()]
    if not sums:
        return torch.zeros(1, dtype=torch.float64, device=next(module.parameters()).device)
    return torch.stack(sums)


def replicas_agree(module: nn.Module, prefixes: Iterable[str]) -> bool:
    """Whether the state every rank keeps identical by itself (DDP neither syncs nor broadcasts it:
    ``ddp_ignore``) is identical on every rank; True when not distributed. A collective: every rank
    calls it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    digest = replica_digest(module, prefixes)
    gathered = [torch.empty_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest)
    return all(torch.equal(other, gathered[0]) for other in gathered)
