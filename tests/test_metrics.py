"""Retrieval metrics: hand-computed cases and a slow full-sort reference (one query at a time)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fgray.eval import metrics as metrics_mod
from fgray.eval import retrieval_metrics

BACKENDS = ["torch", "faiss"]
KS = (1, 2, 4, 8)


def ref_metrics(q, ql, g=None, gl=None, ks=KS, qids=None, gids=None) -> dict[str, float]:
    """Slow reference: for each query, sort the whole gallery by (cosine desc, index asc)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    loo = g is None
    if loo:
        g, gl = q, ql
    g = np.asarray(g, dtype=np.float64)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = q @ g.T
    per_query = []
    for i in range(len(q)):
        cand = [
            j for j in range(len(g))
            if not (loo and j == i) and not (qids is not None and qids[i] == gids[j])
        ]
        order = sorted(cand, key=lambda j: (-sims[i, j], j))
        rel = [gl[j] == ql[i] for j in order]
        n_rel = sum(rel)
        if n_rel == 0:
            continue  # nothing to retrieve: left out of every average
        row = {f"recall@{k}": float(any(rel[:k])) for k in ks}
        row["rank@1"], row["rank@5"] = float(any(rel[:1])), float(any(rel[:5]))
        hits, ap, map_r = 0, 0.0, 0.0
        for pos, r in enumerate(rel, start=1):
            if r:
                hits += 1
                ap += hits / pos
                if pos <= n_rel:
                    map_r += hits / pos
        row["map"], row["map@r"] = ap / n_rel, map_r / n_rel
        per_query.append(row)
    out = {key: float(np.mean([r[key] for r in per_query])) for key in per_query[0]}
    out["num_queries"] = float(len(per_query))
    return out


def assert_metrics_equal(got: dict, want: dict, tol: float = 1e-9) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=tol), key


def clustered(n: int, n_classes: int, d: int, noise: float, seed: int):
    """Noisy copies of random class centres; labels [n]. Also a few single-member classes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d))
    labels = rng.integers(0, n_classes, size=n)
    labels[:3] = [n_classes, n_classes + 1, n_classes + 2]  # singletons: no relevant item
    centres = np.vstack([centres, rng.standard_normal((3, d))])
    x = (centres[labels] + noise * rng.standard_normal((n, d))).astype(np.float32)
    return x, labels


def min_gap(q, g, loo: bool) -> float:
    """Smallest gap between two cosines of one row: the data must be far from ties."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = np.sort(qn.astype(np.float64) @ gn.T.astype(np.float64), axis=1)
    if loo:
        s = s[:, :-1]  # self-similarity 1 is excluded anyway
    return float(np.diff(s, axis=1).min())


# --------------------------------------------------------------------------- hand-built


