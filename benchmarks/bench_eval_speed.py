"""Speed of the reused ``Evaluator`` vs a loop of fresh ``YOLO(path).val()`` calls, side by side in one run.

The sweep: base80 + α·τ(fruit-night) for α = 0, 0.1, ..., 1 (11 merged models), each validated on fruit80 and
fruit80-night val (60 images each) at imgsz 320. Both paths validate the same merged model at each α:

* fresh: ``save`` the merged model to a temporary .pt, then ``YOLO(tmp).val(data=..., plots=False)`` per dataset
  (what a user's script does today: every call reloads, deep-copies, fuses, re-reads and re-letterboxes);
* reused: one ``Evaluator`` (validators and decoded batches built once), called with the in-memory merged model;
  on CPU it runs inference on all logical CPUs (its default), while ``YOLO.val`` runs on Ultralytics' cores − 1;
* reused, equal threads (CPU only): a second ``Evaluator`` limited to Ultralytics' thread count, so the ratio to
  fresh shows what reuse alone gains;
* sweep: what one sweep/search candidate costs in the engine (``runs.Scorer.measure``): ``build.build_merged`` from
  the inputs prepared once (merge, module, provenance) and the Evaluator, on the equal-threads Evaluator (CPU) or
  the reused one (GPU), everything on its thread count;
* forward: the bare forward pass of that candidate's fused model over the same batches, already preprocessed (no
  merge, no NMS, no metrics): the floor of any scoring. ``sweep ÷ forward`` is what the engine adds per candidate.

The merge itself (``tau.apply``) is common to fresh and reused and timed separately (the sweep path merges
itself). The α order rotates which path runs first, to spread drift on a shared machine; on CPU each path's
process CPU time is recorded too (on a loaded machine wall time includes waiting for a core). Metrics must be identical (the max abs difference is printed). A
profile pass (α = 0.5, both datasets) then times each stage of both paths with the same instrumentation.

    python benchmarks/bench_eval_speed.py                  # CPU
    python benchmarks/bench_eval_speed.py device=0         # GPU (fp16 on both paths)

Writes ``benchmarks/results/eval_speed.{md,json,png}``; the JSON keeps one run per device kind (cpu, cuda), and
the Markdown and plot show all of them.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import PALETTE, REPO, as_bool, busy, environment, figure_title, legend_below, legend_right, load_average, no_nms_time_limit, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "tuned": "yolo26n-fruit-night.pt",
    "data": f"{REPO / 'datasets' / 'fruit80.yaml'},{REPO / 'datasets' / 'fruit80-night.yaml'}",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "steps": "11",
    "out": str(REPO / "benchmarks" / "results"),
    "render": "false",  # true (or --replot): rebuild the .md/.png from the stored .json, measure nothing
}


# ----------------------------------------------------------------------------------------------- instrumentation
class StageTimer:
    """Wraps library functions to accumulate their wall time per stage (outermost call only, CUDA-synchronized)."""

    def __init__(self, device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._active: set[str] = set()
        self._undo: list = []

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, owner, attr: str, stage: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*a, **k):
            if stage in self._active:
                return original(*a, **k)
            self._active.add(stage)
            self._sync()
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self._sync()
                self.seconds[stage] += time.perf_counter() - t
                self._active.discard(stage)

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    @contextlib.contextmanager
    def installed(self):
        import torch.utils.data.dataloader as tdl
        from ultralytics.engine.model import Model
        from ultralytics.engine.validator import BaseValidator
        from ultralytics.models.yolo.detect import DetectionValidator
        from ultralytics.nn.autobackend import AutoBackend

        import yolo_taskvec.evaluation as ev

        self.wrap(Model, "__init__", "load checkpoint")
        self.wrap(BaseValidator, "get_model", "deepcopy model")
        import yolo_taskvec.build as build

        self.wrap(build, "merge_states", "merge (merge_states)")
        self.wrap(build, "build_module", "build module")
        self.wrap(ev, "private_module", "deepcopy model")
        self.wrap(ev, "model_state", "read weights (fp16-rounded)")
        self.wrap(ev.FusedTemplate, "load", "fuse weights in place")
        self.wrap(AutoBackend, "__init__", "fuse (AutoBackend)")
        self.wrap(DetectionValidator, "get_dataloader", "build dataset")
        self.wrap(tdl._BaseDataLoaderIter, "__next__", "decode + letterbox")
        self.wrap(AutoBackend, "forward", "forward")
        self.wrap(DetectionValidator, "postprocess", "NMS / postprocess")
        self.wrap(DetectionValidator, "update_metrics", "match + update metrics")
        self.wrap(DetectionValidator, "get_stats", "AP computation")
        try:
            yield self
        finally:
            for owner, attr, original in reversed(self._undo):
                setattr(owner, attr, original)
            self._undo.clear()


# ----------------------------------------------------------------------------------------------- the two paths
def fresh_val(model, data: list[str], tmp: Path, cfg: dict, timer: dict | None = None) -> dict[str, float]:
    """Save the merged model, then one fresh ``YOLO(path).val()`` per dataset."""
    from ultralytics import YOLO

    from yolo_taskvec import save

    path = tmp / "merged.pt"
    t = time.perf_counter()
    save(model, path)
    if timer is not None:
        timer["save .pt"] += time.perf_counter() - t
    out = {}
    for d in data:
        m = YOLO(str(path)).val(data=d, imgsz=cfg["imgsz"], batch=cfg["batch"], device=cfg["device"], quantize=cfg["quantize"], plots=False, verbose=False)
        out[Path(d).stem] = float(m.box.map)  # the Evaluator's key for a dataset: its yaml's stem
    path.unlink()
    return out


def reused_val(evaluator, model) -> dict[str, float]:
    return {k: v["map50_95"] for k, v in evaluator(model).items()}


def sweep_point(evaluator, prepared, recipe, alpha: float, build_merged) -> dict[str, float]:
    """One sweep candidate as the engine scores it (``runs.Scorer.measure``): built from the prepared inputs, scored,
    all on the evaluator's threads."""
    from yolo_taskvec.evaluation import torch_threads

    with torch_threads(evaluator.threads):
        model = build_merged(prepared, recipe.replace(scale=alpha))
        return reused_val(evaluator, model)


