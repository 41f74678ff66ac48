"""Linear probe on frozen features (DESIGN.md §4: label fractions 100 / 50 / 20 %).

Multinomial logistic regression (``nn.Linear`` + cross-entropy + L2 weight decay) fitted
by full-batch L-BFGS with a strong-Wolfe line search: the problem is convex, so the
full-batch quasi-Newton fit is deterministic and needs no batch-size or schedule knobs
(the approach of CLIP's logistic-regression probe). The full-batch loss is accumulated
over row chunks, so memory is bounded by ``chunk`` rows of logits. Weights start at zero,
so the fit does not depend on the global RNG; ``seed`` only drives label subsampling.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .search import as_float_tensor

__all__ = ["linear_probe", "linear_probe_fractions", "stratified_subset"]


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def stratified_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices keeping ``fraction`` of each class: max(1, floor(fraction * n_c + 0.5)) each.

    labels: [N]. Deterministic for a given seed. Returns sorted int64 indices.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    labels = _as_numpy(labels).reshape(-1)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):  # sorted class order keeps the draw reproducible
        members = np.flatnonzero(labels == c)
        n_keep = max(1, int(np.floor(fraction * len(members) + 0.5)))  # half rounds up
        keep.append(rng.permutation(members)[:n_keep])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def _standardise(train: Tensor, test: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """z-score both sets with the train mean/std. train: [N, D], test: [M, D]."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, unbiased=False, keepdim=True).clamp_min(eps)
    return (train - mean) / std, (test - mean) / std


def _fit_lbfgs(x: Tensor, y: Tensor, n_classes: int, epochs: int, lr: float,
               weight_decay: float, chunk: int) -> nn.Linear:
    """Fit nn.Linear(D, C) on x [N, D], y [N] by full-batch L-BFGS (``epochs`` iterations)."""
    model = nn.Linear(x.shape[1], n_classes).to(x.device)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=lr, max_iter=epochs, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")
    n = x.shape[0]

    def closure() -> Tensor:
        opt.zero_grad()
        total = torch.zeros((), device=x.device)
        for s in range(0, n, chunk):  # full-batch loss, accumulated chunk by chunk
            part = F.cross_entropy(model(x[s : s + chunk]), y[s : s + chunk], reduction="sum") / n
            part.backward()
            total += part.detach()
        reg = 0.5 * weight_decay * model.weight.pow(2).sum()  # L2 on weights, not bias
        reg.backward()
        return total + reg.detach()

    opt.step(closure)
    return model


@torch.no_grad()
def _topk_accuracy(model: nn.Linear, x: Tensor, y: Tensor, chunk: int) -> tuple[float, float]:
    """(top-1, top-5) fractions; y = -1 (a class unseen in training) is always wrong."""
    k = min(5, model.out_features)
    hit1 = hit5 = 0
    for s in range(0, x.shape[0], chunk):
        pred = model(x[s : s + chunk]).topk(k, dim=1).indices
        yy = y[s : s + chunk, None]
        hit1 += int((pred[:, :1] == yy).sum())
        hit5 += int((pred == yy).any(dim=1).sum())
    return hit1 / x.shape[0], hit5 / x.shape[0]


def linear_probe(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    label_fraction: float = 1.0,
    *,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk: int = 16384,
) -> dict[str, float]:
    """Train a linear classifier on frozen features and score it on the test set.

    train_feats: [N, D], train_labels: [N], test_feats: [M, D], test_labels: [M] (torch
    or numpy; labels any sortable values). label_fraction keeps that share of the
    training images per class (at least 1 each, ``stratified_subset`` with ``seed``).
    Features are standardised with the (subsampled) train statistics only.
    epochs: L-BFGS iterations over the full (chunked) batch; lr: L-BFGS step scale;
    weight_decay: L2 coefficient on the weights. device: defaults to the train
    features' device. chunk: rows per forward pass (memory bound).

    Returns {"top1", "top5", "num_train"}: accuracies as fractions in [0, 1] (test
    images whose class never appears in training count as wrong) and the number of
    training images used (a float).
    """
    idx = stratified_subset(train_labels, label_fraction, seed)
    xtr = as_float_tensor(train_feats)
    dev = torch.device(device) if device is not None else xtr.device
    xtr = xtr[torch.from_numpy(idx).to(xtr.device)].to(dev)
    xte = as_float_tensor(test_feats).to(dev)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {tuple(xtr.shape)}, {tuple(xte.shape)}")

    ytr_raw, yte_raw = _as_numpy(train_labels).reshape(-1)[idx], _as_numpy(test_labels).reshape(-1)
    classes, ytr = np.unique(ytr_raw, return_inverse=True)
    pos = np.clip(np.searchsorted(classes, yte_raw), 0, len(classes) - 1)
    yte = np.where(classes[pos] == yte_raw, pos, -1)  # unseen classes -> -1

    xtr, xte = _standardise(xtr, xte)
    ytr_t = torch.from_numpy(ytr.reshape(-1).astype(np.int64)).to(dev)
    yte_t = torch.from_numpy(yte.astype(np.int64)).to(dev)
    with torch.enable_grad():
        model = _fit_lbfgs(xtr, ytr_t, len(classes), epochs, lr, weight_decay, chunk)
    top1, top5 = _topk_accuracy(model, xte, yte_t, chunk)
    return {"top1": top1, "top5": top5, "num_train": float(len(idx))}


def linear_probe_fractions(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    fractions: Sequence[float] = (1.0, 0.5, 0.2),
    **kwargs,
) -> dict[str, float]:
    """``linear_probe`` at each label fraction.

    Returns {"probe@100/top1", "probe@100/top5", "probe@50/top1", ...}: the key holds the
    fraction in percent (rounded). kwargs go to ``linear_probe``.
    """
    out: dict[str, float] = {}
    for frac in fractions:
        res = linear_probe(train_feats, train_labels, test_feats, test_labels, frac, **kwargs)
        tag = f"probe@{round(frac * 100)}"
        out[f"{tag}/top1"], out[f"{tag}/top5"] = res["top1"], res["top5"]
    return out
