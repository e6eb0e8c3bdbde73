"""The public API over Ultralytics models: extract, apply, merge, save and load task vectors.

>>> from yolo_taskvec import TaskVector, Recipe, merge
>>> tau = TaskVector.from_models("yolo26n-base80.pt", "yolo26n-fruit-night.pt")
>>> night = tau.apply("yolo26n-base80.pt", scale=0.5)          # a ready ultralytics.YOLO
>>> night.val(data="fruit80-night.yaml", imgsz=320)
>>> merged = merge("yolo26n-base80.pt", ["a.pt", "b.safetensors"], method="ties", density=0.2)
>>> merged = merge(Recipe.from_yaml("recipe.yaml"))            # the same, written down
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import build
from .calib import save_compact
from .checkpoint import ModelLike
from .provenance import save_model
from .recipe import as_recipe
from .taskvector import Scale
from .vectors import TaskVector as _IOVector


class TaskVector(_IOVector):
    """A task vector with Ultralytics I/O: ``from_models``, ``load``, ``save`` and ``apply``."""

    def save(self, path: str | os.PathLike, *, dtype: str = "fp32", **compression: Any) -> Path:
        """Write a safetensors file; ``keep=``, ``scope=``, ``rank=``, ``energy=``, ``quant=`` options (and
        ``dtype="int8"``) compress it (see ``compress``); ``calib=`` yamls (with ``base=``, ``calib_batches=``,
        ``calib_imgsz=``, ``calib_mode=``) re-fit its BatchNorm statistics to the compressed weights (see ``calib``)."""
        if compression or dtype == "int8":
            return save_compact(self, path, dtype=dtype, **compression)
        return super().save(path, dtype=dtype)

    def apply(self, base: ModelLike, scale: Scale = 1.0, **fields: Any):
        """``base + scale · τ`` as a ready ``ultralytics.YOLO`` (other recipe fields as in ``merge``: ``bn=``, ...)."""
        return merge(base, [self], scale=scale, **fields)


def merge(base: Any, models: Sequence[Any] | None = None, method: str | None = None, **fields: Any):
    """Merge fine-tunes or task vectors into ``base`` (or run a ``Recipe``); returns a ready ``ultralytics.YOLO``.

    ``fields`` are recipe fields (see ``Recipe``): ``scale`` (float or per part), ``weights`` (one per model),
    ``bn`` (BatchNorm policy), ``bn_data``, ``classes`` (``error``, ``base``, ``union``), ``parts``, ``unmatched``,
    ``seed``, ``device``, ``orthogonalize``, ``force``, and the method's own parameters (``density=0.2``). Everything
    is validated before any file is opened.
    """
    if method is not None:
        fields["method"] = method
    return build.merge(as_recipe(base, models, **fields))


save = save_model
