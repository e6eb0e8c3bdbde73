"""Detect + segment dual-purpose merge: base80 + α·τ_detect (fruit-night) + β·τ_segment → ONE Segment model.

τ_segment comes from a segment model built from base80 (``yolo26n-seg.yaml`` + base80's weights): its mask branches
(``cv4``, ``one2one_cv4``, ``proto``) have no counterpart in the detector, so they are carried as absolute tensors
(``unmatched="carry"``) and the merge is a standard Ultralytics Segment model. Two variants of τ_segment:

* ``full``: every tensor of the segment fine-tune (its class branch too);
* ``no-cls``: without its class branch (``head.cls``), so the class logits stay base80's (+ α·τ_detect's): the
  person segment fine-tune never saw a fruit, and its class-branch change pushes every other class down.

Segment sources (``segs=``): ``person`` (``train_seg_person.py``: person polygons of coco-mini-seg + coco128-seg)
and the shared ``yolo26n-seg-cocomini.pt`` (80 classes; mask mAP50-95 0.001 over coco-mini-seg's 77 val classes).
Both are validated on the person view of coco-mini-seg val (203 images, 505 persons: the one class with enough
instances to give a number above the noise; ``seg_data=`` overrides). Each merged model is scored by one reused ``Evaluator`` per source on fruit80-night
(boxes: the detect task), fruit80 (boxes: base80's own task) and the segment data (boxes and masks; a Segment model is
scored on detect-only data by the detection validator). Normalized = merged / source: the night fine-tune on
fruit80-night, base80 on fruit80, the segment model on its data (box and mask). Points go through ``sweep`` one at a
time (resumable; a refused merge is recorded).

    python benchmarks/bench_dual.py                   # CPU (about 20-30 min on 2 busy cores)
    python benchmarks/bench_dual.py device=0

Writes ``benchmarks/results/dual.{md,json,png}``; per-point results under ``<runs_dir>/bench_dual`` (``work=``).
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
    "detect": "yolo26n-fruit-night.pt",
    "night_data": "fruit80-night",
    "day_data": "fruit80",
    "segs": "person,yolo26n-seg-cocomini.pt",  # person: <runs_dir>/taskvec-seg-person/train/weights/best.pt
    "seg_data": "",  # one yaml per seg source; default: the person view (train_seg_person.py) for every source
    "variants": "full,no-cls",
    "night_scales": "0,0.5,1",
    "seg_scales": "0.5,1",
    "bn": "merge,geometric",
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "work": "",  # default: <runs_dir>/bench_dual
    "resume": "true",
    "out": str(RESULTS),
}
SEG_PARTS_NO_CLS = ["backbone", "neck", "head.box", "head.mask"]


def runs_dir() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"])


def seg_sources(args: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``{label: (segment checkpoint, its validation yaml)}``."""
    from yolo_taskvec.checkpoint import resolve_weights

    names = [s for s in args["segs"].split(",") if s]
    data = [d for d in args["seg_data"].split(",") if d]
    if data and len(data) != len(names):
        sys.exit(f"seg_data= needs one yaml per seg source ({len(names)}), got {len(data)}.")
    project = runs_dir() / "taskvec-seg-person"
    person_yaml = project / "data" / "person.yaml"
    if not data and not person_yaml.exists():
        sys.exit(f"{person_yaml} not found; run benchmarks/train_seg_person.py first (or pass seg_data=).")
    out = {}
    for i, name in enumerate(names):
        yaml = data[i] if data else str(person_yaml)
        if name == "person":
            path = project / "train" / "weights" / "best.pt"
            if not path.exists():
                sys.exit(f"{path} not found; run benchmarks/train_seg_person.py first (or drop 'person' from segs=).")
            out["person"] = (str(path), yaml)
        else:
            out[Path(name).stem] = (str(resolve_weights(name)), yaml)
    return out


