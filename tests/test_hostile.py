"""The hostile-input review of 0.1, case by case: each input that ran code, lost data with exit 0, crashed with a
traceback, exhausted memory or produced silent nonsense now gets one sentence (API: a ``TaskVecError``; CLI: exit 2,
one line, no traceback) before any work, with nothing left behind.

Inputs are built the way the review built them: real vector files rewritten with safetensors (the checksum
recomputed, as a hostile writer would), real checkpoints, real datasets, real permissions, and a planted marker file
that a payload would create, so "no code ran" is observed, not assumed. Cases that live in modes being rewritten
(sweep resume keys, output folders of sweep/search/demo, the API weights check) test the checking functions those
modes call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA_YAMLS, DATASETS, data_yaml, weight
from test_bad_inputs import SMALL, cli_error, leftovers, rewrite, sha256

from yolo_taskvec import TaskVector, merge
from yolo_taskvec.atomic import check_output, check_output_folder
from yolo_taskvec.checkpoint import check_vector_base, load_model
from yolo_taskvec.errors import CheckpointError, MismatchError, OutputError, TaskVecError, VectorFileError
from yolo_taskvec.files import load_vector

SCRIPT = Path(sys.executable).parent / "yolo-taskvec"
CODE = "__import__('os').system('touch {marker}')"


def edit_meta(src: Path, dst: Path, change) -> Path:
    """Rewrite a vector file's ``meta`` JSON with ``change(meta)``; the checksum is recomputed (a hostile writer)."""

    def metadata(md):
        meta = json.loads(md["meta"])
        change(meta)
        return {**md, "meta": json.dumps(meta)}

    return rewrite(src, dst, metadata=metadata)


def script(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, argv)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def one_sentence(run: subprocess.CompletedProcess, expected: str) -> None:
    import re

    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr + run.stdout, run.stderr[-2000:]
    assert re.search(expected, lines[0]), lines[0]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, base_pt, base_model, night_vector, seg_pt) -> dict[str, Path]:
    """A small vector, and a segment vector whose mask head is carried (its target yaml is what merges rebuild)."""
    d = tmp_path_factory.mktemp("hostile")
    seg = TaskVector.from_models(base_model, seg_pt, unmatched="carry").select(["model.0.*", "head.mask"])
    assert seg.absolute and seg.meta["target_yaml"]["head"][-1][2] == "Segment26"
    base = d / "base.pt"
    shutil.copyfile(base_pt, base)
    return {"dir": d, "base": base, "small": night_vector.select(SMALL).save(d / "small.safetensors"), "seg": seg.save(d / "seg.safetensors")}


# ----------------------------------------------------------------------------------------------- code execution
def _hostile_yaml(meta: dict, marker: Path) -> None:
    for key in ("base_yaml", "target_yaml"):
        meta[key]["activation"] = CODE.format(marker=marker)


def test_vector_yaml_with_code_is_refused_on_load(vectors, tmp_path):
    marker = tmp_path / "PWNED"
    path = edit_meta(vectors["seg"], tmp_path / "evil.safetensors", lambda m: _hostile_yaml(m, marker))
    with pytest.raises(VectorFileError, match=r"evil\.safetensors: its model yaml has activation \"__import__\('os'\).*; only .* as nn\.<Name>\(numbers\) are accepted"):
        TaskVector.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["apply", "merge", "sweep", "compress-calib"])
def test_vector_yaml_with_code_every_mode(vectors, tmp_path, capsys, mode):
    """apply, merge, sweep and compress calib= all read the file through the same loader; none runs the payload."""
    marker = tmp_path / "PWNED"
    path = edit_meta(vectors["seg"], tmp_path / "evil.safetensors", lambda m: _hostile_yaml(m, marker))
    coco8 = str(data_yaml("coco8.yaml"))
    argv = {
        "apply": ["apply", f"base={vectors['base']}", f"vectors={path}", f"out={tmp_path / 'm.pt'}"],
        "merge": ["merge", f"base={vectors['base']}", f"models={path}", f"out={tmp_path / 'm.pt'}"],
        "sweep": ["sweep", f"base={vectors['base']}", f"vectors={path}", f"data={coco8}", "scales=0,1", "imgsz=64", f"out={tmp_path / 'sweep'}"],
        "compress-calib": ["compress", f"vectors={path}", "quant=int8", f"calib={coco8}", f"base={vectors['base']}", f"out={tmp_path / 'c.safetensors'}"],
    }[mode]
    assert "only" in cli_error(capsys, *argv)
    assert not marker.exists()
    assert leftovers(tmp_path) == ["evil.safetensors"]


