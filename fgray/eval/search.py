"""Exact inner-product k-nearest-neighbour search: faiss ``IndexFlatIP`` or a torch top-k.

Tie rule (both backends, and every metric built on them): a row is ranked by score
descending, and equal scores are ordered by gallery index ascending. torch.topk and faiss
leave tie order (and which tied items make the cut at position k) unspecified, so both
paths repair it:

- torch: ``topk_desc`` re-selects rows whose k-th score is shared by an item left out,
  then orders equal scores by index.
- faiss: the search asks for one extra neighbour; a row whose (k+1)-th score equals its
  k-th score has a tie across the cut and is recomputed exactly with the torch path.

Scores of the two backends can differ in the last bit (different BLAS), so on data with
near-ties they may rank two items differently; on data without such ties they return
identical indices (tested).

GPU faiss accepts k <= 2048 per call (``GPU_MAX_K``). For a larger k on GPUs the gallery is
split into strided chunks (item i in chunk i mod S, S >= 2k / 2048, so each chunk holds about
half the limit of a query's top-k), each searched on the GPUs for up to 2048 neighbours, and
the lists are merged. The merge is exact for a query when every chunk that returned fewer
items than it holds ended strictly below the merged k-th score (nothing it left out can rank
higher); the other queries are recomputed exactly on the CPU ``IndexFlatIP``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

Backend = Literal["auto", "faiss", "torch"]

GPU_MAX_K = 2048  # faiss GPU limit on k (and nprobe) per search call
BLOCK_ELEMENTS = 1 << 25  # similarity entries held at once (32M float32 = 128 MiB)

__all__ = ["knn", "topk_desc", "as_float_tensor", "resolve_backend", "GPU_MAX_K", "BLOCK_ELEMENTS"]


def as_float_tensor(x) -> Tensor:
    """A float32 torch tensor on ``x``'s device (numpy arrays and lists land on the CPU)."""
    if isinstance(x, Tensor):
        return x.detach().to(torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def _faiss_gpus() -> int:
    """Number of GPUs faiss can use; 0 when faiss is missing or CPU-only."""
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> faiss when importable, except torch for CUDA inputs when faiss has no GPU."""
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend != "auto":
        return backend
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "torch"
    if device.type == "cuda" and _faiss_gpus() == 0:
        return "torch"
    return "faiss"


def block_rows(n_cols: int, query_batch: int) -> int:
    """Rows per block: at most ``query_batch`` and at most ``BLOCK_ELEMENTS`` entries."""
    return max(1, min(int(query_batch), BLOCK_ELEMENTS // max(1, n_cols)))


# --------------------------------------------------------------------------- top-k + ties


def _order_ties(vals: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (score desc, index asc). vals, idx: [B, k] (already score-sorted)."""
    if vals.shape[1] < 2:
        return vals, idx
    tied = (vals[:, 1:] == vals[:, :-1]).any(dim=1).nonzero().flatten()
    if tied.numel() == 0:  # common case: nothing to repair
        return vals, idx
    v, i = vals[tied], idx[tied]
    by_index = i.argsort(dim=1)
    v, i = v.gather(1, by_index), i.gather(1, by_index)
    by_score = torch.sort(v, dim=1, descending=True, stable=True).indices  # stable keeps index order
    vals, idx = vals.clone(), idx.clone()
    vals[tied], idx[tied] = v.gather(1, by_score), i.gather(1, by_score)
    return vals, idx


def _topk_exact_rows(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k under the tie rule for a few rows, by masks. scores: [B, N] -> ([B, k], [B, k])."""
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    greater = scores > kth
    equal = scores == kth
    need = k - greater.sum(dim=1, keepdim=True)  # how many tied items make the cut
    chosen = greater | (equal & (equal.cumsum(dim=1) <= need))  # lowest-index tied items
    idx = chosen.nonzero()[:, 1].view(-1, k)  # row-major: ascending index in each row
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, order), idx.gather(1, order)


def topk_desc(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row under fgray's tie rule (score desc, then index asc).

    scores: [B, N] float; 1 <= k <= N. Returns (values [B, k], indices [B, k] int64) on
    ``scores.device``. Exact even when ties straddle position k (those rows are redone
    with masks, see ``_topk_exact_rows``).
    """
    n = scores.shape[1]
    vals, idx = torch.topk(scores, min(k + 1, n), dim=1)  # one extra to see across the cut
    # A row is ambiguous when the first item left out ties with the k-th one.
    short = (vals[:, k] == vals[:, k - 1]).nonzero().flatten() if k < n else idx[:0, 0]
    vals, idx = vals[:, :k], idx[:, :k]
    if short.numel():
        vals, idx = vals.clone(), idx.clone()
        step = block_rows(scores.shape[1], 4096) // 8 or 1  # cumsum is int64: 8 bytes/entry
        for s in range(0, short.numel(), step):
            rows = short[s : s + step]
            vals[rows], idx[rows] = _topk_exact_rows(scores[rows], k)
    return _order_ties(vals, idx)


# --------------------------------------------------------------------------- backends


def _mask_excluded(scores: Tensor, exclude: Tensor | None) -> Tensor:
    """Set scores[b, exclude[b]] = -inf where exclude[b] >= 0 (in place). scores: [B, N]."""
    if exclude is not None:
        rows = (exclude >= 0).nonzero().flatten()
        scores[rows, exclude[rows]] = float("-inf")
    return scores


def _knn_torch_rows(q: Tensor, g: Tensor, k: int, exclude: Tensor | None) -> tuple[Tensor, Tensor]:
    """One block: q [B, D], g [N, D], exclude [B] or None -> ([B, k], [B, k])."""
    scores = _mask_excluded(q @ g.T, exclude)
    return topk_desc(scores, k)


def _knn_torch(q: Tensor, g: Tensor, k: int, exclude: Tensor | None, query_batch: int):
    step = block_rows(g.shape[0], query_batch)
    outs = [
        _knn_torch_rows(q[s : s + step], g, k, None if exclude is None else exclude[s : s + step])
        for s in range(0, q.shape[0], step)
    ]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _flat_index(g: np.ndarray, on_gpus: bool):
    """IndexFlatIP over g [N, D], sharded over all GPUs when ``on_gpus``."""
    import faiss

    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    if on_gpus:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = True  # each GPU holds a slice of the gallery; faiss merges the top-k
        index = faiss.index_cpu_to_all_gpus(index, co=co)
    return index


def _faiss_index(g: np.ndarray, k_call: int):
    """An index over g [N, D] with ``search(q, k)``: on all GPUs when faiss has GPUs (chunked and
    merged when k exceeds GPU_MAX_K), else the CPU IndexFlatIP."""
    if _faiss_gpus() == 0:
        return _flat_index(g, on_gpus=False)
    if k_call <= GPU_MAX_K:
        return _flat_index(g, on_gpus=True)
    return _ChunkedIndex(g, k_call)


class _ChunkedIndex:
    """Exact top-k beyond GPU_MAX_K from GPU searches of gallery chunks (see the module docstring)."""

    def __init__(self, g: np.ndarray, k: int):
        self.count = max(2, -(-2 * k // GPU_MAX_K))  # chunks: ceil(2k / limit)
        self.sizes = [len(range(c, len(g), self.count)) for c in range(self.count)]
        self.parts = [_flat_index(np.ascontiguousarray(g[c :: self.count]), on_gpus=True) for c in range(self.count)]
        self.gallery, self.exact = g, None  # exact: the CPU index for queries the merge cannot certify

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids, incomplete_ends = [], [], []
        for c, (part, size) in enumerate(zip(self.parts, self.sizes)):
            d, i = part.search(q, min(GPU_MAX_K, size))
            scores.append(d)
            ids.append(np.where(i >= 0, i * self.count + c, -1))
            if size > GPU_MAX_K:  # it left items out: all of them score <= its last returned score
                incomplete_ends.append(d[:, -1])
        d, i = np.concatenate(scores, axis=1), np.concatenate(ids, axis=1)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        d, i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
        unsure = np.zeros(len(q), dtype=bool)
        for end in incomplete_ends:
            unsure |= end >= d[:, -1]
        if unsure.any():  # a chunk may hold more of this query's top-k than it returned
            self.exact = self.exact or _flat_index(self.gallery, on_gpus=False)
            d[unsure], i[unsure] = self.exact.search(q[unsure], k)
        return d, i


def _knn_faiss(q: Tensor, g: Tensor, k: int, exclude: Tensor | None, query_batch: int):
    n = g.shape[0]
    has_excl = exclude is not None and bool((exclude >= 0).any())
    # +1 for the excluded item, +1 to see whether a tie crosses position k
    k_call = min(n, k + 1 + int(has_excl))
    q_np = np.ascontiguousarray(q.cpu().numpy())
    g_cpu = g.cpu()
    index = _faiss_index(np.ascontiguousarray(g_cpu.numpy()), k_call)
    vals_out, idx_out = [], []
    for s in range(0, q.shape[0], max(1, int(query_batch))):
        d, i = index.search(q_np[s : s + query_batch], k_call)
        d, i = torch.from_numpy(d), torch.from_numpy(i).long()
        if has_excl:
            ex = exclude[s : s + query_batch].cpu()
            keep = i != ex[:, None]
            keep[keep.all(dim=1), -1] = False  # excluded item not returned: drop the extra
            d, i = d[keep].view(len(d), -1), i[keep].view(len(i), -1)
        if d.shape[1] > k:  # one extra column: a tie across the cut makes the row ambiguous
            redo = (d[:, k] == d[:, k - 1]).nonzero().flatten()
            d, i = d[:, :k].contiguous(), i[:, :k].contiguous()
            if redo.numel():
                ex = None if exclude is None else exclude[s : s + query_batch].cpu()[redo]
                d[redo], i[redo] = _knn_torch_rows(q[s : s + query_batch].cpu()[redo], g_cpu, k, ex)
        vals_out.append(d)
        idx_out.append(i)
    vals, idx = _order_ties(torch.cat(vals_out), torch.cat(idx_out))
    return vals.to(q.device), idx.to(q.device)


def knn(
    query,
    gallery,
    k: int,
    *,
    exclude_self: bool = False,
    exclude_index=None,
    backend: Backend = "auto",
    query_batch: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours by inner product (pass L2-normalised inputs for cosine).

    query: [Q, D], gallery: [N, D] (torch tensors or numpy arrays; not normalised here).
    exclude_self: leave-one-out, query i is gallery item i (requires Q == N); item i is
        removed from row i by index, so duplicates of the query still count.
    exclude_index: [Q] int, a gallery index to remove from each row (-1: none); the
        general form of exclude_self, e.g. for a shard of queries or shared image ids.
    backend: "faiss" (IndexFlatIP; sharded over all GPUs when faiss has GPUs, in merged
        gallery chunks when k+2 > 2048; else CPU), "torch" (batched matmul + topk on the
        query's device), or
        "auto" (faiss, unless the query is on CUDA and faiss has no GPU).
    query_batch: queries per search call; the torch path also caps a block at
        BLOCK_ELEMENTS similarity entries so memory stays bounded.

    Returns (scores [Q, k] float32, indices [Q, k] int64) on the query's device, each row
    ordered by score descending, ties by gallery index ascending. Raises ValueError when
    k exceeds the number of gallery items left after exclusion.
    """
    q, g = as_float_tensor(query), as_float_tensor(gallery)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query [Q, D] and gallery [N, D] must share D, got {tuple(q.shape)}, {tuple(g.shape)}")
    g = g.to(q.device)
    exclude = None
    if exclude_self:
        if exclude_index is not None:
            raise ValueError("pass exclude_self or exclude_index, not both")
        if q.shape[0] != g.shape[0]:
            raise ValueError(f"exclude_self needs Q == N, got {q.shape[0]} and {g.shape[0]}")
        exclude = torch.arange(q.shape[0], device=q.device)
    elif exclude_index is not None:
        if not isinstance(exclude_index, Tensor):
            exclude_index = torch.as_tensor(np.asarray(exclude_index))
        exclude = exclude_index.to(device=q.device, dtype=torch.int64)
        if exclude.shape != (q.shape[0],) or bool((exclude >= g.shape[0]).any()):
            raise ValueError("exclude_index must be [Q] with values in [-1, N)")
    available = g.shape[0] - int(exclude is not None and bool((exclude >= 0).any()))
    if not 1 <= k <= available:
        raise ValueError(f"k={k} must be in [1, {available}] (gallery items left after exclusion)")
    if q.shape[0] == 0:
        return torch.empty(0, k, device=q.device), torch.empty(0, k, dtype=torch.int64, device=q.device)
    if resolve_backend(backend, q.device) == "faiss":
        return _knn_faiss(q, g, k, exclude, query_batch)
    return _knn_torch(q, g, k, exclude, query_batch)
