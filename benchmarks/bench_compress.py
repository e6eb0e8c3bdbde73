"""Compact task vectors: file size vs kept mAP gain, for every compression option, in one run.

Vectors (all from ``yolo26n-base80.pt``):

* ``fruit-night``: τ = fruit-night − base80 (every tensor, BatchNorm statistics included). Scored on fruit80 and
  fruit80-night. The scale is chosen from ``scales`` by the normalized mean mAP50-95 (fruit80 / base80's score,
  fruit80-night / the fine-tune's score); the reported mAP is the plain mean over the two val sets at that scale.
* ``raccoon``, ``kangaroo``, ``bccd`` (class-union vectors): τ over the parts shared with the base (backbone, neck,
  head.box). Their class branch (head.cls) was re-initialised by Ultralytics (nc changed), so it is no delta: it is
  carried whole from the fine-tune, never compressed, and its fp16 size is reported apart. Each is scored on its own
  data as base80 + s·τ̂ with the fine-tune's class branch, the scale chosen from ``union_scales`` by mAP50-95; at
  s = 1 with the exact vector this *is* the fine-tune. The baseline (gain = merged − base) is s = 0: the fine-tune's
  class branch on base80's shared parts. This isolates what compression costs the shared-part adaptation, which is
  what a class-union merge is built from.

Selection vs report: each option's scale is CHOSEN on a selection split (``select=train:0.2``: a seeded 20 % of each
dataset's train images, the same images for every option; the objective's references are scored there too) and
REPORTED on the val split at that scale, so no reported number is tuned on itself. The selection images are
training images of the fine-tunes (the datasets have no other held-out split), so selection scores run high; only
the val numbers are reported as results.

Gain kept = (mAP(option) − mAP(base)) / (mAP(exact fp32 vector) − mAP(base)) on val, each option at its own chosen
scale. For the main options (``MAIN``) the table gives 95 % percentile bootstrap intervals over the val images
(``resamples`` draws; base, exact vector and option resampled together on the same images; the chosen scales held
fixed) for the val mAP, the difference from the exact vector and the gain kept. Sizes are file bytes (safetensors
header included) relative to the fp16 base checkpoint. Validation runs with Ultralytics' NMS time limit lifted, on
``threads`` torch threads (1 by default: the reference setting; the scores do not depend on it).

    OMP_NUM_THREADS=1 python benchmarks/bench_compress.py            # full run (1 CPU thread: about 25 minutes)
    python benchmarks/bench_compress.py quick=true out=/tmp/compress  # 6 options, two scales each: a smoke test
    python benchmarks/bench_compress.py --replot                      # redraw .md/.png from the committed .json

Writes ``<out>/compress.{md,json,png}`` (``benchmarks/results/`` by default; the JSON keeps one run per device
kind; a quick run writes ``compress_quick.*``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import (
    DATASETS,
    PALETTE,
    RESULTS,
    as_bool,
    as_floats,
    calibration_split,
    device_kind,
    environment,
    environment_markdown,
    figure_title,
    load_average,
    no_nms_time_limit,
    parse_args,
    render_outputs,
    save_figure,
    write_outputs,
)

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "night": "yolo26n-fruit-night.pt",
    "union": "raccoon:yolo26n-raccoon.pt,kangaroo:yolo26n-kangaroo.pt,bccd:yolo26n-bccd.pt",
    "scales": "0.3:0.9:0.1",
    "union_scales": "0.4,0.6,0.8,1.0",
    "select": "train:0.2",  # each option's scale is chosen on a seeded fraction of each dataset's train images
    "select_seed": "0",
    "resamples": "1000",  # bootstrap resamples of the val images (main options)
    "imgsz": "320",
    "device": "cpu",
    "threads": "1",  # torch threads for CPU inference ("all": every logical CPU)
    "quick": "false",
    "out": str(RESULTS),
    "render": "false",  # true (or --replot): rebuild the .md/.png from the stored .json, measure nothing
}
SHARED_PARTS = ["backbone", "neck", "head.box"]
OWN = "own"  # calib= placeholder: the task's own train split (the fine-tune's training images), with the base

# name -> TaskVector.save options; "exact" is the reference every gain is measured against.
OPTIONS: dict[str, dict] = {
    "exact": {"dtype": "fp32"},
    "fp16": {"dtype": "fp16"},
    "bf16": {"dtype": "bf16"},
    "int8": {"dtype": "fp16", "quant": "int8"},
    "int4": {"dtype": "fp16", "quant": "int4"},
    "int3": {"dtype": "fp16", "quant": "int3"},
    "int2": {"dtype": "fp16", "quant": "int2"},
    "int1": {"dtype": "fp16", "quant": "int1"},
    "keep 0.3": {"dtype": "fp16", "keep": 0.3},
    "keep 0.1": {"dtype": "fp16", "keep": 0.1},
    "keep 0.05": {"dtype": "fp16", "keep": 0.05},
    "keep 0.02": {"dtype": "fp16", "keep": 0.02},
    "keep 0.1 global": {"dtype": "fp16", "keep": 0.1, "scope": "global"},
    "energy 0.95": {"dtype": "fp16", "energy": 0.95},
    "energy 0.8": {"dtype": "fp16", "energy": 0.8},
    "energy 0.5": {"dtype": "fp16", "energy": 0.5},
    "rank 8": {"dtype": "fp16", "rank": 8},
    "keep 0.1 + int8": {"dtype": "fp16", "keep": 0.1, "quant": "int8"},
    "keep 0.3 + int4": {"dtype": "fp16", "keep": 0.3, "quant": "int4"},
    "energy 0.95 + int8": {"dtype": "fp16", "energy": 0.95, "quant": "int8"},
    "energy 0.95 + int4": {"dtype": "fp16", "energy": 0.95, "quant": "int4"},
    "energy 0.9 + int4": {"dtype": "fp16", "energy": 0.9, "quant": "int4"},
    "energy 0.5 + keep 0.02 + int8": {"dtype": "fp16", "energy": 0.5, "keep": 0.02, "quant": "int8"},
    # calib=: BatchNorm statistics re-fitted to the compressed weights on the fine-tune's own train images
    "int1 + calib": {"dtype": "fp16", "quant": "int1", "calib": OWN},
    "int2 + calib": {"dtype": "fp16", "quant": "int2", "calib": OWN},
    "int2 + calib replace": {"dtype": "fp16", "quant": "int2", "calib": OWN, "calib_mode": "replace"},
    "rank 8 + calib": {"dtype": "fp16", "rank": 8, "calib": OWN},
    "energy 0.5 + calib": {"dtype": "fp16", "energy": 0.5, "calib": OWN},
    "keep 0.1 + int8 + calib": {"dtype": "fp16", "keep": 0.1, "quant": "int8", "calib": OWN},
    "energy 0.5 + keep 0.02 + int8 + calib": {"dtype": "fp16", "energy": 0.5, "keep": 0.02, "quant": "int8", "calib": OWN},
}
QUICK = ("exact", "fp16", "int2", "keep 0.1", "rank 8", "int2 + calib")
MAIN = ("exact", "fp16", "int8", "int4", "int2", "energy 0.95 + int8", "rank 8", "int2 + calib")  # with intervals


# ----------------------------------------------------------------------------------------------- selection split
def selection_fraction(text: str) -> float:
    """The fraction of ``select=train:<fraction>``; exits with one sentence on anything else."""
    kind, sep, value = str(text).strip().partition(":")
    try:
        fraction = float(value)
    except ValueError:
        fraction = float("nan")
    if kind != "train" or not sep or not 0.0 < fraction <= 1.0:
        sys.exit(f"select={text}: expected train:<fraction> with a fraction in (0, 1], e.g. select=train:0.2.")
    return fraction


def selection_view(yaml: Path, fraction: float, seed: int, folder: Path) -> str:
    """A yaml whose val split is a seeded ``fraction`` of ``yaml``'s train images, named like the dataset."""
    from yolo_taskvec import image_files

    n = max(1, round(fraction * len(image_files(str(yaml), "train"))))
    return str(calibration_split(yaml, n, seed, folder, name=yaml.stem))


