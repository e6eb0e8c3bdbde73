"""Every bad input gets one clear sentence: through the API (a TaskVecError subclass) and the CLI (one line on
stderr, exit code 2, no traceback, no output or temporary file left behind).

Inputs are real: truncations and byte flips of a real checkpoint copied into a temporary folder, pickles made with
``torch.save``, a yolo26s and a pose model built from Ultralytics' own yamls, task-vector files rewritten with
safetensors, real read-only modes, a real full file system (tmpfs in a private mount namespace) and a real
file-size limit (``RLIMIT_FSIZE``).
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import data_yaml, weight

from yolo_taskvec import TaskVector, merge, save
from yolo_taskvec.atomic import check_output
from yolo_taskvec.checkpoint import load_model, save_checkpoint
from yolo_taskvec.cli import main
from yolo_taskvec.data import image_files, load_data
from yolo_taskvec.errors import CheckpointError, DataError, MismatchError, OutputError, TaskVecError, VectorFileError
from yolo_taskvec.files import content_digest, load_vector

SCRIPT = Path(sys.executable).parent / "yolo-taskvec"
TRUNCATED_DOWNLOAD = 3_350_528  # the size of a truncated yolo26n.pt circulating in public repos: 818 × 4096
SMALL = ["model.0.*", "model.23.cv2.0.2.*"]


# ----------------------------------------------------------------------------------------------- helpers
def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Files in an output folder that a failed command must not leave: outputs and temporaries."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith((".pt", ".safetensors", ".tmp")))


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one line on stderr and no traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yolo-taskvec: error: "), err
    assert "Traceback" not in out + err
    return lines[0]


def rewrite(src: Path, dst: Path, *, tensors=None, metadata=None, checksum: bool = True) -> Path:
    """Copy a task-vector file with changed tensors/metadata; a recomputed checksum models a buggy or hostile
    writer (the structural checks must catch it), ``checksum=False`` keeps the old one (damage in transfer)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        md, ts = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    ts = tensors(ts) if tensors else ts
    md = metadata(md) if metadata else md
    if checksum:
        md["sha256"] = content_digest(md, ts)
    save_file(ts, str(dst), metadata=md)
    return dst


def truncate(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def shared_weights_untouched():
    """Whatever the cases below do, the shared reference checkpoints are byte-identical afterwards."""
    from conftest import WEIGHTS

    before = {p.name: sha256(p) for p in sorted(WEIGHTS.glob("*.pt"))}
    yield
    assert {p.name: sha256(p) for p in sorted(WEIGHTS.glob("*.pt"))} == before
    assert not list(WEIGHTS.glob(".*.tmp"))


@pytest.fixture(scope="module")
def files(tmp_path_factory, base_pt, night_vector) -> dict[str, Path]:
    """Real inputs in a private folder: a copy of the base, vector files, damaged copies, foreign pickles."""
    d = tmp_path_factory.mktemp("inputs")
    base = d / "base.pt"
    shutil.copyfile(base_pt, base)
    f = {"dir": d, "base": base}
    f["night"] = night_vector.save(d / "night.safetensors")
    f["small"] = night_vector.select(SMALL).save(d / "small.safetensors")
    f["truncated"] = truncate(base, d / "truncated.pt", TRUNCATED_DOWNLOAD)
    torch.save(load_model(base).module.state_dict(), d / "state_dict.pt")
    f["state_dict"] = d / "state_dict.pt"
    torch.save({"a": 1, "b": [1, 2]}, d / "plain_dict.pt")
    f["plain_dict"] = d / "plain_dict.pt"
    (d / "empty.pt").write_bytes(b"")
    f["empty"] = d / "empty.pt"
    (d / "folder.pt").mkdir()
    f["folder"] = d / "folder.pt"
    huge = TaskVector({"model.0.conv.weight": torch.full_like(load_model(base).state["model.0.conv.weight"], 1e5)}, {}, dict(night_vector.meta, name="huge"))
    f["huge"] = huge.save(d / "huge.safetensors")
    return f


@pytest.fixture(scope="module")
def foreign_models(tmp_path_factory) -> dict[str, Path]:
    """A yolo26s detector and a yolo26n pose model from Ultralytics' yamls, saved as real checkpoints."""
    from ultralytics.nn.tasks import DetectionModel, PoseModel

    d = tmp_path_factory.mktemp("foreign")
    small = DetectionModel("yolo26s.yaml", nc=80, verbose=False)
    small.names, small.task = {i: f"class{i}" for i in range(80)}, "detect"
    pose = PoseModel("yolo26n-pose.yaml", nc=80, verbose=False)
    pose.names, pose.task = {i: f"class{i}" for i in range(80)}, "pose"
    return {"yolo26s": save_checkpoint(small, d / "yolo26s.pt"), "pose": save_checkpoint(pose, d / "pose.pt")}


# ----------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("size", [0, 2, 100, 4096, 409_600, TRUNCATED_DOWNLOAD, -22, -1])
def test_truncated_checkpoint(files, tmp_path, size):
    """Truncations anywhere (a multiple of 4096 like an interrupted download, inside the central directory)."""
    path = truncate(files["base"], tmp_path / "t.pt", size if size >= 0 else files["base"].stat().st_size + size)
    expected = r"is empty \(0 bytes\)" if size == 0 else r"cannot load .*t\.pt: it is truncated or corrupt \(failed finding the zip central directory; an interrupted download\?\)"
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)


