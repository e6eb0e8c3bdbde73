"""BatchNorm running statistics in a merge: ``merge`` vs ``mixture`` vs ``geometric`` (and ``base``), measured.

Two settings, each swept over the scale with the scale CHOSEN on a selection split (a seeded 20 % of each dataset's
train images) and REPORTED on the val split:

* day/night: base80 + α·τ(fruit-night) on fruit80 and fruit80-night (normalized by base80 by day and by the night
  specialist at night; mean of the two);
* class union: base80 (fruit) + raccoon + kangaroo + bccd merged into one 85-class detector (``classes=union``) on the
  union views of the four datasets; chosen on the raw mean mAP50-95 of the selection split, reported normalized by
  each specialist on its own val set (the specialists cannot be scored on the union views: other class ids);
* the domain "cliff": base80 + [fruit-night, raccoon] (``classes=union``) at small scales, mAP50-95 on fruit80-night
  and raccoon per policy (no selection: a fixed grid, reported as measured).

``python benchmarks/bench_bn_policies.py`` writes ``results/bn_policies.{md,json,png}``; ``replot=true`` redraws
from the stored json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, environment, environment_markdown, load_average, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "night": "yolo26n-fruit-night.pt",
    "union": "yolo26n-raccoon.pt,yolo26n-kangaroo.pt,yolo26n-bccd.pt",
    "policies": "merge,mixture,geometric,base",
    "daynight_scales": "0:1:0.1",
    "union_scales": "0,0.05,0.1,0.2,0.3",
    "cliff_scales": "0,0.02,0.05,0.1",
    "select": "train:0.2",
    "imgsz": "320",
    "batch": "32",
    "device": "cpu",
    "parts": "daynight,union,cliff",
    "replot": "false",
}
STEM = "bn_policies"
COLORS = {"merge": "tab:blue", "mixture": "tab:red", "geometric": "tab:green", "base": "tab:gray", "recalibrate": "tab:purple"}


def daynight(args: dict[str, str], policy: str, work: Path) -> dict[str, Any]:
    from yolo_taskvec import sweep

    data = ["fruit80.yaml", "fruit80-night.yaml"]
    t0 = time.perf_counter()
    res = sweep(args["base"], [args["night"]], data=data, scales=args["daynight_scales"], select=args["select"], reference=["base", args["night"]], bn=policy,
                imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], out=work / f"daynight-{policy}", plot=False, verbose=False)
    best = res.best
    return {"policy": policy, "chosen_scale": best["scale"], "select_objective": best["select_objective"], "reported": best["objective"],
            "day": best["fruit80/norm"], "night": best["fruit80-night/norm"], "curve": [{"scale": r["scale"], "select": r["select_objective"], "report": r["objective"]} for r in res.rows],
            "minutes": (time.perf_counter() - t0) / 60}


def specialists(args: dict[str, str]) -> dict[str, float]:
    """Each specialist on its own val set (the normalizers of the union benchmark)."""
    from yolo_taskvec import evaluate

    models = {"fruit80": args["base"], **{Path(m).stem.replace("yolo26n-", ""): m for m in args["union"].split(",")}}
    out = {}
    for ds, model in models.items():
        out[ds] = evaluate([model], [f"{ds}.yaml"], imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], progress=False).get(Path(model).stem, ds)
    return out


def union_views(args: dict[str, str], work: Path) -> list[str]:
    from yolo_taskvec import union_classes, union_data

    classes = union_classes(args["base"], args["union"].split(","))
    return [str(p) for p in union_data(classes, ["fruit80.yaml", "raccoon.yaml", "kangaroo.yaml", "bccd.yaml"], work / "views")]


def union(args: dict[str, str], policy: str, views: list[str], norms: dict[str, float], work: Path) -> dict[str, Any]:
    from yolo_taskvec import sweep

    t0 = time.perf_counter()
    res = sweep(args["base"], args["union"].split(","), data=views, scales=args["union_scales"], select=args["select"], classes="union", bn=policy,
                imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], out=work / f"union-{policy}", plot=False, verbose=False)
    norm = lambda row: {ds: row[f"{ds}/map50_95"] / norms[ds] for ds in norms}  # noqa: E731
    best = res.best
    chosen = norm(best)
    return {"policy": policy, "chosen_scale": best["scale"], "select_raw_mean": best["select_objective"], "reported_mean": sum(chosen.values()) / len(chosen),
            "reported_min": min(chosen.values()), "per_task": chosen,
            "curve": [{"scale": r["scale"], "select": r["select_objective"], "report_mean": sum(norm(r).values()) / len(norms)} for r in res.rows],
            "minutes": (time.perf_counter() - t0) / 60}


def cliff(args: dict[str, str], policy: str, work: Path) -> dict[str, Any]:
    from yolo_taskvec import sweep, union_classes, union_data

    models = [args["night"], "yolo26n-raccoon.pt"]
    classes = union_classes(args["base"], models)
    views = [str(p) for p in union_data(classes, ["fruit80-night.yaml", "raccoon.yaml"], work / "cliff-views", splits=["val"])]
    res = sweep(args["base"], models, data=views, scales=args["cliff_scales"], classes="union", bn=policy, imgsz=int(args["imgsz"]), batch=int(args["batch"]),
                device=args["device"], out=work / f"cliff-{policy}", plot=False, verbose=False)
    return {"policy": policy, "rows": [{"scale": r["scale"], "fruit80-night": r["fruit80-night/map50_95"], "raccoon": r["raccoon/map50_95"]} for r in res.rows]}


def markdown(runs: dict[str, Any]) -> str:
    lines = ["# BatchNorm statistics in a merge: merge vs mixture vs geometric vs base", ""]
    for kind, run in runs.items():
        env = run["environment"]
        lines += [f"## {kind.upper()} run", "", *environment_markdown(env, run.get("load_end")), ""]
        if run.get("daynight"):
            lines += ["### Day/night: base80 + α·τ(fruit-night)", "",
                      f"α chosen on {run['select']} (selection objective), reported on val: normalized mAP50-95 (day / base80, night / night specialist).", "",
                      "| bn | chosen α | selection objective | reported mean | day | night |", "|---|---|---|---|---|---|"]
            for r in run["daynight"]:
                lines.append(f"| `{r['policy']}` | {r['chosen_scale']:g} | {r['select_objective']:.4f} | **{r['reported']:.4f}** | {r['day']:.4f} | {r['night']:.4f} |")
            lines.append("")
        if run.get("union"):
            lines += ["### Class union: base80 + raccoon + kangaroo + bccd (one 85-class detector)", "",
                      f"Scale chosen on {run['select']} by the raw mean mAP50-95; reported on val, normalized by each specialist on its own val set.", "",
                      "| bn | chosen scale | reported mean | reported min | fruit80 | raccoon | kangaroo | bccd |", "|---|---|---|---|---|---|---|---|"]
            for r in run["union"]:
                t = r["per_task"]
                lines.append(f"| `{r['policy']}` | {r['chosen_scale']:g} | **{r['reported_mean']:.4f}** | {r['reported_min']:.4f} | {t['fruit80']:.3f} | {t['raccoon']:.3f} | {t['kangaroo']:.3f} | {t['bccd']:.3f} |")
            lines.append("")
        if run.get("cliff"):
            lines += ["### The domain cliff: base80 + [fruit-night, raccoon], classes=union (mAP50-95 on val, fixed grid)", "", "| bn | " + " | ".join(f"scale {r['scale']:g}" for r in run["cliff"][0]["rows"]) + " |",
                      "|---|" + "---|" * len(run["cliff"][0]["rows"])]
            for r in run["cliff"]:
                lines.append(f"| `{r['policy']}` | " + " | ".join(f"{x['fruit80-night']:.3f} / {x['raccoon']:.3f}" for x in r["rows"]) + " |")
            lines += ["", "Each cell: fruit80-night / raccoon mAP50-95.", ""]
        if run.get("decision"):
            lines += ["### Decision", "", run["decision"], ""]
    return "\n".join(lines)


def plot(runs: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    run = runs.get("cuda") or runs["cpu"]
    panels = [p for p in ("daynight", "union") if run.get(p)]
    fig = Figure(figsize=(6.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, part in zip(axes, panels):
        for r in run[part]:
            xs = [c["scale"] for c in r["curve"]]
            ys = [c["report"] if part == "daynight" else c["report_mean"] for c in r["curve"]]
            ax.plot(xs, ys, "o-", color=COLORS.get(r["policy"], "black"), label=f"bn={r['policy']} (chosen {r['chosen_scale']:g})", ms=4)
            chosen = next(y for x, y in zip(xs, ys) if x == r["chosen_scale"])
            ax.plot([r["chosen_scale"]], [chosen], marker="*", ms=14, color=COLORS.get(r["policy"], "black"), mec="black", ls="none")
        title = "day/night: base80 + α·τ(fruit-night)" if part == "daynight" else "class union: base80 + raccoon + kangaroo + bccd"
        ax.set(xlabel="scale α", ylabel="reported mean normalized mAP50-95 (val)", title=title)
        ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"BatchNorm policies, imgsz {run['imgsz']}, {run['environment'].get('device', 'cpu')}: ★ = scale chosen on {run['select']}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS)
    if args["replot"].lower() == "true":
        render_outputs(STEM, RESULTS, markdown=markdown, plot=plot)
        return
    env = environment(args["device"])
    policies = [p for p in args["policies"].split(",") if p]
    parts = set(args["parts"].split(","))
    result: dict[str, Any] = {"environment": env, "select": f"a seeded 20 % of the train images ({args['select']})", "imgsz": int(args["imgsz"])}
    with tempfile.TemporaryDirectory(prefix="bench-bn-") as tmp:
        work = Path(tmp)
        kind = "cuda" if args["device"] not in ("cpu", "") else "cpu"
        if "daynight" in parts:
            result["daynight"] = [daynight(args, p, work) for p in policies]
            write_outputs(STEM, result, RESULTS, kind=kind, markdown=markdown, plot=plot)  # each part is kept as it finishes
        if "union" in parts:
            norms = specialists(args)
            result["specialists"] = norms
            views = union_views(args, work)
            result["union"] = [union(args, p, views, norms, work) for p in policies]
            write_outputs(STEM, result, RESULTS, kind=kind, markdown=markdown, plot=plot)
        if "cliff" in parts:
            result["cliff"] = [cliff(args, p, work) for p in policies]
    if result.get("daynight") and result.get("union"):
        dn = max(result["daynight"], key=lambda r: r["reported"])
        un = max(result["union"], key=lambda r: r["reported_mean"])
        result["decision"] = f"best reported on day/night: `{dn['policy']}` ({dn['reported']:.4f}); on the class union: `{un['policy']}` ({un['reported_mean']:.4f})."
    result["load_end"] = load_average()
    write_outputs(STEM, result, RESULTS, kind="cuda" if args["device"] not in ("cpu", "") else "cpu", markdown=markdown, plot=plot)
    print(markdown({"cpu": result}))


if __name__ == "__main__":
    main(sys.argv[1:])
