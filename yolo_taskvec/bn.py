"""BatchNorm policies: the names, the rules and the arithmetic of running statistics in a merge (pure tensors).

Running means and variances are not learned weights: they describe the distribution of each layer's input
features. A merge ``θ = θ_base + Σ cᵢ τᵢ`` (``cᵢ`` = scale · the method's statistic coefficient of input ``i``)
treats them by policy:

=================  =====================================================================================
``merge``          task arithmetic on means and variances with the same coefficients (the default: it measured
                   best on the reference models). A variance pushed to zero or below is refused.
``mixture``        the moments of the mixture of the inputs' feature distributions, weights ``c₀ = 1 − Σcᵢ`` for
                   the base and ``cᵢ`` for the inputs: ``mean = Σ cᵢ μᵢ``, ``var = Σ cᵢ (σᵢ² + μᵢ²) − mean²``
                   (computed centered: ``Σ cᵢ σᵢ² + Σ cᵢ (μᵢ − mean)²``). The means equal ``merge``'s; the
                   variances add the spread between the inputs' means. Non-positive variances are refused.
``geometric``      means as ``merge``, variances interpolated in log space (``var = var₀ · Π (varᵢ/var₀)^cᵢ``),
                   positive for any coefficients (negation, extrapolation).
``base``           the base's statistics kept.
``recalibrate``    the base's kept here; the adapter then re-estimates them on images (``bn_data`` yamls) with
                   ``recalibration.recalibrate``.
=================  =====================================================================================

``num_batches_tracked`` never takes part. This module knows nothing of Ultralytics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .errors import TaskVecError
from .methods.memory import flat, runs, views

POLICIES = ("merge", "mixture", "geometric", "base", "recalibrate")
DEFAULT = "merge"
MEAN, VAR = ".running_mean", ".running_var"
STATS = (MEAN, VAR)


def is_stat(key: str) -> bool:
    """True for BatchNorm running statistics (not learned weights)."""
    return key.endswith(STATS)


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise TaskVecError(f"unknown BatchNorm policy '{policy}'; choose one of {', '.join(POLICIES)}.")
    return policy


def needs_images(policy: str) -> bool:
    """Whether the policy re-estimates statistics on images after the merge (``bn_data`` required)."""
    return policy == "recalibrate"


def keeps_base(policy: str) -> bool:
    """Whether the merge itself leaves the base's statistics in place."""
    return policy in ("base", "recalibrate")


def layer_of(key: str) -> str:
    """``model.3.bn.running_var`` -> ``model.3.bn``."""
    return key[: -len(MEAN)] if key.endswith(MEAN) else key[: -len(VAR)]


def merge_statistics(
    policy: str,
    base: Mapping[str, torch.Tensor],
    keys: Sequence[str],
    deltas: Callable[[str], Sequence[torch.Tensor | None]],
    weights: Sequence[float],
    scale: Callable[[str], float],
) -> dict[str, torch.Tensor]:
    """The merged running statistics of ``keys`` under ``policy`` (``{}`` for ``base``/``recalibrate``).

    ``deltas(key)``: every input's delta of that statistic (``None`` where an input has none: it equals the base's);
    ``weights``: the method's statistic coefficient of each input; ``scale(key)``: the scale of the key's part, so
    ``cᵢ = scale · weightᵢ``.
    """
    check_policy(policy)
    if keeps_base(policy):
        return {}
    linear = [k for k in keys if k.endswith(MEAN) or policy == "merge"]
    out = _linear_statistics(base, linear, deltas, weights, scale)
    for key in keys:
        if key in out:
            continue
        lam, ds = scale(key), list(deltas(key))
        if policy == "geometric":
            out[key] = _geometric_var(key, base[key], ds, [lam * w for w in weights])
        else:
            out[key] = _mixture_var(base[key], list(deltas(layer_of(key) + MEAN)), ds, [lam * w for w in weights])
    check_variances(out)
    return out


GROUP = 1 << 16  # entries: fp32 CPU statistics of one part are merged together in runs of at most this many


def _linear_statistics(base: Mapping[str, torch.Tensor], keys: Sequence[str], deltas: Callable[[str], Sequence[torch.Tensor | None]], weights: Sequence[float],
                       scale: Callable[[str], float]) -> dict[str, torch.Tensor]:
    """``base + scale · Σ wᵢ dᵢ`` per key; fp32 CPU statistics of the same scale concatenated and merged at once
    (the same operations per entry as one by one), the results views of one new buffer per run."""
    out: dict[str, torch.Tensor] = {}
    by_scale: dict[float, list[str]] = {}
    for key in keys:
        b = base[key]
        if b.dtype != torch.float32 or b.device.type != "cpu" or b.numel() > GROUP:
            out[key] = torch.add(b, _weighted(list(deltas(key)), weights, b), alpha=scale(key))
        else:
            by_scale.setdefault(scale(key), []).append(key)
    for lam, group in by_scale.items():
        for run in runs(group, [base[k].numel() for k in group], GROUP):
            out.update(_linear_run(base, run, deltas, weights, lam))
    return out


