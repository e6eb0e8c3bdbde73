"""Smoke checks of every Ultralytics internal yolo-taskvec relies on, short enough to run against the oldest and the
newest Ultralytics the pin allows (``.ci/run`` runs ``-m smoke`` in a second environment with the oldest).

* every ``from ultralytics... import name`` in the package resolves (read from the package source, so a new import
  is covered without editing this file);
* the three internals the package patches for the length of a block (label-cache writer, NMS time limit, font
  check) exist with the signatures the patches assume, and the patches have their effect;
* model construction from a yaml (``parse_model`` on the meta device, ``Conv.default_act``), restricted and trusted
  checkpoint loading, and one real validation through the Evaluator.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DATASETS, REPO, data_yaml

pytestmark = pytest.mark.smoke


def _ultralytics_imports() -> list[tuple[str, str, str]]:
    """``(module, name, where)`` for every ``from ultralytics... import name`` in the package."""
    found = []
    for path in sorted((REPO / "yolo_taskvec").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ultralytics":
                found += [(node.module, alias.name, f"{path.name}:{node.lineno}") for alias in node.names]
    return found


def test_every_ultralytics_name_the_package_imports_exists():
    imports = _ultralytics_imports()
    assert len(imports) > 20
    missing = []
    for module, name, where in imports:
        try:
            owner = importlib.import_module(module)
        except ImportError:
            missing.append(f"{module} ({where})")
            continue
        if not hasattr(owner, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{module}.{name} ({where})")
    assert not missing, missing


def test_patched_internals_have_the_assumed_signatures():
    """The three block-scoped patches replace these functions; their parameters must be what the patches pass."""
    from ultralytics.data import dataset
    from ultralytics.data import utils as data_utils
    from ultralytics.utils import nms

    assert list(inspect.signature(dataset.save_dataset_cache_file).parameters) == ["prefix", "path", "x", "version"]
    assert "max_time_img" in inspect.signature(nms.non_max_suppression).parameters
    assert callable(data_utils.check_font) and "check_font" in inspect.getsource(data_utils.check_det_dataset)


def test_patches_take_effect_and_are_undone():
    from ultralytics.data import dataset
    from ultralytics.utils import nms

    from yolo_taskvec.evaluation import no_label_cache_writes, no_nms_time_limit

    saver, suppress = dataset.save_dataset_cache_file, nms.non_max_suppression
    with no_label_cache_writes(), no_nms_time_limit(123.0):
        assert dataset.save_dataset_cache_file is not saver
        assert nms.non_max_suppression.keywords == {"max_time_img": 123.0}
    assert dataset.save_dataset_cache_file is saver and nms.non_max_suppression is suppress


def test_validation_writes_no_label_cache_and_scores(tmp_path, base_pt):
    """A real validation (AutoBackend, the detection validator, select_device) on a private copy of coco8: metrics in
    [0, 1] and no labels/*.cache written beside the labels."""
    from yolo_taskvec.evaluation import evaluate

    root = tmp_path / "coco8"
    shutil.copytree(DATASETS / "coco8", root, symlinks=True, ignore=shutil.ignore_patterns("*.cache"))  # an earlier plain YOLO.val may have left one in the overlay
    yaml = tmp_path / "coco8.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n" + "".join(f"  {i}: c{i}\n" for i in range(80)))
    row = next(iter(evaluate(base_pt, yaml, imgsz=128, batch=4, device="cpu", progress=False)))
    assert 0.0 <= row["map50_95"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
    assert not list(root.rglob("*.cache"))


def test_dataset_yaml_resolution_needs_no_network():
    """``check_det_dataset`` with the font check patched out: a shared dataset resolves through datasets_dir."""
    from yolo_taskvec.data import load_data

    info = load_data(data_yaml("coco8.yaml"))
    assert Path(info["val"]).is_dir() and len(info["names"]) == 80


def test_model_yaml_builds_on_the_meta_device_and_for_real(tmp_path):
    """``planned_shapes`` (``parse_model`` on the meta device) matches the real build, the yaml's activation is used
    without ``eval`` and ``Conv.default_act`` is restored afterwards (Ultralytics 8.4.0 leaves it changed)."""
    from ultralytics.nn.modules import Conv
    from ultralytics.nn.tasks import yaml_model_load

    from yolo_taskvec.checkpoint import build_from_yaml, planned_shapes

    yaml = {**yaml_model_load("yolo26n.yaml"), "scale": "n", "activation": "nn.ReLU()"}
    before = Conv.default_act
    planned = planned_shapes(yaml, "yolo26n.yaml")
    module = build_from_yaml(yaml, "yolo26n.yaml")
    assert planned == {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert isinstance(module.model[0].act, torch.nn.ReLU) and module.yaml["activation"] == "nn.ReLU()"
    assert Conv.default_act is before


def test_checkpoints_load_restricted_and_trusted(base_pt):
    from yolo_taskvec.checkpoint import load_model

    restricted, trusted = load_model(base_pt), load_model(base_pt, trust=True)
    assert restricted.fingerprint == trusted.fingerprint and restricted.names == trusted.names


def test_extract_apply_save_reload(tmp_path, base_pt, night_pt):
    from yolo_taskvec import TaskVector, save
    from yolo_taskvec.checkpoint import load_model

    tv = TaskVector.from_models(base_pt, night_pt, parts=["model.0.*"])
    merged = TaskVector.load(tv.save(tmp_path / "v.safetensors")).apply(base_pt, scale=0.5)
    back = load_model(save(merged, tmp_path / "m.pt"))
    assert back.task == "detect" and back.fingerprint != load_model(base_pt).fingerprint
