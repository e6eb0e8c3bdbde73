"""Scored runs, the engine under ``sweep``, ``search`` and ``greedy_soup``: candidates of one recipe, each merged and
scored, in one results table that survives interruption.

* ``Scoring``: what a candidate is scored on (datasets, the selection split, references, metric, objective, val
  settings), validated when built, like the ``Recipe``.
* Selection vs report: with ``select=`` every candidate is scored on a selection set (``train:0.2`` = a fixed,
  seeded 20 % of each dataset's train images; or one yaml per dataset) and on the report set (the ``split`` of
  ``data``, val by default). The best candidate is chosen on the selection objective only; the table prints both.
  Without ``select=`` the choice is made on the reported data, and the run says so.
* ``Objective``: each dataset's metric divided by its reference model's, reduced by mean or min (or a function).
* ``RunResult``: the one result-table type (rows, best row, references, files, the rebuilt best model, plot).
* ``ResultsLog``: the rows in ``<kind>.json`` (+ CSV), rewritten atomically after each candidate; a run with the
  same identity (recipe, input hashes, datasets by resolved path and content, scoring) resumes from it.
* Run folders follow Ultralytics: ``project``/``name`` (default ``runs_dir/taskvec/<kind>``, incremented unless
  ``exist_ok``), or ``out=`` for one exact folder. Nothing is created before the inputs are validated and loaded.
* Execution: ``drive`` is the one loop of every run: a ``Proposer`` hands out points (``ask``) and is told their
  objectives (``tell``); points in the results file are answered from it, new ones go to a backend (``LocalBackend``
  here, one at a time; ``backends.RayBackend`` on a cluster) while it has a free runner.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import check_output_folder, write_text_atomic
from .build import Prepared, build_merged, prepare
from .checkpoint import LoadedModel, load_model, to_yolo
from .data import (
    dataset_folders,
    dataset_identity,
    dataset_name,
    image_files,
    load_data,
)
from .errors import OutputError, TaskVecError
from .limits import MAX_BATCH
from .merging import vector_id
from .plain import plain
from .recipe import (
    MAX_IMGSZ,
    MIN_IMGSZ,
    Recipe,
    RecipeError,
    _suggest,
    as_recipe,
    check_device,
    parse_bool,
    parse_int,
    parse_number,
)

Metrics = dict[str, dict[str, float]]  # dataset -> metric -> value
Evaluate = Callable[[Any], Metrics]
Point = dict[str, float]  # axis -> value
OBJECTIVES = ("mean", "min")
METRICS = ("map50_95", "map50", "precision", "recall", "mask_map50_95", "mask_map50", "mask_precision", "mask_recall")
SPLITS = ("val", "test", "train")
RESULTS_FORMAT = "yolo-taskvec-results/2"
SELECT_SUFFIX = ".select"
SELECT_PREFIX = "train:"


# ----------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Scoring:
    """How candidates are scored: report data, selection data, references, metric, objective and val settings."""

    data: tuple[str, ...]
    select: Any = None  # None | "train:<fraction>" | tuple of yamls (one per dataset)
    reference: Any = None
    metric: str = "map50_95"
    objective: Any = "mean"
    imgsz: int | None = None
    batch: int = 16
    device: str | None = None
    half: bool | None = None
    conf: float | None = None
    iou: float = 0.7
    split: str = "val"
    select_seed: int = 0
    threads: int | None = None

    @classmethod
    def build(cls, data: Any = None, **fields: Any) -> Scoring:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in fields:
            if key not in known:
                raise RecipeError(f"unknown scoring key '{key}'; {_suggest(key, sorted(known))}")
        return cls(data=_yamls(data, "data"), **fields).validated()

    def validated(self) -> Scoring:
        names = [dataset_name(d) for d in self.data]
        if len(set(names)) < len(names):
            raise RecipeError(f"two datasets are both named '{next(n for n in names if names.count(n) > 1)}' (the yaml file's stem names a dataset's columns); rename one file.")
        objective = self.objective
        if isinstance(objective, str) and objective not in OBJECTIVES:
            raise RecipeError(f"unknown objective '{objective}'; {_suggest(objective, OBJECTIVES)} (or pass a function).")
        if not isinstance(objective, str) and not callable(objective):
            raise RecipeError(f"objective must be mean, min or a function, got {objective!r}.")
        if self.metric not in METRICS:
            raise RecipeError(f"unknown metric '{self.metric}'; {_suggest(self.metric, METRICS)}")
        conf = None if self.conf is None else parse_number(self.conf, "conf")
        iou = parse_number(self.iou, "iou")
        if (conf is not None and not 0.0 <= conf <= 1.0) or not 0.0 <= iou <= 1.0:
            raise RecipeError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}.")
        return dataclasses.replace(
            self,
            select=_check_select(self.select, len(self.data)),
            metric=self.metric,
            imgsz=None if self.imgsz is None else parse_int(self.imgsz, "imgsz", MIN_IMGSZ, MAX_IMGSZ),
            batch=parse_int(self.batch, "batch", 1, MAX_BATCH),
            device=check_device(self.device),
            half=None if self.half is None else parse_bool(self.half, "half"),
            conf=conf,
            iou=iou,
            split=_choice_split(self.split),
            select_seed=parse_int(self.select_seed, "select_seed", 0, 2**31),
            threads=None if self.threads is None else parse_int(self.threads, "threads", 1, 4096),
        )

    @property
    def datasets(self) -> list[str]:
        return [dataset_name(d) for d in self.data]

    @property
    def selects(self) -> bool:
        return self.select is not None

    def evaluator_kwargs(self, imgsz: int) -> dict[str, Any]:
        return dict(imgsz=imgsz, batch=self.batch, device=self.device, half=self.half, conf=self.conf, iou=self.iou, verbose=False, progress=False, threads=self.threads)

    def where_selected(self) -> str:
        if not self.selects:
            return f"the reported {self.split} data (no separate selection split)"
        if isinstance(self.select, str):
            return f"a seeded {float(self.select[len(SELECT_PREFIX):]):.0%} of each dataset's train images (seed {self.select_seed})"
        return "the selection datasets " + ", ".join(self.select)


def _yamls(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [v for v in str(value).split(",")] if isinstance(value, (str, os.PathLike)) else list(value)
    out = tuple(str(v).strip() for v in items if str(v).strip())
    for y in out:
        if Path(y).suffix.lower() not in (".yaml", ".yml"):
            raise RecipeError(f"{what}: {y} is not a dataset .yaml file.")
    return out


def _check_select(select: Any, n: int) -> Any:
    if select is None or (isinstance(select, str) and select.strip().lower() in ("", "none")):
        return None
    if isinstance(select, str) and select.strip().startswith(SELECT_PREFIX):
        fraction = parse_number(select.strip()[len(SELECT_PREFIX):], "select fraction")
        if not 0.0 < fraction <= 1.0:
            raise RecipeError(f"select={select}: the fraction of train images must lie in (0, 1].")
        return f"{SELECT_PREFIX}{fraction:g}"
    yamls = _yamls(select, "select")
    if len(yamls) != n:
        raise RecipeError(f"select= names {len(yamls)} dataset yamls for {n} datasets; give one per dataset (in data= order) or train:<fraction>.")
    return yamls


def _choice_split(split: Any) -> str:
    if split not in SPLITS:
        raise RecipeError(f"unknown split '{split}'; {_suggest(str(split), SPLITS)}")
    return str(split)


# ----------------------------------------------------------------------------------------------- keyword routing
RUN_OPTIONS = ("out", "project", "name", "exist_ok", "plot", "evaluator", "callback", "verbose")


def split_fields(fields: Mapping[str, Any], method: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keyword fields split into ``(recipe fields, scoring fields)``; ``device``/``imgsz`` go to both.

    Unknown keys are refused with the closest names of either kind (method parameters included).
    """
    from .methods import get_method

    recipe_keys = {f.name for f in dataclasses.fields(Recipe)} | {"weights", "models", "vectors"}
    try:
        recipe_keys |= {p.name for p in get_method(fields.get("method", method or "task_arithmetic")).params}
    except TaskVecError:
        pass  # the recipe reports the unknown method
    scoring_keys = {f.name for f in dataclasses.fields(Scoring)}
    recipe, scoring = {}, {}
    for key, value in fields.items():
        if key in ("device", "imgsz"):
            recipe[key] = scoring[key] = value
        elif key in recipe_keys:
            recipe[key] = value
        elif key in scoring_keys:
            scoring[key] = value
        else:
            raise RecipeError(f"unknown key '{key}'; {_suggest(key, sorted(recipe_keys | scoring_keys | set(RUN_OPTIONS)))}")
    return recipe, scoring


