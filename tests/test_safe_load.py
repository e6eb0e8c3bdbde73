"""Untrusted model files: ``.pt`` checkpoints are pickles, so loading one can run code.

* ``ULTRALYTICS_SAFE_LOAD=1`` (Ultralytics' allow-listed ``weights_only`` loader) works end to end: load base and
  fine-tune, extract, apply, save, reload — in a real process with the variable set.
* A malicious pickle (``__reduce__`` calling ``os.system``) is refused under safe loading without running anything;
  without it, it runs — which is why the docs say to load only trusted checkpoints or to set the variable.
* ``convert``: a trusted checkpoint becomes one safetensors file (weights + yaml, names, task, train args) that
  rebuilds the model with no unpickling and no ``eval``; the round trip is exact (tensors and val metrics).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import data_yaml

from yolo_taskvec.checkpoint import load_model
from yolo_taskvec.cli import main
from yolo_taskvec.convert import from_safetensors, to_safetensors
from yolo_taskvec.errors import CheckpointError

SCRIPT = Path(sys.executable).parent / "yolo-taskvec"

EVIL = """
import os, sys, torch

class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

torch.save({"model": Evil(), "train_args": {}}, sys.argv[1])
"""


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint whose unpickling runs ``touch <marker>``; made in a subprocess (saving runs nothing)."""
    d = tmp_path_factory.mktemp("evil")
    path, marker = d / "evil.pt", d / "PWNED"
    subprocess.run([sys.executable, "-c", EVIL, str(path), str(marker)], check=True)
    assert path.exists() and not marker.exists()
    return path, marker


def safe_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", **extra}


def test_malicious_pickle_refused_by_safe_loading(evil, tmp_path):
    path, marker = evil
    with pytest.raises(CheckpointError, match=r"safe loading refused .*evil\.pt: it references code outside Ultralytics' allow-list \(posix\.system\); nothing was executed\."):
        load_model(path, safe=True)
    assert not marker.exists()
    run = subprocess.run([str(SCRIPT), "apply", f"base={path}", "vectors=x.safetensors", f"out={tmp_path / 'm.pt'}"], capture_output=True, text=True, env=safe_env(), timeout=300)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "safe loading refused" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_without_safe_loading_a_pickle_runs_code(evil):
    """The documented hazard, shown in a separate process: the default loader executes the payload."""
    path, marker = evil
    env = {k: v for k, v in os.environ.items() if k != "ULTRALYTICS_SAFE_LOAD"}
    code = "import sys; from yolo_taskvec.checkpoint import load_model\ntry:\n    load_model(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)"
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert "is not an Ultralytics checkpoint" in run.stdout  # refused afterwards, but too late:
    assert marker.exists()
    marker.unlink()


def test_object_of_a_class_is_refused_by_safe_loading(tmp_path):
    """An arbitrary (harmless-looking) object: the default loader builds it, the safe loader will not."""
    import argparse

    torch.save({"model": argparse.Namespace(x=1)}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match=r"obj\.pt is not an Ultralytics checkpoint: it holds a dict with keys \['model'\]"):
        load_model(tmp_path / "obj.pt", safe=False)
    with pytest.raises(CheckpointError, match=r"safe loading refused .*obj\.pt: it references code outside Ultralytics' allow-list \(argparse\.Namespace\)"):
        load_model(tmp_path / "obj.pt", safe=True)


SAFE_RELOAD = """
import json, sys, torch
import ultralytics.utils
calls = []
real = torch.load
def spy(*args, **kwargs):
    calls.append(kwargs.get("weights_only"))
    return real(*args, **kwargs)
torch.load = spy
from ultralytics import YOLO
from yolo_taskvec.checkpoint import load_model
merged = load_model(sys.argv[1])
yolo = YOLO(sys.argv[1])
print(json.dumps({"safe": ultralytics.utils.SAFE_LOAD, "weights_only": calls, "task": yolo.task, "vectors": merged.ckpt["taskvec"]["vectors"], "scale": merged.ckpt["taskvec"]["scale"]}))
"""


def test_safe_load_end_to_end(tmp_path, base_pt, night_pt):
    """Load base + fine-tune, extract, apply, save and reload with ULTRALYTICS_SAFE_LOAD=1 in real processes."""
    env = safe_env()
    vector, merged = tmp_path / "night.safetensors", tmp_path / "merged.pt"
    for argv in (["extract", f"base={base_pt}", f"tuned={night_pt}", f"out={vector}"], ["apply", f"base={base_pt}", f"vectors={vector}", "scale=0.5", f"out={merged}"]):
        run = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", SAFE_RELOAD, str(merged)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["safe"] is True and result["weights_only"] and all(result["weights_only"]), result  # every load was weights_only
    assert result["task"] == "detect" and result["vectors"] == ["yolo26n-fruit-night"] and result["scale"] == 0.5


# ----------------------------------------------------------------------------------------------- convert
@pytest.fixture(scope="module")
def converted(tmp_path_factory, base_pt) -> Path:
    return to_safetensors(base_pt, tmp_path_factory.mktemp("convert") / "base80.safetensors")


def test_convert_round_trip_is_exact(converted, base_model):
    model = from_safetensors(converted)
    state = model.model.state_dict()
    assert state.keys() == base_model.module.state_dict().keys()
    for key, value in base_model.module.state_dict().items():
        assert torch.equal(state[key].to(value.dtype), value), key
    assert model.task == "detect" and model.model.names == base_model.names
    assert model.model.yaml == base_model.yaml
    assert dict(model.ckpt["train_args"]) == dict(base_model.ckpt["train_args"])
    assert load_model(converted).fingerprint == base_model.fingerprint  # usable wherever a model is expected
    assert converted.stat().st_size < 1.01 * base_model.path.stat().st_size  # fp16, like the checkpoint


