"""Profiles rewrite a raw sweep file before validation. ``smoke`` shrinks any sweep to a run of
CPU minutes on the synthetic set: tiny backbone of the same family, few steps, one small
worker, no GPUs, while keeping every searched key and every table row (so a paper sweep's
plumbing runs end to end on a laptop)."""
from __future__ import annotations

import copy
from typing import Any, Callable

from fgray.validation import ConfigError  # not fgray.config: config imports this module


def _smoke(data: dict[str, Any]) -> dict[str, Any]:
    from fgray.methods.registry import method_class, method_names

    out = copy.deepcopy(data)
    out["name"] = f"{out.get('name', 'sweep')}-smoke"
    backbone = str(out.get("backbone", {}).get("name", "resnet18"))
    out["backbone"] = {"name": "test_vit" if "vit" in backbone else "test_resnet", "pretrained": False}
    kept = {k: v for k, v in (out.get("data") or {}).items() if k == "val_fraction"}  # 0: no validation
    out["data"] = {"name": "synthetic", "image_size": 64, "eval_crop": 1.0, "protocol": "open",
                   "synthetic": {"num_classes": 16, "images_per_class": 12}, **kept}
    out["train"] = {**out.get("train", {}), "epochs": 2, "steps_per_epoch": 2, "batch_size": 16, "amp": "off",
                    "warmup_epochs": 0}
    out["eval"] = {**out.get("eval", {}), "batch_size": 64, "test_top": 1}
    out["resources"] = {"workers_per_trial": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0, "data_cpus": 0.25,
                        "max_concurrent_trials": 2}
    search = out.setdefault("search", {})
    if isinstance(search.get("scheduler"), dict) and "grace_period" in search["scheduler"]:
        search["scheduler"] = {**search["scheduler"], "grace_period": 1}  # ASHA needs grace_period <= epochs
    grid_only = all("grid" in (d or {}) for d in search.get("space", {}).values())
    if not grid_only or not (search.get("space") or search.get("points")):
        search["num_samples"] = min(int(search.get("num_samples") or 2), 2)
    method = out.get("method") or {}
    name = method.get("name")
    if name not in method_names():
        raise ConfigError(f"method.name: unknown method {name!r}; known: {method_names()}")
    out["method"] = {**method, **method_class(name).smoke_overrides(method)}
    return out


PROFILES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"smoke": _smoke}


def apply_profile(profile: str, data: dict[str, Any]) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ConfigError(f"--profile: unknown profile {profile!r}; known: {sorted(PROFILES)}")
    return PROFILES[profile](data)
