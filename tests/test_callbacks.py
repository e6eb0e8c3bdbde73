"""Training-script integration: a real 1-epoch CPU fine-tune of base80 saves τ beside best.pt and a WiSE-FT curve."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import DATASETS, REPO, data_yaml, weight

from yolo_taskvec import TaskVector, load_model
from yolo_taskvec.callbacks import VECTOR_FILE, add_taskvec_callbacks, default_references, taskvec_callbacks
from yolo_taskvec.errors import TaskVecError


def subset(tmp_path: Path, name: str, n_train: int, n_val: int) -> Path:
    """A small view of a shared dataset: images symlinked, labels copied, yaml with the source's names."""
    src, root = DATASETS / name, tmp_path / name
    for split, n in (("train", n_train), ("val", n_val)):
        for img in sorted((src / "images" / split).glob("*.jpg"))[::7][:n]:
            for kind, path in (("images", img), ("labels", src / "labels" / split / f"{img.stem}.txt")):
                dst = root / kind / split / path.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(path.resolve()) if kind == "images" else dst.write_bytes(path.read_bytes())
    names = yaml.safe_load(data_yaml(f"{name}.yaml").read_text())["names"]
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": names}))
    return out


def load_example():
    spec = importlib.util.spec_from_file_location("train_with_taskvec", REPO / "examples" / "train_with_taskvec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_epoch_training_saves_the_vector_and_the_wise_ft_curve(tmp_path, capsys):
    base = weight("yolo26n-base80.pt")
    night, day = subset(tmp_path, "fruit80-night", 8, 8), subset(tmp_path, "fruit80", 0, 8)
    outputs = load_example().main(
        [f"base={base}", f"data={night}", f"sweep={day},{night}", "scales=0,0.5,1", "epochs=1", "imgsz=160", "batch=4",
         "workers=0", "plots=False", "device=cpu", f"project={tmp_path / 'runs'}", "name=night", "exist_ok=False"]
    )
    run = tmp_path / "runs" / "night"
    best = run / "weights" / "best.pt"
    assert best.exists() and outputs.vector == run / "weights" / VECTOR_FILE

    tv = TaskVector.load(outputs.vector)
    assert tv.meta["base_fingerprint"] == load_model(base).fingerprint
    assert tv.meta["name"] == "night"
    expected = TaskVector.from_models(base, best)
    assert tv.deltas.keys() == expected.deltas.keys()
    assert all(float((tv.deltas[k] - expected.deltas[k]).abs().max()) == 0 for k in tv.deltas)
    assert any(float(v.abs().max()) > 0 for v in tv.deltas.values())  # training did move the weights

    rows = list(csv.DictReader((run / "sweep.csv").open()))
    assert [float(r["scale"]) for r in rows] == [0.0, 0.5, 1.0]
    assert {"fruit80/map50_95", "fruit80-night/map50_95", "fruit80/norm", "fruit80-night/norm", "objective"} <= set(rows[0])
    # normalized by the base on day data and by the fine-tune on the training (night) data
    assert float(rows[0]["fruit80/norm"]) == pytest.approx(1.0, abs=1e-9)
    assert float(rows[2]["fruit80-night/norm"]) == pytest.approx(1.0, abs=1e-6)
    assert (run / "sweep.png").stat().st_size > 1000 and (run / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert outputs.sweep.files["png"] == run / "sweep.png"
    printed = capsys.readouterr().out
    assert f"task vector: {outputs.vector}" in printed and "merge it: yolo-taskvec apply" in printed


def test_wrong_arguments_fail_before_training(tmp_path):
    from ultralytics import YOLO

    model = YOLO(weight("yolo26n-base80.pt"))
    add_taskvec_callbacks(model, sweep_data=[tmp_path / "missing.yaml"])
    with pytest.raises(TaskVecError, match="missing.yaml not found"):
        model.train(data=str(data_yaml("coco8.yaml")), epochs=1, imgsz=160, device="cpu", project=str(tmp_path / "runs"), plots=False)
    assert not list((tmp_path / "runs").rglob("*.pt"))
    with pytest.raises(TaskVecError, match="pass base="):
        add_taskvec_callbacks(YOLO("yolo26n.yaml"))


def test_integration_is_a_dict_of_events_and_references_follow_the_training_data(tmp_path):
    callbacks = taskvec_callbacks(weight("yolo26n-base80.pt"))
    assert set(callbacks) == {"on_pretrain_routine_start", "on_train_end"} and all(callable(f) for f in callbacks.values())
    refs = default_references([data_yaml("fruit80.yaml"), data_yaml("fruit80-night.yaml")], str(data_yaml("fruit80-night.yaml")), tmp_path / "best.pt")
    assert refs == {"fruit80": "base", "fruit80-night": str(tmp_path / "best.pt")}
