"""Settings that cannot train are refused before any trial starts, against the dataset's index (issue
29): a batch larger than a rank's training split, a supervised method with one training class, a
validation or test split where nothing can be scored, checked for every planned row. No Ray: the index
is built here as ``fgray.sweep_checks`` reads it from the shards."""
from __future__ import annotations

import numpy as np
import pytest

from fgray.config import ConfigError
from fgray.preflight import DatasetIndex, check_data, planned_experiments, split_counts, trainable_problem
from fgray.sweep_file import load_sweep

DEMO = "sweeps/demo.yaml"


def synthetic_index(classes: int = 48, per_class: int = 40, dataset: str = "synthetic") -> DatasetIndex:
    """The index of a synthetic-like set: ``per_class`` images of each class, all in the official train
    split (the open protocol halves the classes)."""
    labels = np.repeat(np.arange(classes), per_class)
    ids = np.array([f"img{i:05d}" for i in range(len(labels))])
    return DatasetIndex(dataset, ids, labels, np.full(len(labels), "train"))


def refusal(sweep, index: DatasetIndex) -> str:
    with pytest.raises(ConfigError) as err:
        check_data(planned_experiments(sweep), lambda data: index)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_demo_as_shipped_can_train():
    check_data(planned_experiments(load_sweep(DEMO, [], None, deep=False)), lambda data: synthetic_index())


def test_a_batch_larger_than_the_training_split_is_refused_naming_the_key():
    # Before: Ray started, three trials each failed "not one step an epoch", were retried, exit 1 after 44 s.
    sweep = load_sweep(DEMO, ["train.batch_size=100000"], None, deep=False)
    message = refusal(sweep, synthetic_index())
    assert message.startswith("train.batch_size: 100000 is more images than the training split holds (")
    assert "at most 720" in message  # 24 training classes, 6 held out for validation: 18 x 40 images


def test_a_ddp_batch_counts_a_ranks_share():
    sweep = load_sweep(DEMO, ["train.batch_size=400", "resources.workers_per_trial=2"], None, deep=False)
    assert "360 a rank of 2 workers" in refusal(sweep, synthetic_index())
    check_data(planned_experiments(load_sweep(DEMO, ["train.batch_size=360", "resources.workers_per_trial=2"],
                                              None, deep=False)), lambda data: synthetic_index())


def test_a_grid_row_that_cannot_train_is_named():
    sweep = load_sweep(DEMO, ["search.space={train.batch_size: {grid: [32, 100000]}}"], None, deep=False)
    assert refusal(sweep, synthetic_index()).startswith("trial 2 (train.batch_size=100000): train.batch_size: ")


def test_a_sampled_searchs_values_are_checked_one_by_one():
    sweep = load_sweep(DEMO, ["search.space={train.batch_size: {randint: [16, 5000]}}"], None, deep=False)
    assert refusal(sweep, synthetic_index()).startswith("search.space.train.batch_size = 5000: train.batch_size: ")


def test_the_base_experiments_own_setting_names_no_row():
    sweep = load_sweep(DEMO, ["train.batch_size=100000", "search.space={method.temperature: {grid: [0.1, 0.2]}}"],
                       None, deep=False)
    assert refusal(sweep, synthetic_index()).startswith("train.batch_size: 100000")


def test_a_supervised_method_needs_two_training_classes():
    # 4 classes: 2 train (open protocol), one of them held out for validation: 1 class left to train on.
    sweep = load_sweep("sweeps/dva_demo.yaml", [], "smoke", deep=False)
    assert sweep.method.min_train_classes == 2
    message = refusal(sweep, synthetic_index(classes=4, per_class=20))
    assert message.startswith("data: the training split has 1 class(es)") and "method dva reads labels" in message
    unsupervised = load_sweep(DEMO, ["train.batch_size=16"], "smoke", deep=False)
    assert unsupervised.method.min_train_classes == 1


def test_a_validation_split_without_a_class_of_two_images_is_refused():
    # One image per class: leave-one-out retrieval has no relevant image for any validation query.
    sweep = load_sweep(DEMO, ["train.batch_size=4"], None, deep=False)
    message = refusal(sweep, synthetic_index(classes=64, per_class=1))
    assert message.startswith("data.val_fraction: the validation split has no class with 2+ images (")
    nothing_scored = ["train.batch_size=4", "data.val_fraction=0", "eval.test_top=0", "eval.baseline=false",
                      "search.space={}"]
    check_data(planned_experiments(load_sweep(DEMO, nothing_scored, None, deep=False)),
               lambda data: synthetic_index(classes=64, per_class=1))


def test_a_test_split_without_a_class_of_two_images_is_refused():
    sweep = load_sweep(DEMO, ["train.batch_size=4", "data.val_fraction=0", "search.space={}"], None, deep=False)
    assert refusal(sweep, synthetic_index(classes=64, per_class=1)).startswith("data: the test split has no class")


def test_the_counts_follow_the_trials_split():
    sweep = load_sweep(DEMO, [], None, deep=False)
    counts = split_counts(synthetic_index(), sweep.data)
    assert (counts.train_images, counts.train_classes, counts.val_images, counts.val_scored) == (720, 18, 240, 6)
    assert counts.test_scored == 24 and trainable_problem(sweep.experiment({}, deep=False), counts) is None


def test_a_composed_step_needs_an_even_batch():
    sweep = load_sweep("sweeps/ass_demo.yaml", ["train.batch_size=15"], "smoke", deep=False)
    assert refusal(sweep, synthetic_index()).startswith("train.batch_size: a composed step is N anchors")


def test_each_dataset_a_row_names_is_read_once():
    rows = "search.points=[{data.val_fraction: 0.25}, {data.val_fraction: 0.5}, {data.synthetic.seed: 3}]"
    sweep = load_sweep(DEMO, ["search.space={}", rows], None, deep=False)
    read = []
    check_data(planned_experiments(sweep), lambda data: read.append(data.synthetic.seed) or synthetic_index())
    assert sorted(read) == [0, 3]
