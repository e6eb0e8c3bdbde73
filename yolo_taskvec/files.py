"""Task-vector files: safetensors with JSON metadata. Loading never unpickles anything.

Layout of a file:

* tensors named ``<role>/<key>`` (role ``delta`` or ``absolute``), or ``<role>/<key>#<field>`` for encoded
  (compressed) tensors, e.g. ``delta/model.0.conv.weight#values``;
* metadata ``format = yolo-taskvec``, ``format_version``, ``meta`` (JSON: name, base fingerprint, base yaml,
  target yaml, task, class names, parts, ultralytics version, dtype) and ``encodings`` (JSON: per tensor, its
  role, shape and how it is stored).

Format 2 (``pack=True``, what ``compress`` writes) stores the same fields packed into one tensor per storage dtype
with a compressed index instead of ``encodings`` (see ``packing.py``); format 1 files are read as before.

Dense tensors are stored as fp32, fp16 or bf16; ``compress.py`` adds sparse, low-rank and int8 encodings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import packing
from .atomic import atomic_output
from .errors import MismatchError, VectorFileError, first_line
from .limits import MAX_MODEL_VALUES, MAX_TENSOR_VALUES, check_allocation
from .plain import plain
from .schema import check_vector_meta
from .taskvector import TaskVector

FORMAT = "yolo-taskvec"
FORMAT_VERSION = 2  # the newest format read; plain files are written as 1, packed ones as 2
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ROLES = ("delta", "absolute")
CHECKSUM = "sha256"
MODEL_FORMAT = "yolo-taskvec-model"  # a whole model converted to safetensors (convert.py), not a task vector
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header
Shapes = Mapping[str, tuple[int, ...]]

Encoder = Callable[[str, torch.Tensor], tuple[dict[str, torch.Tensor], dict[str, Any]]]
Decoder = Callable[[dict[str, torch.Tensor], Mapping[str, Any], tuple[int, ...]], torch.Tensor]


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise VectorFileError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def dense_encoder(dtype: str = "fp32") -> Encoder:
    """Store each tensor whole, cast to ``dtype``."""
    torch_dtype = check_dtype(dtype)

    def encode(key: str, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if torch_dtype is torch.float16 and t.numel() and float(t.abs().max()) > torch.finfo(torch.float16).max:
            raise VectorFileError(f"{key} holds values beyond the fp16 range; save with dtype=fp32 or bf16.")
        return {"": t.to(torch_dtype).contiguous()}, {"kind": "dense", "dtype": dtype}

    return encode


def _decode_dense(fields: dict[str, torch.Tensor], info: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
    return fields[""].float().reshape(shape)


DECODERS: dict[str, Decoder] = {"dense": _decode_dense}
FIELD_DTYPES: dict[str, tuple[torch.dtype, ...]] = {"dense": tuple(DTYPES.values())}


def _name(role: str, key: str, field: str) -> str:
    return f"{role}/{key}#{field}" if field else f"{role}/{key}"


def save_vector(tv: TaskVector, path: str | os.PathLike, *, dtype: str = "fp32", encoder: Encoder | None = None, extra_meta: Mapping[str, Any] | None = None, inputs: tuple = (), pack: bool = False, exist_ok: bool = True) -> Path:
    """Write ``tv`` to a safetensors file atomically. ``encoder`` defaults to dense ``dtype``; ``pack``: format 2;
    ``exist_ok=False`` refuses to replace an existing file (``atomic.check_output``)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() == ".pt":
        raise VectorFileError(f"cannot save a task vector as {path}: .pt names are for checkpoints; use .safetensors.")
    sources = (tv.meta.get(k) for k in ("source", "base_source", "source_file"))
    inputs = (*inputs, *(s for s in sources if isinstance(s, str) and s))  # never overwrite what it came from
    encoder = encoder or dense_encoder(dtype)
    tensors: dict[str, torch.Tensor] = {}
    encodings: dict[str, dict[str, Any]] = {}
    for role, mapping in (("delta", tv.deltas), ("absolute", tv.absolute)):
        for key in sorted(mapping):
            t = mapping[key].detach().float().cpu()
            if not bool(torch.isfinite(t).all()):
                raise VectorFileError(f"cannot save: {role} tensor {key} holds NaN or Inf values.")
            fields, info = encoder(key, t) if role == "delta" else dense_encoder("fp32" if dtype not in DTYPES else dtype)(key, t)
            for field, value in fields.items():
                tensors[_name(role, key, field)] = value.contiguous()
            encodings[f"{role}/{key}"] = {**info, "role": role, "shape": list(t.shape)}
    meta = {**plain(tv.meta), **plain(dict(extra_meta or {})), "dtype": dtype}
    check_vector_meta(meta, f"cannot save {path}", VectorFileError)  # what loading checks: never write a file it refuses
    metadata = {"format": FORMAT, "format_version": "1", "meta": json.dumps(meta), "encodings": json.dumps(encodings)}
    if pack:
        tensors, index = packing.pack(tensors, encodings)
        metadata = {"format": FORMAT, "format_version": str(packing.VERSION), "meta": json.dumps(meta), packing.INDEX: index}
    metadata[CHECKSUM] = content_digest(metadata, tensors)
    with atomic_output(path, inputs, exist_ok=exist_ok, verify=_verify_safetensors) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def _verify_safetensors(path: Path) -> None:
    """The written file is one complete safetensors file: its header parses and its data ends where the file ends."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError("its header is incomplete")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError("its header is not JSON") from e
    ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        raise ValueError("its data does not end where the file ends")


def content_digest(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata (without the checksum itself) and every tensor's name, dtype, shape and bytes.

    Stored under ``sha256`` and verified on load: safetensors has no checksum of its own, so without it a flipped
    bit in the data would load silently as a slightly different vector.
    """
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != CHECKSUM):
        h.update(f"{key}={metadata[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()




def read_header(path: str | os.PathLike, *, expected_shapes: Shapes | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(meta, encodings)`` of a task-vector file, without reading tensors (both validated, see ``load_vector``)."""
    from safetensors import safe_open

    path = _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            names = set(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged header
        raise VectorFileError(f"{path} is not a valid safetensors file ({first_line(e)}).") from e
    return _parse_metadata(path, metadata, names, expected_shapes)


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise VectorFileError(f"task-vector file {path} not found.")
    if path.is_dir():
        raise VectorFileError(f"task-vector path {path} is a directory, not a .safetensors file.")
    size = path.stat().st_size
    if size == 0:
        raise VectorFileError(f"task-vector file {path} is empty (0 bytes).")
    if path.suffix.lower() == ".pt":
        raise VectorFileError(f"{path} is a .pt checkpoint, not a task-vector file; extract a vector first (yolo-taskvec extract).")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise VectorFileError(f"cannot read task-vector file {path}: {(e.strerror or type(e).__name__).lower()}.") from e
    if size > 4 * MAX_MODEL_VALUES + MAX_HEADER_BYTES:
        raise VectorFileError(f"task-vector file {path} is {size / 1e9:.1f} GB, larger than a vector of any YOLO model ({4 * MAX_MODEL_VALUES / 1e9:.1f} GB in fp32).")
    check_allocation(size, f"reading {path}", VectorFileError)
    return path




def _parse_metadata(path: Path, metadata: Mapping[str, str], names: set[str], expected_shapes: Shapes | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if metadata.get("format") == MODEL_FORMAT:
        raise VectorFileError(f"{path} is a whole model converted to safetensors, not a task vector; use it as a model (base=, models=).")
    if metadata.get("format") != FORMAT:
        raise VectorFileError(f"{path} is a safetensors file but not a yolo-taskvec task vector (no '{FORMAT}' metadata).")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError as e:
        raise VectorFileError(f"{path} has a corrupted format_version in its metadata.") from e
    if version > FORMAT_VERSION:
        raise VectorFileError(f"{path} uses task-vector format {version}; this yolo-taskvec reads up to {FORMAT_VERSION}, upgrade it.")
    if not isinstance(metadata.get(CHECKSUM), str):
        raise VectorFileError(f"{path} has no {CHECKSUM} checksum in its metadata; yolo-taskvec records one in every file, so this one was altered after it was saved.")
    packed = version >= packing.VERSION
    try:
        meta = json.loads(metadata["meta"])
        encodings = json.loads(metadata["encodings"]) if not packed else None
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as e:
        raise VectorFileError(f"{path} has corrupted metadata (the 'meta' or 'encodings' JSON is unreadable).") from e
    if packed:
        try:
            encodings = packing.read_index(metadata.get(packing.INDEX))
        except (ValueError, RecursionError) as e:
            raise VectorFileError(f"{path} has a corrupted packed index ({first_line(e)}).") from e
    if not isinstance(meta, dict) or not isinstance(encodings, dict):
        raise VectorFileError(f"{path} has corrupted metadata ('meta' and 'encodings' must be JSON objects).")
    check_vector_meta(meta, str(path), VectorFileError)
    expected: set[str] = set()
    total = 0
    for name, info in encodings.items():
        role, _, key = name.partition("/")
        if role not in ROLES or not key or not isinstance(info, dict) or info.get("kind") not in DECODERS:
            raise VectorFileError(f"{path} has a corrupted encoding entry for {name[:80]!r}.")
        shape = info.get("shape")
        if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise VectorFileError(f"{path} has a corrupted shape for {name[:80]}.")
        numel = math.prod(shape)
        if numel > MAX_TENSOR_VALUES:
            raise VectorFileError(f"{path} declares {name} with shape {shape}, larger than any YOLO tensor; the file is corrupt or malicious.")
        total += numel
        if expected_shapes is not None and role == "delta":
            _check_against_base(path, key, shape, expected_shapes)
        if packed:
            continue
        expected |= {n for n in names if n == name or n.startswith(name + "#")}
        if not any(n == name or n.startswith(name + "#") for n in names):
            raise VectorFileError(f"{path} is missing tensor {name} listed in its metadata.")
    if total > MAX_MODEL_VALUES:
        raise VectorFileError(f"{path} declares {total:,} values in all, more than a vector of any YOLO model holds; the file is corrupt or malicious.")
    check_allocation(4 * total, f"decoding {path} ({total:,} values)", VectorFileError)
    if packed:
        expected = packing.blob_names(encodings)
        if not expected <= names:
            raise VectorFileError(f"{path} is missing tensor {sorted(expected - names)[0]} listed in its packed index.")
    extra = sorted(names - expected)
    if extra:
        raise VectorFileError(f"{path} holds {len(extra)} tensors not listed in its metadata (e.g. {extra[0]}).")
    return meta, encodings


def _check_against_base(path: Path, key: str, shape: list[int], base: Shapes) -> None:
    """A delta must have the shape of the base tensor it is added to (checked before anything is decoded)."""
    if key not in base:
        raise MismatchError(f"{path}: its delta {key} has no counterpart in the base.")
    if tuple(base[key]) != tuple(shape):
        raise MismatchError(f"{path}: its delta {key} declares shape {tuple(shape)}, the base's tensor has {tuple(base[key])}.")


def read_snapshot(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file from ONE read of its bytes.

    ``safe_open`` re-opens the file by name for the tensor data, so a file replaced in between (another process
    saving the same path) pairs one version's header with the other's data; one read cannot. Raises whatever
    safetensors raises for a damaged file.
    """
    from safetensors.torch import load

    data = Path(path).read_bytes()
    tensors = load(data)  # validates the header, offsets, dtypes and shapes
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("its __metadata__ is not a mapping of strings")
    return metadata, tensors


def load_vector(path: str | os.PathLike, cls: type[TaskVector] = TaskVector, *, expected_shapes: Shapes | None = None) -> TaskVector:
    """Read a task-vector file (dense or compressed) into a dense fp32 TaskVector; checks every tensor.

    Before anything is decoded: the metadata's types and architecture yamls (``schema``), every declared shape and
    their total against fixed caps and the memory available, and, with ``expected_shapes`` (the base's state-dict
    shapes), every delta's shape against the base tensor it will be added to.
    """
    path = _check_path(path)
    try:
        metadata, raw = read_snapshot(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise VectorFileError(f"{path} is not a valid safetensors file ({first_line(e)}).") from e
    recorded = metadata.get(CHECKSUM)
    if isinstance(recorded, str) and recorded != content_digest(metadata, raw):  # a missing one: _parse_metadata
        raise VectorFileError(f"{path} is corrupt: its content does not match the sha256 recorded when it was saved (damaged in transfer?).")
    meta, encodings = _parse_metadata(path, metadata, set(raw), expected_shapes)
    deltas: dict[str, torch.Tensor] = {}
    absolute: dict[str, torch.Tensor] = {}
    if int(metadata["format_version"]) >= packing.VERSION:  # validated by _parse_metadata
        try:
            raw = packing.unpack(raw, encodings)
        except ValueError as e:
            raise VectorFileError(f"{path} does not match its packed index ({first_line(e)}).") from e
    for name, info in encodings.items():
        prefix = name + "#"
        fields = {n[len(prefix):] if n.startswith(prefix) else "": t for n, t in raw.items() if n == name or n.startswith(prefix)}
        try:
            tensor = _decode(path, name, fields, info)
        except VectorFileError:
            raise
        except Exception as e:  # noqa: BLE001 - fields inconsistent with their encoding
            raise VectorFileError(f"{path}: tensor {name} cannot be decoded ({first_line(e)}).") from e
        role, _, key = name.partition("/")
        (deltas if role == "delta" else absolute)[key] = tensor
    return cls(deltas, absolute, meta)


def _decode(path: Path, name: str, fields: dict[str, torch.Tensor], info: Mapping[str, Any]) -> torch.Tensor:
    kind = info["kind"]
    allowed = FIELD_DTYPES.get(kind)
    for field, t in fields.items():
        if allowed is not None and field == "" and t.dtype not in allowed:
            raise VectorFileError(f"{path}: tensor {name} has dtype {str(t.dtype).replace('torch.', '')}, expected one of fp32, fp16, bf16.")
    shape = tuple(info["shape"])
    try:
        tensor = DECODERS[kind](fields, info, shape)
    except VectorFileError:
        raise
    except Exception as e:  # noqa: BLE001 - inconsistent fields of an encoding
        raise VectorFileError(f"{path}: tensor {name} does not match its recorded encoding ({first_line(e)}).") from e
    if tuple(tensor.shape) != shape:
        raise VectorFileError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, its metadata says {shape}.")
    if not bool(torch.isfinite(tensor).all()):
        raise VectorFileError(f"{path}: tensor {name} holds NaN or Inf values.")
    return tensor


def file_info(path: str | os.PathLike) -> dict[str, Any]:
    """Size and storage summary of a task-vector file (for ``info``)."""
    meta, encodings = read_header(path)
    kinds: dict[str, int] = {}
    for info in encodings.values():
        kinds[info["kind"]] = kinds.get(info["kind"], 0) + 1
    return {"path": str(path), "bytes": Path(path).stat().st_size, "meta": meta, "encodings": kinds, "tensors": len(encodings)}
