"""Automatic scale search and greedy soups: merges chosen by the validation objective, under a budget.

>>> from yolo_taskvec import search, greedy_soup
>>> res = search("yolo26n-base80.pt", ["night.safetensors"], data=["fruit80.yaml", "fruit80-night.yaml"],
...              space="parts", budget=20, imgsz=320, reference=["yolo26n-base80.pt", "yolo26n-fruit-night.pt"])
>>> res.best_point                      # {'backbone': 0.5, 'neck': 0.375, 'head': 0.5}
>>> soup = greedy_soup("yolo26n-base80.pt", ["a.pt", "b.pt", "c.pt"], data="val.yaml")

Search space (``space=``): ``"scale"`` (one scale), ``"vectors"`` (one weight per vector), ``"parts"``
(``backbone``, ``neck``, ``head``), ``"vectors+parts"``, a list of such keys (``["backbone", "head.box", "*"]``)
or a mapping ``{key: (low, high)}``; ``"auto"`` is ``parts`` for one vector and ``vectors`` for several. Keys are
those of ``sweep`` grids; ``bounds`` (default 0..1) applies to keys without their own.

Strategies (``strategy=``), written as generators that yield batches of points and receive their objectives:

* ``coordinate`` (default): compass search with a shrinking step. From ``start`` (the centre of the bounds) it
  tries ``±step`` along each key in turn, keeps walking while the objective improves, halves every step when no
  key improves, and stops when the steps fall under ``min_step`` (default range/32) or the budget is spent.
  With ``workers > 1`` it polls all ``2·d`` neighbours at once (parallel trials).
* ``random``: the start point, then uniform samples in the bounds (seeded).

Both are deterministic, so with the same ``out`` a rerun replays finished trials from the results file instead of
evaluating them again, and a larger ``budget`` continues where the last run stopped.

Backends (``backend=``): ``local`` (in-process; one Evaluator reused by every trial) or ``ray`` (Ray Tune; every
trial, and the scoring of the references, is a Ray task). ``address=None`` starts a private local Ray instance
(``workers`` CPUs) and shuts it down afterwards; ``address="auto"`` or ``"ray://head:10001"`` uses a running cluster.
The base and vectors travel through Ray's object store, so workers need only ``pip install yolo-taskvec[ray]`` and
the dataset yamls and images at the same paths (shared storage); ``trial_resources={"cpu": 4, "gpu": 1}`` with
``device=0`` puts each trial on a GPU.

Greedy soup (Wortsman et al. 2022, Model soups, ICML): fine-tunes sorted by their own objective, each added to the
uniform soup (``average``) only when the soup's objective does not drop.
"""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TaskVecError
from .merging import DEFAULT_BN
from .sweep import (
    PART_KEYS,
    Evaluate,
    MergeScorer,
    Metrics,
    Objective,
    Point,
    ResultsLog,
    ScoredRun,
    _bar,
    _datasets_of,
    _input_files,
    _plain,
    _references,
    canonical_axes,
    check_part_coverage,
    data_list,
    identity,
    make_evaluator,
    objective_name,
    prepare_out,
    reference_label,
    reference_model,
    references_per_dataset,
    setup,
    table_rows,
    vector_names,
)
from .taskvector import check_scale

STRATEGIES = ("coordinate", "random")
BACKENDS = ("local", "ray")
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
    if isinstance(space, str) and "," in space:
        space = [s.strip() for s in space.split(",") if s.strip()]
    if isinstance(space, str):
        if space not in SPACES:
            raise TaskVecError(f"unknown search space '{space}'; use {', '.join(SPACES)}, a list of parts/vectors or a mapping of bounds.")
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


# ----------------------------------------------------------------------------------------------- results
@dataclass
class SearchResult(ScoredRun):
    """A search: one row per trial, in the order they finished; ``axes`` holds the bounds."""

    strategy: str = "coordinate"
    backend: str = "local"

    def plot(self, path: str | os.PathLike) -> Path:
        """Objective per trial with the best-so-far curve."""
        from .plots import plot_search

        return plot_search(self.rows, path, objective_label=self.objective_label, title=f"{self.strategy} search ({self.backend}): {', '.join(self.axes)}", axes=list(self.axes))


