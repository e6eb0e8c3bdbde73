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
    from yolo_taskvec.methods import get_method

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


def layer_table(models: dict[str, Any], reference: Any, base: Any, x: torch.Tensor, bn_layers: list[str], trunk: int) -> dict[str, Any]:
    """Per-layer statistics moves, mismatches and activation drift for each policy's model at the probe scale."""
    ref = probe(reference, x, bn_layers, trunk)
    out: dict[str, Any] = {"bn_layers": bn_layers, "policies": {}}
    for name, model in models.items():
        p = probe(model, x, bn_layers, trunk)
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
        scale_out = [float(p.outputs[i].norm() / (ref.outputs[i].norm() + 1e-12)) for i in range(trunk)]
        out["policies"][name] = {"bn": rows, "drift": drift, "norm_ratio": scale_out}
    return out


# ----------------------------------------------------------------------------------------------- run
def runs_dir() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["runs_dir"])


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS, "bench_union_cliff.py")
    from ultralytics.utils import TQDM

    from yolo_taskvec import Evaluator, TaskVector, load_model, union_classes, union_data
    from yolo_taskvec.bn import letterboxed_batches
    from yolo_taskvec.data import image_files

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
    x = torch.cat(list(letterboxed_batches(files, imgsz, len(files), 1)))
    bn_layers = shared_bn_layers(base, vectors)
    reference = union_merge(base, vectors, 0.0, "merge")
    models = {p: union_merge(base, vectors, probe_scale, p, bn_data=yamls, imgsz=imgsz) for p in policies}
    layers = layer_table(models, reference, base, x, bn_layers, base.layout.head_index)
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


