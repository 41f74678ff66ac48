"""Method registry: ``@register_method("mocov2", MocoV2Config)`` and ``create_method``.

The registry maps a method name to its ``nn.Module`` class and its typed config; the
experiment schema (config.py) builds its ``method:`` section from the registered configs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fgray.methods.base import Method
    from fgray.models.backbone import Backbone

_METHODS: dict[str, tuple[type, type]] = {}


def register_method(name: str, config_cls: type["BaseModel"]) -> Callable[[type], type]:
    def decorator(method_cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        if config_cls.model_fields["name"].default != name:
            raise ValueError(f"{config_cls.__name__}.name must default to {name!r}")
        _METHODS[name] = (method_cls, config_cls)
        method_cls.name = name
        return method_cls

    return decorator


def _load_all() -> None:
    import fgray.methods  # noqa: F401  (importing the package registers every method module)


def method_names() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def method_config_classes() -> list[type]:
    _load_all()
    return [config for _, config in _METHODS.values()]


def method_class(name: str) -> type["Method"]:
    _load_all()
    return _METHODS[name][0]


def create_method(config: "BaseModel", backbone: "Backbone") -> "Method":
    """Build the registered method for its typed ``config`` around ``backbone``."""
    _load_all()
    method_cls, _ = _METHODS[config.name]
    return method_cls(config, backbone)