@dataclass
class SoupResult(ScoredRun):
    """A greedy soup: individual scores, then one row per candidate soup; ``ingredients`` kept in order."""

    ingredients: list[str] | None = None

    @property
    def best_index(self) -> int:
        return max(i for i, r in enumerate(self.rows) if r.get("kept"))

    def columns(self) -> list[str]:
        return [c for c in super().columns() if c not in self.axes] + ["tried"]

    def best_text(self) -> str:
        return f"soup of {' + '.join(self.ingredients or [])}"

    def plot(self, path: str | os.PathLike) -> Path:
        from .plots import plot_search

        return plot_search(self.rows, path, objective_label=self.objective_label, title="greedy soup")


# ----------------------------------------------------------------------------------------------- search
def search(
    base: Any,
    vectors: Sequence[Any] | Any,
    data: str | Sequence[str] | None = None,
    *,
    space: Any = "auto",
    bounds: Any = (0.0, 1.0),
    budget: int = 20,
    strategy: str = "coordinate",
    start: Any = None,
    step: float | None = None,
    min_step: float | None = None,
    seed: int = 0,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    trial_resources: Mapping[str, float] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
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
    verbose: bool = True,
) -> SearchResult:
    """Search per-vector/per-part scales maximizing the objective with at most ``budget`` evaluations.

    Everything after ``reference`` is as in ``sweep``. ``out`` gets ``search.json`` (resumable), ``search.csv`` and
    ``search.png``. ``workers``: parallel trials (Ray; default 2). ``evaluator`` must be picklable for Ray.
    """
    if backend not in BACKENDS:
        raise TaskVecError(f"unknown search backend '{backend}'; choose {', '.join(BACKENDS)}.")
    if strategy not in STRATEGIES:
        raise TaskVecError(f"unknown search strategy '{strategy}'; choose {', '.join(STRATEGIES)}.")
    if not isinstance(budget, int) or budget < 1:
        raise TaskVecError(f"budget must be a positive number of evaluations, got {budget!r}.")
    workers = workers or (2 if backend == "ray" else 1)
    eval_kw = dict(imgsz=imgsz, batch=batch, device=device, half=half, conf=conf, iou=iou, split=split, verbose=False, progress=False)
    merge_kw = dict(method=method, params=dict(params or {}), bn=bn, bn_data=bn_data, bn_batches=bn_batches, classes=classes, orthogonalize=orthogonalize, seed=seed, force=force, imgsz=imgsz)
    local_evaluator = _no_local_evaluation if backend == "ray" else evaluator  # Ray: evaluators live in the workers
    b, tvs, datasets, evaluate, goal, sources = setup(base, vectors, data, reference=reference, metric=metric, objective=objective, evaluator=local_evaluator, eval_kw=eval_kw, merge_kw=merge_kw, parts=parts, unmatched=unmatched, force=force)
    names = vector_names(tvs)
    dims = search_space(space, bounds, names)
    dims = dict(zip(canonical_axes(dims, tvs, names), dims.values()))
    start = start_point(dims, start)
    check_part_coverage(start, tvs, names)
    proposer = make_proposer(strategy, dims, start, seed=seed, workers=workers if backend == "ray" else 1, step=step, min_step=min_step)
    folder = prepare_out(out, "search")
    config = identity(b, tvs, merge_kw, eval_kw, data_list(data), {
        "references": {d: reference_label(s) for d, s in sources.items()}, "space": {k: list(v) for k, v in dims.items()},
        "strategy": strategy, "start": start, "step": step, "min_step": min_step, "seed": seed, "objective": objective_name(objective), "metric": metric,
        "workers": workers if backend == "ray" else 1,
    })
    log = ResultsLog(folder / "search.json", "search", config, inputs=_input_files(base, vectors))
    scorer = MergeScorer(b, tvs, evaluate, goal, merge_kw)
    if backend == "local":
        scored, labels = _references(log, sources, b, evaluate, verbose)
        goal.references = references_per_dataset(scored, labels)
        before = len(log.rows)
        _search_local(proposer, scorer, log, budget, verbose)
        evaluated = len(log.rows) - before
    else:
        core = {"base": b, "vectors": tvs, "merge_kw": merge_kw, "data": data_list(data), "eval_kw": eval_kw, "evaluator": evaluator}
        scored, labels, evaluated = _search_ray(proposer, core, goal, sources, log, budget, workers, address, trial_resources, runtime_env, folder, verbose)
        goal.references = references_per_dataset(scored, labels)
    if not log.rows:
        raise TaskVecError("the search finished without any trial.")
    rows = table_rows(log.rows)
    datasets = datasets or _datasets_of(rows)
    result = SearchResult(rows, {k: list(v) for k, v in dims.items()}, datasets, metric, goal.label, scored, labels, {"json": log.path, "csv": log.csv_path}, scorer, evaluated, ("trial",), strategy, backend)
    log.save(best=result.best)
    if plot:
        result.files["png"] = result.plot(folder / "search.png")
    return result


