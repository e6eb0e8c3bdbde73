"""The reused Evaluator against plain Ultralytics val on the reference checkpoints (CPU, imgsz 320).

Equality with ``YOLO(path).val()`` is checked on fruit80 (detect) and coco8-seg (segment: box and mask); the
mixed cases (segment model on detect data, detect model on segment data, a dual-purpose merge), class sets other
than the dataset's, reuse without side effects, the results table and the ``val`` CLI.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import data_yaml, weight

from yolo_taskvec import TaskVector, merge, save
from yolo_taskvec.cli import main
from yolo_taskvec.errors import CheckpointError, DataError, TaskVecError
from yolo_taskvec.evaluation import Evaluator, Results, available_cpus, evaluate

TOL = 1e-3
IMGSZ = 320


def ultralytics_val(model_path, data, batch=16):
    from ultralytics import YOLO

    return YOLO(str(model_path)).val(data=str(data), imgsz=IMGSZ, batch=batch, device="cpu", plots=False, verbose=False)


@pytest.fixture(scope="module")
def fruit80():
    return str(data_yaml("fruit80.yaml"))


@pytest.fixture(scope="module")
def evaluator(fruit80):
    return Evaluator(fruit80, imgsz=IMGSZ, batch=16, device="cpu", progress=False)


def test_detect_metrics_equal_ultralytics_val(evaluator, fruit80, base_pt):
    ours = evaluator(base_pt)["fruit80"]
    ref = ultralytics_val(base_pt, fruit80)
    assert ours["map50_95"] == pytest.approx(ref.box.map, abs=TOL)
    assert ours["map50"] == pytest.approx(ref.box.map50, abs=TOL)
    assert ours["precision"] == pytest.approx(ref.box.mp, abs=TOL) and ours["recall"] == pytest.approx(ref.box.mr, abs=TOL)
    assert ours["map50_95"] == pytest.approx(0.440, abs=0.01)  # the documented reference number
    assert not any(k.startswith("mask") for k in ours)


def test_in_memory_merge_scores_what_its_saved_checkpoint_scores(evaluator, fruit80, base_model, night_vector, tmp_path):
    merged = night_vector.apply(base_model, scale=0.5)
    path = save(merged, tmp_path / "merged.pt")
    ours = evaluator(merged)["fruit80"]
    assert ours["map50_95"] == pytest.approx(ultralytics_val(path, fruit80).box.map, abs=TOL)
    assert ours["map50_95"] == pytest.approx(0.426, abs=0.01)
    assert not merged.model.is_fused()  # the caller's model is copied, never fused in place
    fp32 = Evaluator(fruit80, imgsz=IMGSZ, device="cpu", progress=False, as_saved=False)(merged)["fruit80"]
    assert fp32["map50_95"] == pytest.approx(merged.val(data=fruit80, imgsz=IMGSZ, device="cpu", plots=False, verbose=False).box.map, abs=TOL)


def test_batches_are_decoded_once_and_reused(evaluator, base_model, night_pt):
    first = evaluator(base_model)
    passes = dict(evaluator.passes)
    batches = next(iter(passes.values())).batches
    evaluator(night_pt)
    again = evaluator(base_model)
    assert evaluator.passes == passes and next(iter(evaluator.passes.values())).batches is batches
    assert all(b["img"].dtype == torch.uint8 for b in batches)  # resident as decoded, letterboxed uint8
    assert again == first  # deterministic, no state carried between models


def test_later_models_are_fused_into_the_same_model_bit_identically(evaluator, base_pt, night_pt, base_model):
    """The second model of an architecture is fused in place; its weights equal AutoBackend's own fusion exactly."""
    from ultralytics.nn.autobackend import AutoBackend

    from yolo_taskvec.checkpoint import load_model

    first = evaluator.prepare(base_pt)
    second = evaluator.prepare(night_pt)
    assert second.template is first.template and first.template.recipe is not None
    ours = second.backend.model.state_dict()
    reference = AutoBackend(model=load_model(night_pt).module, device=torch.device("cpu"), fuse=True, verbose=False, end2end=False).model.state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert any(not torch.equal(a, b) for a, b in zip(first.state.values(), second.state.values()))
    before = {k: v.clone() for k, v in base_model.module.state_dict().items()}
    evaluator.prepare(base_model).backend  # loading never writes into the caller's model
    assert all(torch.equal(before[k], v) for k, v in base_model.module.state_dict().items())


