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


def _str(value: str) -> str:
    return str(value)


@dataclass(frozen=True)
class Arg:
    default: Any
    parse: Callable[[str], Any]
    help: str


ARGS: dict[str, Arg] = {
    # recipe: validated by yolo_taskvec.recipe.Recipe (raw strings go through, the recipe parses and checks them)
    "cfg": Arg(None, _str, "a recipe YAML file (yolo-taskvec copy-cfg writes a template); other keys override it"),
    "base": Arg(None, _str, "base checkpoint (.pt), e.g. yolo26n-base80.pt"),
    "models": Arg(None, _str, "comma-separated fine-tunes (.pt) and/or task vectors (.safetensors)"),
    "vectors": Arg(None, _str, "comma-separated task-vector files (.safetensors) (or fine-tunes, as models=)"),
    "weights": Arg(None, _str, "per-input weights, comma-separated"),
    "method": Arg("task_arithmetic", _str, "merge method (yolo-taskvec help shows them); its parameters are key=value too"),
    "scale": Arg(1.0, _str, "float, or per part: backbone=0.3,neck=0.5,head=1 ('*' for the rest)"),
    "parts": Arg(None, _str, "parts and key globs: backbone,neck,head,head.box,head.cls,head.mask,'model.23.*'"),
    "bn": Arg("merge", _str, "BatchNorm running statistics: merge, mixture, geometric, base, recalibrate"),
    "bn_data": Arg(None, _str, "dataset yamls whose train images recalibrate BatchNorm (bn=recalibrate)"),
    "bn_batches": Arg(16, _str, "batches used by bn=recalibrate"),
    "classes": Arg("error", _str, "when class sets differ: error, base or union (NOT yolo's class filter)"),
    "duplicates": Arg("mean", _str, "classes=union: a class in several inputs takes the mean or the first logit"),
    "unmatched": Arg("error", _str, "tensors with no same-shape base counterpart: error or carry"),
    "orthogonalize": Arg(False, _str, "remove from each vector its projection on the others before merging"),
    "seed": Arg(0, _str, "seed of random methods (dare, ...) and of the selection split"),
    "device": Arg(None, _str, "device for merging and validation: cpu, 0, cuda:1, mps (default: Ultralytics' choice for val, CPU merges)"),
    "imgsz": Arg(None, _str, "image size for validation and recalibration (default: the base's training size, as YOLO val does)"),
    "force": Arg(False, _str, "apply vectors to a base with another fingerprint"),
    "share": Arg(None, _str, "classes=union: layers 0..share-1 shared, the rest each model's own, one Detect with every model's levels (0: exact branches)"),
    "repair": Arg(0, _str, "classes=union: epochs of repair on unlabeled images (pseudo-labels from the merged models themselves)"),
    "repair_images": Arg(None, _str, "repair: comma-separated image folders, image files or dataset yamls (train images; labels unused)"),
    "repair_conf": Arg(0.25, _str, "repair: confidence threshold of the pseudo-labels"),
    "repair_mode": Arg("pseudo", _str, "repair: pseudo (pseudo-labels) or distill (pseudo-labels plus the models' logits and boxes)"),
    # scoring: validated by yolo_taskvec.runs.Scoring
    "data": Arg(None, _str, "dataset yaml(s), comma-separated, e.g. fruit80.yaml,fruit80-night.yaml"),
    "select": Arg(None, _str, "selection split for sweep/search/soup: train:0.2 (seeded 20% of each train set) or one yaml per dataset"),
    "reference": Arg(None, _str, "reference model(s) normalizing each dataset's mAP: one for all, or one per dataset in data= order ('base' = the base)"),
    "metric": Arg("map50_95", _str, "metric of the objective: map50_95, map50, mask_map50_95, mask_map50"),
    "objective": Arg("mean", _str, "reduce the normalized metrics: mean or min"),
    "batch": Arg(16, _str, "validation batch size"),
    "half": Arg(None, _str, "fp16 validation (default: on CUDA only)"),
    "split": Arg("val", _str, "dataset split to validate or export: val, test, train"),
    "conf": Arg(None, _str, "validation confidence threshold (default: Ultralytics' 0.001)"),
    "iou": Arg(0.7, _str, "validation NMS IoU threshold"),
    # runs and outputs
    "out": Arg(None, _str, "output path (.pt for models, .safetensors for vectors; a folder for sweep/search/soup/demo runs)"),
    "project": Arg(None, _str, "run folder parent, as yolo's project= (default runs_dir/taskvec)"),
    "name": Arg(None, _str, "run folder name, as yolo's name= (default the mode; incremented unless exist_ok)"),
    "exist_ok": Arg(False, _bool, "replace an existing output file / reuse an existing run folder (as yolo's exist_ok)"),
    "best": Arg(None, _str, "also save the chosen merge as this .pt checkpoint (with its recipe and model card)"),
    "verbose": Arg(True, _bool, "progress bars and tables (false for scripts)"),
    "scales": Arg("0:1:0.1", _str, "sweep grid: 0:1:0.1, 0,0.5,1, or per key: backbone=0:1:0.5;head=0,1;density=0.1,0.2"),
    "space": Arg("auto", _str, "search space: auto, scale, vectors, parts, vectors+parts, keys (backbone,neck) or bounds (backbone=0:1;head=0:0.5)"),
    "bounds": Arg("0:1", _str, "search bounds low:high for keys without their own"),
    "budget": Arg(20, _int, "search: most evaluations (finished ones in the run folder count)"),
    "strategy": Arg("coordinate", _str, "search strategy: coordinate, random, tpe or cmaes (tpe/cmaes: pip install 'yolo-taskvec[optuna]')"),
    "start": Arg(None, _float, "search: start value of every key (default: the middle of its bounds)"),
    "backend": Arg("local", _str, "where sweep/search/soup candidates are scored: local (here) or ray (a Ray cluster; pip install 'yolo-taskvec[ray]')"),
    "address": Arg(None, _str, "backend=ray: the cluster (auto, host:port or ray://host:port; default: a private Ray instance on this machine)"),
    "workers": Arg(None, _int, "backend=ray: trials run in parallel (default: as many as the cluster fits; NOT yolo's dataloader workers)"),
    "cpus_per_trial": Arg(None, _str, "backend=ray: CPUs each trial asks Ray for, also its inference threads (default 1)"),
    "gpus_per_trial": Arg(None, _str, "backend=ray: GPUs each trial asks Ray for (e.g. 1 or 0.5); a trial uses the GPU Ray assigns it (default 0)"),
    # single-purpose modes
    "tuned": Arg(None, _str, "fine-tuned checkpoint (.pt)"),
    "model": Arg(None, _list, "comma-separated checkpoints to inspect or validate"),
    "label": Arg(None, _str, "extract: the name stored in the task vector (default: the fine-tune's file name)"),
    "dtype": Arg("fp32", _str, "task-vector storage dtype: fp32, fp16, bf16 (compress: int8 = quant=int8 with fp16)"),
    "keep": Arg(None, _float, "compress: keep this fraction of the largest delta magnitudes (indices + values), e.g. 0.1"),
    "scope": Arg("tensor", _str, "compress: where keep= ranks magnitudes: tensor or global"),
    "rank": Arg(None, _int, "compress: low-rank factors of conv/linear deltas, at most this rank"),
    "energy": Arg(None, _float, "compress: low-rank factors keeping this fraction of the squared singular values, e.g. 0.9"),
    "quant": Arg(None, _str, "compress: quantize stored values with per-channel scales: int8, int4, int3, int2, int1"),
    "calib": Arg(None, _list, "compress: dataset yamls whose train images re-fit the BatchNorm statistics to the compressed weights (needs the base)"),
    "calib_batches": Arg(16, _int, "compress: batches of 16 images used by calib="),
    "calib_mode": Arg("shift", _str, "compress: calib= statistics: shift (move the fine-tune's by the approximation's effect) or replace"),
    "preset": Arg("night", _str, "image transform: night, fog, blur, noise"),
    "day": Arg(None, _str, "demo: day dataset yaml (default fruit80.yaml from datasets_dir)"),
    "night": Arg(None, _str, "demo: night dataset yaml (default fruit80-night.yaml from datasets_dir)"),
    "coco": Arg(False, _bool, "also score with pycocotools (COCO AP, AP50, AP75, APs/m/l)"),
    "host": Arg("127.0.0.1", _str, "studio: address to serve on; 127.0.0.1 is this machine only"),
    "port": Arg(None, _int, "studio: port to serve on (default: the first free one from 7860)"),
}

