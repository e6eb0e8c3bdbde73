"""``yolo-taskvec MODE key=value ...``: a yolo-style command line over the API.

Every argument has one entry in ``ARGS`` (default, type, help); every mode lists the arguments it takes. Unknown
modes and arguments are answered with the closest valid names; bad input prints one line on stderr and exits 2,
with no traceback and no output file left behind.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    try:
        return float(value)
    except ValueError as e:
        raise UsageError(f"'{value}' is not a number.") from e


def _int(value: str) -> int:
    try:
        return int(value)
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
    "dtype": Arg("fp32", _str, "task-vector storage dtype: fp32, fp16, bf16"),
    "scale": Arg(1.0, _scale, "float, or per part like backbone:0.3,neck:0.5,head:1"),
    "weights": Arg(None, _floats, "per-model weights, comma-separated"),
    "method": Arg("task_arithmetic", _str, "merge method (yolo-taskvec help shows them)"),
    "bn": Arg("merge", _str, "BatchNorm policy: merge, geometric, base, recalibrate"),
    "bn_data": Arg(None, _list, "dataset yamls whose train images recalibrate BatchNorm (bn=recalibrate)"),
    "bn_batches": Arg(16, _int, "batches used by bn=recalibrate"),
    "classes": Arg("error", _str, "when class sets differ: error, base or union"),
    "seed": Arg(0, _int, "seed of random methods (dare, ...)"),
    "force": Arg(False, _bool, "apply vectors to a base with another fingerprint"),
    "imgsz": Arg(640, _int, "image size for validation and recalibration"),
}

MODES: dict[str, tuple[Callable[[dict[str, Any]], Any], tuple[str, ...], str]] = {}


def mode(name: str, args: Sequence[str], help: str, *, extra: bool = False) -> Callable:
    """Register a mode taking ``args`` (``extra=True``: other keys go to the merge method as parameters)."""

    def wrap(fn: Callable[[dict[str, Any]], Any]) -> Callable:
        MODES[name] = (fn, tuple(args) + (("*",) if extra else ()), help)
        return fn

    return wrap


# ----------------------------------------------------------------------------------------------- parsing
def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """``(mode, typed args, extra raw args)``; raises UsageError with the closest names on a typo."""
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
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not value.strip():
            raise UsageError(f"argument '{pair}' is not key=value.")
        if key in allowed:
            typed[key] = _parse_value(key, value.strip())
        elif "*" in allowed and key not in ARGS:
            extra[key] = value.strip()
        else:
            names = [a for a in allowed if a != "*"]
            close = difflib.get_close_matches(key, names, n=3) or difflib.get_close_matches(key, ARGS, n=3)
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
    tv = TaskVector.from_models(base, tuned, parts=get(args, "parts"), unmatched=get(args, "unmatched"), name=get(args, "name"))
    from .files import save_vector

    save_vector(tv, out, dtype=get(args, "dtype"), inputs=(tv.meta["base_source"], tv.meta["source"]))
    print(f"saved {out}: {tv!r}")
    if tv.absolute:
        print(f"carried {len(tv.absolute)} tensors as absolute values (no same-shape base counterpart)")


@mode("apply", ("base", "vectors", "scale", "out", "bn", "bn_data", "bn_batches", "classes", "force", "imgsz"), "base + scale·Σ vectors, saved as an Ultralytics checkpoint")
def run_apply(args: dict[str, Any]) -> None:
    _merge_and_save(args, get(args, "vectors", True), "task_arithmetic", {})


@mode("merge", ("base", "models", "method", "scale", "weights", "out", "bn", "bn_data", "bn_batches", "classes", "parts", "unmatched", "seed", "force", "imgsz"), "merge fine-tunes/vectors with a method (extra key=value go to the method)", extra=True)
def run_merge(args: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    _merge_and_save(args, get(args, "models", True), get(args, "method"), _method_params(extra or {}))


def _merge_and_save(args: dict[str, Any], models: list[str], method: str, params: dict[str, Any]) -> None:
    from .api import merge, save

    out = get(args, "out", True)
    base = get(args, "base", True)
    from .atomic import check_output
    from .checkpoint import input_file

    check_output(out, [input_file(p) for p in [base, *models]])
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
        force=get(args, "force"),
        imgsz=get(args, "imgsz"),
        **params,
    )
    save(merged, out, inputs=[base, *models])
    names = merged.model.names
    print(f"saved {out}: {merged.task} model, {len(names)} classes, method {method}, scale {get(args, 'scale')}, bn {get(args, 'bn')}")


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
        print(f"{path}: {s['name']} | {info['bytes'] / 1e6:.2f} MB | {s['numel']:,} values | norm {s['norm']:.3f} | sparsity {s['sparsity']:.1%} | storage {info['encodings']} | dtype {info['meta'].get('dtype')}")
        for part, row in s["parts"].items():
            print(f"  {part:<11} norm {row['norm']:9.4f}  values {row['numel']:>10,}  near-zero {row['sparsity']:6.1%}")
        if s["carried"]:
            print(f"  carried     {s['carried']} absolute tensors")
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


@mode("help", (), "show this help")
def run_help(args: dict[str, Any]) -> None:
    from .methods import get_method, method_names

    print("usage: yolo-taskvec MODE key=value ...\n\nmodes:")
    for name, (_, allowed, text) in MODES.items():
        print(f"  {name:<9} {text}")
    print("\narguments:")
    for key, arg in ARGS.items():
        print(f"  {key:<11} {arg.help} (default {arg.default})")
    print("\nmerge methods:")
    for name in method_names():
        m = get_method(name)
        params = ", ".join(f"{p.name}={p.default}" for p in m.params)
        print(f"  {name:<16} {m.doc}{' [' + params + ']' if params else ''}  ({m.paper})")
    print("\nexample: yolo-taskvec apply base=yolo26n-base80.pt vectors=night.safetensors scale=0.5 out=merged.pt")


@mode("version", (), "print versions")
def run_version(args: dict[str, Any]) -> None:
    import torch
    import ultralytics

    from . import __version__

    print(f"yolo-taskvec {__version__} (ultralytics {ultralytics.__version__}, torch {torch.__version__})")


# ----------------------------------------------------------------------------------------------- entry
def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0, or 2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        name, args, extra = parse(argv)
        fn = MODES[name][0]
        fn(args, extra) if "*" in MODES[name][1] else fn(args)
    except TaskVecError as e:
        print(f"yolo-taskvec: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("yolo-taskvec: interrupted", file=sys.stderr)
        return 130
    return 0


def entrypoint() -> None:
    """Console script."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
