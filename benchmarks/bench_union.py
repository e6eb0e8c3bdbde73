"""Class-union benchmark: fruit (base80's own classes) + raccoon + kangaroo + bccd merged into ONE detector.

``merge(base80, [raccoon, kangaroo, bccd], method=..., classes="union")`` merges backbone, neck and box branch with
the method and keeps each task's class branch exactly (block-diagonal head, 85 classes: base80's 80, then raccoon,
kangaroo, RBC, WBC, Platelets). Each point is scored on the four val splits written with union class ids
(``union_data``) by ONE reused ``Evaluator`` (every union model has the same class set), through ``sweep`` (one
results file per point, so an interrupted run resumes and a merge that is refused, e.g. non-positive BatchNorm
variances under ``bn=merge``, is recorded and skipped). Normalized mAP50-95 = merged / specialist, where the
specialist of fruit80 is base80 and that of each other task is the fine-tune being merged (scored on its own data).

Two sets of fine-tunes, two tables:

* ``reference``: the shared ``yolo26n-raccoon/kangaroo/bccd.pt`` (far from base80: task-vector norm 13-18 %);
* ``close``: the fine-tunes of ``train_close_finetunes.py`` (found in ``<runs_dir>/taskvec-close``; ``close=`` overrides).

Grid: ``methods`` × ``bn`` (``recalibrate`` re-estimates the shared BatchNorm statistics on the four train splits)
× ``scales``; ``extra`` methods only with ``extra_bn``. Baselines: scale 0 (base80's trunk + each task's own class
branch), and per task its own trunk (scale 1 for that vector, 0 for the others: the cost of the union head itself).

Negation (benchmark 4): from the best task-arithmetic union of a set (scale λ, its BatchNorm policy),
``base + λ(τ_r + τ_k + τ_b) − β·τ_r``: raccoon (target) vs fruit, kangaroo, bccd (control), for β = λ × each of
``betas`` (β = λ takes raccoon's share out of the trunk; larger β pushes the trunk away from raccoon).
The raccoon class branch stays in the model; what is forgotten is the trunk's raccoon-specific change.

    python benchmarks/bench_union.py                  # CPU (about 1-2 h on 2 busy cores; resumes)
    python benchmarks/bench_union.py device=0         # GPU
    python benchmarks/bench_union.py sets=close methods=task_arithmetic bn=merge extra= scales=0.3

Writes ``benchmarks/results/union.{md,json,png}`` and ``union_negation.{md,json,png}``; per-point results files
and dataset views under ``<runs_dir>/bench_union`` (``work=``).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, RESULTS, as_bool, as_floats, device_kind, environment, environment_markdown, load_average, parse_args, save_figure, write_outputs  # noqa: E402

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "fruit": "fruit80",
    "tasks": "raccoon,kangaroo,bccd",
    "reference": "yolo26n-raccoon.pt,yolo26n-kangaroo.pt,yolo26n-bccd.pt",
    "close": "",  # default: <runs_dir>/taskvec-close/<task>/weights/best.pt (train_close_finetunes.py)
    "sets": "reference,close",
    "methods": "task_arithmetic,ties,dare_ties,tsv,iso_c",
    "bn": "merge,geometric,recalibrate",
    "extra": "average,magnitude_prune,breadcrumbs,consensus,disjoint,iso_cts",
    "extra_bn": "recalibrate",
    "scales": "0.1,0.3,0.5,1.0",
    "betas": "0,0.5,1,2,4",  # multiples of λ: 1 removes the target's share of the union, 2 and 4 go beyond
    "bn_batches": "16",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "seed": "0",
    "work": "",  # default: <runs_dir>/bench_union
    "resume": "true",
    "out": str(RESULTS),
}
CORE_STYLE = {"task_arithmetic": "tab:blue", "ties": "tab:orange", "dare_ties": "tab:red", "tsv": "tab:purple", "iso_c": "tab:green"}
EXTRA_COLORS = ("tab:olive", "tab:cyan", "tab:pink", "tab:brown", "tab:gray", "black", "gold", "navy")


# ----------------------------------------------------------------------------------------------- setup
def runs_dir() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"])


def task_models(args: dict[str, str], tasks: list[str]) -> dict[str, list[str]]:
    """``{set: [checkpoint per task]}`` for the requested sets."""
    from yolo_taskvec import resolve_weights

    sets = {}
    for name in [s for s in args["sets"].split(",") if s]:
        if name == "reference":
            paths = [str(resolve_weights(p)) for p in args["reference"].split(",") if p]
        elif name == "close":
            given = [p for p in args["close"].split(",") if p]
            paths = given or [str(runs_dir() / "taskvec-close" / t / "weights" / "best.pt") for t in tasks]
            missing = [p for p in paths if not Path(p).exists()]
            if missing:
                sys.exit(f"close fine-tune {missing[0]} not found; run benchmarks/train_close_finetunes.py first (or pass close=a.pt,b.pt,c.pt).")
        else:
            sys.exit(f"unknown set '{name}'; sets are reference and close.")
        if len(paths) != len(tasks):
            sys.exit(f"set {name} has {len(paths)} checkpoints for {len(tasks)} tasks.")
        sets[name] = paths
    return sets


def vectors_of(base: Any, paths: list[str], tasks: list[str]) -> list[Any]:
    """Task vectors named after their task (class branches of other shapes carried)."""
    from yolo_taskvec import TaskVector

    return [TaskVector.from_models(base, p, name=t, unmatched="carry") for p, t in zip(paths, tasks)]


# ----------------------------------------------------------------------------------------------- scoring
class Runner:
    """Scores union merges point by point through ``sweep`` with one shared Evaluator; resumable per point."""

    def __init__(self, base: Any, views: list[Path], train_yamls: list[str], args: dict[str, str]):
        from yolo_taskvec import Evaluator

        self.base, self.args, self.train_yamls = base, args, train_yamls
        self.evaluator = Evaluator([str(v) for v in views], imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], progress=False)
        self.work = Path(args["work"]) if args["work"] else runs_dir() / "bench_union"
        self.resume = as_bool(args["resume"])

    def point(self, set_name: str, vectors: list[Any], method: str, bn: str, axes: dict[str, float], label: str) -> dict[str, Any]:
        """One merge, scored on the four union views: ``{"<task>": mAP50-95, "<task>/map50": ..., "seconds"}`` or ``{"error"}``."""
        import shutil

        from yolo_taskvec import TaskVecError, sweep

        folder = self.work / set_name / method / bn / label
        if not self.resume and folder.exists():
            shutil.rmtree(folder)
        try:
            res = sweep(
                self.base,
                vectors,
                data=[str(d.yaml) for d in self.evaluator.datasets],
                scales={k: [v] for k, v in axes.items()},
                method=method,
                bn=bn,
                bn_data=self.train_yamls if bn == "recalibrate" else None,
                bn_batches=int(self.args["bn_batches"]),
                classes="union",
                seed=int(self.args["seed"]),
                imgsz=int(self.args["imgsz"]),
                batch=int(self.args["batch"]),
                device=self.args["device"],
                evaluator=self.evaluator,
                out=folder,
                plot=False,
                verbose=False,
            )
        except TaskVecError as e:
            return {"error": str(e)}
        row = res.rows[0]
        out = {"seconds": row.get("seconds")}
        for d in self.evaluator.names:
            out[d] = row[f"{d}/map50_95"]
            out[f"{d}/map50"] = row[f"{d}/map50"]
        return out


def normalize(row: dict[str, Any], specialists: dict[str, float]) -> dict[str, Any]:
    """Adds ``<task>/norm`` (merged / specialist) and ``mean_norm``."""
    if "error" in row:
        return row
    for d, s in specialists.items():
        row[f"{d}/norm"] = row[d] / s
    row["mean_norm"] = sum(row[f"{d}/norm"] for d in specialists) / len(specialists)
    return row


def score_specialists(base_path: str, paths: list[str], fruit: str, tasks: list[str], args: dict[str, str]) -> dict[str, float]:
    """mAP50-95 of each specialist on its own data: base80 on fruit, each fine-tune on its task."""
    from yolo_taskvec import Evaluator

    names = [fruit, *tasks]
    ev = Evaluator([str(DATASETS / f"{n}.yaml") for n in names], imgsz=int(args["imgsz"]), batch=int(args["batch"]), device=args["device"], progress=False)
    return {n: ev.score(m, n)["map50_95"] for n, m in zip(names, [base_path, *paths])}


def vector_norms(base: Any, vectors: list[Any]) -> dict[str, float]:
    """‖τ‖ / ‖θ_base‖ over the shared parts (backbone, neck, box branch; learned tensors)."""
    from yolo_taskvec import is_bn_stat

    out = {}
    for tv in vectors:
        num = den = 0.0
        for k, d in tv.deltas.items():
            if not is_bn_stat(k) and tv.part_of(k) != "head.cls":
                num += float(d.double().pow(2).sum())
                den += float(base.state[k].double().pow(2).sum())
        out[tv.meta["name"]] = math.sqrt(num / den)
    return out


def run_set(runner: Runner, set_name: str, base_path: str, paths: list[str], fruit: str, tasks: list[str], args: dict[str, str]) -> dict[str, Any]:
    from ultralytics.utils import TQDM

    vectors = vectors_of(runner.base, paths, tasks)
    specialists = score_specialists(base_path, paths, fruit, tasks, args)
    print(f"[{set_name}] specialists: " + ", ".join(f"{k} {v:.3f}" for k, v in specialists.items()), flush=True)
    scales = as_floats(args["scales"])
    plan = [(m, bn) for m in args["methods"].split(",") if m for bn in args["bn"].split(",") if bn]
    plan += [(m, bn) for m in args["extra"].split(",") if m for bn in args["extra_bn"].split(",") if bn]
    rows = []
    bar = TQDM([(m, bn, s) for m, bn in plan for s in scales], desc=f"union {set_name}")
    for method, bn, s in bar:
        row = normalize(runner.point(set_name, vectors, method, bn, {"scale": s}, f"scale{s:g}"), specialists)
        rows.append({"method": method, "bn": bn, "scale": s, **row})
        bar.set_description(f"union {set_name} {method}/{bn}/{s:g}: " + (f"{row['mean_norm']:.3f}" if "error" not in row else "refused"))
    baselines = []
    for bn in ("merge", "recalibrate"):
        row = normalize(runner.point(set_name, vectors, "task_arithmetic", bn, {"scale": 0.0}, "scale0"), specialists)
        baselines.append({"name": f"scale 0: base80 trunk + own class branches (bn={bn})", "bn": bn, **row})
    for task in tasks:  # each task's own trunk: vector weight 1 for it, 0 for the others
        axes = {"scale": 1.0, **{t: float(t == task) for t in tasks}}
        row = normalize(runner.point(set_name, vectors, "task_arithmetic", "merge", axes, f"own-{task}"), specialists)
        baselines.append({"name": f"{task}'s own trunk + all class branches", "bn": "merge", **row})
    negation = run_negation(runner, set_name, vectors, rows, specialists, tasks, args)
    return {"models": paths, "specialists": specialists, "vector_norms": vector_norms(runner.base, vectors), "rows": rows, "baselines": baselines, "negation": negation}


def run_negation(runner: Runner, set_name: str, vectors: list[Any], rows: list[dict[str, Any]], specialists: dict[str, float], tasks: list[str], args: dict[str, str]) -> dict[str, Any]:
    """``base + λ(τ_1 + ... + τ_n) − β·τ_target`` from the set's best task-arithmetic union."""
    ta = [r for r in rows if r["method"] == "task_arithmetic" and "error" not in r]
    if not ta:
        return {}
    best = max(ta, key=lambda r: r["mean_norm"])
    lam, bn, target = best["scale"], best["bn"], tasks[0]
    out = {"target": target, "lambda": lam, "bn": bn, "rows": []}
    for k in as_floats(args["betas"]):
        beta = k * lam
        axes = {**{t: lam for t in tasks}, target: lam - beta}
        row = normalize(runner.point(set_name, vectors, "task_arithmetic", bn, axes, f"negate-{target}-l{lam:g}-b{beta:g}"), specialists)
        out["rows"].append({"beta_over_lambda": k, "beta": beta, **row})
    ref = out["rows"][0] if out["rows"] and out["rows"][0]["beta"] == 0 and "error" not in out["rows"][0] else None
    for r in out["rows"]:
        if ref is not None and "error" not in r:
            r["retention"] = {d: (r[d] / ref[d] if ref[d] > 0 else float("nan")) for d in specialists}
    print(f"[{set_name}] negation of {target} from λ={lam:g} ({bn}): " + "; ".join(f"β={r['beta']:g} " + (", ".join(f"{d} {r[d]:.3f}" for d in specialists) if "error" not in r else "refused") for r in out["rows"]), flush=True)
    return out


