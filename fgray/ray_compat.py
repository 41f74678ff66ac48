"""The Ray APIs fgray needs that Ray marks ``DeveloperAPI`` (they "may change across minor Ray releases"), each
wrapped here once: Ray 2.60 (checked 2026-12-06) has no public API that does the same. Everything else in fgray
uses Ray's public APIs; ``tests/test_ray_api.py`` keeps it so. When Ray changes one of these, this module is
the one place to adapt.
"""
from __future__ import annotations

from typing import Any

# An application metric, exported on each node's metrics port (DeveloperAPI; Ray's guide to application
# metrics uses it).
from ray.util.metrics import Gauge

__all__ = ["Gauge", "alive_nodes", "cluster_gpus", "cluster_resources", "keep_order", "nodes", "quiet_data_console",
           "report_to_tune"]


def cluster_resources() -> dict[str, float]:
    """The resources of every node of the cluster, summed (``ray.cluster_resources``, DeveloperAPI)."""
    import ray

    return ray.cluster_resources()


def cluster_gpus() -> int:
    return int(cluster_resources().get("GPU", 0))


def nodes() -> list[dict[str, Any]]:
    """Ray's record of every node, alive or dead (``ray.nodes``, DeveloperAPI; ``Alive``, ``Resources``...)."""
    import ray

    return ray.nodes()


def alive_nodes() -> int:
    return sum(1 for node in nodes() if node.get("Alive"))


def report_to_tune() -> list:
    """The Train ``RunConfig(callbacks=...)`` of a Train run inside a Tune trial: every ``ray.train.report``
    reaches Tune (``TuneReportCallback`` and ``RunConfig.callbacks`` are DeveloperAPIs; Ray's own guide to Train
    V2 under Tune uses them)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def keep_order(dataset):
    """``dataset`` with its rows kept in order through every operator (``Dataset.context`` and its
    ``execution_options``, DeveloperAPI); returns it."""
    dataset.context.execution_options.preserve_order = True
    return dataset


def quiet_data_console() -> None:
    """No Ray Data progress bars or per-execution notices on this process's console (``DataContext``,
    DeveloperAPI)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
