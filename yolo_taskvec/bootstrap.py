"""Bootstrap intervals over validation IMAGES for Ultralytics' mAP50-95 and mAP50 (boxes and masks).

A 60-image val set gives one mAP number; resampling its images with replacement shows how far that number would
move with another draw of 60 images, so a reader can tell a real difference from noise.

The statistics are those Ultralytics' validator collects per image (``DetMetrics.update_stats``): for each
prediction whether it is a true positive at the ten IoU thresholds 0.50:0.95 (``tp``, and ``tp_m`` for masks), its
confidence and class, and the image's target classes. ``ImageStats`` keeps them per image; its ``scores()`` computes
mAP exactly as ``ultralytics.utils.metrics.ap_per_class`` does (same sort, same per-class precision/recall curves,
Ultralytics' own ``compute_ap``), so on the full set it equals the validator's number bit for bit, and on a
resample it is the mAP Ultralytics would report for a val set made of those images.

>>> ev = Evaluator(["fruit80.yaml"], imgsz=320, per_image=True)
>>> ev("merged.pt"); merged = ev.image_stats["fruit80"]
>>> ev("yolo26n-base80.pt"); base = ev.image_stats["fruit80"]
>>> interval(merged)                 # Interval(value=0.421, low=0.37, high=0.47, ...): percentile, 1000 resamples
>>> difference(merged, base)         # paired: merged − base on the same resampled images
>>> bootstrap({"m": merged, "b": base}, lambda s: s["m"]["map50_95"] / s["b"]["map50_95"])   # any statistic

Samples that share one image list are resampled together (paired); samples of other image lists (another dataset)
are resampled independently, so a statistic over several datasets (a sweep's normalized mean) gets one interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .errors import TaskVecError

K = TypeVar("K", bound=Hashable)
METRICS = ("map50_95", "map50", "mask_map50_95", "mask_map50")


@dataclass(frozen=True)
class ImageStats:
    """Ultralytics' per-image matching statistics of one model on one split, in validation order.

    ``tp``/``tp_mask``: per image, a ``(predictions, 10)`` boolean array (true positive at IoU 0.50, 0.55 … 0.95);
    ``conf``, ``pred_cls``: per prediction; ``target_cls``: per labelled instance; ``images``: the image files.
    """

    images: tuple[str, ...]
    tp: tuple[np.ndarray, ...]
    conf: tuple[np.ndarray, ...]
    pred_cls: tuple[np.ndarray, ...]
    target_cls: tuple[np.ndarray, ...]
    tp_mask: tuple[np.ndarray, ...] | None = None
    _flat: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        lists = [self.tp, self.conf, self.pred_cls, self.target_cls] + ([self.tp_mask] if self.tp_mask is not None else [])
        if any(len(x) != n for x in lists):
            raise TaskVecError(f"per-image statistics disagree in length: {[len(x) for x in lists]} for {n} images.")
        if any(len(t) != len(c) for t, c in zip(self.tp, self.conf)):
            raise TaskVecError("per-image statistics disagree: an image has a tp row count other than its prediction count.")

    @classmethod
    def from_metrics(cls, stats: Mapping[str, Sequence[np.ndarray]], images: Sequence[str]) -> ImageStats:
        """From a validator's ``metrics.stats`` (lists with one entry per image) BEFORE ``get_stats`` clears them."""
        mask = stats.get("tp_m")
        return cls(
            tuple(str(x) for x in images),
            tuple(np.asarray(x) for x in stats["tp"]),
            tuple(np.asarray(x) for x in stats["conf"]),
            tuple(np.asarray(x) for x in stats["pred_cls"]),
            tuple(np.asarray(x) for x in stats["target_cls"]),
            tuple(np.asarray(x) for x in mask) if mask else None,
        )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_masks(self) -> bool:
        return self.tp_mask is not None

    def _arrays(self) -> dict[str, Any]:
        """Per-image arrays concatenated once, as ``DetMetrics.process`` concatenates them, plus row offsets."""
        if not self._flat:
            lengths = np.array([len(c) for c in self.conf], dtype=np.int64)
            flat = {
                "tp": np.concatenate(self.tp, 0),
                "conf": np.concatenate(self.conf, 0),
                "pred_cls": np.concatenate(self.pred_cls, 0),
                "target_cls": np.concatenate(self.target_cls, 0),
                "lengths": lengths,
                "starts": np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64),
                "t_lengths": np.array([len(t) for t in self.target_cls], dtype=np.int64),
            }
            flat["t_starts"] = np.concatenate(([0], np.cumsum(flat["t_lengths"])[:-1])).astype(np.int64)
            if self.tp_mask is not None:
                flat["tp_m"] = np.concatenate(self.tp_mask, 0)
            self._flat.update(flat)
        return self._flat

    def scores(self, indices: np.ndarray | Sequence[int] | None = None) -> dict[str, float]:
        """mAP50-95 and mAP50 (and ``mask_*``) of the val set made of ``indices`` (default: every image once)."""
        f = self._arrays()
        if indices is None:
            rows, trows = slice(None), slice(None)
        else:
            idx = np.asarray(indices, dtype=np.int64)
            rows, trows = _rows(f["starts"], f["lengths"], idx), _rows(f["t_starts"], f["t_lengths"], idx)
        conf, pred_cls, target_cls = f["conf"][rows], f["pred_cls"][rows], f["target_cls"][trows]
        out = _map_scores(average_precision(f["tp"][rows], conf, pred_cls, target_cls), "")
        if "tp_m" in f:
            out.update(_map_scores(average_precision(f["tp_m"][rows], conf, pred_cls, target_cls), "mask_"))
        return out


