"""Loss functions against slow, obviously-correct reference computations."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import pytest

from fgray.losses import (attention_kl, distillation_kl, info_nce, negative_cosine, row_softmax_kl,
                          symmetric_negative_cosine)


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


def reference_negative_cosine(p, z):
    """SimSiam Eq. 1, element by element: -(p/||p||) . (z/||z||), averaged over the batch."""
    total = 0.0
    for i in range(p.shape[0]):
        dot = sum(float(a) * float(b) for a, b in zip(p[i], z[i]))
        norm_p = math.sqrt(sum(float(a) ** 2 for a in p[i]))
        norm_z = math.sqrt(sum(float(b) ** 2 for b in z[i]))
        total += -dot / (norm_p * norm_z)
    return total / p.shape[0]


def test_negative_cosine_matches_reference_and_stops_the_target_gradient():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = negative_cosine(p, z)
    assert abs(float(loss.detach()) - reference_negative_cosine(p.detach(), z.detach())) < 1e-12
    loss.backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0  # stopgrad(z), Eq. 3
    same = torch.randn(3, 5, generator=g)
    assert abs(float(negative_cosine(same, 2.5 * same)) + 1.0) < 1e-6  # parallel: the minimum, -1


def test_symmetric_negative_cosine_is_the_mean_of_both_directions():
    g = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(4))
    expected = reference_negative_cosine(p1, z2) / 2 + reference_negative_cosine(p2, z1) / 2  # SimSiam Eq. 4
    assert abs(float(symmetric_negative_cosine(p1, p2, z1, z2)) - expected) < 1e-12


def reference_distillation_kl(teacher, student, tau):
    """PP-SSL Eq. 4 term by term: tau^2 * KL(sigma(l_t / tau) || sigma(l_s / tau)), batch mean."""
    total = 0.0
    for l_t, l_s in zip(teacher.tolist(), student.tolist()):
        z_t = sum(math.exp(v / tau) for v in l_t)
        z_s = sum(math.exp(v / tau) for v in l_s)
        p_t = [math.exp(v / tau) / z_t for v in l_t]
        p_s = [math.exp(v / tau) / z_s for v in l_s]
        total += tau**2 * sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    return total / len(teacher)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_distillation_kl_matches_eq_4(tau):
    g = torch.Generator().manual_seed(0)
    teacher = 3 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    student = 3 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    got = float(distillation_kl(teacher, student, tau))
    assert got == pytest.approx(reference_distillation_kl(teacher, student, tau), rel=1e-10)
    # tau divides the logits and tau^2 scales the KL: neither can be dropped or swapped.
    plain = reference_distillation_kl(teacher, student, 1.0)
    if tau != 1.0:
        assert got != pytest.approx(plain, rel=1e-3)
        scaled = reference_distillation_kl(teacher / tau, student / tau, 1.0)  # no tau^2
        assert got != pytest.approx(scaled, rel=1e-3) and got == pytest.approx(tau**2 * scaled)
    assert float(distillation_kl(teacher, teacher, tau)) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------ PP-SSL L_IADM (Eq. 8)


def reference_row_softmax_kl(target, prediction):
    """LCR's F.kl_div(w.softmax(-1).log(), grad.softmax(-1), reduction='sum'), loop by loop."""
    total = 0.0
    for t_map, w_map in zip(target.tolist(), prediction.tolist()):
        for t_row, w_row in zip(t_map, w_map):
            zt, zw = sum(math.exp(v) for v in t_row), sum(math.exp(v) for v in w_row)
            total += sum(math.exp(t) / zt * (t - math.log(zt) - (w - math.log(zw))) for t, w in zip(t_row, w_row))
    return total


def test_row_softmax_kl_matches_lcr():
    g = torch.Generator().manual_seed(0)
    target, prediction = 2 * torch.rand(3, 5, 4, generator=g), torch.rand(3, 5, 4, generator=g)
    got = float(row_softmax_kl(target, prediction))
    assert got == pytest.approx(reference_row_softmax_kl(target, prediction), rel=1e-5)
    lcr = F.kl_div(prediction.softmax(dim=-1).log(), target.softmax(dim=-1), reduction="sum")
    assert got == pytest.approx(float(lcr), rel=1e-5)
    # summed, not averaged: two copies of the batch give twice the loss
    doubled = float(row_softmax_kl(torch.cat([target, target]), torch.cat([prediction, prediction])))
    assert doubled == pytest.approx(2 * got, rel=1e-5)
    # the softmax runs along each row, not over all h*w cells: adding a constant to one row changes nothing
    shifted = prediction.clone()
    shifted[:, 1] += 5.0
    assert float(row_softmax_kl(target, shifted)) == pytest.approx(got, rel=1e-5)


def target_on_the_zero_cell(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """w in [0, 1] with an exact zero (min-max's minimum) and a Grad-Img whose mass sits on that cell."""
    g = torch.Generator().manual_seed(1)
    w = torch.rand(batch, 6, 6, generator=g)
    w[:, 2, 3] = 0.0
    target = 1e-3 * torch.rand(batch, 6, 6, generator=g)
    target[:, 2, 3] = 50.0
    return target, w.requires_grad_(True)


def assert_bounded(grad: torch.Tensor) -> None:
    """d/dw of sum_rows KL(p || softmax(w row)) = softmax(w row) - p: each entry within [-1, 1]."""
    assert float(grad.abs().max()) <= 1.0, float(grad.abs().max())


@pytest.mark.parametrize("form", ["lcr", "normalized"])
def test_iadm_gradient_is_bounded_where_w_is_smallest(form):
    """Where the target's mass meets w's exact-zero cell, LCR's form stays bounded (|grad| <= 1 per cell, at
    any batch size); fgray's former normalised form sends ~1 / (w + 1e-7) there and fails the bound."""
    for batch in (1, 4, 64):
        target, w = target_on_the_zero_cell(batch)
        loss = row_softmax_kl(target, w) if form == "lcr" else attention_kl(target, w)
        (grad,) = torch.autograd.grad(loss, w)
        if form == "lcr":
            assert_bounded(grad)
            expected = w.detach().softmax(dim=-1) - target.softmax(dim=-1)  # the bound's derivation
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
        else:
            with pytest.raises(AssertionError):
                assert_bounded(grad)
            assert float(grad.abs().max()) > 1e3

