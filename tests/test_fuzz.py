"""Fuzzing the task-vector loader: damaged files either load as a valid vector or raise VectorFileError.

Task vectors are meant to be shared, so their loader faces untrusted bytes. Each example takes a small valid file
(a few real tensors of τ(fruit-night), dense or compressed) and flips bytes and/or truncates it; loading must never
raise anything but the plugin's own ``VectorFileError``, never crash, and never unpickle (safetensors only).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_taskvec.errors import VectorFileError
from yolo_taskvec.files import load_vector, read_header
from yolo_taskvec.taskvector import TaskVector

SMALL = ["model.0.*", "model.23.cv2.0.2.*", "model.23.one2one_cv3.0.2.bias"]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=True)


class Files(dict):
    """The valid files by kind; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"<valid files: {', '.join(f'{k} {len(v)} B' for k, v in self.items())}>"


@pytest.fixture(scope="module")
def valid_files(night_vector, tmp_path_factory) -> Files:
    """A dense and a compressed (sparse + int8) file of a few real tensors; a few KB each."""
    small = night_vector.select(SMALL)
    assert 4 <= len(small.deltas) <= 12
    folder = tmp_path_factory.mktemp("fuzz-src")
    dense = small.save(folder / "dense.safetensors")
    packed = small.save(folder / "packed.safetensors", keep=0.5, quant="int8")
    files = Files(dense=dense.read_bytes(), packed=packed.read_bytes())
    assert all(len(b) < 20_000 for b in files.values())
    for path in (dense, packed):  # both load back before any damage
        assert load_vector(path).keys() == small.keys()
    return files


def check_loads_or_refuses(data: bytes) -> None:
    """The whole contract: a valid fp32 finite vector consistent with its header, or VectorFileError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.safetensors"
        path.write_bytes(data)
        try:
            tv = load_vector(path)
        except VectorFileError as e:
            text = str(e)
            assert text and "\n" not in text and len(text) < 400, text  # one sentence for the CLI
            return
        _, encodings = read_header(path)
    assert isinstance(tv, TaskVector)
    assert set(encodings) == {f"delta/{k}" for k in tv.deltas} | {f"absolute/{k}" for k in tv.absolute}
    for name, t in [*tv.deltas.items(), *tv.absolute.items()]:
        role = "delta" if name in tv.deltas else "absolute"
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all()), name
        assert list(t.shape) == encodings[f"{role}/{name}"]["shape"], name
        assert t.numel() == math.prod(t.shape)


flips = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=6)


@SETTINGS
@given(kind=st.sampled_from(["dense", "packed"]), flips=flips, cut=st.one_of(st.none(), st.floats(0, 1)))
def test_random_flips_and_truncations(valid_files, kind, flips, cut):
    data = bytearray(valid_files[kind])
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    if cut is not None:
        data = data[: int(cut * len(data))]
    check_loads_or_refuses(bytes(data))


@SETTINGS
@given(kind=st.sampled_from(["dense", "packed"]), offset=st.integers(0, 7), value=st.integers(0, 255), cut=st.integers(0, 400))
def test_header_length_and_early_truncation(valid_files, kind, offset, value, cut):
    """The 8-byte header length and the JSON header itself are where a parser is most exposed."""
    data = bytearray(valid_files[kind])
    data[offset] = value
    check_loads_or_refuses(bytes(data[: len(data) - cut]))


def load_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.safetensors"
        path.write_bytes(data)
        return load_vector(path)


def test_fuzz_targets_are_valid_and_damage_is_detected(valid_files):
    """The contract holds on the untouched files, and one flipped bit anywhere is refused, not loaded as-is."""
    for data in valid_files.values():
        check_loads_or_refuses(data)
    header = 8 + int.from_bytes(valid_files["dense"][:8], "little")
    in_json, in_data = bytearray(valid_files["dense"]), bytearray(valid_files["dense"])
    in_json[10] ^= 0xFF
    in_data[header + 100] ^= 0x01  # one bit of one fp32 value: safetensors alone would load it silently
    with pytest.raises(VectorFileError, match="is not a valid safetensors file"):
        load_bytes(bytes(in_json))
    with pytest.raises(VectorFileError, match="does not match the sha256 recorded when it was saved"):
        load_bytes(bytes(in_data))


# ----------------------------------------------------------------------------------------------- metadata
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
META_FIELDS = ["name", "base_fingerprint", "names", "task", "parts", "base_yaml", "target_yaml", "compression", "source"]
YAML_PATHS = [("nc",), ("activation",), ("scale",), ("scales",), ("backbone", 0), ("backbone", 0, 2), ("backbone", 0, 3), ("head", -1, 2), ("head", -1, 0), ("head", -1, 1), ("channels",)]


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _rewrite_meta(data: bytes, change) -> bytes:
    """The file with its ``meta`` JSON changed and its checksum recomputed (a hostile writer, not bit rot)."""
    import json

    from safetensors.torch import load, save

    from yolo_taskvec.files import content_digest

    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    metadata = dict(header["__metadata__"])
    meta = json.loads(metadata["meta"])
    change(meta)
    metadata["meta"] = json.dumps(meta)
    tensors = load(data)
    metadata["sha256"] = content_digest(metadata, tensors)
    return save(tensors, metadata=metadata)


@SETTINGS
@given(kind=st.sampled_from(["dense", "packed"]), field=st.sampled_from(META_FIELDS), value=json_values)
def test_metadata_fields_of_any_type(valid_files, kind, field, value):
    """Any JSON value in any metadata field the library reads: a valid vector or one VectorFileError sentence."""
    check_loads_or_refuses(_rewrite_meta(valid_files[kind], lambda meta: meta.__setitem__(field, value)))


@SETTINGS
@given(which=st.sampled_from(["base_yaml", "target_yaml"]), path=st.sampled_from(YAML_PATHS), value=json_values)
def test_architecture_yaml_values_of_any_type(valid_files, which, path, value):
    """Any JSON value anywhere the model builder looks in an architecture yaml: loads (and is then a yaml the schema
    accepts) or one VectorFileError sentence; nothing is built while loading."""

    def change(meta):
        meta.setdefault("target_yaml", meta["base_yaml"])
        _set(meta[which], path, value)

    check_loads_or_refuses(_rewrite_meta(valid_files["packed"], change))
