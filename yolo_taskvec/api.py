"""The public API over Ultralytics models: extract, apply, merge, save and load task vectors.

>>> from yolo_taskvec import TaskVector, merge
>>> tau = TaskVector.from_models("yolo26n-base80.pt", "yolo26n-fruit-night.pt")
>>> night = tau.apply("yolo26n-base80.pt", scale=0.5)          # a ready ultralytics.YOLO
>>> night.val(data="fruit80-night.yaml", imgsz=320)
>>> merged = merge("yolo26n-base80.pt", ["a.pt", "b.safetensors"], method="ties", density=0.2)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import taskvector as core
from .checkpoint import LoadedModel, ModelLike, build_module, check_same_architecture, load_model, save_checkpoint, to_yolo
from .convert import is_converted_model
from .errors import MismatchError, TaskVecError
from .files import load_vector, save_vector
from .merging import DEFAULT_BN, MergeReport, merge_states

CLASS_POLICIES = ("error", "base", "union")


class TaskVector(core.TaskVector):
    """A task vector with Ultralytics I/O: ``from_models``, ``apply``, ``save``, ``load``."""

    @classmethod
    def from_models(cls, base: ModelLike, tuned: ModelLike, *, parts: Iterable[str] | None = None, unmatched: str = "error", name: str | None = None) -> TaskVector:
        """``τ = tuned − base`` from two Ultralytics models (paths, YOLO objects or modules)."""
        b, t = load_model(base), load_model(tuned)
        check_same_architecture(b, t)
        from ultralytics import __version__

        meta = {
            "name": name or t.name,
            "base_fingerprint": b.fingerprint,
            "base_yaml": b.yaml,
            "task": t.task,
            "names": t.names,
            "ultralytics_version": __version__,
            "source": t.source,
            "base_source": b.source,
        }
        tv = cls.from_states(b.state, t.state, layout=t.layout, parts=parts, unmatched=unmatched, meta=meta, tuned_name=t.name)
        if tv.absolute:  # carried tensors: the result takes the tuned architecture
            tv.meta["target_yaml"] = t.yaml
        return tv

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskVector:
        """Read a task-vector safetensors file (never unpickles)."""
        return load_vector(path, cls)

    def save(self, path: str | os.PathLike, *, dtype: str = "fp32", **compression: Any) -> Path:
        """Write a safetensors file; ``keep=``, ``scope=``, ``rank=``, ``energy=``, ``quant=`` options (and
        ``dtype="int8"``) compress it (see ``compress``); ``calib=`` yamls (with ``base=``, ``calib_batches=``,
        ``calib_imgsz=``, ``calib_mode=``) re-fit its BatchNorm statistics to the compressed weights (see ``calib``)."""
        if compression or dtype == "int8":
            from .calib import save_compact

            return save_compact(self, path, dtype=dtype, **compression)
        return save_vector(self, path, dtype=dtype)

    def apply(self, base: ModelLike, scale: core.Scale = 1.0, *, bn: str = DEFAULT_BN, force: bool = False, classes: str = "error", **kwargs: Any):
        """``base + scale · τ`` as a ready ``ultralytics.YOLO`` (see ``merge`` for ``bn``/``classes``)."""
        return merge(base, [self], method="task_arithmetic", scale=scale, bn=bn, force=force, classes=classes, **kwargs)

    def summary(self) -> dict[str, Any]:
        from .analysis import summarize

        return summarize(self)


def as_vectors(base: LoadedModel, items: Sequence[Any], *, parts: Iterable[str] | None = None, unmatched: str = "error") -> list[TaskVector]:
    """Task vectors from a mix of fine-tuned models (paths/YOLO/modules), vector files and TaskVectors."""
    vectors = []
    for item in items:
        if isinstance(item, TaskVector):
            tv = item
        elif isinstance(item, core.TaskVector):
            tv = TaskVector(item.deltas, item.absolute, item.meta)
        elif isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() == ".safetensors" and not is_converted_model(item):
            tv = TaskVector.load(item)
            tv.meta["source_file"] = str(Path(item).resolve())
        else:
            vectors.append(TaskVector.from_models(base, item, parts=parts, unmatched=unmatched))
            continue
        vectors.append(tv.select(parts) if parts is not None else tv)
    return vectors


def check_fingerprints(base: LoadedModel, vectors: Sequence[core.TaskVector], force: bool) -> None:
    """Refuse vectors extracted from another base unless ``force``."""
    for tv in vectors:
        fp = tv.meta.get("base_fingerprint")
        if fp and fp != base.fingerprint and not force:
            raise MismatchError(
                f"task vector '{tv.meta.get('name', '?')}' was extracted from a different base (fingerprint {fp[:12]}, "
                f"this base {base.fingerprint[:12]}); pass force=True to apply it anyway."
            )


def _class_sets_differ(base: LoadedModel, tv: core.TaskVector) -> bool:
    names = tv.meta.get("names")
    return names is not None and {int(k): v for k, v in names.items()} != base.names


def merge(
    base: ModelLike,
    models: Sequence[Any],
    method: str = "task_arithmetic",
    *,
    scale: core.Scale = 1.0,
    weights: Sequence[float] | None = None,
    bn: str = DEFAULT_BN,
    bn_data: str | Sequence[str] | None = None,
    bn_batches: int = 16,
    classes: str = "error",
    parts: Iterable[str] | None = None,
    unmatched: str = "error",
    seed: int = 0,
    force: bool = False,
    imgsz: int | None = None,
    orthogonalize: bool = False,
    **params: Any,
):
    """Merge fine-tunes or task vectors into ``base``; returns a ready ``ultralytics.YOLO``.

    ``scale``: float or per-part mapping; ``weights``: one per model; ``bn``: BatchNorm policy (``merge``,
    ``geometric``, ``base``, ``recalibrate`` with ``bn_data`` yamls); ``classes``: what to do when class sets
    differ (``error``, ``base`` keeps the base's class branch, ``union`` builds one detector over all classes);
    ``orthogonalize``: first remove from each vector its projection on the others (per tensor);
    ``params``: the method's own parameters (e.g. ``density=0.2``).
    """
    if classes not in CLASS_POLICIES:
        raise TaskVecError(f"unknown class policy '{classes}'; choose one of {', '.join(CLASS_POLICIES)}.")
    b = load_model(base)
    imgsz = imgsz or int(b.train_args.get("imgsz") or 640)  # recalibration images at the size the base was trained at
    if classes == "union":
        from .heads import merge_union

        vectors = as_vectors(b, models, unmatched="carry")
        check_fingerprints(b, vectors, force)
        module, report, recipe = merge_union(b, vectors, method=method, scale=scale, weights=weights, bn=bn, bn_data=bn_data, bn_batches=bn_batches, parts=parts, seed=seed, imgsz=imgsz, orthogonalize=orthogonalize, **params)
        return finish(module, b, vectors, report, **recipe)
    try:
        vectors = as_vectors(b, models, parts=parts, unmatched=unmatched)
    except MismatchError:  # a class branch of another shape: the class policy answers first, not `unmatched`
        vectors = as_vectors(b, models, parts=parts, unmatched="carry")
        if not any(_class_sets_differ(b, tv) for tv in vectors):
            raise
    check_fingerprints(b, vectors, force)
    differing = [tv for tv in vectors if _class_sets_differ(b, tv)]
    if differing and classes == "error":
        tv = differing[0]
        raise MismatchError(
            f"'{tv.meta.get('name', '?')}' was trained on other classes ({_short_names(tv.meta['names'])}) than the base "
            f"({_short_names(b.names)}); use classes=union for one detector over all classes, or classes=base to keep the base's class branch."
        )
    if differing:  # classes == "base": the class branch stays the base's
        vectors = [_without_class_branch(tv) if _class_sets_differ(b, tv) else tv for tv in vectors]
    state, report = merge_states(b.state, vectors, method, weights=weights, scale=scale, params=params, bn=bn, seed=seed, layout=b.layout, orthogonalize=orthogonalize)
    target = next((tv.meta.get("target_yaml") for tv in vectors if tv.absolute and tv.meta.get("target_yaml")), None)
    names = next((tv.meta.get("names") for tv in vectors if tv.absolute and tv.meta.get("target_yaml")), None)
    module = build_module(b, state, target_yaml=target, names=names)
    if bn == "recalibrate":
        from .bn import recalibrate

        recalibrate(module, bn_data, batches=bn_batches, imgsz=imgsz)
    return finish(module, b, vectors, report, scale=scale, weights=weights, orthogonalize=orthogonalize or None)


def _short_names(names: Mapping) -> str:
    values = list(names.values())
    return ", ".join(map(str, values[:4])) + (f", ... ({len(values)} classes)" if len(values) > 4 else "")


def _without_class_branch(tv: core.TaskVector) -> TaskVector:
    keep = {k: v for k, v in tv.deltas.items() if tv.part_of(k) != "head.cls"}
    absolute = {k: v for k, v in tv.absolute.items() if tv.part_of(k) != "head.cls"}
    meta = {k: v for k, v in tv.meta.items() if k not in ("names", "target_yaml")}
    return TaskVector(keep, absolute, meta)


def finish(module: torch.nn.Module, base: LoadedModel, vectors: Sequence[core.TaskVector], report: MergeReport, **recipe: Any):
    """Wrap the merged module as YOLO, with the merge's provenance attached for ``save``."""
    provenance = {
        "base": base.source,
        "inputs": [str(p) for p in [base.path, *(p for tv in vectors for p in _input_paths(tv))] if p],
        "base_fingerprint": base.fingerprint,
        "vectors": [tv.meta.get("name", "?") for tv in vectors],
        **report.as_dict(),
        **{k: v for k, v in recipe.items() if v is not None},
    }
    yolo = to_yolo(module, label=f"merged({', '.join(provenance['vectors'])})", train_args=base.train_args, ckpt_extra={"taskvec": provenance})
    return yolo


def _input_paths(tv: core.TaskVector) -> list[str]:
    """The files behind a vector: its vector file and the checkpoint it was extracted from (never overwritten)."""
    source = str(tv.meta.get("source", ""))
    return [p for p in (tv.meta.get("source_file"), source if source.endswith(".pt") else None) if p]


def save(model: Any, path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Save a (merged) YOLO as a standard Ultralytics checkpoint with its merge provenance.

    Never overwrites the files the model was merged from, nor any of ``inputs``.
    """
    provenance = (getattr(model, "ckpt", None) or {}).get("taskvec", {})
    return save_checkpoint(model, path, provenance=provenance, inputs=[*inputs, *provenance.get("inputs", [])])
