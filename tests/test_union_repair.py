"""Repair of a class-union model with unlabeled images: pseudo-labels from the specialists, Ultralytics' trainer."""

from __future__ import annotations

import pytest
import torch
from conftest import DATASETS, data_yaml, weight

from yolo_taskvec import merge, save
from yolo_taskvec.checkpoint import load_model
from yolo_taskvec.errors import DataError, MismatchError, OutputError, TaskVecError
from yolo_taskvec.repair import image_list, pseudo_label, repair


@pytest.fixture(scope="module")
def raccoon():
    return load_model(weight("yolo26n-raccoon.pt"))


@pytest.fixture(scope="module")
def union(base_model, raccoon):
    return merge(base_model, [raccoon], scale=0.1, bn="geometric", classes="union")


def few_images(n: int = 3) -> list:
    """A handful of raccoon and fruit train images (through the test overlay of the shared datasets)."""
    return sorted((DATASETS / "raccoon" / "images" / "train").glob("*.jpg"))[:n] + sorted((DATASETS / "fruit80" / "images" / "train").glob("*.jpg"))[:n]


def test_each_specialist_labels_its_own_classes_in_union_ids(base_model, raccoon, union, tmp_path):
    images = few_images(2)
    yaml = pseudo_label([base_model, raccoon], images, union.model.names, tmp_path, conf=0.25, imgsz=320, progress=False)
    root = tmp_path / "data"
    links = sorted((root / "images" / "train").iterdir())
    assert len(links) == len(images) and all(p.is_symlink() for p in links)
    assert {p.resolve() for p in links} == {p.resolve() for p in images}
    rows = {p.stem: [line.split() for line in (root / "labels" / "train" / f"{p.stem}.txt").read_text().splitlines()] for p in links}
    classes = {int(r[0]) for rs in rows.values() for r in rs}
    assert 80 in classes and classes <= set(range(81))  # raccoon's class 0 is union id 80
    raccoon_rows = [r for p in links if "raccoon" in p.resolve().name for r in rows[p.stem]]
    assert any(int(r[0]) == 80 for r in raccoon_rows)  # the raccoon specialist labels raccoons on raccoon images
    text = yaml.read_text()
    assert "train: images/train" in text and '80: "raccoon"' in text
    assert len(list((root / "images" / "train").iterdir())) == len(images)


def test_repair_one_epoch_with_ultralytics_trainer(base_model, raccoon, union, tmp_path):
    """One epoch on a handful of images: the union trains (BatchNorm statistics kept as merged), loads with plain YOLO."""
    from ultralytics import YOLO

    before = {k: v.clone() for k, v in union.model.state_dict().items()}
    fixed = DATASETS / "raccoon" / "labels" / "train"
    listing = sorted(p.name for p in fixed.iterdir())
    repaired = repair(union, [base_model, raccoon], few_images(3), epochs=1, imgsz=160, batch=4, out=tmp_path / "run", progress=False)
    state = repaired.model.state_dict()
    assert repaired.model.names == union.model.names and len(repaired.model.names) == 81
    assert not torch.equal(state["model.4.m.0.cv1.conv.weight"].float(), before["model.4.m.0.cv1.conv.weight"].float())
    assert torch.allclose(state["model.2.cv1.bn.running_mean"].float(), before["model.2.cv1.bn.running_mean"].float(), rtol=1e-4, atol=1e-6)
    assert torch.allclose(state["model.2.cv1.bn.running_var"].float(), before["model.2.cv1.bn.running_var"].float(), rtol=1e-4, atol=1e-6)
    record = repaired.ckpt["taskvec"]["repair"]
    assert record["epochs"] == 1 and record["images"] == 6 and record["run"] == str((tmp_path / "run").resolve())
    assert record["batchnorm"] == "frozen" and record["lr0"] == 1e-4
    assert repaired.ckpt["taskvec"]["recipe"]["classes"] == "union"  # the union's provenance is kept
    assert (tmp_path / "run" / "train" / "weights" / "last.pt").exists()
    assert sorted(p.name for p in fixed.iterdir()) == listing  # nothing written beside the images' labels
    out = save(repaired, tmp_path / "repaired.pt")
    result = YOLO(str(out)).predict(str(few_images(1)[0]), imgsz=160, verbose=False, device="cpu")
    assert len(result[0].names) == 81


def test_repair_can_reestimate_batchnorm_statistics(base_model, raccoon, union, tmp_path):
    before = union.model.state_dict()["model.2.cv1.bn.running_mean"].float().clone()
    repaired = repair(union, [base_model, raccoon], few_images(1), epochs=1, imgsz=160, batch=2, out=tmp_path / "run", progress=False, freeze_bn=False)
    assert not torch.allclose(repaired.model.state_dict()["model.2.cv1.bn.running_mean"].float(), before, rtol=1e-4, atol=1e-6)
    assert repaired.ckpt["taskvec"]["repair"]["batchnorm"] == "trained"


