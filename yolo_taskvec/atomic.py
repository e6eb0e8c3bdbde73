"""Atomic, input-preserving writes: a temporary file beside the target, verified, fsynced, then ``os.replace``.

The rule for outputs (every mode, API and command line):

* an output is never an input of the run, and never lies inside an input dataset's folder;
* an existing output file is replaced only with ``exist_ok`` (the API's default: a path you name is yours to
  replace; the command line passes ``exist_ok=False`` unless ``exist_ok=true`` is given);
* a write that fails or is interrupted (an exception, a full disk, SIGINT or SIGTERM) leaves the previous file as it
  was and no temporary behind, and never reports success.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import OutputError

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _read_only(path: Path) -> bool:
    """No write bit at all (checked on the mode bits, so it holds for root too), or no write access."""
    return not (path.stat().st_mode & 0o222) or not os.access(path, os.W_OK)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_protected(path: Path, protect: Iterable[str | os.PathLike]) -> None:
    """Refuse a path inside any protected folder (an input dataset's folder)."""
    target = path.resolve()
    for root in protect:
        if root is None:
            continue
        root = Path(root).expanduser().resolve()
        if _inside(target, root):
            raise OutputError(f"output {path} lies inside the dataset folder {root}; write it outside every input dataset so no dataset file is overwritten.")


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, exist_ok: bool = True, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output that is an input, lies in a ``protect`` folder, exists without ``exist_ok``, is a directory
    or a read-only file, or is inside a missing or read-only folder."""
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
    _check_protected(path, protect)
    if path.exists() and not exist_ok:
        raise OutputError(f"output {path} already exists; choose another name, or add exist_ok=true to replace it.")
    if path.exists() and _read_only(path):
        raise OutputError(f"output {path} exists and is read-only; choose another name.")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist.")
    if _read_only(parent):
        raise OutputError(f"cannot write {path}: no write permission in {parent}.")
    return path


def check_output_folder(folder: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, exist_ok: bool = True, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output folder that is a file or an input, lies in a ``protect`` folder, exists (not empty) without
    ``exist_ok``, or cannot be written (read-only, or its nearest existing parent is). Creates nothing."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file; give a folder name.")
    for item in inputs:
        if item is not None and folder.resolve() == Path(item).expanduser().resolve():
            raise OutputError(f"output folder {folder} is also an input; choose another folder.")
    _check_protected(folder, protect)
    if folder.is_dir() and not exist_ok and any(folder.iterdir()):
        raise OutputError(f"output folder {folder} already exists and is not empty; choose another folder, or add exist_ok=true to write into it.")
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create folder {folder}: {existing} is a file.")
    if _read_only(existing):
        raise OutputError(f"cannot write into {folder}: no write permission in {existing}.")
    return folder


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
def held_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM arriving inside the block are recorded instead of acting (main thread only).

    A signal that interrupts a writer mid-archive surfaces, deep inside a C++ serializer, as an error that a retrying
    wrapper takes for a transient failure; held, it cannot cut a write in half, and the caller decides after it.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for sig in HELD_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN or handler is None:
            continue
        previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _deliver(received: list[int], path: Path) -> None:
    """Act on a held signal as it would have acted (KeyboardInterrupt, the caller's handler, or termination); if
    nothing acts, the write is still reported as failed."""
    signal.raise_signal(received[0])
    raise OutputError(f"the write of {path} was interrupted by {signal.Signals(received[0]).name}; nothing was written.")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, exist_ok: bool = True, protect: Iterable[str | os.PathLike] = (), verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one step.

    ``verify(tmp)`` checks the finished temporary file before it is committed (a ValueError with the reason refuses
    it). On any error the temporary file is removed and ``path`` is left as it was (absent or the previous file);
    file-system failures (disk full, permissions) become one-sentence ``OutputError``s. SIGINT/SIGTERM during the
    write are held and delivered after the temporary file is removed, before anything is committed. A writer killed
    mid-write (SIGKILL) leaves only its temporary file, which the next write of the same path removes.
    """
    path = check_output(path, inputs, exist_ok=exist_ok, protect=protect)
    folder = path.resolve().parent
    remove_stale_temps(folder / path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
    except OSError as e:
        raise output_error(path, e) from e
    os.close(fd)
    tmp = Path(tmp)
    received: list[int] = []
    try:
        with held_signals() as received:
            try:
                yield tmp
                if not received and verify is not None:
                    try:
                        verify(tmp)
                    except ValueError as e:
                        raise OutputError(f"the file written for {path} failed verification ({e}); nothing was written and any previous file is unchanged.") from e
                if not received:
                    os.chmod(tmp, _file_mode(folder / path.name))
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                if not received:
                    os.replace(tmp, path)
                    _fsync_dir(folder)
            except BaseException as e:
                tmp.unlink(missing_ok=True)
                mapped = output_error(path, e) if isinstance(e, Exception) and not isinstance(e, OutputError) else None
                if mapped is not None:
                    raise mapped from e
                raise
            finally:
                if received:
                    tmp.unlink(missing_ok=True)
    finally:
        if received:  # after the handlers are restored; a held Ctrl-C wins over an error of the same write
            _deliver(received, path)


def write_text_atomic(path: str | os.PathLike, text: str, inputs: Iterable[str | os.PathLike] = (), *, exist_ok: bool = True, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a text file atomically."""
    with atomic_output(path, inputs, exist_ok=exist_ok, protect=protect) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
