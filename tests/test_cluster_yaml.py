"""Offline checks of cluster.yaml: Ray's own validation plus the facts fgray relies on.

No Ray is started and no AWS API is called: `prepare_config` only merges the config with
Ray's AWS defaults and `validate_config` checks the JSON schema and node-type sums. The
AWS-side bootstrap of `ray up` (IAM role, key pair, subnets, security groups, AMI) needs
credentials and is deliberately not exercised here.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture
def offline(monkeypatch):
    """No AWS credentials and no network: prove the validation path needs neither."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"cluster.yaml validation tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def prepared(raw, offline) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(json.loads(json.dumps(raw)))  # deep copy: prepare mutates
    validate_config(cfg)
    return cfg


def _head(cfg: dict) -> dict:
    return cfg["available_node_types"][cfg["head_node_type"]]


def _gpu_types(cfg: dict) -> dict:
    return {
        name: t
        for name, t in cfg["available_node_types"].items()
        if name != cfg["head_node_type"] and t.get("resources", {}).get("GPU", 0) > 0
    }


def _start_args(command: str) -> list[str]:
    """The `ray start ...` part of a start command, split like the shell would."""
    m = re.search(r"\bray start\b.*", command, flags=re.S)
    assert m, f"no `ray start` in: {command}"
    return shlex.split(m.group(0))


def _flag(args: list[str], name: str) -> str | None:
    for a in args:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _env(command: str) -> dict[str, str]:
    """VAR=value assignments (exported or inline) before `ray start`."""
    prefix = command.split("ray start", 1)[0]
    return dict(re.findall(r"\b([A-Z][A-Z0-9_]*)=([^\s;]+)", prefix))


def _pins() -> dict[str, str]:
    """constraints.txt: package (canonical name) -> pinned version."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert not req.extras, f"constraints cannot carry extras: {line}"
            pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return pins


def _ray_start(commands: list[str]) -> str:
    starts = [c for c in commands if re.search(r"\bray start\b", c)]
    assert len(starts) == 1, commands
    return starts[0]


# --- Ray's own validation ------------------------------------------------------------

def test_matches_ray_json_schema(raw):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(raw, schema)


def test_prepare_and_validate_offline(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-west-2"
    # prepare_config filled the head's worker count and merged setup commands.
    assert _head(prepared)["max_workers"] == 0
    assert prepared["head_setup_commands"][: len(prepared["setup_commands"])] == prepared[
        "setup_commands"
    ]


# --- What fgray relies on ------------------------------------------------------------

def test_gpu_workers_scale_from_zero(prepared):
    gpu = _gpu_types(prepared)
    assert gpu, "no worker node type declares GPUs"
    for name, t in gpu.items():
        assert t["min_workers"] == 0, f"{name}: GPU workers must not idle (min_workers 0)"
        assert t["max_workers"] >= 1, name
        assert t["max_workers"] <= prepared["max_workers"], name
        assert t["resources"].get("CPU", 0) >= 1, f"{name}: Train/Data workers need CPUs"
        assert "TRAIN_DRIVER" not in t["resources"], f"{name}: drivers belong on the head"


def test_head_advertises_train_driver(prepared):
    head = _head(prepared)
    assert head["resources"].get("TRAIN_DRIVER", 0) >= 1
    assert head["resources"].get("GPU", 0) == 0, "the head is the CPU node"
    assert head.get("min_workers", 0) == 0 and head["max_workers"] == 0

    # What `ray start` really advertises must match what the autoscaler plans with.
    args = _start_args(_ray_start(prepared["head_start_ray_commands"]))
    assert "--head" in args
    custom = json.loads(_flag(args, "--resources") or "{}")
    assert custom.get("TRAIN_DRIVER") == head["resources"]["TRAIN_DRIVER"]
    if "CPU" in head["resources"]:
        assert _flag(args, "--num-cpus") == str(head["resources"]["CPU"])
    # Dashboard and Jobs API on the head only: reached through `ray dashboard`'s SSH tunnel.
    assert _flag(args, "--dashboard-host") == "127.0.0.1"
    assert _flag(args, "--autoscaling-config") == "~/ray_bootstrap_config.yaml"


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_start_environment(prepared, key):
    env = _env(_ray_start(prepared[key]))
    # GPU nodes take minutes to boot: Train must wait for them (RAY_NOTES.md).
    assert int(env.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "0")) >= 600
    assert env.get("RAY_TRAIN_ENABLE_STATE_TRACKING") == "1"
    # Token auth on every node, with the token file_mounts ship; shared results for every job.
    assert env.get("RAY_AUTH_MODE") == "token"
    assert "~/.ray/auth_token" in prepared["file_mounts"]
    assert env.get("FGRAY_STORAGE", "").startswith("s3://")


def _all_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    per_type = [c for t in cfg["available_node_types"].values() for k in keys for c in t.get(k, [])]
    return [c for k in keys for c in cfg.get(k, [])] + per_type


def test_every_node_runs_the_node_image_and_installs_nothing(prepared):
    docker = prepared["docker"]
    image = docker["image"]
    assert docker["container_name"] and docker.get("pull_before_run") is True
    assert "head_image" not in docker and "worker_image" not in docker, "one build on every node"
    for t in prepared["available_node_types"].values():
        assert "worker_image" not in t.get("docker", {}), "one build on every node"
    # A tag naming fgray's and Ray's versions, never `latest`: a worker started hours later runs the same build.
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest", image
    ray_pin = _pins()["ray"]
    assert tag.endswith(f"-ray{ray_pin}"), f"{image}: rebuild and retag the image for ray=={ray_pin}"
    assert f"docker build -t {image} ." in CLUSTER_YAML.read_text(), "the header builds the image cluster.yaml runs"
    # Nothing is pip-installed on a node (no CUDA torch, no test extra at boot on billed GPU time).
    for command in _all_commands(prepared):
        assert "pip install" not in command and "[test]" not in command, command
    # Docker on every host; the NVIDIA container runtime on the GPU hosts.
    for name, t in prepared["available_node_types"].items():
        assert any("docker.io" in c for c in t.get("initialization_commands", [])), name
    for name, t in _gpu_types(prepared).items():
        assert any("nvidia-ctk runtime configure" in c for c in t["initialization_commands"]), name
    assert "--ulimit nofile=65536:65536" in docker["run_options"]  # the start commands' `ulimit -n 65536`


def test_repo_files_reach_the_nodes_without_history(prepared):
    remote = [r for r, local in prepared["file_mounts"].items() if local in (".", "./")]
    assert len(remote) == 1, prepared["file_mounts"]
    assert ".gitignore" in prepared["rsync_filter"]
    assert "**/.git" in prepared["rsync_exclude"]
    for name, t in prepared["available_node_types"].items():
        # A per-type worker_setup_commands would replace (not extend) the global one.
        assert "worker_setup_commands" not in t, name


def test_every_dependency_is_pinned_on_nodes_inside_its_range(raw):
    """Autoscaled workers start hours after the head: one version of every package for all of them,
    from constraints.txt, each inside pyproject.toml's range."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", (REPO / "Dockerfile").read_text())
    pins = _pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"sys_platform": "linux",
                                                              "platform_machine": "x86_64"}):
            continue  # not installed on the cluster's Linux x86 nodes
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name}: no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{req.name}=={pins[name]} outside {req.specifier}"


