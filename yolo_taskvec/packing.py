"""Packed layout of task-vector files (format 2): few tensors, a compressed index, a small header.

A compressed vector of a YOLO26n has about 600 tensors and 700 stored fields; safetensors names each one in its
JSON header and the ``encodings`` metadata describes each again, about 155 KB in all (3 % of the fp16 checkpoint,
more than the biases and BatchNorm statistics together). Packed, the file holds one 1-D tensor per storage dtype
(``blob/F16``, ``blob/U8``, ...), the fields laid end to end in index order, and the metadata holds
``index``: base64 of zlib-compressed JSON, the ``encodings`` mapping with each entry's ``fields`` as
``[field, dtype, shape]`` (offsets are implicit: each field takes the next ``prod(shape)`` elements of its blob,
and every blob must be consumed exactly). The header shrinks to a few KB; the checksum of ``files.py`` covers the
metadata and the blobs as it does any file. Unpacking rebuilds the ``role/key#field`` tensors of the plain
layout, so the decoders are the same.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

import torch

from .limits import MAX_TENSOR_VALUES

VERSION = 2  # format_version of packed files; plain files stay version 1
INDEX = "index"
BLOB = "blob/"
BLOB_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I8": torch.int8, "U8": torch.uint8}
CODES = {v: k for k, v in BLOB_DTYPES.items()}
MAX_INDEX_BYTES = 64 << 20  # decompressed index; a YOLO26x vector needs well under 1 MB
MAX_FIELD_VALUES = MAX_TENSOR_VALUES  # a stored field is never larger than the tensor it encodes


def pack(tensors: Mapping[str, torch.Tensor], encodings: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, torch.Tensor], str]:
    """Blobs and the ``index`` metadata string for the plain-layout ``tensors`` (``role/key[#field]``)."""
    by_entry: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        entry, _, field = name.partition("#")
        by_entry.setdefault(entry, {})[field] = t
    chunks: dict[str, list[torch.Tensor]] = {}
    index: dict[str, dict[str, Any]] = {}
    for entry, info in encodings.items():
        placed = []
        for field, t in by_entry.get(entry, {}).items():
            code = CODES.get(t.dtype)
            if code is None:
                raise ValueError(f"field {entry}#{field} has dtype {t.dtype}, which the packed layout does not store")
            chunks.setdefault(code, []).append(t.detach().cpu().contiguous().reshape(-1))
            placed.append([field, code, list(t.shape)])
        index[entry] = {**info, "fields": placed}
    blobs = {BLOB + code: torch.cat(parts) for code, parts in sorted(chunks.items())}
    text = json.dumps(index, separators=(",", ":"))
    return blobs, base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")


def read_index(text: str | None) -> dict[str, dict[str, Any]]:
    """The encodings of a packed file from its ``index`` string; ValueError when it is damaged."""
    if not isinstance(text, str):
        raise ValueError("it has no packed index")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError) as e:
        raise ValueError("its packed index is not base64") from e
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(data, MAX_INDEX_BYTES)
    except zlib.error as e:
        raise ValueError("its packed index does not decompress") from e
    if inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
        raise ValueError("its packed index is truncated, oversized or followed by other bytes")
    try:
        index = json.loads(raw)
    except (UnicodeError, json.JSONDecodeError) as e:
        raise ValueError("its packed index is not JSON") from e
    if not isinstance(index, dict) or not all(isinstance(v, dict) for v in index.values()):
        raise ValueError("its packed index is not a mapping of entries")
    for name, info in index.items():
        _check_fields(name, info.get("fields"))
    return index


def _check_fields(name: str, fields: Any) -> None:
    if not isinstance(fields, list) or not fields:
        raise ValueError(f"entry {name} lists no fields")
    seen = set()
    for item in fields:
        ok = isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and item[1] in BLOB_DTYPES and isinstance(item[2], list)
        if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in item[2]) or "#" in item[0]:
            raise ValueError(f"entry {name} has a malformed field {item!r}"[:200])
        if item[0] in seen:
            raise ValueError(f"entry {name} lists field {item[0]!r} twice")
        if math.prod(item[2]) > MAX_FIELD_VALUES:
            raise ValueError(f"field {name}#{item[0]} declares an implausible shape {item[2]}")
        seen.add(item[0])


def blob_names(index: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The blob tensors a packed file must hold."""
    return {BLOB + item[1] for info in index.values() for item in info["fields"]}


def unpack(blobs: Mapping[str, torch.Tensor], index: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """The plain-layout tensors (views into the blobs); ValueError unless the blobs match the index exactly."""
    expected = blob_names(index)
    if set(blobs) != expected:
        extra, missing = sorted(set(blobs) - expected), sorted(expected - set(blobs))
        raise ValueError(f"it holds tensor {extra[0]} not in its index" if extra else f"it lacks tensor {missing[0]}")
    for name, t in blobs.items():
        if t.dtype != BLOB_DTYPES[name[len(BLOB):]] or t.ndim != 1:
            raise ValueError(f"tensor {name} is not a 1-D {name[len(BLOB):]} tensor")
    offsets = dict.fromkeys(blobs, 0)
    out: dict[str, torch.Tensor] = {}
    for entry, info in index.items():
        for field, code, shape in info["fields"]:
            blob = BLOB + code
            n = math.prod(shape)
            start = offsets[blob]
            if start + n > blobs[blob].numel():
                raise ValueError(f"field {entry}#{field} runs past the end of {blob}")
            out[f"{entry}#{field}" if field else entry] = blobs[blob][start : start + n].view(shape).clone()  # no view keeps the whole blob alive
            offsets[blob] = start + n
    for blob, used in offsets.items():
        if used != blobs[blob].numel():
            raise ValueError(f"{blob} holds {blobs[blob].numel() - used} values not in its index")
    return out
