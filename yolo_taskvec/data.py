"""Dataset yamls through Ultralytics (``datasets_dir``-relative paths), with one-sentence errors and no downloads."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
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


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block and restored after it (an Ultralytics behaviour switched off)."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


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
