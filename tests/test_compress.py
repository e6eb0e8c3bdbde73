"""Compact task-vector files: top-k, low-rank, quantization, fp16/bf16; transparent loading; validation; CLI."""

from __future__ import annotations

import base64
import json
import math
import zlib

import pytest
import torch
from conftest import data_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from yolo_taskvec import TaskVector, files, packing
from yolo_taskvec.cli import main
from yolo_taskvec.compress import (
    DECODERS,
    Options,
    compressible,
    encode_tensor,
    gap_code,
    gap_decode,
    global_top_indices,
    keep_count,
    pack_bits,
    unpack_bits,
)
from yolo_taskvec.errors import TaskVecError, VectorFileError
from yolo_taskvec.files import load_vector, read_header

SMALL = ["model.2.*", "model.8.m.0.*", "model.23.cv2.0.*"]  # 3x3 convs, 1x1 convs, biases, BN: a few seconds to compress
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small(night_vector) -> TaskVector:
    tv = night_vector.select(SMALL)
    assert 20 <= len(tv.deltas) <= 80 and any(compressible(k, v) for k, v in tv.deltas.items())
    return tv


def weights(tv: TaskVector) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tv.deltas.items() if compressible(k, v)}


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------- round trips
def test_top_k_per_tensor_keeps_exactly_the_largest_entries(small, tmp_path):
    back = TaskVector.load(small.save(tmp_path / "k.safetensors", keep=0.1))
    _, enc = read_header(tmp_path / "k.safetensors")
    for key, d in small.deltas.items():
        got = back.deltas[key]
        if not compressible(key, d):  # 1-D tensors and BN statistics: dense and exact
            assert enc[f"delta/{key}"]["kind"] == "dense" and torch.equal(got, d), key
            continue
        k = keep_count(d.numel(), 0.1)
        nz = got != 0
        assert enc[f"delta/{key}"]["kind"] == "sparse" and enc[f"delta/{key}"]["kept"] == k
        assert int(nz.sum()) <= k and torch.equal(got[nz], d[nz]), key  # fp32 values stored exactly
        threshold = d.abs().flatten().topk(k).values.min()
        assert bool((d[nz].abs() >= threshold).all()) and bool((d[~nz].abs() <= threshold).all()), key


def test_top_k_global_keeps_the_fraction_overall(small, tmp_path):
    back = TaskVector.load(small.save(tmp_path / "g.safetensors", keep=0.05, scope="global", dtype="fp16"))
    w = weights(small)
    total = sum(v.numel() for v in w.values())
    kept = sum(int((back.deltas[k] != 0).sum()) for k in w)
    assert kept == keep_count(total, 0.05)
    threshold = torch.cat([v.abs().flatten() for v in w.values()]).topk(kept).values.min()
    for k in w:  # fp16 rounding may move a value by one ulp; the selection itself is global
        assert bool((w[k][back.deltas[k] == 0].abs() <= threshold).all()), k
    meta = read_header(tmp_path / "g.safetensors")[0]["compression"]
    assert meta["scope"] == "global" and meta["keep"] == 0.05


def test_low_rank_is_the_truncated_svd(small, tmp_path):
    back = TaskVector.load(small.save(tmp_path / "r.safetensors", rank=4))
    _, enc = read_header(tmp_path / "r.safetensors")
    factored = 0
    for key, d in weights(small).items():
        m = d.reshape(d.shape[0], -1)
        info = enc[f"delta/{key}"]
        if info["kind"] == "dense":  # factors would not be smaller: stored whole
            assert 4 * sum(m.shape) >= m.numel() and torch.equal(back.deltas[key], d)
            continue
        factored += 1
        v, s, uh = torch.linalg.svd(m.T, full_matrices=False)  # m = uh.T · diag(s) · v.T (tall is faster)
        best = (uh.T[:, :4] * s[:4]) @ v.T[:4]
        assert info["kind"] == "lowrank" and info["rank"] == 4
        assert torch.allclose(back.deltas[key].reshape(m.shape), best, atol=1e-6, rtol=1e-4), key
    assert factored >= 5