# keys shared with `yolo` that mean something else here (README: "Keys and yolo")
YOLO_CLASHES = {
    "scale": "yolo: the training augmentation's image-scale gain; here: the task-vector scale (the merge's central number)",
    "classes": "yolo: keep only these class ids in predict/val; here: the policy for fine-tunes with other class sets",
    "workers": "yolo: dataloader worker processes; here: trials run in parallel",
    "seed": "yolo: the training seed; here: the seed of random merge methods and of the selection split",
}
SCORING_KEYS = ("data", "select", "reference", "metric", "objective", "batch", "half", "conf", "iou", "split")
RUN_KEYS = ("out", "project", "name", "exist_ok", "best", "verbose")

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


# ----------------------------------------------------------------------------------------------- recipes from arguments
_RECIPE_FIELDS = ("weights", "method", "scale", "parts", "bn", "bn_data", "bn_batches", "classes", "duplicates", "unmatched", "orthogonalize", "seed", "device", "imgsz",
                  "force", "share", "repair", "repair_images", "repair_conf", "repair_mode")  # Recipe's fields as CLI keys (one list for every mode)
_RAW_RECIPE = ("base", "models", "vectors", *_RECIPE_FIELDS)
_RAW_SCORING = ("data", "select", "reference", "metric", "objective", "batch", "half", "conf", "iou", "split", "device", "imgsz")


