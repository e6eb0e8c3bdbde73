"""PNG plots of sweeps and searches (matplotlib, headless ``Agg``): metric vs scale, Pareto fronts, search traces.

Plain functions over result rows (dicts with axis columns, ``<dataset>/<metric>`` columns and ``objective``);
every figure is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_output

METRIC_LABELS = {"map50_95": "mAP50-95", "map50": "mAP50", "mask_map50_95": "mask mAP50-95", "mask_map50": "mask mAP50"}


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


def _figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (7, 4.2)) -> tuple[Any, Any]:
    """A figure and its axes grid, made without pyplot so no global backend is touched (notebooks keep theirs)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
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


def plot_sweep(
    rows: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    datasets: Sequence[str],
    metric: str,
    path: str | os.PathLike,
    *,
    references: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    reference_for: Mapping[str, str] | None = None,
    objective_label: str = "objective",
    choice: str = "objective",
    context: Mapping[str, Any] | None = None,
) -> Path:
    """Metric vs scale per dataset (+ objective), or heatmaps for two axes; plus the Pareto front for two datasets.

    ``references``: ``{label: {dataset: {metric: value}}}`` of the reference models (drawn as dashed lines and
    as crosses in the Pareto panel); ``reference_for``: ``{dataset: label}``. ``choice``: the column the chosen
    point maximizes (``select_objective`` when a selection split chose it). ``context``: ``base``, ``inputs``,
    ``imgsz`` for the title.
    """
    varying = [a for a in axes if len({r[a] for r in rows}) > 1] or list(axes[:1])
    pareto = len(datasets) == 2
    if len(varying) == 2:
        panels = len(datasets) + 1 + pareto
    else:
        panels = 2 + pareto
    fig, ax = _figure(1, panels, figsize=(5.2 * panels, 4.4))
    ax = list(ax[0])
    best = max(rows, key=lambda r: r[choice])
    if len(varying) == 1:
        _lines(ax[0], ax[1], rows, varying[0], datasets, metric, best, references, reference_for, objective_label)
    elif len(varying) == 2:
        for i, ds in enumerate(datasets):
            _heatmap(ax[i], rows, varying, f"{ds}/{metric}", f"{ds}: {metric_label(metric)}", best)
        _heatmap(ax[len(datasets)], rows, varying, "objective", objective_label, best)
    else:
        _by_point(ax[0], ax[1], rows, axes, datasets, metric, best, objective_label)
    if pareto:
        _pareto(ax[-1], rows, varying, datasets, metric, references)
    where = ", ".join(f"{a}={_fmt(best[a])}" for a in varying)
    how = "chosen on the selection split" if choice == "select_objective" else "best"
    fig.suptitle(f"{context_title(context)}{how}: {where} — reported {objective_label} {best['objective']:.4f}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _lines(ax_m, ax_o, rows, axis, datasets, metric, best, references, reference_for, objective_label) -> None:
    rows = sorted(rows, key=lambda r: r[axis])
    xs = [r[axis] for r in rows]
    colors = __import__("matplotlib").rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ds in enumerate(datasets):
        c = colors[i % len(colors)]
        ax_m.plot(xs, [r[f"{ds}/{metric}"] for r in rows], "o-", color=c, label=ds)
        label = (reference_for or {}).get(ds)
        if references and label in references:
            ax_m.axhline(references[label][ds][metric], color=c, ls="--", lw=1, alpha=0.8, label=f"{ds} reference ({label})")
    ax_m.axvline(best[axis], color="0.5", ls=":", lw=1)
    ax_m.set(xlabel=axis, ylabel=metric_label(metric), title=f"{metric_label(metric)} vs {axis}")
    ax_m.grid(alpha=0.3)
    ax_m.legend(fontsize=8)
    has_norm = all(f"{ds}/norm" in rows[0] for ds in datasets)
    if has_norm:
        for i, ds in enumerate(datasets):
            ax_o.plot(xs, [r[f"{ds}/norm"] for r in rows], "o-", color=colors[i % len(colors)], alpha=0.45, ms=3, label=f"{ds} (normalized)")
        ax_o.axhline(1.0, color="0.6", lw=0.8)
    ax_o.plot(xs, [r["objective"] for r in rows], "s-", color="black", label=objective_label)
    ax_o.plot([best[axis]], [best["objective"]], marker="*", ms=16, color="gold", mec="black", ls="none", label=f"best ({_fmt(best[axis])})")
    ax_o.set(xlabel=axis, ylabel=objective_label, title=f"{objective_label} vs {axis}")
    ax_o.grid(alpha=0.3)
    ax_o.legend(fontsize=8)


def _heatmap(ax, rows, axes, column, title, best) -> None:
    xa, ya = axes
    xs, ys = sorted({r[xa] for r in rows}), sorted({r[ya] for r in rows})
    grid = [[math.nan] * len(xs) for _ in ys]
    for r in rows:
        grid[ys.index(r[ya])][xs.index(r[xa])] = r[column]
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for j, _ in enumerate(ys):
        for i, _ in enumerate(xs):
            if not math.isnan(grid[j][i]):
                ax.text(i, j, f"{grid[j][i]:.3f}", ha="center", va="center", fontsize=7, color="white")
    ax.plot([xs.index(best[xa])], [ys.index(best[ya])], marker="s", ms=18, mfc="none", mec="red", mew=2)
    ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
    ax.set(xlabel=xa, ylabel=ya, title=title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def _by_point(ax_m, ax_o, rows, axes, datasets, metric, best, objective_label) -> None:
    order = sorted(rows, key=lambda r: -r["objective"])
    idx = list(range(len(order)))
    for ds in datasets:
        ax_m.plot(idx, [r[f"{ds}/{metric}"] for r in order], "o", label=ds)
    ax_m.set(xlabel="point (sorted by objective)", ylabel=metric_label(metric), title=f"{metric_label(metric)} per point")
    ax_m.grid(alpha=0.3)
    ax_m.legend(fontsize=8)
    ax_o.plot(idx, [r["objective"] for r in order], "s-", color="black")
    for i, r in enumerate(order[:3]):
        ax_o.annotate(point_label(r, axes), (i, r["objective"]), fontsize=7, xytext=(4, -10 - 9 * i), textcoords="offset points")
    ax_o.set(xlabel="point (sorted by objective)", ylabel=objective_label, title=f"{objective_label} per point")
    ax_o.grid(alpha=0.3)


def _pareto(ax, rows, axes, datasets, metric, references) -> None:
    a, b = datasets
    pts = [(r[f"{a}/{metric}"], r[f"{b}/{metric}"]) for r in rows]
    front = pareto_front(pts)
    color_by = [r[axes[0]] for r in rows] if len(axes) == 1 else [r["objective"] for r in rows]
    sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color_by, cmap="viridis", s=36, zorder=2)
    ax.figure.colorbar(sc, ax=ax, fraction=0.046, label=axes[0] if len(axes) == 1 else "objective")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="crimson", lw=1.5, zorder=1, label="Pareto front")
    ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=90, facecolors="none", edgecolors="crimson", lw=1.5, zorder=3)
    if len(axes) == 1 or len(rows) <= 16:
        for r, p in zip(rows, pts):
            ax.annotate(point_label(r, axes), p, fontsize=7, xytext=(3, 3), textcoords="offset points")
    middle = (min(p[0] for p in pts) + max(p[0] for p in pts)) / 2
    for label, metrics in (references or {}).items():
        if a in metrics and b in metrics:
            xy = (metrics[a][metric], metrics[b][metric])
            right = xy[0] > middle  # keep the label inside the axes
            ax.scatter([xy[0]], [xy[1]], marker="D", s=110, facecolors="none", edgecolors="0.35", lw=1.2, zorder=1)
            ax.annotate(f"ref: {label}", xy, fontsize=7, color="0.3", xytext=(-8 if right else 8, 6), textcoords="offset points", ha="right" if right else "left")
    ax.set(xlabel=f"{a} {metric_label(metric)}", ylabel=f"{b} {metric_label(metric)}", title="Pareto front")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.08)
    ax.legend(fontsize=8, loc="lower left")


