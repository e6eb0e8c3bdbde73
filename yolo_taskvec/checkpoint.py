"""Ultralytics checkpoint I/O: load (EMA wins, fp32, clear errors), build models, save (atomic, EMA cleared).

Loading a ``.pt`` file unpickles it, which can run code: only load checkpoints you trust, or set
``ULTRALYTICS_SAFE_LOAD=1`` (or pass ``safe=True``) to load through Ultralytics' allow-listed
``weights_only`` loader. Task-vector files never need this (safetensors).
"""

from __future__ import annotations

import copy
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_output
from .errors import CheckpointError, MismatchError, OutputError
from .parts import Layout
from .taskvector import fingerprint

FP16_MAX = float(torch.finfo(torch.float16).max)
ModelLike = Any  # str | Path | ultralytics.YOLO | torch.nn.Module | LoadedModel


@dataclass
class LoadedModel:
    """An Ultralytics model in fp32 with what the library needs to know about it."""

    module: torch.nn.Module
    source: str
    ckpt: dict[str, Any] = field(default_factory=dict)  # checkpoint entries other than the modules
    path: Path | None = None

    @cached_property
    def state(self) -> dict[str, torch.Tensor]:
        """fp32 state dict (detached)."""
        return {k: (v.detach().float() if v.is_floating_point() else v.detach()) for k, v in self.module.state_dict().items()}

    @property
    def yaml(self) -> dict:
        return self.module.yaml

    @property
    def layout(self) -> Layout:
        return Layout.from_yaml(self.yaml)

    @property
    def task(self) -> str:
        return self.module.task

    @property
    def names(self) -> dict[int, str]:
        return dict(self.module.names)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.state)

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.path else self.source

    @property
    def train_args(self) -> dict[str, Any]:
        return dict(self.ckpt.get("train_args") or getattr(self.module, "args", None) or {})


def resolve_weights(source: str | os.PathLike, suffixes: tuple[str, ...] = (".pt",)) -> Path:
    """A model file that exists; bare names are also looked up in Ultralytics' ``weights_dir``."""
    from ultralytics.utils import SETTINGS

    path = Path(source).expanduser()
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        candidate = Path(SETTINGS["weights_dir"]) / path
        if candidate.exists():
            path = candidate
    if not path.exists():
        raise CheckpointError(f"model file {source} not found (also looked in weights_dir {SETTINGS['weights_dir']}).")
    if path.is_dir():
        raise CheckpointError(f"model path {source} is a directory, not a .pt checkpoint.")
    if path.suffix.lower() not in suffixes:
        raise CheckpointError(f"model file {source} is not a .pt checkpoint (or a .safetensors model written by 'yolo-taskvec convert').")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file {source} is empty (0 bytes).")
    return path


def input_file(source: Any) -> Path | None:
    """The file behind a model or vector argument, resolved as the loaders resolve it (None if not a file)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source).expanduser()
    if path.suffix.lower() in (".pt", ".safetensors"):
        try:
            return resolve_weights(path, (".pt", ".safetensors"))
        except CheckpointError:
            return path
    return path


def _damage(path: Path) -> str | None:
    """Why a file is not a readable zip archive (PyTorch's format), or None if it is one."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK":
            return "it is truncated or corrupt (failed finding the zip central directory; an interrupted download?)"
        return "it is not a PyTorch zip checkpoint"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # noqa: BLE001 - a damaged central directory surfaces as many exception types
        return f"it is corrupt ({type(e).__name__} while reading the zip directory)"
    return f"it is corrupt (damaged member {bad})" if bad else None


def _torch_load(path: Path, safe: bool | None) -> Any:
    from ultralytics.nn.tasks import torch_safe_load

    damage = _damage(path)
    if damage:
        raise CheckpointError(f"cannot load {path}: {damage}.")
    missing = _missing_modules(path)
    if missing:  # Ultralytics would try to pip-install a package the file names: never let a file choose that
        raise CheckpointError(f"cannot load {path}: it needs Python module '{missing}', which is not installed (yolo-taskvec never installs packages a checkpoint asks for).")
    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=safe)
    except Exception as e:  # noqa: BLE001 - any failure inside unpickling is one user-facing condition
        refused = _refused_globals(path, e)
        if refused is not None:
            raise CheckpointError(f"safe loading refused {path}: it references code outside Ultralytics' allow-list ({refused}); nothing was executed.") from e
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        message = message.replace("ERROR ❌️ ", "")
        raise CheckpointError(f"cannot load {path}: {message}") from e
    return ckpt


