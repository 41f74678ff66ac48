"""Method registry: ``@register_method("mocov2")`` on the method class, ``create_method`` to build one.

A method's name is registered once, by its typed config (``@method_config`` in the torch-free
``fgray.methods.configs``), so the experiment schema (config.py) builds its ``method:`` section
without importing a method module. The class lives in ``fgray.methods.<name>`` (one module per
method, DESIGN.md §3), imported on first use, and registers itself against that config.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from fgray.data.inputs import DatasetFacts
    from fgray.methods.base import Method
    from fgray.methods.configs import MethodConfig
    from fgray.models.backbone import Backbone

_METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    def decorator(method_cls: type) -> type:
        if name not in method_configs():
            raise ValueError(f"method {name!r} has no config: decorate its config class with @method_config "
                             "in fgray.methods.configs")
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = method_cls
        method_cls.name = name
        return method_cls

    return decorator


def method_configs() -> dict[str, type["MethodConfig"]]:
    """name -> config class, from the configs alone (no method module is imported)."""
    import fgray.methods.configs_supervised  # noqa: F401  (registers VAPNet's and DVA's configs)
    import fgray.methods.configs_ass  # noqa: F401  (registers ASS's config)
    from fgray.methods.configs import METHOD_CONFIGS

    return dict(METHOD_CONFIGS)


def method_names() -> list[str]:
    return sorted(method_configs())


def method_class(name: str) -> type["Method"]:
    """The method class of ``name``; its module is imported on first use, which registers it."""
    if name not in _METHODS:
        if name not in method_configs():
            raise KeyError(f"unknown method {name!r}; known: {method_names()}")
        importlib.import_module(f"fgray.methods.{name}")
    return _METHODS[name]


def create_method(config: "MethodConfig", backbone: "Backbone", facts: "DatasetFacts") -> "Method":
    """Build the registered method for its typed ``config`` around ``backbone``, with the dataset's facts."""
    return method_class(config.name)(config, backbone, facts)
