"""Provenance of a merged model: its recipe, versions, input hashes and how it was chosen; the model card.

Every merged ``YOLO`` carries ``ckpt["taskvec"]`` (plain data, so loading the checkpoint needs no yolo-taskvec)::

    {"format": "yolo-taskvec-provenance/1", "recipe": {...}, "files": [{"role", "given", "path", "sha256"}],
     "versions": {"yolo_taskvec", "ultralytics", "torch"}, "created", "base_fingerprint", "report": {...},
     "union": {...} (class unions), "selection": {...} (when a sweep/search/soup chose it)}

``save`` writes it into the checkpoint and, beside ``name.pt``, ``name.recipe.yaml`` (the recipe with every input
pinned by absolute path and sha256: ``yolo-taskvec merge cfg=name.recipe.yaml`` rebuilds the same tensors) and
``name.md`` (a short model card).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .atomic import check_output, write_text_atomic
from .checkpoint import input_file, save_checkpoint
from .errors import OutputError
from .plain import plain

PROVENANCE_FORMAT = "yolo-taskvec-provenance/1"
_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (cached per path, size and modification time)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def versions() -> dict[str, str]:
    import torch
    import ultralytics

    from .version import __version__

    return {"yolo_taskvec": __version__, "ultralytics": ultralytics.__version__, "torch": torch.__version__.split("+")[0]}


def _file_entries(recipe: Any, prepared: Any) -> list[dict[str, Any]]:
    """Base and inputs with the file each resolved to and its sha256 (``None`` for in-memory objects)."""
    entries = []
    for role, source in [("base", recipe.base), *(("input", i.source) for i in recipe.inputs)]:
        path = input_file(source) if isinstance(source, (str, os.PathLike)) else None
        resolved = str(path.resolve()) if path is not None and path.exists() else None
        entries.append({"role": role, "given": str(source) if isinstance(source, (str, os.PathLike)) else repr(source), "path": resolved, "sha256": prepared.hashes.get(resolved) if resolved else None})
    return entries


def merge_provenance(recipe: Any, prepared: Any, report: Mapping[str, Any], extra: Mapping[str, Any], selection: Mapping[str, Any] | None, model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The provenance entry of a merged model (see the module doc); ``model``: its task and class count."""
    doc = {
        "format": PROVENANCE_FORMAT,
        "model": dict(model or {}),
        "recipe": recipe.to_dict(),
        "files": _file_entries(recipe, prepared),
        "inputs": [str(p) for p in prepared.files],  # every file behind the merge: never overwritten by a save
        "names": list(prepared.names),
        "versions": versions(),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "base_fingerprint": prepared.base.fingerprint,
        "report": dict(report),
    }
    extra = dict(extra)
    if "repair" in extra:  # where a standalone repair() records it too
        doc["repair"] = extra.pop("repair")
    if extra:
        doc["union"] = extra
    if selection:
        doc["selection"] = dict(selection)
    return plain(doc)


def merged_train_args(base: Any, module: Any, recipe: Any, label: str, selection: Mapping[str, Any] | None) -> dict[str, Any]:
    """``train_args`` that describe the merge (no training happened), not the base's training run."""
    args = {
        "task": module.task,
        "mode": "merge",
        "model": label,
        "imgsz": int(base.train_args.get("imgsz") or 640),
        "single_cls": bool(base.train_args.get("single_cls", False)),
        "epochs": 0,
        "taskvec": recipe.describe(),
    }
    if selection and selection.get("data"):
        args["data"] = selection["data"][0]
    return args


def pinned_recipe(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance's recipe with every file input replaced by its absolute path and pinned by its sha256."""
    recipe = dict(provenance["recipe"])
    files = list(provenance.get("files") or [])
    if files and files[0]["path"]:
        recipe["base"], recipe["base_sha256"] = files[0]["path"], files[0]["sha256"]
    inputs = []
    for item, entry in zip(recipe.get("inputs", []), files[1:]):
        item = dict(item)
        if entry["path"]:
            item["model"], item["sha256"] = entry["path"], entry["sha256"]
        inputs.append(item)
    recipe["inputs"] = inputs
    return recipe


def write_companions(checkpoint: str | os.PathLike, provenance: Mapping[str, Any], inputs: Iterable[Any] = ()) -> dict[str, Path]:
    """``name.recipe.yaml`` and ``name.md`` beside a saved merge (atomic; never over an input)."""
    import yaml

    from .recipe import RECIPE_FORMAT

    checkpoint = Path(checkpoint)
    recipe_path = checkpoint.with_name(checkpoint.stem + ".recipe.yaml")
    card_path = checkpoint.with_name(checkpoint.stem + ".md")
    header = f"# yolo-taskvec recipe of {checkpoint.name}: rebuild it with\n#   yolo-taskvec merge cfg={recipe_path.name} out={checkpoint.name} exist_ok=true\n"
    body = yaml.safe_dump({"format": RECIPE_FORMAT, **pinned_recipe(provenance)}, sort_keys=False, allow_unicode=True, width=120)
    inputs = [p for p in inputs if p is not None]
    write_text_atomic(recipe_path, header + body, inputs)
    write_text_atomic(card_path, model_card(checkpoint.name, provenance, recipe_path.name), inputs)
    return {"recipe": recipe_path, "card": card_path}


def _fmt_scale(scale: Any) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in scale.items()) if isinstance(scale, Mapping) else f"{scale:g}"


