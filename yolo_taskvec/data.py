"""Dataset yamls through Ultralytics (``datasets_dir``-relative paths), with one-sentence errors and no downloads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError


def load_data(data: str | os.PathLike, split: str = "val") -> dict[str, Any]:
    """Ultralytics' parsed dataset dict for a yaml (never downloads); clear error when anything is missing."""
    from ultralytics.data.utils import check_det_dataset

    text = str(data)
    path = Path(text).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise DataError(f"dataset {text} is not a .yaml file.")
    text = str(resolve_yaml(path))
    if Path(text).is_file():
        try:
            with open(text, "rb"):
                pass
        except OSError as e:
            raise DataError(f"cannot read dataset yaml {text}: {(e.strerror or type(e).__name__).lower()}.") from e
    try:
        with _no_font_download():
            return check_det_dataset(text, autodownload=False, split=split)
    except FileNotFoundError as e:
        message = str(e).splitlines()[0]
        if "images not found" in message or "missing path" in message:
            raise DataError(f"dataset {text}: {message.split('images not found, ')[-1]} (images not found).") from e
        raise DataError(f"dataset yaml {text} not found (also looked in Ultralytics' datasets).") from e
    except Exception as e:  # noqa: BLE001 - Ultralytics raises SyntaxError/TypeError/YAML errors for bad yamls
        raise DataError(f"dataset yaml {text} is malformed: {_reason(e, text)}") from e


_PATCHES: dict[tuple[int, str], list[Any]] = {}  # (id(owner), name) -> [original, blocks inside]
_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block and restored after it (an Ultralytics behaviour switched off).

    Blocks may overlap across threads (the studio scores while a sweep runs): the first one in saves the original,
    the last one out restores it, so one thread's exit never switches the behaviour back under another's feet.
    """
    key = (id(owner), name)
    with _PATCH_LOCK:
        entry = _PATCHES.setdefault(key, [getattr(owner, name), 0])
        entry[1] += 1
        setattr(owner, name, value)
    try:
        yield
    finally:
        with _PATCH_LOCK:
            entry[1] -= 1
            if entry[1] == 0:
                setattr(owner, name, entry[0])
                del _PATCHES[key]


def _no_font_download() -> contextlib.AbstractContextManager[None]:
    """``check_det_dataset`` asks GitHub for a plotting font (even with ``YOLO_OFFLINE=1``); reading a dataset needs
    none, so the check is skipped here (Ultralytics' plotting still fetches it when it draws)."""
    import ultralytics.data.utils as data_utils

    return patched(data_utils, "check_font", lambda *args, **kwargs: None)


def _reason(error: BaseException, path: str) -> str:
    """Ultralytics' first line, without emoji, links or the repeated file name, ending in one period."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    first = re.sub(r"(Verify YAML with )?https?://\S+", "", first.replace("❌", ""))
    for name in (f"'{path}'", path):
        first = first.replace(f" in {name}", "").replace(name, "")
    first = re.sub(r"\s+", " ", first).strip(" :.") or type(error).__name__
    if first.startswith("is "):
        first = "it " + first
    return first + "."


def resolve_yaml(path: Path) -> Path:
    """A bare yaml name not in the working folder is looked up in Ultralytics' ``datasets_dir``."""
    from ultralytics.utils import SETTINGS

    if not path.exists() and len(path.parts) == 1:
        candidate = Path(SETTINGS["datasets_dir"]) / path
        if candidate.exists():
            return candidate
    return path


def image_files(data: str | os.PathLike, split: str = "train") -> list[Path]:
    """Image files of one split of a dataset yaml, sorted."""
    from ultralytics.data.utils import IMG_FORMATS

    info = load_data(data, split=split)
    roots = info.get(split) or []
    files: list[Path] = []
    for root in roots if isinstance(roots, list) else [roots]:
        root = Path(root)
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS]
        elif root.suffix == ".txt" and root.exists():
            base = root.parent
            for line in root.read_text().splitlines():
                if line.strip():
                    p = Path(line.strip())
                    files.append(p if p.is_absolute() else (base / p).resolve())
    if not files:
        raise DataError(f"dataset {data} has no images in its '{split}' split.")
    return sorted(files)


def dataset_name(data: str | os.PathLike) -> str:
    """Short name of a dataset yaml for tables and plots (``fruit80-night``)."""
    return Path(str(data)).stem


SPLITS = ("train", "val", "test")


def dataset_folders(data: str | os.PathLike) -> list[Path]:
    """The folders a dataset yaml points at (its ``path:`` and each split's image folder, or a list file's folder):
    outputs of any mode are refused inside them (``atomic.check_output(..., protect=...)``)."""
    info = load_data(data, split="val")
    folders = {Path(info["path"]).resolve()} if info.get("path") else set()
    for split in SPLITS:
        roots = info.get(split) or []
        for root in roots if isinstance(roots, list) else [roots]:
            root = Path(root)
            folders.add((root if root.is_dir() else root.parent).resolve())
    return sorted(folders)


def dataset_identity(data: str | os.PathLike, splits: Iterable[str] = SPLITS) -> str:
    """A SHA-256 naming one dataset's content, for resume keys (``data.yaml`` of two Roboflow exports share a stem):
    the resolved yaml path, the yaml's bytes, and for each split its image files (relative path, size, mtime) and
    its label files (relative path and content)."""
    from ultralytics.data.utils import img2label_paths

    path = resolve_yaml(Path(str(data)).expanduser()).resolve()
    h = hashlib.sha256()
    h.update(f"yaml|{path}\n".encode())
    h.update(path.read_bytes())
    info = load_data(data, split="val")
    for split in splits:
        if not info.get(split):
            continue
        files = image_files(data, split)
        root = Path(os.path.commonpath([str(f) for f in files])) if len(files) > 1 else files[0].parent
        h.update(f"\nsplit|{split}|{len(files)}\n".encode())
        for image, label in zip(files, img2label_paths([str(f) for f in files])):
            st = image.stat()
            h.update(f"{image.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            label = Path(label)
            h.update(hashlib.sha256(label.read_bytes()).digest() if label.is_file() else b"no-label")
    return h.hexdigest()
