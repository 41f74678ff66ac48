"""Linear probe: accuracy on separable blobs, stratified label fractions, standardisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fgray.eval import linear_probe, linear_probe_fractions
from fgray.eval.linear_probe import _standardise, stratified_subset


def blobs(n_per_class: int, n_classes: int, d: int, seed: int, spread: float = 8.0):
    """Gaussian blobs around fixed, well-separated centres (seed 0) plus a large offset."""
    centres = np.random.default_rng(0).standard_normal((n_classes, d)) * spread + 50.0
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[y] + rng.standard_normal((len(y), d))
    return x.astype(np.float32), y


def test_separable_blobs_are_learned():
    xtr, ytr = blobs(30, 6, 16, seed=1)
    xte, yte = blobs(20, 6, 16, seed=2)
    res = linear_probe(torch.from_numpy(xtr), torch.from_numpy(ytr), xte, yte, epochs=25)
    assert res["top1"] >= 0.95 and res["top5"] == 1.0
    assert res["num_train"] == 180.0


def test_stratified_subset_counts_and_determinism():
    y = np.array([0] * 10 + [1] * 7 + [2] * 1 + [3] * 4)
    idx = stratified_subset(y, 0.5, seed=3)
    counts = np.bincount(y[idx], minlength=4)
    assert counts.tolist() == [5, 4, 1, 2]  # 3.5 rounds up; a singleton class keeps 1
    assert np.array_equal(idx, stratified_subset(y, 0.5, seed=3))
    assert not np.array_equal(idx, stratified_subset(y, 0.5, seed=4))
    assert np.bincount(y[stratified_subset(y, 0.2, 0)], minlength=4).tolist() == [2, 1, 1, 1]
    assert len(stratified_subset(y, 1.0)) == len(y)
    with pytest.raises(ValueError):
        stratified_subset(y, 0.0)


def test_fractions_keys_and_train_counts():
    xtr, ytr = blobs(10, 4, 8, seed=5)
    xte, yte = blobs(5, 4, 8, seed=6)
    out = linear_probe_fractions(xtr, ytr, xte, yte, epochs=10)
    assert set(out) == {f"probe@{p}/{t}" for p in (100, 50, 20) for t in ("top1", "top5")}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert linear_probe(xtr, ytr, xte, yte, 0.2, epochs=5)["num_train"] == 8.0  # 2 per class


def test_standardise_uses_train_statistics_only():
    train = torch.tensor([[0.0, 10.0], [2.0, 30.0]])
    test = torch.tensor([[1.0, 20.0], [5.0, 50.0]])
    tr, te = _standardise(train, test)
    assert torch.allclose(tr.mean(0), torch.zeros(2)) and torch.allclose(tr.std(0, unbiased=False), torch.ones(2))
    assert torch.allclose(te, torch.tensor([[0.0, 0.0], [4.0, 3.0]]))


def test_unseen_test_class_counts_as_wrong():
    xtr, ytr = blobs(10, 3, 8, seed=7)
    xte, yte = blobs(5, 3, 8, seed=8)
    yte = yte.copy()
    yte[:5] = 99  # a class the probe never saw
    res = linear_probe(xtr, ytr, xte, yte, epochs=15)
    assert res["top1"] <= 10 / 15 + 1e-9 and res["top5"] == pytest.approx(10 / 15)
