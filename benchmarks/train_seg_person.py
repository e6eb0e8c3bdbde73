"""A segment fine-tune of base80 on a learnable subset: the person class of coco-mini-seg + coco128-seg.

The shared ``yolo26n-seg-cocomini.pt`` (all 80 classes, 29 epochs at lr0 0.000119) is structurally right but scores
mask mAP50-95 0.001 on coco-mini-seg: too little data for 80 classes, so a detect + segment merge built from it
measures nothing. This script makes a segment task a 1-thread CPU can learn in about 20 minutes, built as the shared
checkpoint was built:

* data: a view of coco-mini-seg (train and val) and coco128-seg (train) keeping only the ``person`` polygons
  (class 0; 262 train images with a person, 1012 instances; val: all 203 coco-mini-seg val images, 505 persons).
  The yaml keeps all 80 COCO names, so the model's class branch has base80's shape (no class conflict in a merge);
* model: ``YOLO("yolo26n-seg.yaml").load("yolo26n-base80.pt")`` (backbone, neck, box and class branches transferred,
  mask branches new), trained with AdamW lr0 = 0.001, warmup_bias_lr = 0, 15 epochs, batch 16, imgsz 320, seed 0,
  everything else Ultralytics' default. A higher rate than the close detection fine-tunes because the mask head
  starts from random weights; the trunk moves further, which the results report (task-vector norm).

    python benchmarks/train_seg_person.py              # CPU, about 20 min on one thread
    python benchmarks/train_seg_person.py device=0

The dataset view and the weights go to ``<runs_dir>/taskvec-seg-person/`` (``project=``), never into the
repository; ``bench_dual.py`` finds ``train/weights/best.pt`` there. Results: ``benchmarks/results/seg_person.{md,json,png}``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, as_bool, device_kind, environment, environment_markdown, load_average, parse_args, save_figure, write_outputs, write_text_atomic  # noqa: E402

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "cfg": "yolo26n-seg.yaml",
    "train_data": "coco-mini-seg.yaml:train,coco128-seg.yaml:train",
    "val_data": "coco-mini-seg.yaml:val",
    "cls": "0",
    "epochs": "15",
    "optimizer": "AdamW",
    "lr0": "0.001",
    "warmup_bias_lr": "0.0",
    "batch": "16",
    "imgsz": "320",
    "seed": "0",
    "device": "cpu",
    "train": "auto",  # true / false (measure only) / auto (train unless the run's best.pt exists)
    "project": "",  # default: <runs_dir>/taskvec-seg-person
    "out": str(RESULTS),
}
DATASETS = Path(__file__).resolve().parents[1] / "datasets"


def default_project() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"]) / "taskvec-seg-person"


def person_weights(project: Path) -> Path:
    """Where the trained person segment model lands (``bench_dual.py`` reads the same place)."""
    return project / "train" / "weights" / "best.pt"


def person_yaml(project: Path) -> Path:
    return project / "data" / "person.yaml"


# ----------------------------------------------------------------------------------------------- data view
def _split_sources(spec: str) -> list[tuple[Path, str]]:
    """``a.yaml:train,b.yaml:train`` -> [(yaml path, split)]."""
    out = []
    for item in spec.split(","):
        name, _, split = item.partition(":")
        out.append((DATASETS / name if not Path(name).is_absolute() else Path(name), split or "train"))
    return out


def _keep_lines(label: Path, keep: set[int]) -> list[str]:
    if not label.exists():
        return []
    return [line for line in label.read_text().splitlines() if line.split() and int(float(line.split()[0])) in keep]


def write_view(project: Path, train_spec: str, val_spec: str, keep: set[int]) -> tuple[Path, dict[str, Any]]:
    """A dataset view (symlinked images, labels filtered to ``keep``) and its yaml with the source's 80 names.

    Train: only images with a kept instance; val: every image. Built in a temporary folder and moved into place.
    """
    from ultralytics.data.utils import img2label_paths

    from yolo_taskvec import image_files, load_data

    final = project / "data"
    tmp = project / f".data.{uuid.uuid4().hex[:8]}.tmp"
    counts: dict[str, dict[str, int]] = {}
    names = None
    try:
        for split, spec, only_positive in (("train", train_spec, True), ("val", val_spec, False)):
            images = instances = 0
            for yaml, source_split in _split_sources(spec):
                info = load_data(yaml, split=source_split)
                if names is None:
                    names = info["names"]
                elif info["names"] != names:
                    sys.exit(f"{yaml} has other class names than the first dataset; the view needs one class list.")
                for image in image_files(yaml, source_split):
                    lines = _keep_lines(Path(img2label_paths([str(image)])[0]), keep)
                    if only_positive and not lines:
                        continue
                    stem = f"{Path(yaml).stem}_{image.name}"
                    link = tmp / "images" / split / stem
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(image.resolve())
                    label = (tmp / "labels" / split / stem).with_suffix(".txt")
                    label.parent.mkdir(parents=True, exist_ok=True)
                    label.write_text("\n".join(lines) + ("\n" if lines else ""))
                    images += 1
                    instances += len(lines)
            counts[split] = {"images": images, "instances": instances}
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    lines = [
        f"# person polygons of {train_spec} (train) and {val_spec} (val); written by benchmarks/train_seg_person.py",
        f"path: {final}",
        "train: images/train",
        "val: images/val",
        "names:",
        *(f"  {i}: {n}" for i, n in names.items()),
    ]
    return write_text_atomic(person_yaml(project), "\n".join(lines) + "\n"), counts


# ----------------------------------------------------------------------------------------------- train and measure
def train(base: Path, cfg: str, data: Path, project: Path, args: dict[str, str]) -> float:
    from ultralytics import YOLO

    model = YOLO(cfg).load(str(base))  # as the shared seg checkpoint was built: same-shape tensors from base80
    start = time.perf_counter()
    model.train(
        data=str(data),
        epochs=int(args["epochs"]),
        optimizer=args["optimizer"],
        lr0=float(args["lr0"]),
        warmup_bias_lr=float(args["warmup_bias_lr"]),
        batch=int(args["batch"]),
        imgsz=int(args["imgsz"]),
        seed=int(args["seed"]),
        device=args["device"],
        workers=0,
        plots=False,
        project=str(project),
        name="train",
        exist_ok=True,
        verbose=False,
    )
    return time.perf_counter() - start


def measure(base: Path, models: dict[str, str], data: dict[str, str], args: dict[str, str]) -> dict[str, Any]:
    """Box and mask mAP of each model on each dataset, and its task-vector norm relative to base80."""
    from yolo_taskvec import Evaluator, TaskVector, is_bn_stat, load_model

    b = load_model(str(base))
    ev = Evaluator(list(data.values()), imgsz=int(args["imgsz"]), batch=16, device=args["device"], progress=False)
    out = {}
    for label, path in models.items():
        scores = ev(path)
        tv = TaskVector.from_models(b, path, unmatched="carry")
        num = sum(float(d.double().pow(2).sum()) for k, d in tv.deltas.items() if not is_bn_stat(k) and tv.part_of(k) != "head.cls")
        den = sum(float(b.state[k].double().pow(2).sum()) for k in tv.deltas if not is_bn_stat(k) and tv.part_of(k) != "head.cls")
        out[label] = {"weights": path, "scores": scores, "norm_ratio_shared": (num / den) ** 0.5, "carried_tensors": len(tv.absolute)}
    return out


# ----------------------------------------------------------------------------------------------- report
def markdown(runs: dict[str, Any]) -> str:
    lines = ["# Segment fine-tune of base80 on the person class (for the detect + segment merge)", ""]
    for kind, run in runs.items():
        r = run["recipe"]
        lines += [
            f"## {kind.upper()}",
            "",
            *environment_markdown(run["environment"], run.get("load_average_end")),
            f"Command: `{run['command']}`" + (f"; training took {run['train_seconds'] / 60:.1f} min" if run.get("train_seconds") else ""),
            "",
            f"Model: `YOLO('{run['cfg']}').load('{Path(run['base']).name}')`, trained with optimizer={r['optimizer']} lr0={r['lr0']} "
            f"warmup_bias_lr={r['warmup_bias_lr']} epochs={r['epochs']} batch={r['batch']} imgsz={r['imgsz']} seed={r['seed']}, workers=0, plots=False.",
            f"Data view: {run['counts']['train']['images']} train images / {run['counts']['train']['instances']} person polygons, "
            f"{run['counts']['val']['images']} val images / {run['counts']['val']['instances']} persons (80 COCO names kept).",
            "",
            "| model | dataset | box mAP50-95 | box mAP50 | mask mAP50-95 | mask mAP50 | ‖τ‖/‖θ_base‖ (backbone+neck+box) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for label, m in run["models"].items():
            for ds, s in m["scores"].items():
                lines.append(
                    f"| {label} (`{Path(m['weights']).name}`) | {ds} | {s['map50_95']:.3f} | {s['map50']:.3f} | "
                    f"{s.get('mask_map50_95', float('nan')):.3f} | {s.get('mask_map50', float('nan')):.3f} | {m['norm_ratio_shared']:.1%} |"
                )
        person = {label: m["scores"].get("person", {}) for label, m in run["models"].items()}
        if all(p.get("mask_map50_95") is not None for p in person.values()):
            lines += [
                "",
                "Outcome: on the person view, mask mAP50-95 "
                + ", ".join(f"{label} {p['mask_map50_95']:.3f}" for label, p in person.items())
                + ". Neither is a useful segmenter: base80 barely knows COCO (box mAP50-95 0.003 on coco-mini), and this "
                "CPU budget does not teach it person masks. The fine-tune's trunk moved further than the shared "
                "checkpoint's (see the norm column) for little gain. `bench_dual.py` uses both, scored on the person view, "
                "where the numbers are small but above zero.",
            ]
        lines.append("")
    return "\n".join(lines)


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    run = runs.get("cpu") or next(iter(runs.values()))
    labels = list(run["models"])
    datasets = list(next(iter(run["models"].values()))["scores"])
    bars = [(ds, key) for ds in datasets for key in ("map50_95", "mask_map50_95")]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(bars))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [run["models"][label]["scores"][ds].get(key, 0.0) for ds, key in bars]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, label=label)
        for xi, v in zip(x, values):
            ax.text(xi + (i - (len(labels) - 1) / 2) * width, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{ds}\n{'box' if key == 'map50_95' else 'mask'}" for ds, key in bars])
    ax.set_ylabel("mAP50-95 (imgsz 320)")
    ax.set_title("segment models built from base80: shared checkpoint vs person fine-tune")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "train_seg_person.py")
    from yolo_taskvec import resolve_weights

    env = environment(args["device"])
    base = resolve_weights(args["base"])
    project = Path(args["project"]).resolve() if args["project"] else default_project()
    project.mkdir(parents=True, exist_ok=True)
    yaml, counts = write_view(project, args["train_data"], args["val_data"], {int(c) for c in args["cls"].split(",")})
    print(f"person view: {counts}", flush=True)
    weights = person_weights(project)
    mode = args["train"].lower()
    seconds = None
    if as_bool(mode) or (mode == "auto" and not weights.exists()):
        seconds = train(base, args["cfg"], yaml, project, args)
        print(f"trained in {seconds / 60:.1f} min", flush=True)
    elif not weights.exists():
        sys.exit(f"{weights} does not exist; run with train=true first.")
    else:  # measuring an existing run: keep the training time its own run recorded
        seconds = _previous_seconds(Path(args["out"]), device_kind(args["device"]))
    models = {"person fine-tune": str(weights), "shared seg checkpoint": str(resolve_weights("yolo26n-seg-cocomini.pt"))}
    data = {"person": str(yaml), "coco-mini-seg": str(DATASETS / "coco-mini-seg.yaml")}
    result = {
        "environment": env,
        "command": "python benchmarks/train_seg_person.py " + " ".join(argv),
        "base": str(base),
        "cfg": args["cfg"],
        "recipe": {k: args[k] for k in ("epochs", "optimizer", "lr0", "warmup_bias_lr", "batch", "imgsz", "seed")},
        "counts": counts,
        "train_seconds": seconds,
        "models": measure(base, models, data, args),
    }
    result["load_average_end"] = load_average()
    write_outputs("seg_person", result, args["out"], kind=device_kind(args["device"]), markdown=markdown, plot=plot)


def _previous_seconds(out: Path, kind: str) -> float | None:
    import json

    path = out / "seg_person.json"
    return json.loads(path.read_text()).get(kind, {}).get("train_seconds") if path.exists() else None


if __name__ == "__main__":
    main(sys.argv[1:])
