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

Strategies (``strategy=``), each a proposer that hands out points one at a time and is told their objectives:

* ``coordinate`` (default): compass search with a shrinking step. From ``start`` (the centre of the bounds) it
  tries ``±step`` along each key in turn, keeps walking while the objective improves, halves every step when no
  key improves, and stops when the steps fall under ``min_step`` (default range/32) or the budget is spent.
  Deterministic. With ``workers > 1`` (parallel trials on Ray) it becomes an asynchronous pattern search: all
  ``2·d`` neighbours of the centre are polled at once, the centre moves as soon as any of them improves on it
  (the others still finish and may move it again), the steps halve once every neighbour of the centre has
  failed, and runners left free meanwhile poll the neighbours at the next halved steps: none waits for a batch.
* ``random``: the start point, then uniform samples in the bounds (seeded; the same sequence for any number of
  workers).
* ``tpe``: Optuna's Tree-structured Parzen Estimator (``pip install 'yolo-taskvec[optuna]'``), seeded with the
  recipe's ``seed``, first trial at ``start``; asynchronous by nature (``constant_liar`` for running trials).
* ``cmaes``: Optuna's CMA-ES sampler (needs ``cmaes`` too), centred on the middle of the bounds with σ₀ = range/6
  (its defaults); ``start`` is scored first.

Resuming: every finished trial is in ``search.json``; a rerun with the same run folder answers the points it
has already scored from that file (no evaluation, no budget) and a larger ``budget`` continues. Coordinate and
random search replay their own proposals. TPE and CMA-ES keep Optuna's study in the run folder
(``search.optuna.log``, a JournalStorage file) and continue it; trials found in the results file but not in the
study (an interrupted run) are added to it, trials the study started but never finished are closed.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from .backends import backend_options, running
from .errors import TaskVecError
from .recipe import is_mapping_text, parse_mapping
from .runs import Evaluate, Point, Proposer, RunResult, build_run_inputs, drive, input_axis_names, point_key, setup_run
from .taskvector import check_scale

STRATEGIES = ("coordinate", "random", "tpe", "cmaes")
OPTUNA_STRATEGIES = ("tpe", "cmaes")
SPACES = ("auto", "scale", "vectors", "parts", "vectors+parts")
DEFAULT_PARTS = ("backbone", "neck", "head")
OPTUNA_FILE = "search.optuna.log"
Bounds = tuple[float, float]
Batches = Generator[list[Point], list[float], None]  # a batch proposer: yields points, receives their objectives


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


def _steps(dims: Mapping[str, Bounds], step: float | None, min_step: float | None) -> tuple[dict[str, float], dict[str, float]]:
    steps = {k: (hi - lo) * (step if step is not None else 0.25) for k, (lo, hi) in dims.items()}
    floors = {k: (hi - lo) * (min_step if min_step is not None else 1 / 32) for k, (lo, hi) in dims.items()}
    return steps, floors


def coordinate_search(dims: Mapping[str, Bounds], start: Point, *, step: float | None = None, min_step: float | None = None, parallel: bool = False) -> Batches:
    """Compass search with a shrinking step (see the module doc); ``step``/``min_step`` as fractions of each range.

    ``parallel``: poll all ``2·d`` neighbours as one batch (synchronous; ``AsyncCoordinate`` needs no batches).
    """
    steps, floors = _steps(dims, step, min_step)
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


