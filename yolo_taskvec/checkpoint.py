"""Ultralytics checkpoint I/O: load (restricted unpickling, EMA wins, fp32, clear errors), build models from
validated yamls, save (atomic, verified, EMA cleared).

A ``.pt`` file is a pickle, and unpickling can run code. By default it is loaded through PyTorch's ``weights_only``
unpickler with an allow-list of the torch/Ultralytics classes a checkpoint legitimately holds (what Ultralytics'
``ULTRALYTICS_SAFE_LOAD=1`` allows, minus layers that download when built), after a scan of the pickle that refuses
calls of those classes' constructors. A file that needs anything else is refused with one sentence; loading it
unrestricted is an explicit choice for one run: ``trust=True`` or ``YOLO_TASKVEC_TRUST=1``
(``ULTRALYTICS_SAFE_LOAD=1`` always wins). Architecture yamls are validated (``schema``) and sized on the meta
device before any model is built, and their activation is never ``eval``ed. Task-vector files need none of this
(safetensors).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import pickle
import pickletools
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_output
from .errors import (
    CheckpointError,
    MismatchError,
    OutputError,
    TaskVecError,
    first_line,
)
from .files import MAX_HEADER_BYTES, MODEL_FORMAT, read_snapshot
from .limits import MAX_MODEL_VALUES, MAX_TENSOR_VALUES, check_allocation
from .parts import Layout
from .plain import plain
from .schema import (
    TASKS,
    check_arch_yaml,
    check_names,
    parse_activation,
    register_layer_check,
)
from .taskvector import fingerprint

FP16_MAX = float(torch.finfo(torch.float16).max)
ModelLike = Any  # str | Path | ultralytics.YOLO | torch.nn.Module | LoadedModel
TRUST_ENV = "YOLO_TASKVEC_TRUST"
SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"
FETCHING_LAYERS = frozenset({"TorchVision"})  # layers that download weights when built: never from a file
TORCH_LAYERS = frozenset({"Upsample", "Identity", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "ZeroPad2d", "ConvTranspose2d", "Conv2d", "BatchNorm2d", "Dropout", "Flatten", "Linear"})
MAX_PICKLE_BYTES = 256 << 20  # data.pkl of a YOLO26x checkpoint: under 1 MB
_torch_save = torch.serialization.save  # the real serializer: Ultralytics rebinds torch.save to a retrying wrapper
_BUILD_LOCK = threading.RLock()  # model construction swaps Conv.default_act, process-wide state
_LOAD_LOCK = threading.Lock()  # torch's safe-globals allow-list is process-wide


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
    """A readable model file; bare names are also looked up in Ultralytics' ``weights_dir``."""
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
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"cannot read model file {path}: {(e.strerror or type(e).__name__).lower()}.") from e
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


# ----------------------------------------------------------------------------------------------- trust
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def trusted(trust: bool | None = None) -> bool:
    """Whether ``.pt`` files may be unpickled without restriction: ``trust``, else ``$YOLO_TASKVEC_TRUST``; never
    while ``ULTRALYTICS_SAFE_LOAD=1`` is set."""
    if _env_true(SAFE_LOAD_ENV):
        return False
    return bool(trust) if trust is not None else _env_true(TRUST_ENV)


def _refusal(path: Path, what: str) -> CheckpointError:
    how = f"{SAFE_LOAD_ENV}=1 is set, which forbids trusting it in this process" if _env_true(SAFE_LOAD_ENV) else f"if you trust its source, load it with trust=True (command line: {TRUST_ENV}=1 for one run)"
    return CheckpointError(f"refused to load {path}: {what}, and unpickling it could run code; nothing was executed; {how}.")


