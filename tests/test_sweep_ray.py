"""End to end through Ray on CPU (shared Ray instance): a smoke sweep, --resume, a NaN trial."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from fgray.sweep import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "sweeps", "demo.yaml")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_sweep(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("sweeps")
    code = main([DEMO, "--profile", "smoke", "--storage", str(storage)])
    return code, storage / "demo-smoke"


def test_smoke_sweep_writes_real_metrics(smoke_sweep):
    code, out = smoke_sweep
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["num_errors"] == 0
    best = next(t for t in summary["trials"] if t["trial_id"] == summary["best"])
    # The best trial is ranked by its last validation: one that ASHA stopped after epoch 1 can still rank first.
    assert best["epochs"] in (1, 2) and os.path.isfile(os.path.join(best["checkpoint"], "state.pt"))
    assert max(t["epochs"] for t in summary["trials"]) == 2  # the first trial at ASHA's rung always goes on
    for key in ("val/recall@1", "val/map", "train/loss"):
        assert key in best["metrics"]
    assert 0.0 <= best["metrics"]["val/recall@1"] <= 1.0
    test = best["test"]
    assert 0.0 < test["recall@1"] <= test["recall@2"] <= test["recall@8"] <= 1.0 and test["num_queries"] > 0
    assert 0.0 < summary["baseline"]["recall@1"] <= 1.0
    assert "open" in summary["data"]["split"]
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 2 and {"config/method.temperature", "config/train.lr", "val/recall@1"} <= set(frame.columns)
    report = (out / "report.md").read_text()
    assert "| trial |" in report and "Untrained backbone" in report and (out / "curves.png").is_file()


def test_the_sweeps_gauges_reach_rays_prometheus_endpoint(smoke_sweep):
    """fgray's gauges on a node's metrics export port (Ray's Prometheus endpoint), parsed by a real
    Prometheus text parser: every trial's epoch, loss, search metric, img/s, data wait and status,
    and the sweep's trial counts. Ray exports every ~10 s."""
    import time
    import urllib.request

    import ray
    from prometheus_client.parser import text_string_to_metric_families

    code, out = smoke_sweep
    summary = json.loads((out / "summary.json").read_text())
    trials = {t["trial_id"] for t in summary["trials"]}
    ports = [n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]]
    wanted = {"ray_fgray_trial_epoch", "ray_fgray_trial_train_loss", "ray_fgray_trial_search_metric",
              "ray_fgray_trial_images_per_second", "ray_fgray_trial_data_wait_share", "ray_fgray_trial_status",
              "ray_fgray_sweep_trials"}
    deadline, samples = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        samples = {}
        for port in ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in wanted and sample.labels.get("sweep") == "demo-smoke":
                        samples.setdefault(sample.name, []).append(sample)
        if set(samples) == wanted:
            break
        time.sleep(2)
    assert set(samples) == wanted
    assert {s.labels["trial"] for s in samples["ray_fgray_trial_epoch"]} == trials
    epochs = {s.labels["trial"]: s.value for s in samples["ray_fgray_trial_epoch"]}
    assert epochs == {t["trial_id"]: t["epochs"] for t in summary["trials"]}
    metric = {s.labels["trial"]: s.value for s in samples["ray_fgray_trial_search_metric"]
              if s.labels["metric"] == "val/recall@1"}
    assert metric == pytest.approx({t["trial_id"]: t["metrics"]["val/recall@1"] for t in summary["trials"]})
    counts = {s.labels["state"]: s.value for s in samples["ray_fgray_sweep_trials"]}
    assert counts["running"] == 0 and counts["failed"] == 0
    assert counts["finished"] + counts["stopped"] == len(trials)
    status = {(s.labels["trial"], s.labels["status"]) for s in samples["ray_fgray_trial_status"] if s.value == 1}
    assert {trial for trial, _ in status} == trials and all(st in ("finished", "stopped") for _, st in status)


