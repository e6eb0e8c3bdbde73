"""Merge time and peak memory per method for 2, 4 and 8 task vectors of yolo26n- and yolo26x-sized models.

Each configuration (model size, number of vectors, method, thread setting) runs in a FRESH subprocess:

1. the base is a random-initialised ``DetectionModel`` from Ultralytics' ``yolo26n.yaml`` / ``yolo26x.yaml`` (fp32);
   each vector is random with a realistic scale, measured on τ(fruit-night): learned tensors get
   N(0, (0.1·s)²) with s = max(std, mean |θ|, 0.01) of the base tensor (the real median ratio std(τ)/std(θ) is 0.10);
   running variances get var·(exp(0.17·N(0,1)) − 1) (median relative change 0.17), so they stay positive;
2. the **floor**: the time to read every input of the merge once - one ``torch.sum`` over every floating tensor of
   the base and over every delta of every vector. It is the memory-bandwidth bound of any merge (which must also
   write one model, not counted) and includes one operation's overhead per tensor and input, which any per-tensor
   merge pays too. Also one ``sum`` over a single buffer of the same size (pure bandwidth), and the time to write
   one model into fresh memory (``write``: first touch of every output page), for reference;
3. the **merge**: ``yolo_taskvec.merging.merge_states(base, vectors, method, scale=1/n, bn="merge")`` (what
   ``merge``/the CLI run). Floor and merge are measured **side by side**: every repeat times the floor, then the merge
   (and the components below), so both see the same load; the fastest of the repeats of each is kept (at least
   ``reps`` repeats, more until ``min_time`` seconds of merging for small models), and their ratio is reported;
4. **peak extra memory**: the process's resident-set high-water mark during the first merge (``VmHWM``, reset
   through ``/proc/self/clear_refs`` just before it; ``ru_maxrss`` where that is not possible) minus the resident set
   before it (workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed blocks go back to the system and the
   resident set tracks live memory). The merged state dict itself is one model's size (``1.0`` model in the table),
   the least any merge needs;
5. with ``math=true`` (default: every method on yolo26n, the targeted ones on yolo26x) the parts of the merge, each
   timed alone over every learned tensor: ``ids`` (the driver's content ids of the vectors, ``merging.vector_id``),
   ``math`` (the method's ``fn``), ``add`` (the driver's ``base + scale·merged``), and ``apply``
   (``Method.apply``: base + scale·merge in one streaming pass, the tensor work of the driver change recommended in
   the results). ``merge − math − add`` is the driver's own overhead; ``merge − ids − math − add + apply`` projects
   the merge with that change (a sum of measured parts, not a measurement).

Thread settings: ``1`` (``torch.set_num_threads(1)``) and ``default`` (torch's own default; ``OMP_NUM_THREADS`` is
removed from the subprocess environment). A configuration that exceeds ``timeout`` seconds is reported as such.

    python benchmarks/bench_merge_perf.py                                  # everything (long on CPU: ~1-2 h)
    python benchmarks/bench_merge_perf.py sizes=n counts=2,8 threads=1     # a subset
    python benchmarks/bench_merge_perf.py device=0                         # tensors on the GPU
    python benchmarks/bench_merge_perf.py render=true baseline=old/merge_perf.json baseline_label="commit abc"  # compare

Writes ``benchmarks/results/merge_perf.{md,json,png}``. Timings on a shared, loaded machine are noisy (the load
average is recorded); ratios measured side by side are what to read.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from common import RESULTS, as_bool, busy, device_kind, environment, environment_markdown, load_average, parse_args, render_outputs, save_figure, write_outputs, write_text_atomic

DEFAULTS = {
    "sizes": "n,x",
    "counts": "2,4,8",
    "methods": "all",
    "methods_x": "same",  # methods for yolo26x ("same": as methods=); the SVD-based ones take minutes there
    "threads": "1,default",
    "reps": "3",
    "min_time": "1.0",  # seconds of merging to accumulate at least (small models: more repeats, steadier minima)
    "max_reps": "30",
    "timeout": "600",
    "math": "auto",  # auto: every method on yolo26n, the targeted ones (TARGETS) on yolo26x
    "device": "cpu",
    "out": str(RESULTS),
    "render": "false",  # true: rebuild the .md/.png from the stored .json, measure nothing
    "baseline": "",  # a merge_perf.json measured with another version of the code: its CPU rows are stored beside
    "baseline_label": "",  # this run's as "baseline" and compared in the Markdown (what that version was)
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

    from yolo_taskvec import TaskVector
    from yolo_taskvec.taskvector import is_mergeable

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


class Stopwatch:
    """Wall-clock and process CPU time (all threads) of a block; on a loaded machine the CPU time of a one-thread run
    excludes the time spent waiting for a core, so its ratios stay readable when the wall-clock ones are noise."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]


