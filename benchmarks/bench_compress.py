"""Compact task vectors: file size vs kept mAP gain, for every compression option, in one run.

Vectors (all from ``yolo26n-base80.pt``):

* ``fruit-night``: τ = fruit-night − base80 (every tensor, BatchNorm statistics included). Scored on fruit80 and
  fruit80-night val. The scale is chosen from ``scales`` by the normalized mean mAP50-95 (fruit80 / base80's score,
  fruit80-night / the fine-tune's score); the reported mAP is the plain mean over the two datasets at that scale.
* ``raccoon``, ``kangaroo``, ``bccd`` (class-union vectors): τ over the parts shared with the base (backbone, neck,
  head.box). Their class branch (head.cls) was re-initialised by Ultralytics (nc changed), so it is no delta: it is
  carried whole from the fine-tune, never compressed, and its fp16 size is reported apart. Each is scored on its own
  val data as base80 + s·τ̂ with the fine-tune's class branch, the scale chosen from ``union_scales``; at s = 1 with
  the exact vector this *is* the fine-tune. The baseline (gain = merged − base) is s = 0: the fine-tune's class
  branch on base80's shared parts. This isolates what compression costs the shared-part adaptation, which is what a
  class-union merge is built from.

Gain kept = (mAP(option) − mAP(base)) / (mAP(exact fp32 vector) − mAP(base)), each at its own best scale. Sizes are
file bytes (safetensors header included) relative to the fp16 base checkpoint. Scales are chosen on the same val
images that are reported (the datasets have no separate test split), for every option alike. Validation runs with
Ultralytics' NMS time limit lifted (``common.no_nms_time_limit``), so the scores do not depend on the machine's load.

    python benchmarks/bench_compress.py                    # full run (CPU: about 30-60 minutes)
    python benchmarks/bench_compress.py quick=true         # a few options, two scales: a smoke test
    python benchmarks/bench_compress.py --replot           # redraw .md/.png from the committed .json

Writes ``benchmarks/results/compress.{md,json,png}`` (the JSON keeps one run per device kind).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import DATASETS, PALETTE, RESULTS, as_bool, as_floats, device_kind, environment, environment_markdown, figure_title, load_average, no_nms_time_limit, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "night": "yolo26n-fruit-night.pt",
    "union": "raccoon:yolo26n-raccoon.pt,kangaroo:yolo26n-kangaroo.pt,bccd:yolo26n-bccd.pt",
    "scales": "0.3:1:0.1",
    "union_scales": "0.4,0.6,0.8,1.0",
    "imgsz": "320",
    "device": "cpu",
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


# ----------------------------------------------------------------------------------------------- tasks
class Task:
    """One vector: how to build base + s·τ̂ and score it; ``objective`` picks the scale, ``metric`` is reported."""

    def __init__(self, name, vector, scales, evaluator, build, objective, metric, train_yaml):
        self.name, self.vector, self.scales, self.train_yaml = name, vector, scales, train_yaml
        self.evaluator, self.build, self.objective, self.metric = evaluator, build, objective, metric

    def score(self, tv, scale: float) -> dict:
        scores = self.evaluator(self.build(tv, scale))
        return {"scale": scale, "scores": {d: round(float(m["map50_95"]), 5) for d, m in scores.items()}, "objective": self.objective(scores), "metric": self.metric(scores)}


def night_task(base, args, scales):
    from yolo_taskvec import Evaluator, Objective, TaskVector

    data = [str(DATASETS / "fruit80.yaml"), str(DATASETS / "fruit80-night.yaml")]
    ev = Evaluator(data, imgsz=int(args["imgsz"]), device=args["device"], progress=False)
    tv = TaskVector.from_models(base, args["night"], name="fruit-night")
    refs = {"fruit80": ev(base)["fruit80"], "fruit80-night": ev(args["night"])["fruit80-night"]}
    objective = Objective("map50_95", refs, "mean")
    mean = lambda s: sum(float(m["map50_95"]) for m in s.values()) / len(s)  # noqa: E731
    return Task("fruit-night", tv, scales, ev, lambda t, s: t.apply(base, scale=s), objective, mean, data[1])


def union_task(base, name: str, tuned_path: str, args, scales):
    import copy

    from yolo_taskvec import Evaluator, TaskVector, load_model, merge_states

    tuned = load_model(tuned_path)
    tv = TaskVector.from_models(base, tuned, parts=SHARED_PARTS, name=name)
    cls = {k: v for k, v in tuned.state.items() if tuned.layout.part_of(k) == "head.cls" and v.is_floating_point()}
    ev = Evaluator([str(DATASETS / f"{name}.yaml")], imgsz=int(args["imgsz"]), device=args["device"], progress=False)

    def build(t, s):  # base + s·τ̂ on the shared parts, the fine-tune's class branch carried whole
        state, _ = merge_states(base.state, [TaskVector(t.deltas, cls, t.meta)], scale=s, layout=base.layout)
        module = copy.deepcopy(tuned.module)  # the fine-tune's architecture (its class count), the merged weights
        module.load_state_dict({**module.state_dict(), **state}, strict=True)  # counters (num_batches_tracked) kept
        module.pt_path = None  # a merge in memory, not the fine-tune's file
        return module.float().eval()

    metric = lambda s: float(s[name]["map50_95"])  # noqa: E731
    task = Task(name, tv, scales, ev, build, metric, metric, str(DATASETS / f"{name}.yaml"))
    task.carried_fp16_bytes = 2 * sum(v.numel() for v in cls.values())
    task.finetune = metric(ev(tuned_path))
    return task


# ----------------------------------------------------------------------------------------------- run
def run(args: dict[str, str]) -> dict:
    import torch

    from yolo_taskvec import TaskVector, load_model, resolve_weights

    env = environment(args["device"])
    quick = as_bool(args["quick"])
    scales, union_scales = as_floats(args["scales"]), as_floats(args["union_scales"])
    if quick:
        scales, union_scales = [0.5, 0.6], [1.0]
    options = {k: v for k, v in OPTIONS.items() if not quick or k in QUICK}
    base_path = resolve_weights(args["base"])
    ckpt_bytes = base_path.stat().st_size
    base = load_model(base_path)
    torch.manual_seed(0)

    tasks = [night_task(base, args, scales)]
    for item in args["union"].split(","):
        name, _, path = item.partition(":")
        tasks.append(union_task(base, name, path, args, union_scales))

    results = {"environment": env, "args": args, "checkpoint_bytes": ckpt_bytes, "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp, no_nms_time_limit():  # mAP must not depend on load
        for task in tasks:
            t0 = time.time()
            base_score = task.score(task.vector, 0.0)
            rows = []
            for label, opts in options.items():
                path = Path(tmp) / f"{task.name}-{label.replace(' ', '_').replace('+', 'p')}.safetensors"
                t1 = time.time()
                own = {"calib": [task.train_yaml], "base": base, "calib_imgsz": int(args["imgsz"])} if opts.get("calib") == OWN else {}
                task.vector.save(path, **{**opts, **own})
                save_s = time.time() - t1
                tv = TaskVector.load(path)
                meta = tv.meta  # the file's header metadata, as read by TaskVector.load
                points = [task.score(tv, s) for s in task.scales]
                best = max(points, key=lambda p: p["objective"])
                rows.append({
                    "option": label,
                    "save_options": {**opts, **({"calib": [task.train_yaml], "calib_imgsz": int(args["imgsz"])} if own else {})},
                    "bytes": path.stat().st_size,
                    "size_vs_checkpoint": path.stat().st_size / ckpt_bytes,
                    "relative_error": (meta.get("compression") or {}).get("relative_error", 0.0),
                    "save_seconds": round(save_s, 2),
                    "best": best,
                    "points": points,
                })
                print(f"{task.name:12s} {label:32s} {rows[-1]['size_vs_checkpoint']:7.2%}  best scale {best['scale']:.2f}  mAP {best['metric']:.4f}", flush=True)
            exact = next(r for r in rows if r["option"] == "exact")["best"]["metric"]
            gain = exact - base_score["metric"]
            for r in rows:
                r["gain_kept"] = (r["best"]["metric"] - base_score["metric"]) / gain if gain else float("nan")
            results["tasks"][task.name] = {
                "base": base_score,
                "exact_metric": exact,
                "gain": gain,
                "rows": rows,
                "goal": goal(rows),
                "seconds": round(time.time() - t0, 1),
                **({"carried_class_branch_fp16_bytes": task.carried_fp16_bytes, "finetune_metric": task.finetune} if hasattr(task, "finetune") else {}),
            }
    results["load_average_end"] = load_average()
    return results


def goal(rows: list[dict]) -> dict:
    """The issue's two targets: ≤ 10 % of the checkpoint with ≥ 99 % of the gain; the smallest file with ≥ 95 %."""
    def smallest(min_kept: float):
        ok = [r for r in rows if r["gain_kept"] >= min_kept]
        return min(ok, key=lambda r: r["bytes"])["option"] if ok else None

    small99 = [r["option"] for r in rows if r["size_vs_checkpoint"] <= 0.10 and r["gain_kept"] >= 0.99]
    return {"le10pct_ge99": small99, "smallest_ge99": smallest(0.99), "smallest_ge95": smallest(0.95)}


