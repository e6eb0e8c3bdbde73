"""Training-script integration: save the task vector of a fine-tune and its WiSE-FT curve when training ends.

An integration is a dict of event -> function, as in Ultralytics' ``utils/callbacks/*.py``:

>>> from ultralytics import YOLO
>>> from yolo_taskvec.callbacks import add_taskvec_callbacks
>>> model = YOLO("yolo26n-base80.pt")
>>> add_taskvec_callbacks(model, sweep_data=["fruit80.yaml", "fruit80-night.yaml"], scales=[0, 0.25, 0.5, 0.75, 1])
>>> model.train(data="fruit80-night.yaml", epochs=30, imgsz=320)
>>> model.trainer.taskvec.vector      # runs/detect/train/weights/taskvec.safetensors

When training ends (after Ultralytics' final validation of ``best.pt``):

* ``τ = best.pt − base`` is extracted (``TaskVector.from_models``) and saved beside ``best.pt`` as
  ``weights/taskvec.safetensors`` (``last.pt`` when there is no ``best.pt``);
* with ``sweep_data``, ``base + α·τ`` is validated on those datasets for each α of ``scales`` (``yolo_taskvec.sweep``):
  a WiSE-FT curve of how much of the fine-tune to keep so the base's data is not forgotten. ``sweep.csv``,
  ``sweep.png`` and the resumable ``sweep.json`` go into the run folder, the table into the log. By default each
  dataset is normalized by the model that should be best on it: the fine-tune (``best.pt``) on the training data,
  the base on every other dataset.

Arguments are checked when training starts (``on_pretrain_routine_start``), so a wrong path fails before any epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TaskVecError

VECTOR_FILE = "taskvec.safetensors"
DEFAULT_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class TaskVecOutputs:
    """What the integration wrote for a run (``trainer.taskvec``)."""

    vector: Path
    sweep: Any = None  # yolo_taskvec.RunResult when sweep_data was given

    @property
    def files(self) -> dict[str, Path]:
        return {"vector": self.vector, **(self.sweep.files if self.sweep is not None else {})}


def _base_of(model: Any) -> Any:
    """The checkpoint a YOLO object was loaded from (training starts from its weights)."""
    path = getattr(model, "ckpt_path", None)
    if not path or not str(path).endswith(".pt"):
        raise TaskVecError("the model was not loaded from a .pt checkpoint, so its base is unknown; pass base= (the checkpoint training starts from).")
    return path


def _same_dataset(a: Any, b: Any) -> bool:
    """Two dataset arguments naming the same yaml (same resolved file, else same file name)."""
    from .data import resolve_yaml

    pa, pb = resolve_yaml(Path(str(a))), resolve_yaml(Path(str(b)))
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return pa.name == pb.name


def default_references(sweep_data: Sequence[Any], train_data: Any, tuned: Path) -> dict[str, Any]:
    """Normalize each sweep dataset by the fine-tune on its training data and by the base elsewhere."""
    from .data import dataset_name

    return {dataset_name(d): (str(tuned) if _same_dataset(d, train_data) else "base") for d in sweep_data}


def taskvec_callbacks(
    base: Any,
    *,
    sweep_data: str | Sequence[str] | None = None,
    scales: Any = DEFAULT_SCALES,
    reference: Any = "auto",
    imgsz: int | None = None,
    batch: int = 16,
    device: Any = None,
    dtype: str = "fp32",
    name: str | None = None,
    unmatched: str = "error",
    select: Any = None,
    verbose: bool = True,
) -> dict[str, Callable[[Any], None]]:
    """The integration as ``{event: function}``; ``add_taskvec_callbacks`` registers it on a YOLO model.

    ``base``: checkpoint (path, YOLO or module) training starts from. ``sweep_data``: dataset yamls for the α sweep
    (none: only the vector is saved). ``scales``: α values (list or ``"0:1:0.25"``). ``reference``: ``"auto"`` (see
    the module doc), ``None`` (raw metrics) or anything ``sweep(reference=...)`` takes. ``imgsz``: the training's
    by default. ``dtype``: storage dtype of the vector file. ``unmatched``: ``carry`` keeps tensors whose shape
    changed in training (another class count) as absolute values. ``select``: a selection split for α (``sweep``'s
    ``select=``, e.g. one held-out yaml per dataset); without it α is chosen on the swept data and the table says so.
    """
    data = [sweep_data] if isinstance(sweep_data, (str, os.PathLike)) else list(sweep_data or [])

    def on_pretrain_routine_start(trainer: Any) -> None:
        """Fail before training when the base, the datasets or the scales are wrong."""
        from .checkpoint import load_model
        from .data import load_data
        from .files import check_dtype
        from .sweep import parse_grid

        load_model(base)
        check_dtype(dtype)
        for d in data:
            load_data(d)
        if data:
            parse_grid(scales)

    def on_train_end(trainer: Any) -> None:
        """Extract and save τ = best − base; sweep α on ``sweep_data``."""
        from ultralytics.utils import LOGGER

        from .api import TaskVector

        tuned = Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last)
        tv = TaskVector.from_models(base, tuned, name=name or Path(trainer.save_dir).name, unmatched=unmatched)
        vector = tv.save(tuned.parent / VECTOR_FILE, dtype=dtype)
        LOGGER.info(f"yolo-taskvec: saved task vector {vector} ({tv!r})")
        result = None
        if data:
            result = _sweep(trainer, tuned, vector, verbose)
            LOGGER.info(f"yolo-taskvec: WiSE-FT curve base + α·τ\n{result.table()}\nresults: {', '.join(str(p) for p in result.files.values())}")
        trainer.taskvec = TaskVecOutputs(vector, result)

    def _sweep(trainer: Any, tuned: Path, vector: Path, verbose: bool) -> Any:
        from .sweep import sweep

        ref = default_references(data, trainer.args.data, tuned) if reference == "auto" else reference
        return sweep(
            base,
            [str(vector)],
            data=data,
            scales=scales,
            reference=ref,
            imgsz=imgsz or int(trainer.args.imgsz),
            batch=batch,
            device=device if device is not None else trainer.device,
            select=select,
            out=trainer.save_dir,
            verbose=verbose,
        )

    return {"on_pretrain_routine_start": on_pretrain_routine_start, "on_train_end": on_train_end}


def add_taskvec_callbacks(model: Any, base: Any = None, **options: Any) -> dict[str, Callable[[Any], None]]:
    """Register the integration on an ``ultralytics.YOLO`` before ``model.train(...)``; returns the callbacks.

    ``base`` defaults to the checkpoint the model was loaded from. ``options``: see ``taskvec_callbacks``.
    """
    callbacks = taskvec_callbacks(base if base is not None else _base_of(model), **options)
    for event, fn in callbacks.items():
        model.add_callback(event, fn)
    return callbacks