def summary_by_depth(rows: list[dict[str, Any]], key: str, how: str = "max") -> dict[int, float]:
    """Per trunk layer index: the max (or median) over its BatchNorm layers of ``key``."""
    groups: dict[int, list[float]] = {}
    for r in rows:
        groups.setdefault(_trunk_index(r["layer"]), []).append(r[key])
    pick = max if how == "max" else (lambda v: sorted(v)[len(v) // 2])
    return {i: pick(v) for i, v in sorted(groups.items())}


def markdown(runs: dict[str, Any]) -> str:
    lines = ["# The domain cliff of a class-union merge, layer by layer", ""]
    for kind, run in runs.items():
        tasks = run["tasks"]
        lines += [f"## {kind.upper()}", "", *environment_markdown(run["environment"], run.get("load_average_end")), f"Command: `{run['command']}` ({run['minutes']:.0f} min)", ""]
        cfg = run["config"]
        lines += [
            f"`merge({cfg['base']}, [{cfg['night']}, {cfg['far']}], classes=\"union\", scale=s, bn=...)`, task arithmetic, imgsz {cfg['imgsz']}; "
            f"mAP50-95 on the union views of the val splits ({', '.join(tasks)}). Only the shared statistics follow the policy; "
            "each class branch keeps its own.",
            "",
            "| scale | bn | " + " | ".join(tasks) + " |",
            "|---:|---|" + "---:|" * len(tasks),
        ]
        for r in run["table"]:
            cells = [("refused" if "error" in r else f"{r[t]:.3f}") for t in tasks]
            lines.append(f"| {r['scale']:g} | {r['bn']} | " + " | ".join(cells) + " |")
        pol = run["layers"]["policies"]
        lines += [
            "",
            f"### Per layer at scale {run['probe_scale']:g} ({run['probe_images']} val images of the two tasks)",
            "",
            "Per trunk layer (max over its BatchNorm layers): running variance of the policy / base80's; the actual variance of the "
            "layer's BatchNorm inputs on the images / the scale-0 model's; the mismatch |log(actual var / running var)| (median "
            "over channels); and the activation drift ‖a − a₀‖/‖a₀‖ of the layer's output.",
            "",
        ]
        names = list(pol)
        header = "| layer | " + " | ".join(f"{p}: run var × / actual var × / mismatch / drift" for p in names) + " |"
        lines += [header, "|---:|" + "---|" * len(names)]
        run_var = {p: summary_by_depth(pol[p]["bn"], "running_var_ratio_max") for p in names}
        act_var = {p: summary_by_depth(pol[p]["bn"], "actual_var_ratio_max") for p in names}
        mism = {p: summary_by_depth(pol[p]["bn"], "log_var_mismatch") for p in names}
        for i in sorted(next(iter(run_var.values()))):
            cells = [f"{run_var[p][i]:.2f} / {act_var[p][i]:.2f} / {mism[p][i]:.2f} / {pol[p]['drift'][i]:.2f}" if i < len(pol[p]["drift"]) else f"{run_var[p][i]:.2f} / {act_var[p][i]:.2f} / {mism[p][i]:.2f} / —" for p in names]
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
        lines += ["", *explanation(run), ""]
    return "\n".join(lines)


def explanation(run: dict[str, Any]) -> list[str]:
    """The measured story in sentences (numbers from this run)."""
    pol = run["layers"]["policies"]
    out = ["### Reading", ""]
    if "merge" in pol and "base" in pol:
        rv = summary_by_depth(pol["merge"]["bn"], "running_var_ratio_max")
        av = summary_by_depth(pol["merge"]["bn"], "actual_var_ratio_max")
        worst = max(rv, key=rv.get)
        m_merge = sum(r["log_var_mismatch"] for r in pol["merge"]["bn"]) / len(pol["merge"]["bn"])
        m_base = sum(r["log_var_mismatch"] for r in pol["base"]["bn"]) / len(pol["base"]["bn"])
        out.append(
            f"- At scale {run['probe_scale']:g}, `bn=merge` raises running variances up to {max(rv.values()):.1f}× base80's (layer {worst}) while the "
            f"actual variance of those inputs changes by at most {av[worst]:.2f}× there: the statistics move {run['probe_scale']:g} of the way to the far "
            "fine-tune's, whose variances are many times base80's, but the weights (and so the activations) have moved only a little."
        )
        out.append(
            f"- The mismatch |log(actual/running variance)| averages {m_merge:.2f} over the shared BatchNorm layers with `bn=merge` vs {m_base:.2f} with `bn=base`; "
            f"each mismatched layer rescales its output, and the errors compound: activation drift at the last trunk layer {pol['merge']['drift'][-1]:.2f} (merge) vs {pol['base']['drift'][-1]:.2f} (base)."
        )
        for p in ("mixture", "quadratic", "geometric", "recalibrate"):
            if p in pol:
                mp = sum(r["log_var_mismatch"] for r in pol[p]["bn"]) / len(pol[p]["bn"])
                out.append(f"- `{p}`: mean mismatch {mp:.2f}, drift at the last trunk layer {pol[p]['drift'][-1]:.2f}.")
    return out


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    run = runs.get("cpu") or next(iter(runs.values()))
    tasks = run["tasks"]
    pol = run["layers"]["policies"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    zero = next((r for r in run["table"] if r["scale"] == 0 and r["bn"] == "merge" and "error" not in r), None)
    for p in dict.fromkeys(r["bn"] for r in run["table"]):
        rows = [r for r in run["table"] if r["bn"] == p and "error" not in r]
        if zero is not None and p != "recalibrate" and zero not in rows:
            rows = [zero, *rows]  # at scale 0 every data-free policy keeps base80's statistics
        rows.sort(key=lambda r: r["scale"])
        for t, style in zip(tasks, ("-", "--")):
            ax.plot([r["scale"] for r in rows], [r[t] for r in rows], style, marker="o", ms=3, color=COLORS.get(p), label=f"{p}: {t}")
    ax.set(xlabel="scale λ (base + λ(τ_night + τ_raccoon))", ylabel="mAP50-95 (val)", title="mAP per BatchNorm policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    for p in pol:
        rv = summary_by_depth(pol[p]["bn"], "running_var_ratio_max")
        ax.plot(list(rv), list(rv.values()), marker="o", ms=3, color=COLORS.get(p), label=f"{p}: running var")
    av = summary_by_depth(pol[next(iter(pol))]["bn"], "actual_var_ratio_max")
    ax.plot(list(av), list(av.values()), "k--", marker="x", ms=4, label="actual input var (same weights for all)")
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xlabel="trunk layer", ylabel=f"max over channels: variance / base80's (scale {run['probe_scale']:g})", title="running statistics vs what the layers see")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[2]
    for p in pol:
        ax.plot(range(len(pol[p]["drift"])), pol[p]["drift"], marker="o", ms=3, color=COLORS.get(p), label=p)
    ax.set(xlabel="trunk layer", ylabel="‖a − a₀‖ / ‖a₀‖ (vs scale 0)", title=f"activation drift at scale {run['probe_scale']:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Domain cliff of merge(base80, [fruit-night, raccoon], classes=union): BatchNorm statistics, layer by layer ({run['environment']['device'].split(' ')[0]}, imgsz {run['config']['imgsz']})", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main(sys.argv[1:])
