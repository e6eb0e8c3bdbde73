"""Merge time and peak memory per method for 2, 4 and 8 task vectors of yolo26n- and yolo26x-sized models.

Each configuration (model size, number of vectors, method, thread setting) runs in a FRESH subprocess:

1. the base is a random-initialised ``DetectionModel`` from Ultralytics' ``yolo26n.yaml`` / ``yolo26x.yaml`` (fp32);
   each vector is random with a realistic scale, measured on τ(fruit-night): learned tensors get
   N(0, (0.1·s)²) with s = max(std, mean |θ|, 0.01) of the base tensor (the real median ratio std(τ)/std(θ) is 0.10);
   running variances get var·(exp(0.17·N(0,1)) − 1) (median relative change 0.17), so they stay positive;
2. the **floor**: the time to read every input once (base and all deltas: one ``torch.sum`` per tensor, fastest of
   ``reps``), the memory-bandwidth bound of any per-tensor merge, measured in the same process and thread setting;
   also one ``sum`` over a single buffer of the same size (pure bandwidth, no per-tensor overhead), for reference;
3. the **merge**: ``yolo_taskvec.merging.merge_states(base, vectors, method, scale=1/n, bn="merge")`` (what
   ``merge``/the CLI run), fastest of ``reps``; its ratio to the floor is reported;
4. **peak extra memory**: the process's resident-set high-water mark during the merge (``VmHWM``, reset through
   ``/proc/self/clear_refs`` just before it; ``ru_maxrss`` where that is not possible) minus the resident set
   before it (workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed blocks go back to the system and the
   resident set tracks live memory). The merged state dict itself is one model's size (``1.0`` model in the table),
   the least any merge needs;
5. with ``math=true`` also the method's pure tensor math alone (``method.fn`` over every tensor, no driver), so
   the driver's own overhead can be read off.

Thread settings: ``1`` (``torch.set_num_threads(1)``) and ``default`` (torch's own default; ``OMP_NUM_THREADS`` is
removed from the subprocess environment). A configuration that exceeds ``timeout`` seconds is reported as such.

    python benchmarks/bench_merge_perf.py                                  # everything (long on CPU: ~1-2 h)
    python benchmarks/bench_merge_perf.py sizes=n counts=2,8 threads=1     # a subset
    python benchmarks/bench_merge_perf.py device=0                         # tensors on the GPU

Writes ``benchmarks/results/merge_perf.{md,json,png}``. Timings on a shared, loaded machine are noisy (the load
average is recorded); re-run it on an idle machine for figures to quote.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, as_bool, busy, device_kind, environment, environment_markdown, load_average, parse_args, render_outputs, save_figure, write_outputs

DEFAULTS = {
    "sizes": "n,x",
    "counts": "2,4,8",
    "methods": "all",
    "methods_x": "same",  # methods for yolo26x ("same": as methods=); the SVD-based ones take minutes there
    "threads": "1,default",
    "reps": "3",
    "timeout": "600",
    "math": "auto",
    "device": "cpu",
    "out": str(RESULTS),
    "render": "false",  # true: rebuild the .md/.png from the stored .json, measure nothing
    "worker": "",  # internal: one configuration as JSON, run in a subprocess
}
DELTA_RATIO = 0.10  # std(τ)/std(θ), median over the learned tensors of τ(fruit-night)
VAR_LOG_SIGMA = 0.17  # median |Δvar|/var of τ(fruit-night)'s running variances
TARGETS = {"task_arithmetic": 2.0, "ties": 5.0, "dare": 5.0, "dare_ties": 5.0}


# ----------------------------------------------------------------------------------------------- worker side
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset the resident-set high-water mark (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(reset_worked: bool) -> int:
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(size: str, count: int, device: str, seed: int = 0):
    """A random-initialised base state (fp32) and ``count`` random task vectors with realistic scales."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from yolo_taskvec.taskvector import TaskVector, is_bn_stat, is_mergeable

    torch.manual_seed(seed)
    model = DetectionModel(f"yolo26{size}.yaml", nc=80, verbose=False)
    base = {k: v.detach().to(device) for k, v in model.state_dict().items()}
    del model
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    vectors = []
    for _ in range(count):
        deltas = {}
        for k, t in base.items():
            if not is_mergeable(k, t):
                continue
            if k.endswith(".running_var"):
                d = torch.empty_like(t).normal_(0.0, VAR_LOG_SIGMA, generator=gen).exp_().sub_(1.0).mul_(t)
            else:
                s = max(float(t.std()) if t.numel() > 1 else 0.0, float(t.abs().mean()), 0.01)
                d = torch.empty_like(t).normal_(0.0, DELTA_RATIO * s, generator=gen)
            deltas[k] = d
        vectors.append(TaskVector(deltas, {}, {"name": f"random{len(vectors)}"}))
    return base, vectors


