"""yolo-taskvec: task vectors and model merging for Ultralytics YOLO."""

from __future__ import annotations

from . import compress  # noqa: F401  (registers the compact encodings with files.DECODERS)
from .api import TaskVector, merge, save
from .bn import POLICIES as BN_POLICIES
from .bootstrap import ImageStats, Interval, bootstrap, difference, interval
from .branches import gflops
from .checkpoint import load_model, resolve_weights
from .coco import export_coco
from .data import image_files, load_data, resolve_yaml
from .errors import TaskVecError
from .evaluation import (
    Evaluator,
    Results,
    evaluate,
    no_nms_time_limit,
    quiet_ultralytics,
)
from .classunion import union_classes
from .heads import union_data
from .merging import merge_states
from .methods import get_method, method_names
from .plots import pareto_front
from .recipe import Recipe, RecipeError
from .repair import repair
from .runs import Objective, RunResult, Scoring
from .search import search
from .soup import greedy_soup
from .swap import swap, swapped, unswap
from .sweep import sweep
from .taskvector import is_bn_stat
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
    "get_method",
    "gflops",
    "greedy_soup",
    "image_files",
    "interval",
    "is_bn_stat",
    "load_data",
    "load_model",
    "merge",
    "merge_states",
    "method_names",
    "no_nms_time_limit",
    "pareto_front",
    "quiet_ultralytics",
    "repair",
    "resolve_weights",
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
