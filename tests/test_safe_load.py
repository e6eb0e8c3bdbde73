"""Untrusted model files: ``.pt`` checkpoints are pickles, so loading one can run code.

* By default every ``.pt`` loads through the restricted unpickler (torch ``weights_only`` + the allow-list of
  torch/Ultralytics classes + a scan refusing constructor calls); every shared reference checkpoint loads that way.
* A malicious pickle (``__reduce__`` calling ``os.system``) is refused without running anything (a planted marker
  file stays absent), through the API and the CLI (exit 2, one sentence saying why and how to opt in); with the
  explicit opt-in (``trust=True``, ``trust=true``, ``YOLO_TASKVEC_TRUST=1``) it runs, as plain Ultralytics would.
  ``ULTRALYTICS_SAFE_LOAD=1`` always wins over the opt-in.
* ``ULTRALYTICS_SAFE_LOAD=1`` (Ultralytics' own allow-listed loader) works end to end.
* ``convert``: a checkpoint becomes one safetensors file (weights + yaml, names, task, train args) that rebuilds the
  model with no unpickling and no ``eval``; the round trip is exact (tensors and val metrics).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import WEIGHTS, data_yaml

from yolo_taskvec.checkpoint import TRUST_ENV, load_model
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
REFUSED = r"refused to load .*evil\.pt: it references posix\.system, outside the torch and Ultralytics classes a checkpoint holds, and unpickling it could run code; nothing was executed; if you trust its source, load it with trust=True \(command line: YOLO_TASKVEC_TRUST=1 for one run\)\."


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint whose unpickling runs ``touch <marker>``; made in a subprocess (saving runs nothing)."""
    d = tmp_path_factory.mktemp("evil")
    path, marker = d / "evil.pt", d / "PWNED"
    subprocess.run([sys.executable, "-c", EVIL, str(path), str(marker)], check=True)
    assert path.exists() and not marker.exists()
    return path, marker


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any opt-in or safe-load switch, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in (TRUST_ENV, "ULTRALYTICS_SAFE_LOAD")}
    return {**env, **extra}


def safe_env(**extra: str) -> dict[str, str]:
    return clean_env(ULTRALYTICS_SAFE_LOAD="1", **extra)


def run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(p.name for p in WEIGHTS.glob("*.pt")) or ["yolo26n-base80.pt"])
def test_every_shared_checkpoint_loads_restricted(name, monkeypatch):
    """Each reference checkpoint loads by default, and only through ``torch.load(weights_only=True)``."""
    from conftest import weight

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model(weight(name))
    assert calls == [True]
    assert loaded.task in ("detect", "segment") and loaded.names and loaded.state


@pytest.mark.smoke
def test_malicious_pickle_refused_by_default(evil, tmp_path, monkeypatch, night_vector):
    path, marker = evil
    vector = night_vector.save(tmp_path / "night.safetensors")  # a real vector: the base is what gets refused
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(CheckpointError, match=REFUSED):
        load_model(path)
    assert not marker.exists()
    run = run_cli("apply", f"base={path}", f"vectors={vector}", f"out={tmp_path / 'm.pt'}", env=clean_env())
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "refused to load" in run.stderr and "trust=True" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_safe_load_env_refuses_even_with_trust(evil, tmp_path):
    """``ULTRALYTICS_SAFE_LOAD=1`` wins over ``trust``: the sentence says so, and nothing runs."""
    path, marker = evil
    code = "import sys\nfrom yolo_taskvec.checkpoint import load_model\ntry:\n    load_model(sys.argv[1], trust=True)\nexcept Exception as e:\n    print(type(e).__name__, e)"
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=safe_env(), timeout=300)
    assert "CheckpointError refused to load" in run.stdout and "ULTRALYTICS_SAFE_LOAD=1 is set, which forbids trusting it in this process" in run.stdout
    run = run_cli("info", f"model={path}", "trust=true", env=safe_env())
    assert run.returncode == 2 and "ULTRALYTICS_SAFE_LOAD=1 is set" in run.stderr
    assert not marker.exists()


@pytest.mark.parametrize("how", ["api", "cli_argument", "environment"])
def test_trusting_a_pickle_is_an_explicit_opt_in(evil, how):
    """The documented hazard, shown in separate processes: with the opt-in, the payload runs."""
    path, marker = evil
    if how == "api":
        code = "import sys\nfrom yolo_taskvec.checkpoint import load_model\ntry:\n    load_model(sys.argv[1], trust=True)\nexcept Exception as e:\n    print(type(e).__name__, e)"
        run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=clean_env(), timeout=300)
        assert "is not an Ultralytics checkpoint" in run.stdout  # refused afterwards, but too late:
    else:
        argv = ["info", f"model={path}"] + (["trust=true"] if how == "cli_argument" else [])
        run = run_cli(*argv, env=clean_env(**({TRUST_ENV: "1"} if how == "environment" else {})))
        assert run.returncode == 2 and "is not an Ultralytics checkpoint" in run.stderr
    assert marker.exists()
    marker.unlink()