# ----------------------------------------------------------------------------------------------- report
def _cell(value: float | None, bold: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:.3f}"
    return f"**{text}**" if bold else text


def best_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best scale of each (method, bn)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["bn"]), []).append(r)
    out = []
    for (method, bn), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        out.append(max(ok, key=lambda r: r["mean_norm"]) if ok else {"method": method, "bn": bn, "error": rs[0].get("error")})
    return out


def set_markdown(name: str, run: dict[str, Any], datasets: list[str]) -> list[str]:
    rows, spec = run["rows"], run["specialists"]
    scales = sorted({r["scale"] for r in rows})
    best_mean = max((r["mean_norm"] for r in rows if "error" not in r), default=None)
    norms = ", ".join(f"{k} {v:.1%}" for k, v in run["vector_norms"].items())
    lines = [
        f"### {name} fine-tunes",
        "",
        "Models: " + ", ".join(f"`{Path(p).parent.parent.name + '/' if Path(p).name == 'best.pt' else ''}{Path(p).name}`" for p in run["models"]) + f"; ‖τ‖/‖θ_base‖ (backbone+neck+box): {norms}.",
        "Specialists (mAP50-95, own data): " + ", ".join(f"{k} {v:.3f}" for k, v in spec.items()) + ".",
        "",
        "Mean normalized mAP50-95 over the four tasks, per scale (refused: the merge was refused, e.g. non-positive BatchNorm variances):",
        "",
        "| method | bn | " + " | ".join(f"scale {s:g}" for s in scales) + " |",
        "|---|---|" + "---:|" * len(scales),
    ]
    table: dict[tuple[str, str], dict[float, dict[str, Any]]] = {}
    for r in rows:
        table.setdefault((r["method"], r["bn"]), {})[r["scale"]] = r
    for (method, bn), by_scale in table.items():
        cells = []
        for s in scales:
            r = by_scale.get(s)
            cells.append("refused" if r is not None and "error" in r else _cell(r["mean_norm"] if r else None, r is not None and r["mean_norm"] == best_mean))
        lines.append(f"| {method} | {bn} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Best scale of each method × BatchNorm policy: normalized mAP50-95 per task (raw mAP50-95 in parentheses):",
        "",
        "| method | bn | scale | " + " | ".join(datasets) + " | mean |",
        "|---|---|---:|" + "---:|" * (len(datasets) + 1),
    ]
    ranked = sorted(best_rows(rows), key=lambda r: -r.get("mean_norm", -1))
    for r in ranked:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['bn']} | — | " + " | ".join("refused" for _ in datasets) + " | — |")
            continue
        lines.append(f"| {r['method']} | {r['bn']} | {r['scale']:g} | " + " | ".join(f"{r[d + '/norm']:.3f} ({r[d]:.3f})" for d in datasets) + f" | {_cell(r['mean_norm'], r['mean_norm'] == best_mean)} |")
    lines += ["", "Baselines (task arithmetic):", "", "| model | " + " | ".join(datasets) + " | mean |", "|---|" + "---:|" * (len(datasets) + 1)]
    for r in run["baselines"]:
        if "error" in r:
            lines.append(f"| {r['name']} | refused: {r['error']} |")
            continue
        lines.append(f"| {r['name']} | " + " | ".join(f"{r[d + '/norm']:.3f} ({r[d]:.3f})" for d in datasets) + f" | {r['mean_norm']:.3f} |")
    lines.append("")
    return lines


def markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# Class-union merge: fruit (base80) + raccoon + kangaroo + bccd in one detector",
        "",
        "One Ultralytics detector over 85 classes (base80's 80 COCO classes incl. apple/banana/orange, then raccoon,",
        "kangaroo, RBC, WBC, Platelets): backbone, neck and box branch merged with the method, each task's class branch",
        "kept exactly (block-diagonal head). Scored on each task's val split with union class ids, imgsz 320.",
        "Normalized = merged mAP50-95 / specialist (base80 for fruit80, the merged fine-tune itself for the others).",
        "`bn=recalibrate`: shared BatchNorm statistics re-estimated on the four train splits (16 batches of 16 images).",
        "Method parameters are the registry defaults (ties density 0.2, dare_ties p 0.9 seed 0, tsv rank 1/T, consensus k 2 λ 0.4,",
        "magnitude_prune density 0.2, breadcrumbs density 0.9 γ 0.01, iso_cts common fraction 0.8).",
        "",
    ]
    for kind, run in runs.items():
        lines += [f"## {kind.upper()}", "", *environment_markdown(run["environment"], run.get("load_average_end")), f"Command: `{run['command']}` ({run['minutes']:.0f} min)", ""]
        if run.get("close_recipe"):
            lines += [f"Close fine-tunes: {run['close_recipe']} (see `close_finetunes.md`).", ""]
        for name, s in run["sets"].items():
            lines += set_markdown(name, s, run["datasets"])
        lines += summary_lines(run)
    return "\n".join(lines)