def test_existing_sweep_needs_resume_and_resume_keeps_results(smoke_sweep, capsys):
    code, out = smoke_sweep
    storage = str(out.parent)
    assert main([DEMO, "--profile", "smoke", "--storage", storage]) == 2
    assert "pass --resume" in capsys.readouterr().err
    before = {t["trial_id"]: t["metrics"]["val/recall@1"] for t in json.loads((out / "summary.json").read_text())["trials"]}
    assert main([DEMO, "--profile", "smoke", "--storage", storage, "--resume"]) == 0
    after = {t["trial_id"]: t["metrics"]["val/recall@1"] for t in json.loads((out / "summary.json").read_text())["trials"]}
    assert after == before  # finished trials are not rerun
    # The sweep and fgray's version are stored with the results; a resume under other settings is refused.
    assert json.loads((out / "sweep.json").read_text())["sweep"]["name"] == "demo-smoke"
    capsys.readouterr()
    assert main([DEMO, "--profile", "smoke", "--storage", storage, "--resume", "--set", "train.lr=0.5"]) == 2
    assert "train.lr: 0.001 -> 0.5" in capsys.readouterr().err


def test_nan_loss_is_a_recorded_failure(ray_local, tmp_path, capsys):
    # A temperature this small overflows the logits: the trial fails with a clear message, the sweep survives.
    code = main([DEMO, "--profile", "smoke", "--storage", str(tmp_path), "--set", "method.temperature=1e-45",
                 "--set", "search.space={}", "--set", "search.num_samples=1", "--set", "train.epochs=1"])
    summary = json.loads((tmp_path / "demo-smoke" / "summary.json").read_text())
    assert code == 1 and summary["num_trials"] == summary["num_errors"] == 1
    trial = summary["trials"][0]
    assert "non-finite loss" in trial["error"]
    # Failed trials say why: the console and report.md show the cause and where it was raised.
    assert trial["traceback"] and "non-finite loss" in trial["traceback"][-1]
    assert any(line.strip().startswith("File ") for line in trial["traceback"])
    console = capsys.readouterr().out
    failed = next(line for line in console.splitlines() if "FAILED:" in line)
    assert "non-finite loss" in failed and trial["traceback"][-2].strip() in console
    report = (tmp_path / "demo-smoke" / "report.md").read_text()
    assert "## Failed trials" in report and trial["traceback"][-2].strip() in report


def test_ddp_trial_of_a_new_method_on_the_declared_data_path(ray_local, tmp_path):
    # SimSiam with two DDP workers (gloo on CPU): each rank reads its own share of every epoch.
    sweep = os.path.join(REPO, "sweeps", "simsiam.yaml")
    code = main([sweep, "--profile", "smoke", "--storage", str(tmp_path), "--set", "search.space={}",
                 "--set", "search.num_samples=1", "--set", "resources.workers_per_trial=2",
                 "--set", "resources.cpus_per_worker=0.5", "--set", "resources.max_concurrent_trials=1"])
    summary = json.loads((tmp_path / "simsiam-smoke" / "summary.json").read_text())
    assert code == 0 and summary["num_errors"] == 0 and summary["method"] == "simsiam", summary["trials"]
    trial = summary["trials"][0]
    assert trial["status"] == "completed" and "train/loss_sim" in trial["metrics"]
    assert 0.0 < trial["test"]["recall@1"] <= 1.0


def test_cached_embeddings_are_computed_once_and_reach_the_batches(ray_local, tmp_path):
    # PP-SSL's CLIP teacher in cached mode: the embedding cache (a Ray Data actor pool) runs once per
    # storage; the trial's batches carry each image's embedding, looked up by image id.
    sweep = os.path.join(REPO, "sweeps", "ppssl_alpha_beta.yaml")
    args = [sweep, "--profile", "smoke", "--storage", str(tmp_path), "--set", "method.teacher_mode=cached",
            "--set", "search.num_samples=1", "--set", "train.epochs=1", "--set", "search.points=[]",
            "--set", "eval.baseline=false"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "ppssl_alpha_beta-smoke" / "summary.json").read_text())
    assert summary["num_errors"] == 0 and "train/loss_ais" in summary["trials"][0]["metrics"]
    caches = list((tmp_path / "_embedding_cache").glob("*/*/_COMPLETE"))
    assert len(caches) == 1
    assert main([*args, "--set", "name=again"]) == 0  # a later sweep on the same storage reuses it
    assert list((tmp_path / "_embedding_cache").glob("*/*/_COMPLETE")) == caches
    # ... and the same trial run twice on CPU gives bit-identical metrics (data order, views, init).
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert _learned(again["trials"][0]["metrics"]) == _learned(summary["trials"][0]["metrics"])


