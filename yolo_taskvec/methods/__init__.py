"""Merge methods: pure functions over tensors, found by name (see ``registry``)."""

from . import arithmetic  # noqa: F401  (registers)
from .registry import Method, Param, get_method, method_names, register

__all__ = ["Method", "Param", "get_method", "method_names", "register"]
