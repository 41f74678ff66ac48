"""Trial bookkeeping (fgray.results) without Ray: trial records from result objects, ranking,
checkpoint lookup in local and URI storage, and the test evaluation of the best trials."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from fgray.results import (POINT_KEY, checkpoint_epoch, collect_trials, latest_checkpoint,
                           overrides_from, rank_trials, train_run_dir, train_run_name)


def make_checkpoints(storage, sweep_name: str, trial_id: str, epochs: list[int | None]) -> list:
    """Checkpoint folders as Ray Train leaves them; None: a folder still being written."""
    run_dir = storage / sweep_name / train_run_name(trial_id)
    folders = []
    for i, epoch in enumerate(epochs):
        folder = run_dir / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        if epoch is not None:
            (folder / "meta.json").write_text(json.dumps({"epoch": epoch, "metrics": {}}))
        folders.append(folder)
    return folders


def result(trial_id=None, epoch=None, error=None, path="/exp/trial_driver_x", **params):
    metrics = {"trial_id": trial_id, "epoch": epoch, "val/recall@1": 0.5, "val/map": float("nan"),
               "train/loss": 1.25, "time/epoch_s": 3.0} if trial_id else {}
    return SimpleNamespace(metrics=metrics, path=path, config=params, error=error)


def test_latest_checkpoint_picks_the_newest_finished_epoch(tmp_path):
    folders = make_checkpoints(tmp_path, "s", "a", [1, 3, 2, None])  # last one: mid-write
    assert latest_checkpoint(str(tmp_path), "s", "a") == str(folders[1])
    assert latest_checkpoint(str(tmp_path), "s", "missing") is None
    assert checkpoint_epoch(str(folders[1])) == 3 and checkpoint_epoch(None) == 0
    assert train_run_dir(str(tmp_path) + "/", "s") == f"{tmp_path}/s"


def test_checkpoints_cut_short_are_skipped_and_tune_trial_folders_are_searched(tmp_path):
    # An upload cut short (a node lost mid-copy): an empty meta file, or a state file shorter than the
    # size its meta records. A trial trained in its Tune process checkpoints into its Tune folder.
    run = tmp_path / "s" / "trial_driver_b_00000_0"
    for i, (epoch, state) in enumerate([(1, b"1234"), (2, b"12"), (3, None)]):
        folder = run / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(state or b"")
        meta = {"epoch": epoch, "metrics": {}, "sizes": {"state.pt": 4}}
        (folder / "meta.json").write_text(json.dumps(meta) if state else "")
    assert latest_checkpoint(str(tmp_path), "s", "b") is None  # not its Train run: the Tune folder is named
    assert latest_checkpoint(str(tmp_path), "s", "b", "trial_driver_b_00000_0") == str(run / "checkpoint_000000")


def test_latest_checkpoint_on_a_uri_storage_returns_a_uri(tmp_path):
    make_checkpoints(tmp_path, "s", "a", [1, 2])
    uri = f"file://{tmp_path}"
    newest = latest_checkpoint(uri, "s", "a")
    assert newest == f"{uri}/s/train-a/checkpoint_000001" and checkpoint_epoch(newest) == 2
    assert latest_checkpoint(uri, "s", "missing") is None


def test_meta_file_name_matches_the_checkpoint_writer():
    from fgray import checkpoint, results

    assert results.META_FILE == checkpoint.META_FILE


def test_collect_trials_from_duck_typed_results(tmp_path):
    folders = make_checkpoints(tmp_path, "s", "done", [1, 2])
    ray_error = RuntimeError("ray.exceptions.RayTaskError(ValueError): trace\n"
                             '  File "x.py", line 1\nValueError: data: the val split is empty\n')
    results = [
        result("done", epoch=2, **{"method.temperature": 0.1}),
        result("asha", epoch=1, **{POINT_KEY: 1}),
        result("boom", epoch=1, error=ray_error),
        result(error=RuntimeError(""), path="/exp/trial_driver_q1_00003_3_2024-01-01_00-00-00/"),
    ]
    points = [{"method.temperature": 0.2}, {"method.temperature": 0.3, "train.lr": 0.01}]
    trials = collect_trials(results, str(tmp_path), "s", epochs=2, points=points)

    assert [t["status"] for t in trials] == ["completed", "stopped", "error", "error"]
    done, asha, boom, early = trials
    assert done["checkpoint"] == str(folders[1]) and asha["checkpoint"] is None
    assert done["overrides"] == {"method.temperature": 0.1}
    assert asha["overrides"] == points[1] and asha["params"] == {POINT_KEY: 1}
    assert done["metrics"] == {"val/recall@1": 0.5, "train/loss": 1.25}  # NaN and time/ dropped
    assert boom["error"] == "ValueError: data: the val split is empty"
    # No result ever reported: the trial's folder names it.
    assert early["trial_id"] == "trial_driver_q1_00003_3_2024-01-01_00-00-00"
    assert early["error"] == "RuntimeError" and early["epochs"] is None


def test_overrides_from_reads_the_sweeps_points():
    sweep = SimpleNamespace(search=SimpleNamespace(points=[{"a.b": 1}, {"a.b": 2}]), train=SimpleNamespace(seed=0))
    assert overrides_from({POINT_KEY: 1, "c": 3}, sweep) == {"a.b": 2, "c": 3}


def test_rank_trials_needs_the_metric_and_a_checkpoint():
    def trial(name, value, checkpoint="ckpt"):
        return {"trial_id": name, "checkpoint": checkpoint,
                "metrics": {} if value is None else {"val/recall@1": value}}

    trials = [trial("a", 0.2), trial("b", 0.9), trial("c", 0.5), trial("d", None),
              trial("e", 0.99, checkpoint=None)]
    assert [t["trial_id"] for t in rank_trials(trials, "val/recall@1", "max")] == ["b", "c", "a"]
    assert [t["trial_id"] for t in rank_trials(trials, "val/recall@1", "min")] == ["a", "c", "b"]


def test_evaluate_best_scores_the_best_trials_and_the_baseline(tmp_path, capsys):
    from fgray.sweep_file import load_sweep
    from fgray.sweep import evaluate_best

    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent("""
        name: t
        method: {name: mocov2}
        backbone: {name: test_resnet}
        train: {epochs: 2, batch_size: 8}
        eval: {test_top: 1}
    """))
    sweep = load_sweep(path)
    trials = [{"trial_id": n, "overrides": {"method.temperature": temp}, "checkpoint": f"/c/{n}",
               "metrics": {"val/recall@1": r}} for n, temp, r in (("a", 0.1, 0.3), ("b", 0.2, 0.6))]
    calls = []

    def evaluate(models, cache_dir):
        calls.append(([c for _, c in models], cache_dir))
        return [{"recall@1": 0.5 + i / 10, "split": "open test"} for i in range(len(models))]

    out = evaluate_best(sweep, str(tmp_path), trials, evaluate=evaluate)
    assert calls == [(["/c/b", None], f"{tmp_path}/t/_embeddings")]  # best + baseline, one pass
    assert out["trials"] == {"b": {"recall@1": 0.5}} and out["protocol"] == "open test"
    assert out["baseline"] == {"recall@1": 0.6, "init": "random init"}
    printed = capsys.readouterr().out
    assert "test (b): recall@1 50.00%" in printed and "untrained test_resnet" in printed


def test_rows_of_other_methods_are_paired_with_their_own_untrained_model(tmp_path):
    """A leaderboard: a SimSiam row's gain is over an untrained SimSiam of its seed, not over the
    best row's untrained MoCo; rows of the baseline's method and backbone share its models."""
    from fgray.results import seed_table
    from fgray.sweep import evaluate_best
    from fgray.sweep_file import load_sweep

    path = tmp_path / "board.yaml"
    path.write_text(textwrap.dedent("""
        name: board
        method: {name: mocov2}
        backbone: {name: test_resnet}
        train: {epochs: 2, batch_size: 8}
        eval: {test_top: 3}
        search: {points: [{method.name: mocov2}, {method.name: simsiam}, {method.temperature: 0.3}], seeds: 2}
    """))
    sweep = load_sweep(path)
    rows = [{"method.name": "mocov2"}, {"method.name": "simsiam"}, {"method.temperature": 0.3}]
    trials = [{"trial_id": f"r{i}s{seed}", "overrides": {**row, "train.seed": seed}, "checkpoint": f"/c/{i}{seed}",
               "metrics": {"val/recall@1": 0.6 - i / 10}} for i, row in enumerate(rows) for seed in (0, 1)]

    def evaluate(models, cache_dir):  # the untrained models score by method and seed: 0.1 mocov2, 0.2 simsiam
        return [{"recall@1": 0.5 if checkpoint else 0.1 * (1 + (exp.method.name == "simsiam")) + exp.train.seed / 100,
                 "split": "open test"} for exp, checkpoint in models]

    out = evaluate_best(sweep, str(tmp_path), trials, evaluate=evaluate)
    assert set(out["untrained"]) == {"r1s0", "r1s1"}  # only the SimSiam rows differ from the baseline's model
    assert out["untrained"]["r1s1"]["recall@1"] == pytest.approx(0.21)
    for t in trials:
        t["test"] = out["trials"][t["trial_id"]]
    table = {json.dumps(r["overrides"]): r for r in seed_table(trials, out["baseline"], "val/recall@1", "max",
                                                               untrained=out["untrained"])}
    assert table[json.dumps({"method.name": "simsiam"})]["gain"]["values"] == pytest.approx([0.3, 0.29])
    assert table[json.dumps({"method.temperature": 0.3})]["gain"]["values"] == pytest.approx([0.4, 0.39])


@pytest.mark.parametrize("module", ["fgray.results", "fgray.report"])
def test_bookkeeping_and_rendering_import_no_ray(module):
    """The layer rule: results and report load without Ray and without the trial code."""
    probe = (f"import sys, {module}\n"
             "print(sorted(m for m in sys.modules if m == 'ray' or m == 'fgray.trial'"
             " or m.startswith(('ray.', 'fgray.eval.distributed'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_trial_is_complete_at_its_own_last_epoch():
    # A row whose stages are shorter (OLDFS without its decoder stage) ends before the sweep's
    # longest trial: it reports its own length, and is complete, not stopped.
    short, cut = result("short", epoch=2), result("cut", epoch=2)
    short.metrics["trial_epochs"], cut.metrics["trial_epochs"] = 2, 3
    trials = collect_trials([short, cut], "/nowhere", "s", epochs=3)
    assert [t["status"] for t in trials] == ["completed", "stopped"]
