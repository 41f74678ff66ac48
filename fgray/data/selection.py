"""ASS's Adaptive Sample Selector (paper 000, Algorithm 1; spec ``ass.md`` §2.1), pure numpy.

A composed training batch is N anchors A and N negatives B chosen from K*N uniformly drawn
candidates Y by their frozen-selector embeddings (cached once, ``embedding_cache``):

    D'_ij = softmax_j(gamma a_i . y_j)      row softmax over the K*N candidates   (step 4)
    p_j   = sum_i D'_ij / N                 column sums, normalised               (step 5)
    B     ~ Categorical(p), N draws                                               (step 7)

gamma -> 0 gives uniform p (easy negatives); a large gamma puts p on the candidates nearest the
anchor set (hard negatives). Algorithm 1 picks B for the anchor set as a whole (spec §2.1 step 8),
but the triplet form of L_inter (spec §2.3) needs one negative b_i per anchor. Paired in draw order
(the i-th drawn negative, ``index``), anchor i's negative is as unrelated to it as a uniform one
(issue 27: a class-aware selector at gamma 16 put 99.8 % of B in some anchor's class, 9 % in its
paired anchor's, 4 % at uniform). fgray's choice (``nearest``, default): b_i = the negative of B
nearest a_i in the selector's space, so the selector's hardness reaches the triplet. Both are
``pair_negatives``; InfoNCE reads all of B and needs no pairing.

The data pipeline (``fgray.data.pipeline``) runs this in its view actors on the index rows of one
step, before decoding: only A and B are decoded, and the training step waits for none of it. The
pairing travels with the batch as the column ``negative_index`` (``fgray.data.inputs``).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Schedule = Literal["easy_to_hard", "published", "constant"]
SCHEDULES: tuple[str, ...] = ("easy_to_hard", "published", "constant")
Pairing = Literal["nearest", "index"]
PAIRINGS: tuple[str, ...] = ("nearest", "index")


def gamma_at(schedule: Schedule, tau: float, epoch: int, epochs: int) -> float:
    """gamma of the 1-based ``epoch`` of ``epochs`` (spec §2.1 step 6, §7.3: progress t = T / T_max).

    ``easy_to_hard`` [guess, default]: tau t, from near 0 (uniform) to tau; ``published``: the
    printed tau / t = tau T_max / T (hard to less hard: the direction the paper's text contradicts);
    ``constant``: tau.
    """
    if not 1 <= epoch <= epochs:
        raise ValueError(f"epoch must be in 1..{epochs}, got {epoch}")
    progress = epoch / epochs
    if schedule == "easy_to_hard":
        return tau * progress
    if schedule == "published":
        return tau / progress
    if schedule == "constant":
        return tau
    raise ValueError(f"unknown schedule {schedule!r}; known: {list(SCHEDULES)}")


def selection_probabilities(anchors: np.ndarray, candidates: np.ndarray, gamma: float) -> np.ndarray:
    """p (K*N,) of Algorithm 1 steps 3-5 from anchor (N, d) and candidate (M, d) embeddings."""
    logits = gamma * (anchors.astype(np.float64) @ candidates.astype(np.float64).T)  # (N, M), step 3-4
    logits -= logits.max(axis=1, keepdims=True)  # a stable row softmax: gamma may be in the hundreds
    rows = np.exp(logits)
    rows /= rows.sum(axis=1, keepdims=True)
    weights = rows.sum(axis=0)  # step 5: column sums
    return weights / weights.sum()


def select_negatives(anchors: np.ndarray, candidates: np.ndarray, gamma: float, count: int,
                     rng: np.random.Generator, replacement: bool = False) -> np.ndarray:
    """Positions (``count``,) into ``candidates`` of the selected negatives B (step 7). Without
    replacement by default [spec guess]: a repeated negative is a false negative of itself."""
    p = selection_probabilities(anchors, candidates, gamma)
    if not replacement and count > np.count_nonzero(p):
        replacement = True  # p has too few non-zero entries (underflow at a huge gamma): draw with it
    return rng.choice(len(candidates), size=count, replace=replacement, p=p)


def pair_negatives(anchors: np.ndarray, negatives: np.ndarray, pairing: Pairing = "nearest") -> np.ndarray:
    """b_i of each anchor: positions (N,) into ``negatives`` (the chosen B, (M, d), in draw order) from
    anchor (N, d) embeddings. ``nearest`` [fgray's choice]: the negative with the largest a_i . b (the
    selector's embeddings are L2-normalised: the nearest by cosine), ties to the first drawn; several
    anchors may share one. ``index``: the i-th drawn (the draft code's pairing; needs M >= N).
    No randomness: a resumed step pairs as the uninterrupted one did."""
    if pairing == "index":
        if len(negatives) < len(anchors):
            raise ValueError(f"index pairing: {len(negatives)} negatives for {len(anchors)} anchors")
        return np.arange(len(anchors))
    if pairing == "nearest":
        return np.argmax(anchors.astype(np.float64) @ negatives.astype(np.float64).T, axis=1)
    raise ValueError(f"unknown pairing {pairing!r}; known: {list(PAIRINGS)}")


def select_and_pair(anchors: np.ndarray, candidates: np.ndarray, gamma: float, rng: np.random.Generator,
                    replacement: bool = False, pairing: Pairing = "nearest") -> tuple[np.ndarray, np.ndarray]:
    """One composed step: (positions (N,) into ``candidates`` of B, in draw order; position (N,) in B
    of each anchor's negative b_i). N = len(anchors) negatives, as Algorithm 1 draws."""
    chosen = select_negatives(anchors, candidates, gamma, len(anchors), rng, replacement)
    return chosen, pair_negatives(anchors, candidates[chosen], pairing)


def candidate_rows(rows: int, count: int, seed: int, epoch: int, step: int, rank: int,
                   anchors: np.ndarray | None = None) -> np.ndarray:
    """The K*N candidate rows of one step (step 2), uniform over the split without the step's anchors
    and distinct where the split is large enough: an anchor or a repeated row among the chosen
    negatives would be a false negative (of an anchor, or of each other). Seeded by the step, so a
    resumed trial draws what the uninterrupted one drew."""
    rng = np.random.default_rng([seed, epoch, step, rank, 1])
    anchors = np.zeros(0, np.int64) if anchors is None else np.asarray(anchors)
    pool = rows - len(np.unique(anchors))
    if pool < count:  # a split smaller than K*N + N: rows repeat (still never an anchor, if any other)
        others = np.setdiff1d(np.arange(rows), anchors)
        return rng.choice(others if len(others) else np.arange(rows), size=count, replace=True)
    drawn = rng.choice(rows, size=min(rows, count + len(anchors)), replace=False)  # O(size), not O(rows)
    return drawn[~np.isin(drawn, anchors)][:count]


def selection_rng(seed: int, epoch: int, step: int, rank: int) -> np.random.Generator:
    """The generator of one step's categorical draw (step 7)."""
    return np.random.default_rng([seed, epoch, step, rank, 2])
