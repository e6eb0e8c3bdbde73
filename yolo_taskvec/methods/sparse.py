"""Generalized task arithmetic: one implementation, two orthogonal steps, many methods.

Follows mergekit 0.1.5 (``merge_methods/generalized_task_arithmetic.py``, ``sparsify.py``): every weighted vector is
first *sparsified*, then the vectors are combined by a *consensus* step.

Sparsification (per vector):

* ``none``; ``magnitude``: keep the top ``density`` fraction of |τ|; ``outliers`` (Model Breadcrumbs): drop the
  largest ``gamma`` fraction and the smallest so that ``density`` remains; ``random`` (DARE): drop each entry with
  probability ``p``; ``della`` (DELLA's MagPrune): keep each entry with a probability that grows linearly with its
  magnitude rank in its row, from ``density − epsilon`` (smallest) to ``density + epsilon`` (largest).
* survivors are rescaled (``rescale``): ``inverse`` (divide by the keep probability: 1/(1−p), 1/p_i), ``l1`` (back
  to the tensor's L1 norm: mergekit's ``rescale: true``) or ``none``.
* magnitude cut-offs (``cutoff``): ``sampled`` (the k-th magnitude read off a fixed strided sample, see
  ``sampled_thresholds``), ``kth_value`` (the exact k-th magnitude; every entry tied with it is kept) or ``top_k``
  (exactly k entries, ties resolved by ``torch.argsort``'s order as mergekit does).

Consensus: ``none`` (the weighted sum; ``normalize`` divides by Σw) or ``sign`` (TIES: the sign of each entry is
elected by total mass, ``election=sum``, or by the number of signs, ``election=count``; then the entries that agree
are averaged, ``normalize=true``, or summed).

TIES, DARE, DARE-TIES, Breadcrumbs(-TIES), DELLA(-linear) and magnitude pruning are one registry line each.

Memory stays flat in the number of vectors: cut-offs are found once per vector, then the tensor is streamed in
cache-sized chunks; each vector's chunk is sparsified and folded into a fixed set of accumulators (for ``sign``:
the total Σt, the absolute mass Σ|t|, the weighted signs Σw·sign t and the weight of the non-zero entries Σw·|sign t|;
the agreeing mass is (Σt + σΣ|t|)/2 and its weight (Σw|sign t| + σΣw·sign t)/2 for the elected sign σ = ±1), so the
election and the mean need one pass and no stack of all vectors. The steps are in-place tensor operations on a
chunk that stays in the L2 cache, with buffers reused across tensors (``scratch``). The inputs are never modified.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch

from .arithmetic import linear_apply, weighted_sum
from .registry import Param, mean_stat_weights, register

SPARSIFY = ("none", "magnitude", "random", "outliers", "della")
CONSENSUS = ("none", "sign")
CUTOFFS = ("sampled", "kth_value", "top_k")
RESCALES = ("inverse", "l1", "none")
ELECTIONS = ("sum", "count")

CHUNK = 1 << 16  # entries per chunk (256 KB of fp32): the accumulators and buffers of one chunk stay in L2
EXACT = 1 << 14  # sampled cut-offs are exact for tensors up to this many entries
MIN_SAMPLE = 1 << 13  # larger tensors: a strided sample of this many entries or more (when the stride allows it)
MAX_STRIDE = 61  # a sample touches at most every 61st entry: ≤ 1/4 of the cache lines of the tensor
L1_EPS = 1e-7  # mergekit's rescaled_masked_tensor: norms below this are left alone
RANDOM_BITS = 1 << 15  # DARE on CPU tensors above this many entries draws from numpy (its setup costs ~20 µs)
RAW_BLOCK = 1 << 12  # 64-bit draws per numpy call (32 KB)
TINY = torch.finfo(torch.float32).tiny


# ----------------------------------------------------------------------------------------------- scratch
_POOL = threading.local()


def scratch(name: str, rows: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A ``(rows, size)`` scratch buffer kept between calls (per thread, name, dtype and device), so the chunk
    buffers of a merge are not allocated, page-faulted and freed again for every tensor. Contents are undefined."""
    pool = getattr(_POOL, "buffers", None)
    if pool is None:
        pool = _POOL.buffers = {}
    key = (name, dtype, str(device))
    buf = pool.get(key)
    if buf is None or buf.shape[0] < rows or buf.shape[1] < size:
        buf = pool[key] = torch.empty(max(rows, buf.shape[0] if buf is not None else 0), max(size, buf.shape[1] if buf is not None else 0), dtype=dtype, device=device)
    return buf[:rows, :size]


