"""Core behaviour on the real reference checkpoints: extraction, apply, arithmetic, parts, files, saving."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import DATASETS, data_yaml

from yolo_taskvec import TaskVector, load_model, merge, save
from yolo_taskvec.errors import MismatchError, TaskVecError
from yolo_taskvec.parts import Layout


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def state_of(yolo) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in yolo.model.state_dict().items()}


def test_scale_zero_is_the_base_exactly(base_model, night_vector):
    merged = state_of(night_vector.apply(base_model, scale=0.0))
    assert merged.keys() == base_model.state.keys()
    for key, value in base_model.state.items():
        assert torch.equal(merged[key], value.float()), key


def test_scale_one_reproduces_the_finetune(base_model, night_model, night_vector):
    merged = state_of(night_vector.apply(base_model, scale=1.0))
    worst = max(float((merged[k] - v.float()).abs().max()) for k, v in night_model.state.items() if v.is_floating_point())
    assert worst <= 1e-3 * max(1.0, max(float(v.abs().max()) for v in night_model.state.values() if v.is_floating_point()))
    for key, value in night_model.state.items():
        if value.is_floating_point():
            assert torch.allclose(merged[key], value, rtol=1e-3, atol=1e-6), key


def test_vector_covers_learned_tensors_and_bn_stats_not_counters(night_vector, base_model):
    keys = set(night_vector.deltas)
    assert not any(k.endswith("num_batches_tracked") for k in keys)
    assert any(k.endswith("running_var") for k in keys) and any(k.endswith("running_mean") for k in keys)
    floats = {k for k, v in base_model.state.items() if v.is_floating_point()}
    assert keys == floats
    assert night_vector.meta["base_fingerprint"] == base_model.fingerprint


def test_parts_follow_the_yaml(base_model, seg_pt):
    layout = base_model.layout
    assert (layout.n_backbone, layout.n_layers) == (11, 24)
    assert layout.part_of("model.0.conv.weight") == "backbone"
    assert layout.part_of("model.10.m.0.attn.qkv.conv.weight") == "backbone"
    assert layout.part_of("model.11.cv1.conv.weight") == "neck" or layout.part_of("model.13.cv1.conv.weight") == "neck"
    assert layout.part_of("model.23.cv2.0.0.conv.weight") == "head.box"
    assert layout.part_of("model.23.one2one_cv3.1.2.bias") == "head.cls"
    seg = load_model(seg_pt).layout
    assert seg.part_of("model.23.proto.cv1.conv.weight") == "head.mask"
    assert seg.part_of("model.23.one2one_cv4.0.0.conv.weight") == "head.mask"


def test_select_parts_and_globs(night_vector):
    box = night_vector.select(["head.box"])
    assert box.deltas and all(".cv2." in k or "one2one_cv2" in k for k in box.deltas)
    glob = night_vector.select(["model.23.cv3.*"])
    assert glob.deltas and all(k.startswith("model.23.cv3.") for k in glob.deltas)
    both = night_vector.select(["backbone", "neck", "head"])
    assert both.keys() == night_vector.keys()
    with pytest.raises(TaskVecError, match="unknown part 'bakbone'"):
        night_vector.select(["bakbone"])


def test_arithmetic(night_vector):
    tv = night_vector
    double = tv + tv
    key = next(iter(tv.deltas))
    assert torch.allclose(double.deltas[key], (2 * tv).deltas[key])
    assert torch.equal((tv - tv).deltas[key], torch.zeros_like(tv.deltas[key]))
    assert torch.equal((-tv).deltas[key], -tv.deltas[key])
    assert torch.allclose(sum([tv, tv, tv]).deltas[key], (3 * tv).deltas[key])
    per_part = tv.scaled({"backbone": 0.0, "*": 1.0})
    for k, v in per_part.deltas.items():
        expected = torch.zeros_like(v) if tv.part_of(k) == "backbone" else tv.deltas[k]
        assert torch.equal(v, expected), k
    with pytest.raises(TaskVecError, match="finite"):
        tv * float("nan")
    with pytest.raises(TaskVecError, match="outside"):
        tv * 1e6
    with pytest.raises(TaskVecError, match="no entry for part"):
        tv.scaled({"backbone": 0.5})


def test_day_night_reference_map(base_model, night_vector):
    """base80 + 0.5·τ(fruit-night) keeps the hand-measured 0.426 / 0.443 mAP50-95 (±0.01)."""
    merged = night_vector.apply(base_model, scale=0.5)
    day = merged.val(data=str(data_yaml("fruit80.yaml")), imgsz=320, batch=16, plots=False, verbose=False, device="cpu").box.map
    night = merged.val(data=str(data_yaml("fruit80-night.yaml")), imgsz=320, batch=16, plots=False, verbose=False, device="cpu").box.map
    assert abs(day - 0.426) <= 0.01, day
    assert abs(night - 0.443) <= 0.01, night


def test_vector_file_roundtrip(night_vector, tmp_path):
    path = night_vector.save(tmp_path / "night.safetensors")
    with open(path, "rb") as f:  # a safetensors file: 8-byte header length, then JSON, never a pickle
        n = int.from_bytes(f.read(8), "little")
        assert f.read(1) == b"{" and n > 0
    back = TaskVector.load(path)
    assert back.keys() == night_vector.keys()
    assert all(torch.equal(back.deltas[k], v) for k, v in night_vector.deltas.items())
    assert back.meta["base_fingerprint"] == night_vector.meta["base_fingerprint"]
    assert back.meta["names"]["47"] == "apple" and back.meta["task"] == "detect"
    assert back.meta["base_yaml"]["backbone"] == night_vector.meta["base_yaml"]["backbone"]
    half = TaskVector.load(night_vector.save(tmp_path / "half.safetensors", dtype="fp16"))
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * path.stat().st_size
    assert all(torch.allclose(half.deltas[k], v, atol=1e-3, rtol=1e-2) for k, v in night_vector.deltas.items())
    assert half.meta["dtype"] == "fp16"


def test_fingerprint_guard(night_vector, base_model, night_model):
    other = TaskVector(night_vector.deltas, {}, {**night_vector.meta, "base_fingerprint": "0" * 64})
    with pytest.raises(MismatchError, match="different base"):
        other.apply(base_model, 0.5)
    assert other.apply(base_model, 0.5, force=True) is not None
    with pytest.raises(MismatchError, match="different bases"):
        night_vector + other


def test_accepts_yolo_objects_and_modules(base_pt, night_pt, night_vector):
    from ultralytics import YOLO

    from_yolo = TaskVector.from_models(YOLO(str(base_pt)), YOLO(str(night_pt)).model)
    key = next(iter(night_vector.deltas))
    assert torch.equal(from_yolo.deltas[key], night_vector.deltas[key])
    assert from_yolo.meta["base_fingerprint"] == night_vector.meta["base_fingerprint"]


def test_saved_merge_is_a_plain_ultralytics_checkpoint(base_pt, night_pt, night_vector, tmp_path):
    before = {p: sha256(p) for p in (base_pt, night_pt)}
    merged = night_vector.apply(base_pt, scale=0.5)
    out = save(merged, tmp_path / "merged.pt", inputs=[base_pt, night_pt])
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["ema"] is None and ckpt["model"] is not None
    assert next(ckpt["model"].parameters()).dtype == torch.float16
    assert ckpt["train_args"]["imgsz"] == 320
    assert ckpt["taskvec"]["names"] == ["fruit-night"] and ckpt["taskvec"]["recipe"]["scale"] == 0.5
    assert ckpt["train_args"]["mode"] == "merge" and "merge" in ckpt["train_args"]["model"]  # describes the merge, not the base's training
    assert (tmp_path / "merged.recipe.yaml").is_file() and (tmp_path / "merged.md").is_file()
    code = (
        "import sys; from ultralytics import YOLO; m = YOLO(sys.argv[1]); "
        "r = m.val(data=sys.argv[2], imgsz=320, batch=16, plots=False, verbose=False); print('MAP', r.box.map); "
        "p = m.predict(sys.argv[3], imgsz=320, verbose=False); print('BOXES', len(p[0].boxes)); "
        "print('ONNX', m.export(format='onnx', imgsz=320, simplify=False))"
    )
    image = sorted((DATASETS / "fruit80-night" / "images" / "val").glob("*.jpg"))[0]
    run = subprocess.run([sys.executable, "-c", code, str(out), str(data_yaml("fruit80-night.yaml")), str(image)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0] in ("MAP", "BOXES", "ONNX"))
    assert abs(float(lines["MAP"]) - 0.443) <= 0.01
    assert lines["ONNX"].strip().endswith(".onnx")
    import onnx

    onnx.checker.check_model(onnx.load(lines["ONNX"].strip()))
    assert {p: sha256(p) for p in (base_pt, night_pt)} == before


def test_yolo_cli_val_on_merged_checkpoint(night_vector, base_pt, tmp_path):
    out = save(night_vector.apply(base_pt, scale=0.5), tmp_path / "m.pt")
    yolo = str(Path(sys.executable).parent / "yolo")
    run = subprocess.run([yolo, "val", f"model={out}", f"data={data_yaml('fruit80.yaml')}", "imgsz=320", "plots=False", f"project={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "all" in run.stdout + run.stderr


def test_save_refuses_overwriting_an_input(night_vector, base_pt):
    merged = night_vector.apply(base_pt, scale=0.5)
    digest = sha256(base_pt)
    with pytest.raises(TaskVecError, match="also an input"):
        save(merged, base_pt, inputs=[base_pt])
    assert sha256(base_pt) == digest


def test_detect_plus_segment_dual_purpose(base_pt, night_vector, seg_pt, tmp_path):
    with pytest.raises(MismatchError, match="unmatched=carry"):
        TaskVector.from_models(base_pt, seg_pt)
    seg = TaskVector.from_models(base_pt, seg_pt, unmatched="carry")
    assert seg.absolute and all(seg.part_of(k) == "head.mask" for k in seg.absolute)
    assert seg.meta["target_yaml"]["head"][-1][2] == "Segment26"
    dual = merge(base_pt, [night_vector, seg], scale=0.5)
    assert dual.task == "segment"
    for key, value in seg.absolute.items():
        assert torch.equal(dual.model.state_dict()[key].float(), value)
    out = save(dual, tmp_path / "dual.pt")
    from ultralytics import YOLO

    reloaded = YOLO(str(out))
    assert reloaded.task == "segment"
    metrics = reloaded.val(data=str(data_yaml("coco8-seg.yaml")), imgsz=320, batch=4, plots=False, verbose=False)
    assert 0.0 <= metrics.seg.map <= 1.0 and 0.0 <= metrics.box.map <= 1.0


def test_checkpoint_zip_is_readable(night_vector, base_pt, tmp_path):
    out = save(night_vector.apply(base_pt, scale=0.25), tmp_path / "z.pt")
    assert zipfile.is_zipfile(out)
    assert not list(tmp_path.glob(".*.tmp"))


def test_layout_from_yaml_without_sections():
    with pytest.raises(TaskVecError, match="backbone"):
        Layout.from_yaml({"nc": 3})


def test_save_never_overwrites_the_finetune_behind_a_vector_file(base_pt, night_pt, tmp_path):
    import os
    import shutil

    tuned = tmp_path / "tuned.pt"
    shutil.copy(night_pt, tuned)
    os.chmod(tuned, 0o644)
    TaskVector.from_models(base_pt, tuned).save(tmp_path / "v.safetensors")
    merged = merge(base_pt, [tmp_path / "v.safetensors"], scale=0.5)
    digest = sha256(tuned)
    with pytest.raises(TaskVecError, match="also an input"):
        save(merged, tuned)
    assert sha256(tuned) == digest
