"""Day/night on fruit: base80 + α·τ(fruit-night) per merge method × BatchNorm policy, then a per-part search for one
merged model at ≥ 0.99 of the base by day and of the night specialist at night.

Selection vs report: every choice (α per method × BatchNorm policy, the method per policy, the search's point) is
made on the SELECTION split (``select=``, default ``train:0.2``: a seeded 20 % of each dataset's train images, 48 of
240 here) and REPORTED on the val split (60 images each), never chosen on the numbers it reports. Every table shows
both columns. The selection objective is normalized by the references on the selection images too: the night
specialist was fine-tuned on those images, so selection values sit below the val ones; only their order is used.

* τ = yolo26n-fruit-night − yolo26n-base80 (every tensor, BatchNorm statistics included).
* Scored on fruit80 (day) and fruit80-night (night), imgsz 320, mAP50-95. Normalized: day / base80's day score,
  night / the night fine-tune's night score, on the same images by the same evaluator; the grid's objective is their
  mean, the search's their ``min`` (the goal is min ≥ 0.99).
* Every point is built and scored by ``yolo_taskvec.sweep`` / ``yolo_taskvec.search`` (``select=``, ``reference=``),
  the choice is ``RunResult.best`` (the highest ``select_objective``).
* Methods: ``methods=`` (default task_arithmetic, ties, dare_ties, tsv, iso_c; ``methods=all`` for every registered
  method that can merge one vector). α over ``alphas_ta`` for task_arithmetic and the coarser ``alphas`` for the
  others. ``slerp`` needs two models: it interpolates between the base itself (a zero vector) and the fine-tune, with
  its ``t`` = α as the swept axis. ``consensus`` needs ≥ 2 tasks and is skipped (see ``SKIPPED``).
* BatchNorm policies (``bn=``, any of ``yolo_taskvec.BN_POLICIES``): default ``merge``, ``mixture``, ``geometric``;
  ``recalibrate`` re-estimates statistics on fruit80 train + fruit80-night train images (``bn_batches`` of 16).
* Goal search (``search=true``): ``yolo_taskvec.search`` over per-part scales (``space``, default backbone, neck,
  head), coordinate strategy, objective ``min``, ``budget`` trials, BatchNorm policy ``search_bn``.
* Headline intervals: the chosen model of each BatchNorm policy, the search's chosen point and the plain reference
  (task arithmetic α = 0.5, bn=merge) are scored again on val with per-image statistics; 95 % percentile bootstrap
  intervals (``resamples`` draws of the val images, ``yolo_taskvec.bootstrap``) of the val objective and of its
  difference to the reference (paired: the same resampled images for both models and the normalizers).

    OMP_NUM_THREADS=1 python benchmarks/bench_daynight.py            # CPU default: ~125 scored candidates, about 30 min on one idle thread (estimate; ~50 min on a loaded 2-core VM)
    python benchmarks/bench_daynight.py methods=all bn=merge,mixture,geometric,base,recalibrate budget=30  # full (hours on CPU)
    python benchmarks/bench_daynight.py device=0                     # GPU
    python benchmarks/bench_daynight.py quick=true out=/tmp/dn       # smoke test: 2 methods, 2 policies, 2 α, tiny search

Writes ``benchmarks/results/daynight.{md,json,png}`` (``out=`` another folder). ``work=DIR`` keeps the per-sweep/search
results files there, so an interrupted run resumes without recomputing finished points (by default a temporary
folder is used). ``render=true`` rebuilds the .md/.png from the stored .json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    DATASETS,
    PALETTE,
    RESULTS,
    as_bool,
    as_floats,
    device_kind,
    environment,
    environment_markdown,
    figure_title,
    legend_below,
    load_average,
    no_nms_time_limit,
    parse_args,
    render_outputs,
    save_figure,
    write_outputs,
)

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "tuned": "yolo26n-fruit-night.pt",
    "day": str(DATASETS / "fruit80.yaml"),
    "night": str(DATASETS / "fruit80-night.yaml"),
    "select": "train:0.2",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "methods": "task_arithmetic,ties,dare_ties,tsv,iso_c",
    "bn": "merge,mixture,geometric",
    "alphas_ta": "0:1:0.1",
    "alphas": "0.2,0.5,0.8",
    "bn_batches": "16",
    "search": "true",
    "search_bn": "merge",
    "space": "backbone,neck,head",
    "budget": "20",
    "resamples": "1000",
    "quick": "false",
    "work": "",
    "out": str(RESULTS),
    "render": "false",  # true: rebuild the .md/.png from the stored .json, measure nothing
}
QUICK = {"methods": "task_arithmetic,ties", "bn": "merge,geometric", "alphas_ta": "0.5,1", "alphas": "0.5,1", "bn_batches": "2", "budget": "3", "resamples": "200"}
SKIPPED = {
    "consensus": "needs ≥ 2 task vectors: TALL-mask consensus keeps the entries that at least k tasks mark; with one "
    "vector (or the base's zero vector as a second) k=1 is plain task arithmetic and k ≥ 2 keeps nothing.",
}
PAIR_METHODS = {"slerp": "t"}  # methods of two models: interpolate base (zero vector) → fine-tune, the parameter is α
GOAL = 0.99
REFERENCE = {"method": "task_arithmetic", "bn": "merge", "alpha": 0.5}  # the plain merge every headline row is compared to
REFERENCE_LABEL = "task arithmetic α=0.5, bn=merge"


# ----------------------------------------------------------------------------------------------- rows
def point_row(row: dict[str, Any], day: str, night: str) -> dict[str, float]:
    """The measured numbers of one sweep/search row: val (reported) and selection (``sel_*``) normalized scores."""
    dn, nn = row[f"{day}/norm"], row[f"{night}/norm"]
    sd, sn = row[f"{day}.select/norm"], row[f"{night}.select/norm"]
    return {"day": row[f"{day}/map50_95"], "night": row[f"{night}/map50_95"], "day_norm": dn, "night_norm": nn, "mean": (dn + nn) / 2, "min": min(dn, nn),
            "sel_day_norm": sd, "sel_night_norm": sn, "sel_mean": (sd + sn) / 2, "sel_min": min(sd, sn)}


def split_sizes(args: dict[str, str]) -> dict[str, Any]:
    """Images per dataset in the selection split (``train:<f>``: the rule of ``select=``) and in val."""
    from yolo_taskvec import image_files

    out: dict[str, Any] = {"select": args["select"], "select_images": {}, "val_images": {}}
    for yaml in (args["day"], args["night"]):
        name = Path(yaml).stem
        out["val_images"][name] = len(image_files(yaml, "val"))
        if args["select"].startswith("train:"):
            out["select_images"][name] = max(1, round(float(args["select"].split(":", 1)[1]) * len(image_files(yaml, "train"))))
    return out


def where_selected(st: dict[str, Any]) -> str:
    """``a seeded 20 % of each dataset's train images (48 / 48), reported on val (60 / 60)``."""
    sel, val = st["select_images"], st["val_images"]
    if st["select"].startswith("train:"):
        what = f"a seeded {float(st['select'].split(':', 1)[1]):.0%} of each dataset's train images ({' / '.join(str(n) for n in sel.values())} images)"
    else:
        what = f"the selection datasets {st['select']}"
    return f"chosen on {what}, reported on val ({' / '.join(str(n) for n in val.values())} images)"


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


