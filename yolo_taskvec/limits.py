"""Resource bounds checked before anything is allocated (pure: no Ultralytics, no torch).

The numbers leave a wide margin over every architecture Ultralytics ships (measured on all its model yamls at their
largest scale: the largest tensor holds 11.1 M values, the largest model 173 M), so no real model or vector comes
near them, while a file that declares more is refused before a byte is decoded.
"""

from __future__ import annotations

import contextlib
import os

from .errors import TaskVecError

MAX_TENSOR_VALUES = 2**25  # one tensor: 33.5 M values (134 MB in fp32); Ultralytics' largest: 11.1 M
MAX_MODEL_VALUES = 2**28  # one model or one vector file, all tensors: 268 M values (1 GiB in fp32); largest: 173 M
MIN_IMGSZ = 32  # the largest YOLO stride
MAX_IMGSZ = 8192
MAX_BATCH = 1024
GB = 1e9


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``), or None where unknown."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_allocation(nbytes: int, what: str, error: type[TaskVecError] = TaskVecError) -> None:
    """Refuse an allocation of ``nbytes`` that does not fit in the memory available now."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise error(f"{what} would need {nbytes / GB:.1f} GB of memory, more than the {free / GB:.1f} GB available.")
