"""The class-union frontier: quality vs compute from data-free merges to exact branches, and repair with images.

Four tasks in one detector: fruit (base80's own classes, fruit80), raccoon, kangaroo, bccd (the shared fine-tunes).
Every point is scored by mean and min normalized mAP50-95 over the four tasks (each task's mAP / its specialist's on
the same split: base80 on fruit80, each fine-tune on its own data) against GFLOPs relative to one model (base80,
fused, at the benchmark's imgsz; the union models fused the same way).

Splits. A calibration split is held out of each train set (``calib`` fraction, chosen by a hash of the file name):
every choice (scale, method, BatchNorm policy, shared-prefix merge, epochs) is made on it; the val splits are
only reported. Repair trains on the rest of the train images (``fit``), which are never used for choosing.

Points:

* **data-free** one-trunk merges (``classes="union"``: merged trunk and box branch, block-diagonal class branches):
  ``methods`` × ``scales`` × ``bn`` (``mixture`` and ``quadratic`` statistics computed in ``bench_union_cliff``);
  the best scale and policy of each method on calibration, reported on val;
* **share=k** exact branches: layers ``0..k-1`` shared, each source's own rest and Detect levels. The prefix is
  merged by the best data-free configuration or by the plain average of the four sources (task arithmetic at
  scale 1/4 with mixture statistics), whichever scores better on calibration;
* **repair settings**: learning rate (``lr0``) × BatchNorm handling (``repair_bn``: statistics re-estimated by
  training, or frozen), one epoch each from the chosen merge, the best on calibration used for every repair below;
* **repair** of the chosen one-trunk merge (``yolo_taskvec.repair``): pseudo-labels from the four specialists
  (``conf``) on the fit images, Ultralytics' trainer, snapshots after each of ``epochs``; compared, at the same
  epochs and images, with repair from base80 (the scale-0 union: base80's trunk, each fine-tune's class branch) and
  with training on the fit images' true labels from the same merge (the "retrain" ceiling). CPU minutes are the
  process's CPU time (user + system) from pseudo-labelling through the end of that epoch's training.

    python benchmarks/bench_union_frontier.py                     # CPU, hours on 2 busy cores (resumable)
    python benchmarks/bench_union_frontier.py device=0            # GPU
    python benchmarks/bench_union_frontier.py sections=datafree,share shares=0,11,23
    python benchmarks/bench_union_frontier.py render=true         # tables and plot again from the stored json

Writes ``benchmarks/results/union_frontier.{md,json,png}``; splits, views, per-point results and repair runs under
``<runs_dir>/bench_union_frontier`` (``work=``).
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_union_cliff import union_merge  # noqa: E402
from common import DATASETS, RESULTS, as_bool, as_floats, device_kind, environment, environment_markdown, load_average, parse_args, render_outputs, save_figure, write_outputs  # noqa: E402

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "fruit": "fruit80",
    "tasks": "raccoon,kangaroo,bccd",
    "models": "yolo26n-raccoon.pt,yolo26n-kangaroo.pt,yolo26n-bccd.pt",
    "sections": "datafree,share,repair",
    "methods": "task_arithmetic,ties,tsv,iso_c",
    "scales": "0.05,0.1,0.3,1.0",
    "bn": "merge,mixture,quadratic,recalibrate",
    "shares": "0,2,4,6,9,11,13,16,19,22",
    "epochs": "1,3,10",
    "starts": "merge,base80,labels",
    "compare_epochs": "1,3",  # epochs of the base80 and true-label runs (the merge's repair runs to max(epochs))
    "mode": "pseudo",
    "conf": "0.25",
    "lr0": "0.001,0.0001",  # repair settings tried for 1 epoch from the merge, the best on calibration used for every start
    "repair_bn": "train,freeze",  # BatchNorm during repair: statistics re-estimated by training, or kept (frozen)
    "calib": "0.2",
    "bn_batches": "16",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "seed": "0",
    "work": "",
    "render": "false",
    "out": str(RESULTS),
}
METHOD_COLORS = {"task_arithmetic": "tab:blue", "ties": "tab:orange", "tsv": "tab:purple", "iso_c": "tab:green"}
START_STYLE = {"merge": ("tab:red", "o", "repair from the merge (pseudo-labels)"), "base80": ("tab:brown", "s", "repair from base80 (pseudo-labels)"), "labels": ("black", "^", "true labels from the merge (retrain ceiling)")}


# ----------------------------------------------------------------------------------------------- setup
def runs_dir() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"])


def in_calibration(path: Path, fraction: float) -> bool:
    """A fixed, content-independent choice of calibration images: a hash of the file name."""
    return int(hashlib.sha1(path.name.encode()).hexdigest(), 16) % 1000 < fraction * 1000


class Setup:
    """Splits, dataset views with union ids, evaluators, specialists' scores and the reference GFLOPs."""

    def __init__(self, args: dict[str, str]):
        from yolo_taskvec import (
            Evaluator,
            gflops,
            image_files,
            load_data,
            load_model,
            resolve_weights,
            union_classes,
            union_data,
        )

        self.args = args
        self.work = Path(args["work"]) if args["work"] else runs_dir() / "bench_union_frontier"
        self.imgsz, self.batch, self.device = int(args["imgsz"]), int(args["batch"]), args["device"]
        self.tasks = [args["fruit"], *(t for t in args["tasks"].split(",") if t)]
        self.base_path = str(resolve_weights(args["base"]))
        self.model_paths = [str(resolve_weights(m)) for m in args["models"].split(",") if m]
        self.specialist_paths = [self.base_path, *self.model_paths]
        self.base = load_model(self.base_path)
        self.sources = [load_model(p) for p in self.model_paths]
        self.union = union_classes(self.base, self.sources)
        splits = self.work / "splits"
        splits.mkdir(parents=True, exist_ok=True)
        fraction = float(args["calib"])
        self.calib_yamls, self.fit_lists, self.counts = [], [], {}
        for task in self.tasks:
            yaml = DATASETS / f"{task}.yaml"
            files = image_files(yaml, "train")
            calib = [f for f in files if in_calibration(f, fraction)]
            fit = [f for f in files if not in_calibration(f, fraction)]
            self.counts[task] = {"train": len(files), "calib": len(calib), "fit": len(fit), "val": len(image_files(yaml, "val"))}
            (splits / f"{task}-calib.txt").write_text("".join(f"{f}\n" for f in calib))
            (splits / f"{task}-fit.txt").write_text("".join(f"{f}\n" for f in fit))
            names = load_data(yaml)["names"]
            cal = splits / f"{task}-calib.yaml"  # own class ids: the specialists' calibration scores
            cal.write_text(f"path: {splits}\ntrain: {task}-fit.txt\nval: {task}-calib.txt\nnames:\n" + "".join(f"  {i}: {json.dumps(n)}\n" for i, n in names.items()))
            self.calib_yamls.append(str(cal))
            self.fit_lists.append(str(splits / f"{task}-fit.txt"))
        self.val_views = [str(p) for p in union_data(self.union, [str(DATASETS / f"{t}.yaml") for t in self.tasks], self.work / "views-val", splits=["val"])]
        self.calib_views = [str(p) for p in union_data(self.union, self.calib_yamls, self.work / "views-calib", splits=["val"])]
        self.fit_views = [str(p) for p in union_data(self.union, self.calib_yamls, self.work / "views-fit", splits=["train"])]
        self.ev_val = Evaluator(self.val_views, imgsz=self.imgsz, batch=self.batch, device=self.device, progress=False)
        self.ev_calib = Evaluator(self.calib_views, imgsz=self.imgsz, batch=self.batch, device=self.device, progress=False)
        self.specialists = self._specialists()
        self.one_model_gflops = gflops(self.base.module, self.imgsz)
        self.vectors = self._vectors()

    def _vectors(self) -> list[Any]:
        from yolo_taskvec import TaskVector

        return [TaskVector.from_models(self.base, s, name=t, unmatched="carry") for s, t in zip(self.sources, self.tasks[1:])]

    def _specialists(self) -> dict[str, dict[str, float]]:
        """Each specialist on its own data (own class ids), on calibration and val."""
        from yolo_taskvec import Evaluator

        cached = self.work / "specialists.json"
        if cached.exists():
            return json.loads(cached.read_text())
        val = Evaluator([str(DATASETS / f"{t}.yaml") for t in self.tasks], imgsz=self.imgsz, batch=self.batch, device=self.device, progress=False)
        calib = Evaluator(self.calib_yamls, imgsz=self.imgsz, batch=self.batch, device=self.device, progress=False)
        out = {
            "val": {t: val.score(m, t)["map50_95"] for t, m in zip(self.tasks, self.specialist_paths)},
            "calib": {t: calib.score(m, f"{t}-calib")["map50_95"] for t, m in zip(self.tasks, self.specialist_paths)},
        }
        cached.write_text(json.dumps(out, indent=1))
        return out

    def score(self, model: Any, split: str) -> dict[str, Any]:
        """mAP50-95 per task on the union views of ``split`` (``calib`` or ``val``), normalized, mean and min."""
        ev = self.ev_calib if split == "calib" else self.ev_val
        raw = ev(model)
        out: dict[str, Any] = {}
        for task, name in zip(self.tasks, ev.names):
            out[task] = raw[name]["map50_95"]
            out[f"{task}/norm"] = out[task] / self.specialists[split][task]
        norms = [out[f"{t}/norm"] for t in self.tasks]
        out["mean"], out["min"] = sum(norms) / len(norms), min(norms)
        return out


