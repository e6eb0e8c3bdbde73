"""Exact branches with a shared trunk prefix: ``merge(base, models, classes="union", share=k)``.

One standard Ultralytics detector over the union of the sources' classes (task 0 = the base, then each model) whose
first ``k`` layers are shared (merged with the chosen method, like any merge) and whose remaining trunk layers are
each source's own, feeding ONE multi-level ``Detect`` with 3 levels per source (strides 8, 16, 32, 8, 16, 32, ...).
Level ``3s + l`` holds source ``s``'s own box branch and its own class branch, widened to the union's classes: the
rows of the classes ``s`` owns are ``s``'s logits, every other row is a constant ``NEG_LOGIT`` (score ≈ 1e-13), so
each source's levels score only its own classes and one NMS/top-k serves them all.

``share`` counts shared layers: ``0`` shares nothing (every source's whole network: the union reproduces every
specialist exactly, at T× the compute), the head's index (23 for YOLO26) shares the whole trunk; that case is the
one-trunk union of ``heads.merge_union`` (merged box branch, block-diagonal class branches).

The model is what its yaml builds: the yaml lists the shared layers, then each source's copy of the remaining
layers with absolute ``from`` indices, then ``Detect`` over the sources' levels (``nn.Identity`` as layer 0 when
nothing is shared, so every branch can read the image). Class branches narrower than the union's (``c3 =
max(ch[0], min(nc, 100))``) are zero-padded: padded channels carry exact zeros. So ``YOLO(path)`` loads it, val,
predict and ONNX export run it without yolo_taskvec, and Ultralytics' trainer rebuilds it from its yaml.

BatchNorm: the shared layers follow the ``bn`` policy (``recalibrate`` re-estimates only the shared layers'
statistics); every branch keeps its source's own statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checkpoint import LoadedModel
from .errors import MismatchError, TaskVecError
from .parts import matches
from .taskvector import TaskVector

NEG_LOGIT = -30.0  # logit of a class a level does not own: sigmoid ≈ 9e-14, below any confidence threshold
CLASS_BRANCHES = ("cv3", "one2one_cv3")
BOX_BRANCHES = ("cv2", "one2one_cv2")


@dataclass
class Source:
    """One source of a branched union: its label, its full fp32 state and its class ids (old id -> union id)."""

    label: str
    state: Mapping[str, torch.Tensor]
    rows: list[tuple[int, int]]  # (own class id, union id) this source scores


# ----------------------------------------------------------------------------------------------- checks
def check_share(share: Any, b: LoadedModel) -> int:
    """``share`` as an int in ``0..head index``; one sentence otherwise."""
    last = b.layout.head_index
    text = str(share).strip()
    if isinstance(share, bool) or not (isinstance(share, int) or isinstance(share, str) and text.lstrip("-").isdigit()):
        raise TaskVecError(f"share must be a whole number of shared layers (0..{last}), got {share!r}.")
    value = int(text)
    if value < 0:
        raise TaskVecError(f"share={value} is negative; share counts shared layers: 0 shares nothing, {last} shares the whole trunk.")
    if value > last:
        raise TaskVecError(f"share={value} is beyond the last trunk layer: {b.name} has trunk layers 0..{last - 1}, so share is 0 (exact branches) to {last} (one trunk).")
    return value


def check_same_base_architecture(b: LoadedModel, vectors: Sequence[TaskVector]) -> None:
    """Refuse vectors whose recorded base has another architecture than ``b`` (branches need one layer list)."""
    for tv in vectors:
        other = tv.meta.get("base_yaml")
        if not other:
            continue
        same = other.get("backbone") == b.yaml.get("backbone") and other.get("head", [])[:-1] == b.yaml.get("head", [])[:-1] and other.get("scale") == b.yaml.get("scale")
        if not same:
            raise MismatchError(
                f"'{tv.meta.get('name', '?')}' was fine-tuned from another architecture ({_arch(other)}) than the base {b.name} ({_arch(b.yaml)}); "
                "a class union needs sources of one base architecture."
            )


def _arch(yaml: Mapping) -> str:
    from pathlib import Path

    return f"{Path(str(yaml.get('yaml_file', 'model'))).stem} scale {yaml.get('scale', '?')}, {len(yaml.get('backbone', [])) + len(yaml.get('head', []))} layers"


# ----------------------------------------------------------------------------------------------- yaml
def branch_yaml(yaml: Mapping[str, Any], share: int, sources: int, nc: int) -> tuple[dict[str, Any], dict[tuple[int, int], int]]:
    """The branched model's yaml and ``{(source, original layer): new layer}`` (shared layers map to themselves).

    Every ``from`` is absolute. The new layer list is: the shared layers ``0..share-1`` (or one ``nn.Identity``
    when ``share == 0``), then per source its copy of layers ``share..L-1``, then ``Detect`` over every source's
    levels. All layers but ``Detect`` are listed under ``backbone`` (the parts of a branched model: trunk and head).
    """
    layers = [copy.deepcopy(layer) for layer in (*yaml["backbone"], *yaml["head"])]
    head = len(layers) - 1
    out: list[list[Any]] = []
    where: dict[tuple[int, int], int] = {}
    if share == 0:
        out.append([-1, 1, "nn.Identity", []])
    for j in range(share):  # shared layers keep their place (and their relative froms)
        out.append(layers[j])
        for s in range(sources):
            where[(s, j)] = j
    for s in range(sources):
        for j in range(share, head):
            new = len(out)

            def locate(a: int, s: int = s) -> int:
                if a < 0:  # the image: the Identity layer 0 (only reached when nothing is shared)
                    return 0
                return where[(s, a)]

            out.append([_remap(layers[j][0], j, locate), *layers[j][1:]])
            where[(s, j)] = new
    detect = copy.deepcopy(layers[head])
    detect[0] = [where[(s, a)] for s in range(sources) for a in detect[0]]
    out.append(detect)
    keep = {k: v for k, v in yaml.items() if k not in ("backbone", "head", "nc")}
    return {**keep, "nc": nc, "backbone": out[:-1], "head": out[-1:]}, where


def _remap(origin: int | list[int], j: int, locate: Any) -> int | list[int]:
    """Absolute ``from`` of layer ``j`` after the move (``-1`` = previous layer, resolved first)."""
    if isinstance(origin, list):
        return [_remap(o, j, locate) for o in origin]
    return locate(j + origin if origin < 0 else origin)


# ----------------------------------------------------------------------------------------------- merge
def merge_branches(
    b: LoadedModel,
    vectors: Sequence[TaskVector],
    *,
    share: int,
    names: Mapping[int, str],
    rows: Sequence[list[tuple[int, int]]],
    labels: Sequence[str],
    method: str,
    scale: Any,
    weights: Sequence[float] | None,
    bn: str,
    bn_data: Any,
    bn_batches: int,
    parts: Sequence[str] | None,
    seed: int,
    imgsz: int,
    orthogonalize: bool,
    params: Mapping[str, Any],
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The branched union: layers ``< share`` merged by ``method``, the rest each source's own (see module docs).

    ``rows[t]`` lists the (own id, union id) pairs source ``t`` scores (task 0 = the base, then ``vectors``).
    Returns ``(module, merge report, recipe)``.
    """
    from .merging import merge_states

    layout = b.layout
    sources = [Source(labels[0], b.state, list(rows[0]))]
    sources += [Source(labels[i + 1], source_state(b, tv), list(rows[i + 1])) for i, tv in enumerate(vectors)]
    shared_vectors = [_prefix_vector(b, tv, share, parts) for tv in vectors]
    if share and any(tv.deltas for tv in shared_vectors):
        merged, report = merge_states(b.state, shared_vectors, method, weights=weights, scale=scale, params=params, bn=bn, seed=seed, layout=layout, orthogonalize=orthogonalize)
    else:  # nothing to merge: report the method as asked, touching nothing
        merged, report = merge_states(b.state, [TaskVector({}, {}, {"name": "none"})], "task_arithmetic", scale=0.0, bn="merge" if bn == "recalibrate" else bn, layout=layout)
        report.method, report.params = method, dict(params)
    yaml, where = branch_yaml(b.yaml, share, len(sources), len(names))
    module = _build(yaml, b)
    state = _branched_state(module, b, merged, sources, share, where)
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise MismatchError(f"the branched union has no value for {len(missing)} tensors (e.g. {missing[0]}).")
    module.load_state_dict({**own, **state}, strict=True)
    module.names = {int(k): str(v) for k, v in names.items()}
    if bn == "recalibrate" and share:
        _recalibrate_shared(module, share, bn_data, bn_batches, imgsz)
    recipe = {
        "share": share,
        "union_levels": [[s, level] for s in range(len(sources)) for level in range(_levels(b))],
        "strides": [float(x) for x in module.stride],
    }
    return module.float().eval(), report, recipe