def test_converted_model_validates_identically(converted, base_pt):
    from ultralytics import YOLO

    kwargs = dict(data=str(data_yaml("fruit80.yaml")), imgsz=320, batch=16, plots=False, verbose=False, device="cpu")
    original = YOLO(str(base_pt)).val(**kwargs)
    rebuilt = from_safetensors(converted).val(**kwargs)
    assert rebuilt.box.map == original.box.map and rebuilt.box.map50 == original.box.map50
    assert abs(original.box.map - 0.440) < 0.01


NO_PICKLE = """
import pickle, sys, torch
import ultralytics.nn.tasks, yolo_taskvec.convert

def refuse(*args, **kwargs):
    raise AssertionError("unpickling attempted")

class NoUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        refuse()

torch.load = pickle.load = pickle.loads = refuse
pickle.Unpickler = NoUnpickler
model = yolo_taskvec.convert.from_safetensors(sys.argv[1])
print("OK", model.task, len(model.model.names), sum(p.numel() for p in model.model.parameters()))
"""


def test_converted_model_loads_without_any_unpickling(converted, base_model):
    run = subprocess.run([sys.executable, "-c", NO_PICKLE, str(converted)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    params = sum(p.numel() for p in base_model.module.parameters())
    assert run.stdout.strip().splitlines()[-1] == f"OK detect 80 {params}"


def _with_yaml(src: Path, dst: Path, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    yaml = json.loads(metadata["yaml"])
    change(yaml)
    save_file(tensors, str(dst), metadata={**metadata, "yaml": json.dumps(yaml)})
    return dst


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda y: y.update(activation="__import__('os').system('touch {marker}')"), r"has activation .*; only .* as nn\.<Name>\(numbers\) are accepted"),
        (lambda y: y["backbone"][0].__setitem__(2, "torch_safe_load"), r"names 'torch_safe_load', which is not a known model layer"),
        (lambda y: y["backbone"][0].__setitem__(2, "DetectionModel"), r"names 'DetectionModel', which is not a known model layer"),
        (lambda y: y["backbone"][0].__setitem__(2, "TorchVision"), r"uses TorchVision, which downloads weights when built"),
        (lambda y: y["backbone"][0].__setitem__(3, [10**9, 3, 2]), r"has a layer argument 1e\+09, far beyond any real architecture"),
        (lambda y: y.pop("head"), r"its model yaml has no 'backbone'/'head' layer lists"),
        (lambda y: y["backbone"][0].__setitem__(3, [32, 3, 2]), r"its tensors do not fit the architecture in its metadata \(e\.g\. model\.0\.conv\.weight\)"),
    ],
    ids=["eval_activation", "non_layer_callable", "nested_model", "downloading_layer", "absurd_width", "no_head", "tensors_mismatch"],
)
def test_hostile_converted_yaml_is_refused_without_running_it(converted, tmp_path, change, expected):
    marker = tmp_path / "PWNED"

    def edit(yaml):
        change(yaml)
        if isinstance(yaml.get("activation"), str):
            yaml["activation"] = yaml["activation"].format(marker=marker)

    path = _with_yaml(converted, tmp_path / "hostile.safetensors", edit)
    with pytest.raises(CheckpointError, match=expected):
        from_safetensors(path)
    assert not marker.exists()


def test_convert_cli_both_ways(base_pt, base_model, tmp_path, capsys):
    st, pt = tmp_path / "b.safetensors", tmp_path / "b.pt"
    assert main(["convert", f"model={base_pt}", f"out={st}"]) == 0
    assert main(["convert", f"model={st}", f"out={pt}"]) == 0
    assert "saved" in capsys.readouterr().out
    back = load_model(pt)
    assert back.fingerprint == base_model.fingerprint and back.names == base_model.names
    assert torch.load(pt, weights_only=False)["taskvec"] == {"converted_from": "b.safetensors"}
    assert main(["info", f"model={st}"]) == 0 and base_model.fingerprint[:16] in capsys.readouterr().out
    assert main(["info", f"vectors={st}"]) == 2
    assert "is a whole model converted to safetensors, not a task vector" in capsys.readouterr().err


def test_convert_a_finetune_whose_classes_changed(tmp_path):
    """Ultralytics keeps the base's class-branch width (80) when nc changes (raccoon nc=1): the rebuild must fit it."""
    from conftest import weight

    source = load_model(weight("yolo26n-raccoon.pt"))
    back = load_model(to_safetensors(source, tmp_path / "raccoon.safetensors"))
    assert back.names == {0: "raccoon"} and back.module.model[-1].cv3[0][0][1].conv.weight.shape[0] == 80
    assert back.state.keys() == source.state.keys()
    assert all(torch.equal(back.state[k], v) for k, v in source.state.items())


def test_convert_refuses_a_class_union_head(tmp_path, base_pt):
    from conftest import weight

    from yolo_taskvec import merge, save

    union = save(merge(base_pt, [weight("yolo26n-raccoon.pt")], classes="union", scale=0.0), tmp_path / "union.pt")
    with pytest.raises(CheckpointError, match="its layers differ from what its yaml builds .*keep it as a .pt checkpoint"):
        to_safetensors(union, tmp_path / "union.safetensors")
    assert not (tmp_path / "union.safetensors").exists()
