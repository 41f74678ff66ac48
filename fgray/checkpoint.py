"""Trial checkpoints as plain files (no Ray): ``state.pt`` + ``experiment.json`` + ``meta.json``.

Frozen pretrained parts a method lists in ``state_exclude`` (e.g. a CLIP teacher) are not
saved: they are rebuilt from their own weights file when the method is constructed.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from fgray.config import ExperimentConfig
from fgray.methods.base import Method

STATE_FILE = "state.pt"
EXPERIMENT_FILE = "experiment.json"
META_FILE = "meta.json"


def method_state(method: Method) -> dict[str, torch.Tensor]:
    return {k: v for k, v in method.state_dict().items() if not k.startswith(method.state_exclude or ("\0",))}


def save(directory: str, method: Method, experiment: ExperimentConfig, epoch: int, metrics: dict[str, float],
         optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None) -> None:
    """Write a checkpoint of the state after ``epoch`` (1-based) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    state = {
        "method": method_state(method),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "rng": torch.get_rng_state(),
    }
    torch.save(state, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, EXPERIMENT_FILE), "w") as f:
        f.write(experiment.model_dump_json(indent=2))
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump({"epoch": epoch, "metrics": metrics}, f, indent=2)


def load(directory: str, method: Method, optimizer=None, scheduler=None, scaler=None) -> int:
    """Restore what ``save`` wrote; returns the number of finished epochs."""
    state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False)
    missing, unexpected = method.load_state_dict(state["method"], strict=False)
    missing = [k for k in missing if not k.startswith(method.state_exclude or ("\0",))]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not fit the method: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and state.get(key) is not None:
            obj.load_state_dict(state[key])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"])


def read_experiment(directory: str) -> ExperimentConfig:
    with open(os.path.join(directory, EXPERIMENT_FILE)) as f:
        return ExperimentConfig.model_validate_json(f.read())


def read_meta(directory: str) -> dict:
    with open(os.path.join(directory, META_FILE)) as f:
        return json.load(f)
