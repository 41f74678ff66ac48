"""Trial checkpoints as plain files (no Ray): ``state.pt`` + ``experiment.json`` + ``facts.json``
+ ``meta.json`` (epoch, stage, metrics).

Frozen pretrained parts a method lists in ``state_exclude`` (e.g. a CLIP teacher) are not
saved: they are rebuilt from their own weights file when the method is constructed. The dataset
facts the method was built with are saved beside it, so evaluation rebuilds the same method.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import torch

from fgray.config import ExperimentConfig
from fgray.data.inputs import DatasetFacts
from fgray.methods.base import Method

STATE_FILE = "state.pt"
EXPERIMENT_FILE = "experiment.json"
FACTS_FILE = "facts.json"
META_FILE = "meta.json"


def method_state(method: Method) -> dict[str, torch.Tensor]:
    return {k: v for k, v in method.state_dict().items() if not k.startswith(method.state_exclude or ("\0",))}


def save(directory: str, method: Method, experiment: ExperimentConfig, facts: DatasetFacts, stage: str,
         epoch: int, metrics: dict[str, float], optimizer: torch.optim.Optimizer | None = None,
         scheduler: Any = None, scaler: Any = None) -> None:
    """Write a checkpoint of the state after ``epoch`` (1-based, inside ``stage``) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    state = {
        "method": method_state(method),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "stage": stage,
    }
    torch.save(state, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, EXPERIMENT_FILE), "w") as f:
        f.write(experiment.model_dump_json(indent=2))
    with open(os.path.join(directory, FACTS_FILE), "w") as f:
        json.dump(asdict(facts), f, indent=2)
    # The other files' sizes: storage uploads files in no set order, so a copy cut short (a node lost
    # mid-upload) can hold a meta file beside a truncated state; readers check the sizes.
    sizes = {name: os.path.getsize(os.path.join(directory, name)) for name in (STATE_FILE, EXPERIMENT_FILE, FACTS_FILE)}
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump({"epoch": epoch, "stage": stage, "metrics": metrics, "sizes": sizes}, f, indent=2)


def load(directory: str, method: Method) -> dict[str, Any]:
    """Load the method's weights from ``directory``; returns the saved state (epoch, stage, optimiser
    states) for ``restore_optimizer``."""
    state = _read_state(directory)
    missing, unexpected = method.load_state_dict(state["method"], strict=False)
    missing = [k for k in missing if not k.startswith(method.state_exclude or ("\0",))]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not fit the method: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return state


def backbone_state(directory: str) -> dict[str, torch.Tensor]:
    """The trained backbone of a checkpoint, keyed as ``Backbone.state_dict()`` (``model.<timm key>``):
    the weights under the method's shallowest ``backbone`` module (VAPNet's ``backbone.``, MoCo v2's
    ``moco.backbone.``; never a momentum copy such as ``moco.key_backbone.``). What
    ``backbone.pretrained: <checkpoint folder>`` warm-starts a new trial from."""
    weights = _read_state(directory)["method"]
    prefixes = set()
    for key in weights:
        parts = key.split(".")
        if "backbone" in parts[:-1]:
            prefixes.add(".".join(parts[:parts.index("backbone") + 1]) + ".")
    if not prefixes:
        raise ValueError(f"checkpoint {directory} holds no backbone (no weights under a 'backbone' module)")
    prefix = min(prefixes, key=lambda p: (p.count("."), p))
    return {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}


def _read_state(directory: str) -> dict[str, Any]:
    return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False)


def restore_optimizer(state: dict[str, Any], optimizer=None, scheduler=None, scaler=None) -> None:
    """Continue the optimiser, LR schedule and loss scaler of a checkpoint taken mid-stage."""
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and state.get(key) is not None:
            obj.load_state_dict(state[key])


def read_facts(directory: str) -> DatasetFacts:
    with open(os.path.join(directory, FACTS_FILE)) as f:
        facts = json.load(f)
    return DatasetFacts(**{**facts, "class_names": tuple(facts["class_names"])})


def read_experiment(directory: str) -> ExperimentConfig:
    with open(os.path.join(directory, EXPERIMENT_FILE)) as f:
        return ExperimentConfig.model_validate_json(f.read())


def read_meta(directory: str) -> dict:
    with open(os.path.join(directory, META_FILE)) as f:
        return json.load(f)
