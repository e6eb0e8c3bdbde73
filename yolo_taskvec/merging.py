"""Merge task vectors into a base state dict, tensor by tensor (pure tensor code).

``merged = base + scale_part · method(τ_1..τ_n)`` for learned tensors; BatchNorm running statistics follow the
BatchNorm policy (``bn.py`` owns the policies and their arithmetic). Carried (absolute) tensors are copied in.
Vectors are put in a canonical order (by content) first, so the result does not depend on the order they were
given in, and random methods draw from one generator per (seed, tensor, vector content), so a seed reproduces a
merge exactly. ``device=`` runs the arithmetic on that device one tensor at a time (inputs stay where they are;
the merged tensors are left on the device), so a GPU sweep merges on the GPU: its memory holds the merged model plus
one tensor's inputs (the base's and each vector's copy of the tensor being merged) at a time.

Cost: the driver adds little to the method's own arithmetic. Vector ids (the canonical order) are computed once per
vector and cached while its tensors are unchanged (same storage and version counter; in-place edits through
``.data`` or NumPy views are not seen), a part's scale is resolved once per part, and a method's ``apply`` (base +
α·merged in one streaming pass, where the method has one) writes each merged tensor once.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import bn as bn_policy
from .errors import MismatchError, TaskVecError
from .methods import get_method
from .methods import orthogonalize as orthogonalize_deltas
from .methods.registry import Method
from .parts import Layout
from .taskvector import (
    Scale,
    TaskVector,
    check_scale,
    is_bn_stat,
    is_mergeable,
    normalize_scale,
    scale_for,
)


@dataclass
class MergeReport:
    """What a merge did: counts per part, carried tensors, clamped statistics."""

    method: str
    params: dict[str, Any]
    bn: str
    merged: dict[str, int] = field(default_factory=dict)  # part -> tensors merged
    carried: list[str] = field(default_factory=list)
    stats_kept: int = 0
    fresh: frozenset[str] = frozenset()  # keys whose merged tensor is new memory (no input shares it)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "bn": self.bn, "merged": self.merged, "carried": self.carried, "stats_kept": self.stats_kept}


def vector_id(tv: TaskVector) -> str:
    """A cheap content id: shapes and a strided sample of every delta (orders vectors canonically).

    Cached per vector object while its tensors are unchanged (``_signature``), so a sweep pays it once per input.
    """
    signature = _signature(tv)
    cached = _IDS.get(id(tv))
    if cached is not None and cached[0]() is tv and cached[1] == signature:
        return cached[2]
    h = hashlib.sha1()
    for key in sorted(tv.deltas):
        t = tv.deltas[key].reshape(-1)
        step = max(1, t.numel() // 64)
        h.update(key.encode())
        h.update(t[::step][:64].contiguous().cpu().numpy().tobytes())  # .cpu(): vectors on a GPU (swap)
    for key in sorted(tv.absolute):
        h.update(b"abs:" + key.encode())
    vid = h.hexdigest()
    _IDS[id(tv)] = (weakref.ref(tv, lambda _, k=id(tv): _IDS.pop(k, None)), signature, vid)
    return vid


_IDS: dict[int, tuple[weakref.ref, tuple, str]] = {}  # id(vector) -> (weak reference, signature, content id)


def _signature(tv: TaskVector) -> tuple:
    """What identifies a vector's tensors without reading them: keys, storages, in-place version counters."""
    return (tuple((k, t.data_ptr(), t._version, t.shape) for k, t in tv.deltas.items()), tuple(tv.absolute))


def _rng(seed: int, key: str, vid: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}|{key}|{vid}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = [check_scale(w, "model weight") for w in weights]
    if len(weights) != n:
        raise TaskVecError(f"got {len(weights)} per-model weights for {n} models.")
    return weights