class Runner:
    """One Evaluator per segment source; each point is one ``sweep`` call (resumable, refusals recorded)."""

    def __init__(self, base: Any, args: dict[str, str]):
        self.base, self.args = base, args
        self.work = Path(args["work"]) if args["work"] else runs_dir() / "bench_dual"
        self.resume = as_bool(args["resume"])

    def evaluator(self, yamls: list[str]) -> Any:
        from yolo_taskvec import Evaluator

        return Evaluator(yamls, imgsz=int(self.args["imgsz"]), batch=int(self.args["batch"]), device=self.args["device"], progress=False)

    def point(self, ev: Any, vectors: list[Any], axes: dict[str, float], bn: str, folder: Path) -> dict[str, Any]:
        import shutil

        from yolo_taskvec import sweep
        from yolo_taskvec.errors import TaskVecError

        if not self.resume and folder.exists():
            shutil.rmtree(folder)
        try:
            res = sweep(
                self.base,
                vectors,
                data=[str(d.yaml) for d in ev.datasets],
                scales={k: [v] for k, v in axes.items()},
                bn=bn,
                unmatched="carry",
                imgsz=int(self.args["imgsz"]),
                batch=int(self.args["batch"]),
                device=self.args["device"],
                evaluator=ev,
                out=folder,
                plot=False,
                verbose=False,
            )
        except TaskVecError as e:
            return {"error": str(e)}
        row = res.rows[0]
        return {k: v for k, v in row.items() if "/" in k or k == "seconds"}


def normalized(row: dict[str, Any], refs: dict[str, float]) -> dict[str, Any]:
    """``norm/<metric key>`` = merged / source for each reference metric; ``mean_norm`` over the mAP50-95 ones."""
    if "error" in row:
        return row
    for key, ref in refs.items():
        row[f"norm/{key}"] = row.get(key, float("nan")) / ref if ref > 0 else float("nan")
    values = [row[f"norm/{k}"] for k in refs if k.endswith("map50_95") and not math.isnan(row[f"norm/{k}"])]
    row["mean_norm"] = sum(values) / len(values) if values else float("nan")
    return row


