"""yolo-taskvec: task vectors and model merging for Ultralytics YOLO."""

from __future__ import annotations

__version__ = "0.1.0"

from . import compress  # noqa: F401  (registers the compact encodings with files.DECODERS)
from .api import TaskVector, merge, save
from .checkpoint import load_model
from .coco import export_coco
from .errors import TaskVecError
from .evaluation import Evaluator, Results, evaluate
from .heads import union_classes, union_data
from .merging import BN_POLICIES
from .methods import method_names
from .search import greedy_soup, search
from .sweep import sweep
from .swap import swap, swapped, unswap

__all__ = ["BN_POLICIES", "Evaluator", "Results", "TaskVecError", "TaskVector", "__version__", "evaluate", "export_coco", "greedy_soup", "load_model", "merge", "method_names", "save", "search", "swap", "swapped", "sweep", "union_classes", "union_data", "unswap"]
