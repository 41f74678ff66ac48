"""ASS's Adaptive Sample Selector (paper 000, spec ../shared/specs/ass.md §2.1, Algorithm 1) and the
composed batches the data pipeline builds with it: p against a slow loop reference of steps 3-5, its
gamma limits, the categorical draw of step 7, the gamma schedules of step 6, a composed epoch's index
(N anchors then K*N candidates per step) and the view actor's composition of each step (N anchors,
then N negatives among that step's candidates); each anchor's own negative: tests/test_ass_pairing.py.
Pure numpy; the actor is built without Ray."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from fgray.data import pipeline
from fgray.data.view_actor import ViewActor, runs
from fgray.data import selection as sel
from fgray.data.inputs import EncoderSpec, Inputs, Selection, ViewRecipe
from fgray.data.selection import (candidate_rows, gamma_at, select_negatives, selection_probabilities,
                                  selection_rng)
from fgray.methods.configs import Stage

ENCODER = EncoderSpec(kind="timm", model="test_vit", pretrained="random")


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference_probabilities(anchors: np.ndarray, candidates: np.ndarray, gamma: float) -> list[float]:
    """Algorithm 1 steps 3-5 by hand: d_ij = a_i . y_j; D'_ij = exp(gamma d_ij) / sum_j' exp(gamma d_ij');
    w_j = sum_i D'_ij; p_j = w_j / sum_j' w_j'."""
    n, m = len(anchors), len(candidates)
    d = [[sum(float(a) * float(y) for a, y in zip(anchors[i], candidates[j])) for j in range(m)]
         for i in range(n)]
    rows = []
    for i in range(n):
        e = [math.exp(gamma * d[i][j]) for j in range(m)]
        total = sum(e)
        rows.append([v / total for v in e])
    w = [sum(rows[i][j] for i in range(n)) for j in range(m)]
    return [v / sum(w) for v in w]


# ------------------------------------------------------------------------------------- p (steps 3-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 4.0, 16.0, 60.0])
def test_probabilities_match_the_loop_reference(gamma):
    rng = np.random.default_rng(0)
    anchors, candidates = unit_rows(rng, 3, 6), unit_rows(rng, 12, 6)
    p = selection_probabilities(anchors, candidates, gamma)
    assert p.shape == (12,)
    np.testing.assert_allclose(p, reference_probabilities(anchors, candidates, gamma), rtol=1e-9, atol=1e-12)


def test_probabilities_are_a_distribution():
    rng = np.random.default_rng(1)
    for gamma in (0.0, 1.0, 16.0, 300.0):
        p = selection_probabilities(unit_rows(rng, 5, 8), unit_rows(rng, 50, 8), gamma)
        assert (p >= 0).all() and abs(p.sum() - 1) < 1e-12


def test_gamma_to_zero_is_uniform():
    rng = np.random.default_rng(2)
    p = selection_probabilities(unit_rows(rng, 4, 8), unit_rows(rng, 40, 8), 1e-9)
    np.testing.assert_allclose(p, np.full(40, 1 / 40), atol=1e-6)


def test_large_gamma_concentrates_on_the_candidates_nearest_the_anchors():
    rng = np.random.default_rng(3)
    anchors = unit_rows(rng, 4, 16)
    far = -anchors[::-1] + 0.0  # opposite directions: far from every anchor's own copy
    others = unit_rows(rng, 24, 16)
    candidates = np.concatenate([others[:10], anchors, far, others[10:]])
    copies = np.arange(10, 14)
    p = selection_probabilities(anchors, candidates, 60.0)
    assert p[copies].sum() > 0.99
    # each copy is the nearest candidate of its own anchor: roughly 1/N of the mass each
    np.testing.assert_allclose(p[copies], 0.25, atol=0.01)
    # a small gamma does not: the copies hold about their uniform share
    assert selection_probabilities(anchors, candidates, 1e-3)[copies].sum() < 0.2


def test_extreme_gamma_gives_no_nan():
    rng = np.random.default_rng(4)
    anchors, candidates = unit_rows(rng, 4, 8), unit_rows(rng, 40, 8)
    for gamma in (1e4, 1e6):
        p = selection_probabilities(anchors, candidates, gamma)
        assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-9 and (p >= 0).all()
        # every anchor's mass sits on its nearest candidate
        nearest = set(np.argmax(anchors.astype(np.float64) @ candidates.astype(np.float64).T, axis=1))
        assert set(np.flatnonzero(p > 1e-6)) == nearest
        chosen = select_negatives(anchors, candidates, gamma, 4, np.random.default_rng(0))
        assert len(chosen) == 4 and ((0 <= chosen) & (chosen < 40)).all()


# ------------------------------------------------------------------------------------ draws (step 7)


def test_without_replacement_draws_distinct_positions():
    rng = np.random.default_rng(5)
    anchors, candidates = unit_rows(rng, 6, 8), unit_rows(rng, 60, 8)
    for seed in range(10):
        chosen = select_negatives(anchors, candidates, 16.0, 6, np.random.default_rng(seed))
        assert chosen.shape == (6,) and len(set(chosen.tolist())) == 6
        assert ((0 <= chosen) & (chosen < 60)).all()
    everything = select_negatives(anchors, candidates, 16.0, 60, np.random.default_rng(0))
    assert sorted(everything.tolist()) == list(range(60))


def test_with_replacement_may_repeat():
    # one anchor, its copy among orthogonal candidates, a huge gamma: p is (numerically) one-hot
    anchors = np.eye(8, dtype=np.float32)[:1]
    candidates = np.eye(8, dtype=np.float32)[[3, 0, 5, 6]]
    chosen = select_negatives(anchors, candidates, 200.0, 5, np.random.default_rng(0), replacement=True)
    assert chosen.tolist() == [1] * 5
    distinct = select_negatives(anchors, candidates, 200.0, 4, np.random.default_rng(0), replacement=False)
    assert sorted(distinct.tolist()) == [0, 1, 2, 3]


def test_draws_follow_p():
    rng = np.random.default_rng(6)
    anchors, candidates = unit_rows(rng, 2, 4), unit_rows(rng, 6, 4)
    p = selection_probabilities(anchors, candidates, 3.0)
    draws = np.concatenate([select_negatives(anchors, candidates, 3.0, 1, np.random.default_rng(s))
                            for s in range(4000)])
    freq = np.bincount(draws, minlength=6) / len(draws)
    np.testing.assert_allclose(freq, p, atol=0.03)


def test_draws_are_reproducible_with_the_same_seed():
    rng = np.random.default_rng(7)
    anchors, candidates = unit_rows(rng, 8, 8), unit_rows(rng, 80, 8)

    def draw(step: int, replacement: bool = False) -> list[int]:
        rng = selection_rng(3, 1, step, 0)
        return select_negatives(anchors, candidates, 4.0, 8, rng, replacement).tolist()

    assert draw(0) == draw(0) and draw(5, True) == draw(5, True)
    assert len({tuple(draw(step)) for step in range(6)}) > 1  # other steps draw other negatives
    assert selection_rng(3, 1, 0, 0).random() != selection_rng(3, 1, 0, 1).random()  # and other ranks


def test_candidate_rows_are_seeded_uniform_rows():
    a = candidate_rows(100, 40, seed=1, epoch=2, step=3, rank=0)
    assert a.shape == (40,) and ((0 <= a) & (a < 100)).all()
    np.testing.assert_array_equal(a, candidate_rows(100, 40, seed=1, epoch=2, step=3, rank=0))
    assert not np.array_equal(a, candidate_rows(100, 40, seed=1, epoch=2, step=4, rank=0))
    assert not np.array_equal(a, candidate_rows(100, 40, seed=1, epoch=3, step=3, rank=0))
    many = np.concatenate([candidate_rows(10, 1000, 0, 0, s, 0) for s in range(5)])
    np.testing.assert_allclose(np.bincount(many, minlength=10) / len(many), 0.1, atol=0.02)


def test_candidates_are_distinct_and_never_the_steps_anchors():
    anchors = np.array([3, 17, 42])
    for step in range(20):
        drawn = candidate_rows(60, 30, seed=0, epoch=0, step=step, rank=0, anchors=anchors)
        assert len(drawn) == 30 and len(set(drawn.tolist())) == 30  # distinct while the split allows
        assert not np.isin(drawn, anchors).any()
    small = candidate_rows(8, 30, seed=0, epoch=0, step=0, rank=0, anchors=anchors)  # fewer rows than K*N
    assert len(small) == 30 and not np.isin(small, anchors).any()


# ---------------------------------------------------------------------------------- gamma (step 6)


def test_easy_to_hard_rises_linearly_to_tau():
    tau, epochs = 16.0, 8
    values = [gamma_at("easy_to_hard", tau, t, epochs) for t in range(1, epochs + 1)]
    assert values == pytest.approx([tau * t / epochs for t in range(1, epochs + 1)])
    assert values[-1] == pytest.approx(tau)
    steps = np.diff(values)
    np.testing.assert_allclose(steps, tau / epochs)
    assert values[0] == pytest.approx(tau / epochs)  # near 0 (uniform) at the first epoch


def test_published_is_tau_tmax_over_t_and_constant_is_tau():
    tau, epochs = 16.0, 800
    for t in (1, 2, 100, 799, 800):
        assert gamma_at("published", tau, t, epochs) == pytest.approx(tau * epochs / t)
        assert gamma_at("constant", tau, t, epochs) == tau
    assert gamma_at("published", tau, 1, epochs) == pytest.approx(12800.0)  # spec §2.1: 12 800 -> 16
    assert gamma_at("published", tau, 800, epochs) == pytest.approx(16.0)


@pytest.mark.parametrize("epoch", [0, -1, 6])
def test_out_of_range_epoch_raises(epoch):
    for schedule in ("easy_to_hard", "published", "constant"):
        with pytest.raises(ValueError):
            gamma_at(schedule, 16.0, epoch, 5)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="schedule"):
        gamma_at("hard_to_easy", 16.0, 1, 5)


