"""The plugin's own errors: one clear sentence each, shown by the CLI without a traceback."""

from __future__ import annotations


class TaskVecError(ValueError):
    """Base class of every error yolo-taskvec raises on purpose (bad input, mismatch, unsafe file)."""


class CheckpointError(TaskVecError):
    """A model file or object that is missing, unreadable or not an Ultralytics checkpoint."""


class VectorFileError(TaskVecError):
    """A task-vector file that is missing, corrupt, inconsistent or not a yolo-taskvec file."""


class MismatchError(TaskVecError):
    """Models or vectors that do not fit together (architecture, base fingerprint, classes, shapes)."""


class DataError(TaskVecError):
    """A dataset yaml that is missing, malformed or points at missing images."""


class OutputError(TaskVecError):
    """An output path that cannot be written safely."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (Ultralytics' "ERROR ❌️" prefix removed), or its type's name."""
    text = str(error).strip().replace("ERROR ❌️ ", "")
    return text.splitlines()[0] if text else type(error).__name__