def evaluator_options(args: dict[str, str]) -> dict:
    threads = str(args["threads"]).strip().lower()
    return {"imgsz": int(args["imgsz"]), "device": args["device"], "progress": False, "threads": None if threads in ("", "0", "all") else int(threads)}


# ----------------------------------------------------------------------------------------------- tasks
def rounded(scores: dict) -> dict[str, float]:
    return {d: round(float(m["map50_95"]), 5) for d, m in scores.items()}


class Task:
    """One vector: how to build base + s·τ̂; the scale is chosen on the selection split, the result reported on val.

    ``select``/``report``: Evaluators over the selection views and the val sets (``report`` keeps per-image
    statistics); ``select_objective`` ranks scales on the selection split; ``objective``/``metric`` are the same
    quantities on val (``metric`` is the reported mAP).
    """

    def __init__(self, name, vector, scales, build, select, report, select_objective, objective, metric, train_yaml):
        self.name, self.vector, self.scales, self.build, self.train_yaml = name, vector, scales, build, train_yaml
        self.select, self.report = select, report
        self.select_objective, self.objective, self.metric = select_objective, objective, metric

    def selection_point(self, tv, scale: float) -> dict:
        scores = self.select(self.build(tv, scale))
        return {"scale": scale, "scores": rounded(scores), "objective": self.select_objective(scores)}

    def choose(self, tv) -> tuple[dict, list[dict]]:
        """The scale with the highest selection objective (the first of equals) and every selection point."""
        points = [self.selection_point(tv, s) for s in self.scales]
        return max(points, key=lambda p: p["objective"]), points

    def reported_point(self, tv, scale: float) -> tuple[dict, dict]:
        """Val scores at ``scale`` and the per-image statistics behind them (one ImageStats per dataset)."""
        scores = self.report(self.build(tv, scale))
        point = {"scale": scale, "scores": rounded(scores), "objective": self.objective(scores), "metric": self.metric(scores)}
        return point, dict(self.report.image_stats)


