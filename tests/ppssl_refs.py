"""Shared by the PP-SSL tests: the tiny method and batches, and slow references written from
PP-SSL's equations (Eqs. 2-10) and LCR's code, never from the code under test."""
from __future__ import annotations

import math

import numpy as np
import torch

from fgray.methods.configs import PPSSLConfig, TeacherConfig
from fgray.data.inputs import DatasetFacts
from fgray.methods.ppssl import PPSSL
from fgray.models import build_backbone
from fgray.models.clip import TINY_MODEL

SIZE = 64
TINY = TeacherConfig(model=TINY_MODEL, pretrained="random")


def make(backbone: str = "test_resnet", **overrides) -> PPSSL:
    torch.manual_seed(0)
    cfg = PPSSLConfig(**{"queue_size": 64, "hidden_dim": 32, "proj_dim": 16, "teacher": TINY, **overrides})
    return PPSSL(cfg, build_backbone(backbone, image_size=SIZE), DatasetFacts(num_classes=2, image_size=SIZE))


def batch(n: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"view1": torch.randn(n, 3, SIZE, SIZE, generator=g), "view2": torch.randn(n, 3, SIZE, SIZE, generator=g)}


# ------------------------------------------------------------------------------------------------
# Slow references, written from the equations


def ref_attention(x: np.ndarray) -> np.ndarray:
    """Eqs. 2/7 in the authors' order: alpha = max over channels of relu(x), then
    norm(alpha)_ij = (alpha_ij - min(alpha)) / (1e-7 + max(alpha - min(alpha))) over one image's map.
    (B, K, h, w) -> (B, h, w), cell by cell."""
    b, k, h, w = x.shape
    out = np.zeros((b, h, w))
    for i in range(b):
        alpha = np.zeros((h, w))
        for r in range(h):
            for c in range(w):
                alpha[r, c] = max(max(float(x[i, ch, r, c]), 0.0) for ch in range(k))
        low, high = alpha.min(), alpha.max()
        for r in range(h):
            for c in range(w):
                if high - low > 1e-7:
                    out[i, r, c] = (alpha[r, c] - low) / (1e-7 + high - low)
                else:  # a constant map has no range: 1 where positive, 0 where zero
                    out[i, r, c] = alpha[r, c] / (1e-7 + high)
    return out


def ref_max_pool(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Max over equal blocks (the input side is a multiple of the grid here). (B, H, W) -> (B, h, w)."""
    b, big_h, big_w = m.shape
    bh, bw = big_h // h, big_w // w
    return np.array([[[m[i, r * bh:(r + 1) * bh, c * bw:(c + 1) * bw].max() for c in range(w)] for r in range(h)]
                     for i in range(b)])


def ref_kl(p: np.ndarray, q: np.ndarray) -> float:
    """Eq. 8 as a KL divergence of the two maps, each normalised to sum to 1, batch mean."""
    total = 0.0
    for pi, qi in zip(p.reshape(len(p), -1), q.reshape(len(q), -1)):
        pi, qi = pi / (pi.sum() + 1e-7), qi / (qi.sum() + 1e-7)
        total += sum(a * (math.log(a + 1e-7) - math.log(b + 1e-7)) for a, b in zip(pi, qi))
    return total / len(p)


def ref_batch_attention(x: np.ndarray) -> np.ndarray:
    """LCR's att_max (Eq. 7, form lcr): alpha = max over channels of relu(x), then ONE min-max over
    the whole batch, (alpha - min) / (1e-7 + max(alpha - min)). (B, K, h, w) -> (B, h, w)."""
    alpha = np.maximum(x, 0.0).max(axis=1)
    shifted = alpha - alpha.min()
    return shifted / (1e-7 + shifted.max())


def ref_row_softmax_kl(p: np.ndarray, q: np.ndarray) -> float:
    """Eq. 8 in LCR's form, cell by cell: for every image and every map row r, softmax the row of each
    map, KL(P_r || Q_r); summed over images and rows (reduction='sum')."""
    total = 0.0
    for pi, qi in zip(p, q):
        for pr, qr in zip(pi, qi):
            ep, eq = np.exp(pr - pr.max()), np.exp(qr - qr.max())
            ps, qs = ep / ep.sum(), eq / eq.sum()
            total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(ps, qs) if a > 0)
    return total


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()