# ----------------------------------------------------------------------------------------------- report
def markdown(runs: dict) -> str:
    lines = ["# Compact task vectors: file size vs kept mAP gain", "", "Generated by `python benchmarks/bench_compress.py` (see its docstring for the method).", ""]
    for kind, res in runs.items():
        lines += markdown_run(kind, res)
    return "\n".join(lines)


def markdown_run(kind: str, res: dict) -> list[str]:
    lines = [
        f"## {kind}",
        "",
        *environment_markdown(res["environment"], res.get("load_average_end"))[:-1],
        f"- sizes are relative to the fp16 base checkpoint `{Path(res['args']['base']).name}` ({res['checkpoint_bytes']:,} bytes), safetensors header included",
        "- gain kept = (mAP(option) − mAP(base)) / (mAP(exact fp32 vector) − mAP(base)), each at its best scale (see the script's docstring)",
        "- relative error: ‖τ̂ − τ‖ / ‖τ‖ over the compressible weights (tensors with ≥ 2 dimensions); 1-D tensors and BatchNorm statistics are stored dense",
        "- `+ calib`: saved with `calib=` (BatchNorm statistics re-fitted to the compressed weights on the fine-tune's own train split, 16 batches of 16 at the benchmark's imgsz; `shift` mode unless `replace` is named); the train images are never the val images scored here",
        "- the val sets are small (60 images per fruit set, 32-72 for the union tasks): a few % of gain kept is within their sampling noise, and an option can score above the exact vector",
        "",
    ]
    for name, t in res["tasks"].items():
        datasets = list(t["base"]["scores"])
        lines += [f"### {name}", ""]
        base_line = f"base (s = 0): mAP50-95 {t['base']['metric']:.4f}; exact vector at its best scale: {t['exact_metric']:.4f} (gain {t['gain']:+.4f})"
        if "finetune_metric" in t:
            base_line += f"; the fine-tune itself: {t['finetune_metric']:.4f}. Class branch carried whole: {t['carried_class_branch_fp16_bytes']:,} bytes in fp16 ({t['carried_class_branch_fp16_bytes'] / res['checkpoint_bytes']:.1%} of the checkpoint), not in the sizes below"
        lines += [base_line + ".", ""]
        head = "| option | size | rel. error | best scale | " + " | ".join(f"{d}" for d in datasets) + (" | mean mAP50-95 | normalized mean " if len(datasets) > 1 else " ") + "| gain kept |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in sorted(t["rows"], key=lambda r: r["bytes"]):
            b = r["best"]
            cells = [r["option"], f"{r['size_vs_checkpoint']:.1%}", f"{r['relative_error']:.3f}", f"{b['scale']:.2f}", *(f"{b['scores'][d]:.4f}" for d in datasets)]
            if len(datasets) > 1:
                cells += [f"{b['metric']:.4f}", f"{b['objective']:.4f}"]
            cells.append(f"{r['gain_kept']:.1%}")
            lines.append("| " + " | ".join(cells) + " |")
        g = t["goal"]
        lines += [
            "",
            f"- ≤ 10 % of the checkpoint with ≥ 99 % of the gain: {', '.join(g['le10pct_ge99']) or '**none**'}",
            f"- smallest file with ≥ 99 %: {g['smallest_ge99'] or 'none'}; smallest with ≥ 95 %: {g['smallest_ge95'] or 'none'}",
            "",
        ]
    return lines


