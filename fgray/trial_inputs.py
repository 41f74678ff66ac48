"""What a trial reads besides its images, resolved by its driver (``trial._drive``) and, for every
planned row, by the sweep before its trials start (``prepare_frozen``): the dataset and its splits,
the method's declared inputs as this trial runs them, and the outputs of its frozen models, computed
once per storage (embedding caches, the selector's cache) or per dataset (a detector's boxes)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import ray

from fgray.config import ExperimentConfig, SweepConfig, grid_points
from fgray.data import pipeline
from fgray.data.frozen import detect, embedding_cache
from fgray.data.inputs import Inputs
from fgray.data.protocols import SplitAssignment


@dataclass(frozen=True)
class FrozenInputs:
    """What a trial reads besides its images: the dataset, its splits, the method's inputs (a
    selection placed on its stage's epochs) and the outputs of its frozen models, each computed once
    per storage (embedding caches, the selector's cache) or per dataset (a detector's boxes)."""

    prepared: pipeline.PreparedDataset
    splits: SplitAssignment
    inputs: Inputs
    caches: dict[str, str]
    selector: str | None
    boxes: str | None


def frozen_inputs(experiment: ExperimentConfig, storage: str) -> FrozenInputs:
    """Resolve the data and compute (or find) the frozen models' outputs an experiment declares. The
    sweep calls it for every planned row before its trials start (``prepare_frozen``), so a trial
    finds them complete: one computed inside a trial holding the cluster's GPUs would wait for a GPU
    that trial itself holds."""
    res, data, inputs = experiment.resources, experiment.data, experiment.method.inputs
    # Views finished on the trainer's device (data.views_on): its view workers only decode, crop and flip,
    # or only draw when the trainer decodes too (data.decode_on).
    inputs = replace(inputs, defer_views=experiment.defer_views, decode_views=experiment.decode_views)
    if inputs.selection is not None:  # composed batches in the epochs of their stage
        stages = experiment.method.stages(experiment.train.epochs)
        inputs = replace(inputs, selection=inputs.selection.placed(stages))
    prepared = pipeline.resolve_dataset(data)
    splits = pipeline.assign(prepared, data)
    use_gpu = res.gpus_per_worker > 0  # GPU actors because the sweep asks for GPUs, not because some are up

    def cache(spec) -> str:
        return embedding_cache.ensure_cache(spec, prepared, data, storage, res.data_cpus, use_gpu)

    caches = {key: cache(spec) for key, spec in inputs.embeddings}
    selector = cache(inputs.selection.encoder) if inputs.selection is not None else None
    # A detector's boxes for the training images (DVA), detected once and stored with the shards.
    boxes = (detect.ensure_boxes(inputs.detector, prepared, splits.train, use_gpu=use_gpu,
                                 cpus_per_actor=res.data_cpus) if inputs.detector is not None else None)
    return FrozenInputs(prepared, splits, inputs, caches, selector, boxes)


def prepare_frozen(sweep: SweepConfig, storage: str) -> None:
    """``frozen_inputs`` of every planned row of a grid sweep (and the base experiment of a sampled
    one), before Tune starts trials: nothing is held then, so GPU actors get their GPUs, and
    concurrent trials do not each compute the same cache."""
    seen, pending = set(), []
    for overrides in grid_points(sweep.search) if sweep.search.is_grid else [{}]:
        experiment = sweep.experiment(overrides, deep=False)
        inputs = experiment.method.inputs
        if not (inputs.embeddings or inputs.selection or inputs.detector):
            continue
        key = experiment.data.model_dump_json() + experiment.method.model_dump_json()  # what inputs follow
        if key not in seen:
            seen.add(key)
            pending.append(experiment)
    # In a task, one after the other: the actor pools it starts log to Ray's files, not this console.
    for experiment in pending:
        ray.get(_frozen_task.remote(experiment, storage))


@ray.remote(num_cpus=0)
def _frozen_task(experiment: ExperimentConfig, storage: str) -> None:
    frozen_inputs(experiment, storage)
