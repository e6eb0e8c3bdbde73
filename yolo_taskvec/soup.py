"""Greedy soups (Wortsman et al. 2022, Model soups, ICML): fine-tunes sorted by their own objective, each added to
the uniform soup (method ``average``) only when the soup's objective does not drop.

>>> from yolo_taskvec import greedy_soup
>>> soup = greedy_soup("yolo26n-base80.pt", ["a.pt", "b.pt", "c.pt"], data="val.yaml", select="train:0.2")
>>> soup.ingredients, yolo_taskvec.save(soup.best_model(), "soup.pt")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .backends import backend_options, running
from .errors import TaskVecError
from .runs import Evaluate, Run, RunResult, build_run_inputs, input_axis_names, point_loop, setup_run


def greedy_soup(
    base: Any,
    models: Sequence[Any] | None = None,
    data: str | Sequence[str] | None = None,
    *,
    out: str | os.PathLike | None = None,
    project: str | os.PathLike | None = None,
    name: str | None = None,
    exist_ok: bool = False,
    plot: bool = True,
    evaluator: Evaluate | None = None,
    verbose: bool = True,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    **fields: Any,
) -> RunResult:
    """Greedy soup of fine-tunes of ``base``: ``result.best_model()`` is the soup, ``result.ingredients`` its members.

    ``fields``: recipe fields (``bn``, ``bn_data``, ``force``, ...; the method is ``average``) and scoring fields as in
    ``sweep``. The run folder gets ``soup.json`` (resumable), ``soup.csv`` and ``soup.png``. With ``backend="ray"``
    the models alone are scored in parallel; each soup step needs the one before it.
    """
    if fields.get("method", "average") != "average":
        raise TaskVecError(f"a greedy soup averages its ingredients (method average), not {fields['method']}.")
    fields["method"] = "average"
    options = backend_options(fields, backend, address, workers, cpus_per_trial, gpus_per_trial)
    recipe, scoring = build_run_inputs(base, models, fields, data)
    names = input_axis_names(recipe)
    if len(names) < 2:
        raise TaskVecError("a greedy soup needs at least two fine-tuned models.")
    with running(options, verbose) as runner:
        run = setup_run("soup", recipe, scoring, names, {}, out=out, project=project, name=name, exist_ok=exist_ok, evaluator=evaluator, verbose=verbose)
        runner.start(run)
        scored, labels = run.references(runner)
        before = len(run.log.rows)
        rows = _greedy(run, run.prepared.names, runner)
        result = run.result(rows, {n: [0.0, 1.0] for n in run.prepared.names}, scored, labels, len(run.log.rows) - before,
                            lead_columns=("step", "candidate", "alone", "kept"), ingredients=[r["candidate"] for r in rows if r["kept"]])
        result.context.update(runner.describe())
        return run.finish(result, plot)


def _greedy(run: Run, names: Sequence[str], backend: Any) -> list[dict[str, Any]]:
    """Score each model alone (in parallel on a cluster), then add them best first while the soup's (selection)
    objective does not drop."""
    choice = run.scorer.choice_column
    one_hot = lambda chosen: {m: (1.0 if m in chosen else 0.0) for m in names}  # noqa: E731
    strip = lambda row: {k: v for k, v in row.items() if k != "point"}  # noqa: E731

    def score(chosen: Sequence[str]) -> dict[str, Any]:
        return strip(point_loop([one_hot(chosen)], run, desc="greedy soup", backend=backend)[0])

    alone_rows = point_loop([one_hot([m]) for m in names], run, desc="greedy soup: models alone", backend=backend)
    alone = {m: row[choice] for m, row in zip(names, alone_rows)}
    order = sorted(names, key=lambda m: -alone[m])
    soup = [order[0]]
    best = strip(alone_rows[names.index(order[0])])
    steps = [{"step": 1, "candidate": order[0], "alone": alone[order[0]], "kept": True, "tried": order[0], **best}]
    for i, m in enumerate(order[1:], start=2):
        row = score([*soup, m])
        kept = row[choice] >= best[choice]
        steps.append({"step": i, "candidate": m, "alone": alone[m], "kept": kept, "tried": " + ".join([*soup, m]), **row})
        if kept:
            soup, best = [*soup, m], row
    return steps
