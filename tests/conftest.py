"""Test set-up: real assets from ``../shared/assets`` (or ``$YOLO_TASKVEC_ASSETS``), Ultralytics pointed at them
through its own settings in a temporary ``YOLO_CONFIG_DIR``, network and auto-install off.

In CI (``CI=true``) a missing asset fails the run instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("YOLO_TASKVEC_ASSETS", REPO.parent / "shared" / "assets")).resolve()
WEIGHTS = ASSETS / "weights"
DATA_YAMLS = REPO / "datasets"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="yolo-taskvec-cfg-"))


def _overlay(source: Path, target: Path) -> Path:
    """A view of the shared datasets whose label folders are private copies and whose images are symlinks.

    Ultralytics writes a labels ``.cache`` beside the label files whenever it may (always, as root); the view keeps
    those writes out of the shared assets, which tests must never modify.
    """
    if not source.is_dir():
        return source
    for src in source.rglob("*"):
        dst = target / src.relative_to(source)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.suffix.lower() in (".txt", ".yaml", ".yml", ".json") and src.stat().st_size < 5_000_000:
            dst.write_bytes(src.read_bytes())
        else:
            dst.symlink_to(src)
    return target


DATASETS = _overlay(ASSETS / "datasets", _CONFIG_DIR / "datasets")
os.environ.update(
    YOLO_CONFIG_DIR=str(_CONFIG_DIR),
    YOLO_OFFLINE="1",
    YOLO_AUTOINSTALL="false",
    YOLO_TASKVEC_ASSETS=str(ASSETS),
    MPLBACKEND="Agg",
)
# Ultralytics binds datasets_dir at import time, so the settings file is written first, by Ultralytics itself.
subprocess.run(
    [
        sys.executable,
        "-c",
        "import sys; from ultralytics.utils import SETTINGS; "
        "SETTINGS.update(datasets_dir=sys.argv[1], weights_dir=sys.argv[2], runs_dir=sys.argv[3], sync=False, raytune=False)",
        str(DATASETS),
        str(WEIGHTS),
        str(_CONFIG_DIR / "runs"),
    ],
    check=True,
    capture_output=True,
)


def need(path: Path) -> Path:
    """An asset path; skipped when absent locally, a failure in CI."""
    if not path.exists():
        message = f"missing test asset {path} (set YOLO_TASKVEC_ASSETS to the shared assets folder)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def weight(name: str) -> Path:
    return need(WEIGHTS / name)


def data_yaml(name: str) -> Path:
    """A dataset yaml from the project's ``datasets/`` (paths resolve through ``datasets_dir``)."""
    need(DATASETS / Path(name).stem)
    path = DATA_YAMLS / name
    return need(path if path.exists() else DATASETS / name)


@pytest.fixture(scope="session")
def base_pt() -> Path:
    return weight("yolo26n-base80.pt")


@pytest.fixture(scope="session")
def night_pt() -> Path:
    return weight("yolo26n-fruit-night.pt")


@pytest.fixture(scope="session")
def seg_pt() -> Path:
    return weight("yolo26n-seg-cocomini.pt")


@pytest.fixture(scope="session")
def base_model(base_pt):
    from yolo_taskvec.checkpoint import load_model

    return load_model(base_pt)


@pytest.fixture(scope="session")
def night_model(night_pt):
    from yolo_taskvec.checkpoint import load_model

    return load_model(night_pt)


@pytest.fixture(scope="session")
def night_vector(base_model, night_model):
    from yolo_taskvec import TaskVector

    return TaskVector.from_models(base_model, night_model, name="fruit-night")
