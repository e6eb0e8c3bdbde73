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

Cost per vector and chunk: a magnitude cut-off without ties is one ``hardshrink``, a mask one multiplication (one
fused multiply-add into the sum without election); the first vector writes the accumulators, each further one
adds to them in five operations (a sign, two additions, two fused multiply-adds); the election is g = [Σ ≥ 0],
σ = 2g − 1 (``copysign`` is slow on CPU). ``SegmentSparsifier`` runs a concatenation of small tensors (the driver's
groups) as one, each tensor's cut-offs and random draws its own, so the result is that of one by one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from . import memory
from .arithmetic import linear_apply, weighted_sum
from .memory import scratch
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


# ----------------------------------------------------------------------------------------------- counts, cut-offs
def keep_count(numel: int, fraction: float) -> int:
    """How many entries a fraction keeps: ``int(fraction·numel)`` (rounded down, as mergekit and TIES), at least one
    when the fraction is positive, at most ``numel``. Shared with ``compress`` (``keep=``)."""
    return min(numel, max(1 if fraction > 0 else 0, int(fraction * numel)))


def select_in_place(values: torch.Tensor, *ks: int) -> list[float]:
    """The k-th largest entries of a flat tensor (1 ≤ k ≤ numel), reordering ``values`` on CPU.

    numpy's in-place introselect on CPU (about 10× faster than ``torch.kthvalue``), ``torch.kthvalue`` elsewhere.
    """
    if values.device.type == "cpu":
        return select_numpy(values.numpy(), ks)
    return [float(torch.kthvalue(values, values.numel() - k + 1).values) for k in ks]


def select_numpy(array: np.ndarray, ks: Sequence[int]) -> list[float]:
    """The k-th largest entries of a 1-D array (1 ≤ k ≤ len), reordering it in place: one partition per index, each
    on the prefix left by the previous one (several indices in one call are ~10× slower in numpy)."""
    n, found, end = array.size, {}, array.size
    for index in sorted({n - k for k in ks}, reverse=True):
        array[:end].partition(index)
        found[index], end = float(array[index]), index
    return [found[n - k] for k in ks]


def cut_counts(n: int, density: float, gamma: float) -> tuple[int, int, int]:
    """(kept, dropped from the top as outliers, dropped from the bottom) of ``n`` entries; density + gamma > 1:
    fewer outliers are dropped, as mergekit."""
    keep, top = keep_count(n, density), int(gamma * n)
    bottom = n - keep - top
    if bottom < 0:
        top, bottom = top + bottom, 0
    return keep, top, bottom