def _recipe(args: dict[str, Any], extra: dict[str, str] | None = None, *, inputs_key: str = "models", method: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(Recipe, run sections)`` from ``cfg=`` (if given) overridden by the command line; validated, nothing loaded."""
    from .recipe import Recipe, recipe_sections

    fields, sections = ({}, {})
    if "cfg" in args:
        fields, sections = recipe_sections(args["cfg"])
    given = {k: args[k] for k in _RAW_RECIPE if k in args and k not in ("data",)}
    for alias in ("models", "vectors"):
        if alias in given:
            given["inputs"] = given.pop(alias)
    if method is not None:
        given["method"] = method
    if "base" not in given and "base" not in fields:
        raise UsageError(f"missing argument base= ({ARGS['base'].help}), or cfg= a recipe file that names it.")
    if "inputs" not in given and not any(k in fields for k in ("inputs", "models", "vectors")):
        raise UsageError(f"missing argument {inputs_key}= ({ARGS[inputs_key].help}), or cfg= a recipe file that lists them.")
    from .recipe import _overridden

    return Recipe.build(**_overridden(fields, {**given, **(extra or {})})), sections


def _scoring(args: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """Scoring fields: the recipe file's ``eval:`` section overridden by the command line."""
    fields = dict(sections.get("eval") or {})
    fields.update({k: args[k] for k in _RAW_SCORING if k in args})
    if "data" not in fields:
        raise UsageError(f"missing argument data= ({ARGS['data'].help}), or an eval: data: list in the recipe file.")
    return fields


def _inputs_of(args: dict[str, Any]) -> list[str]:
    """Raw input paths named on the command line (and the recipe file), for output checks."""
    items = [args.get("cfg"), args.get("base"), *(str(args.get(k, "")).split(",") for k in ("models", "vectors"))]
    flat = []
    for item in items:
        flat += item if isinstance(item, list) else [item]
    return [i for i in flat if i]


def _check_out(path: Any, args: dict[str, Any], inputs: list[Any]) -> None:
    """An output file: never an input, never inside a missing or read-only folder; replaced only with exist_ok."""
    from .atomic import check_output
    from .checkpoint import input_file

    check_output(path, [*inputs, *(input_file(p) for p in inputs)], exist_ok=args.get("exist_ok", False))


def _companions(out: Any) -> list[Path]:
    p = Path(out)
    return [p.with_name(p.stem + ".recipe.yaml"), p.with_name(p.stem + ".md")]


# ----------------------------------------------------------------------------------------------- modes
@mode("extract", ("base", "tuned", "out", "parts", "unmatched", "dtype", "label", "exist_ok"), "τ = tuned − base, saved as a safetensors task vector")
def run_extract(args: dict[str, Any]) -> None:
    from .api import TaskVector
    from .files import save_vector
    from .recipe import Recipe

    out = get(args, "out", True)
    base, tuned = get(args, "base", True), get(args, "tuned", True)
    Recipe.build(base=base, inputs=[tuned], parts=args.get("parts"), unmatched=get(args, "unmatched"))  # checks before loading
    _check_out(out, args, [base, tuned])
    tv = TaskVector.from_models(base, tuned, parts=[p for p in args["parts"].split(",")] if args.get("parts") else None, unmatched=get(args, "unmatched"), name=get(args, "label"))
    save_vector(tv, out, dtype=get(args, "dtype"), inputs=(base, tuned, tv.meta["base_source"], tv.meta["source"]))
    print(f"saved {out}: {tv!r}")
    if tv.absolute:
        print(f"carried {len(tv.absolute)} tensors as absolute values (no same-shape base counterpart)")


_MERGE_KEYS = ("cfg", "base", *_RECIPE_FIELDS, "out", "exist_ok")


@mode("apply", ("vectors", *[k for k in _MERGE_KEYS if k != "method"]), "base + scale·Σ vectors, saved as an Ultralytics checkpoint (with its recipe and model card)")
def run_apply(args: dict[str, Any]) -> None:
    _merge_and_save(args, None, inputs_key="vectors", method="task_arithmetic")


@mode("merge", ("models", "vectors", *_MERGE_KEYS), "merge fine-tunes/vectors with a method (cfg= a recipe file; extra key=value go to the method)", extra=True)
def run_merge(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    _merge_and_save(args, extra, inputs_key="models")


def _merge_and_save(args: dict[str, Any], extra: dict[str, str] | None, *, inputs_key: str, method: str | None = None) -> None:
    from . import build
    from .api import save

    recipe, _ = _recipe(args, extra, inputs_key=inputs_key, method=method)  # what to merge first, then where to write
    out = get(args, "out", True)
    inputs = [*_inputs_of(args), *(str(i.source) for i in recipe.inputs), str(recipe.base)]
    for path in [out, *_companions(out)]:
        _check_out(path, args, inputs)
    merged = build.merge(recipe)
    save(merged, out, inputs=inputs)
    print(f"saved {out}: {merged.task} model, {len(merged.model.names)} classes, {recipe.describe()}")
    print(f"       {Path(out).with_name(Path(out).stem + '.recipe.yaml')} (re-runs it), {Path(out).with_name(Path(out).stem + '.md')} (model card)")


@mode("copy-cfg", ("out", "exist_ok"), "write a commented recipe template (default ./recipe.yaml), as yolo copy-cfg")
def run_copy_cfg(args: dict[str, Any]) -> None:
    from .atomic import write_text_atomic
    from .recipe import template

    out = args.get("out", "recipe.yaml")
    if Path(out).suffix.lower() not in (".yaml", ".yml"):
        raise UsageError(f"out={out}: a recipe is a .yaml file.")
    _check_out(out, args, [])
    write_text_atomic(out, template())
    print(f"saved {out}: a recipe template; edit it, then: yolo-taskvec merge cfg={out} out=merged.pt")


@mode("union-data", ("base", "models", "model", "data", "out", "split", "exist_ok"), "dataset views with the class ids of a classes=union merge (labels remapped, images linked): model= the union .pt, or base= and models=")
def run_union_data(args: dict[str, Any]) -> None:
    from .classunion import union_classes
    from .heads import union_data

    data, out = get(args, "data", True).split(","), get(args, "out", True)
    if "model" in args and len(args["model"]) != 1:
        raise UsageError("union-data takes one union model in model=.")
    classes = args["model"][0] if "model" in args else union_classes(get(args, "base", True), get(args, "models", True).split(","))
    splits = [s.strip() for s in str(get(args, "split")).split(",") if s.strip()]
    for path in union_data(classes, [d.strip() for d in data if d.strip()], out, splits=splits, exist_ok=get(args, "exist_ok")):
        print(f"saved {path}")


@mode("info", ("vectors", "model"), "summarize task vectors (norms, sparsity, size, cosine, sign conflicts) or checkpoints (parts, and how a merge was made)")
def run_info(args: dict[str, Any]) -> None:
    from .analysis import pairwise, summarize
    from .api import TaskVector
    from .files import file_info

    if "vectors" not in args and "model" not in args:
        raise UsageError("info needs vectors= (task-vector files) or model= (checkpoints).")
    vectors = []
    for path in [v for v in str(args.get("vectors") or "").split(",") if v.strip()]:
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
        from .provenance import describe_provenance

        m = load_model(path)
        counts: dict[str, int] = {}
        for key, t in m.state.items():
            if t.is_floating_point():
                part = m.layout.part_of(key)
                counts[part] = counts.get(part, 0) + t.numel()
        print(f"{path}: {m.task} | {len(m.names)} classes | fingerprint {m.fingerprint[:16]} | " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        provenance = m.ckpt.get("taskvec")
        if provenance:
            print(describe_provenance(provenance))


@mode("compress", ("vectors", "out", "keep", "scope", "rank", "energy", "quant", "dtype", "calib", "calib_batches", "calib_mode", "base", "imgsz", "exist_ok"), "re-save a task vector compactly: top-k (keep=), low-rank (rank=/energy=), quantized (quant=), float storage (dtype=, fp16 here by default), BatchNorm statistics re-fitted on images (calib=)")
def run_compress(args: dict[str, Any]) -> None:
    from .calib import calibrator
    from .compress import compress_file
    from .recipe import parse_int

    vectors, out = [v for v in get(args, "vectors", True).split(",") if v.strip()], get(args, "out", True)
    if len(vectors) != 1:
        raise UsageError(f"compress takes one vector file, got {len(vectors)}; run it once per file.")
    _check_out(out, args, vectors)
    options = {k: args[k] for k in ("keep", "scope", "rank", "energy", "quant") if k in args}
    calib = {"calib_batches": get(args, "calib_batches"), "calib_mode": get(args, "calib_mode"), "base": args.get("base"), "calib_imgsz": parse_int(args["imgsz"], "imgsz", 32) if "imgsz" in args else None}
    if "calib" not in args and any(k in args for k in ("calib_batches", "calib_mode", "base", "imgsz")):
        raise UsageError("calib_batches=, calib_mode=, base= and imgsz= only apply to compress with calib= (dataset yamls).")
    restat = calibrator(args["calib"], **calib) if "calib" in args else None
    path, c = compress_file(vectors[0], out, dtype=args.get("dtype", "fp16"), restat=restat, **options)
    size = path.stat().st_size
    print(f"saved {path}: {c['label']} | {size / 1e6:.3f} MB = {size / c['dense_fp16_bytes']:.1%} of the dense fp16 vector | relative error {c['relative_error']:.4f}")


@mode("transform", ("data", "preset", "out", "seed", "exist_ok"), "write a night/fog/blur/noise copy of a dataset (labels unchanged)")
def run_transform(args: dict[str, Any]) -> None:
    from .recipe import parse_int
    from .transforms import transform_dataset

    data = [d for d in get(args, "data", True).split(",") if d.strip()]
    if len(data) != 1:
        raise UsageError("transform takes one dataset yaml in data=.")
    result = transform_dataset(data[0], get(args, "preset"), get(args, "out", True), seed=parse_int(get(args, "seed"), "seed", 0), exist_ok=get(args, "exist_ok"))
    print(f"saved {result}")


@mode("convert", ("model", "out", "dtype", "exist_ok"), "a trusted .pt checkpoint to a pickle-free .safetensors model (fp16 unless dtype=), or back to .pt; merge provenance is kept")
def run_convert(args: dict[str, Any]) -> None:
    from .convert import to_checkpoint, to_safetensors

    models, out = get(args, "model", True), get(args, "out", True)
    if len(models) != 1:
        raise UsageError("convert takes one model in model=.")
    kinds = (Path(models[0]).suffix.lower(), Path(out).suffix.lower())
    if kinds not in ((".pt", ".safetensors"), (".safetensors", ".pt")):
        raise UsageError(f"convert turns a .pt into a .safetensors model or back; got {kinds[0] or 'no suffix'} to {kinds[1] or 'no suffix'}.")
    _check_out(out, args, models)
    if str(out).lower().endswith(".safetensors"):
        to_safetensors(models[0], out, dtype=args.get("dtype", "fp16"), inputs=models)
    else:
        to_checkpoint(models[0], out)
    print(f"saved {out} (converted from {models[0]})")


@mode("demo", ("base", "tuned", "day", "night", "scales", "imgsz", "batch", "device", "out", "project", "name", "exist_ok", "select"), "the day/night story end to end: extract τ(night), sweep α on day and night (chosen on a train split), save the best merge")
def run_demo(args: dict[str, Any]) -> None:
    from .demo import run_demo as demo
    from .recipe import parse_int

    demo(get(args, "base"), get(args, "tuned"), get(args, "day"), get(args, "night"), scales=args.get("scales", "0:1:0.1"), imgsz=parse_int(args.get("imgsz", 320), "imgsz", 32),
         batch=parse_int(get(args, "batch"), "batch", 1), device=get(args, "device"), out=get(args, "out"), project=get(args, "project"), name=get(args, "name"),
         exist_ok=get(args, "exist_ok"), select=args.get("select", "train:0.2"))


_RUN_ARGS = ("cfg", "base", *_RAW_SCORING[:-2], *_RECIPE_FIELDS, "out", "project", "name", "exist_ok", "best", "verbose")


_BACKEND_OPTIONS = ("backend", "address", "workers", "cpus_per_trial", "gpus_per_trial")


@mode("sweep", ("vectors", "models", "scales", *_BACKEND_OPTIONS, *_RUN_ARGS), "validate base + merge(vectors) over a grid of recipe fields; table, chosen point, plot, resumable run folder", extra=True)
def run_sweep(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    from .sweep import sweep

    def run(recipe: Any, scoring: dict[str, Any], sections: dict[str, Any], folder: dict[str, Any]) -> Any:
        scales = args.get("scales", (sections.get("grid") or {}) or "0:1:0.1")
        backend = {k: args[k] for k in _BACKEND_OPTIONS if k in args}
        return sweep(recipe, None, scales=scales, verbose=get(args, "verbose"), **backend, **folder, **scoring)

    _scored_run(args, extra, "vectors", run)


_SEARCH_OPTIONS = ("space", "bounds", "budget", "strategy", "start", *_BACKEND_OPTIONS)


@mode("search", ("vectors", "models", *_SEARCH_OPTIONS, *_RUN_ARGS), "search per-input/per-part scales (or method parameters) maximizing the objective (coordinate, random, tpe, cmaes)", extra=True)
def run_search(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    from .search import search

    def run(recipe: Any, scoring: dict[str, Any], sections: dict[str, Any], folder: dict[str, Any]) -> Any:
        options = {k: v for k, v in (sections.get("search") or {}).items()}
        unknown = [k for k in options if k not in _SEARCH_OPTIONS]
        if unknown:
            raise UsageError(f"unknown key '{unknown[0]}' in the recipe's search: section; valid: {', '.join(_SEARCH_OPTIONS)}.")
        options.update({k: args[k] for k in _SEARCH_OPTIONS if k in args})
        return search(recipe, None, verbose=get(args, "verbose"), **options, **folder, **scoring)

    _scored_run(args, extra, "vectors", run)


@mode("soup", ("models", *_BACKEND_OPTIONS, *[k for k in _RUN_ARGS if k not in ("method", "weights", "scale")]), "greedy soup: add fine-tunes, best first, while the (selection) objective does not drop")
def run_soup(args: dict[str, Any]) -> None:
    from .soup import greedy_soup

    def run(recipe: Any, scoring: dict[str, Any], sections: dict[str, Any], folder: dict[str, Any]) -> Any:
        backend = {k: args[k] for k in _BACKEND_OPTIONS if k in args}
        return greedy_soup(recipe, None, verbose=get(args, "verbose"), **backend, **folder, **scoring)

    _scored_run(args, None, "models", run, method="average")


def _scored_run(args: dict[str, Any], extra: dict[str, str] | None, inputs_key: str, run: Callable[..., Any], method: str | None = None) -> None:
    """Shared by sweep/search/soup: validate everything, run, print the table and the choice, save the best model."""
    from .api import save
    from .backends import BackendOptions
    from .recipe import parse_bool

    BackendOptions.build(**{k: args[k] for k in _BACKEND_OPTIONS if k in args}).check_device(args.get("device"))  # before the recipe checks devices here
    recipe, sections = _recipe(args, extra, inputs_key=inputs_key, method=method)
    scoring = _scoring(args, sections)
    folder = {k: args[k] for k in ("out", "project", "name") if k in args}
    folder["exist_ok"] = get(args, "exist_ok")
    if "out" in folder:
        folder["exist_ok"] = True  # out= names one folder: it is resumed when it holds the same run
    target = get(args, "best")
    inputs = [*_inputs_of(args), *(str(i.source) for i in recipe.inputs), str(recipe.base)]
    if target:
        if Path(target).suffix.lower() != ".pt":
            raise UsageError(f"best={target}: the chosen merge is saved as a .pt checkpoint.")
        inside = "out" in args and Path(target).resolve().parent == Path(args["out"]).resolve()
        for path in [target, *_companions(target)]:
            if not inside:
                _check_out(path, args, inputs)
    parse_bool(get(args, "verbose"), "verbose")
    result = run(recipe, scoring, sections, folder)
    print(result.table())
    print("files: " + ", ".join(str(p) for p in result.files.values()))
    if target:
        save(result.best_model(), target, inputs=inputs)
        print(f"saved {target}: the chosen merge ({result.best_text()}), with {Path(target).stem}.recipe.yaml and {Path(target).stem}.md")


@mode("val", ("model", "data", "imgsz", "batch", "device", "half", "conf", "iou", "split", "coco", "out", "exist_ok", "verbose"), "validate models on datasets (validators and batches built once); table, CSV/JSON out=")
def run_val(args: dict[str, Any]) -> None:
    from .evaluation import evaluate
    from .runs import Scoring

    models, out = get(args, "model", True), get(args, "out")
    if out is not None:
        if Path(out).suffix.lower() not in (".csv", ".json"):
            raise UsageError(f"out={out}: val writes a .csv or .json table.")
        _check_out(out, args, [*models, *get(args, "data", True).split(",")])
    scoring = Scoring.build(get(args, "data", True), **{k: args[k] for k in ("imgsz", "batch", "device", "half", "conf", "iou", "split") if k in args})
    options = {"imgsz": scoring.imgsz, "batch": scoring.batch, "device": scoring.device, "half": scoring.half, "conf": scoring.conf, "iou": scoring.iou, "split": scoring.split, "coco": get(args, "coco")}
    results = evaluate(models, list(scoring.data), **options, progress=get(args, "verbose"))
    print(results.table())
    if out is not None:
        (results.to_json if Path(out).suffix.lower() == ".json" else results.to_csv)(out)
        print(f"saved {out}")


@mode("coco-export", ("data", "split", "out", "exist_ok"), "write a COCO instances json (boxes, polygons) of a YOLO-layout dataset split")
def run_coco_export(args: dict[str, Any]) -> None:
    from .coco import export_coco

    data, out = [d for d in get(args, "data", True).split(",") if d.strip()], get(args, "out", True)
    if len(data) != 1:
        raise UsageError(f"coco-export takes one dataset yaml, got {len(data)}.")
    coco = export_coco(data[0], get(args, "split"), out, exist_ok=get(args, "exist_ok"))
    print(f"saved {out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, {len(coco['categories'])} categories")


@mode("studio", ("cfg", "base", "models", "vectors", "weights", "method", "scale", "parts", "bn", "classes", "unmatched", "orthogonalize", "seed", "device", "imgsz", "force", "data", "batch", "out", "project", "name", "exist_ok", "host", "port"),
      "an interactive merge studio in the browser: a slider per input, live predictions, score, save (pip install 'yolo-taskvec[studio]')", extra=True)
def run_studio(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    from .recipe import parse_int
    from .studio import launch

    recipe, sections = _recipe(args, extra, inputs_key="models")
    scoring = _scoring(args, sections)
    data = scoring["data"].split(",") if isinstance(scoring["data"], str) else list(scoring["data"])
    run = {k: args[k] for k in ("out", "project", "name", "exist_ok") if k in args}
    launch(recipe, data=[d.strip() for d in data if d.strip()], batch=parse_int(scoring.get("batch", 16), "batch", 1), host=get(args, "host"), port=get(args, "port"), **run)


@mode("help", (), "show this help")
def run_help(args: dict[str, Any]) -> None:
    from .methods import get_method, method_names

    print("usage: yolo-taskvec MODE key=value ...   (or MODE cfg=recipe.yaml key=value ...)\n\nmodes:")
    width = max(map(len, MODES))
    for name, (_, allowed, text) in MODES.items():
        print(f"  {name:<{width}}  {text}")
    print("\narguments:")
    width = max(map(len, ARGS))
    for key, arg in ARGS.items():
        default = "" if arg.default is None or "default" in arg.help else f" (default {arg.default})"
        print(f"  {key:<{width}}  {arg.help}{default}")
    print("\nkeys that `yolo` uses with another meaning:")
    for key, text in YOLO_CLASHES.items():
        print(f"  {key:<{width}}  {text}")
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

    from .version import __version__

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
