"""Convert a trusted Ultralytics checkpoint to safetensors, and back, so sharing a model needs no pickle at all.

A ``.pt`` checkpoint is a pickle: loading one can run code. A converted model is one safetensors file holding the
state dict and, as JSON metadata, everything needed to rebuild the model: its architecture yaml, class names, task
and train args (``format = yolo-taskvec-model``). Loading it reads the header first: the yaml is validated by the
same schema as vector files (``checkpoint.check_model_yaml``: Ultralytics layers only, an activation from a fixed
list that is never evaluated, bounded numbers), the model it describes is sized on the meta device, and every
declared tensor shape is compared with it, all before any tensor is read or any layer allocated.

>>> to_safetensors("yolo26n-base80.pt", "base80.safetensors")   # on the machine that trusts the .pt
>>> model = from_safetensors("base80.safetensors")               # anywhere: a ready ultralytics.YOLO
>>> model.val(data="fruit80.yaml", imgsz=320)

Converted models work wherever a model is expected (``base=``, ``models=``, ``model=``, ``load_model``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from .atomic import atomic_output, check_output
from .checkpoint import (
    FP16_MAX,
    MODEL_FORMAT_VERSION,
    LoadedModel,
    ModelLike,
    build_from_yaml,
    input_file,
    load_converted,
    load_model,
    to_yolo,
)
from .errors import CheckpointError, OutputError
from .files import DTYPES, MODEL_FORMAT
from .plain import plain


def to_safetensors(model: ModelLike, out: str | os.PathLike, *, dtype: str = "fp16", inputs: Iterable[str | os.PathLike] = (), trust: bool | None = None, exist_ok: bool = True) -> Path:
    """Write ``model`` (path, YOLO, module) as one safetensors file with its yaml, names, task and train args.

    ``dtype`` applies to floating-point tensors (fp16 by default, as in Ultralytics checkpoints: exact for them).
    ``trust``: how a ``.pt`` source is unpickled (``checkpoint.load_model``).
    """
    from safetensors.torch import save_file
    from ultralytics import __version__

    if dtype not in DTYPES:
        raise OutputError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}.")
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise OutputError(f"cannot convert to {out}: a converted model is a .safetensors file.")
    check_output(out, [*inputs, input_file(model)], exist_ok=exist_ok)  # before loading: fail fast, never overwrite the source
    loaded = load_model(model, trust=trust)
    _check_rebuildable(loaded)
    tensors = {}
    for key, t in loaded.module.state_dict().items():
        t = t.detach().cpu()
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise OutputError(f"cannot convert: {key} holds NaN or Inf values.")
            if dtype == "fp16" and t.numel() and float(t.abs().max()) > FP16_MAX:
                raise OutputError(f"cannot convert to fp16: {key} holds values beyond ±{FP16_MAX:g}; use dtype=fp32.")
            t = t.to(DTYPES[dtype])
        tensors[key] = t.contiguous()
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": str(MODEL_FORMAT_VERSION),
        "yaml": json.dumps(plain(loaded.yaml)),
        "names": json.dumps({str(k): str(v) for k, v in loaded.names.items()}),
        "task": loaded.task,
        "train_args": json.dumps(plain(loaded.train_args)),
        "taskvec": json.dumps(plain(loaded.ckpt.get("taskvec") or {})),  # a merge's provenance travels with it
        "dtype": dtype,
        "ultralytics_version": __version__,
        "source": Path(loaded.source).name,
    }
    with atomic_output(out, [*inputs, loaded.path], exist_ok=exist_ok) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def _check_rebuildable(loaded: LoadedModel) -> None:
    """Refuse a model whose layers are not what its yaml builds (a converted file must load without pickle)."""
    state = loaded.module.state_dict()
    own = build_from_yaml(loaded.yaml, loaded.source, {k: tuple(v.shape) for k, v in state.items()}).state_dict()
    odd = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
    if odd:
        raise CheckpointError(f"cannot convert {loaded.name}: its layers differ from what its yaml builds (e.g. {odd[0]}; a class-union head?); keep it as a .pt checkpoint.")


def from_safetensors(path: str | os.PathLike):
    """Rebuild a converted model as a ready ``ultralytics.YOLO`` (never unpickles, never ``eval``s)."""
    loaded = load_converted(path)
    return to_yolo(loaded.module, label=loaded.name, train_args=loaded.train_args, ckpt_extra={"taskvec": loaded.ckpt["taskvec"]} if loaded.ckpt.get("taskvec") else None)


def to_checkpoint(path: str | os.PathLike, out: str | os.PathLike, *, exist_ok: bool = True) -> Path:
    """Convert a converted model back into a standard Ultralytics ``.pt`` checkpoint."""
    from .checkpoint import save_checkpoint

    check_output(out, [path, input_file(path)], exist_ok=exist_ok)
    loaded = load_converted(path)
    return save_checkpoint(loaded.module, out, inputs=[loaded.path], train_args=loaded.train_args, provenance={**(loaded.ckpt.get("taskvec") or {}), "converted_from": loaded.path.name}, exist_ok=exist_ok)