def source_state(b: LoadedModel, tv: TaskVector) -> dict[str, torch.Tensor]:
    """A source's full fp32 state: the base plus its deltas, with its carried (absolute) tensors."""
    state = {k: (v + tv.deltas[k].float() if k in tv.deltas else v) for k, v in b.state.items()}
    state.update({k: v.float() for k, v in tv.absolute.items()})
    return state


def _prefix_vector(b: LoadedModel, tv: TaskVector, share: int, parts: Sequence[str] | None) -> TaskVector:
    """The part of ``tv`` in the shared layers (``model.0..share-1``), restricted to ``parts``."""
    layout = b.layout
    deltas = {k: v for k, v in tv.deltas.items() if _layer(k) < share and matches(k, layout.part_of(k), parts)}
    meta = {k: v for k, v in tv.meta.items() if k not in ("names", "target_yaml")}
    return TaskVector(deltas, {}, meta)


def _layer(key: str) -> int:
    fields = key.split(".")
    return int(fields[1]) if len(fields) > 2 and fields[0] == "model" and fields[1].isdigit() else -1


def _levels(b: LoadedModel) -> int:
    return len(b.module.model[-1].f)


def _build(yaml: Mapping[str, Any], b: LoadedModel) -> nn.Module:
    from .checkpoint import build_from_yaml

    module = build_from_yaml(copy.deepcopy(dict(yaml)), f"the branched union of {b.name}")  # validated, nothing evaluated
    module.yaml = copy.deepcopy(dict(yaml))  # as given (parse_model resolves its own copy)
    module.task = "detect"
    module.args = dict(b.module.args) if hasattr(b.module, "args") else {}
    module.pt_path = None
    return module


