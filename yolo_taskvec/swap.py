"""Hot-swapping: apply a task vector in place on a loaded ``YOLO`` and restore the base bit for bit.

One process, one set of weights, several behaviours::

    model = YOLO("yolo26n-base80.pt")
    swap(model, "night.safetensors", scale=0.5)     # night behaviour, in place
    model.predict(images)
    unswap(model)                                   # exactly the base again
    with swapped(model, day_tv, 0.3):               # or scoped
        model.predict(images)

What it relies on (Ultralytics 8.4.190, checked in the tests):

* ``YOLO.predict`` does not fuse ``model.model``: its predictor deep-copies it, fuses the *copy* (Conv + BatchNorm
  folded into one conv, the unused detection branch dropped) and keeps that copy for later calls. Swapping only
  ``model.model`` would leave predict serving the old weights, so ``swap`` also rewrites the predictor's fused copy:
  each touched Conv+BN pair is re-fused from the merged tensors with Ultralytics' own ``fuse_conv_and_bn``, so
  predictions while swapped equal those of ``tv.apply(base, scale)`` exactly. A module fused in place
  (``model.fuse()``) is handled the same way. ``YOLO.val`` scores a private copy and needs nothing.
* The first swap keeps a copy of the model's unfused tensors (the base; one model's worth of memory, on its
  device): merged values are computed from it with ``merging.merge_states`` (the same arithmetic and BatchNorm
  policies as ``apply``: ``bn=merge``, ``geometric`` or ``base``; ``recalibrate`` needs images and is refused), and
  fused copies made while swapped are restored from it. Everything a swap overwrites is saved first and copied back
  by ``unswap``, so the base comes back bit-identical, not recomputed.

One vector at a time: swapping into a swapped model is refused (``unswap`` first, or swap one combined vector such
as ``tv_a + tv_b``). Vectors that carry absolute tensors (other class sets, a mask head) change the architecture
and cannot be swapped in. The model's tensors stay where they are (CPU or GPU) and keep their dtype. Weights changed
by other means (training) make the base copy stale: ``release(model)`` drops it, the next swap takes a new one.
Not thread-safe: serve from one thread, or hold a lock around swap, predict and unswap.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import bn as bn_policy
from .errors import MismatchError, TaskVecError
from .merging import merge_states
from .parts import Layout
from .taskvector import Scale, TaskVector, fingerprint, is_mergeable

_MISSING = object()
Write = tuple[torch.Tensor, torch.Tensor]  # (live tensor, value to copy into it)


@dataclass
class _Active:
    name: str
    scale: Scale
    bn: str
    keys: list[str]


@dataclass
class SwapState:
    """Kept per model from its first swap: its unfused base tensors, BatchNorm eps values, what is swapped in, and
    the original fused Conv+BN weights of fused copies (saved the first time a swap overwrites them)."""

    base: dict[str, torch.Tensor]
    eps: dict[str, float]
    layout: Layout
    _fingerprint: str | None = None
    active: _Active | None = None
    fused_originals: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    where: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)  # module -> {keys: _Where}

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.base)
        return self._fingerprint


_STATES: weakref.WeakKeyDictionary[torch.nn.Module, SwapState] = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------------------------- modules
def _main_module(model: Any) -> torch.nn.Module:
    from ultralytics.engine.model import Model

    module = model.model if isinstance(model, Model) else model
    if not isinstance(module, torch.nn.Module) or not hasattr(module, "yaml"):
        raise TaskVecError(f"swap needs a loaded ultralytics YOLO (or its nn.Module), got {type(model).__name__}.")
    return module


def _predictor_module(model: Any) -> torch.nn.Module | None:
    """The fused copy ``YOLO.predict`` keeps in ``model.predictor`` (None before the first predict)."""
    predictor = getattr(model, "predictor", None)
    backend = getattr(predictor, "model", None)
    inner = getattr(getattr(backend, "backend", None), "model", None) or getattr(backend, "model", None)
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile wrapper
    return inner if isinstance(inner, torch.nn.Module) else None


def _targets(model: Any, main: torch.nn.Module) -> list[torch.nn.Module]:
    copy = _predictor_module(model)
    return [main] + ([copy] if copy is not None and copy is not main else [])


def _is_fused(module: torch.nn.Module) -> bool:
    is_fused = getattr(module, "is_fused", None)
    return bool(callable(is_fused) and is_fused())


def state_of(model: Any) -> SwapState | None:
    """The swap state of a model (None before its first swap)."""
    return _STATES.get(_main_module(model))


def current(model: Any) -> dict[str, Any] | None:
    """What is swapped in: ``{"name", "scale", "bn"}``, or None when the model holds its base weights."""
    state = state_of(model)
    if state is None or state.active is None:
        return None
    return {"name": state.active.name, "scale": state.active.scale, "bn": state.active.bn}


def _state_for(main: torch.nn.Module) -> SwapState:
    state = _STATES.get(main)
    if state is not None:
        return state
    if _is_fused(main):
        raise TaskVecError(
            "this model is fused (BatchNorm folded into its convolutions by model.fuse()), so its base weights are gone; "
            "load it again and swap before fusing it (predict and val do not fuse model.model)."
        )
    base = {k: v.detach().clone() for k, v in main.state_dict().items()}
    eps = {name: float(m.eps) for name, m in main.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    state = SwapState(base, eps, Layout.from_yaml(main.yaml))
    _STATES[main] = state
    return state


# ----------------------------------------------------------------------------------------------- writing
def _walk(module: torch.nn.Module, path: str) -> Any:
    obj: Any = module
    for part in path.split(".") if path else []:
        obj = getattr(obj, part, _MISSING)
        if obj is None or obj is _MISSING:
            return obj
    return obj


def _fused_pairs(module: torch.nn.Module, base: dict[str, torch.Tensor]) -> set[str]:
    """Conv+BN pairs ``P`` that are fused in ``module``: ``P.bn`` gone, ``P.conv`` kept (base has ``P.bn.*``)."""
    return {
        name
        for name, m in module.named_modules()
        if not hasattr(m, "bn") and isinstance(getattr(m, "conv", None), torch.nn.Conv2d) and f"{name}.bn.running_var" in base
    }


def _fuse(values: dict[str, torch.Tensor], parent: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ultralytics' own ``fuse_conv_and_bn`` on the unfused tensors of one Conv+BN pair."""
    from types import SimpleNamespace

    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    conv = torch.nn.Module()
    conv.weight = torch.nn.Parameter(values[f"{parent}.conv.weight"], requires_grad=False)
    bias = values.get(f"{parent}.conv.bias")
    conv.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
    bn = SimpleNamespace(**{n: values[f"{parent}.bn.{n}"] for n in ("running_mean", "running_var", "weight", "bias")}, eps=eps)
    fused = fuse_conv_and_bn(conv, bn)
    return fused.weight.detach(), fused.bias.detach()