def test_energy_threshold_picks_the_smallest_rank(small, tmp_path):
    _, enc = read_header(small.save(tmp_path / "e.safetensors", energy=0.8, rank=64))
    for key, d in weights(small).items():
        info = enc[f"delta/{key}"]
        if info["kind"] != "lowrank":
            continue
        s2 = torch.linalg.svdvals(d.reshape(d.shape[0], -1)).double() ** 2
        share = torch.cumsum(s2, 0) / s2.sum()
        r = info["rank"]
        assert r <= 64 and share[r - 1] >= 0.8 - 1e-9 and (r == 1 or share[r - 2] < 0.8), key


@pytest.mark.parametrize("quant, bound", [("int8", 0.01), ("int4", 0.12), ("int2", 0.4), ("int1", 0.75)])
def test_quantization_error_and_size(small, tmp_path, quant, bound):
    dense = small.save(tmp_path / "d.safetensors", dtype="fp16")
    path = small.save(tmp_path / f"{quant}.safetensors", quant=quant, dtype="fp16")
    back = TaskVector.load(path)
    bits = int(quant[3:])
    w = weights(small)
    for key, d in w.items():
        assert rel_error(back.deltas[key], d) < bound, key
    n_w, n_all = sum(v.numel() for v in w.values()), small.numel()
    payload = n_w * bits / 8 + 2 * (n_all - n_w)
    assert path.stat().st_size < 0.95 * dense.stat().st_size and path.stat().st_size < payload + 80_000
    meta = read_header(path)[0]["compression"]
    assert meta["quant"] == quant and meta["kinds"]["quant"] == len(w) and 0 < meta["relative_error"] < bound


def test_low_bit_quantization_is_unbiased_not_shrinking(small, tmp_path):
    """Mid-rise levels never zero an entry, and the error does not shrink the vector (unlike top-k / low-rank)."""
    back = TaskVector.load(small.save(tmp_path / "q2.safetensors", quant="int2"))
    for key, d in weights(small).items():
        got = back.deltas[key]
        assert bool((got != 0).all()) or bool((d == 0).all()), key
        assert 0.8 < float(got.norm() / d.norm()) < 1.25, key


def test_combinations_and_dtypes(small, tmp_path):
    cases = {
        "lowrank+sparse": dict(energy=0.5, keep=0.05, quant="int8", dtype="fp16"),
        "sparse": dict(keep=0.2, quant="int4", dtype="bf16"),
        "lowrank": dict(rank=8, quant="int8", dtype="int8"),  # dtype=int8: quant=int8, fp16 for the rest
    }
    for kind, opts in cases.items():
        path = small.save(tmp_path / f"{kind}.safetensors", **opts)
        back = TaskVector.load(path)
        meta, enc = read_header(path)
        assert any(e["kind"] == kind for e in enc.values()), kind
        assert back.keys() == small.keys() and all(back.deltas[k].dtype == torch.float32 for k in back.deltas)
        dense_dtype = {"fp16": "F16", "bf16": "BF16", "int8": "F16"}[opts["dtype"]]
        bn = next(e for name, e in enc.items() if name.endswith("bn.running_var"))
        assert [f[1] for f in bn["fields"]] == [dense_dtype]
        for key, d in small.deltas.items():
            if not compressible(key, d):
                assert torch.allclose(back.deltas[key], d, rtol=1e-2, atol=1e-4), key
    alias = read_header(small.save(tmp_path / "alias.safetensors", dtype="int8"))[0]["compression"]  # the spelling
    assert alias["quant"] == "int8" and alias["dtype"] == "fp16" and alias["kinds"]["quant"] == len(weights(small))
    lr = read_header(tmp_path / "lowrank+sparse.safetensors")[0]["compression"]
    assert lr["label"].startswith("low-rank energy 0.5 + keep 0.05") and lr["tensor_bytes"] < lr["dense_fp16_bytes"]