class BatchProposer(Proposer):
    """A batch generator (``coordinate_search``) as a proposer: the next batch once every point of this one is told."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches
        self.batch: list[Point] = []
        self.values: dict[int, float] = {}
        self.handed = 0
        self.done = False
        self._advance(None)

    def _advance(self, values: list[float] | None) -> None:
        try:
            self.batch = next(self.batches) if values is None else self.batches.send(values)
        except StopIteration:
            self.batch, self.done = [], True
        self.values, self.handed = {}, 0

    def ask(self) -> Point | None:
        if self.done or self.handed >= len(self.batch):
            return None
        self.handed += 1
        return dict(self.batch[self.handed - 1])

    def tell(self, point: Point, value: float) -> None:
        key = point_key(point)
        for i in range(self.handed):
            if i not in self.values and point_key(self.batch[i]) == key:
                self.values[i] = value
                break
        if len(self.values) == len(self.batch) and not self.done:
            self._advance([self.values[i] for i in range(len(self.batch))])


class AsyncCoordinate(Proposer):
    """Asynchronous compass (pattern) search: no batch barrier, for ``workers`` parallel trials.

    The start is scored first; then every neighbour ``x ± step_k`` of the centre ``x`` is proposed as soon as a
    runner is free. Whenever a told value beats the centre's, the centre moves there at once and its neighbours are
    proposed next (trials still running around the old centre finish and may move it again). The steps halve when
    every neighbour of the centre at the current step has been told without an improvement; it ends when they fall
    under their floors. While the last neighbours of a step are still running, free runners get the neighbours at
    the next, halved steps (the points the search polls next if those fail), so no runner waits idle.
    """

    def __init__(self, dims: Mapping[str, Bounds], start: Point, *, step: float | None = None, min_step: float | None = None) -> None:
        self.dims = dict(dims)
        self.initial, self.floors = _steps(dims, step, min_step)
        self.level = 0  # the steps are initial / 2**level
        self.ahead = 0  # halved levels already proposed ahead around the current centre
        self.x, self.fx = dict(start), -math.inf
        self.started = False
        self.queue: list[Point] = [dict(start)]
        self.seen: set[str] = {point_key(start)}
        self.running: set[str] = set()
        self.outstanding: set[str] = {point_key(start)}  # the current step's neighbours not yet told
        self.done = False

    def _active(self, level: int) -> list[str]:
        return [k for k in self.dims if self.initial[k] / 2**level >= self.floors[k] * (1 - 1e-9)]

    def _neighbours(self, level: int) -> list[Point]:
        return [_moved(self.x, k, sign * self.initial[k] / 2**level, self.dims) for k in self._active(level) for sign in (1, -1)]

    def _poll(self) -> None:
        """The centre's neighbours at the current steps: new ones queued, running ones waited for."""
        self.queue, self.outstanding, self.ahead = [], set(), 0
        for y in self._neighbours(self.level):
            key = point_key(y)
            if key not in self.seen:
                self.seen.add(key)
                self.queue.append(y)
                self.outstanding.add(key)
            elif key in self.running:
                self.outstanding.add(key)

    def _look_ahead(self) -> bool:
        """Queue the centre's neighbours at the next halved steps not proposed yet; False when there are none."""
        while self._active(self.level + self.ahead + 1):
            self.ahead += 1
            for y in self._neighbours(self.level + self.ahead):
                if point_key(y) not in self.seen:
                    self.seen.add(point_key(y))
                    self.queue.append(y)
            if self.queue:
                return True
        return False

    def ask(self) -> Point | None:
        while not self.done:
            if self.queue:
                point = self.queue.pop(0)
                self.running.add(point_key(point))
                return point
            if not self.started:
                return None  # the start is scored first
            if self.outstanding:
                if self._look_ahead():
                    continue
                return None
            self.level += 1  # every neighbour failed: halve the steps
            if not self._active(self.level):
                self.done = True
                return None
            self._poll()
        return None

    def tell(self, point: Point, value: float) -> None:
        key = point_key(point)
        self.running.discard(key)
        self.outstanding.discard(key)
        if not self.started:
            self.started = True
            self.x, self.fx = dict(point), value
            self._poll()
        elif value > self.fx:
            self.x, self.fx = dict(point), value
            self._poll()


class RandomProposer(Proposer):
    """The start point, then uniform samples in the bounds (seeded; the sequence does not depend on the workers)."""

    def __init__(self, dims: Mapping[str, Bounds], start: Point, *, seed: int = 0) -> None:
        self.dims, self.rng, self.first = dict(dims), random.Random(seed), dict(start)

    def ask(self) -> Point | None:
        if self.first is not None:
            point, self.first = self.first, None
            return point
        return {k: round(self.rng.uniform(lo, hi), 6) for k, (lo, hi) in self.dims.items()}


def random_search(dims: Mapping[str, Bounds], start: Point, *, seed: int = 0, batch: int = 1) -> Batches:
    """The random proposer as batches of ``batch`` points (the same sequence)."""
    proposer = RandomProposer(dims, start, seed=seed)
    yield [proposer.ask()]
    while True:
        yield [proposer.ask() for _ in range(batch)]