def test_segment_metrics_equal_ultralytics_val(seg_pt):
    data = data_yaml("coco8-seg.yaml")
    ours = Evaluator(str(data), imgsz=IMGSZ, batch=4, device="cpu", progress=False)(seg_pt)["coco8-seg"]
    ref = ultralytics_val(seg_pt, data, batch=4)
    for key, value in {"map50_95": ref.box.map, "map50": ref.box.map50, "mask_map50_95": ref.seg.map, "mask_map50": ref.seg.map50}.items():
        assert ours[key] == pytest.approx(value, abs=TOL), key
    assert ours["map50"] > 0  # the weak checkpoint still finds something, so equality is not 0 == 0


def test_segment_model_on_detect_data_scores_boxes(seg_pt):
    """coco8 and coco8-seg hold the same instances (boxes = polygon extents): the box metrics must agree."""
    ev = Evaluator([str(data_yaml("coco8.yaml")), str(data_yaml("coco8-seg.yaml"))], imgsz=IMGSZ, batch=4, device="cpu", progress=False)
    scores = ev(seg_pt)
    assert "mask_map50_95" not in scores["coco8"] and "mask_map50_95" in scores["coco8-seg"]
    assert scores["coco8"]["map50_95"] == pytest.approx(scores["coco8-seg"]["map50_95"], abs=TOL)
    assert scores["coco8"]["map50"] == pytest.approx(scores["coco8-seg"]["map50"], abs=TOL) and scores["coco8"]["map50"] > 0


def test_detect_model_on_segment_data_scores_boxes(base_pt):
    data = data_yaml("coco8-seg.yaml")
    ours = Evaluator(str(data), imgsz=IMGSZ, batch=4, device="cpu", progress=False)(base_pt)["coco8-seg"]
    assert "mask_map50_95" not in ours
    assert ours["map50_95"] == pytest.approx(ultralytics_val(base_pt, data, batch=4).box.map, abs=TOL)


def test_dual_purpose_model_is_scored_on_detect_and_segment_data(evaluator, base_pt, seg_pt):
    """base + 0·τ(segment) with the mask head carried: a Segment model whose boxes are exactly the base's."""
    carried = TaskVector.from_models(base_pt, seg_pt, unmatched="carry")
    dual = merge(base_pt, [carried], scale=0.0)
    assert dual.task == "segment"
    on_fruit = evaluator(dual)["fruit80"]
    assert on_fruit["map50_95"] == pytest.approx(evaluator(base_pt)["fruit80"]["map50_95"], abs=1e-9)
    on_seg = Evaluator(str(data_yaml("coco8-seg.yaml")), imgsz=IMGSZ, batch=4, device="cpu", progress=False)(dual)["coco8-seg"]
    assert 0.0 <= on_seg["mask_map50_95"] <= 1.0 and 0.0 <= on_seg["map50_95"] <= 1.0


def test_models_with_other_class_sets_get_their_own_labels(base_pt):
    """A 1-class model is scored as YOLO.val scores it (labels of classes it cannot predict dropped)."""
    data = data_yaml("coco8.yaml")
    raccoon = weight("yolo26n-raccoon.pt")
    ev = Evaluator(str(data), imgsz=IMGSZ, batch=4, device="cpu", progress=False)
    ev(base_pt)
    ours = ev(raccoon)["coco8"]
    assert len(ev.passes) == 2
    ref = ultralytics_val(raccoon, data, batch=4)
    assert ours["recall"] == pytest.approx(ref.box.mr, abs=TOL) and ref.box.mr > 0
    assert ours["map50_95"] == pytest.approx(ref.box.map, abs=TOL) and ours["precision"] == pytest.approx(ref.box.mp, abs=TOL)


def test_results_table_files_and_best(fruit80, base_pt, night_pt, tmp_path):
    night = str(data_yaml("fruit80-night.yaml"))
    results = evaluate({"base": base_pt, "night": night_pt}, [fruit80, night], imgsz=IMGSZ, device="cpu", progress=False)
    assert isinstance(results, Results) and len(results) == 4
    assert results.models == ["base", "night"] and results.datasets == ["fruit80", "fruit80-night"]
    assert results.best(dataset="fruit80")[0] == "base" and results.best(dataset="fruit80-night")[0] == "night"
    assert results.get("night", "fruit80-night") == pytest.approx(0.472, abs=0.01)
    table = results.table()
    assert table.splitlines()[0].split()[:3] == ["model", "dataset", "map50_95"] and len(table.splitlines()) == 5
    rows = list(csv.DictReader(open(results.to_csv(tmp_path / "r.csv"))))
    assert [(r["model"], r["dataset"]) for r in rows] == [(r["model"], r["dataset"]) for r in results.rows]
    assert float(rows[0]["map50_95"]) == results.rows[0]["map50_95"]
    assert Results.from_json(results.to_json(tmp_path / "r.json")).rows == results.rows
    assert evaluate([base_pt, base_pt], fruit80, imgsz=IMGSZ, device="cpu", progress=False).models == ["yolo26n-base80", "yolo26n-base80#2"]


