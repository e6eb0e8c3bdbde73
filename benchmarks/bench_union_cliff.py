"""The domain cliff of a class-union merge, measured layer by layer.

``merge(base80, [fruit-night, raccoon], classes="union")`` keeps fruit80-night and raccoon at 0.264 / 0.072
(mAP50-95) at scale 0, but a 5 % step (scale 0.05) takes them to 0.019 / 0.047 under ``bn=merge`` while keeping the
base's statistics (``bn=base``) gives 0.145 / 0.157. At scale 0.05 the two models have the SAME weights: only the
BatchNorm running statistics differ. This benchmark shows why, per layer:

1. mAP on both tasks for scales × BatchNorm policies (shared statistics only; class branches keep their own):
   ``merge`` (linear, the weights' coefficients), ``base``, ``geometric`` (log-linear variances),
   ``mixture`` (moments of the mixture: mean Σcᵢμᵢ, var Σcᵢ(σᵢ²+μᵢ²) − mean², the same coefficients, with
   c_base = 1 − Σ the others), ``quadratic`` (means linear, variances var_b + Σλᵢ²(varᵢ − var_b): the variance of a
   base activation plus independent changes scaled by λᵢ), and ``recalibrate`` (re-estimated on the tasks' train
   images, 16 batches).
2. Per BatchNorm layer of the shared trunk: how far each policy moves the running variance from the base's
   (median and max over channels of var_policy / var_base), next to how far the actual variance of that layer's
   input moves on the tasks' images (batch statistics of the merged model / of the scale-0 model), and the
   resulting mismatch between running and actual statistics (median |log(var_actual / var_running)|,
   median |μ_actual − μ_running| / σ_running).
3. Per trunk layer: activation drift, ‖a − a₀‖ / ‖a₀‖ of the layer's output against the scale-0 model's, on
   the same images.

Every number is on the val splits the issue quotes (nothing is chosen here).

    python benchmarks/bench_union_cliff.py                      # CPU, about 10 min
    python benchmarks/bench_union_cliff.py scales=0,0.05,0.1,0.3 images=16

Writes ``benchmarks/results/union_cliff.{md,json,png}``; dataset views under ``<runs_dir>/bench_union_cliff``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, RESULTS, as_floats, device_kind, environment, environment_markdown, load_average, parse_args, save_figure, write_outputs  # noqa: E402

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "night": "yolo26n-fruit-night.pt",
    "far": "yolo26n-raccoon.pt",
    "data": "fruit80-night,raccoon",
    "scales": "0,0.02,0.05,0.1,0.3",
    "bn": "merge,base,geometric,mixture,quadratic,recalibrate",
    "probe": "0.05",  # the scale measured layer by layer
    "images": "16",  # val images per task for the layer measurements
    "imgsz": "320",
    "batch": "16",
    "device": "cpu",
    "work": "",
    "out": str(RESULTS),
}
LOCAL_POLICIES = ("mixture", "quadratic")  # statistics computed here from the sources' (bn=merge weights)
COLORS = {"merge": "tab:red", "base": "tab:blue", "geometric": "tab:green", "mixture": "tab:orange", "quadratic": "tab:purple", "recalibrate": "tab:gray"}


# ----------------------------------------------------------------------------------------------- statistics
def shared_bn_layers(base: Any, vectors: list[Any], share: int | None = None) -> list[str]:
    """BatchNorm layer names whose statistics a union merge shares (every part but the class branches)."""
    layout = base.layout
    names = []
    for key in base.state:
        if not key.endswith(".running_var") or layout.part_of(key) == "head.cls":
            continue
        layer = int(key.split(".")[1])
        if share is not None and layer >= share:
            continue
        if any(key in tv.deltas for tv in vectors):
            names.append(key[: -len(".running_var")])
    return names


def stat_coefficients(method: str, n: int, scale: float, params: dict[str, Any] | None = None) -> list[float]:
    """λ·cᵢ: the coefficient of each source's statistics under ``bn=merge`` (``merging.merge_states``)."""
    from yolo_taskvec import get_method

    m = get_method(method)
    resolved = m.resolve(params or {})
    return [scale * c for c in m.stat_weights(m.prepare_weights([1.0] * n, resolved), resolved)]


