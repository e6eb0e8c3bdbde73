"""COCO json export of YOLO-layout datasets and pycocotools scoring, on the shared datasets and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATASETS, data_yaml

from yolo_taskvec.cli import main
from yolo_taskvec.coco import GroundTruth, coco_scores, export_coco, find_coco_json
from yolo_taskvec.data import load_data
from yolo_taskvec.errors import DataError
from yolo_taskvec.evaluation import Evaluator, evaluate

COCO_MINI_JSON = DATASETS / "coco-mini" / "annotations" / "instances_val.json"


def names_of(coco: dict) -> dict[int, str]:
    return dict(enumerate(c["name"] for c in coco["categories"]))


def perfect(gt: GroundTruth, iou_type: str) -> list[dict]:
    """The ground truth as detections with score 1 (crowd regions left out, as a detector would)."""
    out = []
    for a in gt.coco.dataset["annotations"]:
        if a.get("iscrowd"):
            continue
        entry = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}
        if iou_type == "bbox":
            out.append({**entry, "bbox": a["bbox"]})
        else:
            rle = gt.coco.annToRLE(a)
            out.append({**entry, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return out


def test_export_boxes(tmp_path):
    out = tmp_path / "fruit80_val.json"
    coco = export_coco(data_yaml("fruit80.yaml"), "val", out)
    assert json.loads(out.read_text()) == coco
    assert (len(coco["images"]), len(coco["annotations"]), len(coco["categories"])) == (60, 106, 80)
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    assert (by_name["banana"], by_name["apple"], by_name["orange"]) == (52, 53, 55)  # COCO's own ids for COCO's names
    assert {a["category_id"] for a in coco["annotations"]} == {52, 53, 55}
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert a["iscrowd"] == 0 and "segmentation" not in a
        assert -0.5 <= x and -0.5 <= y and x + w <= W + 0.5 and y + h <= H + 0.5 and w > 0 and h > 0
        assert a["area"] == pytest.approx(w * h, rel=1e-3)
    first = next(img for img in coco["images"] if img["file_name"].startswith("fruit_apple_"))
    label = DATASETS / "fruit80" / "labels" / "val" / Path(first["file_name"]).with_suffix(".txt")
    cls, cx, cy, bw, bh = map(float, label.read_text().split()[:5])
    ann = next(a for a in coco["annotations"] if a["image_id"] == first["id"])
    assert ann["category_id"] == 53 and cls == 47
    assert ann["bbox"] == pytest.approx([(cx - bw / 2) * first["width"], (cy - bh / 2) * first["height"], bw * first["width"], bh * first["height"]], abs=1e-2)


def test_export_matches_the_original_coco_json():
    """coco-mini-seg's YOLO polygons exported back agree with the COCO json they were converted from."""
    ours = export_coco(data_yaml("coco-mini-seg.yaml"), "val")
    official = json.loads(COCO_MINI_JSON.read_text())
    assert {i["id"]: (i["file_name"], i["width"], i["height"]) for i in ours["images"]} == {i["id"]: (i["file_name"], i["width"], i["height"]) for i in official["images"]}
    assert [(c["id"], c["name"]) for c in ours["categories"]] == [(c["id"], c["name"]) for c in official["categories"]]
    non_crowd = [a for a in official["annotations"] if not a["iscrowd"]]
    assert len(ours["annotations"]) == len(non_crowd) == 1805
    ious, ratios = [], []
    for a in ours["annotations"]:  # best-overlapping original annotation of the same image and class
        candidates = [b for b in non_crowd if b["image_id"] == a["image_id"] and b["category_id"] == a["category_id"]]
        b = max(candidates, key=lambda b: box_iou(a["bbox"], b["bbox"]), default=None)
        iou = box_iou(a["bbox"], b["bbox"]) if b is not None else 0.0
        ious.append(iou)
        if b is not None and b["area"] > 100:
            ratios.append(a["area"] / b["area"])
    assert min(ious) > 0.95 and np.median(ious) > 0.999  # tiny boxes lose a little to 6-decimal YOLO labels
    assert 0.95 < np.median(ratios) < 1.05 and all(a["segmentation"] for a in ours["annotations"])


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_ground_truth_scored_against_itself_is_ap_one():
    official = GroundTruth(COCO_MINI_JSON, load_data(data_yaml("coco-mini.yaml"))["names"])
    exported = export_coco(data_yaml("coco8-seg.yaml"), "val")
    boxes_only = export_coco(data_yaml("fruit80.yaml"), "val")
    for gt in (official, GroundTruth(exported, names_of(exported)), GroundTruth(boxes_only, names_of(boxes_only))):
        assert coco_scores(gt, perfect(gt, "bbox"), "bbox")["coco_AP"] == pytest.approx(1.0)
    for gt in (official, GroundTruth(exported, names_of(exported))):
        assert gt.has_masks
        scores = coco_scores(gt, perfect(gt, "segm"), "segm")
        assert scores["coco_mask_AP"] == pytest.approx(1.0) and scores["coco_mask_AP50"] == pytest.approx(1.0)
    assert not GroundTruth(boxes_only, names_of(boxes_only)).has_masks


