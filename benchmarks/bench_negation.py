"""Negation: subtract β·τ(fruit-night) and measure forgetting on the target (night) vs retention on the control (day).

Two set-ups, τ = yolo26n-fruit-night − yolo26n-base80:

* ``specialist``: night fine-tune − β·τ. Should forget night and return to the base by day; at β = 1 it *is* the
  base (weights and statistics), so the curve runs from the specialist to the base.
* ``base``: base80 − β·τ. Pushes the base away from night: night mAP (target) should fall below the base's, day mAP
  (control) should stay at the base's.

BatchNorm policies, per β:

* ``merge``: statistics take −β·τ like the weights; where a running variance would become ≤ 0 the library refuses
  with its one-sentence error, recorded here verbatim.
* ``geometric``: variances interpolated in log space, positive for every β. The vector is oriented so that its far
  end is a real model (the specialist set-up applies −τ at scale β: far end base80; the base set-up applies τ at
  scale −β: far end the fine-tune), which the policy needs.
* ``recalibrate``: statistics re-estimated on ``bn_data`` images (default fruit80 train, the domain to retain:
  re-estimating on night images would re-adapt the statistics to the domain being forgotten).

Every model is built by ``yolo_taskvec.merge`` (``force=True`` for the specialist set-up, since τ was extracted from
base80, not from the specialist) and scored by ONE ``Evaluator`` on fruit80 val (day) and fruit80-night val (night).

No choice is made: the β grids and policies are fixed in advance and every point is reported as measured on val (no
"best β" is picked, so there is nothing to select and no selection split). Headline rows (each set-up and policy at
``headline_beta``, default 1): 95 % percentile bootstrap intervals over the val images (``resamples`` draws,
``yolo_taskvec.interval`` / ``difference``) of the night (target) and day (control) mAP50-95 and of their paired
differences to the start model (night) and to base80 (day).

    OMP_NUM_THREADS=1 python benchmarks/bench_negation.py                 # CPU default: 27 points, about 10 min on one idle thread (estimate)
    python benchmarks/bench_negation.py betas=0:1:0.1 base_betas=0,0.25,0.5,0.75,1,1.25,1.5 bn=merge,mixture,geometric,base,recalibrate   # full
    python benchmarks/bench_negation.py device=0                          # GPU
    python benchmarks/bench_negation.py quick=true out=/tmp/neg           # smoke test: β 0 and 1, two policies

Writes ``benchmarks/results/negation.{md,json,png}`` (``out=`` another folder).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

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
    "betas": "0:1:0.25",
    "base_betas": "0,0.5,1,1.5",
    "bn": "merge,geometric,recalibrate",
    "bn_data": str(DATASETS / "fruit80.yaml"),
    "bn_batches": "16",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "headline_beta": "1",
    "resamples": "1000",
    "quick": "false",
    "out": str(RESULTS),
    "render": "false",  # true: rebuild the .md/.png from the stored .json, measure nothing
}
QUICK = {"betas": "0,1", "base_betas": "0,1", "bn": "merge,geometric", "bn_batches": "2", "resamples": "200"}
SETUPS = {
    "specialist": "night fine-tune − β·τ(fruit-night)",
    "base": "base80 − β·τ(fruit-night)",
}


def negated(setup: str, tau, neg_tau, beta: float):
    """``(start model, vector, scale)`` such that start + scale·vector = start − β·τ, oriented for ``geometric``."""
    if setup == "specialist":
        return "tuned", neg_tau, beta
    return "base", tau, -beta


def headline_intervals(stats: dict, start: dict, base: dict, day: str, night: str, resamples: int) -> dict[str, dict]:
    """95 % bootstrap intervals over the val images: night (target) and day (control) mAP50-95, night minus the start
    model's night, day minus base80's day (paired: the same resampled images for both models)."""
    from yolo_taskvec import difference, interval

    kw = {"resamples": resamples, "seed": 0}
    return {
        "night": interval(stats[night], **kw).to_dict(),
        "day": interval(stats[day], **kw).to_dict(),
        "night_vs_start": difference(stats[night], start[night], **kw).to_dict(),
        "day_vs_base": difference(stats[day], base[day], **kw).to_dict(),
    }


def run(args: dict[str, str]) -> dict:
    import torch

    from yolo_taskvec import (
        Evaluator,
        TaskVecError,
        TaskVector,
        load_model,
        merge,
        quiet_ultralytics,
    )

    quick = as_bool(args["quick"])
    if quick:
        args = {**args, **{k: v for k, v in QUICK.items() if args[k] == DEFAULTS[k]}}
    headline_beta, resamples = float(args["headline_beta"]), int(args["resamples"])
    env = environment(args["device"])
    print(f"{env['machine']}; OMP_NUM_THREADS={env['omp_num_threads']}\n{env['device']}; GPU available: {env['gpu_available']}\n{env['versions']}\nload average at start: {env['load_average_start']}")
    t_start = time.perf_counter()
    models = {"base": load_model(args["base"]), "tuned": load_model(args["tuned"])}
    tau = TaskVector.from_models(models["base"], models["tuned"], name="fruit-night")
    neg_tau = -tau
    data = [args["day"], args["night"]]
    day, night = (Path(d).stem for d in data)
    policies = [b.strip() for b in args["bn"].split(",") if b.strip()]
    bn_data = [d for d in args["bn_data"].split(",") if d]
    rows = []
    with quiet_ultralytics(), no_nms_time_limit():
        evaluate = Evaluator(data, imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], progress=False, per_image=True)
        refs, ref_stats = {}, {}
        for k, v in models.items():
            refs[k] = {ds: m["map50_95"] for ds, m in evaluate(v).items()}
            ref_stats[k] = dict(evaluate.image_stats)
        print(f"references: base80 {day} {refs['base'][day]:.4f} {night} {refs['base'][night]:.4f}; fine-tune {day} {refs['tuned'][day]:.4f} {night} {refs['tuned'][night]:.4f}")
        for setup in SETUPS:
            betas = as_floats(args["betas"] if setup == "specialist" else args["base_betas"])
            for bn in policies:
                for beta in betas:
                    start, vector, scale = negated(setup, tau, neg_tau, beta)
                    recalibration = {"bn_data": bn_data, "bn_batches": int(args["bn_batches"])} if bn == "recalibrate" else {}  # only recalibrate reads images
                    row = {"setup": setup, "bn": bn, "beta": beta}
                    t = time.perf_counter()
                    try:
                        merged = merge(models[start], [vector], scale=scale, bn=bn, imgsz=int(args["imgsz"]), force=setup == "specialist", **recalibration)
                    except TaskVecError as e:
                        row["refused"] = str(e)
                        print(f"{setup:>10} bn={bn:<11} β={beta:<4g} refused: {e}")
                        rows.append(row)
                        continue
                    metrics = evaluate(merged)
                    row.update({"day": metrics[day]["map50_95"], "night": metrics[night]["map50_95"], "seconds": round(time.perf_counter() - t, 2)})
                    if abs(beta - headline_beta) < 1e-9:  # a fixed headline point (no choice), with its val intervals
                        row["intervals"] = headline_intervals(dict(evaluate.image_stats), ref_stats[start], ref_stats["base"], day, night, resamples)
                    rows.append(row)
                    print(f"{setup:>10} bn={bn:<11} β={beta:<4g} {day} {row['day']:.4f}  {night} {row['night']:.4f}")
    settings = {
        "base": args["base"], "tuned": args["tuned"], "data": [day, night], "imgsz": int(args["imgsz"]), "batch": int(args["batch"]), "device": args["device"],
        "bn_data": [Path(d).stem + " train" for d in bn_data], "bn_batches": int(args["bn_batches"]), "torch_threads": torch.get_num_threads(),
        "headline_beta": headline_beta, "resamples": resamples, "quick": quick, "val_images": {ds: len(ref_stats["base"][ds]) for ds in (day, night)},
    }
    summary = {"references": refs, "total_s": round(time.perf_counter() - t_start, 1), "load_average_end": load_average()}
    return {"environment": env, "settings": settings, "summary": summary, "rows": rows}


# ----------------------------------------------------------------------------------------------- outputs
def markdown(runs: dict) -> str:
    lines = [
        "# Negation: forgetting the night task vs keeping the day",
        "",
        "τ = `yolo26n-fruit-night.pt` − `yolo26n-base80.pt`; mAP50-95 on fruit80 val (day, the control) and fruit80-night val",
        "(night, the target to forget), 60 images each, imgsz 320. Each model is built by `yolo_taskvec.merge` and scored by",
        "one `Evaluator` (Ultralytics' NMS time limit lifted). *forgotten*: the share of the night gain over the base that",
        "is removed, (night(β=0) − night) / (night(β=0) − base80's night) for the specialist set-up; *retained*: day / base80's day.",
        "**No choice is made**: the β grids and BatchNorm policies are fixed in advance and every point is reported as measured",
        "on val; no best β is picked, so no selection split is needed. Intervals: 95 % percentile bootstrap over the val images.",
        "Regenerate: `OMP_NUM_THREADS=1 python benchmarks/bench_negation.py` (CPU) or `python benchmarks/bench_negation.py device=0` (GPU).",
        "",
    ]
    for kind, r in runs.items():
        lines += section(kind, r)
    if "cuda" not in runs:
        lines += ["No GPU figures yet (no GPU was available for this run): `python benchmarks/bench_negation.py device=0` adds them.", ""]
    return "\n".join(lines)


def section(kind: str, r: dict) -> list[str]:
    env, st, s = r["environment"], r["settings"], r["summary"]
    day, night = st["data"]
    refs = s["references"]
    lines = [f"## {kind.upper()}" + (" (quick smoke run: tiny grid, not a result)" if st.get("quick") else ""), "", *environment_markdown(env, s["load_average_end"])]
    lines += [
        (f"References (same run, val): base80 {day} {refs['base'][day]:.4f}, {night} {refs['base'][night]:.4f}; "
        f"night fine-tune {day} {refs['tuned'][day]:.4f}, {night} {refs['tuned'][night]:.4f}. "
        + (f"`recalibrate` re-estimates the statistics on {' + '.join(st['bn_data'])} images ({st['bn_batches']} batches of 16). " if recalibrated(r) else "")
        + f"{s['total_s'] / 60:.1f} min in all."),
        "",
    ]
    lines += headline_section(r)
    for setup, title in SETUPS.items():
        rows = [x for x in r["rows"] if x["setup"] == setup]
        if not rows:
            continue
        start_night = refs["tuned"][night] if setup == "specialist" else refs["base"][night]
        lines += [f"### {title}", "", f"| BN | β | {night} (target) | {day} (control) | {night} vs β=0 | forgotten | retained |", "|---|---|---|---|---|---|---|"]
        for x in rows:
            if "refused" in x:
                lines.append(f"| {x['bn']} | {x['beta']:g} | refused: *{x['refused']}* | | | | |")
                continue
            gain = start_night - refs["base"][night]
            forgotten = (start_night - x["night"]) / gain if setup == "specialist" and gain > 0 else None
            lines.append(f"| {x['bn']} | {x['beta']:g} | {x['night']:.4f} | {x['day']:.4f} | {x['night'] / start_night:.3f} | " + (f"{forgotten:.2f}" if forgotten is not None else "-") + f" | {x['day'] / refs['base'][day]:.3f} |")
        lines.append("")
    refused = [x for x in r["rows"] if "refused" in x]
    lines += [
        "Notes: with `bn=merge` the running variances take −β·τ too; "
        + (f"{len(refused)} of the requested points were refused by the library (variances would be ≤ 0), with the message shown. " if refused else "no point made a variance non-positive. ")
        + "`geometric` keeps variances positive for every β; `recalibrate` re-estimates them on images of the domain to retain. "
        "*forgotten* above 1 means the night score fell below base80's; below 0 that it rose (specialist − small β·τ is "
        "base80 + (1 − β)·τ, which can score above the specialist at night).",
        "",
    ]
    return lines


def ci(d: dict, signed: bool = False) -> str:
    f = "+.4f" if signed else ".4f"
    return f"{d['value']:{f}} [{d['low']:{f}}, {d['high']:{f}}]"


def headline_section(r: dict) -> list[str]:
    """Each set-up and policy at the fixed headline β, with val bootstrap intervals of the scores and differences."""
    st = r["settings"]
    day, night = st["data"]
    rows = [x for x in r["rows"] if "intervals" in x]
    if not rows:
        return []
    n = " / ".join(str(v) for v in st.get("val_images", {}).values())
    lines = [
        f"### Headline: β = {st['headline_beta']:g} (fixed in advance), with 95 % bootstrap intervals",
        "",
        (f"mAP50-95 on val with 95 % percentile intervals over the val images ({n} images, {st['resamples']} resamples); Δ are paired "
        "(both models on the same resampled images). *start*: the model the set-up subtracts from (the night fine-tune or base80). "
        "*resolved*: the Δ interval excludes 0."),
        "",
        f"| set-up | BN | {night} (target) | Δ {night} vs start | resolved | {day} (control) | Δ {day} vs base80 | resolved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        iv = x["intervals"]
        lines.append(f"| {SETUPS[x['setup']]} | {x['bn']} | {ci(iv['night'])} | {ci(iv['night_vs_start'], True)} | {resolved(iv['night_vs_start'])} | "
                     f"{ci(iv['day'])} | {ci(iv['day_vs_base'], True)} | {resolved(iv['day_vs_base'])} |")
    refused = [x for x in r["rows"] if "refused" in x and abs(x["beta"] - st["headline_beta"]) < 1e-9]
    lines += [""] + ([f"Refused at β = {st['headline_beta']:g}: " + ", ".join(f"{SETUPS[x['setup']]} with bn={x['bn']}" for x in refused) + ".", ""] if refused else [])
    return lines


def recalibrated(r: dict) -> bool:
    return any(x["bn"] == "recalibrate" for x in r["rows"])


def resolved(d: dict) -> str:
    if d["low"] == d["high"] == 0.0:
        return "identical"
    return "yes" if not d["low"] <= 0.0 <= d["high"] else "no (0 inside)"


def plot(runs: dict, path: Path) -> None:
    """One panel per set-up: target (night, solid) and control (day, dashed) mAP vs β, one colour per BN policy;
    refused points marked on the β axis; the three reference scores as named lines."""
    from matplotlib.figure import Figure

    r = runs.get("cuda") or runs["cpu"]
    day, night = r["settings"]["data"]
    refs = r["summary"]["references"]
    fig = Figure(figsize=(13, 6.2))
    axes = fig.subplots(1, len(SETUPS), squeeze=False)[0]
    policies = list(dict.fromkeys(x["bn"] for x in r["rows"]))
    colors = {bn: PALETTE[i % len(PALETTE)] for i, bn in enumerate(policies)}
    top = max([x.get(k, 0) for x in r["rows"] for k in ("day", "night")] + [refs["tuned"][night], refs["base"][day]] + [x["intervals"][k]["high"] for x in r["rows"] if "intervals" in x for k in ("day", "night")]) * 1.08
    for ax, (setup, title) in zip(axes, SETUPS.items()):
        rows = [x for x in r["rows"] if x["setup"] == setup]
        for bn in policies:
            ok = [x for x in rows if x["bn"] == bn and "refused" not in x]
            if ok:
                ax.plot([x["beta"] for x in ok], [x["night"] for x in ok], "o-", color=colors[bn], label=f"{night} (target), bn={bn}")
                ax.plot([x["beta"] for x in ok], [x["day"] for x in ok], "s--", color=colors[bn], label=f"{day} (control), bn={bn}")
                for x in (x for x in ok if "intervals" in x):  # the headline β: 95 % bootstrap intervals
                    for key in ("night", "day"):
                        d = x["intervals"][key]
                        ax.errorbar([x["beta"]], [d["value"]], yerr=[[d["value"] - d["low"]], [d["high"] - d["value"]]], fmt="none", ecolor=colors[bn], capsize=4, linewidth=1.2)
            bad = [x for x in rows if x["bn"] == bn and "refused" in x]
            if bad:
                ax.plot([x["beta"] for x in bad], [0.0] * len(bad), "X", color=colors[bn], markersize=10, clip_on=False, zorder=5, label=f"bn={bn}: refused (a variance ≤ 0)")
        ax.axhline(refs["tuned"][night], color="0.2", linestyle=":", linewidth=1.2, label=f"night fine-tune on {night}")
        ax.axhline(refs["base"][day], color="0.45", linestyle="-.", linewidth=1, label=f"base80 on {day}")
        ax.axhline(refs["base"][night], color="0.65", linestyle=(0, (5, 2, 1, 2)), linewidth=1, label=f"base80 on {night}")
        ax.set(title=title, xlabel="β (amount of τ subtracted)", ylabel="mAP50-95", ylim=(0, top))
        ax.grid(alpha=0.3)
        legend_below(ax, ncol=2)
    st = r["settings"]
    beta = st.get("headline_beta")
    figure_title(fig, "Negation: subtracting β·τ(fruit-night) forgets night (target) and keeps day (control)", r,
                 f"{day} val (day) and {night} val (night), imgsz {st['imgsz']}; fixed β grids, no choice made"
                 + (f"; error bars: 95 % bootstrap intervals at β = {beta:g}" if beta is not None else "") + (f"; recalibrate on {' + '.join(st['bn_data'])}" if recalibrated(r) else ""))
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_negation.py")
    if as_bool(args["render"]):
        render_outputs("negation", Path(args["out"]), markdown=markdown, plot=plot)
        return
    result = run(args)
    write_outputs("negation", result, Path(args["out"]), kind=device_kind(args["device"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