class OptunaProposer(Proposer):
    """Optuna's ask/tell interface as a proposer (TPE or CMA-ES), its study kept in ``storage`` (resumable).

    Points are Optuna's suggestions rounded to 1e-6 (stable results-file keys); each is told to the trial that
    proposed it. A study found in ``storage`` is continued: its unfinished trials are closed (with their value when
    the results file has it), and finished rows of the results file that the study lacks are added to it.
    """

    def __init__(self, strategy: str, dims: Mapping[str, Bounds], start: Point, *, seed: int = 0, storage: Any = None, rows: Sequence[dict[str, Any]] = (), choice: str = "objective") -> None:
        optuna = _import_optuna(strategy)
        from optuna.distributions import FloatDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dims = dict(dims)
        self.distributions = {k: FloatDistribution(lo, hi) for k, (lo, hi) in dims.items()}
        if strategy == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        else:  # centred on the bounds' middle with σ₀ = the smallest range / 6 (Optuna's defaults); start is scored first
            sampler = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        self.study = optuna.create_study(storage=storage, sampler=sampler, study_name="search", direction="maximize", load_if_exists=True)
        self.trials: dict[str, list[Any]] = {}  # point key -> asked trials, told in order
        self.complete: set[str] = set()  # points the study holds a finished trial of
        self._resume(start, rows, choice)

    def _resume(self, start: Point, rows: Sequence[dict[str, Any]], choice: str) -> None:
        from optuna.trial import TrialState, create_trial

        logged = {point_key(r["point"]): r[choice] for r in rows}
        known = set()
        for trial in self.study.get_trials(deepcopy=False):
            key = point_key(self._point(trial.params)) if trial.params else None
            if trial.state == TrialState.RUNNING:  # started by a run that stopped before telling it
                if key in logged:
                    self.study.tell(trial.number, logged[key])
                else:
                    self.study.tell(trial.number, state=TrialState.FAIL)
            if key is not None and (trial.state == TrialState.COMPLETE or key in logged):
                known.add(key)
        for r in rows:
            if point_key(r["point"]) not in known and set(r["point"]) == set(self.dims):
                self.study.add_trial(create_trial(params=dict(r["point"]), distributions=self.distributions, value=r[choice]))
                known.add(point_key(r["point"]))
        self.complete = known
        if not self.study.get_trials(deepcopy=False):
            self.study.enqueue_trial(dict(start))

    def _point(self, params: Mapping[str, float]) -> Point:
        return {k: round(float(params[k]), 6) for k in self.dims}

    def ask(self) -> Point | None:
        trial = self.study.ask(self.distributions)
        point = self._point(trial.params)
        self.trials.setdefault(point_key(point), []).append(trial)
        return point

    def tell(self, point: Point, value: float) -> None:
        """Told to the trial that asked for it; a point the study already holds (a seeded sampler proposing its
        earlier points again after a resume) closes its trial as failed, so every finished trial is a distinct point."""
        from optuna.trial import TrialState

        key = point_key(point)
        waiting = self.trials.get(key)
        if not waiting:
            return
        if key in self.complete:
            self.study.tell(waiting.pop(0), state=TrialState.FAIL)
        else:
            self.study.tell(waiting.pop(0), float(value))
            self.complete.add(key)


def _import_optuna(strategy: str) -> Any:
    try:
        import optuna
    except ImportError as e:
        raise TaskVecError(f"strategy={strategy} needs Optuna: pip install 'yolo-taskvec[optuna]'.") from e
    if strategy == "cmaes":
        try:
            import cmaes  # noqa: F401 - Optuna's CMA-ES sampler imports it lazily
        except ImportError as e:
            raise TaskVecError("strategy=cmaes needs the cmaes package: pip install 'yolo-taskvec[optuna]'.") from e
    return optuna


def make_proposer(strategy: str, dims: Mapping[str, Bounds], start: Point, *, seed: int, workers: int, step: float | None, min_step: float | None, storage: Any = None, rows: Sequence[dict[str, Any]] = (), choice: str = "objective") -> Proposer:
    """The proposer of a strategy (``workers > 1`` makes coordinate search asynchronous)."""
    if strategy == "coordinate":
        if workers > 1:
            return AsyncCoordinate(dims, start, step=step, min_step=min_step)
        return BatchProposer(coordinate_search(dims, start, step=step, min_step=min_step))
    if strategy == "random":
        return RandomProposer(dims, start, seed=seed)
    if strategy in OPTUNA_STRATEGIES:
        return OptunaProposer(strategy, dims, start, seed=seed, storage=storage, rows=rows, choice=choice)
    raise TaskVecError(f"unknown search strategy '{strategy}'; choose {', '.join(STRATEGIES)}.")


