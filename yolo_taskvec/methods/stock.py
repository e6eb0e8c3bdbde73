"""Model Stock: interpolate between the base and the average of the fine-tunes, by the angle between them."""

from __future__ import annotations

import torch

from .arithmetic import average_weights, weighted_sum
from .registry import Param, mean_stat_weights, register

EPS = 1e-6  # mergekit: clamp of the norms' product, and of |1 + (N−1)·cos| (below it, the base is kept)


def stock_ratio(deltas: list[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    """Model Stock's interpolation ratio ``t = N·cos / (1 + (N−1)·cos)``, one per tensor (shape (1, 1)) or per row.

    ``cos`` is the mean pairwise cosine between the task vectors (the fine-tunes minus the base), each clamped to
    [−1, 1] with the norms' product clamped at 1e-6; where ``|1 + (N−1)·cos| < 1e-6`` the ratio is 0 (the base is
    kept), as mergekit's ``model_stock``. Rows: the (out, in·k·k) matrix view (``filter_wise``); 1-D tensors are one
    row.
    """
    rows = [d.reshape(d.shape[0], -1) if filter_wise and d.dim() >= 2 else d.reshape(1, -1) for d in deltas]
    norms = [torch.linalg.vector_norm(r, dim=-1) for r in rows]  # once per vector, not once per pair
    cosines = []
    for i, a in enumerate(rows):
        for j in range(i + 1, len(rows)):
            norm_product = norms[i] * norms[j]
            cosines.append(((a * rows[j]).sum(dim=-1) / norm_product.clamp(min=EPS)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    count = len(deltas)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < EPS
    return torch.where(singular, torch.zeros_like(cos), count * cos / torch.where(singular, torch.ones_like(denominator), denominator))


@register(
    "model_stock",
    doc="Model Stock: base + t·(mean of the task vectors), t = N·cos/(1+(N−1)·cos) from their mean pairwise angle (per tensor or per filter).",
    paper="Jang, Yun & Han 2024, Model Stock: All we need is just a few fine-tuned models (ECCV)",
    params=(
        Param(
            "filter_wise",
            False,
            "one ratio per output filter (row of the (out, in·k·k) matrix) instead of one per tensor; for 2-D weights "
            "mergekit's filter_wise, for conv weights mergekit would use rows of the last (kernel) axis",
        ),
    ),
    min_models=2,
    stat_weights=mean_stat_weights,
)
def model_stock(deltas: list[torch.Tensor], weights: list[float], *, filter_wise: bool = False, **_: object) -> torch.Tensor:
    """``t · Σ w_i τ_i / Σ w_i`` (mergekit's ``model_stock`` returns ``t·mean θ_i + (1−t)·θ_0``, the same model; it
    ignores weights, which here only weight the average, not the angles).

    BatchNorm statistics (``bn=merge``): the soup's coefficients ``w_i/Σw``, i.e. the t = 1 end of the interpolation.
    The ratio t of a layer is known only to its weight tensors, so the running statistics cannot follow it; when t is
    well below 1 (task vectors far from parallel), ``bn=recalibrate`` re-estimates them for the merged weights.
    """
    t = stock_ratio(deltas, filter_wise)
    mean = weighted_sum(deltas, average_weights(weights))
    rows = mean.reshape(t.shape[0], -1)
    return rows.mul_(t).reshape(deltas[0].shape)
