"""A REAL segment fine-tune of base80 for the detect + segment merge: the person class of coco-mini-seg + coco128-seg.

Why the earlier attempts measured nothing (``seg_person.md``: person mask mAP50-95 ≤ 0.01): the shared
``yolo26n-seg-cocomini.pt`` was trained on all 80 COCO classes with Ultralytics' automatic learning rate for 80
classes (AdamW lr0 0.000119) for 29 epochs, and ``train_seg_person.py`` had a CPU budget of 15 epochs (about 250
optimizer steps): neither is enough for a mask head that starts from random weights on top of a base that barely
knows COCO (base80: box mAP50-95 0.003 on coco-mini, 0.026 on persons). This script gives the same, learnable task —
one class with about a thousand polygons — a GPU budget: about 10 minutes on one H200 (Ultralytics' ``time=``
fits the epochs into it; a few hundred epochs instead of 15), AdamW lr0 0.001 with warm-up, batch 32, imgsz 320.
Ultralytics' default ``warmup_bias_lr=0.1`` is kept off: it is a from-scratch SGD value, and with AdamW the first
iterations move every bias by that rate (CPU smoke tests here, on 10-30 % of the images: one epoch with it and
lr0 0.002 took the person box mAP50-95 from base80's 0.026 to 0.000; two epochs without it at lr0 0.001 kept 0.015 —
smoke numbers, not results).

* data: a view of coco-mini-seg train + coco128-seg train keeping only ``person`` polygons (class 0; 262 images
  with a person). ``calib`` of those images (seeded) are HELD OUT of training: they are the calibration split on
  which ``bench_dual.py`` selects its merge scales; val is every coco-mini-seg val image (203, 505 persons), on
  which results are reported. The yaml keeps all 80 COCO names, so the class branch has base80's shape;
* model: ``YOLO("yolo26n-seg.yaml").load("yolo26n-base80.pt")`` (backbone, neck, box and class branches from
  base80, mask branches new), trained with Ultralytics' trainer; everything not set here is Ultralytics' default.
  Ultralytics' AMP self-check needs to download yolo26n.pt; offline it is skipped and AMP stays on, as Ultralytics
  itself does when the download fails.

    # the real run (GPU, about 10 minutes on one H200): writes benchmarks/assets/yolo26n-seg-person.{pt,json}
    python benchmarks/train_seg_finetune.py device=0
    # a CPU smoke test of the whole path (never an asset): 1 epoch on a tenth of the images
    python benchmarks/train_seg_finetune.py device=cpu epochs=1 time=0 fraction=0.1 batch=8 workers=0 out=/tmp/seg-smoke

The views and the training run go to ``<runs_dir>/taskvec-seg/`` (``project=``), never into the repository. With
``asset=auto`` (default) a GPU run copies ``best.pt`` to ``benchmarks/assets/<name>.pt`` and writes
``<name>.json`` beside it (sha256, size, training command, recipe, data counts, metrics with bootstrap intervals,
environment); a CPU run never does. Results: ``benchmarks/results/seg_finetune.{md,json,png}`` (``out=``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PALETTE, REPO, RESULTS, as_bool, atomic_output, device_kind, environment, environment_markdown, figure_title, legend_below, load_average, parse_args, render_outputs, save_figure, write_outputs, write_text_atomic  # noqa: E402

ASSETS = REPO / "benchmarks" / "assets"
DATASETS = REPO / "datasets"
DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "cfg": "yolo26n-seg.yaml",
    "train_data": "coco-mini-seg.yaml:train,coco128-seg.yaml:train",
    "val_data": "coco-mini-seg.yaml:val",
    "cls": "0",
    "calib": "40",  # train images with a person held out of training (seeded): the selection split of bench_dual.py
    "seed": "0",
    "epochs": "300",  # an upper bound: time= decides on a GPU
    "time": "0.15",  # hours (9 minutes of training + set-up and final validation ≈ 10 minutes); 0: epochs only
    "optimizer": "AdamW",
    "lr0": "0.001",
    "warmup_epochs": "3",
    "warmup_bias_lr": "0.0",  # Ultralytics' 0.1 is an SGD-from-scratch value: with AdamW it wipes base80's biases
    "batch": "32",
    "imgsz": "320",
    "workers": "8",
    "fraction": "1.0",  # share of the train images (smoke tests)
    "device": "0",
    "project": "",  # default: <runs_dir>/taskvec-seg
    "asset": "auto",  # true / false / auto (GPU runs only)
    "name": "yolo26n-seg-person",
    "resamples": "1000",
    "out": str(RESULTS),
    "render": "false",  # true (or --replot): rebuild the .md/.png from the stored .json
}


def default_project() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"]) / "taskvec-seg"


# ----------------------------------------------------------------------------------------------- data views
def _split_sources(spec: str) -> list[tuple[Path, str]]:
    """``a.yaml:train,b.yaml:train`` -> [(yaml path, split)]."""
    out = []
    for item in spec.split(","):
        name, _, split = item.partition(":")
        out.append((DATASETS / name if not Path(name).is_absolute() else Path(name), split or "train"))
    return out


def _kept_lines(label: Path, keep: set[int]) -> list[str]:
    if not label.exists():
        return []
    return [line for line in label.read_text().splitlines() if line.split() and int(float(line.split()[0])) in keep]


def write_views(project: Path, train_spec: str, val_spec: str, keep: set[int], calib: int, seed: int) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """Dataset views (symlinked images, labels filtered to ``keep``) under ``<project>/data``: ``train`` (images with
    a kept instance, minus the calibration images), ``calib`` (``calib`` of them, seeded) and ``val`` (every image).

    Deterministic for a given (sources, classes, calib, seed), so ``bench_dual.py`` rebuilds the same views. Built
    in a temporary folder and moved into place. Returns ``({"train": yaml, "calib": yaml}, counts)``.
    """
    from ultralytics.data.utils import img2label_paths

    from yolo_taskvec import image_files, load_data

    final = project / "data"
    tmp = project / f".data.{uuid.uuid4().hex[:8]}.tmp"
    names: dict[int, str] | None = None
    items: dict[str, list[tuple[Path, list[str], str]]] = {"train": [], "val": []}
    for split, spec, only_positive in (("train", train_spec, True), ("val", val_spec, False)):
        for yaml, source_split in _split_sources(spec):
            info = load_data(yaml, split=source_split)
            if names is None:
                names = info["names"]
            elif info["names"] != names:
                sys.exit(f"{yaml} has other class names than the first dataset; the view needs one class list.")
            for image in image_files(yaml, source_split):
                lines = _kept_lines(Path(img2label_paths([str(image)])[0]), keep)
                if lines or not only_positive:
                    items[split].append((image, lines, f"{Path(yaml).stem}_{image.name}"))
    if calib >= len(items["train"]):
        sys.exit(f"only {len(items['train'])} train images hold a kept class; calib={calib} would leave none to train on.")
    held = set(random.Random(seed).sample(range(len(items["train"])), calib))
    splits = {"train": [x for i, x in enumerate(items["train"]) if i not in held], "calib": [x for i, x in enumerate(items["train"]) if i in held], "val": items["val"]}
    counts = {}
    try:
        for split, chosen in splits.items():
            for image, lines, stem in chosen:
                link = tmp / "images" / split / stem
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.abspath(image))
                label = (tmp / "labels" / split / stem).with_suffix(".txt")
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text("\n".join(lines) + ("\n" if lines else ""))
            counts[split] = {"images": len(chosen), "instances": sum(len(lines) for _, lines, _ in chosen)}
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kept = ", ".join(names[k] for k in sorted(keep))
    yamls = {}
    for name, val in (("train", "val"), ("calib", "calib")):
        lines = [
            f"# {kept} polygons of {train_spec} (train, {counts['calib']['images']} images held out as calib, seed {seed}) and {val_spec} (val)",
            "# written by benchmarks/train_seg_finetune.py",
            f"path: {final}",
            "train: images/train",
            f"val: images/{val}",
            "names:",
            *(f"  {i}: {n}" for i, n in names.items()),
        ]
        yamls[name] = write_text_atomic(project / f"person-{name}.yaml" if name == "calib" else project / "person.yaml", "\n".join(lines) + "\n")
    return yamls, counts


def views(args: dict[str, str], project: Path) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """The views of this script's arguments (``bench_dual.py`` calls it with the recipe stored beside the asset)."""
    return write_views(project, args["train_data"], args["val_data"], {int(c) for c in args["cls"].split(",")}, int(args["calib"]), int(args["seed"]))


