"""Spherical linear interpolation between two fine-tuned models."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import TaskVecError
from .registry import Param, mean_stat_weights, register

COLINEAR = 0.9995  # |cos| above this: the two tensors are (nearly) colinear and slerp falls back to lerp
EPS = 1e-8


def slerp_weights(weights: list[float], params: Mapping[str, Any]) -> list[float]:
    """``t`` refers to the models as given (0: the first, 1: the second): fold it into their weights."""
    t = params["t"]
    return [weights[0] * (1.0 - t), weights[1] * t]


@register(
    "slerp",
    doc="Spherical interpolation between the two fine-tuned tensors (lerp when nearly colinear); t=0 is the first model, t=1 the second.",
    paper="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH); as merged by mergekit (Goddard et al. 2024)",
    params=(Param("t", 0.5, "position between the first (0) and the second (1) model", 0.0, 1.0),),
    min_models=2,
    max_models=2,
    prepare_weights=slerp_weights,
    stat_weights=mean_stat_weights,  # running statistics interpolate linearly with the same (1-t, t)
)
def slerp(deltas: list[torch.Tensor], weights: list[float], *, base: torch.Tensor, **_: object) -> torch.Tensor:
    """Slerp of ``θ_a = base + τ_a`` and ``θ_b = base + τ_b`` at ``t = w_b / (w_a + w_b)``, returned as a delta.

    Follows mergekit's ``slerp`` (normalised directions, lerp above |cos| 0.9995 or for near-zero tensors).
    The models' weights carry ``t`` (see ``slerp_weights``), so the result does not depend on the driver's order.
    """
    wa, wb = weights
    if wa + wb == 0:
        raise TaskVecError("slerp needs model weights with a non-zero sum.")
    t = wb / (wa + wb)
    ta, tb = deltas
    a, b = base + ta, base + tb
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    cos = float(torch.dot(a.reshape(-1), b.reshape(-1))) / (na * nb) if na > EPS and nb > EPS else 1.0
    if abs(cos) > COLINEAR:  # lerp, computed on the deltas so that t=0 and t=1 are exact
        return ta * (1.0 - t) + tb * t
    theta = math.acos(max(-1.0, min(1.0, cos)))
    s0, s1 = math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return a.mul_(s0).add_(b, alpha=s1).sub_(base)
