"""Deterministic image-domain transforms (night, fog, blur, noise) that write a shifted copy of a YOLO dataset.

``transform_dataset("fruit80.yaml", "night", "out/fruit80-night")`` writes every split's images through the
preset, copies every label file byte for byte, and writes the dataset yaml twice: inside the folder (no ``path:``,
so the folder can be moved) and beside it (``out/fruit80-night.yaml``, absolute ``path:``) so it validates
directly. Both carry a ``transform:`` block with the preset, its parameters, the seed and the seeding rule.

Seeding: each image gets its own generator, ``numpy.random.default_rng(key)`` with
``key = int(md5(relative path).hexdigest()[:8], 16)`` (the path relative to the dataset root, e.g.
``images/val/fruit_apple_13.jpg``; ``seed != 0`` uses ``default_rng([seed, key])``). The preset's ranges are drawn
uniformly in their listed order, then its noise. An image's result depends only on its bytes, its relative path,
the preset and the seed: never on the order or the set of images. With ``seed=0`` the ``night`` preset reproduces
the reference ``fruit80-night`` dataset byte for byte.

Images are processed in float32 on a 0-1 scale (noise drawn in float64, then cast), clipped, truncated to uint8
and re-encoded with the source's extension (JPEG at the preset's quality).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import DataError, OutputError, TaskVecError
from .plain import plain

SPLITS = ("train", "val", "test", "minival")


@dataclass(frozen=True)
class Range:
    """A parameter drawn uniformly from ``[lo, hi]`` once per image."""

    lo: float
    hi: float

    def as_list(self) -> list[float]:
        return [self.lo, self.hi]


Param = float | int | Range | tuple[float, ...]
Apply = Callable[[np.ndarray, Mapping[str, Any], np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Preset:
    """A named transform: parameters (ranges drawn in order, then constants) and the function that applies them."""

    name: str
    doc: str
    params: dict[str, Param]
    apply: Apply
    quality: int = 90  # JPEG quality of the written images

    def with_params(self, overrides: Mapping[str, Any] | None) -> Preset:
        """The preset with some parameters replaced (a number, or a ``(lo, hi)`` pair for a per-image range)."""
        if not overrides:
            return self
        params, quality = dict(self.params), self.quality
        for key, value in overrides.items():
            if key == "quality":
                quality = _check_quality(value)
                continue
            if key not in params:
                valid = [*params, "quality"]
                close = difflib.get_close_matches(key, valid, n=1)
                raise TaskVecError(f"preset '{self.name}' has no parameter '{key}'{'; did you mean ' + close[0] + '?' if close else ''} (parameters: {', '.join(valid)}).")
            params[key] = _as_param(key, value, params[key])
        return Preset(self.name, self.doc, params, self.apply, quality)

    def record(self) -> dict[str, Any]:
        """Plain-data description for the output yaml."""
        out: dict[str, Any] = {}
        for key, value in self.params.items():
            out[key] = value.as_list() if isinstance(value, Range) else list(value) if isinstance(value, tuple) else value
        out["quality"] = self.quality
        return out


def _check_quality(value: Any) -> int:
    if not isinstance(value, (int, float)) or not 1 <= int(value) <= 100:
        raise TaskVecError(f"JPEG quality must be an integer from 1 to 100, got {value!r}.")
    return int(value)


def _as_param(key: str, value: Any, current: Param) -> Param:
    """Validate an override against the kind of the current value."""
    if isinstance(current, tuple):
        if not (isinstance(value, (list, tuple)) and len(value) == len(current) and all(isinstance(v, (int, float)) for v in value)):
            raise TaskVecError(f"parameter '{key}' takes {len(current)} numbers, got {value!r}.")
        return tuple(float(v) for v in value)
    if isinstance(value, Range):
        lo, hi = value.lo, value.hi
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = value
    else:
        raise TaskVecError(f"parameter '{key}' takes a number or a (low, high) range, got {value!r}.")
    if not all(isinstance(v, (int, float)) and np.isfinite(v) and v >= 0 for v in (lo, hi)) or lo > hi:
        raise TaskVecError(f"parameter '{key}' needs finite non-negative values with low <= high, got {value!r}.")
    return Range(float(lo), float(hi)) if isinstance(current, Range) or lo != hi else float(lo)


# ------------------------------------------------------------------------------------------------ the presets
def _night(x: np.ndarray, p: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Low light: gamma darkening, gain, blue cast (BGR gains), sensor noise, slight blur."""
    x = np.power(x, p["gamma"]) * p["gain"] * np.asarray(p["channel_gains"], dtype=np.float32)
    x = x + rng.normal(0.0, p["noise"], x.shape).astype(np.float32)
    return _gaussian_blur(x, p["blur"], int(p["blur_kernel"]))