def _locate(module: torch.nn.Module, keys: list[str], state: SwapState, live: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """``(direct keys, fused Conv+BN pairs)`` of ``module`` that ``keys`` touch; refuses what it cannot rewrite.

    Keys of branches a fusion dropped (set to None, e.g. Detect's unused head) are skipped.
    """
    fused = _fused_pairs(module, state.base)
    direct, groups = [], set()
    for key in keys:
        parts = key.split(".")
        parent = ".".join(parts[:-2]) if len(parts) >= 3 and parts[-2] in ("conv", "bn") else None
        if parent in fused:
            groups.add(parent)
        elif key in live:
            if live[key].shape != state.base[key].shape:
                raise MismatchError(f"{key} has shape {tuple(live[key].shape)} in the model, {tuple(state.base[key].shape)} in its base copy.")
            direct.append(key)
        elif _walk(module, key.rsplit(".", 1)[0]) is not None:
            raise TaskVecError(f"cannot swap into this fused model: {key} was folded into a structure swap does not handle; swap before fusing it.")
    return direct, sorted(groups)


def _fused_pair(parent: str, values: dict[str, torch.Tensor], state: SwapState) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused conv weight and bias of one pair from its unfused tensors (``values``, else the base's)."""
    names = [f"{parent}.conv.weight", f"{parent}.conv.bias", *(f"{parent}.bn.{n}" for n in ("weight", "bias", "running_mean", "running_var"))]
    dtype = state.base[names[0]].dtype
    group = {k: (values[k] if k in values else state.base[k]).to(dtype) for k in names if k in state.base}
    return _fuse(group, parent, state.eps[f"{parent}.bn"])


@dataclass
class _Where:
    """Where a set of keys lives in one module: direct tensors and fused Conv+BN pairs (conv weight, bias)."""

    direct: list[tuple[str, torch.Tensor]]
    pairs: list[tuple[str, torch.Tensor, torch.Tensor]]
    links: list[tuple[Any, str, Any]]  # (object, attribute, what it held): tensors and their owners' parents

    def still_valid(self) -> bool:
        """No tensor was replaced and no submodule removed since (a fusion does both), so the writes still land."""
        return all(getattr(o, a, None) is t for o, a, t in self.links)


def _where(module: torch.nn.Module, keys: list[str], state: SwapState) -> _Where:
    """``_locate`` once per module and key set (cached; re-done when the module's structure changed)."""
    cache = state.where.setdefault(module, {})
    hit = cache.get(tuple(keys))
    if hit is not None and hit.still_valid():
        return hit
    live = module.state_dict(keep_vars=True)
    direct, groups = _locate(module, keys, state, live)
    pairs = [(p, live[f"{p}.conv.weight"], live[f"{p}.conv.bias"]) for p in groups]
    links = {}
    for name in [*direct, *(f"{p}.conv.{n}" for p in groups for n in ("weight", "bias"))]:
        path, attr = name.rsplit(".", 1)
        owner = module.get_submodule(path)
        links[(id(owner), attr)] = (owner, attr, live[name])
        if "." in path:
            parent_path, child = path.rsplit(".", 1)
            parent = module.get_submodule(parent_path)
            links[(id(parent), child)] = (parent, child, owner)
    if len(cache) >= 8:
        cache.clear()
    cache[tuple(keys)] = where = _Where([(k, live[k]) for k in direct], pairs, list(links.values()))
    return where


def _plan(module: torch.nn.Module, keys: list[str], values: dict[str, torch.Tensor], state: SwapState) -> tuple[list[Write], list[tuple[str, torch.Tensor]]]:
    """Writes that give ``module`` the unfused ``values`` of ``keys`` (the base's for keys not in ``values``), and
    the fused tensors they overwrite.

    Direct tensors take the values; in a fused module each touched Conv+BN pair is re-fused. Unswapping passes
    no values: direct tensors come back from the base copy, fused pairs from their saved originals.
    """
    where = _where(module, keys, state)
    writes = [(t, values[k] if k in values else state.base[k]) for k, t in where.direct]
    saved = state.fused_originals.get(module, {})
    fused = []
    for parent, weight, bias in where.pairs:
        names = (f"{parent}.conv.weight", f"{parent}.conv.bias")
        fused += [(names[0], weight), (names[1], bias)]
        originals = [saved.get(n) for n in names]
        if not values and all(o is not None and o[0] is t for o, t in zip(originals, (weight, bias))):
            writes += [(weight, originals[0][1]), (bias, originals[1][1])]
        else:
            writes += list(zip((weight, bias), _fused_pair(parent, values, state)))
    return writes, fused


def _save_fused_originals(module: torch.nn.Module, fused: list[tuple[str, torch.Tensor]], state: SwapState) -> None:
    """Before the first write into a fused module's pairs, keep a copy of their (base) fused weights."""
    saved = state.fused_originals.setdefault(module, {})
    for name, tensor in fused:
        if name not in saved or saved[name][0] is not tensor:
            saved[name] = (tensor, tensor.detach().clone())


@torch.no_grad()
def _write(writes: list[Write]) -> None:
    for tensor, value in writes:
        tensor.copy_(value)


# ----------------------------------------------------------------------------------------------- API
def _as_vector(vector: Any) -> TaskVector:
    if isinstance(vector, TaskVector):
        return vector
    if isinstance(vector, (str, os.PathLike)):
        from .files import load_vector

        tv = load_vector(vector, TaskVector)
        tv.meta.setdefault("name", Path(vector).stem)
        return tv
    raise TaskVecError(f"swap takes a TaskVector or a .safetensors task-vector file, got {type(vector).__name__}.")


def swap(model: Any, vector: Any, scale: Scale = 1.0, *, bn: str = bn_policy.DEFAULT, force: bool = False) -> dict[str, Any]:
    """Apply ``scale · vector`` to a loaded ``YOLO`` in place (and to its predictor's fused copy); see the module doc.

    ``vector``: a TaskVector or a task-vector file (dense or compressed). ``bn``: BatchNorm policy (``merge``,
    ``geometric``, ``base``). ``force``: skip the base-fingerprint check. Returns what is swapped in.
    """
    main = _main_module(model)
    if bn_policy.needs_images(bn_policy.check_policy(bn)):
        raise TaskVecError(f"bn={bn} re-estimates statistics on images, which a swap does not do; recalibrate once with merge(..., bn='{bn}') and save that model.")
    state = _state_for(main)
    if state.active is not None:
        raise TaskVecError(
            f"'{state.active.name}' (scale {state.active.scale}) is already swapped into this model; unswap(model) first, "
            "or swap one combined vector (e.g. tv_a + tv_b)."
        )
    tv = _as_vector(vector)
    name = str(tv.meta.get("name", "vector"))
    if tv.absolute:
        raise MismatchError(f"'{name}' carries {len(tv.absolute)} absolute tensors (e.g. {next(iter(tv.absolute))}): it changes the architecture, so it cannot be swapped in; use apply or merge.")
    fp = tv.meta.get("base_fingerprint")
    if fp and not force and fp != state.fingerprint:
        raise MismatchError(f"'{name}' was extracted from a different base (fingerprint {fp[:12]}, this model {state.fingerprint[:12]}); pass force=True to swap it in anyway.")
    keys = sorted(k for k in tv.deltas if k in state.base and is_mergeable(k, state.base[k]))
    missing = sorted(set(tv.deltas) - set(state.base))
    if missing:
        raise MismatchError(f"'{name}' has {len(missing)} tensors this model lacks (e.g. {missing[0]}).")
    device = next(iter(state.base.values())).device
    on_device = TaskVector({k: tv.deltas[k].to(device) for k in keys}, {}, tv.meta)
    merged, _ = merge_states({k: state.base[k].float() for k in keys}, [on_device], "task_arithmetic", scale=scale, bn=bn, layout=state.layout)
    values = {k: merged[k].to(state.base[k].dtype) for k in keys}
    targets = _targets(model, main)
    plans = [_plan(m, keys, values, state) for m in targets]  # everything is checked before anything is written
    for m, (_, fused) in zip(targets, plans):
        _save_fused_originals(m, fused, state)
    for writes, _ in plans:
        _write(writes)
    state.active = _Active(name, scale, bn, keys)
    return current(model)


def unswap(model: Any) -> None:
    """Restore the base weights exactly: the base copy, the saved fused originals (a fused copy made while swapped
    is re-fused from the base, as Ultralytics would have fused it)."""
    main = _main_module(model)
    state = _STATES.get(main)
    if state is None or state.active is None:
        raise TaskVecError("nothing is swapped into this model (swap(model, vector, scale) first).")
    for module in _targets(model, main):
        _write(_plan(module, state.active.keys, {}, state)[0])
    state.active = None


def release(model: Any) -> None:
    """Drop the base copy kept since the first swap (frees a model's worth of memory); refused while swapped."""
    main = _main_module(model)
    state = _STATES.get(main)
    if state is not None and state.active is not None:
        raise TaskVecError(f"'{state.active.name}' is swapped in; unswap(model) before releasing its base copy.")
    _STATES.pop(main, None)


@contextlib.contextmanager
def swapped(model: Any, vector: Any, scale: Scale = 1.0, **kwargs: Any) -> Iterator[Any]:
    """``with swapped(model, tv, 0.5): model.predict(...)``: swap in, yield the model, unswap on exit."""
    swap(model, vector, scale, **kwargs)
    try:
        yield model
    finally:
        unswap(model)
