"""Pure loss functions: tensors in, a scalar tensor out. Each cites the equation it implements."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(query: Tensor, positive_key: Tensor, negative_keys: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE (PP-SSL Eq. 1; MoCo v2): cross-entropy of the positive among K negatives.

    query, positive_key: (B, D) L2-normalised; negative_keys: (K, D) L2-normalised.
    L = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_i exp(q.k_i / T)), averaged over the batch.
    """
    positive = (query * positive_key).sum(dim=1, keepdim=True)  # (B, 1)
    negative = query @ negative_keys.t()  # (B, K)
    logits = torch.cat([positive, negative], dim=1) / temperature
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


def distillation_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """PP-SSL Eq. 4: L_AIS = tau^2 * KL(softmax(l_t / tau) || softmax(l_s / tau)), batch mean.

    teacher_logits, student_logits: (B, N) logits against the N text embeddings.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    return temperature**2 * kl.mean()


def attention_kl(target: Tensor, prediction: Tensor, eps: float = 1e-7) -> Tensor:
    """PP-SSL Eq. 8: L_IADM = sum Grad-Img * log(Grad-Img / w), batch mean.

    target (Grad-Img) and prediction (w): (B, h, w) non-negative maps; each is normalised to a
    distribution over its h*w cells first, so the term is a KL divergence (>= 0, 0 iff equal).
    """
    p = target.flatten(1)
    q = prediction.flatten(1)
    p = p / (p.sum(dim=1, keepdim=True) + eps)
    q = q / (q.sum(dim=1, keepdim=True) + eps)
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(dim=1).mean()


def row_softmax_kl(target: Tensor, prediction: Tensor) -> Tensor:
    """PP-SSL Eq. 8 in the authors' form (LCR, ``main_moco.py``: ``F.kl_div(att_max.softmax(dim=-1).log(),
    gradcam.softmax(dim=-1), reduction='sum')``, weighted nu = 0.01 = PP-SSL's beta):

        L_IADM = sum_{b, r} KL(softmax(Grad-Img[b, r, :]) || softmax(w[b, r, :])),

    target (Grad-Img, raw) and prediction (w): (B, h, w). The softmax runs along the last dim, i.e.
    along each row of a map, not over its h*w cells (the code's rule where the paper is silent), and
    the KL is summed over the batch and the rows, not averaged. Its gradient w.r.t. ``prediction``
    is softmax(w row) - softmax(Grad-Img row): every entry lies in [-1, 1] whatever the maps hold.
    """
    log_q = F.log_softmax(prediction.float(), dim=-1)
    log_p = F.log_softmax(target.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum()


def negative_cosine(prediction: Tensor, target: Tensor) -> Tensor:
    """SimSiam Eq. 1 with its stop-gradient (Eq. 3's D): D(p, z) = -(p / ||p||) . (z / ||z||), batch mean.

    prediction p, target z: (B, D); no gradient flows into ``target`` (stopgrad(z)).
    """
    return -(F.normalize(prediction, dim=1) * F.normalize(target.detach(), dim=1)).sum(dim=1).mean()


def symmetric_negative_cosine(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam Eq. 4: L = D(p1, z2) / 2 + D(p2, z1) / 2, each view's prediction against the other's
    projection (stop-gradient on the projections)."""
    return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2


# ---------------------------------------------------------------------------------------- VAPNet


# How L_c's per-row KLs (one per image b and view i, each summed over the k attributes) become one
# number; the paper gives no reduction (spec vapnet.md §7.6). batchmean: mean over the B x M rows;
# sum: Eq. 5 / 6's sum over the M views, mean over the B images (M x batchmean); mean: mean over
# all B x M x k elements (F.kl_div's reduction="mean", batchmean / k).
LC_REDUCTIONS = ("batchmean", "sum", "mean")


def attribute_kl(target_logits: Tensor, logits: Tensor, temperature: float = 1.0,
                 reduction: str = "batchmean") -> Tensor:
    """One term of VAPNet's attribute constraint (paper 004 Eqs. 5-6; spec vapnet.md §2, §7.1, §7.6).

    KL_bi = sum_k P_k (log P_k - log Q_k) with P = softmax(target_logits / T), Q = softmax(logits / T)
    over the k attributes: the paper's P log(P / A) on raw linear outputs is undefined (they can be
    negative), hence the softmax. target_logits, logits: (B, M, k). ``reduction`` (LC_REDUCTIONS):
    batchmean (default) mean of KL_bi over the B x M rows; sum: sum_i KL_bi, mean over b (the sum of
    Eq. 6 taken literally: M x batchmean, so lambda's scale grows with M); mean: over every (b, i, k)
    element (batchmean / k). No stop-gradient: P is differentiable (the paper sends the constraint
    through the mean encoders' outputs into the backbone).
    """
    log_p = F.log_softmax(target_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    pointwise = log_p.exp() * (log_p - log_q)  # (B, M, k)
    if reduction == "batchmean":
        return pointwise.sum(dim=-1).mean()
    if reduction == "sum":
        return pointwise.sum(dim=(-2, -1)).mean()
    if reduction == "mean":
        return pointwise.mean()
    raise ValueError(f"reduction must be one of {LC_REDUCTIONS}, got {reduction!r}")


def attribute_constraint(local_target: Tensor, local_attributes: Tensor, global_target: Tensor,
                         global_attributes: Tensor, temperature: float = 1.0,
                         reduction: str = "batchmean") -> Tensor:
    """VAPNet's crossed constraint, Eq. 6 (Eq. 5 with the online encoders as the targets):

    L_c = sum_i [ KL(E[T_G](F_L^i) || A_L^i) + KL(E[T_L](F_G^i) || A_G^i) ], where A_L^i = T_L(F_L^i)
    (Eq. 2) and A_G^i = T_G(F_G^i) (Eq. 3); each KL is ``attribute_kl`` with its ``reduction``
    (default batchmean: the sum over i becomes a mean over the B x M (image, view) rows, so lambda
    means the same at any M). local_target = E[T_G](F_L) (Eq. 6) or T_G(F_L) (Eq. 5); global_target
    = E[T_L](F_G) or T_L(F_G). All four (B, M, k).
    """
    return (attribute_kl(local_target, local_attributes, temperature, reduction)
            + attribute_kl(global_target, global_attributes, temperature, reduction))


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """OLDFS Eq. 7 (spec oldfs.md §2): SimCLR's NT-Xent over the 2B rows of the pairs (a_i, b_i),
    symmetric: each row's positive is its partner, its negatives the other 2B - 2 rows. The printed
    denominator leaves the positive out; this is the standard form with it in (spec §7.3)."""
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    n = a.shape[0]
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def proxy_nca(embeddings: Tensor, labels: Tensor, proxies: Tensor, scale: float) -> Tensor:
    """DVA Eqs. 7-8 (spec dva.md §2.4), ProxyNCA(++): -log softmax over proxies of -s ||f^ - c^||^2
    at the sample's class, f^ and c^ L2-normalised; batch mean. ``scale`` s (ProxyNCA++: 9)."""
    f, c = F.normalize(embeddings.float(), dim=1), F.normalize(proxies.float(), dim=1)
    distances = (f.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1)  # (B, P)
    return F.cross_entropy(-scale * distances, labels)


def proxy_anchor(embeddings: Tensor, labels: Tensor, proxies: Tensor, alpha: float = 32.0,
                 margin: float = 0.1) -> Tensor:
    """Proxy-Anchor (Kim et al. 2020, Eq. 4), the option of DVA's proxy loss (spec dva.md §2.4):
    over the proxies with positives in the batch, log(1 + sum_pos exp(-alpha (cos - margin))),
    plus over all proxies log(1 + sum_neg exp(alpha (cos + margin))), each averaged."""
    cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(proxies.float(), dim=1).t()  # (B, P)
    positive = F.one_hot(labels, proxies.shape[0]).bool()
    pos_term = torch.where(positive, torch.exp(-alpha * (cos - margin)), torch.zeros_like(cos)).sum(0)
    neg_term = torch.where(positive, torch.zeros_like(cos), torch.exp(alpha * (cos + margin))).sum(0)
    with_pos = positive.any(0)
    return torch.log1p(pos_term[with_pos]).sum() / with_pos.sum().clamp_min(1) + \
        torch.log1p(neg_term).sum() / proxies.shape[0]


# ------------------------------------------------------------------------------------------- ASS


def masked_patch_mse(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """ASS's L_gen (spec ass.md §2.2, draft Eq. 1): the mean over images of each image's mean squared
    error over its masked patches, ||x^_j - x_j||^2 averaged over the patch's values. prediction and
    target (B, L, p*p*3), mask (B, L) bool; with no patch masked (mask ratio 0) every patch counts."""
    per_patch = (prediction.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
    weights = torch.where(mask.any(), mask.float(), torch.ones_like(per_patch))  # no host sync
    return ((per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)).mean()


def reconstruction_triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """ASS's L_inter, triplet form (spec §2.3, draft Eq. 3 in the code's distance form):
    mean_i max(0, ||e(X_i) - e(X^_i)|| - ||e(X_i) - e(X^_{b_i})|| + m); all (N, D)."""
    return F.triplet_margin_loss(anchor.float(), positive.float(), negative.float(), margin=margin)


def paired_info_nce(queries: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """InfoNCE of query i against key i among all M >= N keys: -log softmax_j(q_i . k_j / T) at j = i,
    batch mean; q (N, D), k (M, D), both L2-normalised. ASS's L_inter option (spec §2.3: anchors vs
    the 2N reconstructions) and L_intra (spec §2.4: shared vs auxiliary representations, M = N)."""
    logits = queries.float() @ keys.float().t() / temperature
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))
