"""Scale search (coordinate, asynchronous coordinate, random, TPE, CMA-ES) and greedy soups.

Pure tests find the optimum of known functions within a budget and, with simulated parallel workers, show that the
asynchronous proposers keep them busier than batches do; on the real checkpoints the search improves over its
start, Optuna studies resume from the run folder, and the greedy soup is built from real models.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import data_yaml
from test_sweep import PNG_MAGIC, Counting, Probe

from yolo_taskvec.cli import main
from yolo_taskvec.errors import TaskVecError
from yolo_taskvec.search import AsyncCoordinate, BatchProposer, coordinate_search, maximize, parse_bounds, search, search_space, start_point
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


@pytest.mark.parametrize("strategy", ["tpe", "cmaes"])
def test_optuna_strategies_are_seeded_and_improve_on_their_start(strategy):
    f = quadratic({"a": 0.8, "b": 0.2, "c": 0.65})
    dims = {"a": (0, 1), "b": (0, 1), "c": (0, 1)}
    runs = [maximize(f, dims, budget=30, strategy=strategy, seed=1) for _ in range(2)]
    assert runs[0][2] == runs[1][2]  # the same seed, the same trials
    best, value, history = runs[0]
    assert history[0][0] == {"a": 0.5, "b": 0.5, "c": 0.5}  # the start is scored first
    assert value > history[0][1] + 0.1 and len(history) == 30
    assert maximize(f, dims, budget=30, strategy=strategy, seed=2)[2] != runs[0][2]


def simulate(proposer, f, workers: int, budget: int, seed: int = 0):
    """Run a proposer with ``workers`` simulated parallel runners; each trial takes a random 1..2 time units, and a
    point proposed again is answered at once from the finished ones (as ``runs.drive`` answers from the results file).

    Returns ``(history, utilization)``: utilization = busy runner-time / (workers x elapsed time).
    """
    import heapq
    import random as rnd

    rng = rnd.Random(seed)
    clock, busy, running, history, asked, seen = 0.0, 0.0, [], [], 0, {}
    while True:
        while len(running) < workers and asked < budget:
            point = proposer.ask()
            if point is None:
                break
            key = json.dumps(sorted(point.items()))
            if key in seen:  # answered from the results file, as runs.drive does: no trial
                proposer.tell(point, seen[key])
                continue
            seen[key] = None
            duration = rng.uniform(1.0, 2.0)
            heapq.heappush(running, (clock + duration, asked, point))
            busy += duration
            asked += 1
        if not running:
            break
        clock, _, point = heapq.heappop(running)
        value = seen[json.dumps(sorted(point.items()))] = f(point)
        history.append((point, value))
        proposer.tell(point, value)
    return history, busy / (workers * clock)


def test_asynchronous_coordinate_search_keeps_workers_busier_than_batches():
    """Same problem, 4 simulated runners: the batch proposer waits for each poll's slowest trial, the asynchronous
    one moves as soon as a neighbour improves and refills the free runners at once; both find the optimum."""
    f = quadratic({"a": 0.7, "b": 0.15})
    dims, start = {"a": (0.0, 1.0), "b": (0.0, 1.0)}, {"a": 0.5, "b": 0.5}
    batch_history, batch_use = simulate(BatchProposer(coordinate_search(dims, start, parallel=True)), f, workers=4, budget=60)
    async_history, async_use = simulate(AsyncCoordinate(dims, start), f, workers=4, budget=60)
    for history in (batch_history, async_history):
        best = max(history, key=lambda pv: pv[1])[0]
        assert abs(best["a"] - 0.7) <= 1 / 32 and abs(best["b"] - 0.15) <= 1 / 32, best
        assert len({json.dumps(sorted(p.items())) for p, _ in history}) == len(history)  # never the same point twice
    assert async_use > batch_use + 0.1, (async_use, batch_use)


def test_asynchronous_coordinate_search_converges_in_the_order_points_are_asked():
    best, value, history = maximize(quadratic({"x": 0.3, "y": 0.9, "z": 0.55}), {"x": (0, 1), "y": (0, 1), "z": (0, 1)}, budget=60, workers=3)
    assert all(abs(best[k] - t) <= 1 / 32 for k, t in {"x": 0.3, "y": 0.9, "z": 0.55}.items()), best
    assert history[0][0] == {"x": 0.5, "y": 0.5, "z": 0.5}


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
    assert code == 2 and err.count("\n") == 1 and "unknown search strategy 'anneal'; choose coordinate, random, tpe, cmaes" in err


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


@pytest.mark.parametrize("strategy", ["tpe", "cmaes"])
def test_optuna_search_resumes_its_study_from_the_run_folder(base_model, night_vector, tmp_path, strategy):
    """A rerun continues the study stored in the run folder; without it, the results file alone seeds a new one."""
    probe = Probe(base_model.state, night_vector)
    kw = dict(space="parts", strategy=strategy, out=tmp_path, evaluator=probe, verbose=False, plot=False)
    first = search(base_model, [night_vector], budget=4, **kw)
    journal = tmp_path / "search.optuna.log"
    assert probe.calls == 4 and journal.is_file()
    assert first.rows[0]["backbone"] == first.rows[0]["neck"] == first.rows[0]["head"] == 0.5  # the start first
    probe.calls = 0
    more = search(base_model, [night_vector], budget=6, **kw)
    assert probe.calls == 2 and more.evaluated == 2 and more.rows[:4] == first.rows
    import optuna

    study = optuna.load_study(study_name="search", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))))
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 6
    journal.unlink()  # lost: the results file's 6 rows seed a new study, nothing is scored twice
    probe.calls = 0
    again = search(base_model, [night_vector], budget=7, **kw)
    assert probe.calls == 1 and again.rows[:6] == more.rows


def test_local_backend_runs_one_trial_at_a_time(base_model, night_vector):
    with pytest.raises(TaskVecError, match="workers=3 needs backend=ray"):
        search(base_model, [night_vector], workers=3, evaluator=lambda m: {}, verbose=False)


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
