"""``yolo-taskvec MODE key=value ...``: a yolo-style command line over the API.

Every argument has one entry in ``ARGS`` (default, type, help); every mode lists the arguments it takes. Unknown
modes and arguments are answered with the closest valid names; bad input prints one line on stderr and exits 2,
with no traceback and no output file left behind.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TaskVecError

USAGE_ERROR = 2


class UsageError(TaskVecError):
    """A command line that does not parse."""


# ----------------------------------------------------------------------------------------------- value types
def _list(value: str) -> list[str]:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise UsageError("an empty list was given.")
    return items


def _float(value: str) -> float:
    """A decimal number as written (``0.5``, ``1e-3``, ``nan`` and ``inf`` pass to the range checks that name them);
    Python's ``1_0`` and non-ASCII digits are refused."""
    text = str(value).strip()
    try:
        if "_" in text or not text.isascii():
            raise ValueError(text)
        return float(text)
    except ValueError as e:
        raise UsageError(f"'{value}' is not a number.") from e


def _int(value: str) -> int:
    text = str(value).strip()
    try:
        if "_" in text or not text.isascii():
            raise ValueError(text)
        return int(text)
    except ValueError as e:
        raise UsageError(f"'{value}' is not an integer.") from e


def _bool(value: str) -> bool:
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise UsageError(f"'{value}' is not true or false.")


def _scale(value: str) -> float | dict[str, float]:
    """``0.5`` or per part ``backbone:0.3,neck:0.5,head:1``."""
    if ":" not in str(value):
        return _float(value)
    out = {}
    for item in _list(value):
        part, _, number = item.partition(":")
        if not number:
            raise UsageError(f"'{item}' is not part:scale.")
        out[part.strip()] = _float(number)
    return out


def _floats(value: str) -> list[float]:
    return [_float(v) for v in _list(value)]


def _weights(value: str) -> list[float]:
    """Per-model weights; all zero would save the base unchanged as a "merge", so it is refused."""
    weights = _floats(value)
    if all(w == 0 for w in weights):
        raise UsageError("all weights are zero, so the merge would be the base unchanged; give at least one non-zero weight.")
    return weights


def _str(value: str) -> str:
    return str(value)


@dataclass(frozen=True)
class Arg:
    default: Any
    parse: Callable[[str], Any]
    help: str


