"""Typed, validated experiment and sweep schema (DESIGN.md §2).

A sweep file is one :class:`SweepConfig` in YAML: the experiment every trial starts from, plus
``search`` (what varies) and ``paper`` (the published numbers to print beside ours). Every
value is validated once, at the entry point (the schema before Ray starts, timm's model names
beside it: ``fgray.sweep``); unknown keys are rejected.
Errors surface as :class:`ConfigError` with one line per problem:
``method.temperature: must be > 0, got -1``. Reading a sweep file and checking its search
against this schema: :mod:`fgray.sweep_file`.
"""
from __future__ import annotations

import difflib
import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from fgray.data.protocols import dataset_spec
# Re-exported: the data section is a part of the experiment schema, imported from here by most modules.
from fgray.data_config import PREPARED, DataConfig, SyntheticOptions
from fgray.methods.registry import method_configs
from fgray.node_paths import WEIGHTS_HOW, ReadPath, is_object_store, is_uri, local_path
# Re-exported: ConfigError is the error type of every config check (the CLI catches it from here);
# the search section's names are imported from here by the sweep's modules.
from fgray.search_config import PaperConfig, PaperRow, SearchConfig, grid_points, switched_method  # noqa: F401
from fgray.validation import ConfigError, Strict, set_dotted, validate  # noqa: F401


# Autocast: auto = bf16 (fp16 where bf16 is missing) when on a GPU; YAML reads a bare on / off as a boolean.
Amp = Annotated[Literal["auto", "on", "off"],
                BeforeValidator(lambda v: {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v)]


# --------------------------------------------------------------------------------------------
# Experiment parts


def _deep(info: ValidationInfo) -> bool:
    """False in the schema-only pass of ``validate``: skip checks that import timm/torch (seconds)."""
    return not (info.context or {}).get("schema_only", False)


class BackboneConfig(Strict):
    name: str = "resnet18"  # any timm model name
    # false | true (timm hub) | /path/to/weights (.pth / .safetensors) | an fgray checkpoint folder (a
    # trial's checkpoint_*, its backbone: a warm start) | a sweep's output folder (its best / only trial's);
    # on a cluster: s3://... / gs://... (copied once per node: fgray.weights_uri) or file:///mount/...
    pretrained: Annotated[bool | str, ReadPath(how=WEIGHTS_HOW)] = False
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    # Extra timm.create_model arguments, e.g. {channels: [32, 64, 128, 256]} for a narrow ResNet.
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_timm_model(cls, name: str, info: ValidationInfo) -> str:
        if not _deep(info):
            return name
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown timm model '{name}'{hint}")
        return name

    @model_validator(mode="after")
    def _model_kwargs_accepted(self, info: ValidationInfo) -> "BackboneConfig":
        if self.model_kwargs and _deep(info):  # build on the meta device: checks the arguments without allocating
            import timm
            import torch

            try:
                with torch.device("meta"):
                    timm.create_model(self.name, pretrained=False, num_classes=0, **self.model_kwargs)
            except Exception as exc:  # timm raises TypeError / ValueError / AssertionError alike
                raise ValueError(f"model_kwargs rejected by timm.create_model('{self.name}'): "
                                 f"{type(exc).__name__}: {exc}") from None
        return self

    @field_validator("pretrained")
    @classmethod
    def _weights_file_exists(cls, value: bool | str, info: ValidationInfo) -> bool | str:
        if isinstance(value, str) and is_object_store(value):
            from fgray.weights_uri import StoreUnreachable

            try:
                return _stored_weights(value)
            except OSError as err:  # the store: one line where the sweep starts, retried in a trial
                if not _deep(info):
                    raise err if isinstance(err, StoreUnreachable) else StoreUnreachable(f"{value}: {err}")
                raise ValueError(str(err).splitlines()[0]) from None
        mounted = isinstance(value, str) and value.startswith("file://")  # a mount every node has: stays a URI
        if isinstance(value, str) and (mounted or not is_uri(value)) and not Path(local_path(value)).is_file():
            from fgray.results import resolve_checkpoint  # torch-free: meta / summary files only

            try:  # recorded resolved: the trials name the checkpoint
                folder = resolve_checkpoint(local_path(value))
            except OSError as err:  # unreadable (permissions): one line, as a missing file
                raise ValueError(f"{value} cannot be read ({str(err).splitlines()[0]})") from None
            if folder is None:
                raise ValueError(f"weights file not found: {value} (nor an fgray checkpoint folder holding "
                                 f"meta.json, nor a sweep's output folder holding summary.json)")
            return f"file://{folder}" if mounted and not is_uri(folder) else folder
        return value


def _stored_weights(value: str) -> str:
    """An object-store ``backbone.pretrained`` checked as a local one (a file, a checkpoint folder, a
    sweep's output folder, resolved to its checkpoint); pyarrow asks the store (one or two requests)."""
    from fgray.results import resolve_checkpoint
    from fgray.weights_uri import stored_type

    if stored_type(value) == "file":
        return value
    folder = resolve_checkpoint(value)
    if folder is None:
        raise ValueError(f"weights file not found: {value} (nor an fgray checkpoint folder holding meta.json, "
                         f"nor a sweep's output folder holding summary.json)")
    return folder


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)  # per worker
    steps_per_epoch: int | None = Field(None, ge=1)  # cap on optimiser steps per epoch (smoke runs)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.03, gt=0)  # for batch_size x workers = 256 when scale_lr, else as given
    scale_lr: bool = False  # linear scaling rule: lr * global_batch / 256
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    amp: Amp = "auto"
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0  # initial weights, data order, every view and in-model draw derive from it
    # GPU only (CPU trials are bit-reproducible as they are): deterministic CUDA kernels and cuDNN
    # algorithms (torch.use_deterministic_algorithms); slower, and an op without one fails the trial.
    deterministic: bool = False
    # Convolutions in channels-last memory format (NHWC: what cuDNN's tensor-core kernels and oneDNN's
    # CPU kernels read); transformers keep their layout. bench/gpu_check.py measures both on a GPU.
    channels_last: bool = True
    compile: bool = False  # torch.compile the training step (the first steps pay the compilation)