# ------------------------------------------------------------------------------------- Selection


def test_selection_is_placed_on_its_stage():
    stages = (Stage("warmup", 2), Stage("pretrain", 5), Stage("finetune", 3))
    placed = Selection(ENCODER, stage="pretrain").placed(stages)
    assert (placed.first, placed.epochs) == (2, 5)
    assert [e for e in range(10) if placed.composes(e)] == [2, 3, 4, 5, 6]
    tuned = Selection(ENCODER, stage="finetune").placed(stages)
    assert (tuned.first, tuned.epochs) == (7, 3)
    assert not any(Selection(ENCODER).composes(e) for e in range(5))  # unplaced: composes nothing
    with pytest.raises(ValueError, match="nowhere"):
        Selection(ENCODER, stage="nowhere").placed(stages)


# ---------------------------------------------------------------------------------- composed index

K, BATCH = 3, 8  # pool factor, batch size (N = 4 anchors per step)
N = BATCH // 2
NUM_ROWS, SEED, RANK = 40, 11, 0


def placed_selection(schedule: str = "easy_to_hard", tau: float = 16.0, replacement: bool = False,
                     stages=(Stage("pretrain", 2), Stage("finetune", 2))) -> Selection:
    return Selection(ENCODER, pool_factor=K, tau=tau, schedule=schedule, replacement=replacement,
                     stage="pretrain").placed(stages)