ARGS: dict[str, Arg] = {
    "base": Arg(None, _str, "base checkpoint (.pt), e.g. yolo26n-base80.pt"),
    "tuned": Arg(None, _str, "fine-tuned checkpoint (.pt)"),
    "models": Arg(None, _list, "comma-separated fine-tunes (.pt) and/or task vectors (.safetensors)"),
    "vectors": Arg(None, _list, "comma-separated task-vector files (.safetensors)"),
    "model": Arg(None, _list, "comma-separated checkpoints to inspect or validate"),
    "out": Arg(None, _str, "output path (.pt for models, .safetensors for vectors)"),
    "name": Arg(None, _str, "label stored in the task vector"),
    "parts": Arg(None, _list, "parts and key globs: backbone,neck,head,head.box,head.cls,head.mask,'model.23.*'"),
    "unmatched": Arg("error", _str, "tensors with no same-shape base counterpart: error or carry"),
    "dtype": Arg("fp32", _str, "task-vector storage dtype: fp32, fp16, bf16 (compress: int8 = quant=int8 with fp16)"),
    "keep": Arg(None, _float, "compress: keep this fraction of the largest delta magnitudes (indices + values), e.g. 0.1"),
    "scope": Arg("tensor", _str, "compress: where keep= ranks magnitudes: tensor or global"),
    "rank": Arg(None, _int, "compress: low-rank factors of conv/linear deltas, at most this rank"),
    "energy": Arg(None, _float, "compress: low-rank factors keeping this fraction of the squared singular values, e.g. 0.9"),
    "quant": Arg(None, _str, "compress: quantize stored values with per-channel scales: int8, int4, int3, int2, int1"),
    "calib": Arg(None, _list, "compress: dataset yamls whose train images re-fit the BatchNorm statistics to the compressed weights (needs the base)"),
    "calib_batches": Arg(16, _int, "compress: batches of 16 images used by calib="),
    "calib_mode": Arg("shift", _str, "compress: calib= statistics: shift (move the fine-tune's by the approximation's effect) or replace"),
    "scale": Arg(1.0, _scale, "float, or per part like backbone:0.3,neck:0.5,head:1"),
    "weights": Arg(None, _weights, "per-model weights, comma-separated"),
    "method": Arg("task_arithmetic", _str, "merge method (yolo-taskvec help shows them)"),
    "bn": Arg("merge", _str, "BatchNorm policy: merge, geometric, base, recalibrate"),
    "bn_data": Arg(None, _list, "dataset yamls whose train images recalibrate BatchNorm (bn=recalibrate)"),
    "bn_batches": Arg(16, _int, "batches used by bn=recalibrate"),
    "classes": Arg("error", _str, "when class sets differ: error, base or union"),
    "seed": Arg(0, _int, "seed of random methods (dare, ...)"),
    "orthogonalize": Arg(False, _bool, "remove from each vector its projection on the others before merging"),
    "force": Arg(False, _bool, "apply vectors to a base with another fingerprint"),
    "imgsz": Arg(None, _int, "image size for validation and recalibration (default: the base's training size, as YOLO val does)"),
    "data": Arg(None, _list, "dataset yaml(s), comma-separated, e.g. fruit80.yaml,fruit80-night.yaml"),
    "preset": Arg("night", _str, "image transform: night, fog, blur, noise"),
    "day": Arg(None, _str, "demo: day dataset yaml (default fruit80.yaml from datasets_dir)"),
    "night": Arg(None, _str, "demo: night dataset yaml (default fruit80-night.yaml from datasets_dir)"),
    "scales": Arg("0:1:0.1", _str, "scale grid: start:stop:step (stop included) or comma-separated values"),
    "batch": Arg(16, _int, "validation batch size"),
    "device": Arg(None, _str, "device for validation: cpu, 0, 0,1, mps (default: Ultralytics' choice)"),
    "reference": Arg(None, _list, "reference model(s) normalizing each dataset's mAP: one for all, or one per dataset in data= order ('base' = the base)"),
    "metric": Arg("map50_95", _str, "metric of the objective: map50_95, map50, mask_map50_95, mask_map50"),
    "objective": Arg("mean", _str, "reduce the normalized metrics: mean or min"),
    "half": Arg(None, _bool, "fp16 validation (default: on CUDA only)"),
    "save": Arg(None, _str, "also save the best merged model as this .pt checkpoint"),
    "verbose": Arg(True, _bool, "progress bars and tables (false for scripts)"),
    "space": Arg("auto", _str, "search space: auto, scale, vectors, parts, vectors+parts, or comma-separated parts/vector names"),
    "bounds": Arg("0:1", _str, "search bounds low:high for every scale"),
    "budget": Arg(20, _int, "search: most evaluations (finished ones in out= count)"),
    "strategy": Arg("coordinate", _str, "search strategy: coordinate or random"),
    "start": Arg(None, _float, "search: start value of every scale (default: the middle of bounds)"),
    "backend": Arg("local", _str, "search backend: local or ray"),
    "address": Arg(None, _str, "ray: cluster address (auto, ray://head:10001); default a private local instance"),
    "workers": Arg(None, _int, "ray: parallel trials (default 2)"),
    "split": Arg("val", _str, "dataset split to validate or export: val, test, train"),
    "conf": Arg(None, _float, "validation confidence threshold (default: Ultralytics' 0.001)"),
    "iou": Arg(0.7, _float, "validation NMS IoU threshold"),
    "coco": Arg(False, _bool, "also score with pycocotools (COCO AP, AP50, AP75, APs/m/l)"),
}

MODES: dict[str, tuple[Callable[[dict[str, Any]], Any], tuple[str, ...], str]] = {}


