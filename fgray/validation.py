"""Turning raw sweep data into typed configs: dotted keys, ``--set`` values, and validation whose
errors are one line per problem, naming the key path (``method.temperature: must be > 0, got -1``).
"""
from __future__ import annotations

import difflib
import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fgray.methods.registry import method_configs
from fgray.node_paths import StoreUnreachable


class Strict(BaseModel):
    """A config section: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ConfigError(ValueError):
    """Bad user input; ``str(err)`` is the one-line message the CLI prints before exiting 2."""


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "method.temperature", 0.1)``; nested dicts are created as needed."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: '{part}' is a value, not a section")
    node[leaf] = value


def parse_set(assignment: str) -> tuple[str, Any]:
    """``--set train.lr=0.1`` -> ("train.lr", 0.1); the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment}: expected key.path=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment}: value is not valid YAML ({err.problem})") from None


def _describe(error: dict) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}, got {value!r}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind == "union_tag_invalid":
        return f"unknown method {ctx.get('tag')!r}; known: {ctx.get('expected_tags')}"
    message = error["msg"].removeprefix("Value error, ")
    return message if kind == "value_error" else f"{message[0].lower()}{message[1:]}, got {value!r}"


def _loc(error: dict, method_tags: set[str]) -> str:
    parts = [str(p) for p in error["loc"]]
    if len(parts) >= 2 and parts[0] == "method" and parts[1] in method_tags:
        parts.pop(1)  # the discriminated union's tag is not part of the user's key path
    return ".".join(parts) or "<root>"


def _unknown_key_hint(model: type[BaseModel], error: dict, loc: str, data: dict) -> str:
    """'did you mean' for misspelt keys: look up the fields of the section the key sits in."""
    section: Any = model
    parts = loc.split(".")[:-1]
    if parts[:1] == ["method"]:  # a union of the method configs: pick the one the data names
        section = method_configs().get((data.get("method") or {}).get("name"))
        parts = parts[1:]
    for part in parts:
        fields = getattr(section, "model_fields", {})
        section = fields[part].annotation if part in fields else None
    names = list(getattr(section, "model_fields", {}))
    close = difflib.get_close_matches(loc.split(".")[-1], names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def validate(model: type[BaseModel], data: Any, deep: bool = True):
    """Validate ``data`` into ``model``; raise ConfigError with one line per problem.

    The schema is checked first without the checks that import timm (a malformed file fails in
    a fraction of a second); ``deep`` then runs them too (timm model names and arguments).
    """
    try:
        try:
            validated = model.model_validate(data, context={"schema_only": True})
        except StoreUnreachable:  # a trial retries it; the deep pass names the key in one line
            if not deep:
                raise
        return model.model_validate(data) if deep else validated
    except ValidationError as err:
        tags = set(method_configs())
        lines = []
        for error in err.errors():
            loc = _loc(error, tags)
            hint = _unknown_key_hint(model, error, loc, data) if error["type"] == "extra_forbidden" else ""
            described = _describe(error)
            # A check across sections names its key path itself ("data.views_on: ..."), not "<root>".
            named = loc == "<root>" and re.match(r"^[a-z_]+(\.[a-z_]+)+: ", described)
            lines.append(f"{described}{hint}" if named else f"{loc}: {described}{hint}")
        raise ConfigError("; ".join(dict.fromkeys(lines))) from None
