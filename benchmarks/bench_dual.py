"""Detect + segment in ONE model: base80 + α·τ(fruit-night) + β·τ(segment), with α and β SELECTED on calibration
splits and REPORTED on val, box and mask mAP against both sources, with bootstrap intervals over the val images.

* τ(fruit-night) = the night detection fine-tune − base80; τ(segment) = a segment fine-tune of base80 − base80 (its
  mask branches, ``cv4``, ``one2one_cv4``, ``proto``, have no counterpart in the detector and are carried whole:
  ``unmatched="carry"``), so the merge is one standard Ultralytics Segment model. Variants of τ(segment): ``full``
  and ``no-cls`` (without its class branch: the segment task's class-branch change, learnt on person-only labels,
  would push every other class down).
* The segment source is the fine-tune made by ``train_seg_finetune.py`` (``benchmarks/assets/yolo26n-seg-person.pt``,
  GPU); its card (``.json`` beside it) holds the recipe from which the person views are rebuilt here.
* Selection: every (variant, BN policy, α, β) of the grid is scored on the CALIBRATION splits — a seeded sample of
  ``calib`` fruit80-night and fruit80 TRAIN images, and the person train images the segment fine-tune never saw —
  and the objective is the mean of night box mAP50-95 ÷ the night fine-tune's, day box ÷ base80's and person mask
  ÷ the segment model's, each on the same split. The best point overall (and per variant and policy) is REPORTED
  on the val splits (fruit80-night val, fruit80 val, coco-mini-seg val person view) with 95 % bootstrap intervals
  (``yolo_taskvec.bootstrap``: images resampled, each ratio paired with its source on the same images).
  ``report_grid=true`` also scores every grid point on val, for the figure only: nothing is chosen there.

    python benchmarks/bench_dual.py device=0                            # with the GPU fine-tune in benchmarks/assets
    python benchmarks/bench_dual.py seg=/path/best.pt stem=dual_smoke   # any segment fine-tune of base80 (smoke)
    python benchmarks/bench_dual.py --replot                            # redraw .md/.png from the stored .json

Writes ``benchmarks/results/<stem>.{md,json,png}`` (``stem=dual``). Runs stored by the earlier version of this
script (no selection split) are still rendered, marked as such.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, PALETTE, REPO, RESULTS, as_bool, as_floats, calibration_split, device_kind, environment, environment_markdown, figure_title, legend_right, load_average, parse_args, render_outputs, save_figure, write_outputs  # noqa: E402

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "detect": "yolo26n-fruit-night.pt",
    "seg": str(REPO / "benchmarks" / "assets" / "yolo26n-seg-person.pt"),
    "night_data": "fruit80-night",
    "day_data": "fruit80",
    "calib": "60",  # fruit TRAIN images per dataset in the selection split (seeded)
    "seed": "0",
    "variants": "no-cls,full",
    "night_scales": "0:1:0.25",
    "seg_scales": "0.25:1:0.25",
    "bn": "merge,geometric",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "resamples": "1000",
    "report_grid": "true",
    "project": "",  # where the person views are rebuilt (default: <runs_dir>/taskvec-seg, as train_seg_finetune.py)
    "stem": "dual",
    "out": str(RESULTS),
    "render": "false",  # true (or --replot): rebuild the .md/.png from the stored .json, measure nothing
}
SEG_PARTS_NO_CLS = ["backbone", "neck", "head.box", "head.mask"]
KEYS = ("night", "day", "segment")  # dataset roles; the objective's three terms below
TERMS = (("night", "map50_95", "night"), ("day", "map50_95", "base80"), ("segment", "mask_map50_95", "segment"))


# ----------------------------------------------------------------------------------------------- set-up
def seg_views(seg: Path, args: dict[str, str]) -> tuple[dict[str, Path], dict[str, Any], dict[str, Any]]:
    """The person views of the segment fine-tune's recipe (its card beside the checkpoint, else the script's defaults)."""
    import train_seg_finetune as tsf

    card_path = seg.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    recipe = {**tsf.DEFAULTS, **{k: str(v) for k, v in card.get("recipe", {}).items()}}
    project = Path(args["project"]).resolve() if args["project"] else tsf.default_project()
    yamls, counts = tsf.views(recipe, project)
    return yamls, counts, card


def evaluators(args: dict[str, str], seg: Path, work: Path) -> tuple[Any, Any, dict[str, Any]]:
    """One Evaluator over the selection splits and one (per-image statistics kept) over the val splits."""
    from yolo_taskvec import Evaluator

    views, counts, card = seg_views(seg, args)
    n, seed = int(args["calib"]), int(args["seed"])
    select = {
        "night": calibration_split(DATASETS / f"{args['night_data']}.yaml", n, seed, work),
        "day": calibration_split(DATASETS / f"{args['day_data']}.yaml", n, seed, work),
        "segment": views["calib"],
    }
    report = {"night": DATASETS / f"{args['night_data']}.yaml", "day": DATASETS / f"{args['day_data']}.yaml", "segment": views["train"]}
    kw = {"imgsz": int(args["imgsz"]), "batch": int(args["batch"]), "device": args["device"], "progress": False}
    ev_select = Evaluator([str(select[k]) for k in KEYS], **kw)
    ev_report = Evaluator([str(report[k]) for k in KEYS], per_image=True, **kw)
    info = {
        "select": dict(zip(KEYS, ev_select.names)),
        "report": dict(zip(KEYS, ev_report.names)),
        "segment_views": counts,
        "segment_card": {k: card[k] for k in ("file", "sha256", "command") if k in card},
    }
    return ev_select, ev_report, info


def scores_by_role(ev: Any, result: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {role: result[name] for role, name in zip(KEYS, ev.names)}


def objective(scores: dict[str, dict[str, float]], refs: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """Each term ÷ its source on the same split, and their mean."""
    out = {}
    for role, metric, source in TERMS:
        ref = refs[source][role].get(metric, math.nan)
        out[f"{role}/{metric}/norm"] = scores[role].get(metric, math.nan) / ref if ref > 0 else math.nan
    out["objective"] = sum(out.values()) / len(out)
    return out


def intervals(merged: dict[str, Any], sources: dict[str, dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    """Bootstrap intervals on val: each term's ratio to its source (paired images) and the objective (joint)."""
    from yolo_taskvec import bootstrap, interval

    out: dict[str, Any] = {}
    samples = {}
    for role, metric, source in TERMS:
        m, r = merged[role], sources[source][role]
        samples[f"m/{role}"], samples[f"r/{role}"] = m, r
        out[f"{role}/{metric}"] = interval(m, metric, resamples=resamples, seed=seed).to_dict()
        out[f"{role}/{metric}/norm"] = bootstrap({"m": m, "r": r}, lambda s, k=metric: s["m"][k] / s["r"][k] if s["r"][k] > 0 else math.nan, resamples=resamples, seed=seed).to_dict()
    if merged["segment"].has_masks:
        out["segment/map50_95"] = interval(merged["segment"], "map50_95", resamples=resamples, seed=seed).to_dict()

    def mean_ratio(s: dict[str, dict[str, float]]) -> float:
        ratios = [s[f"m/{role}"][metric] / s[f"r/{role}"][metric] if s[f"r/{role}"][metric] > 0 else math.nan for role, metric, _ in TERMS]
        return sum(ratios) / len(ratios)

    out["objective"] = bootstrap(samples, mean_ratio, resamples=resamples, seed=seed).to_dict()
    return out