# ----------------------------------------------------------------------------------------------- train and measure
def train(base: Path, data: Path, project: Path, args: dict[str, str]) -> tuple[Path, float]:
    from ultralytics import YOLO

    model = YOLO(args["cfg"]).load(str(base))  # same-shape tensors from base80; the mask branches start new
    extra = {"time": float(args["time"])} if float(args["time"]) > 0 else {}
    start = time.perf_counter()
    model.train(
        data=str(data),
        epochs=int(args["epochs"]),
        optimizer=args["optimizer"],
        lr0=float(args["lr0"]),
        warmup_epochs=float(args["warmup_epochs"]),
        warmup_bias_lr=float(args["warmup_bias_lr"]),
        batch=int(args["batch"]),
        imgsz=int(args["imgsz"]),
        seed=int(args["seed"]),
        deterministic=True,
        fraction=float(args["fraction"]),
        device=args["device"],
        workers=int(args["workers"]),
        plots=False,
        project=str(project),
        name="train",
        exist_ok=True,
        verbose=False,
        **extra,
    )
    return project / "train" / "weights" / "best.pt", time.perf_counter() - start


def measure(base: Path, models: dict[str, Path], data: dict[str, Path], args: dict[str, str]) -> dict[str, Any]:
    """Box and mask mAP (with bootstrap intervals over the images) of each model on each view."""
    from yolo_taskvec import Evaluator, interval

    ev = Evaluator([str(p) for p in data.values()], imgsz=int(args["imgsz"]), batch=16, device=args["device"], progress=False, per_image=True)
    out: dict[str, Any] = {}
    for label, path in models.items():
        scores = ev(str(path))
        intervals = {ds: {m: interval(stats, m, resamples=int(args["resamples"])).to_dict() for m in ("map50_95", "mask_map50_95") if m != "mask_map50_95" or stats.has_masks} for ds, stats in ev.image_stats.items()}
        out[label] = {"weights": str(path), "scores": scores, "intervals": intervals}
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_asset(weights: Path, result: dict[str, Any], name: str) -> dict[str, Any]:
    """``benchmarks/assets/<name>.pt`` (a copy of best.pt) and ``<name>.json`` (sha256, command, recipe, metrics)."""
    ASSETS.mkdir(parents=True, exist_ok=True)
    target = ASSETS / f"{name}.pt"
    with atomic_output(target) as tmp:
        shutil.copyfile(weights, tmp)
    card = {
        "file": target.name,
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "command": result["command"],
        "recipe": result["recipe"],
        "data": result["counts"],
        "base": Path(result["base"]).name,
        "cfg": result["cfg"],
        "train_seconds": result["train_seconds"],
        "metrics": {label: {"scores": m["scores"], "intervals": m["intervals"]} for label, m in result["models"].items() if label == "fine-tune"},
        "environment": result["environment"],
    }
    write_text_atomic(ASSETS / f"{name}.json", json.dumps(card, indent=1, ensure_ascii=False))
    return {"path": str(target.relative_to(REPO)), "sha256": card["sha256"], "bytes": card["bytes"]}