def test_wrong_detections_score_below_one():
    gt = GroundTruth(COCO_MINI_JSON, load_data(data_yaml("coco-mini.yaml"))["names"])
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] / 2, *d["bbox"][1:]]} for d in perfect(gt, "bbox")]
    scores = coco_scores(gt, shifted, "bbox")
    assert scores["coco_AP"] < 0.2 and scores["coco_AP50"] < 0.5
    assert coco_scores(gt, [], "bbox")["coco_AP"] == 0.0


def test_model_coco_ap_is_close_to_ultralytics_map(base_pt):
    """fruit80 (no json: exported from its labels) and coco-mini (its own json, found under annotations/)."""
    results = evaluate(base_pt, [data_yaml("fruit80.yaml"), data_yaml("coco-mini.yaml")], imgsz=320, device="cpu", coco=True, progress=False)
    fruit = next(r for r in results if r["dataset"] == "fruit80")
    assert fruit["map50_95"] == pytest.approx(0.440, abs=0.01)
    assert fruit["coco_AP"] == pytest.approx(fruit["map50_95"], abs=0.03)
    assert fruit["coco_AP50"] == pytest.approx(fruit["map50"], abs=0.03)
    assert all(k in fruit for k in ("coco_AP75", "coco_APs", "coco_APm", "coco_APl"))
    mini = next(r for r in results if r["dataset"] == "coco-mini")
    assert 0.0 < mini["coco_AP"] < 0.02 and mini["coco_AP"] == pytest.approx(mini["map50_95"], abs=0.01)


def test_segment_coco_ap_with_coco_json_key(seg_pt, tmp_path):
    """A yaml naming its json with coco_json: masks scored at the original resolution (weak checkpoint: small)."""
    exported = tmp_path / "coco8-seg_val.json"
    export_coco(data_yaml("coco8-seg.yaml"), "val", exported)
    yaml = tmp_path / "coco8-seg-json.yaml"
    yaml.write_text(f"{Path(data_yaml('coco8-seg.yaml')).read_text()}\ncoco_json: {exported.name}\n".replace("path: coco8-seg", f"path: {DATASETS / 'coco8-seg'}"))
    (DATASETS / "coco8-seg" / exported.name).write_bytes(exported.read_bytes())  # relative to the dataset root
    assert find_coco_json(load_data(yaml), "val") == DATASETS / "coco8-seg" / exported.name
    scores = Evaluator(str(yaml), imgsz=320, batch=4, device="cpu", coco=True, progress=False)(seg_pt)["coco8-seg-json"]
    for key in ("coco_AP", "coco_AP50", "coco_mask_AP", "coco_mask_AP50", "coco_mask_AP75"):
        assert 0.0 <= scores[key] <= 1.0, key
    assert scores["coco_AP50"] > 0  # the weak model does find something here
    assert scores["coco_mask_AP"] == pytest.approx(scores["mask_map50_95"], abs=0.02)
    assert scores["coco_AP"] == pytest.approx(scores["map50_95"], abs=0.02)


def test_bad_coco_inputs(tmp_path):
    with pytest.raises(DataError, match=r"coco_json .*nowhere\.json named by the dataset yaml does not exist"):
        find_coco_json({"path": str(tmp_path), "coco_json": "nowhere.json"}, "val")
    gt = GroundTruth(COCO_MINI_JSON, load_data(data_yaml("coco-mini.yaml"))["names"])
    with pytest.raises(DataError, match=r"image fruit_apple_1\.jpg is not in the COCO json"):
        gt.image_id("/x/images/val/fruit_apple_1.jpg")
    with pytest.raises(DataError, match=r"none of the dataset's class names \(raccoon, \.\.\.\) is a category"):
        GroundTruth(COCO_MINI_JSON, {0: "raccoon"})
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"COCO json .*broken\.json cannot be read"):
        GroundTruth(bad, {0: "person"})


def test_coco_export_cli(tmp_path, capsys):
    out = tmp_path / "coco8.json"
    assert main(["coco-export", f"data={data_yaml('coco8-seg.yaml')}", "split=val", f"out={out}"]) == 0
    assert "saved" in capsys.readouterr().out
    coco = json.loads(out.read_text())
    assert len(coco["images"]) == 4 and all(a["segmentation"] for a in coco["annotations"])
    bad = tmp_path / "bad.json"
    assert main(["coco-export", "data=missing-zz.yaml", f"out={bad}"]) == 2
    assert "missing-zz.yaml not found" in capsys.readouterr().err and not bad.exists()
