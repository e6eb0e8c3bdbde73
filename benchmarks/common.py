"""Shared helpers for every benchmark in this folder (import with ``from common import ...``).

A benchmark script is ``python benchmarks/bench_X.py key=value ...``; it measures, then writes
``benchmarks/results/X.{md,json,png}``. The JSON keeps one run per device kind (``cpu``, ``cuda``), so a CPU run and
a GPU run of the same benchmark sit side by side; the Markdown and the plot are rebuilt from all stored runs.

API (small and stable; other benchmarks rely on it):

* ``REPO``, ``DATASETS``, ``RESULTS``: the project root, its ``datasets/`` yamls, ``benchmarks/results/``.
* ``parse_args(argv, defaults, prog)``: ``key=value`` arguments over a dict of string defaults; an unknown key or
  an item without ``=`` exits with a usage line naming the closest valid keys. ``--replot`` is ``render=true``
  (for benchmarks with a ``render`` key: redraw ``.md``/``.png`` from the committed ``.json``, measure nothing).
* ``as_bool(text)``, ``as_floats(text)``: parse ``true``/``false`` and ``0.2,0.5`` / ``0:1:0.1`` values.
* ``environment(device)``: the environment block (date, machine, CPU model, logical CPUs, torch threads,
  ``OMP_NUM_THREADS``, device, whether a GPU is available, library versions, load average at start).
* ``load_average()``: the 1/5/15-minute load averages as text (store it again at the end of a run).
* ``busy(env)``: whether the machine had more runnable processes than logical CPUs when the run started.
* ``device_kind(device)``: ``"cpu"`` or ``"cuda"`` (the key of a run in the JSON).
* ``environment_markdown(env, load_end=None)``: the environment block as Markdown bullet lines.
* ``write_outputs(stem, result, out, kind=..., markdown=..., plot=...)``: stores ``result`` under ``kind`` in
  ``<out>/<stem>.json`` (other kinds kept), then writes ``<stem>.md`` from ``markdown(runs)`` and ``<stem>.png``
  with ``plot(runs, path)``; ``runs`` is the dict ``kind -> result``. Every file is written atomically.
* ``render_outputs(stem, out, markdown=..., plot=...)``: rebuild ``<stem>.md`` and ``<stem>.png`` from the stored
  ``<stem>.json`` without measuring again (after a change to a table or plot).
* ``save_figure(fig, path)``: a matplotlib figure to PNG, atomically (for use inside ``plot``).
* Figure style shared by every plot: ``PALETTE`` (Okabe-Ito, distinct for colour-blind readers),
  ``figure_title(fig, what, run)`` (what is shown + where it was measured: device, CPU/GPU, threads, date),
  ``legend_below(ax)`` / ``legend_right(ax)`` (legends outside the data).
* ``calibration_split(yaml, n, seed, out)``: a dataset yaml whose ``val`` is a fixed, seeded sample of ``n`` TRAIN
  images of ``yaml`` (labels read where Ultralytics finds them): the split on which anything is selected, never the
  val split that is reported.
* ``no_nms_time_limit()``: context manager lifting Ultralytics' NMS time limit (2 s + 0.05 s per image of a batch)
  inside the block. On a busy CPU that limit is hit and the rest of the batch silently gets NO detections, so a
  validation's mAP depends on the machine's load; accuracy benchmarks validate inside this block.
* ``atomic_output(path)``: context manager yielding a temporary path beside ``path``; when the block succeeds the
  file is fsynced and moved onto ``path`` (``os.replace``), otherwise removed; ``write_text_atomic(path, text)``
  writes a text file that way. Every result, figure, yaml and asset a benchmark writes goes through these two.

Benchmarks find weights and data through Ultralytics' settings (``weights_dir``, ``datasets_dir``) like the demo:
bare checkpoint names go through ``yolo_taskvec.load_model`` / ``resolve_weights``, dataset yamls through
``yolo_taskvec.load_data``. Benchmarks import the package's public API only (``from yolo_taskvec import ...``; see
``tests/test_recipe.py::test_benchmarks_examples_and_notebooks_use_the_public_api`` for the few documented exceptions).
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"
RESULTS = REPO / "benchmarks" / "results"


# ----------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str], defaults: Mapping[str, str], prog: str | None = None) -> dict[str, str]:
    """``key=value`` items over ``defaults`` (all strings); exits with a usage line on an unknown key."""
    prog = prog or Path(sys.argv[0]).name
    args = dict(defaults)
    for item in argv:
        if item == "--replot" and "render" in defaults:
            item = "render=true"
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3)
            hint = f" did you mean {', '.join(close)}?" if close else ""
            sys.exit(f"usage: {prog} [{' '.join(f'{k}=...' for k in defaults)}] (got '{item}';{hint or ' not a known key'})")
        args[key] = value
    return args


def as_bool(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "on")


def as_floats(text: str) -> list[float]:
    """``0.2,0.5,1`` or a ``start:stop:step`` grid (stop included)."""
    text = str(text).strip()
    if ":" in text:
        start, stop, step = (float(x) for x in text.split(":"))
        n = int(round((stop - start) / step)) + 1
        return [round(start + i * step, 6) for i in range(n)]
    return [float(x) for x in text.split(",") if x.strip()]


# ----------------------------------------------------------------------------------------------- environment
def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    return cpu


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def device_kind(device: Any) -> str:
    """``"cuda"`` for a CUDA device (a ``torch.device``, ``0``, ``"cuda:0"``, ``"0,1"``), else ``"cpu"``."""
    text = str(getattr(device, "type", device)).strip().lower()
    return "cpu" if text in ("", "cpu", "none", "mps") else "cuda"


def environment(device: Any = "cpu") -> dict[str, str]:
    """The environment block stored with every result (all values are strings)."""
    import numpy
    import torch
    import ultralytics

    import yolo_taskvec

    cpu = _cpu_model()
    kind = device_kind(device)
    if kind == "cuda":
        index = torch.device(device).index if isinstance(device, torch.device) else int(str(device).replace("cuda:", "").split(",")[0] or 0)
        gpu = torch.cuda.get_device_name(index or 0)
    else:
        gpu = "none used"
    threads = torch.get_num_threads()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} | {platform.system()} {platform.release()} | {cpu} | {os.cpu_count()} logical CPUs | torch threads {threads}",
        "cpu": cpu,
        "logical_cpus": str(os.cpu_count()),
        "torch_threads": str(threads),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "device": f"{device} ({gpu})",
        "gpu_available": f"yes ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "no",
        "versions": (
            f"python {platform.python_version()}, torch {torch.__version__}, ultralytics {ultralytics.__version__}, "
            f"yolo-taskvec {yolo_taskvec.__version__}, numpy {numpy.__version__}, pycocotools {_version('pycocotools')}, "
            f"safetensors {_version('safetensors')}"
        ),
        "load_average_start": load_average(),
    }


def busy(env: Mapping[str, str]) -> bool:
    """More runnable processes than logical CPUs over the last minute when the run started."""
    cpus = int(env["logical_cpus"]) if "logical_cpus" in env else int(env["machine"].split(" logical CPUs")[0].rsplit("| ", 1)[-1])
    return float(env["load_average_start"].split()[0]) > cpus


def environment_markdown(env: Mapping[str, str], load_end: str | None = None) -> list[str]:
    """The environment block as Markdown bullets (one list, ends with an empty line)."""
    load = env["load_average_start"] + (f" / {load_end}" if load_end else "")
    lines = [
        f"- date: {env['date']}",
        f"- machine: {env['machine']}" + (f"; OMP_NUM_THREADS={env['omp_num_threads']}" if "omp_num_threads" in env else ""),
        f"- device: {env['device']}" + (f"; GPU available: {env['gpu_available']}" if "gpu_available" in env else ""),
        f"- versions: {env['versions']}",
        f"- load average (1/5/15 min) at start{' / end' if load_end else ''}: {load}"
        + (" — a shared, loaded machine (more runnable processes than cores): timings are noisy" if busy(env) else ""),
        "",
    ]
    return lines


def no_nms_time_limit(seconds_per_image: float = 1e4) -> contextlib.AbstractContextManager[None]:
    """``yolo_taskvec.no_nms_time_limit`` (the Evaluator applies it itself; kept for plain ``YOLO.val``)."""
    from yolo_taskvec import no_nms_time_limit as lifted

    return lifted(seconds_per_image)


# ----------------------------------------------------------------------------------------------- outputs
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; on success it is fsynced and replaces ``path``, else removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    if "matplotlib.pyplot" in sys.modules:  # figures made with pyplot are registered there; others need nothing
        sys.modules["matplotlib.pyplot"].close(fig)
    return path


def write_outputs(
    stem: str,
    result: Mapping[str, Any],
    out: str | os.PathLike = RESULTS,
    *,
    kind: str,
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], Any] | None = None,
) -> dict[str, Path]:
    """Store ``result`` as run ``kind`` in ``<stem>.json`` (keeping other kinds) and rebuild ``.md`` and ``.png``."""
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    runs = json.loads(json_path.read_text()) if json_path.exists() else {}
    runs[kind] = result
    files = {"json": write_text_atomic(json_path, json.dumps(runs, indent=1, ensure_ascii=False))}
    files["md"] = write_text_atomic(out / f"{stem}.md", markdown(runs))
    if plot is not None:
        plot(runs, out / f"{stem}.png")
        files["png"] = out / f"{stem}.png"
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return files


def render_outputs(
    stem: str,
    out: str | os.PathLike = RESULTS,
    *,
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], Any] | None = None,
) -> dict[str, Path]:
    """Rebuild ``<stem>.md`` (and ``.png``) from the runs stored in ``<stem>.json``; nothing is measured."""
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out)
    json_path = out / f"{stem}.json"
    if not json_path.exists():
        sys.exit(f"{json_path} does not exist: run the benchmark first.")
    runs = json.loads(json_path.read_text())
    files = {"md": write_text_atomic(out / f"{stem}.md", markdown(runs))}
    if plot is not None:
        plot(runs, out / f"{stem}.png")
        files["png"] = out / f"{stem}.png"
    print("rebuilt " + ", ".join(str(p) for p in files.values()))
    return files


# ----------------------------------------------------------------------------------------------- figure style
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")  # Okabe-Ito


def where_measured(run: Mapping[str, Any]) -> str:
    """``CPU (AMD EPYC, 2 logical CPUs, 1 torch thread), 2026-11-23`` from a stored run's environment block."""
    env = run.get("environment", {})
    device = str(env.get("device", "cpu"))
    if device.startswith("cpu"):
        cpus, threads = env.get("logical_cpus"), env.get("torch_threads")
        where = f"CPU ({env.get('cpu', 'unknown')}" + (f", {cpus} logical CPUs" if cpus else "") + (f", {threads} torch thread{'s' if str(threads) != '1' else ''}" if threads else "") + ")"
    else:
        where = "GPU " + device.split("(", 1)[-1].rstrip(")") if "(" in device else f"GPU {device}"
    date = str(env.get("date", ""))[:10]
    return where + (f", {date}" if date else "")