# ----------------------------------------------------------------------------------------------- objective
@dataclass
class Objective:
    """Normalized metric per dataset (metric / reference metric) and its reduction to one number."""

    metric: str = "map50_95"
    references: Metrics | None = None  # dataset -> metrics of that dataset's reference model
    reduce: str | Callable[[dict[str, float]], float] = "mean"

    def __post_init__(self) -> None:
        if isinstance(self.reduce, str) and self.reduce not in OBJECTIVES:
            raise TaskVecError(f"unknown objective '{self.reduce}'; choose {', '.join(OBJECTIVES)} or pass a function.")

    @property
    def label(self) -> str:
        from .plots import metric_label

        kind = self.reduce if isinstance(self.reduce, str) else getattr(self.reduce, "__name__", "objective")
        return f"{kind} {'normalized ' if self.references else ''}{metric_label(self.metric)}"

    def value_of(self, metrics: Mapping[str, float], dataset: str) -> float:
        if self.metric not in metrics:
            raise TaskVecError(f"dataset {dataset} has no metric '{self.metric}' (it has {', '.join(metrics)}).")
        return float(metrics[self.metric])

    def normalized(self, metrics: Metrics) -> dict[str, float]:
        """Each dataset's metric divided by its reference's (the raw metric without references)."""
        out = {}
        for ds, m in metrics.items():
            value = self.value_of(m, ds)
            if self.references:
                ref = self.value_of(self.references[ds], ds)
                if ref <= 0:
                    raise TaskVecError(f"the reference model scores {ref:g} {self.metric} on {ds}, so it cannot normalize; choose another reference.")
                value /= ref
            out[ds] = value
        return out

    def __call__(self, metrics: Metrics) -> float:
        norm = self.normalized(metrics)
        if callable(self.reduce):
            return float(self.reduce(norm))
        values = list(norm.values())
        return min(values) if self.reduce == "min" else sum(values) / len(values)


def objective_name(objective: Any) -> str:
    """A stable name of an objective (a function's qualified name), for results files."""
    return objective if isinstance(objective, str) else getattr(objective, "__qualname__", type(objective).__name__)


# ----------------------------------------------------------------------------------------------- references
def reference_sources(reference: Any, datasets: Sequence[str]) -> dict[str, Any]:
    """``{dataset: model}`` from one model, a list (one per dataset) or a mapping by dataset name or yaml."""
    if reference is None:
        return {}
    if isinstance(reference, str) and "," in reference:
        reference = [r.strip() for r in reference.split(",") if r.strip()]
    if isinstance(reference, Mapping):
        given = {dataset_name(k): v for k, v in reference.items()}
        unknown = [k for k in given if k not in datasets]
        if unknown:
            raise TaskVecError(f"reference for unknown dataset '{unknown[0]}'; the datasets are {', '.join(datasets)}.")
        missing = [d for d in datasets if d not in given]
        if missing:
            raise TaskVecError(f"no reference model for dataset '{missing[0]}'; name one per dataset or a single one for all.")
        return {d: given[d] for d in datasets}
    if isinstance(reference, (list, tuple)):
        if len(reference) == 1:
            return {d: reference[0] for d in datasets}
        if len(reference) != len(datasets):
            raise TaskVecError(f"got {len(reference)} reference models for {len(datasets)} datasets; give one per dataset or one for all.")
        return dict(zip(datasets, reference))
    return {d: reference for d in datasets}


