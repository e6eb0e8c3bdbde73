"""Class-union merging: one standard Ultralytics detector over the classes of fine-tunes with different class sets.

``merge(base, [a.pt, b.pt], classes="union")`` merges the backbone, the neck and the box branch with the chosen
method, and keeps every task's class branch exactly: the union class branch of each level is a block-diagonal stack
of the tasks' own branches, so each task's logits are computed exactly as in its own model, from merged features.

Tasks and class ids (``union_classes``)
    Task 0 is the base with its own classes; tasks 1..n are the models in the order given. A model whose class names
    equal the base's (and whose class branch has the base's shapes) is a fine-tune of the base's classes: its class
    branch is merged into the base's with the method, like every other tensor. Each other model keeps its own branch.
    Union ids follow the first appearance of each name, in task order: the base's classes keep their ids, then each
    task's new names are appended in its own id order. Identical names (exact string match) are one class; its logit
    is the mean of the duplicates' logits (``duplicates="mean"``, the default) or the first task's
    (``duplicates="first"``). Both are exact: the final 1×1 conv is linear.

The union branch (per level, for ``cv3`` and the NMS-free ``one2one_cv3``), with ``T`` tasks and input width ``x``
    A depthwise first layer (YOLO26/YOLO11 ``DWConv(x, x)``) reads the shared feature map: a fixed 0/1 ``Conv2d(x, T·x,
    1)`` repeats it per task, then ``DWConv(T·x, T·x)`` holds each task's depthwise filters. Later 1×1/3×3 convs are
    grouped (``groups=T``), depthwise layers concatenated, BatchNorm concatenated (each task's own statistics);
    tasks of different widths are zero-padded to the widest (padded channels carry exact zeros). A full first conv
    (YOLOv8-style ``Conv(x, c3, 3)``) needs no repeat: its rows are stacked. The final ``Conv2d(T·c3, N, 1)`` is
    block-structured: class ``n`` reads only the channels of the tasks that own it. Everything is built from stock
    ``torch.nn`` and Ultralytics ``Conv``/``DWConv`` modules inside the stock ``Detect`` head (``nc``/``no`` updated),
    so the saved checkpoint loads with ``YOLO(path)`` and validates, predicts and exports without yolo_taskvec.
    (The repeat is a conv rather than ``nn.ChannelShuffle`` because the latter does not export to ONNX.) Cost: the
    class branch grows about T-fold (4 tasks at the n scale: 5.5 → 7.2 GFLOPs at 640 after fusing).

BatchNorm
    The shared parts follow the ``bn`` policy (``recalibrate`` re-estimates only them); every class branch keeps its
    task's own statistics. The yaml's ``nc`` is the union's, but the widened head is not what the yaml builds, so
    fine-tuning a union checkpoint further is untested.

Sharing less, repairing with images
    ``share=k`` (``branches.py``) shares only layers ``0..k-1`` and gives every source its own remaining layers and
    Detect levels (exact branches: ``share=0`` reproduces every source, at T× the compute); ``share`` equal to the
    head's index is this module's one-trunk union. ``repair=<epochs>`` with ``images=`` (``repair.py``) fine-tunes
    the result on unlabeled images pseudo-labelled by the sources themselves.

``union_data`` writes, for each dataset yaml, a view whose labels use the union ids (images are symlinked per file).
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import LoadedModel, build_module, replace_submodule
from .classunion import (
    ClassUnion,
    Unit,
    class_branch_units,
    class_names,
    clean_names,
    union_classes,
    vector_names,
    yaml_str,
)
from .errors import DataError, MismatchError, OutputError, TaskVecError
from .parts import check_selection, matches
from .recipe import DUPLICATE_RULES
from .taskvector import TaskVector

CLASS_BRANCHES = ("cv3", "one2one_cv3")
CLS_PART = "head.cls"
VIEW_MARKER = ".yolo-taskvec-view"


# ----------------------------------------------------------------------------------------------- merge
def merge_union(
    b: LoadedModel,
    vectors: Sequence[TaskVector],
    *,
    method: str = "task_arithmetic",
    scale: Any = 1.0,
    weights: Sequence[float] | None = None,
    bn: str = "merge",
    bn_data: str | Sequence[str] | None = None,
    bn_batches: int = 16,
    parts: Sequence[str] | None = None,
    seed: int = 0,
    imgsz: int = 640,
    orthogonalize: bool = False,
    duplicates: str = "mean",
    share: int | None = None,
    **params: Any,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Merge task vectors with different class sets into one detector over the union of their classes.

    ``vectors`` come from the fine-tunes with their class branches carried (``unmatched="carry"``) and their base
    fingerprints checked (``api.merge`` does both). Shared parts (backbone, neck, box branch; restricted further by
    ``parts``) are merged by ``method``; each task's class branch is kept exactly (see the module docs for the class
    ids and the head layout). ``share=k`` (``0 <= k <`` the head's index) shares only layers ``0..k-1`` and gives
    every source its own remaining layers and Detect levels (``branches``; ``share=0`` reproduces every source
    exactly). A repair on unlabeled images afterwards is ``repair.repair_union`` (the recipe's ``repair=``).
    Returns ``(module, merge report, recipe)``.
    """
    from . import bn as bn_policy
    from .branches import check_same_base_architecture, check_share
    from .merging import merge_states

    if duplicates not in DUPLICATE_RULES:
        raise TaskVecError(f"unknown duplicates rule '{duplicates}'; choose one of {', '.join(DUPLICATE_RULES)}.")
    bn_policy.check_policy(bn)
    if not vectors:
        raise TaskVecError("no models to merge.")
    head = _check_detect(b)
    check_same_base_architecture(b, vectors)
    share = check_share(share, b) if share is not None else None
    union = union_classes(b.names, [vector_names(tv) for tv in vectors])
    selection = check_selection(parts) if parts is not None else None
    labels = [b.name, *(tv.meta.get("name", "?") for tv in vectors)]
    common = {
        "scale": scale,
        "weights": weights,
        "orthogonalize": orthogonalize or None,
        "classes": "union",
        "duplicates": duplicates,
        "union_tasks": labels,
        "union_mapping": [[t, old, new] for (t, old), new in sorted(union.mapping.items())],
    }
    if share is not None and share < b.layout.head_index:
        from .branches import merge_branches

        rows = branch_rows(union, len(labels), duplicates)
        module, report, extra = merge_branches(
            b, vectors, share=share, names=union.names, rows=rows, labels=labels, method=method, scale=scale, weights=weights, bn=bn, bn_data=bn_data,
            bn_batches=bn_batches, parts=selection, seed=seed, imgsz=imgsz, orthogonalize=orthogonalize, params=params,
        )
        recipe = {**common, "union_own_branches": list(range(len(labels))), **extra}
        return module, report, recipe
    own = [not _shares_base_classes(b, tv, union.task_names[i + 1]) for i, tv in enumerate(vectors)]
    shared = [_shared_vector(b, tv, selection, keep_cls=not own_branch) for tv, own_branch in zip(vectors, own)]
    state, report = merge_states(b.state, shared, method, weights=weights, scale=scale, params=params, bn=bn, seed=seed, layout=b.layout, orthogonalize=orthogonalize)
    module = build_module(b, state)
    if bn == "recalibrate":  # shared statistics only: the class branches below keep each task's own
        from .recalibration import recalibrate

        recalibrate(module, bn_data, batches=bn_batches, imgsz=imgsz)
    tasks = [0, *(i + 1 for i, o in enumerate(own) if o)]
    if len(tasks) > 1:
        branches = {0: state, **{i + 1: _task_state(b, tv) for i, tv in enumerate(vectors) if own[i]}}
        _install_union_head(module, b, head, union, tasks, branches, duplicates, [labels[t] for t in tasks])
    extra = {"share": share} if share is not None else {}
    recipe = {**common, "union_own_branches": tasks, **extra}
    return module, report, recipe