def _rows(starts: np.ndarray, lengths: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Row numbers of images ``idx`` (repeats allowed) in the concatenated arrays, image after image."""
    n = lengths[idx]
    total = int(n.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    block_start = np.cumsum(n) - n  # where each chosen image's rows begin in the output
    return np.repeat(starts[idx] - block_start, n) + np.arange(total)


def _map_scores(ap: np.ndarray, prefix: str) -> dict[str, float]:
    """Ultralytics' ``Metric.map`` / ``Metric.map50`` of an ``(classes, 10)`` AP array."""
    return {f"{prefix}map50_95": float(ap.mean()) if len(ap) else 0.0, f"{prefix}map50": float(ap[:, 0].mean()) if len(ap) else 0.0}


def average_precision(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16) -> np.ndarray:
    """AP per labelled class at the ten IoU thresholds, ``(classes, 10)``: the AP part of Ultralytics' ``ap_per_class``.

    The same operations in the same order (sort by confidence with ``np.argsort(-conf)``, cumulative TP/FP per class,
    recall over ``n_labels + eps``, Ultralytics' ``compute_ap``), without the precision/recall/F1 curves it also
    draws, so the values are identical to ``ap_per_class(...)[5]``.
    """
    from ultralytics.utils.metrics import compute_ap

    order = np.argsort(-conf)
    tp, pred_cls = tp[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    ap = np.zeros((classes.shape[0], tp.shape[1] if tp.ndim == 2 else 10))
    for ci, c in enumerate(classes):
        i = pred_cls == c
        if not i.any() or n_labels[ci] == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_labels[ci] + eps)
        precision = tpc / (tpc + fpc)
        for j in range(tp.shape[1]):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])[0]
    return ap