# ----------------------------------------------------------------------------------------------- the zip archive
def _damage(path: Path) -> str | None:
    """Why a file is not a readable PyTorch zip archive, or None if it is one (CRCs checked, no decompression)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK":
            return "it is truncated or corrupt (failed finding the zip central directory; an interrupted download?)"
        return "it is not a PyTorch zip checkpoint"
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
                return "it holds compressed members, which torch.save never writes (a re-packed or hostile archive)"
            if not any(i.filename.endswith("/data.pkl") for i in infos):
                return "it has no data.pkl (not a torch.save archive)"
            if min(i.header_offset for i in infos) != 0:
                return "it does not start with its first archive member (bytes before the archive, e.g. two archives written into one file)"
            bad = z.testzip()
    except Exception as e:  # noqa: BLE001 - a damaged central directory surfaces as many exception types
        return f"it is corrupt ({type(e).__name__} while reading the zip directory)"
    return f"it is corrupt (damaged member {bad})" if bad else None


def _pickle_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
        if info.file_size > MAX_PICKLE_BYTES:
            raise _refusal(path, f"its pickle is {info.file_size / 1e6:.0f} MB, far more than a checkpoint's")
        return z.read(info)


# ----------------------------------------------------------------------------------------------- restricted unpickling
def _restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as checkpoints use it (``Detect.forward``, enum members), and nothing else."""
    import enum

    if isinstance(obj, type) and not name.startswith("__") and issubclass(obj, (torch.nn.Module, enum.Enum)):
        return getattr(obj, name)
    if isinstance(obj, torch.nn.Module) and name in ("forward", "forward_fuse"):
        return getattr(type(obj), name).__get__(obj)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not allowed in a checkpoint")


@lru_cache(maxsize=1)
def _data_globals() -> dict[str, Any]:
    """Non-layer globals of real checkpoints (train args, numpy scalars, paths, legacy aliases), by pickled name."""
    import pathlib

    import numpy as np
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace

    scalar = np.float64(0).__reduce__()[0]
    local_path = pathlib.WindowsPath if os.name == "nt" else pathlib.PosixPath
    out: dict[str, Any] = {
        "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,
        "ultralytics.yolo.utils.IterableSimpleNamespace": IterableSimpleNamespace,
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": np.dtype,
        "builtins.getattr": _restricted_getattr,
        "ultralytics.nn.modules.block.Silence": torch.nn.Identity,
        "ultralytics.nn.tasks.YOLOv10DetectionModel": DetectionModel,
    }
    out.update({f"{m}.{c}": local_path for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "WindowsPath")})
    out.update({f"numpy.dtypes.{t.__name__}": t for t in (type(np.dtype(x)) for x in (np.float64, np.float32, np.int64, np.int32, np.bool_))})
    with contextlib.suppress(ImportError, AttributeError):
        from ultralytics.utils.loss import E2EDetectLoss

        out["ultralytics.utils.loss.v10DetectLoss"] = E2EDetectLoss
    return out


def _model_class(name: str) -> type | None:
    """The class a pickled ``module.Class`` name refers to, if it is a torch/Ultralytics layer or model (or a loss or
    assigner object a training checkpoint keeps); None otherwise."""
    module, _, attr = name.rpartition(".")
    layer_modules = ("torch.nn.modules", "ultralytics.nn.modules")
    plain_modules = ("ultralytics.utils.loss", "ultralytics.utils.tal")
    if not (module in (*layer_modules, "ultralytics.nn.tasks", *plain_modules) or module.rpartition(".")[0] in layer_modules):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
    if not isinstance(obj, type) or attr in FETCHING_LAYERS:
        return None
    if module in plain_modules:
        return obj if obj.__module__ == module else None
    return obj if issubclass(obj, torch.nn.Module) else None