def band_cutoffs(n: int, density: float, gamma: float, select: Callable[[list[int]], list[float]]) -> tuple[float, float] | None:
    """``(low, high)``: keep ``low ≤ |τ| < high`` of ``n`` entries (``cut_counts``; a bound that cuts nothing is 0 or
    inf), the k-th largest magnitudes read by ``select(ks)``; None where nothing is kept."""
    keep, top, bottom = cut_counts(n, density, gamma)
    if keep == 0:
        return None
    ks = [k for k, used in ((top, top > 0), (n - bottom, bottom > 0)) if used]
    found = dict(zip(ks, select(ks)))
    return found.get(n - bottom, 0.0), found.get(top, math.inf)


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

    Random masks come only from ``rng``. DARE on CPU: 32-bit draws, keep iff u ≥ round(p·2³²) — above
    ``RANDOM_BITS`` entries from a numpy SFC64 generator seeded by ``rng`` (twice as fast as torch's), each u as a
    high 16-bit half per entry and a low half drawn only where the high one ties with the cut-off's (one entry in
    2¹⁶; ``_random_keep``), up to it (no generator to set up) from ``rng`` itself, two per 64-bit word
    (``draw32``); DELLA: float32 uniforms of ``rng``
    (a 2⁻²⁴ grid on CPU), keep iff u < p_i; other devices: a generator of that device seeded by ``rng``.
    ``keep_probability`` is the exact probability of the grid, and the inverse rescale uses it. Float 0/1 masks:
    boolean kernels are slow on CPU.
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
        self.shrink = _below(self.low) if self.how == "magnitude" and self.ties is None and self.high == math.inf and 0 < self.low < math.inf else None
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
        if cutoff == "top_k":  # mergekit: sort(|τ|) ascending, keep positions [bottom, bottom + keep)
            keep, _, bottom = cut_counts(n, density, gamma)
            if keep == 0:
                self.how = "drop_all"
                return
            order = torch.sort(self.flat.abs()).indices
            kept = order[bottom : bottom + keep]
            self.low, self.high = float(self.flat[kept[0]].abs()), float(self.flat[kept[-1]].abs())
            self._keep_ties(kept)
            return
        thresholds = sampled_thresholds if cutoff == "sampled" else exact_thresholds
        band = band_cutoffs(n, density, gamma, lambda ks: thresholds(self.flat, *ks))
        if band is None:
            self.how = "drop_all"
        else:
            self.low, self.high = band

    def _keep_ties(self, kept: torch.Tensor) -> None:
        """``top_k``: the kept indices whose magnitude equals a cut-off (the rest follows from strict comparisons)."""
        mags = self.flat[kept].abs()
        on_edge = (mags == self.low) | (mags == self.high)
        self.ties = kept[on_edge].sort().values

    # -- random draws
    def keep_probability(self) -> float:
        """DARE's exact keep probability: on CPU 32-bit draws, P(u ≥ round(p·2³²)) = 1 − round(p·2³²)/2³²; other
        devices (float32 uniforms) 1 − p."""
        return keep32(self.p) if self.flat.device.type == "cpu" else 1.0 - self.p

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
            if out.device.type == "cpu":
                return draw32(out, [self.torch_rng], [out.numel()], self.p)
            return out.uniform_(generator=self.torch_rng).ge_(self.p)
        # u = 2¹⁶·hi + lo ≥ cut  ⇔  hi > cut_hi, or hi = cut_hi and lo ≥ cut_lo: the high halves decide all but
        # one entry in 2¹⁶ (ties), whose low halves are drawn after the chunk's: 32-bit draws from 16 bits each
        n, (top, low) = out.numel(), divmod(round(self.p * 2**32), 2**16)
        hi = self._raw((n + 3) // 4, scratch("raw", 1, (n + 3) // 4, torch.int64, out.device)[0].numpy().view(np.uint64)).view(np.uint16)[:n]
        marks = out.numpy()  # numpy writes the float 0/1 marks directly (torch would cast through a temporary)
        if low == 0:
            np.greater_equal(hi, top, out=marks)
            return out
        np.greater(hi, top, out=marks)
        ties = np.flatnonzero(hi == top)
        if ties.size:
            lo = self._raw((ties.size + 3) // 4, np.empty((ties.size + 3) // 4, np.uint64)).view(np.uint16)[: ties.size]
            marks[ties] = lo >= low
        return out

    def _raw(self, count: int, into: np.ndarray) -> np.ndarray:
        """``count`` raw 64-bit outputs of the numpy generator into ``into``."""
        for start in range(0, count, RAW_BLOCK):  # small draws: numpy's result buffers never reach mmap sizes
            into[start : start + RAW_BLOCK] = self.bit_generator.random_raw(min(RAW_BLOCK, count - start))
        return into

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
                too_large = torch.ge(a, self.high, out=cut_scratch(a))
                return self._add_ties(a.gt_(self.low).sub_(too_large), start)
            return self._add_ties(a.zero_(), start)
        if self.high < math.inf:  # low ≤ |τ| < high  ==  [|τ| ≥ low] − [|τ| ≥ high]
            too_large = torch.ge(a, self.high, out=cut_scratch(a))
            return a.ge_(self.low).sub_(too_large)
        return a.ge_(self.low)

    def _add_ties(self, out: torch.Tensor, start: int) -> torch.Tensor:
        lo, hi = torch.searchsorted(self.ties, torch.tensor([start, start + out.numel()], device=self.ties.device))
        if hi > lo:
            out[self.ties[lo:hi] - start] = 1.0
        return out

    def kept(self, chunk: torch.Tensor, out: torch.Tensor, m_buf: torch.Tensor) -> torch.Tensor:
        """τ·mask of the next chunk, not yet rescaled or weighted: ``chunk`` itself where nothing is dropped (read
        only), else written into ``out``. A magnitude cut-off without ties is one ``hardshrink`` (|τ| above the float
        just below ``low`` is |τ| ≥ low); other masks are made in ``m_buf`` (``mask``) and multiplied in."""
        if self.how == "none":
            self.position += chunk.numel()
            return chunk
        if self.shrink is not None:
            self.position += chunk.numel()
            return torch.hardshrink(chunk, self.shrink, out=out)
        return torch.mul(self.mask(chunk, m_buf), chunk, out=out)

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


class SegmentSparsifier:
    """The sparsification of a concatenation of small tensors, each exactly as ``Sparsifier`` treats it alone.

    ``sizes``: the tensors' numbers of entries, each ≤ ``EXACT`` (so sampled cut-offs are the exact ones) and ≤
    ``RANDOM_BITS`` (so DARE's 32-bit draws come from the tensor's own generator, ``draw32``), the whole ≤ ``CHUNK``
    (one chunk). Cut-offs are found per tensor (numpy's select on each slice of one ``abs``); the masks are made once
    over the concatenation against per-entry cut-offs, and each tensor's draws come from its own generator in
    ``rngs``, so the result equals the tensors merged one by one. ``groupable`` says which settings it takes.
    """

    def __init__(self, flat: torch.Tensor, how: str, *, density: float, p: float, gamma: float, rescale: str, rngs: list[torch.Generator] | None, sizes: list[int]):
        self.flat, self.how, self.factor, self.shrink, self.position = flat, how, 1.0, None, 0
        self.high = None
        if how == "none" or (how == "random" and p <= 0) or (how in ("magnitude", "outliers") and density >= 1 and (how != "outliers" or gamma <= 0)):
            self.how = "none"
        elif how in ("magnitude", "outliers"):
            self._cutoffs(sizes, density, gamma if how == "outliers" else 0.0)
        elif how == "random":
            if rngs is None:
                raise ValueError("random sparsification needs one generator per model and tensor.")
            self.p, self.rngs, self.sizes = p, rngs, sizes
            if rescale == "inverse":  # Sparsifier.keep_probability on CPU
                self.factor = 1.0 / keep32(p)
        else:
            raise ValueError(f"sparsification {how!r} does not run on concatenated tensors")

    def _cutoffs(self, sizes: list[int], density: float, gamma: float) -> None:
        """Per-entry cut-offs: keep ``low ≤ |τ| < high`` (``Sparsifier._magnitude_cutoff`` / ``_outlier_cutoffs``)."""
        array = self.flat.abs().numpy()
        lows, highs, start = [], [], 0
        for n in sizes:
            part, start = array[start : start + n], start + n
            low, high = band_cutoffs(n, density, gamma, partial(select_numpy, part)) or (math.inf, math.inf)  # None: no entry is ≥ inf (drop_all)
            lows.append(low)
            highs.append(high)
        self.sizes, self.low = sizes, np.array(lows, dtype=array.dtype)  # spread over the entries when masking
        if any(h < math.inf for h in highs):
            self.high = np.array(highs, dtype=array.dtype)

    def mask(self, chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The 0/1 multiplier of every entry (the whole concatenation is one chunk)."""
        if self.how == "random":
            return draw32(out, self.rngs, self.sizes, self.p)
        a = torch.abs(chunk, out=out)
        if self.high is not None:  # low ≤ |τ| < high  ==  [|τ| ≥ low] − [|τ| ≥ high]
            too_large = torch.ge(a, self.spread(self.high), out=cut_scratch(a))
            return a.ge_(self.spread(self.low)).sub_(too_large)
        return a.ge_(self.spread(self.low))

    def spread(self, cutoffs: np.ndarray) -> torch.Tensor:
        """One cut-off per tensor → one per entry (numpy's repeat: ~10× torch's ``repeat_interleave``)."""
        return torch.from_numpy(np.repeat(cutoffs, self.sizes))

    def kept(self, chunk: torch.Tensor, out: torch.Tensor, m_buf: torch.Tensor) -> torch.Tensor:
        """τ·mask (``Sparsifier.kept``): ``chunk`` itself where nothing is dropped, else written into ``out``."""
        if self.how == "none":
            return chunk
        return torch.mul(self.mask(chunk, m_buf), chunk, out=out)


def cut_scratch(like: torch.Tensor) -> torch.Tensor:
    """The reused buffer of a band cut-off's second comparison (``[|τ| ≥ high]``), shaped as ``like``."""
    return scratch("cut", 1, like.numel(), like.dtype, like.device)[0]


def keep32(p: float) -> float:
    """The keep probability of 32-bit draws kept iff u ≥ round(p·2³²)."""
    return 1.0 - round(p * 2**32) / 2**32


def draw32(out: torch.Tensor, rngs: Sequence[torch.Generator], sizes: Sequence[int], p: float) -> torch.Tensor:
    """0/1 marks into ``out`` (CPU), kept iff u ≥ round(p·2³²): consecutive runs of ``sizes`` entries, each from its
    own generator, which gives ⌈size/2⌉ 64-bit words (``random_`` over the full range: 1.7× as fast as uniforms)
    read as two 32-bit draws each, low half first (compared as signed halves: the same probability). One run is one
    tensor, so a tensor's marks are the same alone or in a group (``SegmentSparsifier``)."""
    words = [(n + 1) // 2 for n in sizes]
    raw = scratch("raw", 1, sum(words), torch.int64, out.device)[0]
    start = 0
    for count, rng in zip(words, rngs):
        raw[start : start + count].random_(-(2**63), None, generator=rng)
        start += count
    halves, cut = raw.view(torch.int32), round(p * 2**32) - 2**31
    if len(sizes) == 1 or all(n % 2 == 0 for n in sizes):  # no unused halves between the runs
        return torch.ge(halves[: out.numel()], cut, out=out)
    padded = torch.ge(halves, cut, out=scratch("marks", 1, halves.numel(), out.dtype, out.device)[0])
    return torch.index_select(padded, 0, _unpadded(tuple(sizes)), out=out)  # the halves past each odd run dropped


@functools.lru_cache(maxsize=2)  # the vectors of one group in turn
def _unpadded(sizes: tuple[int, ...]) -> torch.Tensor:
    """Positions of each run's first ``size`` halves among its ⌈size/2⌉·2."""
    pads = np.array([n % 2 for n in sizes])
    skip = np.repeat(np.concatenate(([0], np.cumsum(pads)[:-1])), sizes)
    return torch.from_numpy((np.arange(skip.size) + skip).astype(np.int32))


def groupable(sparsify: str, params: Mapping[str, Any]) -> bool:
    """Whether ``SegmentSparsifier`` takes these settings: no per-row ranks (DELLA), no per-tensor norms
    (``rescale=l1``), no exact-k ties (``cutoff=top_k``)."""
    return sparsify in ("none", "magnitude", "outliers", "random") and params.get("rescale") != "l1" and params.get("cutoff") != "top_k"


def _below(low: float) -> float:
    """The largest float32 below ``low`` (a float32 value): ``|x| > _below(low)`` ⇔ ``|x| ≥ low`` in float32."""
    return float(np.nextafter(np.float32(low), np.float32(0)))


def chunk_length(numel: int, cols: int = 1) -> int:
    """Entries per chunk: ``CHUNK`` rounded down to whole rows of ``cols`` (DELLA ranks rows), at least one row."""
    return min(numel, max(cols, (CHUNK // cols) * cols)) if numel else 0


# ----------------------------------------------------------------------------------------------- consensus
class SignConsensus:
    """Streaming TIES sign election and disjoint mean or sum (mergekit ``get_mask`` + ``normalize``).

    For weighted, sparsified entries t_i (weights w_i): σ = +1 where Σt ≥ 0 (``sum``; ``count``: where Σ sign t ≥ 0),
    else −1; the result is Σ_{sign t_i = σ} t_i divided by Σ_{sign t_i = σ} w_i (``normalize``; 0/0 gives 0 and a
    zero weight divides by 1, as mergekit) or not divided. Four accumulators (five for ``count``), whatever the
    number of vectors: total Σt, mass Σ|t|, signs Σw·sign t, weight Σw·|sign t| (and Σ sign t). The first vector
    writes them, the others add to them: five operations per vector and chunk (a sign, two additions, two fused
    multiply-adds).
    """

    def __init__(self, size: int, like: torch.Tensor, election: str):
        self.count = election == "count"
        self.buffers = scratch("consensus", 5 + self.count, size, like.dtype, like.device)

    def start(self, length: int) -> None:
        rows = self.buffers[:, :length]
        self.total, self.mass, self.signs, self.weight, self.scratch = rows[:5]
        self.votes = rows[5] if self.count else self.total

    def first(self, t: torch.Tensor, weight: float) -> None:
        """Start from one vector's weighted, sparsified chunk ``t`` (not modified unless it is ``self.total``) of a
        model of weight ``weight``."""
        if t is not self.total:
            self.total.copy_(t)
        torch.abs(self.total, out=self.mass)
        signs = torch.sign(self.total, out=self.signs)
        if self.count:
            self.votes.copy_(signs)
        torch.abs(signs, out=self.weight)
        if weight != 1.0:
            self.weight.mul_(weight)
            signs.mul_(weight)

    def add(self, t: torch.Tensor, weight: float) -> None:
        """Fold in one more vector's weighted, sparsified chunk ``t`` (not modified)."""
        s = torch.sign(t, out=self.scratch)
        self.total.add_(t)
        self.mass.addcmul_(t, s)  # |t|
        self.signs.add_(s, alpha=weight)
        self.weight.addcmul_(s, s, value=weight)  # w·|sign t|
        if self.count:
            self.votes.add_(s)

    def finish(self, out: torch.Tensor, normalize: bool, positive: bool) -> None:
        """The chunk's result into ``out``: (Σt + σΣ|t|) / (Σw|sign t| + σΣw sign t), or (Σt + σΣ|t|) / 2, with
        g = [Σ ≥ 0] and σ = 2g − 1 (Σt + σΣ|t| = Σt − Σ|t| + 2gΣ|t|). ``positive``: every model weight is > 0, so a
        zero agreeing weight comes with a zero agreeing mass."""
        g = torch.ge(self.votes, 0, out=self.scratch)  # Σ = ±0 elects +1
        agree = self.total.sub_(self.mass).addcmul_(g, self.mass, value=2.0)  # twice the agreeing mass
        if not normalize:
            torch.mul(agree, 0.5, out=out)
            return
        weight = self.weight.sub_(self.signs).addcmul_(g, self.signs, value=2.0)  # twice the agreeing weight
        if positive:  # 0 / tiny = 0
            weight.clamp_(min=TINY)
        else:  # no agreeing weight: divide by 1, as mergekit
            weight.add_(torch.eq(weight, 0, out=self.scratch), alpha=2.0)
        torch.div(agree, weight, out=out)


def linear_step(target: torch.Tensor, step: Sparsifier | SegmentSparsifier, chunk: torch.Tensor, m_buf: torch.Tensor, scale: float, first: bool) -> None:
    """``target (+)= scale · τ·mask`` for one vector's chunk (the sum without election): the first vector writes."""
    if step.how != "none" and step.shrink is None:  # a mask: multiplied in by one fused multiply-add
        mask = step.mask(chunk, m_buf)
        if first:
            torch.mul(mask, chunk, out=target)
            if scale != 1.0:
                target.mul_(scale)
        else:
            target.addcmul_(mask, chunk, value=scale)
        return
    t = step.kept(chunk, target if first else m_buf, m_buf)
    if first:
        if t is not target:
            torch.mul(t, scale, out=target) if scale != 1.0 else target.copy_(t)
        elif scale != 1.0:
            target.mul_(scale)
    else:
        target.add_(t, alpha=scale)


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
    rngs: list | None = None,
    base: torch.Tensor | None = None,
    alpha: float | None = None,
    segments: list[int] | None = None,
    **_: object,
) -> torch.Tensor:
    """Sparsify each weighted vector, then sum (``consensus="none"``) or sign-elect and take the agreeing entries'
    mean or sum (``"sign"``). ``normalize`` defaults to the consensus (mean for ``sign``, sum for ``none``).

    With ``alpha`` (``Method.apply``): returns ``base + alpha · result`` computed chunk by chunk, bit for bit what
    ``torch.add(base, result, alpha=alpha)`` gives, without a second pass over memory.

    Streams over the vectors in chunks of ``CHUNK`` entries: memory is the output, one chunk-sized buffer per
    accumulator and the cut-off scratch of one tensor, whatever the number of vectors; inputs are not modified.

    ``segments``: the deltas are concatenations of small tensors of these sizes (``SegmentSparsifier``; ``rngs``
    then holds one list of generators per model, one per tensor), merged in one pass as if one by one.
    """
    if sparsify not in SPARSIFY or consensus not in CONSENSUS:
        raise ValueError(f"unknown generalized task arithmetic step {sparsify!r}/{consensus!r}")
    normalize = consensus == "sign" if normalize is None else normalize
    shape = deltas[0].shape
    flat = [d.reshape(-1) for d in deltas]
    cols = math.prod(shape[1:]) if len(shape) >= 2 else max(1, flat[0].numel())  # DELLA's rows: 1-D is one row
    if segments is not None:
        steps = [SegmentSparsifier(f, sparsify, density=density, p=p, gamma=gamma, rescale=rescale, rngs=rngs[i] if rngs else None, sizes=segments) for i, f in enumerate(flat)]
    else:
        steps = [Sparsifier(f, sparsify, density=density, p=p, gamma=gamma, epsilon=epsilon, cutoff=cutoff, rescale=rescale, rng=rngs[i] if rngs else None, cols=cols) for i, f in enumerate(flat)]
    total_weight = sum(weights)
    divisor = total_weight if normalize and consensus == "none" and abs(total_weight) >= 1e-8 else 1.0
    if consensus == "none" and all(step.how == "none" and step.factor == 1.0 for step in steps):  # nothing dropped
        if alpha is not None:
            return linear_apply(deltas, weights, base=base, alpha=alpha, divisor=divisor)
        return weighted_sum(deltas, weights).div_(divisor) if divisor != 1.0 else weighted_sum(deltas, weights)
    n = flat[0].numel()
    size = n if segments is not None else chunk_length(n, cols if sparsify == "della" else 1)  # segments: one chunk
    out = memory.empty_like(flat[0])
    m_buf = scratch("mask", 1, size, out.dtype, out.device)[0]
    acc = SignConsensus(size, out, election) if consensus == "sign" else None
    positive = all(w > 0 for w in weights)
    scales = [w * step.factor for w, step in zip(weights, steps)]  # sums: one rounding, (τ·mask)·(w·rescale)
    # DARE's inverse rescale, the same 1/keep for every vector, scales the election's result instead of each vector
    pulled = acc is not None and sparsify == "random" and rescale == "inverse" and len({step.factor for step in steps}) == 1 and steps[0].factor != 1.0
    base_flat = base.reshape(-1) if alpha is not None else None
    for start in range(0, n, size):
        stop = min(n, start + size)
        length = stop - start
        target = out[start:stop]
        if acc is None:
            for i, (f, step, scale) in enumerate(zip(flat, steps, scales)):
                linear_step(target, step, f[start:stop], m_buf[:length], scale, i == 0)
            if divisor != 1.0:
                target.div_(divisor)
        else:
            acc.start(length)
            for i, (f, step, w) in enumerate(zip(flat, steps, weights)):
                chunk, buf = f[start:stop], acc.total if i == 0 else m_buf[:length]
                t = step.kept(chunk, buf, m_buf[:length])
                factor = 1.0 if pulled else step.factor
                if factor != 1.0:  # mergekit's roundings: (τ·mask)·rescale, then ·w; never an input in place
                    t = torch.mul(t, factor, out=buf)
                if w != 1.0:
                    t = torch.mul(t, w, out=buf)
                acc.first(t, w) if i == 0 else acc.add(t, w)
            acc.finish(target, normalize, positive)
            if pulled:
                target.mul_(steps[0].factor)
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
        grouped=partial(groupable, sparsify),
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