def as_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy() for name in table.column_names}


def test_composed_epoch_index_groups_anchors_then_candidates():
    selection = placed_selection()
    rows = np.random.default_rng(0).permutation(NUM_ROWS)[:32]  # the epoch's permutation, 4 steps
    index = as_numpy(pipeline.composed_index(rows, 1, BATCH, selection, NUM_ROWS, SEED, RANK))
    steps = len(rows) // BATCH
    assert len(index["row"]) == steps * (N + K * N)
    assert (index["epoch"] == 1).all()
    for step in range(steps):
        part = slice(step * (N + K * N), (step + 1) * (N + K * N))
        assert (index["group"][part] == step).all()
        flags = index["candidate"][part]
        assert not flags[:N].any() and flags[N:].all()
        # anchors: the next N rows of the permutation
        np.testing.assert_array_equal(index["row"][part][:N], rows[step * N:(step + 1) * N])
        candidates = index["row"][part][N:]
        assert ((0 <= candidates) & (candidates < NUM_ROWS)).all()
    again = as_numpy(pipeline.composed_index(rows, 1, BATCH, selection, NUM_ROWS, SEED, RANK))
    np.testing.assert_array_equal(again["row"], index["row"])  # reproducible
    other_rank = as_numpy(pipeline.composed_index(rows, 1, BATCH, selection, NUM_ROWS, SEED, 1))
    assert not np.array_equal(other_rank["row"][index["candidate"]], index["row"][index["candidate"]])