def summary_lines(run: dict[str, Any]) -> list[str]:
    lines = ["### Summary", ""]
    for name, s in run["sets"].items():
        ok = [r for r in s["rows"] if "error" not in r]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["mean_norm"])
        zero = s["baselines"][0]
        lines.append(
            f"- {name}: best merge {best['method']} bn={best['bn']} scale {best['scale']:g} → mean normalized {best['mean_norm']:.3f} "
            f"(absolute mAP50-95 " + ", ".join(f"{d} {best[d]:.3f}" for d in run["datasets"]) + f"); scale-0 baseline {zero.get('mean_norm', float('nan')):.3f}."
        )
    lines.append("")
    return lines


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    run = runs.get("cpu") or next(iter(runs.values()))
    sets = list(run["sets"])
    bns = list(dict.fromkeys(r["bn"] for s in run["sets"].values() for r in s["rows"]))
    fig, axes = plt.subplots(len(sets), len(bns), figsize=(4.6 * len(bns), 3.8 * len(sets)), squeeze=False, sharey=True)
    for i, name in enumerate(sets):
        s = run["sets"][name]
        methods = list(dict.fromkeys(r["method"] for r in s["rows"]))
        extra = [m for m in methods if m not in CORE_STYLE]
        colors = {**CORE_STYLE, **{m: EXTRA_COLORS[k % len(EXTRA_COLORS)] for k, m in enumerate(extra)}}
        for j, bn in enumerate(bns):
            ax = axes[i][j]
            for method in methods:
                pts = sorted((r["scale"], r["mean_norm"]) for r in s["rows"] if r["method"] == method and r["bn"] == bn and "error" not in r)
                if not pts:
                    continue
                core = method in CORE_STYLE
                ax.plot(*zip(*pts), marker="o" if core else ".", lw=2 if core else 1, ls="-" if core else ":", color=colors[method], label=method)
            zero = s["baselines"][0].get("mean_norm")
            if zero is not None:
                ax.axhline(zero, color="black", ls="--", lw=1.2, label="scale 0 (base trunk + own heads)")
            ax.set_title(f"{name} fine-tunes, bn={bn}", fontsize=10)
            ax.set_xlabel("scale")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("mean normalized mAP50-95")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    ncol = min(6, len(handles))
    legend_rows = -(-len(handles) // ncol)
    height = fig.get_size_inches()[1]
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    fig.suptitle("class-union merge of fruit (base80) + raccoon + kangaroo + bccd: mean normalized mAP50-95 vs scale (CPU, imgsz 320)", fontsize=11)
    fig.tight_layout(rect=(0, (0.25 + 0.22 * legend_rows) / height, 1, 1 - 0.35 / height))
    save_figure(fig, path)


def negation_markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# Negation in a class-union model: forgetting raccoon",
        "",
        "Start from the best task-arithmetic class-union model of each set, `base + λ(τ_raccoon + τ_kangaroo + τ_bccd)`",
        "(λ and BatchNorm policy from `union.md`), and subtract `β·τ_raccoon` from the shared trunk (backbone, neck,",
        "box branch); β is a multiple of λ (β = λ: raccoon's share removed; 2λ, 4λ: pushed away from raccoon).",
        "The raccoon class branch stays in the model (block-diagonal union head),",
        "so forgetting here means the features it reads lose what raccoon fine-tuning put there. Target: raccoon; control: fruit80, kangaroo, bccd.",
        "Retention = mAP50-95 / mAP50-95 at β = 0.",
        "",
    ]
    for kind, run in runs.items():
        lines += [f"## {kind.upper()}", "", *environment_markdown(run["environment"], run.get("load_average_end")), f"Command: `{run['command']}`", ""]
        for name, neg in run["sets"].items():
            if not neg:
                continue
            ds = run["datasets"]
            lines += [
                f"### {name} fine-tunes (λ = {neg['lambda']:g}, bn = {neg['bn']})",
                "",
                "| β/λ | β | " + " | ".join(f"{d}{' (target)' if d == neg['target'] else ''}" for d in ds) + " | target retention | mean control retention |",
                "|---:|---:|" + "---:|" * (len(ds) + 2),
            ]
            for r in neg["rows"]:
                if "error" in r:
                    lines.append(f"| {r['beta_over_lambda']:g} | {r['beta']:g} | refused: {r['error']} |")
                    continue
                ret = r.get("retention", {})
                control = [ret[d] for d in ds if d != neg["target"] and d in ret and not math.isnan(ret[d])]
                lines.append(
                    f"| {r['beta_over_lambda']:g} | {r['beta']:g} | " + " | ".join(f"{r[d]:.3f}" for d in ds)
                    + f" | {_cell(ret.get(neg['target']))} | {_cell(sum(control) / len(control) if control else None)} |"
                )
            lines.append("")
    return "\n".join(lines)


