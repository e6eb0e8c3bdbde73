"""Compact task-vector files: top-k sparsification, low-rank factors, int8 (and fewer-bit) quantization, fp16/bf16.

Options (combinable), applied to every *compressible* delta, i.e. a weight with two or more dimensions (conv and
linear weights):

* ``rank=r`` / ``energy=e``: low-rank factors ``u @ v`` of the weight seen as a matrix ``(out, in·k·k)``, with rank
  ``r`` or the smallest rank keeping a fraction ``e`` of the squared singular values (``rank`` caps ``energy`` when
  both are given). A tensor whose factors would not be smaller than the tensor itself is not factorised.
* ``keep=f`` with ``scope=tensor|global``: the top ``f`` fraction of the magnitudes, per tensor or over all
  compressible tensors together, stored as indices + values. With low-rank factors, ``keep`` applies to the
  residual (low-rank plus sparse). Indices are stored as uint8 gaps between consecutive positions (byte 0 is an
  escape that advances 255) or as a packed bit mask, whichever is smaller.
* ``quant=int8``: the stored values (dense weights, sparse values or low-rank factors) as int8 with one fp32 scale
  per row (per output channel; per factor row), symmetric, ``scale = max|row| / 127``. ``quant=int4|int3|int2|int1``:
  bit-packed codes on mid-rise levels ``(q + ½)·scale`` whose per-row scale is searched to minimise the squared
  error (``int1`` is sign × per-row magnitude). Quantization noise is unbiased; dropping entries (``keep``) or
  components (``rank``) shrinks the vector, which YOLO fine-tunes tolerate far less (see the benchmark).
* ``dtype=fp32|fp16|bf16``: the float storage of everything not quantized; ``dtype=int8`` is short for
  ``quant=int8`` with fp16 for the rest.

Kept dense, in ``dtype``: 1-D tensors (biases, BatchNorm weights and running statistics, about 1.5 % of a YOLO26n's
values) and carried (absolute) tensors. BatchNorm statistics are kept whole on purpose: they are small and they go
with the weights; a vector whose weights shrink while its statistics stay whole no longer fits together.

Each tensor's entry in the file's ``encodings`` records its kind (``dense``, ``quant``, ``sparse``, ``lowrank``,
``lowrank+sparse``), storage dtype, quantization, rank, kept entries, index coding and relative error; ``meta``
holds a ``compression`` summary. The decoders registered here rebuild dense fp32 tensors on load (``files.
load_vector``), validating every field, so apply, merge, sweep and swap work unchanged on compressed files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import TaskVecError, VectorFileError
from .files import DECODERS, DTYPES, dense_encoder, save_vector
from .limits import MAX_TENSOR_VALUES
from .methods.sparse import keep_count
from .taskvector import TaskVector, is_bn_stat

SCOPES = ("tensor", "global")
QUANTS = ("int8", "int4", "int3", "int2", "int1")
OPTION_NAMES = ("keep", "scope", "rank", "energy", "quant")
MAX_NUMEL = MAX_TENSOR_VALUES  # a decoded tensor may not be larger (no YOLO weight comes close); guards corrupted shapes
INT8_MAX = 127
MAX_GAP = 255
CLIPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)  # low-bit scale search
SCALE_DTYPE = torch.bfloat16  # per-row scales of int4..int1 codes (int8 keeps fp32 scales: its step is finer)
Restat = Callable[[TaskVector, TaskVector], tuple[dict[str, torch.Tensor], dict[str, Any]]]


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Options:
    """Validated compression options."""

    dtype: str = "fp32"
    keep: float | None = None
    scope: str = "tensor"
    rank: int | None = None
    energy: float | None = None
    quant: str | None = None

    @classmethod
    def make(cls, dtype: str = "fp32", **options: Any) -> Options:
        """Check names and values; one clear sentence per mistake."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TaskVecError(f"unknown compression option '{unknown[0]}'; valid: dtype, {', '.join(OPTION_NAMES)}.")
        opts = {k: v for k, v in options.items() if v is not None}
        if dtype == "int8":
            if opts.get("quant", "int8") != "int8":
                raise TaskVecError(f"dtype=int8 contradicts quant={opts['quant']}.")
            dtype, opts["quant"] = "fp16", "int8"
        if dtype not in DTYPES:
            raise TaskVecError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)} (or int8: quant=int8 with fp16 for the rest).")
        keep = _fraction(opts.get("keep"), "keep")
        scope = str(opts.get("scope", "tensor"))
        if scope not in SCOPES:
            raise TaskVecError(f"scope must be one of {', '.join(SCOPES)}, got '{scope}'.")
        if scope != "tensor" and keep is None:
            raise TaskVecError("scope= says where keep= selects the top magnitudes; give keep= as well.")
        rank = opts.get("rank")
        if rank is not None:
            if isinstance(rank, bool) or not isinstance(rank, int) and not (isinstance(rank, float) and rank.is_integer()):
                raise TaskVecError(f"rank must be a positive integer, got {rank!r}.")
            rank = int(rank)
            if rank < 1:
                raise TaskVecError(f"rank must be a positive integer, got {rank}.")
        energy = _fraction(opts.get("energy"), "energy")
        quant = opts.get("quant")
        if quant is not None and quant not in QUANTS:
            raise TaskVecError(f"quant must be one of {', '.join(QUANTS)}, got '{quant}'.")
        return cls(dtype, keep, scope, rank, energy, quant)

    @property
    def low_rank(self) -> bool:
        return self.rank is not None or self.energy is not None

    def label(self) -> str:
        """Short human description, e.g. ``keep 0.1 (tensor) + int8, fp16``."""
        steps = []
        if self.low_rank:
            steps.append("low-rank " + ", ".join(f"{k} {v:g}" for k, v in (("rank", self.rank), ("energy", self.energy)) if v is not None))
        if self.keep is not None:
            steps.append(f"keep {self.keep:g} ({self.scope})")
        if self.quant:
            steps.append(self.quant)
        return " + ".join(steps or ["dense"]) + f", {self.dtype}"


