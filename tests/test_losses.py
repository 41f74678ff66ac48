"""Loss functions against slow, obviously-correct reference computations."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fgray.losses import info_nce


def reference_info_nce(q, k, queue, t):
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ n) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_info_nce_matches_reference():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=1)
    for t in (0.07, 0.2, 1.0):
        assert abs(float(info_nce(q, k, queue, t)) - reference_info_nce(q, k, queue, t)) < 1e-10


def test_info_nce_exact_small_case():
    # q = k and one orthogonal negative: loss = -log(e^{1/T} / (e^{1/T} + e^0))
    q = torch.tensor([[1.0, 0.0]])
    negative = torch.tensor([[0.0, 1.0]])
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 1.0))
    assert abs(float(info_nce(q, q, negative, 0.5)) - expected) < 1e-6