def test_residual_makes_low_rank_plus_sparse_better_than_low_rank(small, tmp_path):
    low = TaskVector.load(small.save(tmp_path / "l.safetensors", energy=0.5))
    both = TaskVector.load(small.save(tmp_path / "ls.safetensors", energy=0.5, keep=0.1))
    for key, d in weights(small).items():
        assert rel_error(both.deltas[key], d) <= rel_error(low.deltas[key], d) + 1e-6, key


def test_carried_tensors_and_meta_survive(night_vector, tmp_path):
    tv = night_vector.select(["model.23.cv2.0.*"])
    carried = TaskVector(tv.deltas, {"model.23.cv3.0.2.weight": torch.randn(3, 64, 1, 1)}, {**tv.meta, "target_yaml": tv.meta["base_yaml"]})
    back = TaskVector.load(carried.save(tmp_path / "c.safetensors", keep=0.3, quant="int8", dtype="fp16"))
    assert back.absolute.keys() == carried.absolute.keys()
    assert torch.allclose(back.absolute["model.23.cv3.0.2.weight"], carried.absolute["model.23.cv3.0.2.weight"], rtol=1e-3, atol=1e-3)
    assert back.meta["base_fingerprint"] == tv.meta["base_fingerprint"] and back.meta["compression"]["keep"] == 0.3


# ----------------------------------------------------------------------------------------------- real use
def test_compressed_vector_applies_merges_and_scores_like_the_dense_one(base_model, night_vector, tmp_path):
    """int8 keeps the reference merge's mAP; a compressed file goes through apply/merge like any vector file."""
    from yolo_taskvec import merge

    path = night_vector.save(tmp_path / "night-int8.safetensors", quant="int8", dtype="fp16")
    assert path.stat().st_size < 0.3 * night_vector.numel() * 4
    merged = merge(base_model, [path], scale=0.5)
    direct = TaskVector.load(path).apply(base_model, scale=0.5)
    for (k, a), b in zip(merged.model.state_dict().items(), direct.model.state_dict().values()):
        assert torch.equal(a, b), k
    night = merged.val(data=str(data_yaml("fruit80-night.yaml")), imgsz=320, batch=16, plots=False, verbose=False, device="cpu").box.map
    assert abs(night - 0.443) <= 0.01, night


# ----------------------------------------------------------------------------------------------- properties
@PROPS
@given(st.lists(st.integers(0, 5000), max_size=60, unique=True), st.integers(0, 3000))
def test_gap_code_round_trip(positions, extra):
    idx = torch.tensor(sorted(positions), dtype=torch.int64)
    gaps = gap_code(idx)
    assert gaps.dtype == torch.uint8 and int((gaps != 0).sum()) == idx.numel()
    assert torch.equal(gap_decode(gaps), idx)
    assert gaps.numel() <= idx.numel() + (int(idx.max()) + 1) // 255 + 1 if idx.numel() else gaps.numel() == 0


@PROPS
@given(st.integers(1, 8), st.lists(st.integers(0, 255), min_size=0, max_size=70))
def test_pack_bits_round_trip(bits, values):
    codes = torch.tensor([v % (1 << bits) for v in values], dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack_bits(packed, codes.numel(), bits).to(torch.uint8), codes)


shapes = st.sampled_from([(4, 3), (8, 2, 3, 3), (1, 5), (16, 4, 1, 1), (3, 7, 2)])
options = st.fixed_dictionaries({}, optional={
    "keep": st.sampled_from([0.01, 0.3, 1.0]),
    "rank": st.integers(1, 3),
    "energy": st.sampled_from([0.3, 0.99]),
    "quant": st.sampled_from(["int8", "int4", "int3", "int1"]),
    "dtype": st.sampled_from(["fp32", "fp16", "bf16"]),
})