def figure_title(fig: Any, what: str, run: Mapping[str, Any] | None = None, detail: str | None = None) -> None:
    """A title block: what the figure shows; ``detail`` (data, image size...); where it was measured."""
    lines = [what, *(x for x in (detail, where_measured(run) if run else None) if x)]
    fig.suptitle("\n".join(lines), fontsize=11)


def legend_below(ax: Any, ncol: int = 2, offset: float = -0.14, **kwargs: Any) -> None:
    """The axes' legend under its x label, outside the data."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, offset), ncol=ncol, fontsize=8, frameon=False, **kwargs)


def legend_right(ax: Any, **kwargs: Any) -> None:
    """The axes' legend to the right of the axes, outside the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, **kwargs)


# ----------------------------------------------------------------------------------------------- selection splits
def calibration_split(yaml: str | os.PathLike, n: int, seed: int, out: str | os.PathLike, *, split: str = "train", name: str | None = None) -> Path:
    """Write ``<out>/<name>.yaml`` whose ``val`` lists ``n`` images drawn (seeded) from ``yaml``'s ``split``.

    Scales, methods and the like are SELECTED on this split and REPORTED on the real val split, so the reported
    number is not tuned on itself. The images are listed by absolute path in ``<name>.txt``; Ultralytics finds their
    labels beside them (``images/`` -> ``labels/``), so nothing is copied. ``train`` points at the same list (a
    dataset yaml needs one). Class names are the source's. ``name`` defaults to ``<stem>-calib``.
    """
    import random

    from yolo_taskvec import image_files, load_data

    info = load_data(str(yaml), split=split)
    images = sorted(str(p.absolute()) for p in image_files(str(yaml), split))  # not resolved: labels sit beside the link
    if n > len(images):
        sys.exit(f"{yaml} has {len(images)} {split} images; a calibration split of {n} is not possible.")
    chosen = sorted(random.Random(seed).sample(images, n))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = name or f"{Path(yaml).stem}-calib"
    listing = write_text_atomic(out / f"{name}.txt", "\n".join(chosen) + "\n")
    names = info["names"]
    lines = [
        f"# {n} {split} images of {Path(yaml).name}, seed {seed} (calibration split: select here, report on val)",
        f"path: {out}",
        f"train: {listing}",
        f"val: {listing}",
        "names:",
        *(f"  {i}: {names[i]}" for i in sorted(names)),
    ]
    return write_text_atomic(out / f"{name}.yaml", "\n".join(lines) + "\n")