def _allow_list(path: Path) -> tuple[list[Any], set[str]]:
    """``(safe-globals entries, names of classes whose constructors may not be called)`` for one checkpoint;
    refuses a checkpoint that names anything else."""
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise CheckpointError(f"cannot load {path} safely: restricted loading needs torch 2.6 or newer (this is {torch.__version__}); upgrade torch, or load it with trust=True if you trust its source.")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # noqa: BLE001 - a pickle the scanner cannot read is damaged
        raise CheckpointError(f"cannot load {path}: its pickle is unreadable ({type(e).__name__}).") from e
    entries, classes, foreign = [], set(), []
    data = _data_globals()
    for name in names:
        cls = _model_class(name)
        if cls is not None:
            entries.append((cls, name))
            classes.add(name)
        elif name in data:
            entries.append((data[name], name))
        else:
            foreign.append(name)
    if foreign:
        shown = ", ".join(sorted(foreign)[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise _refusal(path, f"it references {shown}, outside the torch and Ultralytics classes a checkpoint holds")
    return entries, classes


def _called_globals(data: bytes) -> Iterator[str]:
    """Names of the globals a pickle calls (REDUCE) or instantiates via INST/OBJ, by symbolic execution of its
    opcodes (nothing is imported or built). ValueError for a pickle that does not parse."""
    mark = object()
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "MARK":
                stack.append(mark)
            elif name == "GLOBAL":
                stack.append(_Global(str(arg).replace(" ", ".")))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_Global(f"{module}.{attr}"))
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"):
                stack.append(arg)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
            elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
                stack.pop()
                if name == "NEWOBJ_EX":
                    stack.pop()
                func = stack.pop()
                if name == "REDUCE" and isinstance(func, _Global):
                    yield func.name
                stack.append(None)
            elif name in ("INST", "OBJ"):
                yield str(arg).replace(" ", ".") if name == "INST" else "OBJ"
                _pop_generic(op, stack, mark)
                stack.append(None)
            else:
                _pop_generic(op, stack, mark)
                stack.extend([None] * len(op.stack_after))
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"its pickle does not parse ({type(e).__name__})") from e


class _Global:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _pop_generic(op: Any, stack: list[Any], mark: object) -> None:
    before = op.stack_before
    if pickletools.markobject in before:
        while stack[-1] is not mark:
            stack.pop()
        stack.pop()
        for _ in range(before.index(pickletools.markobject)):
            stack.pop()
    else:
        for _ in before:
            stack.pop()


def _check_calls(path: Path, classes: set[str]) -> None:
    """Refuse a pickle that calls a layer's or model's constructor: a real checkpoint only restores their state
    (``__new__`` and ``__setstate__``); a call could run any side effect of ``__init__`` (downloads, huge tensors)."""
    try:
        called = set(_called_globals(_pickle_bytes(path)))
    except ValueError as e:
        raise CheckpointError(f"cannot load {path}: {e}.") from e
    constructed = sorted(called & classes | {c for c in called if c == "OBJ"})
    if constructed:
        raise _refusal(path, f"its pickle calls {', '.join(constructed[:3])}, which a checkpoint never does")


def _restricted_load(path: Path) -> Any:
    entries, classes = _allow_list(path)
    _check_calls(path, classes)
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(entries):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, f"the restricted unpickler refused it ({first_line(e)[:120]})") from e
    except Exception as e:  # noqa: BLE001 - any other failure inside unpickling is one user-facing condition
        raise CheckpointError(f"cannot load {path}: {first_line(e)}") from e


def _trusted_load(path: Path) -> Any:
    from ultralytics.nn.tasks import torch_safe_load

    missing = _missing_modules(path)
    if missing:  # Ultralytics would try to pip-install a package the file names: never let a file choose that
        raise CheckpointError(f"cannot load {path}: it needs Python module '{missing}', which is not installed (yolo-taskvec never installs packages a checkpoint asks for).")
    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=False)
    except Exception as e:  # noqa: BLE001 - any failure inside unpickling is one user-facing condition
        raise CheckpointError(f"cannot load {path}: {first_line(e)}") from e
    return ckpt




def _torch_load(path: Path, trust: bool | None) -> Any:
    damage = _damage(path)
    if damage:
        raise CheckpointError(f"cannot load {path}: {damage}.")
    return _trusted_load(path) if trusted(trust) else _restricted_load(path)


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


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return "a bare state_dict"
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    return f"a {type(obj).__name__}"


