"""Merge-then-validate sweeps: score a recipe over a grid of its fields on one or more datasets.

>>> from yolo_taskvec import sweep
>>> res = sweep("yolo26n-base80.pt", ["night.safetensors"], data=["fruit80.yaml", "fruit80-night.yaml"],
...             scales="0:1:0.1", imgsz=320, select="train:0.2", reference=["base", "yolo26n-fruit-night.pt"])
>>> print(res.table()); res.best_point          # {'scale': 0.6}: chosen on the selection split
>>> yolo_taskvec.save(res.best_model(), "best.pt")

Grids (``scales=``), the product of their axes; an axis is a recipe field:

* numbers (``[0, 0.5, 1]``, ``"0:1:0.1"`` = 0 to 1 inclusive in steps of 0.1, ``"0,0.5,1"``): one scale for the
  merge of all inputs, column ``scale``;
* a mapping (or ``"backbone=0:1:0.5;head=0,1;neck=1"``, the per-part syntax of ``recipe.parse_mapping``) whose keys
  are parts (per-part scales; parts not listed keep the recipe's scale), input names (per-input weights: the file
  stem, the recipe's name, or the 0-based index), method parameters (``density=0.1,0.2,0.4``), or ``scale``.
  A value is a list (an axis) or one number (fixed).

Every candidate is built by ``build.build_merged`` from ONE loaded base and inputs prepared once, and scored by one
``evaluation.Evaluator`` that keeps its dataloaders across candidates (see ``runs`` for selection splits, the
objective, references and resuming). ``backend="ray"`` scores the grid on a Ray cluster instead, every runner busy
until the grid is done (``backends``: ``address``, ``workers``, ``cpus_per_trial``, ``gpus_per_trial``).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .backends import backend_options, running
from .errors import TaskVecError
from .recipe import is_mapping_text, parse_mapping
from .runs import Evaluate, Point, RunResult, build_run_inputs, point_loop, setup_run
from .taskvector import check_scale

MAX_POINTS = 100_000


def parse_values(text: str | float | Iterable[float], what: str = "scales") -> list[float]:
    """``"0:1:0.1"`` (start:stop:step, stop included), ``"0,0.5,1"``, a number, or a list of numbers."""
    if isinstance(text, (int, float)):
        return [check_scale(text, what)]
    if not isinstance(text, str):
        values = [check_scale(_number(v, what) if isinstance(v, str) else v, what) for v in text]
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
    from .recipe import parse_number

    return parse_number(text, what)


def parse_grid(spec: Any) -> dict[str, list[float]]:
    """Axes of a grid: ``{"scale": [...]}`` for plain values, else ``{key: [...]}`` per recipe field."""
    if is_mapping_text(spec):
        spec = parse_mapping(spec, "scales")
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


def sweep(
    base: Any,
    vectors: Sequence[Any] | Any = None,
    data: str | Sequence[str] | None = None,
    scales: Any = "0:1:0.1",
    *,
    out: str | os.PathLike | None = None,
    project: str | os.PathLike | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    plot: bool = True,
    evaluator: Evaluate | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    verbose: bool = True,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    **fields: Any,
) -> RunResult:
    """Merge and validate a recipe at every point of the ``scales`` grid (see the module doc).

    ``base``: a base checkpoint (then ``vectors`` are the inputs: task-vector files, fine-tunes or TaskVectors) or a
    ``Recipe``. ``fields``: recipe fields (``method``, ``bn``, ``density``, ...) and scoring fields (``select``,
    ``reference``, ``metric``, ``objective``, ``imgsz``, ``batch``, ``device``, ``half``, ``conf``, ``iou``, ``split``);
    every one is validated before anything is loaded. ``out``/``project``/``name``/``exist_ok``: the run folder for
    ``sweep.json`` (resumable), ``sweep.csv`` and ``sweep.png``. ``evaluator``: any callable ``model -> {dataset:
    {metric: value}}`` instead of the Evaluator. ``callback``: called with each new row (raising stops the sweep;
    finished points stay in the results file). ``backend``, ``address``, ``workers``, ``cpus_per_trial``,
    ``gpus_per_trial``: where the candidates are scored (``backends``; default: here, one at a time).
    """
    grid = parse_grid(scales)  # a bad grid fails before any loading
    points = grid_points(grid)
    options = backend_options(fields, backend, address, workers, cpus_per_trial, gpus_per_trial)
    recipe, scoring = build_run_inputs(base, vectors, fields, data)
    with running(options, verbose) as runner:
        run = setup_run("sweep", recipe, scoring, grid, {"grid": grid}, out=out, project=project, name=name, exist_ok=exist_ok, evaluator=evaluator, verbose=verbose)
        runner.start(run)
        scored, labels = run.references(runner)
        before = len(run.log.rows)
        rows = point_loop(points, run, desc=f"sweep ({options.name})" if options.remote else "sweep", callback=callback, backend=runner)
        result = run.result(rows, grid, scored, labels, len(run.log.rows) - before)
        result.context.update(runner.describe())
        return run.finish(result, plot)
