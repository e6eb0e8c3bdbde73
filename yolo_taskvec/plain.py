"""Plain data: the one conversion of metadata, provenance and results into JSON/YAML-ready Python values."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any


def plain(obj: Any) -> Any:
    """Mappings -> dicts with string keys, sequences -> lists, numbers/strings/None as they are, non-finite floats and
    anything else (paths, tensors' reprs, objects) -> their string. Loading such data never needs yolo_taskvec."""
    if isinstance(obj, Mapping):  # integer keys stay integers (YAML class names); JSON writes them as strings
        return {(k if isinstance(k, (str, int)) and not isinstance(k, bool) else str(k)): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):  # numpy scalars: their number
        return plain(obj.item())
    return str(obj)