def reference_label(source: Any) -> str:
    """Short name of a reference: ``base``, a checkpoint's stem, or the model's own label."""
    if isinstance(source, LoadedModel):
        return source.name
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return "base" if text == "base" else Path(text).stem
    return getattr(source, "model_name", None) or getattr(source, "source", None) or type(source).__name__


def reference_model(source: Any, base: LoadedModel) -> Any:
    """A fresh, disposable YOLO of a reference (``"base"`` is the base itself)."""
    loaded = base if (isinstance(source, str) and source == "base") else load_model(source)
    return to_yolo(copy.deepcopy(loaded.module), label=reference_label(source), train_args=loaded.train_args)


def check_reference_files(sources: Mapping[str, Any]) -> None:
    """Reference files exist (checked before any model is loaded)."""
    from .checkpoint import resolve_weights

    for src in sources.values():
        if isinstance(src, (str, os.PathLike)) and str(src) != "base":
            resolve_weights(src, (".pt", ".safetensors"))


# ----------------------------------------------------------------------------------------------- selection data
def selection_views(scoring: Scoring, folder: str | os.PathLike) -> list[str]:
    """One yaml per dataset, named ``<dataset>.select.yaml`` in ``folder``, holding the selection images.

    ``train:<f>``: a seeded ``f`` of each dataset's train images (sorted, then sampled with ``select_seed``), listed
    in a text file (labels are found beside the original images); explicit yamls are re-pointed, unchanged.
    """
    folder = Path(folder)
    views = []
    for yaml, name, chosen in zip(scoring.data, scoring.datasets, scoring.select if not isinstance(scoring.select, str) else [None] * len(scoring.data)):
        info = load_data(chosen or yaml, split="train" if chosen is None else scoring.split)
        if chosen is None:
            files = image_files(yaml, "train")
            fraction = float(scoring.select[len(SELECT_PREFIX):])
            k = max(1, round(fraction * len(files)))
            picked = sorted(random.Random(scoring.select_seed).sample(files, k)) if k < len(files) else files
            listing = folder / f"{name}{SELECT_SUFFIX}.txt"
            listing.write_text("".join(f"{p.resolve()}\n" for p in picked), encoding="utf-8")
            images = str(listing)
        else:
            images = info[scoring.split]
        view = folder / f"{name}{SELECT_SUFFIX}.yaml"
        doc = {"path": str(info["path"]), "train": images, "val": images, "names": {int(k): str(v) for k, v in info["names"].items()}}
        view.write_text(json.dumps(doc, indent=1), encoding="utf-8")  # JSON is valid YAML
        views.append(str(view))
    return views


def view_digests(views: Sequence[str]) -> dict[str, str]:
    """``{view file name: sha256 of the images it lists}`` (the listing's content, not where it was written), so
    views built on two machines from the same dataset files compare equal."""
    out = {}
    for view in views:
        images = str(json.loads(Path(view).read_text(encoding="utf-8"))["val"])
        text = Path(images).read_text(encoding="utf-8") if images.endswith(".txt") and Path(images).is_file() else images
        out[Path(view).name] = hashlib.sha256(text.encode()).hexdigest()
    return out


# ----------------------------------------------------------------------------------------------- the scorer
MERGE_REFUSALS = (RecipeError, TaskVecError)  # a candidate's recipe or merge that cannot be built: recorded, not fatal


@dataclass(frozen=True)
class Refused:
    """What a trial returns instead of metrics when the merge refuses its candidate: the one-sentence reason."""

    reason: str


class Scorer:
    """Merges a candidate (a point over recipe fields) and scores it on the report (and selection) datasets."""

    def __init__(self, prepared: Prepared, axes: Mapping[str, str], evaluate: Evaluate, scoring: Scoring, kind: str):
        self.prepared, self.axes, self.evaluate, self.scoring, self.kind = prepared, dict(axes), evaluate, scoring, kind
        self.report = Objective(scoring.metric, None, scoring.objective)
        self.select = Objective(scoring.metric, None, scoring.objective) if scoring.selects else None
        self.evaluations = 0

    @property
    def choice_column(self) -> str:
        return "select_objective" if self.select is not None else "objective"

    def recipe_at(self, point: Mapping[str, float]) -> Recipe:
        """The recipe of a candidate: the run's recipe with the point's scale, weights and method parameters."""
        return recipe_at(self.prepared.recipe, self.axes, self.prepared.names, point)

    def model(self, point: Mapping[str, float], selection: dict[str, Any] | None = None) -> Any:
        """The merged ``ultralytics.YOLO`` at a point."""
        return build_merged(self.prepared, self.recipe_at(point), selection=selection)

    def measure(self, point: Mapping[str, float]) -> tuple[Metrics, float]:
        """Merge and evaluate a point: ``(metrics, seconds)``, or ``(Refused(reason), seconds)`` when the merge refuses
        the candidate (e.g. scales that make BatchNorm variances non-positive). The merge and build run on the evaluator's CPU threads
        (as its inference does), so a whole candidate keeps to the threads it was given."""
        from .evaluation import torch_threads

        t0 = time.perf_counter()
        with torch_threads(getattr(self.evaluate, "threads", None)):
            try:
                model = self.model(point)
            except MERGE_REFUSALS as e:
                return Refused(str(e)), round(time.perf_counter() - t0, 3)
            metrics = self.evaluate(model)
        self.evaluations += 1
        return metrics, round(time.perf_counter() - t0, 3)

    def score(self, point: Mapping[str, float]) -> dict[str, Any]:
        """Merge, evaluate and return the table row of a point (with ``seconds``); a refused merge is a row too."""
        metrics, seconds = self.measure(point)
        row = self.row(point, metrics)
        row["seconds"] = seconds
        return row

    def row(self, point: Mapping[str, float], metrics: Metrics | Refused) -> dict[str, Any]:
        """Axis values, ``<dataset>/<metric>`` and ``/norm`` columns and the objective(s) of one scored candidate; a
        refused one has its reason in ``refused`` and no score, so one bad corner of a grid does not end the run."""
        if isinstance(metrics, Refused):
            return {**point, "refused": metrics.reason, self.choice_column: math.nan, "objective": math.nan}
        report = {ds: m for ds, m in metrics.items() if not ds.endswith(SELECT_SUFFIX)}
        row: dict[str, Any] = dict(point)
        _columns(row, report, self.report, "")
        if self.select is not None:
            chosen = {ds[: -len(SELECT_SUFFIX)]: m for ds, m in metrics.items() if ds.endswith(SELECT_SUFFIX)}
            _columns(row, chosen, self.select, SELECT_SUFFIX)
            row["select_objective"] = self.select(chosen)
        row["objective"] = self.report(report)
        return row

    def set_references(self, references: Metrics | None) -> None:
        """Reference metrics of every evaluated dataset (report and selection names)."""
        if references is None:
            return
        self.report.references = {ds: m for ds, m in references.items() if not ds.endswith(SELECT_SUFFIX)}
        if self.select is not None:
            self.select.references = {ds[: -len(SELECT_SUFFIX)]: m for ds, m in references.items() if ds.endswith(SELECT_SUFFIX)}