def preprocessed_batches(evaluator, prepared_model) -> list:
    """Every pass's batches as the validator's ``preprocess`` makes them (done once, outside any timing)."""
    import torch

    out = []
    with torch.inference_mode():
        for dataset in evaluator.datasets:
            p = evaluator._pass(prepared_model, dataset)
            out += [p.validator.preprocess(dict(b))["img"] for b in p.batches]
    return out


def bare_forward(evaluator, prepared_model, batches) -> None:
    """The fused model's forward over the preprocessed batches: nothing else."""
    import torch

    from yolo_taskvec.evaluation import torch_threads

    model = prepared_model.backend
    with torch.inference_mode(), torch_threads(evaluator.threads):
        for img in batches:
            model(img)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- run
def run(args: dict[str, str]) -> dict:
    import torchvision  # noqa: F401 - one-time import cost (seconds) kept out of both paths' timings
    from ultralytics.utils.torch_utils import select_device

    from yolo_taskvec import Evaluator, Recipe, TaskVector, load_model, quiet_ultralytics
    from yolo_taskvec.build import build_merged, prepare

    from ultralytics.utils import NUM_THREADS

    device = select_device(args["device"], verbose=False)
    data = [d for d in args["data"].split(",") if d]
    steps = int(args["steps"])
    scales = [round(i / (steps - 1), 4) for i in range(steps)]
    cfg = {"imgsz": int(args["imgsz"]), "batch": int(args["batch"]), "device": args["device"], "quantize": 16 if device.type == "cuda" else None}
    env = environment(device)
    print(f"{env['machine']}\n{env['device']}\n{env['versions']}\nload average at start: {env['load_average_start']}")

    base = load_model(args["base"])
    tau = TaskVector.from_models(base, args["tuned"], name="fruit-night")
    names = [Path(d).stem for d in data]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, quiet_ultralytics(), no_nms_time_limit():  # both paths: metrics independent of load
        tmp = Path(tmp)
        fresh_val(tau.apply(base, scale=0.0), data, tmp, cfg)  # warm-up for both paths: imports, label caches, kernels
        sync(device)
        t = time.perf_counter()
        evaluator = Evaluator(data, imgsz=cfg["imgsz"], batch=cfg["batch"], device=args["device"], progress=False)
        evaluator_init = time.perf_counter() - t
        t = time.perf_counter()
        equal = Evaluator(data, imgsz=cfg["imgsz"], batch=cfg["batch"], device=args["device"], progress=False, threads=NUM_THREADS) if device.type == "cpu" else None
        equal_init = time.perf_counter() - t
        recipe = Recipe.build(base=args["base"], inputs=[args["tuned"]], device=None if device.type == "cpu" else str(device))
        prepared = prepare(recipe)  # a sweep loads its inputs once
        scorer_ev = equal if equal is not None else evaluator
        sweep_point(scorer_ev, prepared, recipe, 0.0, build_merged)  # its fused model built (as after a sweep's first point)
        batches = preprocessed_batches(scorer_ev, scorer_ev.prepare(tau.apply(base, scale=0.0)))
        paths = ("fresh", "reused", "equal", "sweep", "forward") if equal is not None else ("fresh", "reused", "sweep", "forward")
        for i, alpha in enumerate(scales):
            t = time.perf_counter()
            merged = tau.apply(base, scale=alpha)
            merge_s = time.perf_counter() - t
            timings, cpu, maps = {}, {}, {}
            for path in paths[i % len(paths) :] + paths[: i % len(paths)]:  # rotate which path runs first
                sync(device)
                t, c = time.perf_counter(), time.process_time()
                if path == "fresh":
                    maps[path] = fresh_val(merged, data, tmp, cfg)
                elif path == "sweep":
                    maps[path] = sweep_point(scorer_ev, prepared, recipe, alpha, build_merged)
                elif path == "forward":
                    prepared_model = scorer_ev.prepare(merged)
                    prepared_model.backend  # its weights loaded: not part of the forward
                    sync(device)
                    t, c = time.perf_counter(), time.process_time()
                    bare_forward(scorer_ev, prepared_model, batches)
                else:
                    maps[path] = reused_val(evaluator if path == "reused" else equal, merged)
                sync(device)
                timings[path], cpu[path] = time.perf_counter() - t, time.process_time() - c
            row = {"alpha": alpha, "merge_s": merge_s, **{f"{p}_s": timings[p] for p in paths}, **{f"{p}_cpu_s": cpu[p] for p in paths}, **{f"{p}_map": maps[p] for p in maps}}
            rows.append(row)
            print(f"α={alpha:.1f}  merge {merge_s:5.2f}s  " + "  ".join(f"{p} {timings[p]:6.2f}s" for p in paths) + "  " + "  ".join(f"{n} " + "/".join(f"{maps[p][n]:.4f}" for p in maps) for n in names))

        profile = {}
        merged = tau.apply(base, scale=0.5)
        for path in ("fresh", "reused", "sweep"):  # stage profile of one α (2 datasets); reused and sweep in their steady state
            stage = StageTimer(device)
            with stage.installed():
                sync(device)
                t = time.perf_counter()
                if path == "fresh":
                    fresh_val(merged, data, tmp, cfg, stage.seconds)
                elif path == "sweep":
                    sweep_point(scorer_ev, prepared, recipe, 0.5, build_merged)
                else:
                    reused_val(evaluator, merged)
                sync(device)
                total = time.perf_counter() - t
            profile[path] = {**{k: round(v, 4) for k, v in stage.seconds.items()}, "other": round(total - sum(stage.seconds.values()), 4), "total": round(total, 4)}

    fresh_total = sum(r["fresh_s"] for r in rows)
    reused_total = evaluator_init + sum(r["reused_s"] for r in rows)
    merge_total = sum(r["merge_s"] for r in rows)
    diff = max(abs(r["fresh_map"][n] - r[f"{p}_map"][n]) for r in rows for n in names for p in paths if p not in ("fresh", "forward"))
    sweep_total, forward_total = sum(r["sweep_s"] for r in rows), sum(r["forward_s"] for r in rows)
    sweep_cpu, forward_cpu = sum(r["sweep_cpu_s"] for r in rows), sum(r["forward_cpu_s"] for r in rows)
    equal_total = equal_init + sum(r["equal_s"] for r in rows) if equal is not None else None
    summary = {
        "validation_ratio": fresh_total / reused_total,
        "equal_threads_ratio": fresh_total / equal_total if equal_total else None,
        "equal_threads_validation_s": equal_total,
        "threads": {"fresh": NUM_THREADS if device.type == "cpu" else None, "reused": evaluator.threads, "equal": equal.threads if equal else None},
        "sweep_ratio": (fresh_total + merge_total) / (reused_total + merge_total),
        "fresh_validation_s": fresh_total,
        "reused_validation_s": reused_total,
        "evaluator_init_s": evaluator_init,
        "one_time_setup_s": evaluator.timings["data"],
        "merge_s": merge_total,
        "max_abs_map_difference": diff,
        "sweep_candidate_s": sweep_total / len(rows),
        "forward_candidate_s": forward_total / len(rows),
        "sweep_vs_forward": sweep_total / forward_total,
        "sweep_vs_forward_cpu_time": sweep_cpu / forward_cpu if device.type == "cpu" else None,
        "fresh_vs_sweep": (fresh_total + merge_total) / sweep_total,  # whole candidate: merge + validation on both paths
        "sweep_threads": scorer_ev.threads,
        "load_average_end": load_average(),
    }
    if equal_total:
        print(f"\nequal threads ({NUM_THREADS}): fresh {fresh_total:.2f}s vs reused {equal_total:.2f}s -> {summary['equal_threads_ratio']:.2f}x")
    print(
        f"\nvalidation: fresh {fresh_total:.2f}s vs reused {reused_total:.2f}s -> {summary['validation_ratio']:.2f}x; "
        f"whole sweep incl. merges ({merge_total:.2f}s): {summary['sweep_ratio']:.2f}x; max |ΔmAP50-95| = {diff:.2e}"
    )
    print(f"sweep candidate {summary['sweep_candidate_s']:.2f}s vs bare forward {summary['forward_candidate_s']:.2f}s -> {summary['sweep_vs_forward']:.3f}x"
          + (f" (CPU time {summary['sweep_vs_forward_cpu_time']:.3f}x)" if summary["sweep_vs_forward_cpu_time"] else "")
          + f"; fresh (merge + save + YOLO.val) vs sweep candidate: {summary['fresh_vs_sweep']:.2f}x")
    for path, stages in profile.items():
        print(f"profile {path}: " + ", ".join(f"{k} {v:.2f}s" for k, v in stages.items()))
    settings = {**cfg, "data": names, "base": args["base"], "tuned": args["tuned"], "scales": scales}
    return {"environment": env, "settings": settings, "summary": summary, "rows": rows, "profile": profile}


