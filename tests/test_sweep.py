"""Sweeps: grids, the normalized objective, references, results files and resume, plots, and the CLI mode.

The day/night sweep runs on the real checkpoints and datasets (imgsz 320, three scales) with the real Evaluator;
grid-shape and resume tests use a probe evaluator that reads entries of the merged weights, so they check the
per-part / per-vector scaling itself on real merges without spending validation time.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from conftest import data_yaml

from yolo_taskvec import TaskVector
from yolo_taskvec.cli import main
from yolo_taskvec.errors import TaskVecError
from yolo_taskvec.plots import pareto_front
from yolo_taskvec.runs import Objective, reference_sources
from yolo_taskvec.sweep import grid_points, parse_grid, parse_values, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROBES = {"backbone": "model.0.conv.weight", "neck": "model.13.cv1.conv.weight", "head": "model.23.cv2.0.0.conv.weight"}


class Counting:
    """Wraps an evaluator and counts the models it scores."""

    def __init__(self, evaluate):
        self.evaluate, self.calls = evaluate, 0

    def __call__(self, model):
        self.calls += 1
        return self.evaluate(model)


class Probe:
    """An evaluator reading one changed entry per part from the merged weights (offset to stay positive)."""

    def __init__(self, base_state, vector):
        self.calls = 0
        self.where = {}
        for part, key in PROBES.items():
            index = int(vector.deltas[key].reshape(-1).abs().argmax())
            self.where[part] = (key, index, float(base_state[key].reshape(-1)[index]), float(vector.deltas[key].reshape(-1)[index]))

    def __call__(self, model):
        self.calls += 1
        state = model.model.state_dict()
        return {part: {"map50_95": float(state[key].reshape(-1)[i]) + 10.0} for part, (key, i, _, _) in self.where.items()}

    def expected(self, part, coefficient):
        _, _, base, delta = self.where[part]
        return base + coefficient * delta + 10.0


# ----------------------------------------------------------------------------------------------- pure parts
def test_parse_values_ranges_and_lists():
    values = parse_values("0:1:0.1")
    assert len(values) == 11 and values[0] == 0.0 and values[-1] == 1.0 and values[3] == 0.3
    assert parse_values("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("0, 0.5,1") == [0.0, 0.5, 1.0]
    assert parse_values([0.2, 0.4]) == [0.2, 0.4]
    assert parse_values(0.7) == [0.7]
    for bad, message in [("1:0:0.1", "step must be positive"), ("0:1", "start:stop:step"), ("a,b", "'a' is not a number"), ("0:1:0", "step must be positive"), ("nan", "finite"), ("0,99", "outside")]:
        with pytest.raises(TaskVecError, match=message):
            parse_values(bad)


def test_parse_grid_and_points():
    assert parse_grid("0:1:0.5") == {"scale": [0.0, 0.5, 1.0]}
    axes = parse_grid("backbone=0:1:0.5;head=0,1;neck=1")
    assert axes == {"backbone": [0.0, 0.5, 1.0], "head": [0.0, 1.0], "neck": [1.0]}
    points = grid_points(axes)
    assert len(points) == 6 and points[0] == {"backbone": 0.0, "head": 0.0, "neck": 1.0} and points[1] == {"backbone": 0.0, "head": 1.0, "neck": 1.0}
    assert parse_grid({"night": [0, 1], "rain": 0.5}) == {"night": [0.0, 1.0], "rain": [0.5]}


def test_objective_normalizes_by_each_datasets_reference():
    refs = {"day": {"map50_95": 0.44}, "night": {"map50_95": 0.47}}
    metrics = {"day": {"map50_95": 0.22, "map50": 0.5}, "night": {"map50_95": 0.47}}
    mean = Objective("map50_95", refs, "mean")
    assert mean.normalized(metrics) == pytest.approx({"day": 0.5, "night": 1.0})
    assert mean(metrics) == pytest.approx(0.75)
    assert Objective("map50_95", refs, "min")(metrics) == pytest.approx(0.5)
    assert Objective("map50_95", refs, lambda n: n["night"])(metrics) == pytest.approx(1.0)
    assert Objective("map50_95", None)(metrics) == pytest.approx((0.22 + 0.47) / 2)  # no reference: raw mean
    assert "normalized mAP50-95" in mean.label
    with pytest.raises(TaskVecError, match="has no metric 'mask_map50_95'"):
        Objective("mask_map50_95")(metrics)
    with pytest.raises(TaskVecError, match="cannot normalize"):
        Objective("map50_95", {"day": {"map50_95": 0.0}, "night": {"map50_95": 0.4}})(metrics)
    with pytest.raises(TaskVecError, match="unknown objective 'median'"):
        Objective("map50_95", None, "median")


def test_reference_sources_forms():
    ds = ["fruit80", "fruit80-night"]
    assert reference_sources("base", ds) == {"fruit80": "base", "fruit80-night": "base"}
    assert reference_sources(["a.pt", "b.pt"], ds) == {"fruit80": "a.pt", "fruit80-night": "b.pt"}
    assert reference_sources({"datasets/fruit80.yaml": "a.pt", "fruit80-night": "b.pt"}, ds) == {"fruit80": "a.pt", "fruit80-night": "b.pt"}
    assert reference_sources(None, ds) == {}
    with pytest.raises(TaskVecError, match="no reference model for dataset 'fruit80-night'"):
        reference_sources({"fruit80": "a.pt"}, ds)
    with pytest.raises(TaskVecError, match="unknown dataset 'coco'"):
        reference_sources({"fruit80": "a.pt", "fruit80-night": "b.pt", "coco": "c.pt"}, ds)
    with pytest.raises(TaskVecError, match="3 reference models for 2 datasets"):
        reference_sources(["a", "b", "c"], ds)


def test_pareto_front():
    pts = [(0.44, 0.26), (0.43, 0.44), (0.42, 0.40), (0.26, 0.47), (0.30, 0.47)]
    assert pareto_front(pts) == [4, 1, 0]  # (0.26, 0.47) is dominated by (0.30, 0.47); (0.42, 0.40) by (0.43, 0.44)


# ----------------------------------------------------------------------------------------------- real sweep
@pytest.fixture(scope="module")
def day_night(tmp_path_factory, base_model, night_vector, base_pt, night_pt):
    """base80 + α·τ(fruit-night), α ∈ {0, 0.5, 1}, on fruit80 and fruit80-night at imgsz 320 (real Evaluator)."""
    from yolo_taskvec.evaluation import Evaluator

    data = [str(data_yaml("fruit80.yaml")), str(data_yaml("fruit80-night.yaml"))]
    counting = Counting(Evaluator(data, imgsz=320, batch=16, device="cpu", progress=False))
    out = tmp_path_factory.mktemp("sweep")
    result = sweep(base_model, [night_vector], data=data, scales=[0, 0.5, 1], imgsz=320, reference=[str(base_pt), str(night_pt)], out=out, evaluator=counting, verbose=False)
    return result, counting, data, out


def test_day_night_sweep_table_and_best(day_night):
    result, counting, data, _ = day_night
    assert counting.calls == 2 + 3  # each reference once, then one evaluation per point
    assert [r["scale"] for r in result.rows] == [0.0, 0.5, 1.0]
    assert result.datasets == ["fruit80", "fruit80-night"]
    refs = {ds: result.references[result.reference_for[ds]][ds]["map50_95"] for ds in result.datasets}
    for row in result.rows:
        for ds in result.datasets:
            assert row[f"{ds}/norm"] == pytest.approx(row[f"{ds}/map50_95"] / refs[ds])
        assert row["objective"] == pytest.approx((row["fruit80/norm"] + row["fruit80-night/norm"]) / 2)
    by_scale = {r["scale"]: r for r in result.rows}
    assert by_scale[0.0]["fruit80/norm"] == pytest.approx(1.0, abs=1e-9)  # scale 0 is the base exactly
    assert by_scale[1.0]["fruit80-night/norm"] == pytest.approx(1.0, abs=0.01)  # scale 1 is the fine-tune
    assert result.best is max(result.rows, key=lambda r: r["objective"])
    assert result.best_point == {"scale": 0.5}
    assert by_scale[0.5]["objective"] > 0.9 > max(by_scale[0.0]["objective"], by_scale[1.0]["objective"])
    text = result.table()
    assert "* " in text and "best: scale=0.5" in text and "reference for fruit80-night: yolo26n-fruit-night" in text
    assert "chosen on the reported data" in text  # no selection split: the table says so


def test_day_night_sweep_files(day_night):
    result, _, _, out = day_night
    png = result.files["png"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    import matplotlib.image

    image = matplotlib.image.imread(result.files["png"])
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side: metric, objective, Pareto front
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["scale"]) for r in rows] == [0.0, 0.5, 1.0]
    assert float(rows[1]["objective"]) == pytest.approx(result.rows[1]["objective"])
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["kind"] == "sweep" and len(saved["rows"]) == 3 and saved["best"]["scale"] == 0.5
    assert set(saved["references"]) == {"yolo26n-base80", "yolo26n-fruit-night"}
    assert json.loads(result.to_json())["best"]["scale"] == 0.5


def test_cli_sweep_resumes_prints_and_saves_best(day_night, night_vector, base_pt, night_pt, tmp_path, capsys):
    """The CLI on the same sweep resumes from the results file (rows untouched) and saves the best merge."""
    from ultralytics import YOLO

    result, _, data, out = day_night
    folder = tmp_path / "resumed"
    shutil.copytree(out, folder)
    before = json.loads((folder / "sweep.json").read_text())["rows"]
    vector = night_vector.save(tmp_path / "night.safetensors")
    code = main(["sweep", f"base={base_pt}", f"vectors={vector}", f"data={','.join(data)}", "scales=0:1:0.5",
                 f"reference={base_pt},{night_pt}", "imgsz=320", f"out={folder}", f"best={folder / 'best.pt'}", "verbose=false"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert json.loads((folder / "sweep.json").read_text())["rows"] == before  # nothing recomputed
    assert "best: scale=0.5 -> mean normalized mAP50-95" in printed.out and "fruit80-night/norm" in printed.out
    best = YOLO(folder / "best.pt")
    assert best.ckpt["taskvec"]["recipe"]["scale"] == 0.5 and best.ckpt["taskvec"]["selection"]["point"] == {"scale": 0.5}
    assert "Chosen by a sweep" in (folder / "best.md").read_text()
    expected = night_vector.apply(result.scorer.prepared.base, scale=0.5).model.state_dict()
    for key, value in best.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value.float(), expected[key].float(), atol=2e-3, rtol=1e-3), key


def test_cli_sweep_bad_grid_is_one_line(base_pt, tmp_path, capsys):
    code = main(["sweep", f"base={base_pt}", "vectors=missing.safetensors", "data=fruit80.yaml", "scales=1:0:0.1", f"out={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "step must be positive" in err


# ----------------------------------------------------------------------------------------------- grids on real merges
def test_per_part_grid_scales_each_part(base_model, night_vector, tmp_path):
    probe = Probe(base_model.state, night_vector)
    scales = {"backbone": [0, 1], "neck": [0, 0.5, 1], "head": 0.25}
    result = sweep(base_model, [night_vector], scales=scales, out=tmp_path, evaluator=probe, plot=True, verbose=False)
    assert len(result.rows) == 6 and probe.calls == 6
    assert list(result.axes) == ["backbone", "neck", "head"]
    for row in result.rows:
        for part in PROBES:
            assert row[f"{part}/map50_95"] == pytest.approx(probe.expected(part, row[part]), abs=1e-5), (part, row)
    assert result.files["png"].read_bytes().startswith(PNG_MAGIC)  # two varying axes: heatmaps
    rest = sweep(base_model, [night_vector], scales={"backbone": [0, 1], "head": [1]}, scale=0.5, out=tmp_path / "rest", evaluator=probe, verbose=False)
    for row in rest.rows:  # parts without an axis keep the recipe's scale
        assert row["neck/map50_95"] == pytest.approx(probe.expected("neck", 0.5), abs=1e-5)
    with pytest.raises(TaskVecError, match="unknown axis 'bakbone'.*did you mean backbone"):
        sweep(base_model, [night_vector], scales={"bakbone": [0, 1]}, out=tmp_path / "bad", evaluator=probe, verbose=False)


def test_per_vector_grid_weights_each_vector(base_model, night_vector, tmp_path):
    half = TaskVector({k: v * 0.5 for k, v in night_vector.deltas.items()}, {}, {**night_vector.meta, "name": "half"})
    probe = Probe(base_model.state, night_vector)
    result = sweep(base_model, [night_vector, half], scales={"fruit-night": [0, 0.5], "half": [0, 0.5, 1]}, out=tmp_path, evaluator=probe, verbose=False)
    assert len(result.rows) == 6 and list(result.axes) == ["fruit-night", "half"]
    for row in result.rows:
        coefficient = row["fruit-night"] + 0.5 * row["half"]
        for part in PROBES:
            assert row[f"{part}/map50_95"] == pytest.approx(probe.expected(part, coefficient), abs=1e-5)
    best = max(result.rows, key=lambda r: r["objective"])
    assert result.best_point == {"fruit-night": best["fruit-night"], "half": best["half"]}


def test_refused_candidates_are_rows_not_the_end_of_the_sweep(base_model, night_vector, tmp_path):
    """A grid corner the merge refuses (BatchNorm variances pushed below zero) is recorded, and the sweep goes on."""
    key = next(k for k in night_vector.deltas if k.endswith("running_var"))
    deltas = {**night_vector.deltas, key: -2 * base_model.state[key]}  # at scale 1: variance = −base variance
    tv = TaskVector(deltas, {}, dict(night_vector.meta))
    probe = Probe(base_model.state, night_vector)
    result = sweep(base_model, [tv], scales=[0, 0.25, 1.0], out=tmp_path, evaluator=probe, verbose=False)
    refused = [r for r in result.rows if r.get("refused")]
    assert [r["scale"] for r in refused] == [1.0] and "non-positive" in refused[0]["refused"] and probe.calls == 2
    assert result.best_point["scale"] in (0.0, 0.25) and "refused by the merge (1 candidates, no score)" in result.table()
    assert result.files["png"].read_bytes().startswith(PNG_MAGIC)


# ----------------------------------------------------------------------------------------------- resume
class Interrupt(Exception):
    pass


def test_interrupted_sweep_resumes_without_recomputing(base_model, night_vector, tmp_path):
    probe = Probe(base_model.state, night_vector)
    data = ["backbone.yaml", "neck.yaml", "head.yaml"]  # names of the probe's "datasets" (the custom evaluator reads no yaml)
    seen = []

    def stop_after_two(row):
        seen.append(row["scale"])
        if len(seen) == 2:
            raise Interrupt

    kw = dict(data=data, scales="0:1:0.25", reference="base", out=tmp_path, evaluator=probe, verbose=False)
    with pytest.raises(Interrupt):
        sweep(base_model, [night_vector], callback=stop_after_two, **kw)
    assert probe.calls == 1 + 2  # the reference, then two points
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["scale"] for r in saved["rows"]] == [0.0, 0.25] and "base" in saved["references"]

    probe.calls = 0
    result = sweep(base_model, [night_vector], **kw)
    assert probe.calls == 3  # only the three unfinished points; the reference came from the file too
    assert result.evaluated == 3 and [r["scale"] for r in result.rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.rows[:2] == [{k: v for k, v in r.items() if k != "point"} for r in saved["rows"]]

    probe.calls = 0
    again = sweep(base_model, [night_vector], **kw)
    assert probe.calls == 0 and again.rows == result.rows

    with pytest.raises(TaskVecError, match="holds a different sweep \\(recipe"):
        sweep(base_model, [night_vector], method="average", **kw)
