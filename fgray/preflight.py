"""Settings that cannot train, refused before any trial starts (the sweep exits 2 with one line).

Every configuration a sweep's trials can run (``planned_experiments``: each grid row, or the base
experiment and each searched value of a sampled search) is checked against the dataset's index (ids,
labels, official split: no image is read) under its own split protocol: a batch larger than a rank's
share of the training split (no step an epoch), a training split with fewer classes than the method
needs, a validation or test split where leave-one-out retrieval scores nothing (no class with 2+
images). Without these checks each trial started, failed, and was retried by Tune. Also the checks
of where trials run (``check_cluster``): results storage and every path a trial reads shared by
every node of a cluster (``fgray.node_paths``), each trial's resources fitting a node type
(``fgray.cluster_fit``); ``--dry-run`` makes them against a cluster config (``dry_run_checks``).

Pure: the caller hands over the dataset's index and the cluster's nodes (``fgray.sweep_checks``
reads them once Ray is up); no Ray or torch here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fgray.cluster_fit import NodeTypes, cluster_config_path, fit_problem, read_node_types
from fgray.config import DataConfig, ExperimentConfig, SweepConfig, grid_points
from fgray.data.protocols import assign_splits, dataset_spec
from fgray.node_paths import path_problem
from fgray.provenance import refuse_local_storage
from fgray.validation import ConfigError


@dataclass(frozen=True)
class Plan:
    """Every configuration a sweep's trials can run: ``rows`` of ``(where, experiment)``, ``where`` the
    prefix naming the row in a refusal; ``base`` the sweep's own experiment."""

    base: ExperimentConfig
    rows: list[tuple[str, ExperimentConfig]]

    def refuse_first(self, problem_of: Callable[[ExperimentConfig], str | None]) -> None:
        """Raise ConfigError with the first row's problem (``problem_of``: one line, or None). A problem
        the base experiment has too comes from the sweep's own settings: no row is named then."""
        for where, experiment in self.rows:
            problem = problem_of(experiment)
            if problem is not None:
                own = where and problem_of(self.base) == problem
                raise ConfigError(problem if own else f"{where}{problem}")


def planned_experiments(sweep: SweepConfig) -> Plan:
    """The sweep's ``Plan``: each grid row (the base experiment alone without one) and, of a sampled
    search, each searched value on the base, one key at a time (a range's bounds), as
    ``SweepConfig.longest_trial`` covers them."""
    rows = grid_points(sweep.search)
    named: list[tuple[str, dict[str, Any]]] = [
        (f"trial {i + 1} ({_describe(row)}): " if row else "", row) for i, row in enumerate(rows)]
    for key, dist in sweep.search.space.items():
        if dist.kind != "grid":
            named += [(f"search.space.{key} = {value!r}: ", {key: value}) for value in dist.values_to_check()]
    return Plan(sweep.experiment({}, deep=False), [(where, sweep.experiment(row, deep=False)) for where, row in named])


def _describe(row: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in row.items())
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DatasetIndex:
    """A prepared dataset's index columns, one entry per image."""

    dataset: str  # its reader name (the manifest's): which split rules apply
    image_ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray  # official split per image: train / test (/ query / gallery)


@dataclass(frozen=True)
class SplitCounts:
    """What the checks need of one split assignment: images and classes per role. ``*_scored``: the
    classes with 2+ images, the ones leave-one-out retrieval can score."""

    train_images: int
    train_classes: int
    val_images: int
    val_scored: int
    test_images: int
    test_scored: int
    query_gallery: bool  # the test split is scored query vs gallery, not leave-one-out
    description: str


def split_counts(index: DatasetIndex, data: DataConfig) -> SplitCounts:
    """``index`` split under ``data``'s protocol, as every trial splits it (``assign_splits``)."""
    splits = assign_splits(index.dataset, data.protocol, index.image_ids, index.labels, index.splits,
                           val_fraction=data.val_fraction, seed=data.split_seed)

    def labels(ids: np.ndarray) -> np.ndarray:
        return index.labels[np.isin(index.image_ids, ids)]

    def scored(ids: np.ndarray) -> int:
        return int((np.unique(labels(ids), return_counts=True)[1] >= 2).sum())

    return SplitCounts(len(splits.train), len(np.unique(labels(splits.train))), len(splits.val), scored(splits.val),
                       len(splits.test), scored(splits.test), dataset_spec(index.dataset).query_gallery,
                       splits.description)