def mode(name: str, args: Sequence[str], help: str, *, extra: bool = False) -> Callable:
    """Register a mode taking ``args`` (``extra=True``: other keys go to the merge method as parameters)."""

    def wrap(fn: Callable[[dict[str, Any]], Any]) -> Callable:
        MODES[name] = (fn, tuple(args) + (("*",) if extra else ()), help)
        return fn

    return wrap


# ----------------------------------------------------------------------------------------------- parsing
GLOBAL_ARGS: dict[str, Arg] = {
    "trust": Arg(False, _bool, "unpickle .pt files without restriction for this run (only for files you trust; same as YOLO_TASKVEC_TRUST=1)"),
}


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """``(mode, typed args, extra raw args)``; raises UsageError with the closest names on a typo or a key given
    twice. ``GLOBAL_ARGS`` (``trust=``) are accepted by every mode and returned among the typed args."""
    from ultralytics.cfg import merge_equals_args

    if not argv:
        return "help", {}, {}
    name, *rest = argv
    if name in ("-h", "--help"):
        name = "help"
    if name in ("-v", "--version"):
        name = "version"
    if name not in MODES:
        close = difflib.get_close_matches(name, MODES, n=3)
        raise UsageError(f"unknown mode '{name}'; {'did you mean ' + ', '.join(close) + '?' if close else 'modes: ' + ', '.join(MODES) + '.'}")
    _, allowed, _ = MODES[name]
    try:
        pairs = merge_equals_args(list(rest))
    except SyntaxError as e:
        raise UsageError(str(e)) from e
    typed: dict[str, Any] = {}
    extra: dict[str, str] = {}
    seen: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not value.strip():
            raise UsageError(f"argument '{pair}' is not key=value.")
        if key in seen:
            raise UsageError(f"argument {key}= is given twice ({seen[key]} and {value.strip()}); give it once.")
        seen[key] = value.strip()
        if key in GLOBAL_ARGS:
            try:
                typed[key] = GLOBAL_ARGS[key].parse(value.strip())
            except UsageError as e:
                raise UsageError(f"{key}: {e}") from e
        elif key in allowed:
            typed[key] = _parse_value(key, value.strip())
        elif "*" in allowed and key not in ARGS:
            extra[key] = value.strip()
        else:
            names = [a for a in allowed if a != "*"]
            close = difflib.get_close_matches(key, names, n=3)  # only names this mode takes
            where = f"mode '{name}'" if key in ARGS else "any mode"
            hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(names)}."
            raise UsageError(f"unknown argument '{key}' for {where}; {hint}")
    return name, typed, extra


def _parse_value(key: str, value: str) -> Any:
    try:
        return ARGS[key].parse(value)
    except UsageError as e:
        raise UsageError(f"{key}: {e}") from e


def get(args: dict[str, Any], key: str, required: bool = False) -> Any:
    if key in args:
        return args[key]
    if required:
        raise UsageError(f"missing argument {key}= ({ARGS[key].help}).")
    return ARGS[key].default


def _method_params(extra: dict[str, str]) -> dict[str, Any]:
    from ultralytics.cfg import smart_value

    return {k: smart_value(v) for k, v in extra.items()}


# ----------------------------------------------------------------------------------------------- modes
@mode("extract", ("base", "tuned", "out", "parts", "unmatched", "dtype", "name"), "τ = tuned − base, saved as a safetensors task vector")
def run_extract(args: dict[str, Any]) -> None:
    from .api import TaskVector

    out = get(args, "out", True)
    base, tuned = get(args, "base", True), get(args, "tuned", True)
    from .atomic import check_output
    from .checkpoint import input_file

    check_output(out, [base, tuned, input_file(base), input_file(tuned)])  # before the work; raw names too
    tv = TaskVector.from_models(base, tuned, parts=get(args, "parts"), unmatched=get(args, "unmatched"), name=get(args, "name"))
    from .files import save_vector

    save_vector(tv, out, dtype=get(args, "dtype"), inputs=(base, tuned, tv.meta["base_source"], tv.meta["source"]))
    print(f"saved {out}: {tv!r}")
    if tv.absolute:
        print(f"carried {len(tv.absolute)} tensors as absolute values (no same-shape base counterpart)")