def policy_statistics(policy: str, base: Any, vectors: list[Any], coefs: list[float], layers: list[str]) -> dict[str, torch.Tensor]:
    """Running mean/var of the shared layers under a statistic policy computed from the sources' statistics.

    ``mixture``: mean Σcᵢμᵢ, var Σcᵢ(σᵢ² + μᵢ²) − mean² (c_base = 1 − Σcᵢ); ``quadratic``: means linear,
    var var_b + Σcᵢ²(varᵢ − var_b) (floored at 1e-3·var_b); ``merge``: both linear (as ``merging.merge_states``).
    """
    out = {}
    c0 = 1.0 - sum(coefs)
    for name in layers:
        mb, vb = base.state[f"{name}.running_mean"], base.state[f"{name}.running_var"]
        ms = [mb + tv.deltas.get(f"{name}.running_mean", torch.zeros_like(mb)) for tv in vectors]
        vs = [vb + tv.deltas.get(f"{name}.running_var", torch.zeros_like(vb)) for tv in vectors]
        mean = c0 * mb + sum(c * m for c, m in zip(coefs, ms))
        if policy == "mixture":
            second = c0 * (vb + mb**2) + sum(c * (v + m**2) for c, m, v in zip(coefs, ms, vs))
            var = second - mean**2
        elif policy == "quadratic":
            var = vb + sum(c * c * (v - vb) for c, v in zip(coefs, vs))
        elif policy == "merge":
            var = c0 * vb + sum(c * v for c, v in zip(coefs, vs))
        else:
            raise ValueError(policy)
        out[f"{name}.running_mean"] = mean
        out[f"{name}.running_var"] = var.clamp(min=1e-3 * float(vb.min()))
    return out


def with_statistics(model: Any, stats: dict[str, torch.Tensor]) -> Any:
    """``model`` (a YOLO) with these running statistics written into it (in place)."""
    state = model.model.state_dict()
    for key, value in stats.items():
        state[key].copy_(value.to(state[key].dtype))
    return model


def union_merge(base: Any, vectors: list[Any], scale: float, policy: str, *, method: str = "task_arithmetic", bn_data: list[str] | None = None, imgsz: int = 320, share: int | None = None, **params: Any) -> Any:
    """A union merge under any statistic policy (``mixture``/``quadratic`` applied here to a ``bn=merge`` merge)."""
    from yolo_taskvec import merge

    if policy in LOCAL_POLICIES:
        model = merge(base, vectors, method, scale=scale, bn="merge", classes="union", share=share, **params)
        layers = shared_bn_layers(base, vectors, share)
        return with_statistics(model, policy_statistics(policy, base, vectors, stat_coefficients(method, len(vectors), scale, params), layers))
    extra = {"bn_data": bn_data, "bn_batches": 16, "imgsz": imgsz} if policy == "recalibrate" else {}
    return merge(base, vectors, method, scale=scale, bn=policy, classes="union", share=share, **extra, **params)


