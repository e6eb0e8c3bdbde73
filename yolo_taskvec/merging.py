"""Merge task vectors into a base state dict, tensor by tensor (pure tensor code).

``merged = base + scale_part · method(τ_1..τ_n)`` for learned tensors; BatchNorm running statistics follow the
BatchNorm policy (``bn.py`` owns the policies and their arithmetic). Carried (absolute) tensors are copied in.
Vectors are put in a canonical order (by content) first, so the result does not depend on the order they were
given in, and random methods draw from one generator per (seed, tensor, vector content), so a seed reproduces a
merge exactly. ``device=`` runs the arithmetic on that device one tensor at a time (inputs stay where they are;
the merged tensors are left on the device), so a GPU sweep merges on the GPU with about one model of extra memory.
"""

from __future__ import annotations

import hashlib
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

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "bn": self.bn, "merged": self.merged, "carried": self.carried, "stats_kept": self.stats_kept}


def vector_id(tv: TaskVector) -> str:
    """A cheap content id: shapes and a strided sample of every delta (orders vectors canonically)."""
    h = hashlib.sha1()
    for key in sorted(tv.deltas):
        t = tv.deltas[key].reshape(-1)
        step = max(1, t.numel() // 64)
        h.update(key.encode())
        h.update(t[::step][:64].contiguous().cpu().numpy().tobytes())  # .cpu(): vectors on a GPU (swap)
    for key in sorted(tv.absolute):
        h.update(b"abs:" + key.encode())
    return h.hexdigest()


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
    part_of = (lambda k: layout.part_of(k)) if layout else (lambda k: "other")  # noqa: E731

    out = dict(base)
    keys = sorted({k for v in vectors for k in v.deltas})
    stats = []
    for key in keys:
        if key not in base:
            raise MismatchError(f"task vector tensor {key} has no counterpart in the base.")
        b = base[key]
        if not is_mergeable(key, b):
            continue
        if is_bn_stat(key):
            stats.append(key)
            continue
        b = b.to(device) if device is not None else b
        ds = [_delta_for(v, key, b) for v in vectors]
        part = part_of(key)
        rngs = [_rng(seed, key, vid) for vid in vids] if method.random else None
        if orthogonalize:
            ds = orthogonalize_deltas(ds)
        merged = method.fn(ds, list(weights), base=b, rngs=rngs, **resolved)
        owned = all(merged.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in (*ds, b))
        out[key] = torch.add(b, merged, alpha=scale_for(part, scale), out=merged if owned else None)  # reuse the method's buffer
        report.merged[part] = report.merged.get(part, 0) + 1
    stat_w = method.stat_weights(weights, resolved)
    merged_stats = bn_policy.merge_statistics(
        bn,
        {k: (base[k].to(device) if device is not None else base[k]) for k in stats},
        stats,
        lambda k: [_delta_for(v, k, base[k], device) if k in v.deltas else None for v in vectors],
        stat_w,
        lambda k: scale_for(part_of(k), scale),
    )
    out.update(merged_stats)
    report.stats_kept = len(stats) - len(merged_stats)
    for v in vectors:
        for key, t in v.absolute.items():
            if key in report.carried and not torch.equal(out[key].cpu(), t.cpu()):
                raise MismatchError(f"two vectors carry different absolute values of {key}; merge different class sets with classes=union.")
            out[key] = t.to(device) if device is not None else t
            if key not in report.carried:
                report.carried.append(key)
    return out, report


def _delta_for(v: TaskVector, key: str, b: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    d = v.deltas.get(key)
    if d is None:
        return torch.zeros_like(b, dtype=torch.float32, device=device or b.device)
    if d.shape != b.shape:
        raise MismatchError(f"task vector tensor {key} has shape {tuple(d.shape)}, the base {tuple(b.shape)}.")
    return d.to(device or b.device, torch.float32)
