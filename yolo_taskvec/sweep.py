"""Merge-then-validate sweeps: score ``base + merge(vectors)`` over a grid of scales on one or more datasets.

>>> from yolo_taskvec import sweep
>>> res = sweep("yolo26n-base80.pt", ["night.safetensors"], data=["fruit80.yaml", "fruit80-night.yaml"],
...             scales="0:1:0.1", imgsz=320, out="runs/taskvec/day-night",
...             reference={"fruit80": "yolo26n-base80.pt", "fruit80-night": "yolo26n-fruit-night.pt"})
>>> print(res.table()); res.best_point          # {'scale': 0.5}
>>> res.best_model().save("best.pt")            # or yolo_taskvec.save(res.best_model(), "best.pt")

Grids (``scales=``), the product of their axes:

* numbers (``[0, 0.5, 1]``, ``"0:1:0.1"`` = 0 to 1 inclusive in steps of 0.1, ``"0,0.5,1"``): one scale for the
  merge of all vectors, column ``scale``;
* a mapping (or ``"backbone=0:1:0.5;head=0,1;neck=1"``) whose keys are parts (``backbone``, ``neck``, ``head``,
  ``head.box``, ``head.cls``, ..., ``*`` for the rest): per-part scales; vector names (the vector's name, its file
  stem, or its index): per-vector weights; or ``scale``. A value is a list (an axis) or one number (fixed).

Every point is built with ``api.merge`` from ONE loaded base and vectors extracted once (methods, their ``params``,
``bn`` policies including ``recalibrate`` pass through) and scored by one ``evaluation.Evaluator`` that keeps its
dataloaders across points.

Objective: each dataset's metric (``map50_95`` by default) divided by the metric of that dataset's reference model,
then averaged (``objective="mean"``), or the worst one (``"min"``), or any callable over ``{dataset: normalized}``.
``reference`` is one model for all datasets, one per dataset (list, or mapping by dataset name), ``"base"`` for the
base; references are scored once by the same evaluator. Without references the raw metric is averaged.

Resume: the results json in ``out`` is rewritten atomically after every point; running the same sweep with the same
``out`` again skips the points it already holds (a different sweep in that folder is refused).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import TaskVector, as_vectors, check_fingerprints, merge
from .atomic import check_output, write_text_atomic
from .checkpoint import LoadedModel, ModelLike, load_model, to_yolo
from .data import dataset_name
from .errors import OutputError, TaskVecError
from .merging import DEFAULT_BN, vector_id
from .parts import PARTS
from .taskvector import check_scale, scale_for

Metrics = dict[str, dict[str, float]]  # dataset -> metric -> value
Evaluate = Callable[[Any], Metrics]
Point = dict[str, float]  # axis -> value
OBJECTIVES = ("mean", "min")
PART_KEYS = ("*", "head", *PARTS)
RESULTS_FORMAT = "yolo-taskvec-results/1"
MAX_POINTS = 100_000


# ----------------------------------------------------------------------------------------------- grids
def parse_values(text: str | float | Iterable[float], what: str = "scales") -> list[float]:
    """``"0:1:0.1"`` (start:stop:step, stop included), ``"0,0.5,1"``, a number, or a list of numbers."""
    if isinstance(text, (int, float)):
        return [check_scale(text, what)]
    if not isinstance(text, str):
        values = [check_scale(v, what) for v in text]
        if not values:
            raise TaskVecError(f"{what}: an empty list of values was given.")
        return values
    text = text.strip()
    if ":" in text:
        fields = text.split(":")
        if len(fields) != 3:
            raise TaskVecError(f"{what} '{text}' is not start:stop:step (e.g. 0:1:0.1).")
        start, stop, step = (_number(f, what) for f in fields)
        if step <= 0 or (stop - start) / step < -1e-9:
            raise TaskVecError(f"{what} '{text}': the step must be positive and go from start to stop.")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_POINTS:
            raise TaskVecError(f"{what} '{text}' gives {n} values; use a coarser step.")
        return [check_scale(round(start + i * step, 10), what) for i in range(n)]
    values = [check_scale(_number(v, what), what) for v in text.split(",") if v.strip()]
    if not values:
        raise TaskVecError(f"{what}: an empty list of values was given.")
    return values


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as e:
        raise TaskVecError(f"{what}: '{text.strip()}' is not a number.") from e


def parse_grid(spec: Any) -> dict[str, list[float]]:
    """Axes of a grid: ``{"scale": [...]}`` for plain values, else ``{key: [...]}`` per part/vector key."""
    if isinstance(spec, str) and "=" in spec:
        spec = dict(item.split("=", 1) for item in spec.replace("\n", ";").split(";") if item.strip())
    if isinstance(spec, Mapping):
        if not spec:
            raise TaskVecError("scales: an empty mapping was given.")
        return {str(k).strip(): parse_values(v, f"scales for '{k}'") for k, v in spec.items()}
    return {"scale": parse_values(spec)}


def grid_points(axes: Mapping[str, Sequence[float]]) -> list[Point]:
    """The product of the axes, first axis slowest."""
    names = list(axes)
    total = math.prod(len(v) for v in axes.values())
    if total > MAX_POINTS:
        raise TaskVecError(f"the grid has {total:,} points; reduce the axes (at most {MAX_POINTS:,}).")
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def point_key(point: Mapping[str, float]) -> str:
    """A canonical key of a point (rounded to 1e-9), used to find finished points."""
    return json.dumps({k: round(float(v), 9) for k, v in sorted(point.items())})


# ----------------------------------------------------------------------------------------------- vectors and recipes
def vector_names(vectors: Sequence[TaskVector]) -> list[str]:
    """A unique column name per vector: its name (file stem when loaded from a file)."""
    names: list[str] = []
    for i, tv in enumerate(vectors):
        name = Path(str(tv.meta.get("source_file"))).stem if tv.meta.get("source_file") else str(tv.meta.get("name") or f"v{i}")
        names.append(name if name not in names else f"{name}#{i}")
    return names


def _aliases(vectors: Sequence[TaskVector], names: Sequence[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    for i, (tv, name) in enumerate(zip(vectors, names)):
        for alias in (str(i), str(tv.meta.get("name", "")), name):
            if alias:
                table.setdefault(alias, name)
    return table


def canonical_axes(axes: Mapping[str, Any], vectors: Sequence[TaskVector], names: Sequence[str]) -> dict[str, Any]:
    """Axis keys mapped to ``scale``, a part name, or a vector column name; unknown keys are refused."""
    aliases = _aliases(vectors, names)
    out: dict[str, Any] = {}
    for key, values in axes.items():
        if key == "scale" or key in PART_KEYS:
            canonical = key
        elif key in aliases:
            canonical = aliases[key]
        else:
            raise TaskVecError(f"unknown scale key '{key}'; use scale, a part ({', '.join(PART_KEYS)}) or a vector ({', '.join(names)}).")
        if canonical in out:
            raise TaskVecError(f"scale key '{key}' is given twice.")
        out[canonical] = values
    parts = [k for k in out if k in PART_KEYS]
    if parts and "scale" in out:
        raise TaskVecError("give either one 'scale' or per-part scales (use '*' for the parts not listed), not both.")
    return out


def merge_recipe(point: Mapping[str, float], names: Sequence[str]) -> tuple[float | dict[str, float], list[float] | None]:
    """``(scale, weights)`` for ``api.merge``: per-part keys form the scale mapping, vector keys the weights."""
    parts = {k: float(v) for k, v in point.items() if k in PART_KEYS}
    scale: float | dict[str, float] = parts or float(point.get("scale", 1.0))
    weights = [float(point.get(n, 1.0)) for n in names] if any(n in point for n in names) else None
    return scale, weights


def check_part_coverage(point: Mapping[str, float], vectors: Sequence[TaskVector], names: Sequence[str]) -> None:
    """Every part the vectors touch must get a scale from the per-part keys (clear error otherwise)."""
    scale, _ = merge_recipe(point, names)
    if isinstance(scale, Mapping):
        for part in sorted({tv.part_of(k) for tv in vectors for k in tv.deltas}):
            try:
                scale_for(part, scale)
            except TaskVecError as e:
                raise TaskVecError(f"per-part scales {', '.join(scale)} leave part '{part}' without a scale; add it or '*' (e.g. '*': 1).") from e


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


def flat_row(point: Mapping[str, float], metrics: Metrics, objective: Objective) -> dict[str, Any]:
    """One table row: axis values, ``<dataset>/<metric>`` columns, ``<dataset>/norm`` (with references), objective."""
    row: dict[str, Any] = dict(point)
    for ds, m in metrics.items():
        for key, value in m.items():
            row[f"{ds}/{key}"] = float(value)
    if objective.references:
        for ds, value in objective.normalized(metrics).items():
            row[f"{ds}/norm"] = value
    row["objective"] = objective(metrics)
    return row


# ----------------------------------------------------------------------------------------------- references
def reference_sources(reference: Any, datasets: Sequence[str]) -> dict[str, Any]:
    """``{dataset: model}`` from one model, a list (one per dataset) or a mapping by dataset name or yaml."""
    if reference is None:
        return {}
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


def score_references(sources: Mapping[str, Any], base: LoadedModel, evaluate: Evaluate, verbose: bool = True) -> tuple[dict[str, Metrics], dict[str, str]]:
    """Score each distinct reference once: ``({label: metrics on every dataset}, {dataset: label})``."""
    labels = {ds: reference_label(src) for ds, src in sources.items()}
    todo = {}
    for ds, src in sources.items():
        todo.setdefault(labels[ds], src)
    scored = {label: evaluate(reference_model(src, base)) for label, src in _bar(todo.items(), "references", verbose)}
    return scored, labels


def references_per_dataset(scored: Mapping[str, Metrics], labels: Mapping[str, str]) -> Metrics | None:
    return {ds: scored[label][ds] for ds, label in labels.items()} if labels else None


# ----------------------------------------------------------------------------------------------- evaluator
def make_evaluator(data: Any, evaluator: Evaluate | None, eval_kw: Mapping[str, Any]) -> Evaluate:
    """The given evaluator, or an ``evaluation.Evaluator`` over ``data`` (dataloaders kept across models)."""
    if evaluator is not None:
        return evaluator
    if not data:
        raise TaskVecError("no datasets: pass data= (one or more dataset yamls).")
    from .evaluation import Evaluator

    return Evaluator(data, **eval_kw)


def data_list(data: Any) -> list[str]:
    if data is None:
        return []
    return [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]


# ----------------------------------------------------------------------------------------------- merge scorer
class MergeScorer:
    """Builds ``base + merge(vectors)`` for a point (one loaded base, vectors extracted once) and scores it."""

    def __init__(self, base: LoadedModel, vectors: Sequence[TaskVector], evaluate: Evaluate, objective: Objective, merge_kw: Mapping[str, Any]):
        self.base, self.vectors, self.evaluate, self.objective = base, list(vectors), evaluate, objective
        self.names = vector_names(self.vectors)
        self.merge_kw = dict(merge_kw)
        self.evaluations = 0

    def model(self, point: Mapping[str, float]) -> Any:
        """The merged ``ultralytics.YOLO`` at a point."""
        scale, weights = merge_recipe(point, self.names)
        kw = dict(self.merge_kw)
        method = kw.pop("method")
        params = kw.pop("params", None) or {}
        return merge(self.base, self.vectors, method, scale=scale, weights=weights, **kw, **params)

    def score(self, point: Mapping[str, float]) -> dict[str, Any]:
        """Merge, evaluate and return the table row of a point (with ``seconds``)."""
        t0 = time.perf_counter()
        metrics = self.evaluate(self.model(point))
        self.evaluations += 1
        row = flat_row(point, metrics, self.objective)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row


def identity(base: LoadedModel, vectors: Sequence[TaskVector], merge_kw: Mapping[str, Any], eval_kw: Mapping[str, Any], data: Sequence[str], extra: Mapping[str, Any]) -> dict[str, Any]:
    """What a results file must match to be resumed: base, vectors, merge recipe, data and evaluation settings."""
    return _plain(
        {
            "base_fingerprint": base.fingerprint,
            "vectors": [vector_id(tv) for tv in vectors],
            **{k: v for k, v in merge_kw.items()},
            "data": [dataset_name(d) for d in data],
            **{k: eval_kw.get(k) for k in ("imgsz", "batch", "half", "conf", "iou", "split")},
            **extra,
        }
    )


def objective_name(objective: Any) -> str:
    """A stable name of an objective (a function's qualified name), for results files."""
    return objective if isinstance(objective, str) else getattr(objective, "__qualname__", type(objective).__name__)


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------------------------- results file
class ResultsLog:
    """Rows of a sweep/search kept in a json file rewritten atomically after each point (and a CSV beside it).

    Opening an existing file resumes it: its rows are reused by ``find``; a file made by a different run is refused.
    """

    def __init__(self, path: str | os.PathLike | None, kind: str, config: Mapping[str, Any], inputs: Iterable[Any] = ()):
        self.path = Path(path) if path is not None else None
        self.kind, self.config = kind, dict(config)
        self.rows: list[dict[str, Any]] = []
        self.references: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._index: dict[str, dict[str, Any]] = {}
        self.resumed = 0  # rows read back from an existing file
        if self.path is not None:
            check_output(self.path, inputs)
            check_output(self.csv_path, inputs)
            if self.path.exists():
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
            raise OutputError(f"{self.path} is not a {self.kind} results file of yolo-taskvec; choose another out=.")
        old = saved.get("config", {})
        diff = sorted(k for k in {*old, *self.config} if old.get(k) != self.config.get(k))
        if diff:
            raise OutputError(
                f"{self.path} holds a different {self.kind} ({diff[0]}: {old.get(diff[0])!r} there, {self.config.get(diff[0])!r} now); "
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
        doc = {"format": RESULTS_FORMAT, "kind": self.kind, "config": self.config, "references": self.references, **_plain(self.extra), "rows": self.rows}
        write_text_atomic(self.path, json.dumps(doc, indent=1, default=str))
        write_text_atomic(self.csv_path, to_csv_text(table_rows(self.rows)))


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


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], mark: int | None = None, plain: Iterable[str] = ()) -> str:
    """A fixed-width text table (4 decimals; ``plain`` columns as given); the row at index ``mark`` gets a ``*``."""
    plain = set(plain)

    def cell(v: Any, column: str) -> str:
        if isinstance(v, float) and column in plain:
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