def floor_parts(base, vectors):
    """The tensors a merge reads (every floating base tensor, every delta) and a buffer of their total size."""
    import torch

    tensors = [t for t in base.values() if t.is_floating_point()] + [d for v in vectors for d in v.deltas.values()]
    return tensors, torch.ones(sum(t.numel() for t in tensors), device=tensors[0].device)


def read_all(tensors) -> None:
    """The floor: read every input once, one reduction per tensor."""
    for t in tensors:
        t.sum()


def merge_parts(base, vectors, method_name: str, scale: float) -> dict[str, float]:
    """The parts of a merge, each timed alone over every learned tensor (BatchNorm statistics and the driver's
    checks excluded): ``ids`` (content ids of the vectors), ``math`` (``method.fn``), ``add`` (the driver's
    ``torch.add(base, merged, alpha=scale, out=merged)``) and ``apply`` (``method.apply``, fused). Wall-clock
    seconds as ``<part>_s``, CPU seconds as ``<part>_cpu_s``."""
    import torch

    from yolo_taskvec import get_method, is_bn_stat
    from yolo_taskvec.merging import _rng, vector_id
    from yolo_taskvec.taskvector import is_mergeable

    method = get_method(method_name)
    params = method.resolve({})
    weights = method.prepare_weights([1.0] * len(vectors), params)
    parts = dict.fromkeys(("ids_s", "ids_cpu_s", "math_s", "math_cpu_s", "add_s", "add_cpu_s", "apply_s", "apply_cpu_s"), 0.0)

    def count(name: str, watch: Stopwatch) -> None:
        parts[f"{name}_s"] += watch.wall
        parts[f"{name}_cpu_s"] += watch.cpu

    with Stopwatch() as watch:
        vids = [vector_id(v) for v in vectors]
    count("ids", watch)
    kept = []  # outputs stay alive as in a merge (a growing model in fresh memory costs page faults)
    for key, b in base.items():
        if not is_mergeable(key, b) or is_bn_stat(key):
            continue
        ds = [v.deltas[key] for v in vectors]
        rngs = [_rng(0, key, vid) for vid in vids] if method.random else None
        with Stopwatch() as watch:
            merged = method.fn(ds, list(weights), base=b, rngs=rngs, **params)
        count("math", watch)
        owned = all(merged.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in (*ds, b))
        with Stopwatch() as watch:
            kept.append(torch.add(b, merged, alpha=scale, out=merged if owned else None))
        count("add", watch)
        del merged
        rngs = [_rng(0, key, vid) for vid in vids] if method.random else None
        with Stopwatch() as watch:
            kept.append(method.apply(ds, list(weights), base=b, alpha=scale, rngs=rngs, **params))
        count("apply", watch)
    return parts


def write_model(base) -> list:
    """Write one model's worth of fresh memory (every floating tensor of the base, first touch): what producing the
    merged state dict costs at least, beside reading the inputs. Returned so that it stays alive while timed."""
    import torch

    return [torch.empty_like(t).fill_(1.0) for t in base.values() if t.is_floating_point()]


