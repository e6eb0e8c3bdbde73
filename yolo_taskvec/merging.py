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
α·merged in one streaming pass, where the method has one) writes each merged tensor once. Small learned fp32 CPU
tensors (up to ``GROUP_MAX`` entries; hundreds in a YOLO model) are merged together where the method declares
``grouped``: concatenated, in runs of up to ``GROUP_BATCH`` entries, into buffers reused across runs, merged as one
tensor with per-tensor cut-offs and generators (bit for bit what one by one gives), and returned as views of one
new buffer per run (non-overlapping: ``torch.save`` and safetensors keep them apart). BatchNorm statistics of one
scale are merged together likewise (``bn``). On CPU, the merged tensors are cut from one mapping per merge advised
for transparent huge pages (``memory.arena``), each with its own storage.
"""

from __future__ import annotations

import hashlib
import operator
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import bn as bn_policy
from .errors import MismatchError, TaskVecError
from .methods import get_method, memory
from .methods import orthogonalize as orthogonalize_deltas
from .methods.memory import scratch
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
    """What identifies a vector's tensors without reading them: keys, storages, in-place version counters, shapes
    (read with ``map``: no Python frame per tensor)."""
    values = tuple(tv.deltas.values())
    return tuple(tv.deltas), tuple(map(torch.Tensor.data_ptr, values)), tuple(map(_VERSION, values)), tuple(map(_SHAPE, values)), tuple(tv.absolute)


_VERSION, _SHAPE = operator.attrgetter("_version"), operator.attrgetter("shape")


def _rng(seed: int, key: str, vid: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}|{key}|{vid}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class _Generators(Sequence):
    """The generators ``_rng(seed, key, vid)`` of a run of keys, made when read (each holds 5 KB of state)."""

    def __init__(self, seed: int, keys: list[str], vid: str):
        self.seed, self.keys, self.vid = seed, keys, vid

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> torch.Generator:
        return _rng(self.seed, self.keys[i], self.vid)


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
    grouped = method.grouped is not None and method.grouped(resolved) and not orthogonalize
    learned: list[tuple[str, str]] = []  # (key, part) merged one by one
    small: dict[str, list[str]] = {}  # part -> small learned tensors, merged together
    for key in keys:
        b = base.get(key)
        if b is None:
            raise MismatchError(f"task vector tensor {key} has no counterpart in the base.")
        if not is_mergeable(key, b):
            continue
        if is_bn_stat(key):
            stats.append(key)
            continue
        part = part_of(key)
        if grouped and b.numel() <= GROUP_MAX and b.dtype == torch.float32 and b.is_cpu and (device is None or device.type == "cpu"):
            small.setdefault(part, []).append(key)
        else:
            learned.append((key, part))
    batches = {part: memory.runs(group, [base[k].numel() for k in group], GROUP_BATCH) for part, group in small.items()}
    with memory.arena(_reserve(base, learned, batches, device)):  # the outputs on huge pages (CPU)
        for key, part in learned:
            b = base[key] if device is None or base[key].device == device else base[key].to(device)
            ds = [_delta_for(v, key, b) for v in vectors]
            rngs = [_rng(seed, key, vid) for vid in vids] if method.random else None
            if orthogonalize:
                ds = orthogonalize_deltas(ds)
            out[key] = _apply(method, ds, weights, b, scale_of(part), rngs, resolved)
            fresh.append(key)
            report.merged[part] = report.merged.get(part, 0) + 1
        for part, runs in batches.items():
            for batch in runs:
                out.update(_apply_group(method, batch, base, vectors, weights, scale_of(part), vids, seed, resolved))
            fresh += small[part]
            report.merged[part] = report.merged.get(part, 0) + len(small[part])
    stat_w = method.stat_weights(weights, resolved)
    merged_stats = bn_policy.merge_statistics(
        bn,
        {k: (base[k].to(device) if device is not None else base[k]) for k in stats},
        stats,
        lambda k: _stat_deltas(vectors, k, base[k], device),
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


GROUP_MAX = 1 << 14  # learned tensors up to this many entries (fp32, CPU) are merged together, where the method can
GROUP_BATCH = 1 << 15  # entries per group (one chunk of the streaming methods; its n + 1 input buffers are reused)


def _reserve(base: Mapping[str, torch.Tensor], learned: list[tuple[str, str]], batches: Mapping[str, list[list[str]]], device: torch.device | None) -> int:
    """Bytes of the (fp32) outputs that ``memory.empty`` cuts from the merge's arena (``memory.arena_size``)."""
    if device is not None and device.type != "cpu":
        return 0
    return memory.arena_size([base[k].numel() * 4 for k, _ in learned] + [sum(base[k].numel() for k in batch) * 4 for runs in batches.values() for batch in runs])


def _apply_group(method: Method, keys: list[str], base: Mapping[str, torch.Tensor], vectors: Sequence[TaskVector], weights: Sequence[float], alpha: float, vids: list[str], seed: int, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Small tensors merged at once: the base's and each vector's tensors concatenated (into reused buffers), the
    method run over them with their sizes (``segments``; random methods get each tensor's own generator, as one by
    one), the result split into views of one new buffer."""
    like = [base[k] for k in keys]
    sizes = [t.numel() for t in like]
    inputs = scratch("group", 1 + len(vectors), sum(sizes), torch.float32, like[0].device)  # reused: no page faults
    b = torch.cat([memory.flat(t) for t in like], out=inputs[0])
    ds = [torch.cat(_flat_deltas(v, keys, like), out=row) for v, row in zip(vectors, inputs[1:])]
    rngs = [_Generators(seed, keys, vid) for vid in vids] if method.random else None
    merged = method.apply(ds, list(weights), base=b, alpha=alpha, rngs=rngs, segments=sizes, **params)
    return dict(zip(keys, memory.views(merged, like)))


def _flat_deltas(v: TaskVector, keys: list[str], like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``v``'s deltas of ``keys`` flattened, as ``_delta_for`` gives them (zeros where missing, fp32, shapes checked)."""
    return [memory.flat(_delta_for(v, key, b)) for key, b in zip(keys, like)]


def _stat_deltas(vectors: Sequence[TaskVector], key: str, b: torch.Tensor, device: torch.device | None) -> list[torch.Tensor | None]:
    """Each vector's delta of a statistic on ``device`` (None where it has none), as ``_delta_for`` gives it."""
    return [_delta_for(v, key, b, device) if key in v.deltas else None for v in vectors]


def _delta_for(v: TaskVector, key: str, b: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    d = v.deltas.get(key)
    if d is None:
        return torch.zeros_like(b, dtype=torch.float32, device=device or b.device)
    if d.shape != b.shape:
        raise MismatchError(f"task vector tensor {key} has shape {tuple(d.shape)}, the base {tuple(b.shape)}.")
    target = device or b.device
    return d if d.dtype == torch.float32 and d.device == target else d.to(target, torch.float32)