def _missing_modules(path: Path) -> str | None:
    """The first top-level module the checkpoint's pickle imports that is not installed (None if all are)."""
    import importlib.util

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - unreadable pickle: torch.load reports it
        return None
    for name in names:
        top = name.split(".", 1)[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return top
    return None


def _refused_globals(path: Path, error: BaseException) -> str | None:
    """The non-torch/Ultralytics globals a weights_only load refused (None if ``error`` is not such a refusal)."""
    import pickle

    if not isinstance(error.__cause__, pickle.UnpicklingError) or "outside the supported" not in str(error):
        return None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - the list is only a hint
        names = []
    foreign = [n for n in names if not n.startswith(("torch.", "ultralytics.", "collections.", "numpy.", "pathlib."))]
    return ", ".join(foreign[:4]) or "unknown types"


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return "a bare state_dict"
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    return f"a {type(obj).__name__}"


def _from_checkpoint(path: Path, safe: bool | None) -> LoadedModel:
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    ckpt = _torch_load(path, safe)
    candidate = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, Mapping) else None
    if not isinstance(candidate, torch.nn.Module):
        raise CheckpointError(f"{path} is not an Ultralytics checkpoint: it holds {_describe(ckpt)} with no 'model' or 'ema' module.")
    if not hasattr(candidate, "yaml"):
        raise CheckpointError(f"{path} holds a {type(candidate).__name__}, not an Ultralytics YOLO model (no yaml).")
    module = candidate.float().eval()
    module.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    module.pt_path = str(path)
    module.task = getattr(module, "task", None) or guess_model_task(module)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer")}
    return LoadedModel(module, str(path), meta, path)


def _check_unfused(loaded: LoadedModel) -> LoadedModel:
    is_fused = getattr(loaded.module, "is_fused", None)
    if callable(is_fused) and is_fused():
        raise CheckpointError(f"{loaded.source} is fused (BatchNorm folded into convolutions, e.g. by predict or val); load it again from its .pt file.")
    return loaded


def load_model(source: ModelLike, *, safe: bool | None = None) -> LoadedModel:
    """Load a path, ``ultralytics.YOLO``, ``torch.nn.Module`` or LoadedModel as an fp32 LoadedModel.

    ``ema`` wins over ``model`` exactly as Ultralytics loads it. ``safe=True`` (or ``ULTRALYTICS_SAFE_LOAD=1``)
    loads through Ultralytics' allow-listed ``weights_only`` unpickler.
    """
    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".safetensors":
        from .convert import load_converted  # a model converted to safetensors: no pickle involved

        return load_converted(source)
    if isinstance(source, (str, os.PathLike)):
        return _check_unfused(_from_checkpoint(resolve_weights(source), safe))
    from ultralytics.engine.model import Model

    module = source.model if isinstance(source, Model) else source
    if isinstance(module, (str, os.PathLike)):
        raise CheckpointError(f"YOLO model {module} is an exported or remote model; merging needs a PyTorch .pt model.")
    if not isinstance(module, torch.nn.Module) or not hasattr(module, "yaml"):
        raise CheckpointError(f"expected a .pt path, an ultralytics YOLO or an Ultralytics nn.Module, got {type(source).__name__}.")
    label = getattr(source, "ckpt_path", None) or getattr(module, "pt_path", None) or type(module).__name__
    ckpt = dict(getattr(source, "ckpt", None) or {})
    ckpt = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer")}
    copied = copy.deepcopy(module).float().eval()
    return _check_unfused(LoadedModel(copied, str(label), ckpt, None))