def worker(config: dict) -> dict:
    import torch

    from yolo_taskvec import merge_states

    if config["threads"] == "1":
        torch.set_num_threads(1)
    device = "cuda" if config["device"] not in ("cpu", "") else "cpu"
    base, vectors = make_inputs(config["size"], config["count"], device)
    model_bytes = sum(t.numel() * t.element_size() for t in base.values() if t.is_floating_point())
    tensors, buffer = floor_parts(base, vectors)
    scale = 1.0 / len(vectors)
    best: dict[str, float] = {}

    def keep(name: str, watch: Stopwatch) -> None:
        best[f"{name}_s"] = min(best.get(f"{name}_s", float("inf")), watch.wall)
        best[f"{name}_cpu_s"] = min(best.get(f"{name}_cpu_s", float("inf")), watch.cpu)

    read_all(tensors)  # first touch of every input (page faults) before anything is timed
    runs, spent, peak = 0, 0.0, None
    while runs < config["reps"] or (spent < config["min_time"] and runs < config["max_reps"]):
        with Stopwatch(device) as watch:  # side by side: the floor, then the merge
            read_all(tensors)
        keep("floor", watch)
        with Stopwatch(device) as watch:
            buffer.sum()
        keep("floor_bw", watch)
        with Stopwatch(device) as watch:
            written = write_model(base)
        keep("write", watch)
        del written
        gc.collect()
        if peak is None:
            before = rss_bytes()
            reset = reset_peak()
        with Stopwatch(device) as watch:
            merge_states(base, vectors, config["method"], scale=scale, bn="merge")
        if peak is None:
            peak = peak_bytes(reset) - before
        keep("merge", watch)
        spent, runs = spent + watch.wall, runs + 1
        if config["math"]:
            for name, value in merge_parts(base, vectors, config["method"], scale).items():
                best[name] = min(best.get(name, float("inf")), value)
        if watch.wall * (runs + 1) > config["budget_s"]:
            break
    out = {
        "torch_threads": torch.get_num_threads(), "model_mb": model_bytes / 2**20, "inputs_mb": model_bytes * (1 + len(vectors)) / 2**20,
        **best, "merge_runs": runs, "ratio": best["merge_s"] / best["floor_s"], "ratio_cpu": best["merge_cpu_s"] / best["floor_cpu_s"],
        "ratio_bw": best["merge_s"] / best["floor_bw_s"], "ratio_rw_cpu": best["merge_cpu_s"] / (best["floor_cpu_s"] + best["write_cpu_s"]),
        "peak_extra_mb": peak / 2**20, "peak_extra_models": peak / model_bytes, "peak_method": "VmHWM" if reset else "ru_maxrss",
    }
    if config["math"]:
        for suffix in ("_s", "_cpu_s"):
            out[f"projected{suffix}"] = best[f"merge{suffix}"] - best[f"ids{suffix}"] - best[f"math{suffix}"] - best[f"add{suffix}"] + best[f"apply{suffix}"]
    return out


# ----------------------------------------------------------------------------------------------- parent side
def configurations(args: dict[str, str]) -> list[dict]:
    from yolo_taskvec import get_method, method_names

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
                    math = (size == "n" or method in TARGETS) if args["math"] == "auto" else as_bool(args["math"])
                    out.append({
                        "size": size, "count": count, "method": method, "threads": threads, "reps": int(args["reps"]), "min_time": float(args["min_time"]),
                        "max_reps": int(args["max_reps"]), "device": args["device"], "math": math, "budget_s": float(args["timeout"]) / 2,
                    })
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
            extra = "".join(f"  {name} {row[f'{name}_cpu_s'] / row['floor_cpu_s']:.1f}x" for name in ("math", "apply", "projected") if f"{name}_cpu_s" in row)
            print(
                f"{label} floor {row['floor_s'] * 1e3:8.1f} ms  merge {row['merge_s'] * 1e3:8.1f} ms  ratio {row['ratio']:6.1f}x (CPU time {row['ratio_cpu']:5.1f}x)"
                f"  peak extra {row['peak_extra_mb']:7.0f} MB ({row['peak_extra_models']:.2f} models){extra and '  CPU-time parts:' + extra}",
                flush=True,
            )
    settings = {k: args[k] for k in ("sizes", "counts", "methods", "methods_x", "threads", "reps", "min_time", "max_reps", "timeout", "math", "device")}
    result = {"environment": env, "settings": settings, "summary": {"load_average_end": load_average()}, "rows": rows}
    print("\n" + "\n".join(summary_lines(rows)))
    return result