def _learned(metrics: dict) -> dict:
    """What a trial learned (losses, validation metrics), without its timings."""
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "train/loss"))}


def test_seed_repeats_are_reported_with_their_spread(ray_local, tmp_path):
    # Two seeds of one configuration (no ASHA: a trial stopped early would end at another epoch);
    # run-to-run determinism is asserted by the PP-SSL and killed-worker tests.
    assert main([DEMO, "--profile", "smoke", "--storage", str(tmp_path), "--set", "search.space={}",
                 "--set", "search.num_samples=1", "--set", "search.seeds=2",
                 "--set", "search.scheduler.name=none"]) == 0
    summary = json.loads((tmp_path / "demo-smoke" / "summary.json").read_text())
    learned = {t["overrides"]["train.seed"]: _learned(t["metrics"]) for t in summary["trials"]}
    assert sorted(learned) == [0, 1] and learned[0] != learned[1]  # the seed changes init, data order, views
    assert all(t["test"] for t in summary["trials"])  # every seed of the best row is tested
    row = summary["rows"][0]
    assert sorted(row["seeds"]) == [0, 1] and len(row["test"]["values"]) == 2
    assert len(row["untrained"]["values"]) == 2 and len(row["gain"]["values"]) == 2
    assert set(summary["baseline"]["seeds"]) == {"0", "1"}
    report = (tmp_path / "demo-smoke" / "report.md").read_text()
    assert "Seed repeats" in report and "±" in report


KILL_ARGS = [DEMO, "--profile", "smoke", "--set", "search.space={}", "--set", "search.num_samples=1",
             "--set", "train.epochs=6", "--set", "train.steps_per_epoch=4", "--set", "search.scheduler.name=none",
             "--set", "eval.baseline=false"]


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory):
    """The killed-worker tests' reference: the same trial, trained in its Tune process, never killed."""
    storage = tmp_path_factory.mktemp("whole")
    assert main([*KILL_ARGS, "--storage", str(storage)]) == 0
    return json.loads((storage / "demo-smoke" / "summary.json").read_text())["trials"][0]


# A one-worker trial trains in its Tune trial process (an ImplicitFunc actor, checkpoints in its Tune
# trial folder; Tune retries it) or, with resources.train_in_trial false, in a TorchTrainer (a
# RayTrainWorker, checkpoints in the train-<id> run; Train restarts its worker group).
KILLED = {"in_trial": ("ImplicitFunc", "trial_driver_*", []),
          "torch_trainer": ("RayTrainWorker", "train-*", ["--set", "resources.train_in_trial=false"])}


@pytest.mark.parametrize("host", sorted(KILLED))
def test_a_worker_killed_mid_trial_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, host):
    # The process that trains is SIGKILLed once its trial has checkpointed an epoch: it restarts from
    # that checkpoint (resources.max_failures) and, with every random stream derived from the seed,
    # the epoch and the image, ends with the metrics of a run that was never interrupted, on either host.
    import signal
    import threading
    import time

    from ray.util.state import list_actors

    actor_class, run_folder, extra = KILLED[host]
    killed: list[int] = []
    orphans: list[int] = []  # the killed process's children (a one-worker trial's forked view workers)

    def kill_after_first_checkpoint() -> None:
        # The process is found first (the state API takes a while) and killed the moment the first
        # checkpoint appears: smoke epochs last well under a second.
        deadline, pids = time.monotonic() + 240, []
        while time.monotonic() < deadline and not pids:
            pids = [a.pid for a in list_actors(filters=[("state", "=", "ALIVE")])
                    if a.class_name.endswith(actor_class)]
            time.sleep(0.1)
        while time.monotonic() < deadline and not killed:
            if list(tmp_path.glob(f"demo-smoke/{run_folder}/checkpoint_*/meta.json")):
                for pid in pids:
                    orphans.extend(_children(pid))
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    assert main([*KILL_ARGS, *extra, "--storage", str(tmp_path)]) == 0
    watcher.join()
    assert killed, f"no {actor_class} was found to kill"
    assert orphans or host != "in_trial", "the one-worker trial had no view worker to check"
    # None outlives it: a forked view worker holding the trial's sockets to Ray hid its death for minutes.
    assert not [pid for pid in orphans if _alive(pid)], "children outlived the killed trainer"
    resumed = json.loads((tmp_path / "demo-smoke" / "summary.json").read_text())["trials"][0]
    assert resumed["status"] == "completed" and resumed["epochs"] == 6
    assert _learned(resumed["metrics"]) == _learned(uninterrupted["metrics"])
    assert resumed["test"] == uninterrupted["test"]