@PROPS
@given(shapes, options, st.integers(0, 2**16), st.floats(1e-4, 10.0))
def test_any_option_decodes_to_a_close_dense_tensor(shape, opts, seed, magnitude):
    """Every combination decodes (through the registered decoder) to a finite tensor of the right shape, and
    exactly-representable settings reproduce the input."""
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * magnitude
    o = Options.make(**opts)
    fields, info = encode_tensor("model.1.conv.weight", t, o)
    got = DECODERS[info["kind"]](fields, info, shape)
    assert got.shape == t.shape and got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert info["error"] == pytest.approx(rel_error(got, t), rel=1e-3, abs=1e-6) if "error" in info else True
    if o.keep == 1.0 and o.quant is None and o.dtype == "fp32":
        assert torch.allclose(got, t, atol=1e-5 * magnitude)
    if o.keep is None and not o.low_rank and o.quant == "int8":
        assert rel_error(got, t) < 0.02


@PROPS
@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 300), min_size=1), st.sampled_from([0.001, 0.1, 0.5, 1.0]))
def test_global_selection_is_exact(sizes, fraction):
    g = torch.Generator().manual_seed(len(sizes))
    flat = {k: torch.randn(n, generator=g) for k, n in sizes.items()}
    kept = global_top_indices(flat, fraction)
    total = sum(sizes.values())
    assert sum(v.numel() for v in kept.values()) == keep_count(total, fraction)
    chosen = torch.cat([flat[k][kept[k]].abs() for k in flat])
    rest = torch.cat([flat[k][torch.ones(sizes[k], dtype=torch.bool).index_fill_(0, kept[k], False)].abs() for k in flat])
    assert rest.numel() == 0 or float(chosen.min()) >= float(rest.max())


# ----------------------------------------------------------------------------------------------- validation
def resign(path, tensors: dict, metadata: dict) -> None:
    """Write a consistent (checksummed) file with damaged content: what a malicious or buggy writer could produce."""
    if getattr(files, "CHECKSUM", None) in metadata:
        metadata[files.CHECKSUM] = files.content_digest(metadata, tensors)
    save_file(tensors, str(path), metadata=metadata)


def load_parts(path) -> tuple[dict, dict]:
    """A packed file's content in the plain layout (format 1): one tensor per field, ``encodings`` metadata."""
    with safe_open(str(path), "pt") as f:
        blobs, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    index = packing.read_index(metadata.pop(packing.INDEX))
    encodings = {name: {k: v for k, v in info.items() if k != "fields"} for name, info in index.items()}
    metadata.update(format_version="1", encodings=json.dumps(encodings))
    return packing.unpack(blobs, index), metadata


