"""Schemas of what untrusted files may say: architecture yamls, class names, vector metadata (pure, no Ultralytics).

A task-vector file or a converted model carries the architecture yaml the model is rebuilt from. Ultralytics' model
builder ``eval``s the yaml's ``activation`` string, looks layer names up in a module namespace, resolves string
arguments against its own local variables, and allocates whatever the numbers say. A yaml read from a file is
therefore checked here before anything is built:

* structure: ``backbone`` and ``head`` lists of ``[from, repeats, module, args]`` layers;
* layer names: identifiers (``Conv``) or ``nn.<Identifier>``; the adapter (``checkpoint.check_model_yaml``) also
  requires them to be in Ultralytics' layer set;
* ``activation``: ``[torch.]nn.<Name>(<number literals>)`` with ``<Name>`` from ``ACTIVATIONS``, parsed with
  ``ast`` and never evaluated;
* string arguments: only the names Ultralytics' own yamls use (``nc``, ``None``, ``nearest``...);
* numbers bounded: classes, channels, repeats, layers, multipliers, argument values.

The same text checks (no control characters, bounded length) apply to names that get printed.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import TaskVecError

MAX_CLASSES = 10_000  # LVIS has 1203, Objects365 365, Open Images 601
MAX_LAYERS = 512  # Ultralytics' largest yamls have under 50
MAX_REPEATS = 64  # largest in Ultralytics' yamls: 18
MAX_ARG = 16_384  # largest number in Ultralytics' yamls: 2048 (channels)
MAX_ARGS = 16
MAX_CHANNELS = 8_192  # scales' max_channels (Ultralytics: at most 2048)
MAX_MULTIPLE = 4.0  # depth/width multipliers (Ultralytics: at most 1.5)
MAX_INPUT_CHANNELS = 64
MAX_TEXT = 256  # names, labels, layer names
MAX_KEYS = 64  # top-level yaml keys
ACTIVATIONS = frozenset(
    {"SiLU", "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Hardsigmoid", "GELU", "Mish", "Tanh", "Sigmoid", "ELU", "SELU", "CELU", "Identity", "Softplus", "PReLU"}
)
ACTIVATION_KEYWORDS = frozenset({"inplace", "negative_slope", "alpha", "approximate", "beta", "threshold", "num_parameters", "init"})
STRING_ARGS = frozenset({"nc", "kpt_shape", "reg_max", "end2end", "None", "True", "False", "nearest", "bilinear", "bicubic", "linear"})
TASKS = ("detect", "segment", "pose", "obb", "classify")
_LAYER_NAME = re.compile(r"(nn\.)?[A-Za-z_][A-Za-z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Error = type[TaskVecError]
_LAYER_CHECKS: list[Callable[[str], bool]] = []  # registered by the adapter (``checkpoint``): Ultralytics' layer set


def register_layer_check(is_layer: Callable[[str], bool]) -> None:
    """Make every yaml check also require layer names for which ``is_layer`` holds (the adapter registers
    Ultralytics' layer set at import, so the core stays free of Ultralytics)."""
    if is_layer not in _LAYER_CHECKS:
        _LAYER_CHECKS.append(is_layer)


# ----------------------------------------------------------------------------------------------- text
def check_text(value: Any, what: str, where: str, error: Error = TaskVecError, *, limit: int = MAX_TEXT) -> str:
    """A printable string of at most ``limit`` characters (no terminal escape sequences)."""
    if not isinstance(value, str):
        raise error(f"{where}: its {what} is a {type(value).__name__}, not a string.")
    if len(value) > limit:
        raise error(f"{where}: its {what} is {len(value):,} characters long (at most {limit}).")
    bad = _CONTROL.search(value)
    if bad:
        raise error(f"{where}: its {what} contains the control character {bad.group()!r}; refused so that nothing it says reaches your terminal.")
    return value


def check_names(names: Any, where: str, error: Error = TaskVecError) -> dict[int, str]:
    """Class names ``{0: "person", ...}``: ids 0..n−1 (ints or digit strings, JSON turns them into strings), at most
    ``MAX_CLASSES``, each a printable string."""
    if not isinstance(names, Mapping):
        raise error(f"{where}: its class names are a {type(names).__name__}, not a mapping of class ids to names.")
    if not names or len(names) > MAX_CLASSES:
        raise error(f"{where}: it declares {len(names):,} class names (between 1 and {MAX_CLASSES:,} are possible).")
    out: dict[int, str] = {}
    for key, value in names.items():
        if isinstance(key, bool) or not (isinstance(key, int) or isinstance(key, str) and key.isdigit() and len(key) < 8):
            raise error(f"{where}: its class names have the id {str(key)[:20]!r}, not a class number.")
        out[int(key)] = check_text(value, f"class name {int(key)}", where, error)
    if sorted(out) != list(range(len(out))):
        raise error(f"{where}: its class ids are not 0..{len(out) - 1}.")
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------- activation
def parse_activation(text: Any, where: str, error: Error = TaskVecError) -> tuple[str, list[Any], dict[str, Any]]:
    """``(class name, args, kwargs)`` of an activation spec like ``nn.LeakyReLU(0.1)`` (never evaluated)."""
    refused = error(f"{where}: its model yaml has activation {str(text)[:60]!r}; only {', '.join(sorted(ACTIVATIONS))} as nn.<Name>(numbers) are accepted.")
    if not isinstance(text, str) or len(text) > 100:
        raise refused
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise refused from None
    if not isinstance(call, ast.Call):
        raise refused
    chain, node = [], call.func
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise refused
    chain.append(node.id)
    if chain[1:] not in (["nn"], ["nn", "torch"]) or chain[0] not in ACTIVATIONS:
        raise refused
    try:
        args = [_number_literal(a) for a in call.args]
        kwargs = {k.arg: _number_literal(k.value) for k in call.keywords}
    except ValueError:
        raise refused from None
    if len(args) > 4 or None in kwargs or not set(kwargs) <= ACTIVATION_KEYWORDS:
        raise refused
    return chain[0], args, kwargs


def _number_literal(node: ast.AST) -> Any:
    """A bool, a small number or a short string literal (``approximate='tanh'``); ValueError for anything else."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _number_literal(node.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        return -value
    if not isinstance(node, ast.Constant):
        raise ValueError
    value = node.value
    if isinstance(value, bool) or isinstance(value, str) and len(value) <= 16 and value.isalpha():
        return value
    if isinstance(value, (int, float)) and math.isfinite(value) and abs(value) <= 100:
        return value
    raise ValueError


# ----------------------------------------------------------------------------------------------- architecture yaml
def check_arch_yaml(yaml: Any, where: str, error: Error = TaskVecError, *, is_layer: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Validate an architecture yaml read from a file; returns it unchanged. ``is_layer``: the test that a layer name
    is a known Ultralytics layer (default: the registered ones, see ``register_layer_check``)."""
    if not isinstance(yaml, Mapping):
        raise error(f"{where}: its model yaml is a {type(yaml).__name__}, not a mapping.")
    if len(yaml) > MAX_KEYS or not all(isinstance(k, str) for k in yaml):
        raise error(f"{where}: its model yaml has {len(yaml)} keys or non-string keys.")
    backbone, head = yaml.get("backbone"), yaml.get("head")
    if not (isinstance(backbone, list) and backbone and isinstance(head, list) and head):
        raise error(f"{where}: its model yaml has no 'backbone'/'head' layer lists.")
    layers = backbone + head
    if len(layers) > MAX_LAYERS:
        raise error(f"{where}: its model yaml has {len(layers)} layers (at most {MAX_LAYERS}).")
    for index, layer in enumerate(layers):
        _check_layer(layer, index, where, error, is_layer)
    _check_top_level(yaml, where, error)
    if yaml.get("activation") is not None:
        parse_activation(yaml["activation"], where, error)
    return dict(yaml)


def _check_layer(layer: Any, index: int, where: str, error: Error, is_layer: Callable[[str], bool] | None) -> None:
    if not (isinstance(layer, list) and len(layer) == 4):
        raise error(f"{where}: its model yaml has a malformed layer {index} ({str(layer)[:60]}).")
    source, repeats, name, args = layer
    sources = source if isinstance(source, list) else [source]
    if not sources or len(sources) > MAX_ARGS or not all(_is_int(s) and (s == -1 or -index <= s < index) for s in sources):
        raise error(f"{where}: layer {index} of its model yaml takes input from {str(source)[:40]}, not from an earlier layer.")
    if not (_is_int(repeats) and 1 <= repeats <= MAX_REPEATS):
        raise error(f"{where}: layer {index} of its model yaml repeats {str(repeats)[:20]} times (1 to {MAX_REPEATS}).")
    checks = [is_layer] if is_layer is not None else _LAYER_CHECKS
    if not (isinstance(name, str) and _LAYER_NAME.fullmatch(name)) or not all(check(name) for check in checks):
        raise error(f"{where}: its model yaml names {str(name)[:40]!r}, which is not a known model layer.")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise error(f"{where}: layer {index} of its model yaml has malformed arguments.")
    _check_args(args, index, where, error, depth=0)


def _check_args(values: list[Any], index: int, where: str, error: Error, depth: int) -> None:
    for value in values:
        if isinstance(value, list):
            if depth >= 2 or len(value) > MAX_ARGS:
                raise error(f"{where}: layer {index} of its model yaml has nested arguments too deep or too long.")
            _check_args(value, index, where, error, depth + 1)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, str):
            if value not in STRING_ARGS:
                raise error(f"{where}: layer {index} of its model yaml has the argument {value[:40]!r}; string arguments may only be {', '.join(sorted(STRING_ARGS))}.")
        elif isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > MAX_ARG:
                raise error(f"{where}: its model yaml has a layer argument {value:g}, far beyond any real architecture.")
        else:
            raise error(f"{where}: its model yaml has a layer argument of type {type(value).__name__}.")


