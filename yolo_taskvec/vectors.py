"""Task vectors over Ultralytics models: extract from checkpoints, read and write vector files, gather a merge's inputs.

The algebra lives in ``taskvector.py`` (pure tensors); this adapter adds what needs Ultralytics models and files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import taskvector as core
from .checkpoint import (
    LoadedModel,
    ModelLike,
    check_same_architecture,
    check_vector_base,
    is_converted_model,
    load_model,
)
from .files import load_vector, save_vector


class TaskVector(core.TaskVector):
    """A task vector with Ultralytics I/O: ``from_models``, ``save``, ``load`` (``apply`` is added by the API)."""

    @classmethod
    def from_models(cls, base: ModelLike, tuned: ModelLike, *, parts: Iterable[str] | None = None, unmatched: str = "error", name: str | None = None) -> TaskVector:
        """``τ = tuned − base`` from two Ultralytics models (paths, YOLO objects or modules)."""
        from ultralytics import __version__

        b, t = load_model(base), load_model(tuned)
        check_same_architecture(b, t)
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
    def load(cls, path: str | os.PathLike, *, expected_shapes: Mapping[str, tuple[int, ...]] | None = None) -> TaskVector:
        """Read a task-vector safetensors file (never unpickles); ``expected_shapes`` (a base's state-dict shapes) are
        checked against the declared ones before anything is decoded."""
        return load_vector(path, cls, expected_shapes=expected_shapes)

    def save(self, path: str | os.PathLike, *, dtype: str = "fp32") -> Path:
        """Write a dense safetensors file (the API's ``TaskVector.save`` also compresses)."""
        return save_vector(self, path, dtype=dtype)

    def summary(self) -> dict[str, Any]:
        from .analysis import summarize

        return summarize(self)


def is_vector_file(item: Any) -> bool:
    """A path to a task-vector safetensors file (not a model converted to safetensors)."""
    return isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() == ".safetensors" and not is_converted_model(item)


def as_vector(base: LoadedModel, item: Any, *, parts: Iterable[str] | None = None, unmatched: str = "error", cls: type[TaskVector] = TaskVector) -> TaskVector:
    """One input as a task vector of ``base``: a fine-tuned model (extracted), a vector file or a TaskVector."""
    if isinstance(item, core.TaskVector):
        tv = item if isinstance(item, cls) else cls(item.deltas, item.absolute, item.meta)
    elif is_vector_file(item):
        tv = cls.load(item, expected_shapes={k: tuple(v.shape) for k, v in base.state.items()})
        tv.meta["source_file"] = str(Path(item).resolve())
    else:
        return cls.from_models(base, item, parts=parts, unmatched=unmatched)
    return tv.select(parts) if parts is not None else tv


def as_vectors(base: LoadedModel, items: Sequence[Any], *, parts: Iterable[str] | None = None, unmatched: str = "error") -> list[TaskVector]:
    """Task vectors from a mix of fine-tuned models (paths/YOLO/modules), vector files and TaskVectors."""
    return [as_vector(base, item, parts=parts, unmatched=unmatched) for item in items]


def check_fingerprints(base: LoadedModel, vectors: Sequence[core.TaskVector], force: bool) -> None:
    """Refuse vectors extracted from another base unless ``force``; a vector FILE must record its base (a file
    without a fingerprint was edited or hand-made), an in-memory vector built by hand may leave it out."""
    for tv in vectors:
        if tv.meta.get("source_file") or tv.meta.get("base_fingerprint"):
            check_vector_base(base, tv.meta, force)


def class_sets_differ(base: LoadedModel, tv: core.TaskVector) -> bool:
    """Whether a vector's fine-tune was trained on other classes than the base."""
    names = tv.meta.get("names")
    return names is not None and {int(k): v for k, v in names.items()} != base.names


def short_names(names: Mapping) -> str:
    """The first class names, and how many there are."""
    values = list(names.values())
    return ", ".join(map(str, values[:4])) + (f", ... ({len(values)} classes)" if len(values) > 4 else "")


def without_class_branch(tv: core.TaskVector) -> TaskVector:
    """The vector without its class branch (``classes=base``: the base keeps its own)."""
    keep = {k: v for k, v in tv.deltas.items() if tv.part_of(k) != "head.cls"}
    absolute = {k: v for k, v in tv.absolute.items() if tv.part_of(k) != "head.cls"}
    meta = {k: v for k, v in tv.meta.items() if k not in ("names", "target_yaml")}
    return TaskVector(keep, absolute, meta)


def input_paths(tv: core.TaskVector) -> list[str]:
    """The files behind a vector: its vector file and the checkpoint it was extracted from (never overwritten)."""
    source = str(tv.meta.get("source", ""))
    return [p for p in (tv.meta.get("source_file"), source if source.endswith(".pt") else None) if p]