def check_same_architecture(base: LoadedModel, other: LoadedModel) -> None:
    """Refuse models whose backbone/neck structure differs from the base (e.g. yolo26n vs yolo26s, detect vs pose)."""
    a, b = base.yaml, other.yaml
    if a.get("backbone") != b.get("backbone") or a.get("head", [])[:-1] != b.get("head", [])[:-1] or a.get("scale") != b.get("scale"):
        raise MismatchError(f"{other.name} has a different architecture from the base {base.name} ({_arch(b)} vs {_arch(a)}).")
    head_a, head_b = a["head"][-1][2], b["head"][-1][2]
    if base.task != other.task and not (base.task == "detect" and other.task == "segment"):
        raise MismatchError(f"{other.name} is a {other.task} model ({head_b} head) and the base a {base.task} model ({head_a} head); only detect bases take segment fine-tunes.")


def _arch(yaml: Mapping) -> str:
    return f"{Path(str(yaml.get('yaml_file', 'model'))).stem} scale {yaml.get('scale', '?')}"


def build_module(base: LoadedModel, state: Mapping[str, torch.Tensor], *, target_yaml: Mapping | None = None, names: Mapping[int, str] | None = None, device: str | torch.device | None = None, adopt: Iterable[str] = ()) -> torch.nn.Module:
    """A new fp32 module with ``state`` loaded: the base's architecture, or ``target_yaml`` when it differs.

    ``device``: where the module is put before the state is copied in (a state merged on a GPU stays there).
    ``adopt``: keys whose tensors in ``state`` are new memory made for this module (a merge's output): they become
    the module's own parameters and buffers without a copy (one model less of memory and traffic per build).
    """
    if target_yaml is None or dict(target_yaml) == dict(base.yaml):
        module = copy.deepcopy(base.module, _adopted(base.module, state, adopt, device))
    else:
        module = _module_from_yaml(target_yaml, {k: tuple(v.shape) for k, v in state.items()})
        module.args = dict(base.module.args)
    if device is not None:
        module.to(device)
    missing, unexpected = _load_state(module, state)
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise MismatchError(f"the merged tensors do not fit the target architecture ({len(missing)} missing, {len(unexpected)} unexpected, e.g. {key}).")
    if names is not None:
        module.names = {int(k): str(v) for k, v in names.items()}
    module.task = getattr(module, "task", None) or base.task
    module.pt_path = None
    return module.float().eval()


def _adopted(module: torch.nn.Module, state: Mapping[str, torch.Tensor], keys: Iterable[str], device: str | torch.device | None) -> dict[int, Any]:
    """A deepcopy memo that puts ``state[key]`` in place of the module's tensor ``key`` (same shape, fp32, on the
    target device), so copying the module copies none of them."""
    keys = set(keys)
    if not keys:
        return {}
    target = torch.device(device) if device is not None else None
    memo: dict[int, Any] = {}
    for key, old in [*module.named_parameters(), *module.named_buffers()]:
        new = state.get(key)
        if key not in keys or new is None or new.shape != old.shape or new.dtype != torch.float32 or (target is not None and new.device != target) or (target is None and new.device != old.device):
            continue
        memo[id(old)] = torch.nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, torch.nn.Parameter) else new
    return memo