def summary_lines(rows: list[dict]) -> list[str]:
    """merge time ÷ read-once floor, side by side per model, thread setting and number of vectors."""
    lines = ["merge_states time / read-once floor, wall clock | CPU time (same process, side by side); in brackets: projected with Method.apply + cached ids (CPU time)"]
    for size in dict.fromkeys(r["size"] for r in rows):
        for threads in dict.fromkeys(r["threads"] for r in rows):
            sub = [r for r in rows if r["size"] == size and r["threads"] == threads]
            counts = sorted({r["count"] for r in sub})
            if not sub:
                continue
            lines.append(f"yolo26{size}, threads={threads}: " + " ".join(f"n={c:<2}" + " " * 16 for c in counts))
            for method in dict.fromkeys(r["method"] for r in sub):
                cells = []
                for c in counts:
                    r = next((x for x in sub if x["method"] == method and x["count"] == c), None)
                    if r is None or "error" in r:
                        cells.append(f"{'-' if r is None else 'error':<18}")
                    else:
                        proj = f"({r['projected_cpu_s'] / r['floor_cpu_s']:.1f}x)" if "projected_cpu_s" in r else ""
                        cells.append(f"{r['ratio']:5.1f}x|{r['ratio_cpu']:4.1f}x {proj:<8}")
                lines.append(f"  {method:<17} " + " ".join(cells))
    return lines


# ----------------------------------------------------------------------------------------------- outputs
SLOW = {  # why a method may be left out of the yolo26x runs (methods_x): minutes per configuration on 2 cores
    "tsv": "one SVD per weight matrix and vector", "iso_c": "one SVD per weight matrix", "iso_cts": "several SVDs per weight matrix",
    "della": "a sort of every row of every vector", "della_linear": "a sort of every row of every vector",
}


def primary(run: dict) -> tuple[str, str]:
    """Which clock the goals and the figure read: CPU time (``"_cpu"``) when the run started on a busy machine (more
    runnable processes than cores) and recorded it, else the wall clock (``""``). Tables show both."""
    if busy(run["environment"]) and all("floor_cpu_s" in x for x in run["rows"] if "error" not in x):
        return "_cpu", "CPU time"
    return "", "wall clock"


def ratio(x: dict, suffix: str, part: str = "merge") -> float:
    return x[f"{part}{suffix}_s"] / x[f"floor{suffix}_s"]


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def absent_methods(rows: list[dict]) -> list[str]:
    """One sentence per method that ran on one model size but not on another, saying why."""
    lines = []
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    every = list(dict.fromkeys(r["method"] for r in rows))
    for size in sizes:
        missing = [m for m in every if not any(r["method"] == m and r["size"] == size for r in rows)]
        if missing:
            reasons = "; ".join(f"`{m}` ({SLOW[m] + ': minutes per configuration' if m in SLOW else 'not selected in this run'})" for m in missing)
            lines.append(f"Not run on yolo26{size} (left out by `methods_x`): {reasons}.")
    return lines


