"""The merge-method registry: methods are found by name and declare their parameters.

A method is a pure function over the deltas of ONE tensor::

    fn(deltas: list[Tensor], weights: list[float], *, base: Tensor, rngs: list[torch.Generator] | None, **params) -> Tensor

``deltas`` are fp32 task-vector tensors of the same shape (one per model, in a canonical order), ``weights`` the
per-model weights, ``base`` the base tensor (read-only), ``rngs`` one seeded generator per model for random
methods. It returns the merged delta; the caller adds ``scale * merged`` to the base. No Ultralytics, no I/O.

``Method.apply`` returns ``base + alpha · merged`` itself; a method registered with ``fused=`` computes that in one
streaming pass (the base read once, no full-size intermediate), the others fall back to ``fn`` plus one addition.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import TaskVecError

MethodFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Param:
    """A declared method parameter: name, default, type and allowed range."""

    name: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def coerce(self, value: Any, method: str) -> Any:
        kind = type(self.default)
        try:
            value = kind(value) if kind is not bool else _to_bool(value)
        except (TypeError, ValueError) as e:
            raise TaskVecError(f"{method}: {self.name} must be {kind.__name__}, got {value!r}.") from e
        if isinstance(value, float) and not math.isfinite(value):
            raise TaskVecError(f"{method}: {self.name} must be finite, got {value}.")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise TaskVecError(f"{method}: {self.name}={value} is outside [{self.low}, {self.high}].")
        if self.choices is not None and value not in self.choices:
            raise TaskVecError(f"{method}: {self.name}={value!r} is not one of {', '.join(map(str, self.choices))}.")
        return value


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(value)
    return bool(value)


@dataclass(frozen=True)
class Method:
    """A registered merge method."""

    name: str
    fn: MethodFn
    doc: str
    paper: str
    params: tuple[Param, ...] = ()
    random: bool = False
    min_models: int = 1
    max_models: int | None = None
    stat_weights: Callable[[list[float], Mapping[str, Any]], list[float]] = field(default=lambda w, p: list(w))
    prepare_weights: Callable[[list[float], Mapping[str, Any]], list[float]] = field(default=lambda w, p: list(w))
    check: Callable[[Mapping[str, Any]], str | None] | None = None
    fused: MethodFn | None = None
    grouped: Callable[[Mapping[str, Any]], bool] | None = None

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in, types coerced, ranges checked (also across parameters, by ``check``); unknown names
        answered with close matches."""
        known = {p.name: p for p in self.params}
        for name in given:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else (f"; it takes {', '.join(known)}." if known else "; it takes no parameters.")
                raise TaskVecError(f"method {self.name} has no parameter '{name}'{hint}")
        resolved = {n: p.coerce(given[n], self.name) if n in given else p.default for n, p in known.items()}
        problem = self.check(resolved) if self.check else None
        if problem:
            raise TaskVecError(f"{self.name}: {problem}")
        return resolved

    def apply(self, deltas: list[torch.Tensor], weights: list[float], *, base: torch.Tensor, alpha: float = 1.0, **kwargs: Any) -> torch.Tensor:
        """``base + alpha · fn(deltas, weights, ...)`` as a new tensor (inputs untouched); fused methods stream it."""
        if self.fused is not None:
            return self.fused(deltas, weights, base=base, alpha=alpha, **kwargs)
        merged = self.fn(deltas, weights, base=base, **kwargs)
        owned = all(merged.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in (*deltas, base))
        return torch.add(base, merged, alpha=alpha, out=merged if owned else None)  # what the driver does today

    def check_count(self, n: int) -> None:
        if n < self.min_models or (self.max_models is not None and n > self.max_models):
            want = f"exactly {self.min_models}" if self.min_models == self.max_models else f"at least {self.min_models}"
            raise TaskVecError(f"method {self.name} needs {want} models, got {n}.")


_REGISTRY: dict[str, Method] = {}


def register(
    name: str,
    *,
    doc: str,
    paper: str,
    params: Sequence[Param] = (),
    random: bool = False,
    min_models: int = 1,
    max_models: int | None = None,
    stat_weights: Callable | None = None,
    prepare_weights: Callable | None = None,
    check: Callable | None = None,
    fused: MethodFn | None = None,
    grouped: Callable | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding a method to the registry.

    ``stat_weights(weights, params)``: coefficients of the BatchNorm running statistics under ``bn=merge``
    (default: the per-model weights, as task arithmetic; ``mean_stat_weights`` for methods that average).
    ``prepare_weights(weights, params)``: per-model weights derived from parameters *in the order the models were
    given*, before the driver puts the models in canonical order (slerp's ``t`` needs it).
    ``check(params)``: a sentence saying what is wrong with a combination of parameters, or None.
    ``fused(deltas, weights, *, base, alpha, rngs, **params)``: ``base + alpha · fn(...)`` in one streaming pass.
    ``grouped(params)``: True where ``fused`` also takes ``segments=`` (sizes): the deltas and the base are then
    concatenations of small tensors, merged at once exactly as one by one, and ``rngs`` holds one list of
    generators per model, one per tensor (the driver groups small tensors this way: one operation for hundreds).
    """

    def wrap(fn: MethodFn) -> MethodFn:
        extra = {k: v for k, v in (("stat_weights", stat_weights), ("prepare_weights", prepare_weights), ("check", check), ("fused", fused), ("grouped", grouped)) if v}
        _REGISTRY[name] = Method(name, fn, doc, paper, tuple(params), random, min_models, max_models, **extra)
        return fn

    return wrap


def get_method(name: str | Method) -> Method:
    """The method registered under ``name``; a typo is answered with the closest names."""
    if isinstance(name, Method):
        return name
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(sorted(_REGISTRY))}."
        raise TaskVecError(f"unknown merge method '{name}'; {hint}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def mean_stat_weights(weights: list[float], params: Mapping[str, Any]) -> list[float]:
    """BatchNorm-statistics coefficients of methods that average rather than sum: ``w_i / Σw``."""
    total = sum(weights)
    return [w / total for w in weights] if total else list(weights)
