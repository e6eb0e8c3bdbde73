"""Automatic scale search: candidates of a recipe chosen by the (selection) objective, under a budget.

>>> from yolo_taskvec import search
>>> res = search("yolo26n-base80.pt", ["night.safetensors"], data=["fruit80.yaml", "fruit80-night.yaml"],
...              space="parts", budget=20, imgsz=320, select="train:0.2", reference=["base", "yolo26n-fruit-night.pt"])
>>> res.best_point                      # {'backbone': 0.5, 'neck': 0.375, 'head': 0.5}

Search space (``space=``): ``"scale"`` (one scale), ``"vectors"`` (one weight per input), ``"parts"``
(``backbone``, ``neck``, ``head``), ``"vectors+parts"``, a list of keys (``["backbone", "head.box", "density"]``) or
bounds per key (``{key: (low, high)}``, or ``"backbone=0:1;head=0:0.5"`` in the per-part syntax); ``"auto"`` is
``parts`` for one input and ``vectors`` for several. Keys are those of ``sweep`` grids (scale, parts, input names,
numeric method parameters); ``bounds`` (default 0..1) applies to keys without their own.

Strategies (``strategy=``), written as generators that yield batches of points and receive their objectives:

* ``coordinate`` (default): compass search with a shrinking step. From ``start`` (the centre of the bounds) it
  tries ``±step`` along each key in turn, keeps walking while the objective improves, halves every step when no
  key improves, and stops when the steps fall under ``min_step`` (default range/32) or the budget is spent.
  With ``workers > 1`` it polls all ``2·d`` neighbours at once (parallel trials).
* ``random``: the start point, then uniform samples in the bounds (seeded).

Both are deterministic, so with the same run folder a rerun replays finished trials from the results file instead
of evaluating them again, and a larger ``budget`` continues where the last run stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from .errors import TaskVecError
from .recipe import is_mapping_text, parse_mapping
from .runs import (
    Evaluate,
    Point,
    RunResult,
    build_run_inputs,
    input_axis_names,
    progress,
    setup_run,
)
from .taskvector import check_scale

STRATEGIES = ("coordinate", "random")
BACKENDS = ("local",)
SPACES = ("auto", "scale", "vectors", "parts", "vectors+parts")
DEFAULT_PARTS = ("backbone", "neck", "head")
Bounds = tuple[float, float]
Proposer = Generator[list[Point], list[float], None]


# ----------------------------------------------------------------------------------------------- space
def parse_bounds(bounds: Any, what: str = "bounds") -> Bounds:
    """``(low, high)`` from a pair or ``"low:high"``/``"low,high"``."""
    if isinstance(bounds, str):
        fields = bounds.replace(",", ":").split(":")
        if len(fields) != 2:
            raise TaskVecError(f"{what} '{bounds}' is not low:high (e.g. 0:1).")
        try:
            bounds = tuple(float(f) for f in fields)
        except ValueError as e:
            raise TaskVecError(f"{what} '{bounds}' is not low:high (e.g. 0:1).") from e
    try:
        low, high = (check_scale(v, what) for v in bounds)
    except (TypeError, ValueError) as e:
        if isinstance(e, TaskVecError):
            raise
        raise TaskVecError(f"{what} must be a (low, high) pair, got {bounds!r}.") from e
    if not low < high:
        raise TaskVecError(f"{what} ({low:g}, {high:g}): low must be below high.")
    return low, high


def search_space(space: Any, bounds: Any, names: Sequence[str]) -> dict[str, Bounds]:
    """``{key: (low, high)}`` from a space keyword, a list of keys or a mapping of bounds."""
    default = parse_bounds(bounds)
    if is_mapping_text(space):
        space = parse_mapping(space, "space")
    elif isinstance(space, str) and ("," in space or space not in SPACES):  # keys: checked against the recipe later
        space = [s.strip() for s in space.split(",") if s.strip()]
    if isinstance(space, str):
        if space == "auto":
            space = "parts" if len(names) == 1 else "vectors"
        keys = {"scale": ["scale"], "vectors": list(names), "parts": list(DEFAULT_PARTS), "vectors+parts": [*names, *DEFAULT_PARTS]}[space]
        return {k: default for k in keys}
    if isinstance(space, Mapping):
        return {str(k): parse_bounds(v, f"bounds of '{k}'") for k, v in space.items()}
    keys = [str(k) for k in space]
    if not keys:
        raise TaskVecError("the search space is empty.")
    return {k: default for k in keys}


def start_point(dims: Mapping[str, Bounds], start: Any) -> Point:
    """The centre of the bounds, a number for every key, or a mapping (missing keys at the centre)."""
    centre = {k: round((lo + hi) / 2, 9) for k, (lo, hi) in dims.items()}
    if start is None:
        return centre
    given = dict(start) if isinstance(start, Mapping) else {k: start for k in dims}
    unknown = [k for k in given if k not in dims]
    if unknown:
        raise TaskVecError(f"start value for '{unknown[0]}', which is not in the search space ({', '.join(dims)}).")
    point = {**centre, **{k: check_scale(v, f"start of '{k}'") for k, v in given.items()}}
    for k, v in point.items():
        lo, hi = dims[k]
        if not lo <= v <= hi:
            raise TaskVecError(f"start {k}={v:g} is outside its bounds ({lo:g}, {hi:g}).")
    return point


# ----------------------------------------------------------------------------------------------- strategies
def _moved(x: Point, key: str, delta: float, dims: Mapping[str, Bounds]) -> Point:
    lo, hi = dims[key]
    return {**x, key: round(min(hi, max(lo, x[key] + delta)), 9)}


def coordinate_search(dims: Mapping[str, Bounds], start: Point, *, step: float | None = None, min_step: float | None = None, parallel: bool = False) -> Proposer:
    """Compass search with a shrinking step (see the module doc); ``step``/``min_step`` as fractions of each range."""
    steps = {k: (hi - lo) * (step if step is not None else 0.25) for k, (lo, hi) in dims.items()}
    floors = {k: (hi - lo) * (min_step if min_step is not None else 1 / 32) for k, (lo, hi) in dims.items()}
    x = dict(start)
    (fx,) = yield [x]
    while True:
        active = [k for k in dims if steps[k] >= floors[k] * (1 - 1e-9)]
        if not active:
            return
        improved = False
        if parallel:
            candidates = []
            for k in active:
                for sign in (1, -1):
                    y = _moved(x, k, sign * steps[k], dims)
                    if y != x and y not in candidates:
                        candidates.append(y)
            if candidates:
                values = yield candidates
                best = max(range(len(values)), key=lambda i: values[i])
                if values[best] > fx:
                    x, fx, improved = candidates[best], values[best], True
        else:
            for k in active:
                for sign in (1, -1):
                    walked = False
                    while True:
                        y = _moved(x, k, sign * steps[k], dims)
                        if y == x:
                            break
                        (fy,) = yield [y]
                        if fy <= fx:
                            break
                        x, fx, walked, improved = y, fy, True, True
                    if walked:
                        break
        if not improved:
            for k in active:
                steps[k] /= 2


def random_search(dims: Mapping[str, Bounds], start: Point, *, seed: int = 0, batch: int = 1) -> Proposer:
    """The start point, then uniform samples in the bounds, ``batch`` at a time (seeded, endless)."""
    rng = random.Random(seed)
    yield [dict(start)]
    while True:
        yield [{k: round(rng.uniform(lo, hi), 6) for k, (lo, hi) in dims.items()} for _ in range(batch)]


def make_proposer(strategy: str, dims: Mapping[str, Bounds], start: Point, *, seed: int, workers: int, step: float | None, min_step: float | None) -> Proposer:
    if strategy == "coordinate":
        return coordinate_search(dims, start, step=step, min_step=min_step, parallel=workers > 1)
    if strategy == "random":
        return random_search(dims, start, seed=seed, batch=max(1, workers))
    raise TaskVecError(f"unknown search strategy '{strategy}'; choose {', '.join(STRATEGIES)}.")


def run_proposer(proposer: Proposer, score: Callable[[Point], float], budget: int) -> None:
    """Drive a proposer with a scoring function until it finishes or ``score`` raises ``BudgetSpent``."""
    try:
        batch = next(proposer)
        while True:
            batch = proposer.send([score(p) for p in batch])
    except (StopIteration, BudgetSpent):
        return


class BudgetSpent(Exception):
    """Raised by a scoring function when the evaluation budget is used up."""


def maximize(fn: Callable[[Point], float], dims: Mapping[str, Bounds], *, budget: int = 30, strategy: str = "coordinate", start: Any = None, seed: int = 0, step: float | None = None, min_step: float | None = None) -> tuple[Point, float, list[tuple[Point, float]]]:
    """Maximize a plain function of a point (no models): ``(best point, best value, history)``; distinct points only."""
    dims = {k: parse_bounds(v, f"bounds of '{k}'") for k, v in dims.items()}
    history: dict[str, tuple[Point, float]] = {}

    def score(p: Point) -> float:
        key = json.dumps(sorted(p.items()))
        if key not in history:
            if len(history) >= budget:
                raise BudgetSpent
            history[key] = (p, float(fn(p)))
        return history[key][1]

    run_proposer(make_proposer(strategy, dims, start_point(dims, start), seed=seed, workers=1, step=step, min_step=min_step), score, budget)
    best = max(history.values(), key=lambda pv: pv[1])
    return best[0], best[1], list(history.values())


# ----------------------------------------------------------------------------------------------- search
def check_search_options(strategy: str, backend: str, budget: Any, workers: Any) -> int:
    """Validate the search's own options (before anything is loaded); returns the number of parallel workers."""
    if backend not in BACKENDS:
        raise TaskVecError(f"unknown search backend '{backend}'; choose {', '.join(BACKENDS)}.")
    if strategy not in STRATEGIES:
        raise TaskVecError(f"unknown search strategy '{strategy}'; choose {', '.join(STRATEGIES)}.")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise TaskVecError(f"budget must be a positive number of evaluations, got {budget!r}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise TaskVecError(f"workers must be a positive number of parallel trials, got {workers!r}.")
    return workers or 1


def search(
    base: Any,
    vectors: Sequence[Any] | Any = None,
    data: str | Sequence[str] | None = None,
    *,
    space: Any = "auto",
    bounds: Any = (0.0, 1.0),
    budget: int = 20,
    strategy: str = "coordinate",
    start: Any = None,
    step: float | None = None,
    min_step: float | None = None,
    backend: str = "local",
    workers: int | None = None,
    out: str | os.PathLike | None = None,
    project: str | os.PathLike | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    plot: bool = True,
    evaluator: Evaluate | None = None,
    verbose: bool = True,
    **fields: Any,
) -> RunResult:
    """Search per-input/per-part scales (or method parameters) maximizing the objective in at most ``budget`` trials.

    ``base``/``vectors``/``fields`` and the run folder are as in ``sweep``; the recipe's ``seed`` also seeds the
    random strategy. The run folder gets ``search.json`` (resumable), ``search.csv`` and ``search.png``.
    """
    workers = check_search_options(strategy, backend, budget, workers)
    recipe, scoring = build_run_inputs(base, vectors, fields, data)
    names = input_axis_names(recipe)
    dims = search_space(space, bounds, names)
    start_at = start_point(dims, start)
    proposer = make_proposer(strategy, dims, start_at, seed=recipe.seed, workers=workers, step=step, min_step=min_step)
    config = {"space": {k: list(v) for k, v in dims.items()}, "strategy": strategy, "start": start_at, "step": step, "min_step": min_step, "workers": workers}
    run = setup_run("search", recipe, scoring, dims, config, out=out, project=project, name=name, exist_ok=exist_ok, evaluator=evaluator, verbose=verbose)
    scored, labels = run.references()
    before = len(run.log.rows)
    _search_local(proposer, run, budget)
    if not run.log.rows:
        raise TaskVecError("the search finished without any trial.")
    result = run.result(run.log.rows, {k: list(v) for k, v in dims.items()}, scored, labels, len(run.log.rows) - before, lead_columns=("trial",))
    result.context.update(strategy=strategy, backend=backend)
    return run.finish(result, plot)


def _search_local(proposer: Proposer, run: Any, budget: int) -> None:
    log, choice = run.log, run.scorer.choice_column
    bar = progress(range(budget), "search", run.verbose)
    best = -math.inf

    def score(point: Point) -> float:
        nonlocal best
        row = log.find(point)
        if row is None:
            if len(log.rows) >= budget:
                raise BudgetSpent
            row = log.add(point, {"trial": len(log.rows) + 1, **run.scorer.score(point)})
        bar.update(max(0, min(len(log.rows), budget) - bar.n))
        best = max(best, row[choice])
        bar.set_description(f"search (best {best:.4f})")
        return row[choice] if not math.isnan(row[choice]) else -math.inf  # a refused merge never attracts the search

    try:
        run_proposer(proposer, score, budget)
    finally:
        bar.close()