@pytest.fixture(scope="module")
def packed(small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("packed")
    return {
        "sparse": small.save(folder / "s.safetensors", keep=0.1, quant="int4"),
        "mask": small.save(folder / "m.safetensors", keep=0.5),
        "lowrank": small.save(folder / "l.safetensors", rank=4, quant="int8"),
        "quant": small.save(folder / "q.safetensors", quant="int2"),
    }


def first(tensors: dict, suffix: str) -> str:
    return next(k for k in sorted(tensors) if k.endswith(suffix))


DAMAGE = {
    "index past the end": ("sparse", lambda t, e: t.__setitem__(first(t, "#gaps"), torch.cat([t[first(t, "#gaps")], torch.full((40,), 255, dtype=torch.uint8)]))),
    "zero-only gaps": ("sparse", lambda t, e: t.__setitem__(first(t, "#gaps"), torch.zeros_like(t[first(t, "#gaps")]))),
    "mask length": ("mask", lambda t, e: t.__setitem__(first(t, "#mask"), t[first(t, "#mask")][:-1].clone())),
    "values count": ("mask", lambda t, e: t.__setitem__(first(t, "#values"), t[first(t, "#values")][:-1].clone())),
    "values dtype": ("sparse", lambda t, e: t.__setitem__(first(t, "#values"), t[first(t, "#values")].float())),
    "negative scale": ("sparse", lambda t, e: t.__setitem__(first(t, "#values_scale"), -t[first(t, "#values_scale")])),
    "nan scale": ("quant", lambda t, e: t.__setitem__(first(t, "#scale"), torch.full_like(t[first(t, "#scale")], float("nan")))),
    "missing field": ("lowrank", lambda t, e: t.pop(first(t, "#v_scale"))),
    "rank": ("lowrank", lambda t, e: _set_info(e, first(t, "#u"), rank=3)),
    "rank type": ("lowrank", lambda t, e: _set_info(e, first(t, "#u"), rank="4")),
    "quant name": ("quant", lambda t, e: _set_info(e, first(t, "#codes"), quant="int9")),
    "bits": ("quant", lambda t, e: _set_info(e, first(t, "#codes"), quant="int3")),
    "huge shape": ("sparse", lambda t, e: _set_info(e, first(t, "#gaps"), shape=[2**20, 2**20])),
    "1-D shape": ("sparse", lambda t, e: _set_info(e, first(t, "#gaps"), shape=[100])),
}


def _set_info(encodings: dict, tensor_name: str, **changes) -> None:
    encodings[tensor_name.split("#")[0]].update(changes)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_inconsistent_files_are_refused_with_one_sentence(packed, tmp_path, case):
    kind, damage = DAMAGE[case]
    tensors, metadata = load_parts(packed[kind])
    encodings = json.loads(metadata["encodings"])
    damage(tensors, encodings)
    metadata["encodings"] = json.dumps(encodings)
    bad = tmp_path / "bad.safetensors"
    resign(bad, tensors, metadata)
    with pytest.raises(VectorFileError) as e:
        load_vector(bad)
    text = str(e.value)
    assert "bad.safetensors" in text and "\n" not in text, text


PACK_DAMAGE = {
    "index not base64": lambda t, m: m.__setitem__(packing.INDEX, "%%%"),
    "index not zlib": lambda t, m: m.__setitem__(packing.INDEX, base64.b64encode(b"not zlib").decode()),
    "index missing": lambda t, m: m.pop(packing.INDEX),
    "blob too short": lambda t, m: t.__setitem__("blob/U8", t["blob/U8"][:-1].clone()),
    "blob too long": lambda t, m: t.__setitem__("blob/U8", torch.cat([t["blob/U8"], t["blob/U8"][:1]])),
    "blob dtype": lambda t, m: t.__setitem__("blob/BF16", t["blob/BF16"].half()),
    "stray tensor": lambda t, m: t.__setitem__("blob/I8", torch.ones(3, dtype=torch.int8)),
    "shape in index": lambda t, m: m.__setitem__(packing.INDEX, _reindex(m[packing.INDEX], lambda i: next(iter(i.values()))["fields"][0][2].append(2))),
}


def _reindex(text: str, change) -> str:
    index = json.loads(zlib.decompress(base64.b64decode(text)))
    change(index)
    return base64.b64encode(zlib.compress(json.dumps(index).encode())).decode()


@pytest.mark.parametrize("case", sorted(PACK_DAMAGE))
def test_damaged_packed_layout_is_refused_with_one_sentence(packed, tmp_path, case):
    with safe_open(str(packed["sparse"]), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    PACK_DAMAGE[case](tensors, metadata)
    bad = tmp_path / "bad.safetensors"
    resign(bad, tensors, metadata)
    with pytest.raises(VectorFileError) as e:
        load_vector(bad)
    assert "bad.safetensors" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_packed_header_is_a_small_fraction_of_the_plain_one(night_vector, tmp_path):
    """Format 2 exists to cut the per-tensor header; both layouts load to the same tensors."""
    plain = files.save_vector(night_vector, tmp_path / "plain.safetensors", dtype="fp16")
    packed_path = files.save_vector(night_vector, tmp_path / "packed.safetensors", dtype="fp16", pack=True)
    header = lambda p: int.from_bytes(p.read_bytes()[:8], "little")  # noqa: E731 - safetensors' header length
    assert header(packed_path) < 0.2 * header(plain), (header(packed_path), header(plain))
    a, b = load_vector(plain), load_vector(packed_path)
    assert a.keys() == b.keys() and all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.deltas)


def test_untouched_packed_files_load(packed, small):
    for path in packed.values():
        assert load_vector(path).keys() == small.keys()


def test_decoders_check_fields_before_allocating():
    with pytest.raises(ValueError, match="implausible size"):
        DECODERS["sparse"]({"gaps": torch.ones(1, dtype=torch.uint8), "values": torch.ones(1)}, {}, (2**15, 2**15))
    with pytest.raises(ValueError, match="unexpected field"):
        DECODERS["quant"]({"codes": torch.zeros(4, dtype=torch.int8), "scale": torch.ones(2), "x": torch.ones(1)}, {"quant": "int8"}, (2, 2))
    with pytest.raises(ValueError, match="packed bytes"):
        DECODERS["quant"]({"codes": torch.zeros(3, dtype=torch.uint8), "scale": torch.ones(2)}, {"quant": "int4"}, (2, 4))
    mask = pack_bits(torch.tensor([1] * 15, dtype=torch.uint8), 1)
    assert DECODERS["sparse"]({"mask": mask, "values": torch.ones(15)}, {}, (3, 5)).sum() == 15
    mask[-1] |= 0x80  # a 16th position in a 15-entry tensor
    with pytest.raises(ValueError, match="padding bits"):
        DECODERS["sparse"]({"mask": mask, "values": torch.ones(16)}, {}, (3, 5))


# ----------------------------------------------------------------------------------------------- options and CLI
@pytest.mark.parametrize(
    "opts, message",
    [
        ({"keep": 0}, "keep must be a fraction"),
        ({"keep": 1.5}, "keep must be a fraction"),
        ({"energy": 2}, "energy must be a fraction"),
        ({"rank": 0}, "rank must be a positive integer"),
        ({"rank": 2.5}, "rank must be a positive integer"),
        ({"quant": "int9"}, "quant must be one of"),
        ({"keep": 0.1, "scope": "layer"}, "scope must be one of"),
        ({"scope": "global"}, "give keep="),
        ({"kep": 0.1}, "unknown compression option 'kep'"),
        ({"dtype": "fp8", "keep": 0.1}, "unknown dtype 'fp8'"),
        ({"dtype": "int8", "quant": "int4"}, "contradicts"),
    ],
)
def test_bad_options_are_refused_before_writing(small, tmp_path, opts, message):
    out = tmp_path / "x.safetensors"
    with pytest.raises(TaskVecError, match=message):
        small.save(out, **opts)
    assert not out.exists()


def test_fp16_range_is_checked(tmp_path):
    tv = TaskVector({"model.1.conv.weight": torch.full((4, 4, 1, 1), 1e6)}, {}, {})
    with pytest.raises(VectorFileError, match="fp16 range"):
        tv.save(tmp_path / "x.safetensors", keep=0.5, dtype="fp16")
    assert TaskVector.load(tv.save(tmp_path / "y.safetensors", keep=0.5, dtype="bf16")).deltas["model.1.conv.weight"].abs().max() > 9e5


def test_cli_compress_and_info(small, tmp_path, capsys):
    src = small.save(tmp_path / "night.safetensors")
    out = tmp_path / "night-small.safetensors"
    assert main(["compress", f"vectors={src}", "keep=0.1", "quant=int8", "dtype=fp16", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "keep 0.1 (tensor) + int8, fp16" in printed and "of the dense fp16 vector" in printed
    assert out.stat().st_size < 0.25 * src.stat().st_size
    assert main(["info", f"vectors={out}"]) == 0
    info = capsys.readouterr().out
    assert "compressed  keep 0.1 (tensor) + int8, fp16" in info and "relative error" in info
    assert main(["compress", f"vectors={src}", "rank=4", f"out={tmp_path / 'r.safetensors'}"]) == 0  # default dtype fp16
    assert read_header(tmp_path / "r.safetensors")[0]["dtype"] == "fp16"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["keep=0"], "keep must be a fraction"),
        (["quant=int16"], "quant must be one of"),
        (["rank=x"], "rank: 'x' is not an integer"),
        (["kep=0.1"], "did you mean keep"),
        (["calib_batches=2"], "only apply to compress with calib="),
        (["calib=missing.yaml"], "missing.yaml"),
    ],
)
def test_cli_bad_input_exits_2_without_output(small, tmp_path, capsys, argv, message):
    src = small.save(tmp_path / "v.safetensors")
    out = tmp_path / "o.safetensors"
    assert main(["compress", f"vectors={src}", *argv, f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["compress", f"vectors={src}", "keep=0.1", f"out={src}"]) == 2  # never overwrites its input


# ----------------------------------------------------------------------------------------------- calib=
def bn_stats(tv: TaskVector) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tv.deltas.items() if k.endswith((".running_mean", ".running_var"))}


