"""Retrieval metrics (deep-metric-learning protocol, DESIGN.md §4): Recall@K, mAP, MAP@R.

Memory stays bounded: queries are processed in blocks of B rows, so at most a [B, N]
similarity block (plus a sorted copy) exists at once, never the full [Q, N] matrix.
Per block:

- Recall@K / rank@K need the first max(K) neighbours (``search.topk_desc``, or
  ``search.knn`` with the faiss backend).
- mAP and MAP@R need the rank of every relevant item (looked up from per-class member
  lists, no [B, N] label compare): 1 + the scores above it (binary search in the row's
  sorted scores) + the equal scores at a lower gallery index. AP and MAP@R follow from
  those ranks alone (precision at the j-th relevant item is j / rank_j); MAP@R keeps
  the items with rank <= R. Only scores >= the row's lowest relevant score matter:
  rows whose relevant items all sit in the top list (depth max(K, min(max R, 1024)))
  are ranked from it, and when the other rows need few scores a top-k replaces the
  full row sort.

Tie rule: the ranking is by similarity descending, ties broken by gallery index
ascending (the same rule as ``fgray.eval.search``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .search import BLOCK_ELEMENTS, as_float_tensor, block_rows, knn, topk_desc

__all__ = ["retrieval_metrics"]

RANK_KS = (1, 5)  # PP-SSL's rank-k accuracy, always reported
TOPK_INSTEAD_OF_SORT = 16  # ranks: top-k when it needs <= 1/16 of a row, else a full sort
SHORTCUT_DEPTH = 1024  # top list depth that lets most rows skip the full-row ranking


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _encode_labels(query_labels, gallery_labels) -> tuple[np.ndarray, np.ndarray, int]:
    """Map arbitrary labels to shared int codes: ([Q] int64, [N] int64, number of codes)."""
    ql, gl = _as_numpy(query_labels).reshape(-1), _as_numpy(gallery_labels).reshape(-1)
    uniq, codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes[: len(ql)], codes[len(ql) :], len(uniq)


def _exclusions_from_ids(query_ids, gallery_ids, n_query: int, n_gallery: int) -> np.ndarray:
    """[Q] gallery index holding the same image id as each query, -1 where none."""
    qi, gi = _as_numpy(query_ids).reshape(-1), _as_numpy(gallery_ids).reshape(-1)
    if len(qi) != n_query or len(gi) != n_gallery:
        raise ValueError(f"query_ids/gallery_ids need {n_query}/{n_gallery} entries, got {len(qi)}/{len(gi)}")
    order = np.argsort(gi, kind="stable")
    sorted_ids = gi[order]
    if len(sorted_ids) > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ValueError("gallery_ids must be unique")
    pos = np.clip(np.searchsorted(sorted_ids, qi), 0, max(0, n_gallery - 1))
    found = (sorted_ids[pos] == qi) if n_gallery else np.zeros(n_query, dtype=bool)
    return np.where(found, order[pos], -1).astype(np.int64)


def _sort_rows(scores: Tensor) -> Tensor:
    """Each row sorted ascending (values only). numpy's SIMD sort is ~2.5x torch's on CPU."""
    if scores.device.type == "cpu":
        return torch.from_numpy(np.sort(scores.numpy(), axis=1))
    return torch.sort(scores, dim=1).values


def _scores_from_lowest_relevant(scores: Tensor, lowest: Tensor) -> Tensor:
    """Ascending rows holding every score >= ``lowest`` (per row), possibly more.

    scores: [B, N]; lowest: [B]. Scores below a row's lowest relevant score never rank
    ahead of a relevant item, so when the deepest row keeps <= N/TOPK_INSTEAD_OF_SORT
    scores a top-k of that size replaces the full row sort. Returns [B, W], W <= N.
    """
    n = scores.shape[1]
    width = int((scores >= lowest[:, None]).float().sum(dim=1).max())  # float sum: 3x bool's
    if width * TOPK_INSTEAD_OF_SORT <= n:
        return torch.topk(scores, width, dim=1).values.flip(1)
    return _sort_rows(scores)


def _count_ahead(ascending: Tensor, thr: Tensor) -> tuple[Tensor, Tensor]:
    """Scores strictly above each threshold, and whether another score equals it.

    ascending: [B, W] sorted rows containing every score >= the row's thresholds;
    thr: [B, M] thresholds that occur in the row. Returns ([B, M] float64, [B, M] bool).
    """
    right = torch.searchsorted(ascending, thr, right=True)
    left = torch.searchsorted(ascending, thr, right=False)
    return (ascending.shape[1] - right).to(torch.float64), (right - left) > 1


def _relevant_ranks(scores: Tensor, rel_cols: Tensor, rel_valid: Tensor,
                    top_vals: Tensor | None = None) -> Tensor:
    """1-based rank of each relevant item in its row's full ranking, ascending per row.

    Tie rule: score desc, then gallery index asc, so rank = 1 + higher scores + equal
    scores at a lower index. scores: [B, N] float, excluded items already -inf.
    rel_cols: [B, M] int64 gallery indices of each row's relevant items, where rel_valid
    [B, M] is True (every row has >= 1). top_vals: [B, k] the rows' top scores from
    ``scores``, descending (optional): a row whose relevant scores all lie strictly above
    its k-th score is ranked from that list alone. Returns [B, M] float64, +inf padding.
    """
    dev = scores.device
    thr = torch.where(rel_valid, scores.gather(1, rel_cols), torch.inf)  # pad: +inf
    lowest = thr.amin(dim=1)

    ahead = torch.empty(thr.shape, dtype=torch.float64, device=dev)
    tied = torch.empty(thr.shape, dtype=torch.bool, device=dev)
    easy = lowest > top_vals[:, -1] if top_vals is not None else torch.zeros_like(lowest, dtype=torch.bool)
    if bool(easy.any()):
        ahead[easy], tied[easy] = _count_ahead(top_vals[easy].flip(1), thr[easy])
    hard = ~easy
    if bool(hard.all()):
        ahead, tied = _count_ahead(_scores_from_lowest_relevant(scores, lowest), thr)
    elif bool(hard.any()):
        ahead[hard], tied[hard] = _count_ahead(_scores_from_lowest_relevant(scores[hard], lowest[hard]), thr[hard])

    tie_rows, tie_slots = (tied & rel_valid).nonzero(as_tuple=True)
    if tie_rows.numel():  # another item has the same score: lower gallery index goes first
        n = scores.shape[1]
        step = max(1, BLOCK_ELEMENTS // max(1, n))
        arange_n = torch.arange(n, device=dev)
        for s in range(0, tie_rows.numel(), step):
            r, t = tie_rows[s : s + step], tie_slots[s : s + step]
            same = scores[r] == thr[r, t][:, None]
            before = same & (arange_n[None, :] < rel_cols[r, t][:, None])
            ahead[r, t] += before.sum(dim=1).to(torch.float64)

    rank = torch.where(rel_valid, ahead + 1.0, torch.inf)
    return torch.sort(rank, dim=1).values  # relevant items in ranked order


def _ap_and_map_r(ranks: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row AP and MAP@R from the sorted ranks [B, M] (+inf padding) of relevant items.

    The j-th relevant item sits at rank_j, where precision is j / rank_j, so
    AP = (1/R) sum_j j / rank_j and MAP@R = (1/R) sum_{j: rank_j <= R} j / rank_j
    (R = number of relevant items; the same as summing P@i over the top-R list).
    Returns ([B], [B]) float64.
    """
    n_rel = torch.isfinite(ranks).sum(dim=1, keepdim=True).to(torch.float64)
    j = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    precision = j / ranks  # 0 for padding
    ap = precision.sum(dim=1) / n_rel[:, 0]
    map_r = (precision * (ranks <= n_rel)).sum(dim=1) / n_rel[:, 0]
    return ap, map_r