def sync(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize()


def floor_seconds(base, vectors, device: str, reps: int) -> tuple[float, float]:
    """``(per-tensor, contiguous)``: the time to read every input once, as one reduction per tensor (base and every
    delta; includes one operation's overhead per tensor, which any per-tensor merge pays too), and as one reduction
    over a single buffer of the same size (the pure memory-bandwidth bound). Fastest of ``reps`` each."""
    import torch

    tensors = [t for t in base.values() if t.is_floating_point()] + [d for v in vectors for d in v.deltas.values()]

    def fastest(fn) -> float:
        best = float("inf")
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best

    per_tensor = fastest(lambda: [t.sum() for t in tensors])
    buffer = torch.ones(sum(t.numel() for t in tensors), device=device)
    contiguous = fastest(buffer.sum)
    del buffer
    return per_tensor, contiguous


def math_only(base, vectors, method_name: str, scale: float) -> float:
    """The method's tensor math over every tensor (no driver: no ordering, BN policy, checks or output dict)."""
    from yolo_taskvec.merging import _rng, vector_id
    from yolo_taskvec.methods import get_method
    from yolo_taskvec.taskvector import is_bn_stat, is_mergeable

    method = get_method(method_name)
    params = method.resolve({})
    weights = method.prepare_weights([1.0] * len(vectors), params)
    vids = [vector_id(v) for v in vectors]
    t0 = time.perf_counter()
    for key, b in base.items():
        if not is_mergeable(key, b) or is_bn_stat(key):
            continue
        ds = [v.deltas[key] for v in vectors]
        rngs = [_rng(0, key, vid) for vid in vids] if method.random else None
        method.fn(ds, list(weights), base=b, rngs=rngs, **params)
    return time.perf_counter() - t0


def worker(config: dict) -> dict:
    import torch

    from yolo_taskvec.merging import merge_states

    if config["threads"] == "1":
        torch.set_num_threads(1)
    device = "cuda" if config["device"] not in ("cpu", "") else "cpu"
    base, vectors = make_inputs(config["size"], config["count"], device)
    model_bytes = sum(t.numel() * t.element_size() for t in base.values() if t.is_floating_point())
    reps = config["reps"]
    floor, floor_bw = floor_seconds(base, vectors, device, reps)
    scale = 1.0 / len(vectors)
    merged = None
    gc.collect()
    before = rss_bytes()
    reset = reset_peak()
    times = []
    for i in range(reps):
        sync(device)
        t0 = time.perf_counter()
        merged, _ = merge_states(base, vectors, config["method"], scale=scale, bn="merge")
        sync(device)
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak = peak_bytes(reset)
        del merged
        gc.collect()
        if times[0] * (i + 2) > config["budget_s"]:
            break
    out = {
        "torch_threads": torch.get_num_threads(), "model_mb": model_bytes / 2**20, "inputs_mb": model_bytes * (1 + len(vectors)) / 2**20,
        "floor_s": floor, "floor_bw_s": floor_bw, "merge_s": min(times), "merge_runs": len(times), "ratio": min(times) / floor, "ratio_bw": min(times) / floor_bw,
        "peak_extra_mb": (peak - before) / 2**20, "peak_extra_models": (peak - before) / model_bytes, "peak_method": "VmHWM" if reset else "ru_maxrss",
    }
    if config["math"]:
        out["math_s"] = math_only(base, vectors, config["method"], scale)
    return out


# ----------------------------------------------------------------------------------------------- parent side
def configurations(args: dict[str, str]) -> list[dict]:
    from yolo_taskvec.methods import get_method, method_names

    def names(spec: str) -> list[str]:
        chosen = method_names() if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in method_names()]
        if unknown:
            sys.exit(f"unknown method {unknown[0]}; registered: {', '.join(method_names())}")
        return chosen

    out = []
    for size in [s.strip() for s in args["sizes"].split(",") if s.strip()]:
        methods = names(args["methods"] if size != "x" or args["methods_x"] == "same" else args["methods_x"])
        for count in [int(c) for c in args["counts"].split(",") if c.strip()]:
            for method in methods:
                m = get_method(method)
                if count < m.min_models or (m.max_models is not None and count > m.max_models):
                    continue
                for threads in [t.strip() for t in args["threads"].split(",") if t.strip()]:
                    math = size == "n" if args["math"] == "auto" else as_bool(args["math"])
                    out.append({"size": size, "count": count, "method": method, "threads": threads, "reps": int(args["reps"]), "device": args["device"], "math": math, "budget_s": float(args["timeout"]) / 2})
    return out