def five_points():
    """Unit vectors at angles 0, 10, 25, 45, 85 degrees, labels 0 0 1 0 1 (see below)."""
    deg = np.deg2rad([0.0, 10.0, 25.0, 45.0, 85.0])
    return np.stack([np.cos(deg), np.sin(deg)], axis=1).astype(np.float32), np.array([0, 0, 1, 0, 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_five_point_example_by_hand(backend):
    # ranking by angular distance, relevance after each query:
    # q0: 1 2 3 4 -> 1 0 1 0  R=2  AP=(1+2/3)/2=5/6  MAP@R=1/2
    # q1: 0 2 3 4 -> 1 0 1 0  R=2  AP=5/6            MAP@R=1/2
    # q2: 1 3 0 4 -> 0 0 0 1  R=1  AP=1/4            MAP@R=0
    # q3: 2 1 4 0 -> 0 1 0 1  R=2  AP=(1/2+2/4)/2=1/2 MAP@R=1/4
    # q4: 3 2 1 0 -> 0 1 0 0  R=1  AP=1/2            MAP@R=0
    x, y = five_points()
    m = retrieval_metrics(x, y, backend=backend)
    assert m["recall@1"] == pytest.approx(2 / 5)
    assert m["recall@2"] == pytest.approx(4 / 5)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["recall@8"] == pytest.approx(1.0)  # K beyond the gallery: whole gallery
    assert m["map"] == pytest.approx(7 / 12)
    assert m["map@r"] == pytest.approx(1 / 4)
    assert m["rank@1"] == pytest.approx(2 / 5) and m["rank@5"] == pytest.approx(1.0)
    assert m["num_queries"] == 5.0
    assert_metrics_equal(m, ref_metrics(x, y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_of_the_query_count(backend):
    # rows 0, 1, 2 identical (e1); row 3 orthogonal. Labels 0 0 1 0.
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    y = np.array([0, 0, 1, 0])
    m = retrieval_metrics(x, y, ks=(1, 2), backend=backend)
    # q0: 1 2 3 (tie 1-2 by index) -> 1 0 1; q1: 0 2 3 -> 1 0 1; q2: no relevant item;
    # q3: 0 1 2 all tied at 0 -> 1 1 0 (AP 1, MAP@R 1)
    assert m["num_queries"] == 3.0
    assert m["recall@1"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx((5 / 6 + 5 / 6 + 1) / 3)
    assert m["map@r"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert_metrics_equal(m, ref_metrics(x, y, ks=(1, 2)))


def test_tie_broken_by_gallery_index():
    # q0's two exact duplicates: index 1 (other class) ranks before index 2 (same class)
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    y = np.array([0, 1, 0, 1, 2])
    m = retrieval_metrics(x, y, ks=(1, 2), backend="torch")
    want = ref_metrics(x, y, ks=(1, 2))
    assert_metrics_equal(m, want)
    # three identical rows, labels 0 1 0: q0 ranks 1 (miss) before 2; q2 ranks 0 (hit)
    # before 1; q1 has no relevant item
    dups = retrieval_metrics(x[:3], y[:3], ks=(1, 2))
    assert dups["num_queries"] == 2.0
    assert dups["recall@1"] == pytest.approx(1 / 2) and dups["recall@2"] == 1.0


def test_single_member_classes_are_left_out():
    x, y = five_points()
    x = np.vstack([x, [[0.0, -1.0]]]).astype(np.float32)
    y = np.append(y, 7)  # class 7 has one member: it cannot retrieve anything
    m = retrieval_metrics(x, y)
    assert m["num_queries"] == 5.0
    assert_metrics_equal(m, ref_metrics(x, y))


def test_no_scorable_query_gives_nan():
    m = retrieval_metrics(np.eye(3, dtype=np.float32), [0, 1, 2])
    assert m["num_queries"] == 0.0 and math.isnan(m["recall@1"]) and math.isnan(m["map"])


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("backend", BACKENDS)
def test_leave_one_out_matches_reference(backend):
    x, y = clustered(70, 9, 12, noise=1.2, seed=0)
    assert min_gap(x, x, loo=True) > 1e-6
    ks = (1, 2, 4, 8, 16, 100)
    got = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y), ks=ks, backend=backend)
    assert_metrics_equal(got, ref_metrics(x, y, ks=ks))
    assert got["num_queries"] == 67.0  # the 3 singletons are left out


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_match_reference(backend):
    # vectors drawn from 5 one-/two-hot prototypes: most similarities are exact ties
    protos = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=np.float32)
    rng = np.random.default_rng(1)
    which = rng.integers(0, 5, size=60)
    y = rng.integers(0, 4, size=60)
    got = retrieval_metrics(protos[which], y, ks=(1, 2, 4, 8, 32), backend=backend)
    assert_metrics_equal(got, ref_metrics(protos[which], y, ks=(1, 2, 4, 8, 32)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_vs_gallery_without_ids(backend):
    q, ql = clustered(30, 6, 10, noise=1.0, seed=2)
    g, gl = clustered(80, 6, 10, noise=1.0, seed=2)  # same centres: shared classes
    assert min_gap(q, g, loo=False) > 1e-6
    got = retrieval_metrics(q, ql, g, gl, backend=backend)
    assert_metrics_equal(got, ref_metrics(q, ql, g, gl))


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_vs_gallery_shared_ids_are_excluded(backend):
    g, gl = clustered(60, 6, 10, noise=1.0, seed=3)
    pick = np.arange(3, 60, 4)  # these gallery images are also queries
    q, ql = g[pick], gl[pick]
    gids = np.array([f"img{j:03d}.jpg" for j in range(60)])
    qids = gids[pick]
    without = retrieval_metrics(q, ql, g, gl, backend=backend)
    assert without["recall@1"] == 1.0  # each query finds itself
    got = retrieval_metrics(q, ql, g, gl, query_ids=qids, gallery_ids=gids, backend=backend)
    assert_metrics_equal(got, ref_metrics(q, ql, g, gl, qids=qids, gids=gids))
    assert got["recall@1"] < 1.0  # with its own copy excluded, some queries miss


@pytest.mark.parametrize("factor", [0, 10**9])  # always top-k / always full sort
@pytest.mark.parametrize("noise", [0.3, 3.0])
def test_map_paths_agree_with_reference(monkeypatch, factor, noise):
    monkeypatch.setattr(metrics_mod, "TOPK_INSTEAD_OF_SORT", factor)
    x, y = clustered(60, 6, 10, noise=noise, seed=7 if noise < 1 else 11)  # tie-free seeds
    assert min_gap(x, x, loo=True) > 1e-6
    assert_metrics_equal(retrieval_metrics(x, y), ref_metrics(x, y))
    protos = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32)
    which = np.random.default_rng(8).integers(0, 4, size=40)
    y = np.random.default_rng(9).integers(0, 3, size=40)
    assert_metrics_equal(retrieval_metrics(protos[which], y), ref_metrics(protos[which], y))


def test_shallow_top_list_still_exact(monkeypatch):
    """MAP@R and mAP come from the ranks of relevant items, not from a top-R list."""
    monkeypatch.setattr(metrics_mod, "SHORTCUT_DEPTH", 1)
    x, y = clustered(70, 9, 12, noise=1.2, seed=0)
    assert_metrics_equal(retrieval_metrics(x, y, ks=(1, 2)), ref_metrics(x, y, ks=(1, 2)))
    q, ql = clustered(30, 6, 10, noise=1.0, seed=2)
    g, gl = clustered(80, 6, 10, noise=1.0, seed=2)
    assert_metrics_equal(retrieval_metrics(q, ql, g, gl), ref_metrics(q, ql, g, gl))


def test_average_precision_three_paths_agree():
    """Top-list shortcut, truncated top-k and full sort give the reference AP per row."""
    x, y = clustered(50, 5, 8, noise=0.8, seed=10)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = torch.from_numpy(x @ x.T)
    sims.fill_diagonal_(float("-inf"))
    excl = torch.arange(50)
    codes = torch.from_numpy(y)
    members = torch.from_numpy(np.argsort(y, kind="stable"))
    sizes = torch.bincount(codes, minlength=int(y.max()) + 1)
    cols, valid = metrics_mod._relevant_columns(codes, excl, members, sizes.cumsum(0) - sizes, sizes)
    keep = valid.any(dim=1)
    sims, cols, valid = sims[keep], cols[keep], valid[keep]
    want = []
    for i in np.flatnonzero(keep.numpy()):
        order = sorted((j for j in range(50) if j != i), key=lambda j: (-float(x[i] @ x[j]), j))
        rel = [y[j] == y[i] for j in order]
        hits = np.cumsum(rel)
        want.append(np.mean([hits[p] / (p + 1) for p in range(len(rel)) if rel[p]]))
    full = metrics_mod.topk_desc(sims, 49)[0]  # whole row: every row takes the shortcut
    part = metrics_mod.topk_desc(sims, 12)[0]  # some rows take it, the rest do not
    for factor, tv in [(0, None), (10**9, None), (16, full), (0, part), (10**9, part)]:
        metrics_mod.TOPK_INSTEAD_OF_SORT = factor
        try:
            got, _ = metrics_mod._ap_and_map_r(metrics_mod._relevant_ranks(sims, cols, valid, tv))
        finally:
            metrics_mod.TOPK_INSTEAD_OF_SORT = 16
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_batching_does_not_change_results():
    x, y = clustered(50, 7, 8, noise=1.0, seed=4)
    small = retrieval_metrics(x, y, ks=(1, 3, 10), query_batch=3)
    large = retrieval_metrics(x, y, ks=(1, 3, 10), query_batch=10_000)
    assert_metrics_equal(small, large, tol=1e-12)


def test_blocks_stay_bounded(monkeypatch):
    """No [Q, N] similarity matrix: every ranked block has at most query_batch rows."""
    seen = []
    real = metrics_mod.topk_desc

    def spy(scores, k):
        seen.append(tuple(scores.shape))
        return real(scores, k)

    monkeypatch.setattr(metrics_mod, "topk_desc", spy)
    x, y = clustered(40, 5, 8, noise=1.0, seed=5)
    retrieval_metrics(x, y, query_batch=7)
    assert seen and all(rows <= 7 and cols == 40 for rows, cols in seen)


def test_labels_of_any_type_and_numpy_vs_torch():
    x, y = clustered(30, 4, 6, noise=1.0, seed=6)
    a = retrieval_metrics(x, y)
    b = retrieval_metrics(torch.from_numpy(x), torch.from_numpy(y))
    c = retrieval_metrics(x, np.array([f"class-{v}" for v in y]))
    assert_metrics_equal(a, b, tol=0)
    assert_metrics_equal(a, c, tol=0)


def test_bad_arguments():
    x, y = five_points()
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x)  # gallery without labels
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x, y, query_ids=[1, 2, 3, 4, 5])  # ids without gallery ids
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x, y, query_ids=range(5), gallery_ids=[0, 0, 1, 2, 3])
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, ks=(0,))
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, np.ones((5, 3), dtype=np.float32), y)  # dims differ
    with pytest.raises(ValueError):
        retrieval_metrics(x, y[:4])  # one label short