def _bar(items: Iterable[Any], desc: str, verbose: bool, total: int | None = None):
    from ultralytics.utils import TQDM

    items = list(items)
    return TQDM(items, desc=desc, total=total or len(items), disable=not verbose or not items)


# ----------------------------------------------------------------------------------------------- sweep
@dataclass
class ScoredRun:
    """Rows of scored merges (sweep points, search trials, soup steps), the best one, references and files."""

    rows: list[dict[str, Any]]
    axes: dict[str, Any]  # axis/dimension -> grid values (sweep) or bounds (search)
    datasets: list[str]
    metric: str
    objective_label: str
    references: dict[str, Metrics] = field(default_factory=dict)  # label -> metrics on every dataset
    reference_for: dict[str, str] = field(default_factory=dict)  # dataset -> label
    files: dict[str, Path] = field(default_factory=dict)
    scorer: MergeScorer | None = field(default=None, repr=False)
    evaluated: int = 0  # points evaluated by this call (the others came from the results file)

    lead_columns: tuple[str, ...] = ()

    @property
    def best_index(self) -> int:
        """Index of the row with the highest objective (the first of equals)."""
        return max(range(len(self.rows)), key=lambda i: self.rows[i]["objective"])

    @property
    def best(self) -> dict[str, Any]:
        return self.rows[self.best_index]

    @property
    def best_point(self) -> Point:
        return {a: self.best[a] for a in self.axes}

    def columns(self) -> list[str]:
        cols = [*self.lead_columns, *self.axes] + [f"{ds}/{self.metric}" for ds in self.datasets]
        if self.reference_for:
            cols += [f"{ds}/norm" for ds in self.datasets]
        return cols + ["objective"]

    def table(self) -> str:
        """The rows as text, best row starred, references and best point listed."""
        lines = [format_table(self.rows, self.columns(), mark=self.best_index, plain=self.axes)]
        for ds, label in self.reference_for.items():
            lines.append(f"reference for {ds}: {label} ({self.references[label][ds][self.metric]:.4f} {self.metric})")
        lines.append(f"best: {self.best_text()} -> {self.objective_label} {self.best['objective']:.4f}")
        return "\n".join(lines)

    def best_text(self) -> str:
        """The best point as ``scale=0.5`` / ``backbone=0.5, neck=1``."""
        return ", ".join(f"{k}={v:g}" for k, v in self.best_point.items())

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        text = to_csv_text(self.rows)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        doc = {"axes": self.axes, "datasets": self.datasets, "metric": self.metric, "objective": self.objective_label, "best": self.best,
               "references": self.references, "reference_for": self.reference_for, "rows": self.rows}
        text = json.dumps(doc, indent=1)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def best_model(self) -> Any:
        """The merged ``ultralytics.YOLO`` at the best point (rebuilt, not re-evaluated)."""
        if self.scorer is None:
            raise TaskVecError("this result has no models attached.")
        return self.scorer.model(self.best_point)