# ----------------------------------------------------------------------------------------------- run
def run(args: dict[str, str], argv: list[str]) -> dict[str, Any]:
    import tempfile

    from ultralytics.utils import TQDM

    from yolo_taskvec import (
        TaskVecError,
        TaskVector,
        load_model,
        merge,
        resolve_weights,
    )

    start = time.perf_counter()
    env = environment(args["device"])
    seg = Path(args["seg"])
    if not seg.exists():
        sys.exit(f"{seg} not found: train it first (python benchmarks/train_seg_finetune.py device=0), or pass seg=<a segment fine-tune of base80>.")
    seg = seg.resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-dual-"))
    ev_select, ev_report, info = evaluators(args, seg, work)
    base = load_model(args["base"])
    paths = {"base80": str(resolve_weights(args["base"])), "night": str(resolve_weights(args["detect"])), "segment": str(seg)}
    refs_select, refs_report, source_stats = {}, {}, {}
    for name, path in paths.items():
        refs_select[name] = scores_by_role(ev_select, ev_select(path))
        refs_report[name] = scores_by_role(ev_report, ev_report(path))
        source_stats[name] = {role: ev_report.image_stats[n] for role, n in zip(KEYS, ev_report.names)}
    night_tv = TaskVector.from_models(base, args["detect"], name="night")
    seg_tv = TaskVector.from_models(base, str(seg), name="segment", unmatched="carry")
    variants = {"full": seg_tv, "no-cls": seg_tv.select(SEG_PARTS_NO_CLS)}
    chosen_variants = [v for v in args["variants"].split(",") if v]
    for v in chosen_variants:
        if v not in variants:
            sys.exit(f"unknown variant '{v}'; variants are {', '.join(variants)}.")
    grid = [(v, bn, a, b) for v in chosen_variants for bn in args["bn"].split(",") if bn for a in as_floats(args["night_scales"]) for b in as_floats(args["seg_scales"])]
    report_grid = as_bool(args["report_grid"])

    def build(v: str, bn: str, a: float, b: float) -> Any:
        return merge(base, [night_tv, variants[v]], weights=[a, b], bn=bn, unmatched="carry")

    rows = []
    for v, bn, a, b in (bar := TQDM(grid, desc="dual grid")):
        row: dict[str, Any] = {"variant": v, "bn": bn, "night": a, "seg": b}
        try:
            model = build(v, bn, a, b)
        except TaskVecError as e:
            rows.append({**row, "refused": str(e)})
            continue
        sel = scores_by_role(ev_select, ev_select(model))
        row["select"] = {"scores": sel, **objective(sel, refs_select)}
        if report_grid:
            rep = scores_by_role(ev_report, ev_report(model))
            row["report"] = {"scores": rep, **objective(rep, refs_report)}
        rows.append(row)
        bar.set_description(f"dual {v}/{bn} α {a:g} β {b:g}: select {row['select']['objective']:.3f}")
    scored = [r for r in rows if "select" in r]
    if not scored:
        sys.exit("every grid point was refused; see the BatchNorm policies (bn=geometric keeps variances positive).")
    combos = list(dict.fromkeys((r["variant"], r["bn"]) for r in scored))
    picks = {"overall": max(scored, key=lambda r: r["select"]["objective"])}
    for v, bn in combos:
        picks[f"{v}, bn={bn}"] = max((r for r in scored if (r["variant"], r["bn"]) == (v, bn)), key=lambda r: r["select"]["objective"])
    chosen = {}
    resamples, seed = int(args["resamples"]), int(args["seed"])
    for label, r in picks.items():
        model = build(r["variant"], r["bn"], r["night"], r["seg"])
        rep = scores_by_role(ev_report, ev_report(model))
        stats = {role: ev_report.image_stats[n] for role, n in zip(KEYS, ev_report.names)}
        chosen[label] = {"point": {k: r[k] for k in ("variant", "bn", "night", "seg")}, "select": r["select"], "report": {"scores": rep, **objective(rep, refs_report)}, "intervals": intervals(stats, source_stats, resamples, seed)}
    source_intervals = {name: {role: {m: _interval(source_stats[name][role], m, resamples, seed) for m in ("map50_95", "mask_map50_95") if m == "map50_95" or source_stats[name][role].has_masks} for role in KEYS} for name in paths}
    return {
        "environment": env,
        "command": "python benchmarks/bench_dual.py " + " ".join(argv),
        "config": {k: v for k, v in args.items() if k not in ("out", "render", "project")},
        "selection": {"calib_images": int(args["calib"]), "seed": seed, "splits": info["select"], "objective": "mean of night box ÷ night fine-tune, day box ÷ base80, person mask ÷ segment model (same split)"},
        "report_splits": info["report"],
        "segment_views": info["segment_views"],
        "segment_card": info["segment_card"],
        "sources": {"paths": paths, "select": refs_select, "report": refs_report, "intervals": source_intervals},
        "carried": len(seg_tv.absolute),
        "rows": rows,
        "chosen": chosen,
        "minutes": (time.perf_counter() - start) / 60,
        "load_average_end": load_average(),
    }


