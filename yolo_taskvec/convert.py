"""Convert a trusted Ultralytics checkpoint to safetensors, and back, so sharing a model needs no pickle at all.

A ``.pt`` checkpoint is a pickle: loading one can run code. A converted model is one safetensors file holding the
state dict and, as JSON metadata, everything needed to rebuild the model: its architecture yaml, class names, task
and train args (``format = yolo-taskvec-model``). Loading it reads tensors and JSON only and rebuilds the network
from the yaml with Ultralytics' restricted (no-``eval``) construction, after checking that every layer the yaml
names is a known ``torch.nn.Module`` and that the activation is a plain ``nn.<Class>(literals)`` call.

>>> to_safetensors("yolo26n-base80.pt", "base80.safetensors")   # on the machine that trusts the .pt
>>> model = from_safetensors("base80.safetensors")               # anywhere: a ready ultralytics.YOLO
>>> model.val(data="fruit80.yaml", imgsz=320)

Converted models work wherever a model is expected (``base=``, ``models=``, ``model=``, ``load_model``).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_output, check_output
from .checkpoint import FP16_MAX, LoadedModel, ModelLike, input_file, load_model, resolve_weights, to_yolo
from .errors import CheckpointError, OutputError
from .files import MODEL_FORMAT, read_snapshot

FORMAT_VERSION = 1
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
MAX_LAYER_ARG = 1_000_000  # channel counts, repeats and class counts of any real YOLO yaml are far below this
FETCHING_LAYERS = ("TorchVision",)  # layers that download pretrained weights when built: never from an untrusted file


def to_safetensors(model: ModelLike, out: str | os.PathLike, *, dtype: str = "fp16", inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``model`` (path, YOLO, module) as one safetensors file with its yaml, names, task and train args.

    ``dtype`` applies to floating-point tensors (fp16 by default, as in Ultralytics checkpoints: exact for them).
    """
    from safetensors.torch import save_file
    from ultralytics import __version__

    if dtype not in DTYPES:
        raise OutputError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}.")
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise OutputError(f"cannot convert to {out}: a converted model is a .safetensors file.")
    check_output(out, [*inputs, input_file(model)])  # before loading: fail fast, never overwrite the source
    loaded = load_model(model)
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
    with atomic_output(out, [*inputs, loaded.path]) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def _check_rebuildable(loaded: LoadedModel) -> None:
    """Refuse a model whose layers are not what its yaml builds (a converted file must load without pickle)."""
    state = loaded.module.state_dict()
    own = _build(loaded.yaml, Path(loaded.source), {k: tuple(v.shape) for k, v in state.items()}).state_dict()
    odd = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
    if odd:
        raise CheckpointError(f"cannot convert {loaded.name}: its layers differ from what its yaml builds (e.g. {odd[0]}; a class-union head?); keep it as a .pt checkpoint.")


def from_safetensors(path: str | os.PathLike):
    """Rebuild a converted model as a ready ``ultralytics.YOLO`` (never unpickles, never ``eval``s)."""
    loaded = load_converted(path)
    return to_yolo(loaded.module, label=loaded.name, train_args=loaded.train_args, ckpt_extra={"taskvec": loaded.ckpt["taskvec"]} if loaded.ckpt.get("taskvec") else None)