@dataclass
class SweepResult(ScoredRun):
    """A sweep: one row per grid point, in grid order."""

    def plot(self, path: str | os.PathLike) -> Path:
        """Metric vs scale per dataset and the objective (heatmaps for two axes), Pareto front for two datasets."""
        from .plots import plot_sweep

        return plot_sweep(self.rows, list(self.axes), self.datasets, self.metric, path, references=self.references, reference_for=self.reference_for, objective_label=self.objective_label)


def default_out(kind: str) -> Path:
    """``runs_dir/taskvec/<kind>``, incremented like Ultralytics runs (``sweep``, ``sweep2``, ...)."""
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.files import increment_path

    return increment_path(Path(SETTINGS["runs_dir"]) / "taskvec" / kind, sep="")


def prepare_out(out: str | os.PathLike | None, kind: str) -> Path:
    path = Path(out) if out is not None else default_out(kind)
    if path.exists() and not path.is_dir():
        raise OutputError(f"out={path} is a file; give a folder for the {kind} results.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def setup(base: ModelLike, vectors: Sequence[Any], data: Any, *, reference: Any, metric: str, objective: Any, evaluator: Evaluate | None, eval_kw: dict[str, Any], merge_kw: dict[str, Any], parts: Iterable[str] | None, unmatched: str, force: bool) -> tuple[LoadedModel, list[TaskVector], list[str], Evaluate, Objective, dict[str, Any]]:
    """Shared by sweep/search/soup: load the base once, extract the vectors once, resolve datasets and references.

    ``imgsz=None`` in ``eval_kw``/``merge_kw`` becomes the base's training image size, as ``YOLO(path).val()`` does.
    """
    b = load_model(base)
    if eval_kw.get("imgsz") is None:
        eval_kw["imgsz"] = merge_kw["imgsz"] = int(b.train_args.get("imgsz") or 640)
    if isinstance(vectors, (str, os.PathLike, TaskVector)):
        vectors = [vectors]
    if not vectors:
        raise TaskVecError("no task vectors or fine-tunes given.")
    if merge_kw.get("classes") == "union":  # other class sets: their class branches are carried to the union head
        unmatched = "carry"
    tvs = as_vectors(b, list(vectors), parts=parts, unmatched=unmatched)
    check_fingerprints(b, tvs, force)
    datasets = [dataset_name(d) for d in data_list(data)]
    sources = reference_sources(reference, datasets) if datasets else ({} if reference is None else None)
    if sources is None:
        raise TaskVecError("reference= needs data= to know the datasets it applies to.")
    goal = Objective(metric, None, objective)  # validates the objective before any evaluation
    return b, tvs, datasets, make_evaluator(data, evaluator, eval_kw), goal, sources


def sweep(
    base: ModelLike,
    vectors: Sequence[Any] | Any,
    data: str | Sequence[str] | None = None,
    scales: Any = "0:1:0.1",
    *,
    reference: Any = None,
    metric: str = "map50_95",
    objective: str | Callable[[dict[str, float]], float] = "mean",
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    bn: str = DEFAULT_BN,
    bn_data: str | Sequence[str] | None = None,
    bn_batches: int = 16,
    classes: str = "error",
    orthogonalize: bool = False,
    parts: Iterable[str] | None = None,
    unmatched: str = "error",
    seed: int = 0,
    force: bool = False,
    imgsz: int | None = None,
    batch: int = 16,
    device: Any = None,
    half: bool | None = None,
    conf: float | None = None,
    iou: float = 0.7,
    split: str = "val",
    out: str | os.PathLike | None = None,
    plot: bool = True,
    evaluator: Evaluate | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    verbose: bool = True,
) -> SweepResult:
    """Merge and validate ``base`` + ``vectors`` at every point of the ``scales`` grid (see the module doc).

    ``vectors``: task-vector files, fine-tuned checkpoints or TaskVectors. ``out``: folder for ``sweep.json``
    (resumable), ``sweep.csv`` and ``sweep.png`` (default ``runs_dir/taskvec/sweepN``). ``evaluator``: any callable
    ``model -> {dataset: {metric: value}}`` to use instead of ``Evaluator(data, imgsz=..., ...)``. ``callback``: called
    with each new row (raising from it stops the sweep; finished points stay in the results file).
    """
    grid = parse_grid(scales)  # a bad grid fails before any loading
    eval_kw = dict(imgsz=imgsz, batch=batch, device=device, half=half, conf=conf, iou=iou, split=split, verbose=False, progress=False)
    merge_kw = dict(method=method, params=dict(params or {}), bn=bn, bn_data=bn_data, bn_batches=bn_batches, classes=classes, orthogonalize=orthogonalize, seed=seed, force=force, imgsz=imgsz)
    b, tvs, datasets, evaluate, objective, sources = setup(base, vectors, data, reference=reference, metric=metric, objective=objective, evaluator=evaluator, eval_kw=eval_kw, merge_kw=merge_kw, parts=parts, unmatched=unmatched, force=force)
    names = vector_names(tvs)
    axes = canonical_axes(grid, tvs, names)
    points = grid_points(axes)
    check_part_coverage(points[0], tvs, names)
    folder = prepare_out(out, "sweep")
    config = identity(b, tvs, merge_kw, eval_kw, data_list(data), {"references": {d: reference_label(s) for d, s in sources.items()}, "metric": metric, "objective": objective_name(objective)})
    log = ResultsLog(folder / "sweep.json", "sweep", config, inputs=_input_files(base, vectors))

    scorer = MergeScorer(b, tvs, evaluate, objective, merge_kw)
    scored, labels = _references(log, sources, b, evaluate, verbose)
    objective.references = references_per_dataset(scored, labels)
    rows = run_points(points, scorer, log, desc="sweep", verbose=verbose, callback=callback)
    datasets = datasets or _datasets_of(rows)
    result = SweepResult(table_rows(rows), axes, datasets, metric, objective.label, scored, labels, {"json": log.path, "csv": log.csv_path}, scorer, scorer.evaluations)
    log.save(best=result.best)
    if plot:
        result.files["png"] = result.plot(folder / "sweep.png")
    return result


def _references(log: ResultsLog, sources: Mapping[str, Any], base: LoadedModel, evaluate: Evaluate, verbose: bool) -> tuple[dict[str, Metrics], dict[str, str]]:
    """Reference metrics from the results file, or scored now (once each) and stored in it."""
    labels = {ds: reference_label(src) for ds, src in sources.items()}
    if log.references and set(log.references) >= set(labels.values()):
        return {k: log.references[k] for k in set(labels.values())}, labels
    scored, labels = score_references(sources, base, evaluate, verbose)
    log.references = _plain(scored)
    log.save()
    return scored, labels


def run_points(points: Sequence[Point], scorer: MergeScorer, log: ResultsLog, *, desc: str, verbose: bool, callback: Callable | None = None) -> list[dict[str, Any]]:
    """Score each point not already in ``log`` (progress bar), storing every new row atomically."""
    rows = []
    bar = _bar(points, desc, verbose)
    best = -math.inf
    for point in bar:
        row = log.find(point)
        if row is None:
            row = log.add(point, scorer.score(point))
            if callback is not None:
                callback(row)
        rows.append(row)
        best = max(best, row["objective"])
        bar.set_description(f"{desc} (best {best:.4f})")
    return rows


def _datasets_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: list[str] = []
    for key in rows[0] if rows else ():
        ds, sep, metric = key.rpartition("/")
        if sep and metric != "norm" and ds not in seen:
            seen.append(ds)
    return seen


def _input_files(base: Any, vectors: Any) -> list[Any]:
    from .checkpoint import input_file

    items = [vectors] if isinstance(vectors, (str, os.PathLike)) else list(vectors or [])
    return [p for p in (input_file(x) for x in [base, *items]) if p is not None]