def _no_local_evaluation(model: Any) -> Metrics:
    raise TaskVecError("this search ran on Ray; its models are rebuilt with best_model(), not evaluated locally.")


def _new_trial(log: ResultsLog, point: Point, row: Mapping[str, Any]) -> dict[str, Any]:
    return log.add(point, {"trial": len(log.rows) + 1, **row})


def _search_local(proposer: Proposer, scorer: MergeScorer, log: ResultsLog, budget: int, verbose: bool) -> None:
    bar = _bar(range(budget), "search", verbose)
    best = -math.inf

    def score(point: Point) -> float:
        nonlocal best
        row = log.find(point)
        if row is None:
            if len(log.rows) >= budget:
                raise BudgetSpent
            row = _new_trial(log, point, scorer.score(point))
        bar.update(max(0, min(len(log.rows), budget) - bar.n))
        best = max(best, row["objective"])
        bar.set_description(f"search (best {best:.4f})")
        return row["objective"]

    try:
        run_proposer(proposer, score, budget)
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------- Ray backend
_WORKER_SCORERS: dict[str, MergeScorer] = {}


def _worker_scorer(core: Any, key: str) -> MergeScorer:
    """One scorer (loaded base, vectors, Evaluator) per Ray worker process and search."""
    if key not in _WORKER_SCORERS:
        import ray

        core = ray.get(core) if isinstance(core, ray.ObjectRef) else core
        evaluate = make_evaluator(core["data"], core["evaluator"], core["eval_kw"])
        _WORKER_SCORERS.clear()
        _WORKER_SCORERS[key] = MergeScorer(core["base"], core["vectors"], evaluate, Objective(), core["merge_kw"])
    return _WORKER_SCORERS[key]


def _ray_references(core: Any, key: str, models: Mapping[str, Any]) -> dict[str, Metrics]:
    scorer = _worker_scorer(core, key)
    return {label: scorer.evaluate(reference_model(src, scorer.base)) for label, src in models.items()}


def _ray_trial(config: Mapping[str, float], core: Any = None, key: str = "", objective: Objective | None = None) -> dict[str, Any]:
    """A Ray Tune trial: merge at ``config`` and score it in this worker."""
    scorer = _worker_scorer(core, key)
    scorer.objective = objective
    row = scorer.score({k: float(v) for k, v in config.items()})
    return {"objective": row["objective"], "row": json.dumps(row)}