def _recall_ks(ks: tuple[int, ...]) -> tuple[int, ...]:
    """A Recall@K list: positive, sorted, without repeats."""
    if not ks or min(ks) < 1:
        raise ValueError(f"must be a non-empty list of positive integers, got {list(ks)}")
    return tuple(sorted(set(ks)))


class TransferConfig(Strict):
    """A prepared dataset the trained models are also scored on, without training on it (cross-dataset
    generalization, e.g. CUB-trained -> NABirds): leave-one-out Recall@K / mAP over its chosen images,
    embedded with the experiment's eval transform (data.image_size, data.eval_crop)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # its results' key prefix: "<name>/recall@1"
    # The prepared dataset's reader name (what its manifest says: nabirds, aircraft, imagefolder, ...);
    # default: name. "synthetic": the generator (smoke stand-ins), with ``synthetic`` below.
    dataset: str | None = None
    # folder of prepared shards (local or s3://); synthetic: cache folder
    root: Annotated[str | None, ReadPath(per_node=lambda t: t.reader == "synthetic", how=PREPARED)] = None
    images: Literal["all", "train", "test"] = "all"  # every image, or one side of its official split
    classes: int | None = Field(None, ge=2)  # keep the first N classes (by label), e.g. iNat2021's 100
    ks: tuple[int, ...] | None = None  # Recall@K list; default: the experiment's eval.ks
    synthetic: SyntheticOptions = SyntheticOptions()

    @property
    def reader(self) -> str:
        return self.dataset or self.name

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, ks: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if ks is None else _recall_ks(ks)

    @model_validator(mode="after")
    def _root_needed(self) -> "TransferConfig":
        if self.reader != "synthetic" and not self.root:
            raise ValueError(f"dataset '{self.reader}' needs root: the folder written by "
                             "`python -m fgray.data prepare`")
        return self

    def data_config(self, data: DataConfig) -> DataConfig:
        """The data section that locates its shards (``pipeline.resolve_dataset``); image size and
        crop are the training data's: a synthetic stand-in is rendered at the size models see."""
        return DataConfig(name=self.reader, root=self.root, image_size=data.image_size,
                          eval_crop=data.eval_crop, synthetic=self.synthetic)


