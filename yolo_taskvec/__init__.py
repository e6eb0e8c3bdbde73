"""yolo-taskvec: task vectors and model merging for Ultralytics YOLO."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import TaskVector, merge, save
from .checkpoint import load_model
from .errors import TaskVecError
from .merging import BN_POLICIES
from .methods import method_names

__all__ = ["BN_POLICIES", "TaskVecError", "TaskVector", "__version__", "load_model", "merge", "method_names", "save"]
