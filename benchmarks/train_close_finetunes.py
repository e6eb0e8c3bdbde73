"""Fine-tunes of base80 that stay in its basin: raccoon, kangaroo and bccd with a small learning rate and few epochs.

The shared reference fine-tunes (``yolo26n-raccoon/kangaroo/bccd.pt``) were trained from base80 with Ultralytics'
``optimizer=auto``, which for a 1- or 3-class dataset picks AdamW at lr0 = 0.002 (17x the rate it picks for an
80-class one) for 59-79 epochs: they moved far from base80 (task-vector norm 13-18 % of the base's weight norm,
vs 1.5 % for fruit-night), and merging such vectors destroys the shared features. Task arithmetic is made for
fine-tunes that stay close to their base. This script trains them: same base, same data, AdamW at lr0 = 0.000119 (the
rate Ultralytics chooses for the 80-class base, the one fruit-night was trained with), warmup_bias_lr = 0 (as every
shared fine-tune was trained: Ultralytics' default 0.1 is the bias learning rate at the start of warmup, and with
AdamW it moves the BatchNorm biases by whole units in the first 100 iterations, a task vector 26 % of base80's
norm made almost entirely of biases), 15 epochs, batch 16, imgsz 320, everything else Ultralytics' default
(mosaic on, closed for the last 10 epochs, warmup 3 epochs, seed 0).
Ultralytics transfers every tensor of the same shape and re-initialises the rest: here only the final class conv of
each ``cv3``/``one2one_cv3`` level (nc changes from 80); the branch keeps base80's width (80 channels).

For each dataset, when training ends ``yolo_taskvec.callbacks`` saves ``τ = best.pt − base80`` beside ``best.pt``
(the re-initialised class convs carried as absolute tensors). Then the script measures, for the new fine-tune and
for the shared reference one: the own-task val mAP50-95/mAP50 (imgsz 320, the reused ``Evaluator``) and the
task-vector norm relative to the base's weight norm (learned tensors with a base counterpart; per part as well).

    python benchmarks/train_close_finetunes.py                         # CPU (about 5-12 min per dataset, 1 thread)
    python benchmarks/train_close_finetunes.py device=0                # GPU
    python benchmarks/train_close_finetunes.py train=false             # re-measure existing runs only

Weights go to ``<runs_dir>/taskvec-close/<dataset>/weights/`` (Ultralytics' ``runs_dir`` setting; override with
``project=``), never into the repository; ``bench_union.py`` finds them there. Results:
``benchmarks/results/close_finetunes.{md,json,png}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, RESULTS, as_bool, device_kind, environment, environment_markdown, load_average, parse_args, save_figure, write_outputs  # noqa: E402

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "data": "raccoon,kangaroo,bccd",
    "reference": "yolo26n-raccoon.pt,yolo26n-kangaroo.pt,yolo26n-bccd.pt",
    "epochs": "15",
    "optimizer": "AdamW",
    "lr0": "0.000119",
    "warmup_bias_lr": "0.0",
    "batch": "16",
    "imgsz": "320",
    "seed": "0",
    "device": "cpu",
    "train": "auto",  # true: always train; false: measure existing runs; auto: train unless a finished run has this recipe
    "project": "",  # default: <runs_dir>/taskvec-close
    "out": str(RESULTS),
}
PARTS = ("backbone", "neck", "head.box", "head.cls")
RECIPE_KEYS = ("epochs", "optimizer", "lr0", "warmup_bias_lr", "batch", "imgsz", "seed")


def default_project() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"]) / "taskvec-close"


def run_weights(project: Path, dataset: str) -> Path:
    """Where a dataset's close fine-tune lands (``bench_union.py`` reads the same place)."""
    return project / dataset / "weights" / "best.pt"


def recipe(args: dict[str, str]) -> dict[str, Any]:
    return {
        "epochs": int(args["epochs"]),
        "optimizer": args["optimizer"],
        "lr0": float(args["lr0"]),
        "warmup_bias_lr": float(args["warmup_bias_lr"]),
        "batch": int(args["batch"]),
        "imgsz": int(args["imgsz"]),
        "seed": int(args["seed"]),
    }


def finished_with(weights: Path, wanted: dict[str, Any], data: Path) -> bool:
    """True when ``weights`` is a finished run trained with exactly this recipe on this data."""
    import torch

    if not weights.exists():
        return False
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    args = ckpt.get("train_args") or {}
    same = all(type(wanted[k])(args.get(k)) == wanted[k] for k in RECIPE_KEYS if args.get(k) is not None)
    return same and Path(str(args.get("data", ""))).name == data.name and ckpt.get("epoch", 0) == -1


