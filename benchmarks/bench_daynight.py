"""Day/night on fruit: base80 + α·τ(fruit-night) for every merge method × every BatchNorm policy, then a search for
one merged model at ≥ 0.99 of the base by day and of the night specialist at night.

* τ = yolo26n-fruit-night − yolo26n-base80 (every tensor, BatchNorm statistics included).
* Scored on fruit80 val (day) and fruit80-night val (night), 60 images each, imgsz 320, mAP50-95. Normalized:
  day / base80's day score, night / the night fine-tune's night score, both measured in the same run by the same
  evaluator; the objective is their mean (``min`` is reported too: the goal is min ≥ 0.99).
* Every point is built by ``yolo_taskvec.sweep`` (which merges with ``yolo_taskvec.merge``) and scored by ONE
  ``Evaluator`` (validators and decoded batches built once). The evaluator remembers its answer per weight state
  (fp16-rounded, as scored), so a merge that produces exactly the weights of an earlier one is not validated twice.
* Methods: every registered method that can merge one vector, with its default parameters, α over ``alphas_ta``
  for task_arithmetic and the coarser ``alphas`` for the others. ``slerp`` needs two models: it interpolates between
  the base itself (a zero vector) and the fine-tune, with t = α at scale 1 (spherical instead of linear
  interpolation of base and fine-tune). ``consensus`` needs ≥ 2 tasks and is skipped (see ``SKIPPED``).
* BatchNorm policies: ``merge``, ``geometric``, ``base``, ``recalibrate`` (statistics re-estimated on fruit80 train +
  fruit80-night train images, interleaved, ``bn_batches`` batches of 16).
* Goal search (``search=true``): ``yolo_taskvec.search`` over per-part scales (backbone, neck, head; then backbone,
  neck, head.box, head.cls) with objective ``min`` (so ≥ 0.99 on both is the target), for several BatchNorm policies.

    python benchmarks/bench_daynight.py                       # CPU, everything (about an hour on 2 busy cores)
    python benchmarks/bench_daynight.py device=0              # GPU
    python benchmarks/bench_daynight.py quick=true            # smoke test: 3 methods, 2 policies, 2 α, tiny search

Writes ``benchmarks/results/daynight.{md,json,png}``. ``work=DIR`` keeps the per-sweep/search results files there, so
an interrupted run resumes without recomputing finished points (by default a temporary folder is used).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import DATASETS, PALETTE, RESULTS, as_bool, as_floats, device_kind, environment, environment_markdown, figure_title, legend_below, load_average, no_nms_time_limit, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "tuned": "yolo26n-fruit-night.pt",
    "day": str(DATASETS / "fruit80.yaml"),
    "night": str(DATASETS / "fruit80-night.yaml"),
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "methods": "all",
    "bn": "merge,geometric,base,recalibrate",
    "alphas_ta": "0:1:0.1",
    "alphas": "0.2,0.4,0.5,0.6,0.8,1.0",
    "bn_batches": "16",
    "search": "true",
    "budget": "30",
    "quick": "false",
    "work": "",
    "out": str(RESULTS),
    "render": "false",  # true: rebuild the .md/.png from the stored .json, measure nothing
}
SKIPPED = {
    "consensus": "needs ≥ 2 task vectors: TALL-mask consensus keeps the entries that at least k tasks mark; with one "
    "vector (or the base's zero vector as a second) k=1 is plain task arithmetic and k ≥ 2 keeps nothing.",
}
PAIR_METHODS = {"slerp": "t"}  # methods of two models: interpolate base (zero vector) → fine-tune with param = α
GOAL = 0.99
KNOWN_POINT = {"backbone": 0.5, "neck": 1.0, "head": 0.75}  # found by an earlier helper: 0.9821 with bn=merge


# ----------------------------------------------------------------------------------------------- evaluation
class RememberingEvaluator:
    """The one ``Evaluator``, answering again from memory for a weight state it has already scored."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator
        self.cache: dict[str, dict] = {}
        self.calls = 0
        self.seconds = 0.0

    @staticmethod
    def state_key(model: Any) -> str:
        """A digest of the weights as the Evaluator scores them (``as_saved``: floats rounded to fp16 unless some
        exceed fp16's range)."""
        import torch

        from yolo_taskvec import load_model

        state = load_model(model).state  # fp32 on the CPU, whatever the model is (path, YOLO, module)
        floats = [t for t in state.values() if t.is_floating_point() and t.numel()]
        if not floats or float(torch.stack([t.abs().amax() for t in floats]).amax()) <= torch.finfo(torch.float16).max:
            state = {k: (t.half().float() if t.is_floating_point() else t) for k, t in state.items()}
        h = hashlib.sha1()
        for key, t in sorted(state.items()):
            h.update(key.encode())
            h.update(t.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def __call__(self, model: Any) -> dict:
        self.calls += 1
        key = self.state_key(model)
        if key not in self.cache:
            t = time.perf_counter()
            self.cache[key] = self.evaluator(model)
            self.seconds += time.perf_counter() - t
        return self.cache[key]

    @property
    def evaluated(self) -> int:
        return len(self.cache)


def point_row(row: Mapping[str, Any], day: str, night: str) -> dict[str, float]:
    """The measured numbers of one sweep/search row."""
    dn, nn = row[f"{day}/norm"], row[f"{night}/norm"]
    return {"day": row[f"{day}/map50_95"], "night": row[f"{night}/map50_95"], "day_norm": dn, "night_norm": nn, "mean": (dn + nn) / 2, "min": min(dn, nn)}


# ----------------------------------------------------------------------------------------------- the grid
def method_list(spec: str) -> tuple[list[str], dict[str, str]]:
    from yolo_taskvec import method_names

    names = method_names() if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in method_names()]
    if unknown:
        sys.exit(f"unknown method {unknown[0]}; registered: {', '.join(method_names())}")
    return [m for m in names if m not in SKIPPED], {m: SKIPPED[m] for m in names if m in SKIPPED}