def scoring_kwargs(args: dict[str, str], reference: dict[str, str], bn: str) -> dict[str, Any]:
    """Keywords of every sweep/search: the selection split, references, val settings (and bn_data for recalibrate)."""
    kw = {"select": args["select"], "reference": reference, "imgsz": int(args["imgsz"]), "batch": int(args["batch"]), "device": args["device"], "plot": False, "verbose": False}
    if bn == "recalibrate":
        kw.update(bn_data=[args["day"], args["night"]], bn_batches=int(args["bn_batches"]))
    return kw


def run_grid(args, base, tau, zero, reference, methods, policies, folder: Path, verbose: bool) -> tuple[list[dict], dict]:
    """One ``sweep`` per (method, BN policy), α chosen on the selection split; returns the rows and the RunResults."""
    from ultralytics.utils import TQDM

    from yolo_taskvec import sweep

    data = [args["day"], args["night"]]
    day, night = (Path(d).stem for d in data)
    rows, results = [], {}
    for method, bn in TQDM([(m, bn) for m in methods for bn in policies], desc="methods × BN policies", disable=not verbose):
        t0 = time.perf_counter()
        kw = scoring_kwargs(args, reference, bn)
        alphas = as_floats(args["alphas_ta"] if method == "task_arithmetic" else args["alphas"])
        if method in PAIR_METHODS:  # the interpolation position is the method's parameter, swept as an axis
            axis = PAIR_METHODS[method]
            res = sweep(base, [zero, tau], data, scales={axis: alphas}, method=method, bn=bn, objective="mean", out=folder / f"{method}-{bn}", **kw)
        else:
            axis = "scale"
            res = sweep(base, [tau], data, scales=alphas, method=method, bn=bn, objective="mean", out=folder / f"{method}-{bn}", **kw)
        results[(method, bn)] = res
        chosen = res.best_index
        for i, r in enumerate(res.rows):
            if r.get("refused"):
                rows.append({"method": method, "bn": bn, "alpha": r[axis], "refused": r["refused"]})
                continue
            rows.append({"method": method, "bn": bn, "alpha": r[axis], "chosen": i == chosen, **point_row(r, day, night)})
        best = next(x for x in rows if x["method"] == method and x["bn"] == bn and x.get("chosen"))
        print(f"{method:>17} bn={bn:<11} {time.perf_counter() - t0:6.1f}s  α={best['alpha']:g} chosen on selection (mean {best['sel_mean']:.4f}); "
              f"val: day {best['day_norm']:.4f} night {best['night_norm']:.4f} -> mean {best['mean']:.4f}, min {best['min']:.4f}")
    return rows, results


