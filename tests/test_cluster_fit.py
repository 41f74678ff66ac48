"""Each trial's resources must fit a node the cluster has or can start (issue 29): the bundles Tune is
asked for, compared with cluster.yaml's node types (``--cluster-config``) or the live nodes, in
``--dry-run`` and at the sweep's start; and the frozen models' actor pools sized by the GPUs the
sweep asks for, not the GPUs up now (0 on a fresh autoscaling cluster). No Ray is started."""
from __future__ import annotations

import glob
import os

import pytest
import yaml

from fgray.cluster_fit import (CLUSTER_CONFIG_VARIABLE, fit_problem, fits, node_types_from_config,
                               node_types_from_nodes, placed_bundles, read_node_types, trial_bundle)
from fgray.config import ConfigError
from fgray.data.frozen.embedding_cache import pool_size
from fgray.preflight import planned_experiments
from fgray.sweep import main
from fgray.sweep_file import load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(REPO, "cluster.yaml")
DEMO = os.path.join(REPO, "sweeps", "demo.yaml")


def cluster_types() -> dict:
    return read_node_types(CLUSTER)


def test_cluster_yamls_node_types_are_read():
    assert cluster_types() == {"head_cpu": {"CPU": 0.0, "TRAIN_DRIVER": 8.0}, "gpu_a10g_spot": {"CPU": 8.0, "GPU": 1.0}}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "sweeps", "*.yaml"))))
def test_every_shipped_sweep_fits_cluster_yaml(path):
    plan = planned_experiments(load_sweep(path, [], None, deep=False))
    assert [p for _, e in plan.rows if (p := fit_problem(e.resources, cluster_types(), "cluster.yaml"))] == []


def test_a_trial_larger_than_every_node_type_is_refused_with_the_numbers():
    sweep = load_sweep(os.path.join(REPO, "sweeps", "ppssl_alpha_beta.yaml"),
                       ["resources.data_cpus=2", "resources.data_actors=4"], None, deep=False)
    problem = fit_problem(sweep.resources, cluster_types(), "cluster.yaml")
    assert problem == ("resources: a trial's process (resources.cpus_per_worker 2 + resources.data_actors 4 x "
                       "data_cpus 2 for its views) asks for CPU 10, GPU 1, which fits no node of cluster.yaml "
                       "(head_cpu: CPU 0, TRAIN_DRIVER 8; gpu_a10g_spot: CPU 8, GPU 1): ask for less or add a node "
                       "type that has it")


def test_two_gpus_a_trial_fit_no_single_gpu_node():
    sweep = load_sweep(DEMO, ["resources.gpus_per_worker=2"], None, deep=False)
    assert "asks for CPU 1, GPU 2, which fits no node" in fit_problem(sweep.resources, cluster_types(), "cluster.yaml")


def test_a_ddp_trials_driver_and_workers_each_need_a_node():
    ddp = load_sweep(DEMO, ["resources.workers_per_trial=2", "resources.driver_resources={TRAIN_DRIVER: 1}",
                            "resources.cpus_per_worker=4", "resources.gpus_per_worker=1", "resources.data_actors=4",
                            "resources.data_cpus=1"], None, deep=False)
    assert trial_bundle(ddp.resources) == {"cpu": 0, "TRAIN_DRIVER": 1}
    assert fit_problem(ddp.resources, cluster_types(), "cluster.yaml") is None  # driver on the head, workers on GPUs
    one_node = {"1 node": {"CPU": 16.0, "GPU": 2.0}}  # a local Ray: no TRAIN_DRIVER anywhere
    assert "a DDP trial's driver (resources.driver_resources) asks for TRAIN_DRIVER 1" in fit_problem(
        ddp.resources, one_node, "this Ray cluster")
    big = ddp.resources.model_copy(update={"data_actors": 5})
    assert "a DDP worker with its view actors" in fit_problem(big, cluster_types(), "cluster.yaml")


def test_the_bundle_tune_gets_is_the_one_checked():
    one = load_sweep(DEMO, ["resources.gpus_per_worker=1"], None, deep=False).resources
    assert trial_bundle(one) == {"cpu": one.trial_process_cpus, "gpu": 1}
    assert placed_bundles(one)[0][1] == {"CPU": one.trial_process_cpus, "GPU": 1.0}
    ddp = load_sweep(DEMO, ["resources.workers_per_trial=2"], None, deep=False).resources
    assert trial_bundle(ddp) == {"cpu": 0.01}