def _tune_searcher(proposer: Proposer, log: ResultsLog, budget: int, bar: Any):
    """A Ray Tune ``Searcher`` that asks a proposer for points and replays finished ones from the results file."""
    from ray.tune.search import Searcher

    class ProposerSearcher(Searcher):
        LIVE = ("proposer", "log", "bar")  # driver-side objects, left out when Tune pickles its experiment state

        def __init__(self, proposer: Proposer, log: ResultsLog, budget: int, bar: Any) -> None:
            super().__init__(metric="objective", mode="max")
            self.proposer, self.log, self.budget, self.bar = proposer, log, budget, bar
            self.batch: list[Point] = []
            self.values: dict[int, float] = {}
            self.handed = 0
            self.pending: dict[str, tuple[int, Point]] = {}
            self.done = False
            self.errors: list[str] = []
            self._advance(None)

        def __getstate__(self) -> dict[str, Any]:
            return {k: (None if k in self.LIVE else v) for k, v in self.__dict__.items()}

        def set_search_properties(self, metric, mode, config, **spec) -> bool:  # noqa: ANN001 - Tune's signature
            return True

        def save(self, checkpoint_path: str) -> None:  # resuming goes through the results json, not Tune
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

        def _advance(self, values: list[float] | None) -> None:
            try:
                self.batch = next(self.proposer) if values is None else self.proposer.send(values)
            except StopIteration:
                self.batch, self.done = [], True
            self.values, self.handed = {}, 0

        def suggest(self, trial_id: str) -> dict | None:
            while not self.done and not self.errors:
                if self.handed < len(self.batch):
                    point = self.batch[self.handed]
                    row = self.log.find(point)
                    if row is not None:
                        self.values[self.handed] = row["objective"]
                        self.handed += 1
                        continue
                    if len(self.log.rows) + len(self.pending) >= self.budget:
                        break
                    self.pending[trial_id] = (self.handed, point)
                    self.handed += 1
                    return dict(point)
                if len(self.values) < len(self.batch):
                    return None  # wait for the running trials of this batch
                self._advance([self.values[i] for i in range(len(self.batch))])
            return None if self.pending else Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            index, point = self.pending.pop(trial_id)
            if error or not result or "row" not in result:
                self.errors.append(trial_id)
                self.values[index] = -math.inf
                return
            row = _new_trial(self.log, point, json.loads(result["row"]))
            self.values[index] = row["objective"]
            self.bar.update(1)

    return ProposerSearcher(proposer, log, budget, bar)