def equivalences(base, tau, zero, methods: list[str]) -> dict[str, str]:
    """Methods whose merge of this one vector gives bit-identical weights to an earlier method's (α = 0.5, bn=merge)."""
    import torch

    from yolo_taskvec import merge_states

    states: dict[str, dict] = {}
    same: dict[str, str] = {}
    for m in sorted(methods, key=lambda m: m != "task_arithmetic"):  # named relative to task arithmetic first
        if m in PAIR_METHODS:
            state, _ = merge_states(base.state, [zero, tau], m, params={PAIR_METHODS[m]: 0.5}, layout=base.layout)
        else:
            state, _ = merge_states(base.state, [tau], m, scale=0.5, layout=base.layout)
        for other, s in states.items():
            if all(torch.equal(state[k], s[k]) for k in state):
                same[m] = other
                break
        else:
            states[m] = state
    return same


def run_grid(args, base, tau, zero, evaluate, reference, methods, policies, folder: Path, verbose: bool) -> list[dict]:
    from ultralytics.utils import TQDM

    from yolo_taskvec import sweep

    data = [args["day"], args["night"]]
    day, night = (Path(d).stem for d in data)
    kw = dict(reference=reference, imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], evaluator=evaluate, plot=False, verbose=False, bn_data=data, bn_batches=int(args["bn_batches"]))
    rows = []
    jobs = [(m, bn) for m in methods for bn in policies]
    for method, bn in TQDM(jobs, desc="methods × BN policies", disable=not verbose):
        t0 = time.perf_counter()
        alphas = as_floats(args["alphas_ta"] if method == "task_arithmetic" else args["alphas"])
        if method in PAIR_METHODS:  # one sweep point per α: the interpolation position is the method's parameter
            found = []
            for a in alphas:
                res = sweep(base, [zero, tau], data, scales=[1.0], method=method, params={PAIR_METHODS[method]: a}, bn=bn, out=folder / f"{method}-{bn}-{a:g}", **kw)
                found.append((a, res.rows[0]))
        else:
            res = sweep(base, [tau], data, scales=alphas, method=method, bn=bn, out=folder / f"{method}-{bn}", **kw)
            found = [(r["scale"], r) for r in res.rows]
        seconds = time.perf_counter() - t0
        for a, r in found:
            rows.append({"method": method, "bn": bn, "alpha": a, **point_row(r, day, night)})
        best = max((r for r in rows if r["method"] == method and r["bn"] == bn), key=lambda r: r["mean"])
        print(f"{method:>17} bn={bn:<11} {seconds:6.1f}s  best α={best['alpha']:g}: day {best['day']:.4f} night {best['night']:.4f} -> mean {best['mean']:.4f}, min {best['min']:.4f}")
    return rows