class EvalConfig(Strict):
    ks: tuple[int, ...] = (1, 2, 4, 8)  # Recall@K list; when not given, the list the papers use for data.name
    every: int = Field(1, ge=1)  # validate every N epochs (and always after the last)
    batch_size: int = Field(256, ge=1)
    amp: Amp = "auto"  # embedding under autocast (CUDA); off: float32, as most papers' evaluation code
    test_top: int = Field(1, ge=0)  # best N trials re-evaluated on the test split after the sweep
    baseline: bool = True  # also evaluate the untrained (random-init / pretrained) backbone on test
    # Test splits up to this many images on CPU are embedded in the sweep's process (an actor start costs
    # more than embedding them); larger ones, or with GPUs, by a Ray Data actor pool. 0: always the pool.
    local_max_images: int = Field(4096, ge=0)
    # Linear probe on the frozen features of those models (PP-SSL / synthesized-pairs protocol): fitted on the
    # training images with these fractions of their labels, e.g. [1.0, 0.5, 0.2]; scored top-1 / top-5 on test.
    # Needs test classes seen in training (protocol closed); elsewhere it is recorded as skipped.
    linear_probe: tuple[float, ...] = ()
    # Other prepared datasets every tested model (and the untrained baseline) is scored on as well,
    # without training on them; their metrics are "<name>/recall@1", ... beside the test split's.
    transfer: tuple[TransferConfig, ...] = ()

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        return _recall_ks(ks)

    @field_validator("transfer")
    @classmethod
    def _unique_names(cls, transfer: tuple[TransferConfig, ...]) -> tuple[TransferConfig, ...]:
        names = [t.name for t in transfer]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names must be unique, got {repeated} more than once")
        return transfer

    @field_validator("linear_probe")
    @classmethod
    def _label_fractions(cls, fractions: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"label fractions must be in (0, 1], got {list(fractions)}")
        return tuple(sorted(set(fractions), reverse=True))


FORKED_VIEWS = sys.platform == "linux"  # one-worker trials fork view workers (forked_views); macOS: unsafe


class ResourcesConfig(Strict):
    workers_per_trial: int = Field(1, ge=1)  # DDP workers of one trial's TorchTrainer
    # A one-worker trial trains inside its Tune trial process (no TorchTrainer: seconds less start-up
    # per trial on a laptop); false: a TorchTrainer even for one worker (the dashboard's Train tab).
    train_in_trial: bool = True
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    data_cpus: float = Field(0.5, gt=0)  # logical CPUs per view worker (trial_process_cpus) or eval task
    data_actors: int = Field(1, ge=1)  # view workers per trainer (each reserves data_cpus)
    max_concurrent_trials: int = Field(1, ge=1)
    # e.g. {TRAIN_DRIVER: 1}: a TorchTrainer trial's driver on cluster.yaml's head (a one-worker trial
    # that trains in its own process has no separate driver: refused there, it would be ignored)
    driver_resources: dict[str, float] = {}
    # Retries of a failed trial (Tune; a DDP trial's driver resumes its Train run), from the last checkpoint;
    # a spot node's preemption notice does not count (Train restarts the worker group, unlimited), a lost
    # node does, and a settings error (ConfigError) ends the trial at once.
    max_failures: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _driver_resources_need_a_driver(self) -> "ResourcesConfig":
        if self.driver_resources and self.in_trial:
            raise ValueError("driver_resources places a TorchTrainer trial's driver, but a one-worker trial trains "
                             "in its own process (train_in_trial: true), which holds its GPU: drop driver_resources, "
                             "or set train_in_trial: false to keep the drivers on the head")
        return self

    @property
    def in_trial(self) -> bool:
        """Whether a trial trains in its own Tune process (one worker) rather than a TorchTrainer."""
        return self.train_in_trial and self.workers_per_trial == 1

    @property
    def trial_process_cpus(self) -> float:
        """A one-worker trial process's CPUs: its step's and its forked view workers' (FORKED_VIEWS)."""
        return self.cpus_per_worker + (self.data_actors * self.data_cpus if FORKED_VIEWS else 0)


