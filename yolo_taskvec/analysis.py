"""Task-vector analysis: norms per part and layer, sparsity, cosine similarity and sign conflicts (pure tensors)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .taskvector import TaskVector, is_bn_stat

NEAR_ZERO = 1e-6


def _learned(tv: TaskVector) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tv.deltas.items() if not is_bn_stat(k)}


def summarize(tv: TaskVector, near_zero: float = NEAR_ZERO) -> dict[str, Any]:
    """Norm, size and near-zero fraction per part and per layer (learned tensors; BN statistics counted apart)."""
    parts: dict[str, dict[str, float]] = {}
    layers: dict[str, dict[str, float]] = {}
    for key, d in _learned(tv).items():
        sq, n, zeros = float(d.double().pow(2).sum()), d.numel(), int((d.abs() <= near_zero).sum())
        for table, name in ((parts, tv.part_of(key)), (layers, ".".join(key.split(".")[:2]))):
            row = table.setdefault(name, {"sq": 0.0, "numel": 0, "zeros": 0})
            row["sq"] += sq
            row["numel"] += n
            row["zeros"] += zeros
    finish = lambda t: {k: {"norm": math.sqrt(r["sq"]), "numel": r["numel"], "sparsity": r["zeros"] / max(r["numel"], 1)} for k, r in t.items()}  # noqa: E731
    total_sq = sum(r["sq"] for r in parts.values())
    total_n = sum(r["numel"] for r in parts.values())
    total_z = sum(r["zeros"] for r in parts.values())
    return {
        "name": tv.meta.get("name", "vector"),
        "norm": math.sqrt(total_sq),
        "numel": total_n,
        "sparsity": total_z / max(total_n, 1),
        "bn_stats": sum(1 for k in tv.deltas if is_bn_stat(k)),
        "carried": len(tv.absolute),
        "parts": finish(parts),
        "layers": finish(layers),
    }


def cosine(a: TaskVector, b: TaskVector) -> float:
    """Cosine similarity of two vectors over their shared learned tensors."""
    da, db = _learned(a), _learned(b)
    dot = na = nb = 0.0
    for key in set(da) & set(db):
        x, y = da[key].double().reshape(-1), db[key].double().reshape(-1)
        dot += float(x @ y)
        na += float(x @ x)
        nb += float(y @ y)
    return dot / math.sqrt(na * nb) if na and nb else 0.0


def sign_conflict_rate(a: TaskVector, b: TaskVector, near_zero: float = NEAR_ZERO) -> float:
    """Fraction of entries, non-zero in both vectors, whose signs disagree."""
    da, db = _learned(a), _learned(b)
    both = conflict = 0
    for key in set(da) & set(db):
        x, y = da[key], db[key]
        active = (x.abs() > near_zero) & (y.abs() > near_zero)
        both += int(active.sum())
        conflict += int((active & (torch.sign(x) != torch.sign(y))).sum())
    return conflict / both if both else 0.0


def pairwise(vectors: Sequence[TaskVector]) -> list[dict[str, Any]]:
    """Cosine and sign-conflict rate for every pair of vectors."""
    rows = []
    for i, a in enumerate(vectors):
        for b in vectors[i + 1 :]:
            rows.append({"a": a.meta.get("name", "a"), "b": b.meta.get("name", "b"), "cosine": cosine(a, b), "sign_conflicts": sign_conflict_rate(a, b)})
    return rows