def _alive(pid: int) -> bool:
    """Running, not a zombie left to a container's init."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        out += [int(child) for child in (task / "children").read_text().split()]
    return out


def test_fixed_rows_without_a_validation_split_test_every_final_model(ray_local, tmp_path):
    # data.val_fraction 0 (a paper table's fixed rows): the whole training split trains, no early stopping,
    # and each row's final model is tested.
    code = main([DEMO, "--profile", "smoke", "--storage", str(tmp_path), "--set", "data.val_fraction=0",
                 "--set", "search.space={train.lr: {grid: [0.001, 0.002]}}", "--set", "search.num_samples=1"])
    summary = json.loads((tmp_path / "demo-smoke" / "summary.json").read_text())
    assert code == 0 and summary["num_errors"] == 0
    assert all(t["status"] == "completed" and t["test"]["recall@1"] > 0 for t in summary["trials"])
    assert not any(k.startswith("val/") for t in summary["trials"] for k in t["metrics"])
    assert "no validation split" in summary["data"]["split"]
    assert "No validation split" in (tmp_path / "demo-smoke" / "report.md").read_text()


def test_ctrl_c_saves_the_state_reports_nothing_and_names_the_resume(ray_local, tmp_path, capsys):
    """Interrupted is not done (issue 30): Ctrl-C after the first trial-epoch exits 130 with no
    report and fgray's --resume command (not Tune's Tuner.restore); that command finishes the sweep."""
    import signal
    import threading
    import time

    args = [DEMO, "--profile", "smoke", "--storage", str(tmp_path), "--set", "train.epochs=6",
            "--set", "train.steps_per_epoch=4", "--set", "search.scheduler.name=none"]
    out = tmp_path / "demo-smoke"

    def interrupt_after_first_epoch() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if any(p.stat().st_size > 0 for p in out.glob("*/result.json")):
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in a terminal
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=interrupt_after_first_epoch, daemon=True)
    watcher.start()
    code = main(args)
    watcher.join()
    err = capsys.readouterr().err
    assert code == 130
    assert "interrupted (SIGINT)" in err and "Tuner.restore" not in err
    resume = err.strip().splitlines()[-1].strip()
    assert resume.startswith("python -m fgray.sweep ") and resume.endswith("--resume")
    assert not (out / "report.md").exists() and not (out / "summary.json").exists()
    assert main(args + ["--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_trials"] == 2 and all(t["epochs"] == 6 for t in summary["trials"])


def test_the_leaderboards_smoke_profile_ranks_every_method(ray_local, tmp_path):
    """sweeps/leaderboard.yaml (issue 30): every registered method in one sweep, each row from its own
    method's defaults; report.md ranks the self-supervised and the supervised rows apart, each row
    paired with its own untrained model, and draws the bars."""
    from fgray.methods.registry import method_names

    board = os.path.join(REPO, "sweeps", "leaderboard.yaml")
    code = main([board, "--profile", "smoke", "--storage", str(tmp_path), "--set", "search.seeds=1",
                 "--set", "eval.test_top=7"])  # the smoke profile tests the best row only
    out = tmp_path / "leaderboard-smoke"
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["num_errors"] == 0
    assert {r["overrides"]["method.name"] for r in summary["rows"]} == set(method_names())
    assert all(r["test"]["values"] and r["gain"]["values"] for r in summary["rows"])
    assert (out / "table.png").is_file() and "table.png" in summary["plots"]
    report = (out / "report.md").read_text()
    table = report[report.index("**Seed repeats**"):]
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    labels = ["yes" if " | yes | " in line else "no" for line in lines]
    assert labels == sorted(labels)  # self-supervised rows first, then the supervised ones
    assert sum("**best**" in line for line in lines) == 2  # the best of each group