class Points:
    """Per-point results stored as one json file each under ``work/points`` (an interrupted run resumes)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, compute: Any) -> dict[str, Any]:
        path = self.folder / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")
        if path.exists():
            return json.loads(path.read_text())["value"]
        value = compute()
        path.write_text(json.dumps({"key": key, "value": value}))
        return value


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ----------------------------------------------------------------------------------------------- sections
def datafree(setup: Setup, points: Points) -> dict[str, Any]:
    """Grid on calibration, best (scale, bn) per method reported on val."""
    from ultralytics.utils import TQDM

    from yolo_taskvec import gflops

    args = setup.args
    grid = [(m, bn, s) for m in args["methods"].split(",") if m for bn in args["bn"].split(",") if bn for s in as_floats(args["scales"])]
    rows = []
    bar = TQDM(grid, desc="data-free merges (calibration)")
    for method, bn, scale in bar:
        def compute(method=method, bn=bn, scale=scale) -> dict[str, Any]:
            try:
                model = union_merge(setup.base, setup.vectors, scale, bn, method=method, bn_data=setup.calib_yamls, imgsz=setup.imgsz)
            except Exception as e:  # noqa: BLE001 - a refused merge is a result (e.g. non-positive variances)
                return {"error": str(e)}
            return setup.score(model, "calib")

        row = points.get(f"datafree|{method}|{bn}|{scale}", compute)
        rows.append({"method": method, "bn": bn, "scale": scale, **row})
        bar.set_description(f"data-free {method}/{bn}/{scale:g}: " + ("refused" if "error" in row else f"{row['mean']:.3f}"))
    best = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and "error" not in r]
        if not ok:
            continue
        pick = max(ok, key=lambda r: r["mean"])
        val = points.get(f"datafree-val|{method}|{pick['bn']}|{pick['scale']}", lambda p=pick: setup.score(_datafree_model(setup, p), "val"))
        best[method] = {"method": method, "bn": pick["bn"], "scale": pick["scale"], "calib": {k: pick[k] for k in pick if k not in ("method", "bn", "scale")}, "val": val}
        print(f"data-free {method}: bn={pick['bn']} scale {pick['scale']:g} → calib mean {pick['mean']:.3f}; val mean {val['mean']:.3f} min {val['min']:.3f}", flush=True)
    chosen = max(best.values(), key=lambda b: b["calib"]["mean"]) if best else None
    cost = gflops(_datafree_model(setup, chosen), setup.imgsz) if chosen else float("nan")
    return {"grid": rows, "best": best, "chosen": chosen and {k: chosen[k] for k in ("method", "bn", "scale")}, "gflops": cost}


def _datafree_model(setup: Setup, cfg: dict[str, Any], share: int | None = None) -> Any:
    return union_merge(setup.base, setup.vectors, cfg["scale"], cfg["bn"], method=cfg["method"], bn_data=setup.calib_yamls, imgsz=setup.imgsz, share=share)


def shares(setup: Setup, points: Points, chosen: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each share depth: prefix merged by the chosen data-free configuration or by the average; better on calibration."""
    from ultralytics.utils import TQDM

    from yolo_taskvec import gflops

    average = {"method": "task_arithmetic", "bn": "mixture", "scale": 1.0 / (len(setup.vectors) + 1), "name": "average"}
    candidates = [average] + ([{**chosen, "name": "best data-free"}] if chosen else [])
    rows = []
    for k in TQDM([int(s) for s in as_floats(setup.args["shares"])], desc="share depths"):
        tried = []
        for cfg in candidates[: 1 if k == 0 else None]:  # nothing shared: nothing to merge
            calib = points.get(f"share|{k}|{cfg['method']}|{cfg['bn']}|{cfg['scale']}", lambda cfg=cfg, k=k: setup.score(_datafree_model(setup, cfg, k), "calib"))
            tried.append((cfg, calib))
        cfg, calib = max(tried, key=lambda t: t[1]["mean"])
        val = points.get(f"share-val|{k}|{cfg['method']}|{cfg['bn']}|{cfg['scale']}", lambda cfg=cfg, k=k: setup.score(_datafree_model(setup, cfg, k), "val"))
        cost = points.get(f"share-gflops|{k}|{setup.imgsz}", lambda k=k: {"gflops": gflops(_datafree_model(setup, average, k), setup.imgsz)})["gflops"]
        rows.append({"share": k, "prefix": {key: cfg[key] for key in ("name", "method", "bn", "scale")}, "tried": [{"name": c["name"], "calib_mean": s["mean"]} for c, s in tried], "calib": calib, "val": val, "gflops": cost})
        print(f"share={k}: prefix {cfg['name']} → val mean {val['mean']:.3f} min {val['min']:.3f}, {cost / setup.one_model_gflops:.2f}× one model", flush=True)
    return rows