def test_vector_yaml_with_code_under_ultralytics_safe_load(vectors, tmp_path):
    """The review's traceback case: with ULTRALYTICS_SAFE_LOAD=1 the hostile yaml reached Ultralytics' restricted
    builder, whose TypeError escaped; now the plugin refuses it first, in a real process with the variable set."""
    marker = tmp_path / "PWNED"
    path = edit_meta(vectors["seg"], tmp_path / "evil.safetensors", lambda m: _hostile_yaml(m, marker))
    run = script("apply", f"base={vectors['base']}", f"vectors={path}", f"out={tmp_path / 'm.pt'}", env={**os.environ, "ULTRALYTICS_SAFE_LOAD": "1"})
    one_sentence(run, r"evil\.safetensors: its model yaml has activation .* are accepted\.$")
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_in_memory_vector_with_code_in_its_target_yaml(vectors, base_model, tmp_path):
    """A vector built in Python (no file) with a hostile target yaml: the build itself validates, nothing runs."""
    marker = tmp_path / "PWNED"
    tv = TaskVector.load(vectors["seg"])
    tv.meta["target_yaml"] = {**tv.meta["target_yaml"], "activation": CODE.format(marker=marker)}
    with pytest.raises(MismatchError, match=r"the target architecture of the task vector: its model yaml has activation"):
        merge(base_model, [tv])
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- metadata of the wrong type
META_CASES = {
    "fingerprint_int": (lambda m: m.update(base_fingerprint=12345), r"its base_fingerprint is '12345', not a SHA-256 hex digest"),
    "names_list": (lambda m: m.update(names=["a", "b"]), r"its class names are a list, not a mapping of class ids to names"),
    "names_string_keys": (lambda m: m.update(names={"cat": "a"}), r"its class names have the id 'cat', not a class number"),
    "names_int": (lambda m: m.update(names=7), r"its class names are a int, not a mapping"),
    "name_dict": (lambda m: m.update(name={"a": 1}), r"its 'name' is a dict, not a string"),
    "segment_nc_1e9": (lambda m: m["target_yaml"].update(nc=1e9), r"its model yaml declares nc=1000000000.0 classes \(1 to 10,000\)"),
    "layer_not_a_module": (lambda m: m["target_yaml"]["head"][-1].__setitem__(2, "exec"), r"its model yaml names 'exec', which is not a known model layer"),
    "name_escape_sequence": (lambda m: m.update(name="night\x1b]0;owned\x07"), r"its 'name' contains the control character '\\x1b'; refused so that nothing it says reaches your terminal"),
    "parts_not_a_list": (lambda m: m.update(parts="backbone"), r"its 'parts' entry is not a list of part names"),
    "compression_text": (lambda m: m.update(compression={"relative_error": "big"}), r"its compression entry 'relative_error' is 'big', not a non-negative number"),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_vector_metadata_of_the_wrong_type(vectors, tmp_path, capsys, case):
    change, expected = META_CASES[case]
    path = edit_meta(vectors["seg"], tmp_path / f"{case}.safetensors", change)
    with pytest.raises(VectorFileError, match=expected):
        TaskVector.load(path)
    import re

    assert re.search(expected, cli_error(capsys, "info", f"vectors={path}"))
    assert re.search(expected, cli_error(capsys, "apply", f"base={vectors['base']}", f"vectors={path}", f"out={tmp_path / 'm.pt'}"))
    assert leftovers(tmp_path) == [path.name]


def test_missing_checksum_is_refused(vectors, tmp_path):
    """Removing ``sha256`` no longer skips the check: every file yolo-taskvec writes has one."""
    path = rewrite(vectors["small"], tmp_path / "nosum.safetensors", metadata=lambda md: {k: v for k, v in md.items() if k != "sha256"}, checksum=False)
    with pytest.raises(VectorFileError, match=r"nosum\.safetensors has no sha256 checksum in its metadata; yolo-taskvec records one in every file, so this one was altered after it was saved\."):
        TaskVector.load(path)


def test_missing_base_fingerprint_is_refused_unless_forced(vectors, base_model, tmp_path):
    """Removing ``base_fingerprint`` (checksum recomputed) loads, but applying it is refused unless forced; the lead
    wires ``check_vector_base`` where ``api.check_fingerprints`` skipped a missing one."""
    path = edit_meta(vectors["small"], tmp_path / "nofp.safetensors", lambda m: m.pop("base_fingerprint"))
    tv = TaskVector.load(path)
    with pytest.raises(MismatchError, match=r"task vector 'fruit-night' records no base fingerprint, so it cannot be checked against the base yolo26n-base80; pass force=True"):
        check_vector_base(base_model, tv.meta)
    check_vector_base(base_model, tv.meta, force=True)
    check_vector_base(base_model, TaskVector.load(vectors["small"]).meta)
    with pytest.raises(MismatchError, match=r"was extracted from a different base"):
        check_vector_base(load_model(weight("yolo26n-raccoon.pt")), tv.meta | {"base_fingerprint": base_model.fingerprint})


# ----------------------------------------------------------------------------------------------- bounded resources
MEASURE = """
import json, sys
from yolo_taskvec.files import load_vector

def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024

load_vector(sys.argv[2])  # a valid file first: every import the loader makes lazily is done before measuring
before = peak()
try:
    load_vector(sys.argv[1])
    outcome = "loaded"
except Exception as e:
    outcome = f"{type(e).__name__}: {e}"
print(json.dumps({"outcome": outcome, "grew": peak() - before}))
"""


def _measure(path: Path, valid: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(valid)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _bomb(src: Path, dst: Path, entries: dict[str, dict]) -> Path:
    """A packed-format file whose index declares ``entries`` (kind, shape, fields) and stores almost nothing."""
    from yolo_taskvec import packing
    from yolo_taskvec.files import FORMAT, content_digest
    from safetensors.torch import save_file

    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors, index = {}, {}
    chunks: dict[str, list] = {}
    for name, (info, fields) in entries.items():
        placed = []
        for field, t in fields.items():
            code = packing.CODES[t.dtype]
            chunks.setdefault(code, []).append(t.reshape(-1))
            placed.append([field, code, list(t.shape)])
        index[name] = {**info, "fields": placed}
    tensors = {packing.BLOB + code: torch.cat(parts) for code, parts in chunks.items()}
    import base64
    import zlib

    md = {"format": FORMAT, "format_version": "2", "meta": json.dumps(meta), "index": base64.b64encode(zlib.compress(json.dumps(index).encode())).decode()}
    md["sha256"] = content_digest(md, tensors)
    save_file(tensors, str(dst), metadata=md)
    return dst


def _sparse(n: int) -> tuple[dict, dict]:
    return {"kind": "sparse", "dtype": "fp16", "role": "delta", "shape": [n, n], "coding": "gaps"}, {"gaps": torch.zeros(0, dtype=torch.uint8), "values": torch.zeros(0, dtype=torch.float16)}


def _rank1(n: int) -> tuple[dict, dict]:
    return {"kind": "lowrank", "dtype": "fp16", "role": "delta", "shape": [n, n], "rank": 1}, {"u": torch.ones(n, 1, dtype=torch.float16), "v": torch.ones(1, n, dtype=torch.float16)}


BOMBS = {
    "one_sparse_16384": ({"delta/model.0.conv.weight": _sparse(16384)}, r"declares delta/model\.0\.conv\.weight with shape \[16384, 16384\], larger than any YOLO tensor"),
    "three_sparse": ({f"delta/model.{i}.conv.weight": _sparse(16384) for i in range(3)}, r"with shape \[16384, 16384\], larger than any YOLO tensor"),
    "two_rank1": ({f"delta/model.{i}.conv.weight": _rank1(16384) for i in range(2)}, r"with shape \[16384, 16384\], larger than any YOLO tensor"),
    "dozens_under_the_tensor_cap": ({f"delta/model.{i}.conv.weight": _sparse(5000) for i in range(40)}, r"declares 1,000,000,000 values in all, more than a vector of any YOLO model holds"),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_declared_sizes_are_refused_before_decoding(vectors, tmp_path, capsys, case):
    """Tiny files declaring huge tensors: refused from the header, and the process's peak memory does not grow by
    the declared size (measured in a fresh process: VmHWM before and after)."""
    entries, expected = BOMBS[case]
    path = _bomb(vectors["small"], tmp_path / f"{case}.safetensors", entries)
    assert path.stat().st_size < 300_000
    result = _measure(path, vectors["small"])
    assert result["outcome"].startswith("VectorFileError") and __import__("re").search(expected, result["outcome"]), result
    assert result["grew"] < 20e6, result  # the declared tensors would take 1 GB and more
    assert __import__("re").search(expected, cli_error(capsys, "info", f"vectors={path}"))


def test_declared_shapes_checked_against_the_base(vectors, base_model, tmp_path):
    """With the base's shapes (what the lead passes from apply/merge), a delta that does not fit is refused from the
    header, before any tensor is decoded."""
    shapes = {k: tuple(v.shape) for k, v in base_model.state.items()}
    assert load_vector(vectors["small"], expected_shapes=shapes).keys()
    path = _bomb(vectors["small"], tmp_path / "odd.safetensors", {"delta/model.0.conv.weight": _sparse(64)})
    with pytest.raises(MismatchError, match=r"its delta model\.0\.conv\.weight declares shape \(64, 64\), the base's tensor has \(16, 3, 3, 3\)"):
        load_vector(path, expected_shapes=shapes)
    path = _bomb(vectors["small"], tmp_path / "foreign.safetensors", {"delta/model.99.w": _sparse(8)})
    with pytest.raises(MismatchError, match=r"its delta model\.99\.w has no counterpart in the base"):
        load_vector(path, expected_shapes=shapes)


def test_converted_model_claiming_two_million_classes(tmp_path, base_pt, capsys):
    """``info`` of a converted model whose yaml says nc: 2000000 was killed by the OOM killer; now refused from the
    header before anything is built."""
    from test_safe_load import _with_yaml

    from yolo_taskvec.convert import to_safetensors

    converted = to_safetensors(base_pt, tmp_path / "base.safetensors")
    path = _with_yaml(converted, tmp_path / "huge.safetensors", lambda y: y.update(nc=2_000_000))
    with pytest.raises(CheckpointError, match=r"huge\.safetensors: its model yaml declares nc=2000000 classes \(1 to 10,000\)"):
        load_model(path)
    assert "declares nc=2000000 classes" in cli_error(capsys, "info", f"model={path}")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"imgsz": 100000}, r"imgsz must be between 32 and 8192, got 100000"),
        ({"imgsz": -320}, r"imgsz must be between 32 and 8192, got -320"),
        ({"imgsz": 320, "batch": 0}, r"batch must be between 1 and 1024, got 0"),
        ({"imgsz": 8192, "batch": 1024}, r"imgsz=8192 with batch=1024 needs at least 1030\.8 GB for one input batch, more than the [\d.]+ GB available on cpu; lower imgsz or batch"),
        ({"imgsz": 320, "device": "tpu"}, r"unknown device 'tpu'; use cpu, cuda, cuda:N, N \(a GPU index\) or mps\."),
        ({"imgsz": 320, "device": "cuda:9"}, r"device 'cuda:9' (asks for a CUDA GPU, but none is available here; use device=cpu|does not exist: this machine has \d+ CUDA GPU)"),
    ],
    ids=["imgsz_100000", "imgsz_negative", "batch_0", "memory", "tpu", "cuda9"],
)
def test_validation_settings_are_bounded(base_pt, kwargs, expected, capsys):
    from yolo_taskvec.evaluation import evaluate

    coco8 = str(data_yaml("coco8.yaml"))
    with pytest.raises(TaskVecError, match=expected):
        evaluate(base_pt, coco8, **{"device": "cpu", **kwargs})
    argv = ["val", f"model={base_pt}", f"data={coco8}", *(f"{k}={v}" for k, v in {"device": "cpu", **kwargs}.items())]
    import re

    assert re.search(expected, cli_error(capsys, *argv))