def markdown(runs: dict) -> str:
    lines = [
        "# Merge cost vs the read-once memory floor: time and peak memory per method",
        "",
        "Random-initialised yolo26n (2.6 M) and yolo26x (59 M parameters) DetectionModels; random task vectors with the",
        "scale of τ(fruit-night). *floor*: reading every input of the merge once (one `sum` per floating base tensor and per",
        "delta), the bandwidth bound of any merge, which must also write one model; *merge*: `merging.merge_states(...,",
        "scale=1/n, bn='merge')`, what `merge` and the CLI run. Floor and merge are timed side by side in one process (each",
        "repeat times both; fastest of the repeats of each); ratios are merge ÷ floor. *peak extra*: resident-set high-water",
        "mark during the merge minus the resident set before it, in MB and in model sizes (the merged state dict itself is",
        "1 model). Targets: ≤ 2× the floor for task arithmetic, ≤ 5× for TIES/DARE/DARE-TIES; peak memory flat in n.",
        "Regenerate: `python benchmarks/bench_merge_perf.py` (subsets: `sizes=n counts=2,8 threads=1 methods=ties`).",
        "",
    ]
    for kind, r in runs.items():
        env, rows = r["environment"], r["rows"]
        lines += [f"## {kind.upper()}", "", *environment_markdown(env, r["summary"]["load_average_end"])]
        if "settings" in r:
            lines += ["Run with: " + ", ".join(f"`{k}={v}`" for k, v in r["settings"].items()), ""]
        suffix, clock = primary(r)
        if busy(env):
            lines += [
                "**These timings come from a shared machine under load (see the load average): wall-clock times include waiting for a core.",
                "Goals and figure therefore read the CPU time of the process (all its threads), measured side by side in the same way;",
                "the tables give both.**",
                "",
            ]
        lines += goal_lines(rows, suffix, clock)
        lines += baseline_lines(r, suffix, clock)
        for size in dict.fromkeys(x["size"] for x in rows):
            for threads in dict.fromkeys(x["threads"] for x in rows):
                sub = [x for x in rows if x["size"] == size and x["threads"] == threads]
                if sub:
                    lines += size_tables(size, threads, sub, suffix, clock)
        lines += [
            "✓/✗: within/over the target ratio (task arithmetic 2×, TIES/DARE/DARE-TIES 5×). Methods without a target",
            "(SVD-based `tsv`, `iso_c`, `iso_cts`; per-row sorting `della`, `della_linear`; `consensus`, `breadcrumbs`,",
            "`magnitude_prune`, `disjoint`, `slerp`, `model_stock`) are listed for reference. `slerp` takes exactly 2 models.",
            *absent_methods(rows),
            "",
        ]
    if "cuda" not in runs:
        lines += ["No GPU figures yet (no GPU was available): `python benchmarks/bench_merge_perf.py device=0` adds them.", ""]
    return "\n".join(lines)