def _views_yaml(setup: Setup, name: str, root: str, train: tuple[list[str], str], val: tuple[list[str], str]) -> Path:
    """A dataset yaml with union class ids whose ``train`` and ``val`` are (view yamls, split) pairs."""
    path = setup.work / name
    train_dirs, val_dirs = (json.dumps([str(Path(v).with_suffix("") / "images" / split) for v in views]) for views, split in (train, val))
    path.write_text(f"path: {setup.work / root}\ntrain: {train_dirs}\nval: {val_dirs}\nnames:\n" + "".join(f"  {i}: {json.dumps(n)}\n" for i, n in setup.union.names.items()))
    return path


def _calib_yaml(setup: Setup) -> Path:
    """Ultralytics' val split during training: the four calibration views, union ids."""
    return _views_yaml(setup, "calib-union.yaml", "views-calib", (setup.calib_views, "val"), (setup.calib_views, "val"))


def pseudo_labels(setup: Setup) -> tuple[Path, dict[str, Any]]:
    """The fit images pseudo-labelled once by the four specialists (every repair start trains on the same labels),
    with the CPU and wall time it took (added to every pseudo-label repair's minutes)."""
    # repair()'s steps, run apart to time labelling and training separately (see the test's exceptions table)
    from yolo_taskvec.repair import image_list, pseudo_label

    folder = setup.work / "repair" / f"pseudo-conf{setup.args['conf']}"
    done = folder / "labelled.json"
    if not done.exists():
        t0, c0 = time.perf_counter(), cpu_seconds()
        pseudo_label(setup.specialist_paths, image_list(setup.fit_lists), setup.union.names, folder, conf=float(setup.args["conf"]), imgsz=setup.imgsz, batch=setup.batch, device=setup.device, val=_calib_yaml(setup))
        counts = (folder / "data" / "counts.txt").read_text().strip()
        done.write_text(json.dumps({"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "counts": counts}))
    return folder / "data" / "data.yaml", json.loads(done.read_text())


def _true_labels(setup: Setup) -> Path:
    """The fit views' own labels for training (the "retrain" ceiling), the calibration views as val."""
    return _views_yaml(setup, "fit-labels.yaml", "views-fit", (setup.fit_views, "train"), (setup.calib_views, "val"))


def _train(setup: Setup, start: str, cfg: dict[str, Any], settings: dict[str, Any], epochs: int) -> tuple[Path, dict[str, Any]]:
    """One repair run (resumable by its folder): snapshots after every epoch, CPU and wall time per epoch."""
    from yolo_taskvec.repair import fine_tune

    args = setup.args
    mode = "labels" if start == "labels" else args["mode"]
    folder = setup.work / "repair" / f"{start}-{cfg['method']}-{cfg['bn']}-{cfg['scale']:g}-{mode}-conf{args['conf']}-lr{settings['lr0']:g}-bn{settings['repair_bn']}-e{epochs}"
    done = folder / "done.json"
    if not done.exists():
        if start == "labels":
            data, labelled = _true_labels(setup), {"wall": 0.0, "cpu": 0.0, "counts": "true labels"}
        else:
            data, labelled = pseudo_labels(setup)
        model = _datafree_model(setup, cfg)
        t0, c0 = time.perf_counter(), cpu_seconds()
        clock: list[dict[str, float]] = []

        def on_epoch_end(trainer: Any) -> None:
            clock.append({"epoch": trainer.epoch + 1, "wall": labelled["wall"] + time.perf_counter() - t0, "cpu": labelled["cpu"] + cpu_seconds() - c0})

        teach = {}
        if mode == "distill":
            teach = {"teachers": [s.module for s in (setup.base, *setup.sources)], "rows": [sorted(setup.union.remap(n).items()) for n in setup.union.task_names]}
        fine_tune(model.model, data, folder / "train", epochs=epochs, imgsz=setup.imgsz, batch=setup.batch, lr0=settings["lr0"], freeze_bn=settings["repair_bn"] == "freeze", device=setup.device, seed=int(args["seed"]), save_period=1, callbacks={"on_train_epoch_end": on_epoch_end}, **teach)
        done.write_text(json.dumps({"labelled": labelled, "clock": clock, "labels": labelled["counts"]}))
    return folder, json.loads(done.read_text())


def _snapshot(folder: Path, epoch: int, last: int) -> Path:
    snapshot = folder / "train" / "weights" / f"epoch{epoch - 1}.pt"  # Ultralytics names it by the 0-based epoch index
    return snapshot if snapshot.exists() or epoch != last else folder / "train" / "weights" / "last.pt"


def repair_settings(setup: Setup, points: Points, chosen: dict[str, Any]) -> dict[str, Any]:
    """Each (lr0, repair_bn) for one epoch from the chosen merge, scored on calibration; the best is returned."""
    grid = [{"lr0": lr, "repair_bn": bn} for lr in as_floats(setup.args["lr0"]) for bn in setup.args["repair_bn"].split(",") if bn]
    rows = []
    for settings in grid:
        folder, info = _train(setup, "merge", chosen, settings, 1)
        calib = points.get(f"settings-calib|{folder.name}", lambda f=folder: setup.score(str(_snapshot(f, 1, 1)), "calib"))
        rows.append({**settings, "cpu_minutes": info["clock"][0]["cpu"] / 60, "calib": calib})
        print(f"repair settings lr0={settings['lr0']:g} bn={settings['repair_bn']}: 1 epoch → calib mean {calib['mean']:.3f} min {calib['min']:.3f}", flush=True)
    best = max(rows, key=lambda r: r["calib"]["mean"])
    return {"grid": rows, "chosen": {"lr0": best["lr0"], "repair_bn": best["repair_bn"]}}


def repairs(setup: Setup, points: Points, chosen: dict[str, Any] | None, starts: list[str], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Repair from the chosen merge, from base80, and true labels from the chosen merge; snapshots per epoch."""
    from yolo_taskvec import gflops

    args = setup.args
    rows = []
    for start in starts:
        epochs = sorted({int(e) for e in as_floats(args["epochs"] if start == "merge" else args["compare_epochs"])})
        last = max(epochs)
        cfg = chosen if start in ("merge", "labels") else {"method": "task_arithmetic", "bn": "merge", "scale": 0.0}
        folder, info = _train(setup, start, cfg, settings, last)
        for e in epochs:
            snapshot = _snapshot(folder, e, last)
            calib = points.get(f"repair-calib|{folder.name}|{e}", lambda s=snapshot: setup.score(str(s), "calib"))
            val = points.get(f"repair-val|{folder.name}|{e}", lambda s=snapshot: setup.score(str(s), "val"))
            clock = next(c for c in info["clock"] if c["epoch"] == e)
            rows.append({"start": start, "mode": "labels" if start == "labels" else args["mode"], "from": cfg, "settings": settings, "epochs": e, "cpu_minutes": clock["cpu"] / 60, "wall_minutes": clock["wall"] / 60, "labelling_cpu_minutes": info["labelled"]["cpu"] / 60, "labels": info["labels"], "calib": calib, "val": val, "run": str(folder)})
            print(f"repair from {start} after {e} epochs ({clock['cpu'] / 60:.1f} CPU min): val mean {val['mean']:.3f} min {val['min']:.3f}", flush=True)
    cost = points.get(f"repair-gflops|{setup.imgsz}", lambda: {"gflops": gflops(_datafree_model(setup, chosen or {"method": "task_arithmetic", "bn": "merge", "scale": 0.0}), setup.imgsz)})["gflops"]
    for r in rows:
        r["gflops"] = cost
    return rows


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "bench_union_frontier.py")
    if as_bool(args["render"]):
        render_outputs("union_frontier", args["out"], markdown=markdown, plot=plot)
        return
    start = time.perf_counter()
    env = environment(args["device"])
    setup = Setup(args)
    points = Points(setup.work / "points")
    sections = [s for s in args["sections"].split(",") if s]
    result: dict[str, Any] = {
        "environment": env,
        "command": "python benchmarks/bench_union_frontier.py " + " ".join(argv),
        "config": {k: v for k, v in args.items() if k not in ("out", "work", "render")},
        "tasks": setup.tasks,
        "splits": setup.counts,
        "specialists": setup.specialists,
        "one_model_gflops": setup.one_model_gflops,
    }
    kind = device_kind(args["device"])

    def checkpoint() -> None:  # results so far, so an interrupted run still leaves its tables and plot
        result["minutes"] = (time.perf_counter() - start) / 60
        result["load_average_end"] = load_average()
        write_outputs("union_frontier", result, args["out"], kind=kind, markdown=markdown, plot=plot)

    df = datafree(setup, points)
    result["datafree"] = df
    chosen = df["chosen"]
    checkpoint()
    starts = [s for s in args["starts"].split(",") if s] if "repair" in sections else []
    settings = None
    if starts:
        result["repair_settings"] = repair_settings(setup, points, chosen)
        settings = result["repair_settings"]["chosen"]
        checkpoint()
    if "merge" in starts:  # the user's path first: repair of the chosen merge
        result["repair"] = repairs(setup, points, chosen, ["merge"], settings)
        checkpoint()
    if "share" in sections:
        result["shares"] = shares(setup, points, chosen)
        checkpoint()
    others = [s for s in starts if s != "merge"]
    if others:
        result["repair"] = result.get("repair", []) + repairs(setup, points, chosen, others, settings)
        checkpoint()


# ----------------------------------------------------------------------------------------------- report
def _rel(run: dict[str, Any], gflops: float) -> float:
    return gflops / run["one_model_gflops"]


def _tasks_cells(run: dict[str, Any], scores: dict[str, Any]) -> str:
    return " | ".join(f"{scores[t + '/norm']:.3f} ({scores[t]:.3f})" for t in run["tasks"])


def markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# Class-union frontier: quality vs compute, data-free merge → exact branches → repair with images",
        "",
        "Four tasks in one detector (fruit via base80 on fruit80, raccoon, kangaroo, bccd). **Normalized** = the task's mAP50-95 /",
        "its specialist's on the same split (base80 on fruit80, each fine-tune on its own data); **mean** and **min** over the",
        "four tasks. **GFLOPs ×** = GFLOPs of the fused model / base80's (fused), at the same imgsz. Every choice (scale, method,",
        "BatchNorm policy, prefix merge, epochs) is made on the **calibration** split held out of each train set; tables report",
        "the **val** splits (raw mAP50-95 in parentheses).",
        "",
    ]
    for kind, run in runs.items():
        t = run["tasks"]
        lines += [f"## {kind.upper()}", "", *environment_markdown(run["environment"], run.get("load_average_end")), f"Command: `{run['command']}` ({run['minutes']:.0f} min)", ""]
        lines += ["Splits (images): " + "; ".join(f"{k} train {v['train']} = fit {v['fit']} + calibration {v['calib']}, val {v['val']}" for k, v in run["splits"].items()) + ".", ""]
        lines += ["Specialists (mAP50-95): " + ", ".join(f"{k} val {run['specialists']['val'][k]:.3f} / calib {run['specialists']['calib'][k]:.3f}" for k in t) + f". One model: {run['one_model_gflops']:.3f} GFLOPs at imgsz {run['config']['imgsz']}.", ""]
        lines += goal_lines(run)
        df = run.get("datafree")
        if df:
            lines += ["### Data-free one-trunk merges (best scale and BatchNorm policy per method, chosen on calibration)", "", f"| method | bn | scale | GFLOPs × | calib mean | val mean | val min | {' | '.join(t)} |", "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(t)]
            for b in sorted(df["best"].values(), key=lambda b: -b["calib"]["mean"]):
                lines.append(f"| {b['method']} | {b['bn']} | {b['scale']:g} | {_rel(run, df['gflops']):.2f} | {b['calib']['mean']:.3f} | {b['val']['mean']:.3f} | {b['val']['min']:.3f} | {_tasks_cells(run, b['val'])} |")
            lines += ["", "Calibration mean normalized, every grid point (refused: the merge was refused):", ""]
            bns = list(dict.fromkeys(r["bn"] for r in df["grid"]))
            scales = sorted({r["scale"] for r in df["grid"]})
            lines += ["| method | bn | " + " | ".join(f"{s:g}" for s in scales) + " |", "|---|---|" + "---:|" * len(scales)]
            for method in dict.fromkeys(r["method"] for r in df["grid"]):
                for bn in bns:
                    cells = []
                    for s in scales:
                        r = next((r for r in df["grid"] if r["method"] == method and r["bn"] == bn and r["scale"] == s), None)
                        cells.append("—" if r is None else "refused" if "error" in r else f"{r['mean']:.3f}")
                    lines.append(f"| {method} | {bn} | " + " | ".join(cells) + " |")
            lines.append("")
        if run.get("shares"):
            lines += ["### share=k: layers 0..k−1 shared, each source's own rest (exact branches at k = 0)", "", f"| share | prefix merge (calib) | GFLOPs × | calib mean | val mean | val min | {' | '.join(t)} |", "|---:|---|---:|---:|---:|---:|" + "---:|" * len(t)]
            for r in run["shares"]:
                p = r["prefix"]
                what = "nothing shared" if r["share"] == 0 else f"{p['name']} ({p['method']}, {p['bn']}, {p['scale']:g})"
                lines.append(f"| {r['share']} | {what} | {_rel(run, r['gflops']):.2f} | {r['calib']['mean']:.3f} | {r['val']['mean']:.3f} | {r['val']['min']:.3f} | {_tasks_cells(run, r['val'])} |")
            lines.append("")
        rs = run.get("repair_settings")
        if rs:
            lines += ["### Repair settings (one epoch from the chosen merge, pseudo-labels; chosen on calibration)", "", "BatchNorm *train*: statistics re-estimated by training on the repair images; *freeze*: kept as merged (affine weights still train).", "", f"| lr0 | BatchNorm | CPU min | calib mean | calib min | {' | '.join(t)} (calib) |", "|---:|---|---:|---:|---:|" + "---:|" * len(t)]
            for r in rs["grid"]:
                mark = " **(chosen)**" if {"lr0": r["lr0"], "repair_bn": r["repair_bn"]} == rs["chosen"] else ""
                lines.append(f"| {r['lr0']:g} | {r['repair_bn']}{mark} | {r['cpu_minutes']:.1f} | {r['calib']['mean']:.3f} | {r['calib']['min']:.3f} | " + " | ".join(f"{r['calib'][x + '/norm']:.3f}" for x in t) + " |")
            lines.append("")
        if run.get("repair"):
            frm = run["repair"][0]["from"]
            st = run["repair"][0].get("settings") or {"lr0": float(run["config"]["lr0"]), "repair_bn": "train"}
            lines += [
                f"### Repair (one trunk, {_rel(run, run['repair'][0]['gflops']):.2f}× one model), pseudo-labels conf {run['config']['conf']}, AdamW lr0 {st['lr0']:g}, BatchNorm {st['repair_bn']}, imgsz {run['config']['imgsz']}",
                "",
                f"Merge start: {frm['method']} bn={frm['bn']} scale {frm['scale']:g} (chosen on calibration). CPU minutes: CPU time of pseudo-labelling (once, {run['repair'][0]['labelling_cpu_minutes']:.1f} min, counted in every pseudo-label run) plus training through the epoch.",
                "",
                f"| start | epochs | CPU min | wall min | calib mean | val mean | val min | {' | '.join(t)} |",
                "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(t),
            ]
            for r in run["repair"]:
                lines.append(f"| {START_STYLE[r['start']][2]} | {r['epochs']} | {r['cpu_minutes']:.1f} | {r['wall_minutes']:.1f} | {r['calib']['mean']:.3f} | {r['val']['mean']:.3f} | {r['val']['min']:.3f} | {_tasks_cells(run, r['val'])} |")
            lines += ["", "Pseudo-labels: " + "; ".join(sorted({f"{r['start']}: {r['labels']}" for r in run["repair"]})) + ".", ""]
    return "\n".join(lines)


def goal_lines(run: dict[str, Any]) -> list[str]:
    """The issue's goals against this run's numbers."""
    out = ["### Goals", ""]
    exact = next((r for r in run.get("shares") or [] if r["share"] == 0), None)
    if exact:
        worst = min(exact["val"][f"{t}/norm"] for t in run["tasks"])
        out.append(f"- Exact branches (share=0) ≥ 0.99 of every specialist: worst task {worst:.3f} → **{'met' if worst >= 0.99 else 'not met'}** ({_rel(run, exact['gflops']):.2f}× one model).")
    rep = [r for r in run.get("repair") or [] if r["start"] == "merge"]
    if rep:
        budget = [r for r in rep if r["cpu_minutes"] <= 30]
        pick = max(budget or rep, key=lambda r: r["calib"]["mean"])
        ok = pick["val"]["mean"] >= 0.90 and pick["val"]["min"] >= 0.80 and pick["cpu_minutes"] <= 30
        out.append(
            f"- One trunk after repair, mean ≥ 0.90 and min ≥ 0.80 in ≤ 30 CPU minutes: chosen on calibration among the repairs within budget, "
            f"{pick['epochs']} epochs ({pick['cpu_minutes']:.1f} CPU min) → val mean {pick['val']['mean']:.3f}, min {pick['val']['min']:.3f} → **{'met' if ok else 'not met'}**."
        )
        best = max(rep, key=lambda r: r["val"]["mean"])
        out.append(f"  Best repair measured: {best['epochs']} epochs ({best['cpu_minutes']:.1f} CPU min): val mean {best['val']['mean']:.3f}, min {best['val']['min']:.3f}.")
    out.append("")
    return out


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    run = runs.get("cpu") or next(iter(runs.values()))
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), sharex=True)
    for ax, stat in zip(axes, ("mean", "min")):
        ax.axhline(1.0, color="gray", lw=1, ls=":")
        ax.axvline(1.0, color="gray", lw=1, ls=":")
        goal = 0.90 if stat == "mean" else 0.80
        ax.axhline(goal, color="tab:red", lw=0.8, ls="--")
        ax.text(0.98, goal + 0.01, f"goal {goal:.2f}", color="tab:red", fontsize=8, ha="right", va="bottom", transform=ax.get_yaxis_transform())
        df = run.get("datafree")
        if df:
            for b in df["best"].values():
                ax.scatter(_rel(run, df["gflops"]), b["val"][stat], color=METHOD_COLORS.get(b["method"], "gray"), marker="D", s=40, zorder=3, label=f"data-free {b['method']} ({b['bn']}, {b['scale']:g})")
        if run.get("shares"):
            xs = [_rel(run, r["gflops"]) for r in run["shares"]]
            ys = [r["val"][stat] for r in run["shares"]]
            ax.plot(xs, ys, "-", color="tab:cyan", marker="o", ms=5, label="share=k branches (label: k)")
            for r, x, y in zip(run["shares"], xs, ys):
                ax.annotate(str(r["share"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:cyan")
        for start in dict.fromkeys(r["start"] for r in run.get("repair") or []):
            rows = [r for r in run["repair"] if r["start"] == start]
            color, marker, label = START_STYLE[start]
            x = _rel(run, rows[0]["gflops"])
            offsets = [x + 0.03 * (i - 1) for i in range(len(rows))]
            ax.plot(offsets, [r["val"][stat] for r in rows], "-", color=color, marker=marker, ms=6, label=label)
            for r, xo in zip(rows, offsets):
                ax.annotate(f"{r['epochs']} ep, {r['cpu_minutes']:.0f} CPU min", (xo, r["val"][stat]), textcoords="offset points", xytext=(5, -3), fontsize=7, color=color)
        ax.set(xlabel="GFLOPs relative to one model (fused, imgsz %s)" % run["config"]["imgsz"], ylabel=f"{stat} normalized mAP50-95 over the 4 tasks (val)", title=f"{stat} over fruit80, raccoon, kangaroo, bccd")
        ax.set_ylim(0, 1.08)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Class-union frontier: yolo26n base80 + raccoon + kangaroo + bccd in one detector ({device_kind(run['config']['device'])}, scores on val, choices on calibration)", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 0.96))
    save_figure(fig, path)


if __name__ == "__main__":
    main(sys.argv[1:])