def branch_rows(union: ClassUnion, tasks: int, duplicates: str) -> list[list[tuple[int, int]]]:
    """Per source (task order): the (own id, union id) pairs its branch scores.

    A class several sources own is scored by each of them (their detections compete in one top-k/NMS), or only by
    the first with ``duplicates="first"``.
    """
    owners = union.owners
    rows: list[list[tuple[int, int]]] = [[] for _ in range(tasks)]
    for (t, old), new in sorted(union.mapping.items()):
        if duplicates != "first" or owners[new][0] == (t, old):
            rows[t].append((old, new))
    return rows


def _check_detect(b: LoadedModel) -> nn.Module:
    from ultralytics.nn.modules import Detect

    head = b.module.model[-1]
    if b.task != "detect" or type(head) is not Detect:
        raise MismatchError(f"classes=union merges detectors; the base {b.name} is a {b.task} model with a {type(head).__name__} head.")
    return head


def _shares_base_classes(b: LoadedModel, tv: TaskVector, names: dict[int, str]) -> bool:
    """A fine-tune of the base's own classes: same names and a class branch of the base's shapes."""
    return names == b.names and not any(tv.part_of(k) == CLS_PART for k in tv.absolute)


def _shared_vector(b: LoadedModel, tv: TaskVector, selection: list[str] | None, *, keep_cls: bool) -> TaskVector:
    """The part of ``tv`` that is merged: everything but its own class branch, restricted to ``selection``."""
    layout = b.layout
    outside = [k for k in tv.absolute if layout.part_of(k) != CLS_PART]
    if outside:
        raise MismatchError(f"'{tv.meta.get('name', '?')}' carries tensors outside the class branch (e.g. {outside[0]}); classes=union merges detect fine-tunes of one base.")
    deltas = {
        k: v
        for k, v in tv.deltas.items()
        if (keep_cls or layout.part_of(k) != CLS_PART) and matches(k, layout.part_of(k), selection)
    }
    meta = {k: v for k, v in tv.meta.items() if k not in ("names", "target_yaml")}
    return TaskVector(deltas, {}, meta)