def _check_top_level(yaml: Mapping[str, Any], where: str, error: Error) -> None:
    nc = yaml.get("nc")
    if nc is not None and not (_is_int(nc) and 1 <= nc <= MAX_CLASSES):
        raise error(f"{where}: its model yaml declares nc={str(nc)[:20]} classes (1 to {MAX_CLASSES:,}).")
    for key in ("depth_multiple", "width_multiple"):
        value = yaml.get(key)
        if value is not None and not (_is_number(value) and 0 < value <= MAX_MULTIPLE):
            raise error(f"{where}: its model yaml has {key}={str(value)[:20]} (0 to {MAX_MULTIPLE:g}).")
    scales = yaml.get("scales")
    if scales is not None:
        if not isinstance(scales, Mapping) or not scales or len(scales) > 16:
            raise error(f"{where}: its model yaml has malformed scales.")
        for label, values in scales.items():
            ok = isinstance(values, list) and len(values) == 3 and all(_is_number(v) for v in values)
            if not ok or not (0 < values[0] <= MAX_MULTIPLE and 0 < values[1] <= MAX_MULTIPLE and _is_int(values[2]) and 1 <= values[2] <= MAX_CHANNELS):
                raise error(f"{where}: its model yaml has scale {str(label)[:10]} = {str(values)[:40]} (depth, width up to {MAX_MULTIPLE:g}, channels up to {MAX_CHANNELS}).")
    scale = yaml.get("scale")
    if scale is not None and not (isinstance(scale, str) and len(scale) <= 8 and (scale == "" or scales is None or scale in scales)):
        raise error(f"{where}: its model yaml has scale {str(scale)[:10]!r}, not one of its scales.")
    for key in ("channels", "ch"):
        value = yaml.get(key)
        if value is not None and not (_is_int(value) and 1 <= value <= MAX_INPUT_CHANNELS):
            raise error(f"{where}: its model yaml has {key}={str(value)[:20]} input channels (1 to {MAX_INPUT_CHANNELS}).")
    reg_max = yaml.get("reg_max")
    if reg_max is not None and not (_is_int(reg_max) and 1 <= reg_max <= 64):
        raise error(f"{where}: its model yaml has reg_max={str(reg_max)[:20]} (1 to 64).")
    kpt = yaml.get("kpt_shape")
    if kpt is not None and not (isinstance(kpt, list) and len(kpt) == 2 and _is_int(kpt[0]) and 1 <= kpt[0] <= 1000 and kpt[1] in (2, 3)):
        raise error(f"{where}: its model yaml has kpt_shape={str(kpt)[:20]}.")
    if yaml.get("end2end") is not None and not isinstance(yaml["end2end"], bool):
        raise error(f"{where}: its model yaml has end2end={str(yaml['end2end'])[:20]}, not true or false.")
    for key, value in yaml.items():
        if key in ("backbone", "head", "scales", "activation"):
            continue
        _check_plain(value, f"model yaml key {key!r}", where, error, depth=0)