def context_title(context: Mapping[str, Any] | None) -> str:
    """``base + inputs, imgsz N`` as the first line of a title (empty without context)."""
    if not context:
        return ""
    inputs = ", ".join(map(str, context.get("inputs", [])))
    return f"{context.get('base', 'base')} + {inputs} ({context.get('method', '')}, imgsz {context.get('imgsz', '?')})\n"


def plot_search(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, objective_label: str = "objective", title: str = "search", axes: Sequence[str] = (), choice: str = "objective", context: Mapping[str, Any] | None = None) -> Path:
    """Objective per trial with the best-so-far curve; the best trial starred (``choice``: the column maximized)."""
    fig, grid = _figure()
    ax = grid[0][0]
    trials = list(range(1, len(rows) + 1))
    values = [r[choice] for r in rows]
    running, best = [], -math.inf
    for v in values:
        best = max(best, v)
        running.append(best)
    ax.plot(trials, values, "o", color="tab:blue", alpha=0.7, label="trial")
    ax.step(trials, running, where="post", color="black", label="best so far")
    k = max(range(len(values)), key=lambda i: values[i])
    where = f" at {point_label(rows[k], axes, short=False)}" if axes else ""
    ax.plot([k + 1], [values[k]], marker="*", ms=16, color="gold", mec="black", ls="none", label=f"best {values[k]:.4f}{where}")
    ax.set(xlabel="trial", ylabel=("selection " if choice == "select_objective" else "") + objective_label, title=context_title(context) + title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