# ----------------------------------------------------------------------------------------------- layer probes
class Probe:
    """Forward hooks on a model: per-channel mean/var of every listed BatchNorm's input, and trunk layer outputs."""

    def __init__(self, module: torch.nn.Module, bn_layers: list[str], trunk: int):
        self.inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = []
        for name in bn_layers:
            self.handles.append(module.get_submodule(name).register_forward_pre_hook(self._bn_hook(name)))
        for i in range(trunk):
            self.handles.append(module.model[i].register_forward_hook(self._layer_hook(i)))

    def _bn_hook(self, name: str):
        def hook(m: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            self.inputs[name] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

        return hook

    def _layer_hook(self, i: int):
        def hook(m: torch.nn.Module, args: tuple, out: Any) -> None:
            self.outputs[i] = out.detach().float()

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def probe(model: Any, x: torch.Tensor, bn_layers: list[str], trunk: int) -> Probe:
    module = model.model.float().eval()
    p = Probe(module, bn_layers, trunk)
    with torch.no_grad():
        module(x)
    p.close()
    return p


def layer_table(models: dict[str, Any], reference: Any, base: Any, vectors: list[Any], x: torch.Tensor, bn_layers: list[str], trunk: int) -> dict[str, Any]:
    """Per BatchNorm layer and policy: statistic moves, actual input moves, mismatch; per trunk layer: output drift.

    Ratios are per channel, summarized by the median (and max) over the layer's channels.
    """
    ref = probe(reference, x, bn_layers, trunk)
    sources = {}
    for tv in vectors:
        rows = []
        for layer in bn_layers:
            vb = base.state[f"{layer}.running_var"]
            ratio = (vb + tv.deltas.get(f"{layer}.running_var", torch.zeros_like(vb))) / vb
            rows.append({"layer": layer, "median": float(ratio.median()), "max": float(ratio.max())})
        sources[tv.meta.get("name", "?")] = rows
    out: dict[str, Any] = {"bn_layers": bn_layers, "sources": sources, "policies": {}}
    for name, model in {"scale 0": reference, **models}.items():
        p = probe(model, x, bn_layers, trunk) if model is not reference else ref
        state = model.model.state_dict()
        rows = []
        for layer in bn_layers:
            mean_run, var_run = state[f"{layer}.running_mean"].float(), state[f"{layer}.running_var"].float()
            var_base = base.state[f"{layer}.running_var"]
            mu, var = p.inputs[layer]
            ratio_run = var_run / var_base
            ratio_act = (var + 1e-12) / (ref.inputs[layer][1] + 1e-12)
            rows.append(
                {
                    "layer": layer,
                    "running_var_ratio_median": float(ratio_run.median()),
                    "running_var_ratio_max": float(ratio_run.max()),
                    "actual_var_ratio_median": float(ratio_act.median()),
                    "actual_var_ratio_max": float(ratio_act.max()),
                    "log_var_mismatch": float((var.clamp(min=1e-12) / var_run).log().abs().median()),
                    "mean_mismatch": float(((mu - mean_run).abs() / var_run.sqrt()).median()),
                }
            )
        drift = [float((p.outputs[i] - ref.outputs[i]).norm() / (ref.outputs[i].norm() + 1e-12)) for i in range(trunk)]
        norm_ratio = [float(p.outputs[i].norm() / (ref.outputs[i].norm() + 1e-12)) for i in range(trunk)]
        out["policies"][name] = {"bn": rows, "drift": drift, "norm_ratio": norm_ratio}
    return out


# ----------------------------------------------------------------------------------------------- run
def probe_batch(files: list[Path], imgsz: int) -> torch.Tensor:
    """The images as one float RGB batch (0-1), letterboxed by Ultralytics to ``imgsz`` square (stride 32)."""
    import cv2
    import numpy as np
    from ultralytics.data.augment import LetterBox

    box = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)
    images = []
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            sys.exit(f"image {f} cannot be read.")
        images.append(box(image=img)[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    return torch.from_numpy(np.ascontiguousarray(np.stack(images))).float() / 255


def runs_dir() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"])


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "bench_union_cliff.py")
    from ultralytics.utils import TQDM

    from yolo_taskvec import Evaluator, TaskVector, image_files, load_model, union_classes, union_data

    start = time.perf_counter()
    env = environment(args["device"])
    base = load_model(args["base"])
    sources = [load_model(args["night"]), load_model(args["far"])]
    vectors = [TaskVector.from_models(base, s, unmatched="carry") for s in sources]
    tasks = [t for t in args["data"].split(",") if t]
    yamls = [str(DATASETS / f"{t}.yaml") for t in tasks]
    work = Path(args["work"]) if args["work"] else runs_dir() / "bench_union_cliff"
    views = union_data(union_classes(base, sources), yamls, work / "views", splits=["val"])
    imgsz = int(args["imgsz"])
    ev = Evaluator([str(v) for v in views], imgsz=imgsz, batch=int(args["batch"]), device=args["device"], progress=False)
    policies = [p for p in args["bn"].split(",") if p]
    scales = as_floats(args["scales"])
    table = []
    for scale in TQDM(scales, desc="cliff: scales"):
        for policy in policies:
            if scale == 0 and policy not in ("merge", "recalibrate"):
                continue  # at scale 0 every data-free policy is the base's statistics
            try:
                model = union_merge(base, vectors, scale, policy, bn_data=yamls, imgsz=imgsz)
            except Exception as e:  # noqa: BLE001 - a refused merge is a result
                table.append({"scale": scale, "bn": policy, "error": str(e)})
                continue
            scores = ev(model)
            table.append({"scale": scale, "bn": policy, **{t: scores[t]["map50_95"] for t in tasks}})
            print(f"scale {scale:g} bn={policy}: " + ", ".join(f"{t} {scores[t]['map50_95']:.3f}" for t in tasks), flush=True)
    probe_scale = float(args["probe"])
    n = int(args["images"])
    files = [f for y in yamls for f in image_files(y, "val")[:n]]
    x = probe_batch(files, imgsz)
    bn_layers = shared_bn_layers(base, vectors)
    reference = union_merge(base, vectors, 0.0, "merge")
    models = {p: union_merge(base, vectors, probe_scale, p, bn_data=yamls, imgsz=imgsz) for p in policies}
    layers = layer_table(models, reference, base, vectors, x, bn_layers, base.layout.head_index)
    result = {
        "environment": env,
        "command": "python benchmarks/bench_union_cliff.py " + " ".join(argv),
        "config": {k: v for k, v in args.items() if k not in ("out", "work")},
        "tasks": tasks,
        "table": table,
        "probe_scale": probe_scale,
        "probe_images": len(files),
        "layers": layers,
        "minutes": (time.perf_counter() - start) / 60,
        "load_average_end": load_average(),
    }
    write_outputs("union_cliff", result, args["out"], kind=device_kind(args["device"]), markdown=markdown, plot=plot)


# ----------------------------------------------------------------------------------------------- report
def _trunk_index(layer: str) -> int:
    return int(layer.split(".")[1])


def by_depth(rows: list[dict[str, Any]], key: str, how: str = "mean") -> dict[int, float]:
    """Per trunk layer index: the mean (or max) over its BatchNorm layers of ``key``."""
    groups: dict[int, list[float]] = {}
    for r in rows:
        groups.setdefault(_trunk_index(r["layer"]), []).append(r[key])
    return {i: (max(v) if how == "max" else sum(v) / len(v)) for i, v in sorted(groups.items())}


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def markdown(runs: dict[str, Any]) -> str:
    lines = ["# The domain cliff of a class-union merge, layer by layer", ""]
    for kind, run in runs.items():
        tasks = run["tasks"]
        cfg = run["config"]
        lines += [f"## {kind.upper()}", "", *environment_markdown(run["environment"], run.get("load_average_end")), f"Command: `{run['command']}` ({run['minutes']:.0f} min)", ""]
        lines += [
            f"`merge({cfg['base']}, [{cfg['night']}, {cfg['far']}], classes=\"union\", scale=s, bn=...)`, task arithmetic, imgsz {cfg['imgsz']}; "
            f"mAP50-95 on the union views of the val splits ({', '.join(tasks)}). Only the shared statistics follow the policy; "
            "each class branch keeps its own. At scale 0 every data-free policy is base80's statistics.",
            "",
            "| scale | bn | " + " | ".join(tasks) + " |",
            "|---:|---|" + "---:|" * len(tasks),
        ]
        for r in run["table"]:
            cells = [("refused" if "error" in r else f"{r[t]:.3f}") for t in tasks]
            lines.append(f"| {r['scale']:g} | {r['bn']} | " + " | ".join(cells) + " |")
        layers = run["layers"]
        pol = layers["policies"]
        names = list(pol)
        lines += [
            "",
            f"### Per layer at scale {run['probe_scale']:g} ({run['probe_images']} val images of the two tasks)",
            "",
            "Per trunk layer, each value the mean over the layer's BatchNorm layers of a per-channel median: **source var** = a source's "
            "running variance / base80's; **running** = the policy's running variance / base80's; **actual** = the variance of the "
            "BatchNorm's input on the images / the scale-0 model's; **mismatch** = |log(actual input variance / running variance)|; "
            "**‖a‖** = norm of the layer's output / the scale-0 model's (all policies share the same weights).",
            "",
        ]
        src = layers["sources"]
        header = "| layer | " + " | ".join(f"source var {n}" for n in src) + " | " + " | ".join(f"{p}: running / actual / mismatch / ‖a‖" for p in names) + " |"
        lines += [header, "|---:|" + "---:|" * len(src) + "---|" * len(names)]
        src_med = {n: by_depth(rows, "median") for n, rows in src.items()}
        run_var = {p: by_depth(pol[p]["bn"], "running_var_ratio_median") for p in names}
        act_var = {p: by_depth(pol[p]["bn"], "actual_var_ratio_median") for p in names}
        mism = {p: by_depth(pol[p]["bn"], "log_var_mismatch") for p in names}
        for i in sorted(next(iter(run_var.values()))):
            norm = {p: (f"{pol[p]['norm_ratio'][i]:.2f}" if i < len(pol[p]["norm_ratio"]) else "—") for p in names}
            cells = [f"{src_med[n][i]:.2f}" for n in src] + [f"{run_var[p][i]:.2f} / {act_var[p][i]:.2f} / {mism[p][i]:.2f} / {norm[p]}" for p in names]
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
        lines += ["", *explanation(run), ""]
    return "\n".join(lines)


def explanation(run: dict[str, Any]) -> list[str]:
    """The measured story in sentences (numbers from this run)."""
    layers = run["layers"]
    pol = layers["policies"]
    out = ["### Reading", ""]
    far = list(layers["sources"])[-1]
    far_rows = layers["sources"][far]
    above = sum(r["median"] > 1 for r in far_rows) / len(far_rows)
    out.append(
        f"- The far fine-tune ({far}) has larger running variances than base80 in {above:.0%} of the shared BatchNorm layers "
        f"(per-channel median ratio up to {max(r['median'] for r in far_rows):.1f}×, single channels up to {max(r['max'] for r in far_rows):.0f}×): "
        "its weights grew during fine-tuning."
    )
    if "merge" in pol and "base" in pol and "scale 0" in pol:
        m0, mm, mb = (_mean(pol[p]["bn"], "log_var_mismatch") for p in ("scale 0", "merge", "base"))
        nm, nb = pol["merge"]["norm_ratio"], pol["base"]["norm_ratio"]
        out.append(
            f"- `bn=merge` moves every shared running variance {run['probe_scale']:g} of the way to those: the median channel's running variance "
            f"rises up to {max(by_depth(pol['merge']['bn'], 'running_var_ratio_median').values()):.2f}× base80's, while the median channel's actual input variance "
            f"stays near 1× (the weights moved {run['probe_scale']:g} of the way). Running and actual statistics disagree (mean mismatch {mm:.2f} vs "
            f"{m0:.2f} for the scale-0 model on the same images), so each layer divides by too large a σ and the output shrinks layer after "
            f"layer: ‖a‖/‖a₀‖ = {min(nm):.2f} at its lowest (layer {nm.index(min(nm))}). The features the class branches read fade out: the cliff."
        )
        out.append(
            f"- `bn=base` keeps statistics that fit the median channel (mismatch {mb:.2f}), but the same 5 % weight step makes a few channels "
            f"explode (actual input variance up to {max(by_depth(pol['base']['bn'], 'actual_var_ratio_max', 'max').values()):.0f}× in one channel; "
            f"‖a‖/‖a₀‖ up to {max(nb):.2f}): better than `merge`, still far from scale 0."
        )
    for p in ("geometric", "mixture", "quadratic", "recalibrate"):
        if p in pol:
            n = pol[p]["norm_ratio"]
            out.append(f"- `{p}`: mean mismatch {_mean(pol[p]['bn'], 'log_var_mismatch'):.2f}; ‖a‖/‖a₀‖ between {min(n):.2f} and {max(n):.2f}.")
    out.append("- Data-free statistics cannot follow weights that moved along a far fine-tune's direction: the cure is not to share those layers (branches) or to re-estimate them while training on images (repair); see `union_frontier.md`.")
    return out


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    run = runs.get("cpu") or next(iter(runs.values()))
    tasks = run["tasks"]
    layers = run["layers"]
    pol = layers["policies"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    ax = axes[0]
    zero = next((r for r in run["table"] if r["scale"] == 0 and r["bn"] == "merge" and "error" not in r), None)
    for p in dict.fromkeys(r["bn"] for r in run["table"]):
        rows = [r for r in run["table"] if r["bn"] == p and "error" not in r]
        if zero is not None and p != "recalibrate" and zero not in rows:
            rows = [zero, *rows]  # at scale 0 every data-free policy keeps base80's statistics
        rows.sort(key=lambda r: r["scale"])
        for t, style in zip(tasks, ("-", "--")):
            ax.plot([r["scale"] for r in rows], [r[t] for r in rows], style, marker="o", ms=3, color=COLORS.get(p), label=f"{p}: {t}")
    ax.set(xlabel="scale λ  (base80 + λ·(τ_night + τ_raccoon))", ylabel="mAP50-95 on val (solid fruit80-night, dashed raccoon)", title="mAP per BatchNorm policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    for n, rows in layers["sources"].items():
        d = by_depth(rows, "median")
        ax.plot(list(d), list(d.values()), ":", color="black" if n == list(layers["sources"])[-1] else "gray", marker="x", ms=4, label=f"{n} / base80 (source)")
    for p in pol:
        if p == "scale 0":
            continue
        d = by_depth(pol[p]["bn"], "running_var_ratio_median")
        a = by_depth(pol[p]["bn"], "actual_var_ratio_median")
        ax.plot(list(d), list(d.values()), "-", color=COLORS.get(p), marker="o", ms=3, label=f"{p}: running var")
        ax.plot(list(a), list(a.values()), "--", color=COLORS.get(p), lw=1, label=f"{p}: actual input var")
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xlabel="trunk layer", ylabel="variance / base80's (per-channel median)", title=f"running vs actual variance at scale {run['probe_scale']:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    ax = axes[2]
    for p in pol:
        color = "black" if p == "scale 0" else COLORS.get(p)
        ax.plot(range(len(pol[p]["norm_ratio"])), pol[p]["norm_ratio"], marker="o", ms=3, color=color, label=p)
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xlabel="trunk layer", ylabel="‖a‖ / ‖a₀‖ (layer output vs scale-0 model)", title=f"activation scale at scale {run['probe_scale']:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Domain cliff of merge(base80, [fruit-night, raccoon], classes=union): BatchNorm statistics layer by layer ({run['environment']['device'].split(' ')[0]}, imgsz {run['config']['imgsz']}, {run['probe_images']} val images)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main(sys.argv[1:])
