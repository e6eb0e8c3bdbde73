"""Spectral merges of weight matrices: Task Singular Vectors (TSV-Merge) and isotropic merging (Iso-C, Iso-CTS).

Every tensor of 2 or more dimensions is treated as a matrix ``(out, in·k·k)`` (conv weights reshaped); 1-D tensors
(biases, BatchNorm weights) fall back to task arithmetic, and so do BatchNorm statistics (``stat_weights`` default).
The originals average the 1-D tensors and sum the matrices; here both are sums, so one merged scale applies to all.
"""

from __future__ import annotations

import torch

from .arithmetic import weighted_sum
from .registry import Param, register


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def polar(m: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (or rows), ``P Qᵀ`` from ``m = P Σ Qᵀ``: orthogonal Procrustes."""
    p, _, qh = torch.linalg.svd(m, full_matrices=False)
    return p @ qh


@register(
    "tsv",
    doc="Task Singular Vectors: per-task rank-r/T SVD of each weight matrix, stacked singular vectors decorrelated (Procrustes), recombined.",
    paper="Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference in Model Merging (CVPR)",
    params=(Param("fraction", 0.0, "fraction of each task's rank kept (0: 1/number of tasks, as the paper)", 0.0, 1.0),),
)
def tsv(deltas: list[torch.Tensor], weights: list[float], *, fraction: float = 0.0, **_: object) -> torch.Tensor:
    """Follows AntoAndGar/task_singular_vectors ``compute_and_sum_svd_mem_reduction`` (TSV-Merge).

    For each task the top ``k = ⌊r·fraction⌋`` singular triplets of ``w_t τ_t`` are kept; the concatenated ``U``
    (m × T·k) and ``V`` (T·k × n) are replaced by their polar factors, and ``U_⊥ diag(S) V_⊥`` is the merged matrix.
    """
    if deltas[0].dim() < 2:
        return weighted_sum(deltas, weights)
    shape = deltas[0].shape
    m, n = as_matrix(deltas[0]).shape
    k = max(1, int(min(m, n) * (fraction or 1.0 / len(deltas))))
    us, ss, vs = [], [], []
    for d, w in zip(deltas, weights):
        u, s, vh = torch.linalg.svd(as_matrix(d) * w, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k])
    u, s, vh = polar(torch.cat(us, 1)), torch.cat(ss), polar(torch.cat(vs, 0))
    return ((u * s) @ vh).reshape(shape)


@register(
    "iso_c",
    doc="Isotropic merge (Iso-C): the summed task matrix with its singular values flattened to their mean.",
    paper="Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces (ICML)",
)
def iso_c(deltas: list[torch.Tensor], weights: list[float], **_: object) -> torch.Tensor:
    """Follows danielm1405/iso-merging ``iso_c``: ``U · mean(σ) · Vᵀ`` of ``Σ w_t τ_t``."""
    total = weighted_sum(deltas, weights)
    if total.dim() < 2:
        return total
    u, s, vh = torch.linalg.svd(as_matrix(total), full_matrices=False)
    return ((u * s.mean()) @ vh).reshape(total.shape)


@register(
    "iso_cts",
    doc="Isotropic merge with common and task-specific subspaces (Iso-CTS): top common directions of the sum plus each task's own orthogonal directions, spectrum flattened.",
    paper="Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces (ICML)",
    params=(Param("common_fraction", 0.8, "fraction of the rank given to the common subspace of the summed vectors", 0.0, 1.0),),
)
def iso_cts(deltas: list[torch.Tensor], weights: list[float], *, common_fraction: float = 0.8, **_: object) -> torch.Tensor:
    """Follows the iso-merging ``iso_cts``: common space = top singular vectors of ``Σ w_t τ_t``; each task adds the
    top singular vectors of its component orthogonal to it; both stacks are orthogonalised (polar factor) and all
    singular values are replaced by their mean."""
    total = weighted_sum(deltas, weights)
    if total.dim() < 2:
        return total
    shape, mat, tasks = total.shape, as_matrix(total), len(deltas)
    r = min(mat.shape)
    per_task = max(0, round((r - int(r * common_fraction)) / tasks))
    while per_task * tasks > r:
        per_task -= 1
    common = r - per_task * tasks
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    uc, sc, vc = u[:, :common], s[:common], vh[:common]
    us, ss, vs = [], [], []
    if per_task:
        for d, w in zip(deltas, weights):
            t = as_matrix(d) * w
            t = t - uc @ (uc.T @ t)
            ut, st, vt = torch.linalg.svd(t, full_matrices=False)
            us.append(ut[:, :per_task])
            ss.append(st[:per_task])
            vs.append(vt[:per_task])
    u = polar(torch.cat([*us, uc], 1))
    vh = polar(torch.cat([*vs, vc], 0))
    flat = torch.cat([*ss, sc]).mean()
    return ((u * flat) @ vh).reshape(shape)