def mean_map(scores: dict) -> float:
    return sum(float(m["map50_95"]) for m in scores.values()) / len(scores)


def night_task(base, args, scales, views):
    from yolo_taskvec import Evaluator, Objective, TaskVector

    data = [str(DATASETS / "fruit80.yaml"), str(DATASETS / "fruit80-night.yaml")]
    report = Evaluator(data, per_image=True, **evaluator_options(args))
    select = Evaluator([views[d] for d in data], **evaluator_options(args))
    tv = TaskVector.from_models(base, args["night"], name="fruit-night")
    refs = {"fruit80": report(base)["fruit80"], "fruit80-night": report(args["night"])["fruit80-night"]}
    select_refs = {"fruit80": select(base)["fruit80"], "fruit80-night": select(args["night"])["fruit80-night"]}
    task = Task("fruit-night", tv, scales, lambda t, s: t.apply(base, scale=s), select, report,
                Objective("map50_95", select_refs, "mean"), Objective("map50_95", refs, "mean"), mean_map, data[1])
    task.selection_images = {name: len(image_list(views[d])) for name, d in zip(("fruit80", "fruit80-night"), data)}
    return task


def union_task(base, name: str, tuned_path: str, args, scales, views):
    import copy

    from yolo_taskvec import Evaluator, TaskVector, load_model, merge_states

    tuned = load_model(tuned_path)
    tv = TaskVector.from_models(base, tuned, parts=SHARED_PARTS, name=name)
    cls = {k: v for k, v in tuned.state.items() if tuned.layout.part_of(k) == "head.cls" and v.is_floating_point()}
    yaml = str(DATASETS / f"{name}.yaml")
    report = Evaluator([yaml], per_image=True, **evaluator_options(args))
    select = Evaluator([views[yaml]], **evaluator_options(args))

    def build(t, s):  # base + s·τ̂ on the shared parts, the fine-tune's class branch carried whole
        state, _ = merge_states(base.state, [TaskVector(t.deltas, cls, t.meta)], scale=s, layout=base.layout)
        module = copy.deepcopy(tuned.module)  # the fine-tune's architecture (its class count), the merged weights
        module.load_state_dict({**module.state_dict(), **state}, strict=True)  # counters (num_batches_tracked) kept
        module.pt_path = None  # a merge in memory, not the fine-tune's file
        return module.float().eval()

    metric = lambda s: float(s[name]["map50_95"])
    task = Task(name, tv, scales, build, select, report, metric, metric, metric, yaml)
    task.carried_fp16_bytes = 2 * sum(v.numel() for v in cls.values())
    task.finetune = metric(report(tuned_path))
    task.selection_images = {name: len(image_list(views[yaml]))}
    return task


