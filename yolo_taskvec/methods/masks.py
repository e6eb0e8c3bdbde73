"""Mask-based merges: TALL-mask consensus and disjoint (winner-takes-all) selection."""

from __future__ import annotations

import torch

from .arithmetic import weighted_sum
from .registry import Param, mean_stat_weights, register


@register(
    "consensus",
    doc="Task arithmetic restricted to entries that at least k tasks' TALL masks mark (|τ_t| > λ·|τ_MTL − τ_t|).",
    paper="Wang et al. 2024, Localizing Task Information for Improved Model Merging and Compression (ICML)",
    params=(
        Param("k", 2, "minimum number of tasks whose mask must mark an entry (0 keeps all: task arithmetic)", 0, 1000),
        Param("lam", 0.4, "TALL-mask threshold λ (the paper searches 0.2-0.6 per task)", 0.0, 100.0),
    ),
    min_models=2,
)
def consensus(deltas: list[torch.Tensor], weights: list[float], *, k: int = 2, lam: float = 0.4, **_: object) -> torch.Tensor:
    """``τ_MTL · [#{t : m_t} ≥ k]`` with ``τ_MTL = Σ w_t τ_t`` and ``m_t = |w_t τ_t| > λ |τ_MTL − w_t τ_t|``.

    Follows nik-dim/tall_masks ``generate_task_masks`` / ``construct_consensus_mask`` (strict ``>``, so an entry
    no task changed is never marked), with one λ for all tasks instead of the per-task validation search.
    BatchNorm statistics: the kept entries are task arithmetic, so statistics take the task-arithmetic weights.
    """
    mtl = weighted_sum(deltas, weights)
    if k <= 0:
        return mtl
    votes, rest, mine = torch.zeros_like(mtl), torch.empty_like(mtl), torch.empty_like(mtl)
    for d, w in zip(deltas, weights):
        torch.sub(mtl, d, alpha=w, out=rest).abs_().mul_(lam)  # λ |τ_MTL − w τ|
        votes.add_(torch.abs(d, out=mine).mul_(abs(w)).gt_(rest))  # float 0/1 marks (bool kernels are slow)
    return mtl.mul_(votes.ge_(k))


def disjoint_select(deltas: list[torch.Tensor], weights: list[float], *, track: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(merged, winner)``: each entry takes the weighted vector of largest magnitude (the first one on ties);
    ``winner`` (float indices, only with ``track``) says which."""
    out = deltas[0] * weights[0]
    best = out.abs()
    winner = torch.zeros_like(out) if track else None
    wins = torch.empty_like(out)
    for i, (d, w) in enumerate(zip(deltas[1:], weights[1:]), start=1):
        t = d * w
        a = t.abs()
        torch.gt(a, best, out=wins)  # 0/1 float: lerp with it selects exactly, much faster than torch.where
        out.lerp_(t, wins)
        torch.maximum(best, a, out=best)
        if track:
            winner.lerp_(torch.full_like(out, float(i)), wins)
    return out, winner


def disjoint_masks(deltas: list[torch.Tensor], weights: list[float]) -> list[torch.Tensor]:
    """The non-overlapping boolean masks ``disjoint`` selects with, one per vector."""
    _, winner = disjoint_select(deltas, weights, track=True)
    return [winner == i for i in range(len(deltas))]


@register(
    "disjoint",
    doc="Each entry goes to the vector with the largest weighted magnitude (non-overlapping masks).",
    paper="max-magnitude election, cf. Huang et al. 2024, EMR-Merging (NeurIPS) and He et al. 2024, Localize-and-Stitch (disjoint masks)",
    stat_weights=mean_stat_weights,  # every entry keeps ONE model's value, not a sum: statistics are averaged
)
def disjoint(deltas: list[torch.Tensor], weights: list[float], **_: object) -> torch.Tensor:
    return disjoint_select(deltas, weights)[0]
