"""Where a run's candidates are merged and scored: in this process (``local``) or on a Ray cluster (``ray``).

Both backends serve the one execution loop of ``runs.drive``: it asks a proposer for points, hands each to the
backend, and stores every finished row in the run's results file as it arrives (so an interrupted run resumes).

``local``: one candidate at a time with the run's own ``Evaluator`` (its validators and decoded batches built once).

``ray``: a pool of ``workers`` trial runners (Ray actors), each holding its own merge inputs and ``Evaluator``, so
a runner decodes the datasets once and then scores candidate after candidate. The loop keeps every runner busy:
a proposer's next point goes to the first idle runner, without waiting for the others (no batch barrier).

* Resources: each runner asks Ray for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs. With a GPU, Ray sets
  ``CUDA_VISIBLE_DEVICES`` for the runner, which merges and validates on ``cuda:0`` of what it sees (its own GPU);
  its CPU inference and merge arithmetic use as many threads as CPUs Ray granted it. ``device=`` is refused with
  ``backend=ray``: the device of a trial is the GPU Ray assigns (``gpus_per_trial``), never one chosen up front.
* Inputs travel through Ray's object store: the base and the task vectors are loaded once on the driver and put
  there; a runner gets them with its spec. Runners need yolo-taskvec (with Ultralytics) installed and the dataset
  yamls and images at the same paths as on the driver (the same Ultralytics ``datasets_dir``, or shared storage).
  Selection views (``select=train:0.2``) are rebuilt by each runner from those dataset files (the same seeded
  sample) and checked against the driver's by content, so they need no shared folder.
* Failures: a runner lost with its worker process or node (crash, OOM kill, node loss) is replaced and its trial
  given to another runner, up to ``max_retries`` times per trial; an error raised by the trial itself (bad data on
  a node, a model that cannot be scored) stops the run with its sentence. Finished rows are already in the results
  file, so a rerun with the same run folder resumes.
* Connection: ``address=None`` starts a private Ray instance on this machine (stopped at the end), even where
  another one runs; ``"auto"`` joins the cluster of ``RAY_ADDRESS`` or the one started here with ``ray start``; ``"host:port"`` joins a cluster's head;
  ``"ray://host:port"`` connects through Ray Client (``pip install 'yolo-taskvec[ray]'`` installs its extra
  dependencies). An unreachable address, a refused token (Ray's token authentication: set ``RAY_AUTH_TOKEN`` or
  ``RAY_AUTH_TOKEN_PATH``) or missing packages are one sentence, before any model is loaded.

Why Ray core actors rather than Ray Tune: the engine already has what Tune would add (the proposers, the resumable
results file, the progress bar); an actor keeps its decoded batches and fused model across trials, also on a GPU
(Ray runs a GPU *task* in a fresh worker process every time); and retries are decided here, per trial, so a trial
lost with a node is re-run on any runner that is alive, while Tune would need its experiment storage reachable by
every node.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import TaskVecError
from .recipe import RecipeError, parse_int, parse_number
from .runs import LocalBackend, Scorer, TrialSpec, reference_model, selection_views, view_digests

BACKENDS = ("local", "ray")
DEFAULT_RETRIES = 3
STARTUP_TIMEOUT_S = 600.0  # how long the loop waits for a first runner on a cluster that has none free


class BackendError(TaskVecError):
    """A backend that cannot run: missing packages, an unreachable or refusing cluster, impossible resources."""


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class BackendOptions:
    """Validated backend keys: ``backend``, ``address``, ``workers``, ``cpus_per_trial``, ``gpus_per_trial``."""

    name: str = "local"
    address: str | None = None
    workers: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = DEFAULT_RETRIES

    @classmethod
    def build(cls, backend: Any = "local", address: Any = None, workers: Any = None, cpus_per_trial: Any = None, gpus_per_trial: Any = None, max_retries: Any = DEFAULT_RETRIES) -> BackendOptions:
        name = str(backend or "local").strip().lower()
        if name not in BACKENDS:
            raise RecipeError(f"unknown backend '{backend}'; choose {', '.join(BACKENDS)}.")
        workers = None if workers is None else parse_int(workers, "workers", 1, 100_000)
        if name == "local":
            given = [k for k, v in (("address", address), ("cpus_per_trial", cpus_per_trial), ("gpus_per_trial", gpus_per_trial)) if v is not None]
            if given:
                raise RecipeError(f"{given[0]}= is for backend=ray; the local backend scores in this process.")
            if workers is not None and workers > 1:
                raise RecipeError(f"backend=local scores one candidate at a time; workers={workers} needs backend=ray.")
        cpus = 1.0 if cpus_per_trial is None else parse_number(cpus_per_trial, "cpus_per_trial")
        gpus = 0.0 if gpus_per_trial is None else parse_number(gpus_per_trial, "gpus_per_trial")
        if cpus <= 0:
            raise RecipeError(f"cpus_per_trial must be positive, got {cpus:g}.")
        if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
            raise RecipeError(f"gpus_per_trial must be 0, a fraction of one GPU or a whole number of GPUs, got {gpus:g}.")
        text = None if address is None or str(address).strip().lower() in ("", "none") else str(address).strip()
        return cls(name, text, workers, cpus, gpus, parse_int(max_retries, "max_retries", 0, 100))

    @property
    def remote(self) -> bool:
        return self.name == "ray"

    def check_device(self, device: Any) -> None:
        """``device=`` with ``backend=ray`` is refused: trials run on the GPU Ray assigns them."""
        if self.remote and device is not None and str(device).strip().lower() not in ("", "none", "cpu"):
            raise RecipeError(f"device={device} with backend=ray: each trial runs on the GPU Ray assigns it; give gpus_per_trial=1 (or a fraction) instead of device=.")


def backend_options(fields: dict[str, Any], backend: Any = "local", address: Any = None, workers: Any = None, cpus_per_trial: Any = None, gpus_per_trial: Any = None) -> BackendOptions:
    """Backend options from a run's keywords, checked against its ``device`` field (before anything is loaded)."""
    options = BackendOptions.build(backend, address, workers, cpus_per_trial, gpus_per_trial)
    options.check_device(fields.get("device"))
    return options