def _fog(x: np.ndarray, p: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Haze by the atmospheric scattering model ``I = J·t + A·(1 − t)``, ``t = exp(−density·depth)``.

    Depth grows towards the top of the image (far away) from ``near`` at the bottom to 1 at the top.
    """
    h = x.shape[0]
    depth = p["near"] + (1.0 - p["near"]) * (1.0 - np.arange(h, dtype=np.float32) / max(h - 1, 1))
    t = np.exp(-p["density"] * depth)[:, None, None].astype(np.float32)
    x = x * t + p["airlight"] * (1.0 - t)
    return _gaussian_blur(x, p["blur"])


def _blur(x: np.ndarray, p: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Defocus: a Gaussian blur whose kernel covers ±3σ."""
    return _gaussian_blur(x, p["sigma"])


def _noise(x: np.ndarray, p: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: signal-dependent (shot) plus Gaussian read noise, per pixel and channel."""
    shot = rng.normal(0.0, 1.0, x.shape).astype(np.float32) * np.sqrt(np.clip(x, 0, 1)) * p["shot"]
    return x + shot + rng.normal(0.0, p["sigma"], x.shape).astype(np.float32)


def _gaussian_blur(x: np.ndarray, sigma: float, size: int | None = None) -> np.ndarray:
    """Gaussian blur with an odd ``size`` kernel (default: covering ±3σ)."""
    if sigma <= 0:
        return x
    size = size or 2 * int(np.ceil(3 * sigma)) + 1
    if size < 1 or size % 2 == 0:
        raise TaskVecError(f"blur kernel size must be a positive odd number, got {size}.")
    return cv2.GaussianBlur(x, (size, size), sigma)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "night",
            "low light: gamma 2.0-2.8, gain 0.45-0.65, blue cast, noise, 3x3 blur (reproduces fruit80-night)",
            {"gamma": Range(2.0, 2.8), "gain": Range(0.45, 0.65), "noise": Range(0.015, 0.03), "channel_gains": (1.15, 0.9, 0.7), "blur": 0.6, "blur_kernel": 3},
            _night,
        ),
        Preset("fog", "haze: atmospheric scattering with depth growing to the top, airlight 0.7-0.9", {"density": Range(0.5, 1.2), "airlight": Range(0.7, 0.9), "near": 0.3, "blur": 0.8}, _fog),
        Preset("blur", "defocus: Gaussian blur sigma 1.0-2.5", {"sigma": Range(1.0, 2.5)}, _blur),
        Preset("noise", "sensor noise: Gaussian sigma 0.03-0.08 plus shot noise", {"sigma": Range(0.03, 0.08), "shot": Range(0.02, 0.05)}, _noise),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """A preset by name (closest names suggested on a typo)."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=2)
        raise TaskVecError(f"unknown transform preset '{name}'; {'did you mean ' + ', '.join(close) + '?' if close else 'presets: ' + ', '.join(PRESETS) + '.'}")
    return PRESETS[name]


# ------------------------------------------------------------------------------------------------ one image
def image_rng(rel: str, seed: int = 0) -> np.random.Generator:
    """The generator of one image, from its path relative to the dataset root (posix) and the seed."""
    key = int(hashlib.md5(Path(rel).as_posix().encode()).hexdigest()[:8], 16)
    return np.random.default_rng(key if seed == 0 else [int(seed), key])


def draw_params(preset: Preset, rng: np.random.Generator) -> dict[str, Any]:
    """The preset's parameters for one image: ranges drawn in order, constants as they are."""
    return {k: (float(rng.uniform(v.lo, v.hi)) if isinstance(v, Range) else v) for k, v in preset.params.items()}


def transform_image(image: np.ndarray, preset: str | Preset, rel: str, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Transform a uint8 BGR image; returns the uint8 result and the parameters drawn for it."""
    preset = get_preset(preset)
    rng = image_rng(rel, seed)
    params = draw_params(preset, rng)
    x = preset.apply(image.astype(np.float32) / 255.0, params, rng).astype(np.float32)
    return (np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), params


def encode(image: np.ndarray, suffix: str, quality: int) -> bytes:
    """Image bytes in the format named by ``suffix`` (JPEG at ``quality``)."""
    flags = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix.lower(), image, flags)
    if not ok:
        raise DataError(f"cannot encode an image as {suffix}.")
    return buf.tobytes()


# ------------------------------------------------------------------------------------------------ a dataset
@dataclass
class TransformResult:
    """What ``transform_dataset`` wrote: the folder, the yaml beside it (validate with it), counts."""

    folder: Path
    yaml: Path
    images: int
    labels: int
    record: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.folder}: {self.images} images, {self.labels} label files; validate with data={self.yaml}"


def transform_dataset(
    data: str | os.PathLike,
    preset: str | Preset = "night",
    out: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    verbose: bool = True,
    exist_ok: bool = True,
) -> TransformResult:
    """Write a transformed copy of a dataset: every split's images through ``preset``, labels copied unchanged.

    ``out`` is a new folder (refused if it exists or lies inside the source dataset); it appears complete or not at
    all (built in a temporary folder beside it, then renamed). The yaml written beside it (``<out>.yaml``) may not
    be the source yaml nor lie in the source dataset, and replaces an existing file only with ``exist_ok``.
    ``params`` overrides preset parameters, e.g. ``{"gamma": (1.5, 2.0), "quality": 95}``. Returns the folder and
    the yaml written beside it.
    """
    from .atomic import check_output, write_text_atomic
    from .data import dataset_folders, image_files, load_data, resolve_yaml

    if out is None:
        raise OutputError("transform needs an output folder (out=).")
    recipe = get_preset(preset).with_params(params)
    seed = _check_seed(seed)
    info = load_data(data, split="val")
    root = Path(info["path"]).resolve()
    out = _check_out_folder(Path(out).expanduser(), root)
    source_yaml = resolve_yaml(Path(str(data)).expanduser())
    protected = dataset_folders(data)
    beside = check_output(out.parent / f"{out.name}.yaml", [source_yaml, data], exist_ok=exist_ok, protect=protected)  # before any work
    raw = _raw_yaml(info, data)
    images = _collect_images(raw, info, root, image_files, data)

    record = {
        "preset": recipe.name,
        "params": recipe.record(),
        "seed": seed,
        "seeding": "numpy default_rng(int(md5(path relative to the dataset root).hexdigest()[:8], 16)), or default_rng([seed, that]) when seed != 0; ranges drawn uniformly in the order listed",
        "source": str(Path(str(info.get("yaml_file", data)))),
        "source_root": str(root),
        "images": len(images),
    }
    from ultralytics.utils import TQDM

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        labels = 0
        for rel in TQDM(images, desc=f"{recipe.name} {root.name} -> {out.name}", disable=not verbose, unit="img"):
            labels += _write_one(root, tmp, rel, recipe, seed)
        _copy_lists(raw, root, tmp)
        _copy_top_level_files(root, tmp)
        inner = tmp / f"{out.name}.yaml"
        inner.write_text(_yaml_text({k: v for k, v in raw.items() if k != "path"}, record, out.name), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        _rename_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    located = {"path": str(out.resolve()), **{k: v for k, v in raw.items() if k != "path"}}
    beside = write_text_atomic(beside, _yaml_text(located, record, out.name), [source_yaml, data], exist_ok=exist_ok, protect=protected)
    return TransformResult(out, beside, len(images), labels, record)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TaskVecError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_out_folder(out: Path, root: Path) -> Path:
    """A new folder in an existing, writable folder, not inside the source dataset (and not holding it)."""
    if out.exists():
        raise OutputError(f"output folder {out} already exists; choose a new name (nothing is overwritten).")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {parent} does not exist.")
    if not os.access(parent, os.W_OK) or not (parent.stat().st_mode & 0o222):
        raise OutputError(f"cannot write {out}: no write permission in {parent}.")
    target = out.resolve()
    if target == root or root in target.parents or target in root.parents:
        raise OutputError(f"output folder {out} overlaps the source dataset {root}; write the copy somewhere else.")
    return out


def _raw_yaml(info: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """The source yaml as written (relative split paths, names, other keys), without download hooks."""
    from ultralytics.utils import YAML

    yaml_file = Path(str(info.get("yaml_file", data)))
    raw = dict(YAML.load(yaml_file))
    raw.pop("download", None)
    raw.pop("yaml_file", None)
    if "names" in raw and isinstance(raw["names"], list):
        raw["names"] = dict(enumerate(raw["names"]))
    return raw


def _collect_images(raw: Mapping[str, Any], info: Mapping[str, Any], root: Path, image_files: Callable, data: Any) -> list[str]:
    """Relative paths (posix) of every image of every split, each once, sorted."""
    rels: set[str] = set()
    for split in SPLITS:
        if not raw.get(split):
            continue
        for path in image_files(info.get("yaml_file", data), split):
            path = Path(os.path.abspath(path))
            try:
                rels.add(path.relative_to(root).as_posix())
            except ValueError:
                raise DataError(f"image {path} lies outside the dataset root {root}; transform needs every split inside the root (Ultralytics layout).") from None
    return sorted(rels)


def _write_one(root: Path, tmp: Path, rel: str, preset: Preset, seed: int) -> int:
    """Transform one image into ``tmp``; copy its label file. Returns the number of label files copied (0 or 1)."""
    from ultralytics.data.utils import img2label_paths

    src = root / rel
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"image {src} cannot be read (missing or corrupt).")
    result, _ = transform_image(image, preset, rel, seed)
    dst = tmp / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(encode(result, src.suffix, preset.quality))
    label = Path(img2label_paths([str(src)])[0])
    if not label.is_file():
        return 0
    target = tmp / label.relative_to(root)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(label, target)
    return 1


def _copy_lists(raw: Mapping[str, Any], root: Path, tmp: Path) -> None:
    """Split lists (``train: train.txt``) are copied; their relative entries still point inside the copy."""
    for split in SPLITS:
        entries = raw.get(split)
        for entry in entries if isinstance(entries, list) else [entries] if entries else []:
            src = (root / str(entry)).resolve()
            if src.suffix == ".txt" and src.is_file() and root in src.parents:
                dst = tmp / src.relative_to(root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                lines = [_relative_entry(line, root, src.parent) for line in src.read_text().splitlines()]
                dst.write_text("\n".join(lines) + "\n")


def _relative_entry(line: str, root: Path, base: Path) -> str:
    """An absolute list entry inside the source root becomes relative to the list file, so it points into the copy."""
    text = line.strip()
    if text and Path(text).is_absolute() and root in Path(text).resolve().parents:
        return "./" + os.path.relpath(Path(text).resolve(), base)
    return line


def _copy_top_level_files(root: Path, tmp: Path) -> None:
    """Licence and readme files at the dataset root travel with the copy."""
    for item in root.iterdir():
        if item.is_file() and item.suffix.lower() not in (".cache", ".yaml", ".yml") and item.stem.upper().startswith(("LICENSE", "LICENCE", "README")):
            shutil.copyfile(item, tmp / item.name)


def _rename_into_place(tmp: Path, out: Path) -> None:
    try:
        os.rename(tmp, out)
    except OSError as e:
        raise OutputError(f"cannot move the finished copy to {out} ({e.strerror}); it was created meanwhile?") from e


def _yaml_text(data: Mapping[str, Any], record: Mapping[str, Any], name: str) -> str:
    import yaml

    header = f"# {name}: written by yolo-taskvec transform ({record['preset']} preset, seed {record['seed']}); labels identical to the source.\n"
    body = {k: v for k, v in data.items() if k != "transform"}
    body["transform"] = dict(record)
    return header + yaml.safe_dump(plain(body), sort_keys=False, allow_unicode=True, width=1000)