def _check_plain(value: Any, what: str, where: str, error: Error, depth: int) -> None:
    """JSON-like data of bounded size (a key the builder does not read, e.g. ``yaml_file``)."""
    if depth > 4:
        raise error(f"{where}: its {what} is nested too deeply.")
    if isinstance(value, str):
        check_text(value, what, where, error)
    elif isinstance(value, list):
        if len(value) > 64:
            raise error(f"{where}: its {what} holds {len(value)} items.")
        for v in value:
            _check_plain(v, what, where, error, depth + 1)
    elif isinstance(value, Mapping):
        if len(value) > 64:
            raise error(f"{where}: its {what} holds {len(value)} items.")
        for k, v in value.items():
            check_text(str(k), what, where, error)
            _check_plain(v, what, where, error, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise error(f"{where}: its {what} is {value}.")
    elif not (value is None or isinstance(value, (bool, int, float))):
        raise error(f"{where}: its {what} is a {type(value).__name__}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------- vector metadata
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("name", "task", "ultralytics_version", "dtype", "source", "base_source", "source_file")


def check_vector_meta(meta: Mapping[str, Any], where: str, error: Error = TaskVecError) -> dict[str, Any]:
    """Types and bounds of the ``meta`` fields the library reads (anything printed, compared or rebuilt)."""
    for key in _TEXT_FIELDS:
        if meta.get(key) is not None:
            check_text(meta[key], f"'{key}'", where, error, limit=MAX_TEXT if key in ("task", "dtype", "ultralytics_version") else 4096)
    fp = meta.get("base_fingerprint")
    if fp is not None and not (isinstance(fp, str) and FINGERPRINT.fullmatch(fp)):
        raise error(f"{where}: its base_fingerprint is {str(fp)[:20]!r}, not a SHA-256 hex digest.")
    if meta.get("task") is not None and meta["task"] not in TASKS:
        raise error(f"{where}: its task is {meta['task'][:20]!r}, not one of {', '.join(TASKS)}.")
    if meta.get("names") is not None:
        check_names(meta["names"], where, error)
    parts = meta.get("parts")
    if parts is not None and not (isinstance(parts, list) and len(parts) <= 64 and all(isinstance(p, str) and len(p) <= MAX_TEXT for p in parts)):
        raise error(f"{where}: its 'parts' entry is not a list of part names.")
    for key in ("base_yaml", "target_yaml"):
        if meta.get(key) is not None:
            check_arch_yaml(meta[key], where, error)
    compression = meta.get("compression")
    if compression is not None:
        _check_compression(compression, where, error)
    return dict(meta)


def _check_compression(c: Any, where: str, error: Error) -> None:
    if not isinstance(c, Mapping):
        raise error(f"{where}: its 'compression' entry is not a mapping.")
    if c.get("label") is not None:
        check_text(c["label"], "compression label", where, error)
    for key in ("relative_error", "dense_fp16_bytes", "tensor_bytes", "values"):
        if c.get(key) is not None and not (_is_number(c[key]) and c[key] >= 0):
            raise error(f"{where}: its compression entry '{key}' is {str(c[key])[:20]!r}, not a non-negative number.")
    kinds = c.get("kinds")
    if kinds is not None and not (isinstance(kinds, Mapping) and all(isinstance(k, str) and len(k) <= 32 and _is_int(v) for k, v in kinds.items())):
        raise error(f"{where}: its compression entry 'kinds' is not a mapping of kinds to counts.")