def test_corrupt_checkpoint_member(files, tmp_path):
    """A flipped byte inside a stored tensor: the zip's CRC catches it before unpickling."""
    data = bytearray(files["base"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flip.pt").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"flip\.pt: it is corrupt \(damaged member best/data/\d+\)"):
        load_model(tmp_path / "flip.pt")


def test_corrupt_checkpoint_directory(files, tmp_path):
    """A damaged file name in the zip central directory (it made zipfile raise UnicodeDecodeError)."""
    data = bytearray(files["base"].read_bytes())
    with zipfile.ZipFile(files["base"]) as z:
        start = z.start_dir
    data[start + 46] = 0xFF  # first byte of the first central-directory file name
    (tmp_path / "dir.pt").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"dir\.pt: it is corrupt \(\w+Error while reading the zip directory\)"):
        load_model(tmp_path / "dir.pt")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("state_dict", r"state_dict\.pt is not an Ultralytics checkpoint: it holds a bare state_dict with no 'model' or 'ema' module"),
        ("plain_dict", r"plain_dict\.pt is not an Ultralytics checkpoint: it holds a dict with keys \['a', 'b'\]"),
        ("empty", r"model file .*empty\.pt is empty \(0 bytes\)"),
        ("folder", r"model path .*folder\.pt is a directory, not a \.pt checkpoint"),
        ("night", r"night\.safetensors is a task vector, not a model"),
    ],
)
def test_not_a_checkpoint(files, name, expected):
    with pytest.raises(CheckpointError, match=expected):
        load_model(files[name])


def test_raw_pickle_and_missing_and_wrong_suffix(tmp_path):
    import pickle

    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=r"raw\.pt: it is not a PyTorch zip checkpoint"):
        load_model(tmp_path / "raw.pt")
    with pytest.raises(CheckpointError, match=r"model file .*nowhere\.pt not found \(also looked in weights_dir "):
        load_model(tmp_path / "nowhere.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt is not a \.pt checkpoint \(or a \.safetensors model"):
        load_model(tmp_path / "notes.txt")


