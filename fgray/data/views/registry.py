"""The view recipes' implementations, registered by the names ``fgray.data.inputs.RECIPES`` declares."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import Tensor

from fgray.data.inputs import DEFERRED_SUFFIX, RECIPES, ViewRecipe  # noqa: F401  (re-exported)

Views = dict[str, Tensor]  # and, decoded on the trainer, the stored image's bytes under @encoded
ViewFn = Callable[..., Views]
_NOT_OPTIONS = ("size", "defer", "decode")  # constructor arguments that are not recipe options

_BUILDERS: dict[str, type] = {}


def register(name: str):
    def wrap(cls: type) -> type:
        _BUILDERS[name] = cls
        return cls
    return wrap


def _options(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p not in _NOT_OPTIONS]


def build_recipe(view_recipe: ViewRecipe, image_size: int, defer: bool = False, decode: bool = False) -> ViewFn:
    """The callable ``(image, box) -> views`` of a recipe and its options (ValueError: unknown).
    ``defer``: a recipe that declares deferred keys (``inputs.Recipe.deferred``) leaves their colour
    ops to the trainer's device and emits each one's parameters as ``<key>@ops``; ``decode`` (with
    ``defer``): it leaves the decoding too, emitting ``<key>@crop`` regions and the ``@encoded`` image
    (``trainer_decode``). Recipes without deferred keys ignore both."""
    cls = _BUILDERS[view_recipe.name]
    known = _options(cls)
    unknown = sorted(set(view_recipe.kwargs) - set(known))
    if unknown:
        raise ValueError(f"view recipe {view_recipe.name!r}: unknown options {unknown}; "
                         f"known: {known}")
    extra = {"defer": defer, "decode": defer and decode} if RECIPES[view_recipe.name].deferred else {}
    return cls(image_size, **view_recipe.kwargs, **extra)


def check_registry() -> None:
    """Every recipe inputs.py declares has its implementation, taking exactly the options it lists."""
    if set(_BUILDERS) != set(RECIPES):
        raise ImportError(f"view recipes without an implementation: {sorted(set(RECIPES) - set(_BUILDERS))}")
    for name, cls in _BUILDERS.items():
        if set(RECIPES[name].options) != set(_options(cls)):
            raise ImportError(f"view recipe {name!r}: inputs.RECIPES lists options {RECIPES[name].options}, "
                              f"its implementation takes {_options(cls)}")
        for flag in ("defer", "decode"):  # what build_recipe passes to a recipe with deferred keys
            takes = flag in inspect.signature(cls).parameters
            if takes != bool(RECIPES[name].deferred):
                raise ImportError(f"view recipe {name!r}: declares deferred keys {RECIPES[name].deferred}, "
                                  f"its implementation {'takes' if takes else 'lacks'} {flag}")
