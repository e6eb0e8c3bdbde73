"""The merge recipe: every choice of a merge in one declared, typed object, validated when it is built.

>>> from yolo_taskvec import Recipe
>>> r = Recipe.build(base="yolo26n-base80.pt", inputs=["yolo26n-fruit-night.pt"], method="ties", density=0.2, scale=0.5)
>>> r = Recipe.from_yaml("recipe.yaml", scale=0.3)        # a recipe file, then overrides
>>> r.to_yaml("again.yaml")                              # writes it down; re-running it gives the same tensors

Building a recipe opens no file: it checks every field's type and range, the method and its parameters (they may be
given flat, ``density=0.2``, or as ``params={...}``), the per-part scales and part names, the BatchNorm and class
policies and the device. A misspelled key is answered with the closest valid names, a bad value with one sentence.
Files are checked (exist, readable) by ``check_files`` and opened only by the adapter that runs the recipe.

Per-part values use one syntax everywhere (``scale=``, sweep grids, search bounds): ``part=value`` entries separated
by commas, or by semicolons when a value is itself a list (``backbone=0:1:0.5;head=0,1``); ``part:value`` is read
the same way. In a recipe file or the API they are plain mappings (``{"backbone": 0.5, "*": 1}``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bn as bn_policy
from .errors import TaskVecError
from .limits import MAX_IMGSZ, MIN_IMGSZ
from .methods import get_method
from .parts import PARTS, check_selection
from .taskvector import Scale, check_scale, normalize_scale

RECIPE_FORMAT = "yolo-taskvec-recipe/1"
CLASS_POLICIES = ("error", "base", "union")
DUPLICATE_RULES = ("mean", "first")
UNMATCHED = ("error", "carry")
PART_KEYS = ("*", "head", *PARTS)
MODEL_SUFFIXES = (".pt", ".safetensors")
MAX_BN_BATCHES = 10_000
REPAIR_MODES = ("pseudo", "distill")
MAX_REPAIR_EPOCHS = 300
MAX_SHARE = 1000  # the real bound (the base's head index) is checked against the loaded base


class RecipeError(TaskVecError):
    """A recipe key or value that is not valid (raised before any file is opened)."""


# ----------------------------------------------------------------------------------------------- per-part syntax
_KEYED_ITEM = re.compile(r"^\s*[A-Za-z_*][\w.*#\-]*\s*[=:]")


def parse_mapping(text: str, what: str) -> dict[str, str]:
    """``"backbone=0.5,neck=1"`` / ``"backbone=0:1:0.5;head=0,1"`` / ``"backbone:0.5"`` -> ``{key: raw value}``."""
    items = [t for t in text.replace("\n", ";").split(";") if t.strip()]
    if len(items) == 1 and "," in items[0] and all(_KEYED_ITEM.match(t) for t in items[0].split(",") if t.strip()):
        items = [t for t in items[0].split(",") if t.strip()]
    out: dict[str, str] = {}
    for item in items:
        match = _KEYED_ITEM.match(item)
        if not match:
            raise RecipeError(f"{what}: '{item.strip()}' is not key=value (e.g. backbone=0.5,neck=1).")
        key = item[: match.end() - 1].strip()
        value = item[match.end() :].strip()
        if not value:
            raise RecipeError(f"{what}: '{key}' has no value.")
        if key in out:
            raise RecipeError(f"{what}: '{key}' is given twice.")
        out[key] = value
    if not out:
        raise RecipeError(f"{what}: an empty mapping was given.")
    return out


def is_mapping_text(value: Any) -> bool:
    """True for a string written in the per-part syntax (it names a key)."""
    return isinstance(value, str) and bool(_KEYED_ITEM.match(value))


def parse_number(value: Any, what: str) -> float:
    """A finite number from a number or a plain decimal string (``1_0`` and ``0x10`` are refused)."""
    if isinstance(value, bool):
        raise RecipeError(f"{what} must be a number, got {value!r}.")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value):
        number = float(value)
    elif isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise RecipeError(f"{what} must be finite, got {value.strip()}.")
    elif isinstance(value, str):
        raise RecipeError(f"{what}: '{value.strip()}' is not a number.")
    else:
        raise RecipeError(f"{what} must be a number, got {value!r}.")
    if not math.isfinite(number):
        raise RecipeError(f"{what} must be finite, got {value!r}.")
    return number


def parse_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """An integer within ``[low, high]`` from an int or a plain integer string."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value))):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RecipeError(f"{what} must be an integer, got {value!r}.")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise RecipeError(f"{what} must be {bounds}, got {number}.")
    return number