# ----------------------------------------------------------------------------------------------- counts, cut-offs
def keep_count(numel: int, fraction: float) -> int:
    """How many entries a fraction keeps: ``int(fraction·numel)`` (rounded down, as mergekit and TIES), at least one
    when the fraction is positive, at most ``numel``. Shared with ``compress`` (``keep=``)."""
    return min(numel, max(1 if fraction > 0 else 0, int(fraction * numel)))


def select_in_place(values: torch.Tensor, *ks: int) -> list[float]:
    """The k-th largest entries of a flat tensor (1 ≤ k ≤ numel), reordering ``values`` on CPU.

    numpy's in-place introselect on CPU (about 10× faster than ``torch.kthvalue``), ``torch.kthvalue`` elsewhere.
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


def sample_stride(numel: int) -> int:
    """1 (every entry) up to ``EXACT`` entries; above, the largest prime ≥ 7 and ≤ ``numel / MIN_SAMPLE`` (≤ 61).

    A prime ≥ 7 shares no factor with the 3×3 kernels and the 2^a·3^b·5^c channel counts of conv weights, so the
    sample walks through every kernel position and channel evenly instead of aliasing with them.
    """
    if numel <= EXACT:
        return 1
    stride = max(7, min(MAX_STRIDE, numel // MIN_SAMPLE))
    while any(stride % d == 0 for d in range(2, math.isqrt(stride) + 1)):
        stride -= 1
    return stride


def sampled_thresholds(flat: torch.Tensor, *ks: int) -> list[float]:
    """The k-th largest magnitudes of ``flat``, read off the sample ``|flat[s//2::s]|`` at the same quantile.

    ``s = sample_stride(numel)``: exact up to ``EXACT`` (16384) entries; above, each threshold is the
    ``round(k·m/n)``-th largest of the m = n/s sampled magnitudes (m ≥ 2341, and m ≥ 8192 above 57344 entries), so
    the fraction kept is the requested one up to the sampling error of a quantile, standard deviation √(q(1−q)/m)
    (≤ 1.0 %, and ≤ 0.55 % above 57344 entries), and up to the entries tied with the threshold, which are all kept.
    Deterministic: no random draw is involved.
    """
    n = flat.numel()
    stride = sample_stride(n)
    if stride == 1:
        return select_in_place(flat.abs(), *ks)
    sample = flat[stride // 2 :: stride].abs()
    m = sample.numel()
    return select_in_place(sample, *[min(m, max(1, round(k * m / n))) for k in ks])


def exact_thresholds(flat: torch.Tensor, *ks: int) -> list[float]:
    return select_in_place(flat.abs(), *ks)


# ----------------------------------------------------------------------------------------------- sparsification
class Sparsifier:
    """One vector's sparsification: cut-offs found once over the whole tensor, masks made chunk by chunk.

    ``mask(chunk, out)`` writes the multiplier of each entry of the next chunk into ``out`` (0 where dropped, 1 or the
    inverse keep probability where kept) or returns None (keep everything); chunks must come in order. ``factor`` is
    the vector's scalar rescale (1/(1−p) for DARE with ``inverse``, the L1 ratio with ``l1``, else 1).

    Random masks come only from ``rng``. DARE on CPU tensors above ``RANDOM_BITS`` entries: raw 32-bit draws of a
    numpy SFC64 generator seeded by ``rng`` (twice as fast as torch's), keep iff u ≥ round(p·2³²); smaller ones (no
    generator to set up) and DELLA: float32 uniforms of ``rng`` itself (a 2⁻²⁴ grid on CPU), keep iff u ≥ p (DELLA:
    u < p_i); other devices: a generator of that device seeded by ``rng``. ``keep_probability`` is the exact
    probability of the grid, and the inverse rescale uses it. Float 0/1 masks: boolean kernels are slow on CPU.
    """

    def __init__(self, flat: torch.Tensor, how: str, *, density: float, p: float, gamma: float, epsilon: float, cutoff: str, rescale: str, rng: torch.Generator | None, cols: int):
        n = flat.numel()
        self.flat, self.how, self.factor, self.cols = flat, how, 1.0, cols
        self.low, self.high, self.ties, self.position = 0.0, math.inf, None, 0
        if how == "none" or (how == "random" and p <= 0) or (how in ("magnitude", "outliers", "della") and density >= 1 and (how != "outliers" or gamma <= 0)):
            self.how = "none"
        elif how == "della" and density <= 0:
            self.how = "drop_all"
        elif how == "magnitude":
            self._magnitude_cutoff(n, keep_count(n, density), cutoff)
        elif how == "outliers":
            self._outlier_cutoffs(n, density, gamma, cutoff)
        elif how in ("random", "della"):
            if rng is None:
                raise ValueError("random sparsification needs one generator per model.")
            self.p, self.density, self.epsilon = p, density, epsilon
            self.source = "bits" if how == "random" and flat.device.type == "cpu" and n > RANDOM_BITS else "torch"
            if self.source == "bits" or flat.device.type != "cpu":
                self.seed = int(torch.randint(0, 2**62, (1,), generator=rng))
            else:  # CPU: draw from rng itself; its state is kept to rewind the stream after an l1 pass
                self.torch_rng, self.rng_state = rng, rng.get_state() if rescale == "l1" else None
            if how == "random" and rescale == "inverse":
                self.factor = 1.0 / self.keep_probability()
            self.restart()
        else:
            raise ValueError(f"unknown sparsification {how!r}")
        self.inverse = how == "della" and rescale == "inverse"
        self.folded = how == "random" and rescale == "inverse"
        self.marks_nonzero = self.how in ("magnitude", "outliers") and self.low > 0  # kept ⇒ |τ| ≥ low > 0
        if rescale == "l1" and self.how not in ("none", "drop_all"):
            self.factor = self._l1_ratio()

    # -- cut-offs
    def _magnitude_cutoff(self, n: int, k: int, cutoff: str) -> None:
        if k == 0:
            self.how = "drop_all"
        elif cutoff == "top_k":  # mergekit: argsort(|τ|, descending)[:k]
            order = torch.argsort(self.flat.abs(), descending=True)
            self.low = float(self.flat[order[k - 1]].abs())
            self._keep_ties(order[:k])
        else:
            self.low = (sampled_thresholds if cutoff == "sampled" else exact_thresholds)(self.flat, k)[0]

    def _outlier_cutoffs(self, n: int, density: float, gamma: float, cutoff: str) -> None:
        """Keep ``low ≤ |τ| < high`` (``top_k``: ``low < |τ| < high`` plus the tied entries mergekit keeps)."""
        keep, top = keep_count(n, density), int(gamma * n)
        bottom = n - keep - top
        if bottom < 0:  # density + gamma > 1: fewer outliers are dropped, as mergekit
            top, bottom = top + bottom, 0
        if keep == 0:
            self.how = "drop_all"
        elif cutoff == "top_k":  # mergekit: sort(|τ|) ascending, keep positions [bottom, bottom + keep)
            order = torch.sort(self.flat.abs()).indices
            kept = order[bottom : bottom + keep]
            self.low, self.high = float(self.flat[kept[0]].abs()), float(self.flat[kept[-1]].abs())
            self._keep_ties(kept)
        else:
            ks = [k for k, used in ((top, top > 0), (n - bottom, bottom > 0)) if used]
            found = dict(zip(ks, (sampled_thresholds if cutoff == "sampled" else exact_thresholds)(self.flat, *ks)))
            self.high = found.get(top, math.inf)
            self.low = found.get(n - bottom, 0.0)

    def _keep_ties(self, kept: torch.Tensor) -> None:
        """``top_k``: the kept indices whose magnitude equals a cut-off (the rest follows from strict comparisons)."""
        mags = self.flat[kept].abs()
        on_edge = (mags == self.low) | (mags == self.high)
        self.ties = kept[on_edge].sort().values

    # -- random draws
    def keep_probability(self) -> float:
        """DARE's exact keep probability: 32-bit draws P(u ≥ round(p·2³²)); CPU float32 uniforms k·2⁻²⁴ compared with
        float32(p): 1 − ⌈float32(p)·2²⁴⌉/2²⁴; other devices 1 − p."""
        if self.source == "bits":
            return 1.0 - round(self.p * 2**32) / 2**32
        if self.flat.device.type == "cpu":
            return 1.0 - math.ceil(float(np.float32(self.p)) * 2**24) / 2**24
        return 1.0 - self.p

    def restart(self) -> None:
        """Rewind the random stream (and the position of ``top_k`` ties) to the first chunk."""
        self.position = 0
        if self.how not in ("random", "della"):
            return
        if self.source == "bits":
            self.bit_generator = np.random.SFC64(self.seed)
        elif self.flat.device.type != "cpu":
            self.torch_rng = torch.Generator(self.flat.device).manual_seed(self.seed)
        elif self.rng_state is not None:
            self.torch_rng.set_state(self.rng_state)

    def _random_keep(self, out: torch.Tensor) -> torch.Tensor:
        """DARE: 0/1 keep marks with P(1) = ``keep_probability()``."""
        if self.source == "torch":
            return out.uniform_(generator=self.torch_rng).ge_(self.p)
        n = out.numel()
        raw = scratch("raw", 1, (n + 1) // 2, torch.int64, out.device)[0].numpy().view(np.uint64)
        for start in range(0, raw.size, RAW_BLOCK):  # small draws: numpy's result buffers never reach mmap sizes
            raw[start : start + RAW_BLOCK] = self.bit_generator.random_raw(min(RAW_BLOCK, raw.size - start))
        # numpy writes the float 0/1 marks directly (torch would cast through a temporary of the chunk's size)
        np.greater_equal(raw.view(np.int32)[:n], round(self.p * 2**32) - 2**31, out=out.numpy())
        return out

    def della_probabilities(self, chunk: torch.Tensor) -> torch.Tensor:
        """Keep probabilities of whole rows (mergekit's ``della_magprune``): rank r of |τ| in its row (1 = smallest,
        ties in ``torch.argsort``'s order) → ``density − ε + 2ε·(r − 1)/(cols − 1)``; a row of one entry: ``density``."""
        rows = chunk.reshape(-1, self.cols).abs()
        if self.cols == 1:
            return torch.full_like(rows, self.density)
        ranks = torch.argsort(torch.argsort(rows, dim=1), dim=1).to(rows.dtype) + 1
        rank_norm = ((ranks - 1) / (self.cols - 1)).clamp(0, 1)
        return (self.density - self.epsilon) + rank_norm * 2 * self.epsilon

    # -- masks
    def mask(self, chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """The multiplier of each entry of the next chunk written into ``out`` (None: keep everything)."""
        start, self.position = self.position, self.position + chunk.numel()
        if self.how == "none":
            return None
        if self.how == "drop_all":
            return out.zero_()
        if self.how == "random":
            return self._random_keep(out)
        if self.how == "della":
            probs = self.della_probabilities(chunk).reshape(-1)
            keep = out.uniform_(generator=self.torch_rng).lt_(probs)  # u < p_i: kept with probability p_i
            return keep.div_(probs) if self.inverse else keep
        a = torch.abs(chunk, out=out)
        if self.ties is not None:  # top_k: strict comparisons, then the tied entries mergekit kept
            if self.high == math.inf:
                return self._add_ties(a.gt_(self.low), start)
            if self.high > self.low:  # low < |τ| < high
                too_large = torch.ge(a, self.high, out=self.scratch(a))
                return self._add_ties(a.gt_(self.low).sub_(too_large), start)
            return self._add_ties(a.zero_(), start)
        if self.high < math.inf:  # low ≤ |τ| < high  ==  [|τ| ≥ low] − [|τ| ≥ high]
            too_large = torch.ge(a, self.high, out=self.scratch(a))
            return a.ge_(self.low).sub_(too_large)
        return a.ge_(self.low)

    def _add_ties(self, out: torch.Tensor, start: int) -> torch.Tensor:
        lo, hi = torch.searchsorted(self.ties, torch.tensor([start, start + out.numel()], device=self.ties.device))
        if hi > lo:
            out[self.ties[lo:hi] - start] = 1.0
        return out

    def scratch(self, like: torch.Tensor) -> torch.Tensor:
        return scratch("cut", 1, like.numel(), like.dtype, like.device)[0]

    def _l1_ratio(self) -> float:
        """mergekit's ``rescale_norm=l1``: ‖τ‖₁ / ‖τ·mask‖₁ (1 if either is below 1e-7), from a first pass over the
        masks; the random stream is then rewound so that the merge sees the same masks."""
        before = after = 0.0
        size = chunk_length(self.flat.numel(), self.cols if self.how == "della" else 1)
        buf = torch.empty(size, dtype=self.flat.dtype, device=self.flat.device)
        for start in range(0, self.flat.numel(), size):
            chunk = self.flat[start : start + size]
            a = chunk.abs()
            before += float(a.sum())
            m = self.mask(chunk, buf[: chunk.numel()])
            after += float(a.mul_(m).sum()) if m is not None else float(a.sum())
        self.restart()
        return before / after if before >= L1_EPS and after >= L1_EPS else 1.0


def chunk_length(numel: int, cols: int = 1) -> int:
    """Entries per chunk: ``CHUNK`` rounded down to whole rows of ``cols`` (DELLA ranks rows), at least one row."""
    return min(numel, max(cols, (CHUNK // cols) * cols)) if numel else 0


# ----------------------------------------------------------------------------------------------- consensus
class SignConsensus:
    """Streaming TIES sign election and disjoint mean or sum (mergekit ``get_mask`` + ``normalize``).

    For weighted, sparsified entries t_i (weights w_i): σ = +1 where Σt ≥ 0 (``sum``; ``count``: where Σ sign t ≥ 0),
    else −1; the result is Σ_{sign t_i = σ} t_i divided by Σ_{sign t_i = σ} w_i (``normalize``; 0/0 gives 0 and a
    zero weight divides by 1, as mergekit) or not divided. Four accumulators (five for ``count``), whatever the
    number of vectors: total Σt, mass Σ|t|, signs Σw·sign t, weight Σw·|sign t| (and Σ sign t).
    """

    def __init__(self, size: int, like: torch.Tensor, election: str):
        self.count = election == "count"
        self.buffers = scratch("consensus", 5 + self.count, size, like.dtype, like.device)
        self.one = torch.ones((), dtype=like.dtype, device=like.device)

    def start(self, length: int) -> None:
        rows = self.buffers[:, :length]
        self.total, self.mass, self.signs, self.weight, self.scratch = rows[:5]
        self.votes = rows[5] if self.count else self.total
        rows[:4].zero_()
        if self.count:
            rows[5].zero_()

    def add(self, t: torch.Tensor, weight: float, *, counted: bool = False) -> None:
        """Fold in one weighted, sparsified chunk ``t`` (consumed) of a model of weight ``weight``; ``counted``: its
        non-zero entries were already added to the weight accumulator (from a mask that implies τ ≠ 0)."""
        self.total.add_(t)
        self.mass.add_(torch.abs(t, out=self.scratch))
        t.sign_()
        self.signs.add_(t, alpha=weight)
        if self.count:
            self.votes.add_(t)
        if not counted:
            self.weight.add_(t.abs_(), alpha=weight)

    def finish(self, out: torch.Tensor, normalize: bool, positive: bool) -> None:
        """The chunk's result into ``out``: (Σt + σΣ|t|) / (Σw|sign t| + σΣw sign t), or (Σt + σΣ|t|) / 2.
        ``positive``: every model weight is > 0, so a zero agreeing weight comes with a zero agreeing mass."""
        sigma = torch.copysign(self.one, self.votes, out=self.scratch)  # accumulators start at +0, so Σ = 0 gives +1
        agree = self.mass.mul_(sigma).add_(self.total)  # twice the agreeing mass
        if not normalize:
            torch.mul(agree, 0.5, out=out)
            return
        weight = self.signs.mul_(sigma).add_(self.weight)  # twice the agreeing weight
        if positive:  # 0 / tiny = 0
            weight.clamp_(min=TINY)
        else:  # no agreeing weight: divide by 1, as mergekit
            weight.add_(torch.eq(weight, 0, out=self.scratch), alpha=2.0)
        torch.div(agree, weight, out=out)


# ----------------------------------------------------------------------------------------------- the method
def generalized_task_arithmetic(
    deltas: list[torch.Tensor],
    weights: list[float],
    *,
    sparsify: str,
    consensus: str,
    density: float = 1.0,
    p: float = 0.0,
    gamma: float = 0.0,
    epsilon: float = 0.0,
    cutoff: str = "sampled",
    rescale: str = "none",
    election: str = "sum",
    normalize: bool | None = None,
    rngs: list[torch.Generator] | None = None,
    base: torch.Tensor | None = None,
    alpha: float | None = None,
    **_: object,
) -> torch.Tensor:
    """Sparsify each weighted vector, then sum (``consensus="none"``) or sign-elect and take the agreeing entries'
    mean or sum (``"sign"``). ``normalize`` defaults to the consensus (mean for ``sign``, sum for ``none``).

    With ``alpha`` (``Method.apply``): returns ``base + alpha · result`` computed chunk by chunk, bit for bit what
    ``torch.add(base, result, alpha=alpha)`` gives, without a second pass over memory.

    Streams over the vectors in chunks of ``CHUNK`` entries: memory is the output, one chunk-sized buffer per
    accumulator and the cut-off scratch of one tensor, whatever the number of vectors; inputs are not modified.
    """
    if sparsify not in SPARSIFY or consensus not in CONSENSUS:
        raise ValueError(f"unknown generalized task arithmetic step {sparsify!r}/{consensus!r}")
    normalize = consensus == "sign" if normalize is None else normalize
    shape = deltas[0].shape
    flat = [d.reshape(-1) for d in deltas]
    cols = math.prod(shape[1:]) if len(shape) >= 2 else max(1, flat[0].numel())  # DELLA's rows: 1-D is one row
    steps = [Sparsifier(f, sparsify, density=density, p=p, gamma=gamma, epsilon=epsilon, cutoff=cutoff, rescale=rescale, rng=rngs[i] if rngs else None, cols=cols) for i, f in enumerate(flat)]
    total_weight = sum(weights)
    divisor = total_weight if normalize and consensus == "none" and abs(total_weight) >= 1e-8 else 1.0
    if consensus == "none" and all(step.how == "none" and step.factor == 1.0 for step in steps):  # nothing dropped
        if alpha is not None:
            return linear_apply(deltas, weights, base=base, alpha=alpha, divisor=divisor)
        return weighted_sum(deltas, weights).div_(divisor) if divisor != 1.0 else weighted_sum(deltas, weights)
    n = flat[0].numel()
    size = chunk_length(n, cols if sparsify == "della" else 1)
    out = torch.empty_like(flat[0])
    m_buf = scratch("mask", 1, size, out.dtype, out.device)[0]
    acc = SignConsensus(size, out, election) if consensus == "sign" else None
    positive = all(w > 0 for w in weights)
    base_flat = base.reshape(-1) if alpha is not None else None
    for start in range(0, n, size):
        stop = min(n, start + size)
        length = stop - start
        target = out[start:stop]
        if acc is not None:
            acc.start(length)
        for first, (f, step, w) in enumerate(zip(flat, steps, weights), start=1):
            first = first == 1  # the linear path writes the first vector's share instead of zeroing the target
            chunk = f[start:stop]
            mask = step.mask(chunk, m_buf[:length])
            counted = acc is not None and step.marks_nonzero  # the 0/1 mask counts the non-zero entries kept
            if counted:
                acc.weight.add_(mask, alpha=w)
            t = mask.mul_(chunk) if mask is not None else chunk
            if acc is None and step.folded:  # DARE's 1/(1-p): no mergekit order to follow, one fused step
                torch.mul(t, w * step.factor, out=target) if first else target.add_(t, alpha=w * step.factor)
                continue
            if step.factor != 1.0 or w != 1.0 or acc is not None and mask is None:  # never scale an input in place
                t = t if mask is not None else m_buf[:length].copy_(chunk)
                if step.factor != 1.0:  # mergekit's order of roundings: (τ·mask)·rescale, then ·w
                    t.mul_(step.factor)
                if w != 1.0:
                    t.mul_(w)
            if acc is None:
                target.copy_(t) if first else target.add_(t)
            else:
                acc.add(t, w, counted=counted)
        if acc is not None:
            acc.finish(target, normalize, positive)
        elif divisor != 1.0:
            target.div_(divisor)
        if alpha is not None:
            torch.add(base_flat[start:stop], target, alpha=alpha, out=target)
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------------- registry
def gta_stat_weights(weights: list[float], params: Mapping[str, Any]) -> list[float]:
    """BatchNorm statistics follow the combination: averaged (``w_i/Σw``) when the method normalizes, else summed."""
    return mean_stat_weights(weights, params) if params["normalize"] else list(weights)


def della_check(params: Mapping[str, Any]) -> str | None:
    d, e = params["density"], params["epsilon"]
    if 0 < d < 1 and (d - e <= 0 or d + e >= 1):
        return f"epsilon={e} must keep density ± epsilon inside (0, 1) (density={d}), as DELLA's keep probabilities."
    return None


DENSITY = Param("density", 0.2, "fraction of the largest-magnitude entries each vector keeps", 0.0, 1.0)
DROP = Param("p", 0.9, "probability of dropping each entry", 0.0, 0.999)
CRUMB_DENSITY = Param("density", 0.9, "fraction of entries each vector keeps after dropping outliers and the smallest", 0.0, 1.0)
GAMMA = Param("gamma", 0.01, "fraction of the largest-magnitude entries dropped as outliers", 0.0, 1.0)
DELLA_DENSITY = Param("density", 0.3, "mean fraction of entries each vector keeps (keep probabilities density ± epsilon by magnitude rank)", 0.0, 1.0)
EPSILON = Param("epsilon", 0.1, "spread of the keep probabilities: density − epsilon for the smallest entry of a row, density + epsilon for the largest (mergekit's default 0.15)", 0.0, 1.0)
CUTOFF = Param(
    "cutoff",
    "sampled",
    "how the k-th magnitude is found: sampled (default: from a fixed strided sample, exact up to 16384 entries; kept fraction = density "
    "± √(density·(1−density)/m), ≤ 0.55 % with m ≥ 8192 sampled entries above 57344 entries, ≤ 1 % between; several times faster), "
    "kth_value (exact; ties kept, order-independent), "
    "top_k (exactly k; ties in torch.argsort's order, mergekit's choice)",
    choices=CUTOFFS,
)
RESCALE_MAGNITUDE = Param("rescale", "none", "rescale of the survivors: none (default, as mergekit's TIES/Breadcrumbs) or l1 (back to the tensor's L1 norm; mergekit's rescale: true)", choices=("none", "l1"))
RESCALE_RANDOM = Param(
    "rescale",
    "inverse",
    "rescale of the survivors: inverse (default: 1/(1−p), the DARE paper's, unbiased: E[result] = task arithmetic), "
    "l1 (back to each tensor's L1 norm: mergekit's default rescale: true), none",
    choices=RESCALES,
)
RESCALE_DELLA = Param(
    "rescale",
    "inverse",
    "rescale of the survivors: inverse (default: 1/p_i per entry, the DELLA paper's MagPrune, unbiased), l1 (back to each tensor's L1 norm: "
    "mergekit's default rescale: true), none",
    choices=RESCALES,
)
ELECTION = Param("election", "sum", "sign election: sum (default: sign of the total mass, the TIES paper and mergekit) or count (sign of the majority of signs, mergekit's consensus_method: count)", choices=ELECTIONS)


def normalize_param(default: bool, note: str) -> Param:
    """``normalize`` of a sign-consensus method (mean or sum of the agreeing entries) or of a linear one (÷ Σw)."""
    return Param("normalize", default, note)


MEAN = "the mean (true) or the sum (false) of the entries that agree with the elected sign"
LINEAR_NORMALIZE = normalize_param(False, "divide the sum by Σw (true) or not (false, default, as mergekit)")


TIES = "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models (NeurIPS)"
DARE = "Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch (ICML)"
BREADCRUMBS = "Davari & Belilovsky 2024, Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks (ECCV)"
DELLA = "Deep, Bhardwaj & Poria 2024, DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling"

KEPT = "(today's behaviour, kept; the two have not been compared on our benchmarks)"


def gta_method(name: str, doc: str, paper: str, *, sparsify: str, consensus: str, params: tuple[Param, ...], check=None) -> None:
    """Register one configuration of generalized task arithmetic (its ``fused`` form streams base + alpha·result).

    BatchNorm statistics: a method that normalizes (the disjoint mean of sign consensus, or ``normalize=true``)
    averages, so ``bn=merge`` gives the running statistics the mean coefficients ``w_i/Σw``; otherwise the method
    sums, and so do the statistics.
    """
    fn = partial(generalized_task_arithmetic, sparsify=sparsify, consensus=consensus)
    extra = (ELECTION,) if consensus == "sign" else ()
    register(
        name,
        doc=doc,
        paper=paper,
        params=params + extra,
        random=sparsify in ("random", "della"),
        stat_weights=gta_stat_weights,
        check=check,
        fused=fn,
    )(fn)


gta_method(
    "ties", "Trim each vector to its top-density magnitudes, elect the sign by total mass, disjoint mean.", TIES, sparsify="magnitude", consensus="sign",
    params=(DENSITY, CUTOFF, RESCALE_MAGNITUDE, normalize_param(True, f"{MEAN} (default true, as mergekit)")),
)
gta_method(
    "magnitude_prune", "Trim each vector to its top-density magnitudes, then sum (TIES without the election).", TIES, sparsify="magnitude", consensus="none",
    params=(DENSITY, CUTOFF, RESCALE_MAGNITUDE, LINEAR_NORMALIZE),
)
gta_method(
    "dare", "Drop entries with probability p, rescale the rest by 1/(1-p), then sum (mergekit: dare_linear).", DARE, sparsify="random", consensus="none",
    params=(DROP, RESCALE_RANDOM, LINEAR_NORMALIZE),
)
gta_method(
    "dare_ties", "DARE drop-and-rescale, then TIES sign election and disjoint mean.", DARE, sparsify="random", consensus="sign",
    params=(DROP, RESCALE_RANDOM, normalize_param(True, f"{MEAN} (default true; mergekit's default: false) {KEPT}")),
)
gta_method(
    "breadcrumbs", "Drop the largest gamma and the smallest magnitudes so density remains, then sum.", BREADCRUMBS, sparsify="outliers", consensus="none",
    params=(CRUMB_DENSITY, GAMMA, CUTOFF, RESCALE_MAGNITUDE, LINEAR_NORMALIZE),
)
gta_method(
    "breadcrumbs_ties", "Breadcrumbs masks, then TIES sign election and disjoint mean.", BREADCRUMBS, sparsify="outliers", consensus="sign",
    params=(CRUMB_DENSITY, GAMMA, CUTOFF, RESCALE_MAGNITUDE, normalize_param(True, f"{MEAN} (default true; mergekit's default: false) {KEPT}")),
)
gta_method(
    "della", "DELLA: keep entries with probability rising with their magnitude rank (density ± epsilon), rescale by 1/p_i, TIES election and disjoint mean.", DELLA,
    sparsify="della", consensus="sign", params=(DELLA_DENSITY, EPSILON, RESCALE_DELLA, normalize_param(True, f"{MEAN} (default true, as mergekit)")), check=della_check,
)
gta_method(
    "della_linear", "DELLA's magnitude-ranked drop and rescale, then sum (no election).", DELLA,
    sparsify="della", consensus="none", params=(DELLA_DENSITY, EPSILON, RESCALE_DELLA, LINEAR_NORMALIZE), check=della_check,
)
