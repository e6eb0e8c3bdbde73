"""Sweep and search figures on tiny synthetic tables: context in the title, legends off the data, labels that do not
overlap, integer trial ticks, bootstrap bands."""

from __future__ import annotations

import math

import pytest

from yolo_taskvec.plots import context_line, plot_search, plot_sweep, search_figure, sweep_figure

DATASETS = ["day", "night"]
REFERENCES = {"base": {"day": {"map50_95": 0.44}, "night": {"map50_95": 0.26}}, "tuned": {"day": {"map50_95": 0.26}, "night": {"map50_95": 0.47}}}
CONTEXT = {"base": "yolo26n-base80", "vectors": ["night"], "imgsz": 320, "reported on": "val"}


def row(point: dict, day: float, night: float, band: float = 0.0) -> dict:
    r = {**point, "day/map50_95": day, "night/map50_95": night, "day/norm": day / 0.44, "night/norm": night / 0.47}
    r["objective"] = (r["day/norm"] + r["night/norm"]) / 2
    if band:
        for k in ("day/map50_95", "night/map50_95", "objective"):
            r[k + "_low"], r[k + "_high"] = r[k] - band, r[k] + band
    return r


def one_axis(band: float = 0.0) -> list[dict]:
    return [row({"scale": s / 10}, 0.44 - 0.018 * s**1.5, 0.26 + 0.021 * s, band) for s in range(11)]


def _pixels(fig, artist):
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_sweep_figure_says_what_and_keeps_legends_and_labels_clear():
    fig = sweep_figure(one_axis(band=0.01), ["scale"], DATASETS, "map50_95", references=REFERENCES, reference_for={"day": "base", "night": "tuned"}, objective_label="mean normalized mAP50-95", context=CONTEXT)
    assert "base: yolo26n-base80 · vectors: night · imgsz: 320 · reported on: val" in fig._suptitle.get_text()
    panels = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(panels) == 3  # metric, objective, Pareto (the fourth axes is the colorbar)
    for ax in panels:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert _pixels(fig, ax.get_legend()).y1 <= _pixels(fig, ax).y0  # below the axes, never over a point
    metric_panel, objective_panel, pareto_panel = panels
    assert any("bootstrap" in t.get_text() for t in metric_panel.get_legend().get_texts())
    assert any("alone" in t.get_text() for t in metric_panel.get_legend().get_texts())  # reference lines are named
    labels = [t for t in pareto_panel.texts if t.get_text()]
    assert {t.get_text() for t in labels} >= {"0", "0.5", "1", "base alone", "tuned alone"}
    boxes = [_pixels(fig, t) for t in labels]
    overlaps = sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert overlaps == 0


def test_sweep_figures_for_two_and_three_axes(tmp_path):
    grid = [row({"backbone": b, "head": h}, 0.44 - 0.1 * b * h, 0.26 + 0.2 * b) for b in (0.25, 0.5, 0.75) for h in (0.5, 1.0)]
    path = plot_sweep(grid, ["backbone", "head"], DATASETS, "map50_95", tmp_path / "two.png", references=REFERENCES, context=CONTEXT)
    assert path.read_bytes().startswith(b"\x89PNG")
    three = [row({"backbone": b, "neck": n, "head": 0.5 + b / 2}, 0.44 - 0.1 * b * n, 0.26 + 0.2 * n) for b in (0.25, 0.75) for n in (0.5, 1.0)]
    fig = sweep_figure(three, ["backbone", "neck", "head"], DATASETS, "map50_95")
    ranked = [t.get_text() for t in fig.axes[1].texts]  # the objective panel
    assert [t.split(".")[0] for t in ranked] == ["1", "2", "3"]  # the top three points named in rank order


@pytest.mark.parametrize("trials", [3, 7])
def test_search_figure_has_integer_trial_ticks(trials, tmp_path):
    rows = [{"backbone": 0.1 * i, "objective": 0.9 + 0.01 * math.sin(i), "day/norm": 0.95, "night/norm": 0.9 + 0.01 * i} for i in range(trials)]
    fig = search_figure(rows, axes=["backbone"], objective_label="mean normalized mAP50-95", context=CONTEXT)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert _pixels(fig, ax.get_legend()).y1 <= _pixels(fig, ax).y0
    assert any("best" in t.get_text() and "backbone=" in t.get_text() for t in ax.get_legend().get_texts())
    assert plot_search(rows, tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")


def test_context_line_skips_empty_values():
    assert context_line({"base": "b", "select": None, "vectors": ["x", "y"], "imgsz": 320.0}, "note") == "base: b · vectors: x, y · imgsz: 320 · note"
