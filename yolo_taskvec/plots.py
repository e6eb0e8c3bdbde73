"""PNG plots of sweeps and searches (matplotlib, headless ``Agg``): metric vs scale, Pareto fronts, search traces.

Plain functions over result rows (dicts with axis columns, ``<dataset>/<metric>`` columns and ``objective``);
every figure is written atomically. Figures are meant to be pasted into a report as they are: the title says what
was merged and where it was scored (``context=``), every axis is labelled, reference lines are in the legend,
legends sit outside the data, point labels are placed where they overlap neither each other nor a point, and
optional bootstrap intervals (``<column>_low`` / ``<column>_high`` in the rows) are drawn as bands.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_output

METRIC_LABELS = {"map50_95": "mAP50-95", "map50": "mAP50", "mask_map50_95": "mask mAP50-95", "mask_map50": "mask mAP50"}
# Okabe-Ito: distinct for colour-blind readers and in greyscale print; dataset i always gets colour i.
COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
LOW, HIGH = "_low", "_high"  # suffixes of a column's bootstrap interval bounds in the rows


def metric_label(metric: str) -> str:
    """Human label of a metric key: ``map50_95`` -> ``mAP50-95``."""
    return METRIC_LABELS.get(metric, metric)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both coordinates maximized), sorted by the first coordinate."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((a >= x and b >= y) and (a > x or b > y) for j, (a, b) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def context_line(context: Mapping[str, Any] | None = None, subtitle: str | None = None) -> str:
    """``base: yolo26n-base80 · vectors: night · imgsz: 320`` from a context mapping, then the free ``subtitle``."""
    parts = []
    for key, value in (context or {}).items():
        if value is None or value == "" or value == []:
            continue
        text = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else _fmt(value) if isinstance(value, float) else str(value)
        parts.append(f"{key}: {text}")
    if subtitle:
        parts.append(subtitle)
    return " · ".join(parts)


def _figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (7, 4.2)) -> tuple[Any, Any]:
    """A figure and its axes grid, made without pyplot so no global backend is touched (notebooks keep theirs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # a renderer to measure text with (label placement)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    return Path(path)


def _fmt(value: float) -> str:
    return f"{value:g}"


def point_label(row: Mapping[str, Any], axes: Sequence[str], short: bool = True) -> str:
    """``0.5`` for a one-axis point (``short``), ``backbone=0.5, head=1`` otherwise."""
    if len(axes) == 1 and short:
        return _fmt(row[axes[0]])
    return ", ".join(f"{a}={_fmt(row[a])}" for a in axes)


def _title(fig: Any, headline: str, context: Mapping[str, Any] | None, subtitle: str | None) -> None:
    """Headline in bold, the context (what was merged, where it was scored) on a line below it."""
    line = context_line(context, subtitle)
    fig.suptitle(headline + (f"\n{line}" if line else ""), fontsize=10.5)


def _legend_below(ax: Any, ncol: int = 2, **kwargs: Any) -> None:
    """A legend under the axes (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize=8, frameon=False, **kwargs)


def _band(ax: Any, xs: Sequence[float], rows: Sequence[Mapping[str, Any]], column: str, color: Any, label: str | None = None) -> bool:
    """Shade a column's bootstrap interval when the rows carry ``<column>_low`` and ``<column>_high``."""
    if not all(column + LOW in r and column + HIGH in r for r in rows):
        return False
    ax.fill_between(xs, [r[column + LOW] for r in rows], [r[column + HIGH] for r in rows], color=color, alpha=0.15, lw=0, label=label)
    return True


def place_labels(ax: Any, items: Sequence[tuple[tuple[float, float], str, Mapping[str, Any]]], avoid: Sequence[tuple[float, float]] = (), pad_px: float = 5.0) -> list[Any]:
    """Annotate each ``(xy, text, style)`` at the nearest of 24 offsets (8 directions, 3 distances) where the label
    overlaps no other label, no point in ``avoid`` (nor its own) and stays inside the axes; the least crowded offset
    when none is free.

    Call it after the axes' limits and the figure's layout are final (positions are measured in pixels).
    """
    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # settle pending autoscaling before measuring in pixels
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    marks = [ax.transData.transform(p) for p in [*avoid, *(xy for xy, _, _ in items)]]
    near = [(5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"), (-5, -4, "right", "top"), (0, 8, "center", "bottom"), (0, -8, "center", "top"), (9, 0, "left", "center"), (-9, 0, "right", "center")]
    offsets = [(dx * k, dy * k, ha, va) for k in (1, 2.2, 3.5) for dx, dy, ha, va in near]  # nearest first
    placed: list[Any] = []
    done = []
    for xy, text, style in items:
        best, best_cost = None, math.inf
        for dx, dy, ha, va in offsets:
            ann = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **{"fontsize": 7, **style})
            bb = ann.get_window_extent(renderer)
            cost = sum(bb.overlaps(p) for p in placed) * 10
            cost += sum(bb.x0 - pad_px < mx < bb.x1 + pad_px and bb.y0 - pad_px < my < bb.y1 + pad_px for mx, my in marks)
            cost += 20 * (bb.x0 < box.x0 or bb.x1 > box.x1 or bb.y0 < box.y0 or bb.y1 > box.y1)
            if cost < best_cost:
                if best is not None:
                    best.remove()
                best, best_cost, best_bb = ann, cost, bb
            else:
                ann.remove()
            if cost == 0:
                break
        placed.append(best_bb)
        done.append(best)
    return done


# ----------------------------------------------------------------------------------------------- sweep
def plot_sweep(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], datasets: Sequence[str], metric: str, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``sweep_figure(...)`` written to ``path`` as PNG (atomically); keyword arguments as ``sweep_figure``."""
    return _save(sweep_figure(rows, axes, datasets, metric, **kwargs), path)


def sweep_figure(
    rows: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    datasets: Sequence[str],
    metric: str,
    *,
    references: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    reference_for: Mapping[str, str] | None = None,
    objective_label: str = "objective",
    context: Mapping[str, Any] | None = None,
    subtitle: str | None = None,
    title: str | None = None,
    choice: str = "objective",
) -> Any:
    """A matplotlib ``Figure``: metric vs scale per dataset (+ objective), or heatmaps for two axes; plus the Pareto front for two datasets.

    ``references``: ``{label: {dataset: {metric: value}}}`` of the reference models (drawn as dashed lines and
    as diamonds in the Pareto panel); ``reference_for``: ``{dataset: label}``. ``context``: what the figure shows,
    printed under the title in order, e.g. ``{"base": "yolo26n-base80", "vectors": "night", "method":
    "task_arithmetic", "imgsz": 320, "selected on": "fruit80 train (60 images)", "reported on": "val"}``;
    ``subtitle``: free text after it; ``title``: replaces the headline (default: the best point). Rows may carry
    ``<dataset>/<metric>_low``/``_high`` and ``objective_low``/``_high`` (bootstrap intervals, drawn as bands).
    ``choice``: the column the chosen point maximizes (``select_objective`` when a selection split chose it; its
    curve is drawn too, and the headline says the point was chosen there).
    """
    varying = [a for a in axes if len({r[a] for r in rows}) > 1] or list(axes[:1])
    pareto = len(datasets) == 2
    panels = (len(datasets) + 1 + pareto) if len(varying) == 2 else (2 + pareto)
    fig, ax = _figure(1, panels, figsize=(5.2 * panels, 4.9))
    ax = list(ax[0])
    best = max(rows, key=lambda r: r[choice])
    labels: list[tuple] = []  # (axes, items, avoid): placed once the layout is final
    if len(varying) == 1:
        _lines(ax[0], ax[1], rows, varying[0], datasets, metric, best, references, reference_for, objective_label, choice)
    elif len(varying) == 2:
        for i, ds in enumerate(datasets):
            _heatmap(ax[i], rows, varying, f"{ds}/{metric}", f"{ds}: {metric_label(metric)}", best)
        _heatmap(ax[len(datasets)], rows, varying, "objective", objective_label, best)
    else:
        labels.append(_by_point(ax[0], ax[1], rows, axes, datasets, metric, best, objective_label))
    if pareto:
        labels.append(_pareto(ax[-1], rows, varying, datasets, metric, references, best))
    where = ", ".join(f"{a}={_fmt(best[a])}" for a in varying)
    how = f"chosen on the selection split at {where}: reported" if choice != "objective" else f"best at {where}:"
    _title(fig, title or f"{how} {objective_label} {best['objective']:.4f}", context, subtitle)
    fig.tight_layout()
    for job in labels:
        place_labels(*job)
    return fig


def _lines(ax_m, ax_o, rows, axis, datasets, metric, best, references, reference_for, objective_label, choice="objective") -> None:
    rows = sorted(rows, key=lambda r: r[axis])
    xs = [r[axis] for r in rows]
    banded = False
    for i, ds in enumerate(datasets):
        c = COLORS[i % len(COLORS)]
        banded |= _band(ax_m, xs, rows, f"{ds}/{metric}", c)
        ax_m.plot(xs, [r[f"{ds}/{metric}"] for r in rows], "o-", color=c, label=ds)
        label = (reference_for or {}).get(ds)
        if references and label in references and ds in references[label]:
            ax_m.axhline(references[label][ds][metric], color=c, ls="--", lw=1, alpha=0.9, label=f"{ds}: {label} alone")
    ax_m.axvline(best[axis], color="0.45", ls=":", lw=1, label=f"best {axis} = {_fmt(best[axis])}")
    if banded:
        ax_m.fill_between([], [], [], color="0.5", alpha=0.15, lw=0, label="95 % bootstrap interval")
    ax_m.set(xlabel=axis, ylabel=metric_label(metric), title=f"{metric_label(metric)} vs {axis}")
    ax_m.grid(alpha=0.3)
    _legend_below(ax_m)
    if all(f"{ds}/norm" in rows[0] for ds in datasets):
        for i, ds in enumerate(datasets):
            ax_o.plot(xs, [r[f"{ds}/norm"] for r in rows], "o-", color=COLORS[i % len(COLORS)], alpha=0.5, ms=3, lw=1, label=f"{ds} ÷ its reference")
        ax_o.axhline(1.0, color="0.5", lw=0.8, ls="--", label="= reference (1.0)")
    _band(ax_o, xs, rows, "objective", "black")
    ax_o.plot(xs, [r["objective"] for r in rows], "s-", color="black", label=objective_label + (" (reported)" if choice != "objective" else ""))
    if choice != "objective":
        ax_o.plot(xs, [r[choice] for r in rows], "^--", color="tab:purple", ms=4, lw=1, label=f"{objective_label} on the selection split (chooses)")
    chosen = "chosen" if choice != "objective" else "best"
    ax_o.plot([best[axis]], [best["objective"]], marker="*", ms=16, color="gold", mec="black", ls="none", label=f"{chosen}: {best['objective']:.4f} at {_fmt(best[axis])}")
    ax_o.set(xlabel=axis, ylabel=objective_label, title=f"{objective_label} vs {axis}")
    ax_o.grid(alpha=0.3)
    _legend_below(ax_o)


def _heatmap(ax, rows, axes, column, title, best) -> None:
    xa, ya = axes
    xs, ys = sorted({r[xa] for r in rows}), sorted({r[ya] for r in rows})
    grid = [[math.nan] * len(xs) for _ in ys]
    for r in rows:
        grid[ys.index(r[ya])][xs.index(r[xa])] = r[column]
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    values = [v for line in grid for v in line if not math.isnan(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    for j, _ in enumerate(ys):
        for i, _ in enumerate(xs):
            v = grid[j][i]
            if not math.isnan(v):
                light = hi > lo and (v - lo) / (hi - lo) > 0.6  # viridis is light at the top: dark text there
                ax.text(i, j, f"{v:.3f}", ha="center", va="center", fontsize=8, color="black" if light else "white")
    ax.plot([xs.index(best[xa])], [ys.index(best[ya])], marker="s", ms=22, mfc="none", mec="red", mew=2)
    ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
    ax.set(xlabel=xa, ylabel=ya, title=f"{title}\n(red square: best objective)" if column == "objective" else title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def _by_point(ax_m, ax_o, rows, axes, datasets, metric, best, objective_label) -> tuple:
    order = sorted(rows, key=lambda r: -r["objective"])
    idx = list(range(1, len(order) + 1))
    for i, ds in enumerate(datasets):
        ax_m.plot(idx, [r[f"{ds}/{metric}"] for r in order], "o", color=COLORS[i % len(COLORS)], label=ds)
    ax_m.set(xlabel="point, ranked by objective", ylabel=metric_label(metric), title=f"{metric_label(metric)} per point")
    ax_m.grid(alpha=0.3)
    _integer_ticks(ax_m)
    _legend_below(ax_m)
    ax_o.plot(idx, [r["objective"] for r in order], "s", color="black", label=objective_label)
    ax_o.set(xlabel="point, ranked by objective", ylabel=objective_label, title=f"{objective_label} per point (top 3: rank. point)")
    ax_o.grid(alpha=0.3)
    _integer_ticks(ax_o)
    _legend_below(ax_o)
    return ax_o, [((i + 1, r["objective"]), f"{i + 1}. {point_label(r, axes)}", {}) for i, r in enumerate(order[:3])], list(zip(idx, [r["objective"] for r in order]))


def _pareto(ax, rows, axes, datasets, metric, references, best) -> tuple:
    """Day vs night (any two datasets): every point coloured by its scale (or objective), the front, the references."""
    a, b = datasets
    pts = [(r[f"{a}/{metric}"], r[f"{b}/{metric}"]) for r in rows]
    front = pareto_front(pts)
    color_by = [r[axes[0]] for r in rows] if len(axes) == 1 else [r["objective"] for r in rows]
    sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color_by, cmap="viridis", s=36, zorder=3)
    ax.figure.colorbar(sc, ax=ax, fraction=0.046, label=axes[0] if len(axes) == 1 else "objective")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="crimson", lw=1.5, zorder=2, label="Pareto front")
    ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=90, facecolors="none", edgecolors="crimson", lw=1.5, zorder=4)
    k = rows.index(best)
    ax.plot([pts[k][0]], [pts[k][1]], marker="*", ms=16, color="gold", mec="black", ls="none", zorder=5, label=f"best ({point_label(best, axes, short=False)})")
    refs = [(label, (m[a][metric], m[b][metric])) for label, m in (references or {}).items() if a in m and b in m]
    for label, xy in refs:
        ax.scatter([xy[0]], [xy[1]], marker="D", s=110, facecolors="none", edgecolors="0.35", lw=1.2, zorder=1)
    if refs:
        ax.scatter([], [], marker="D", s=60, facecolors="none", edgecolors="0.35", label="reference models")
    short = len(axes) == 1
    ax.set(xlabel=f"{a} {metric_label(metric)}", ylabel=f"{b} {metric_label(metric)}", title="Pareto front" + ("" if short else f"\n(labels: {', '.join(axes)})"))
    ax.grid(alpha=0.3)
    ax.margins(x=0.14, y=0.1)
    _legend_below(ax)
    labelled = [i for i in range(len(rows)) if short or i in front or rows[i] is best] if len(rows) <= 24 else front
    items = [(pts[i], ", ".join(_fmt(rows[i][x]) for x in axes), {}) for i in labelled]
    items += [(xy, f"{label} alone", {"color": "0.3", "fontstyle": "italic"}) for label, xy in refs]
    return ax, items, pts


# ----------------------------------------------------------------------------------------------- search
def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_search(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, **kwargs: Any) -> Path:
    """``search_figure(...)`` written to ``path`` as PNG (atomically); keyword arguments as ``search_figure``."""
    return _save(search_figure(rows, **kwargs), path)


def search_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    objective_label: str = "objective",
    title: str = "search",
    axes: Sequence[str] = (),
    context: Mapping[str, Any] | None = None,
    subtitle: str | None = None,
    choice: str = "objective",
) -> Any:
    """A matplotlib ``Figure``: objective per trial with the best-so-far curve, the best trial starred; each dataset's normalized score per
    trial when the rows have ``<dataset>/norm``. ``context``/``subtitle`` as for ``plot_sweep``."""
    fig, grid = _figure(figsize=(7.5, 4.8))
    ax = grid[0][0]
    trials = list(range(1, len(rows) + 1))
    values = [r[choice] for r in rows]
    running, best = [], -math.inf
    for v in values:
        best = max(best, v)
        running.append(best)
    norms = [k[: -len("/norm")] for k in (rows[0] if rows else {}) if k.endswith("/norm")]
    for i, ds in enumerate(norms):
        ax.plot(trials, [r[f"{ds}/norm"] for r in rows], "_", ms=10, mew=2, color=COLORS[i % len(COLORS)], alpha=0.8, label=f"{ds} ÷ its reference")
    if choice != "objective":
        ax.plot(trials, [r["objective"] for r in rows], "s", color="tab:purple", ms=4, alpha=0.7, label=f"trial {objective_label} (reported)")
    ax.plot(trials, values, "o", color="0.25", label=f"trial {objective_label}" + (" on the selection split (chooses)" if choice != "objective" else ""))
    ax.step(trials, running, where="post", color="black", lw=1.2, label="best so far")
    k = max(range(len(values)), key=lambda i: values[i])
    where = f" at {point_label(rows[k], axes, short=False)}" if axes else ""
    ax.plot([k + 1], [values[k]], marker="*", ms=16, color="gold", mec="black", ls="none", label=f"best {values[k]:.4f} (trial {k + 1}){where}")
    ax.set(xlabel="trial", ylabel=f"{objective_label}\n(datasets: score ÷ reference)" if norms else objective_label, title=title)
    ax.set_xlim(0.5, len(rows) + 0.5)
    _integer_ticks(ax)
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=2)
    line = context_line(context, subtitle)
    if line:
        fig.suptitle(line, fontsize=9)
    fig.tight_layout()
    return fig