def plot(runs: dict, path: Path) -> None:
    """Two panels sharing one row per option (sorted by size): share of the gain kept, and file size, per vector."""
    from matplotlib.figure import Figure

    res = runs.get("cpu") or next(iter(runs.values()))  # the scores do not depend on the device
    tasks = list(res["tasks"])
    first = res["tasks"][tasks[0]]["rows"]
    options = [r["option"] for r in sorted(first, key=lambda r: r["bytes"], reverse=True)]  # largest on top
    y = {o: i for i, o in enumerate(options)}
    fig = Figure(figsize=(12, 0.27 * len(options) + 2.6))
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
            if not lo <= g <= hi:
                gain_ax.scatter([lo if g < lo else hi], [yy], facecolors="none", edgecolors=color, marker=marker, s=26, zorder=3)
                clipped[o].append((g, color))
        size_ax.scatter([100 * rows[o]["size_vs_checkpoint"] for o in options if o in rows], [y[o] + dy for o in options if o in rows], color=color, marker=marker, s=26, zorder=3, label=name)
    for o, values in clipped.items():  # values beyond the axis, written side by side in their task's colour
        for j, (g, color) in enumerate(sorted(values)):
            edge = lo if g < lo else hi
            gain_ax.annotate(f"{g:.0f} %", (edge, y[o]), xytext=(7 + 27 * j, 0) if g < lo else (-7 - 27 * j, 0), textcoords="offset points", ha="left" if g < lo else "right", va="center", fontsize=6.5, color=color)
    gain_ax.axvspan(99, hi, color=PALETTE[2], alpha=0.10, lw=0, label="≥ 99 % of the gain (goal)")
    gain_ax.axvline(95, color=PALETTE[5], ls="--", lw=1, label="95 % of the gain")
    gain_ax.axvline(0, color="0.4", lw=0.8, label="0 % = the base alone")
    gain_ax.set(xlim=(lo, hi), xlabel="share of the mAP50-95 gain kept, % (each option at its best scale)", ylim=(len(options) - 0.5, -0.5))
    gain_ax.set_yticks(range(len(options)), options, fontsize=8)
    size_ax.axvspan(1, 10, color=PALETTE[2], alpha=0.10, lw=0, label="≤ 10 % of the checkpoint (goal)")
    size_ax.set_xscale("log")
    size_ax.set(xlim=(3, 250), xlabel="file size, % of the fp16 base checkpoint (log)")
    for ax in (gain_ax, size_ax):
        ax.grid(axis="x", alpha=0.3)
        for k in range(len(options)):
            ax.axhline(k + 0.5, color="0.9", lw=0.6, zorder=0)
    handles, labels = gain_ax.get_legend_handles_labels()
    h2, l2 = size_ax.get_legend_handles_labels()
    fig.legend(handles + h2[-1:], labels + l2[-1:], loc="lower center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    figure_title(fig, "Compact task vectors: share of the mAP gain kept vs file size, per compression option",
                 res, f"yolo26n, imgsz {res['args']['imgsz']}; τ(fruit-night) on fruit80 + fruit80-night val, union vectors on their own val")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
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
