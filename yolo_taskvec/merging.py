"""Merge task vectors into a base state dict, tensor by tensor (pure tensor code).

``merged = base + scale_part · method(τ_1..τ_n)`` for learned tensors; BatchNorm running statistics follow
the BatchNorm policy:

* ``merge``: statistics take the method's linear coefficients (task arithmetic on means and variances);
  a variance pushed to zero or below (negation, extrapolation) is refused with a clear error;
* ``geometric``: means as in ``merge``, variances interpolated in log space
  (``var = var_base · Π (var_i / var_base)^(c_i·scale)``), so they stay positive for any scale;
* ``base``: the base's statistics are kept;
* ``recalibrate``: like ``base`` here; the adapter then re-estimates them on images (``bn.recalibrate``).

Carried (absolute) tensors are copied in. Vectors are put in a canonical order (by content) first, so the result
does not depend on the order they were given in, and random methods draw from one generator per (seed, tensor,
vector content), so a seed reproduces a merge exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import MismatchError, TaskVecError
from .methods import get_method, orthogonalize as orthogonalize_deltas
from .methods.registry import Method
from .parts import Layout
from .taskvector import Scale, TaskVector, check_scale, is_bn_stat, is_mergeable, normalize_scale, scale_for

BN_POLICIES = ("merge", "geometric", "base", "recalibrate")
DEFAULT_BN = "merge"


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


def check_bn_policy(bn: str) -> str:
    if bn not in BN_POLICIES:
        raise TaskVecError(f"unknown BatchNorm policy '{bn}'; choose one of {', '.join(BN_POLICIES)}.")
    return bn


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
    bn: str = DEFAULT_BN,
    seed: int = 0,
    layout: Layout | None = None,
    orthogonalize: bool = False,
) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """The merged fp32 state dict (base keys, plus carried keys) and a report.

    ``orthogonalize``: before the method, remove from each vector's learned tensor its projection on the others'.
    """
    if not vectors:
        raise TaskVecError("no task vectors to merge.")
    method = get_method(method)
    method.check_count(len(vectors))
    resolved = method.resolve(params or {})
    scale = normalize_scale(scale)
    bn = check_bn_policy(bn)
    weights = method.prepare_weights(check_weights(weights, len(vectors)), resolved)
    ids = [vector_id(v) for v in vectors]
    order = sorted(range(len(vectors)), key=lambda i: ids[i])
    vectors, weights, vids = [vectors[i] for i in order], [weights[i] for i in order], [ids[i] for i in order]
    stat_w = method.stat_weights(weights, resolved)
    report = MergeReport(method.name, resolved, bn)

    out = dict(base)
    keys = sorted({k for v in vectors for k in v.deltas})
    for key in keys:
        if key not in base:
            raise MismatchError(f"task vector tensor {key} has no counterpart in the base.")
        b = base[key]
        if not is_mergeable(key, b):
            continue
        ds = [_delta_for(v, key, b) for v in vectors]
        part = layout.part_of(key) if layout else "other"
        lam = scale_for(part, scale)
        if is_bn_stat(key):
            if bn == "geometric" and key.endswith(".running_var"):
                out[key] = _geometric_var(key, b, ds, [lam * c for c in stat_w])
            elif bn in ("merge", "geometric"):
                out[key] = torch.add(b, _weighted(ds, stat_w), alpha=lam)
            else:
                report.stats_kept += 1
            continue
        rngs = [_rng(seed, key, vid) for vid in vids] if method.random else None
        if orthogonalize:
            ds = orthogonalize_deltas(ds)
        merged = method.fn(ds, list(weights), base=b, rngs=rngs, **resolved)
        owned = all(merged.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in (*ds, b))
        out[key] = torch.add(b, merged, alpha=lam, out=merged if owned else None)  # reuse the method's buffer
        report.merged[part] = report.merged.get(part, 0) + 1
    _check_running_var(out, keys)
    for v in vectors:
        for key, t in v.absolute.items():
            if key in report.carried and not torch.equal(out[key], t):
                raise MismatchError(f"two vectors carry different absolute values of {key}; merge different class sets with classes=union.")
            out[key] = t
            if key not in report.carried:
                report.carried.append(key)
    return out, report


def _delta_for(v: TaskVector, key: str, b: torch.Tensor) -> torch.Tensor:
    d = v.deltas.get(key)
    if d is None:
        return torch.zeros_like(b, dtype=torch.float32)
    if d.shape != b.shape:
        raise MismatchError(f"task vector tensor {key} has shape {tuple(d.shape)}, the base {tuple(b.shape)}.")
    return d.float()


def _weighted(ds: list[torch.Tensor], ws: list[float]) -> torch.Tensor:
    out = ds[0] * ws[0]
    for d, w in zip(ds[1:], ws[1:]):
        out.add_(d, alpha=w)
    return out


def _geometric_var(key: str, b: torch.Tensor, ds: list[torch.Tensor], coefs: list[float]) -> torch.Tensor:
    log_ratio = torch.zeros_like(b)
    for d, c in zip(ds, coefs):
        var = b + d
        if bool((var <= 0).any()):
            raise TaskVecError(f"bn=geometric needs each vector's running_var to be a variance, but {key} is not positive in one of them (a vector built by subtraction?); use bn=merge or bn=recalibrate.")
        log_ratio.add_(torch.log(var / b), alpha=c)
    return b * torch.exp(log_ratio)


def _check_running_var(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> None:
    bad = [k for k in keys if k.endswith(".running_var") and bool((state[k] <= 0).any())]
    if bad:
        n = sum(int((state[k] <= 0).sum()) for k in bad)
        raise TaskVecError(
            f"these scales make {n} BatchNorm running variances non-positive in {len(bad)} layers (e.g. {bad[0]}); "
            "use smaller scales, bn=geometric (variances in log space), bn=base or bn=recalibrate."
        )
