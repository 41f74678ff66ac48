"""The sweep record stored with the results (a changed --resume is refused with what changed), the
default storage from the environment, and the refusal of node-local storage on a cluster. No Ray is started."""
from __future__ import annotations

import json
import os

import pytest

from fgray import provenance
from fgray.config import ConfigError, SweepConfig
from fgray.sweep import main
from fgray.sweep_file import load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "sweeps", "demo.yaml")


def demo(*sets: str) -> SweepConfig:
    return load_sweep(DEMO, list(sets), "smoke")


def test_record_holds_the_resolved_sweep_and_the_version(tmp_path):
    sweep = demo("method.temperature=0.3")
    provenance.record(sweep, str(tmp_path))
    stored = json.loads((tmp_path / sweep.name / provenance.RECORD_FILE).read_text())
    assert stored["sweep"]["method"]["temperature"] == 0.3 and stored["fgray"]
    assert provenance.changes(sweep, str(tmp_path)) == []


def test_a_changed_resume_is_refused_in_one_line_unless_forced(tmp_path):
    provenance.record(demo(), str(tmp_path))
    changed = demo("method.temperature=0.3", "train.epochs=3")
    assert provenance.changes(changed, str(tmp_path)) == ["method.temperature: 0.2 -> 0.3", "train.epochs: 2 -> 3"]
    with pytest.raises(ConfigError) as err:
        provenance.check_resume(changed, str(tmp_path), force=False)
    assert "\n" not in str(err.value) and "--force" in str(err.value) and "method.temperature" in str(err.value)
    provenance.check_resume(changed, str(tmp_path), force=True)
    assert provenance.changes(demo(), str(tmp_path / "elsewhere")) == []  # nothing stored: nothing to compare


@pytest.mark.parametrize("nodes,sets,refused", [
    (1, (), False),
    (2, (), True),
    (1, ("resources.driver_resources={TRAIN_DRIVER: 1}", "resources.train_in_trial=false"), True),
    (1, ("resources.gpus_per_worker=1",), True),
])
def test_node_local_storage_is_refused_on_a_cluster(tmp_path, nodes, sets, refused):
    sweep = demo(*sets)
    if refused:
        with pytest.raises(ConfigError, match="s3://"):
            provenance.check_shared_storage(sweep, str(tmp_path), nodes, cluster_gpus=0)
    else:
        provenance.check_shared_storage(sweep, str(tmp_path), nodes, cluster_gpus=0)
    provenance.check_shared_storage(sweep, "s3://bucket/prefix", nodes, cluster_gpus=0)  # shared: always fine
    provenance.check_shared_storage(sweep, f"file://{tmp_path}", nodes, cluster_gpus=0)  # a mount all nodes see


def test_gpu_workers_on_a_cluster_that_has_gpus_may_use_its_disk(tmp_path):
    provenance.check_shared_storage(demo("resources.gpus_per_worker=1"), str(tmp_path), 1, cluster_gpus=1)


def test_the_environment_names_the_default_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(provenance.STORAGE_VARIABLE, str(tmp_path / "from_env"))
    assert main([DEMO, "--profile", "smoke", "--dry-run"]) == 0
    assert f"results: {tmp_path / 'from_env'}/demo-smoke" in capsys.readouterr().out
    assert main([DEMO, "--profile", "smoke", "--dry-run", "--storage", str(tmp_path / "flag")]) == 0
    assert f"results: {tmp_path / 'flag'}/demo-smoke" in capsys.readouterr().out  # the flag wins


def test_evaluation_uses_gpus_because_the_sweep_asks_for_them():
    from fgray.devices import local_device
    from fgray.eval.distributed import uses_gpus

    assert not uses_gpus(demo().experiment())
    assert uses_gpus(demo("resources.gpus_per_worker=1").experiment())
    assert local_device().type == "cpu"  # no accelerator here: the CPU, without naming a device kind