def maximize(fn: Callable[[Point], float], dims: Mapping[str, Bounds], *, budget: int = 30, strategy: str = "coordinate", start: Any = None, seed: int = 0, step: float | None = None, min_step: float | None = None, workers: int = 1) -> tuple[Point, float, list[tuple[Point, float]]]:
    """Maximize a plain function of a point (no models): ``(best point, best value, history)``; distinct points only.

    ``workers``: how many points the proposer may have outstanding at once (evaluated here in the order asked).
    """
    dims = {k: parse_bounds(v, f"bounds of '{k}'") for k, v in dims.items()}
    proposer = make_proposer(strategy, dims, start_point(dims, start), seed=seed, workers=workers, step=step, min_step=min_step)
    history: dict[str, tuple[Point, float]] = {}
    pending: list[Point] = []
    replays = 0
    while True:
        while len(pending) < workers and len(history) + len(pending) < budget:
            point = proposer.ask()
            if point is None:
                break
            key = point_key(point)
            if key in history:
                replays += 1
                if replays > 10 * budget + 1000:
                    break
                proposer.tell(point, history[key][1])
                continue
            pending.append(point)
        if not pending:
            break
        point = pending.pop(0)
        history[point_key(point)] = (point, float(fn(point)))
        proposer.tell(point, history[point_key(point)][1])
    best = max(history.values(), key=lambda pv: pv[1])
    return best[0], best[1], list(history.values())


# ----------------------------------------------------------------------------------------------- search
def check_search_options(strategy: str, budget: Any) -> None:
    """Validate the search's own options (before anything is loaded)."""
    if strategy not in STRATEGIES:
        raise TaskVecError(f"unknown search strategy '{strategy}'; choose {', '.join(STRATEGIES)}.")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise TaskVecError(f"budget must be a positive number of evaluations, got {budget!r}.")
    if strategy in OPTUNA_STRATEGIES:
        _import_optuna(strategy)


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
    address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
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
    random, TPE and CMA-ES strategies. ``backend="ray"`` runs the trials on a Ray cluster (``address``, ``workers``
    parallel trials, ``cpus_per_trial``, ``gpus_per_trial``: see ``backends``). The run folder gets ``search.json``
    (resumable), ``search.csv``, ``search.png`` (and ``search.optuna.log`` for TPE/CMA-ES).
    """
    check_search_options(strategy, budget)
    options = backend_options(fields, backend, address, workers, cpus_per_trial, gpus_per_trial)
    recipe, scoring = build_run_inputs(base, vectors, fields, data)
    names = input_axis_names(recipe)
    dims = search_space(space, bounds, names)
    start_at = start_point(dims, start)
    with running(options, verbose) as runner:
        parallel = options.workers or (runner.default_workers() if options.remote else 1)
        config = {"space": {k: list(v) for k, v in dims.items()}, "strategy": strategy, "start": start_at, "step": step, "min_step": min_step}
        if strategy == "coordinate":
            config["asynchronous"] = parallel > 1  # the two coordinate searches propose different points
        run = setup_run("search", recipe, scoring, dims, config, out=out, project=project, name=name, exist_ok=exist_ok, evaluator=evaluator, verbose=verbose)
        runner.start(run)
        scored, labels = run.references(runner)
        before = len(run.log.rows)
        storage = _optuna_storage(run) if strategy in OPTUNA_STRATEGIES else None
        proposer = make_proposer(strategy, dims, start_at, seed=recipe.seed, workers=parallel, step=step, min_step=min_step, storage=storage, rows=run.log.rows, choice=run.scorer.choice_column)
        drive(run, runner, proposer, desc=f"search ({options.name})", budget=budget, numbered=True)
        if not run.log.rows:
            raise TaskVecError("the search finished without any trial.")
        result = run.result(run.log.rows, {k: list(v) for k, v in dims.items()}, scored, labels, len(run.log.rows) - before, lead_columns=("trial",))
        result.context.update(strategy=strategy, **runner.describe())
        return run.finish(result, plot)


def _optuna_storage(run: Any) -> Any:
    """Optuna's study of this run: a JournalStorage file in the run folder (a new run starts a new file)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = run.folder / OPTUNA_FILE
    run.folder.mkdir(parents=True, exist_ok=True)
    if not run.log.rows and path.exists():
        path.unlink()  # the results file is the record: without its rows, an old study is not this run's
    return JournalStorage(JournalFileBackend(str(path)))