@contextlib.contextmanager
def running(options: BackendOptions, verbose: bool = True) -> Iterator[Any]:
    """The backend of ``options``, connected (Ray: checked before any model is loaded) and closed at the end."""
    backend = RayBackend.connect(options, verbose) if options.remote else LocalBackend()
    try:
        yield backend
    finally:
        backend.close()


# ----------------------------------------------------------------------------------------------- the trial runner
class TrialRunner:
    """Merges and scores points of one run; made a Ray actor by ``RayBackend`` (plain here, so it is testable)."""

    def __init__(self, spec: TrialSpec) -> None:
        self.spec = spec
        self.scorer: Scorer | None = None
        self.views: Any = None  # the selection views' temporary folder, removed with the runner

    def ready(self) -> dict[str, Any]:
        """Where this runner lives: host, process, devices (answered once the actor is placed and constructed)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": _runner_device(), "threads": _runner_threads()}

    def _scorer(self) -> Scorer:
        if self.scorer is None:
            self.scorer, self.views = runner_scorer(self.spec, _runner_device(), _runner_threads())
        return self.scorer

    def measure(self, point: dict[str, float]) -> tuple[Any, float]:
        return self._scorer().measure(point)

    def references(self, todo: Mapping[str, Any]) -> dict[str, Any]:
        scorer = self._scorer()
        return {label: scorer.evaluate(reference_model(src, scorer.prepared.base)) for label, src in todo.items()}


def runner_scorer(spec: TrialSpec, device: str | None, threads: int | None) -> tuple[Scorer, Any]:
    """``(scorer, views folder)`` for ``spec`` on ``device`` with ``threads`` CPU threads: what a runner scores with.

    Selection views are rebuilt here from the dataset files and must list the same images as the driver's.
    """
    prepared = spec.prepared
    if device is not None and device != "cpu":
        prepared = replace(prepared, recipe=prepared.recipe.replace(device=device))
    evaluator, folder = spec.evaluator, None
    if evaluator is None:
        from .evaluation import Evaluator

        yamls = list(spec.scoring.data)
        if spec.scoring.selects:
            folder = tempfile.TemporaryDirectory(prefix="yolo-taskvec-select-")
            views = selection_views(spec.scoring, folder.name)
            if spec.views is not None and view_digests(views) != spec.views:
                raise BackendError(f"the selection images on {socket.gethostname()} differ from the driver's (its dataset files are not the same); give every node the same datasets.")
            yamls += views
        kwargs = {**spec.scoring.evaluator_kwargs(spec.imgsz), "device": device, "threads": threads if device in (None, "cpu") else None}
        evaluator = Evaluator(yamls, split=spec.scoring.split, **kwargs)
    return Scorer(prepared, spec.axes, evaluator, spec.scoring, spec.kind), folder


def _runner_device() -> str:
    """``cuda:0`` when Ray gave this worker a GPU (it sees only the GPUs it was given), else ``cpu``."""
    import ray

    return "cuda:0" if ray.get_gpu_ids() else "cpu"


def _runner_threads() -> int:
    """The CPUs Ray granted this worker (at least one thread)."""
    import ray

    granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(math.floor(granted)))


# ----------------------------------------------------------------------------------------------- Ray
LOST_WORKER = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OutOfMemoryError")


def _import_ray(options: BackendOptions) -> Any:
    try:
        import ray
    except ImportError as e:
        raise BackendError("backend=ray needs Ray: pip install 'yolo-taskvec[ray]'.") from e
    if options.address and options.address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise BackendError(f"address={options.address} connects through Ray Client, which needs Ray's client extras: pip install 'yolo-taskvec[ray]' (it installs ray[client]).")
    return ray


def _check_reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) address answers on TCP within a few seconds (Ray itself retries for minutes)."""
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise BackendError(f"address={address} is not host:port, ray://host:port or auto.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5.0):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise BackendError(f"cannot reach the Ray cluster at {address} ({reason}); check the address and that the head node is running.") from None


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Ray's C++ client logs to file descriptor 2 directly: silence it while probing (a refusal is our one sentence)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_token(ray: Any, address: str) -> None:
    """A ``host:port`` cluster accepts this process's token (Ray's own connect would retry for a minute first)."""
    try:
        from ray._raylet import GcsClient  # the client Ray's own ``ray status`` uses
    except ImportError:
        return
    refused = getattr(ray.exceptions, "AuthenticationError", ())  # Ray >= 2.50 has token authentication
    try:
        with _quiet_fd2():
            GcsClient(address=address)
    except refused as e:
        raise _init_error(address, e) from None
    except Exception:
        return  # anything else: let ray.init report it


def _init_error(address: str | None, error: BaseException) -> BackendError:
    name = type(error).__name__
    text = str(error).strip().splitlines()[0] if str(error).strip() else name
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    if "Authentication" in name or ("auth" in text.lower() and "token" in text.lower()):
        return BackendError(f"{where} refused the connection: token authentication failed (give its token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, and RAY_AUTH_MODE=token).")
    return BackendError(f"cannot connect to {where}: {text[:300]}")


class _Slot:
    """One runner: its actor handle, the reference that says it is ready, and the point it is scoring."""

    def __init__(self, handle: Any, ready: Any) -> None:
        self.handle, self.ready_ref = handle, ready
        self.ready = False
        self.point: dict[str, float] | None = None
        self.info: dict[str, Any] = {}


class RayBackend:
    """A pool of trial runners on a Ray cluster (see the module doc)."""

    name = "ray"

    def __init__(self, options: BackendOptions, ray: Any, owned: bool, verbose: bool) -> None:
        self.options, self.ray, self.owned, self.verbose = options, ray, owned, verbose
        self.slots: list[_Slot] = []
        self.queue: list[tuple[dict[str, float], int]] = []  # (point, attempts) waiting for a runner
        self.running: dict[Any, tuple[_Slot, dict[str, float], int]] = {}  # result ref -> (slot, point, attempts)
        self.spec_ref: Any = None
        self.actor_class: Any = None
        self.lost = 0  # runners lost (and replaced) so far
        self.failed_starts = 0  # runners that died before they were ready

    # ------------------------------------------------------------------ connection
    @classmethod
    def connect(cls, options: BackendOptions, verbose: bool = True) -> RayBackend:
        """Connect (or start a private local instance) and check the cluster can run one trial; one sentence otherwise."""
        import logging

        ray = _import_ray(options)
        owned = not ray.is_initialized()
        if owned:
            if options.address and options.address != "auto":
                _check_reachable(options.address)
                if not options.address.startswith("ray://"):
                    _check_token(ray, options.address)
            kwargs: dict[str, Any] = {"address": options.address, "log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
            if options.address is None:  # "local": a new instance, never a cluster Ray would find on its own (RAY_ADDRESS, ray start)
                kwargs.update(address="local", include_dashboard=False)
            try:
                with contextlib.redirect_stderr(open(os.devnull, "w")) if not verbose else contextlib.nullcontext():
                    ray.init(**kwargs)
            except Exception as e:  # Ray raises ConnectionError, AuthenticationError, RuntimeError, ValueError ...
                raise _init_error(options.address, e) from None
        backend = cls(options, ray, owned, verbose)
        try:
            backend._check_resources()
        except BaseException:
            backend.close()
            raise
        return backend

    def _check_resources(self) -> None:
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        c, g = self.options.cpus_per_trial, self.options.gpus_per_trial
        if not any(r.get("CPU", 0) >= c and r.get("GPU", 0) >= g for r in nodes):
            have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes) or "no nodes"
            raise BackendError(f"no node of the Ray cluster can run a trial of cpus_per_trial={c:g}, gpus_per_trial={g:g} (its nodes have {have}).")

    @property
    def capacity(self) -> int:
        return len(self.slots)

    def default_workers(self) -> int:
        """How many trials the cluster's alive nodes fit at once (at least one)."""
        total = 0
        c, g = self.options.cpus_per_trial, self.options.gpus_per_trial
        for node in self.ray.nodes():
            if node.get("Alive"):
                r = node.get("Resources", {})
                fit = math.floor(r.get("CPU", 0) / c + 1e-9)
                if g > 0:
                    fit = min(fit, math.floor(r.get("GPU", 0) / g + 1e-9))
                total += fit
        return max(1, total)

    # ------------------------------------------------------------------ runners
    def start(self, run: Any) -> None:
        """Put the run's inputs into the object store and start the runners."""
        self.spec_ref = self.ray.put(run.spec())
        self.actor_class = self.ray.remote(TrialRunner).options(num_cpus=self.options.cpus_per_trial, num_gpus=self.options.gpus_per_trial, max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD")
        for _ in range(self.options.workers or self.default_workers()):
            self.slots.append(self._new_slot())

    def _new_slot(self) -> _Slot:
        handle = self.actor_class.remote(self.spec_ref)
        return _Slot(handle, handle.ready.remote())

    def _replace(self, slot: _Slot) -> None:
        """A lost runner is killed (if anything is left of it) and replaced by a new one."""
        self.lost += 1
        with contextlib.suppress(Exception):
            self.ray.kill(slot.handle, no_restart=True)
        self.slots[self.slots.index(slot)] = self._new_slot()

    def _is_lost(self, error: BaseException) -> bool:
        names = {c.__name__ for c in type(error).__mro__}
        return bool(names.intersection(LOST_WORKER)) and "RayTaskError" not in names

    def _raise_task_error(self, error: BaseException, what: str) -> None:
        cause = getattr(error, "cause", None) or error
        if isinstance(cause, TaskVecError):  # the trial's own sentence, as the local backend would raise it
            try:
                again = type(cause)(str(cause))
            except Exception:
                again = TaskVecError(str(cause))
            raise again from None
        lines = [line for line in str(cause).strip().splitlines() if line.strip()]
        raise TaskVecError(f"{what} failed on the Ray cluster: {type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": ")) from None

    def _wait_ready(self, refs: list[Any], timeout: float) -> list[Any]:
        done, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        return done

    def _settle_ready(self, done: list[Any]) -> None:
        for slot in list(self.slots):
            if not slot.ready and slot.ready_ref in done:
                try:
                    slot.info = self.ray.get(slot.ready_ref)
                    slot.ready = True
                except Exception as e:
                    if not self._is_lost(e):
                        self._raise_task_error(e, "starting a trial runner")
                    self.failed_starts += 1
                    if self.failed_starts > max(2 * len(self.slots), self.options.max_retries):
                        lines = [line for line in str(e).strip().splitlines() if line.strip()]
                        raise BackendError(f"trial runners keep dying as they start on the Ray cluster ({lines[-1][:200] if lines else type(e).__name__}); does every node have yolo-taskvec and Ultralytics installed?") from None
                    self._replace(slot)

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not self.queue:
                return
            if slot.ready and slot.point is None:
                point, attempts = self.queue.pop(0)
                slot.point = point
                self.running[slot.handle.measure.remote(point)] = (slot, point, attempts)

    # ------------------------------------------------------------------ the loop's interface
    def submit(self, point: dict[str, float]) -> None:
        self.queue.append((point, 0))
        self._dispatch()

    def next_result(self) -> tuple[dict[str, float], Any, float]:
        """The next finished trial (any runner); lost runners are replaced and their trials re-queued."""
        started = time.monotonic()
        while True:
            self._dispatch()
            waiting = list(self.running) + [s.ready_ref for s in self.slots if not s.ready]
            if not waiting:
                raise TaskVecError("the Ray backend has no trial to wait for (internal error).")
            done = self._wait_ready(waiting, timeout=10.0)
            if not done:
                if not self.running and not any(s.ready for s in self.slots) and time.monotonic() - started > STARTUP_TIMEOUT_S:
                    raise BackendError(f"no trial runner could start on the Ray cluster within {STARTUP_TIMEOUT_S:.0f} s (cpus_per_trial={self.options.cpus_per_trial:g}, gpus_per_trial={self.options.gpus_per_trial:g}): are its nodes busy or gone?")
                continue
            self._settle_ready(done)
            for ref in done:
                if ref not in self.running:
                    continue
                slot, point, attempts = self.running.pop(ref)
                slot.point = None
                try:
                    metrics, seconds = self.ray.get(ref)
                except Exception as e:
                    if not self._is_lost(e):
                        self._raise_task_error(e, f"the trial at {_point_text(point)}")
                    if attempts >= self.options.max_retries:
                        raise TaskVecError(f"the trial at {_point_text(point)} was lost {attempts + 1} times with its Ray worker ({type(e).__name__}); finished trials are kept in the results file, rerun to resume.") from None
                    self._replace(slot)
                    self.queue.insert(0, (point, attempts + 1))
                    started = time.monotonic()
                    continue
                return point, metrics, seconds

    def references(self, todo: Mapping[str, Any]) -> dict[str, Any]:
        """Reference models scored by a runner (same devices and settings as the trials); retried like a trial."""
        from .checkpoint import load_model

        models = {label: (src if isinstance(src, str) and src == "base" else load_model(src)) for label, src in todo.items()}
        attempts = 0
        started = time.monotonic()
        while True:
            ready = [s for s in self.slots if s.ready]
            if not ready:
                done = self._wait_ready([s.ready_ref for s in self.slots], timeout=10.0)
                self._settle_ready(done)
                if not done and time.monotonic() - started > STARTUP_TIMEOUT_S:
                    raise BackendError(f"no trial runner could start on the Ray cluster within {STARTUP_TIMEOUT_S:.0f} s.")
                continue
            slot = ready[0]
            try:
                return self.ray.get(slot.handle.references.remote(models))
            except Exception as e:
                if not self._is_lost(e):
                    self._raise_task_error(e, "scoring the reference models")
                if attempts >= self.options.max_retries:
                    raise TaskVecError(f"scoring the reference models was lost {attempts + 1} times with its Ray worker ({type(e).__name__}).") from None
                attempts += 1
                self._replace(slot)

    def describe(self) -> dict[str, Any]:
        """For the result's context: where the runners ran and how many were lost (and replaced)."""
        return {"backend": "ray", "runners": [s.info for s in self.slots if s.ready], "lost_workers": self.lost}

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):
                self.ray.kill(slot.handle, no_restart=True)
        self.slots.clear()
        self.running.clear()
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


def _point_text(point: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in point.items())
