"""Hot-swap latency vs loading a separate checkpoint, for yolo26n and yolo26x, measured in one run.

* yolo26n: the real ``yolo26n-base80.pt`` and τ(fruit-night) (every tensor, BatchNorm statistics included).
* yolo26x: built from Ultralytics' ``yolo26x.yaml`` with random initial weights and a random vector (1e-3·N(0,1)
  on every floating-point tensor, BatchNorm statistics included) — the weights do not matter for timing.

Per model, on one device, after one warm-up of each path (medians over ``repeats``):

* ``swap + unswap``: ``swap(model, tv, 0.5)`` then ``unswap(model)`` on a model that already served a prediction,
  so both ``model.model`` and the predictor's fused copy are rewritten (the serving case); also without a
  predictor, and the first swap (which copies the base weights once and checks the vector's fingerprint);
* ``load``: ``YOLO(path)`` of the merged checkpoint (base + 0.5·τ, saved by ``yolo_taskvec.save``) from disk
  (the page cache is warm after the first read);
* ``switch and serve``: ``swap`` + one ``predict`` vs ``YOLO(path)`` + one ``predict`` (which builds the
  predictor: deep copy, fuse, warm-up), one image at ``imgsz``;
* predict alone, for scale.

    python benchmarks/bench_swap.py                 # CPU
    python benchmarks/bench_swap.py device=0        # a GPU (the model and its predictor on cuda:0)

Writes ``benchmarks/results/swap.{md,json,png}``; the JSON keeps one run per device kind (cpu, cuda), and the
Markdown and plot show all of them.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import PALETTE, RESULTS, as_bool, device_kind, environment, environment_markdown, figure_title, legend_below, load_average, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "tuned": "yolo26n-fruit-night.pt",
    "large": "yolo26x.yaml",
    "image": "fruit80-night/images/val",  # a file or folder; relative paths are under Ultralytics' datasets_dir
    "imgsz": "320",
    "repeats": "15",
    "device": "cpu",
    "threads": "",  # torch CPU threads; default: what Ultralytics' select_device sets (min(8, CPUs - 1))
    "out": str(RESULTS),
    "render": "false",  # true (or --replot): rebuild the .md/.png from the stored .json, measure nothing
}


class Clock:
    def __init__(self, device):
        self.device = device

    def __call__(self, fn) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t


THREADS = [1]


def median_ms(clock: Clock, fn, repeats: int, warmup: int = 1) -> dict[str, float]:
    import torch

    torch.set_num_threads(THREADS[0])  # Ultralytics' select_device (predict, val) resets it: keep every path equal
    for _ in range(warmup):
        clock(fn)
    times = [1000 * clock(fn) for _ in range(repeats)]
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2), "max_ms": round(max(times), 2), "n": repeats}


# ----------------------------------------------------------------------------------------------- models
def small_case(args):
    from yolo_taskvec import TaskVector

    return "yolo26n (base80 + τ fruit-night)", args["base"], TaskVector.from_models(args["base"], args["tuned"], name="fruit-night")


def large_case(args, folder: Path):
    """yolo26x from its yaml (random weights), saved as a checkpoint, and a random vector with its fingerprint."""
    import torch
    from ultralytics import YOLO

    from yolo_taskvec import TaskVector, load_model, save

    torch.manual_seed(0)
    path = folder / "yolo26x-random.pt"
    save(YOLO(args["large"]), path)
    base = load_model(path)
    g = torch.Generator().manual_seed(0)
    deltas = {k: 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.state.items() if v.is_floating_point() and not k.endswith("num_batches_tracked")}
    meta = {"name": "random", "base_fingerprint": base.fingerprint, "base_yaml": base.yaml}
    return f"{Path(args['large']).stem} (random weights, random τ)", str(path), TaskVector(deltas, {}, meta)


def measure(label: str, base_path: str, tv, args, device, folder: Path) -> dict:
    import torch
    from ultralytics import YOLO

    from yolo_taskvec import save, swap, unswap

    clock, repeats, imgsz = Clock(device), int(args["repeats"]), int(args["imgsz"])
    from ultralytics.utils import SETTINGS

    image = Path(args["image"]) if Path(args["image"]).is_absolute() else Path(SETTINGS["datasets_dir"]) / args["image"]
    image = sorted(image.iterdir())[0] if image.is_dir() else image
    merged_path = folder / f"{Path(base_path).stem}-merged.pt"
    save(tv.apply(base_path, scale=0.5), merged_path)
    predict = lambda m: m.predict(str(image), imgsz=imgsz, device=str(device) if device.type == "cuda" else "cpu", verbose=False)  # noqa: E731

    def load():
        return YOLO(str(merged_path)).to(device)

    model = YOLO(base_path).to(device)
    torch.set_num_threads(THREADS[0])
    first_swap = clock(lambda: swap(model, tv, 0.5))
    unswap(model)
    bare = median_ms(clock, lambda: (swap(model, tv, 0.5), unswap(model)), repeats)
    predict(model)  # the predictor and its fused copy now exist: swap rewrites both
    swap_only, unswap_only = [], []
    torch.set_num_threads(THREADS[0])
    for _ in range(repeats + 1):
        swap_only.append(1000 * clock(lambda: swap(model, tv, 0.5)))
        unswap_only.append(1000 * clock(lambda: unswap(model)))
    serving = median_ms(clock, lambda: (swap(model, tv, 0.5), unswap(model)), repeats)
    predict_ms = median_ms(clock, lambda: predict(model), repeats)
    load_ms = median_ms(clock, load, repeats)

    def switch_swap():
        swap(model, tv, 0.5)
        predict(model)
        unswap(model)

    switch_swap_ms = median_ms(clock, switch_swap, max(3, repeats // 3))
    switch_load_ms = median_ms(clock, lambda: predict(load()), max(3, repeats // 3))
    numel = sum(v.numel() for v in model.model.state_dict().values())
    return {
        "model": label,
        "values": numel,
        "checkpoint_bytes": merged_path.stat().st_size,
        "first_swap_ms": round(1000 * first_swap, 2),
        "swap_unswap_no_predictor": bare,
        "swap_unswap": serving,
        "swap_ms": round(statistics.median(swap_only[1:]), 2),
        "unswap_ms": round(statistics.median(unswap_only[1:]), 2),
        "load": load_ms,
        "predict": predict_ms,
        "switch_swap_predict_unswap": switch_swap_ms,
        "switch_load_predict": switch_load_ms,
        "ratio_load_over_swap_unswap": round(load_ms["median_ms"] / serving["median_ms"], 1),
        "ratio_switch": round(switch_load_ms["median_ms"] / switch_swap_ms["median_ms"], 1),
    }


def run(args: dict[str, str]) -> dict:
    import torch

    from ultralytics.utils import NUM_THREADS

    THREADS[0] = int(args["threads"] or NUM_THREADS)
    torch.set_num_threads(THREADS[0])
    cuda = device_kind(args["device"]) == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit(f"device={args['device']} asked for but CUDA is not available")
    device = torch.device(f"cuda:{str(args['device']).replace('cuda:', '').split(',')[0] or 0}" if cuda else "cpu")
    env = environment(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        folder = Path(tmp)
        for case in (small_case(args), large_case(args, folder)):
            rows.append(measure(*case, args, device, folder))
            r = rows[-1]
            print(f"{r['model']}: swap+unswap {r['swap_unswap']['median_ms']:.1f} ms, load {r['load']['median_ms']:.1f} ms (x{r['ratio_load_over_swap_unswap']}); "
                  f"switch+predict {r['switch_swap_predict_unswap']['median_ms']:.1f} vs {r['switch_load_predict']['median_ms']:.1f} ms", flush=True)
    return {"environment": env, "args": args, "rows": rows, "load_average_end": load_average()}


# ----------------------------------------------------------------------------------------------- report
def markdown(runs: dict) -> str:
    lines = ["# Hot-swapping a task vector vs loading a separate checkpoint", "", "Generated by `python benchmarks/bench_swap.py` (see its docstring for what each column times).", ""]
    for kind, res in runs.items():
        lines += [
            f"## {kind}",
            "",
            *environment_markdown(res["environment"], res.get("load_average_end"))[:-1],
            f"- medians of {res['args']['repeats']} runs, imgsz {res['args']['imgsz']}, torch threads {res['args'].get('threads') or 'Ultralytics default'}",
            "",
            "| model | values | checkpoint | swap | unswap | swap + unswap | same, no predictor | first swap | load `YOLO(path)` | load / (swap + unswap) | swap + predict + unswap | load + predict | ratio | predict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['model']} | {r['values'] / 1e6:.1f} M | {r['checkpoint_bytes'] / 1e6:.1f} MB | {r['swap_ms']:.1f} ms | {r['unswap_ms']:.1f} ms | {r['swap_unswap']['median_ms']:.1f} ms | "
                f"{r['swap_unswap_no_predictor']['median_ms']:.1f} ms | {r['first_swap_ms']:.0f} ms | {r['load']['median_ms']:.1f} ms | **{r['ratio_load_over_swap_unswap']}×** | "
                f"{r['switch_swap_predict_unswap']['median_ms']:.1f} ms | {r['switch_load_predict']['median_ms']:.1f} ms | {r['ratio_switch']}× | {r['predict']['median_ms']:.1f} ms |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(runs: dict, path: Path) -> None:
    """One panel per model and device: median ms of each path (bars, value written), min-max whiskers, and the
    ratio load ÷ swap above each pair. Hot-swap paths blue, checkpoint-loading paths orange."""
    from matplotlib.figure import Figure

    groups = [(kind, res, r) for kind, res in runs.items() for r in res["rows"]]
    fig = Figure(figsize=(6.2 * len(groups), 5.6))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    pairs = [("switch behaviour", "swap_unswap", "load"), ("switch and predict one image", "switch_swap_predict_unswap", "switch_load_predict")]
    for ax, (kind, res, r) in zip(axes, groups):
        top = 0.0
        for i, (name, swap_key, load_key) in enumerate(pairs):
            pair_top = max(r[swap_key]["max_ms"], r[load_key]["max_ms"])
            for j, (key, color, label) in enumerate(((swap_key, PALETTE[0], "hot-swap (swap … unswap)"), (load_key, PALETTE[1], "load the merged checkpoint, YOLO(path)"))):
                m = r[key]
                x = i + (j - 0.5) * 0.38
                ax.bar(x, m["median_ms"], 0.36, color=color, label=label if i == 0 else None)
                ax.errorbar(x, m["median_ms"], yerr=[[m["median_ms"] - m["min_ms"]], [m["max_ms"] - m["median_ms"]]], color="0.2", capsize=4, lw=1)
                ax.text(x, m["max_ms"], f"{m['median_ms']:.1f} ms", ha="center", va="bottom", fontsize=8.5)
                top = max(top, m["max_ms"])
            ratio = r[load_key]["median_ms"] / r[swap_key]["median_ms"]
            ax.annotate(f"load ÷ swap = {ratio:.2f}×" + ("\n(swap slower)" if ratio < 1 else ""), (i, pair_top), xytext=(0, 16), textcoords="offset points", ha="center", va="bottom", fontsize=9.5, fontweight="bold")
        ax.set_xticks(range(len(pairs)), [f"{name}\n(n = {r[k]['n']} each)" for name, k, _ in pairs])
        ax.set_ylim(0, top * 1.3)
        ax.set(ylabel="milliseconds (median; whiskers: min to max)", title=f"{r['model']}\n{r['values'] / 1e6:.1f} M values, {r['checkpoint_bytes'] / 1e6:.1f} MB checkpoint, {kind.upper()}")
        ax.grid(axis="y", alpha=0.3)
        legend_below(ax, ncol=1, offset=-0.13)
    first = groups[0][1]
    figure_title(fig, "Hot-swapping a task vector vs loading a separate checkpoint", first, f"scale 0.5, one image at imgsz {first['args']['imgsz']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_swap.py")
    if as_bool(args["render"]):
        render_outputs("swap", Path(args["out"]), markdown=markdown, plot=plot)
        return
    res = run(args)
    write_outputs("swap", res, args["out"], kind=device_kind(args["device"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