def negation_plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    run = runs.get("cpu") or next(iter(runs.values()))
    sets = [n for n, neg in run["sets"].items() if neg]
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(5.4 * max(1, len(sets)), 4), squeeze=False)
    colors = {"fruit80": "tab:orange", "raccoon": "tab:red", "kangaroo": "tab:brown", "bccd": "tab:purple"}
    for ax, name in zip(axes[0], sets):
        neg = run["sets"][name]
        ok = [r for r in neg["rows"] if "retention" in r]
        for d in run["datasets"]:
            target = d == neg["target"]
            ax.plot([r["beta_over_lambda"] for r in ok], [r["retention"][d] for r in ok], marker="o", lw=2.5 if target else 1.3, color=colors.get(d), label=f"{d} ({'target' if target else 'control'})")
        ax.set(xlabel="β / λ (multiples of raccoon's share subtracted)", ylabel="mAP50-95 retention (vs β = 0)", title=f"{name} fine-tunes: λ={neg['lambda']:g}, bn={neg['bn']}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle("negating τ_raccoon in a class-union model (CPU, imgsz 320)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "bench_union.py")
    from yolo_taskvec import load_model, resolve_weights, union_classes, union_data

    start = time.perf_counter()
    env = environment(args["device"])
    tasks = [t for t in args["tasks"].split(",") if t]
    fruit = args["fruit"]
    base_path = str(resolve_weights(args["base"]))
    sets = task_models(args, tasks)
    base = load_model(base_path)
    union = union_classes(base, next(iter(sets.values())))
    for name, paths in sets.items():  # one class set, so one Evaluator serves every union model
        if union_classes(base, paths).names != union.names:
            sys.exit(f"set {name} has other class names than the first set; the union models would differ.")
    yamls = [str(DATASETS / f"{n}.yaml") for n in (fruit, *tasks)]
    work = Path(args["work"]) if args["work"] else runs_dir() / "bench_union"
    views = union_data(union, yamls, work / "views", splits=["val"])
    runner = Runner(base, views, yamls, args)
    result: dict[str, Any] = {
        "environment": env,
        "command": "python benchmarks/bench_union.py " + " ".join(argv),
        "config": {k: v for k, v in args.items() if k not in ("out", "work", "resume")},
        "union_new_classes": {int(k): v for k, v in union.names.items() if k >= len(base.names)},
        "datasets": [fruit, *tasks],
        "sets": {},
    }
    close_json = Path(args["out"]) / "close_finetunes.json"
    if "close" in sets and close_json.exists():
        import json

        r = json.loads(close_json.read_text()).get(device_kind(args["device"]), {}).get("recipe")
        if r:
            result["close_recipe"] = f"optimizer={r['optimizer']} lr0={r['lr0']} epochs={r['epochs']} batch={r['batch']} imgsz={r['imgsz']} seed={r['seed']}"
    for name, paths in sets.items():
        result["sets"][name] = run_set(runner, name, base_path, paths, fruit, tasks, args)
    result["minutes"] = (time.perf_counter() - start) / 60
    result["load_average_end"] = load_average()
    kind = device_kind(args["device"])
    negation = {k: result[k] for k in ("environment", "command", "datasets", "load_average_end")}
    negation["sets"] = {n: s.pop("negation") for n, s in result["sets"].items()}
    write_outputs("union", result, args["out"], kind=kind, markdown=markdown, plot=plot)
    write_outputs("union_negation", negation, args["out"], kind=kind, markdown=negation_markdown, plot=negation_plot)


if __name__ == "__main__":
    main(sys.argv[1:])
