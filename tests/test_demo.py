"""``yolo-taskvec demo``: the README's main command, end to end on the reference checkpoints and datasets."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import DATASETS, WEIGHTS, data_yaml, weight

from yolo_taskvec import demo
from yolo_taskvec.cli import main


def test_demo_runs_the_day_night_story_from_ultralytics_settings(tmp_path, capsys, base_pt, night_pt):
    out = tmp_path / "demo"
    assert main(["demo", "scales=0,0.5,1", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    # inputs found through weights_dir and datasets_dir, not the repo's datasets/ folder
    assert f"base  {WEIGHTS / 'yolo26n-base80.pt'}" in printed and f"tuned {WEIGHTS / 'yolo26n-fruit-night.pt'}" in printed
    assert f"day   {DATASETS / 'fruit80.yaml'}" in printed and f"night {DATASETS / 'fruit80-night.yaml'}" in printed

    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["scale"]) for r in rows] == [0.0, 0.5, 1.0]
    half = rows[1]
    assert float(half["fruit80/map50_95"]) == pytest.approx(0.426, abs=0.01)  # the reference merge (SOURCES.md)
    assert float(half["fruit80-night/map50_95"]) == pytest.approx(0.443, abs=0.01)
    assert float(rows[0]["fruit80/norm"]) == pytest.approx(1.0) and float(rows[2]["fruit80-night/norm"]) == pytest.approx(1.0)
    assert "chosen α = 0.5, reported on val: fruit80 0.4" in printed and "* " in printed
    assert "chosen on a seeded 20% of each dataset's train images" in printed and "95 % bootstrap intervals over val images" in printed
    assert float(half["fruit80.select/map50_95"]) != float(half["fruit80/map50_95"])  # α is chosen on other images than those reported

    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG" and (out / "night.safetensors").stat().st_size > 1e6
    from ultralytics import YOLO

    merged = YOLO(out / "merged.pt")
    ckpt = torch.load(out / "merged.pt", weights_only=False)
    assert ckpt["taskvec"]["recipe"]["scale"] == 0.5 and ckpt["ema"] is None and ckpt["taskvec"]["selection"]["point"] == {"scale": 0.5}
    assert (out / "merged.recipe.yaml").is_file() and "Chosen by a sweep" in (out / "merged.md").read_text()
    from yolo_taskvec import TaskVector

    expected = TaskVector.load(out / "night.safetensors").apply(base_pt, 0.5).model.state_dict()
    for key, value in merged.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value.float(), expected[key].half().float()), key


def test_demo_takes_user_weights_and_data(tmp_path, capsys):
    from test_callbacks import subset

    day, night = subset(tmp_path, "fruit80", 0, 8), subset(tmp_path, "fruit80-night", 0, 8)
    result = demo.run_demo(weight("yolo26n-base80.pt"), weight("yolo26n-fruit-night.pt"), day, night, scales=[0, 1], imgsz=160, out=tmp_path / "mine", verbose=False)
    assert result.inputs == {"base": str(weight("yolo26n-base80.pt")), "tuned": str(weight("yolo26n-fruit-night.pt")), "day": str(day), "night": str(night)}
    assert result.sweep.datasets == ["fruit80", "fruit80-night"] and len(result.sweep.rows) == 2
    assert result.merged == tmp_path / "mine" / "merged.pt" and result.merged.exists()
    assert result.best_scale in (0.0, 1.0)


def test_demo_explains_what_to_set_when_inputs_are_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "BASES", ("no-such-base.pt",))
    assert main(["demo", f"out={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("yolo-taskvec: error: the demo found no base checkpoint (no-such-base.pt): pass base=... or put it in weights_dir;")
    assert "yolo settings weights_dir=... datasets_dir=..." in err and len(err.splitlines()) == 1
    monkeypatch.setattr(demo, "BASES", ("yolo26n-base80.pt",))
    monkeypatch.setattr(demo, "NIGHT", ("no-such-night.yaml",))
    assert main(["demo", f"out={tmp_path / 'b'}"]) == 2
    assert "found no night dataset yaml (no-such-night.yaml): pass night=... or put it in datasets_dir" in capsys.readouterr().err
    monkeypatch.setattr(demo, "NIGHT", ("fruit80-night.yaml",))
    assert main(["demo", f"day={data_yaml('fruit80.yaml')}", f"night={data_yaml('fruit80.yaml')}", f"out={tmp_path / 'c'}"]) == 2
    assert "same name 'fruit80'" in capsys.readouterr().err
    assert main(["demo", "scales=0:x:1", f"out={tmp_path / 'd'}"]) == 2
    assert "scales: 'x' is not a number" in capsys.readouterr().err
    assert main(["demo", "tuned=missing.pt", f"out={tmp_path / 'e'}"]) == 2
    assert "missing.pt not found" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abcde")  # nothing written before the inputs are right