def test_pickle_naming_a_missing_module_never_installs_it(tmp_path):
    """Ultralytics would pip-install a module a checkpoint names; the plugin refuses before unpickling."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "evil_pkg_zz.py").write_text("class Thing:\n    pass\n")
    code = "import sys, torch, evil_pkg_zz; torch.save({'model': evil_pkg_zz.Thing()}, sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt")], check=True, env={**os.environ, "PYTHONPATH": str(pkg)})
    with pytest.raises(CheckpointError, match=r"refused to load .*m\.pt: it references evil_pkg_zz\.Thing, outside the torch and Ultralytics classes"):
        load_model(tmp_path / "m.pt")  # restricted by default: the name alone is refused
    with pytest.raises(CheckpointError, match=r"needs Python module 'evil_pkg_zz', which is not installed \(yolo-taskvec never installs packages"):
        load_model(tmp_path / "m.pt", trust=True)


# ----------------------------------------------------------------------------------------------- model mismatches
def test_different_architecture_scale(base_pt, foreign_models):
    with pytest.raises(MismatchError, match=r"yolo26s has a different architecture from the base yolo26n-base80 \(yolo26s scale s vs yolo26n scale n\)"):
        TaskVector.from_models(base_pt, foreign_models["yolo26s"])


def test_detect_vs_pose(base_pt, foreign_models, capsys, tmp_path):
    message = r"pose is a pose model \(Pose26 head\) and the base a detect model \(Detect head\)"
    with pytest.raises(MismatchError, match=message):
        TaskVector.from_models(base_pt, foreign_models["pose"], unmatched="carry")
    assert re.search(message, cli_error(capsys, "merge", f"base={base_pt}", f"models={foreign_models['pose']}", f"out={tmp_path / 'm.pt'}"))
    assert not leftovers(tmp_path)


def test_different_class_counts_without_policy(base_model, capsys, tmp_path):
    raccoon = weight("yolo26n-raccoon.pt")
    with pytest.raises(MismatchError, match=r"yolo26n-raccoon has 12 tensors with no same-shape counterpart in the base \(e\.g\. model\.23\.cv3\.0\.2\.weight\); pass unmatched=carry"):
        TaskVector.from_models(base_model, raccoon)
    message = r"'yolo26n-raccoon' was trained on other classes \(raccoon\) than the base \(person, bicycle, car, motorcycle, \.\.\. \(80 classes\)\); use classes=union"
    with pytest.raises(MismatchError, match=message):
        merge(base_model, [raccoon])
    line = cli_error(capsys, "merge", "base=yolo26n-base80.pt", f"models={raccoon}", f"out={tmp_path / 'm.pt'}")
    assert re.search(message, line)
    assert not leftovers(tmp_path)


def test_vector_applied_to_another_base(files, capsys, tmp_path):
    raccoon = load_model(weight("yolo26n-raccoon.pt"))
    tv = load_vector(files["small"])
    with pytest.raises(MismatchError, match=r"task vector 'fruit-night' was extracted from a different base \(fingerprint 9311fd4f664e, this base be1a88fbd645\)"):
        merge(raccoon, [tv])
    line = cli_error(capsys, "apply", "base=yolo26n-raccoon.pt", f"vectors={files['small']}", f"out={tmp_path / 'm.pt'}")
    assert "extracted from a different base" in line and "force=True" in line
    assert not leftovers(tmp_path)


# ----------------------------------------------------------------------------------------------- task-vector files
def _flip_header(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[12] ^= 0xFF
    dst.write_bytes(data)
    return dst


def _first(ts: dict) -> str:
    return next(k for k in sorted(ts) if k.endswith("conv.weight"))


VECTOR_DAMAGE = {
    "header": (_flip_header, r"is not a valid safetensors file \(Error while deserializing"),
    "metadata_json": (lambda s, d: rewrite(s, d, metadata=lambda md: {**md, "meta": '{"name": "x", '}), r"has corrupted metadata \(the 'meta' or 'encodings' JSON is unreadable\)"),
    "not_ours": (lambda s, d: rewrite(s, d, metadata=lambda md: {"format": "something-else"}, checksum=False), r"is a safetensors file but not a yolo-taskvec task vector"),
    "future_version": (lambda s, d: rewrite(s, d, metadata=lambda md: {**md, "format_version": "99"}), r"uses task-vector format 99; this yolo-taskvec reads up to 2, upgrade it"),
    "int_dtype": (lambda s, d: rewrite(s, d, tensors=lambda ts: {**ts, _first(ts): ts[_first(ts)].to(torch.int32)}), r"tensor delta/model\.0\.conv\.weight has dtype int32, expected one of fp32, fp16, bf16"),
    "missing_tensor": (lambda s, d: rewrite(s, d, tensors=lambda ts: {k: v for k, v in ts.items() if k != _first(ts)}), r"is missing tensor delta/model\.0\.conv\.weight listed in its metadata"),
    "extra_tensor": (lambda s, d: rewrite(s, d, tensors=lambda ts: {**ts, "delta/model.99.extra": torch.zeros(3)}), r"holds 1 tensors not listed in its metadata \(e\.g\. delta/model\.99\.extra\)"),
    "nan": (lambda s, d: rewrite(s, d, tensors=lambda ts: {**ts, _first(ts): ts[_first(ts)].index_fill(0, torch.tensor([0]), float("nan"))}), r"tensor delta/model\.0\.conv\.weight holds NaN or Inf values"),
    "inf": (lambda s, d: rewrite(s, d, tensors=lambda ts: {**ts, _first(ts): ts[_first(ts)].index_fill(0, torch.tensor([1]), float("inf"))}), r"tensor delta/model\.0\.conv\.weight holds NaN or Inf values"),
    "wrong_shape": (lambda s, d: rewrite(s, d, tensors=lambda ts: {**ts, _first(ts): ts[_first(ts)].reshape(-1)[:10].clone()}), r"tensor delta/model\.0\.conv\.weight does not match its recorded encoding"),
    "absurd_shape": (lambda s, d: rewrite(s, d, metadata=lambda md: {**md, "encodings": md["encodings"].replace("[16, 3, 3, 3]", "[100000, 100000, 3, 3]")}), r"declares delta/model\.0\.conv\.weight with shape \[100000, 100000, 3, 3\], larger than any YOLO tensor"),
    "bit_rot": (lambda s, d: rewrite(s, d, tensors=lambda ts: {**ts, _first(ts): ts[_first(ts)] * 1.0001}, checksum=False), r"is corrupt: its content does not match the sha256 recorded when it was saved"),
}


@pytest.mark.parametrize("damage", sorted(VECTOR_DAMAGE))
def test_damaged_vector_file(files, tmp_path, damage):
    make, expected = VECTOR_DAMAGE[damage]
    path = make(files["small"], tmp_path / f"{damage}.safetensors")
    with pytest.raises(VectorFileError, match=expected):
        TaskVector.load(path)


@pytest.mark.parametrize("damage", ["header", "int_dtype", "extra_tensor", "nan"])
def test_damaged_vector_file_cli(files, tmp_path, capsys, damage):
    make, expected = VECTOR_DAMAGE[damage]
    path = make(files["small"], tmp_path / f"{damage}.safetensors")
    assert re.search(expected, cli_error(capsys, "apply", f"base={files['base']}", f"vectors={path}", f"out={tmp_path / 'm.pt'}"))
    assert leftovers(tmp_path) == [path.name]
    assert re.search(expected, cli_error(capsys, "info", f"vectors={path}"))


def test_not_a_vector_file(files, tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "folder.safetensors").mkdir()
    cases = {
        tmp_path / "none.safetensors": r"task-vector file .*none\.safetensors not found",
        tmp_path / "empty.safetensors": r"task-vector file .*empty\.safetensors is empty \(0 bytes\)",
        tmp_path / "folder.safetensors": r"task-vector path .*folder\.safetensors is a directory, not a \.safetensors file",
        files["base"]: r"base\.pt is a \.pt checkpoint, not a task-vector file; extract a vector first \(yolo-taskvec extract\)",
    }
    for path, expected in cases.items():
        with pytest.raises(VectorFileError, match=expected):
            TaskVector.load(path)


# ----------------------------------------------------------------------------------------------- scales and BatchNorm
@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        (float("nan"), r"scale must be finite, got nan"),
        (float("inf"), r"scale must be finite, got inf"),
        (1e9, r"scale 1e\+09 is outside \[-10, 10\]; task vectors are meant to be scaled by small factors"),
        ({"backbone": float("-inf"), "*": 1.0}, r"scale for part 'backbone' must be finite, got -inf"),
        ({"bakbone": 0.5}, r"unknown part 'bakbone' in scale; did you mean backbone\?"),
        ("half", r"scale: 'half' is not a number\."),
    ],
)
def test_bad_scales(base_model, files, scale, expected):
    with pytest.raises(TaskVecError, match=expected):
        TaskVector.load(files["small"]).apply(base_model, scale=scale)


@pytest.mark.parametrize(("scale", "text"), [("nan", "scale must be finite, got nan"), ("-inf", "scale must be finite, got -inf"), ("1e9", "is outside [-10, 10]"), ("abc", "scale: 'abc' is not a number.")])
def test_bad_scales_cli(files, tmp_path, capsys, scale, text):
    assert text in cli_error(capsys, "apply", f"base={files['base']}", f"vectors={files['small']}", f"scale={scale}", f"out={tmp_path / 'm.pt'}")
    assert not leftovers(tmp_path)


def test_negation_makes_running_var_non_positive(base_model, night_vector, files, tmp_path, capsys):
    message = r"these scales make \d+ BatchNorm running variances non-positive in \d+ layers \(e\.g\. model\.[\w.]+\.running_var\); use smaller scales, bn=geometric"
    with pytest.raises(TaskVecError, match=message):
        (-night_vector).apply(base_model, bn="merge")
    for scale in ("-1", "10"):  # negation and extrapolation
        assert re.search(message, cli_error(capsys, "apply", f"base={files['base']}", f"vectors={files['night']}", f"scale={scale}", "bn=merge", f"out={tmp_path / 'm.pt'}"))
    assert not leftovers(tmp_path)


def test_fp16_overflow_when_saving(base_model, files, tmp_path, capsys):
    merged = TaskVector.load(files["huge"]).apply(base_model, scale=1.0)
    with pytest.raises(OutputError, match=r"cannot save .*m\.pt in fp16: model\.0\.conv\.weight holds values beyond ±65504 \(the scales are too large\)"):
        save(merged, tmp_path / "m.pt")
    with pytest.raises(VectorFileError, match=r"model\.0\.conv\.weight holds values beyond the fp16 range; save with dtype=fp32 or bf16"):
        TaskVector.load(files["huge"]).save(tmp_path / "h.safetensors", dtype="fp16")
    assert "holds values beyond ±65504" in cli_error(capsys, "apply", f"base={files['base']}", f"vectors={files['huge']}", f"out={tmp_path / 'm.pt'}")
    assert not leftovers(tmp_path)


# ----------------------------------------------------------------------------------------------- datasets
@pytest.fixture
def yamls(tmp_path) -> dict[str, Path]:
    (tmp_path / "bad.yaml").write_text("path: [unclosed\nnames: {0: a\n")
    (tmp_path / "noimages.yaml").write_text(f"path: {tmp_path / 'nowhere'}\ntrain: images/train\nval: images/val\nnames:\n  0: a\n")
    (tmp_path / "noval.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nnames:\n  0: a\n")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    (tmp_path / "empty" / "images" / "val").mkdir(parents=True)
    (tmp_path / "emptysplit.yaml").write_text(f"path: {tmp_path / 'empty'}\ntrain: images/val\nval: images/val\nnames:\n  0: a\n")
    return {p.stem: p for p in tmp_path.glob("*.yaml")}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing", r"dataset yaml missing-zz\.yaml not found \(also looked in Ultralytics' datasets\)\."),
        ("bad", r"dataset yaml .*bad\.yaml is malformed: YAML syntax error: while parsing a flow sequence\.$"),
        ("noimages", r"dataset .*noimages\.yaml: missing path '.*nowhere/images/(train|val)' \(images not found\)\."),
        ("noval", r"dataset yaml .*noval\.yaml is malformed: 'val:' key missing\.$"),
        ("list", r"dataset yaml .*list\.yaml is malformed: it is not a valid YAML mapping\.$"),
        ("emptysplit", r"dataset .*emptysplit\.yaml has no images in its 'train' split\."),
    ],
)
def test_bad_dataset_yaml(yamls, name, expected):
    with pytest.raises(DataError, match=expected):
        image_files(yamls.get(name, "missing-zz.yaml"), "train")


def test_bad_dataset_in_recalibration_cli(yamls, files, tmp_path, capsys):
    line = cli_error(capsys, "apply", f"base={files['base']}", f"vectors={files['small']}", "bn=recalibrate", f"bn_data={yamls['noimages']}", f"out={tmp_path / 'm.pt'}")
    assert re.search(r"noimages\.yaml: missing path .* \(images not found\)\.$", line)
    assert not leftovers(tmp_path)
    with pytest.raises(DataError, match=r"dataset .*notes\.txt is not a \.yaml file"):
        load_data(tmp_path / "notes.txt")


def test_model_task_the_evaluator_cannot_score(foreign_models, seg_pt):
    """A segment model on detect-only data is scored on boxes (helper C's design); a pose model is refused."""
    from yolo_taskvec.evaluation import evaluate

    coco8 = str(data_yaml("coco8.yaml"))
    boxes = evaluate(seg_pt, coco8, imgsz=320, batch=4, device="cpu")
    row = next(iter(boxes))
    assert 0.0 <= row["map50_95"] <= 1.0 and not any(k.startswith("mask") for k in row)
    with pytest.raises(TaskVecError, match=r"pose is a pose model; evaluation scores detect and segment models"):
        evaluate(foreign_models["pose"], coco8, imgsz=320, batch=4, device="cpu")


# ----------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["extrct", "base=a.pt"], r"unknown mode 'extrct'; did you mean extract\?$"),
        (["zzzz"], r"unknown mode 'zzzz'; modes: extract, apply, merge, .*, help, version\.$"),
        (["extract", "bse=a.pt"], r"unknown argument 'bse' for any mode; did you mean base\?$"),
        (["extract", "scale=0.5"], r"unknown argument 'scale' for mode 'extract'; valid: base, tuned, out"),
        (["info", "vectors"], r"argument 'vectors' is not key=value\.$"),
        (["apply", "base=a.pt"], r"missing argument vectors= \(comma-separated task-vector files"),
        (["apply", "force=maybe"], r"missing argument base= "),  # what to merge is asked for before values are checked
        (["apply", "base=a.pt", "vectors=b.safetensors", "force=maybe"], r"force must be true or false, got 'maybe'\.$"),
        (["merge", "base=a.pt", "models=b.pt", "seed=1.5"], r"seed must be an integer, got '1\.5'\.$"),
        (["convert", "model=a.pt", "out=b.pt"], r"convert turns a \.pt into a \.safetensors model or back; got \.pt to \.pt\.$"),
    ],
)
def test_cli_usage_errors(capsys, argv, expected):
    assert re.search(expected, cli_error(capsys, *argv))


