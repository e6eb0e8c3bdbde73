"""The task vector: a mapping ``name -> delta`` over one base, plus metadata, with arithmetic.

Pure tensor code: nothing here knows about Ultralytics. ``τ = θ_tuned − θ_base`` is stored in fp32 for every
floating-point tensor the two models share (BatchNorm running statistics included; how they are used is the
BatchNorm policy's business at merge time). Tensors of the tuned model that have no counterpart in the base, or a
different shape, can be *carried* as absolute values in ``absolute``; they are never added, negated or scaled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .bn import is_stat as is_bn_stat  # noqa: F401  (re-exported: the core's name for BatchNorm statistics)
from .errors import MismatchError, TaskVecError
from .parts import (
    Layout,
    check_part_mapping,
    check_selection,
    matches,
    resolve_part_value,
)

MAX_ABS_SCALE = 10.0
Scale = float | Mapping[str, float]


def is_mergeable(key: str, tensor: torch.Tensor) -> bool:
    """Floating-point tensors take part in arithmetic; ``num_batches_tracked`` and integer buffers never do."""
    return tensor.is_floating_point() and not key.endswith("num_batches_tracked")


def check_scale(value: Any, what: str = "scale") -> float:
    """A finite scale within ``±MAX_ABS_SCALE``, as float."""
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise TaskVecError(f"{what} must be a number, got {value!r}.") from e
    if not math.isfinite(value):
        raise TaskVecError(f"{what} must be finite, got {value}.")
    if abs(value) > MAX_ABS_SCALE:
        raise TaskVecError(f"{what} {value:g} is outside [-{MAX_ABS_SCALE:g}, {MAX_ABS_SCALE:g}]; task vectors are meant to be scaled by small factors.")
    return value


def normalize_scale(scale: Scale) -> Scale:
    """Validate a float or a per-part mapping of scales."""
    if isinstance(scale, Mapping):
        mapping = check_part_mapping(scale)
        return {k: check_scale(v, f"scale for part '{k}'") for k, v in mapping.items()}
    return check_scale(scale)


def scale_for(part: str, scale: Scale) -> float:
    """The scale that applies to ``part``."""
    return resolve_part_value(part, scale) if isinstance(scale, Mapping) else float(scale)


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors (names, shapes and fp32 values; ``num_batches_tracked`` excluded)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if key.endswith("num_batches_tracked"):
            continue
        t = t.detach().to("cpu", torch.float32 if t.is_floating_point() else torch.int64).contiguous()
        h.update(f"{key}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class TaskVector:
    """``deltas``: fp32 ``tuned − base`` per tensor; ``absolute``: carried tensors; ``meta``: provenance.

    ``meta`` keys used by the library: ``name``, ``base_fingerprint``, ``base_yaml``, ``target_yaml`` (set when
    the tuned architecture differs from the base), ``task``, ``names`` (class names of the tuned model),
    ``parts`` (selection used at extraction), ``ultralytics_version``.
    """

    deltas: dict[str, torch.Tensor]
    absolute: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_states(
        cls,
        base: Mapping[str, torch.Tensor],
        tuned: Mapping[str, torch.Tensor],
        *,
        layout: Layout | None = None,
        parts: Iterable[str] | None = None,
        unmatched: str = "error",
        meta: Mapping[str, Any] | None = None,
        tuned_name: str = "tuned",
    ) -> TaskVector:
        """``τ = tuned − base`` over the selected parts, from two state dicts."""
        if unmatched not in ("error", "carry"):
            raise TaskVecError(f"unmatched must be 'error' or 'carry', got {unmatched!r}.")
        selection = check_selection(parts) if parts is not None else None
        missing = [k for k, t in base.items() if is_mergeable(k, t) and k not in tuned]
        if missing:
            raise MismatchError(f"{tuned_name} lacks {len(missing)} tensors of the base (e.g. {missing[0]}); it is not a fine-tune of this base architecture.")
        deltas, absolute = {}, {}
        for key, t in tuned.items():
            if not is_mergeable(key, t):
                continue
            part = layout.part_of(key) if layout else "other"
            if not matches(key, part, selection):
                continue
            b = base.get(key)
            if b is not None and b.shape == t.shape:
                deltas[key] = t.detach().float() - b.detach().float()
            else:
                absolute[key] = t.detach().float().clone()
        if absolute and unmatched == "error":
            key = next(iter(absolute))
            raise MismatchError(
                f"{tuned_name} has {len(absolute)} tensors with no same-shape counterpart in the base (e.g. {key}); "
                "pass unmatched=carry to carry them as absolute values, or classes=union to merge different class sets."
            )
        return cls(deltas, absolute, {**(meta or {}), "parts": selection})

    # ------------------------------------------------------------------ views
    @property
    def layout(self) -> Layout | None:
        yaml = self.meta.get("target_yaml") or self.meta.get("base_yaml")
        return Layout.from_yaml(yaml) if yaml else None

    def part_of(self, key: str) -> str:
        layout = self.layout
        return layout.part_of(key) if layout else "other"

    def keys(self) -> list[str]:
        return sorted({*self.deltas, *self.absolute})

    def numel(self) -> int:
        return sum(t.numel() for t in self.deltas.values()) + sum(t.numel() for t in self.absolute.values())

    def _like(self, deltas: dict[str, torch.Tensor], absolute: dict[str, torch.Tensor] | None = None, **meta: Any) -> TaskVector:
        return type(self)(deltas, dict(self.absolute) if absolute is None else absolute, {**self.meta, **meta})

    def select(self, parts: Iterable[str]) -> TaskVector:
        """The vector restricted to some parts and/or key globs."""
        selection = check_selection(parts)
        keep = lambda k: matches(k, self.part_of(k), selection)  # noqa: E731
        return self._like({k: v for k, v in self.deltas.items() if keep(k)}, {k: v for k, v in self.absolute.items() if keep(k)}, parts=selection)

    def scaled(self, scale: Scale) -> TaskVector:
        """Multiply deltas by a float or a per-part mapping; carried tensors are not scaled."""
        scale = normalize_scale(scale)
        return self._like({k: v * scale_for(self.part_of(k), scale) for k, v in self.deltas.items()})

    # ------------------------------------------------------------------ arithmetic
    def _check_same_base(self, other: TaskVector) -> None:
        a, b = self.meta.get("base_fingerprint"), other.meta.get("base_fingerprint")
        if a and b and a != b:
            raise MismatchError(f"task vectors '{self.meta.get('name', '?')}' and '{other.meta.get('name', '?')}' were extracted from different bases (fingerprints {a[:12]} vs {b[:12]}).")

    def __add__(self, other: Any) -> TaskVector:
        if isinstance(other, (int, float)) and other == 0:  # sum() starts from 0
            return self
        if not isinstance(other, TaskVector):
            return NotImplemented
        self._check_same_base(other)
        deltas = dict(self.deltas)
        for k, v in other.deltas.items():
            if k in deltas and deltas[k].shape != v.shape:
                raise MismatchError(f"tensor {k} has shape {tuple(deltas[k].shape)} in one vector and {tuple(v.shape)} in the other.")
            deltas[k] = deltas[k] + v if k in deltas else v
        absolute = dict(self.absolute)
        for k, v in other.absolute.items():
            if k in absolute and not torch.equal(absolute[k], v):
                raise MismatchError(
                    f"both vectors carry their own absolute value of {k}; they cannot be added "
                    "(merge fine-tunes with different class sets with classes=union)."
                )
            absolute[k] = v
        for k in set(deltas) & set(absolute):
            raise MismatchError(f"{k} is a delta in one vector and a carried absolute tensor in the other.")
        ta, tb = self.meta.get("target_yaml"), other.meta.get("target_yaml")
        if ta and tb and ta != tb:
            raise MismatchError("the two vectors carry different target architectures (their heads differ).")
        carrier = self if (ta or self.absolute) else other
        meta = {**self.meta, "name": f"{self.meta.get('name', 'a')}+{other.meta.get('name', 'b')}"}
        for key in ("target_yaml", "task", "names"):
            if key in carrier.meta:
                meta[key] = carrier.meta[key]
        return type(self)(deltas, absolute, meta)

    __radd__ = __add__

    def __neg__(self) -> TaskVector:
        if self.absolute:
            raise TaskVecError(f"cannot negate '{self.meta.get('name', 'vector')}': it carries {len(self.absolute)} absolute tensors (e.g. {next(iter(self.absolute))}); select parts without them first.")
        return self._like({k: -v for k, v in self.deltas.items()}, name=f"-{self.meta.get('name', 'vector')}")

    def __sub__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self, alpha: Any) -> TaskVector:
        if isinstance(alpha, TaskVector):
            return NotImplemented
        return self.scaled(alpha)

    __rmul__ = __mul__

    def __truediv__(self, alpha: Any) -> TaskVector:
        alpha = check_scale(alpha, "divisor")
        if alpha == 0:
            raise TaskVecError("cannot divide a task vector by zero.")
        return self.scaled(1.0 / alpha)

    def __repr__(self) -> str:
        name = self.meta.get("name", "vector")
        carried = f", {len(self.absolute)} carried" if self.absolute else ""
        return f"TaskVector({name!r}, {len(self.deltas)} deltas{carried}, {self.numel():,} values)"