def _search_ray(proposer: Proposer, core: dict[str, Any], goal: Objective, sources: Mapping[str, Any], log: ResultsLog, budget: int, workers: int, address: str | None, trial_resources: Mapping[str, float] | None, runtime_env: Mapping[str, Any] | None, folder: Path, verbose: bool) -> tuple[dict[str, Metrics], dict[str, str], int]:
    """Run the references and the trials as Ray tasks; returns references, labels and the new trial count."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise TaskVecError("backend=ray needs Ray Tune: pip install 'yolo-taskvec[ray]' (or 'ray[tune]').") from e
    resources = dict(trial_resources or {"cpu": 1})
    owned = not ray.is_initialized()
    if owned:
        init = {"address": address} if address else {"num_cpus": max(workers, int(math.ceil(resources.get("cpu", 1)))), "include_dashboard": False}
        ray.init(**init, runtime_env=dict(runtime_env) if runtime_env else None, log_to_driver=verbose, configure_logging=verbose)
    key = uuid.uuid4().hex
    before = len(log.rows)
    try:
        core_ref = ray.put(core)
        labels = {ds: reference_label(src) for ds, src in sources.items()}
        if labels and not set(log.references) >= set(labels.values()):
            from .checkpoint import load_model

            models = {}
            for ds, src in sources.items():
                models.setdefault(labels[ds], src if (isinstance(src, str) and src == "base") else load_model(src))
            task = ray.remote(_ray_references).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))
            log.references = _plain(ray.get(task.remote(core_ref, key, models)))
            log.save()
        scored = {k: log.references[k] for k in set(labels.values())}
        goal.references = references_per_dataset(scored, labels)
        bar = _bar(range(budget), "search (ray)", verbose)
        bar.update(min(len(log.rows), budget))
        searcher = _tune_searcher(proposer, log, budget, bar)
        remaining = budget - len(log.rows)
        if remaining > 0:
            trainable = tune.with_resources(tune.with_parameters(_ray_trial, core=core_ref, key=key, objective=goal), resources)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(metric="objective", mode="max", search_alg=searcher, num_samples=remaining, max_concurrent_trials=workers, reuse_actors=True),
                run_config=tune.RunConfig(storage_path=str((folder / "ray").resolve()), name=f"search-{key[:8]}", verbose=1 if verbose else 0),
            )
            grid = tuner.fit()
            if grid.errors:
                first = str(grid.errors[0]).strip().splitlines()
                raise TaskVecError(f"a Ray trial failed: {first[-1] if first else 'unknown error'}")
        bar.close()
    finally:
        if owned:
            ray.shutdown()
    return scored, labels, len(log.rows) - before


# ----------------------------------------------------------------------------------------------- greedy soup
def greedy_soup(
    base: Any,
    models: Sequence[Any],
    data: str | Sequence[str] | None = None,
    *,
    reference: Any = None,
    metric: str = "map50_95",
    objective: str | Callable[[dict[str, float]], float] = "mean",
    bn: str = DEFAULT_BN,
    bn_data: str | Sequence[str] | None = None,
    bn_batches: int = 16,
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
    verbose: bool = True,
) -> SoupResult:
    """Greedy soup of fine-tunes of ``base``: ``result.best_model()`` is the soup, ``result.ingredients`` its members.

    Each model is scored alone, then, best first, added to the uniform soup (``average`` of the fine-tunes, BatchNorm
    statistics per ``bn``) when the soup's objective stays at least as high. ``out``: folder for ``soup.json``
    (resumable), ``soup.csv`` and ``soup.png``.
    """
    eval_kw = dict(imgsz=imgsz, batch=batch, device=device, half=half, conf=conf, iou=iou, split=split, verbose=False, progress=False)
    merge_kw = dict(method="average", params={}, bn=bn, bn_data=bn_data, bn_batches=bn_batches, classes="error", seed=0, force=force, imgsz=imgsz)
    b, tvs, datasets, evaluate, goal, sources = setup(base, models, data, reference=reference, metric=metric, objective=objective, evaluator=evaluator, eval_kw=eval_kw, merge_kw=merge_kw, parts=None, unmatched="error", force=force)
    names = vector_names(tvs)
    if len(names) < 2:
        raise TaskVecError("a greedy soup needs at least two fine-tuned models.")
    folder = prepare_out(out, "soup")
    config = identity(b, tvs, merge_kw, eval_kw, data_list(data), {"references": {d: reference_label(s) for d, s in sources.items()}, "objective": objective_name(objective), "metric": metric})
    log = ResultsLog(folder / "soup.json", "soup", config, inputs=_input_files(base, models))
    scorer = MergeScorer(b, tvs, evaluate, goal, merge_kw)
    scored, labels = _references(log, sources, b, evaluate, verbose)
    goal.references = references_per_dataset(scored, labels)
    before = len(log.rows)
    rows = _greedy(scorer, log, names, verbose)
    datasets = datasets or _datasets_of(rows)
    result = SoupResult(rows, {n: [0.0, 1.0] for n in names}, datasets, metric, goal.label, scored, labels, {"json": log.path, "csv": log.csv_path}, scorer, len(log.rows) - before, ("step", "candidate", "alone", "kept"))
    result.ingredients = [r["candidate"] for r in rows if r["kept"]]
    log.save(ingredients=result.ingredients, best=result.best)
    if plot:
        result.files["png"] = result.plot(folder / "soup.png")
    return result


def _greedy(scorer: MergeScorer, log: ResultsLog, names: Sequence[str], verbose: bool) -> list[dict[str, Any]]:
    """Score each model alone, then add them best first while the soup's objective does not drop."""
    n = len(names)
    one_hot = lambda chosen: {m: (1.0 if m in chosen else 0.0) for m in names}  # noqa: E731
    bar = _bar(range(2 * n - 1), "greedy soup", verbose)

    def score(chosen: Sequence[str]) -> dict[str, Any]:
        point = one_hot(chosen)
        row = log.find(point) or log.add(point, scorer.score(point))
        bar.update(1)
        return {k: v for k, v in row.items() if k != "point"}

    alone = {m: score([m])["objective"] for m in names}
    order = sorted(names, key=lambda m: -alone[m])
    soup = [order[0]]
    best = score(soup)
    steps = [{"step": 1, "candidate": order[0], "alone": alone[order[0]], "kept": True, "tried": order[0], **best}]
    for i, m in enumerate(order[1:], start=2):
        row = score([*soup, m])
        kept = row["objective"] >= best["objective"]
        steps.append({"step": i, "candidate": m, "alone": alone[m], "kept": kept, "tried": " + ".join([*soup, m]), **row})
        if kept:
            soup, best = [*soup, m], row
    bar.close()
    return steps