def image_list(view: str) -> list[str]:
    """The images a selection view lists (its ``val`` text file)."""
    return Path(view).with_suffix(".txt").read_text().split()


# ----------------------------------------------------------------------------------------------- intervals
def val_intervals(stats: dict, labels: list[str], metric, resamples: int, confidence: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """95 % percentile bootstrap over the val images, for each option in ``labels``: its val mAP, its difference
    from the exact vector, and its gain kept ((option − base) / (exact − base)).

    ``stats[label][dataset]``: the per-image statistics of each option at its chosen scale (and of ``base``). One
    ``yolo_taskvec.bootstrap`` call resamples them all: every model scored on one dataset shares each resample
    (paired), the datasets are resampled independently. The statistic records every model's ``metric`` per resample,
    so the base, the exact vector and each option are compared on the same images. The chosen scales are held fixed:
    the interval is the val sampling noise of the reported number, not of the selection.
    """
    import numpy as np

    from yolo_taskvec import Interval, bootstrap

    keys = ["base", *labels]
    samples = {(k, ds): stats[k][ds] for k in keys for ds in stats[k]}
    drawn: list[dict[str, float]] = []

    def record(scored) -> float:
        values = {k: metric({ds: scored[(k, ds)] for ds in stats[k]}) for k in keys}
        drawn.append(values)
        return values["exact"]

    bootstrap(samples, record, resamples=resamples, confidence=confidence, seed=seed)
    full, draws = drawn[0], drawn[1:]  # the first call is the full val sets (Ultralytics' own numbers)
    dist = {k: np.array([d[k] for d in draws]) for k in keys}
    tail = 100 * (1 - confidence) / 2

    def interval(value: float, values) -> dict:
        finite = values[np.isfinite(values)]
        low, high = (float(x) for x in np.percentile(finite, [tail, 100 - tail])) if len(finite) else (float("nan"),) * 2
        return Interval(float(value), low, high, confidence, resamples, seed).to_dict()

    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in labels:
            out[k] = {
                "map": interval(full[k], dist[k]),
                "vs_exact": interval(full[k] - full["exact"], dist[k] - dist["exact"]),
                "gain_kept": interval((full[k] - full["base"]) / (full["exact"] - full["base"]), (dist[k] - dist["base"]) / (dist["exact"] - dist["base"])),
            }
    out["_full"] = full
    return out


# ----------------------------------------------------------------------------------------------- run
def run(args: dict[str, str]) -> dict:
    import torch

    from yolo_taskvec import TaskVector, load_model, resolve_weights

    started = time.time()
    fraction, seed = selection_fraction(args["select"]), int(args["select_seed"])
    resamples = int(args["resamples"])
    if resamples < 1:
        sys.exit(f"resamples={resamples}: give a positive number of bootstrap resamples.")
    env = environment(args["device"])
    quick = as_bool(args["quick"])
    scales, union_scales = as_floats(args["scales"]), as_floats(args["union_scales"])
    if quick:
        scales, union_scales = [0.5, 0.6], [0.8, 1.0]
    options = {k: v for k, v in OPTIONS.items() if not quick or k in QUICK}
    main = [k for k in MAIN if k in options]
    base_path = resolve_weights(args["base"])
    ckpt_bytes = base_path.stat().st_size
    base = load_model(base_path)
    torch.manual_seed(0)

    results = {"environment": env, "args": args, "checkpoint_bytes": ckpt_bytes, "tasks": {},
               "select": f"a seeded {fraction:.0%} of each dataset's train images (select={args['select']}, seed {seed})", "main_options": main}
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp, no_nms_time_limit():  # mAP must not depend on load
        union = [item.partition(":")[::2] for item in args["union"].split(",")]
        yamls = [DATASETS / "fruit80.yaml", DATASETS / "fruit80-night.yaml", *(DATASETS / f"{name}.yaml" for name, _ in union)]
        views = {str(y): selection_view(y, fraction, seed, Path(tmp) / "select") for y in yamls}
        tasks = [night_task(base, args, scales, views)] + [union_task(base, name, path, args, union_scales, views) for name, path in union]
        for task in tasks:
            t0 = time.time()
            base_score, base_stats = task.reported_point(task.vector, 0.0)
            stats, rows = {"base": base_stats}, []
            for label, opts in options.items():
                path = Path(tmp) / f"{task.name}-{label.replace(' ', '_').replace('+', 'p')}.safetensors"
                t1 = time.time()
                own = {"calib": [task.train_yaml], "base": base, "calib_imgsz": int(args["imgsz"])} if opts.get("calib") == OWN else {}
                task.vector.save(path, **{**opts, **own})
                save_s = time.time() - t1
                tv = TaskVector.load(path)
                meta = tv.meta  # the file's header metadata, as read by TaskVector.load
                chosen, selection = task.choose(tv)
                reported, stats[label] = task.reported_point(tv, chosen["scale"])
                rows.append({
                    "option": label,
                    "save_options": {**opts, **({"calib": [task.train_yaml], "calib_imgsz": int(args["imgsz"])} if own else {})},
                    "bytes": path.stat().st_size,
                    "size_vs_checkpoint": path.stat().st_size / ckpt_bytes,
                    "relative_error": (meta.get("compression") or {}).get("relative_error", 0.0),
                    "save_seconds": round(save_s, 2),
                    "chosen_scale": chosen["scale"],
                    "select_objective": chosen["objective"],
                    "selection": selection,
                    "reported": reported,
                })
                print(f"{task.name:12s} {label:38s} {rows[-1]['size_vs_checkpoint']:7.2%}  scale {chosen['scale']:.2f} (selection {chosen['objective']:.4f})  val mAP {reported['metric']:.4f}", flush=True)
            exact = next(r for r in rows if r["option"] == "exact")["reported"]["metric"]
            gain = exact - base_score["metric"]
            for r in rows:
                r["gain_kept"] = (r["reported"]["metric"] - base_score["metric"]) / gain if gain else float("nan")
            t2 = time.time()
            intervals = val_intervals(stats, main, task.metric, resamples)
            full = intervals.pop("_full")
            for r in rows:  # the bootstrap's full-set values are Ultralytics' numbers, bit for bit
                if r["option"] in full and abs(full[r["option"]] - r["reported"]["metric"]) > 1e-9:
                    raise RuntimeError(f"{task.name} {r['option']}: per-image mAP {full[r['option']]} != validator mAP {r['reported']['metric']}")
                if r["option"] in intervals:
                    r["intervals"] = intervals[r["option"]]
            results["tasks"][task.name] = {
                "base": base_score,
                "exact_metric": exact,
                "gain": gain,
                "selection_images": task.selection_images,
                "val_images": {ds: len(s) for ds, s in base_stats.items()},
                "rows": rows,
                "goal": goal(rows),
                "bootstrap_seconds": round(time.time() - t2, 1),
                "seconds": round(time.time() - t0, 1),
                **({"carried_class_branch_fp16_bytes": task.carried_fp16_bytes, "finetune_metric": task.finetune} if hasattr(task, "finetune") else {}),
            }
            print(f"{task.name}: {results['tasks'][task.name]['seconds']:.0f} s (bootstrap {results['tasks'][task.name]['bootstrap_seconds']:.0f} s)", flush=True)
    results["load_average_end"] = load_average()
    results["minutes"] = round((time.time() - started) / 60, 1)
    return results


def goal(rows: list[dict]) -> dict:
    """The issue's two targets: ≤ 10 % of the checkpoint with ≥ 99 % of the gain; the smallest file with ≥ 95 %."""
    def smallest(min_kept: float):
        ok = [r for r in rows if r["gain_kept"] >= min_kept]
        return min(ok, key=lambda r: r["bytes"])["option"] if ok else None

    small99 = [r["option"] for r in rows if r["size_vs_checkpoint"] <= 0.10 and r["gain_kept"] >= 0.99]
    return {"le10pct_ge99": small99, "smallest_ge99": smallest(0.99), "smallest_ge95": smallest(0.95)}


# ----------------------------------------------------------------------------------------------- report
LEGACY_SELECT = "the reported val images (this run predates the selection split)"


def reported(row: dict) -> dict:
    """A row's val point at its chosen scale (``best`` in runs stored before the selection split)."""
    return row.get("reported") or row["best"]


def fmt_interval(iv: dict | None, percent: bool = False, sign: bool = False) -> str:
    if not iv:
        return "—"
    f = (lambda x: f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}") if percent else (lambda x: f"{x:+.4f}" if sign else f"{x:.4f}")
    return f"{f(iv['value'])}{' %' if percent else ''} [{f(iv['low'])}, {f(iv['high'])}]"


def markdown(runs: dict) -> str:
    lines = ["# Compact task vectors: file size vs kept mAP gain", "", "Generated by `python benchmarks/bench_compress.py` (see its docstring for the method).", ""]
    for kind, res in runs.items():
        lines += markdown_run(kind, res)
    return "\n".join(lines)


def markdown_run(kind: str, res: dict) -> list[str]:
    select = res.get("select", LEGACY_SELECT)
    resamples = res["args"].get("resamples", "1000")
    lines = [
        f"## {kind}",
        "",
        *environment_markdown(res["environment"], res.get("load_average_end"))[:-1],
        f"- each option's scale is **chosen on {select}** and the mAP is **reported on the val split** at that scale"
        + ("; the selection images are training images of the fine-tunes (selection scores run high), so only val numbers are results" if "select" in res else ": the reported numbers are tuned on themselves"),
        *([f"- run time: {res['minutes']} min, inference on {res['args'].get('threads', 'all')} torch thread(s)"] if "minutes" in res else []),
        f"- sizes are relative to the fp16 base checkpoint `{Path(res['args']['base']).name}` ({res['checkpoint_bytes']:,} bytes), safetensors header included",
        "- gain kept = (mAP(option) − mAP(base)) / (mAP(exact fp32 vector) − mAP(base)) on val, each option at its chosen scale (see the script's docstring)",
        (f"- [low, high]: 95 % percentile bootstrap interval over the val images ({resamples} resamples; base, exact vector and option resampled together on the same images, chosen scales held fixed). "
         "**Bold** Δ vs exact: the interval excludes 0, a difference the val set resolves; otherwise it is within the val sampling noise"),
        "- relative error: ‖τ̂ − τ‖ / ‖τ‖ over the compressible weights (tensors with ≥ 2 dimensions); 1-D tensors and BatchNorm statistics are stored dense",
        "- `+ calib`: saved with `calib=` (BatchNorm statistics re-fitted to the compressed weights on the fine-tune's own train split, 16 batches of 16 at the benchmark's imgsz; `shift` mode unless `replace` is named); the train images are never the val images reported here",
        "",
    ]
    for name, t in res["tasks"].items():
        datasets = list(t["base"]["scores"])
        lines += [f"### {name}", ""]
        base_line = f"base (s = 0): val mAP50-95 {t['base']['metric']:.4f}; exact vector at its chosen scale: {t['exact_metric']:.4f} (gain {t['gain']:+.4f})"
        if "finetune_metric" in t:
            base_line += f"; the fine-tune itself: {t['finetune_metric']:.4f}. Class branch carried whole: {t['carried_class_branch_fp16_bytes']:,} bytes in fp16 ({t['carried_class_branch_fp16_bytes'] / res['checkpoint_bytes']:.1%} of the checkpoint), not in the sizes below"
        lines += [base_line + "."]
        if "selection_images" in t:
            lines += ["", "Images: selection " + ", ".join(f"{d} {n}" for d, n in t["selection_images"].items()) + "; val " + ", ".join(f"{d} {n}" for d, n in t["val_images"].items()) + "."]
        lines.append("")
        main = [r for r in t["rows"] if r.get("intervals")]
        if main:
            metric = "mean val mAP50-95" if len(datasets) > 1 else "val mAP50-95"
            lines += ["Main options, with 95 % intervals over the val images:", "", f"| option | size | chosen scale | {metric} | Δ vs exact | gain kept |", "|---|---|---|---|---|---|"]
            for r in sorted(main, key=lambda r: r["bytes"]):
                iv = r["intervals"]
                delta = fmt_interval(iv["vs_exact"], sign=True) if r["option"] != "exact" else "—"
                if r["option"] != "exact" and not iv["vs_exact"]["low"] <= 0 <= iv["vs_exact"]["high"]:
                    delta = f"**{delta}**"
                gain = fmt_interval(iv["gain_kept"], percent=True) if r["option"] != "exact" else "100 %"
                lines.append(f"| {r['option']} | {r['size_vs_checkpoint']:.1%} | {reported(r)['scale']:.2f} | {fmt_interval(iv['map'])} | {delta} | {gain} |")
            lines += ["", "All options (point values):", ""]
        head = "| option | size | rel. error | chosen scale | selection objective | " + " | ".join(f"{d}" for d in datasets) + (" | mean mAP50-95 | normalized mean " if len(datasets) > 1 else " ") + "| gain kept |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in sorted(t["rows"], key=lambda r: r["bytes"]):
            b = reported(r)
            chosen = r.get("select_objective")
            cells = [r["option"], f"{r['size_vs_checkpoint']:.1%}", f"{r['relative_error']:.3f}", f"{b['scale']:.2f}", f"{chosen:.4f}" if chosen is not None else "—", *(f"{b['scores'][d]:.4f}" for d in datasets)]
            if len(datasets) > 1:
                cells += [f"{b['metric']:.4f}", f"{b['objective']:.4f}"]
            cells.append(f"{r['gain_kept']:.1%}")
            lines.append("| " + " | ".join(cells) + " |")
        g = t["goal"]
        lines += [
            "",
            f"- ≤ 10 % of the checkpoint with ≥ 99 % of the gain (point values): {', '.join(g['le10pct_ge99']) or '**none**'}",
            f"- smallest file with ≥ 99 %: {g['smallest_ge99'] or 'none'}; smallest with ≥ 95 %: {g['smallest_ge95'] or 'none'}",
            "",
        ]
    return lines


def plot(runs: dict, path: Path) -> None:
    """Two panels sharing one row per option (sorted by size): share of the gain kept (with 95 % intervals for the
    main options), and file size, per vector. One marker and colour per vector, named in the legend; no point labels."""
    from matplotlib.figure import Figure

    res = runs.get("cpu") or next(iter(runs.values()))  # the scores do not depend on the device
    tasks = list(res["tasks"])
    first = res["tasks"][tasks[0]]["rows"]
    options = [r["option"] for r in sorted(first, key=lambda r: r["bytes"], reverse=True)]  # largest on top
    y = {o: i for i, o in enumerate(options)}
    height = 0.27 * len(options) + 2.9
    fig = Figure(figsize=(12, height))
    gain_ax, size_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.5, 1]})
    markers = "osD^v<>"
    lo, hi = -75.0, 112.0  # gain axis; points beyond are drawn at the edge with their value written
    clipped: dict[str, list[tuple[float, str]]] = {o: [] for o in options}
    for i, name in enumerate(tasks):
        color, marker, dy = PALETTE[i % len(PALETTE)], markers[i % len(markers)], (i - (len(tasks) - 1) / 2) * 0.17
        rows = {r["option"]: r for r in res["tasks"][name]["rows"]}
        pts = [(100 * rows[o]["gain_kept"], y[o] + dy, o) for o in options if o in rows]
        inside = [(g, yy) for g, yy, _ in pts if lo <= g <= hi]
        gain_ax.scatter([g for g, _ in inside], [yy for _, yy in inside], color=color, marker=marker, s=26, zorder=3, label=name)
        for g, yy, o in pts:
            iv = (rows[o].get("intervals") or {}).get("gain_kept")
            if iv and o != "exact" and lo <= g <= hi:  # the 95 % interval over val images, cut at the axis
                gain_ax.plot([max(lo, 100 * iv["low"]), min(hi, 100 * iv["high"])], [yy, yy], color=color, lw=1.1, zorder=2)
            if not lo <= g <= hi:
                gain_ax.scatter([lo if g < lo else hi], [yy], facecolors="none", edgecolors=color, marker=marker, s=26, zorder=3)
                clipped[o].append((g, color))
        size_ax.scatter([100 * rows[o]["size_vs_checkpoint"] for o in options if o in rows], [y[o] + dy for o in options if o in rows], color=color, marker=marker, s=26, zorder=3, label=name)
    for o, values in clipped.items():  # values beyond the axis, written side by side in their task's colour
        for j, (g, color) in enumerate(sorted(values)):
            edge = lo if g < lo else hi
            gain_ax.annotate(f"{g:.0f} %", (edge, y[o]), xytext=(7 + 27 * j, 0) if g < lo else (-7 - 27 * j, 0), textcoords="offset points", ha="left" if g < lo else "right", va="center", fontsize=6.5, color=color)
    if any(r.get("intervals") for t in res["tasks"].values() for r in t["rows"]):
        gain_ax.plot([], [], color="0.3", lw=1.1, label="95 % interval over val images (main options)")
    gain_ax.axvspan(99, hi, color=PALETTE[2], alpha=0.10, lw=0, label="≥ 99 % of the gain (goal)")
    gain_ax.axvline(95, color=PALETTE[5], ls="--", lw=1, label="95 % of the gain")
    gain_ax.axvline(0, color="0.4", lw=0.8, label="0 % = the base alone")
    gain_ax.set(xlim=(lo, hi), xlabel="share of the val mAP50-95 gain kept, % (each option at its chosen scale)", ylim=(len(options) - 0.5, -0.5))
    gain_ax.set_yticks(range(len(options)), options, fontsize=8)
    size_ax.axvspan(1, 10, color=PALETTE[4], alpha=0.12, lw=0, label="≤ 10 % of the checkpoint (goal)")
    size_ax.set_xscale("log")
    size_ax.set(xlim=(3, 250), xlabel="file size, % of the fp16 base checkpoint (log)")
    for ax in (gain_ax, size_ax):
        ax.grid(axis="x", alpha=0.3)
        for k in range(len(options)):
            ax.axhline(k + 0.5, color="0.9", lw=0.6, zorder=0)
    handles, labels = gain_ax.get_legend_handles_labels()
    h2, l2 = size_ax.get_legend_handles_labels()
    fig.legend(handles + h2[-1:], labels + l2[-1:], loc="lower center", ncol=5, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    select = res.get("select", LEGACY_SELECT)
    figure_title(fig, "Compact task vectors: share of the mAP gain kept vs file size, per compression option", res,
                 f"yolo26n, imgsz {res['args']['imgsz']}; τ(fruit-night) on fruit80 + fruit80-night val, union vectors on their own val;\n"
                 f"scale chosen on {select}, reported on val")
    fig.tight_layout(rect=(0, 0.7 / height, 1, 1))  # the legend: two rows below the x labels
    save_figure(fig, path, dpi=130)


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_compress.py")
    if as_bool(args["render"]):
        render_outputs("compress_quick" if as_bool(args["quick"]) else "compress", Path(args["out"]), markdown=markdown, plot=plot)
        return
    res = run(args)
    write_outputs("compress_quick" if as_bool(args["quick"]) else "compress", res, args["out"], kind=device_kind(args["device"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