def trainable_problem(experiment: ExperimentConfig, counts: SplitCounts) -> str | None:
    """Why ``experiment`` cannot train on a split of ``counts`` (one line naming the key path), or None."""
    train, data, method = experiment.train, experiment.data, experiment.method
    split = f"{counts.description}; data.val_fraction {data.val_fraction:g}"
    if counts.train_images == 0:
        return f"data: the training split is empty ({split}): more images per class or another data.val_fraction"
    if counts.train_classes < method.min_train_classes:
        return (f"data: the training split has {counts.train_classes} class(es) ({split}), but method "
                f"{method.name} reads labels and needs at least {method.min_train_classes}")
    world = experiment.resources.workers_per_trial
    per_rank = counts.train_images // world
    if train.batch_size > per_rank:
        share = f"{per_rank} a rank of {world} workers" if world > 1 else f"{per_rank}"
        return (f"train.batch_size: {train.batch_size} is more images than the training split holds ({share}; "
                f"{split}): not one step an epoch; at most {per_rank}")
    if method.inputs.selection is not None and train.batch_size % 2:
        return (f"train.batch_size: a composed step is N anchors + N negatives, so it must be even, "
                f"got {train.batch_size}")
    if experiment.has_validation and counts.val_scored == 0:
        what = "is empty" if counts.val_images == 0 else f"has no class with 2+ images ({counts.val_images} images)"
        return (f"data.val_fraction: the validation split {what} ({split}): leave-one-out retrieval scores "
                f"nothing; raise data.val_fraction, or 0 for no validation split")
    tested = experiment.eval.test_top > 0 or experiment.eval.baseline
    if tested and not counts.query_gallery and counts.test_scored == 0:
        return (f"data: the test split has no class with 2+ images ({counts.test_images} images; {split}): "
                f"leave-one-out retrieval scores nothing")
    return None


def dataset_key(data: DataConfig) -> str:
    """What locates a dataset's images (not how they are split)."""
    return data.model_dump_json(exclude={"protocol", "val_fraction", "split_seed", "eval_crop"})


def check_data(plan: Plan, index_of: Callable[[DataConfig], DatasetIndex]) -> None:
    """Refuse (ConfigError) the first planned configuration that cannot train (``trainable_problem``);
    ``index_of`` reads a dataset's index, once per dataset the rows name."""
    indexes: dict[str, DatasetIndex] = {}
    counted: dict[tuple, SplitCounts] = {}

    def problem(experiment: ExperimentConfig) -> str | None:
        data = experiment.data
        key = dataset_key(data)
        if key not in indexes:
            indexes[key] = index_of(data)
        split_key = (key, data.protocol, data.val_fraction, data.split_seed)
        if split_key not in counted:
            counted[split_key] = split_counts(indexes[key], data)
        return trainable_problem(experiment, counted[split_key])

    plan.refuse_first(problem)


# ---------------------------------------------------------------------------------------- cluster


def check_cluster(storage: str, plan: Plan, why: str | None, node_types: NodeTypes, source: str,
                  shipped: bool = False, hint: str = "") -> None:
    """What the cluster decides, in the order a user fixes it: results storage and every path a trial
    reads must be shared when ``why`` says the trials run on a cluster (``provenance.cluster_reason``,
    ``config_reason``), and every trial's resources must fit a node type of ``node_types`` (from
    ``source``; ``hint`` is added to that refusal). ``shipped``: a job's working directory travels to
    every node."""
    refuse_local_storage(storage, why)
    plan.refuse_first(lambda experiment: path_problem(experiment, why, shipped))
    plan.refuse_first(lambda experiment: fit_problem(experiment.resources, node_types, source, hint))


def config_reason(path: str, node_types: NodeTypes) -> str | None:
    """Why trials run on other nodes under the autoscaler config at ``path``: it has worker types."""
    return f"{os.path.basename(path)} has node types {', '.join(node_types)}" if len(node_types) > 1 else None


def dry_run_checks(sweep: SweepConfig, storage: str, cluster_config: str | None) -> str | None:
    """``--dry-run``'s cluster checks (no Ray): against the autoscaler config when one is given
    (``cluster_fit.cluster_config_path``); the line the plan adds, or None without a config."""
    path = cluster_config_path(cluster_config)
    if path is None:
        return None
    node_types = read_node_types(path)
    check_cluster(storage, planned_experiments(sweep), config_reason(path, node_types), node_types, path)
    return f"fits {path}: every trial's resources fit one of its node types ({', '.join(node_types)})"