def test_nan_values_survive_json(tmp_path):
    results = Results([{"model": "m", "dataset": "d", "coco_APs": math.nan, "map50_95": 0.5}])
    path = results.to_json(tmp_path / "r.json")
    assert json.loads(path.read_text())[0]["coco_APs"] is None
    assert math.isnan(Results.from_json(path).rows[0]["coco_APs"]) and "nan" in results.table()


def test_cpu_threads_are_used_and_restored(fruit80, base_pt, monkeypatch):
    """Inference uses the requested threads (all CPUs by default); the process's own setting is left as it was."""
    seen = []
    ev = Evaluator(fruit80, imgsz=IMGSZ, device="cpu", progress=False, threads=3)
    prepared = ev.prepare(base_pt)
    original = type(prepared.backend).forward

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    before = torch.get_num_threads()
    monkeypatch.setattr(type(prepared.backend), "forward", spy)
    ev.score(prepared, "fruit80")
    assert set(seen) == {3} and torch.get_num_threads() == before
    assert Evaluator(fruit80, imgsz=IMGSZ, device="cpu", progress=False).threads == available_cpus()
    with pytest.raises(TaskVecError, match="threads must be a positive integer"):
        Evaluator(fruit80, threads=0)


def test_nms_time_limit_is_lifted_while_scoring(fruit80, base_pt, monkeypatch):
    """On a busy CPU Ultralytics' NMS time limit silently drops detections; the Evaluator's scores must not."""
    from ultralytics.utils import nms

    limits = []
    original = nms.non_max_suppression

    def spy(*args, max_time_img=0.05, **kwargs):
        limits.append(max_time_img)
        return original(*args, max_time_img=max_time_img, **kwargs)

    monkeypatch.setattr(nms, "non_max_suppression", spy)
    Evaluator(fruit80, imgsz=IMGSZ, device="cpu", progress=False)(base_pt)
    assert limits and min(limits) >= 1e3 and nms.non_max_suppression is spy


def test_scoring_writes_nothing_into_the_dataset_folder(base_pt, tmp_path):
    """Ultralytics writes labels/<split>.cache beside the labels; the Evaluator leaves dataset folders untouched."""
    import shutil

    import yaml
    from conftest import ASSETS

    folder = shutil.copytree(ASSETS / "datasets" / "coco8", tmp_path / "coco8", symlinks=True)
    spec = yaml.safe_load(data_yaml("coco8.yaml").read_text())
    data = tmp_path / "coco8.yaml"
    data.write_text(yaml.safe_dump({**spec, "path": str(folder)}))
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    Evaluator(str(data), imgsz=IMGSZ, device="cpu", progress=False)(base_pt)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_quiet_mode_prints_nothing(fruit80, base_pt, capfd):
    Evaluator(fruit80, imgsz=IMGSZ, device="cpu", progress=False)(base_pt)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_bad_inputs(fruit80, base_pt, tmp_path):
    with pytest.raises(DataError, match=r"dataset yaml missing-zz\.yaml not found"):
        Evaluator("missing-zz.yaml")
    with pytest.raises(DataError, match=r"fruit80.yaml.*'test:' images not found"):
        Evaluator(fruit80, split="test")
    with pytest.raises(TaskVecError, match=r"conf and iou must lie in \[0, 1\]"):
        Evaluator(fruit80, conf=1.5)
    with pytest.raises(CheckpointError, match=r"model file nothing-zz\.pt not found"):
        evaluate(["nothing-zz.pt"], fruit80)
    with pytest.raises(CheckpointError, match=r"expected a \.pt path, an ultralytics YOLO or an Ultralytics nn\.Module"):
        Evaluator(fruit80, imgsz=IMGSZ, progress=False)(torch.nn.Linear(2, 2))


def test_val_cli(base_pt, tmp_path, capsys):
    data = data_yaml("coco8.yaml")
    out = tmp_path / "val.csv"
    assert main(["val", f"model={base_pt}", f"data={data}", "imgsz=320", "batch=4", "device=cpu", "verbose=false", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "yolo26n-base80" in printed and "map50_95" in printed and f"saved {out}" in printed
    rows = list(csv.DictReader(open(out)))
    assert rows[0]["dataset"] == "coco8" and 0 <= float(rows[0]["map50_95"]) <= 1
    assert main(["val", f"model={base_pt}", f"data={data}", f"out={tmp_path / 'val.txt'}"]) == 2
    assert "val writes a .csv or .json table" in capsys.readouterr().err
    assert not (tmp_path / "val.txt").exists()