def check_tensor_sizes(tensors: Mapping[str, torch.Tensor], source: str, error: type[TaskVecError] = CheckpointError) -> None:
    """Bounds on a model's tensors before they are converted or copied: per tensor, in all, and in memory."""
    total = 0
    for key, t in tensors.items():
        if t.numel() > MAX_TENSOR_VALUES:
            raise error(f"{source}: tensor {key} holds {t.numel():,} values, more than any YOLO tensor; the file is corrupt or malicious.")
        total += t.numel()
    if total > MAX_MODEL_VALUES:
        raise error(f"{source} holds {total:,} values, more than any YOLO model; the file is corrupt or malicious.")
    check_allocation(4 * total, f"loading {source} in fp32", error)


def _from_checkpoint(path: Path, trust: bool | None) -> LoadedModel:
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    ckpt = _torch_load(path, trust)
    candidate = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, Mapping) else None
    if not isinstance(candidate, torch.nn.Module):
        raise CheckpointError(f"{path} is not an Ultralytics checkpoint: it holds {_describe(ckpt)} with no 'model' or 'ema' module.")
    if not hasattr(candidate, "yaml"):
        raise CheckpointError(f"{path} holds a {type(candidate).__name__}, not an Ultralytics YOLO model (no yaml).")
    check_model_yaml(candidate.yaml, str(path))  # later rebuilds (a carried head, convert) start from this yaml
    names = getattr(candidate, "names", None)
    if names is not None:  # printed in tables and stored in vectors: printable text only
        check_names(dict(enumerate(names)) if isinstance(names, (list, tuple)) else names, str(path), CheckpointError)
    check_tensor_sizes(candidate.state_dict(), str(path))
    module = candidate.float().eval()
    train_args = ckpt.get("train_args") or {}
    if not isinstance(train_args, Mapping):
        raise CheckpointError(f"{path}: its train_args are a {type(train_args).__name__}, not a mapping.")
    module.args = {**DEFAULT_CFG_DICT, **train_args}
    module.pt_path = str(path)
    module.task = getattr(module, "task", None) or guess_model_task(module)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer")}
    return LoadedModel(module, str(path), meta, path)


def _check_unfused(loaded: LoadedModel) -> LoadedModel:
    is_fused = getattr(loaded.module, "is_fused", None)
    if callable(is_fused) and is_fused():
        raise CheckpointError(f"{loaded.source} is fused (BatchNorm folded into convolutions, e.g. by predict or val); load it again from its .pt file.")
    return loaded


def load_model(source: ModelLike, *, trust: bool | None = None) -> LoadedModel:
    """Load a path, ``ultralytics.YOLO``, ``torch.nn.Module`` or LoadedModel as an fp32 LoadedModel.

    ``ema`` wins over ``model`` exactly as Ultralytics loads it. ``.pt`` files load through the restricted
    unpickler unless ``trust=True`` (or ``YOLO_TASKVEC_TRUST=1``; see ``trusted``).
    """
    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".safetensors":
        return load_converted(source)  # a model converted to safetensors: no pickle involved
    if isinstance(source, (str, os.PathLike)):
        return _check_unfused(_from_checkpoint(resolve_weights(source), trust))
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


def check_vector_base(base: LoadedModel, meta: Mapping[str, Any], force: bool = False) -> None:
    """Refuse a task vector whose recorded base is not ``base``, or that records no base at all, unless ``force``.

    Every vector ``from_models`` extracts records the base's fingerprint; a file without one was written by hand or
    had it removed, and applying it to an arbitrary base would be silent nonsense."""
    if force:
        return
    name = str(meta.get("name", "?"))
    recorded = meta.get("base_fingerprint")
    if not recorded:
        raise MismatchError(f"task vector '{name}' records no base fingerprint, so it cannot be checked against the base {base.name}; pass force=True to apply it anyway.")
    if recorded != base.fingerprint:
        raise MismatchError(
            f"task vector '{name}' was extracted from a different base (fingerprint {str(recorded)[:12]}, this base {base.fingerprint[:12]}); pass force=True to apply it anyway."
        )


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
    """A new fp32 module with ``state`` loaded: the base's architecture, or ``target_yaml`` when it differs (validated
    and sized before anything is built, see ``build_from_yaml``).

    ``device``: where the module is put before the state is copied in (a state merged on a GPU stays there).
    ``adopt``: keys whose tensors in ``state`` are new memory made for this module (a merge's output): they become
    the module's own parameters and buffers without a copy (one model less of memory and traffic per build).
    """
    if target_yaml is None or dict(target_yaml) == dict(base.yaml):
        module = copy.deepcopy(base.module, _adopted(base.module, state, adopt, device))
    else:
        module = build_from_yaml(target_yaml, "the target architecture of the task vector", {k: tuple(v.shape) for k, v in state.items()}, MismatchError)
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


