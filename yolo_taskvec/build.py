"""Running a recipe: its inputs loaded once, and the ONE function that builds a merged model from them.

``prepare(recipe)`` checks the files (found, readable, sha256 pins) and loads the base and the inputs once (fine-tunes
become task vectors, vector files are read). ``build_merged(prepared, recipe)`` is the only place a merged model is
made — API ``merge``, sweeps, searches, soups, the studio and the benchmarks all go through it:

``merged_module`` does steps 1–3 (also for ``calib``, which needs the module only):

1. merge the states (``merging.merge_states``: method, weights, scale, BatchNorm-statistics policy, device);
2. build the module (the base's architecture, or the architecture carried by a segment head; class unions build
   their widened head in ``heads.merge_union``); the merged tensors become the module's own parameters (no copy),
   on the recipe's ``device`` where they were merged, so a GPU merge holds one merged model on the GPU;
3. refit BatchNorm statistics on images when the policy asks for it (``recalibration.recalibrate``);
4. wrap it as a ready ``ultralytics.YOLO`` whose checkpoint entry ``taskvec`` holds the provenance (recipe,
   versions, input hashes) that ``api.save`` writes out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bn as bn_policy
from .checkpoint import (
    LoadedModel,
    build_module,
    input_file,
    load_model,
    resolve_weights,
    to_yolo,
)
from .errors import MismatchError, TaskVecError
from .merging import merge_states
from .provenance import file_sha256, merge_provenance, merged_train_args
from .recipe import Recipe, RecipeError
from .taskvector import TaskVector
from .vectors import (
    as_vector,
    check_fingerprints,
    class_sets_differ,
    input_paths,
    is_vector_file,
    short_names,
    without_class_branch,
)


@dataclass
class Prepared:
    """A recipe's base and inputs, loaded once: reused by every merge a sweep, search or studio builds."""

    recipe: Recipe
    base: LoadedModel
    vectors: list[TaskVector]
    names: list[str]  # one unique column name per input
    hashes: dict[str, str | None] = field(default_factory=dict)  # file -> sha256 (None: an in-memory object)

    @property
    def files(self) -> list[Path]:
        """Every input file (base, fine-tunes, vector files, and the checkpoints the vectors came from)."""
        paths = [self.base.path, *(Path(p) for tv in self.vectors for p in input_paths(tv))]
        return [p for p in paths if p is not None]


def check_files(recipe: Recipe) -> dict[str, str | None]:
    """Every file of a recipe exists and is readable, and matches its sha256 pin; returns ``{path: sha256}``.

    Cheap and before any model is loaded: a missing fine-tune is reported before the base is unpickled.
    """
    hashes: dict[str, str | None] = {}
    items = [("base", recipe.base, recipe.base_sha256), *(("input", i.source, i.sha256) for i in recipe.inputs)]
    for role, source, pin in items:
        path = input_file(source) if isinstance(source, (str, os.PathLike)) and str(source) != "base" else None
        if path is None:
            continue
        path = resolve_weights(path, (".pt", ".safetensors"))
        if not os.access(path, os.R_OK):
            raise TaskVecError(f"{role} file {path} is not readable (permission denied).")
        digest = file_sha256(path)
        if pin and pin != digest:
            raise MismatchError(f"{role} file {path} does not match the recipe's sha256 pin ({pin[:12]}…, the file has {digest[:12]}…): it is not the file the recipe was written for.")
        hashes[str(path)] = digest
    return hashes


def prepare(recipe: Recipe) -> Prepared:
    """Load the recipe's base once and turn every input into a task vector of it (checked against the base)."""
    hashes = check_files(recipe)
    base = load_model(recipe.base)
    union = recipe.classes == "union"
    vectors = [_input_vector(base, item.source, recipe, carry=union) for item in recipe.inputs]
    check_fingerprints(base, vectors, recipe.force)
    if not union:
        vectors = _apply_class_policy(base, vectors, recipe)
    return Prepared(recipe, base, vectors, input_names(recipe, vectors), hashes)


def _input_vector(base: LoadedModel, source: Any, recipe: Recipe, *, carry: bool) -> TaskVector:
    """One input as a task vector; a class branch of another shape is carried so the class policy can answer."""
    parts = None if carry else recipe.parts  # a union merge restricts the shared parts itself
    try:
        return as_vector(base, source, parts=parts, unmatched="carry" if carry else recipe.unmatched)
    except MismatchError:
        if carry or recipe.unmatched == "carry" or is_vector_file(source):
            raise
        tv = as_vector(base, source, parts=parts, unmatched="carry")
        if not class_sets_differ(base, tv) or any(tv.part_of(k) != "head.cls" for k in tv.absolute):
            raise
        return tv