def _method_union():
    classes = list(method_configs().values())
    return Annotated[Union[tuple(classes)], Field(discriminator="name")]  # noqa: UP007


class ExperimentConfig(Strict):
    """Everything one trial needs; what a trial driver receives (as a dict) from Tune."""

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.-]+$")
    method: _method_union()  # type: ignore[valid-type]
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _views_on_a_gpu(self) -> "ExperimentConfig":
        if self.data.views_on == "gpu" and not self.resources.gpus_per_worker:
            raise ValueError("data.views_on: gpu finishes views on the trainer's GPU, but resources.gpus_per_worker "
                             "is 0: use cpu or auto (or trainer, to finish them in a CPU trainer's process)")
        return self

    @model_validator(mode="after")
    def _decode_where_views_finish(self) -> "ExperimentConfig":
        if self.data.decode_on == "trainer" and not self.defer_views:
            resolved = "" if self.data.views_on == "cpu" else ", cpu in a trial without a GPU"
            raise ValueError(f"data.decode_on: trainer needs the views finished on the trainer, but data.views_on "
                             f"is {self.data.views_on}{resolved}: use views_on gpu or trainer, or decode_on worker")
        return self

    @property
    def defer_views(self) -> bool:
        """Whether the recipes' deferrable ops run on the trainer's device (``data.views_on``)."""
        views_on = self.data.views_on
        return views_on in ("gpu", "trainer") or (views_on == "auto" and self.resources.gpus_per_worker > 0)

    @property
    def decode_views(self) -> bool:
        """Whether those recipes' images are decoded on the trainer's device too (``data.decode_on``)."""
        return self.data.decode_on == "trainer" and self.defer_views

    @property
    def has_validation(self) -> bool:
        return self.data.val_fraction > 0

    @property
    def total_epochs(self) -> int:
        """Epochs of a whole trial, over all the method's stages (what ASHA's time axis counts)."""
        return sum(stage.epochs for stage in self.method.stages(self.train.epochs))

    @model_validator(mode="before")
    @classmethod
    def _dataset_ks(cls, values: Any) -> Any:
        """eval.ks defaults to the dataset's published K list (SOP 1/10/100/1000, In-Shop 1/10/.../50)."""
        eval_section = values.get("eval", {}) if isinstance(values, dict) else None
        if not isinstance(eval_section, dict) or "ks" in eval_section:
            return values
        data = values.get("data") or {}
        name = data.get("name", "synthetic") if isinstance(data, dict) else getattr(data, "name", "synthetic")
        return {**values, "eval": {**values.get("eval", {}), "ks": list(dataset_spec(str(name)).ks)}}


class SweepConfig(ExperimentConfig):
    search: SearchConfig = SearchConfig()
    paper: PaperConfig = PaperConfig()
    storage: str = "~/fgray_results"  # local folder or URI (s3://...); shared storage on a cluster

    @functools.cached_property
    def longest_trial(self) -> int:
        """The most epochs a trial of this sweep runs, over its grid rows and each searched value: a
        method's stages can depend on searched keys (OLDFS's decoder stage), and ASHA's horizon
        must cover the longest trial. Computed once (a validation per row): the plan, ASHA, the
        console and the trial records all read it."""
        rows = grid_points(self.search)
        for key, dist in self.search.space.items():
            if dist.kind != "grid":
                rows += [{key: value} for value in dist.values_to_check()]
        return max(self.experiment(row, deep=False).total_epochs for row in rows)

    def experiment(self, overrides: dict[str, Any] | None = None, deep: bool = True) -> ExperimentConfig:
        """The base experiment with a row's dotted overrides. A row that names another method
        (``method.name``, or a whole ``method`` section) starts that method from its own defaults:
        one method's options mean nothing to another (a leaderboard row ``{method.name: simsiam}``
        after a MoCo base), while the other sections stay the sweep's."""
        overrides = overrides or {}
        data = self.model_dump(exclude={"search", "paper", "storage"})
        switched = switched_method(overrides, self.method.name)
        if switched is not None and "method" not in overrides:
            data["method"] = {"name": switched}
        for key, value in overrides.items():
            set_dotted(data, key, value)
        return validate(ExperimentConfig, data, deep=deep)
