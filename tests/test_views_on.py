"""``data.views_on``: view workers that only decode, crop and flip, and a trainer that finishes the views
on its device from the rows they drew (config, view actor, engine, gpu_check's batches), and the dry
run's feed lines. No Ray: the view actor runs in this process, as the forked view workers run it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from fgray.config import ExperimentConfig, SweepConfig
from fgray.data.inputs import DatasetFacts, Inputs, ViewRecipe
from fgray.data.sources.synthetic_shards import photo_jpegs
from fgray.data.view_actor import ViewActor
from fgray.data.views.params import OPS_WIDTH
from fgray.engine import IMAGENET_STD, DeclaredBatch, build_method, to_device
from fgray.validation import ConfigError, validate
from tests.declared import declared_batch

pytestmark = pytest.mark.usefixtures("one_thread")

PHOTOS = photo_jpegs(6, width=80, height=60)
INDEX = {"row": np.arange(6), "epoch": np.full(6, 2)}


def _experiment(views_on: str, gpus: float, **sections) -> ExperimentConfig:
    return validate(ExperimentConfig, {"method": {"name": "mocov2"}, "data": {"views_on": views_on},
                                       "resources": {"gpus_per_worker": gpus}, **sections}, deep=False)


def test_views_on_gpu_needs_a_gpu_and_auto_follows_the_trial():
    with pytest.raises(ConfigError, match=r"^data\.views_on: gpu finishes views on the trainer's GPU, but "
                                          r"resources\.gpus_per_worker is 0"):
        _experiment("gpu", 0)
    with pytest.raises(ConfigError, match=r"^data\.views_on: must be one of"):
        _experiment("tpu", 1)
    assert _experiment("auto", 1).defer_views and not _experiment("auto", 0).defer_views
    assert _experiment("gpu", 1).defer_views and not _experiment("cpu", 1).defer_views
    assert _experiment("trainer", 0).defer_views  # a CPU trainer finishing them itself


def _actor(defer: bool, recipe: str = "moco_pair", size: int = 32) -> ViewActor:
    table = pa.table({"image": [encoded for encoded, _ in PHOTOS], "image_id": [f"img{i}" for i in range(6)],
                      "label": [3, 5, 3, 5, 3, 5]})
    inputs = Inputs(views=(ViewRecipe(recipe),), columns=("label",), defer_views=defer)
    return ViewActor([table], inputs, size, seed=11, label_map={3: 0, 5: 1}, caches={})


def _levels(normalised: torch.Tensor) -> torch.Tensor:
    """Normalised images back to levels of 255 (the mean cancels in a difference)."""
    return normalised * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


def test_deferred_batches_carry_their_ops_and_the_engine_finishes_them():
    on_cpu, deferred = _actor(False)(INDEX), _actor(True)(INDEX)
    assert set(on_cpu) == {"view1", "view2", "label"}
    assert set(deferred) == {"view1", "view1@ops", "view2", "view2@ops", "label"}
    assert deferred["view1@ops"].shape == (6, OPS_WIDTH) and deferred["view1@ops"].dtype == np.float32
    again = _actor(True)(INDEX)  # another worker, or a resumed trial: the same views and rows per image
    assert all(np.array_equal(deferred[k], again[k]) for k in deferred)
    finished, cpu = to_device(deferred, torch.device("cpu")), to_device(on_cpu, torch.device("cpu"))
    assert set(finished) == {"view1", "view2", "label"}  # the rows are consumed, never seen by a method
    for key in ("view1", "view2"):  # the same draws, finished elsewhere: the same views within rounding
        difference = _levels(finished[key] - cpu[key]).abs().mean(dim=(1, 2, 3))
        assert difference.max() < 2.0, difference


def test_recipes_without_deferred_ops_are_drawn_whole_either_way():
    index = {"row": np.arange(2), "epoch": np.zeros(2, np.int64)}
    plain, asked = _actor(False, "crop_flip")(index), _actor(True, "crop_flip")(index)
    assert set(asked) == {"image", "label"} and np.array_equal(plain["image"], asked["image"])


def test_a_step_trains_on_a_deferred_batch():
    experiment = validate(ExperimentConfig, {"method": {"name": "mocov2", "queue_size": 64, "proj_dim": 16},
                                             "backbone": {"name": "test_resnet"}, "data": {"image_size": 32}})
    facts = DatasetFacts(num_classes=4, image_size=32)
    method = build_method(experiment, facts)
    inputs = replace(method.cfg.inputs, defer_views=True)
    batch = declared_batch(inputs, facts)  # tests.declared: through engine.to_device
    assert set(batch) == set(inputs.keys)
    out = method.training_step(DeclaredBatch(batch, method.name, inputs.keys))
    assert torch.isfinite(out["loss"])


# ---------------------------------------------------------------- the dry run's feed lines


def _sweep(**resources) -> SweepConfig:
    return validate(SweepConfig, {
        "name": "feed", "method": {"name": "mocov2"}, "backbone": {"name": "resnet50"},
        "data": {"image_size": 224, **resources.pop("data", {})},
        "resources": {"gpus_per_worker": 1, "cpus_per_worker": 2, "data_cpus": 1, **resources}}, deep=False)


def test_dry_run_warns_when_a_gpu_trials_views_cannot_keep_up():
    from fgray.sweep import feed_lines

    starved = feed_lines(_sweep(data_actors=2, data={"views_on": "cpu"}), [{}])
    assert len(starved) == 1 and starved[0].startswith("feed: views ~") and "WARNING: data-bound" in starved[0]
    assert "data.views_on: gpu" in starved[0]  # the cheaper way out is named
    fed = feed_lines(_sweep(data_actors=14), [{}])  # views_on auto: finished on the GPU
    assert "decode + crop, the rest on the GPU" in fed[0] and "WARNING" not in fed[0]
    assert feed_lines(_sweep(gpus_per_worker=0, data={"views_on": "cpu"}), [{}]) == []  # CPU trials: no line
    rows = feed_lines(_sweep(data_actors=2, data={"views_on": "cpu"}),
                      [{}, {"data.views_on": "auto", "resources.data_actors": 16}])
    assert [line.split(" feed: ")[0] for line in rows] == ["  trial 1", "  trial 2"]
    assert "WARNING" in rows[0] and "WARNING" not in rows[1]


def test_read_only_batches_from_ray_data_are_not_aliased_on_a_cpu_trainer():
    # Ray Data hands batches over as read-only views of Arrow buffers: a CPU trainer gets its own copy
    # (torch may not alias read-only memory, and warns when asked to); the labels keep their values.
    import warnings

    labels = np.arange(4, dtype=np.int64)
    labels.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_device({"label": labels}, torch.device("cpu"))
    assert out["label"].tolist() == [0, 1, 2, 3] and out["label"].data_ptr() != labels.ctypes.data