def _apply_class_policy(base: LoadedModel, vectors: list[TaskVector], recipe: Recipe) -> list[TaskVector]:
    differing = [tv for tv in vectors if class_sets_differ(base, tv)]
    if differing and recipe.classes == "error":
        tv = differing[0]
        raise MismatchError(
            f"'{tv.meta.get('name', '?')}' was trained on other classes ({short_names(tv.meta['names'])}) than the base "
            f"({short_names(base.names)}); use classes=union for one detector over all classes, or classes=base to keep the base's class branch."
        )
    return [without_class_branch(tv) if class_sets_differ(base, tv) else tv for tv in vectors]


def input_names(recipe: Recipe, vectors: Sequence[TaskVector]) -> list[str]:
    """A unique column name per input: its recipe name, else its vector file's stem, else the vector's name."""
    names: list[str] = []
    for i, (item, tv) in enumerate(zip(recipe.inputs, vectors)):
        source_file = tv.meta.get("source_file")
        name = item.name or (Path(str(source_file)).stem if source_file else str(tv.meta.get("name") or f"v{i}"))
        names.append(name if name not in names else f"{name}#{i}")
    return names


def merged_module(base: LoadedModel, vectors: Sequence[TaskVector], recipe: Recipe) -> tuple[Any, Any, dict[str, Any]]:
    """Steps 1–3 for ``recipe`` over loaded inputs: ``(fp32 module, merge report, union description)``."""
    imgsz = recipe.imgsz or int(base.train_args.get("imgsz") or 640)
    if recipe.classes == "union":
        from .heads import merge_union

        module, report, extra = merge_union(base, vectors, method=recipe.method, scale=recipe.scale, weights=recipe.weights, bn=recipe.bn, bn_data=list(recipe.bn_data),
                                            bn_batches=recipe.bn_batches, parts=recipe.parts, seed=recipe.seed, imgsz=imgsz, orthogonalize=recipe.orthogonalize,
                                            duplicates=recipe.duplicates, share=recipe.share, **dict(recipe.params))
        if recipe.repair:
            from .repair import repair_union

            module, extra["repair"] = repair_union(module, base, vectors, recipe, imgsz)
        return module, report, extra
    state, report = merge_states(base.state, vectors, recipe.method, weights=recipe.weights, scale=recipe.scale, params=recipe.params, bn=recipe.bn,
                                 seed=recipe.seed, layout=base.layout, orthogonalize=recipe.orthogonalize, device=recipe.device)
    carrier = next((tv for tv in vectors if tv.absolute and tv.meta.get("target_yaml")), None)
    module = build_module(base, state, target_yaml=carrier.meta["target_yaml"] if carrier else None, names=carrier.meta.get("names") if carrier else None, device=recipe.device,
                          adopt=report.fresh)  # the merged tensors become the module's own: no second copy (on a GPU: one model, not two)
    if bn_policy.needs_images(recipe.bn):
        from .recalibration import recalibrate

        recalibrate(module, list(recipe.bn_data), batches=recipe.bn_batches, imgsz=imgsz)
    return module, report, {}


def build_merged(prepared: Prepared, recipe: Recipe | None = None, *, selection: dict[str, Any] | None = None) -> Any:
    """The merged ``ultralytics.YOLO`` of ``recipe`` (default: the prepared one; it must share its base and inputs).

    ``selection``: how a sweep/search chose this recipe (kind, point, scores), recorded in the provenance.
    """
    recipe = recipe or prepared.recipe
    if recipe.base != prepared.recipe.base or [i.source for i in recipe.inputs] != [i.source for i in prepared.recipe.inputs]:
        raise TaskVecError("build_merged: the recipe's base and inputs must be the prepared ones (prepare the new recipe).")
    b = prepared.base
    module, report, extra = merged_module(b, prepared.vectors, recipe)
    model = {"task": module.task, "classes": len(module.names)}
    provenance = merge_provenance(recipe, prepared, report.as_dict(), extra, selection, model)
    label = f"merged({', '.join(prepared.names)})"
    return to_yolo(module, label=label, train_args=merged_train_args(b, module, recipe, label, selection), ckpt_extra={"taskvec": provenance})


def merge(recipe: Recipe) -> Any:
    """Prepare and build one recipe: the merged ``ultralytics.YOLO``."""
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"merge needs a Recipe, got {type(recipe).__name__}.")
    if all(w == 0 for w in recipe.weights):  # one merge asked for by name (a sweep's (0, 0) point is the base, on purpose)
        raise RecipeError("all weights are zero, so the merge would be the base unchanged; give at least one non-zero weight.")
    return build_merged(prepare(recipe))