def _linear_run(base: Mapping[str, torch.Tensor], keys: list[str], deltas: Callable[[str], Sequence[torch.Tensor | None]], weights: Sequence[float], lam: float) -> dict[str, torch.Tensor]:
    like = [base[k] for k in keys]
    sizes = [t.numel() for t in like]
    per_key = [list(deltas(k)) for k in keys]
    acc = torch.zeros(sum(sizes), dtype=torch.float32)  # as _weighted: Σ wᵢ dᵢ from zero, in order
    for i, w in enumerate(weights):
        if any(ds[i] is not None for ds in per_key):  # a missing delta is zero (as _weighted skips it)
            acc.add_(torch.cat([_flat(ds[i]) if ds[i] is not None else torch.zeros(n, dtype=torch.float32) for ds, n in zip(per_key, sizes)]), alpha=w)
    merged = torch.add(torch.cat([_flat(t) for t in like]), acc, alpha=lam, out=acc)
    return dict(zip(keys, views(merged, like)))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a 1-D fp32 tensor."""
    return flat(t if t.dtype == torch.float32 else t.float())


def _weighted(deltas: Sequence[torch.Tensor | None], weights: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """``Σ wᵢ dᵢ`` (missing deltas are zeros), in fp32 (fp64 for fp64 statistics)."""
    out = torch.zeros_like(like, dtype=_dtype(like))
    for d, w in zip(deltas, weights):
        if d is not None:
            out.add_(d.to(out.dtype), alpha=w)
    return out


def _dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _mixture_var(base_var: torch.Tensor, mean_deltas: Sequence[torch.Tensor | None], var_deltas: Sequence[torch.Tensor | None], coefs: Sequence[float]) -> torch.Tensor:
    """``Σ cᵢ σᵢ² + Σ cᵢ (μᵢ − μ)²`` over the base (``c₀ = 1 − Σcᵢ``) and the inputs, in deltas from the base."""
    within = base_var.to(_dtype(base_var)) + _weighted(var_deltas, coefs, base_var)  # Σ cᵢ σᵢ² = σ₀² + Σ cᵢ (σᵢ² − σ₀²)
    shift = _weighted(mean_deltas, coefs, base_var)  # μ − μ₀ = Σ cᵢ (μᵢ − μ₀)
    between = shift.square() * (1.0 - sum(coefs))  # the base's term c₀ (μ₀ − μ)²
    for d, c in zip(mean_deltas, coefs):
        if c:
            between.add_(((d.to(shift.dtype) if d is not None else torch.zeros_like(shift)) - shift).square_(), alpha=c)
    return within.add_(between)


def _geometric_var(key: str, b: torch.Tensor, deltas: Sequence[torch.Tensor | None], coefs: Sequence[float]) -> torch.Tensor:
    log_ratio = torch.zeros_like(b, dtype=torch.float32)
    for d, c in zip(deltas, coefs):
        if d is None or not c:
            continue
        var = b + d
        if bool((var <= 0).any()):
            raise TaskVecError(f"bn=geometric needs each vector's running_var to be a variance, but {key} is not positive in one of them (a vector built by subtraction?); use bn=merge or bn=recalibrate.")
        log_ratio.add_(torch.log(var / b), alpha=c)
    return b * torch.exp(log_ratio)


def check_variances(stats: Mapping[str, torch.Tensor]) -> None:
    """Refuse merged running variances that are not positive, naming the layers and the ways out."""
    variances = [v for k, v in stats.items() if k.endswith(VAR)]
    if variances and all(v.device.type == "cpu" for v in variances) and bool((torch.cat([flat(v) for v in variances]) > 0).all()):
        return  # one test for all, the usual case (otherwise each is tested below, as before)
    bad = [k for k, v in stats.items() if k.endswith(VAR) and bool((v <= 0).any())]
    if bad:
        n = sum(int((stats[k] <= 0).sum()) for k in bad)
        raise TaskVecError(
            f"these scales make {n} BatchNorm running variances non-positive in {len(bad)} layers (e.g. {bad[0]}); "
            "use smaller scales, bn=geometric (variances in log space), bn=base or bn=recalibrate."
        )