def model_card(name: str, provenance: Mapping[str, Any], recipe_file: str) -> str:
    """A short README-style card: what was merged, how, the scores that chose it, how to rebuild it."""
    r = provenance["recipe"]
    files = provenance.get("files") or []
    v = provenance.get("versions", {})
    sha = lambda e: f" (sha256 `{e['sha256'][:12]}…`)" if e.get("sha256") else " (in memory: not re-runnable from a file)"  # noqa: E731
    rows = [("base", f"`{Path(files[0]['given']).name}`{sha(files[0])}" if files else str(r["base"]))]
    for item, entry in zip(r.get("inputs", []), files[1:]):
        rows.append(("input", f"`{Path(entry['given']).name}` × {item.get('weight', 1.0):g}{sha(entry)}"))
    params = ", ".join(f"{k}={val}" for k, val in (r.get("params") or {}).items())
    rows += [
        ("method", f"{r['method']}{f' ({params})' if params else ''}"),
        ("scale", _fmt_scale(r["scale"])),
        ("parts", ", ".join(r["parts"]) if r.get("parts") else "all"),
        ("BatchNorm statistics", r["bn"] + (f" on {', '.join(r['bn_data'])}" if r.get("bn_data") else "")),
        ("model", f"{provenance.get('model', {}).get('task', '?')}, {provenance.get('model', {}).get('classes', '?')} classes (class-set policy {r['classes']})"),
        ("seed", str(r["seed"])),
        ("made", f"{provenance.get('created', '?')} with yolo-taskvec {v.get('yolo_taskvec', '?')}, ultralytics {v.get('ultralytics', '?')}, torch {v.get('torch', '?')}"),
    ]
    lines = [
        f"# {name}",
        "",
        f"A standard Ultralytics checkpoint made by merging (no training): `YOLO(\"{name}\")` loads it without yolo-taskvec.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {val} |" for k, val in rows),
        "",
    ]
    union = provenance.get("union")
    if union:
        lines += [f"Class union of {', '.join(map(str, union.get('union_tasks', [])))}: each task keeps its own class branch.", ""]
    selection = provenance.get("selection")
    if selection:
        lines += ["## How it was chosen", "", *selection_lines(selection), ""]
    lines += ["## Rebuild it", "", "```bash", f"yolo-taskvec merge cfg={recipe_file} out={name} exist_ok=true", "```", ""]
    return "\n".join(lines)


def selection_lines(selection: Mapping[str, Any]) -> list[str]:
    """Markdown lines describing how a sweep/search/soup chose a merge, with its scores."""
    point = ", ".join(f"{k}={v:g}" for k, v in (selection.get("point") or {}).items())
    where = selection.get("selected_on") or "the reported data (no separate selection split)"
    lines = [f"Chosen by a {selection.get('kind', 'run')} ({selection.get('trials', '?')} candidates) at **{point}**, maximizing {selection.get('objective', 'the objective')} on {where}."]
    scores = selection.get("scores") or {}
    if scores:
        lines += ["", "| split | dataset | score |", "|---|---|---|"]
        for split, values in scores.items():
            for key, value in values.items():
                lines.append(f"| {split} | {key} | {value:.4f} |" if isinstance(value, (int, float)) else f"| {split} | {key} | {value} |")
    return lines


def describe_provenance(provenance: Mapping[str, Any]) -> str:
    """The provenance of a merged checkpoint as indented text lines (``yolo-taskvec info model=...``)."""
    if not isinstance(provenance, Mapping) or "recipe" not in provenance:
        return f"  made by yolo-taskvec (old provenance: {', '.join(sorted(map(str, provenance)))[:120]})" if isinstance(provenance, Mapping) else ""
    r = provenance["recipe"]
    v = provenance.get("versions", {})
    params = ", ".join(f"{k}={val}" for k, val in (r.get("params") or {}).items())
    lines = [f"  merge: {r.get('method')}{f' ({params})' if params else ''}, scale {_fmt_scale(r.get('scale', 1.0))}, bn {r.get('bn')}, classes {r.get('classes')}, seed {r.get('seed')}"]
    for entry in provenance.get("files") or []:
        lines.append(f"  {entry['role']:<5}  {entry['given']}  sha256 {(entry.get('sha256') or 'n/a (in memory)')[:16]}")
    lines.append(f"  made {provenance.get('created', '?')} with yolo-taskvec {v.get('yolo_taskvec', '?')}, ultralytics {v.get('ultralytics', '?')}, torch {v.get('torch', '?')}")
    selection = provenance.get("selection")
    if selection:
        point = ", ".join(f"{k}={val:g}" for k, val in (selection.get("point") or {}).items())
        lines.append(f"  chosen by a {selection.get('kind')} at {point} on {selection.get('selected_on')}")
    if provenance.get("converted_from"):
        lines.append(f"  converted from {provenance['converted_from']}")
    return "\n".join(lines)


def save_model(model: Any, path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), companions: bool = True) -> Path:
    """Save a (merged) YOLO as a standard Ultralytics checkpoint with its merge provenance.

    Beside a merged model's ``name.pt`` it writes ``name.recipe.yaml`` (re-runs the merge) and ``name.md`` (model
    card) unless ``companions=False``. Never overwrites the files the model was merged from, nor any of ``inputs``.
    """
    provenance = (getattr(model, "ckpt", None) or {}).get("taskvec") or {}
    if not isinstance(provenance, dict):
        raise OutputError("the model's taskvec provenance is not a mapping; it was not made by yolo-taskvec.")
    inputs = [*inputs, *provenance.get("inputs", [])]
    path = Path(path)
    check_output(path, inputs)
    if provenance.get("recipe") and companions:
        for companion in (path.with_name(path.stem + ".recipe.yaml"), path.with_name(path.stem + ".md")):
            check_output(companion, inputs)  # before the checkpoint is written: all three or none
    train_args = (getattr(model, "ckpt", None) or {}).get("train_args")
    saved = save_checkpoint(model, path, provenance=provenance, inputs=inputs, train_args=train_args)
    if provenance.get("recipe") and companions:
        write_companions(saved, provenance, inputs)
    return saved