# ----------------------------------------------------------------------------------------------- goal search
def run_search(args, base, tau, reference, folder: Path, verbose: bool) -> tuple[dict, Any]:
    """The per-part search (objective ``min``), its point chosen on the selection split."""
    from yolo_taskvec import search

    data = [args["day"], args["night"]]
    day, night = (Path(d).stem for d in data)
    space = [s.strip() for s in args["space"].split(",") if s.strip()]
    bn = args["search_bn"]
    kw = {**scoring_kwargs(args, reference, bn), "verbose": verbose}
    res = search(base, [tau], data, space=space, budget=int(args["budget"]), objective="min", bn=bn, out=folder / f"search-{bn}", **kw)
    chosen = res.best_index
    rows = [{"trial": r["trial"], **{a: r[a] for a in space}, "chosen": i == chosen, **point_row(r, day, night)} for i, r in enumerate(res.rows) if not r.get("refused")]
    best = rows[[i for i, r in enumerate(res.rows) if not r.get("refused")].index(chosen)]
    entry = {"space": space, "bn": bn, "objective": "min", "trials": len(res.rows), "chosen_point": {a: best[a] for a in space}, "chosen": best, "rows": rows,
             "val_best_min": max(r["min"] for r in rows)}
    point = ", ".join(f"{a}={best[a]:g}" for a in space)
    print(f"search {'/'.join(space)}, bn={bn}: {len(res.rows)} trials, chosen on selection {point} (min {best['sel_min']:.4f}); "
          f"val: day {best['day_norm']:.4f} night {best['night_norm']:.4f} -> min {best['min']:.4f}, mean {best['mean']:.4f}")
    return entry, res


# ----------------------------------------------------------------------------------------------- headline intervals
def headline_choices(grid: list[dict], policies: list[str]) -> list[dict]:
    """Per BN policy: the (method, α) with the highest selection objective over every method's chosen α."""
    out = []
    for bn in policies:
        chosen = [r for r in grid if r["bn"] == bn and r.get("chosen")]
        if chosen:
            out.append(max(chosen, key=lambda r: r["sel_mean"]))
    return out


def headline_intervals(args, models: dict[str, Any], rows: dict[str, dict], reference_model: Any) -> dict[str, dict]:
    """Val bootstrap intervals (95 %, resampling each dataset's val images, paired across models) of each headline
    model's normalized mean (and min), and of its mean minus the reference merge's, from one per-image Evaluator."""
    from yolo_taskvec import Evaluator, bootstrap

    data = [args["day"], args["night"]]
    day, night = (Path(d).stem for d in data)
    ev = Evaluator(data, imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], progress=False, per_image=True)
    stats: dict[str, dict] = {}
    for name, model in {"base": args["base"], "tuned": args["tuned"], "reference": reference_model, **models}.items():
        ev(model)
        stats[name] = dict(ev.image_stats)
    kw = {"resamples": int(args["resamples"]), "seed": 0}

    def norm(s: dict, who: str) -> tuple[float, float]:
        return s[(who, day)]["map50_95"] / s[("base", day)]["map50_95"], s[(who, night)]["map50_95"] / s[("tuned", night)]["map50_95"]

    def samples(*who: str) -> dict:
        out = {("base", day): stats["base"][day], ("tuned", night): stats["tuned"][night]}
        out.update({(w, ds): stats[w][ds] for w in who for ds in (day, night)})
        return out

    mean = lambda s, w: sum(norm(s, w)) / 2
    out = {"reference": {"mean": bootstrap(samples("reference"), lambda s: mean(s, "reference"), **kw).to_dict(),
                         "min": bootstrap(samples("reference"), lambda s: min(norm(s, "reference")), **kw).to_dict()}}
    for name in models:
        out[name] = {
            "mean": bootstrap(samples(name), lambda s, n=name: mean(s, n), **kw).to_dict(),
            "min": bootstrap(samples(name), lambda s, n=name: min(norm(s, n)), **kw).to_dict(),
            "delta_mean": bootstrap(samples(name, "reference"), lambda s, n=name: mean(s, n) - mean(s, "reference"), **kw).to_dict(),
        }
        sweep_value = rows[name]["mean"]
        if abs(out[name]["mean"]["value"] - sweep_value) > 1e-6:  # same images, same evaluator settings: must agree
            print(f"warning: {name}: the interval run scores val mean {out[name]['mean']['value']:.6f}, the sweep {sweep_value:.6f}")
    return out