# ----------------------------------------------------------------------------------------------- building from yamls
def ultralytics_layer(name: str) -> bool:
    """True for a layer name Ultralytics' model builder may use from a file: a class of ``ultralytics.nn.modules``
    that the builder can see (not a whole model, not a layer that downloads weights), or a plain torch layer."""
    import ultralytics.nn.tasks as tasks

    if name.startswith("nn."):
        return name[3:] in TORCH_LAYERS
    obj = vars(tasks).get(name)
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__.startswith("ultralytics.nn.modules") and name not in FETCHING_LAYERS


register_layer_check(ultralytics_layer)  # vector files checked in the core use the same layer set


def check_model_yaml(yaml: Any, where: str, error: type[TaskVecError] = CheckpointError) -> dict[str, Any]:
    """The one validator for architecture yamls from files (vector metadata, converted models, checkpoints)."""
    sections = [yaml.get(k) for k in ("backbone", "head")] if isinstance(yaml, Mapping) else []
    for layer in (layer for section in sections if isinstance(section, list) for layer in section):
        if isinstance(layer, list) and len(layer) > 2 and isinstance(layer[2], str) and layer[2] in FETCHING_LAYERS:
            raise error(f"{where}: its model yaml uses {layer[2]}, which downloads weights when built; a model from a file cannot use it.")
    return check_arch_yaml(yaml, where, error, is_layer=ultralytics_layer)


def planned_shapes(yaml: Mapping[str, Any], where: str, error: type[TaskVecError] = CheckpointError) -> dict[str, tuple[int, ...]]:
    """State-dict shapes a (validated) yaml builds, computed on the meta device: nothing is allocated."""
    from ultralytics.nn.tasks import parse_model

    cfg = _without_activation(yaml)
    with _BUILD_LOCK, _activation(yaml, where, error), _quiet_build(where, error), torch.device("meta"):
        layers, _ = parse_model(cfg, ch=int(cfg.get("channels", cfg.get("ch", 3))), verbose=False)
    return {f"model.{k}": tuple(v.shape) for k, v in layers.state_dict().items()}


def build_from_yaml(yaml: Any, where: str, shapes: Mapping[str, Sequence[int]] | None = None, error: type[TaskVecError] = CheckpointError) -> torch.nn.Module:
    """Build a model from a yaml read from a file: validated, sized on the meta device against the caps and the
    memory available, then built without evaluating anything (the activation is resolved from ``schema``'s list).
    With ``shapes`` (of the tensors it must hold), the class branch is resized to fit them (``fit_to_shapes``)."""
    yaml = check_model_yaml(yaml, where, error)
    planned = planned_shapes(yaml, where, error)
    total = sum(math.prod(s) for s in planned.values())
    if total > MAX_MODEL_VALUES or any(math.prod(s) > MAX_TENSOR_VALUES for s in planned.values()):
        raise error(f"{where}: its model yaml builds {total:,} values, more than any YOLO model; the file is corrupt or malicious.")
    check_allocation(4 * total, f"building the model of {where}", error)
    if shapes is not None:
        stored = sum(math.prod(s) for s in shapes.values())
        check_allocation(4 * stored, f"loading the tensors of {where}", error)
    with _BUILD_LOCK, _activation(yaml, where, error), _quiet_build(where, error):
        module = _module_from_yaml(_without_activation(yaml), shapes)
    if yaml.get("activation") is not None:
        module.yaml["activation"] = yaml["activation"]  # kept for saving: a later rebuild uses it again
    return module


def _without_activation(yaml: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in yaml.items() if k != "activation"})