def test_object_of_a_class_is_refused_unless_trusted(tmp_path):
    """An arbitrary (harmless-looking) object: the trusted loader builds it, the default loader will not."""
    import argparse

    torch.save({"model": argparse.Namespace(x=1)}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match=r"obj\.pt is not an Ultralytics checkpoint: it holds a dict with keys \['model'\]"):
        load_model(tmp_path / "obj.pt", trust=True)
    with pytest.raises(CheckpointError, match=r"refused to load .*obj\.pt: it references argparse\.Namespace, outside"):
        load_model(tmp_path / "obj.pt")


CONSTRUCTOR_CALL = """
import sys, torch
from ultralytics.nn.modules import Conv

class Build:
    def __reduce__(self):  # a real checkpoint restores a layer's state; this calls its constructor
        return (Conv, (3, 8192, 3))

torch.save({"model": Build(), "train_args": {}}, sys.argv[1])
"""


def test_allow_listed_constructor_calls_are_refused(tmp_path):
    """A pickle may name only allow-listed classes and still call their ``__init__`` (downloads, huge tensors):
    the opcode scan refuses it before anything is unpickled."""
    path = tmp_path / "ctor.pt"
    subprocess.run([sys.executable, "-c", CONSTRUCTOR_CALL, str(path)], check=True, timeout=300)
    with pytest.raises(CheckpointError, match=r"refused to load .*ctor\.pt: its pickle calls ultralytics\.nn\.modules\.conv\.Conv, which a checkpoint never does"):
        load_model(path)


def test_hostile_yaml_inside_a_loadable_checkpoint(tmp_path, base_pt):
    """A checkpoint made only of allow-listed classes whose model yaml carries code: refused at load (its yaml is what
    a later rebuild uses), trusted or not; nothing runs."""
    marker = tmp_path / "PWNED"
    ckpt = torch.load(base_pt, weights_only=False)
    ckpt["model"].yaml["activation"] = f"__import__('os').system('touch {marker}')"
    torch.save(ckpt, tmp_path / "yaml.pt")
    for trust in (False, True):
        with pytest.raises(CheckpointError, match=r"yaml\.pt: its model yaml has activation .*; only .* are accepted"):
            load_model(tmp_path / "yaml.pt", trust=trust)
    assert not marker.exists()


def test_checkpoint_tensor_beyond_the_caps(tmp_path, base_pt):
    """An expanded tensor (stride 0) stores one value but claims 2^26: refused before ``float()`` copies it."""
    ckpt = torch.load(base_pt, weights_only=False)
    ckpt["model"].register_buffer("bomb", torch.zeros(1, dtype=torch.float16).expand(2**26))
    torch.save(ckpt, tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 2 * base_pt.stat().st_size
    with pytest.raises(CheckpointError, match=r"bomb\.pt: tensor bomb holds 67,108,864 values, more than any YOLO tensor"):
        load_model(tmp_path / "bomb.pt")


def test_compressed_or_concatenated_archives_are_refused(tmp_path, base_pt):
    """torch.save writes stored members from byte 0: a re-compressed archive (a zip bomb's shape) or two archives in
    one file (what a retried save used to leave) are refused before unpickling."""
    import zipfile

    with zipfile.ZipFile(base_pt) as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match=r"deflated\.pt: it holds compressed members, which torch\.save never writes"):
        load_model(tmp_path / "deflated.pt")
    data = base_pt.read_bytes()
    (tmp_path / "twice.pt").write_bytes(data[: len(data) // 2] + data)
    with pytest.raises(CheckpointError, match=r"twice\.pt: it does not start with its first archive member"):
        load_model(tmp_path / "twice.pt")


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
print(json.dumps({"safe": ultralytics.utils.SAFE_LOAD, "weights_only": calls, "task": yolo.task, "vectors": merged.ckpt["taskvec"]["names"], "scale": merged.ckpt["taskvec"]["recipe"]["scale"]}))
"""


@pytest.mark.smoke
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
    assert result["task"] == "detect" and result["vectors"] == ["night"] and result["scale"] == 0.5


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
        (lambda y: y["backbone"][0].__setitem__(3, [32, 3, 2]), r"its tensors do not fit the architecture in its metadata \(e\.g\. model\.0\.[\w.]+\)"),
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