# ----------------------------------------------------------------------------------------------- outputs
def test_output_equal_to_an_input(files, base_model, night_vector, tmp_path, capsys):
    digest = sha256(files["base"])
    merged = night_vector.select(SMALL).apply(files["base"], 0.5)
    with pytest.raises(OutputError, match=r"output .*base\.pt is also an input; choose another name"):
        save(merged, files["base"])  # provenance knows the base's file
    with pytest.raises(OutputError, match=r"is also an input"):
        save_checkpoint(load_model(files["base"]).module, files["base"])  # the module's own source file
    for argv in (
        ["apply", f"base={files['base']}", f"vectors={files['small']}", f"out={files['base']}"],
        ["apply", f"base={files['base']}", f"vectors={files['small']}", f"out={files['small']}"],
        ["extract", f"base={files['base']}", "tuned=yolo26n-fruit-night.pt", f"out={files['base']}"],
    ):
        assert "is also an input" in cli_error(capsys, *argv)
    assert sha256(files["base"]) == digest


def test_output_names_of_the_wrong_kind(files, night_vector, tmp_path, capsys):
    with pytest.raises(VectorFileError, match=r"cannot save a task vector as .*v\.pt: \.pt names are for checkpoints; use \.safetensors"):
        night_vector.select(SMALL).save(tmp_path / "v.pt")
    line = cli_error(capsys, "apply", f"base={files['base']}", f"vectors={files['small']}", f"out={tmp_path / 'm.safetensors'}")
    assert "cannot save a model as" in line and "Ultralytics checkpoints need a .pt name" in line
    assert not leftovers(tmp_path)