def test_gpu_workers_check_cuda_before_ray_start_without_a_replace_loop(prepared):
    from fgray.cluster.cuda_check import FAILED_VARIABLE

    # The check's reason is exported to every Ray process of the node, before `ray start` ...
    start = _ray_start(prepared["worker_start_ray_commands"])
    check = re.search(rf'export {FAILED_VARIABLE}="\$\(python -m fgray\.cluster\.cuda_check\b[^)]*\)"', start)
    assert check and check.start() < start.index("ray start"), start
    # ... and nothing fails the node's setup over it (the autoscaler would replace it, again and again).
    assert not prepared["worker_setup_commands"]
    assert not any("cuda" in c.lower() for c in prepared["setup_commands"])


def test_spot_workers_drain_themselves_on_an_interruption_notice(prepared):
    commands = prepared["worker_start_ray_commands"]
    starts = [i for i, c in enumerate(commands) if re.search(r"\bray start\b", c)]
    watchers = [i for i, c in enumerate(commands) if "-m fgray.cluster.spot_watcher" in c]
    assert len(watchers) == 1 and watchers[0] > starts[0], commands  # after this node's Ray is up
    watcher = commands[watchers[0]].strip()
    assert watcher.endswith("&") and "nohup" in watcher, "in the background, past the start command's shell"
    assert re.search(r">>\s*~/\S+\.log\s+2>&1", watcher), "logging to a file"
    assert "RAY_AUTH_MODE=token" in watcher, "`ray drain-node` authenticates like every client"
    spot = [name for name, t in _gpu_types(prepared).items()
            if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert spot, "the watcher is there for spot workers"


def test_workers_reach_only_the_results_bucket(raw):
    for name, t in _gpu_types(raw).items():
        assert t["node_config"]["IamInstanceProfile"]["Name"] == "fgray-worker", name
    assert "arn:aws:s3:::YOUR_BUCKET/*" in (REPO / "cluster.yaml").read_text()  # the documented policy
