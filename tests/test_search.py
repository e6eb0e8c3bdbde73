"""Scale search (coordinate and random) and greedy soups.

Pure tests find the optimum of known functions within a budget; on the real checkpoints the search improves over
its start, and the greedy soup is built from real models.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import data_yaml
from test_sweep import PNG_MAGIC, Counting, Probe

from yolo_taskvec.cli import main
from yolo_taskvec.errors import TaskVecError
from yolo_taskvec.search import coordinate_search, maximize, parse_bounds, search, search_space, start_point
from yolo_taskvec.soup import greedy_soup


# ----------------------------------------------------------------------------------------------- pure
def quadratic(target):
    return lambda p: -sum((p[k] - t) ** 2 for k, t in target.items())


@pytest.mark.parametrize("target", [{"a": 0.3, "b": 0.8}, {"a": 0.2, "b": 0.9, "c": 0.55}, {"x": 0.97}])
def test_coordinate_search_finds_the_optimum_within_budget(target):
    dims = {k: (0.0, 1.0) for k in target}
    best, value, history = maximize(quadratic(target), dims, budget=40)
    assert len(history) <= 40
    assert all(abs(best[k] - t) <= 1 / 32 for k, t in target.items()), best
    assert len({json.dumps(sorted(p.items())) for p, _ in history}) == len(history)  # no point evaluated twice


def test_coordinate_search_respects_bounds_and_budget():
    best, value, history = maximize(lambda p: p["x"] - p["y"], {"x": (-1, 2), "y": (-1, 2)}, budget=12)
    assert len(history) == 12
    assert all(-1 <= p["x"] <= 2 and -1 <= p["y"] <= 2 for p, _ in history)
    assert best == {"x": 2.0, "y": -1.0}  # walks to the corner


def test_parallel_polling_converges():
    f = quadratic({"a": 0.6, "b": 0.1})
    gen = coordinate_search({"a": (0, 1), "b": (0, 1)}, {"a": 0.5, "b": 0.5}, parallel=True)
    batch, seen, sizes = next(gen), [], []
    try:
        while True:
            sizes.append(len(batch))
            seen += batch
            batch = gen.send([f(p) for p in batch])
    except StopIteration:
        pass
    best = max(seen, key=f)
    assert abs(best["a"] - 0.6) <= 1 / 32 and abs(best["b"] - 0.1) <= 1 / 32
    assert max(sizes) == 4  # all 2·d neighbours at once


def test_random_search_is_seeded_and_improves_on_its_start():
    f = quadratic({"a": 0.9, "b": 0.1})
    runs = [maximize(f, {"a": (0, 1), "b": (0, 1)}, budget=25, strategy="random", seed=3) for _ in range(2)]
    assert runs[0][2] == runs[1][2]
    best, value, history = runs[0]
    assert history[0][0] == {"a": 0.5, "b": 0.5} and value > history[0][1]


def test_space_bounds_and_start_parsing():
    names = ["night", "rain"]
    assert search_space("vectors", (0, 1), names) == {"night": (0.0, 1.0), "rain": (0.0, 1.0)}
    assert search_space("auto", "0:2", ["night"]) == {"backbone": (0.0, 2.0), "neck": (0.0, 2.0), "head": (0.0, 2.0)}
    assert list(search_space("vectors+parts", (0, 1), names)) == ["night", "rain", "backbone", "neck", "head"]
    assert search_space("backbone,head.box,*", "-1,1", names) == {"backbone": (-1.0, 1.0), "head.box": (-1.0, 1.0), "*": (-1.0, 1.0)}
    assert search_space({"night": "0:0.5", "head": (0.5, 1)}, (0, 1), names) == {"night": (0.0, 0.5), "head": (0.5, 1.0)}
    assert start_point({"a": (0, 1), "b": (0, 2)}, None) == {"a": 0.5, "b": 1.0}
    assert start_point({"a": (0, 1), "b": (0, 2)}, {"b": 0.2}) == {"a": 0.5, "b": 0.2}
    for call, message in [
        (lambda: search_space("", (0, 1), names), "the search space is empty"),
        (lambda: parse_bounds("1:0"), "low must be below high"),
        (lambda: parse_bounds("0:1:2"), "is not low:high"),
        (lambda: start_point({"a": (0, 1)}, 3.0), "outside its bounds"),
        (lambda: start_point({"a": (0, 1)}, {"z": 0.1}), "not in the search space"),
    ]:
        with pytest.raises(TaskVecError, match=message):
            call()


def test_cli_search_bad_strategy_is_one_line(base_pt, tmp_path, capsys):
    code = main(["search", f"base={base_pt}", "vectors=night.safetensors", "data=fruit80.yaml", "strategy=anneal", f"out={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown search strategy 'anneal'; choose coordinate, random" in err


# ----------------------------------------------------------------------------------------------- real merges
def test_search_resumes_and_extends_its_budget(base_model, night_vector, tmp_path):
    """Probe objective (merged weights): a rerun replays finished trials; a larger budget continues."""
    probe = Probe(base_model.state, night_vector)
    kw = dict(space="parts", out=tmp_path, evaluator=probe, verbose=False, plot=False)
    first = search(base_model, [night_vector], budget=4, **kw)
    assert probe.calls == 4 and [r["trial"] for r in first.rows] == [1, 2, 3, 4]
    probe.calls = 0
    more = search(base_model, [night_vector], budget=7, **kw)
    assert probe.calls == 3 and more.evaluated == 3 and more.rows[:4] == first.rows
    assert more.best["objective"] >= first.best["objective"]
    with pytest.raises(TaskVecError, match="holds a different search"):
        search(base_model, [night_vector], budget=7, strategy="random", **kw)


@pytest.fixture(scope="module")
def day_night_evaluator():
    from yolo_taskvec.evaluation import Evaluator

    data = [str(data_yaml("fruit80.yaml")), str(data_yaml("fruit80-night.yaml"))]
    return data, Evaluator(data, imgsz=320, batch=16, device="cpu", progress=False)


def test_search_improves_over_its_start_on_real_data(base_model, night_vector, day_night_evaluator, tmp_path):
    data, evaluator = day_night_evaluator
    counting = Counting(evaluator)
    result = search(base_model, [night_vector], data=data, space="scale", start=1.0, budget=3, imgsz=320, out=tmp_path, evaluator=counting, verbose=False)
    assert counting.calls == len(result.rows) <= 3
    start = result.rows[0]
    assert start["scale"] == 1.0
    assert result.best["objective"] > start["objective"]  # the fine-tune alone forgets the day data
    assert result.best_point["scale"] < 1.0
    assert result.best["objective"] == pytest.approx((result.best["fruit80/map50_95"] + result.best["fruit80-night/map50_95"]) / 2)
    assert result.files["png"].read_bytes().startswith(PNG_MAGIC)
    assert "best: scale=" in result.table()


# ----------------------------------------------------------------------------------------------- greedy soup
def test_greedy_soup_of_real_models(base_model, base_pt, night_pt, day_night_evaluator, tmp_path):
    """Ingredients: the night fine-tune and the base itself (a fine-tune with τ = 0); their soup is α = 0.5."""
    from yolo_taskvec import merge

    data, evaluator = day_night_evaluator
    counting = Counting(evaluator)
    result = greedy_soup(base_model, [str(base_pt), str(night_pt)], data=data, imgsz=320, out=tmp_path, evaluator=counting, verbose=False)
    assert counting.calls == 3  # each model alone, then one soup
    alone = {r["candidate"]: r["alone"] for r in result.rows}
    assert result.rows[0]["candidate"] == max(alone, key=alone.get)  # best individual first
    assert result.ingredients == [r["candidate"] for r in result.rows if r["kept"]]
    soup = result.best
    assert soup["objective"] >= max(alone.values())
    assert set(result.ingredients) == {"yolo26n-base80", "yolo26n-fruit-night"}  # the day/night soup beats both
    merged = result.best_model().model.state_dict()
    expected = merge(base_model, [str(night_pt)], scale=0.5).model.state_dict()
    for key, value in expected.items():
        if value.is_floating_point():
            assert torch.allclose(merged[key], value, atol=1e-5), key
    assert json.loads((tmp_path / "soup.json").read_text())["ingredients"] == result.ingredients
    assert "tried" in result.table()
