"""Seed repeats (``search.seeds``), without Ray: how trials become seeded rows, how Tune sees them,
which models the test evaluation scores, and the mean ± std table of the report."""
from __future__ import annotations

import math

import pytest

from fgray.config import ConfigError
from fgray.sweep_file import load_sweep
from fgray.report import markdown_report, results_frame
from fgray.results import (REPEAT_KEY, SEED_KEY, _overrides, mean_std, seed_rows, seed_table,
                           within_noise)
from fgray.sweep import build_search, evaluate_best, planned_trials

DEMO = "sweeps/demo.yaml"


def trial(trial_id, seed, val, lr=0.001, test=None):
    return {"trial_id": trial_id, "overrides": {"train.lr": lr, SEED_KEY: seed}, "status": "completed",
            "metrics": {"val/recall@1": val}, "checkpoint": f"/ckpt/{trial_id}", "epochs": 2,
            "test": test, "error": None, "paper": None}


def test_repeat_index_becomes_the_seed_and_matches_rays_constant():
    from ray.tune.search.repeater import TRIAL_INDEX

    assert REPEAT_KEY == TRIAL_INDEX
    assert _overrides({"train.lr": 0.1, REPEAT_KEY: 2}, (), base_seed=10) == {"train.lr": 0.1, SEED_KEY: 12}


def test_rows_group_seeds_and_rank_by_their_mean():
    trials = [trial("a", 0, 0.50), trial("b", 1, 0.54), trial("c", 0, 0.60, lr=0.01), trial("d", 1, 0.40, lr=0.01)]
    rows = seed_rows(trials, "val/recall@1", "max")
    assert [r["overrides"] for r in rows] == [{"train.lr": 0.001}, {"train.lr": 0.01}]  # 0.52 beats 0.50
    assert rows[0]["seeds"] == [0, 1] and rows[0]["mean"] == pytest.approx(0.52)
    assert rows[0]["std"] == pytest.approx(math.sqrt(((0.02) ** 2 * 2) / 1))
    assert mean_std([0.3]) == {"mean": 0.3, "std": 0.0} and math.isnan(mean_std([])["mean"])


def test_within_noise_is_welchs_t_test():
    best = {"values": [0.50, 0.51, 0.52], "mean": 0.51, "std": 0.01}
    close = {"values": [0.49, 0.515, 0.50], "mean": 0.5017, "std": 0.0126}
    far = {"values": [0.30, 0.31, 0.29], "mean": 0.30, "std": 0.01}
    assert within_noise(best, best) and within_noise(close, best) and not within_noise(far, best)
    assert within_noise({"values": [0.1], "mean": 0.1, "std": 0.0}, best)  # one seed: cannot tell


def test_config_plans_and_searchers():
    sweep = load_sweep(DEMO, ["search.seeds=3"])
    assert planned_trials(sweep)[1] == 3 * 3  # 3 TPE suggestions x 3 seeds
    _, searcher, samples = build_search(sweep)
    from ray.tune.search import Repeater

    assert isinstance(searcher, Repeater) and searcher.repeat == 3 and samples == 9
    grid = load_sweep(DEMO, ["search.seeds=2", "search.num_samples=1",
                             "search.space={train.lr: {grid: [0.001, 0.002]}}"])
    space, _, samples = build_search(grid)
    assert samples == 4 and set(space) == {"train.lr", SEED_KEY}
    alone = load_sweep(DEMO, ["search.seeds=2", "search.space={}", "search.num_samples=1"])
    space, searcher, samples = build_search(alone)
    assert samples == 2 and set(space) == {SEED_KEY}
    # A grid runs each row once per seed whatever num_samples says (the demo file's 3 is for its TPE
    # search): more samples than grid points would repeat seeds at random.
    for sets in (["search.space={}"], ["search.space={train.lr: {grid: [0.001, 0.002]}}"]):
        repeated = load_sweep(DEMO, ["search.seeds=5", "search.num_samples=3", *sets])
        rows, planned = planned_trials(repeated)
        assert planned == 5 * len(rows) and build_search(repeated)[2] == planned
    with pytest.raises(ConfigError, match="search.space.train.seed"):
        load_sweep(DEMO, ["search.seeds=2", "search.space={train.seed: {grid: [0, 1]}}"])


def test_every_seed_of_the_best_row_and_its_untrained_backbone_are_tested(capsys):
    sweep = load_sweep(DEMO, ["search.seeds=2", "search.space={}", "search.num_samples=1"])
    trials = [trial("a", 0, 0.50), trial("b", 1, 0.54), trial("c", 0, 0.10, lr=0.01), trial("d", 1, 0.1, lr=0.01)]
    seen = []

    def fake_evaluate(models, cache_dir):
        seen.extend((e.train.seed, e.train.lr, c) for e, c in models)
        return [{"recall@1": 0.3 + 0.1 * (c is not None) + 0.01 * e.train.seed, "split": "open"} for e, c in models]

    tests = evaluate_best(sweep, "/tmp/storage", trials, fake_evaluate)
    assert sorted(seen, key=str) == sorted([(0, 0.001, "/ckpt/a"), (1, 0.001, "/ckpt/b"), (0, 0.001, None),
                                            (1, 0.001, None)], key=str)
    assert set(tests["trials"]) == {"a", "b"} and set(tests["baseline"]["seeds"]) == {"0", "1"}
    assert tests["baseline"]["recall@1"] == pytest.approx(0.305)  # the mean over the two seeds
    for t in trials:
        t["test"] = tests["trials"].get(t["trial_id"])
    table = seed_table(trials, tests["baseline"], "val/recall@1", "max")
    assert table[0]["gain"]["values"] == pytest.approx([0.1, 0.1]) and table[0]["gain"]["min"] == pytest.approx(0.1)
    assert table[0]["test"]["mean"] == pytest.approx(0.405) and table[1]["test"]["values"] == []
    summary = {"name": "demo", "num_trials": 4, "num_errors": 0, "best": "b", "metric": "val/recall@1",
               "data": {"split": "open"}, "trials": trials, "baseline": tests["baseline"], "seeds": 2, "rows": table}
    report = markdown_report(sweep, summary, results_frame(trials))
    assert "Seed repeats" in report and "40.50 ± 0.71" in report and "10.00 ± 0.00 (10.00)" in report
    assert "| 1 **best** |" in report
    assert "untrained" in capsys.readouterr().out
    # Without a validation split (fixed table rows) nothing ranks the rows: none is marked best.
    for t in trials:
        t["metrics"] = {}
    unranked = {**summary, "best": None, "rows": seed_table(trials, tests["baseline"], "val/recall@1", "max")}
    assert "**best**" not in markdown_report(sweep, unranked, results_frame(trials))