# ----------------------------------------------------------------------------------------------- outputs
def _threads_lines(s: dict) -> list[str]:
    if not s.get("equal_threads_ratio"):
        return []
    t = s["threads"]
    slower = s["reused_validation_s"] > s["equal_threads_validation_s"]
    return [
        *([f"In this run the Evaluator on all {t['reused']} logical CPUs was {s['reused_validation_s'] / s['equal_threads_validation_s']:.1f}× SLOWER than on {t['equal']}: "
           "with more runnable processes than cores, torch's worker threads wait for one another (oversubscription), so the equal-thread "
           "figures are the ones to read here.", ""] if slower else []),
        f"**Reuse alone, equal threads ({t['equal']}): {s['equal_threads_ratio']:.2f}× faster** (fresh {s['fresh_validation_s']:.1f} s vs reused {s['equal_threads_validation_s']:.1f} s).",
        "",
        f"With the Evaluator's default threads ({t['reused']}) against `YOLO.val`'s ({t['fresh']}):",
        "",
    ]


def _sweep_lines(s: dict, rows: list[dict]) -> list[str]:
    if "sweep_vs_forward" not in s:
        return []
    bound = (s["fresh_validation_s"] + s["merge_s"]) / sum(r["forward_s"] for r in rows)
    cpu = f" (process CPU time: {s['sweep_vs_forward_cpu_time']:.3f}×)" if s.get("sweep_vs_forward_cpu_time") else ""
    return [
        f"**A sweep candidate costs {s['sweep_vs_forward']:.3f}× the bare forward pass**{cpu} over the same batches ({s['sweep_candidate_s']:.2f} s vs "
        f"{s['forward_candidate_s']:.2f} s per merged model, {s['sweep_threads'] or 'GPU'} thread(s)): merge, build, weight loading, preprocess, NMS and metrics "
        f"together add {100 * (s['sweep_vs_forward'] - 1):.0f} %. Against the fresh path with its merge (`tau.apply` + save + `YOLO.val` per dataset, "
        f"{s['threads']['fresh'] or 'GPU'} thread(s)): **{s['fresh_vs_sweep']:.2f}× faster**; no scoring can beat fresh by more than fresh ÷ bare forward = "
        f"{bound:.2f}× here, since the forward pass is {100 / bound:.0f} % of a fresh candidate.",
        "",
    ]


