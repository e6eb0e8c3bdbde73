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

    python benchmarks/bench_negation.py                    # CPU
    python benchmarks/bench_negation.py device=0           # GPU

Writes ``benchmarks/results/negation.{md,json,png}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import DATASETS, PALETTE, RESULTS, as_bool, as_floats, device_kind, environment, environment_markdown, figure_title, legend_below, load_average, no_nms_time_limit, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "tuned": "yolo26n-fruit-night.pt",
    "day": str(DATASETS / "fruit80.yaml"),
    "night": str(DATASETS / "fruit80-night.yaml"),
    "betas": "0:1:0.2",
    "base_betas": "0,0.25,0.5,0.75,1,1.5",
    "bn": "merge,geometric,recalibrate",
    "bn_data": str(DATASETS / "fruit80.yaml"),
    "bn_batches": "16",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "out": str(RESULTS),
    "render": "false",  # true: rebuild the .md/.png from the stored .json, measure nothing
}
SETUPS = {
    "specialist": "night fine-tune − β·τ(fruit-night)",
    "base": "base80 − β·τ(fruit-night)",
}


def negated(setup: str, tau, neg_tau, beta: float):
    """``(start model, vector, scale)`` such that start + scale·vector = start − β·τ, oriented for ``geometric``."""
    if setup == "specialist":
        return "tuned", neg_tau, beta
    return "base", tau, -beta


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
        evaluate = Evaluator(data, imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], progress=False)
        refs = {k: {ds: m["map50_95"] for ds, m in evaluate(v).items()} for k, v in models.items()}
        print(f"references: base80 {day} {refs['base'][day]:.4f} {night} {refs['base'][night]:.4f}; fine-tune {day} {refs['tuned'][day]:.4f} {night} {refs['tuned'][night]:.4f}")
        for setup in SETUPS:
            betas = as_floats(args["betas"] if setup == "specialist" else args["base_betas"])
            for bn in policies:
                for beta in betas:
                    start, vector, scale = negated(setup, tau, neg_tau, beta)
                    row = {"setup": setup, "bn": bn, "beta": beta}
                    t = time.perf_counter()
                    try:
                        merged = merge(models[start], [vector], scale=scale, bn=bn, bn_data=bn_data, bn_batches=int(args["bn_batches"]), imgsz=int(args["imgsz"]), force=setup == "specialist")
                    except TaskVecError as e:
                        row["refused"] = str(e)
                        print(f"{setup:>10} bn={bn:<11} β={beta:<4g} refused: {e}")
                        rows.append(row)
                        continue
                    metrics = evaluate(merged)
                    row.update({"day": metrics[day]["map50_95"], "night": metrics[night]["map50_95"], "seconds": round(time.perf_counter() - t, 2)})
                    rows.append(row)
                    print(f"{setup:>10} bn={bn:<11} β={beta:<4g} {day} {row['day']:.4f}  {night} {row['night']:.4f}")
    settings = {
        "base": args["base"], "tuned": args["tuned"], "data": [day, night], "imgsz": int(args["imgsz"]), "batch": int(args["batch"]), "device": args["device"],
        "bn_data": [Path(d).stem + " train" for d in bn_data], "bn_batches": int(args["bn_batches"]), "torch_threads": torch.get_num_threads(),
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
        "Regenerate: `python benchmarks/bench_negation.py` (CPU) or `python benchmarks/bench_negation.py device=0` (GPU).",
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
    lines = [f"## {kind.upper()}", "", *environment_markdown(env, s["load_average_end"])]
    lines += [
        f"References (same run): base80 {day} {refs['base'][day]:.4f}, {night} {refs['base'][night]:.4f}; "
        f"night fine-tune {day} {refs['tuned'][day]:.4f}, {night} {refs['tuned'][night]:.4f}. "
        f"`recalibrate` re-estimates the statistics on {' + '.join(st['bn_data'])} images ({st['bn_batches']} batches of 16). {s['total_s'] / 60:.1f} min in all.",
        "",
    ]
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
        "base80 + (1 − β)·τ, and base80 + 0.8·τ scores above the specialist at night).",
        "",
    ]
    return lines


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
    top = max([x.get(k, 0) for x in r["rows"] for k in ("day", "night")] + [refs["tuned"][night], refs["base"][day]]) * 1.08
    for ax, (setup, title) in zip(axes, SETUPS.items()):
        rows = [x for x in r["rows"] if x["setup"] == setup]
        for bn in policies:
            ok = [x for x in rows if x["bn"] == bn and "refused" not in x]
            if ok:
                ax.plot([x["beta"] for x in ok], [x["night"] for x in ok], "o-", color=colors[bn], label=f"{night} (target), bn={bn}")
                ax.plot([x["beta"] for x in ok], [x["day"] for x in ok], "s--", color=colors[bn], label=f"{day} (control), bn={bn}")
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
    figure_title(fig, "Negation: subtracting β·τ(fruit-night) forgets night (target) and keeps day (control)", r,
                 f"{day} val (day) and {night} val (night), 60 images each, imgsz {st['imgsz']}; recalibrate on {' + '.join(st['bn_data'])}")
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