# ----------------------------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Interval:
    """A statistic on the full val set (``value``) and its bootstrap percentile interval ``[low, high]``."""

    value: float
    low: float
    high: float
    confidence: float = 0.95
    resamples: int = 1000
    seed: int = 0
    distribution: np.ndarray | None = field(default=None, repr=False, compare=False)

    def excludes(self, x: float = 0.0) -> bool:
        """True when ``x`` lies outside the interval (for a difference: the sign is resolved at this confidence)."""
        return not self.low <= x <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        """``value``, ``low``, ``high``, ``confidence``, ``resamples``, ``seed`` (for JSON results)."""
        return {"value": self.value, "low": self.low, "high": self.high, "confidence": self.confidence, "resamples": self.resamples, "seed": self.seed}

    def format(self, digits: int = 3) -> str:
        """``0.421 [0.375, 0.468]``."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def __str__(self) -> str:
        return self.format()


def resample_indices(n_images: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, n_images)`` image indices drawn with replacement."""
    return rng.integers(0, n_images, size=(resamples, n_images))


def _check(resamples: int, confidence: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise TaskVecError(f"resamples must be a positive integer, got {resamples!r}.")
    if not 0.0 < confidence < 1.0:
        raise TaskVecError(f"confidence must lie strictly between 0 and 1, got {confidence!r}.")


def bootstrap(
    samples: Mapping[K, ImageStats],
    statistic: Callable[[Mapping[K, Mapping[str, float]]], float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over resampled val images.

    ``statistic`` receives ``{key: {"map50_95", "map50", [mask_*]}}`` for each sample's resampled val set and returns
    one number. Samples with the same image list share each resample (a paired comparison); every other image list
    is resampled independently. ``value`` is the statistic on the full sets (Ultralytics' own numbers).
    """
    _check(resamples, confidence)
    if not samples:
        raise TaskVecError("bootstrap needs at least one sample of per-image statistics.")
    groups: dict[tuple[str, ...], list[K]] = {}
    for key, stats in samples.items():
        if not isinstance(stats, ImageStats):
            raise TaskVecError(f"sample {key!r} is a {type(stats).__name__}, not per-image statistics (ImageStats).")
        if not len(stats):
            raise TaskVecError(f"sample {key!r} has no images to resample.")
        groups.setdefault(stats.images, []).append(key)
    rng = np.random.default_rng(seed)
    draws = {images: resample_indices(len(images), resamples, rng) for images in groups}
    value = float(statistic({k: s.scores() for k, s in samples.items()}))
    values = np.empty(resamples)
    for b in range(resamples):
        scored = {k: samples[k].scores(draws[images][b]) for images, keys in groups.items() for k in keys}
        values[b] = statistic(scored)
    tail = 100 * (1 - confidence) / 2
    finite = values[np.isfinite(values)]
    low, high = (float(x) for x in np.percentile(finite, [tail, 100 - tail])) if len(finite) else (math.nan, math.nan)
    return Interval(value, low, high, confidence, int(resamples), seed, values)


def interval(stats: ImageStats, metric: str = "map50_95", **kwargs: Any) -> Interval:
    """Bootstrap interval of one model's ``metric`` (``map50_95``, ``map50``, ``mask_map50_95``, ``mask_map50``)."""
    _check_metric(stats, metric)
    return bootstrap({"model": stats}, lambda s: s["model"][metric], **kwargs)


def difference(a: ImageStats, b: ImageStats, metric: str = "map50_95", **kwargs: Any) -> Interval:
    """Paired bootstrap interval of ``metric(a) − metric(b)`` for two models scored on the same images.

    The difference is real at the chosen confidence when the interval excludes 0 (``Interval.excludes()``).
    """
    if a.images != b.images:
        raise TaskVecError("a paired difference needs two models scored on the same val images in the same order.")
    _check_metric(a, metric)
    _check_metric(b, metric)
    return bootstrap({"a": a, "b": b}, lambda s: s["a"][metric] - s["b"][metric], **kwargs)


def _check_metric(stats: ImageStats, metric: str) -> None:
    if metric not in METRICS:
        raise TaskVecError(f"unknown metric {metric!r}; the bootstrap knows {', '.join(METRICS)}.")
    if metric.startswith("mask_") and not stats.has_masks:
        raise TaskVecError(f"{metric} needs mask statistics; these were collected by a detection validator (boxes only).")
