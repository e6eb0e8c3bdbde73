"""yolo-taskvec: task vectors and model merging for Ultralytics YOLO."""

from __future__ import annotations

from . import compress  # noqa: F401  (registers the compact encodings with files.DECODERS)
from .api import TaskVector, merge, save
from .bn import POLICIES as BN_POLICIES
from .bootstrap import ImageStats, Interval, bootstrap, difference, interval
from .checkpoint import load_model
from .coco import export_coco
from .data import resolve_yaml
from .errors import TaskVecError
from .evaluation import Evaluator, Results, evaluate
from .heads import union_classes, union_data
from .methods import method_names
from .recipe import Recipe, RecipeError
from .runs import Objective, RunResult, Scoring
from .search import search
from .soup import greedy_soup
from .swap import swap, swapped, unswap
from .sweep import sweep
from .version import __version__

__all__ = [
    "BN_POLICIES",
    "Evaluator",
    "ImageStats",
    "Interval",
    "Objective",
    "Recipe",
    "RecipeError",
    "Results",
    "RunResult",
    "Scoring",
    "TaskVecError",
    "TaskVector",
    "__version__",
    "bootstrap",
    "difference",
    "evaluate",
    "export_coco",
    "greedy_soup",
    "interval",
    "load_model",
    "merge",
    "method_names",
    "resolve_yaml",
    "save",
    "search",
    "swap",
    "swapped",
    "sweep",
    "union_classes",
    "union_data",
    "unswap",
]
