"""The studio's engine (no web framework here): one loaded YOLO, hot-swapped to whatever the sliders say.

A ``Studio`` holds the base loaded ONCE as an ``ultralytics.YOLO`` and the task vectors extracted or read once.
Every view puts a recipe into that model with ``yolo_taskvec.swap`` (never a reload) and predicts:

* one task-arithmetic vector: ``swap(model, τ, scale={part: w·s_part}, bn=...)``, bit-identical to
  ``merge(base, [τ], scale=...)`` (what ``save`` writes);
* anything else (several vectors, any other method, ``orthogonalize``): ``merging.merge_states`` gives the merged
  tensors ``m`` with the same call ``merge`` makes, and the difference ``m − base`` is swapped in with scale 1.
  In fp32 ``b + (m − b)`` is ``m`` except where the subtraction rounds (``m − b`` needs more bits than a float has):
  measured on yolo26n, no entry with every part scale at 1 and about 0.2 % of them with other part scales, each off
  by at most a few units in the last place of ``max(|b|, |m|)``, far below the fp16 rounding of a saved checkpoint.
  (Exact would need ``swap`` to take merged values, or ``merge_states`` to return the unscaled merged delta.)

Base and fine-tune (base + 1·τ_i) predictions are cached per image and confidence threshold. ``score`` runs the
fast ``Evaluator`` (built once, on the first press) on the datasets and adds a row to the α-curve / Pareto plot that
``sweep`` writes (``plots.plot_sweep``); the base and each fine-tune are scored once as references, and each
dataset is normalized by the best of them on it (the base by day, the specialist at night). ``save`` rebuilds the
merge with ``api.merge`` (so the checkpoint carries its recipe) and writes it with ``api.save`` into the run folder,
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

from ..api import TaskVector, as_vectors, check_fingerprints, merge, save
from ..atomic import check_output, write_text_atomic
from ..checkpoint import input_file, load_model, resolve_weights, to_yolo
from ..data import dataset_name, image_files
from ..errors import MismatchError, OutputError, TaskVecError
from ..merging import check_weights, merge_states
from ..methods import get_method, method_names
from ..swap import current, swap, unswap
from ..sweep import Objective, default_out, flat_row, vector_names
from ..taskvector import check_scale

LIVE_BN = ("merge", "geometric", "base")  # recalibrate re-estimates statistics on images: not a live policy
PART_GROUPS = ("backbone", "neck", "head")
METRIC = "map50_95"
MAX_IMAGES = 200  # images offered per dataset (evenly spaced over a larger val split)
CACHE_PANELS = 256  # base/fine-tune panels kept (least recently used dropped first)


class StudioError(TaskVecError):
    """Bad studio input (one sentence)."""


# ----------------------------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """What the sliders say: a weight per vector, a scale per part group, the method and its parameters, BN."""

    weights: tuple[tuple[str, float], ...]
    parts: tuple[tuple[str, float], ...]
    method: str = "task_arithmetic"
    params: tuple[tuple[str, Any], ...] = ()
    bn: str = "merge"
    seed: int = 0
    orthogonalize: bool = False

    @classmethod
    def make(cls, weights: Mapping[str, float], parts: Mapping[str, float] | None = None, method: str = "task_arithmetic", params: Mapping[str, Any] | None = None, bn: str = "merge", seed: int = 0, orthogonalize: bool = False) -> Recipe:
        return cls(tuple((k, float(v)) for k, v in weights.items()), tuple((k, float(v)) for k, v in (parts or {}).items()), method, tuple(sorted((params or {}).items())), bn, int(seed), bool(orthogonalize))

    @property
    def point(self) -> dict[str, float]:
        """Sweep-style columns: vector weights and part scales (``sweep.merge_recipe`` reads them the same way)."""
        return {**dict(self.weights), **dict(self.parts)}

    def as_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "parts": dict(self.parts), "method": self.method, "params": dict(self.params), "bn": self.bn, "seed": self.seed, "orthogonalize": self.orthogonalize}

    @property
    def key(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, default=str)

    @property
    def is_one_vector_arithmetic(self) -> bool:
        return len(self.weights) == 1 and self.method == "task_arithmetic" and not self.orthogonalize

    def merge_arguments(self) -> dict[str, Any]:
        """``scale``/``weights`` for ``merge``/``merge_states``: one task-arithmetic vector folds its weight into the
        part scales (so the hot-swap and the saved merge compute the very same ``base + scale·τ``)."""
        parts = dict(self.parts)
        if self.is_one_vector_arithmetic:
            w = self.weights[0][1]
            return {"scale": {p: w * s for p, s in parts.items()}, "weights": None}
        return {"scale": parts, "weights": [w for _, w in self.weights]}

    def describe(self) -> str:
        ws = ", ".join(f"{n} {w:g}" for n, w in self.weights)
        ps = ", ".join(f"{p} {s:g}" for p, s in self.parts if s != 1.0)
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params)
        extra = [x for x in (ps and f"parts {ps}", params, self.orthogonalize and "orthogonalized", self.bn != "merge" and f"bn {self.bn}") if x]
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
    """What the page shows: the recipe, one row per image, the prediction settings and the time it took."""

    recipe: Recipe
    rows: list[ImageView]
    settings: dict[str, Any]  # imgsz, conf, iou
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.as_dict(), "settings": self.settings, "images": [r.as_dict() for r in self.rows], "timings_ms": self.timings}


# ----------------------------------------------------------------------------------------------- studio
class Studio:
    """One base, its task vectors and datasets, served from ONE hot-swapped YOLO (see the module doc).

    ``vectors``: task-vector files, fine-tuned checkpoints (bare names resolve through ``weights_dir``) or
    TaskVectors. ``data``: dataset yamls (bare names through ``datasets_dir``); their val images are offered.
    ``imgsz`` defaults to the base's training size. ``conf``/``iou``: prediction thresholds. ``out``: run folder
    (default ``runs_dir/taskvec/studioN``), created on the first score or save. Everything is checked here, before
    any server starts; bad input raises a one-sentence ``TaskVecError``.
    """

    def __init__(
        self,
        base: Any,
        vectors: Sequence[Any],
        data: Sequence[str | os.PathLike] | str,
        *,
        method: str = "task_arithmetic",
        params: Mapping[str, Any] | None = None,
        bn: str = "merge",
        seed: int = 0,
        imgsz: int | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        batch: int = 16,
        device: Any = None,
        out: str | os.PathLike | None = None,
        force: bool = False,
    ) -> None:
        if isinstance(vectors, (str, os.PathLike, TaskVector)):
            vectors = [vectors]
        if not vectors:
            raise StudioError("the studio needs at least one task vector (vectors=) or fine-tuned checkpoint (models=).")
        data = [data] if isinstance(data, (str, os.PathLike)) else list(data or [])
        if not data:
            raise StudioError("the studio needs data= (one or more dataset yamls whose val images it shows and scores).")
        self.conf, self.iou = _threshold(conf, "conf"), _threshold(iou, "iou")
        check_method(method, params or {}, bn, len(vectors))  # cheap checks first, then data, then the models
        self.images = {dataset_name(d): _spread(image_files(d, "val"), MAX_IMAGES) for d in data}  # data errors first: cheap
        self.data = [str(d) for d in data]
        self.base = load_model(base)
        self.vectors = as_vectors(self.base, list(vectors))
        check_fingerprints(self.base, self.vectors, force)
        carried = next((tv for tv in self.vectors if tv.absolute), None)
        if carried is not None:
            raise MismatchError(f"'{carried.meta.get('name', '?')}' carries {len(carried.absolute)} tensors the base lacks (another class set or a mask head), so it cannot be hot-swapped; merge it with yolo-taskvec merge (classes=union) instead.")
        self.names = vector_names(self.vectors)
        self.groups = [g for g in PART_GROUPS if any(tv.part_of(k).split(".")[0] == g for tv in self.vectors for k in tv.deltas)]
        self.force = force
        self.imgsz = int(imgsz or self.base.train_args.get("imgsz") or 640)
        self.batch, self.device = int(batch), device
        self.inputs = [p for p in (input_file(x) for x in [base, *vectors]) if p is not None]
        self.out = Path(out) if out is not None else default_out("studio")
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"out={self.out} is a file; give a folder for the studio's outputs.")
        self.initial = self.check(Recipe.make({n: 0.5 for n in self.names}, {g: 1.0 for g in self.groups}, method, params, bn, seed))
        self.model = _live_model(base, self.base)
        self.lock = threading.RLock()
        self._shown: str | None = None  # what is swapped in: None (base), "ft:<name>" or a recipe key
        self._cache: OrderedDict[tuple, Panel] = OrderedDict()
        self._evaluator: Any = None
        self.references: dict[str, dict[str, dict[str, float]]] = {}
        self.reference_for: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.saved: list[Path] = []

    # ------------------------------------------------------------------ recipes
    def methods(self) -> list[str]:
        """Methods that accept this many vectors."""
        out = []
        for name in method_names():
            m = get_method(name)
            if m.min_models <= len(self.vectors) and (m.max_models is None or len(self.vectors) <= m.max_models):
                out.append(name)
        return out

    def check(self, recipe: Recipe) -> Recipe:
        """The recipe with its method parameters resolved; one sentence for anything the studio cannot show."""
        method, params = check_method(recipe.method, dict(recipe.params), recipe.bn, len(self.vectors))
        weights = dict(recipe.weights)
        if list(weights) != self.names:
            raise StudioError(f"the recipe weighs {', '.join(weights) or 'no vectors'}; this studio's vectors are {', '.join(self.names)}.")
        check_weights([check_scale(w, f"weight of {n}") for n, w in weights.items()], len(self.names))
        parts = {g: check_scale(dict(recipe.parts).get(g, 1.0), f"scale of {g}") for g in self.groups}
        return Recipe.make(weights, parts, method.name, params, recipe.bn, recipe.seed, recipe.orthogonalize)

    def recipe(self, weights: Mapping[str, float] | Sequence[float], parts: Mapping[str, float] | Sequence[float] | None = None, method: str | None = None, params: Mapping[str, Any] | None = None, bn: str | None = None, seed: int | None = None, orthogonalize: bool = False) -> Recipe:
        """A checked recipe from slider values (sequences follow ``names`` and ``groups``)."""
        if not isinstance(weights, Mapping):
            weights = dict(zip(self.names, weights))
        if parts is not None and not isinstance(parts, Mapping):
            parts = dict(zip(self.groups, parts))
        i = self.initial
        method = method or i.method
        if params is None:  # the starting parameters belong to the starting method
            params = dict(i.params) if method == i.method else {}
        return self.check(Recipe.make(weights, parts or dict(i.parts), method, params, bn or i.bn, i.seed if seed is None else seed, orthogonalize))

    # ------------------------------------------------------------------ swapping
    def _put(self, key: str | None, vector: TaskVector | None = None, scale: Any = 1.0, bn: str = "merge") -> None:
        """Make the live model hold ``key`` (None: the base): unswap what is in, swap the new vector in."""
        if self._shown == key:
            return
        if current(self.model) is not None:
            unswap(self.model)
        self._shown = None
        if vector is not None:
            swap(self.model, vector, scale, bn=bn, force=self.force)
        self._shown = key

    def show(self, recipe: Recipe) -> dict[str, float]:
        """Swap ``recipe`` into the live model; returns timings (ms) of the merge and the swap."""
        with self.lock:
            if self._shown == recipe.key:
                return {"merge_ms": 0.0, "swap_ms": 0.0}
            args = recipe.merge_arguments()
            t0 = time.perf_counter()
            if recipe.is_one_vector_arithmetic:
                vector, scale = self.vectors[0], args["scale"]
            else:
                vector, scale = self.merged_difference(recipe), 1.0
            t1 = time.perf_counter()
            self._put(recipe.key, vector, scale, recipe.bn if recipe.is_one_vector_arithmetic else "merge")
            return {"merge_ms": 1000 * (t1 - t0), "swap_ms": 1000 * (time.perf_counter() - t1)}

    def merged_difference(self, recipe: Recipe) -> TaskVector:
        """``merge_states(...) − base`` over the tensors the vectors touch: the vector that, swapped in with scale 1,
        gives the merge (``merge_states`` is the call ``api.merge`` makes)."""
        args = recipe.merge_arguments()
        keys = sorted({k for tv in self.vectors for k in tv.deltas})
        base = {k: self.base.state[k] for k in keys}
        merged, _ = merge_states(base, self.vectors, recipe.method, weights=args["weights"], scale=args["scale"], params=dict(recipe.params), bn=recipe.bn, seed=recipe.seed, layout=self.base.layout, orthogonalize=recipe.orthogonalize)
        deltas = {k: merged[k] - base[k] for k in keys if base[k].is_floating_point() and not k.endswith("num_batches_tracked")}
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
        """Base and fine-tune panels of an image (cached per image content and threshold)."""
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

    def view(self, recipe: Recipe, images: Sequence[tuple[str, str]], conf: float | None = None) -> View:
        """Base, fine-tune and merge panels for ``images`` (``(key, path)`` pairs) under ``recipe``."""
        with self.lock:
            t0 = time.perf_counter()
            refs = [self.reference_panels(path, conf) for _, path in images]
            t1 = time.perf_counter()
            timings = self.show(recipe)
            t2 = time.perf_counter()
            merged = [self.panel(path, conf) for _, path in images]
            t3 = time.perf_counter()
            rows = [ImageView(key, str(path), b, f, m) for (key, path), (b, f), m in zip(images, refs, merged)]
            timings.update(references_ms=1000 * (t1 - t0), predict_ms=1000 * (t3 - t2), total_ms=1000 * (t3 - t0))
            settings = {"imgsz": self.imgsz, "conf": self.conf if conf is None else conf, "iou": self.iou}
            return View(recipe, rows, settings, {k: round(v, 1) for k, v in timings.items()})

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

    def score(self, recipe: Recipe) -> dict[str, Any]:
        """Validate the merge on every dataset, add the row, rewrite ``studio.{json,csv,png}`` in the run folder."""
        with self.lock:
            t0 = time.perf_counter()
            self.score_references()
            self.show(recipe)
            metrics = self.evaluator(self.model)
            row = {**flat_row(recipe.point, metrics, self.objective), "recipe": recipe.describe(), "seconds": round(time.perf_counter() - t0, 2)}
            self.rows.append(row)
            self.write_results()
            return row

    @property
    def axes(self) -> list[str]:
        return [*self.names, *self.groups]

    def write_results(self) -> dict[str, Path]:
        """``studio.png`` (``plots.plot_sweep``, the sweep's plot), ``studio.json`` and ``studio.csv``, atomically."""
        from ..plots import plot_sweep
        from ..sweep import to_csv_text

        folder = self._folder()
        label = self.objective.label
        files = {"png": plot_sweep(self.rows, self.axes, self.evaluator.names, METRIC, folder / "studio.png", references=self.references, reference_for=self.reference_for, objective_label=label)}
        doc = {"base": self.base.source, "vectors": self.names, "datasets": self.evaluator.names, "metric": METRIC, "objective": label, "references": self.references, "reference_for": self.reference_for, "rows": self.rows}
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

    def merged_model(self, recipe: Recipe) -> Any:
        """The merge as a standalone ``ultralytics.YOLO`` with its provenance (``api.merge``, same arguments)."""
        args = recipe.merge_arguments()
        return merge(self.base, self.vectors, recipe.method, scale=args["scale"], weights=args["weights"], bn=recipe.bn, seed=recipe.seed, orthogonalize=recipe.orthogonalize, force=self.force, imgsz=self.imgsz, **dict(recipe.params))

    def save(self, recipe: Recipe, path: str | os.PathLike | None = None) -> Path:
        """Write the merge into the run folder (``merged.pt``, ``merged2.pt``, ...) with ``yolo_taskvec.save``:
        atomic, never over an input."""
        from ultralytics.utils.files import increment_path

        with self.lock:
            target = Path(path) if path is not None else increment_path(self._folder() / "merged.pt", sep="")
            check_output(target, self.inputs)
            saved = save(self.merged_model(recipe), target, inputs=self.inputs)
            self.saved.append(Path(saved))
            return Path(saved)

    def summary(self) -> str:
        vectors = ", ".join(self.names)
        return f"base {self.base.name} · vectors {vectors} · data {', '.join(self.datasets)} · imgsz {self.imgsz}"


# ----------------------------------------------------------------------------------------------- helpers
def check_method(name: str, params: Mapping[str, Any], bn: str, n: int) -> tuple[Any, dict[str, Any]]:
    """``(method, resolved params)`` for ``n`` vectors, and a BatchNorm policy the studio can show live."""
    method = get_method(name)
    method.check_count(n)
    resolved = method.resolve(dict(params))
    if bn not in LIVE_BN:
        raise StudioError(f"the studio shows the BatchNorm policies {', '.join(LIVE_BN)}; '{bn}' is not one of them (bn=recalibrate re-estimates statistics on images: use yolo-taskvec merge or sweep with bn=recalibrate).")
    return method, resolved


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