def _task_state(b: LoadedModel, tv: TaskVector) -> dict[str, torch.Tensor]:
    """The fine-tune's own class-branch tensors: base + delta, or the carried absolute value."""
    head = f"model.{b.layout.head_index}."
    out = {}
    for key, t in b.state.items():
        if key.startswith(head) and b.layout.part_of(key) == CLS_PART and key in tv.deltas:
            out[key] = t + tv.deltas[key]
        elif key.startswith(head) and b.layout.part_of(key) == CLS_PART:
            out[key] = t
    out.update({k: v.float() for k, v in tv.absolute.items()})
    return out


# ----------------------------------------------------------------------------------------------- head surgery
def _install_union_head(module: nn.Module, b: LoadedModel, head_template: nn.Module, union: ClassUnion, tasks: list[int], branches: Mapping[int, Mapping[str, torch.Tensor]], duplicates: str, labels: list[str]) -> None:
    """Replace the class branches of ``module``'s Detect head by union branches; update nc, no, names, yaml."""
    head = module.model[-1]
    n = len(union.names)
    hi = b.layout.head_index
    coefs = _logit_coefficients(union, tasks, duplicates)
    ncs = [len(union.task_names[t]) for t in tasks]
    for attr in CLASS_BRANCHES:
        template = getattr(head_template, attr, None)
        if template is None:
            continue
        levels = []
        for i, level in enumerate(template):
            prefix = f"model.{hi}.{attr}.{i}."
            units = class_branch_units(level, f"{attr}.{i}")
            tensors = [{k[len(prefix):]: v for k, v in branches[t].items() if k.startswith(prefix)} for t in tasks]
            final = [_get(t, f"{units[-1].name}.weight", f"{attr}.{i}").shape[0] for t in tensors]
            for label, rows, nc in zip(labels, final, ncs):
                if rows != nc:
                    raise MismatchError(f"'{label}' has {nc} class names but its class branch {attr}.{i} gives {rows} logits (a vector extracted without head.cls?).")
            levels.append(_union_level(level, units, tensors, coefs, n, f"{attr}.{i}"))
        setattr(head, attr, nn.ModuleList(levels))
    head.nc = n
    head.no = n + head.reg_max * 4
    module.names = dict(union.names)
    module.yaml = {**module.yaml, "nc": n}
    module.float().eval()


def _logit_coefficients(union: ClassUnion, tasks: list[int], duplicates: str) -> list[list[tuple[int, int, float]]]:
    """Per task (in ``tasks`` order): (old id, new id, coefficient) of its logits in the union's."""
    owners = {new: [key for key in keys if key[0] in tasks] for new, keys in union.owners.items()}
    out = []
    for t in tasks:
        rows = []
        for (task, old), new in sorted(union.mapping.items()):
            if task != t:
                continue
            feeding = owners[new]
            if duplicates == "first":
                coef = 1.0 if feeding[0] == (t, old) else 0.0
            else:
                coef = 1.0 / len(feeding)
            if coef:
                rows.append((old, new, coef))
        out.append(rows)
    return out


