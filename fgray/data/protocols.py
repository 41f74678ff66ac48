"""Split protocols (DESIGN.md §4): which images train, select hyperparameters, and test.

``open``   the deep-metric-learning class split: the first classes train, the rest test.
``closed`` the dataset's official image split (train / test lists).
In both, a validation split is carved from the *training* side (classes for ``open``, images
for ``closed``) so that the search never sees test data. Everything here is plain
numpy over the ``label`` / ``split`` / ``image_id`` columns: no images are read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROTOCOLS = ("open", "closed")


@dataclass(frozen=True)
class DatasetSpec:
    """Evaluation facts of one dataset family."""

    name: str
    open_train_classes: int | None  # open split: labels < this train; None => official split is a class split
    ks: tuple[int, ...] = (1, 2, 4, 8)  # Recall@K list the papers report
    query_gallery: bool = False  # In-Shop: official query vs gallery instead of leave-one-out


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("cub200", 100),
        DatasetSpec("nabirds", None),  # no standard class split: the open protocol halves the classes
        DatasetSpec("cars196", 98),
        DatasetSpec("aircraft", 50),  # fgray's choice: variants 1-50 / 51-100 (DESIGN.md §4)
        DatasetSpec("dogs", 60),
        DatasetSpec("flowers102", 51),
        DatasetSpec("sop", None, ks=(1, 10, 100, 1000)),
        DatasetSpec("inshop", None, ks=(1, 10, 20, 30, 40, 50), query_gallery=True),
        DatasetSpec("imagefolder", None),
        DatasetSpec("csv", None),
        DatasetSpec("synthetic", None),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The evaluation facts of a dataset (defaults for a name fgray has no entry for)."""
    return DATASETS.get(name, DatasetSpec(name, None))


@dataclass(frozen=True)
class SplitAssignment:
    """Image ids of each role. ``query``/``gallery`` are set only for query-vs-gallery protocols."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_query: np.ndarray | None = None
    test_gallery: np.ndarray | None = None
    description: str = ""


def _carve_classes(classes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    n_val = max(2, int(round(len(classes) * fraction))) if fraction > 0 else 0
    return np.sort(rng.choice(classes, size=min(n_val, len(classes) - 1), replace=False))


def assign_splits(
    dataset: str,
    protocol: str,
    image_ids: np.ndarray,
    labels: np.ndarray,
    official_splits: np.ndarray,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SplitAssignment:
    """Assign every image to train / val / test under ``protocol``.

    ``open``: test classes are disjoint from training classes; the validation split is a
    ``val_fraction`` of the training *classes* (retrieval among unseen classes, like test).
    ``closed``: the official image split; validation is ``val_fraction`` of the training
    *images*, stratified by class.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    spec = dataset_spec(dataset)
    image_ids, labels, official_splits = map(np.asarray, (image_ids, labels, official_splits))
    rng = np.random.default_rng(seed)
    query = gallery = None

    if protocol == "open":
        if spec.open_train_classes is not None:
            is_train = labels < spec.open_train_classes
            rule = f"classes < {spec.open_train_classes} train, the rest test"
        elif np.isin(official_splits, ["query", "gallery"]).any() or _is_class_split(labels, official_splits):
            is_train = official_splits == "train"
            rule = "official split (its train and test classes are disjoint)"
        else:
            n_classes = int(labels.max()) + 1
            is_train = labels < n_classes // 2
            rule = f"first half of the classes ({n_classes // 2}) train, the rest test"
        val_classes = _carve_classes(np.unique(labels[is_train]), val_fraction, rng)
        is_val = is_train & np.isin(labels, val_classes)
        desc = f"open: {rule}; " + (f"val = {len(val_classes)} training classes held out" if val_fraction > 0
                                   else "no validation split (every training class trains)")
    else:
        is_train = official_splits == "train"
        is_val = np.zeros_like(is_train)
        for label in np.unique(labels[is_train]) if val_fraction > 0 else ():
            idx = np.flatnonzero(is_train & (labels == label))
            # Validation is leave-one-out retrieval among the val images: a class needs 2 there to be
            # scored, so a class's share rounds up to 2, and a class with < 3 images stays in training.
            n_val = max(2, int(round(len(idx) * val_fraction)))
            if n_val < len(idx):
                is_val[rng.choice(idx, size=n_val, replace=False)] = True
        desc = "closed: official image split; " + (
            f"val = {val_fraction:.0%} of training images per class (at least 2)" if val_fraction > 0
            else "no validation split (the whole official training split trains)")

    is_test = ~is_train
    if spec.query_gallery:
        query = image_ids[official_splits == "query"]
        gallery = image_ids[official_splits == "gallery"]
        desc += "; test = official query vs gallery"
    return SplitAssignment(
        train=image_ids[is_train & ~is_val],
        val=image_ids[is_val],
        test=image_ids[is_test],
        test_query=query,
        test_gallery=gallery,
        description=desc,
    )


def _is_class_split(labels: np.ndarray, official_splits: np.ndarray) -> bool:
    train = set(np.unique(labels[official_splits == "train"]).tolist())
    test = set(np.unique(labels[official_splits != "train"]).tolist())
    return bool(train) and bool(test) and not (train & test)