# ----------------------------------------------------------------------------------------------- report
def _cell(m: dict[str, Any], ds: str, key: str) -> str:
    value = m["scores"].get(ds, {}).get(key)
    if value is None:
        return "—"
    ci = m.get("intervals", {}).get(ds, {}).get(key)
    return f"{value:.3f}" + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "")


def markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# A segment fine-tune of base80 (person, coco-mini-seg + coco128-seg) for the detect + segment merge",
        "",
        "Generated by `benchmarks/train_seg_finetune.py` (its docstring gives the recipe and why the earlier attempts in",
        "`seg_person.md` measured nothing). Brackets: 95 % percentile bootstrap intervals over the val images.",
        "",
    ]
    for kind, run in runs.items():
        r = run["recipe"]
        c = run["counts"]
        lines += [
            f"## {kind.upper()}",
            "",
            *environment_markdown(run["environment"], run.get("load_average_end")),
            f"Command: `{run['command']}`" + (f"; training took {run['train_seconds'] / 60:.1f} min" if run.get("train_seconds") else ""),
            "",
            f"Model: `YOLO('{run['cfg']}').load('{Path(run['base']).name}')`, trained with "
            + ", ".join(f"{k}={v}" for k, v in r.items())
            + ". Everything else: Ultralytics' defaults.",
            f"Data: train {c['train']['images']} images / {c['train']['instances']} person polygons; calibration (held out, "
            f"for selecting merge scales) {c['calib']['images']} / {c['calib']['instances']}; val {c['val']['images']} / {c['val']['instances']}.",
            "",
        ]
        if run.get("asset"):
            a = run["asset"]
            lines += [f"Checkpoint: `{a['path']}` ({a['bytes']:,} bytes), sha256 `{a['sha256']}`; its card `{Path(a['path']).with_suffix('.json').name}` holds the command, recipe and metrics.", ""]
        else:
            lines += ["No checkpoint was kept from this run (a CPU run or `asset=false`): its numbers are a smoke test, not the fine-tune's.", ""]
        datasets = list(next(iter(run["models"].values()))["scores"])
        lines += ["| model | " + " | ".join(f"{ds} box mAP50-95 | {ds} mask mAP50-95" for ds in datasets) + " |", "|---|" + "---:|---:|" * len(datasets)]
        for label, m in run["models"].items():
            lines.append(f"| {label} (`{Path(m['weights']).name}`) | " + " | ".join(f"{_cell(m, ds, 'map50_95')} | {_cell(m, ds, 'mask_map50_95')}" for ds in datasets) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(runs: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    kind, run = next(((k, runs[k]) for k in ("cuda", "cpu") if k in runs), next(iter(runs.items())))
    labels = list(run["models"])
    datasets = list(next(iter(run["models"].values()))["scores"])
    panels = [(ds, key) for ds in datasets for key in ("map50_95", "mask_map50_95")]
    fig = Figure(figsize=(3.2 * len(panels), 4.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ds, key) in zip(axes, panels):
        for i, label in enumerate(labels):
            m = run["models"][label]
            v = m["scores"][ds].get(key)
            if v is None:
                ax.text(i, 0.002, "no mask\nhead", ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            ci = m.get("intervals", {}).get(ds, {}).get(key)
            err = [[v - ci["low"]], [ci["high"] - v]] if ci else None
            ax.bar(i, v, 0.7, color=PALETTE[i % len(PALETTE)], yerr=err, capsize=4, label=label)
            ax.text(i, (ci["high"] if ci else v), f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), [textwrap.fill(x, 12) for x in labels], fontsize=8)
        ax.set(title=f"{ds}: {'mask' if key.startswith('mask') else 'box'} mAP50-95", ylabel="mAP50-95 (whiskers: 95 % bootstrap interval)" if ax is axes[0] else "")
        ax.set_ylim(0, max(0.05, ax.get_ylim()[1] * 1.12))
        ax.grid(axis="y", alpha=0.3)
    legend_below(axes[0], ncol=1)
    figure_title(fig, f"Segment fine-tune of base80 on persons ({kind.upper()} run{'' if run.get('asset') else ': smoke test, no checkpoint kept'})", run,
                 f"imgsz {run['recipe']['imgsz']}; val = coco-mini-seg val person view, calib = held-out train images")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "train_seg_finetune.py")
    out = Path(args["out"])
    if as_bool(args["render"]):
        render_outputs("seg_finetune", out, markdown=markdown, plot=plot)
        return
    from yolo_taskvec import resolve_weights

    env = environment(args["device"])
    kind = device_kind(args["device"])
    keep_asset = kind == "cuda" if args["asset"].lower() == "auto" else as_bool(args["asset"])
    base = resolve_weights(args["base"])
    project = Path(args["project"]).resolve() if args["project"] else default_project()
    project.mkdir(parents=True, exist_ok=True)
    yamls, counts = views(args, project)
    print(f"views: {counts}", flush=True)
    weights, seconds = train(base, yamls["train"], project, args)
    print(f"trained in {seconds / 60:.1f} min: {weights}", flush=True)
    models = {"fine-tune": weights, "shared seg checkpoint": resolve_weights("yolo26n-seg-cocomini.pt"), "base80 (boxes only)": base}
    recipe = {k: args[k] for k in ("epochs", "time", "optimizer", "lr0", "warmup_epochs", "warmup_bias_lr", "batch", "imgsz", "seed", "fraction", "calib", "cls")}
    result = {
        "environment": env,
        "command": "python benchmarks/train_seg_finetune.py " + " ".join(argv),
        "base": str(base),
        "cfg": args["cfg"],
        "recipe": recipe,
        "counts": counts,
        "train_seconds": seconds,
        "models": measure(base, models, {"person-val": yamls["train"], "person-calib": yamls["calib"]}, args),
    }
    if keep_asset:
        result["asset"] = write_asset(weights, result, args["name"])
        print(f"checkpoint kept: {result['asset']}", flush=True)
    result["load_average_end"] = load_average()
    write_outputs("seg_finetune", result, out, kind=kind, markdown=markdown, plot=plot)


if __name__ == "__main__":
    main(sys.argv[1:])