def _branched_state(module: nn.Module, b: LoadedModel, merged: Mapping[str, torch.Tensor], sources: Sequence[Source], share: int, where: Mapping[tuple[int, int], int]) -> dict[str, torch.Tensor]:
    """Every tensor of the branched module: shared layers from ``merged``, branches and Detect levels per source."""
    head = b.layout.head_index
    new_head = len(module.model) - 1
    state: dict[str, torch.Tensor] = {}
    for key, value in merged.items():
        layer = _layer(key)
        if 0 <= layer < share:
            state[key] = value
    for s, source in enumerate(sources):
        for key, value in source.state.items():
            layer = _layer(key)
            if share <= layer < head:
                state[f"model.{where[(s, layer)]}." + key.split(".", 2)[2]] = value
    detect = module.model[-1]
    nl = _levels(b)
    target = module.state_dict()
    prefix, new_prefix = f"model.{head}.", f"model.{new_head}."
    for key, value in b.state.items():  # head tensors outside the level branches (DFL)
        rest = key[len(prefix):]
        if key.startswith(prefix) and rest.split(".")[0] not in (*BOX_BRANCHES, *CLASS_BRANCHES):
            state[new_prefix + rest] = value
    for s, source in enumerate(sources):
        for level in range(nl):
            new_level = s * nl + level
            for attr in BOX_BRANCHES:
                if getattr(detect, attr, None) is None:
                    continue
                for key, value in _level_tensors(source.state, prefix, attr, level, source.label).items():
                    state[f"{new_prefix}{attr}.{new_level}.{key}"] = value
            for attr in CLASS_BRANCHES:
                if getattr(detect, attr, None) is None:
                    continue
                own = _level_tensors(source.state, prefix, attr, level, source.label)
                template = {k[len(f"{new_prefix}{attr}.{new_level}."):]: v for k, v in target.items() if k.startswith(f"{new_prefix}{attr}.{new_level}.")}
                final = _final_name(getattr(detect, attr)[new_level], f"{attr}.{level}")
                for key, value in _padded_class_level(own, template, final, source, f"{attr}.{level}").items():
                    state[f"{new_prefix}{attr}.{new_level}.{key}"] = value
    return state