def test_nan_checkpoint_is_refused_by_validation(tmp_path, base_pt, capsys):
    """A checkpoint full of NaN validated to 0.000 without a word; extract and apply already refused it."""
    from yolo_taskvec.evaluation import evaluate

    ckpt = torch.load(base_pt, weights_only=False)
    for p in ckpt["model"].parameters():
        p.data.fill_(float("nan"))
    torch.save(ckpt, tmp_path / "nan.pt")
    coco8 = str(data_yaml("coco8.yaml"))
    with pytest.raises(TaskVecError, match=r"model nan holds NaN or Inf values in \d+ tensors \(e\.g\. model\.0\.conv\.weight\); it cannot be scored"):
        evaluate(tmp_path / "nan.pt", coco8, imgsz=64, device="cpu")
    assert "holds NaN or Inf values" in cli_error(capsys, "val", f"model={tmp_path / 'nan.pt'}", f"data={coco8}", "imgsz=64", "device=cpu")


# ----------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["apply", "base=a.pt", "out=a.pt", "out=b.pt"], r"argument out= is given twice \(a\.pt and b\.pt\); give it once\.$"),
        (["apply", "base=a.pt", "vectors=b.safetensors", "scale=1_0"], r"scale: '1_0' is not a number\.$"),
        (["merge", "base=a.pt", "models=b.pt", "seed=1_000"], r"seed must be an integer, got '1_000'\.$"),
        (["merge", "base=a.pt", "models=b.pt,c.pt", "weights=0,0", "out=m.pt"], r"all weights are zero, so the merge would be the base unchanged; give at least one non-zero weight\.$"),
        (["info", "trust=perhaps"], r"trust: 'perhaps' is not true or false\.$"),
    ],
)
def test_cli_silent_nonsense(capsys, argv, expected):
    import re

    assert re.search(expected, cli_error(capsys, *argv))


