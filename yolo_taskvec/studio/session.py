"""The studio's engine (no web framework here): one loaded YOLO, hot-swapped to whatever the sliders say.

A ``Studio`` takes a merge ``Recipe`` (base, inputs, method, ...), loads its base and inputs ONCE
(``build.prepare``) and the base once more as the live ``ultralytics.YOLO`` it predicts with. The sliders are a
``Setting`` (a weight per input, a scale per part group, method, parameters, BatchNorm policy), turned into a
recipe by ``Studio.recipe_of``. Every view puts that recipe into the live model with ``yolo_taskvec.swap``, never
a reload:

* one task-arithmetic input: the recipe is ``weights [1], scale {part: w·s_part}`` and the swap is
  ``swap(model, τ, scale, bn=...)``: bit-identical to ``build.build_merged`` (what ``save`` writes), which computes
  the same ``base + scale·τ``;
* anything else (several inputs, any other method, ``orthogonalize``): ``merging.merge_states`` with the arguments
  ``build_merged`` passes gives the merged tensors ``m``, and ``m − base`` is swapped in with scale 1. In fp32
  ``b + (m − b)`` is ``m`` except where the subtraction rounds (``m − b`` needs more bits than a float has):
  measured on yolo26n, no entry with every part scale at 1, about 0.2 % of them with other part scales, each within
  a few units in the last place of ``max(|b|, |m|)``: far below the fp16 rounding of a saved checkpoint. (Exact would
  need ``swap`` to take merged values, or ``merge_states`` to return the unscaled merged delta.)

Base and fine-tune (base + 1·τ_i) panels are cached per image and confidence threshold. ``score`` runs the fast
``Evaluator`` (built on the first press) on the datasets' val splits and adds a row to the α-curve / Pareto plot that
``sweep`` writes (``plots.plot_sweep``); the base and each fine-tune are scored once as references, and each dataset
is normalized by the best of them on it (the base by day, the specialist at night). A scale chosen by looking at
these scores is chosen on the data they report: the saved model card says so. ``save`` builds the merge with
``build.build_merged`` (so the checkpoint carries its recipe) and writes it with ``api.save`` into the run folder,
atomically and never over an input.

Every public method takes the studio's lock (the live model holds one recipe at a time), so a web server may call
it from several threads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import bn as bn_policy
from ..atomic import check_output, write_text_atomic
from ..build import Prepared, build_merged, prepare
from ..checkpoint import input_file, resolve_weights, to_yolo
from ..data import dataset_name, image_files
from ..errors import MismatchError, TaskVecError
from ..merging import merge_states
from ..methods import get_method, method_names
from ..provenance import save_model as save
from ..recipe import Recipe, as_recipe
from ..runs import Objective, run_folder, to_csv_text
from ..swap import current, swap, unswap
from ..taskvector import TaskVector, check_scale, scale_for

LIVE_BN = tuple(p for p in bn_policy.POLICIES if not bn_policy.needs_images(p))  # recalibrate needs images: not live
PART_GROUPS = ("backbone", "neck", "head")
METRIC = "map50_95"
MAX_IMAGES = 200  # images offered per dataset (evenly spaced over a larger val split)
CACHE_PANELS = 256  # base/fine-tune panels kept (least recently used dropped first)


class StudioError(TaskVecError):
    """Bad studio input (one sentence)."""


# ----------------------------------------------------------------------------------------------- slider state
@dataclass(frozen=True)
class Setting:
    """What the controls say: a weight per input, a scale per part group, the method, its parameters, BN policy."""

    weights: tuple[tuple[str, float], ...]
    parts: tuple[tuple[str, float], ...]
    method: str = "task_arithmetic"
    params: tuple[tuple[str, Any], ...] = ()
    bn: str = bn_policy.DEFAULT
    seed: int = 0
    orthogonalize: bool = False

    @classmethod
    def make(cls, weights: Mapping[str, float], parts: Mapping[str, float], method: str, params: Mapping[str, Any], bn: str, seed: int, orthogonalize: bool) -> Setting:
        return cls(tuple((k, float(v)) for k, v in weights.items()), tuple((k, float(v)) for k, v in parts.items()), method, tuple(sorted(params.items())), bn, int(seed), bool(orthogonalize))

    @property
    def point(self) -> dict[str, float]:
        """Sweep-style columns: input weights and part scales."""
        return {**dict(self.weights), **dict(self.parts)}

    def as_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "parts": dict(self.parts), "method": self.method, "params": dict(self.params), "bn": self.bn, "seed": self.seed, "orthogonalize": self.orthogonalize}

    @property
    def key(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, default=str)

    @property
    def is_one_vector_arithmetic(self) -> bool:
        return len(self.weights) == 1 and self.method == "task_arithmetic" and not self.orthogonalize

    def describe(self) -> str:
        ws = ", ".join(f"{n} {w:g}" for n, w in self.weights)
        ps = ", ".join(f"{p} {s:g}" for p, s in self.parts if s != 1.0)
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params)
        extra = [x for x in (ps and f"parts {ps}", params, self.orthogonalize and "orthogonalized", self.bn != bn_policy.DEFAULT and f"bn {self.bn}") if x]
        return f"{self.method}: {ws}" + (f" ({'; '.join(extra)})" if extra else "")


# ----------------------------------------------------------------------------------------------- detections
def detections(result: Any) -> list[dict[str, Any]]:
    """Boxes of one Ultralytics ``Results`` as plain data: ``[{"box": [x1, y1, x2, y2], "conf", "cls", "name"}]``."""
    data = result.boxes.data.detach().cpu().tolist() if result.boxes is not None else []
    names = result.names
    return [{"box": [round(v, 3) for v in row[:4]], "conf": round(row[4], 5), "cls": int(row[5]), "name": names[int(row[5])]} for row in data]


@dataclass
class Panel:
    """One model's predictions on one image: the drawn image (RGB) and its detections."""

    image: Any  # numpy HxWx3 uint8, RGB
    detections: list[dict[str, Any]]