# ----------------------------------------------------------------------------------------------- goal search
def run_searches(args, base, tau, evaluate, reference, policies, folder: Path, quick: bool, verbose: bool) -> list[dict]:
    from yolo_taskvec import search, sweep

    data = [args["day"], args["night"]]
    day, night = (Path(d).stem for d in data)
    budget = 3 if quick else int(args["budget"])
    kw = dict(reference=reference, imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], evaluator=evaluate, plot=False, verbose=verbose, bn_data=data, bn_batches=int(args["bn_batches"]))
    results = []

    def record(name: str, space: Any, bn: str, res: Any, objective: str) -> dict:
        best = max(res.rows, key=lambda r: (point_row(r, day, night)["min"], point_row(r, day, night)["mean"]))
        axes = list(res.axes)
        entry = {
            "name": name, "space": space, "bn": bn, "objective": objective, "trials": len(res.rows),
            "best_point": {a: best[a] for a in axes}, **point_row(best, day, night),
            "rows": [{**{a: r[a] for a in axes}, **point_row(r, day, night)} for r in res.rows],
        }
        results.append(entry)
        print(f"{name}: {len(res.rows)} trials, best {', '.join(f'{k}={v:g}' for k, v in entry['best_point'].items())}: day {entry['day_norm']:.4f} night {entry['night_norm']:.4f} -> min {entry['min']:.4f}, mean {entry['mean']:.4f}")
        return entry

    known = [bn for bn in ("merge", "geometric") if bn in policies]
    for bn in known:  # the earlier helper's point, measured here
        res = sweep(base, [tau], data, scales={k: [v] for k, v in KNOWN_POINT.items()}, bn=bn, out=folder / f"known-{bn}", **{**kw, "verbose": False})
        record(f"known point, bn={bn}", "parts", bn, res, "-")
    three = ["backbone", "neck", "head"]
    four = ["backbone", "neck", "head.box", "head.cls"]
    search_policies = [bn for bn in ("merge", "geometric", "recalibrate") if bn in policies]
    for bn in search_policies:
        res = search(base, [tau], data, space=three, budget=budget if bn != "recalibrate" else max(2, budget * 2 // 3), objective="min", bn=bn, out=folder / f"search3-{bn}", **kw)
        record(f"search backbone/neck/head, bn={bn}", three, bn, res, "min")
    if search_policies:
        first = max(results, key=lambda e: (e["min"], e["mean"]))
        start = {"backbone": first["best_point"].get("backbone", 0.5), "neck": first["best_point"].get("neck", 0.5), "head.box": first["best_point"].get("head", 0.5), "head.cls": first["best_point"].get("head", 0.5)}
        res = search(base, [tau], data, space=four, budget=budget, objective="min", bn=first["bn"], start=start, step=0.125, out=folder / f"search4-{first['bn']}", **kw)
        record(f"search backbone/neck/head.box/head.cls from the best so far, bn={first['bn']}", four, first["bn"], res, "min")
        res = search(base, [tau], data, space=three, budget=budget, objective="mean", bn=first["bn"], out=folder / f"search3-mean-{first['bn']}", **kw)
        record(f"search backbone/neck/head, objective mean, bn={first['bn']}", three, first["bn"], res, "mean")
    return results


# ----------------------------------------------------------------------------------------------- run
def run(args: dict[str, str]) -> dict:
    import torch

    from yolo_taskvec import (
        BN_POLICIES,
        Evaluator,
        TaskVector,
        load_model,
        quiet_ultralytics,
    )

    quick = as_bool(args["quick"])
    if quick:
        args = {**args, "methods": "task_arithmetic,ties,slerp" if args["methods"] == "all" else args["methods"], "bn": "merge,geometric" if args["bn"] == DEFAULTS["bn"] else args["bn"], "alphas_ta": "0.5,1", "alphas": "0.5,1", "bn_batches": "2"}
    policies = [b.strip() for b in args["bn"].split(",") if b.strip()]
    bad = [b for b in policies if b not in BN_POLICIES]
    if bad:
        sys.exit(f"unknown BatchNorm policy {bad[0]}; choose from {', '.join(BN_POLICIES)}")
    methods, skipped = method_list(args["methods"])
    env = environment(args["device"])
    print(f"{env['machine']}; OMP_NUM_THREADS={env['omp_num_threads']}\n{env['device']}; GPU available: {env['gpu_available']}\n{env['versions']}\nload average at start: {env['load_average_start']}")

    t_start = time.perf_counter()
    base = load_model(args["base"])
    tau = TaskVector.from_models(base, args["tuned"], name="fruit-night")
    zero = TaskVector.from_models(base, base, name="base")
    data = [args["day"], args["night"]]
    day, night = (Path(d).stem for d in data)
    reference = {day: args["base"], night: args["tuned"]}
    verbose = sys.stdout.isatty()
    work = Path(args["work"]) if args["work"] else None
    with tempfile.TemporaryDirectory(prefix="bench-daynight-") as tmp, quiet_ultralytics(), no_nms_time_limit():
        folder = work or Path(tmp)
        evaluate = RememberingEvaluator(Evaluator(data, imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], progress=False))
        refs = {"base": evaluate(base), "tuned": evaluate(load_model(args["tuned"]))}
        print(f"references: base80 {day} {refs['base'][day]['map50_95']:.4f}, {night} {refs['base'][night]['map50_95']:.4f}; fruit-night {day} {refs['tuned'][day]['map50_95']:.4f}, {night} {refs['tuned'][night]['map50_95']:.4f}")
        same = equivalences(base, tau, zero, methods)
        for m, other in same.items():
            print(f"{m} merges one vector to exactly the weights of {other} (evaluated once)")
        grid = run_grid(args, base, tau, zero, evaluate, reference, methods, policies, folder, verbose)
        searches = run_searches(args, base, tau, evaluate, reference, policies, folder, quick, verbose) if as_bool(args["search"]) else []
    settings = {
        "base": args["base"], "tuned": args["tuned"], "data": [day, night], "imgsz": int(args["imgsz"]), "batch": int(args["batch"]), "device": args["device"],
        "alphas_ta": as_floats(args["alphas_ta"]), "alphas": as_floats(args["alphas"]), "bn_policies": policies, "bn_data": [f"{day} train", f"{night} train"],
        "bn_batches": int(args["bn_batches"]), "budget": int(args["budget"]), "quick": quick, "torch_threads": torch.get_num_threads(),
        "method_params": method_params(methods),
    }
    summary = {
        "references": {k: {ds: v[ds]["map50_95"] for ds in (day, night)} for k, v in refs.items()},
        "skipped": skipped, "identical": same, "evaluations": evaluate.evaluated, "evaluator_calls": evaluate.calls,
        "evaluation_s": round(evaluate.seconds, 1), "total_s": round(time.perf_counter() - t_start, 1), "load_average_end": load_average(),
    }
    return {"environment": env, "settings": settings, "summary": summary, "grid": grid, "searches": searches}


def method_params(methods: list[str]) -> dict[str, dict]:
    from yolo_taskvec import get_method

    return {m: {p.name: p.default for p in get_method(m).params} for m in methods}


# ----------------------------------------------------------------------------------------------- analysis
def best_by(rows: list[dict], key: str = "mean") -> dict[tuple[str, str], dict]:
    """The best row of each (method, bn) by ``key`` (ties: the smaller α)."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        k = (r["method"], r["bn"])
        if k not in out or r[key] > out[k][key]:
            out[k] = r
    return out


def distinct(rows: list[dict]) -> tuple[list[dict], dict[str, list[str]]]:
    """Rows of one method per group of methods that scored identically at every (BN policy, α), and each kept
    method's twins (task_arithmetic represents its group when it is in one)."""
    curves: dict[str, dict] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        curves[m] = {(r["bn"], r["alpha"]): (r["day"], r["night"]) for r in rows if r["method"] == m}

    def same(rep: str, m: str) -> bool:  # every point of m measured for rep too (its α grid may be finer), equal
        return curves[m].keys() <= curves[rep].keys() and all(curves[rep][k] == v for k, v in curves[m].items())

    twins: dict[str, list[str]] = {}
    for m in sorted(curves, key=lambda m: (m != "task_arithmetic", m)):
        rep = next((k for k in twins if same(k, m)), None)
        if rep is None:
            twins[m] = []
        else:
            twins[rep].append(m)
    return [r for r in rows if r["method"] in twins], twins


def method_label(method: str, twins: dict[str, list[str]]) -> str:
    return method + (f" (= {', '.join(twins[method])})" if twins.get(method) else "")


def bn_ranking(rows: list[dict]) -> list[dict]:
    """Per BN policy: best normalized mean over methods and α, task arithmetic's best, mean over methods of each
    method's best, and how many methods score best with this policy (pass one row set per distinct method)."""
    best = best_by(rows)
    methods = sorted({m for m, _ in best})
    policies = list(dict.fromkeys(r["bn"] for r in rows))
    wins = {bn: 0 for bn in policies}
    for m in methods:
        scored = [(best[(m, bn)]["mean"], bn) for bn in policies if (m, bn) in best]
        if scored:
            wins[max(scored)[1]] += 1
    out = []
    for bn in policies:
        mine = [best[(m, bn)] for m in methods if (m, bn) in best]
        ta = best.get(("task_arithmetic", bn))
        ta_half = next((r for r in rows if r["method"] == "task_arithmetic" and r["bn"] == bn and abs(r["alpha"] - 0.5) < 1e-9), None)
        out.append({
            "bn": bn, "best": max(r["mean"] for r in mine), "best_method": max(mine, key=lambda r: r["mean"])["method"],
            "methods_mean": sum(r["mean"] for r in mine) / len(mine), "wins": wins[bn],
            "ta_best": ta["mean"] if ta else None, "ta_best_alpha": ta["alpha"] if ta else None, "ta_half": ta_half,
        })
    return out


# ----------------------------------------------------------------------------------------------- outputs
def markdown(runs: dict) -> str:
    lines = [
        "# Day/night on fruit: base80 + α·τ(fruit-night), every merge method × BatchNorm policy",
        "",
        "τ = `yolo26n-fruit-night.pt` − `yolo26n-base80.pt`. mAP50-95 on fruit80 val (day) and fruit80-night val (night),",
        "60 images each, imgsz 320. *norm*: day / base80's day score and night / the night fine-tune's night score (both",
        "measured in the same run, by the same evaluator); *mean* and *min* of the two. Goal: one model with min ≥ 0.99.",
        "Every point is merged by `yolo_taskvec.sweep`/`search` (i.e. `yolo_taskvec.merge`) and scored by one `Evaluator`.",
        "Regenerate: `python benchmarks/bench_daynight.py` (CPU) or `python benchmarks/bench_daynight.py device=0` (GPU).",
        "",
    ]
    for kind, r in runs.items():
        lines += section(kind, r)
    if "cuda" not in runs:
        lines += ["No GPU figures yet (no GPU was available for this run): `python benchmarks/bench_daynight.py device=0` adds them.", ""]
    return "\n".join(lines)


def section(kind: str, r: dict) -> list[str]:
    env, st, s, grid = r["environment"], r["settings"], r["summary"], r["grid"]
    day, night = st["data"]
    refs = s["references"]
    lines = [f"## {kind.upper()}", "", *environment_markdown(env, s["load_average_end"])]
    lines += [
        f"Settings: imgsz {st['imgsz']}, batch {st['batch']}; α grid {', '.join(f'{a:g}' for a in st['alphas_ta'])} for task_arithmetic and "
        f"{', '.join(f'{a:g}' for a in st['alphas'])} for the other methods; `recalibrate` re-estimates the statistics on {' + '.join(st['bn_data'])} "
        f"images ({st['bn_batches']} batches of 16, day and night interleaved). {s['evaluations']} distinct models validated "
        f"({s['evaluator_calls']} requests: identical weights are validated once), {s['total_s'] / 60:.0f} min in all. "
        "Ultralytics' NMS time limit is lifted (`common.no_nms_time_limit`): on a busy CPU it otherwise drops detections.",
        "",
        "References (same run): " + f"base80 {day} **{refs['base'][day]:.4f}**, {night} {refs['base'][night]:.4f}; "
        f"fruit-night fine-tune {day} {refs['tuned'][day]:.4f}, {night} **{refs['tuned'][night]:.4f}**.",
        "",
        "Method parameters (defaults): " + "; ".join(f"`{m}` {', '.join(f'{k}={v}' for k, v in p.items())}" for m, p in st["method_params"].items() if p) + ".",
        "",
    ]
    if s["skipped"]:
        lines += ["Not run on a single vector: " + " ".join(f"`{m}`: {why}" for m, why in s["skipped"].items()), ""]
    lines += ["`slerp` (two models) interpolates spherically between the base itself (a zero vector) and the fine-tune, t = α at scale 1.", ""]
    if s["identical"]:
        lines += ["With one vector these methods give bit-identical weights to another (checked on the merged tensors), so their rows equal it: "
                  + ", ".join(f"`{m}` = `{o}`" for m, o in s["identical"].items()) + ".", ""]

    grid_all = grid
    grid, twins = distinct(grid)
    lines += [
        f"Methods that scored identically at every BN policy and α are shown once: {'; '.join(method_label(m, twins) for m, t in twins.items() if t)}. "
        "With one vector, sign election and disjoint selection have nothing to resolve; TSV keeps the full rank and "
        "reconstructs τ up to float rounding (its rows match task arithmetic except where recalibration amplifies it).",
        "",
    ] if any(twins.values()) else []
    ranking = bn_ranking(grid)
    lines += ["### BatchNorm policies", "", f"Over the {len(twins)} distinct methods:", "", "| BN policy | best mean (method, α) | task arithmetic best mean (α) | task arithmetic α=0.5: day / night (mean) | mean over methods of their best | methods best with it |", "|---|---|---|---|---|---|"]
    best = best_by(grid)
    for b in ranking:
        half = b["ta_half"]
        best_row = best[(b["best_method"], b["bn"])]
        lines.append(
            f"| {b['bn']} | {b['best']:.4f} ({b['best_method']}, {best_row['alpha']:g}) | "
            + (f"{b['ta_best']:.4f} ({b['ta_best_alpha']:g})" if b["ta_best"] is not None else "-") + " | "
            + (f"{half['day']:.3f} / {half['night']:.3f} ({half['mean']:.4f})" if half else "-") + f" | {b['methods_mean']:.4f} | {b['wins']} |"
        )
    lines += [
        "",
        "`merge` and `geometric` move the running statistics by the full α·τ of the statistics; methods that change the",
        "weights by something else than α·τ (sparsified: magnitude_prune/ties at density 0.2, DARE; spectrum-flattened: iso_c,",
        "iso_cts) then pair weights and statistics that do not match, which is why `base` can score better for them.",
        "`recalibrate` (statistics re-estimated from images) scores far below the others for every method here.",
    ]
    lines += ["", "### Best α per method and BatchNorm policy (by normalized mean)", "", f"| method | BN | α | {day} | {night} | {day} norm | {night} norm | mean | min |", "|---|---|---|---|---|---|---|---|---|"]
    for (m, bn), row in sorted(best.items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| {method_label(m, twins)} | {bn} | {row['alpha']:g} | {row['day']:.4f} | {row['night']:.4f} | {row['day_norm']:.4f} | {row['night_norm']:.4f} | **{row['mean']:.4f}** | {row['min']:.4f} |")

    alphas = sorted({row["alpha"] for row in grid})
    lines += ["", "### Normalized mean at every α", "", "| method | BN | " + " | ".join(f"{a:g}" for a in alphas) + " |", "|---|---|" + "---|" * len(alphas)]
    table = {(row["method"], row["bn"], row["alpha"]): row["mean"] for row in grid}
    for m, bn in dict.fromkeys((row["method"], row["bn"]) for row in grid):
        lines.append(f"| {method_label(m, twins)} | {bn} | " + " | ".join(f"{table[(m, bn, a)]:.3f}" if (m, bn, a) in table else "" for a in alphas) + " |")
    lines += ["", f"<details><summary>All {len(grid_all)} points (mAP50-95 day / night)</summary>", "", f"| method | BN | α | {day} | {night} | mean | min |", "|---|---|---|---|---|---|---|"]
    for row in grid_all:
        lines.append(f"| {row['method']} | {row['bn']} | {row['alpha']:g} | {row['day']:.4f} | {row['night']:.4f} | {row['mean']:.4f} | {row['min']:.4f} |")
    lines += ["", "</details>", ""]

    if r["searches"]:
        lines += search_section(r["searches"], day, night)
    return lines


def search_section(searches: list[dict], day: str, night: str) -> list[str]:
    lines = [
        f"### Goal: one model at ≥ {GOAL} of the base by day and of the specialist at night",
        "",
        "Per-part scales (`scale={part: value}`) searched with `yolo_taskvec.search` (coordinate search, bounds 0..1, objective "
        "`min` of the two normalized scores unless stated), scored by the same evaluator. Best trial of each by min, then mean:",
        "",
        f"| run | trials | best point | {day} | {night} | {day} norm | {night} norm | min | mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in searches:
        point = ", ".join(f"{k}={v:g}" for k, v in e["best_point"].items())
        lines.append(f"| {e['name']} | {e['trials']} | {point} | {e['day']:.4f} | {e['night']:.4f} | {e['day_norm']:.4f} | {e['night_norm']:.4f} | **{e['min']:.4f}** | {e['mean']:.4f} |")
    top = max(searches, key=lambda e: (e["min"], e["mean"]))
    top_mean = max(searches, key=lambda e: e["mean"])
    reached = top["min"] >= GOAL
    lines += [
        "",
        f"Best found: **{', '.join(f'{k}={v:g}' for k, v in top['best_point'].items())}, bn={top['bn']}** → {day} {top['day_norm']:.4f} of the base, "
        f"{night} {top['night_norm']:.4f} of the specialist (min {top['min']:.4f}, mean {top['mean']:.4f}): the goal (min ≥ {GOAL}) is "
        + ("**reached**." if reached else f"**not reached** (short by {GOAL - top['min']:.4f} on the weaker side)."),
        f"Best normalized mean of any search trial: {top_mean['mean']:.4f} ({', '.join(f'{k}={v:g}' for k, v in top_mean['best_point'].items())}, bn={top_mean['bn']}).",
        "Scales are chosen on the same val images that are reported (the datasets have no separate test split), so the best",
        "search trial is an optimistic estimate.",
        "",
    ]
    return lines


def plot(runs: dict, path: Path) -> None:
    """Per BN policy: normalized mean vs α for every distinct method; then task arithmetic per dataset, and day vs
    night for every grid point and search trial with the Pareto front and the goal region."""
    import matplotlib
    from matplotlib.figure import Figure

    from yolo_taskvec import pareto_front

    r = runs.get("cuda") or runs["cpu"]
    grid, twins = distinct(r["grid"])
    day, night = r["settings"]["data"]
    policies = list(dict.fromkeys(row["bn"] for row in grid))
    methods = sorted(dict.fromkeys(row["method"] for row in grid), key=lambda m: (m != "task_arithmetic", m))
    cols = 2
    prow = (len(policies) + 1) // 2
    fig = Figure(figsize=(14, 4.6 * (prow + 1) + 1.6))
    axes = fig.subplots(prow + 1, cols, squeeze=False)
    colors = [c for c in PALETTE if c not in ("#000000", "#F0E442")] + ["#7F3C8D", "#999933"]  # no yellow lines on white
    markers = "os^vD<>phP"
    styles = {m: dict(color=colors[(i - 1) % len(colors)], marker=markers[i % len(markers)], linewidth=1.3, markersize=5) for i, m in enumerate(methods)}
    if "task_arithmetic" in styles:
        styles["task_arithmetic"].update(color="black", linewidth=2.4, marker="o", markersize=6)
    lo = min(0.5, min(row["mean"] for row in grid))
    for k, bn in enumerate(policies):
        ax = axes[k // cols][k % cols]
        for m in methods:
            pts = sorted((row["alpha"], row["mean"]) for row in grid if row["method"] == m and row["bn"] == bn)
            if pts:
                ax.plot(*zip(*pts), label=method_label(m, twins), **styles[m])
        ax.axhline(1.0, color="0.4", linewidth=0.9, linestyle="--", label="1.0 = each reference on its own data")
        ax.axhline(GOAL, color=PALETTE[2], linewidth=1.2, linestyle=":", label=f"goal {GOAL}")
        ax.set(title=f"bn={bn}", xlabel="α (slerp: t)", ylabel="normalized mean mAP50-95", ylim=(lo, 1.04), xlim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    for k in range(len(policies), prow * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 1 - 0.95 / fig.get_figheight()))
    left, right = axes[prow]
    for i, bn in enumerate(policies):
        pts = sorted((row["alpha"], row["day_norm"], row["night_norm"]) for row in grid if row["method"] == "task_arithmetic" and row["bn"] == bn)
        if pts:
            a, d, n = zip(*pts)
            left.plot(a, d, "o-", color=PALETTE[i % len(PALETTE)], label=f"{day} (day), bn={bn}")
            left.plot(a, n, "s--", color=PALETTE[i % len(PALETTE)], label=f"{night} (night), bn={bn}")
    left.axhline(1.0, color="0.4", linewidth=0.9, linestyle="--", label="1.0 = base80 by day, the specialist at night")
    left.axhline(GOAL, color=PALETTE[2], linewidth=1.2, linestyle=":", label=f"goal {GOAL}")
    left.set(title="task arithmetic, each dataset (day solid, night dashed)", xlabel="α", ylabel="normalized mAP50-95")
    left.grid(alpha=0.3)
    legend_below(left, ncol=2)
    search_rows = [row for e in r["searches"] for row in e["rows"]]
    xs = [row["day_norm"] for row in grid + search_rows]
    ys = [row["night_norm"] for row in grid + search_rows]
    right.scatter([row["day_norm"] for row in grid], [row["night_norm"] for row in grid], s=12, color=PALETTE[0], alpha=0.5, label="grid points (every method, BN policy, α)")
    if search_rows:
        right.scatter([row["day_norm"] for row in search_rows], [row["night_norm"] for row in search_rows], s=14, color=PALETTE[5], alpha=0.7, label="per-part search trials")
    front = pareto_front(list(zip(xs, ys)))
    right.plot([xs[i] for i in front], [ys[i] for i in front], "k-", linewidth=1, label="Pareto front")
    right.add_patch(matplotlib.patches.Rectangle((GOAL, GOAL), 0.2, 0.2, color=PALETTE[2], alpha=0.15, label=f"goal region (both ≥ {GOAL})"))
    right.set(title="day vs night, every point (normalized)", xlabel=f"{day} mAP50-95 ÷ base80's", ylabel=f"{night} mAP50-95 ÷ the night fine-tune's", xlim=(max(0.5, min(xs) - 0.02), 1.05), ylim=(max(0.5, min(ys) - 0.02), 1.1))
    right.grid(alpha=0.3)
    legend_below(right, ncol=2)
    st = r["settings"]
    where = f"selected on {st['select']}, reported on val" if st.get("select") else "α and search trials scored on the reported val images (no separate selection split in this run)"
    figure_title(fig, "base80 + α·τ(fruit-night): normalized mean mAP50-95 per merge method and BatchNorm policy", r,
                 f"{day} val ÷ base80, {night} val ÷ the night fine-tune, imgsz {st['imgsz']}; {where}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.15 / fig.get_figheight()))
    save_figure(fig, path)


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_daynight.py")
    if as_bool(args["render"]):
        render_outputs("daynight", Path(args["out"]), markdown=markdown, plot=plot)
        return
    os.environ.setdefault("YOLO_OFFLINE", "1")
    result = run(args)
    write_outputs("daynight", result, Path(args["out"]), kind=device_kind(args["device"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