def _columns(row: dict[str, Any], metrics: Metrics, objective: Objective, suffix: str) -> None:
    for ds, m in metrics.items():
        for key, value in m.items():
            row[f"{ds}{suffix}/{key}"] = float(value)
    if objective.references:
        for ds, value in objective.normalized(metrics).items():
            row[f"{ds}{suffix}/norm"] = value


def recipe_at(recipe: Recipe, axes: Mapping[str, str], names: Sequence[str], point: Mapping[str, float]) -> Recipe:
    """``recipe`` with a point applied: ``scale`` / per-part scales (other parts keep the recipe's), per-input weights
    (by input name) and method parameters. ``axes`` maps each point key to ``scale``, ``part``, ``input`` or ``param``."""
    changes: dict[str, Any] = {}
    parts = {k: float(v) for k, v in point.items() if axes.get(k) == "part"}
    if "scale" in point:
        changes["scale"] = float(point["scale"])
    elif parts:
        current = recipe.scale if isinstance(recipe.scale, Mapping) else {"*": float(recipe.scale)}
        changes["scale"] = {**current, **parts}
    if any(axes.get(k) == "input" for k in point):
        changes["weights"] = [float(point.get(n, w)) for n, w in zip(names, recipe.weights)]
    params = {k: v for k, v in point.items() if axes.get(k) == "param"}
    if params:
        method = recipe.method
        from .methods import get_method

        kinds = {p.name: type(p.default) for p in get_method(method).params}
        changes["params"] = {**recipe.params, **{k: (int(round(v)) if kinds.get(k) is int else v) for k, v in params.items()}}
    return recipe.replace(**changes) if changes else recipe


def axis_kinds(keys: Iterable[str], names: Sequence[str], method: str) -> dict[str, str]:
    """What each grid/search key sets: ``scale``, a ``part`` scale, an ``input`` weight or a method ``param``.

    Input names are the recipe's input names (file stems by default) or their 0-based index.
    """
    from .methods import get_method
    from .recipe import PART_KEYS

    params = {p.name: p for p in get_method(method).params}
    kinds: dict[str, str] = {}
    for key in keys:
        if key == "scale":
            kinds[key] = "scale"
        elif key in PART_KEYS:
            kinds[key] = "part"
        elif key in names:
            kinds[key] = "input"
        elif key in params:
            if not isinstance(params[key].default, (int, float)) or isinstance(params[key].default, bool):
                raise RecipeError(f"method parameter '{key}' is not numeric, so it cannot be a sweep/search axis.")
            kinds[key] = "param"
        else:
            choices = ["scale", *PART_KEYS, *names, *params]
            raise RecipeError(f"unknown axis '{key}': an axis is scale, a part, an input name or a method parameter; {_suggest(key, choices)}")
    if "scale" in kinds and any(k == "part" for k in kinds.values()):
        raise RecipeError("give either one 'scale' axis or per-part axes (the recipe's scale covers the other parts), not both.")
    return kinds


def input_axis_names(recipe: Recipe) -> list[str]:
    """Input names known before anything is loaded: the recipe's names, else file stems, else ``v<i>``."""
    from .build import input_names

    class _Stub:  # input_names reads only the vector's meta
        def __init__(self, item: Any) -> None:
            meta = getattr(item.source, "meta", None) or {}
            self.meta = {"name": Path(str(item.source)).stem if item.is_path else meta.get("name")}

    return input_names(recipe, [_Stub(i) for i in recipe.inputs])


