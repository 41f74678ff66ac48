"""Self-supervised methods, one module each, registered by name (DESIGN.md §3)."""
from fgray.methods import mocov2, ppssl  # noqa: F401  (registration side effects)
from fgray.methods.base import Method
from fgray.methods.registry import create_method, method_names, register_method

__all__ = ["Method", "create_method", "method_names", "register_method"]