# ----------------------------------------------------------------------------------------------- outputs
@pytest.fixture
def coco8_here(tmp_path) -> Path:
    """A working folder holding coco8.yaml (resolving through datasets_dir), as a user runs the commands."""
    shutil.copyfile(DATA_YAMLS / "coco8.yaml", tmp_path / "coco8.yaml")
    return tmp_path


def test_transform_never_overwrites_its_input_yaml(coco8_here, capsys, monkeypatch):
    """``transform data=coco8.yaml out=coco8`` wrote coco8.yaml beside the copy, over the input."""
    monkeypatch.chdir(coco8_here)
    before = sha256(coco8_here / "coco8.yaml")
    line = cli_error(capsys, "transform", "data=coco8.yaml", "out=coco8")
    assert "output coco8.yaml is also an input; choose another name" in line
    assert sha256(coco8_here / "coco8.yaml") == before and not (coco8_here / "coco8").exists()


def test_union_data_never_overwrites_its_input_yaml(coco8_here, base_pt, capsys):
    before = sha256(coco8_here / "coco8.yaml")
    line = cli_error(capsys, "union-data", f"base={base_pt}", f"models={base_pt}", f"data={coco8_here / 'coco8.yaml'}", f"out={coco8_here}")
    assert "coco8.yaml is also an input; choose another name" in line
    assert sha256(coco8_here / "coco8.yaml") == before and sorted(p.name for p in coco8_here.iterdir()) == ["coco8.yaml"]