def test_live_nodes_are_grouped_by_their_resources():
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0, "memory": 3e10, "node:10.0.0.2": 1.0,
                                           "accelerator_type:A10G": 1.0}},
             {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0, "memory": 2e10, "node:10.0.0.3": 1.0}},
             {"Alive": True, "Resources": {"CPU": 0.0, "TRAIN_DRIVER": 8.0, "node:__internal_head__": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert node_types_from_nodes(nodes) == {"2 nodes like #1": {"CPU": 8.0, "GPU": 1.0},
                                            "1 node like #2": {"CPU": 0.0, "TRAIN_DRIVER": 8.0}}
    # a head and one worker: two sets of one node each, both kept (one name each)
    assert node_types_from_nodes(nodes[1:3]) == {"1 node like #1": {"CPU": 8.0, "GPU": 1.0},
                                                 "1 node like #2": {"CPU": 0.0, "TRAIN_DRIVER": 8.0}}


def test_unknown_or_unstartable_node_types():
    config = {"head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 2}, "max_workers": 0}, "off": {"resources": {"GPU": 8}, "max_workers": 0},
        "auto": {"node_config": {}}}}
    types = node_types_from_config(config)
    assert types == {"head": {"CPU": 2.0}, "auto": {}}  # a worker type never started is left out
    big = load_sweep(DEMO, ["resources.gpus_per_worker=4"], None, deep=False).resources
    assert fit_problem(big, types, "x") is None  # "auto"'s resources come at launch: it could fit
    assert fits({"CPU": 0.5, "GPU": 0}, {"CPU": 0.5}) and not fits({"GPU": 0.5}, {"CPU": 8})


def test_a_file_that_is_no_cluster_config_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"cluster_name": "x"}))
    with pytest.raises(ConfigError, match="no available_node_types"):
        read_node_types(str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match="cannot be read"):
        read_node_types(str(tmp_path / "missing.yaml"))


def test_dry_run_checks_cluster_yaml(capsys):
    sweep = os.path.join(REPO, "sweeps", "ppssl_alpha_beta.yaml")
    shared = ["--storage", "s3://bucket/fgray", "--set", "data.root=s3://bucket/fgray/cub200"]
    assert main([sweep, "--dry-run", "--cluster-config", CLUSTER, *shared]) == 0
    assert f"fits {CLUSTER}: every trial's resources fit one of its node types" in capsys.readouterr().out
    assert main([sweep, "--dry-run", "--cluster-config", CLUSTER, *shared, "--set", "resources.cpus_per_worker=6",
                 "--set", "resources.data_actors=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "asks for CPU 10, GPU 1, which fits no node of" in err[0]
    # A node-local data root: cluster.yaml starts worker nodes, so it is refused before anything runs.
    assert main([sweep, "--dry-run", "--cluster-config", CLUSTER, "--storage", "s3://bucket/fgray"]) == 2
    assert capsys.readouterr().err.startswith("error: data.root: /data/fgray/cub200 is a folder of this machine")


def test_the_environment_names_the_cluster_config(monkeypatch, capsys):
    monkeypatch.setenv(CLUSTER_CONFIG_VARIABLE, CLUSTER)
    assert main([DEMO, "--dry-run", "--storage", "s3://bucket/fgray", "--set", "resources.gpus_per_worker=2"]) == 2
    assert "GPU 2, which fits no node of" in capsys.readouterr().err
    monkeypatch.delenv(CLUSTER_CONFIG_VARIABLE)
    assert main([DEMO, "--dry-run", "--set", "resources.gpus_per_worker=2"]) == 0  # no config, no Ray: unchecked


@pytest.mark.parametrize("use_gpu,max_actors,cpus,size", [
    (True, 4, 0, 4),    # a fresh autoscaling cluster: no GPU and no CPU up, the pool still asks for 4 GPUs
    (True, 8, 64, 8),
    (True, 1, 0, 1),
    (False, 8, 2, 2),   # CPU actors: the CPUs up now
    (False, 4, 64, 4),
    (False, 4, 0, 1),   # at least one actor
])
def test_gpu_pools_ask_for_the_gpus_the_sweep_asks_for(use_gpu, max_actors, cpus, size):
    # Before: max_size = min(GPUs up now, max_actors) -> 1 on a fresh autoscaling cluster.
    assert pool_size(use_gpu, max_actors, cpus) == size


def test_a_test_pass_asks_for_the_gpus_the_trials_held():
    from fgray.eval.distributed import evaluation_actors

    def actors(*sets):
        return evaluation_actors(load_sweep(DEMO, list(sets), None, deep=False).experiment({}, deep=False))

    assert actors("resources.gpus_per_worker=1", "resources.max_concurrent_trials=5") == 5
    assert actors("resources.gpus_per_worker=1", "resources.max_concurrent_trials=16") == 8  # capped
    assert actors("resources.gpus_per_worker=0.5", "resources.max_concurrent_trials=1") == 1
    assert actors() == 1  # CPU: pool_size sizes it by the CPUs up now