def _interval(stats: Any, metric: str, resamples: int, seed: int) -> dict[str, float]:
    from yolo_taskvec import interval

    return interval(stats, metric, resamples=resamples, seed=seed).to_dict()


# ----------------------------------------------------------------------------------------------- report
def _ci(x: dict[str, float] | None, digits: int = 3) -> str:
    return f" [{x['low']:.{digits}f}, {x['high']:.{digits}f}]" if x else ""


def markdown(runs: dict[str, Any]) -> str:
    if not any("selection" in run for run in runs.values()):
        return legacy_markdown(runs)
    lines = [
        "# Detect + segment in one model: base80 + α·τ(fruit-night) + β·τ(segment), selected on calibration splits",
        "",
        "Generated by `benchmarks/bench_dual.py` (its docstring has the method). α, β, the τ(segment) variant and the",
        "BatchNorm policy are chosen on the calibration splits; the numbers below are on the val splits, which took no",
        "part in the choice. Brackets: 95 % percentile bootstrap intervals over the val images (ratios paired with",
        "their source on the same resampled images).",
        "",
    ]
    for kind, run in runs.items():
        if "selection" not in run:
            lines += [f"## {kind.upper()} (earlier version of this benchmark)", "", *legacy_markdown({kind: run}).splitlines()[12:], ""]
            continue
        sel, rep, src = run["selection"], run["report_splits"], run["sources"]
        lines += [
            f"## {kind.upper()}",
            "",
            *environment_markdown(run["environment"], run.get("load_average_end")),
            f"Command: `{run['command']}` ({run['minutes']:.0f} min). Segment source: `{Path(src['paths']['segment']).name}`"
            + (f" (sha256 `{run['segment_card']['sha256'][:16]}…`)" if run.get("segment_card", {}).get("sha256") else " (no card beside it: not the committed GPU fine-tune)")
            + f"; {run['carried']} mask-branch tensors carried.",
            f"Selection splits: {', '.join(f'{k} = {v}' for k, v in sel['splits'].items())} ({sel['calib_images']} fruit train images each, seed {sel['seed']}; "
            f"the person calibration images were held out of the segment fine-tune's training). Report splits: {', '.join(f'{k} = {v}' for k, v in rep.items())}.",
            "",
            "Sources on val (mAP50-95):",
            "",
            "| model | night box | day box | person box | person mask |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in src["report"].items():
            ci = src["intervals"][name]
            lines.append(f"| {name} | {s['night']['map50_95']:.3f}{_ci(ci['night'].get('map50_95'))} | {s['day']['map50_95']:.3f}{_ci(ci['day'].get('map50_95'))} | "
                         f"{s['segment']['map50_95']:.3f}{_ci(ci['segment'].get('map50_95'))} | " + (f"{s['segment']['mask_map50_95']:.3f}{_ci(ci['segment'].get('mask_map50_95'))}" if "mask_map50_95" in s["segment"] else "—") + " |")
        lines += [
            "",
            "Chosen on the calibration splits, reported on val (mAP50-95; ÷ source in the second line of each cell):",
            "",
            "| choice | variant | bn | α | β | objective on calib | night box | day box | person mask | objective on val |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, c in run["chosen"].items():
            p, r, ci = c["point"], c["report"], c["intervals"]
            cells = []
            for role, metric, _ in TERMS:
                cells.append(f"{r['scores'][role][metric]:.3f}{_ci(ci.get(f'{role}/{metric}'))}<br>÷ {r[f'{role}/{metric}/norm']:.3f}{_ci(ci.get(f'{role}/{metric}/norm'))}")
            name = f"**{label}**" if label == "overall" else label
            lines.append(f"| {name} | {p['variant']} | {p['bn']} | {p['night']:g} | {p['seg']:g} | {c['select']['objective']:.3f} | " + " | ".join(cells) + f" | {r['objective']:.3f}{_ci(ci['objective'])} |")
        refused = [r for r in run["rows"] if "refused" in r]
        lines += ["", f"Grid: {len(run['rows'])} points, {len(refused)} refused by the library (`bn=merge` would make a running variance ≤ 0)." + (" Every point's val scores are in the JSON (for the figure; nothing was chosen on them)." if any('report' in r for r in run['rows']) else ""), ""]
    return "\n".join(lines)


def _heatmap(ax: Any, rows: list[dict[str, Any]], value: Any, title: str, mark: dict[str, Any] | None) -> Any:
    import numpy as np

    alphas = sorted({r["night"] for r in rows})
    betas = sorted({r["seg"] for r in rows})
    grid = np.full((len(betas), len(alphas)), np.nan)
    for r in rows:
        v = value(r)
        if v is not None:
            grid[betas.index(r["seg"]), alphas.index(r["night"])] = v
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    finite = grid[np.isfinite(grid)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0, 1)
    for j in range(len(betas)):
        for i in range(len(alphas)):
            v = grid[j, i]
            text, color = ("refused", "0.3") if not np.isfinite(v) else (f"{v:.2f}", "black" if hi > lo and (v - lo) / (hi - lo) > 0.6 else "white")
            ax.text(i, j, text, ha="center", va="center", fontsize=8, color=color)
    if mark is not None:
        ax.plot([alphas.index(mark["night"])], [betas.index(mark["seg"])], marker="s", ms=26, mfc="none", mec="red", mew=2)
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set(xlabel="α (τ fruit-night)", ylabel="β (τ segment)", title=title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return im


def plot(runs: dict[str, Any], path: Path) -> None:
    kind, run = next(((k, runs[k]) for k in ("cuda", "cpu") if k in runs), next(iter(runs.items())))
    if "selection" not in run:
        return legacy_plot(kind, run, path)
    from matplotlib.figure import Figure

    c = run["chosen"]["overall"]
    p = c["point"]
    rows = [r for r in run["rows"] if (r["variant"], r["bn"]) == (p["variant"], p["bn"])]
    val = any("report" in r for r in rows)
    cols = 4 if val else 1
    fig = Figure(figsize=(5.2 * cols + 2, 10.5))
    grid = fig.add_gridspec(2, cols, height_ratios=[1, 1.1])
    axes = [fig.add_subplot(grid[0, i]) for i in range(cols)]
    _heatmap(axes[0], rows, lambda r: r["select"]["objective"] if "select" in r else None, "objective on the CALIBRATION splits\n(red: chosen)", p)
    if val:
        for ax, (role, metric, source) in zip(axes[1:], TERMS):
            what = f"{'person mask' if role == 'segment' else role + ' box'} on VAL ÷ {source}"
            _heatmap(ax, rows, lambda r, k=f"{role}/{metric}/norm": r["report"][k] if "report" in r else None, what, p)
    bars = fig.add_subplot(grid[1, :])
    groups = [("night", "map50_95", "fruit80-night box"), ("day", "map50_95", "fruit80 box"), ("segment", "map50_95", "person box"), ("segment", "mask_map50_95", "person mask")]
    models = [("base80", run["sources"]["report"]["base80"], run["sources"]["intervals"]["base80"]), ("night fine-tune", run["sources"]["report"]["night"], run["sources"]["intervals"]["night"]),
              ("segment fine-tune", run["sources"]["report"]["segment"], run["sources"]["intervals"]["segment"]),
              (f"merged ({p['variant']}, bn={p['bn']}, α={p['night']:g}, β={p['seg']:g})", c["report"]["scores"], {role: {m: c["intervals"].get(f"{role}/{m}") for m in ("map50_95", "mask_map50_95")} for role in KEYS})]
    width = 0.8 / len(models)
    for j, (label, scores, cis) in enumerate(models):
        xs, ys, errs = [], [], [[], []]
        for i, (role, metric, _) in enumerate(groups):
            v = scores[role].get(metric)
            if v is None:
                continue
            ci = (cis.get(role) or {}).get(metric)
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            ys.append(v)
            errs[0].append(v - ci["low"] if ci else 0)
            errs[1].append(ci["high"] - v if ci else 0)
        bars.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, color=PALETTE[j % len(PALETTE)], label=label)
        for x, y, e in zip(xs, ys, errs[1]):
            bars.text(x, y + e, f"{y:.3f}", ha="center", va="bottom", fontsize=7.5)
    bars.set_xticks(range(len(groups)), [g[2] for g in groups])
    bars.set(ylabel="mAP50-95 on val (whiskers: 95 % bootstrap interval)", title="the chosen merged model against its sources, on val")
    bars.grid(axis="y", alpha=0.3)
    legend_right(bars)
    figure_title(fig, "Detect + segment in one model: base80 + α·τ(fruit-night) + β·τ(segment)", run,
                 f"α, β, variant and BN policy chosen on calibration splits; shown for the chosen variant ({p['variant']}, bn={p['bn']}); imgsz {run['config']['imgsz']}")
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- earlier runs
def legacy_plot(kind: str, run: dict[str, Any], path: Path) -> None:
    """Runs of the earlier version (no selection split): per segment source, the best τ(segment) variant and BN
    policy by val mean (chosen on the reported data, as the title says), normalized val scores over α × β."""
    from matplotlib.figure import Figure

    labels = list(run["sources"])
    fig = Figure(figsize=(17, 4.4 * len(labels) + 1.2))
    axes = fig.subplots(len(labels), 3, squeeze=False)
    for row_axes, label in zip(axes, labels):
        s = run["sources"][label]
        n, d, g = s["datasets"]["night"], s["datasets"]["day"], s["datasets"]["segment"]
        ok = [r for r in s["rows"] if "error" not in r]
        best = max(ok, key=lambda r: r["mean_norm"])
        rows = [r for r in s["rows"] if (r["variant"], r["bn"]) == (best["variant"], best["bn"])]
        for ax, (key, what) in zip(row_axes, ((f"{n}/map50_95", f"{n} box ÷ night fine-tune"), (f"{d}/map50_95", f"{d} box ÷ base80"), (f"{g}/mask_map50_95", f"{g} mask ÷ segment model ({s['sources']['segment'][g]['mask_map50_95']:.3f})"))):
            _heatmap(ax, rows, lambda r, k=key: r.get(f"norm/{k}") if "error" not in r else None, f"source {label}: {what}\n(τ_seg {best['variant']}, bn={best['bn']}; red: best mean on val)", best)
    figure_title(fig, "Detect + segment in one model (earlier version: no selection split, segment sources with mask mAP50-95 ≤ 0.01)", run,
                 "val scores ÷ each source; the marked point is the best on the same val data (selected on the reported data)")
    fig.tight_layout()
    save_figure(fig, path)


def _f(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def legacy_source_markdown(label: str, s: dict[str, Any]) -> list[str]:
    n, d, g = s["datasets"]["night"], s["datasets"]["day"], s["datasets"]["segment"]
    lines = [
        f"### segment source: {label} (`{Path(s['segment_model']).name}`, validated on {g})",
        "",
        f"‖τ‖/‖θ_base‖ (backbone+neck+box): τ_detect (night) {s['norm_ratio']['night']:.1%}, τ_segment {s['norm_ratio']['segment']:.1%}; "
        f"{len(s['carried'])} mask-branch tensors carried.",
        "",
        "Sources (no merge):",
        "",
        f"| model | {n} box | {d} box | {g} box | {g} mask | {g} mask mAP50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, sc in s["sources"].items():
        lines.append(f"| {name} | {_f(sc[n]['map50_95'])} | {_f(sc[d]['map50_95'])} | {_f(sc[g]['map50_95'])} | {_f(sc[g].get('mask_map50_95'))} | {_f(sc[g].get('mask_map50'))} |")
    ok = [r for r in s["rows"] if "error" not in r]
    best = max(ok, key=lambda r: r["mean_norm"]) if ok else None
    lines += [
        "",
        "Merged `base80 + α·τ_detect + β·τ_segment` (one Segment model): mAP50-95, normalized by the source in parentheses",
        f"(night fine-tune on {n}, base80 on {d}, the segment model on {g}); best mean in bold:",
        "",
        f"| τ_segment | bn | α (night) | β (segment) | {n} box | {d} box | {g} box | {g} mask | mean normalized | {g} mask mAP50 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['bn']} | {r['night']:g} | {r['seg']:g} | refused: {r['error'].split(';')[0]} ||||||")
            continue
        cells = [f"{_f(r[k])} ({_f(r['norm/' + k])})" for k in (f"{n}/map50_95", f"{d}/map50_95", f"{g}/map50_95", f"{g}/mask_map50_95")]
        mean = _f(r["mean_norm"])
        m50 = f"{_f(r[f'{g}/mask_map50'])} ({_f(r[f'norm/{g}/mask_map50'])})"
        lines.append(f"| {r['variant']} | {r['bn']} | {r['night']:g} | {r['seg']:g} | " + " | ".join(cells) + f" | {'**' + mean + '**' if r is best else mean} | {m50} |")
    lines.append("")
    return lines


def legacy_markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# Detect + segment in one model: base80 + α·τ(fruit-night) + β·τ(segment)",
        "",
        "One Ultralytics Segment model from a detection fine-tune and a segmentation fine-tune of the same base",
        "(mask branches carried from the segment model). Box metrics on fruit80-night (the detect task) and fruit80",
        "(base80's own data), box and mask metrics on the segment model's data; imgsz 320. `no-cls`: τ_segment without",
        "its class branch. Segment data: the person view of coco-mini-seg val (203 images, 505 persons). The person",
        "segment model is trained by `benchmarks/train_seg_person.py` (see `seg_person.md`) because the shared",
        "`yolo26n-seg-cocomini.pt` scores mask mAP50-95 0.001 on coco-mini-seg. Neither is strong: base80 barely knows",
        "COCO (box mAP50-95 0.003 on coco-mini), and a CPU budget of minutes does not teach it masks (person mask",
        "mAP50-95 ≈ 0.01), so the segment-side numbers sit near the noise floor; mask mAP50 is shown for more signal.",
        "",
    ]
    for kind, run in runs.items():
        lines += [f"## {kind.upper()}", "", *environment_markdown(run["environment"], run.get("load_average_end")), f"Command: `{run['command']}` ({run['minutes']:.0f} min)", ""]
        for label, s in run["sources"].items():
            lines += legacy_source_markdown(label, s)
    return "\n".join(lines)



def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "bench_dual.py")
    if as_bool(args["render"]):
        render_outputs(args["stem"], Path(args["out"]), markdown=markdown, plot=plot)
        return
    result = run(args, argv)
    write_outputs(args["stem"], result, args["out"], kind=device_kind(args["device"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main(sys.argv[1:])