def test_unwritable_outputs(files, tmp_path, capsys):
    """Mode bits are checked directly, so a 0o555 folder and a 0o444 file are refused even for root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"keep me")
    existing.chmod(0o444)
    locked.chmod(0o555)
    try:
        cases = [
            (locked / "m.pt", r"cannot write .*locked/m\.pt: no write permission in .*locked\."),
            (existing, r"output .*existing\.pt (exists and is read-only; choose another name|already exists; choose another name, or add exist_ok=true to replace it)\."),
            (tmp_path / "missing" / "m.pt", r"cannot write .*missing/m\.pt: folder .*missing does not exist\."),
            (tmp_path, r"output .* is a directory; give a file name\."),
            (Path("/dev/null"), r"output /dev/null exists and is not a regular file \(a device or pipe\?\); choose another name\."),
        ]
        for out, expected in cases:
            with pytest.raises(OutputError, match=expected):
                check_output(out)
            assert re.search(expected, cli_error(capsys, "apply", f"base={files['base']}", f"vectors={files['small']}", f"out={out}"))
        assert not list(locked.iterdir()) and existing.read_bytes() == b"keep me"
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------------------------- real processes
def run_script(*argv, cwd=None, env=None, preexec_fn=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env, preexec_fn=preexec_fn, timeout=timeout)


def assert_clean_failure(run: subprocess.CompletedProcess, out_dir: Path, expected: str) -> None:
    """Exit 2, exactly one line on stderr that matches, no traceback, no output or temporary file left."""
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr + run.stdout
    assert re.search(expected, lines[0]), lines[0]
    assert not leftovers(out_dir), leftovers(out_dir)


SCRIPT_CASES = {
    "truncated_download": (lambda f, o: ["apply", f"base={f['truncated']}", f"vectors={f['small']}", f"out={o / 'm.pt'}"], r"truncated\.pt: it is truncated or corrupt \(failed finding the zip central directory"),
    "unknown_mode": (lambda f, o: ["mrege", f"base={f['base']}", f"out={o / 'm.pt'}"], r"unknown mode 'mrege'; did you mean merge\?"),
    "damaged_vector": (lambda f, o: ["apply", f"base={f['base']}", f"vectors={_flip_header(f['small'], o.parent / 'flipped.safetensors')}", f"out={o / 'm.pt'}"], r"flipped\.safetensors is not a valid safetensors file"),
    "negation": (lambda f, o: ["apply", f"base={f['base']}", f"vectors={f['night']}", "scale=-1", f"out={o / 'm.pt'}"], r"BatchNorm running variances non-positive"),
    "fp16_overflow": (lambda f, o: ["apply", f"base={f['base']}", f"vectors={f['huge']}", f"out={o / 'm.pt'}"], r"in fp16: model\.0\.conv\.weight holds values beyond ±65504"),
    "locked_folder": (lambda f, o: (o.chmod(0o555), ["extract", f"base={f['base']}", "tuned=yolo26n-fruit-night.pt", f"out={o / 'v.safetensors'}"])[1], r"no write permission in"),
}


@pytest.mark.parametrize("case", sorted(SCRIPT_CASES))
def test_console_script_failures(files, tmp_path, case):
    make, expected = SCRIPT_CASES[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        run = run_script(*make(files, out_dir))
    finally:
        out_dir.chmod(0o755)
    assert_clean_failure(run, out_dir, expected)


def test_bare_names_resolved_through_weights_dir_never_overwrite(tmp_path, base_pt, night_pt):
    """``out=yolo26n-base80.pt`` next to ``base=yolo26n-base80.pt`` (found in weights_dir) is refused, both in the
    weights folder itself and elsewhere (where it would shadow the base for every later command)."""
    weights, work, config, vectors = tmp_path / "weights", tmp_path / "work", tmp_path / "config", tmp_path / "vectors"
    for d in (weights, work, config, vectors):
        d.mkdir()
    for src in (base_pt, night_pt):
        shutil.copyfile(src, weights / src.name)
    env = {**os.environ, "YOLO_CONFIG_DIR": str(config)}
    subprocess.run([sys.executable, "-c", "import sys; from ultralytics.utils import SETTINGS; SETTINGS.update(weights_dir=sys.argv[1], sync=False)", str(weights)], env=env, check=True, capture_output=True)
    before = {p.name: sha256(p) for p in weights.iterdir()}
    for cwd in (weights, work):
        run = run_script("extract", "base=yolo26n-base80.pt", "tuned=yolo26n-fruit-night.pt", "out=yolo26n-base80.pt", cwd=cwd, env=env)
        assert_clean_failure(run, work, r"output yolo26n-base80\.pt is also an input; choose another name so the input is not overwritten\.")
    run = run_script("extract", "base=yolo26n-base80.pt", "tuned=yolo26n-fruit-night.pt", "out=night.safetensors", "parts=model.0.*", cwd=vectors, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    run = run_script("apply", "base=yolo26n-base80.pt", f"vectors={vectors / 'night.safetensors'}", "scale=0.5", "out=yolo26n-base80.pt", cwd=weights, env=env)
    assert_clean_failure(run, work, r"output yolo26n-base80\.pt is also an input")
    assert {p.name: sha256(p) for p in weights.iterdir()} == before


def _namespaces_work() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="needs user+mount namespaces (unshare -rm) to mount a small tmpfs")
def test_disk_full_on_a_real_small_filesystem(files, tmp_path):
    """A 1 MiB tmpfs (private mount namespace) cannot hold the 5 MB checkpoint: the write fails with ENOSPC."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    listing = tmp_path / "listing.txt"
    inner = f'mount -t tmpfs -o size=1m tmpfs "{mount}" && "{SCRIPT}" apply base="{files["base"]}" vectors="{files["small"]}" out="{mount}/m.pt"; code=$?; ls -A "{mount}" > "{listing}"; exit $code'
    run = subprocess.run(["unshare", "-rm", "sh", "-c", inner], capture_output=True, text=True, timeout=300)
    assert_clean_failure(run, mount, r"no space left on the device while writing .*small-disk/m\.pt; nothing was written\.")
    assert listing.read_text().split() == []  # seen inside the full file system: no partial output, no temporary


def test_file_size_limit(files, tmp_path):
    """A real RLIMIT_FSIZE below the checkpoint's size: the kernel refuses the write (EFBIG)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out"
    out.mkdir()
    run = run_script("apply", f"base={files['base']}", f"vectors={files['small']}", f"out={out / 'm.pt'}", preexec_fn=limit)
    assert_clean_failure(run, out, r"cannot write .*m\.pt: the file size limit was exceeded; nothing was written\.")
