"""BatchNorm statistics that fit compressed weights (``calib=``): re-estimated on images when a vector is saved.

A compressed vector's weights differ from the fine-tune's, but its BatchNorm running statistics are the
fine-tune's, measured with the exact weights. ``calib=`` (dataset yamls; the fine-tune's own training images, never
the images it is scored on) rebuilds ``base + τ̂`` (scale 1, the weights as the file will store them), runs
``bn.recalibrate`` on ``calib_batches`` letterboxed batches of their ``train`` split and stores statistics that
fit, so the file alone, applied with the default ``bn=merge``, has weights and statistics that go together:

* ``calib_mode=shift`` (default): the fine-tune's statistics moved by what the approximation changes,
  ``mean = mean_ft + (m̂ − m)`` and ``var = var_ft · v̂ / v``, where ``m̂, v̂`` are re-estimated for ``base + τ̂`` and
  ``m, v`` for ``base + τ`` on the same images. Exact weights leave the statistics as they are.
* ``calib_mode=replace``: the re-estimated ``m̂, v̂`` themselves. Re-estimation on plain letterboxed images is not
  the fine-tune's training-time estimate (mosaic augmentation, EMA): with int2 weights, ``replace`` keeps 54 % of
  the fruit-night vector's gain where ``shift`` keeps 95 % (mixed on the class-union vectors;
  benchmarks/results/compress.md), so ``shift`` is the default.

Only statistics the vector holds are replaced; the image size defaults to the base's training size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoint import LoadedModel, build_module, load_model
from .compress import Restat, save_compressed
from .data import dataset_name, image_files
from .errors import MismatchError, TaskVecError
from .merging import merge_states
from .taskvector import TaskVector, is_bn_stat

CALIB_MODES = ("shift", "replace")
CALIB_OPTIONS = ("calib", "calib_batches", "calib_imgsz", "calib_mode", "base")
CALIB_BATCH = 16  # images per recalibration batch
MIN_VAR = 1e-12


def calibrator(calib: str | Sequence[str], *, base: Any = None, calib_batches: int = 16, calib_imgsz: int | None = None, calib_mode: str = "shift") -> Restat:
    """A ``restat`` callback for ``compress.save_compressed``; arguments are checked (and ``base`` loaded) now."""
    yamls = [str(calib)] if isinstance(calib, (str, os.PathLike)) else [str(y) for y in calib or []]
    if not yamls:
        raise TaskVecError("calib= needs one or more dataset yamls whose train images re-estimate the BatchNorm statistics.")
    if calib_mode not in CALIB_MODES:
        raise TaskVecError(f"calib_mode must be one of {', '.join(CALIB_MODES)}, got '{calib_mode}'.")
    if isinstance(calib_batches, bool) or not isinstance(calib_batches, int) or calib_batches < 1:
        raise TaskVecError(f"calib_batches must be a positive integer, got {calib_batches!r}.")
    if calib_imgsz is not None and (isinstance(calib_imgsz, bool) or not isinstance(calib_imgsz, int) or calib_imgsz < 32):
        raise TaskVecError(f"calib_imgsz must be an integer of at least 32, got {calib_imgsz!r}.")
    for y in yamls:
        image_files(y, "train")  # a missing dataset fails now, before anything is compressed
    loaded = load_model(base) if base is not None else None

    def restat(exact: TaskVector, approx: TaskVector) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        b = loaded or _base_of(exact)
        _check_base(b, exact)
        keys = sorted(k for k in exact.deltas if is_bn_stat(k))
        if not keys:
            raise TaskVecError("calib= re-fits BatchNorm running statistics, but this vector holds none.")
        imgsz = calib_imgsz or int(b.train_args.get("imgsz") or 640)
        fitted, images = recalibrated_stats(b, approx, keys, yamls, batches=calib_batches, imgsz=imgsz)
        if calib_mode == "replace":
            stats = {k: fitted[k] - b.state[k].float() for k in keys}
        else:
            reference, _ = recalibrated_stats(b, exact, keys, yamls, batches=calib_batches, imgsz=imgsz)
            stats = {k: shifted(k, b.state[k].float(), exact.deltas[k].float(), fitted[k], reference[k]) for k in keys}
        info = {"mode": calib_mode, "data": [dataset_name(y) for y in yamls], "images": images, "imgsz": imgsz, "statistics": len(keys)}
        return stats, info

    return restat


def shifted(key: str, base: torch.Tensor, delta: torch.Tensor, fitted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The delta of a statistic moved by the approximation: means by ``fitted − reference``, variances by their ratio."""
    tuned = base + delta
    if key.endswith(".running_var"):
        ratio = torch.where(reference > MIN_VAR, fitted / reference.clamp_min(MIN_VAR), torch.ones_like(fitted))
        return tuned * ratio - base
    return tuned + (fitted - reference) - base


@torch.no_grad()
def recalibrated_stats(base: LoadedModel, tv: TaskVector, keys: Sequence[str], data: Sequence[str], *, batches: int, imgsz: int) -> tuple[dict[str, torch.Tensor], int]:
    """BatchNorm statistics of ``base + tv`` (scale 1) re-estimated on images (``bn.recalibrate``), and the images used."""
    from .recalibration import recalibrate

    state, _ = merge_states(base.state, [tv], scale=1.0, layout=base.layout)
    carried = bool(tv.absolute) and tv.meta.get("target_yaml")
    module = build_module(base, state, target_yaml=tv.meta["target_yaml"] if carried else None, names=tv.meta.get("names") if carried else None)
    images = recalibrate(module, list(data), batches=batches, batch=CALIB_BATCH, imgsz=imgsz, device="cpu")
    fitted = module.state_dict()
    return {k: fitted[k].detach().float().cpu() for k in keys}, images


def _base_of(tv: TaskVector) -> LoadedModel:
    source = tv.meta.get("base_source")
    if not isinstance(source, str) or not source.endswith(".pt"):
        raise TaskVecError("calib= rebuilds base + vector, but this vector does not record its base checkpoint; pass base=.")
    try:
        return load_model(source)
    except TaskVecError as e:
        raise TaskVecError(f"calib= needs the vector's base {source}, which cannot be loaded ({e}); pass base=.") from e


def _check_base(base: LoadedModel, tv: TaskVector) -> None:
    fp = tv.meta.get("base_fingerprint")
    if fp and fp != base.fingerprint:
        raise MismatchError(f"task vector '{tv.meta.get('name', '?')}' was extracted from a different base (fingerprint {fp[:12]}) than {base.name} ({base.fingerprint[:12]}); calib= needs its own base.")


def save_compact(tv: TaskVector, path: str | os.PathLike, *, dtype: str = "fp32", **options: Any) -> Path:
    """``compress.save_compressed`` with the ``calib=`` options (``calib``, ``calib_batches``, ``calib_imgsz``,
    ``calib_mode``, ``base``) turned into its ``restat`` callback."""
    calib = {k: v for k in CALIB_OPTIONS if k in options and (v := options.pop(k)) is not None}
    if calib and calib.get("calib") is None:
        raise TaskVecError(f"{sorted(calib)[0]}= only applies with calib= (dataset yamls that re-fit the BatchNorm statistics).")
    restat = calibrator(**calib) if calib else None
    return save_compressed(tv, path, dtype=dtype, restat=restat, **options)