def _relevant_columns(labels: Tensor, excl: Tensor, members: Tensor, starts: Tensor,
                      sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Gallery indices of each query's class (CSR lookup), minus the excluded item.

    labels, excl: [B]; members: [N] gallery indices sorted by (label, index); starts,
    sizes: [C] class offsets into members. Returns (cols [B, M], valid [B, M] bool).
    """
    st, sz = starts[labels], sizes[labels]
    offs = torch.arange(int(sz.max()), device=labels.device)
    valid = offs[None, :] < sz[:, None]
    cols = members[(st[:, None] + offs[None, :]).clamp(max=members.numel() - 1)]
    return cols, valid & (cols != excl[:, None])


def _hits(rel_top: Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Queries of a block with a relevant item in their top K. rel_top: [B, k] bool."""
    return {f"hit@{kk}": float(rel_top[:, :kk].any(dim=1).sum()) for kk in ks}


def retrieval_metrics(
    query,
    query_labels,
    gallery=None,
    gallery_labels=None,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    query_ids=None,
    gallery_ids=None,
    backend: str = "auto",
    query_batch: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@K, mAP, MAP@R and rank@1/5 of cosine retrieval.

    query: [Q, D] float embeddings, query_labels: [Q]; gallery: [N, D], gallery_labels:
    [N] (torch or numpy; L2-normalised here). Labels may be any sortable values.

    - No gallery: leave-one-out over the query set; query i is excluded from its own
      ranking by index (never by dropping rank 1), so exact duplicates of the query
      still count as neighbours.
    - Query vs gallery (In-Shop): nothing is excluded, except that where ``query_ids``
      and ``gallery_ids`` are both given, a gallery item with the same id as the query
      (the same image in both sets) is excluded. gallery_ids must be unique.

    Relevant items: gallery items sharing the query's label (minus the excluded one).
    Queries with no relevant item (e.g. single-member classes in leave-one-out) are
    left out of every average; ``num_queries`` counts the queries that were scored.
    If no query can be scored, every metric is NaN.

    Returns fractions in [0, 1]: ``recall@K`` for K in ks (1 if any of the top K shares
    the label), ``map`` (mean average precision over the full ranking), ``map@r``
    (MAP@R of "A Metric Learning Reality Check", R = number of relevant items),
    ``rank@1`` and ``rank@5`` (PP-SSL's rank-k accuracy, = recall@1 / recall@5), and
    ``num_queries`` (a float). K larger than the gallery counts the whole gallery.

    Ranking: similarity descending, ties by gallery index ascending.
    backend: "torch" (one matmul per block feeds every metric, on the query's device),
        "faiss" (top-k lists from ``knn``'s faiss backend; mAP still needs every
        similarity, so blocks are also multiplied in torch), "auto" = "torch", since mAP
        needs the full similarity rows anyway.
    query_batch: queries per block; default keeps a block near 2**25 similarities.
    device: where the blocks are computed; default the query's device (pass "cuda" to
        use a GPU for CPU/numpy embeddings).
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("pass gallery and gallery_labels together")
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("pass query_ids and gallery_ids together")
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")

    q = as_float_tensor(query)
    if device is not None:
        q = q.to(device)
    dev = q.device
    g = q if gallery is None else as_float_tensor(gallery).to(dev)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"embeddings must be [Q, D] and [N, D], got {tuple(q.shape)}, {tuple(g.shape)}")
    q = F.normalize(q, dim=1)  # cosine similarity = inner product of unit vectors
    if gallery is None:
        g, gallery_labels = q, query_labels
        exclude = np.arange(q.shape[0], dtype=np.int64)
    else:
        g = F.normalize(g, dim=1)
        exclude = np.full(q.shape[0], -1, dtype=np.int64)
        if query_ids is not None:
            exclude = _exclusions_from_ids(query_ids, gallery_ids, q.shape[0], g.shape[0])
    q_codes, g_codes, n_codes = _encode_labels(query_labels, gallery_labels)
    if len(q_codes) != q.shape[0] or len(g_codes) != g.shape[0]:
        raise ValueError("labels must have one entry per embedding")
    n = g.shape[0]

    # R per query = gallery items with its label, minus the excluded one if it shares it.
    has_excl = exclude >= 0
    excl_same = has_excl & (g_codes[np.where(has_excl, exclude, 0)] == q_codes)
    n_rel_all = np.bincount(g_codes, minlength=n_codes)[q_codes] - excl_same
    scored = np.flatnonzero(n_rel_all > 0)
    keys = [f"recall@{k}" for k in ks] + ["map", "map@r"] + [f"rank@{k}" for k in RANK_KS]
    if scored.size == 0:
        return {**{key: float("nan") for key in keys}, "num_queries": 0.0}

    hit_ks = sorted(set(min(k, n) for k in ks + RANK_KS))
    # Top list: every K, and deep enough (up to SHORTCUT_DEPTH) for most rows' relevant
    # items to sit inside it (mAP's shortcut). The excluded item sits at -inf in a block,
    # so a depth of n stays correct (it is never counted as relevant).
    depth = min(max(max(hit_ks), min(int(n_rel_all[scored].max()), SHORTCUT_DEPTH)), n)

    q_codes_t = torch.from_numpy(q_codes).to(dev)
    g_codes_t = torch.from_numpy(g_codes).to(dev)
    exclude_t = torch.from_numpy(exclude).to(dev)
    scored_t = torch.from_numpy(scored).to(dev)
    # class member lists (CSR): relevant items are looked up, not found by a [B, N] compare
    members = torch.from_numpy(np.argsort(g_codes, kind="stable")).to(dev)
    sizes_np = np.bincount(g_codes, minlength=n_codes)
    sizes = torch.from_numpy(sizes_np).to(dev)
    starts = torch.from_numpy(np.cumsum(sizes_np) - sizes_np).to(dev)

    faiss_top = None
    if backend == "faiss" and depth <= n - int(has_excl[scored].any()):  # else knn's k is too big
        faiss_top = knn(q[scored_t], g, depth, exclude_index=exclude_t[scored_t], backend="faiss")[1]

    totals: dict[str, float] = {}
    step = block_rows(n, query_batch if query_batch is not None else 4096)
    for s in range(0, scored.size, step):
        rows = scored_t[s : s + step]
        excl, label = exclude_t[rows], q_codes_t[rows]
        sims = q[rows] @ g.T  # [B, N]
        masked = (excl >= 0).nonzero().flatten()
        sims[masked, excl[masked]] = float("-inf")  # excluded by index, never by rank
        top_vals = None  # faiss scores may differ from sims in the last bit: not reused
        if faiss_top is None:
            top_vals, top = topk_desc(sims, depth)
        else:
            top = faiss_top[s : s + step]
        rel_top = (g_codes_t[top] == label[:, None]) & (top != excl[:, None])
        part = _hits(rel_top, hit_ks)
        cols, valid = _relevant_columns(label, excl, members, starts, sizes)
        ap, map_r = _ap_and_map_r(_relevant_ranks(sims, cols, valid, top_vals))
        part["map"], part["map@r"] = float(ap.sum()), float(map_r.sum())
        for key, val in part.items():
            totals[key] = totals.get(key, 0.0) + val

    count = float(scored.size)
    out = {f"recall@{k}": totals[f"hit@{min(k, n)}"] / count for k in ks}
    out["map"] = totals["map"] / count
    out["map@r"] = totals["map@r"] / count
    for k in RANK_KS:
        out[f"rank@{k}"] = totals[f"hit@{min(k, n)}"] / count
    out["num_queries"] = count
    return out
