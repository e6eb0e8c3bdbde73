"""The ``orthogonalize`` option: remove from each task vector its projection on the span of the others."""

from __future__ import annotations

import torch


def orthogonalize(deltas: list[torch.Tensor], rtol: float = 1e-6) -> list[torch.Tensor]:
    """``τ_i − P_{span(τ_j, j≠i)} τ_i`` for every i, per tensor (flattened), from the Gram matrix of the vectors.

    The coefficients solve the normal equations ``G_oo c = G_oi`` with a pseudo-inverse (relative tolerance
    ``rtol``), so linearly dependent vectors are handled; one vector is returned unchanged. New tensors; inputs
    untouched. Only the n×n Gram matrix is solved in float64.
    """
    n = len(deltas)
    if n < 2:
        return list(deltas)
    flat = [d.reshape(-1) for d in deltas]
    gram = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            gram[i, j] = gram[j, i] = float(torch.dot(flat[i], flat[j]))
    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        coef = torch.linalg.pinv(gram[others][:, others], rtol=rtol, hermitian=True) @ gram[others, i]
        t = deltas[i].clone()
        for j, c in zip(others, coef.tolist()):
            if c:
                t.sub_(deltas[j], alpha=c)
        out.append(t)
    return out