@dataclass
class ImageView:
    """One image row: the base, each fine-tune and the current merge."""

    key: str
    path: str
    base: Panel
    finetunes: dict[str, Panel]
    merge: Panel

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.key, "path": self.path, "base": self.base.detections, "finetunes": {k: p.detections for k, p in self.finetunes.items()}, "merge": self.merge.detections}


@dataclass
class View:
    """What the page shows: the setting and its recipe, one row per image, prediction settings, time taken."""

    setting: Setting
    recipe: Recipe
    rows: list[ImageView]
    settings: dict[str, Any]  # imgsz, conf, iou
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds

    def as_dict(self) -> dict[str, Any]:
        recipe = {k: v for k, v in self.recipe.to_dict().items() if k in ("method", "params", "scale", "bn", "seed", "orthogonalize")}
        return {"setting": self.setting.as_dict(), "recipe": {**recipe, "weights": self.recipe.weights}, "settings": self.settings, "images": [r.as_dict() for r in self.rows], "timings_ms": self.timings}


# ----------------------------------------------------------------------------------------------- studio
class Studio:
    """A merge recipe's base and inputs, served from ONE hot-swapped YOLO (see the module doc).

    ``recipe``: a ``Recipe``, or a base (then ``inputs`` and recipe ``fields`` as in ``merge``: fine-tuned
    checkpoints or task-vector files, bare names through ``weights_dir``). ``data``: dataset yamls (bare names
    through ``datasets_dir``) whose val images are offered and scored. ``conf``/``iou``: prediction thresholds;
    ``batch``: validation batch. ``out`` (or ``project``/``name``/``exist_ok``): the run folder, default
    ``runs_dir/taskvec/studioN``, created on the first score or save. Everything is checked here, before any server
    starts: bad input raises a one-sentence ``TaskVecError``.
    """

    def __init__(self, recipe: Any, inputs: Any = None, *, data: Sequence[str | os.PathLike] | str = (), conf: float = 0.25, iou: float = 0.7, batch: int = 16,
                 out: Any = None, project: Any = None, name: Any = None, exist_ok: bool = False, **fields: Any) -> None:
        recipe = as_recipe(recipe, inputs, **fields)  # validated; no file opened yet
        if recipe.bn not in LIVE_BN:
            raise StudioError(f"the studio shows the BatchNorm policies {', '.join(LIVE_BN)} live; bn={recipe.bn} re-estimates statistics on images, so use yolo-taskvec merge or sweep for it.")
        if recipe.classes == "union":
            raise StudioError("classes=union builds a wider class head, which cannot be hot-swapped into the base; merge it with yolo-taskvec merge instead.")
        data = [data] if isinstance(data, (str, os.PathLike)) else list(data or [])
        if not data:
            raise StudioError("the studio needs data= (one or more dataset yamls whose val images it shows and scores).")
        self.conf, self.iou = _threshold(conf, "conf"), _threshold(iou, "iou")
        self.images = {dataset_name(d): _spread(image_files(d, "val"), MAX_IMAGES) for d in data}  # data errors before any model
        self.data = [str(d) for d in data]
        self.out = run_folder("studio", out, project, name, exist_ok)
        self.prepared: Prepared = prepare(recipe)
        carried = next((tv for tv in self.prepared.vectors if tv.absolute), None)
        if carried is not None:
            raise MismatchError(f"'{carried.meta.get('name', '?')}' carries {len(carried.absolute)} tensors the base lacks (another class set or a mask head), so it cannot be hot-swapped; merge it with yolo-taskvec merge instead.")
        self.names = list(self.prepared.names)
        self.groups = [g for g in PART_GROUPS if any(tv.part_of(k).split(".")[0] == g for tv in self.prepared.vectors for k in tv.deltas)]
        self.imgsz = int(recipe.imgsz or self.base.train_args.get("imgsz") or 640)
        self.batch = int(batch)
        self.device = recipe.device
        self.inputs = [str(p) for p in self.prepared.files] + [str(p) for p in (input_file(s) for s in [recipe.base, *recipe.sources]) if p is not None]
        self.initial = self.check(initial_setting(recipe, self.names, self.groups))
        self.model = _live_model(recipe.base, self.base)
        self.lock = threading.RLock()
        self._shown: str | None = None  # what is swapped in: None (base), "ft:<name>" or a setting key
        self._cache: OrderedDict[tuple, Panel] = OrderedDict()
        self._evaluator: Any = None
        self.references: dict[str, dict[str, dict[str, float]]] = {}
        self.reference_for: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.saved: list[Path] = []

    @property
    def base(self) -> Any:
        return self.prepared.base

    @property
    def vectors(self) -> list[TaskVector]:
        return self.prepared.vectors

    # ------------------------------------------------------------------ settings and recipes
    def methods(self) -> list[str]:
        """Methods that accept this many inputs."""
        n = len(self.names)
        return [m for m in method_names() if get_method(m).min_models <= n and (get_method(m).max_models is None or n <= get_method(m).max_models)]

    def check(self, setting: Setting) -> Setting:
        """The setting with its method parameters resolved; one sentence for anything the studio cannot show."""
        method = get_method(setting.method)
        method.check_count(len(self.names))
        params = method.resolve(dict(setting.params))
        if setting.bn not in LIVE_BN:
            raise StudioError(f"the studio shows the BatchNorm policies {', '.join(LIVE_BN)} live, not '{setting.bn}'.")
        weights = dict(setting.weights)
        if list(weights) != self.names:
            raise StudioError(f"the setting weighs {', '.join(weights) or 'no inputs'}; this studio's inputs are {', '.join(self.names)}.")
        weights = {n: check_scale(w, f"weight of {n}") for n, w in weights.items()}
        parts = {g: check_scale(dict(setting.parts).get(g, 1.0), f"scale of {g}") for g in self.groups}
        return Setting.make(weights, parts, method.name, params, setting.bn, setting.seed, setting.orthogonalize)

    def setting(self, weights: Mapping[str, float] | Sequence[float], parts: Mapping[str, float] | Sequence[float] | None = None, method: str | None = None, params: Mapping[str, Any] | None = None,
                bn: str | None = None, seed: int | None = None, orthogonalize: bool = False) -> Setting:
        """A checked setting from control values (sequences follow ``names`` and ``groups``)."""
        if not isinstance(weights, Mapping):
            weights = dict(zip(self.names, weights))
        if parts is not None and not isinstance(parts, Mapping):
            parts = dict(zip(self.groups, parts))
        i = self.initial
        method = method or i.method
        if params is None:  # the starting parameters belong to the starting method
            params = dict(i.params) if method == i.method else {}
        return self.check(Setting.make(weights, parts or dict(i.parts), method, params, bn or i.bn, i.seed if seed is None else seed, orthogonalize))

    def recipe_of(self, setting: Setting) -> Recipe:
        """The merge recipe of a setting (validated). One task-arithmetic input folds its weight into the part scales,
        so the hot-swap and ``build_merged`` compute the very same ``base + scale·τ``."""
        parts = dict(setting.parts)
        if setting.is_one_vector_arithmetic:
            w = setting.weights[0][1]
            scale, weights = {g: w * s for g, s in parts.items()}, [1.0]
        else:
            scale, weights = parts, [w for _, w in setting.weights]
            if not any(weights):  # every slider at 0: the base itself (a recipe refuses all-zero weights)
                scale, weights = dict.fromkeys(parts, 0.0), [1.0] * len(weights)
        if len(set(scale.values())) == 1:
            scale = next(iter(scale.values()))
        return self.prepared.recipe.replace(weights=weights, scale=scale, method=setting.method, params=dict(setting.params), bn=setting.bn, seed=setting.seed, orthogonalize=setting.orthogonalize)

    # ------------------------------------------------------------------ swapping
    def _put(self, key: str | None, vector: TaskVector | None = None, scale: Any = 1.0, bn: str = bn_policy.DEFAULT) -> None:
        """Make the live model hold ``key`` (None: the base): unswap what is in, swap the new vector in."""
        if self._shown == key:
            return
        if current(self.model) is not None:
            unswap(self.model)
        self._shown = None
        if vector is not None:
            swap(self.model, vector, scale, bn=bn, force=self.prepared.recipe.force)
        self._shown = key

    def show(self, setting: Setting) -> dict[str, float]:
        """Swap ``setting`` into the live model; returns timings (ms) of the merge and the swap."""
        with self.lock:
            if self._shown == setting.key:
                return {"merge_ms": 0.0, "swap_ms": 0.0}
            t0 = time.perf_counter()
            recipe = self.recipe_of(setting)
            if setting.is_one_vector_arithmetic:
                vector, scale, bn = self.vectors[0], recipe.scale, recipe.bn
            else:
                vector, scale, bn = self.merged_difference(recipe), 1.0, bn_policy.DEFAULT
            t1 = time.perf_counter()
            self._put(setting.key, vector, scale, bn)
            return {"merge_ms": 1000 * (t1 - t0), "swap_ms": 1000 * (time.perf_counter() - t1)}

    def merged_difference(self, recipe: Recipe) -> TaskVector:
        """``merge_states(...) − base`` over the tensors the inputs touch (the arguments ``build_merged`` passes): the
        vector that, swapped in with scale 1 and ``bn=merge``, gives the merge."""
        keys = sorted({k for tv in self.vectors for k in tv.deltas})
        base = {k: self.base.state[k] for k in keys}
        merged, _ = merge_states(base, self.vectors, recipe.method, weights=recipe.weights, scale=recipe.scale, params=recipe.params, bn=recipe.bn, seed=recipe.seed,
                                 layout=self.base.layout, orthogonalize=recipe.orthogonalize, device=recipe.device)
        deltas = {k: merged[k].to(base[k].device) - base[k] for k in keys if base[k].is_floating_point() and not k.endswith("num_batches_tracked")}
        return TaskVector(deltas, {}, {"name": "merge"})

    def show_base(self) -> None:
        with self.lock:
            self._put(None)

    def show_finetune(self, name: str) -> None:
        """base + 1·τ(name) (the fine-tune itself for a dense vector extracted from it)."""
        with self.lock:
            self._put(f"ft:{name}", self.vectors[self.names.index(name)], 1.0)

    # ------------------------------------------------------------------ predictions
    def panel(self, image: str | os.PathLike, conf: float | None = None) -> Panel:
        """The live model's predictions on one image, drawn."""
        result = self.model.predict(str(image), imgsz=self.imgsz, conf=self.conf if conf is None else conf, iou=self.iou, device=self.device, verbose=False)[0]
        return Panel(result.plot()[..., ::-1].copy(), detections(result))

    def reference_panels(self, image: str | os.PathLike, conf: float | None = None) -> tuple[Panel, dict[str, Panel]]:
        """Base and fine-tune panels of an image (cached per image file and threshold)."""
        conf = self.conf if conf is None else conf
        key = (_content_key(image), conf)
        with self.lock:
            for name in (None, *self.names):
                if (key, name) not in self._cache:
                    if name is None:
                        self.show_base()
                    else:
                        self.show_finetune(name)
                    self._cache[(key, name)] = self.panel(image, conf)
                    while len(self._cache) > CACHE_PANELS:
                        self._cache.popitem(last=False)
                self._cache.move_to_end((key, name))
            return self._cache[(key, None)], {n: self._cache[(key, n)] for n in self.names}

    def view(self, setting: Setting, images: Sequence[tuple[str, str]], conf: float | None = None) -> View:
        """Base, fine-tune and merge panels for ``images`` (``(key, path)`` pairs) under ``setting``."""
        with self.lock:
            t0 = time.perf_counter()
            refs = [self.reference_panels(path, conf) for _, path in images]
            t1 = time.perf_counter()
            timings = self.show(setting)
            t2 = time.perf_counter()
            merged = [self.panel(path, conf) for _, path in images]
            t3 = time.perf_counter()
            rows = [ImageView(key, str(path), b, f, m) for (key, path), (b, f), m in zip(images, refs, merged)]
            timings.update(references_ms=1000 * (t1 - t0), predict_ms=1000 * (t3 - t2), total_ms=1000 * (t3 - t0))
            settings = {"imgsz": self.imgsz, "conf": self.conf if conf is None else conf, "iou": self.iou}
            return View(setting, self.recipe_of(setting), rows, settings, {k: round(v, 1) for k, v in timings.items()})

    def default_images(self) -> list[tuple[str, str]]:
        """The first val image of each dataset."""
        return [(f"{ds}/{files[0].name}", str(files[0])) for ds, files in self.images.items()]

    def image_path(self, dataset: str, name: str) -> str:
        for f in self.images[dataset]:
            if f.name == name:
                return str(f)
        raise StudioError(f"dataset {dataset} offers no image named {name}.")

    # ------------------------------------------------------------------ scoring
    @property
    def evaluator(self) -> Any:
        if self._evaluator is None:
            from ..evaluation import Evaluator

            self._evaluator = Evaluator(self.data, imgsz=self.imgsz, batch=self.batch, device=self.device, progress=False, verbose=False)
        return self._evaluator

    @property
    def datasets(self) -> list[str]:
        return list(self.images)

    def score_references(self) -> None:
        """Score the base and each fine-tune once; each dataset is normalized by the best of them on it."""
        with self.lock:
            if self.references:
                return
            self.show_base()
            scored = {"base": self.evaluator(self.model)}
            for name in self.names:
                self.show_finetune(name)
                scored[name] = self.evaluator(self.model)
            self.references = scored
            self.reference_for = {ds: max(scored, key=lambda label: scored[label][ds][METRIC]) for ds in self.evaluator.names}

    @property
    def objective(self) -> Objective:
        refs = {ds: self.references[label][ds] for ds, label in self.reference_for.items()}
        return Objective(METRIC, refs or None, "mean")

    def score(self, setting: Setting) -> dict[str, Any]:
        """Validate the merge on every dataset's val split, add the row, rewrite ``studio.{json,csv,png}``."""
        with self.lock:
            t0 = time.perf_counter()
            self.score_references()
            self.show(setting)
            metrics = self.evaluator(self.model)
            objective = self.objective
            row: dict[str, Any] = dict(setting.point)
            for ds, m in metrics.items():
                row.update({f"{ds}/{k}": float(v) for k, v in m.items()})
            row.update({f"{ds}/norm": v for ds, v in objective.normalized(metrics).items()})
            row.update(objective=objective(metrics), recipe=setting.describe(), seconds=round(time.perf_counter() - t0, 2))
            self.rows.append(row)
            self.write_results()
            return row

    @property
    def axes(self) -> list[str]:
        return [*self.names, *self.groups]

    def write_results(self) -> dict[str, Path]:
        """``studio.png`` (``plots.plot_sweep``, the sweep's plot), ``studio.json`` and ``studio.csv``, atomically."""
        from ..plots import plot_sweep

        folder = self._folder()
        label = self.objective.label
        context = {"base": self.base.name, "inputs": self.names, "method": "studio", "imgsz": self.imgsz}
        files = {"png": plot_sweep(self.rows, self.axes, self.evaluator.names, METRIC, folder / "studio.png", references=self.references, reference_for=self.reference_for, objective_label=label, context=context)}
        doc = {"base": str(self.prepared.recipe.base), "inputs": self.names, "datasets": self.evaluator.names, "split": "val", "metric": METRIC, "objective": label,
               "references": self.references, "reference_for": self.reference_for, "rows": self.rows}
        files["json"] = write_text_atomic(folder / "studio.json", json.dumps(doc, indent=1, default=str), self.inputs)
        files["csv"] = write_text_atomic(folder / "studio.csv", to_csv_text(self.rows), self.inputs)
        return files

    def table(self) -> list[dict[str, Any]]:
        """Scored rows, newest first, with the columns a person reads (part scales once one is not 1)."""
        parts = [g for g in self.groups if any(r[g] != 1.0 for r in self.rows)]
        cols = [*self.names, *parts, *(f"{ds}/{METRIC}" for ds in self.datasets), "objective", "recipe"]
        return [{c: r.get(c) for c in cols} for r in reversed(self.rows)]

    # ------------------------------------------------------------------ saving
    def _folder(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out

    def merged_model(self, setting: Setting) -> Any:
        """The merge as a standalone ``ultralytics.YOLO`` with its provenance (``build.build_merged``)."""
        point = setting.point
        scored = [r for r in self.rows if all(r.get(k) == v for k, v in point.items()) and r.get("recipe") == setting.describe()]
        selection = {"kind": "studio", "point": point, "trials": len(self.rows), "objective": self.objective.label if self.rows else "the look of its predictions",
                     "selected_on": "the reported data (the datasets' val splits), by eye" if self.rows else "images, by eye (nothing scored)"}
        if scored:
            selection["scores"] = {"val": {k: v for k, v in scored[-1].items() if k.endswith(f"/{METRIC}") or k == "objective"}}
        if self.rows:
            selection["data"] = self.data
        return build_merged(self.prepared, self.recipe_of(setting), selection=selection)

    def save(self, setting: Setting, path: str | os.PathLike | None = None) -> Path:
        """Write the merge into the run folder (``merged.pt``, ``merged2.pt``, ...) with ``yolo_taskvec.save`` (its
        recipe and model card beside it): atomic, never over an input or an earlier save."""
        from ultralytics.utils.files import increment_path

        with self.lock:
            target = Path(path) if path is not None else increment_path(self._folder() / "merged.pt", sep="")
            for p in (target, target.with_name(target.stem + ".recipe.yaml"), target.with_name(target.stem + ".md")):
                check_output(p, self.inputs)
            saved = save(self.merged_model(setting), target, inputs=self.inputs)
            self.saved.append(Path(saved))
            return Path(saved)

    def summary(self) -> str:
        return f"base {self.base.name} · inputs {', '.join(self.names)} · data {', '.join(self.datasets)} · imgsz {self.imgsz}"


# ----------------------------------------------------------------------------------------------- helpers
def initial_setting(recipe: Recipe, names: Sequence[str], groups: Sequence[str]) -> Setting:
    """The controls' starting values from a recipe: its weights and per-part scales; a plain scale on a
    task-arithmetic merge (which is linear) is folded into the weights, so the weight sliders show it."""
    linear = recipe.method == "task_arithmetic" and not isinstance(recipe.scale, Mapping)
    weights = {n: w * (float(recipe.scale) if linear else 1.0) for n, w in zip(names, recipe.weights)}
    parts = {g: 1.0 if linear else scale_for(g, recipe.scale) for g in groups}
    return Setting.make(weights, parts, recipe.method, dict(recipe.params), recipe.bn, recipe.seed, recipe.orthogonalize)


def _threshold(value: Any, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise StudioError(f"{what} must be a number in [0, 1], got {value!r}.") from e
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise StudioError(f"{what} must lie in [0, 1], got {value:g}.")
    return value


def _spread(files: list[Path], n: int) -> list[Path]:
    """At most ``n`` files, evenly spaced over the sorted list."""
    if len(files) <= n:
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def _content_key(image: str | os.PathLike) -> str:
    """Cache key of an image: its path, size and modification time (an upload gets a new temporary path)."""
    st = Path(image).stat()
    return hashlib.sha1(f"{Path(image).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def _live_model(source: Any, loaded: Any) -> Any:
    """The one YOLO the studio swaps into: ``YOLO(path)`` for a checkpoint file, else a copy of the loaded base."""
    from ultralytics import YOLO

    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".pt":
        return YOLO(str(resolve_weights(source)))
    return to_yolo(copy.deepcopy(loaded.module), label=loaded.name, train_args=loaded.train_args)