@contextlib.contextmanager
def _activation(yaml: Mapping[str, Any], where: str, error: type[TaskVecError]) -> Iterator[None]:
    """``Conv.default_act`` set to the yaml's activation (built from ``schema``'s parse, never ``eval``ed) and
    restored afterwards (Ultralytics 8.4.0 leaves it changed for the whole process)."""
    from ultralytics.nn.modules import Conv

    previous = Conv.default_act
    if yaml.get("activation") is not None:
        name, args, kwargs = parse_activation(yaml["activation"], where, error)
        try:
            Conv.default_act = getattr(torch.nn, name)(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise error(f"{where}: its model yaml has activation {yaml['activation']!r}, which torch cannot build ({first_line(e)}).") from e
    try:
        yield
    finally:
        Conv.default_act = previous


@contextlib.contextmanager
def _quiet_build(where: str, error: type[TaskVecError]) -> Iterator[None]:
    """Any failure of Ultralytics' builder on a validated yaml is one sentence."""
    try:
        yield
    except TaskVecError:
        raise
    except Exception as e:  # noqa: BLE001 - arguments that do not fit a layer surface as many exception types
        raise error(f"{where}: its model yaml does not build ({first_line(e)}).") from e


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
    """Build a model from its yaml; with ``shapes`` (of the tensors it must hold), resize layers to fit them.

    Trusted yamls only (Ultralytics' own builder); a yaml read from a file goes through ``build_from_yaml``."""
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


def save_checkpoint(model: Any, path: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None, inputs: Iterable[str | os.PathLike] = (), train_args: Mapping[str, Any] | None = None, exist_ok: bool = True) -> Path:
    """Save a model as a standard Ultralytics checkpoint: fp16 ``model``, ``ema=None``, ``train_args``, provenance.

    ``provenance`` (plain data) goes under the ``taskvec`` key. The write goes through torch's own serializer (not
    Ultralytics' retrying ``torch.save``), is verified (``verify_archive``) and committed atomically; it never
    overwrites an input, nor an existing file without ``exist_ok``, and an interrupted save leaves the previous file.
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
        "taskvec": plain(dict(provenance or {})),
    }
    with atomic_output(path, inputs, exist_ok=exist_ok, verify=verify_archive) as tmp, open(tmp, "wb") as f:
        _serialize(ckpt, f)
    return path


class _WriteErrors:
    """A file's ``write``/``flush`` that remember the first OSError: torch's archive writer turns it into a bare
    RuntimeError ("unexpected pos"), which would hide a full disk or a file-size limit."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def _serialize(obj: Any, f: Any) -> None:
    """torch's own serializer into an open file, once (no retry appends a second archive to a half-written one);
    a file-system error surfaces as the OSError it is."""
    recorder = _WriteErrors(f)
    try:
        _torch_save(obj, recorder)
        recorder.flush()
    except Exception as e:
        if recorder.error is not None:
            raise recorder.error from e
        raise


def verify_archive(path: Path) -> None:
    """Refuse a written checkpoint that is not exactly one complete torch archive: it starts at byte 0 and ends
    with its zip end record (no second archive appended by a retried write), every member's CRC matches, and its
    pickle parses to the end (read, never executed). ValueError with the reason otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 22))
        tail = f.read(22)
    damage = _damage(path) or (None if tail[:4] == b"PK\x05\x06" else "it does not end with its zip end record (bytes after the archive)")
    if damage is None:
        try:
            for _ in pickletools.genops(_pickle_bytes(path)):
                pass
        except Exception as e:  # noqa: BLE001 - an incomplete pickle raises several types
            damage = f"its pickle is incomplete ({type(e).__name__})"
    if damage:
        raise ValueError(damage)


# ----------------------------------------------------------------------------------------------- converted models (safetensors)
MODEL_FORMAT_VERSION = 1  # what `convert` writes (yolo_taskvec.convert); read here so loading never needs convert


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
        raise CheckpointError(f"{path} is not a valid safetensors file ({first_line(e)}).") from e
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
    if version > MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path} uses converted-model format {version}; this yolo-taskvec reads up to {MODEL_FORMAT_VERSION}, upgrade it.")
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
