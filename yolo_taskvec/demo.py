"""The day/night story end to end: ``yolo-taskvec demo``.

A base detector (good by day) and its fine-tune on night images (good at night, worse by day): extract the night
task vector τ = tuned − base, validate ``base + α·τ`` on day and night data for a grid of α, print the table, plot
it, and save the merged model at the best α (the best mean of day mAP relative to the base and night mAP relative
to the fine-tune).

Inputs are found through Ultralytics' settings, so the demo runs wherever those point:

* weights in ``weights_dir``: base ``yolo26n-base80.pt`` (else the official ``yolo26n.pt``), fine-tune
  ``yolo26n-fruit-night.pt``;
* dataset yamls ``fruit80.yaml`` (day) and ``fruit80-night.yaml`` (night), in the working folder or ``datasets_dir``.

Anything can be given instead: ``base=``, ``tuned=``, ``day=``, ``night=``. Outputs go to ``out=`` or a new
``runs_dir/taskvec/demoN`` folder: ``night.safetensors``, ``sweep.csv``/``sweep.json``/``sweep.png`` and
``merged.pt`` (a standard Ultralytics checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TaskVecError

BASES = ("yolo26n-base80.pt", "yolo26n.pt")
TUNED = ("yolo26n-fruit-night.pt",)
DAY = ("fruit80.yaml",)
NIGHT = ("fruit80-night.yaml",)
DEFAULT_SCALES = "0:1:0.1"
DEFAULT_SELECT = "train:0.2"  # α is chosen on a seeded 20 % of the train images and reported on val


class DemoInputError(TaskVecError):
    """The demo cannot find its weights or data."""


@dataclass
class DemoResult:
    """Everything the demo produced."""

    folder: Path
    vector: Path
    merged: Path
    sweep: Any  # yolo_taskvec.sweep.SweepResult
    inputs: dict[str, str]

    @property
    def best_scale(self) -> float:
        return float(self.sweep.best_point["scale"])


def _first(candidates: Sequence[str], exists: Callable[[str], Path | None]) -> Path | None:
    for name in candidates:
        found = exists(name)
        if found is not None:
            return found
    return None


def _weight(name: str) -> Path | None:
    from ultralytics.utils import SETTINGS

    for path in (Path(name).expanduser(), Path(SETTINGS["weights_dir"]) / name):
        if path.is_file():
            return path
    return None


def _yaml(name: str) -> Path | None:
    from .data import resolve_yaml

    path = resolve_yaml(Path(name).expanduser())
    return path if path.is_file() else None


MIN_SELECT_TRAIN = 50  # train images a dataset needs for a selection split (20 % of them: at least 10 images)


def _selectable(select: Any, yamls: list[str], echo: Callable[[str], Any]) -> Any:
    """``select``, or None when a dataset has too few train images to choose α on (the output then says so)."""
    from .data import image_files
    from .errors import DataError

    if not str(select).startswith("train:"):
        return select
    for yaml in yamls:
        try:
            n = len(image_files(yaml, "train"))
        except DataError:
            n = 0
        if n < MIN_SELECT_TRAIN:
            echo(f"note: {yaml} has {n} train images, too few for a selection split: α is chosen on the reported val data.")
            return None
    return select


def find_inputs(base: Any = None, tuned: Any = None, day: Any = None, night: Any = None) -> dict[str, str]:
    """The demo's four inputs: the given ones, else the first default found through Ultralytics' settings."""
    from ultralytics.utils import SETTINGS, SETTINGS_FILE

    how = f"set them with 'yolo settings weights_dir=... datasets_dir=...' (now weights_dir={SETTINGS['weights_dir']}, datasets_dir={SETTINGS['datasets_dir']}, in {SETTINGS_FILE})"
    wanted = {
        "base": (base, BASES, _weight, "base checkpoint"),
        "tuned": (tuned, TUNED, _weight, "night fine-tune of the base"),
        "day": (day, DAY, _yaml, "day dataset yaml"),
        "night": (night, NIGHT, _yaml, "night dataset yaml"),
    }
    found: dict[str, str] = {}
    for key, (given, defaults, lookup, what) in wanted.items():
        if given is not None:
            found[key] = str(given)
            continue
        path = _first(defaults, lookup)
        if path is None:
            raise DemoInputError(f"the demo found no {what} ({' or '.join(defaults)}): pass {key}=... or put it in {'weights_dir' if lookup is _weight else 'datasets_dir'}; {how}.")
        found[key] = str(path)
    return found


def run_demo(
    base: Any = None,
    tuned: Any = None,
    day: Any = None,
    night: Any = None,
    *,
    scales: Any = DEFAULT_SCALES,
    imgsz: int = 320,
    batch: int = 16,
    device: Any = None,
    select: Any = DEFAULT_SELECT,
    out: str | os.PathLike | None = None,
    project: str | os.PathLike | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    verbose: bool = True,
    echo: Callable[[str], Any] = print,
) -> DemoResult:
    """Extract τ(night), sweep α on day and night data (chosen on ``select``, reported on val), save the merged model
    at the chosen α (see the module doc)."""
    from .checkpoint import load_model
    from .data import dataset_name, load_data
    from .provenance import save_model as save
    from .recipe import Recipe
    from .runs import Scoring, run_folder
    from .sweep import grid_points, parse_grid, sweep
    from .vectors import TaskVector

    inputs = find_inputs(base, tuned, day, night)
    day_name, night_name = dataset_name(inputs["day"]), dataset_name(inputs["night"])
    if day_name == night_name:
        raise DemoInputError(f"the day and night yamls have the same name '{day_name}'; give them different file names.")
    grid_points(parse_grid(scales))  # a bad grid, image size or split fails before any work
    Recipe.build(base=inputs["base"], inputs=[inputs["tuned"]], device=device, imgsz=imgsz)
    Scoring.build([inputs["day"], inputs["night"]], select=select, imgsz=imgsz, batch=batch, device=device)
    folder = run_folder("demo", out, project, name, exist_ok)
    b, t = load_model(inputs["base"]), load_model(inputs["tuned"])
    for key in ("day", "night"):
        load_data(inputs[key])
    select = select if select is None else _selectable(select, [inputs["day"], inputs["night"]], echo)
    echo(f"base  {inputs['base']}\ntuned {inputs['tuned']}\nday   {inputs['day']}\nnight {inputs['night']}\nout   {folder}\n")

    tv = TaskVector.from_models(b, t, name="night")
    folder.mkdir(parents=True, exist_ok=True)
    vector = tv.save(folder / "night.safetensors")
    echo(f"τ = tuned − base: {tv!r} -> {vector}")

    result = sweep(
        inputs["base"],
        [str(vector)],
        data=[inputs["day"], inputs["night"]],
        scales=scales,
        reference={day_name: inputs["base"], night_name: inputs["tuned"]},
        select=select,
        imgsz=imgsz,
        batch=batch,
        device=device,
        out=folder,
        verbose=verbose,
    )
    echo(f"\nbase + α·τ at imgsz {imgsz} (norm = mAP50-95 / base's on day, / fine-tune's on night; α chosen on {result.selected_on}):\n{result.table()}")

    merged = save(result.best_model(), folder / "merged.pt", inputs=[inputs["base"], inputs["tuned"]])
    best = result.best
    alpha = best["scale"]
    ci = result.intervals()
    echo(
        f"\nchosen α = {alpha:g}, reported on val: {day_name} {ci[day_name].format()} ({best[f'{day_name}/norm']:.1%} of the base), "
        f"{night_name} {ci[night_name].format()} ({best[f'{night_name}/norm']:.1%} of the fine-tune); "
        f"mean normalized {ci['objective'].format()} [95 % bootstrap intervals over val images]\n"
        f"plot   {result.files.get('png')}\nmerged {merged}  (yolo val model={merged} data={inputs['night']} imgsz={imgsz})\n"
        f"recipe {merged.with_name('merged.recipe.yaml')}, model card {merged.with_name('merged.md')}"
    )
    return DemoResult(folder, vector, merged, result, inputs)
