"""Linear methods: task arithmetic and the uniform soup."""

from __future__ import annotations

import torch

from .registry import mean_stat_weights, register


def weighted_sum(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """``Σ w_i τ_i``, accumulated in place (one pass over each input)."""
    out = deltas[0] * weights[0]
    for d, w in zip(deltas[1:], weights[1:]):
        out.add_(d, alpha=w)
    return out


@register("task_arithmetic", doc="Sum of the weighted task vectors.", paper="Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR)")
def task_arithmetic(deltas: list[torch.Tensor], weights: list[float], **_: object) -> torch.Tensor:
    """``Σ w_i τ_i``; one vector of weight 1 is returned as it is (apply and swap: one pass over memory less)."""
    if len(deltas) == 1 and weights[0] == 1.0:
        return deltas[0]
    return weighted_sum(deltas, weights)


@register("average", doc="Uniform (or weighted) soup of the fine-tunes: base + Σ w_i τ_i / Σ w_i.", paper="Wortsman et al. 2022, Model soups (ICML)", stat_weights=mean_stat_weights)
def average(deltas: list[torch.Tensor], weights: list[float], **_: object) -> torch.Tensor:
    total = sum(weights)
    return weighted_sum(deltas, [w / total for w in weights]) if total else torch.zeros_like(deltas[0])