def _number(value: Any, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise TaskVecError(f"{what} must be a number, got {value!r}.") from e
    if not math.isfinite(value):
        raise TaskVecError(f"{what} must be finite, got {value}.")
    return value


def _fraction(value: Any, what: str) -> float | None:
    """``None``, or a number in (0, 1]."""
    if value is None:
        return None
    value = _number(value, what)
    if not 0 < value <= 1:
        raise TaskVecError(f"{what} must be a fraction in (0, 1], got {value:g}.")
    return value


def compressible(key: str, t: torch.Tensor) -> bool:
    """Weights with two or more dimensions; 1-D tensors and BatchNorm statistics stay dense."""
    return t.ndim >= 2 and t.numel() > 0 and t.shape[0] > 0 and not is_bn_stat(key)


# ----------------------------------------------------------------------------------------------- quantization
def quant_bits(quant: str) -> int:
    return int(quant[3:])


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _spread(scale: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Per-row scales laid over the values: broadcast over a matrix (``rows`` None) or gathered by row index."""
    return scale[:, None] if rows is None else scale[rows]


def dequantize(codes: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Float values of int8 codes (``q · scale``) or low-bit codes (``(q − 2^(b−1) + ½) · scale``)."""
    if bits == 8:
        return codes.float() * _spread(scale, rows)
    return (codes.float() - (2 ** (bits - 1) - 0.5)) * _spread(scale, rows)


def quantize(values: torch.Tensor, rows: torch.Tensor | None, n_rows: int, quant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat codes and one fp32 scale per row, for a matrix (``rows`` None) or flat values with their row index.

    int8: symmetric, zero exact, ``scale = max|row| / 127``, stored as int8. Fewer bits: mid-rise levels
    ``(q + ½)·scale`` (no level is zero, so no entry is silently dropped), with the per-row scale chosen from
    ``CLIPS · max|row| / 2^(b−1)`` to minimise the squared error; codes bit-packed into uint8.
    """
    bits = quant_bits(quant)
    values = values.float()
    if rows is None:
        amax = values.abs().amax(dim=1)
    else:
        amax = torch.zeros(n_rows).scatter_reduce_(0, rows, values.abs(), "amax", include_self=True)
    if bits == 8:
        scale = amax / INT8_MAX
        codes = torch.round(values / _spread(_safe(scale), rows)).clamp_(-INT8_MAX, INT8_MAX)
        return codes.to(torch.int8).reshape(-1), scale
    half = 2 ** (bits - 1)
    best_scale = best_err = None
    for clip in CLIPS:
        scale = clip * amax / half
        codes = torch.floor(values / _spread(_safe(scale), rows)).clamp_(-half, half - 1).add_(half)
        sq = (dequantize(codes, scale, rows, bits) - values).square_()
        err = sq.sum(1) if rows is None else torch.zeros(n_rows).index_add_(0, rows, sq)
        if best_scale is None:
            best_scale, best_err = scale, err
        else:
            better = err < best_err
            best_scale, best_err = torch.where(better, scale, best_scale), torch.where(better, err, best_err)
    best_scale = best_scale.to(SCALE_DTYPE)  # 2 bytes a row; its rounding (2^-9) is far below a low-bit step
    codes = torch.floor(values / _spread(_safe(best_scale.float()), rows)).clamp_(-half, half - 1).add_(half)
    return pack_bits(codes.to(torch.uint8).reshape(-1), bits), best_scale


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes below ``2**bits`` packed little-endian into ``ceil(n·bits/8)`` bytes."""
    planes = ((codes.to(torch.uint8)[:, None] >> torch.arange(bits, dtype=torch.uint8)) & 1).reshape(-1)
    planes = torch.cat([planes, planes.new_zeros(-planes.numel() % 8)])
    return (planes.view(-1, 8).to(torch.int16) << torch.arange(8, dtype=torch.int16)).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_bits`` (int16 codes); the byte count and the padding bits are checked."""
    if packed.numel() != math.ceil(n * bits / 8):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {n} {bits}-bit codes")
    planes = ((packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    if bool(planes[n * bits :].any()):
        raise ValueError("packed codes have non-zero padding bits")
    return (planes[: n * bits].view(n, bits).to(torch.int16) << torch.arange(bits, dtype=torch.int16)).sum(1)


# ----------------------------------------------------------------------------------------------- encoding
def _store_float(t: torch.Tensor, dtype: str, key: str) -> torch.Tensor:
    if dtype == "fp16" and t.numel() and float(t.abs().max()) > torch.finfo(torch.float16).max:
        raise VectorFileError(f"{key} holds values beyond the fp16 range; compress with dtype=fp32 or bf16.")
    return t.to(DTYPES[dtype]).contiguous()


def _store_values(name: str, values: torch.Tensor, rows: torch.Tensor | None, n_rows: int, opts: Options, key: str) -> dict[str, torch.Tensor]:
    """Values (a matrix when ``rows`` is None, else flat) as float ``dtype``, or flat codes + per-row scales."""
    if opts.quant:
        codes, scale = quantize(values, rows, n_rows, opts.quant)
        return {name: codes, f"{name}_scale": scale}
    return {name: _store_float(values, opts.dtype, key)}


def _store_matrix(name: str, x: torch.Tensor, opts: Options, key: str) -> dict[str, torch.Tensor]:
    return _store_values(name, x, None, x.shape[0], opts, key)


def choose_rank(s: torch.Tensor, opts: Options) -> int:
    """Rank from the singular values: ``energy`` fraction of Σσ², capped by ``rank``."""
    full = s.numel()
    r = full if opts.rank is None else min(opts.rank, full)
    if opts.energy is not None:
        power = s.double().pow(2)
        total = float(power.sum())
        if total == 0:
            return 0
        cum = torch.cumsum(power, 0) / total
        r = min(r, int(torch.searchsorted(cum, torch.tensor(opts.energy, dtype=cum.dtype) - 1e-12)) + 1)
    return r


def low_rank_fields(t: torch.Tensor, opts: Options, key: str) -> tuple[dict[str, torch.Tensor], int] | None:
    """Factor fields ``u`` (out, r), ``v`` (r, in·k·k) of a weight, or None when they would not be smaller."""
    m = t.reshape(t.shape[0], -1)
    rows, cols = m.shape
    if rows < cols:  # LAPACK is several times faster on the tall orientation
        v, s, uh = torch.linalg.svd(m.T, full_matrices=False)
        u, vh = uh.T, v.T
    else:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = choose_rank(s, opts)
    if r < 1 or r * (rows + cols) >= rows * cols:
        return None
    root = s[:r].sqrt()
    fields = _store_matrix("u", u[:, :r] * root, opts, key)
    fields.update(_store_matrix("v", root[:, None] * vh[:r], opts, key))
    return fields, r


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat indices of the ``k`` largest magnitudes."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.topk(x.reshape(-1).abs(), k, sorted=False).indices.sort().values


def gap_code(idx: torch.Tensor) -> torch.Tensor:
    """Sorted indices as uint8 gaps (the first from -1); byte 0 is an escape that advances 255 without an entry."""
    gaps = torch.diff(idx, prepend=torch.tensor([-1], dtype=idx.dtype))
    escapes = (gaps - 1) // MAX_GAP
    counts = escapes + 1
    out = torch.zeros(int(counts.sum()), dtype=torch.int64)
    out[torch.cumsum(counts, 0) - 1] = gaps - MAX_GAP * escapes
    return out.to(torch.uint8)


def gap_decode(gaps: torch.Tensor) -> torch.Tensor:
    """Flat indices of a gap code (inverse of ``gap_code``)."""
    g = gaps.long()
    positions = torch.cumsum(torch.where(g == 0, MAX_GAP, g), 0) - 1
    return positions[g != 0]


def sparse_fields(t: torch.Tensor, idx: torch.Tensor, opts: Options, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Indices (gaps or bit mask, whichever is smaller) and values (float or codes with per-row scales)."""
    numel = t.numel()
    gaps = gap_code(idx)
    if gaps.numel() <= math.ceil(numel / 8):
        fields, coding = {"gaps": gaps}, "gaps"
    else:
        mask = torch.zeros(numel, dtype=torch.uint8)
        mask[idx] = 1
        fields, coding = {"mask": pack_bits(mask, 1)}, "mask"
    fields.update(_store_values("values", t.reshape(-1)[idx], idx // (numel // t.shape[0]), t.shape[0], opts, key))
    return fields, {"kept": int(idx.numel()), "index": coding}


_UNSET: Any = object()


def encode_tensor(key: str, t: torch.Tensor, opts: Options, kept: torch.Tensor | None = None, low: Any = _UNSET) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fields and info of one delta. ``kept``: precomputed indices (global scope); ``low``: precomputed factors."""
    if not compressible(key, t):
        fields, info = dense_encoder(opts.dtype)(key, t)
    else:
        if low is _UNSET:
            low = low_rank_fields(t, opts, key) if opts.low_rank else None
        fields, info = _encode_weight(key, t, opts, kept, low)
    if info["kind"] != "dense":
        approx = DECODERS[info["kind"]](fields, info, tuple(t.shape))
        norm = float(t.norm())
        info["error"] = float(f"{float((approx - t).norm()) / norm:.4g}") if norm else 0.0
    return fields, info


def _encode_weight(key: str, t: torch.Tensor, opts: Options, kept: torch.Tensor | None, low: tuple | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    fields: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {"dtype": opts.dtype, **({"quant": opts.quant} if opts.quant else {})}
    kinds = []
    residual = t
    if low is not None:
        fields.update(low[0])
        info["rank"] = low[1]
        kinds.append("lowrank")
        residual = t - decode_low_rank(fields, info, tuple(t.shape))
    if opts.keep is not None:
        idx = kept if kept is not None else top_indices(residual, keep_count(t.numel(), opts.keep))
        sparse, sparse_info = sparse_fields(residual, idx, opts, key)
        fields.update(sparse)
        info.update(sparse_info)
        kinds.append("sparse")
    if not kinds:
        if opts.quant is None:
            return dense_encoder(opts.dtype)(key, t)
        codes, scale = quantize(t.reshape(t.shape[0], -1), None, t.shape[0], opts.quant)
        fields, kinds = {"codes": codes, "scale": scale}, ["quant"]
    info["kind"] = "+".join(kinds)
    return fields, info


def plan(tv: TaskVector, opts: Options) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Encodings of every delta (global top-k needs all tensors before any is encoded)."""
    keys = sorted(tv.deltas)
    deltas = {k: tv.deltas[k].detach().float().cpu() for k in keys}
    low: dict[str, Any] = {}
    kept: dict[str, torch.Tensor] = {}
    if opts.keep is not None and opts.scope == "global":
        residuals = {}
        for k in keys:
            if compressible(k, deltas[k]):
                low[k] = low_rank_fields(deltas[k], opts, k) if opts.low_rank else None
                r = deltas[k]
                if low[k] is not None:
                    r = r - decode_low_rank(low[k][0], {"quant": opts.quant, "rank": low[k][1]}, tuple(r.shape))
                residuals[k] = r.reshape(-1)
        kept = global_top_indices(residuals, opts.keep)
    return {k: encode_tensor(k, deltas[k], opts, kept.get(k), low.get(k, _UNSET)) for k in keys}


def global_top_indices(flat: Mapping[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Per-tensor sorted indices of the top ``fraction`` magnitudes over all tensors together."""
    if not flat:
        return {}
    names = list(flat)
    sizes = [flat[k].numel() for k in names]
    allv = torch.cat([flat[k] for k in names])
    idx = top_indices(allv, keep_count(allv.numel(), fraction))
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    owner = torch.bucketize(idx, offsets[1:], right=True)
    return {k: idx[owner == i] - offsets[i] for i, k in enumerate(names)}


def tensor_bytes(fields: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in fields.values())


def save_compressed(tv: TaskVector, path: str | os.PathLike, *, dtype: str = "fp32", inputs: tuple = (), pack: bool = True, restat: Restat | None = None, **options: Any) -> Path:
    """Write ``tv`` compressed (see the module docstring); loads back as a dense vector with ``TaskVector.load``.

    ``pack``: the packed layout (format 2, a few KB of header instead of ~150 KB). ``restat(exact, approx)``: new
    BatchNorm-statistic deltas for the approximated vector and a summary of how they were made (the adapter's
    ``calib.calibrator`` re-estimates them on images); they replace the vector's own before writing.
    """
    opts = Options.make(dtype, **options)
    encoded = plan(tv, opts)
    calib = None
    if restat is not None:
        stats, calib = restat(tv, decoded(tv, encoded))
        unknown = sorted(k for k in stats if k not in tv.deltas or not is_bn_stat(k))
        if unknown:
            raise TaskVecError(f"re-estimated statistics must replace BatchNorm statistics of the vector, got {unknown[0]}.")
        tv = TaskVector({**tv.deltas, **stats}, tv.absolute, tv.meta)
        encoded.update((k, encode_tensor(k, stats[k], opts)) for k in stats)
    summary = summarize_plan(tv, encoded, opts, calib)
    return save_vector(tv, path, dtype=opts.dtype, encoder=lambda key, t: encoded[key], extra_meta={"compression": summary}, inputs=inputs, pack=pack)


def decoded(tv: TaskVector, encoded: Mapping[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]) -> TaskVector:
    """The dense vector a file of these encodings loads as (deltas decoded, carried tensors as they are)."""
    deltas = {k: DECODERS[info["kind"]](fields, info, tuple(tv.deltas[k].shape)) for k, (fields, info) in encoded.items()}
    return TaskVector(deltas, dict(tv.absolute), dict(tv.meta))


def summarize_plan(tv: TaskVector, encoded: Mapping[str, tuple], opts: Options, calib: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``compression`` entry of the file's meta; ``relative_error`` is over the compressible weights."""
    kinds: dict[str, int] = {}
    stored = sum(t.numel() * DTYPES[opts.dtype].itemsize for t in tv.absolute.values())
    err = ref = 0.0
    for key, (fields, info) in encoded.items():
        kinds[info["kind"]] = kinds.get(info["kind"], 0) + 1
        stored += tensor_bytes(fields)
        if compressible(key, tv.deltas[key]):
            norm = float(tv.deltas[key].float().norm()) ** 2
            ref += norm
            err += norm * info.get("error", 0.0) ** 2
    values = tv.numel()
    return {
        **{k: v for k, v in asdict(opts).items() if v is not None},
        "label": opts.label() + (f", BatchNorm statistics re-fitted ({calib.get('mode', '?')})" if calib else ""),
        **({"calib": dict(calib)} if calib else {}),
        "kinds": kinds,
        "values": values,
        "tensor_bytes": stored,
        "dense_fp16_bytes": 2 * values,
        "relative_error": float(f"{math.sqrt(err / ref):.4g}") if ref else 0.0,
    }


def compress_file(src: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp32", restat: Restat | None = None, **options: Any) -> tuple[Path, dict[str, Any]]:
    """Re-save a task-vector file compressed; returns the output path and the compression summary."""
    from .files import load_vector, read_header

    opts = Options.make(dtype, **options)  # validate before reading anything
    tv = load_vector(src)
    tv.meta.pop("compression", None)
    save_compressed(tv, out, dtype=opts.dtype, inputs=(src,), restat=restat, **{k: v for k, v in asdict(opts).items() if k != "dtype"})
    return Path(out), read_header(out)[0]["compression"]


def describe(meta: Mapping[str, Any], size: int) -> str | None:
    """One line for ``info``: how a file was compressed, its size against the dense fp16 vector, the error."""
    c = meta.get("compression")
    if not isinstance(c, Mapping):
        return None
    dense = c.get("dense_fp16_bytes") or 0
    ratio = f" = {size / dense:.1%} of the dense fp16 vector" if dense else ""
    kinds = ", ".join(f"{k} {v}" for k, v in (c.get("kinds") or {}).items())
    return f"  compressed  {c.get('label', '?')} | {size / 1e6:.3f} MB{ratio} | relative error {c.get('relative_error', float('nan')):.4f} | tensors: {kinds}"


# ----------------------------------------------------------------------------------------------- decoding
# Decoders raise ValueError on any inconsistency; ``files.load_vector`` turns it into a VectorFileError naming the
# file and the tensor. Sizes are validated *before* anything is allocated, so a corrupted shape cannot exhaust memory.
FLOATS = tuple(DTYPES.values())


def _expect(fields: Mapping[str, torch.Tensor], names: set[str]) -> None:
    missing, extra = sorted(names - set(fields)), sorted(set(fields) - names)
    if missing:
        raise ValueError(f"field '{missing[0]}' is missing")
    if extra:
        raise ValueError(f"unexpected field '{extra[0]}'")


def _tensor(fields: Mapping[str, torch.Tensor], name: str, dtypes: tuple[torch.dtype, ...], ndim: int) -> torch.Tensor:
    if name not in fields:
        raise ValueError(f"field '{name}' is missing")
    t = fields[name]
    if t.dtype not in dtypes:
        raise ValueError(f"field '{name}' has dtype {str(t.dtype).replace('torch.', '')}")
    if t.ndim != ndim:
        raise ValueError(f"field '{name}' has {t.ndim} dimensions, expected {ndim}")
    return t


def _quant(info: Mapping[str, Any]) -> str | None:
    quant = info.get("quant")
    if quant is not None and quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}")
    return quant


def _scales(fields: Mapping[str, torch.Tensor], name: str, n: int) -> torch.Tensor:
    s = _tensor(fields, name, FLOATS, 1)
    if s.numel() != n:
        raise ValueError(f"field '{name}' holds {s.numel()} scales for {n} rows")
    s = s.float()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"field '{name}' holds negative or non-finite scales")
    return s


def _values(fields: Mapping[str, torch.Tensor], name: str, rows: torch.Tensor | int, n_rows: int, quant: str | None) -> torch.Tensor:
    """Flat float values from a float field, or from codes + per-row scales; ``rows`` is the row index of each
    value, or the row length of a full ``(n_rows, rows)`` matrix."""
    n = rows * n_rows if isinstance(rows, int) else rows.numel()
    if quant is None:
        v = _tensor(fields, name, FLOATS, 1)
        if v.numel() != n:
            raise ValueError(f"field '{name}' holds {v.numel()} values, expected {n}")
        return v.float()
    bits = quant_bits(quant)
    if bits == 8:
        codes = _tensor(fields, name, (torch.int8,), 1)
        if codes.numel() != n:
            raise ValueError(f"field '{name}' holds {codes.numel()} codes, expected {n}")
    else:
        codes = unpack_bits(_tensor(fields, name, (torch.uint8,), 1), n, bits)
    scale = _scales(fields, f"{name}_scale", n_rows)
    if isinstance(rows, int):
        return dequantize(codes.view(n_rows, rows), scale, None, bits).reshape(-1)
    return dequantize(codes, scale, rows, bits)


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(numel, rows, cols)`` of a compressed weight's shape."""
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"shape {shape} cannot hold a compressed weight (two or more dimensions needed)")
    numel = math.prod(shape)
    if numel < 1 or numel > MAX_NUMEL:
        raise ValueError(f"shape {shape} has an implausible size")
    return numel, shape[0], numel // shape[0]


def _rank(fields: Mapping[str, torch.Tensor], info: Mapping[str, Any], rows: int, cols: int, quant: str | None) -> int:
    r = info.get("rank")
    if quant is None:
        u = _tensor(fields, "u", FLOATS, 2)
        r = u.shape[1] if r is None else r
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(rows, cols):
        raise ValueError(f"rank {r!r} does not fit shape ({rows}, {cols})")
    return r


def _low_rank_names(quant: str | None) -> set[str]:
    return {"u", "v", "u_scale", "v_scale"} if quant else {"u", "v"}


def _sparse_names(fields: Mapping[str, torch.Tensor], quant: str | None) -> set[str]:
    return ({"gaps"} if "gaps" in fields else {"mask"}) | ({"values", "values_scale"} if quant else {"values"})


def decode_quant(fields: dict[str, torch.Tensor], info: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    """A dense weight stored as codes with one scale per output channel."""
    numel, rows, cols = _check_shape(shape)
    quant = _quant(info)
    if quant is None:
        raise ValueError("a quantized tensor without its 'quant' entry")
    _expect(fields, {"codes", "scale"})
    fields = {"values": fields["codes"], "values_scale": fields["scale"]}
    return _values(fields, "values", cols, rows, quant).reshape(shape)


def decode_low_rank(fields: Mapping[str, torch.Tensor], info: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    """``u @ v`` reshaped: ``u`` (out, r), ``v`` (r, in·k·k)."""
    numel, rows, cols = _check_shape(shape)
    quant = _quant(info)
    r = _rank(fields, info, rows, cols, quant)
    if quant is None:
        u, v = _tensor(fields, "u", FLOATS, 2).float(), _tensor(fields, "v", FLOATS, 2).float()
        if tuple(u.shape) != (rows, r) or tuple(v.shape) != (r, cols):
            raise ValueError(f"low-rank factors {tuple(u.shape)} @ {tuple(v.shape)} do not make shape {shape}")
    else:
        u = _values(fields, "u", r, rows, quant).view(rows, r)
        v = _values(fields, "v", cols, r, quant).view(r, cols)
    return (u @ v).reshape(shape)


def decode_sparse(fields: Mapping[str, torch.Tensor], info: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros with the stored values at the stored positions (uint8 gaps or packed bit mask)."""
    numel, rows, cols = _check_shape(shape)
    quant = _quant(info)
    if "gaps" in fields:
        idx = gap_decode(_tensor(fields, "gaps", (torch.uint8,), 1))
        if idx.numel() and int(idx[-1]) >= numel:
            raise ValueError(f"indices run past the tensor's {numel} entries")
    elif "mask" in fields:
        idx = torch.nonzero(unpack_bits(_tensor(fields, "mask", (torch.uint8,), 1), numel, 1)).reshape(-1)
    else:
        raise ValueError("field 'gaps' or 'mask' is missing")
    out = torch.zeros(numel, dtype=torch.float32)
    out[idx] = _values(fields, "values", idx // cols, rows, quant)
    return out.reshape(shape)


def _decode_sparse(fields: dict[str, torch.Tensor], info: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    _expect(fields, _sparse_names(fields, _quant(info)))
    return decode_sparse(fields, info, shape)


def _decode_low_rank(fields: dict[str, torch.Tensor], info: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    _expect(fields, _low_rank_names(_quant(info)))
    return decode_low_rank(fields, info, shape)


def _decode_low_rank_sparse(fields: dict[str, torch.Tensor], info: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    quant = _quant(info)
    _expect(fields, _low_rank_names(quant) | _sparse_names(fields, quant))
    return decode_low_rank(fields, info, shape) + decode_sparse(fields, info, shape)


DECODERS.update({"quant": decode_quant, "sparse": _decode_sparse, "lowrank": _decode_low_rank, "lowrank+sparse": _decode_low_rank_sparse})