def run_one(config: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # glibc: blocks ≥ 64 KiB are mmapped and returned on free, so RSS tracks live memory
    if config["threads"] != "1":
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), f"worker={json.dumps(config)}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**config, "error": f"timed out after {timeout:g} s"}
    if proc.returncode != 0:
        return {**config, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**config, **result, "wall_s": round(time.perf_counter() - t0, 1)}


def run(args: dict[str, str]) -> dict:
    from ultralytics.utils import TQDM

    configs = configurations(args)
    env = environment(args["device"])
    env["torch_threads"] = "1 and default (per configuration)"
    print(f"{env['machine']}\n{env['device']}; GPU available: {env['gpu_available']}\n{env['versions']}\nload average at start: {env['load_average_start']}")
    print(f"{len(configs)} configurations, each in a fresh subprocess")
    rows = []
    timeout = float(args["timeout"])
    for config in TQDM(configs, desc="merge perf", disable=not sys.stdout.isatty()):
        row = run_one(config, timeout)
        row["load_1min"] = os.getloadavg()[0]
        rows.append(row)
        label = f"yolo26{row['size']} n={row['count']} {row['method']:<17} threads={row['threads']:<7}"
        if "error" in row:
            print(f"{label} {row['error']}")
        else:
            extra = f" math {row['math_s']:.2f}s" if "math_s" in row else ""
            print(f"{label} floor {row['floor_s'] * 1e3:8.1f} ms  merge {row['merge_s']:7.2f} s  ratio {row['ratio']:6.1f}x  peak extra {row['peak_extra_mb']:7.0f} MB ({row['peak_extra_models']:.2f} models){extra}", flush=True)
    settings = {k: args[k] for k in ("sizes", "counts", "methods", "methods_x", "threads", "reps", "timeout", "device")}
    return {"environment": env, "settings": settings, "summary": {"load_average_end": load_average()}, "rows": rows}


# ----------------------------------------------------------------------------------------------- outputs
def markdown(runs: dict) -> str:
    lines = [
        "# Merge performance: time and peak memory per method, as a ratio to the memory-bandwidth floor",
        "",
        "Random-initialised yolo26n (2.6 M) and yolo26x (59 M parameters) DetectionModels; random task vectors with the",
        "scale of τ(fruit-night). *floor*: reading every input once (base + all deltas), measured in the same process;",
        "*merge*: `merging.merge_states(..., scale=1/n, bn='merge')`, what `merge` and the CLI run, fastest of the repeats;",
        "*peak extra*: resident-set high-water mark during the merge minus the resident set before it, in MB and in",
        "model sizes (the merged state dict itself is 1 model). *math*: the method's own tensor math without the driver.",
        "Targets: ≤ 2× the floor for task arithmetic, ≤ 5× for TIES/DARE; peak memory that does not grow with n.",
        "Regenerate: `python benchmarks/bench_merge_perf.py` (all; subsets with `sizes=n counts=2,8 threads=1 methods=ties`).",
        "",
    ]
    for kind, r in runs.items():
        env, rows = r["environment"], r["rows"]
        lines += [f"## {kind.upper()}", "", *environment_markdown(env, r["summary"]["load_average_end"])]
        if "settings" in r:
            lines += ["Run with: " + ", ".join(f"`{k}={v}`" for k, v in r["settings"].items()), ""]
        if busy(env):
            lines += ["**These timings come from a shared machine under load (see the load average): ratios are indicative only; re-run on an idle machine.**", ""]
        for size in dict.fromkeys(x["size"] for x in rows):
            for threads in dict.fromkeys(x["threads"] for x in rows):
                sub = [x for x in rows if x["size"] == size and x["threads"] == threads]
                if not sub:
                    continue
                counts = sorted({x["count"] for x in sub})
                tt = next((x["torch_threads"] for x in sub if "torch_threads" in x), "?")
                model_mb = next((x["model_mb"] for x in sub if "model_mb" in x), 0)
                floors = {c: next(((x["floor_s"], x.get("floor_bw_s", x["floor_s"])) for x in sub if x["count"] == c and "floor_s" in x), None) for c in counts}
                lines += [
                    f"### yolo26{size} ({model_mb:.0f} MB fp32), threads = {threads} (torch threads {tt})",
                    "",
                    "Floor, read all inputs once, per tensor (one contiguous buffer of the same size): "
                    + ", ".join(f"n={c}: {f[0] * 1e3:.1f} ms ({f[1] * 1e3:.1f} ms)" for c, f in floors.items() if f) + ". Ratios are to the per-tensor floor.",
                    "",
                    "| method | " + " | ".join(f"n={c}: time (× floor)" for c in counts) + " | " + " | ".join(f"n={c}: peak extra MB (models)" for c in counts) + " |",
                    "|---|" + "---|" * (2 * len(counts)),
                ]
                for method in dict.fromkeys(x["method"] for x in sub):
                    cells, mems = [], []
                    for c in counts:
                        x = next((y for y in sub if y["method"] == method and y["count"] == c), None)
                        if x is None:
                            cells.append("-")
                            mems.append("-")
                        elif "error" in x:
                            cells.append(x["error"])
                            mems.append("-")
                        else:
                            target = TARGETS.get(method)
                            mark = "" if target is None else (" ✓" if x["ratio"] <= target else " ✗")
                            math = f", math {x['math_s'] / x['floor_s']:.1f}×" if "math_s" in x else ""
                            cells.append(f"{x['merge_s'] * 1e3:.0f} ms ({x['ratio']:.1f}×{mark}{math})" if x["merge_s"] < 10 else f"{x['merge_s']:.1f} s ({x['ratio']:.0f}×{mark}{math})")
                            mems.append(f"{x['peak_extra_mb']:.0f} ({x['peak_extra_models']:.2f})")
                    lines.append(f"| {method} | " + " | ".join(cells) + " | " + " | ".join(mems) + " |")
                lines.append("")
        lines += [
            "✓/✗: within/over the target ratio (task arithmetic 2×, TIES/DARE/DARE-TIES 5×). Methods without a target",
            "(SVD-based `tsv`, `iso_c`, `iso_cts`; `consensus`, `breadcrumbs`, `magnitude_prune`, `disjoint`, `slerp`) are",
            "compute-bound by design and are listed for reference. `slerp` takes exactly 2 models; `consensus` at least 2.",
            "",
        ]
    if "cuda" not in runs:
        lines += ["No GPU figures yet (no GPU was available): `python benchmarks/bench_merge_perf.py device=0` adds them.", ""]
    return "\n".join(lines)