def test_calib_shift_leaves_exact_weights_statistics_unchanged(base_model, small):
    """shift moves the fine-tune's statistics by what the approximation changes: nothing, for exact weights."""
    from yolo_taskvec.calib import calibrator

    restat = calibrator(str(data_yaml("fruit80-night.yaml")), base=base_model, calib_batches=1, calib_imgsz=64)
    stats, info = restat(small, small)
    assert stats.keys() == bn_stats(small).keys() and info["mode"] == "shift" and info["images"] == 16
    for k, d in bn_stats(small).items():
        assert torch.allclose(stats[k], d, rtol=1e-4, atol=1e-4), k


def test_calib_refits_statistics_of_a_compressed_file(base_model, small, tmp_path):
    plain = TaskVector.load(small.save(tmp_path / "q.safetensors", quant="int2"))
    fitted_path = small.save(tmp_path / "qc.safetensors", quant="int2", calib=[str(data_yaml("fruit80-night.yaml"))], base=base_model, calib_batches=1, calib_imgsz=64)
    fitted = TaskVector.load(fitted_path)
    meta = read_header(fitted_path)[0]["compression"]
    assert meta["calib"]["mode"] == "shift" and meta["calib"]["images"] == 16 and "re-fitted" in meta["label"]
    for k in small.deltas:  # weights as the plain compression stores them; only statistics move
        if k in bn_stats(small):
            continue
        assert torch.equal(fitted.deltas[k], plain.deltas[k]), k
    moved = [k for k in bn_stats(small) if not torch.allclose(fitted.deltas[k], plain.deltas[k], atol=1e-6)]
    assert moved, "int2 weights should move some statistics"
    for k in bn_stats(small):
        if k.endswith("running_var"):
            assert bool((base_model.state[k].float() + fitted.deltas[k] > 0).all()), k


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"calib": []}, "calib= needs one or more dataset yamls"),
        ({"calib_mode": "mix"}, "calib_mode must be one of"),
        ({"calib_batches": 0}, "calib_batches must be a positive integer"),
        ({"calib_imgsz": 8}, "calib_imgsz must be an integer of at least 32"),
        ({"calib": "missing.yaml"}, "missing.yaml"),
    ],
)
def test_bad_calib_options_are_refused_before_writing(base_model, small, tmp_path, opts, message):
    out = tmp_path / "x.safetensors"
    args = {"calib": str(data_yaml("fruit80-night.yaml")), "base": base_model, **opts}
    with pytest.raises(TaskVecError, match=message):
        small.save(out, quant="int4", **args)
    with pytest.raises(TaskVecError, match="only applies with calib="):
        small.save(out, quant="int4", calib_batches=2)
    assert not out.exists()