def merge_states(
    base: Mapping[str, torch.Tensor],
    vectors: Sequence[TaskVector],
    method: str | Method = "task_arithmetic",
    *,
    weights: Sequence[float] | None = None,
    scale: Scale = 1.0,
    params: Mapping[str, Any] | None = None,
    bn: str = bn_policy.DEFAULT,
    seed: int = 0,
    layout: Layout | None = None,
    orthogonalize: bool = False,
    device: str | torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """The merged fp32 state dict (base keys, plus carried keys) and a report.

    ``orthogonalize``: before the method, remove from each vector's learned tensor its projection on the others'.
    ``device``: where the arithmetic runs and the merged tensors are left (default: where the inputs are).
    """
    if not vectors:
        raise TaskVecError("no task vectors to merge.")
    method = get_method(method)
    method.check_count(len(vectors))
    resolved = method.resolve(params or {})
    scale = normalize_scale(scale)
    bn = bn_policy.check_policy(bn)
    weights = method.prepare_weights(check_weights(weights, len(vectors)), resolved)
    ids = [vector_id(v) for v in vectors]
    order = sorted(range(len(vectors)), key=lambda i: ids[i])
    vectors, weights, vids = [vectors[i] for i in order], [weights[i] for i in order], [ids[i] for i in order]
    report = MergeReport(method.name, resolved, bn)
    device = torch.device(device) if device is not None else None
    part_of = layout.part_of if layout else (lambda k: "other")  # noqa: E731
    scales: dict[str, float] = {}  # part -> its scale, resolved once per part

    def scale_of(part: str) -> float:
        if part not in scales:
            scales[part] = scale_for(part, scale)
        return scales[part]

    out = dict(base)
    keys = sorted({k for v in vectors for k in v.deltas})
    stats = []
    fresh = []
    for key in keys:
        if key not in base:
            raise MismatchError(f"task vector tensor {key} has no counterpart in the base.")
        b = base[key]
        if not is_mergeable(key, b):
            continue
        if is_bn_stat(key):
            stats.append(key)
            continue
        if device is not None and b.device != device:
            b = b.to(device)
        ds = [_delta_for(v, key, b) for v in vectors]
        part = part_of(key)
        rngs = [_rng(seed, key, vid) for vid in vids] if method.random else None
        if orthogonalize:
            ds = orthogonalize_deltas(ds)
        out[key] = _apply(method, ds, weights, b, scale_of(part), rngs, resolved)
        fresh.append(key)
        report.merged[part] = report.merged.get(part, 0) + 1
    stat_w = method.stat_weights(weights, resolved)
    merged_stats = bn_policy.merge_statistics(
        bn,
        {k: (base[k].to(device) if device is not None else base[k]) for k in stats},
        stats,
        lambda k: [_delta_for(v, k, base[k], device) if k in v.deltas else None for v in vectors],
        stat_w,
        lambda k: scale_of(part_of(k)),
    )
    out.update(merged_stats)
    fresh += merged_stats
    report.stats_kept = len(stats) - len(merged_stats)
    for v in vectors:
        for key, t in v.absolute.items():
            if key in report.carried and not torch.equal(out[key].cpu(), t.cpu()):
                raise MismatchError(f"two vectors carry different absolute values of {key}; merge different class sets with classes=union.")
            out[key] = t.to(device) if device is not None else t
            if key not in report.carried:
                report.carried.append(key)
    report.fresh = frozenset(fresh).difference(report.carried)
    return out, report


def _apply(method: Method, ds: list[torch.Tensor], weights: Sequence[float], b: torch.Tensor, alpha: float, rngs: list | None, params: Mapping[str, Any]) -> torch.Tensor:
    """``b + alpha · method(ds)`` as a new tensor: the method's own ``apply`` where it has one (one streaming pass),
    else its merged delta added to the base (into the method's buffer when it returned a new one)."""
    apply = getattr(method, "apply", None)
    if apply is not None:
        return apply(ds, list(weights), base=b, alpha=alpha, rngs=rngs, **params)
    merged = method.fn(ds, list(weights), base=b, rngs=rngs, **params)
    owned = all(merged.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in (*ds, b))
    return torch.add(b, merged, alpha=alpha, out=merged if owned else None)


def _delta_for(v: TaskVector, key: str, b: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    d = v.deltas.get(key)
    if d is None:
        return torch.zeros_like(b, dtype=torch.float32, device=device or b.device)
    if d.shape != b.shape:
        raise MismatchError(f"task vector tensor {key} has shape {tuple(d.shape)}, the base {tuple(b.shape)}.")
    target = device or b.device
    return d if d.dtype == torch.float32 and d.device == target else d.to(target, torch.float32)