def goal_lines(rows: list[dict], suffix: str, clock: str) -> list[str]:
    """The goals, met or not, over every model size, thread setting and number of vectors of the run."""
    out = [
        "### Goals",
        "",
        f"Judged on the {clock} ratio. *projected*: merge − ids − math − add + apply (see below), the merge with the recommended driver change.",
        "",
        "| method | target | merge ÷ floor, wall clock (min–max) | merge ÷ floor, CPU time (min–max) | met | projected (min–max) | merge ÷ (floor + writing one model), CPU time |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, target in TARGETS.items():
        sub = [r for r in rows if r["method"] == method and "error" not in r]
        if not sub:
            continue
        judged = [ratio(r, suffix) for r in sub]
        wall = [r["ratio"] for r in sub]
        cpu = [r.get("ratio_cpu", float("nan")) for r in sub]
        proj = [ratio(r, suffix, "projected") for r in sub if f"projected{suffix}_s" in r]
        ok = "yes" if max(judged) <= target else f"no ({sum(x > target for x in judged)} of {len(judged)} over)"
        pr = f"{min(proj):.1f}–{max(proj):.1f}× ({sum(x <= target for x in proj)} of {len(proj)} within)" if proj else "-"
        rw = [r["ratio_rw_cpu"] for r in sub if "ratio_rw_cpu" in r]
        rws = f"{min(rw):.1f}–{max(rw):.1f}×" if rw else "-"
        out.append(f"| {method} | ≤ {target:g}× | {min(wall):.1f}–{max(wall):.1f}× | {min(cpu):.1f}–{max(cpu):.1f}× | {ok} | {pr} | {rws} |")
    return out + [""]


def size_tables(size: str, threads: str, sub: list[dict], suffix: str, clock: str) -> list[str]:
    counts = sorted({x["count"] for x in sub})
    tt = next((x["torch_threads"] for x in sub if "torch_threads" in x), "?")
    model_mb = next((x["model_mb"] for x in sub if "model_mb" in x), 0)
    floors = {c: next(((x["floor_s"], x["floor_bw_s"]) for x in sub if x["count"] == c and "floor_s" in x), None) for c in counts}
    writes = [x["write_cpu_s"] / x["floor_cpu_s"] for x in sub if "write_cpu_s" in x]
    lines = [
        f"### yolo26{size} ({model_mb:.0f} MB fp32), threads = {threads} (torch threads {tt})",
        "",
        "Floor, read all inputs once, per tensor (one contiguous buffer of the same size), as measured with the first method: "
        + ", ".join(f"n={c}: {f[0] * 1e3:.1f} ms ({f[1] * 1e3:.1f} ms)" for c, f in floors.items() if f) + ". Every configuration measures its own floor, side by side with its merge; its ratio is to that floor."
        + (f" Writing one model into fresh memory (first touch of the output) costs {min(writes):.1f}–{max(writes):.1f}× the floor (CPU time) on top." if writes else ""),
        "",
        "| method | " + " | ".join(f"n={c}: time (× floor: wall, CPU)" for c in counts) + " | " + " | ".join(f"n={c}: peak extra MB (models)" for c in counts) + " |",
        "|---|" + "---|" * (2 * len(counts)),
    ]
    for method in dict.fromkeys(x["method"] for x in sub):
        cells, mems = [], []
        for c in counts:
            x = next((y for y in sub if y["method"] == method and y["count"] == c), None)
            if x is None or "error" in x:
                cells.append("-" if x is None else x["error"])
                mems.append("-")
                continue
            target = TARGETS.get(method)
            mark = "" if target is None else (" ✓" if ratio(x, suffix) <= target else " ✗")
            cpu = f", {x['ratio_cpu']:.1f}×" if "ratio_cpu" in x else ""
            cells.append(f"{fmt_time(x['merge_s'])} ({x['ratio']:.1f}×{cpu}{mark})")
            mems.append(f"{x['peak_extra_mb']:.0f} ({x['peak_extra_models']:.2f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " | " + " | ".join(mems) + " |")
    parts = [x for x in sub if f"apply{suffix}_s" in x]
    if parts:
        lines += [
            "",
            f"Where the time goes (yolo26{size}, threads = {threads}; {clock}), each part timed alone and ÷ the floor: *math* = the method's `fn`;",
            "*add* = the driver's `base + scale·merged`; *driver* = merge − math − add (content ids, ordering, BN policy, checks,",
            "Python per tensor); *ids* = the content ids alone; *apply* = `Method.apply` (base + scale·merge streamed in one pass);",
            "*projected* = merge − ids − math − add + apply, the merge with the recommended driver change (a sum of measured parts).",
            "Each part is the fastest of its own repeats, so a difference of them (driver, projected) carries their noise: a small",
            "negative *driver* means a driver overhead below that noise.",
            "",
            "| method | n | merge | math | add | driver | of which ids | apply | projected |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in sorted(parts, key=lambda y: (list(TARGETS).index(y["method"]) if y["method"] in TARGETS else 99, y["method"], y["count"])):
            f = x[f"floor{suffix}_s"]
            part = {k: x[f"{k}{suffix}_s"] / f for k in ("merge", "math", "add", "ids", "apply", "projected")}
            lines.append(
                f"| {x['method']} | {x['count']} | {part['merge']:.1f}× | {part['math']:.1f}× | {part['add']:.1f}× | {part['merge'] - part['math'] - part['add']:.1f}× | "
                f"{part['ids']:.1f}× | {part['apply']:.1f}× | {part['projected']:.1f}× |"
            )
    return lines + [""]


def plot(runs: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    kind = "cuda" if "cuda" in runs else "cpu"
    r = runs[kind]
    suffix, clock = primary(r)
    rows = [x for x in r["rows"] if "error" not in x]
    panels = [(s, t) for s in dict.fromkeys(x["size"] for x in rows) for t in dict.fromkeys(x["threads"] for x in rows) if any(x["size"] == s and x["threads"] == t for x in rows)]
    methods = list(dict.fromkeys(x["method"] for x in r["rows"]))
    cmaps = __import__("matplotlib").colormaps
    palette = list(cmaps["tab10"].colors) + list(cmaps["Dark2"].colors)  # 18 colours, one per method, 4 strongest first
    styles = {
        m: dict(color=palette[i % len(palette)], linestyle="-" if i < 10 else "--", marker="osd^vP*Xh<>p8H"[i % 14])
        for i, m in enumerate(sorted(methods, key=lambda m: (m not in TARGETS, m)))
    }
    for m in TARGETS:
        if m in styles:
            styles[m].update(linewidth=2.6, markersize=7)
    fig = Figure(figsize=(19, 4.9 * len(panels) + 1.6))
    axes = fig.subplots(len(panels), 3, squeeze=False)
    ticks = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500]
    times = FuncFormatter(lambda v, _: f"{v:g}×")
    counts_all = sorted({x["count"] for x in rows})
    for (size, th), (left, middle, right) in zip(panels, axes):
        sub = [x for x in rows if x["size"] == size and x["threads"] == th]
        tt = next(x["torch_threads"] for x in sub)
        lo, hi = min(ratio(x, suffix) for x in sub), max(ratio(x, suffix) for x in sub)
        for m in methods:
            pts = sorted((x["count"], ratio(x, suffix), x["peak_extra_models"]) for x in sub if x["method"] == m)
            if not pts:
                continue
            c, ratios, mem = zip(*pts)
            left.plot(c, ratios, label=m, **styles[m])
            right.plot(c, mem, label=m, **styles[m])
            proj = sorted((x["count"], ratio(x, suffix), ratio(x, suffix, "projected")) for x in sub if x["method"] == m and f"projected{suffix}_s" in x)
            if m in TARGETS and proj:
                pc, pr, pp = zip(*proj)
                middle.plot(pc, pr, **styles[m])
                middle.plot(pc, pp, **{**styles[m], "linestyle": "--", "markerfacecolor": "white"})
                lo, hi = min(lo, *pp), max(hi, *pp)
        written = sorted({x["count"]: 1 + x[f"write{suffix}_s"] / x[f"floor{suffix}_s"] for x in sub if f"write{suffix}_s" in x}.items())
        if written:  # what reading the inputs once and writing one model into fresh memory cost, ÷ the floor
            middle.plot(*zip(*written), color="dimgray", linestyle="-.", linewidth=1.5, marker="|", markersize=10)
        for ax in (left, middle):
            ax.axhline(2, color="black", linestyle=(0, (1, 1)), linewidth=1.3)
            ax.axhline(5, color="red", linestyle=(0, (1, 1)), linewidth=1.3)
            ax.set_yscale("log")
            ax.set_ylim(min(0.8, lo / 1.3), max(6, hi * 1.3))
            ax.yaxis.set_major_locator(FixedLocator(ticks))
            ax.yaxis.set_major_formatter(times)
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("number of task vectors merged")
            ax.set_ylabel(f"merge ÷ read-once floor ({clock})")
            ax.set_xticks(counts_all)
            ax.grid(alpha=0.3)
        left.set_title(f"yolo26{size}, torch threads {tt}: merge_states, all methods", fontsize=10)
        middle.set_title(f"yolo26{size}, torch threads {tt}: targeted methods, today (solid)\nvs projected with Method.apply + cached ids (dashed)", fontsize=10)
        right.set(xlabel="number of task vectors merged", ylabel="peak extra memory (model sizes)", xticks=counts_all)
        right.set_title(f"yolo26{size}, torch threads {tt}: peak extra memory (the output is 1 model)", fontsize=10)
        right.grid(alpha=0.3)
    handles = [Line2D([], [], label=m, **styles[m]) for m in methods if any(x["method"] == m for x in rows)]
    handles += [
        Line2D([], [], color="black", linestyle=(0, (1, 1)), linewidth=1.3, label="target 2× (task arithmetic)"),
        Line2D([], [], color="red", linestyle=(0, (1, 1)), linewidth=1.3, label="target 5× (TIES, DARE, DARE-TIES)"),
        Line2D([], [], color="gray", linestyle="-", marker="o", label="today: merge_states (middle)"),
        Line2D([], [], color="gray", linestyle="--", marker="o", markerfacecolor="white", label="projected: Method.apply + cached ids (middle)"),
        Line2D([], [], color="dimgray", linestyle="-.", linewidth=1.5, marker="|", markersize=10, label="read inputs once + write one model into fresh memory (middle)"),
    ]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=7, fontsize=8.5, frameon=False)
    notes = "\n".join(textwrap.fill(line, 230) for line in absent_methods(r["rows"]))
    if notes:
        fig.text(0.5, 0.092, notes, ha="center", va="bottom", fontsize=8.5)
    env = r["environment"]
    fig.suptitle(
        f"Merge cost ÷ read-once memory floor ({clock}) on {kind.upper()} ({env['cpu']}, {env['logical_cpus']} logical CPUs, load average at start "
        f"{env['load_average_start'].split()[0]}): random task vectors of yolo26n/yolo26x, merge_states(scale=1/n, bn=merge)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.125 if notes else 0.09, 1, 0.97))
    save_figure(fig, path)


def attach_baseline(args: dict[str, str], kind: str) -> None:
    """Store the rows of another version's run (``baseline=``) beside this run's in the stored JSON."""
    path = Path(args["out"]) / "merge_perf.json"
    runs, other = json.loads(path.read_text()), json.loads(Path(args["baseline"]).read_text())[kind]
    runs[kind]["baseline"] = {"label": args["baseline_label"] or args["baseline"], "environment": other["environment"], "settings": other.get("settings", {}), "rows": other["rows"]}
    write_text_atomic(path, json.dumps(runs, indent=1, ensure_ascii=False))


def baseline_lines(r: dict, suffix: str, clock: str) -> list[str]:
    """Targeted methods, this code vs the stored baseline, where both ran the same configuration."""
    base = r.get("baseline")
    if not base:
        return []
    lines = [
        "### Compared with the code before this change",
        "",
        f"Baseline: {base['label']} — the same benchmark, run {base['environment']['date']} on the same machine (load average at start",
        f"{base['environment']['load_average_start']}). {clock} ratios, merge ÷ floor, each measured side by side in its own run.",
        "",
        "| model | n | method | before | now | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for old in base["rows"]:
        new = next((x for x in r["rows"] if all(x.get(k) == old.get(k) for k in ("size", "count", "method", "threads")) and "error" not in x), None)
        if new is None or "error" in old or f"merge{suffix}_s" not in old:
            continue
        before, now = ratio(old, suffix), ratio(new, suffix)
        lines.append(f"| yolo26{old['size']} | {old['count']} | {old['method']} | {before:.1f}× | {now:.1f}× | {before / now:.2f}× |")
    return lines + [""]


def main() -> None:
    args = parse_args(sys.argv[1:], DEFAULTS, "bench_merge_perf.py")
    kind = device_kind(args["device"])
    if as_bool(args["render"]):
        if args["baseline"]:
            attach_baseline(args, kind)
        render_outputs("merge_perf", Path(args["out"]), markdown=markdown, plot=plot)
        return
    if args["worker"]:
        print(json.dumps(worker(json.loads(args["worker"]))))
        return
    result = run(args)
    write_outputs("merge_perf", result, Path(args["out"]), kind=kind, markdown=markdown, plot=plot)
    if args["baseline"]:
        attach_baseline(args, kind)
        render_outputs("merge_perf", Path(args["out"]), markdown=markdown, plot=plot)


if __name__ == "__main__":
    main()
