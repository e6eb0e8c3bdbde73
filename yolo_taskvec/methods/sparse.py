"""Generalized task arithmetic: one implementation, two orthogonal steps, many methods.

Follows mergekit's ``generalized_task_arithmetic.py`` / ``sparsify.py`` (arcee-ai/mergekit): every vector is first
*sparsified* (``none``; ``magnitude``: keep the top ``density`` fraction of |τ|; ``random``: drop each entry with
probability ``p`` and rescale the survivors by 1/(1−p); ``outliers``: Model Breadcrumbs, drop the largest ``gamma``
fraction and the smallest so that ``density`` remains), then combined by a *consensus* step (``none``: weighted sum;
``sign``: TIES sign election by total mass and the disjoint mean of the entries that agree with it). TIES, DARE,
DARE-TIES, Breadcrumbs(-TIES) and magnitude pruning are one registry line each.

Memory stays flat in the number of vectors: thresholds are found once per vector, then the tensor is streamed in
cache-sized chunks, each vector's chunk sparsified and folded into a fixed set of accumulators (for ``sign``: the
total, the positive mass and the weight of positive and of negative entries), so the sign election and the disjoint
mean need one pass and no stack of all vectors. The inputs are never modified.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from .arithmetic import weighted_sum
from .registry import Param, mean_stat_weights, register

SPARSIFY = ("none", "magnitude", "random", "outliers")
CONSENSUS = ("none", "sign")


# ----------------------------------------------------------------------------------------------- sparsification
CHUNK = 1 << 18  # entries per chunk (1 MB of fp32): the per-vector steps of one chunk run in cache


def select_in_place(values: torch.Tensor, *ks: int) -> list[float]:
    """The k-th largest entries of a flat tensor (1 ≤ k ≤ numel), reordering ``values`` on CPU.

    numpy's in-place introselect on CPU (about 20× faster than ``torch.kthvalue``), ``torch.kthvalue`` elsewhere.
    """
    n = values.numel()
    if not ks:
        return []
    if values.device.type == "cpu":  # one partition per index, each on the prefix left by the previous one
        array, found, end = values.numpy(), {}, n  # (several indices in one call are ~10x slower in numpy)
        for index in sorted({n - k for k in ks}, reverse=True):
            array[:end].partition(index)
            found[index], end = float(array[index]), index
        return [found[n - k] for k in ks]
    return [float(torch.kthvalue(values, n - k + 1).values) for k in ks]


def keep_count(numel: int, fraction: float) -> int:
    """How many entries a fraction keeps: ``int(fraction·numel)``, at least one when the fraction is positive."""
    return min(numel, max(1 if fraction > 0 else 0, int(fraction * numel)))


class Sparsifier:
    """One vector's sparsification: thresholds found once over the whole tensor, 0/1 masks made chunk by chunk.

    ``magnitude``: keep |τ| ≥ the ``k``-th largest magnitude (``k = density·numel``; ties at the threshold kept).
    ``outliers`` (Breadcrumbs): also drop the ``gamma·numel`` largest; the smallest go so that ``density`` remains
    (if density + gamma > 1 fewer large entries are dropped, as mergekit). ``random`` (DARE): keep each entry with
    probability 1−p and rescale by 1/(1−p); the noise comes only from ``rng`` (CPU: numpy PCG64 seeded by it,
    ~1.5× faster than torch's generator; other devices: a generator of that device seeded by it).
    Masks are float 0/1 tensors made with in-place comparisons: boolean kernels are far slower on CPU.
    """

    def __init__(self, flat: torch.Tensor, how: str, *, density: float, p: float, gamma: float, rng: torch.Generator | None):
        n = flat.numel()
        self.how, self.scale, self.low, self.high = how, 1.0, 0.0, math.inf
        if how == "none" or (how == "random" and p <= 0) or (how in ("magnitude", "outliers") and density >= 1 and gamma <= 0):
            self.how = "none"
        elif how == "magnitude":
            k = keep_count(n, density)
            self.low = select_in_place(flat.abs(), k)[0] if k else math.inf
        elif how == "outliers":
            keep, top = keep_count(n, density), int(gamma * n)
            bottom = n - keep - top
            if bottom < 0:
                top, bottom = top + bottom, 0
            ks = [k for k, used in ((top, top > 0), (n - bottom, bottom > 0)) if used]
            found = dict(zip(ks, select_in_place(flat.abs(), *ks))) if keep else {}
            self.how = self.how if keep else "drop_all"
            self.high = found.get(top, math.inf)
            self.low = found.get(n - bottom, 0.0)
        elif how == "random":
            if rng is None:
                raise ValueError("random sparsification needs one generator per model.")
            self.p, self.scale = p, 1.0 / (1.0 - p)
            seed = int(torch.randint(0, 2**62, (1,), generator=rng))
            if flat.device.type == "cpu" and flat.dtype == torch.float32:
                self.numpy_rng = np.random.Generator(np.random.PCG64(seed))
            else:
                self.numpy_rng, self.torch_rng = None, torch.Generator(flat.device).manual_seed(seed)
        else:
            raise ValueError(f"unknown sparsification {how!r}")

    def mask(self, chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """The 0/1 mask of ``chunk`` written into ``out`` (None: keep everything)."""
        if self.how == "none":
            return None
        if self.how == "drop_all":
            return out.zero_()
        if self.how == "random":
            if self.numpy_rng is not None:
                self.numpy_rng.random(out.numel(), dtype=np.float32, out=out.numpy())
            else:
                out.uniform_(generator=self.torch_rng)
            return out.ge_(self.p)
        torch.abs(chunk, out=out)
        if self.high < math.inf:  # low ≤ |τ| < high  ==  [|τ| ≥ low] − [|τ| ≥ high]
            too_large = torch.ge(out, self.high, out=self.scratch(out))
            return out.ge_(self.low).sub_(too_large)
        return out.ge_(self.low)

    def scratch(self, like: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_scratch", None) is None or self._scratch.numel() < like.numel():
            self._scratch = torch.empty_like(like)
        return self._scratch[: like.numel()]


# ----------------------------------------------------------------------------------------------- consensus
class SignConsensus:
    """Streaming TIES sign election and disjoint mean (mergekit ``get_mask(method="sum")`` + ``normalize``).

    The elected sign of an entry is the sign of the total mass ``Σ w_i τ_i`` (ties go to +); the result is the
    mean of the weighted entries that agree with it, ``Σ_agree w_i τ_i / Σ_agree w_i`` (0 where none agrees).
    Four accumulators (total, positive mass, weight of positive and of negative entries) and a scratch buffer,
    whatever the number of vectors.
    """

    def __init__(self, size: int, like: torch.Tensor):
        self.buffers = torch.empty(5, size, dtype=like.dtype, device=like.device)

    def start(self, length: int) -> None:
        self.total, self.positive, self.w_pos, self.w_neg, self.scratch = self.buffers[:, :length]
        self.buffers[:4, :length].zero_()

    def add(self, t: torch.Tensor, weight: float) -> None:
        """Fold in one weighted, sparsified chunk ``t`` (consumed)."""
        self.total.add_(t)
        self.w_pos.add_(torch.gt(t, 0, out=self.scratch), alpha=weight)
        self.w_neg.add_(torch.lt(t, 0, out=self.scratch), alpha=weight)
        self.positive.add_(t.clamp_(min=0))

    def finish(self, out: torch.Tensor) -> None:
        elected = torch.ge(self.total, 0, out=self.scratch)  # 1: the positive sign is elected
        mass = self.total.sub_(self.positive).lerp_(self.positive, elected)  # lerp with a 0/1 weight selects exactly
        weight = self.w_neg.lerp_(self.w_pos, elected)
        weight.add_(torch.eq(weight, 0, out=self.scratch))
        torch.div(mass, weight, out=out)


def generalized_task_arithmetic(
    deltas: list[torch.Tensor],
    weights: list[float],
    *,
    sparsify: str,
    consensus: str,
    density: float = 1.0,
    p: float = 0.0,
    gamma: float = 0.0,
    rngs: list[torch.Generator] | None = None,
    **_: object,
) -> torch.Tensor:
    """Sparsify each weighted vector, then sum (``consensus="none"``) or sign-elect + disjoint mean (``"sign"``).

    Streams over the vectors in chunks of ``CHUNK`` entries: memory is the output, one chunk-sized buffer per
    accumulator and the selection scratch of one tensor, whatever the number of vectors; inputs are not modified.
    """
    if sparsify not in SPARSIFY or consensus not in CONSENSUS:
        raise ValueError(f"unknown generalized task arithmetic step {sparsify!r}/{consensus!r}")
    flat = [d.reshape(-1) for d in deltas]
    steps = [Sparsifier(f, sparsify, density=density, p=p, gamma=gamma, rng=rngs[i] if rngs else None) for i, f in enumerate(flat)]
    if consensus == "none" and all(step.how == "none" for step in steps):  # nothing dropped: task arithmetic, exactly
        return weighted_sum(deltas, weights)
    n = flat[0].numel()
    size = min(n, CHUNK)
    out = torch.empty_like(flat[0])
    t_buf, m_buf = torch.empty(2, size, dtype=out.dtype, device=out.device)
    acc = SignConsensus(size, out) if consensus == "sign" else None
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        length = stop - start
        target = out[start:stop]
        if acc is not None:
            acc.start(length)
        else:
            target.zero_()
        for f, step, w in zip(flat, steps, weights):
            chunk, factor = f[start:stop], w * step.scale
            mask = step.mask(chunk, m_buf[:length])
            if acc is None:  # one fused step per vector: target += factor · chunk · mask
                target.addcmul_(chunk, mask, value=factor) if mask is not None else target.add_(chunk, alpha=factor)
                continue
            t = torch.mul(chunk, mask, out=t_buf[:length]) if mask is not None else t_buf[:length].copy_(chunk)
            acc.add(t.mul_(factor) if factor != 1.0 else t, w)
        if acc is not None:
            acc.finish(target)
    return out.reshape(deltas[0].shape)


# ----------------------------------------------------------------------------------------------- registry
DENSITY = Param("density", 0.2, "fraction of the largest-magnitude entries each vector keeps", 0.0, 1.0)
DROP = Param("p", 0.9, "probability of dropping each entry (survivors rescaled by 1/(1-p))", 0.0, 0.999)
CRUMB_DENSITY = Param("density", 0.9, "fraction of entries each vector keeps after dropping outliers and the smallest", 0.0, 1.0)
GAMMA = Param("gamma", 0.01, "fraction of the largest-magnitude entries dropped as outliers", 0.0, 1.0)

TIES = "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models (NeurIPS)"
DARE = "Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch (ICML)"
BREADCRUMBS = "Davari & Belilovsky 2024, Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks (ECCV)"


def gta_method(name: str, doc: str, paper: str, *, sparsify: str, consensus: str, params: tuple[Param, ...]) -> None:
    """Register one configuration of generalized task arithmetic.

    BatchNorm statistics: a sign-consensus method averages (disjoint mean), so ``bn=merge`` gives the running
    statistics the mean coefficients ``w_i/Σw``; without consensus the method sums, and so do the statistics.
    """
    register(
        name,
        doc=doc,
        paper=paper,
        params=params,
        random=sparsify == "random",
        stat_weights=mean_stat_weights if consensus == "sign" else None,
    )(partial(generalized_task_arithmetic, sparsify=sparsify, consensus=consensus))


gta_method("ties", "Trim each vector to its top-density magnitudes, elect the sign by total mass, disjoint mean.", TIES, sparsify="magnitude", consensus="sign", params=(DENSITY,))
gta_method("magnitude_prune", "Trim each vector to its top-density magnitudes, then sum (TIES without the election).", TIES, sparsify="magnitude", consensus="none", params=(DENSITY,))
gta_method("dare", "Drop entries with probability p, rescale the rest by 1/(1-p), then sum.", DARE, sparsify="random", consensus="none", params=(DROP,))
gta_method("dare_ties", "DARE drop-and-rescale, then TIES sign election and disjoint mean.", DARE, sparsify="random", consensus="sign", params=(DROP,))
gta_method("breadcrumbs", "Drop the largest gamma and the smallest magnitudes so density remains, then sum.", BREADCRUMBS, sparsify="outliers", consensus="none", params=(CRUMB_DENSITY, GAMMA))
gta_method("breadcrumbs_ties", "Breadcrumbs masks, then TIES sign election and disjoint mean.", BREADCRUMBS, sparsify="outliers", consensus="sign", params=(CRUMB_DENSITY, GAMMA))
