"""Linear methods: task arithmetic and the uniform soup."""

from __future__ import annotations

import torch

from . import memory
from .registry import mean_stat_weights, register

CHUNK = 1 << 16  # entries per chunk of the fused form: the chunk stays in L2 between its operations


def weighted_sum(deltas: list[torch.Tensor], weights: list[float], out: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ w_i τ_i``, accumulated in place (one pass over each input); into ``out`` where given."""
    out = torch.mul(deltas[0], weights[0], out=out)
    for d, w in zip(deltas[1:], weights[1:]):
        out.add_(d, alpha=w)
    return out


def linear_apply(deltas: list[torch.Tensor], weights: list[float], *, base: torch.Tensor, alpha: float, divisor: float = 1.0, **_: object) -> torch.Tensor:
    """``base + alpha · (Σ w_i τ_i) / divisor`` chunk by chunk: every input read once, the output written once.

    Per entry the same operations as ``torch.add(base, weighted_sum(deltas, weights) / divisor, alpha=alpha)``.
    """
    if base.numel() <= CHUNK:  # one chunk: the driver's own operations, without the slicing
        out = weighted_sum(deltas, weights, out=memory.empty_like(deltas[0]))
        if divisor != 1.0:
            out.div_(divisor)
        return torch.add(base, out, alpha=alpha, out=out)
    b = base.reshape(-1)
    flat = [d.reshape(-1) for d in deltas]
    out = memory.empty_like(b)
    for start in range(0, b.numel(), CHUNK):
        stop = min(b.numel(), start + CHUNK)
        target = weighted_sum([d[start:stop] for d in flat], weights, out=out[start:stop])
        if divisor != 1.0:
            target.div_(divisor)
        torch.add(b[start:stop], target, alpha=alpha, out=target)
    return out.reshape(base.shape)


def average_weights(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights] if total else [0.0] * len(weights)


@register(
    "task_arithmetic",
    doc="Sum of the weighted task vectors.",
    paper="Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR)",
    fused=linear_apply,
    grouped=lambda params: True,  # elementwise: segments change nothing
)
def task_arithmetic(deltas: list[torch.Tensor], weights: list[float], **_: object) -> torch.Tensor:
    """``Σ w_i τ_i``; one vector of weight 1 is returned as it is (apply and swap: one pass over memory less)."""
    if len(deltas) == 1 and weights[0] == 1.0:
        return deltas[0]
    return weighted_sum(deltas, weights)


def average_apply(deltas: list[torch.Tensor], weights: list[float], **kwargs: object) -> torch.Tensor:
    return linear_apply(deltas, average_weights(weights), **kwargs)



@register(
    "average",
    doc="Uniform (or weighted) soup of the fine-tunes: base + Σ w_i τ_i / Σ w_i.",
    paper="Wortsman et al. 2022, Model soups (ICML)",
    stat_weights=mean_stat_weights,
    fused=average_apply,
    grouped=lambda params: True,
)
def average(deltas: list[torch.Tensor], weights: list[float], **_: object) -> torch.Tensor:
    return weighted_sum(deltas, average_weights(weights)) if sum(weights) else torch.zeros_like(deltas[0])
