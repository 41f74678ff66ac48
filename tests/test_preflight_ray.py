"""Through a local Ray (issue 29): settings the dataset cannot train exit 2 with one line before any trial
starts (before: Ray started three trials, each failed "not one step an epoch" and was retried, exit 1
after 44 s), and a trial that meets such settings anyway ends once, recorded as failed with the reason,
instead of being retried by Tune."""
from __future__ import annotations

import json
import time

from fgray.sweep import main, run_sweep
from fgray.sweep_file import load_sweep

DEMO = "sweeps/demo.yaml"
ONE_TRIAL = ["search.space={}", "search.num_samples=1", "search.scheduler.name=none", "eval.baseline=false"]


def test_a_batch_larger_than_the_split_exits_2_before_any_trial(ray_local, tmp_path, capsys):
    started = time.perf_counter()
    code = main([DEMO, "--profile", "smoke", "--storage", str(tmp_path), "--set", "train.batch_size=100000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: train.batch_size: 100000 is more images than the training split holds (")
    assert not list(tmp_path.iterdir())  # no record, no experiment folder: no trial started
    assert time.perf_counter() - started < 30


def test_a_trial_whose_settings_cannot_train_ends_once(ray_local, tmp_path, monkeypatch):
    from fgray import sweep_checks

    monkeypatch.setattr(sweep_checks, "before_trials", lambda *args, **kwargs: None)  # the trial meets it itself
    sweep = load_sweep(DEMO, [*ONE_TRIAL, "train.batch_size=100000", "resources.max_failures=3"], "smoke")
    summary = run_sweep(sweep, str(tmp_path))
    [trial] = summary["trials"]
    assert trial["status"] == "error" and "not one step an epoch" in trial["error"], trial
    out = tmp_path / sweep.name
    assert not list(out.glob("*/error.txt"))  # Tune saw no failure: nothing to retry
    [result_file] = list(out.glob("*/result.json"))
    assert len(result_file.read_text().splitlines()) == 1  # one start, one result: the reason
    assert json.loads((out / "summary.json").read_text())["num_errors"] == 1
    assert "not one step an epoch" in (out / "report.md").read_text()