def test_outputs_inside_a_dataset_folder_are_refused(tmp_path, capsys):
    """``coco-export out=`` the dataset's own annotations json (the ground truth of coco=true scoring)."""
    from yolo_taskvec.coco import export_coco

    own = DATASETS / "coco-mini" / "annotations" / "instances_val.json"
    before = sha256(own)
    with pytest.raises(OutputError, match=r"instances_val\.json lies inside the dataset folder .*coco-mini; write it outside every input dataset"):
        export_coco(data_yaml("coco-mini.yaml"), "val", own)
    assert "lies inside the dataset folder" in cli_error(capsys, "coco-export", f"data={data_yaml('coco-mini.yaml')}", f"out={own}")
    assert sha256(own) == before


def test_exist_ok_rule(tmp_path, night_vector):
    """An existing output is replaced only with exist_ok (the API's default is True: a path you name is yours)."""
    target = tmp_path / "v.safetensors"
    target.write_bytes(b"previous")
    with pytest.raises(OutputError, match=r"output .*v\.safetensors already exists; choose another name, or add exist_ok=true to replace it\."):
        check_output(target, exist_ok=False)
    assert check_output(target) == target and target.read_bytes() == b"previous"


def test_output_folders(tmp_path):
    """The check sweep, search, demo and union-data run before writing into ``out=``."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.json").write_text("{}")
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=r"cannot write into .*locked/run: no write permission in .*locked\."):
            check_output_folder(locked / "run")
        with pytest.raises(OutputError, match=r"cannot write into .*locked: no write permission in .*locked\."):
            check_output_folder(locked)
    finally:
        locked.chmod(0o755)
    with pytest.raises(OutputError, match=r"output folder .*file is a file; give a folder name\."):
        check_output_folder(tmp_path / "file")
    with pytest.raises(OutputError, match=r"output folder .*full already exists and is not empty; choose another folder, or add exist_ok=true"):
        check_output_folder(tmp_path / "full", exist_ok=False)
    with pytest.raises(OutputError, match=r"lies inside the dataset folder"):
        check_output_folder(tmp_path / "full" / "x", protect=[tmp_path / "full"])
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper" and not (tmp_path / "new").exists()


def test_union_data_into_a_read_only_folder(tmp_path, base_pt, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = cli_error(capsys, "union-data", f"base={base_pt}", f"models={base_pt}", f"data={data_yaml('coco8.yaml')}", f"out={locked / 'views'}")
    finally:
        locked.chmod(0o755)
    assert "no write permission in" in line and not list(locked.iterdir())


def test_dataset_identity_is_path_and_content(tmp_path):
    """Two Roboflow-style exports both named data.yaml are different datasets; the same dataset is recognised; a
    changed label changes the identity (the sweep resume key the lead wires)."""
    from yolo_taskvec.data import dataset_identity

    folders = {}
    for name in ("a", "b"):
        root = tmp_path / name
        shutil.copytree(DATASETS / "coco8", root / "ds", symlinks=True)
        (root / "data.yaml").write_text(f"path: {root / 'ds'}\ntrain: images/train\nval: images/val\nnames:\n" + "".join(f"  {i}: c{i}\n" for i in range(80)))
        folders[name] = root
    a, b = (dataset_identity(folders[n] / "data.yaml") for n in ("a", "b"))
    assert a != b and Path(folders["a"] / "data.yaml").stem == Path(folders["b"] / "data.yaml").stem
    assert dataset_identity(folders["a"] / "data.yaml") == a
    label = next((folders["a"] / "ds" / "labels" / "val").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert dataset_identity(folders["a"] / "data.yaml") != a


# ----------------------------------------------------------------------------------------------- unreadable inputs
DROP_READ_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root reads any file; setpriv is needed to drop that capability")
def test_unreadable_input_files(vectors, tmp_path):
    """A model, a vector and a dataset yaml without read permission: one sentence each (was a traceback). Run as a
    process without the capability to override file permissions (root has it)."""
    base, vector, yaml = tmp_path / "base.pt", tmp_path / "small.safetensors", tmp_path / "coco8.yaml"
    shutil.copyfile(vectors["base"], base)
    shutil.copyfile(vectors["small"], vector)
    shutil.copyfile(DATA_YAMLS / "coco8.yaml", yaml)
    prefix = DROP_READ_OVERRIDE if os.geteuid() == 0 else []
    cases = [
        (base, ["apply", f"base={base}", f"vectors={vector}", f"out={tmp_path / 'm.pt'}"], r"cannot read model file .*base\.pt: permission denied\.$"),
        (vector, ["info", f"vectors={vector}"], r"cannot read task-vector file .*small\.safetensors: permission denied\.$"),
        (yaml, ["coco-export", f"data={yaml}", f"out={tmp_path / 'x.json'}"], r"cannot read dataset yaml .*coco8\.yaml: permission denied\.$"),
    ]
    for locked, argv, expected in cases:
        locked.chmod(0o000)
        try:
            run = subprocess.run([*prefix, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300)
        finally:
            locked.chmod(0o644)
        one_sentence(run, expected)
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "x.json").exists()
