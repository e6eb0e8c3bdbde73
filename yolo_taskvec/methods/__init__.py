"""Merge methods: pure functions over tensors, found by name (see ``registry``)."""

from . import arithmetic, masks, slerp, sparse, spectral, stock  # noqa: F401  (registers)
from .orthogonal import orthogonalize
from .registry import Method, Param, get_method, method_names, register

__all__ = ["Method", "Param", "get_method", "method_names", "orthogonalize", "register"]
