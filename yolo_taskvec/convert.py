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
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_output, check_output
from .checkpoint import FP16_MAX, LoadedModel, ModelLike, build_from_yaml, check_model_yaml, input_file, load_model, planned_shapes, resolve_weights, to_yolo
from .errors import CheckpointError, OutputError
from .files import MAX_HEADER_BYTES, MODEL_FORMAT, read_snapshot
from .limits import MAX_MODEL_VALUES, MAX_TENSOR_VALUES, check_allocation
from .schema import TASKS, check_names

FORMAT_VERSION = 1
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


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
        "format_version": str(FORMAT_VERSION),
        "yaml": json.dumps(_jsonable(loaded.yaml)),
        "names": json.dumps({str(k): str(v) for k, v in loaded.names.items()}),
        "task": loaded.task,
        "train_args": json.dumps(_jsonable(loaded.train_args)),
        "taskvec": json.dumps(_jsonable(loaded.ckpt.get("taskvec") or {})),  # a merge's provenance travels with it
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


def is_converted_model(path: str | os.PathLike) -> bool:
    """True for a safetensors file written by ``to_safetensors`` (reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == MODEL_FORMAT
    except Exception:  # noqa: BLE001 - not readable as safetensors: not a converted model
        return False


def load_converted(source: str | os.PathLike) -> LoadedModel:
    """A converted model as an fp32 LoadedModel; one clear CheckpointError for anything wrong with the file.

    The header is checked before any tensor is read: metadata types, the yaml (``check_model_yaml``), the shapes
    the yaml builds (on the meta device) against the shapes the file declares, and their size against the caps.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT

    path = resolve_weights(source, suffixes=(".safetensors",))
    metadata, shapes = _read_header(path)
    yaml, names, task, train_args, provenance = _parse_model_metadata(path, metadata)
    _check_declared_shapes(path, yaml, shapes)
    try:
        again, tensors = read_snapshot(path)  # one read: header and data of the same version of the file
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path} is not a valid safetensors file ({_first_line(e)}).") from e
    if again != metadata or {k: tuple(t.shape) for k, t in tensors.items()} != shapes:
        raise CheckpointError(f"{path} changed while it was being read; try again.")
    module = build_from_yaml(yaml, str(path), shapes)
    own = module.state_dict()
    if set(own) != set(shapes) or any(tuple(own[k].shape) != shapes[k] for k in own):
        key = next((k for k in sorted(set(own) ^ set(shapes))), None) or next(k for k in own if tuple(own[k].shape) != shapes[k])
        raise CheckpointError(f"{path}: its tensors do not fit the architecture in its metadata (e.g. {key}).")
    module.load_state_dict({k: tensors[k].to(own[k].dtype) for k in own}, strict=True)
    module = module.float().eval()
    module.names = names
    module.task = task
    module.args = {**DEFAULT_CFG_DICT, **train_args}
    module.pt_path = str(path)
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module, str(path), {"train_args": train_args, **({"taskvec": provenance} if provenance else {})}, path)


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """``(metadata, tensor shapes)`` from a safetensors header alone (no tensor data is read)."""
    bad = CheckpointError(f"{path} is not a valid safetensors file (its header is damaged).")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= MAX_HEADER_BYTES:
                raise bad
            header = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError) as e:
        raise bad from e
    if not isinstance(header, dict):
        raise bad
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad
    shapes = {}
    for key, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad
        shapes[key] = tuple(shape)
    return metadata, shapes


def _parse_model_metadata(path: Path, metadata: Mapping[str, str]) -> tuple[dict[str, Any], dict[int, str], str, dict[str, Any], dict[str, Any]]:
    if metadata.get("format") != MODEL_FORMAT:
        what = "a task vector" if metadata.get("format") == "yolo-taskvec" else "not a converted yolo-taskvec model"
        raise CheckpointError(f"{path} is {what}, not a model; models are .pt checkpoints or files written by 'yolo-taskvec convert'.")
    try:
        version = int(metadata.get("format_version", ""))
        yaml, names = json.loads(metadata["yaml"]), json.loads(metadata["names"])
        train_args, task = json.loads(metadata.get("train_args") or "{}"), metadata["task"]
        provenance = json.loads(metadata.get("taskvec") or "{}")  # a merge's recipe and hashes (plain data)
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{path} has corrupted model metadata (yaml, names, task or train_args).") from e
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses converted-model format {version}; this yolo-taskvec reads up to {FORMAT_VERSION}, upgrade it.")
    if not isinstance(yaml, dict) or not isinstance(names, dict) or not isinstance(train_args, dict) or not isinstance(provenance, dict):
        raise CheckpointError(f"{path} has corrupted model metadata (yaml, names, train_args and taskvec must be JSON objects).")
    if task not in TASKS:
        raise CheckpointError(f"{path} has task {task[:20]!r} in its metadata, not one of {', '.join(TASKS)}.")
    return check_model_yaml(yaml, str(path)), check_names(names, str(path), CheckpointError), task, train_args, provenance


def _check_declared_shapes(path: Path, yaml: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The file's tensors must be those of the model its yaml builds (class branch aside: see ``fit_to_shapes``),
    within the caps and the memory available; checked on shapes, before any tensor is read."""
    planned = planned_shapes(yaml, str(path))
    head = f"model.{len(yaml['backbone']) + len(yaml['head']) - 1}."
    branch = (head + "cv3.", head + "one2one_cv3.")
    odd = sorted(set(planned) ^ set(shapes)) or [k for k in sorted(planned) if planned[k] != shapes[k] and not k.startswith(branch)]
    if odd:
        raise CheckpointError(f"{path}: its tensors do not fit the architecture in its metadata (e.g. {odd[0]}).")
    for key, shape in shapes.items():
        if math.prod(shape) > MAX_TENSOR_VALUES:
            raise CheckpointError(f"{path} declares tensor {key} with shape {list(shape)}, larger than any YOLO tensor; the file is corrupt or malicious.")
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_MODEL_VALUES:
        raise CheckpointError(f"{path} declares {total:,} values, more than any YOLO model; the file is corrupt or malicious.")
    check_allocation(8 * total, f"loading {path}", CheckpointError)  # the file's tensors and the model's


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().replace("ERROR ❌️ ", "")
    return text.splitlines()[0] if text else type(e).__name__
