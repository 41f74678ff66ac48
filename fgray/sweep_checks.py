"""The checks a sweep makes once Ray is up, before its trials (``fgray.sweep.run_sweep``): the cluster's
shape decides what must be shared (results storage, every path a trial reads) and which resources fit a
node (``fgray.preflight.check_cluster``); then the dataset, found or rendered, decides which settings
can train (``fgray.preflight.check_data``). Each refusal is a ConfigError: one line, exit 2, and no
trial started."""
from __future__ import annotations

import ray

from fgray import provenance, ray_compat
from fgray.cluster_fit import cluster_config_path, node_types_from_nodes, read_node_types
from fgray.config import DataConfig, SweepConfig
from fgray.preflight import DatasetIndex, check_cluster, check_data, config_reason, dataset_key, planned_experiments
from fgray.startup import Rendering, resolve_dataset

LIVE_HINT = ("; on an autoscaling cluster pass --cluster-config cluster.yaml (or set FGRAY_CLUSTER_CONFIG) so "
             "the node types it can start are checked instead")


def before_trials(sweep: SweepConfig, storage: str, data_ready: Rendering | None = None,
                  cluster_config: str | None = None) -> None:
    """Every check of a sweep's start that needs Ray or the data, in the order a user fixes them: where
    trials run (storage, paths, resources), then the dataset's splits. ``data_ready``: ``render_ahead``'s
    dataset (None: resolved here); ``cluster_config``: ``--cluster-config``."""
    plan = planned_experiments(sweep)
    nodes = ray_compat.nodes()
    alive = sum(1 for node in nodes if node.get("Alive"))
    gpus = ray_compat.cluster_gpus()
    why = provenance.cluster_reason(sweep, alive, gpus)
    path = cluster_config_path(cluster_config)
    if path is not None:  # the node types the autoscaler can start, not only the nodes up now
        node_types = read_node_types(path)
        check_cluster(storage, plan, why or config_reason(path, node_types), node_types, path,
                      shipped=ships_working_dir())
    else:
        check_cluster(storage, plan, why, node_types_from_nodes(nodes), "this Ray cluster",
                      shipped=ships_working_dir(), hint=LIVE_HINT if alive > 1 or why else "")
    # The data generated or verified once, before trials race for it.
    prepared = data_ready.result() if data_ready is not None else resolve_dataset(sweep.data)
    check_data(plan, lambda data: dataset_index(data, sweep.data, prepared))


def ships_working_dir() -> bool:
    """Whether this job's working directory travels to every node (``ray job submit --working-dir``):
    a relative path inside it is then readable by every trial."""
    return bool((ray.get_runtime_context().runtime_env or {}).get("working_dir"))


def dataset_index(data: DataConfig, base: DataConfig, prepared) -> DatasetIndex:
    """The index columns of the dataset ``data`` names: ``prepared`` when it is the sweep's own
    (``base``), else located (or rendered, for a synthetic row) here."""
    from fgray.data import pipeline

    if dataset_key(data) != dataset_key(base):
        prepared = pipeline.resolve_dataset(data)
    table = pipeline.read_rows(prepared, None, ["image_id", "label", "split"])
    return DatasetIndex(prepared.name, table.column("image_id").to_numpy(zero_copy_only=False).astype(str),
                        table.column("label").to_numpy(), table.column("split").to_numpy(zero_copy_only=False))