def markdown(runs: dict) -> str:
    lines = [
        "# Evaluation speed: reused Evaluator vs fresh `YOLO(path).val()`",
        "",
        "Sweep base80 + α·τ(fruit-night), α = 0..1 step 0.1 (11 merged models) × fruit80 and fruit80-night val",
        "(60 images each). *fresh*: save the merged model to a temporary .pt, then `YOLO(tmp).val(data=..., plots=False)`",
        "per dataset. *reused*: one `yolo_taskvec.evaluation.Evaluator` (validators and decoded, letterboxed batches",
        "built once, models fused once) called with the in-memory merged model. The merge is common to both paths.",
        "Regenerate: `python benchmarks/bench_eval_speed.py` (CPU) or `python benchmarks/bench_eval_speed.py device=0`.",
        "",
    ]
    for kind, r in runs.items():
        env, s, st = r["environment"], r["summary"], r["settings"]
        names = st["data"]
        lines += [
            f"## {kind.upper()}",
            "",
            f"- date: {env['date']}",
            f"- machine: {env['machine']}",
            f"- device: {env['device']}; imgsz {st['imgsz']}, batch {st['batch']}, fp16 {'yes' if st['quantize'] == 16 else 'no'}",
            f"- versions: {env['versions']}",
            f"- load average at start / end: {env['load_average_start']} / {s['load_average_end']}"
            + (" (a shared machine: more runnable processes than cores, so the timings are noisy)" if busy(env) else ""),
            "",
            *_threads_lines(s),
            f"**Validation {s['validation_ratio']:.2f}× faster** (fresh {s['fresh_validation_s']:.1f} s vs reused {s['reused_validation_s']:.1f} s, "
            f"Evaluator set-up {s['evaluator_init_s']:.2f} s and one-time dataset decode {s['one_time_setup_s']:.2f} s included); whole sweep including the merges ({s['merge_s']:.1f} s): "
            f"**{s['sweep_ratio']:.2f}×**. Max |ΔmAP50-95| between the paths: {s['max_abs_map_difference']:.1e}.",
            "",
            *_sweep_lines(s, r["rows"]),
            "| α | fresh (s) | reused (s) | ratio | reused, equal threads (s) | ratio | " + " | ".join(f"{n} fresh | {n} reused" for n in names) + " |",
            "|---|---|---|---|---|---|" + "---|---|" * len(names),
        ]
        for row in r["rows"]:
            cells = " | ".join(f"{row['fresh_map'][n]:.4f} | {row['reused_map'][n]:.4f}" for n in names)
            eq = f"{row['equal_s']:.2f} | {row['fresh_s'] / row['equal_s']:.2f}" if "equal_s" in row else "– | –"
            lines.append(f"| {row['alpha']:.1f} | {row['fresh_s']:.2f} | {row['reused_s']:.2f} | {row['fresh_s'] / row['reused_s']:.2f} | {eq} | {cells} |")
        cols = [c for c in ("fresh", "reused", "sweep") if c in r["profile"]]
        stages = [k for k in dict.fromkeys(k for c in cols for k in r["profile"][c]) if k not in ("other", "total")] + ["other", "total"]
        lines += ["", "Where the time goes for one more merged model (α = 0.5, both datasets; the reused Evaluator already set up; *sweep*: the merge and",
                  "build included):", "", "| stage | " + " | ".join(f"{c} (s)" for c in cols) + " |", "|---|" + "---|" * len(cols)]
        for k in stages:
            lines.append(f"| {k} | " + " | ".join(f"{r['profile'][c].get(k, 0):.3f}" for c in cols) + " |")
        if "sweep_s" in r["rows"][0]:
            lines += ["", "Per α, the sweep candidate and the bare forward over the same batches (wall / process CPU seconds):", "",
                      "| α | sweep candidate (s) | bare forward (s) | ratio | CPU time ratio |", "|---|---|---|---|---|"]
            for row in r["rows"]:
                cpu = f"{row['sweep_cpu_s'] / row['forward_cpu_s']:.3f}" if row.get("forward_cpu_s") else "–"
                lines.append(f"| {row['alpha']:.1f} | {row['sweep_s']:.2f} | {row['forward_s']:.2f} | {row['sweep_s'] / row['forward_s']:.3f} | {cpu} |")
        lines.append("")
    if "cuda" not in runs:
        lines += ["No GPU figures yet: run `python benchmarks/bench_eval_speed.py device=0` on a machine with a GPU (the JSON keeps both).", ""]
    lines += [
        "Notes: *reused* decodes and letterboxes each dataset once (kept resident on the device as uint8), builds one",
        "Ultralytics validator per dataset, fuses the first model with Ultralytics' AutoBackend and every later model of",
        "the same architecture into that fused model in place (bit-identical weights, no deep copy), and runs the",
        "validator's own preprocess/postprocess/update_metrics/get_stats. Both paths score identical weights (the",
        "Evaluator rounds in-memory weights to fp16 as the saved checkpoint holds them), so the metrics match exactly.",
        "Threads: `YOLO.val` runs on Ultralytics' setting (`select_device` sets torch threads to cores − 1 on CPU, leaving",
        "a core for training dataloaders); the Evaluator decodes batches up front and runs inference on all logical CPUs",
        "(`threads=` limits it), and the equal-threads column holds it to Ultralytics' count to isolate reuse. On CPU the",
        "forward pass is most of a validation, so reuse can only remove the rest (checkpoint save/load, deep copy,",
        "fusion with its FLOPs summary, dataset build, JPEG decode + letterbox); on GPU the forward is a small fraction",
        "and the removed overhead dominates.",
        "",
    ]
    return "\n".join(lines)