def _module_from_yaml(yaml: Mapping, shapes: Mapping[str, Sequence[int]] | None = None) -> torch.nn.Module:
    """Build a model from its yaml; with ``shapes`` (of the tensors it must hold), resize layers to fit them."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import guess_model_task

    cfg = copy.deepcopy(dict(yaml))
    task = guess_model_task(cfg)
    model_cls = YOLO.__new__(YOLO).task_map[task]["model"]
    module = model_cls(cfg=cfg, nc=cfg.get("nc"), verbose=False)
    module.task = task
    if shapes is not None:
        fit_to_shapes(module, shapes)
    return module


def replace_submodule(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted, list indices included) is."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new) if not child.isdigit() else parent.__setitem__(int(child), new)


def fit_to_shapes(module: torch.nn.Module, shapes: Mapping[str, Sequence[int]]) -> None:
    """Resize the class branch's Conv2d/BatchNorm2d layers to the shapes of the tensors they must hold.

    When a fine-tune changes the number of classes, Ultralytics keeps the class branch's width from the checkpoint it
    started from (e.g. 80 channels for nc=1), so a rebuild from the fine-tune's yaml (width 64) does not fit it.
    Only the head's class branches (``cv3``, ``one2one_cv3``) are resized; any other mismatch stays an error.
    """
    head = f"model.{len(module.yaml['backbone']) + len(module.yaml['head']) - 1}."
    for name, m in list(module.named_modules()):
        stored = shapes.get(f"{name}.weight")
        if not name.startswith((head + "cv3.", head + "one2one_cv3.")) or stored is None:
            continue
        if not isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) or tuple(m.weight.shape) == tuple(stored):
            continue
        if isinstance(m, torch.nn.BatchNorm2d):
            replace_submodule(module, name, torch.nn.BatchNorm2d(stored[0], m.eps, m.momentum))
            continue
        out, per_group, kh, kw = stored
        depthwise = m.groups == m.in_channels == m.out_channels and per_group == 1
        groups = out if depthwise else m.groups
        new = torch.nn.Conv2d(per_group * groups, out, (kh, kw), m.stride, m.padding, m.dilation, groups, bias=f"{name}.bias" in shapes)
        replace_submodule(module, name, new)


def _load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]  # counters: never merged
    unexpected = [k for k in state if k not in own or own[k].shape != state[k].shape]
    if not missing and not unexpected:
        module.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}}, strict=True)
    return missing, unexpected


def to_yolo(module: torch.nn.Module, label: str = "merged", train_args: Mapping[str, Any] | None = None, ckpt_extra: Mapping[str, Any] | None = None):
    """Wrap a module in a ready ``ultralytics.YOLO`` object (val, predict, export and save work on it)."""
    from ultralytics import YOLO
    from ultralytics.engine.model import Model
    from ultralytics.utils import callbacks

    args = dict(train_args or getattr(module, "args", {}) or {})
    yolo = YOLO.__new__(YOLO)
    torch.nn.Module.__init__(yolo)
    yolo.callbacks = callbacks.get_default_callbacks()
    yolo.predictor = yolo.trainer = yolo.cfg = yolo.metrics = None
    yolo.model = module
    yolo.task = module.task
    yolo.ckpt = {"train_args": args, **(ckpt_extra or {})}
    yolo.ckpt_path = None
    yolo.overrides = {**Model._reset_ckpt_args(args), "task": module.task, "model": label}
    yolo.model_name = label
    del yolo.training
    return yolo


def _check_fp16_range(module: torch.nn.Module, path: Path) -> None:
    for key, t in module.state_dict().items():
        if t.is_floating_point() and t.numel() and float(t.detach().abs().max()) > FP16_MAX:
            raise OutputError(f"cannot save {path} in fp16: {key} holds values beyond ±{FP16_MAX:g} (the scales are too large).")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise OutputError(f"cannot save {path}: {key} holds NaN or Inf values.")


def save_checkpoint(model: Any, path: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None, inputs: Iterable[str | os.PathLike] = (), train_args: Mapping[str, Any] | None = None) -> Path:
    """Save a model as a standard Ultralytics checkpoint: fp16 ``model``, ``ema=None``, ``train_args``, provenance.

    ``provenance`` (plain data) goes under the ``taskvec`` key. The write is atomic and never overwrites an input.
    """
    from ultralytics import __version__

    module = model.model if hasattr(model, "predictor") else model
    if not isinstance(module, torch.nn.Module):
        raise OutputError(f"cannot save {type(model).__name__}: not a PyTorch model.")
    path = Path(path)
    if path.suffix.lower() != ".pt":
        raise OutputError(f"cannot save a model as {path}: Ultralytics checkpoints need a .pt name.")
    sources = [getattr(model, "ckpt_path", None), getattr(module, "pt_path", None)]
    inputs = [*inputs, *(s for s in sources if isinstance(s, (str, os.PathLike)))]
    _check_fp16_range(module, path)
    half = copy.deepcopy(module).half().eval()
    for p in half.parameters():
        p.requires_grad_(False)
    half.pt_path = None
    args = dict(train_args or getattr(module, "args", None) or {})
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": half,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": args,
        "taskvec": _plain(dict(provenance or {})),
    }
    with atomic_output(path, inputs) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)  # through a file object, so a full disk raises OSError(ENOSPC), not a bare RuntimeError
    return path


def _plain(obj: Any) -> Any:
    """Provenance as plain Python data, so loading the checkpoint needs no yolo_taskvec import."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