def parse_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise RecipeError(f"{what} must be true or false, got {value!r}.")


def parse_scale(value: Any) -> Scale:
    """A float or a per-part mapping of floats (any of the accepted spellings), validated."""
    if isinstance(value, str) and is_mapping_text(value):
        value = {k: parse_number(v, f"scale for part '{k}'") for k, v in parse_mapping(value, "scale").items()}
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in PART_KEYS]
        if unknown:
            raise RecipeError(f"unknown part '{unknown[0]}' in scale; {_suggest(unknown[0], PART_KEYS)}")
        return normalize_scale({str(k): parse_number(v, f"scale for part '{k}'") for k, v in value.items()})
    return check_scale(parse_number(value, "scale"))


def _suggest(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(word), choices, n=3)
    return f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(choices)}."


def _choice(value: Any, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise RecipeError(f"unknown {what} '{value}'; {_suggest(str(value), choices)}")
    return str(value)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    """A tuple of non-empty strings from a string (comma-separated) or a sequence."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, Mapping):
        raise RecipeError(f"{what} must be a list of names, got {value!r}.")
    out = tuple(str(v).strip() for v in items if str(v).strip())
    for v in out:
        if not isinstance(v, str):
            raise RecipeError(f"{what} must be a list of names, got {value!r}.")
    return out


def check_repair_options(epochs: Any, images: Any, conf: Any, mode: Any, *, least: int = 0, images_key: str = "repair_images") -> tuple[int, float, str]:
    """Repair options (epochs, confidence, mode; images where epochs > 0), checked alike for the recipe (``repair=0``:
    no repair) and for ``repair()`` (``least=1``, its images passed as ``images=``)."""
    epochs = parse_int(epochs, "repair (epochs)", least, MAX_REPAIR_EPOCHS)
    conf = parse_number(conf, "repair_conf")
    if not 0 < conf < 1:
        raise RecipeError(f"repair_conf must be in (0, 1), got {conf:g}.")
    mode = _choice(mode, REPAIR_MODES, "repair mode")
    if epochs and not images:
        raise RecipeError(f"repair={epochs} needs unlabeled images: {images_key}= image folders, image files or dataset yamls (their train images; labels unused).")
    return epochs, conf, mode


def check_device(value: Any) -> str | None:
    """``None``, ``cpu``, ``mps``, ``cuda``, ``cuda:N`` or ``N`` (a GPU index that exists on this machine)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    text = str(value).strip().lower()
    if text in ("cpu", "mps"):
        return text
    match = re.fullmatch(r"(?:cuda:?)?(\d+)|cuda", text)
    if not match:
        raise RecipeError(f"unknown device '{value}'; use cpu, cuda, cuda:N, N (a GPU index) or mps.")
    import torch

    count = torch.cuda.device_count()
    index = int(match.group(1)) if match.group(1) is not None else 0
    if count == 0:
        raise RecipeError(f"device '{value}' asks for a CUDA GPU, but none is available here; use device=cpu.")
    if index >= count:
        raise RecipeError(f"device '{value}' does not exist: this machine has {count} CUDA GPU(s) (0..{count - 1}).")
    return f"cuda:{index}"


# ----------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Input:
    """One merged input: a fine-tuned model or a task-vector file (or, in the API, a TaskVector/YOLO object)."""

    source: Any
    weight: float = 1.0
    name: str | None = None
    sha256: str | None = None  # pins the file: a different file is refused

    @classmethod
    def of(cls, item: Any, where: str = "inputs") -> Input:
        if isinstance(item, Input):
            return item
        if isinstance(item, Mapping):
            unknown = [k for k in item if k not in ("model", "vector", "weight", "name", "sha256")]
            if unknown:
                raise RecipeError(f"unknown key '{unknown[0]}' in an input of {where}; {_suggest(unknown[0], ('model', 'weight', 'name', 'sha256'))}")
            source = item.get("model", item.get("vector"))
            if source is None:
                raise RecipeError(f"an input of {where} has no model: give model: path/to/finetune.pt (or a .safetensors vector).")
            weight = check_scale(parse_number(item.get("weight", 1.0), "input weight"), "input weight")
            name = item.get("name")
            return cls(check_source(source, "input model"), weight, str(name) if name is not None else None, check_sha256(item.get("sha256"), "input sha256"))
        return cls(check_source(item, "input model"))

    @property
    def is_path(self) -> bool:
        return isinstance(self.source, (str, os.PathLike))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": str(self.source) if self.is_path else repr(self.source)}
        if self.weight != 1.0:
            out["weight"] = self.weight
        if self.name:
            out["name"] = self.name
        if self.sha256:
            out["sha256"] = self.sha256
        return out


def check_sha256(value: Any, what: str) -> str | None:
    """``None`` or a sha256 hex digest (64 hex characters, lower-cased)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise RecipeError(f"{what} must be a sha256 hex digest (64 hex characters), got {str(value)[:80]!r}.")
    return text


def check_source(value: Any, what: str) -> Any:
    """A model/vector path (suffix checked, nothing opened) or an in-memory object."""
    if isinstance(value, (str, os.PathLike)):
        text = str(value).strip()
        if not text:
            raise RecipeError(f"{what} is an empty path.")
        if text.lower() == "base":
            return text
        if Path(text).suffix.lower() not in MODEL_SUFFIXES:
            raise RecipeError(f"{what} {text} is not a .pt checkpoint or a .safetensors task vector/model.")
        return text if isinstance(value, str) else value
    if value is None or isinstance(value, (int, float, bool, Mapping, list, tuple)):
        raise RecipeError(f"{what} must be a path to a .pt/.safetensors file, got {value!r}.")
    return value  # a YOLO, nn.Module, TaskVector or LoadedModel given through the API


# ----------------------------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class Recipe:
    """A merge, fully described: ``base`` + scale · method(weighted inputs), with its BatchNorm and class policies."""

    base: Any
    inputs: tuple[Input, ...]
    base_sha256: str | None = None
    method: str = "task_arithmetic"
    params: Mapping[str, Any] = field(default_factory=dict)
    scale: Scale = 1.0
    parts: tuple[str, ...] | None = None
    bn: str = bn_policy.DEFAULT
    bn_data: tuple[str, ...] = ()
    bn_batches: int = 16
    classes: str = "error"
    duplicates: str = "mean"
    unmatched: str = "error"
    orthogonalize: bool = False
    seed: int = 0
    device: str | None = None
    imgsz: int | None = None
    force: bool = False
    share: int | None = None
    repair: int = 0
    repair_images: tuple[str, ...] = ()
    repair_conf: float = 0.25
    repair_mode: str = "pseudo"

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, base: Any = None, inputs: Any = None, **fields: Any) -> Recipe:
        """A validated recipe from keyword fields; method parameters may be given flat (``density=0.2``).

        ``weights=[...]`` sets the inputs' weights; ``models=``/``vectors=`` are other names of ``inputs``.
        """
        fields = dict(fields)
        for alias in ("models", "vectors"):
            if alias in fields:
                if inputs is not None:
                    raise RecipeError(f"give the merged models once: inputs= or {alias}=, not both.")
                inputs = fields.pop(alias)
        weights = fields.pop("weights", None)
        params = dict(fields.pop("params", None) or {})
        if not isinstance(params, Mapping):
            raise RecipeError(f"params must be a mapping of method parameters, got {params!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        method = get_method(fields.get("method", "task_arithmetic")) if _valid_method(fields.get("method", "task_arithmetic")) else None
        for key in list(fields):
            if key in known:
                continue
            if method is not None and key in {p.name for p in method.params}:
                params[key] = fields.pop(key)
                continue
            names = sorted(known | {"weights", "models", "vectors"} | ({p.name for p in method.params} if method else set()))
            raise RecipeError(f"unknown recipe key '{key}'; {_suggest(key, names)}")
        if base is None:
            raise RecipeError("a recipe needs base= (the checkpoint the inputs were fine-tuned from).")
        recipe = cls(base=base, inputs=_inputs(inputs, weights), params=params, **fields)
        return recipe.validated()

    def validated(self) -> Recipe:
        """The same recipe with every field checked and normalized (raises RecipeError with one sentence)."""
        method = get_method(self.method)  # unknown method: closest names
        if not isinstance(self.params, Mapping):
            raise RecipeError(f"params must be a mapping of method parameters, got {self.params!r}.")
        params = method.resolve(self.params)
        inputs = tuple(Input.of(i) for i in self.inputs)
        if not inputs:
            raise RecipeError("a recipe needs at least one input (a fine-tuned model or a task vector).")
        method.check_count(len(inputs))
        names = [i.name for i in inputs if i.name]
        if len(set(names)) < len(names):
            raise RecipeError(f"two inputs share the name '{next(n for n in names if names.count(n) > 1)}'; names must be unique.")
        bn = _choice(self.bn, bn_policy.POLICIES, "BatchNorm policy")
        bn_data = _strings(self.bn_data, "bn_data")
        if bn_policy.needs_images(bn) and not bn_data:
            raise RecipeError(f"bn={bn} needs bn_data: one or more dataset yamls whose images re-estimate the BatchNorm statistics.")
        if bn_data and not bn_policy.needs_images(bn):
            raise RecipeError(f"bn_data is only used by bn=recalibrate (bn is {bn}); remove it or set bn=recalibrate.")
        for y in bn_data:
            if Path(y).suffix.lower() not in (".yaml", ".yml"):
                raise RecipeError(f"bn_data {y} is not a dataset .yaml file.")
        parts = None if self.parts is None else tuple(check_selection(_strings(self.parts, "parts")))
        if parts is not None and not parts:
            raise RecipeError("parts is empty; leave it out to merge every part.")
        imgsz = None if self.imgsz is None else parse_int(self.imgsz, "imgsz", MIN_IMGSZ, MAX_IMGSZ)
        classes = _choice(self.classes, CLASS_POLICIES, "class policy")
        share, repair, repair_images, repair_conf, repair_mode = self._union_options(classes)
        return dataclasses.replace(
            self,
            base=check_source(self.base, "base"),
            base_sha256=check_sha256(self.base_sha256, "base_sha256"),
            inputs=inputs,
            method=method.name,
            params=params,
            scale=parse_scale(self.scale),
            parts=parts,
            bn=bn,
            bn_data=bn_data,
            bn_batches=parse_int(self.bn_batches, "bn_batches", 1, MAX_BN_BATCHES),
            classes=classes,
            duplicates=_choice(self.duplicates, DUPLICATE_RULES, "duplicates rule"),
            unmatched=_choice(self.unmatched, UNMATCHED, "unmatched policy"),
            orthogonalize=parse_bool(self.orthogonalize, "orthogonalize"),
            seed=parse_int(self.seed, "seed", 0, 2**63 - 1),
            device=check_device(self.device),
            imgsz=imgsz,
            force=parse_bool(self.force, "force"),
            share=share,
            repair=repair,
            repair_images=repair_images,
            repair_conf=repair_conf,
            repair_mode=repair_mode,
        )

    def _union_options(self, classes: str) -> tuple[int | None, int, tuple[str, ...], float, str]:
        """``share`` (trunk layers shared by the union's branches) and the repair options, checked together."""
        share = None if self.share is None else parse_int(self.share, "share", 0, MAX_SHARE)
        repair = parse_int(self.repair, "repair (epochs)", 0, MAX_REPAIR_EPOCHS)
        if classes != "union" and (share is not None or repair):
            raise RecipeError(f"{'share' if share is not None else 'repair'} is an option of class-union merges; add classes=union.")
        images = _strings(self.repair_images, "repair_images")
        repair, conf, mode = check_repair_options(repair, images, self.repair_conf, self.repair_mode)
        if images and not repair:
            raise RecipeError("repair_images are the unlabeled images of a repair; add repair=<epochs> (e.g. repair=3).")
        return share, repair, images, conf, mode

    def replace(self, **changes: Any) -> Recipe:
        """A validated copy with some fields changed (``weights=[...]`` and flat method parameters accepted)."""
        current = self.to_dict(plain=False)
        if "method" in changes and "params" not in changes and changes["method"] != self.method:
            current["params"] = {}
        if "inputs" in changes or "models" in changes or "vectors" in changes:
            current.pop("inputs")
        elif "weights" in changes:
            current["inputs"] = [dataclasses.replace(i, weight=1.0) for i in self.inputs]
        return Recipe.build(**{**current, **changes})

    # ------------------------------------------------------------------ views
    @property
    def weights(self) -> list[float]:
        return [i.weight for i in self.inputs]

    @property
    def sources(self) -> list[Any]:
        return [i.source for i in self.inputs]

    def to_dict(self, plain: bool = True) -> dict[str, Any]:
        """The recipe as data (``plain``: YAML/JSON-ready, objects given through the API shown by their repr)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "inputs":
                value = [i.to_dict() for i in value] if plain else list(value)
            elif f.name == "base" and plain:
                value = str(value) if isinstance(value, (str, os.PathLike)) else repr(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return {"base": out.pop("base"), "base_sha256": out.pop("base_sha256"), **out}

    def describe(self) -> str:
        """One line: method, parameters, scale, BatchNorm and class policies."""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        scale = self.scale if not isinstance(self.scale, Mapping) else ", ".join(f"{k}={v:g}" for k, v in self.scale.items())
        return f"method {self.method}{f' ({params})' if params else ''}, scale {scale}, bn {self.bn}, classes {self.classes}"

    # ------------------------------------------------------------------ files
    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> Recipe:
        """Read a recipe file (see ``template``), apply ``overrides`` (command-line keys win), validate.

        The file's run sections (``grid``, ``search``, ``eval``) are not part of the merge: see ``recipe_sections``.
        """
        fields, _ = recipe_sections(path)
        return cls.build(**_overridden(fields, overrides))

    def to_yaml(self, path: str | os.PathLike | None = None, *, header: str = "", extra: Mapping[str, Any] | None = None) -> str:
        """The recipe as a YAML document (written atomically to ``path`` when given); re-running it reproduces the merge."""
        import yaml

        doc = {"format": RECIPE_FORMAT, **self.to_dict(), **dict(extra or {})}
        text = (header if header.endswith("\n") or not header else header + "\n") + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
        if path is not None:
            from .atomic import write_text_atomic

            write_text_atomic(path, text)
        return text


def as_recipe(base: Any, inputs: Any = None, **fields: Any) -> Recipe:
    """A Recipe from a Recipe (``fields`` override it) or from a base, its inputs and recipe fields."""
    if isinstance(base, Recipe):
        if inputs is not None:
            fields["inputs"] = inputs
        return base.replace(**fields) if fields else base
    return Recipe.build(base=base, inputs=inputs, **fields)


RUN_SECTIONS = ("grid", "search", "eval", "format")


def read_recipe_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a recipe YAML file (safe loader; one sentence for a missing or malformed file)."""
    import yaml

    path = Path(path).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise RecipeError(f"recipe file {path} is not a .yaml file.")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} not found.")
    try:
        text = path.read_text(encoding="utf-8")
        doc = yaml.safe_load(text)
    except OSError as e:
        raise RecipeError(f"recipe file {path} cannot be read ({e.strerror or type(e).__name__}).") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe file {path} is not valid YAML ({str(e).splitlines()[0]}).") from e
    if not isinstance(doc, dict):
        raise RecipeError(f"recipe file {path} does not hold a mapping of recipe keys.")
    version = doc.get("format", RECIPE_FORMAT)
    if version != RECIPE_FORMAT:
        raise RecipeError(f"recipe file {path} has format {version!r}; this yolo-taskvec reads {RECIPE_FORMAT}.")
    return {str(k): v for k, v in doc.items()}


def recipe_sections(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(recipe keys, run sections)`` of a recipe file: ``grid``/``search``/``eval`` are the run's, the rest the merge's."""
    doc = read_recipe_file(path)
    doc.pop("format", None)
    sections = {k: doc.pop(k) for k in RUN_SECTIONS if k in doc}
    for name, value in sections.items():
        if not isinstance(value, Mapping):
            raise RecipeError(f"section '{name}' of {path} must be a mapping of keys.")
    return doc, sections


def _overridden(fields: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """File keys with overrides applied; a new method drops the file's method parameters, new inputs its weights."""
    out = dict(fields)
    if "method" in overrides and overrides["method"] != out.get("method"):
        out.pop("params", None)
    if any(k in overrides for k in ("inputs", "models", "vectors")):
        for k in ("inputs", "models", "vectors"):
            out.pop(k, None)
    return {**out, **overrides}


def _valid_method(name: Any) -> bool:
    try:
        get_method(name)
    except TaskVecError:
        return False
    return True


def _inputs(inputs: Any, weights: Any) -> tuple[Input, ...]:
    if inputs is None:
        raise RecipeError("a recipe needs inputs= (fine-tuned models or task vectors to merge).")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [s for s in str(inputs).split(",") if s.strip()] if isinstance(inputs, str) else [inputs]
    elif not isinstance(inputs, Iterable) or isinstance(inputs, Mapping):
        inputs = [inputs]
    items = [Input.of(i) for i in inputs]
    if weights is not None:
        if isinstance(weights, str):
            weights = [w for w in weights.split(",") if w.strip()]
        if isinstance(weights, (int, float)) or not isinstance(weights, Iterable):
            raise RecipeError(f"weights must be a list with one number per input, got {weights!r}.")
        weights = [check_scale(parse_number(w, "input weight"), "input weight") for w in weights]
        if len(weights) != len(items):
            raise RecipeError(f"got {len(weights)} weights for {len(items)} inputs; give one per input.")
        items = [dataclasses.replace(i, weight=w) for i, w in zip(items, weights)]
    return tuple(items)


# ----------------------------------------------------------------------------------------------- template
TEMPLATE = """\
# yolo-taskvec merge recipe ({format})
# Run it:   yolo-taskvec merge cfg=recipe.yaml out=merged.pt        (command-line keys override this file)
#           yolo-taskvec sweep cfg=recipe.yaml                       (uses the grid: and eval: sections)
#           yolo-taskvec search cfg=recipe.yaml                      (uses the search: and eval: sections)
# Every key is optional except base and inputs; the values below are the defaults.

base: yolo26n-base80.pt          # the checkpoint the inputs were fine-tuned from (bare names: weights_dir)
base_sha256: null                # optional pin: the run refuses a base file with another sha256
inputs:                          # fine-tuned checkpoints (.pt) and/or task vectors (.safetensors)
  - model: yolo26n-fruit-night.pt
    weight: 1.0                  # per-input weight
    name: night                  # optional: its column name in sweeps (default: the file's stem)
    sha256: null                 # optional pin of the file
method: task_arithmetic          # {methods}
params: {{}}                       # the method's own parameters, e.g. {{density: 0.2}} for ties
scale: 1.0                       # a number, or per part: {{backbone: 0.5, neck: 1.0, head: 0.75, '*': 1.0}}
parts: null                      # restrict the merge to parts/key globs: [backbone, neck, head.box, 'model.23.cv2.*']
bn: {bn}                        # BatchNorm running statistics: {bns}
bn_data: []                      # bn=recalibrate: dataset yamls whose train images re-estimate the statistics
bn_batches: 16                   # bn=recalibrate: batches of 16 images
classes: error                   # other class sets than the base: error, base (keep the base's) or union
duplicates: mean                 # classes=union: a class in several inputs takes the mean (or first) logit
unmatched: error                 # tensors without a same-shape base counterpart: error or carry (e.g. a mask head)
orthogonalize: false             # remove from each vector its projection on the others first
seed: 0                          # random methods (dare, della, ...) are reproducible with it
device: null                     # merge arithmetic (and validation) device: cpu, 0, cuda:1 (default: CPU merge)
imgsz: null                      # recalibration image size (default: the base's training size)
force: false                     # apply vectors extracted from another base
share: null                      # classes=union: layers 0..share-1 shared, the rest each input's own (0: exact branches)
repair: 0                        # classes=union: epochs of repair on unlabeled images (pseudo-labels from the inputs)
repair_images: []                # repair: image folders, image files or dataset yamls (train images; labels unused)
repair_conf: 0.25                # repair: confidence of the inputs' pseudo-labels
repair_mode: pseudo              # repair: pseudo (pseudo-labels) or distill (pseudo-labels + the inputs' logits and boxes)

eval:                            # sweep/search scoring
  data: [fruit80.yaml, fruit80-night.yaml]
  reference: [base, yolo26n-fruit-night.pt]   # normalizes each dataset's metric (one per dataset, or one for all)
  select: null                   # selection split: train:0.2 (a seeded 20 % of each dataset's train images) or yamls
  metric: map50_95
  objective: mean                # mean or min of the normalized metrics
  imgsz: 320
  batch: 16

grid:                            # sweep: one axis per key (scale, a part, an input name or a method parameter)
  scale: 0:1:0.1

search:                          # search: bounds per key, a budget and a strategy
  space: parts                   # auto, scale, vectors, parts, vectors+parts, or {{backbone: 0:1, head: 0:1}}
  budget: 20
  strategy: coordinate           # coordinate, random, tpe, cmaes
"""


def template() -> str:
    """The commented recipe template written by ``yolo-taskvec copy-cfg``."""
    from .methods import method_names

    return TEMPLATE.format(format=RECIPE_FORMAT, methods=", ".join(method_names()), bn=bn_policy.DEFAULT.ljust(7), bns=", ".join(bn_policy.POLICIES))