def train_one(base: Path, data: Path, dataset: str, project: Path, args: dict[str, str]) -> float:
    """Fine-tune ``base`` on ``data``; the task vector is saved beside best.pt by the callbacks. Returns seconds."""
    from ultralytics import YOLO

    from yolo_taskvec.callbacks import add_taskvec_callbacks

    model = YOLO(str(base))
    add_taskvec_callbacks(model, base=str(base), name=f"{dataset}-close", unmatched="carry")
    start = time.perf_counter()
    model.train(
        data=str(data),
        device=args["device"],
        workers=0,
        plots=False,
        project=str(project),
        name=dataset,
        exist_ok=True,
        verbose=False,
        **recipe(args),
    )
    return time.perf_counter() - start


def norm_ratios(base: Any, tuned: str) -> dict[str, Any]:
    """‖τ‖ / ‖θ_base‖ over learned tensors with a same-shape base counterpart: all, shared (no class branch), per part."""
    from yolo_taskvec import TaskVector, is_bn_stat

    tv = TaskVector.from_models(base, tuned, unmatched="carry")
    sq: dict[str, list[float]] = {}
    for key, d in tv.deltas.items():
        if is_bn_stat(key):
            continue
        part = tv.part_of(key)
        for group in ("all", part, *(("shared",) if part != "head.cls" else ())):
            row = sq.setdefault(group, [0.0, 0.0])
            row[0] += float(d.double().pow(2).sum())
            row[1] += float(base.state[key].double().pow(2).sum())
    out = {g: (v[0] / v[1]) ** 0.5 for g, v in sq.items() if v[1]}
    out["carried_tensors"] = sorted(tv.absolute)
    return out


def measure(base_path: Path, models: dict[str, str], data: Path, args: dict[str, str]) -> dict[str, dict[str, Any]]:
    from yolo_taskvec import Evaluator, load_model

    base = load_model(str(base_path))
    ev = Evaluator([str(data)], imgsz=int(args["imgsz"]), batch=16, device=args["device"], progress=False)
    out = {}
    for label, path in models.items():
        scores = ev(path)[data.stem]
        out[label] = {"weights": path, "map50_95": scores["map50_95"], "map50": scores["map50"], "norm_ratio": norm_ratios(base, path)}
    return out