# ----------------------------------------------------------------------------------------------- results file
class ResultsLog:
    """Rows of a run kept in a json file rewritten atomically after each candidate (and a CSV beside it).

    Opening an existing file resumes it: its rows are reused by ``find``; a file made by a different run is refused.
    The folder is created at the first write.
    """

    def __init__(self, path: str | os.PathLike | None, kind: str, config: Mapping[str, Any], inputs: Iterable[Any] = ()):
        self.path = Path(path) if path is not None else None
        self.kind, self.config = kind, plain(dict(config))
        self.inputs = [p for p in inputs if p is not None]
        self.rows: list[dict[str, Any]] = []
        self.references: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._index: dict[str, dict[str, Any]] = {}
        self.resumed = 0  # rows read back from an existing file
        if self.path is not None and self.path.exists():
            self._resume()

    @property
    def csv_path(self) -> Path:
        return self.path.with_suffix(".csv")

    def _resume(self) -> None:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise OutputError(f"results file {self.path} exists but is not a readable results json ({type(e).__name__}); choose another out= or delete it.") from e
        if not isinstance(saved, dict) or saved.get("format") != RESULTS_FORMAT or saved.get("kind") != self.kind:
            raise OutputError(f"{self.path} is not a {self.kind} results file of this yolo-taskvec; choose another out=.")
        old = saved.get("config", {})
        diff = sorted(k for k in {*old, *self.config} if old.get(k) != self.config.get(k))
        if diff:
            raise OutputError(
                f"{self.path} holds a different {self.kind} ({diff[0]}: {_short(old.get(diff[0]))} there, {_short(self.config.get(diff[0]))} now); "
                "choose another out= or delete the file to start over."
            )
        self.references = saved.get("references") or {}
        for row in saved.get("rows", []):
            self._add(row)
        self.resumed = len(self.rows)

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._index[point_key(row["point"])] = row

    def find(self, point: Mapping[str, float]) -> dict[str, Any] | None:
        return self._index.get(point_key(point))

    def add(self, point: Mapping[str, float], row: Mapping[str, Any]) -> dict[str, Any]:
        entry = {"point": dict(point), **row}
        self._add(entry)
        self.save()
        return entry

    def save(self, **extra: Any) -> None:
        self.extra.update(extra)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": RESULTS_FORMAT, "kind": self.kind, "config": self.config, "references": self.references, **plain(self.extra), "rows": self.rows}
        write_text_atomic(self.path, json.dumps(doc, indent=1, default=str), self.inputs)
        write_text_atomic(self.csv_path, to_csv_text(table_rows(self.rows)), self.inputs)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def point_key(point: Mapping[str, float]) -> str:
    """A canonical key of a point (rounded to 1e-9), used to find finished points."""
    return json.dumps({k: round(float(v), 9) for k, v in sorted(point.items())})


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the internal ``point`` entry."""
    return [{k: v for k, v in r.items() if k != "point"} for r in rows]


def to_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], mark: int | None = None, plain_columns: Iterable[str] = ()) -> str:
    """A fixed-width text table (4 decimals; ``plain_columns`` as given); the row at index ``mark`` gets a ``*``."""
    plain_columns = set(plain_columns)

    def cell(v: Any, column: str) -> str:
        if isinstance(v, float) and column in plain_columns:
            return f"{v:g}"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"
        return str(v)

    body = [[cell(r.get(c, ""), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    for i, b in enumerate(body):
        lines.append(("* " if i == mark else "  ") + "  ".join(v.rjust(w) for v, w in zip(b, widths)))
    return "\n".join(lines)


def progress(items: Iterable[Any], desc: str, verbose: bool, total: int | None = None):
    """Ultralytics' progress bar over ``items`` (silent unless ``verbose``)."""
    from ultralytics.utils import TQDM

    items = list(items)
    return TQDM(items, desc=desc, total=total or len(items), disable=not verbose or not items)