@mode("apply", ("base", "vectors", "scale", "out", "bn", "bn_data", "bn_batches", "classes", "force", "imgsz"), "base + scale·Σ vectors, saved as an Ultralytics checkpoint")
def run_apply(args: dict[str, Any]) -> None:
    _merge_and_save(args, get(args, "vectors", True), "task_arithmetic", {})


@mode("merge", ("base", "models", "method", "scale", "weights", "out", "bn", "bn_data", "bn_batches", "classes", "parts", "unmatched", "seed", "force", "imgsz", "orthogonalize"), "merge fine-tunes/vectors with a method (extra key=value go to the method)", extra=True)
def run_merge(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    _merge_and_save(args, get(args, "models", True), get(args, "method"), _method_params(extra or {}))


def _merge_and_save(args: dict[str, Any], models: list[str], method: str, params: dict[str, Any]) -> None:
    from .api import merge, save

    out = get(args, "out", True)
    base = get(args, "base", True)
    from .atomic import check_output
    from .checkpoint import input_file

    check_output(out, [*(input_file(p) for p in [base, *models]), base, *models])  # resolved and raw names
    merged = merge(
        base,
        models,
        method,
        scale=get(args, "scale"),
        weights=get(args, "weights"),
        bn=get(args, "bn"),
        bn_data=get(args, "bn_data"),
        bn_batches=get(args, "bn_batches"),
        classes=get(args, "classes"),
        parts=get(args, "parts"),
        unmatched=get(args, "unmatched"),
        seed=get(args, "seed"),
        orthogonalize=get(args, "orthogonalize"),
        force=get(args, "force"),
        imgsz=get(args, "imgsz"),
        **params,
    )
    save(merged, out, inputs=[base, *models])
    names = merged.model.names
    print(f"saved {out}: {merged.task} model, {len(names)} classes, method {method}, scale {get(args, 'scale')}, bn {get(args, 'bn')}")


@mode("union-data", ("base", "models", "model", "data", "out", "split"), "dataset views with the class ids of a classes=union merge (labels remapped, images linked): model= the union .pt, or base= and models=")
def run_union_data(args: dict[str, Any]) -> None:
    from .heads import union_classes, union_data

    data, out = get(args, "data", True), get(args, "out", True)
    if "model" in args and len(args["model"]) != 1:
        raise UsageError("union-data takes one union model in model=.")
    classes = args["model"][0] if "model" in args else union_classes(get(args, "base", True), get(args, "models", True))
    splits = [s.strip() for s in str(get(args, "split")).split(",") if s.strip()]
    for path in union_data(classes, data, out, splits=splits):
        print(f"saved {path}")


@mode("info", ("vectors", "model"), "summarize task vectors (norms, sparsity, size, cosine, sign conflicts) or checkpoints")
def run_info(args: dict[str, Any]) -> None:
    from .analysis import pairwise, summarize
    from .api import TaskVector
    from .files import file_info

    if "vectors" not in args and "model" not in args:
        raise UsageError("info needs vectors= (task-vector files) or model= (checkpoints).")
    vectors = []
    for path in get(args, "vectors") or []:
        tv = TaskVector.load(path)
        info, s = file_info(path), summarize(tv)
        vectors.append(tv)
        print(f"{path}: {s['name']} | {info['bytes'] / 1e6:.2f} MB | {s['numel']:,} learned values (+ {s['bn_stats']} BatchNorm running-statistic tensors) | norm {s['norm']:.3f} | near-zero {s['sparsity']:.1%} | storage {info['encodings']} | dtype {info['meta'].get('dtype')}")
        for part, row in s["parts"].items():
            print(f"  {part:<11} norm {row['norm']:9.4f}  values {row['numel']:>10,}  near-zero {row['sparsity']:6.1%}")
        if s["carried"]:
            print(f"  carried     {s['carried']} absolute tensors")
        from .compress import describe

        compressed = describe(info["meta"], info["bytes"])
        if compressed:
            print(compressed)
    for row in pairwise(vectors):
        print(f"{row['a']} vs {row['b']}: cosine {row['cosine']:.4f}, sign conflicts {row['sign_conflicts']:.1%}")
    for path in get(args, "model") or []:
        from .checkpoint import load_model

        m = load_model(path)
        counts: dict[str, int] = {}
        for key, t in m.state.items():
            if t.is_floating_point():
                part = m.layout.part_of(key)
                counts[part] = counts.get(part, 0) + t.numel()
        print(f"{path}: {m.task} | {len(m.names)} classes | fingerprint {m.fingerprint[:16]} | " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


@mode("compress", ("vectors", "out", "keep", "scope", "rank", "energy", "quant", "dtype", "calib", "calib_batches", "calib_mode", "base", "imgsz"), "re-save a task vector compactly: top-k (keep=), low-rank (rank=/energy=), quantized (quant=), float storage (dtype=, fp16 here by default), BatchNorm statistics re-fitted on images (calib=)")
def run_compress(args: dict[str, Any]) -> None:
    from .calib import calibrator
    from .compress import compress_file

    vectors, out = get(args, "vectors", True), get(args, "out", True)
    if len(vectors) != 1:
        raise UsageError(f"compress takes one vector file, got {len(vectors)}; run it once per file.")
    options = {k: args[k] for k in ("keep", "scope", "rank", "energy", "quant") if k in args}
    calib = {"calib_batches": get(args, "calib_batches"), "calib_mode": get(args, "calib_mode"), "base": args.get("base"), "calib_imgsz": args.get("imgsz")}
    if "calib" not in args and any(k in args for k in ("calib_batches", "calib_mode", "base", "imgsz")):
        raise UsageError("calib_batches=, calib_mode=, base= and imgsz= only apply to compress with calib= (dataset yamls).")
    restat = calibrator(args["calib"], **calib) if "calib" in args else None
    path, c = compress_file(vectors[0], out, dtype=args.get("dtype", "fp16"), restat=restat, **options)
    size = path.stat().st_size
    print(f"saved {path}: {c['label']} | {size / 1e6:.3f} MB = {size / c['dense_fp16_bytes']:.1%} of the dense fp16 vector | relative error {c['relative_error']:.4f}")


@mode("transform", ("data", "preset", "out", "seed"), "write a night/fog/blur/noise copy of a dataset (labels unchanged)")
def run_transform(args: dict[str, Any]) -> None:
    from .transforms import transform_dataset

    data = get(args, "data", True)
    if len(data) != 1:
        raise UsageError("transform takes one dataset yaml in data=.")
    result = transform_dataset(data[0], get(args, "preset"), get(args, "out", True), seed=get(args, "seed"))
    print(f"saved {result}")


@mode("convert", ("model", "out", "dtype"), "a trusted .pt checkpoint to a pickle-free .safetensors model (fp16 unless dtype=), or back to .pt")
def run_convert(args: dict[str, Any]) -> None:
    from .convert import to_checkpoint, to_safetensors

    models, out = get(args, "model", True), get(args, "out", True)
    if len(models) != 1:
        raise UsageError("convert takes one model in model=.")
    kinds = (Path(models[0]).suffix.lower(), Path(out).suffix.lower())
    if kinds not in ((".pt", ".safetensors"), (".safetensors", ".pt")):
        raise UsageError(f"convert turns a .pt into a .safetensors model or back; got {kinds[0] or 'no suffix'} to {kinds[1] or 'no suffix'}.")
    if str(out).lower().endswith(".safetensors"):
        to_safetensors(models[0], out, dtype=args.get("dtype", "fp16"), inputs=models)
    else:
        to_checkpoint(models[0], out)
    print(f"saved {out} (converted from {models[0]})")


@mode("demo", ("base", "tuned", "day", "night", "scales", "imgsz", "batch", "device", "out"), "the day/night story end to end: extract τ(night), sweep α on day and night, save the best merge")
def run_demo(args: dict[str, Any]) -> None:
    from .demo import run_demo as demo

    demo(get(args, "base"), get(args, "tuned"), get(args, "day"), get(args, "night"), scales=args.get("scales", "0:1:0.1"), imgsz=args.get("imgsz", 320), batch=get(args, "batch"), device=get(args, "device"), out=get(args, "out"))


_EVAL_ARGS = ("data", "reference", "metric", "objective", "imgsz", "batch", "device", "half", "out", "save", "verbose")
_MERGE_ARGS = ("method", "bn", "bn_data", "bn_batches", "classes", "orthogonalize", "parts", "unmatched", "seed", "force")


@mode("sweep", ("base", "vectors", "scales", *_EVAL_ARGS, *_MERGE_ARGS), "validate base + merge(vectors) over a grid of scales; table, best point, plot, resumable out=", extra=True)
def run_sweep(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    from .sweep import sweep

    _scored_run(args, "vectors", lambda base, items, kw: sweep(base, items, scales=get(args, "scales"), **kw, **_merge_kw(args, extra)))


@mode("search", ("base", "vectors", "space", "bounds", "budget", "strategy", "start", "backend", "address", "workers", *_EVAL_ARGS, *_MERGE_ARGS), "search per-vector/per-part scales maximizing the objective (coordinate or random; local or ray)", extra=True)
def run_search(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    from .search import search

    options = {k: get(args, k) for k in ("space", "bounds", "budget", "strategy", "start", "backend", "address", "workers")}
    _scored_run(args, "vectors", lambda base, items, kw: search(base, items, **options, **kw, **_merge_kw(args, extra)))


@mode("soup", ("base", "models", "bn", "bn_data", "bn_batches", "force", *_EVAL_ARGS), "greedy soup: add fine-tunes, best first, while the validation objective does not drop")
def run_soup(args: dict[str, Any]) -> None:
    from .search import greedy_soup

    keep = ("bn", "bn_data", "bn_batches", "force")
    _scored_run(args, "models", lambda base, items, kw: greedy_soup(base, items, **kw, **{k: get(args, k) for k in keep}))


def _merge_kw(args: dict[str, Any], extra: dict[str, str] | None) -> dict[str, Any]:
    return {k: get(args, k) for k in _MERGE_ARGS} | {"params": _method_params(extra or {})}


def _scored_run(args: dict[str, Any], items_key: str, run: Callable[[str, list[str], dict[str, Any]], Any]) -> None:
    """Shared by sweep/search/soup: check save=, run, print the table and the best point, save the best model."""
    from .api import save
    from .atomic import check_output
    from .checkpoint import input_file

    base, items = get(args, "base", True), get(args, items_key, True)
    target = get(args, "save")
    if target:
        if get(args, "out") and Path(target).resolve().parent == Path(get(args, "out")).resolve():
            from .sweep import prepare_out

            prepare_out(get(args, "out"), "sweep")  # save= inside out=: the folder is made now
        check_output(target, [input_file(p) for p in [base, *items]])
    kw = {k: get(args, k) for k in ("data", "reference", "metric", "objective", "imgsz", "batch", "device", "half", "out", "verbose")}
    kw["data"] = get(args, "data", True)
    kw["reference"] = kw["reference"] if kw["reference"] is None or len(kw["reference"]) > 1 else kw["reference"][0]
    result = run(base, items, kw)
    print(result.table())
    print("files: " + ", ".join(str(p) for p in result.files.values()))
    if target:
        save(result.best_model(), target, inputs=[base, *items])
        print(f"saved {target}: the best merge ({result.best_text()})")


@mode("val", ("model", "data", "imgsz", "batch", "device", "half", "conf", "iou", "split", "coco", "out", "verbose"), "validate models on datasets (validators and batches built once); table, CSV/JSON out=")
def run_val(args: dict[str, Any]) -> None:
    from .atomic import check_output
    from .checkpoint import input_file
    from .evaluation import evaluate

    models, data, out = get(args, "model", True), get(args, "data", True), get(args, "out")
    if out is not None:
        if Path(out).suffix.lower() not in (".csv", ".json"):
            raise UsageError(f"out={out}: val writes a .csv or .json table.")
        check_output(out, [*(input_file(m) for m in models), *data])
    options = {k: get(args, k) for k in ("imgsz", "batch", "device", "half", "conf", "iou", "split", "coco")}
    results = evaluate(models, data, **options, progress=get(args, "verbose"))
    print(results.table())
    if out is not None:
        (results.to_json if Path(out).suffix.lower() == ".json" else results.to_csv)(out)
        print(f"saved {out}")


@mode("coco-export", ("data", "split", "out"), "write a COCO instances json (boxes, polygons) of a YOLO-layout dataset split")
def run_coco_export(args: dict[str, Any]) -> None:
    from .coco import export_coco

    data, out = get(args, "data", True), get(args, "out", True)
    if len(data) != 1:
        raise UsageError(f"coco-export takes one dataset yaml, got {len(data)}.")
    coco = export_coco(data[0], get(args, "split"), out)
    print(f"saved {out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, {len(coco['categories'])} categories")


@mode("help", (), "show this help")
def run_help(args: dict[str, Any]) -> None:
    from .methods import get_method, method_names

    print("usage: yolo-taskvec MODE key=value ...\n\nmodes:")
    width = max(map(len, MODES))
    for name, (_, allowed, text) in MODES.items():
        print(f"  {name:<{width}}  {text}")
    print("\narguments:")
    width = max(map(len, ARGS))
    for key, arg in ARGS.items():
        default = "" if arg.default is None or "default" in arg.help else f" (default {arg.default})"
        print(f"  {key:<{width}}  {arg.help}{default}")
    print("\nmerge methods:")
    width = max(map(len, method_names()))
    for name in method_names():
        m = get_method(name)
        params = ", ".join(f"{p.name}={p.default}" for p in m.params)
        print(f"  {name:<{width}}  {m.doc}{' [' + params + ']' if params else ''}  ({m.paper})")
    print("\nexample: yolo-taskvec apply base=yolo26n-base80.pt vectors=night.safetensors scale=0.5 out=merged.pt")


@mode("version", (), "print versions")
def run_version(args: dict[str, Any]) -> None:
    import torch
    import ultralytics

    from . import __version__

    print(f"yolo-taskvec {__version__} (ultralytics {ultralytics.__version__}, torch {torch.__version__})")


# ----------------------------------------------------------------------------------------------- entry
class Terminated(BaseException):
    """SIGTERM during a command: unwinds like Ctrl-C, so every temporary output is removed on the way out."""


@contextlib.contextmanager
def _run_context(trust: bool | None) -> Iterator[None]:
    """For one command: ``trust=`` as ``YOLO_TASKVEC_TRUST``, and SIGTERM raising ``Terminated`` (main thread)."""
    from .checkpoint import TRUST_ENV

    saved_env = os.environ.get(TRUST_ENV)
    if trust is not None:
        os.environ[TRUST_ENV] = "1" if trust else "0"
    handler = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum: int, frame: Any) -> None:
            raise Terminated

        handler = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
        if trust is not None:
            os.environ.pop(TRUST_ENV, None) if saved_env is None else os.environ.__setitem__(TRUST_ENV, saved_env)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0, 2 for bad input, 130/143 when interrupted/terminated)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        name, args, extra = parse(argv)
        fn = MODES[name][0]
        with _run_context(args.pop("trust", None)):
            fn(args, extra) if "*" in MODES[name][1] else fn(args)
    except TaskVecError as e:
        print(f"yolo-taskvec: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("yolo-taskvec: interrupted; nothing was saved by the step that was running", file=sys.stderr)
        return 130
    except Terminated:
        print("yolo-taskvec: terminated; nothing was saved by the step that was running", file=sys.stderr)
        return 143
    return 0


def entrypoint() -> None:
    """Console script."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