# ----------------------------------------------------------------------------------------------- run
def run(args: dict[str, str]) -> dict:
    import torch

    from yolo_taskvec import (
        BN_POLICIES,
        TaskVector,
        load_model,
        merge,
        quiet_ultralytics,
    )

    quick = as_bool(args["quick"])
    if quick:
        args = {**args, **{k: v for k, v in QUICK.items() if args[k] == DEFAULTS[k]}}
    policies = [b.strip() for b in args["bn"].split(",") if b.strip()]
    bad = [b for b in [*policies, args["search_bn"]] if b not in BN_POLICIES]
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
    reference = {day: "base", night: args["tuned"]}
    sizes = split_sizes(args)
    verbose = sys.stdout.isatty()
    work = Path(args["work"]) if args["work"] else None
    with tempfile.TemporaryDirectory(prefix="bench-daynight-") as tmp, quiet_ultralytics(), no_nms_time_limit():
        folder = work or Path(tmp)
        same = equivalences(base, tau, zero, methods)
        for m, other in same.items():
            print(f"{m} merges one vector to exactly the weights of {other}")
        grid, results = run_grid(args, base, tau, zero, reference, methods, policies, folder, verbose)
        any_result = next(iter(results.values()))
        refs = {"base": {ds: any_result.references["base"][ds]["map50_95"] for ds in (day, night)},
                "tuned": {ds: any_result.references[Path(args["tuned"]).stem][ds]["map50_95"] for ds in (day, night)}}
        search_entry, search_result = run_search(args, base, tau, reference, folder, verbose) if as_bool(args["search"]) else (None, None)
        t0 = time.perf_counter()
        choices = headline_choices(grid, policies)
        models = {f"{c['method']}, bn={c['bn']}, α={c['alpha']:g}": results[(c["method"], c["bn"])].best_model() for c in choices}
        rows = {f"{c['method']}, bn={c['bn']}, α={c['alpha']:g}": c for c in choices}
        if search_entry is not None:
            name = f"search ({', '.join(f'{k}={v:g}' for k, v in search_entry['chosen_point'].items())}), bn={search_entry['bn']}"
            models[name], rows[name] = search_result.best_model(), search_entry["chosen"]
        reference_model = merge(args["base"], [tau], scale=REFERENCE["alpha"], method=REFERENCE["method"], bn=REFERENCE["bn"])
        intervals = headline_intervals(args, models, rows, reference_model)
        interval_s = time.perf_counter() - t0
    headline = [{"name": name, "row": rows[name], "kind": "search" if name.startswith("search") else "grid", **intervals[name]} for name in models]
    settings = {
        "base": args["base"], "tuned": args["tuned"], "data": [day, night], "imgsz": int(args["imgsz"]), "batch": int(args["batch"]), "device": args["device"], **sizes,
        "alphas_ta": as_floats(args["alphas_ta"]), "alphas": as_floats(args["alphas"]), "bn_policies": policies, "bn_data": [f"{day} train", f"{night} train"],
        "bn_batches": int(args["bn_batches"]), "budget": int(args["budget"]), "search_bn": args["search_bn"], "quick": quick, "torch_threads": torch.get_num_threads(),
        "methods": methods, "method_params": method_params(methods), "resamples": int(args["resamples"]), "reference": REFERENCE_LABEL,
    }
    summary = {
        "references": refs, "skipped": skipped, "identical": same, "interval_s": round(interval_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1), "load_average_end": load_average(),
    }
    return {"environment": env, "settings": settings, "summary": summary, "grid": grid, "search": search_entry, "headline": headline,
            "reference_interval": intervals["reference"]}


def method_params(methods: list[str]) -> dict[str, dict]:
    from yolo_taskvec import get_method

    return {m: {p.name: p.default for p in get_method(m).params} for m in methods}


