"""Whether each trial's resources fit a node the cluster has or can start, checked before trials start.

Tune places a trial's bundle (``trial_bundle``: what ``fgray.sweep.build_tuner`` asks for) on one node;
a DDP trial's workers and their view actors each on one node too. A bundle that fits no node type is
never placed: the trial waits forever (an autoscaler has nothing to start for it). ``check_fit``
compares each bundle of every planned configuration with the node types: an autoscaler config's
(cluster.yaml's ``available_node_types[*].resources``: ``--cluster-config``, ``FGRAY_CLUSTER_CONFIG``, or
Ray's copy on the head of a ``ray up`` cluster), else the live cluster's nodes. Pure, except reading
the config file; the live nodes come from ``fgray.sweep_checks``.
"""
from __future__ import annotations

import os
from typing import Any

from fgray.config import ResourcesConfig
from fgray.validation import ConfigError

CLUSTER_CONFIG_VARIABLE = "FGRAY_CLUSTER_CONFIG"
# Where `ray up` puts the cluster config on the head (cluster.yaml's --autoscaling-config): the job's
# driver, and so the sweep, runs there under `ray job submit`.
RAY_BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
NodeTypes = dict[str, dict[str, float]]  # node type (or group of live nodes) -> its resources; {} unknown


def trial_bundle(res: ResourcesConfig) -> dict[str, float]:
    """The resources Tune reserves for one trial's process (``tune.with_resources``)."""
    if res.in_trial:  # the trial process trains (and forks its view workers): it holds their CPUs / GPUs
        return {"cpu": res.trial_process_cpus, **({"gpu": res.gpus_per_worker} if res.gpus_per_worker else {})}
    # the driver only orchestrates (workers hold the CPUs/GPUs); Tune needs a non-empty bundle
    return {"cpu": 0, **res.driver_resources} if res.driver_resources else {"cpu": 0.01}


def placed_bundles(res: ResourcesConfig) -> list[tuple[str, dict[str, float]]]:
    """(what it is, resources) of every group of processes that must land on one node: the trial's
    process; for DDP also each worker with the view actors it places beside itself; with GPUs, an
    embedding actor (frozen caches, test evaluation: one GPU and one CPU each)."""
    views = f"resources.data_actors {res.data_actors} x data_cpus {res.data_cpus:g}"
    if res.in_trial:
        process = f"a trial's process (resources.cpus_per_worker {res.cpus_per_worker:g} + {views} for its views)"
    else:
        process = "a DDP trial's driver" + (" (resources.driver_resources)" if res.driver_resources else "")
    bundles = [(process, _upper(trial_bundle(res)))]
    if not res.in_trial:
        gpu = {"GPU": res.gpus_per_worker} if res.gpus_per_worker else {}
        bundles.append((f"a DDP worker with its view actors (resources.cpus_per_worker {res.cpus_per_worker:g} + "
                        f"{views})", {"CPU": res.cpus_per_worker + res.data_actors * res.data_cpus, **gpu}))
    if res.gpus_per_worker:
        bundles.append(("an embedding actor (frozen caches, test evaluation)", {"CPU": 1.0, "GPU": 1.0}))
    return bundles


def _upper(bundle: dict[str, float]) -> dict[str, float]:
    """Tune's lower-case cpu / gpu as Ray's nodes name them (CPU, GPU); custom resources as they are."""
    return {({"cpu": "CPU", "gpu": "GPU"}.get(k, k)): float(v) for k, v in bundle.items()}


def fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(amount <= resources.get(name, 0.0) + 1e-9 for name, amount in bundle.items() if amount > 0)


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items(), key=lambda kv: kv[0] not in ("CPU", "GPU")))


def fit_problem(res: ResourcesConfig, node_types: NodeTypes, source: str, hint: str = "") -> str | None:
    """The refusal (one line, with the numbers) of the first bundle of ``res`` that fits no node type of
    ``node_types`` (``source`` names where they come from; ``hint`` ends the line), or None. A node type
    of unknown resources could fit anything: nothing is refused then."""
    if not node_types or any(not r for r in node_types.values()):
        return None
    for what, bundle in placed_bundles(res):
        if not any(fits(bundle, resources) for resources in node_types.values()):
            types = "; ".join(f"{name}: {_show(r)}" for name, r in node_types.items())
            wanted = {k: v for k, v in bundle.items() if v > 0}
            return (f"resources: {what} asks for {_show(wanted)}, which fits no node of {source} ({types}): "
                    f"ask for less or add a node type that has it{hint}")
    return None


def node_types_from_config(config: dict[str, Any]) -> NodeTypes:
    """A Ray autoscaler config's node types -> their resources ({} where a type does not declare them:
    the provider fills them in at launch). A worker type with max_workers 0 is never started."""
    head = config.get("head_node_type")
    types: NodeTypes = {}
    for name, spec in (config.get("available_node_types") or {}).items():
        if name != head and spec.get("max_workers", 1) == 0:
            continue
        types[name] = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
    return types


def node_types_from_nodes(nodes: list[dict[str, Any]]) -> NodeTypes:
    """``ray.nodes()`` -> the alive nodes' resources, one entry per distinct set (Ray's own bookkeeping
    resources, memory, node ids and accelerator labels, left out)."""
    groups: dict[tuple, int] = {}
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = {k: float(v) for k, v in (node.get("Resources") or {}).items()
                     if k not in ("memory", "object_store_memory") and not k.startswith(("node:", "accelerator_type:"))}
        key = tuple(sorted(resources.items()))
        groups[key] = groups.get(key, 0) + 1
    # one name per distinct set: "1 node" twice would keep only the last set (a head and one worker)
    return {f"{count} node{'s' if count > 1 else ''} like #{i + 1}": dict(key)
            for i, (key, count) in enumerate(groups.items())}


def cluster_config_path(given: str | None) -> str | None:
    """The autoscaler config to check against: ``--cluster-config``, else ``FGRAY_CLUSTER_CONFIG``, else
    Ray's copy on the head of a ``ray up`` cluster when it is there; None: the live nodes decide."""
    path = given or os.environ.get(CLUSTER_CONFIG_VARIABLE)
    if path:
        return path
    bootstrap = os.path.expanduser(RAY_BOOTSTRAP_CONFIG)
    return bootstrap if os.path.isfile(bootstrap) else None


def read_node_types(path: str) -> NodeTypes:
    """The node types of the autoscaler config at ``path`` (ConfigError when it is not one)."""
    import yaml

    try:
        with open(os.path.expanduser(path)) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--cluster-config {path}: cannot be read ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict) or not config.get("available_node_types"):
        raise ConfigError(f"--cluster-config {path}: no available_node_types (not a Ray cluster config)")
    return node_types_from_config(config)