def test_plain_epochs_keep_the_permutation():
    selection = placed_selection()  # pretrain = epochs 0, 1; finetune = epochs 2, 3
    rows = np.random.default_rng(1).permutation(NUM_ROWS)[:36]
    for epoch in (2, 3):
        index = as_numpy(pipeline.composed_index(rows, epoch, BATCH, selection, NUM_ROWS, SEED, RANK))
        np.testing.assert_array_equal(index["row"], rows)
        assert (index["epoch"] == epoch).all() and not index["candidate"].any()
        np.testing.assert_array_equal(index["group"], np.arange(len(rows)) // BATCH)


# -------------------------------------------------------------------------------- view composition


def views_actor(selection: Selection, selector: np.ndarray, seed: int = SEED, rank: int = RANK):
    """A ``ViewActor`` without Ray: only what ``compose`` reads."""
    obj = ViewActor.__new__(ViewActor)
    obj.inputs = Inputs(views=(ViewRecipe("crop_flip"),), selection=selection)
    obj.seed, obj.rank, obj.selector = seed, rank, selector
    return obj


def selector_matrix(rows: int = NUM_ROWS, d: int = 8, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed), rows, d)


def steps_of(index: dict[str, np.ndarray]) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(epoch, group, anchors, candidates) per composed step of an index, in order."""
    out = []
    keys = list(zip(index["epoch"].tolist(), index["group"].tolist()))
    for key in dict.fromkeys(keys):
        where = np.array([k == key for k in keys])
        flags = index["candidate"][where]
        if flags.any():
            out.append((*key, index["row"][where][~flags], index["row"][where][flags]))
    return out


def test_compose_returns_anchors_then_negatives_among_the_step_candidates():
    selection = placed_selection()
    rows = np.random.default_rng(2).permutation(NUM_ROWS)[:24]
    index = as_numpy(pipeline.composed_index(rows, 1, BATCH, selection, NUM_ROWS, SEED, RANK))
    out = views_actor(selection, selector_matrix()).compose(index)
    steps = steps_of(index)
    assert len(steps) == 3 and len(out["row"]) == len(steps) * 2 * N
    assert (out["epoch"] == 1).all()
    for s, (_, _, anchors, candidates) in enumerate(steps):
        batch = out["row"][s * 2 * N:(s + 1) * 2 * N]
        np.testing.assert_array_equal(batch[:N], anchors)
        negatives = batch[N:]
        # without replacement: a multiset of the step's candidates (candidates may repeat rows)
        have = dict(zip(*np.unique(candidates, return_counts=True)))
        got = dict(zip(*np.unique(negatives, return_counts=True)))
        assert all(row in have and count <= have[row] for row, count in got.items()), (negatives, candidates)


def test_compose_is_deterministic_for_a_fixed_seed():
    selection = placed_selection(schedule="constant", tau=2.0)
    rows = np.random.default_rng(3).permutation(NUM_ROWS)[:32]
    index = as_numpy(pipeline.composed_index(rows, 0, BATCH, selection, NUM_ROWS, SEED, RANK))
    matrix = selector_matrix()
    first = views_actor(selection, matrix).compose(index)
    second = views_actor(selection, matrix).compose({k: v.copy() for k, v in index.items()})
    np.testing.assert_array_equal(first["row"], second["row"])
    seeds = {tuple(views_actor(selection, matrix, seed=s).compose(index)["row"]) for s in range(6)}
    assert len(seeds) > 1  # the seed drives the draw


def test_compose_picks_the_nearest_candidates_at_a_huge_gamma():
    # orthonormal selector rows: only a candidate that *is* an anchor's row is near it
    matrix = np.eye(NUM_ROWS, dtype=np.float32)
    selection = placed_selection(schedule="constant", tau=1e4)
    anchors = np.array([5, 9, 17, 30])
    candidates = np.array([1, 2, 9, 3, 4, 30, 6, 5, 7, 8, 17, 10])  # K*N = 12, holds all four anchors
    index = {"row": np.r_[anchors, candidates], "epoch": np.zeros(16, np.int64),
             "group": np.zeros(16, np.int64),
             "candidate": np.r_[np.zeros(4, bool), np.ones(12, bool)]}
    out = views_actor(selection, matrix).compose(index)
    np.testing.assert_array_equal(out["row"][:4], anchors)
    assert sorted(out["row"][4:].tolist()) == sorted(anchors.tolist())


def test_compose_uses_the_schedule_at_the_epoch_within_its_stage(monkeypatch):
    # the selection's stage starts at trial epoch 2: its first composed epoch is T = 1 of T_max = 4
    stages = (Stage("warmup", 2), Stage("pretrain", 4))
    selection = placed_selection(tau=8.0, stages=stages)
    seen = []
    real = sel.select_negatives

    def recording(anchors, candidates, gamma, count, rng, replacement=False):
        seen.append(gamma)
        return real(anchors, candidates, gamma, count, rng, replacement)

    monkeypatch.setattr(sel, "select_negatives", recording)
    rows = np.arange(BATCH)
    actor = views_actor(selection, selector_matrix())
    for epoch in (2, 3, 5):
        actor.compose(as_numpy(pipeline.composed_index(rows, epoch, BATCH, selection, NUM_ROWS, SEED, RANK)))
    assert seen == pytest.approx([8.0 * 1 / 4, 8.0 * 2 / 4, 8.0 * 4 / 4])  # easy_to_hard: tau T / T_max


def test_compose_passes_plain_steps_unchanged():
    selection = placed_selection()
    matrix = selector_matrix()
    plain = as_numpy(pipeline.composed_index(np.arange(16), 2, BATCH, selection, NUM_ROWS, SEED, RANK))
    composed = as_numpy(pipeline.composed_index(np.arange(20, 36), 1, BATCH, selection, NUM_ROWS, SEED, RANK))
    tail = as_numpy(pipeline.composed_index(np.arange(30, 38), 3, BATCH, selection, NUM_ROWS, SEED, RANK))
    index = {k: np.concatenate([plain[k], composed[k], tail[k]]) for k in plain}
    out = views_actor(selection, matrix).compose(index)
    assert len(out["row"]) == 16 + 2 * 2 * N + 8
    np.testing.assert_array_equal(out["row"][:16], np.arange(16))
    np.testing.assert_array_equal(out["epoch"][:16], 2)
    np.testing.assert_array_equal(out["epoch"][16:32], 1)
    np.testing.assert_array_equal(out["row"][32:], np.arange(30, 38))
    np.testing.assert_array_equal(out["epoch"][32:], 3)
    np.testing.assert_array_equal(out["row"][16:20], np.arange(20, 24))  # step 0's anchors
    np.testing.assert_array_equal(out["row"][24:28], np.arange(24, 28))  # step 1's anchors


def test_a_plain_only_index_passes_unchanged():
    selection = placed_selection()
    plain = as_numpy(pipeline.composed_index(np.arange(12), 3, BATCH, selection, NUM_ROWS, SEED, RANK))
    out = views_actor(selection, selector_matrix()).compose(plain)
    np.testing.assert_array_equal(out["row"], np.arange(12))
    np.testing.assert_array_equal(out["epoch"], 3)


def test_without_replacement_a_step_negatives_are_distinct_images():
    """§2.1 step 7 [guess]: B without replacement, because a duplicate would be a false negative. On a
    small split (12 rows, K*N = 12 candidates) the uniform candidates repeat rows; B must not."""
    rows = 12
    selection = placed_selection()
    assert not selection.replacement
    index = as_numpy(pipeline.composed_index(np.random.default_rng(0).permutation(rows)[:BATCH], 0, BATCH,
                                             selection, rows, 0, RANK))
    out = views_actor(selection, selector_matrix(rows), seed=0).compose(index)
    negatives = out["row"][N:2 * N].tolist()
    candidates = index["row"][N:].tolist()
    assert len(set(negatives)) == N, f"repeated negatives {negatives} from candidates {candidates}"


@pytest.mark.parametrize("cut", [2, N, N + 1, N + K * N - 1])
def test_a_step_split_across_two_calls_raises(cut):
    selection = placed_selection()
    index = as_numpy(pipeline.composed_index(np.arange(BATCH), 0, BATCH, selection, NUM_ROWS, SEED, RANK))
    actor = views_actor(selection, selector_matrix())
    first = {k: v[:cut] for k, v in index.items()}
    second = {k: v[cut:] for k, v in index.items()}
    with pytest.raises(ValueError, match="split"):
        actor.compose(first)
        actor.compose(second)


def test_runs_are_the_runs_of_equal_values():
    values = np.array([3, 3, 1, 1, 1, 3, 7])
    found = runs(values)
    assert [(r.start, r.stop) for r in found] == [(0, 2), (2, 5), (5, 6), (6, 7)]
    assert [(r.start, r.stop) for r in runs(np.array([4]))] == [(0, 1)]


def test_index_blocks_never_split_a_composed_step():
    # A plain epoch (3 batches: 1.5 composed steps' rows) before two composed ones: blocks are cut per
    # epoch, so each block the view actor receives holds whole composed steps; the first is one batch.
    selection = placed_selection(stages=(Stage("warmup", 1), Stage("pretrain", 2)))
    step_rows = (K + 1) * N
    order = [pipeline.composed_index(np.arange(3 * BATCH), 0, BATCH, selection, NUM_ROWS, SEED, RANK),
             *[pipeline.composed_index(np.arange(2 * BATCH) + 8 * epoch, epoch, BATCH, selection, NUM_ROWS, SEED,
                                       RANK) for epoch in (1, 2)]]
    blocks = pipeline.index_blocks(order, step_rows)
    assert blocks[0].num_rows == step_rows
    actor = views_actor(selection, selector_matrix())
    for block in blocks:
        actor.compose(as_numpy(block))  # raises on a step split across calls
    whole = pa.concat_tables(order)
    assert pa.concat_tables(blocks).equals(whole)
    composed = {e for b in blocks for e, c in zip(b.column("epoch").to_pylist(), b.column("candidate").to_pylist())
                if c}
    assert composed == {1, 2}


def test_block_views_draw_each_index_block_in_whole_composed_steps(monkeypatch):
    # A Train worker's view actors get each index block as one row of lists (pipeline.index_dataset, built
    # without Ray tasks) and draw it in calls of step_rows rows: the calls, and their dtypes, of Ray Data's
    # batches of step_rows rows over the blocks themselves, each holding whole composed steps.
    selection = placed_selection(stages=(Stage("warmup", 1), Stage("pretrain", 2)))
    step_rows = (K + 1) * N
    order = [pipeline.composed_index(np.arange(3 * BATCH), 0, BATCH, selection, NUM_ROWS, SEED, RANK),
             *[pipeline.composed_index(np.arange(2 * BATCH) + 8 * epoch, epoch, BATCH, selection, NUM_ROWS, SEED,
                                       RANK) for epoch in (1, 2)]]
    blocks = pipeline.index_blocks(order, step_rows)
    rows = pa.Table.from_pylist(pipeline.index_items(blocks))
    assert rows.num_rows == len(blocks)
    # Ray Data's numpy batch of list columns: an object array holding each row's array.
    batch = {name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names}
    calls = []
    monkeypatch.setattr(ViewActor, "__call__", lambda self, index: calls.append(index) or {"n": len(index["row"])})
    views = pipeline.BlockViews.__new__(pipeline.BlockViews)
    views.batch_rows = step_rows
    drawn = list(views(batch))
    expected = [b.slice(start, step_rows) for b in blocks for start in range(0, b.num_rows, step_rows)]
    assert len(drawn) == len(calls) == len(expected)
    actor = views_actor(selection, selector_matrix())
    for call, want in zip(calls, expected):
        for name, values in as_numpy(want).items():
            assert call[name].dtype == values.dtype and np.array_equal(call[name], values), name
        actor.compose(call)  # raises on a step split across calls


def test_step_blocks_hold_one_training_step_each():
    # A one-worker trial's forked view workers draw one step per block: a plain epoch's blocks are one
    # batch each, a composed epoch's one step's anchors and candidates, which compose into one batch.
    from fgray.data.forked_views import step_blocks

    selection = placed_selection(stages=(Stage("warmup", 1), Stage("pretrain", 2)))
    order = [pipeline.composed_index(np.arange(3 * BATCH), 0, BATCH, selection, NUM_ROWS, SEED, RANK),
             pipeline.composed_index(np.arange(2 * BATCH) + 8, 1, BATCH, selection, NUM_ROWS, SEED, RANK)]
    blocks = step_blocks(order, BATCH)
    assert [b.num_rows for b in blocks] == [BATCH] * 3 + [(K + 1) * N] * 2
    actor = views_actor(selection, selector_matrix())
    assert all(len(actor.compose(as_numpy(b))["row"]) == BATCH for b in blocks)
    assert pa.concat_tables(blocks).equals(pa.concat_tables(order))
    plain = [pa.table({"row": np.arange(10), "epoch": np.zeros(10, np.int64)})]
    assert [b.column("row").to_pylist() for b in step_blocks(plain, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_step_that_cannot_be_whole_is_refused():
    # Composed steps are N anchors + N negatives: an odd batch would leave every step a row short. A split
    # smaller than one batch would give the forked view workers no step at all, not an error.
    from types import SimpleNamespace

    from fgray.data.forked_views import step_blocks

    inputs = Inputs(views=(ViewRecipe("crop_flip"),), selection=placed_selection())
    with pytest.raises(ValueError, match="even"):
        pipeline.train_index(SimpleNamespace(num_rows=NUM_ROWS), inputs, SEED, range(2), batch_size=BATCH + 1,
                             selector="cache")
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        step_blocks([pa.table({"row": np.arange(3), "epoch": np.zeros(3, np.int64)})], 4)
