"""Profiles rewrite a raw sweep file before validation. ``smoke`` shrinks any sweep to a run of
CPU minutes on the synthetic set: tiny backbone of the same family, few steps, one small
worker, no GPUs, while keeping every searched key and every table row (so a paper sweep's
plumbing runs end to end on a laptop)."""
from __future__ import annotations

import copy
import json
from typing import Any, Callable

from fgray.validation import ConfigError  # not fgray.config: config imports this module

SMOKE_SYNTHETIC = {"num_classes": 16, "images_per_class": 12}  # the smoke data: 192 images of 64 px
TRANSFER_SEED = 1000  # the first transfer stand-in's generator seed: past the training stand-ins' 0, 1, ...


def _smoke(data: dict[str, Any]) -> dict[str, Any]:
    from fgray.methods.registry import method_class, method_names

    out = copy.deepcopy(data)
    out["name"] = f"{out.get('name', 'sweep')}-smoke"
    backbone = str(out.get("backbone", {}).get("name", "resnet18"))
    out["backbone"] = {"name": "test_vit" if "vit" in backbone else "test_resnet", "pretrained": False}
    kept = {k: v for k, v in (out.get("data") or {}).items() if k == "val_fraction"}  # 0: no validation
    out["data"] = {"name": "synthetic", "image_size": 64, "eval_crop": 1.0, "protocol": "open",
                   "synthetic": dict(SMOKE_SYNTHETIC), **kept}
    out["train"] = {**out.get("train", {}), "epochs": 2, "steps_per_epoch": 2, "batch_size": 16, "amp": "off",
                    "warmup_epochs": 0}
    out["eval"] = {**out.get("eval", {}), "batch_size": 64, "test_top": 1}
    _transfer_stand_ins(out["eval"])
    out["resources"] = {"workers_per_trial": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0, "data_cpus": 0.25,
                        "max_concurrent_trials": 2}
    search = out.setdefault("search", {})
    if isinstance(search.get("scheduler"), dict) and "grace_period" in search["scheduler"]:
        search["scheduler"] = {**search["scheduler"], "grace_period": 1}  # ASHA needs grace_period <= epochs
    _synthetic_stand_ins(out)
    grid_only = all("grid" in (d or {}) for d in search.get("space", {}).values())
    if not grid_only or not (search.get("space") or search.get("points")):
        search["num_samples"] = min(int(search.get("num_samples") or 2), 2)
    method = out.get("method") or {}
    name = method.get("name")
    if name not in method_names():
        raise ConfigError(f"method.name: unknown method {name!r}; known: {method_names()}")
    out["method"] = {**method, **method_class(name).smoke_overrides(method)}
    search["points"] = [_smoke_row(row, name) for row in search.get("points") or []]
    return out


def _smoke_row(row: dict[str, Any], base: str) -> dict[str, Any]:
    """A table row that switches method (a leaderboard's) gets that method's smoke overrides, as the
    base method does (they win over the file's values; --set values come after the profile)."""
    from fgray.methods.registry import method_class, method_names
    from fgray.search_config import switched_method

    name = switched_method(row, base)
    if name is None or name not in method_names():
        return row  # validation names an unknown method
    if isinstance(row.get("method"), dict):
        return {**row, "method": {**row["method"], **method_class(name).smoke_overrides(row["method"])}}
    own = {k[len("method."):]: v for k, v in row.items() if k.startswith("method.")}
    smoke = {f"method.{k}": v for k, v in method_class(name).smoke_overrides(own).items()}
    return {**row, **smoke}


# The keys that bind a row to prepared data on disk; smoke replaces them (other data.* keys are valid
# on the synthetic set as they are).
_DATASET_KEYS = ("data.name", "data.root")


def _synthetic_stand_ins(out: dict[str, Any]) -> None:
    """Table rows that name their own dataset (``search.points`` with ``data.name``, e.g. one row per
    dataset of a paper's main table) train on a synthetic stand-in each: the same generator with one
    seed per dataset. Paper rows that match a dataset match its stand-in, so report.md still shows
    that dataset's published numbers beside the row."""
    search = out.get("search") or {}
    seeds: dict[str, int] = {}

    def stand_in(row: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in row.items() if k not in _DATASET_KEYS}
        if "data.name" not in row:
            return kept
        return {**kept, "data.synthetic.seed": seeds.setdefault(json.dumps(row["data.name"]), len(seeds))}

    if search.get("points"):
        search["points"] = [stand_in(dict(row)) for row in search["points"]]
    for row in (out.get("paper") or {}).get("rows") or []:
        match = row.get("match") or {}
        if json.dumps(match.get("data.name")) in seeds:  # a dataset some table row trains on
            row["match"] = stand_in(match)


def _transfer_stand_ins(section: dict[str, Any]) -> None:
    """Each ``eval.transfer`` dataset becomes a synthetic stand-in, without a root: the generator with a
    seed of its own, so it differs from the training data. Its name, images and classes stay, so
    paper values keyed "<name>/recall@1" still sit beside its metrics in report.md."""
    transfer = section.get("transfer")
    if not isinstance(transfer, list):
        return  # absent, or malformed: validation names it
    section["transfer"] = [
        {**{k: v for k, v in entry.items() if k not in ("dataset", "root", "synthetic")},
         "dataset": "synthetic", "synthetic": {**SMOKE_SYNTHETIC, "seed": TRANSFER_SEED + i}}
        if isinstance(entry, dict) else entry
        for i, entry in enumerate(transfer)]


PROFILES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"smoke": _smoke}


def apply_profile(profile: str, data: dict[str, Any]) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ConfigError(f"--profile: unknown profile {profile!r}; known: {sorted(PROFILES)}")
    return PROFILES[profile](data)