# ----------------------------------------------------------------------------------------------- report
def markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# Close fine-tunes of base80 (raccoon, kangaroo, bccd)",
        "",
        "Fine-tunes of `yolo26n-base80.pt` meant to stay in its basin (the regime task arithmetic is made for), next to",
        "the shared reference fine-tunes. **norm ratio** = ‖τ‖ / ‖θ_base‖ over learned tensors that have a same-shape",
        "counterpart in base80 (BatchNorm running statistics and the re-initialised final class convs excluded);",
        "*shared* = backbone + neck + box branch (what a class-union merge combines). mAP50-95 on each dataset's val",
        "split, imgsz 320. Weights are not committed: the command below rebuilds them.",
        "",
    ]
    for kind, run in runs.items():
        r = run["recipe"]
        lines += [
            f"## {kind.upper()}",
            "",
            *environment_markdown(run["environment"], run.get("load_average_end")),
            f"Command: `{run['command']}`",
            "",
            f"Recipe: `YOLO('{Path(run['base']).name}').train(data=<dataset>.yaml, optimizer={r['optimizer']}, lr0={r['lr0']}, warmup_bias_lr={r['warmup_bias_lr']}, epochs={r['epochs']}, "
            f"batch={r['batch']}, imgsz={r['imgsz']}, seed={r['seed']}, workers=0, plots=False)` — every other argument Ultralytics' default "
            "(mosaic 1.0 closed for the last 10 epochs, warmup 3 epochs, lrf 0.01, weight_decay 0.0005); "
            "`add_taskvec_callbacks(model, unmatched='carry')` saves the vector beside best.pt.",
            "",
            "| dataset | model | train time | mAP50-95 | mAP50 | norm ratio (all) | shared | backbone | neck | head.box | head.cls (shared shapes) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for ds, row in run["datasets"].items():
            for label in ("close", "reference"):
                m = row[label]
                n = m["norm_ratio"]
                t = f"{row['train_seconds'] / 60:.1f} min" if label == "close" and row.get("train_seconds") else ("(shared asset)" if label == "reference" else "(reused)")
                name = Path(m["weights"]).name if label == "reference" else f"{ds}/weights/best.pt"
                lines.append(
                    f"| {ds} | {label}: `{name}` | {t} | {m['map50_95']:.3f} | {m['map50']:.3f} | {n['all']:.2%} | {n['shared']:.2%} | "
                    + " | ".join(f"{n.get(p, float('nan')):.2%}" for p in PARTS)
                    + " |"
                )
        carried = next(iter(run["datasets"].values()))["close"]["norm_ratio"]["carried_tensors"]
        lines += [
            "",
            f"Re-initialised by Ultralytics (carried as absolute values in each close vector): {len(carried)} tensors, "
            f"e.g. `{carried[0]}`" + (f", `{carried[1]}`" if len(carried) > 1 else "") + ".",
            f"Run folder: `{run['project']}`.",
            "",
        ]
    return "\n".join(lines)


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    run = runs.get("cpu") or next(iter(runs.values()))
    ds = list(run["datasets"])
    x = np.arange(len(ds))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, color) in enumerate((("close", "tab:green"), ("reference", "tab:gray"))):
        ratio = [run["datasets"][d][label]["norm_ratio"]["shared"] * 100 for d in ds]
        score = [run["datasets"][d][label]["map50_95"] for d in ds]
        a.bar(x + (i - 0.5) * 0.38, ratio, 0.38, label=label, color=color)
        b.bar(x + (i - 0.5) * 0.38, score, 0.38, label=label, color=color)
        for xi, v in zip(x, ratio):
            a.text(xi + (i - 0.5) * 0.38, v, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
        for xi, v in zip(x, score):
            b.text(xi + (i - 0.5) * 0.38, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
    a.set(xticks=x, xticklabels=ds, ylabel="‖τ‖ / ‖θ_base‖  (%)", title="task-vector size (backbone + neck + box)")
    b.set(xticks=x, xticklabels=ds, ylabel="val mAP50-95", title="own-task accuracy (imgsz 320)")
    a.legend()
    b.legend()
    fig.suptitle(f"close fine-tunes ({run['recipe']['optimizer']} lr0={run['recipe']['lr0']}, {run['recipe']['epochs']} epochs) vs shared references", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "train_close_finetunes.py")
    from yolo_taskvec import resolve_weights

    env = environment(args["device"])
    base = resolve_weights(args["base"])
    project = Path(args["project"]).resolve() if args["project"] else default_project()
    datasets = [d for d in args["data"].split(",") if d]
    references = [r for r in args["reference"].split(",") if r]
    if len(references) != len(datasets):
        sys.exit(f"reference= needs one checkpoint per dataset ({len(datasets)}), got {len(references)}.")
    wanted = recipe(args)
    result = {"environment": env, "command": "python benchmarks/train_close_finetunes.py " + " ".join(argv), "base": str(base), "recipe": wanted, "project": str(project), "datasets": {}}
    for dataset, reference in zip(datasets, references):
        data = DATASETS / f"{dataset}.yaml"
        weights = run_weights(project, dataset)
        mode = args["train"].lower()
        seconds = None
        if as_bool(mode) or (mode == "auto" and not finished_with(weights, wanted, data)):
            print(f"training {dataset}: {wanted}", flush=True)
            seconds = train_one(base, data, dataset, project, args)
            print(f"trained {dataset} in {seconds / 60:.1f} min", flush=True)
        elif not weights.exists():
            sys.exit(f"{weights} does not exist; run with train=true first.")
        row = measure(base, {"close": str(weights), "reference": str(resolve_weights(reference))}, data, args)
        row["train_seconds"] = seconds
        if seconds is None:
            previous = _previous_seconds(Path(args["out"]), device_kind(args["device"]), dataset)
            row["train_seconds"] = previous
        result["datasets"][dataset] = row
        print(dataset, {k: (round(v["map50_95"], 3), f"{v['norm_ratio']['shared']:.2%}") for k, v in row.items() if isinstance(v, dict)}, flush=True)
    result["load_average_end"] = load_average()
    write_outputs("close_finetunes", result, args["out"], kind=device_kind(args["device"]), markdown=markdown, plot=plot)


def _previous_seconds(out: Path, kind: str, dataset: str) -> float | None:
    """The training time recorded by the run that trained these weights (kept when only re-measuring)."""
    import json

    path = out / "close_finetunes.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(kind, {}).get("datasets", {}).get(dataset, {}).get("train_seconds")


if __name__ == "__main__":
    main(sys.argv[1:])