def plot(runs: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    r = runs.get("cuda") or runs["cpu"]
    rows = [x for x in r["rows"] if "error" not in x]
    sizes = list(dict.fromkeys(x["size"] for x in rows))
    threads = list(dict.fromkeys(x["threads"] for x in rows))
    panels = [(s, t) for s in sizes for t in threads]
    fig = Figure(figsize=(13, 4.6 * len(panels)))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    methods = list(dict.fromkeys(x["method"] for x in rows))
    cmap = __import__("matplotlib").colormaps["tab20"]
    for (size, th), (left, right) in zip(panels, axes):
        for i, m in enumerate(methods):
            pts = sorted((x["count"], x["ratio"], x["peak_extra_models"]) for x in rows if x["size"] == size and x["threads"] == th and x["method"] == m)
            if not pts:
                continue
            c, ratio, mem = zip(*pts)
            style = dict(color="black", linewidth=2.2) if m == "task_arithmetic" else dict(color=cmap(i % 20))
            left.plot(c, ratio, "o-", label=m, **style)
            right.plot(c, mem, "o-", label=m, **style)
        left.axhline(2, color="black", linestyle=":", linewidth=1)
        left.axhline(5, color="red", linestyle=":", linewidth=1)
        left.set(yscale="log", xlabel="number of task vectors", ylabel="merge time / floor (log)", title=f"yolo26{size}, threads={th}: time ÷ read-all-inputs floor (targets 2×, 5×)", xticks=[2, 4, 8])
        right.set(xlabel="number of task vectors", ylabel="peak extra memory (model sizes)", title=f"yolo26{size}, threads={th}: peak extra memory", xticks=[2, 4, 8])
        left.grid(alpha=0.3, which="both")
        right.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"merge_states performance, {r['environment']['device']} — load average at start {r['environment']['load_average_start']}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_merge_perf.py")
    if as_bool(args["render"]):
        render_outputs("merge_perf", Path(args["out"]), markdown=markdown, plot=plot)
        return
    if args["worker"]:
        print(json.dumps(worker(json.loads(args["worker"]))))
        return
    result = run(args)
    write_outputs("merge_perf", result, Path(args["out"]), kind=device_kind(args["device"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