def run_source(runner: Runner, label: str, seg_path: str, seg_yaml: str, night_tv: Any, args: dict[str, str]) -> dict[str, Any]:
    from ultralytics.utils import TQDM

    from yolo_taskvec import TaskVector
    from yolo_taskvec.data import dataset_name
    from yolo_taskvec.taskvector import is_bn_stat

    night, day, seg = (str(DATASETS / f"{args['night_data']}.yaml"), str(DATASETS / f"{args['day_data']}.yaml"), seg_yaml)
    ev = runner.evaluator([night, day, seg])
    n_name, d_name, s_name = (dataset_name(x) for x in (night, day, seg))
    sources = {"base80": ev(args["base"]), "night": ev(args["detect"]), "segment": ev(seg_path)}
    refs = {
        f"{n_name}/map50_95": sources["night"][n_name]["map50_95"],
        f"{d_name}/map50_95": sources["base80"][d_name]["map50_95"],
        f"{s_name}/map50_95": sources["segment"][s_name]["map50_95"],
        f"{s_name}/mask_map50_95": sources["segment"][s_name]["mask_map50_95"],
        f"{s_name}/mask_map50": sources["segment"][s_name]["mask_map50"],  # shown, not in the mean
    }
    seg_tv = TaskVector.from_models(runner.base, seg_path, name="seg", unmatched="carry")
    tvs = {"full": seg_tv, "no-cls": seg_tv.select(SEG_PARTS_NO_CLS)}

    def ratio(tv: Any) -> float:
        keys = [k for k in tv.deltas if not is_bn_stat(k) and tv.part_of(k) != "head.cls"]
        num = sum(float(tv.deltas[k].double().pow(2).sum()) for k in keys)
        return math.sqrt(num / sum(float(runner.base.state[k].double().pow(2).sum()) for k in keys))

    rows = []
    grid = [(v, bn, a, b) for v in args["variants"].split(",") if v for bn in args["bn"].split(",") if bn for b in as_floats(args["seg_scales"]) for a in as_floats(args["night_scales"])]
    bar = TQDM(grid, desc=f"dual {label}")
    for variant, bn, a, b in bar:
        if variant not in tvs:
            sys.exit(f"unknown variant '{variant}'; variants are {', '.join(tvs)}.")
        folder = runner.work / f"{label}-on-{s_name}" / variant / bn / f"night{a:g}-seg{b:g}"
        row = normalized(runner.point(ev, [night_tv, tvs[variant]], {"night": a, "seg": b}, bn, folder), refs)
        rows.append({"variant": variant, "bn": bn, "night": a, "seg": b, **row})
        bar.set_description(f"dual {label} {variant}/{bn} night {a:g} seg {b:g}: " + (f"{row['mean_norm']:.3f}" if "error" not in row else "refused"))
    return {
        "segment_model": seg_path,
        "datasets": {"night": n_name, "day": d_name, "segment": s_name},
        "sources": sources,
        "references": refs,
        "carried": sorted(seg_tv.absolute),
        "norm_ratio": {"night": ratio(night_tv), "segment": ratio(seg_tv)},
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------- report
def _f(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def source_markdown(label: str, s: dict[str, Any]) -> list[str]:
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


def markdown(runs: dict[str, Any]) -> str:
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
            lines += source_markdown(label, s)
    return "\n".join(lines)


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    run = runs.get("cpu") or next(iter(runs.values()))
    labels = list(run["sources"])
    fig, axes = plt.subplots(len(labels), 3, figsize=(14, 3.9 * len(labels)), squeeze=False)
    styles = {"full": "-", "no-cls": "--"}
    for i, label in enumerate(labels):
        s = run["sources"][label]
        n, d, g = s["datasets"]["night"], s["datasets"]["day"], s["datasets"]["segment"]
        panels = [(f"{n}/map50_95", f"{n}: box mAP50-95 (detect task)", "night"), (f"{d}/map50_95", f"{d}: box mAP50-95 (base80's task)", "base80"), (f"{g}/mask_map50_95", f"{g}: mask mAP50-95 (segment task)", "segment")]
        for j, (key, title, ref_name) in enumerate(panels):
            ax = axes[i][j]
            groups = sorted({(r["variant"], r["bn"], r["seg"]) for r in s["rows"] if "error" not in r})
            for variant, bn, b in groups:
                pts = sorted((r["night"], r[key]) for r in s["rows"] if "error" not in r and (r["variant"], r["bn"], r["seg"]) == (variant, bn, b))
                ax.plot(*zip(*pts), marker="o", ls=styles.get(variant, ":"), label=f"τ_seg {variant}, β={b:g}" + (f", bn={bn}" if bn != "merge" else ""))
            ds, metric = key.split("/")
            ref = s["sources"][ref_name][ds].get(metric)
            if ref is not None:
                ax.axhline(ref, color="black", lw=1, ls=":", label=f"{ref_name} model alone")
            ax.set(xlabel="α (scale of τ_detect, night)", title=f"{label}: {title}")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("mAP50-95")
            ax.legend(fontsize=7.5)
    fig.suptitle("detect + segment dual-purpose merge: base80 + α·τ(fruit-night) + β·τ(segment) (CPU, imgsz 320)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "bench_dual.py")
    from yolo_taskvec import TaskVector, load_model

    start = time.perf_counter()
    env = environment(args["device"])
    sources = seg_sources(args)
    base = load_model(args["base"])
    night_tv = TaskVector.from_models(base, args["detect"], name="night")
    runner = Runner(base, args)
    result = {"environment": env, "command": "python benchmarks/bench_dual.py " + " ".join(argv), "config": {k: v for k, v in args.items() if k not in ("out", "work", "resume")}, "sources": {}}
    for label, (path, yaml) in sources.items():
        result["sources"][label] = run_source(runner, label, path, yaml, night_tv, args)
    result["minutes"] = (time.perf_counter() - start) / 60
    result["load_average_end"] = load_average()
    write_outputs("dual", result, args["out"], kind=device_kind(args["device"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main(sys.argv[1:])
