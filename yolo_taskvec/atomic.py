"""Atomic, input-preserving writes: a temporary file beside the target, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import stat
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
    if path.exists() and not path.is_file():
        raise OutputError(f"output {path} exists and is not a regular file (a device or pipe?); choose another name.")
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


TEMP_SUFFIX = ".tmp"
_OS_ERROR = re.compile(r"os error (\d+)")


_TEMP_TAIL = re.compile(r"(\d+)\.[a-z0-9_]+" + re.escape(TEMP_SUFFIX))


def _temp_prefix(path: Path) -> str:
    """Temporary files are ``.<name>.<pid>.<random>.tmp`` beside the target (the pid lets a later write clean up)."""
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` left by writers that were killed (their process is gone)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"):
        tail = _TEMP_TAIL.fullmatch(tmp.name[len(path.name) + 2 :])
        if tail and not _alive(int(tail.group(1))):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _errno_of(error: BaseException) -> int | None:
    """The OS error number behind an exception: an OSError in its chain, or Rust's "(os error N)" text."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        match = _OS_ERROR.search(str(error))
        if match:
            return int(match.group(1))
        error = error.__cause__  # not __context__: an unrelated OSError handled earlier is no cause
    return None


def output_error(path: Path, error: BaseException) -> OutputError | None:
    """One-sentence OutputError for a failed write, or None when the failure is not about the file system."""
    number = _errno_of(error)
    if number is None:
        return None
    if number in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on the device while writing {path}; nothing was written.")
    if number == errno.EFBIG:
        return OutputError(f"cannot write {path}: the file size limit was exceeded; nothing was written.")
    if number in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {path}: {os.strerror(number).lower()}.")
    return OutputError(f"cannot write {path}: {os.strerror(number).lower()} (errno {number}); nothing was written.")


def _file_mode(path: Path) -> int:
    """The mode a new output gets: the replaced file's, else 0o666 minus the umask (mkstemp's 0o600 is private)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(path.stat().st_mode)
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask can only swap)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/file system can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was (absent or the previous file);
    file-system failures (disk full, permissions) become one-sentence ``OutputError``s. A writer killed
    mid-write leaves only its temporary file, which the next write of the same path removes.
    """
    path = check_output(path, inputs)
    folder = path.resolve().parent
    remove_stale_temps(folder / path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
    except OSError as e:
        raise output_error(path, e) from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _file_mode(folder / path.name))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        mapped = output_error(path, e) if isinstance(e, Exception) and not isinstance(e, OutputError) else None
        if mapped is not None:
            raise mapped from e
        raise


def write_text_atomic(path: str | os.PathLike, text: str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a text file atomically."""
    with atomic_output(path, inputs) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
