"""The class side of a class-union merge: the union's class ids (base first, then each model's new names) and the
layers of a Detect head's class branch. Used by ``heads`` (one trunk), ``branches`` (``share=``) and ``repair``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_model
from .errors import MismatchError
from .taskvector import TaskVector

# ----------------------------------------------------------------------------------------------- class ids
@dataclass
class ClassUnion:
    """The union's classes: ``names`` (new id -> name) and ``mapping`` ((task, old id) -> new id).

    Task 0 is the base, task ``i`` the ``i``-th model. ``owners[new_id]`` lists the (task, old id) pairs that feed it.
    """

    names: dict[int, str]
    mapping: dict[tuple[int, int], int]
    task_names: list[dict[int, str]] = field(default_factory=list)

    @property
    def owners(self) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for key, new in self.mapping.items():
            out.setdefault(new, []).append(key)
        return out

    def remap(self, names: Mapping[int, str], what: str = "the model") -> dict[int, int]:
        """Old id -> union id for a dataset or model with these class names (matched by name)."""
        index = {name: i for i, name in self.names.items()}
        missing = [n for n in names.values() if n not in index]
        if missing:
            raise MismatchError(f"{what} has classes {', '.join(map(repr, missing[:4]))} that are not in the union ({short_names(self.names)}).")
        return {int(k): index[v] for k, v in names.items()}


def clean_names(names: Mapping[Any, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}


def short_names(names: Mapping[int, str]) -> str:
    values = list(names.values())
    return ", ".join(values[:4]) + (f", ... ({len(values)} classes)" if len(values) > 4 else "")


def class_names(item: Any) -> dict[int, str]:
    """Class names of a names mapping, a model (path, YOLO, module), a task-vector file or a TaskVector."""
    if isinstance(item, Mapping):
        return clean_names(item)
    if isinstance(item, TaskVector):
        names = item.meta.get("names")
    elif isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() == ".safetensors" and not _converted(item):
        from .files import read_header

        names = read_header(item)[0].get("names")  # a task-vector file: its header only
    else:
        names = load_model(item).names
    if not names:
        raise MismatchError(f"{item} records no class names, so its classes cannot join a union.")
    return clean_names(names)


def _converted(path: str | os.PathLike) -> bool:
    from .checkpoint import is_converted_model

    return is_converted_model(path)


def union_classes(base: Any, models: Sequence[Any]) -> ClassUnion:
    """The union's class ids: base first, then each model's new names in the order given (see module docs)."""
    task_names = [class_names(base), *(class_names(m) for m in models)]
    names: dict[int, str] = {}
    index: dict[str, int] = {}
    mapping: dict[tuple[int, int], int] = {}
    for t, task in enumerate(task_names):
        for old, name in task.items():
            if name not in index:
                index[name] = len(names)
                names[index[name]] = name
            mapping[(t, old)] = index[name]
    return ClassUnion(names, mapping, task_names)



def vector_names(tv: TaskVector) -> dict[int, str]:
    names = tv.meta.get("names")
    if not names:
        raise MismatchError(f"task vector '{tv.meta.get('name', '?')}' records no class names, so its classes cannot join a union.")
    return clean_names(names)



# ----------------------------------------------------------------------------------------------- class-branch layers
@dataclass
class Unit:
    """One layer of a class branch: an Ultralytics Conv/DWConv (conv + bn + act) or the final logits Conv2d."""

    name: str
    module: nn.Module

    @property
    def conv(self) -> nn.Conv2d:
        return self.module.conv if hasattr(self.module, "conv") else self.module

    @property
    def depthwise(self) -> bool:
        c = self.conv
        return c.groups > 1 and c.groups == c.in_channels == c.out_channels

    @property
    def final(self) -> bool:
        return isinstance(self.module, nn.Conv2d)


def class_branch_units(level: nn.Module, where: str) -> list[Unit]:
    """The layers of one level's class branch, in order; refuses structures the union cannot stack."""
    from ultralytics.nn.modules import Conv

    units: list[Unit] = []
    for name, m in level.named_modules():
        if any(name.startswith(u.name + ".") for u in units):
            continue
        if isinstance(m, Conv) and hasattr(m, "bn") or type(m) is nn.Conv2d:
            units.append(Unit(name, m))
    counted = sum(p.numel() for u in units for p in u.module.parameters())
    ok = units and units[-1].final and all(not u.final for u in units[:-1]) and counted == sum(p.numel() for p in level.parameters())
    ok = ok and all(u.depthwise or u.conv.groups == 1 for u in units)
    if not ok:
        raise MismatchError(f"the class branch {where} is not a chain of Conv/DWConv layers ending in a Conv2d (a fused or already-merged head?); class-union needs a standard Detect head.")
    return units



def yaml_str(text: str) -> str:
    import json

    return json.dumps(text)  # JSON strings are valid YAML scalars
