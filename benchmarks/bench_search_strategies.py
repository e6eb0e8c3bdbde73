"""Search strategies at equal budgets: coordinate, random, TPE and CMA-ES on the day/night per-part search.

The problem: base80 + τ(fruit-night) with one scale per part (``space=parts``: backbone, neck, head in 0..1),
objective ``min`` of the two normalized mAP50-95 (fruit80 / base80's, fruit80-night / the night fine-tune's),
BatchNorm statistics merged (``bn=merge``). Every trial is scored twice by the run's one Evaluator:

* on the **selection split** (``select=train:0.2``: a fixed, seeded 20 % of each dataset's TRAIN images), which is
  the only thing a strategy sees (it maximizes the selection objective);
* on the **val split**, which is reported and never used to choose.

Each strategy gets the same budget of trials; the stochastic ones (random, TPE, CMA-ES) run with several seeds
(the recipe's ``seed``), coordinate search is deterministic (one run). For each run, after every trial, the point
with the best selection objective so far is the one the search would return: the figure and the tables give its
selection objective and its val objective (its honest estimate) against the number of trials.

    python benchmarks/bench_search_strategies.py                         # CPU, budget 20, seeds 0,1,2
    python benchmarks/bench_search_strategies.py budget=30 seeds=0,1,2,3,4 device=0

Writes ``benchmarks/results/search_strategies.{md,json,png}``. Run folders (resumable) go to ``work=``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, environment, environment_markdown, load_average, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "tuned": "yolo26n-fruit-night.pt",
    "data": f"{REPO / 'datasets' / 'fruit80.yaml'},{REPO / 'datasets' / 'fruit80-night.yaml'}",
    "strategies": "coordinate,random,tpe,cmaes",
    "seeds": "0,1,2",
    "budget": "20",
    "objective": "min",
    "select": "train:0.2",
    "imgsz": "160",
    "batch": "16",
    "bn": "merge",
    "device": "cpu",
    "threads": "",  # CPU inference threads ("" = the Evaluator's default: all logical CPUs)
    "work": "/tmp/yolo-taskvec-bench-search",
    "out": str(RESULTS),
    "render": "false",  # true: rebuild the .md/.png from the stored .json, measure nothing
}
DETERMINISTIC = ("coordinate",)
COLORS = {"coordinate": "black", "random": "tab:grey", "tpe": "tab:blue", "cmaes": "tab:red"}
LABELS = {"coordinate": "coordinate (deterministic)", "random": "random", "tpe": "TPE (Optuna)", "cmaes": "CMA-ES (Optuna)"}


def chosen_curve(rows: list[dict], budget: int) -> list[dict]:
    """After each trial: the trial a search would return so far (best selection objective, first of equals)."""
    curve, best = [], None
    for t, row in enumerate(sorted(rows, key=lambda r: r["trial"])[:budget], start=1):
        if best is None or row["select_objective"] > best["select_objective"]:
            best = row
        curve.append({"trials": t, "select": best["select_objective"], "val": best["objective"], "point": {k: best[k] for k in ("backbone", "neck", "head")}})
    return curve


def run(args: dict[str, str]) -> dict:
    from yolo_taskvec import search

    data = [d for d in args["data"].split(",") if d]
    budget = int(args["budget"])
    seeds = [int(s) for s in args["seeds"].split(",") if s.strip()]
    env = environment(args["device"])
    print(f"{env['machine']}\n{env['device']}\n{env['versions']}\nload average at start: {env['load_average_start']}")
    common = dict(space="parts", budget=budget, objective=args["objective"], select=args["select"], reference=["base", args["tuned"]], imgsz=int(args["imgsz"]),
                  batch=int(args["batch"]), bn=args["bn"], device=args["device"], verbose=False, plot=False, exist_ok=True)
    if args["threads"]:
        common["threads"] = int(args["threads"])
    runs = []
    for strategy in [s.strip() for s in args["strategies"].split(",") if s.strip()]:
        for seed in seeds[:1] if strategy in DETERMINISTIC else seeds:
            folder = Path(args["work"]) / f"{strategy}-seed{seed}"
            t0 = time.perf_counter()
            res = search(args["base"], [args["tuned"]], data, strategy=strategy, seed=seed, out=folder, **common)
            seconds = time.perf_counter() - t0
            rows = [{k: v for k, v in r.items()} for r in res.rows]
            curve = chosen_curve(rows, budget)
            final = curve[-1]
            runs.append({"strategy": strategy, "seed": seed, "trials": len(rows), "evaluated_now": res.evaluated, "seconds": round(seconds, 1), "rows": rows, "curve": curve,
                         "chosen": final["point"], "select": final["select"], "val": final["val"], "best_val_any_trial": max(r["objective"] for r in rows)})
            print(f"{strategy:10s} seed {seed}: chosen {final['point']} -> selection {final['select']:.4f}, val {final['val']:.4f} ({len(rows)} trials, {seconds:.0f} s)")
    names = [Path(d).stem for d in data]  # a dataset's name is its yaml's stem
    settings = {k: args[k] for k in ("base", "tuned", "budget", "objective", "select", "imgsz", "batch", "bn", "device", "threads")}
    settings.update(data=names, seeds=seeds, space={"backbone": [0, 1], "neck": [0, 1], "head": [0, 1]})
    references = res.references if runs else {}
    return {"environment": env, "settings": settings, "references": references, "reference_for": res.reference_for, "runs": runs, "load_average_end": load_average()}


# ----------------------------------------------------------------------------------------------- outputs
def _summary(result: dict) -> list[dict]:
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in result["runs"]):
        mine = [r for r in result["runs"] if r["strategy"] == strategy]
        vals, sels = [r["val"] for r in mine], [r["select"] for r in mine]
        out.append({"strategy": strategy, "runs": len(mine), "select_mean": statistics.fmean(sels), "val_mean": statistics.fmean(vals), "val_min": min(vals), "val_max": max(vals),
                    "val_sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "seconds": statistics.fmean(r["seconds"] for r in mine)})
    return out


def markdown(runs: dict) -> str:
    lines = [
        "# Search strategies at equal budgets: day/night per-part search",
        "",
        "base80 + τ(fruit-night) with one scale per part (backbone, neck, head ∈ [0, 1]); objective: **min** of the two",
        "normalized mAP50-95 (fruit80 / base80, fruit80-night / the night fine-tune). Each strategy **chooses on the",
        "selection split** (`select=train:0.2`: a seeded 20 % of each dataset's train images) and the chosen trial is",
        "**reported on val** (never used to choose). Equal budget of trials per run; random, TPE and CMA-ES with",
        "several seeds, coordinate search is deterministic. Regenerate: `python benchmarks/bench_search_strategies.py`.",
        "",
    ]
    for kind, r in runs.items():
        st = r["settings"]
        lines += [f"## {kind.upper()}", "", *environment_markdown(r["environment"], r.get("load_average_end"))]
        lines += [f"Settings: budget {st['budget']} trials, seeds {', '.join(map(str, st['seeds']))}, imgsz {st['imgsz']}, batch {st['batch']}, bn={st['bn']}, objective {st['objective']}, "
                  f"selection {st['select']}, threads {st['threads'] or 'all'}.", "",
                  "Command: `python benchmarks/bench_search_strategies.py" + "".join(f" {k}={st[k]}" for k in ("budget", "imgsz", "threads", "device") if st[k] and str(st[k]) != DEFAULTS[k]) + "`", ""]
        refs = r.get("reference_for", {})
        if refs:
            lines += ["References (val): " + "; ".join(f"{ds}: {label} {r['references'][label][ds]['map50_95']:.4f}" for ds, label in refs.items()), ""]
        lines += ["| strategy | runs | selection objective of the chosen trial (mean) | **val objective of the chosen trial** (mean ± sd) | val min – max | s per run |", "|---|---|---|---|---|---|"]
        for s in _summary(r):
            lines.append(f"| {LABELS.get(s['strategy'], s['strategy'])} | {s['runs']} | {s['select_mean']:.4f} | **{s['val_mean']:.4f}** ± {s['val_sd']:.4f} | {s['val_min']:.4f} – {s['val_max']:.4f} | {s['seconds']:.0f} |")
        lines += ["", "Every run (the chosen point is the best selection objective within the budget):", "",
                  "| strategy | seed | chosen backbone / neck / head | selection objective | val objective | best val of any trial (not choosable) | trials to the chosen one |", "|---|---|---|---|---|---|---|"]
        for run_ in r["runs"]:
            p = run_["chosen"]
            first = next(c["trials"] for c in run_["curve"] if c["point"] == p and c["select"] == run_["select"])
            lines.append(f"| {run_['strategy']} | {run_['seed']} | {p['backbone']:.3f} / {p['neck']:.3f} / {p['head']:.3f} | {run_['select']:.4f} | {run_['val']:.4f} | {run_['best_val_any_trial']:.4f} | {first} |")
        checkpoints = sorted({min(int(st["budget"]), t) for t in (5, 10, 15, 20, 30, 40, int(st["budget"]))})
        lines += ["", "Val objective of the trial chosen so far, by trials spent (mean over seeds):", "", "| strategy | " + " | ".join(f"{t} trials" for t in checkpoints) + " |", "|---|" + "---|" * len(checkpoints)]
        for strategy in dict.fromkeys(x["strategy"] for x in r["runs"]):
            mine = [x for x in r["runs"] if x["strategy"] == strategy]
            cells = [statistics.fmean(x["curve"][min(t, len(x["curve"])) - 1]["val"] for x in mine) for t in checkpoints]
            lines.append(f"| {LABELS.get(strategy, strategy)} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
        lines += ["", "Notes: the selection objective is what each strategy maximizes; the val objective of its choice is the",
                  "figure to compare (a choice that only fits the selection images does not carry over). The 'best val of any",
                  "trial' column is an oracle that no strategy can use (it would be chosen on the reported data) and is listed",
                  "only to show how much of the gap is selection noise. Optuna's TPE samples its first 10 trials at random",
                  "(its default `n_startup_trials`) after the start point, and CMA-ES starts from the middle of the bounds",
                  "with σ₀ = 1/6 of the range, so at small budgets both behave much like random search; coordinate search",
                  "walks from the start along one part at a time. 's per run' is wall time on the shared machine (its load",
                  "changed during the run), not a property of the strategy: every trial costs the same merge and scoring.", ""]
    return "\n".join(lines)


def plot(runs: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    r = runs.get("cuda") or runs["cpu"]
    st = r["settings"]
    fig = Figure(figsize=(13, 5.2))
    left, right = fig.subplots(1, 2, sharey=False)
    for strategy in dict.fromkeys(x["strategy"] for x in r["runs"]):
        mine = [x for x in r["runs"] if x["strategy"] == strategy]
        n = min(len(x["curve"]) for x in mine)
        ts = list(range(1, n + 1))
        for ax, key in ((left, "select"), (right, "val")):
            per = [[x["curve"][t - 1][key] for x in mine] for t in ts]
            mean = [statistics.fmean(v) for v in per]
            color = COLORS.get(strategy)
            label = f"{LABELS.get(strategy, strategy)}" + (f" (mean of {len(mine)} seeds, band min–max)" if len(mine) > 1 else "")
            ax.step(ts, mean, where="post", color=color, linewidth=2.2 if strategy == "coordinate" else 1.8, label=label)
            if len(mine) > 1:
                ax.fill_between(ts, [min(v) for v in per], [max(v) for v in per], step="post", color=color, alpha=0.15)
    left.set(title="what the strategy sees: selection objective of its best trial so far", xlabel="trials spent", ylabel=f"{st['objective']} normalized mAP50-95 on the selection split")
    right.set(title="what it delivers: val objective of that same trial", xlabel="trials spent", ylabel=f"{st['objective']} normalized mAP50-95 on val (reported)")
    lo = min(min(c["val"] for x in r["runs"] for c in x["curve"]), min(c["select"] for x in r["runs"] for c in x["curve"]))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xlim(1, int(st["budget"]))
        ax.set_ylim(max(0.0, lo - 0.01), 1.01)
        ax.axhline(1.0, color="green", linewidth=0.8, linestyle=":")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"Search strategies at a budget of {st['budget']} trials: base80 + per-part scales of τ(fruit-night), chosen on {st['select']} of train, reported on val "
                 f"(imgsz {st['imgsz']}, {r['environment']['device'].split(' (')[0]})", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    save_figure(fig, path)


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_search_strategies.py")
    if args["render"].lower() in ("1", "true", "yes"):
        render_outputs("search_strategies", Path(args["out"]), markdown=markdown, plot=plot)
        return
    result = run(args)
    kind = "cuda" if not args["device"].startswith("cpu") else "cpu"
    write_outputs("search_strategies", result, Path(args["out"]), kind=kind, markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