# ----------------------------------------------------------------------------------------------- result table
@dataclass
class RunResult:
    """The rows of a sweep, search or soup: the best one (by the selection objective when there is one), the
    references, the files written, and the rebuilt best model."""

    kind: str
    rows: list[dict[str, Any]]
    axes: dict[str, Any]  # axis -> grid values (sweep), bounds (search) or [0, 1] (soup)
    datasets: list[str]
    metric: str
    objective_label: str
    references: dict[str, Metrics] = field(default_factory=dict)  # label -> metrics on every dataset
    reference_for: dict[str, str] = field(default_factory=dict)  # dataset -> label
    files: dict[str, Path] = field(default_factory=dict)
    scorer: Scorer | None = field(default=None, repr=False)
    evaluated: int = 0  # candidates evaluated by this call (the others came from the results file)
    lead_columns: tuple[str, ...] = ()
    choice: str = "objective"  # the column the best row maximizes
    selected_on: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # base, inputs, image size: for plots and cards
    ingredients: list[str] | None = None  # soups: the kept fine-tunes

    @property
    def best_index(self) -> int:
        """Index of the chosen row: the highest selection objective (the first of equals); a soup's last kept step."""
        if self.kind == "soup":
            return max(i for i, r in enumerate(self.rows) if r.get("kept"))
        scored = [i for i, r in enumerate(self.rows) if not math.isnan(r[self.choice])]
        if not scored:
            raise TaskVecError(f"every candidate was refused by the merge (e.g. {self.rows[0].get('refused', '?')})")
        return max(scored, key=lambda i: self.rows[i][self.choice])

    @property
    def best(self) -> dict[str, Any]:
        return self.rows[self.best_index]

    @property
    def best_point(self) -> Point:
        if self.kind == "soup":
            return {a: float(a in (self.ingredients or [])) for a in self.axes}
        return {a: self.best[a] for a in self.axes}

    def columns(self) -> list[str]:
        cols = [*self.lead_columns, *([] if self.kind == "soup" else self.axes)] + [f"{ds}/{self.metric}" for ds in self.datasets]
        if self.reference_for:
            cols += [f"{ds}/norm" for ds in self.datasets]
        if self.choice == "select_objective":
            cols += [f"{ds}{SELECT_SUFFIX}/{self.metric}" for ds in self.datasets] + ["select_objective"]
        cols.append("objective")
        return cols + (["tried"] if self.kind == "soup" else [])

    def table(self) -> str:
        """The rows as text, the chosen row starred, references, where it was chosen, and the best point."""
        lines = [format_table(self.rows, self.columns(), mark=self.best_index, plain_columns=self.axes)]
        refused = [r for r in self.rows if r.get("refused")]
        if refused:
            lines.append(f"refused by the merge ({len(refused)} candidates, no score): {refused[0]['refused']}")
        for ds, label in self.reference_for.items():
            lines.append(f"reference for {ds}: {label} ({self.references[label][ds][self.metric]:.4f} {self.metric})")
        best = self.best
        if self.choice == "select_objective":
            lines.append(f"chosen on {self.selected_on}: {self.best_text()} -> selection {self.objective_label} {best['select_objective']:.4f}; reported ({', '.join(self.datasets)}): {best['objective']:.4f}")
        else:
            lines.append(f"best: {self.best_text()} -> {self.objective_label} {best['objective']:.4f} (chosen on the reported data)")
        return "\n".join(lines)

    def best_text(self) -> str:
        """The best point as ``scale=0.5`` / ``backbone=0.5, neck=1`` / a soup's ingredients."""
        if self.kind == "soup":
            return f"soup of {' + '.join(self.ingredients or [])}"
        return ", ".join(f"{k}={v:g}" for k, v in self.best_point.items())

    def selection(self) -> dict[str, Any]:
        """How the best candidate was chosen, with its scores (recorded in the saved model's provenance)."""
        best = self.best
        scores = {"report": {f"{ds}/{self.metric}": best.get(f"{ds}/{self.metric}") for ds in self.datasets}}
        scores["report"]["objective"] = best["objective"]
        if self.choice == "select_objective":
            scores["select"] = {f"{ds}/{self.metric}": best.get(f"{ds}{SELECT_SUFFIX}/{self.metric}") for ds in self.datasets}
            scores["select"]["objective"] = best["select_objective"]
        return {"kind": self.kind, "point": self.best_point, "trials": len(self.rows), "objective": self.objective_label, "selected_on": self.selected_on,
                "data": list(self.context.get("data", [])), "scores": scores, "references": dict(self.reference_for)}

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        text = to_csv_text(self.rows)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        doc = {"kind": self.kind, "axes": self.axes, "datasets": self.datasets, "metric": self.metric, "objective": self.objective_label, "choice": self.choice,
               "selected_on": self.selected_on, "best": self.best, "references": self.references, "reference_for": self.reference_for, "rows": self.rows}
        text = json.dumps(plain(doc), indent=1)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def best_model(self) -> Any:
        """The merged ``ultralytics.YOLO`` of the chosen candidate (rebuilt, not re-evaluated), with how it was chosen."""
        if self.scorer is None:
            raise TaskVecError("this result has no models attached.")
        return self.scorer.model(self.best_point, selection=self.selection())

    def intervals(self, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """Bootstrap intervals (resampling each report dataset's val images) of the chosen candidate: its metric per
        dataset, and its reported objective (normalized by the references on the same resampled images, paired).

        Scores the chosen merge and the references again with per-image statistics; ``{dataset: Interval,
        "objective": Interval}``.
        """
        from .bootstrap import bootstrap, interval
        from .evaluation import Evaluator

        if self.scorer is None or not self.scorer.scoring.data:
            raise TaskVecError("intervals need the run's datasets and models (a run with data= and the built-in evaluator).")
        scoring, base = self.scorer.scoring, self.scorer.prepared.base
        imgsz = scoring.imgsz or int(base.train_args.get("imgsz") or 640)
        ev = Evaluator(list(scoring.data), split=scoring.split, per_image=True, **scoring.evaluator_kwargs(imgsz))
        ev(self.best_model())
        samples = {("chosen", ds): ev.image_stats[ds] for ds in self.datasets}
        for label in dict.fromkeys(self.reference_for.values()):
            source = next(s for ds, s in reference_sources(scoring.reference, self.datasets).items() if self.reference_for[ds] == label)
            ev(reference_model(source, base))
            samples.update({(label, ds): ev.image_stats[ds] for ds, lab in self.reference_for.items() if lab == label})
        objective = self.scorer.report

        def reported(scores: Mapping[Any, Mapping[str, float]]) -> float:
            metrics = {ds: scores[("chosen", ds)] for ds in self.datasets}
            refs = {ds: scores[(self.reference_for[ds], ds)] for ds in self.reference_for}
            return Objective(objective.metric, refs or None, objective.reduce)(metrics)

        kw = {"resamples": resamples, "confidence": confidence, "seed": seed}
        out: dict[str, Any] = {ds: interval(samples[("chosen", ds)], self.metric, **kw) for ds in self.datasets}
        out["objective"] = bootstrap(samples, reported, **kw)
        return out

    def plot(self, path: str | os.PathLike) -> Path:
        """The sweep figure (metric vs scale, heatmaps, Pareto front) or the search/soup trace."""
        from .plots import plot_search, plot_sweep

        c = self.context
        scored = [r for r in self.rows if not r.get("refused")]  # refused candidates have no scores to draw
        context = {"base": c.get("base"), "inputs": c.get("inputs"), "method": c.get("method"), "imgsz": c.get("imgsz"),
                   "chosen on": self.selected_on if self.choice != "objective" else "the reported data", "reported on": c.get("split", "val")}
        if self.kind == "sweep":
            return plot_sweep(scored, list(self.axes), self.datasets, self.metric, path, references=self.references, reference_for=self.reference_for,
                              objective_label=self.objective_label, choice=self.choice, context=context)
        title = "greedy soup" if self.kind == "soup" else f"{c.get('strategy', '')} search ({c.get('backend', 'local')}): {', '.join(self.axes)}"
        return plot_search(scored, path, objective_label=self.objective_label, title=title, axes=[] if self.kind == "soup" else list(self.axes), choice=self.choice, context=context)


# ----------------------------------------------------------------------------------------------- run set-up
def run_folder(kind: str, out: Any = None, project: Any = None, name: Any = None, exist_ok: bool = False, *, inputs: Iterable[Any] = (), protect: Iterable[Any] = ()) -> Path:
    """Where a run writes: ``out`` exactly, else ``project/name`` (default ``runs_dir/taskvec/<kind>``), incremented
    like Ultralytics runs unless ``exist_ok``. Checked (not a file or an input, not inside a ``protect`` folder such as
    a dataset, writable) but not created."""
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.files import increment_path

    if out is not None and (project is not None or name is not None):
        raise RecipeError("give out= (one folder) or project=/name= (Ultralytics run folders), not both.")
    if out is not None:
        folder = Path(out).expanduser()
    else:
        folder = Path(project or Path(SETTINGS["runs_dir"]) / "taskvec") / str(name or kind)
        folder = folder if exist_ok else increment_path(folder, exist_ok=False, sep="")
    return check_output_folder(folder, inputs, protect=protect)


@dataclass
class Run:
    """Everything a scored run needs, set up in order: validated recipe and scoring, loaded inputs, evaluator,
    references, results log. Set up fully before the first candidate, and before any folder is created."""

    kind: str
    recipe: Recipe
    scoring: Scoring
    prepared: Prepared
    axes: dict[str, str]  # key -> kind (scale, part, input, param)
    folder: Path
    evaluate: Evaluate
    scorer: Scorer
    log: ResultsLog
    sources: dict[str, Any]
    verbose: bool = True
    workdir: Any = None  # the temporary folder of the selection views
    views: list[str] = field(default_factory=list)  # the selection view yamls (in workdir)
    custom_evaluator: bool = False

    def spec(self) -> Any:
        """What a remote trial runner needs (``backends.TrialSpec``): the loaded inputs, axes and scoring."""
        scoring = dataclasses.replace(self.scoring, data=tuple(_absolute(y) for y in self.scoring.data), select=self.scoring.select if not isinstance(self.scoring.select, tuple) else tuple(_absolute(y) for y in self.scoring.select))
        return TrialSpec(self.prepared, self.axes, scoring, self.kind, self.imgsz, self.evaluate if self.custom_evaluator else None, view_digests(self.views) if self.views else None)

    def references(self, backend: Any = None) -> tuple[dict[str, Metrics], dict[str, str]]:
        """Reference metrics from the results file, or scored now (once each, by ``backend``) and stored in it."""
        labels = {ds: reference_label(src) for ds, src in self.sources.items()}
        if self.log.references and set(self.log.references) >= set(labels.values()):
            scored = {k: self.log.references[k] for k in set(labels.values())}
        else:
            todo: dict[str, Any] = {}
            for ds, src in self.sources.items():
                todo.setdefault(labels[ds], src)
            if backend is None:
                backend = LocalBackend()
                backend.start(self)
            scored = backend.references(todo) if todo else {}
            self.log.references = plain(scored)
            self.log.save()
        self.scorer.set_references(_per_dataset(scored, labels, self.scoring))
        return scored, labels

    def result(self, rows: list[dict[str, Any]], axes_values: Mapping[str, Any], scored: Mapping[str, Metrics], labels: Mapping[str, str], evaluated: int, **extra: Any) -> RunResult:
        objective = self.scorer.select if self.scorer.select is not None else self.scorer.report
        datasets = self.scoring.datasets or _datasets_of(rows)
        return RunResult(self.kind, table_rows(rows), dict(axes_values), datasets, self.scoring.metric, objective.label, dict(scored), dict(labels),
                         {"json": self.log.path, "csv": self.log.csv_path}, self.scorer, evaluated, choice=self.scorer.choice_column,
                         selected_on=self.scoring.where_selected(), context=self.context(), **extra)

    def context(self) -> dict[str, Any]:
        """What the run merged and at which image size (for plot titles and cards)."""
        return {"base": self.prepared.base.name, "inputs": list(self.prepared.names), "imgsz": self.imgsz, "data": list(self.scoring.data), "method": self.recipe.method,
                "split": self.scoring.split}

    @property
    def imgsz(self) -> int:
        return self.scoring.imgsz or int(self.prepared.base.train_args.get("imgsz") or 640)

    def finish(self, result: RunResult, plot: bool) -> RunResult:
        extra = {"ingredients": result.ingredients} if result.ingredients is not None else {}
        self.log.save(best=result.best, selection=result.selection(), **extra)
        if plot:
            result.files["png"] = result.plot(self.folder / f"{self.kind}.png")
        if self.workdir is not None:
            self.workdir.cleanup()
        return result


def _absolute(yaml: str) -> str:
    """A dataset yaml given relative to this directory, made absolute (a remote worker has another one); bare names
    that Ultralytics finds in its ``datasets_dir`` stay as they are."""
    path = Path(yaml).expanduser()
    return str(path.resolve()) if not path.is_absolute() and path.exists() else yaml


def _datasets_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dataset names read from row columns (``<dataset>/<metric>``), for custom evaluators without data=."""
    seen: list[str] = []
    scored = [r for r in rows if not r.get("refused")]
    for key in scored[0] if scored else ():
        ds, sep, metric = key.rpartition("/")
        if sep and metric != "norm" and not ds.endswith(SELECT_SUFFIX) and ds not in seen:
            seen.append(ds)
    return seen


def _per_dataset(scored: Mapping[str, Metrics], labels: Mapping[str, str], scoring: Scoring) -> Metrics | None:
    if not labels:
        return None
    out = {ds: scored[label][ds] for ds, label in labels.items()}
    if scoring.selects:
        out.update({f"{ds}{SELECT_SUFFIX}": scored[label][f"{ds}{SELECT_SUFFIX}"] for ds, label in labels.items()})
    return out


def setup_run(kind: str, recipe: Recipe, scoring: Scoring, axis_keys: Iterable[str], config: Mapping[str, Any], *, out: Any = None, project: Any = None,
              name: Any = None, exist_ok: bool = False, evaluator: Evaluate | None = None, verbose: bool = True) -> Run:
    """Validate, load and prepare a run (see ``Run``); raises before anything is written."""
    axis_keys = list(axis_keys)
    if not scoring.data and evaluator is None:
        raise RecipeError("no datasets: pass data= (one or more dataset yamls).")
    if scoring.selects and evaluator is not None:
        raise RecipeError("select= needs the built-in evaluator (a custom evaluator does not score the selection split).")
    axes = axis_kinds(axis_keys, input_axis_names(recipe), recipe.method)  # names known without loading
    sources = reference_sources(scoring.reference, scoring.datasets)
    check_reference_files(sources)
    protect = []
    if evaluator is None:
        for y in scoring.data:
            load_data(y, split=scoring.split)
            protect += dataset_folders(y)
    folder = run_folder(kind, out, project, name, exist_ok, inputs=[s for s in (recipe.base, *recipe.sources) if isinstance(s, (str, os.PathLike))], protect=protect)
    prepared = prepare(recipe)
    imgsz = scoring.imgsz or int(prepared.base.train_args.get("imgsz") or 640)
    workdir, yamls, views, custom = None, list(scoring.data), [], evaluator is not None
    if scoring.selects:
        workdir = tempfile.TemporaryDirectory(prefix="yolo-taskvec-select-")
        views = selection_views(scoring, workdir.name)
        yamls += views
    if evaluator is None:
        from .evaluation import Evaluator

        evaluator = Evaluator(yamls, split=scoring.split, **scoring.evaluator_kwargs(imgsz))
    identity = {
        "kind": kind,
        "recipe": {k: v for k, v in recipe.to_dict().items() if k not in ("base", "inputs")},
        "base_fingerprint": prepared.base.fingerprint,  # inputs by content, not by path: a file and its object resume
        "vectors": [vector_id(tv) for tv in prepared.vectors],
        "weights": recipe.weights,
        "names": list(prepared.names) if "input" in axes.values() else None,
        "data": [dataset_identity(y, (scoring.split,)) for y in scoring.data] if evaluator is None else list(scoring.data),  # resolved path and content, not the stem
        "select": scoring.select if isinstance(scoring.select, (str, type(None))) else [dataset_identity(y) for y in scoring.select],
        "select_seed": scoring.select_seed,
        "scoring": {"imgsz": imgsz, "batch": scoring.batch, "half": scoring.half, "conf": scoring.conf, "iou": scoring.iou, "split": scoring.split,
                    "metric": scoring.metric, "objective": objective_name(scoring.objective), "references": {d: reference_label(s) for d, s in sources.items()}},
        **dict(config),
    }
    log = ResultsLog(folder / f"{kind}.json", kind, identity, inputs=prepared.files)
    scorer = Scorer(prepared, axes, evaluator, scoring, kind)
    return Run(kind, recipe, scoring, prepared, axes, folder, evaluator, scorer, log, sources, verbose, workdir, views, custom)


def build_run_inputs(base: Any, inputs: Any, fields: Mapping[str, Any], data: Any) -> tuple[Recipe, Scoring]:
    """The recipe and the scoring of a run from the API's flat arguments (a Recipe may stand in for ``base``)."""
    recipe_fields, scoring_fields = split_fields(fields, getattr(base, "method", None))
    recipe = as_recipe(base, inputs, **recipe_fields)
    scoring = Scoring.build(data, **scoring_fields)
    return recipe, scoring


# ----------------------------------------------------------------------------------------------- execution
@dataclass
class TrialSpec:
    """What a runner needs to merge and score any point of a run (sent once through the object store)."""

    prepared: Prepared  # the base and the task vectors, loaded on the driver
    axes: dict[str, str]
    scoring: Scoring
    kind: str
    imgsz: int
    evaluator: Any = None  # a custom evaluator (picklable) instead of the built-in one
    views: dict[str, str] | None = None  # selection view file name -> sha256 of its content, as the driver made them


class LocalBackend:
    """Scores in this process with the run's own scorer, one candidate at a time."""

    name = "local"
    capacity = 1

    def __init__(self) -> None:
        self.run: Any = None
        self.queue: list[dict[str, float]] = []

    def start(self, run: Any) -> None:
        self.run = run

    def references(self, todo: Mapping[str, Any]) -> dict[str, Any]:
        return {label: self.run.evaluate(reference_model(src, self.run.prepared.base)) for label, src in progress(todo.items(), "references", self.run.verbose)}

    def submit(self, point: dict[str, float]) -> None:
        self.queue.append(point)

    def next_result(self) -> tuple[dict[str, float], Any, float]:
        point = self.queue.pop(0)
        metrics, seconds = self.run.scorer.measure(point)
        return point, metrics, seconds

    def describe(self) -> dict[str, Any]:
        return {"backend": "local"}

    def close(self) -> None:
        self.queue.clear()


class Proposer:
    """The points of a run, handed out one at a time (``ask``) and told their objective (``tell``).

    ``ask`` returns the next point, or ``None`` when it has nothing to propose until a running trial is told (and,
    with nothing running, when it is done). Proposers that do not wait for every trial of a batch keep a cluster
    busy; the execution loop (``drive``) is the same for every backend.
    """

    def ask(self) -> Point | None:
        raise NotImplementedError

    def tell(self, point: Point, value: float) -> None:
        pass


class GridProposer(Proposer):
    """Fixed points, in order (a sweep's grid, a soup's candidates)."""

    def __init__(self, points: Iterable[Point]) -> None:
        self.points = list(points)
        self.next = 0

    def ask(self) -> Point | None:
        if self.next >= len(self.points):
            return None
        self.next += 1
        return self.points[self.next - 1]


def drive(run: Run, backend: Any, proposer: Proposer, *, desc: str, budget: int | None = None, total: int | None = None, callback: Callable | None = None, numbered: bool = False) -> int:
    """Score the proposer's points on ``backend`` until it is done or ``budget`` rows are in the results file.

    Points already in the results file are answered from it at once (no trial, no budget); new ones go to the
    backend as long as it has a free runner, so a cluster stays busy; each finished row is stored atomically as it
    arrives (``numbered``: with a ``trial`` number), told to the proposer and passed to ``callback``. Returns the
    number of new rows.
    """
    from ultralytics.utils import TQDM

    log, choice = run.log, run.scorer.choice_column
    bar = TQDM(total=total or budget, desc=desc, disable=not run.verbose)
    best, new, running = -math.inf, 0, 0
    replays = 0  # points answered from the results file (a bound against a proposer that only repeats itself)

    def shown(row: Mapping[str, Any]) -> None:
        nonlocal best
        best = max(best, row[choice])
        bar.update(1)
        bar.set_description(f"{desc} (best {best:.4f})")

    try:
        while True:
            while running < backend.capacity and (budget is None or len(log.rows) + running < budget):
                point = proposer.ask()
                if point is None:
                    break
                row = log.find(point)
                if row is not None:
                    replays += 1
                    if replays > 10 * (budget or len(log.rows)) + 1000:
                        break
                    proposer.tell(point, row[choice] if not math.isnan(row[choice]) else -math.inf)
                    shown(row)
                    continue
                backend.submit(point)
                running += 1
            if running == 0:
                break
            point, metrics, seconds = backend.next_result()
            running -= 1
            row = run.scorer.row(point, metrics)
            row["seconds"] = seconds
            row = log.add(point, {"trial": len(log.rows) + 1, **row} if numbered else row)
            new += 1
            proposer.tell(point, row[choice] if not math.isnan(row[choice]) else -math.inf)  # a refused merge never attracts a search
            shown(row)
            if callback is not None:
                callback(row)
    finally:
        bar.close()
    return new


def point_loop(points: Sequence[Point], run: Run, *, desc: str, callback: Callable | None = None, backend: Any = None) -> list[dict[str, Any]]:
    """Score each point not already in the results file (on ``backend``, local by default), storing every new row
    atomically; returns the rows in the order of ``points``."""
    if backend is None:
        backend = LocalBackend()
        backend.start(run)
    drive(run, backend, GridProposer(points), desc=desc, total=len(points), callback=callback)
    return [run.log.find(p) for p in points]
