"""Exact k-NN search: both backends against a slow full-sort reference, ties, exclusion, k > 2048."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fgray.eval import knn
from fgray.eval import search
from fgray.eval.search import topk_desc

BACKENDS = ["torch", "faiss"]


def ref_knn(q: np.ndarray, g: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference: every row fully sorted by (score desc, index asc), excluded item removed."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    out_s, out_i = [], []
    for i, row in enumerate(scores):
        cand = [j for j in range(len(row)) if exclude is None or j != exclude[i]]
        order = sorted(cand, key=lambda j: (-row[j], j))[:k]
        out_i.append(order)
        out_s.append(row[order])
    return np.array(out_s), np.array(out_i, dtype=np.int64)


def int_data(n: int, d: int, seed: int, lo: int = -3, hi: int = 4) -> np.ndarray:
    """Small-integer vectors: inner products are exact in float32, so ties are real ties."""
    return np.random.default_rng(seed).integers(lo, hi, size=(n, d)).astype(np.float32)


def float_data(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_on_tie_free_floats(backend):
    q, g = float_data(40, 16, 0), float_data(200, 16, 1)
    scores, idx = knn(q, g, 10, backend=backend)
    ref_s, ref_i = ref_knn(q, g, 10)
    assert scores.dtype == torch.float32 and idx.dtype == torch.int64
    assert scores.shape == idx.shape == (40, 10)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, atol=1e-5)


def test_faiss_and_torch_identical_indices():
    x = torch.from_numpy(float_data(300, 32, 2))
    s_t, i_t = knn(x, x, 12, exclude_self=True, backend="torch", query_batch=64)
    s_f, i_f = knn(x, x, 12, exclude_self=True, backend="faiss", query_batch=64)
    assert torch.equal(i_t, i_f)
    assert torch.allclose(s_t, s_f, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_follow_index_rule_including_the_cut(backend):
    # 8-d integer vectors in [-1, 1]: hundreds of exact ties, many straddling position k
    q, g = int_data(30, 8, 3, -1, 2), int_data(400, 8, 4, -1, 2)
    for k in (1, 7, 50):
        scores, idx = knn(q, g, k, backend=backend, query_batch=8)
        ref_s, ref_i = ref_knn(q, g, k)
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_array_equal(scores.numpy(), ref_s.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclude_self_by_index_keeps_duplicates(backend):
    x = np.repeat(np.eye(3, dtype=np.float32), 3, axis=0)  # rows 0-2 identical, 3-5, 6-8
    scores, idx = knn(x, x, 2, exclude_self=True, backend=backend)
    # query 0's duplicates 1, 2 come first (score 1); query 4's are 3 and 5
    assert idx[0].tolist() == [1, 2] and idx[1].tolist() == [0, 2] and idx[4].tolist() == [3, 5]
    assert torch.all(scores == 1.0)
    assert not torch.any(idx == torch.arange(9)[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclude_index_matches_reference(backend):
    q, g = int_data(25, 6, 5), int_data(120, 6, 6)
    exclude = np.random.default_rng(7).integers(-1, 120, size=25)
    exclude[:5] = -1
    scores, idx = knn(q, g, 9, exclude_index=exclude, backend=backend)
    ref_s, ref_i = ref_knn(q, g, 9, exclude)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_array_equal(scores.numpy(), ref_s.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_above_gpu_limit(backend):
    # k > GPU_MAX_K: the faiss path uses the CPU index, torch uses topk; both exact
    q, g = int_data(12, 8, 8), int_data(5000, 8, 9)
    k = 3000
    assert k > search.GPU_MAX_K
    scores, idx = knn(q, g, k, backend=backend)
    ref_s, ref_i = ref_knn(q, g, k)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_array_equal(scores.numpy(), ref_s.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_equals_whole_gallery(backend):
    x = int_data(20, 4, 10)
    scores, idx = knn(x, x, 19, exclude_self=True, backend=backend)
    np.testing.assert_array_equal(idx.numpy(), ref_knn(x, x, 19, np.arange(20))[1])


@pytest.fixture
def fake_gpus(monkeypatch):
    """faiss "GPUs" that are CPU indexes: records each clone to all GPUs (absent in faiss-cpu)."""
    import faiss

    cloned = []

    class Options:  # stands in for faiss.GpuMultipleClonerOptions
        shard = False

    def fake_clone(index, co=None):
        cloned.append((co.shard, index.ntotal))
        return index

    monkeypatch.setattr(search, "_faiss_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_clone, raising=False)
    return cloned


def test_gpu_routing_respects_k_limit(fake_gpus):
    """With GPUs, k_call <= 2048 goes to one sharded GPU index; a larger k to GPU indexes over chunks."""
    g = float_data(5000, 4, 11)
    search._faiss_index(g, search.GPU_MAX_K)
    assert fake_gpus == [(True, 5000)]
    chunked = search._faiss_index(g, 3000)  # ceil(2 * 3000 / 2048) = 3 strided chunks
    assert fake_gpus[1:] == [(True, 1667), (True, 1667), (True, 1666)] and chunked.count == 3


@pytest.mark.parametrize("crowded", [False, True])
def test_k_above_gpu_limit_merged_from_chunks(fake_gpus, monkeypatch, crowded):
    """Chunks searched within the GPU limit and merged give the exact top-k; crowded: most of each
    query's top-k sits in one chunk, beyond what it returns, so those rows are redone exactly."""
    monkeypatch.setattr(search, "GPU_MAX_K", 16)
    q, g = float_data(30, 8, 16), float_data(420, 8, 17)
    if crowded:  # chunk 0 (every 6th item) near the queries' common direction
        q = np.abs(q) + 2.0
        g[0::6] = np.abs(g[0::6]) + 2.0
    redone, real_index = [], search._flat_index

    def counting_index(gallery, on_gpus):
        if not on_gpus:
            redone.append(len(gallery))
        return real_index(gallery, on_gpus)

    monkeypatch.setattr(search, "_flat_index", counting_index)
    scores, idx = knn(q, g, 40, backend="faiss")
    ref_s, ref_i = ref_knn(q, g, 40)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(scores.numpy(), ref_s, rtol=1e-5)
    assert len(fake_gpus) == 6  # ceil(2 * 41 / 16) = 6 chunks, each on the "GPUs"
    assert redone == ([420] if crowded else [])  # the exact CPU index only for uncertified rows


def test_topk_desc_boundary_tie():
    scores = torch.tensor([[0.5, 0.75, 0.5, 0.25, 0.5, 0.75]])
    vals, idx = topk_desc(scores, 3)
    assert idx.tolist() == [[1, 5, 0]] and vals.tolist() == [[0.75, 0.75, 0.5]]
    vals, idx = topk_desc(scores, 4)
    assert idx.tolist() == [[1, 5, 0, 2]]


def test_numpy_and_torch_inputs_agree():
    q, g = float_data(10, 8, 12), float_data(50, 8, 13)
    a = knn(q, g, 5, backend="torch")
    b = knn(torch.from_numpy(q), torch.from_numpy(g), 5, backend="torch")
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


def test_invalid_k_and_shapes():
    x = float_data(5, 4, 14)
    with pytest.raises(ValueError):
        knn(x, x, 5, exclude_self=True)  # only 4 left
    with pytest.raises(ValueError):
        knn(x, x, 0)
    with pytest.raises(ValueError):
        knn(x, float_data(5, 3, 15), 1)
    with pytest.raises(ValueError):
        knn(x, x, 1, backend="annoy")