# one fixed colour per stage, shared by both paths (stages of one path only get colours no other stage has)
STAGE_COLORS = {
    "forward": "#0072B2", "NMS / postprocess": "#56B4E9", "match + update metrics": "#009E73", "AP computation": "#F0E442",
    "save .pt": "#D55E00", "load checkpoint": "#E69F00", "deepcopy model": "#CC79A7", "fuse (AutoBackend)": "#882255",
    "build dataset": "#999933", "decode + letterbox": "#117733", "read weights (fp16-rounded)": "#332288",
    "fuse weights in place": "#AA4499", "other": "#BBBBBB",
}


def plot(runs: dict, path: Path) -> None:
    """Left: seconds per merged model over the sweep for each path. Right: where one model's time goes, per stage."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.9 * len(runs)))
    axes = fig.subplots(len(runs), 2, squeeze=False, gridspec_kw={"width_ratios": [1, 1.25]})
    for (kind, r), (left, right) in zip(runs.items(), axes):
        s, st = r["summary"], r["settings"]
        alphas = [row["alpha"] for row in r["rows"]]
        t = s.get("threads", {})
        left.plot(alphas, [row["fresh_s"] for row in r["rows"]], "o-", color=PALETTE[5], label=f"fresh YOLO(path).val() per dataset ({t.get('fresh', '?')} thread{'s' if t.get('fresh') != 1 else ''})")
        left.plot(alphas, [row["reused_s"] for row in r["rows"]], "s-", color=PALETTE[0], label=f"reused Evaluator ({t.get('reused', '?')} threads, its default)")
        if "equal_s" in r["rows"][0]:
            left.plot(alphas, [row["equal_s"] for row in r["rows"]], "^--", color=PALETTE[4], label=f"reused Evaluator, Ultralytics' thread count ({t.get('equal', '?')})")
        title = f"{s['validation_ratio']:.2f}× faster" + (f" ({s['equal_threads_ratio']:.2f}× at equal threads)" if s.get("equal_threads_ratio") else "")
        left.set(xlabel="α of the merged model base80 + α·τ(fruit-night)", ylabel="seconds per merged model (2 datasets)", title=title, ylim=(0, None))
        left.grid(alpha=0.3)
        legend_below(left, ncol=1)
        paths = [("fresh", "fresh\nYOLO(path).val()"), ("reused", "reused\nEvaluator")]
        stages = [k for k in dict.fromkeys([*r["profile"]["fresh"], *r["profile"]["reused"]]) if k not in ("other", "total")] + ["other"]
        for y, (key, label) in enumerate(paths):
            left_edge = 0.0
            for k in stages:
                v = r["profile"][key].get(k, 0.0)
                if v <= 0:
                    continue
                right.barh(y, v, left=left_edge, color=STAGE_COLORS.get(k, "0.5"), edgecolor="white", lw=0.5, label=k if y == 0 or k not in r["profile"]["fresh"] else None)
                if v > 0.25:  # wide enough to name inside the bar
                    right.text(left_edge + v / 2, y, f"{k}\n{v:.2f} s", ha="center", va="center", fontsize=7.5, color="white")
                left_edge += v
            right.text(left_edge + 0.03, y, f"{r['profile'][key]['total']:.2f} s", va="center", fontsize=9)
        right.set_yticks(range(len(paths)), [label for _, label in paths])
        right.set(xlabel="seconds for one more merged model (α = 0.5, both datasets)", title="where the time goes", ylim=(len(paths) - 0.4, -0.6))
        right.set_xlim(0, max(r["profile"][k]["total"] for k, _ in paths) * 1.15)
        right.grid(axis="x", alpha=0.3)
        legend_right(right)
        figure_title(fig, "Validation of a sweep's merged models: fresh YOLO(path).val() vs one reused Evaluator", r,
                     f"base80 + α·τ(fruit-night), α = 0…1 (11 models) × fruit80 + fruit80-night val (60 images each), imgsz {st['imgsz']}, batch {st['batch']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_eval_speed.py")
    if as_bool(args["render"]):
        render_outputs("eval_speed", Path(args["out"]), markdown=markdown, plot=plot)
        return
    result = run(args)
    kind = "cuda" if str(result["environment"]["device"]).startswith("cuda") else "cpu"
    write_outputs("eval_speed", result, Path(args["out"]), kind=kind, markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
