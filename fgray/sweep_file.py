"""Reading a sweep file: YAML -> overrides and profile -> a validated :class:`SweepConfig`, with
every searched value, table row and paper row checked against the schema (``fgray.config``): the
schema before Ray starts, the checks that load timm (``check_deep``) beside its start."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from fgray.config import SweepConfig, switched_method
from fgray.profiles import apply_profile
from fgray.validation import ConfigError, parse_set, set_dotted, validate


def load_sweep(path: str | os.PathLike, sets: list[str] | tuple[str, ...] = (),
               profile: str | None = None, deep: bool = True) -> SweepConfig:
    """Read, override, profile and fully validate a sweep file (including every searched value).
    ``deep`` False: the schema only (every key and value), without the checks that load timm
    (``check_deep``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (name, method, data, ...), "
                          f"got {type(data).__name__}")
    data.setdefault("name", path.stem)
    if profile is not None:  # the profile first, so that explicit --set values win over it
        data = apply_profile(profile, data)
    for assignment in sets:
        set_dotted(data, *parse_set(assignment))
    sweep = validate(SweepConfig, data, deep=False)
    check_search(sweep, deep=False)  # every schema error, before timm loads
    return check_deep(sweep) if deep else sweep


def check_deep(sweep: SweepConfig) -> SweepConfig:
    """A schema-valid sweep's checks that load timm: backbone names and arguments, in the base
    experiment and every searched value."""
    sweep = validate(SweepConfig, sweep.model_dump())
    check_search(sweep)
    return sweep


def check_search(sweep: SweepConfig, deep: bool = True) -> None:
    """Every searched key must exist and every value it can take must validate."""
    search = sweep.search
    kinds = {d.kind for d in search.space.values()}
    if search.points and kinds - {"grid"}:
        raise ConfigError("search.points: rows of a table combine only with grid keys, not with distributions")
    if "grid" in kinds and kinds != {"grid"}:
        raise ConfigError("search.space: cannot mix grid keys with distributions (use choice for a sampled list)")
    if search.algorithm == "grid" and not search.is_grid:
        raise ConfigError("search.algorithm: grid needs every key in search.space to be a grid")
    if search.scheduler.name == "asha" and search.scheduler.grace_period > sweep.train.epochs:
        raise ConfigError(f"search.scheduler.grace_period: must be <= train.epochs ({sweep.train.epochs}), "
                          f"got {search.scheduler.grace_period}")
    searched = search.space.get("data.val_fraction")
    if searched is not None and 0 in searched.values_to_check():
        raise ConfigError("search.space.data.val_fraction: 0 (no validation split) is a setting of the whole "
                          "sweep, not a value to search")
    if not sweep.has_validation and search.space and not search.is_grid:
        raise ConfigError("data.val_fraction: 0 leaves no validation split, and a sampled search chooses its "
                          "trials on validation: give fixed rows (grid / points) or a validation fraction > 0")
    if search.seeds > 1 and "train.seed" in search.space:
        raise ConfigError("search.space.train.seed: search.seeds repeats every row with its own seeds; "
                          "search train.seed or set search.seeds, not both")
    for key, dist in search.space.items():
        if key.split(".")[0] in ("search", "paper", "storage", "name"):
            raise ConfigError(f"search.space.{key}: only experiment keys can be searched")
        for value in dist.values_to_check():
            _check_override(sweep, {key: value}, f"search.space.{key}", deep)
    for i, row in enumerate(search.points):
        if not row:
            raise ConfigError(f"search.points[{i}]: empty row")
        _check_override(sweep, row, f"search.points[{i}]", deep)
    for i, row in enumerate(sweep.paper.rows):
        for key in row.match:
            _check_override(sweep, {key: _value_at(sweep, key)}, f"paper.rows[{i}].match.{key}", deep)


def _value_at(sweep: SweepConfig, key: str) -> Any:
    node: Any = sweep.model_dump()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{key}: no such key in the experiment schema")
        node = node[part]
    return node


def _check_override(sweep: SweepConfig, overrides: dict[str, Any], where: str, deep: bool) -> None:
    # A row that switches method is checked against that method's schema (strict) when validated below.
    switched = switched_method(overrides, sweep.method.name) is not None
    for key in overrides:
        if not (switched and key.startswith("method.")):
            _value_at(sweep, key)  # the key must exist (unknown keys would otherwise be silently added)
        if key.startswith("resources."):  # they size the Tuner's trials and its retries
            raise ConfigError(f"{where}: resources are a setting of the whole sweep")
    try:
        sweep.experiment(overrides, deep=deep)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