def _get(tensors: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in tensors:
        raise MismatchError(f"a task's class branch {where} lacks {key} (a vector extracted without head.cls?).")
    return tensors[key].float()


def _union_level(level: nn.Module, units: list[Unit], tensors: list[Mapping[str, torch.Tensor]], coefs: list[list[tuple[int, int, float]]], n: int, where: str) -> nn.Module:
    """One level's union branch: ``level``'s structure with each layer widened block-diagonally over the tasks."""
    from ultralytics.nn.modules import Conv, DWConv

    out = copy.deepcopy(level)
    T = len(tensors)
    in_widths = [units[0].conv.in_channels] * T  # every task reads the shared feature map
    shared_input = True
    for u in units:
        w_key = f"{u.name}.conv.weight" if not u.final else f"{u.name}.weight"
        ws = [_get(t, w_key, where) for t in tensors]
        k = u.conv
        if u.final:
            new = _final_conv(k, ws, [_get(t, f"{u.name}.bias", where) for t in tensors], coefs, in_widths, n, where)
            replace_submodule(out, u.name, new)
            break
        widths = [w.shape[0] for w in ws]
        for w, cin in zip(ws, in_widths):
            expect = 1 if u.depthwise else cin
            if w.shape[1] != expect or (u.depthwise and w.shape[0] != cin) or tuple(w.shape[2:]) != tuple(k.weight.shape[2:]):
                raise MismatchError(f"a task's class branch {where}.{u.name} has weights of shape {tuple(w.shape)}, which do not follow the base's layer.")
        pad_in, pad_out = max(in_widths), max(widths)
        act = copy.deepcopy(u.module.act)
        repeat = None
        if u.depthwise:
            if shared_input:  # the shared input is repeated per task, then each task's depthwise filters apply
                repeat = _repeat_conv(in_widths[0], T)
            weight = _stack_depthwise(ws, pad_out)
            new = DWConv(T * pad_out, T * pad_out, k.kernel_size[0], k.stride[0], k.dilation[0], act=act)
        elif shared_input:  # a full first conv: each task's filters read the same input, rows stacked
            weight = _stack_rows(ws, pad_out)
            new = Conv(in_widths[0], T * pad_out, k.kernel_size[0], k.stride[0], k.padding, 1, k.dilation[0], act=act)
        else:  # a later full conv: block-diagonal as a grouped conv
            weight = _stack_grouped(ws, pad_in, pad_out)
            new = Conv(T * pad_in, T * pad_out, k.kernel_size[0], k.stride[0], k.padding, T, k.dilation[0], act=act)
        if new.conv.padding != k.padding:
            raise MismatchError(f"the class branch {where}.{u.name} uses a padding the union cannot rebuild.")
        _set_bn(new, u.module.bn, [{f: _get(t, f"{u.name}.bn.{f}", where) for f in ("weight", "bias", "running_mean", "running_var")} for t in tensors], pad_out)
        new.conv.weight.data.copy_(weight)
        new.requires_grad_(False)
        replace_submodule(out, u.name, nn.Sequential(repeat, new) if repeat is not None else new)
        in_widths, shared_input = widths, False  # real widths per task; their blocks are padded to pad_out
    return out


def _repeat_conv(width: int, tasks: int) -> nn.Conv2d:
    """A fixed 0/1 ``Conv2d(width, tasks·width, 1)``: the input repeated once per task (task-contiguous blocks)."""
    conv = nn.Conv2d(width, tasks * width, 1, bias=False)
    eye = torch.eye(width).reshape(width, width, 1, 1)
    conv.weight.data.copy_(eye.repeat(tasks, 1, 1, 1))
    return conv.requires_grad_(False)


def _stack_depthwise(ws: list[torch.Tensor], pad: int) -> torch.Tensor:
    out = torch.zeros(len(ws) * pad, 1, *ws[0].shape[2:])
    for t, w in enumerate(ws):
        out[t * pad : t * pad + w.shape[0]] = w
    return out


def _stack_rows(ws: list[torch.Tensor], pad: int) -> torch.Tensor:
    out = torch.zeros(len(ws) * pad, ws[0].shape[1], *ws[0].shape[2:])
    for t, w in enumerate(ws):
        out[t * pad : t * pad + w.shape[0]] = w
    return out


def _stack_grouped(ws: list[torch.Tensor], pad_in: int, pad_out: int) -> torch.Tensor:
    out = torch.zeros(len(ws) * pad_out, pad_in, *ws[0].shape[2:])
    for t, w in enumerate(ws):
        out[t * pad_out : t * pad_out + w.shape[0], : w.shape[1]] = w
    return out


def _set_bn(new: nn.Module, template: nn.BatchNorm2d, stats: list[dict[str, torch.Tensor]], pad: int) -> None:
    """Concatenated BatchNorm (each task's own affine and running statistics); padded channels map 0 to 0."""
    bn = nn.BatchNorm2d(len(stats) * pad, eps=template.eps, momentum=template.momentum)
    for f, fill in (("weight", 0.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        value = torch.full((len(stats) * pad,), fill)
        for t, s in enumerate(stats):
            value[t * pad : t * pad + s[f].shape[0]] = s[f]
        getattr(bn, f).data.copy_(value)
    if template.num_batches_tracked is not None:
        bn.num_batches_tracked.copy_(template.num_batches_tracked)
    new.bn = bn


def _final_conv(template: nn.Conv2d, ws: list[torch.Tensor], biases: list[torch.Tensor], coefs: list[list[tuple[int, int, float]]], in_widths: list[int], n: int, where: str) -> nn.Conv2d:
    """The union logits: class ``new`` = Σ coef · (task's logit ``old``), reading only that task's channels."""
    pad = max(in_widths)
    conv = nn.Conv2d(len(ws) * pad, n, template.kernel_size, template.stride, template.padding, template.dilation, bias=True)
    weight = torch.zeros_like(conv.weight)
    bias = torch.zeros(n)
    for t, (w, bvec, rows) in enumerate(zip(ws, biases, coefs)):
        if w.shape[1] != in_widths[t] or w.shape[0] != bvec.shape[0]:
            raise MismatchError(f"a task's logits conv {where} has shape {tuple(w.shape)}, which does not follow its branch.")
        for old, new, coef in rows:
            weight[new, t * pad : t * pad + w.shape[1]] += coef * w[old]
            bias[new] += coef * bvec[old]
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv.requires_grad_(False)


# ----------------------------------------------------------------------------------------------- data views
def union_data(classes: Any, data: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, *, splits: Sequence[str] | None = None, exist_ok: bool = True) -> list[Path]:
    """For each dataset yaml, a view with the union's class ids under ``out/<dataset>/`` and its yaml; returns the yamls.

    ``classes``: a ClassUnion, a names mapping, or a (union) model whose names are the union's. Images are symlinked
    file by file (Ultralytics finds labels beside them), label files are copied with remapped ids, and ``names`` is
    the union's. Each view is built in a temporary folder and moved into place, so a failure leaves no half view.
    Before anything is written: ``out`` must be writable and outside every input dataset, no view yaml may be an
    input yaml, and existing view yamls are replaced only with ``exist_ok``.
    """
    from .atomic import check_output, check_output_folder, write_text_atomic
    from .data import dataset_folders, resolve_yaml

    target = classes.names if isinstance(classes, ClassUnion) else class_names(classes)
    union = ClassUnion(target, {})
    if Path(out).expanduser().exists() and not Path(out).expanduser().is_dir():
        raise OutputError(f"output {Path(out).expanduser().resolve()} is a file; union-data writes a folder of dataset views.")
    yamls = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not yamls:
        raise DataError("union_data needs at least one dataset yaml.")
    stems = [Path(str(y)).stem for y in yamls]
    if len(set(stems)) < len(stems):
        raise DataError(f"two dataset yamls share a name ({', '.join(sorted({s for s in stems if stems.count(s) > 1}))}); their views would overwrite each other.")
    inputs = [*yamls, *(resolve_yaml(Path(str(y)).expanduser()) for y in yamls)]
    protected = [folder for y in yamls for folder in dataset_folders(y)]
    out = check_output_folder(out, inputs, protect=protected).resolve()
    for stem in stems:
        if (out / stem).exists() or (out / f"{stem}.yaml").exists():
            check_output(out / f"{stem}.yaml", inputs, exist_ok=exist_ok, protect=protected)
    plans = [_plan_view(union, yaml, out / stem, splits) for yaml, stem in zip(yamls, stems)]  # check all before writing
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (info, chosen, remap), stem in zip(plans, stems):
        view = _build_view(out, stem, info, chosen, remap)
        lines = [f"# {stem} with union class ids (written by yolo-taskvec union-data)", f"path: {view}"]
        lines += [f"{s}: images/{s}" for s in chosen]
        if "train" not in chosen:  # Ultralytics requires the key; a validation-only view points it at its images
            lines.append(f"train: images/{chosen[0]}  # no train split in this view")
        lines.append("names:")
        lines += [f"  {i}: {yaml_str(name)}" for i, name in target.items()]
        written.append(write_text_atomic(out / f"{stem}.yaml", "\n".join(lines) + "\n", inputs, exist_ok=exist_ok, protect=protected))
    return written


def _plan_view(union: ClassUnion, yaml: str | os.PathLike, final: Path, splits: Sequence[str] | None) -> tuple[dict[str, Any], list[str], dict[int, int]]:
    """(dataset info, splits to write, old id -> union id) for one yaml; refuses outputs that overlap its files."""
    from .data import load_data

    info = load_data(yaml, split="val")
    remap = union.remap(clean_names(info["names"]), what=f"dataset {yaml}")
    chosen = [s for s in (splits or ("train", "val", "test")) if info.get(s)]
    if splits and len(chosen) != len(splits) or not chosen:
        raise DataError(f"dataset {yaml} has no split {', '.join(s for s in (splits or ['train', 'val', 'test']) if s not in chosen)}.")
    roots = [Path(info["path"])] + [Path(r) for s in chosen for r in (info[s] if isinstance(info[s], list) else [info[s]])]
    for root in (r.resolve() for r in roots):
        if final == root or root in final.parents or final in root.parents:
            raise OutputError(f"output folder {final} overlaps the dataset {root}; choose a folder outside every input.")
    return info, chosen, remap


def _split_images(info: Mapping[str, Any], split: str) -> list[tuple[Path, Path]]:
    """(image, path relative to the split root) for every image of a split."""
    from ultralytics.data.utils import IMG_FORMATS

    roots = info[split] if isinstance(info[split], list) else [info[split]]
    pairs = []
    for root in map(Path, roots):
        if root.is_dir():
            pairs += [(p, p.relative_to(root)) for p in sorted(root.rglob("*")) if p.suffix[1:].lower() in IMG_FORMATS]
        elif root.suffix == ".txt" and root.exists():
            for line in root.read_text().splitlines():
                if line.strip():
                    p = Path(line.strip())
                    p = p if p.is_absolute() else (root.parent / p).resolve()
                    pairs.append((p, Path(p.name)))
    if not pairs:
        raise DataError(f"dataset split {split} ({roots[0]}) has no images.")
    return pairs


def _build_view(out: Path, stem: str, info: Mapping[str, Any], splits: Sequence[str], remap: Mapping[int, int]) -> Path:
    from ultralytics.data.utils import img2label_paths

    final = out / stem
    if final.exists() and not (final / VIEW_MARKER).is_file():
        raise OutputError(f"{final} exists and is not a view written by union-data; choose another output folder.")
    tmp = out / f".{stem}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        (tmp / VIEW_MARKER).write_text("dataset view with union class ids, written by yolo-taskvec union-data\n")
        for split in splits:
            for image, rel in _split_images(info, split):
                link = tmp / "images" / split / rel
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(image.resolve())
                source = Path(img2label_paths([str(image)])[0])
                if source.exists():
                    label = (tmp / "labels" / split / rel).with_suffix(".txt")
                    label.parent.mkdir(parents=True, exist_ok=True)
                    label.write_text(_remap_labels(source, remap))
        old = None
        if final.exists():
            old = out / f".{stem}.{uuid.uuid4().hex[:8]}.old"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _remap_labels(path: Path, remap: Mapping[int, int]) -> str:
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = remap[int(float(fields[0]))]
        except (ValueError, KeyError) as e:
            raise DataError(f"label file {path} line {number} has class {fields[0]!r}, not one of the dataset's classes.") from e
        lines.append(" ".join([str(cls), *fields[1:]]))
    return "\n".join(lines) + ("\n" if lines else "")