# ----------------------------------------------------------------------------------------------- analysis
def chosen_rows(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """The row chosen on the selection split for each (method, bn)."""
    return {(r["method"], r["bn"]): r for r in rows if r.get("chosen")}


def hindsight_rows(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """The row with the best VAL mean for each (method, bn): shown only to measure how optimistic a val choice is."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        if "refused" not in r and ((r["method"], r["bn"]) not in out or r["mean"] > out[(r["method"], r["bn"])]["mean"]):
            out[(r["method"], r["bn"])] = r
    return out


def distinct(rows: list[dict]) -> tuple[list[dict], dict[str, list[str]]]:
    """Rows of one method per group of methods that scored identically at every (BN policy, α) on both splits, and
    each kept method's twins (task_arithmetic represents its group when it is in one)."""
    curves: dict[str, dict] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        curves[m] = {(r["bn"], r["alpha"]): (r.get("day"), r.get("night"), r.get("sel_mean")) for r in rows if r["method"] == m}

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


def ci(d: dict, digits: int = 4) -> str:
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def signed_ci(d: dict, digits: int = 4) -> str:
    return f"{d['value']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def resolved(d: dict) -> str:
    return "yes" if not d["low"] <= 0.0 <= d["high"] else "no (0 inside)"


# ----------------------------------------------------------------------------------------------- outputs
def markdown(runs: dict) -> str:
    lines = [
        "# Day/night on fruit: base80 + α·τ(fruit-night), merge methods × BatchNorm policies",
        "",
        "τ = `yolo26n-fruit-night.pt` − `yolo26n-base80.pt`. mAP50-95 on fruit80 (day) and fruit80-night (night), imgsz 320.",
        "*norm*: day / base80's day score and night / the night fine-tune's night score (same images, same evaluator);",
        "*mean* and *min* of the two. Goal: one model with min ≥ 0.99. Every point is merged and scored by",
        "`yolo_taskvec.sweep`/`search` with `select=`: **every choice (α, method, search point) is made on the selection",
        "split and reported on val**, and tables show both. Intervals: 95 % percentile bootstrap over the val images.",
        "Regenerate: `OMP_NUM_THREADS=1 python benchmarks/bench_daynight.py` (CPU) or `python benchmarks/bench_daynight.py device=0` (GPU).",
        "",
    ]
    for kind, r in runs.items():
        lines += section(kind, r)
    if "cuda" not in runs:
        lines += ["No GPU figures yet (no GPU was available for this run): `python benchmarks/bench_daynight.py device=0` adds them.", ""]
    return "\n".join(lines)


def section(kind: str, r: dict) -> list[str]:
    env, st, s = r["environment"], r["settings"], r["summary"]
    day, night = st["data"]
    refs = s["references"]
    grid_all = [x for x in r["grid"] if "refused" not in x]
    lines = [f"## {kind.upper()}" + (" (quick smoke run: tiny grid, not a result)" if st.get("quick") else ""), "", *environment_markdown(env, s["load_average_end"])]
    lines += [
        (f"**Split**: {where_selected(st)}. The selection objective is normalized by the references on the selection images; the "
        "night fine-tune was trained on them, so selection values sit below the val ones and only their order is used."),
        "",
        *selection_bias(r),
        f"Settings: imgsz {st['imgsz']}, batch {st['batch']}; methods {', '.join(st['methods'])}; BN policies {', '.join(st['bn_policies'])}; "
        f"α grid {', '.join(f'{a:g}' for a in st['alphas_ta'])} for task_arithmetic and {', '.join(f'{a:g}' for a in st['alphas'])} for the other methods"
        + (f"; `recalibrate` re-estimates the statistics on {' + '.join(st['bn_data'])} images ({st['bn_batches']} batches of 16)" if "recalibrate" in st["bn_policies"] else "")
        + f". {len(r['grid'])} grid points" + (f" + {r['search']['trials']} search trials" if r.get("search") else "")
        + f"; {s['total_s'] / 60:.0f} min in all ({s['interval_s'] / 60:.1f} min of it for the intervals). Bootstrap: {st['resamples']} resamples of the val images.",
        "",
        (f"References (same run, val): base80 {day} **{refs['base'][day]:.4f}**, {night} {refs['base'][night]:.4f}; "
        f"fruit-night fine-tune {day} {refs['tuned'][day]:.4f}, {night} **{refs['tuned'][night]:.4f}**."),
        "",
        "Method parameters (defaults): " + "; ".join(f"`{m}` {', '.join(f'{k}={v}' for k, v in p.items())}" for m, p in st["method_params"].items() if p) + ".",
        "",
    ]
    if s["skipped"]:
        lines += ["Not run on a single vector: " + " ".join(f"`{m}`: {why}" for m, why in s["skipped"].items()), ""]
    if "slerp" in st["methods"]:
        lines += ["`slerp` (two models) interpolates spherically between the base itself (a zero vector) and the fine-tune, t = α at scale 1.", ""]
    if s["identical"]:
        lines += ["With one vector these methods give bit-identical weights to another (checked on the merged tensors at α = 0.5): "
                  + ", ".join(f"`{m}` = `{o}`" for m, o in s["identical"].items()) + ".", ""]
    lines += headline_section(r)

    grid, twins = distinct(grid_all)
    if any(twins.values()):
        lines += [f"Methods that scored identically at every BN policy and α (both splits) are shown once: {'; '.join(method_label(m, twins) for m, t in twins.items() if t)}.", ""]
    chosen, hindsight = chosen_rows(grid), hindsight_rows(grid)
    policies = list(dict.fromkeys(x["bn"] for x in grid))
    lines += ["### BatchNorm policies", "", f"Per policy over the {len(twins)} distinct methods; every α and method chosen on the selection split, reported on val.", "",
              "| BN policy | chosen method, α | selection mean | **val mean** | task arithmetic: chosen α, val mean | task arithmetic α=0.5: val day / night (mean) | val mean over methods (each at its chosen α) |",
              "|---|---|---|---|---|---|---|"]
    for bn in policies:
        mine = [c for (m, b), c in chosen.items() if b == bn]
        top = max(mine, key=lambda c: c["sel_mean"])
        ta = chosen.get(("task_arithmetic", bn))
        half = next((x for x in grid if x["method"] == "task_arithmetic" and x["bn"] == bn and abs(x["alpha"] - 0.5) < 1e-9), None)
        lines.append(f"| {bn} | {top['method']}, {top['alpha']:g} | {top['sel_mean']:.4f} | **{top['mean']:.4f}** | "
                     + (f"{ta['alpha']:g}, {ta['mean']:.4f}" if ta else "-") + " | "
                     + (f"{half['day']:.3f} / {half['night']:.3f} ({half['mean']:.4f})" if half else "-") + f" | {sum(c['mean'] for c in mine) / len(mine):.4f} |")
    lines += ["", "### α per method and BatchNorm policy (chosen on the selection split, reported on val)", "",
              "The last two columns are hindsight, for reading only: the α that would score best on val and its val mean (choosing",
              "there would report an optimistic number).", "",
              f"| method | BN | chosen α | selection mean | val {day} | val {night} | val {day} norm | val {night} norm | **val mean** | val min | val-best α (hindsight) | its val mean |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (m, bn), x in sorted(chosen.items(), key=lambda kv: -kv[1]["mean"]):
        h = hindsight[(m, bn)]
        lines.append(f"| {method_label(m, twins)} | {bn} | {x['alpha']:g} | {x['sel_mean']:.4f} | {x['day']:.4f} | {x['night']:.4f} | {x['day_norm']:.4f} | "
                     f"{x['night_norm']:.4f} | **{x['mean']:.4f}** | {x['min']:.4f} | {h['alpha']:g} | {h['mean']:.4f} |")
    alphas = sorted({x["alpha"] for x in grid})
    lines += ["", "### Val normalized mean at every α (bold: the α chosen on the selection split)", "", "| method | BN | " + " | ".join(f"{a:g}" for a in alphas) + " |",
              "|---|---|" + "---|" * len(alphas)]
    table = {(x["method"], x["bn"], x["alpha"]): x for x in grid}
    for m, bn in dict.fromkeys((x["method"], x["bn"]) for x in grid):
        cells = []
        for a in alphas:
            x = table.get((m, bn, a))
            cells.append("" if x is None else (f"**{x['mean']:.3f}**" if x.get("chosen") else f"{x['mean']:.3f}"))
        lines.append(f"| {method_label(m, twins)} | {bn} | " + " | ".join(cells) + " |")
    lines += ["", f"<details><summary>All {len(r['grid'])} points (selection mean; val mAP50-95 day / night, normalized mean and min)</summary>", "",
              f"| method | BN | α | chosen | selection mean | val {day} | val {night} | val mean | val min |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r["grid"]:
        if "refused" in x:
            lines.append(f"| {x['method']} | {x['bn']} | {x['alpha']:g} | | refused: *{x['refused']}* | | | | |")
        else:
            lines.append(f"| {x['method']} | {x['bn']} | {x['alpha']:g} | {'★' if x.get('chosen') else ''} | {x['sel_mean']:.4f} | {x['day']:.4f} | {x['night']:.4f} | {x['mean']:.4f} | {x['min']:.4f} |")
    lines += ["", "</details>", ""]
    if r.get("search"):
        lines += search_section(r["search"], day, night, st)
    return lines


def selection_bias(r: dict) -> list[str]:
    """The reference merge's normalized scores on both splits: how far the selection split's normalizers lean."""
    x = next((x for x in r["grid"] if "refused" not in x and x["method"] == REFERENCE["method"] and x["bn"] == REFERENCE["bn"] and abs(x["alpha"] - REFERENCE["alpha"]) < 1e-9), None)
    if x is None:
        return []
    day, night = r["settings"]["data"]
    return [(f"Caveat (measured here): {REFERENCE_LABEL} scores {day} {x['sel_day_norm']:.3f} / {night} {x['sel_night_norm']:.3f} of the references on the "
            f"selection split and {x['day_norm']:.3f} / {x['night_norm']:.3f} on val. Where one side is much lower on the selection split, its "
            "reference is in-sample there (it was trained on those train images), and the selection objective leans toward the "
            "inputs that move that side (more τ); a selection split no model was trained on (`select=` one yaml per dataset) avoids this."), ""]


def headline_section(r: dict) -> list[str]:
    """The chosen models with their val bootstrap intervals and the difference to the reference merge."""
    st, ref = r["settings"], r["reference_interval"]
    lines = [
        "### Headline: the chosen models on val, with 95 % bootstrap intervals",
        "",
        (f"Each BN policy's model (method and α chosen on the selection split) and the per-part search's chosen point, scored again on val "
        f"with per-image statistics; intervals resample the {' / '.join(str(n) for n in st['val_images'].values())} val images ({st['resamples']} draws; "
        f"the normalizers and the reference are resampled on the same images). Δ: val mean minus that of the reference merge, **{st['reference']}** "
        f"(val mean {ci(ref['mean'])}, min {ci(ref['min'])}). *resolved*: the Δ interval excludes 0."),
        "",
        "| model (chosen on the selection split) | selection objective | **val mean** [95 % CI] | val min [95 % CI] | Δ val mean vs reference [95 % CI] | resolved |",
        "|---|---|---|---|---|---|",
    ]
    for h in r["headline"]:
        sel = f"{h['row']['sel_min']:.4f} (min)" if h["kind"] == "search" else f"{h['row']['sel_mean']:.4f} (mean)"
        lines.append(f"| {h['name']} | {sel} | **{ci(h['mean'])}** | {ci(h['min'])} | {signed_ci(h['delta_mean'])} | {resolved(h['delta_mean'])} |")
    lines += [""]
    return lines


def search_section(e: dict, day: str, night: str, st: dict) -> list[str]:
    point = ", ".join(f"{k}={v:g}" for k, v in e["chosen_point"].items())
    c = e["chosen"]
    lines = [
        f"### Goal: one model at ≥ {GOAL} of the base by day and of the specialist at night",
        "",
        (f"Per-part scales ({', '.join(e['space'])}) searched with `yolo_taskvec.search` (coordinate search, bounds 0..1, objective `min` of the two "
        f"normalized scores, bn={e['bn']}, {e['trials']} trials); the point is {where_selected(st)}."),
        "",
        f"| | point | selection min | val {day} norm | val {night} norm | **val min** | val mean |",
        "|---|---|---|---|---|---|---|",
        f"| chosen on the selection split | {point} | {c['sel_min']:.4f} | {c['day_norm']:.4f} | {c['night_norm']:.4f} | **{c['min']:.4f}** | {c['mean']:.4f} |",
    ]
    h = max(e["rows"], key=lambda x: (x["min"], x["mean"]))
    lines += [
        f"| best val min of any trial (hindsight, optimistic) | {', '.join(f'{k}={h[k]:g}' for k in e['space'])} | {h['sel_min']:.4f} | {h['day_norm']:.4f} | {h['night_norm']:.4f} | {h['min']:.4f} | {h['mean']:.4f} |",
        "",
        f"The chosen point's val min {c['min']:.4f}: the goal (min ≥ {GOAL}) is " + ("**reached** on val." if c["min"] >= GOAL else f"**not reached** (short by {GOAL - c['min']:.4f})."),
        "",
        "<details><summary>Every trial</summary>", "",
        "| trial | " + " | ".join(e["space"]) + " | selection min | val min | val mean |", "|---|" + "---|" * (len(e["space"]) + 3),
    ]
    for x in e["rows"]:
        lines.append(f"| {x['trial']}{' ★' if x['chosen'] else ''} | " + " | ".join(f"{x[k]:g}" for k in e["space"]) + f" | {x['sel_min']:.4f} | {x['min']:.4f} | {x['mean']:.4f} |")
    lines += ["", "</details>", ""]
    return lines


def plot(runs: dict, path: Path) -> None:
    """Per BN policy: val normalized mean vs α per distinct method, ★ at the α chosen on the selection split; the
    headline models' val means with 95 % intervals; task arithmetic per dataset; day vs night for every point."""
    import matplotlib
    from matplotlib.figure import Figure

    from yolo_taskvec import pareto_front

    r = runs.get("cuda") or runs["cpu"]
    grid, twins = distinct([x for x in r["grid"] if "refused" not in x])
    st = r["settings"]
    day, night = st["data"]
    policies = list(dict.fromkeys(x["bn"] for x in grid))
    methods = sorted(dict.fromkeys(x["method"] for x in grid), key=lambda m: (m != "task_arithmetic", m))
    cols = 2
    panels = len(policies) + 3
    nrows = (panels + 1) // 2
    fig = Figure(figsize=(14, 4.8 * nrows + 1.8))
    axes = [ax for row in fig.subplots(nrows, cols, squeeze=False) for ax in row]
    colors = [c for c in PALETTE if c not in ("#000000", "#F0E442")] + ["#7F3C8D", "#999933"]  # no yellow lines on white
    markers = "os^vD<>phP"
    styles = {m: {"color": colors[(i - 1) % len(colors)], "marker": markers[i % len(markers)], "linewidth": 1.3, "markersize": 5} for i, m in enumerate(methods)}
    if "task_arithmetic" in styles:
        styles["task_arithmetic"].update(color="black", linewidth=2.4, marker="o", markersize=6)
    lo = min(0.5, min(x["mean"] for x in grid))
    for k, bn in enumerate(policies):
        ax = axes[k]
        for m in methods:
            pts = sorted((x["alpha"], x["mean"]) for x in grid if x["method"] == m and x["bn"] == bn)
            if pts:
                ax.plot(*zip(*pts), label=method_label(m, twins), **styles[m])
            pick = next((x for x in grid if x["method"] == m and x["bn"] == bn and x.get("chosen")), None)
            if pick:
                ax.plot([pick["alpha"]], [pick["mean"]], marker="*", markersize=16, color=styles[m]["color"], markeredgecolor="black", linestyle="none", zorder=5)
        ax.plot([], [], marker="*", markersize=12, color="white", markeredgecolor="black", linestyle="none", label="★ α chosen on the selection split")
        ax.axhline(1.0, color="0.4", linewidth=0.9, linestyle="--", label="1.0 = each reference on its own data")
        ax.axhline(GOAL, color=PALETTE[2], linewidth=1.2, linestyle=":", label=f"goal {GOAL}")
        ax.set(title=f"bn={bn}: val normalized mean vs α", xlabel="α (slerp: t)", ylabel="normalized mean mAP50-95 (val)", ylim=(lo, 1.04), xlim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 1 - 1.0 / fig.get_figheight()))

    ci_ax, left, right = axes[len(policies)], axes[len(policies) + 1], axes[len(policies) + 2]
    for k in range(len(policies) + 3, len(axes)):
        axes[k].axis("off")
    items = [(st["reference"] + " (reference)", r["reference_interval"]["mean"])] + [(h["name"], h["mean"]) for h in r["headline"]]
    ys = list(range(len(items)))[::-1]
    for y, (name, d) in zip(ys, items):
        ax_color = "0.45" if y == ys[0] else PALETTE[0]
        ci_ax.errorbar([d["value"]], [y], xerr=[[d["value"] - d["low"]], [d["high"] - d["value"]]], fmt="o", color=ax_color, capsize=4, markersize=6)
    ci_ax.set_yticks(ys, [n for n, _ in items], fontsize=8)
    ci_ax.axvline(1.0, color="0.4", linewidth=0.9, linestyle="--")
    ci_ax.axvline(GOAL, color=PALETTE[2], linewidth=1.2, linestyle=":")
    ci_ax.set(title=f"chosen models: val mean, 95 % bootstrap CI ({st['resamples']} draws)", xlabel="normalized mean mAP50-95 (val)")
    ci_ax.grid(alpha=0.3, axis="x")

    for i, bn in enumerate(policies):
        pts = sorted((x["alpha"], x["day_norm"], x["night_norm"]) for x in grid if x["method"] == "task_arithmetic" and x["bn"] == bn)
        if pts:
            a, d, n = zip(*pts)
            left.plot(a, d, "o-", color=PALETTE[i % len(PALETTE)], label=f"{day} (day), bn={bn}")
            left.plot(a, n, "s--", color=PALETTE[i % len(PALETTE)], label=f"{night} (night), bn={bn}")
            pick = next((x for x in grid if x["method"] == "task_arithmetic" and x["bn"] == bn and x.get("chosen")), None)
            if pick:
                left.axvline(pick["alpha"], color=PALETTE[i % len(PALETTE)], linewidth=0.9, linestyle=(0, (1, 2)), label=f"chosen α (selection), bn={bn}")
    left.axhline(1.0, color="0.4", linewidth=0.9, linestyle="--", label="1.0 = base80 by day, the specialist at night")
    left.set(title="task arithmetic on val, each dataset (day solid, night dashed)", xlabel="α", ylabel="normalized mAP50-95 (val)")
    left.grid(alpha=0.3)
    legend_below(left, ncol=2)

    search_rows = r["search"]["rows"] if r.get("search") else []
    xs = [x["day_norm"] for x in grid + search_rows]
    ys2 = [x["night_norm"] for x in grid + search_rows]
    right.scatter([x["day_norm"] for x in grid], [x["night_norm"] for x in grid], s=12, color=PALETTE[0], alpha=0.5, label="grid points (every method, BN policy, α)")
    if search_rows:
        right.scatter([x["day_norm"] for x in search_rows], [x["night_norm"] for x in search_rows], s=14, color=PALETTE[5], alpha=0.7, label="per-part search trials")
        c = r["search"]["chosen"]
        right.plot([c["day_norm"]], [c["night_norm"]], marker="*", markersize=16, color=PALETTE[5], markeredgecolor="black", linestyle="none", label="search point chosen on the selection split")
    front = pareto_front(list(zip(xs, ys2)))
    right.plot([xs[i] for i in front], [ys2[i] for i in front], "k-", linewidth=1, label="Pareto front (val)")
    right.add_patch(matplotlib.patches.Rectangle((GOAL, GOAL), 0.2, 0.2, color=PALETTE[2], alpha=0.15, label=f"goal region (both ≥ {GOAL})"))
    right.set(title="day vs night on val, every point (normalized)", xlabel=f"{day} mAP50-95 ÷ base80's", ylabel=f"{night} mAP50-95 ÷ the night fine-tune's",
              xlim=(max(0.5, min(xs) - 0.02), 1.05), ylim=(max(0.5, min(ys2) - 0.02), 1.1))
    right.grid(alpha=0.3)
    legend_below(right, ncol=2)
    figure_title(fig, "base80 + α·τ(fruit-night): normalized mAP50-95 per merge method and BatchNorm policy", r,
                 f"{day} ÷ base80, {night} ÷ the night fine-tune, imgsz {st['imgsz']}; {where_selected(st)}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.35 / fig.get_figheight()))
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
