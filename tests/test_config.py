"""Sweep-file validation: every bad input is one line naming the key path, exit 2, no Ray."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fgray.config import ConfigError, SweepConfig, grid_points
from fgray.sweep_file import load_sweep
from fgray.sweep import planned_trials

BASE = """
name: t
method: {name: mocov2, temperature: 0.2}
backbone: {name: test_resnet}
train: {epochs: 2, batch_size: 8}
"""


def write(tmp_path, text: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text: str, sets=()) -> str:
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, text), sets)
    return str(err.value)


def test_valid_file_and_defaults(tmp_path):
    sweep = load_sweep(write(tmp_path, BASE))
    assert sweep.method.temperature == 0.2 and sweep.method.queue_size == 65536
    assert sweep.data.name == "synthetic" and sweep.search.metric == "val/recall@1"


@pytest.mark.parametrize("override, expected", [
    ("method.temperature=-1", "method.temperature: must be > 0.0, got -1"),
    ("train.lrr=0.1", "train.lrr: unknown key (did you mean 'lr'?)"),
    ("method.temprature=0.1", "method.temprature: unknown key (did you mean 'temperature'?)"),
    ("method.name=nope", "method: unknown method 'nope'"),
    ("data.protocol=half", "data.protocol: must be one of 'open' or 'closed', got 'half'"),
    ("backbone.name=resnet19", "backbone.name: unknown timm model 'resnet19' (did you mean 'resnet18'?)"),
    ("backbone.pretrained=/no/such/file.pth", "backbone.pretrained: weights file not found: /no/such/file.pth"),
    ("data.name=cub200", "data: dataset 'cub200' needs root: the folder written by"),
    ("eval.ks=[0, 1]", "eval.ks: must be a non-empty list of positive integers"),
    ("backbone.model_kwargs={no_such_arg: 1}", "backbone: model_kwargs rejected by timm.create_model("),
    ("method.views.scale=[0.9, 0.5]", "method.views.scale: must satisfy 0 < low <= high <= 1"),
    # ignored by a one-worker trial, which trains in its own process: refused, not silently dropped
    ("resources.driver_resources={TRAIN_DRIVER: 1}", "resources: driver_resources places a TorchTrainer trial's driver"),
])
def test_bad_values_name_the_key(tmp_path, override, expected):
    assert expected in error_of(tmp_path, BASE, [override])


def test_search_space_values_are_validated(tmp_path):
    bad_grid = BASE + "search: {space: {method.temperature: {grid: [0.1, -0.2]}}}\n"
    assert error_of(tmp_path, bad_grid).startswith("search.space.method.temperature: method.temperature: must be > 0")


@pytest.mark.parametrize("search, expected", [
    ("{space: {method.tau: {grid: [0.1]}}}", "method.tau: no such key"),
    ("{space: {method.temperature: {uniform: [0.1, 0.2], grid: [1]}}}", "exactly one of"),
    ("{space: {method.temperature: {grid: [0.1]}, train.lr: {uniform: [0.1, 0.2]}}}", "cannot mix grid"),
    ("{space: {resources.workers_per_trial: {grid: [1, 2]}}}", "resources are a setting of the whole sweep"),
    ("{points: [{resources.cpus_per_worker: 2}]}", "search.points[0]: resources are a setting of the whole sweep"),
])
def test_bad_search_sections_name_the_problem(tmp_path, search, expected):
    assert expected in error_of(tmp_path, BASE + f"search: {search}\n")


def test_malformed_yaml_and_missing_file(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "method: [1\n")
    assert "expected a mapping" in error_of(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.yaml")


def test_grid_and_points_expand_exhaustively(tmp_path):
    text = BASE + textwrap.dedent("""
    search:
      space: {train.lr: {grid: [0.1, 0.2]}}
      points: [{method.temperature: 0.1}, {method.temperature: 0.3, method.momentum: 0.9}]
    """)
    sweep = load_sweep(write(tmp_path, text))
    rows = grid_points(sweep.search)
    assert len(rows) == 4 and planned_trials(sweep) == (rows, 4)
    assert {"train.lr": 0.2, "method.temperature": 0.3, "method.momentum": 0.9} in rows
    assert sweep.experiment(rows[-1]).method.momentum == 0.9


def test_smoke_profile_keeps_search_and_shrinks_run(tmp_path):
    text = BASE + "backbone: {name: resnet50}\nsearch: {space: {train.lr: {grid: [0.1, 0.2, 0.3]}}}\n"
    sweep = load_sweep(write(tmp_path, text.replace("backbone: {name: test_resnet}\n", "")), profile="smoke")
    assert sweep.name == "t-smoke" and sweep.backbone.name == "test_resnet"
    assert sweep.train.epochs <= 2 and sweep.resources.gpus_per_worker == 0
    assert len(grid_points(sweep.search)) == 3


def test_cli_exits_2_with_one_line_before_ray(tmp_path):
    path = write(tmp_path, BASE)
    proc = subprocess.run([sys.executable, "-m", "fgray.sweep", str(path), "--set", "method.temperature=-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: method.temperature: must be > 0.0, got -1"
    assert "ray" not in proc.stdout.lower()


def test_yaml_on_off_reads_as_amp_modes(tmp_path):
    assert load_sweep(write(tmp_path, BASE), ["train.amp=off"]).train.amp == "off"
    assert load_sweep(write(tmp_path, BASE + "train: {epochs: 2, batch_size: 8, amp: on}\n")).train.amp == "on"


def test_recall_ks_default_to_the_datasets_published_list(tmp_path):
    sop = BASE + "data: {name: sop, root: /prepared/sop}\n"
    assert load_sweep(write(tmp_path, sop)).eval.ks == (1, 10, 100, 1000)
    inshop = BASE + "data: {name: inshop, root: /prepared/inshop}\n"
    assert load_sweep(write(tmp_path, inshop)).experiment().eval.ks == (1, 10, 20, 30, 40, 50)
    assert load_sweep(write(tmp_path, BASE)).eval.ks == (1, 2, 4, 8)  # CUB, Cars, ..., synthetic
    assert load_sweep(write(tmp_path, sop + "eval: {ks: [1, 5]}\n")).eval.ks == (1, 5)  # given: kept


def test_schema_errors_never_import_torch(tmp_path):
    """A malformed file fails fast: schema errors are found before timm/torch (seconds) load."""
    path = write(tmp_path, BASE + "search: {space: {train.lr: {grid: [0.1, -2]}}}\n")
    probe = ("import sys\nfrom fgray.config import ConfigError\nfrom fgray.sweep_file import load_sweep\n"
             f"try:\n    load_sweep({str(path)!r})\nexcept ConfigError as err:\n    print(err)\n"
             "print(sorted(m for m in ('torch', 'timm', 'ray') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == ["search.space.train.lr: train.lr: must be > 0.0, got -2", "[]"], proc.stderr


def test_cli_dry_run_lists_trials(tmp_path):
    path = write(tmp_path, BASE + "search: {space: {train.lr: {grid: [0.1, 0.2]}}}\n")
    proc = subprocess.run([sys.executable, "-m", "fgray.sweep", str(path), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "trials: 2 (exhaustive grid" in proc.stdout and "trial 2: train.lr=0.2" in proc.stdout


def test_no_validation_split_needs_fixed_rows(tmp_path):
    from fgray.data.protocols import assign_splits

    path = write(tmp_path, BASE)
    sampled = ["data.val_fraction=0", "search.space={train.lr: {loguniform: [0.001, 0.1]}}"]
    with pytest.raises(ConfigError, match="data.val_fraction: 0 leaves no validation split"):
        load_sweep(path, sampled)
    with pytest.raises(ConfigError, match="search.space.data.val_fraction"):
        load_sweep(path, ["search.space={data.val_fraction: {grid: [0, 0.2]}}"])
    fixed = load_sweep(path, ["data.val_fraction=0", "search.space={train.lr: {grid: [0.01, 0.1]}}"])
    assert not fixed.has_validation
    assert not load_sweep(path, ["data.val_fraction=0"], profile="smoke").has_validation  # smoke keeps it
    labels = np.repeat(np.arange(4), 5)
    ids = np.array([f"x/{i}" for i in range(20)])
    for protocol, splits in (("open", np.where(labels < 2, "train", "test")), ("closed", np.tile(
            ["train"] * 4 + ["test"], 4))):
        out = assign_splits("generic", protocol, ids, labels, splits, val_fraction=0.0)
        assert len(out.val) == 0 and len(out.train) == int((splits == "train").sum()), protocol
        assert "no validation split" in out.description


def test_longest_trial_covers_rows_whose_stages_differ():
    # OLDFS runs a decoder stage only when it synthesizes (alpha or nu > 0): rows differ in length.
    base = {"name": "s", "method": {"name": "oldfs", "alpha": 0.0, "nu": 0.0, "noise": "none",
                                    "decoder": {"pretrain_epochs": 4}}, "train": {"epochs": 3}}
    points = SweepConfig.model_validate({**base, "search": {"points": [{"method.alpha": 1.0}]}})
    assert points.total_epochs == 3 and points.longest_trial == 7
    sampled = SweepConfig.model_validate({**base, "search": {"space": {"method.nu": {"uniform": [0.0, 1.0]}}}})
    assert sampled.longest_trial == 7


def test_list_valued_paper_matches_find_their_rows():
    # A validated config holds tuples, YAML gives lists: DVA's Table 9 rows match by method.ica.targets.
    from pathlib import Path

    from fgray.report import _paper_row

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "dva_ica.yaml")
    rows = grid_points(sweep.search)
    assert len(rows) == 7 and all(_paper_row(sweep, row) is not None for row in rows)


def test_a_row_that_switches_method_starts_from_that_methods_defaults(tmp_path):
    """A leaderboard row names another method: the base method's options (a MoCo temperature) do not
    carry into it, its own keys are checked against its own schema, and the other sections stay."""
    path = tmp_path / "board.yaml"
    path.write_text(textwrap.dedent("""
        method: {name: mocov2, temperature: 0.3, queue_size: 256}
        train: {epochs: 3, lr: 0.002}
        search:
          points:
            - {method.name: mocov2}
            - {method.name: simsiam}
            - {method.name: ppssl, method.beta: 0.05, method.ais: false}
            - {method: {name: oldfs, base: simsiam}}
    """))
    sweep = load_sweep(path, deep=False)
    rows = [sweep.experiment(row, deep=False) for row in grid_points(sweep.search)]
    assert [r.method.name for r in rows] == ["mocov2", "simsiam", "ppssl", "oldfs"]
    assert rows[0].method.temperature == 0.3 and rows[0].method.queue_size == 256  # the base's own row
    assert rows[2].method.beta == 0.05 and rows[2].method.queue_size == 65536  # ppssl's default, not 256
    assert rows[3].method.base == "simsiam"
    assert all(r.train.lr == 0.002 for r in rows)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: mocov2}\nsearch: {points: [{method.name: simsiam, method.queue_size: 9}]}\n")
    with pytest.raises(ConfigError, match=r"search.points\[0\]: method.queue_size"):
        load_sweep(bad, deep=False)
    smoke = load_sweep(path, profile="smoke", deep=False)
    ppssl = smoke.experiment(grid_points(smoke.search)[2], deep=False).method
    assert ppssl.queue_size <= 256 and ppssl.beta == 0.05  # the row's method got its smoke overrides


def test_dry_run_says_where_a_trial_runs(tmp_path):
    from fgray.sweep import describe_plan

    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    one = describe_plan(load_sweep(path, deep=False), str(tmp_path)).splitlines()
    assert any(line.startswith("placement: each trial trains in its own Tune trial process") for line in one)
    ddp = load_sweep(path, ["resources.workers_per_trial=2", "resources.driver_resources={TRAIN_DRIVER: 1}"],
                     deep=False)
    line = next(x for x in describe_plan(ddp, str(tmp_path)).splitlines() if x.startswith("placement:"))
    assert "TorchTrainer per trial, 2 worker(s)" in line and "TRAIN_DRIVER 1" in line
