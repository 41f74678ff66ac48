"""Method registry: ``@register_method("mocov2", MocoV2Config)`` and ``create_method``.

The registry maps a method name to its ``nn.Module`` class and its typed config. The configs
live in the torch-free ``fgray.methods.configs``, so the experiment schema (config.py) builds its
``method:`` section without importing a method module; those are imported on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fgray.methods.base import Method
    from fgray.models.backbone import Backbone

_METHODS: dict[str, tuple[type, type]] = {}


def register_method(name: str, config_cls: type["BaseModel"]) -> Callable[[type], type]:
    from fgray.methods.configs import METHOD_CONFIGS

    def decorator(method_cls: type) -> type:
        if config_cls not in METHOD_CONFIGS:
            raise ValueError(f"{config_cls.__name__} is not listed in fgray.methods.configs.METHOD_CONFIGS")
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        if config_cls.model_fields["name"].default != name:
            raise ValueError(f"{config_cls.__name__}.name must default to {name!r}")
        _METHODS[name] = (method_cls, config_cls)
        method_cls.name = name
        return method_cls

    return decorator


def _registered(name: str) -> tuple[type, type]:
    """(method class, config class) of ``name``; its module ``fgray.methods.<name>`` (one module per
    method, DESIGN.md §3) is imported on first use, which runs its @register_method."""
    if name not in _METHODS:
        importlib.import_module(f"fgray.methods.{name}")
    return _METHODS[name]


def method_names() -> list[str]:
    """The registered names, from the configs alone (no method module is imported)."""
    return sorted(config.model_fields["name"].default for config in method_config_classes())


def method_config_classes() -> list[type]:
    from fgray.methods.configs import METHOD_CONFIGS

    return list(METHOD_CONFIGS)


def method_class(name: str) -> type["Method"]:
    return _registered(name)[0]


def create_method(config: "BaseModel", backbone: "Backbone") -> "Method":
    """Build the registered method for its typed ``config`` around ``backbone``."""
    method_cls, _ = _registered(config.name)
    return method_cls(config, backbone)