def test_merge_with_repair_through_the_api(base_model, raccoon, tmp_path):
    """share=22 branches repaired with distillation from the sources (each teacher on its own levels)."""
    repaired = merge(base_model, [raccoon], scale=0.1, classes="union", share=22, repair=1, repair_mode="distill", repair_images=[str(p) for p in few_images(2)], imgsz=160)
    record = repaired.ckpt["taskvec"]["repair"]
    assert record["epochs"] == 1 and record["images"] == 4 and record["mode"] == "distill" and repaired.ckpt["taskvec"]["union"]["share"] == 22
    assert repaired.model.model[-1].nl == 6  # branches are repaired as they are


def test_repair_refusals(base_model, raccoon, union, tmp_path):
    with pytest.raises(TaskVecError, match=r"repair=3 needs unlabeled images: repair_images="):
        merge(base_model, [raccoon], classes="union", repair=3)
    with pytest.raises(TaskVecError, match="repair is an option of class-union merges; add classes=union"):
        merge(base_model, [raccoon], repair=3, repair_images=[str(few_images(1)[0])])
    with pytest.raises(TaskVecError, match="repair=3 needs unlabeled images"):
        repair(union, [base_model, raccoon], [], epochs=3)
    with pytest.raises(TaskVecError, match=r"add repair=<epochs>"):
        merge(base_model, [raccoon], classes="union", repair_images=[str(few_images(1)[0])])
    with pytest.raises(TaskVecError, match=r"repair \(epochs\) must be an integer, got 1.5"):
        repair(union, [base_model, raccoon], few_images(1), epochs=1.5)
    with pytest.raises(TaskVecError, match=r"repair_conf must be in \(0, 1\)"):
        repair(union, [base_model, raccoon], few_images(1), epochs=1, conf=1.5)
    with pytest.raises(TaskVecError, match=r"repair_conf must be in \(0, 1\), got 1.5"):  # the recipe says it alike
        merge(base_model, [raccoon], classes="union", repair=1, repair_images=[str(few_images(1)[0])], repair_conf=1.5)
    with pytest.raises(TaskVecError, match=r"repair \(epochs\) must be between 1 and 300, got 0"):
        repair(union, [base_model, raccoon], few_images(1), epochs=0)
    with pytest.raises(TaskVecError, match="unknown repair mode"):
        repair(union, [base_model, raccoon], few_images(1), epochs=1, mode="magic")
    with pytest.raises(OutputError, match="overlaps the image folder"):
        repair(union, [base_model, raccoon], few_images(1), epochs=1, out=DATASETS / "raccoon" / "images" / "train" / "run")
    with pytest.raises(DataError, match="not an image, an image folder"):
        image_list([str(tmp_path / "missing.png")])
    with pytest.raises(MismatchError, match="not in the union"):
        repair(union, [base_model, load_model(weight("yolo26n-bccd.pt"))], few_images(1), epochs=1, out=tmp_path / "r")
    assert image_list([data_yaml("raccoon.yaml")])[0].suffix == ".jpg"  # a dataset yaml gives its train images


def test_distillation_targets_are_each_teachers_own_classes_and_anchors():
    """The distillation term is smallest where the student's logits and boxes equal each teacher's, on the teacher's
    classes (union ids) and anchors (the same anchors for one trunk, the teacher's own levels for branches)."""
    from yolo_taskvec.repair import DistillLoss

    g = torch.Generator().manual_seed(0)
    teachers = [{"scores": torch.randn(2, 3, 50, generator=g), "boxes": torch.rand(2, 4, 50, generator=g) * 5}, {"scores": torch.randn(2, 1, 50, generator=g), "boxes": torch.rand(2, 4, 50, generator=g) * 5}]
    rows = [[(0, 0), (1, 1), (2, 2)], [(0, 3)]]
    loss = DistillLoss.__new__(DistillLoss)
    loss.rows = rows
    for layout in ("trunk", "branches"):
        if layout == "trunk":  # one set of anchors: the student's box branch cannot match two teachers; its logits can
            scores = torch.cat([teachers[0]["scores"], teachers[1]["scores"]], 1)
            boxes = teachers[0]["boxes"].clone()
        else:  # each teacher's anchors in its own levels
            scores = torch.full((2, 4, 100), -30.0)
            scores[:, :3, :50], scores[:, 3:, 50:] = teachers[0]["scores"], teachers[1]["scores"]
            boxes = torch.cat([teachers[0]["boxes"], teachers[1]["boxes"]], 2)
        best = loss._head_loss({"scores": scores, "boxes": boxes}, teachers, 0.5, 7.5)
        for noise in (0.3, 1.0):
            worse = loss._head_loss({"scores": scores + noise * torch.randn(scores.shape, generator=g), "boxes": boxes + noise}, teachers, 0.5, 7.5)
            assert worse > best
        swapped = scores.clone()
        swapped[:, [0, 3]] = swapped[:, [3, 0]]  # a teacher's targets on another class's logit cost more
        assert loss._head_loss({"scores": swapped, "boxes": boxes}, teachers, 0.5, 7.5) > best