def _level_tensors(state: Mapping[str, torch.Tensor], prefix: str, attr: str, level: int, label: str) -> dict[str, torch.Tensor]:
    start = f"{prefix}{attr}.{level}."
    out = {k[len(start):]: v for k, v in state.items() if k.startswith(start)}
    if not out:
        raise MismatchError(f"'{label}' has no {attr}.{level} branch in its Detect head.")
    return out


def _final_name(level: nn.Module, where: str) -> str:
    from .classunion import class_branch_units

    return class_branch_units(level, where)[-1].name


def _padded_class_level(own: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor], final: str, source: Source, where: str) -> dict[str, torch.Tensor]:
    """A source's class branch of one level in the union's shapes: channels zero-padded, logits on union rows."""
    out: dict[str, torch.Tensor] = {}
    for key, shape_of in template.items():
        if key.startswith(final + "."):
            continue
        if key not in own:
            raise MismatchError(f"'{source.label}' class branch {where} lacks {key}; branches need a standard Detect head.")
        value = own[key]
        if key.endswith("num_batches_tracked"):
            out[key] = value.clone()
            continue
        if value.dim() != shape_of.dim() or any(a > b for a, b in zip(value.shape, shape_of.shape)):
            raise MismatchError(f"'{source.label}' class branch {where}.{key} has shape {tuple(value.shape)}, wider than the union's {tuple(shape_of.shape)}.")
        fill = 1.0 if key.endswith("running_var") else 0.0
        padded = torch.full(shape_of.shape, fill, dtype=torch.float32)
        padded[tuple(slice(0, n) for n in value.shape)] = value.float()
        out[key] = padded
    weight, bias = own.get(f"{final}.weight"), own.get(f"{final}.bias")
    target_w = template[f"{final}.weight"]
    if weight is None or bias is None:
        raise MismatchError(f"'{source.label}' class branch {where} has no logits conv {final}.")
    if weight.shape[1] > target_w.shape[1] or tuple(weight.shape[2:]) != tuple(target_w.shape[2:]):
        raise MismatchError(f"'{source.label}' logits conv {where} has shape {tuple(weight.shape)}, which does not fit the union's {tuple(target_w.shape)}.")
    new_w = torch.zeros(target_w.shape)
    new_b = torch.full((target_w.shape[0],), NEG_LOGIT)
    for old, new in source.rows:
        if old >= weight.shape[0]:
            raise MismatchError(f"'{source.label}' has class id {old} but its class branch {where} gives {weight.shape[0]} logits (a vector extracted without head.cls?).")
        new_w[new, : weight.shape[1]] = weight[old].float()
        new_b[new] = bias[old].float()
    out[f"{final}.weight"], out[f"{final}.bias"] = new_w, new_b
    return out


def _recalibrate_shared(module: nn.Module, share: int, data: Any, batches: int, imgsz: int) -> None:
    """Re-estimate the shared layers' BatchNorm statistics only; the branches keep their sources' own."""
    from .recalibration import recalibrate

    kept = {k: v.clone() for k, v in module.state_dict().items() if _layer(k) >= share and (k.endswith(("running_mean", "running_var", "num_batches_tracked")))}
    recalibrate(module, data, batches=batches, imgsz=imgsz)
    module.load_state_dict({**module.state_dict(), **kept}, strict=True)


# ----------------------------------------------------------------------------------------------- cost
def gflops(model: Any, imgsz: int = 640) -> float:
    """GFLOPs of one forward pass at ``imgsz`` as Ultralytics predicts it (a fused copy: BatchNorm folded, the unused
    one-to-many or one-to-one branch removed) of a model (path, ``YOLO`` or module); 0.0 if Ultralytics cannot count."""
    from ultralytics.utils.torch_utils import get_flops

    from .checkpoint import load_model

    module = model.model if hasattr(model, "predictor") else model
    module = module if isinstance(module, nn.Module) else load_model(module).module
    fused = copy.deepcopy(module).float().eval()
    fused = fused.fuse(verbose=False) if hasattr(fused, "fuse") else fused
    return float(get_flops(fused, imgsz))
