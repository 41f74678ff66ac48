"""Will a GPU trial's view workers feed its GPU? What ``--dry-run`` prints per trial, from two measured
tables (bench/README.md): the training step rate of each method at its paper's size on one GPU
(``bench/gpu_check.py``) and the views one CPU core draws per second (``bench/view_path.py``).
Torch-free: the dry run stays fast."""
from __future__ import annotations

from dataclasses import dataclass

# Images/s of one training step on an NVIDIA H200 (bf16, channels-last CNNs; bench/README.md,
# "gpu_check.py", measurement of 2026-11-30), by (method, backbone family). Other GPUs are slower
# (an A10G, cluster.yaml's worker, has ~1/14 of its bf16 peak): these are the upper bound.
STEP_RATES: dict[tuple[str, str], float] = {
    ("mocov2", "resnet50"): 2947.0,
    ("simsiam", "resnet50"): 2422.0,
    ("ppssl", "resnet50"): 1377.0,
    ("vapnet", "resnet50"): 470.0,
    ("mocov2", "vit_base_patch16_224"): 1959.0,
}
STEP_GPU = "H200"

# CPU milliseconds of one core per stored image (bench/README.md, "view_path.py", 2026-12-06: CUB-sized
# 500 x 375 JPEGs, 1 thread): decoding, then each recipe's views at 224 px, drawn in full by the view
# workers (cpu) or with the deferred ops left to the trainer's device (gpu).
DECODE_MS = 1.4
VIEW_MS: dict[str, dict[str, float]] = {  # recipe -> {"cpu": ms, "gpu": ms} at 224 px, decoding excluded
    "moco_pair": {"cpu": 6.1, "gpu": 2.1},
    "clean_augmented": {"cpu": 6.3, "gpu": 2.8},
    "crop_flip": {"cpu": 0.9, "gpu": 0.9},
    "object_background": {"cpu": 2.7, "gpu": 2.7},
    "grid_crops": {"cpu": 2.7, "gpu": 2.7},
}
MEASURED_SIZE = 224
# CPU ms of one core per stored image with the decoding left to the trainer too (data.decode_on: trainer;
# bench/README.md, "view_path.py", 2026-12-06, 40 images x 2 rounds, where the gpu path took 3.1 and 4.1):
# the header and the draws, whatever the size. Recipes without deferred ops still decode on the worker.
TRAINER_DECODE_MS: dict[str, float] = {"moco_pair": 0.21, "clean_augmented": 0.24}


@dataclass(frozen=True)
class Feed:
    """A trial's view supply against its step's demand, per trainer (images/s)."""

    views_per_s: float | None  # what its view workers draw (None: a recipe without a measured cost)
    step_per_s: float | None  # what its GPU step eats (None: not measured for this method and backbone)
    cores: float  # the cores its view workers use: one process each, at most its reserved CPUs
    per_core: float | None  # images/s of one core

    @property
    def data_bound(self) -> bool:
        return self.views_per_s is not None and self.step_per_s is not None and self.views_per_s < self.step_per_s

    @property
    def cores_needed(self) -> float | None:
        return None if not self.per_core or self.step_per_s is None else self.step_per_s / self.per_core


def per_core_rate(recipes: list[str], image_size: int, deferred: bool, decoded: bool = False) -> float | None:
    """Stored images/s one core draws for these recipes (one decode), their view work scaled with the
    pixels from the measured 224 px (decoding does not scale); ``decoded`` (data.decode_on: trainer, with
    ``deferred``): the recipes that leave the decoding to the trainer cost only their draws."""
    if any(name not in VIEW_MS for name in recipes):
        return None
    drawn = [name for name in recipes if deferred and decoded and name in TRAINER_DECODE_MS]
    ms = sum(TRAINER_DECODE_MS[name] for name in drawn)
    rendered = [name for name in recipes if name not in drawn]
    if rendered:
        views = sum(VIEW_MS[name]["gpu" if deferred else "cpu"] for name in rendered)
        ms += DECODE_MS + views * (image_size / MEASURED_SIZE) ** 2
    return 1000.0 / ms


def trial_feed(method: str, backbone: str, recipes: list[str], image_size: int, deferred: bool,
               data_actors: int, data_cpus: float, decoded: bool = False) -> Feed:
    per_core = per_core_rate(recipes, image_size, deferred, decoded)
    cores = data_actors * min(1.0, data_cpus)
    step = STEP_RATES.get((method, backbone.split(".")[0])) if image_size == MEASURED_SIZE else None
    return Feed(None if per_core is None else per_core * cores, step, cores, per_core)


def describe(feed: Feed, deferred: bool, deferrable: bool = True, decoded: bool = False) -> str:
    """A trial's feed (after "feed: "): supply, demand, and a warning when the views cannot keep up
    (``deferrable``: its recipes have ops the GPU could finish; ``decoded``: the GPU decodes them too, a
    cost the measured step rate leaves out)."""
    where = ("the draws, decode + crop + the rest on the GPU" if decoded
             else "decode + crop, the rest on the GPU" if deferred else "every op on the CPU")
    supply = ("views: no measured cost for a recipe" if feed.views_per_s is None
              else f"views ~{feed.views_per_s:.0f} img/s ({feed.cores:g} core{'s' * (feed.cores != 1)} x "
                    f"{feed.per_core:.0f}, {where})")
    if feed.step_per_s is None:
        return f"{supply}; step rate not measured for this method/backbone/size (bench/gpu_check.py)"
    line = f"{supply}; the {STEP_GPU} step eats ~{feed.step_per_s:.0f} img/s"
    if feed.data_bound:
        hint = (", or data.views_on: gpu" if deferrable and not deferred
                else ", or data.decode_on: trainer" if deferrable and not decoded else "")
        line += (f" -- WARNING: data-bound at {feed.views_per_s / feed.step_per_s:.0%} of the step rate; "
                 f"~{feed.cores_needed:.0f} view cores needed (resources.data_actors x data_cpus){hint}")
    return line


def experiment_line(experiment) -> str | None:
    """The dry run's feed line for one trial (an ``ExperimentConfig``); None for a CPU trial, whose
    step shares the CPUs with its views (bench/small_trial.py measures those)."""
    res = experiment.resources
    if not res.gpus_per_worker:
        return None
    deferred, decoded = experiment.defer_views, experiment.decode_views
    recipes = [view.name for view in experiment.method.inputs.views]
    trial = trial_feed(experiment.method.name, experiment.backbone.name, recipes, experiment.data.image_size,
                       deferred, res.data_actors, res.data_cpus, decoded)
    deferrable = any(_defers(name) for name in recipes)
    return describe(trial, deferred and deferrable, deferrable, decoded and deferrable)


def _defers(recipe: str) -> bool:
    from fgray.data.inputs import RECIPES  # torch-free

    return bool(RECIPES[recipe].deferred)
