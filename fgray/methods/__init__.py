"""Self-supervised methods, one module each, registered by name (DESIGN.md §3).

Importing the package is cheap: method modules (torch) load on first ``create_method`` /
``method_class``; their configs are in the torch-free ``fgray.methods.configs``.
"""
from fgray.methods.registry import create_method, method_class, method_names, register_method

__all__ = ["create_method", "method_class", "method_names", "register_method"]