def to_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert a converted model back into a standard Ultralytics ``.pt`` checkpoint."""
    from .checkpoint import save_checkpoint

    check_output(out, [path, input_file(path)])
    loaded = load_converted(path)
    return save_checkpoint(loaded.module, out, inputs=[loaded.path], train_args=loaded.train_args, provenance={**(loaded.ckpt.get("taskvec") or {}), "converted_from": loaded.path.name})


def is_converted_model(path: str | os.PathLike) -> bool:
    """True for a safetensors file written by ``to_safetensors`` (reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == MODEL_FORMAT
    except Exception:  # noqa: BLE001 - not readable as safetensors: not a converted model
        return False


def load_converted(source: str | os.PathLike) -> LoadedModel:
    """A converted model as an fp32 LoadedModel; one clear CheckpointError for anything wrong with the file."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    path = resolve_weights(source, suffixes=(".safetensors",))
    try:
        metadata, tensors = read_snapshot(path)  # one read: header and data of the same version of the file
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path} is not a valid safetensors file ({_first_line(e)}).") from e
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    if metadata.get("format") != MODEL_FORMAT:
        what = "a task vector" if metadata.get("format") == "yolo-taskvec" else "not a converted yolo-taskvec model"
        raise CheckpointError(f"{path} is {what}, not a model; models are .pt checkpoints or files written by 'yolo-taskvec convert'.")
    try:
        version = int(metadata.get("format_version", ""))
        yaml, names = json.loads(metadata["yaml"]), json.loads(metadata["names"])
        train_args, task = json.loads(metadata.get("train_args") or "{}"), metadata["task"]
        provenance = json.loads(metadata.get("taskvec") or "{}")
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has corrupted model metadata (yaml, names, task or train_args).") from e
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses converted-model format {version}; this yolo-taskvec reads up to {FORMAT_VERSION}, upgrade it.")
    if not isinstance(yaml, dict) or not isinstance(names, dict) or not isinstance(train_args, dict) or not isinstance(provenance, dict):
        raise CheckpointError(f"{path} has corrupted model metadata (yaml, names, train_args and taskvec must be JSON objects).")
    check_yaml_is_safe(yaml, path)
    module = _build(yaml, path, shapes)
    own = module.state_dict()
    if set(own) != set(shapes) or any(tuple(own[k].shape) != shapes[k] for k in own):
        key = next((k for k in sorted(set(own) ^ set(shapes))), None) or next(k for k in own if tuple(own[k].shape) != shapes[k])
        raise CheckpointError(f"{path}: its tensors do not fit the architecture in its metadata (e.g. {key}).")
    module.load_state_dict({k: tensors[k].to(own[k].dtype) for k in own}, strict=True)
    module = module.float().eval()
    module.names = {int(k): str(v) for k, v in names.items()}
    module.task = task
    module.args = {**DEFAULT_CFG_DICT, **train_args}
    module.pt_path = str(path)
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module, str(path), {"train_args": train_args, **({"taskvec": provenance} if provenance else {})}, path)


# ----------------------------------------------------------------------------------------------- safety
def check_yaml_is_safe(yaml: Mapping[str, Any], path: str | os.PathLike = "model") -> None:
    """Refuse a yaml whose layers are not known ``nn.Module`` classes or whose activation is not a literal call.

    Ultralytics' normal construction ``eval``s the activation and calls any name in its module namespace; a
    converted file is untrusted, so only what a real architecture needs gets through.
    """
    import ultralytics.nn.tasks as tasks

    sections = [yaml.get("backbone"), yaml.get("head")]
    if not all(isinstance(s, list) and s for s in sections):
        raise CheckpointError(f"{path}: its model yaml has no 'backbone'/'head' layer lists.")
    for layer in sections[0] + sections[1]:
        if not (isinstance(layer, list) and len(layer) == 4 and isinstance(layer[2], str) and isinstance(layer[3], list)):
            raise CheckpointError(f"{path}: its model yaml has a malformed layer {str(layer)[:60]}.")
        name = layer[2]
        if name.startswith("nn."):
            obj = getattr(torch.nn, name[3:], None)
        elif name.startswith("torchvision.ops."):
            obj = getattr(__import__("torchvision").ops, name[16:], None)
        else:
            obj = vars(tasks).get(name)
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)) or issubclass(obj, tasks.BaseModel):
            raise CheckpointError(f"{path}: its model yaml names '{name[:40]}', which is not a known model layer.")
        if name in FETCHING_LAYERS:
            raise CheckpointError(f"{path}: its model yaml uses {name}, which downloads weights when built; converted models cannot use it.")
        _check_literals(layer, path)
    act = yaml.get("activation")
    if act is not None and not _is_literal_activation(act):
        raise CheckpointError(f"{path}: its model yaml has activation {str(act)[:40]!r}, not a plain nn.<Class>(literals) call.")


def _check_literals(value: Any, path: str | os.PathLike) -> None:
    if isinstance(value, list):
        for v in value:
            _check_literals(v, path)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, (int, float)):
        if abs(value) > MAX_LAYER_ARG:
            raise CheckpointError(f"{path}: its model yaml has a layer argument {value:g}, far beyond any real architecture.")
    else:
        raise CheckpointError(f"{path}: its model yaml has a layer argument of type {type(value).__name__}.")


def _is_literal_activation(act: Any) -> bool:
    if not isinstance(act, str):
        return False
    try:
        call = ast.parse(act.strip(), mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(call, ast.Call):
        return False
    parts, node = [], call.func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or [*parts[1:], node.id] not in (["nn"], ["nn", "torch"]):
        return False
    cls = getattr(torch.nn, parts[0], None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        return False
    try:
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            ast.literal_eval(arg)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _restricted_construction() -> Iterator[None]:
    """Ultralytics' no-eval model construction (as under ``ULTRALYTICS_SAFE_LOAD``), where available."""
    from ultralytics.nn import tasks

    local = getattr(getattr(tasks, "_SafeLoad", None), "_local", None)
    if local is None:  # older Ultralytics: check_yaml_is_safe alone guards construction
        yield
        return
    previous = getattr(local, "active", False)
    local.active = True
    try:
        yield
    finally:
        local.active = previous


def _build(yaml: Mapping[str, Any], path: Path, shapes: Mapping[str, tuple[int, ...]]) -> torch.nn.Module:
    from .checkpoint import _module_from_yaml

    try:
        with _restricted_construction():
            return _module_from_yaml(yaml, shapes)
    except Exception as e:  # noqa: BLE001 - any failure to build from the yaml is one condition
        raise CheckpointError(f"{path}: its model yaml does not build ({_first_line(e)}).") from e


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
