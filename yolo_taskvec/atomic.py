"""Atomic, input-preserving writes: a temporary file beside the target, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputError


def _read_only(path: Path) -> bool:
    """No write bit at all (checked on the mode bits, so it holds for root too), or no write access."""
    return not (path.stat().st_mode & 0o222) or not os.access(path, os.W_OK)


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output that is an input, a directory, a read-only file, or inside a missing or read-only folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name.")
    for item in inputs:
        if item is None:
            continue
        item = Path(item).expanduser()
        if path.resolve() == item.resolve() or (path.exists() and item.exists() and path.samefile(item)):
            raise OutputError(f"output {path} is also an input; choose another name so the input is not overwritten.")
    if path.exists() and _read_only(path):
        raise OutputError(f"output {path} exists and is read-only; choose another name.")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist.")
    if _read_only(parent):
        raise OutputError(f"cannot write {path}: no write permission in {parent}.")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was (absent or the previous file).
    """
    path = check_output(path, inputs)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise OutputError(f"no space left on the device while writing {path}; nothing was written.") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(f"cannot write {path}: {e.strerror.lower()}.") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a text file atomically."""
    with atomic_output(path, inputs) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
