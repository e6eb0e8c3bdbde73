"""No lost or half-written output, and inputs never modified.

* Every CLI mode (``yolo_taskvec.cli.MODES``, including modes added later) runs on private copies of real inputs;
  every input file — checkpoints, vectors, dataset yamls, labels and images, the shared weights — hashes the same
  afterwards.
* Writes are atomic: a temporary file beside the target, fsync, ``os.replace``. Real concurrent processes writing one
  path leave one complete file, and a reader never sees a partial one. A writer killed (SIGKILL) mid-write leaves the
  previous file (or none) and only its temporary, which the next write of that path removes.
* Outputs get ordinary permissions (the umask's), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATASETS, DATA_YAMLS, WEIGHTS

from yolo_taskvec import TaskVector
from yolo_taskvec.atomic import TEMP_SUFFIX, atomic_output, remove_stale_temps, write_text_atomic
from yolo_taskvec.checkpoint import load_model
from yolo_taskvec.cli import MODES, main
from yolo_taskvec.errors import OutputError
from yolo_taskvec.files import load_vector
from yolo_taskvec.methods import method_names

SMALL = ["model.0.*", "model.23.cv2.0.2.*"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(*roots: Path) -> dict[str, str]:
    """Hash of every file under the roots (symlinks followed: the shared images they point to are hashed too)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".cache")
        out.update({str(p): sha256(p) for p in files})
    return out


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"*{TEMP_SUFFIX}"))


# ----------------------------------------------------------------------------------------------- every mode
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, base_pt, night_pt, night_vector) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mode-inputs")
    f = {"dir": d, "base": d / "base.pt", "tuned": d / "tuned.pt", "raccoon": d / "raccoon.pt"}
    shutil.copyfile(base_pt, f["base"])
    shutil.copyfile(night_pt, f["tuned"])
    shutil.copyfile(WEIGHTS / "yolo26n-raccoon.pt", f["raccoon"])
    f["vector"] = night_vector.save(d / "night.safetensors")
    f["day"] = d / "coco8.yaml"
    shutil.copyfile(DATA_YAMLS / "coco8.yaml", f["day"])
    for key, name in (("fruit", "fruit80"), ("night", "fruit80-night")):  # the demo's own data: base80 and the night
        f[key] = d / f"{name}.yaml"  # fine-tune, which normalize its columns, score 0 on coco8
        shutil.copyfile(DATA_YAMLS / f"{name}.yaml", f[key])
    return f


def mode_arguments(f: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """A real, small invocation of each known mode (imgsz 320, coco8, two-point grids)."""
    method = "ties" if "ties" in method_names() else "task_arithmetic"
    small_eval = ["imgsz=320", "batch=8", f"data={f['day']}"]
    return {
        "extract": [f"base={f['base']}", f"tuned={f['tuned']}", f"out={out / 'v.safetensors'}"],
        "apply": [f"base={f['base']}", f"vectors={f['vector']}", "scale=0.5", f"out={out / 'a.pt'}"],
        "merge": [f"base={f['base']}", f"models={f['tuned']},{f['vector']}", f"method={method}", "scale=0.5", f"out={out / 'm.pt'}"],
        "union-data": [f"base={f['base']}", f"models={f['raccoon']}", f"data={f['day']}", f"out={out / 'union'}"],
        "info": [f"vectors={f['vector']}", f"model={f['base']},{f['tuned']}"],
        "compress": [f"vectors={f['vector']}", "keep=0.1", f"out={out / 'c.safetensors'}"],
        "transform": [f"data={f['day']}", "preset=night", f"out={out / 'coco8-night'}"],
        "convert": [f"model={f['base']}", f"out={out / 'b.safetensors'}"],
        "demo": [f"base={f['base']}", f"tuned={f['tuned']}", f"day={f['fruit']}", f"night={f['night']}", "scales=0:1:1", "imgsz=320", f"out={out / 'demo'}"],
        "sweep": [f"base={f['base']}", f"vectors={f['vector']}", "scales=0:1:1", *small_eval, f"out={out / 'sweep'}", f"best={out / 'best.pt'}"],
        "search": [f"base={f['base']}", f"vectors={f['vector']}", "budget=2", *small_eval, f"out={out / 'search'}"],
        "soup": [f"base={f['base']}", f"models={f['tuned']},{f['vector']}", *small_eval, f"out={out / 'soup'}"],
        "val": [f"model={f['base']},{f['tuned']}", *small_eval, f"out={out / 'val.csv'}"],
        "coco-export": [f"data={f['day']}", f"out={out / 'coco8.json'}"],
        "help": [],
        "version": [],
    }


def guessed_arguments(f: dict[str, Path], out: Path, allowed: tuple[str, ...]) -> list[str]:
    """For a mode added after this test was written: plausible values for the argument names it takes."""
    values = {
        "base": f["base"], "tuned": f["tuned"], "models": f["tuned"], "vectors": f["vector"], "model": f["base"],
        "data": f["day"], "imgsz": 320, "batch": 8, "scales": "0:1:1", "budget": 2, "out": out / "new-mode-output",
    }
    return [f"{k}={values[k]}" for k in allowed if k in values]


@pytest.mark.parametrize("name", sorted(MODES))
def test_no_mode_modifies_its_inputs(inputs, tmp_path, capsys, name):
    if name == "studio":
        pytest.skip("the studio serves until stopped; tests/test_studio.py checks its inputs are unchanged")
    out = tmp_path / "out"
    out.mkdir()
    known = mode_arguments(inputs, out)
    argv = known.get(name)
    if argv is None:
        argv = guessed_arguments(inputs, out, MODES[name][1])
    watched = (inputs["dir"], WEIGHTS, DATASETS / "coco8", DATA_YAMLS / "coco8.yaml")
    before = snapshot(*watched)
    code = main([name, *argv])
    captured = capsys.readouterr()
    assert snapshot(*watched) == before, f"mode {name} modified an input"
    if name in known:
        assert code == 0, captured.err[-2000:]
    else:  # a new mode with guessed arguments may refuse them, but cleanly
        assert code in (0, 2), captured.err[-2000:]
    assert not temporaries(out) and not temporaries(inputs["dir"])


# ----------------------------------------------------------------------------------------------- atomic writes
WRITER = """
import sys, torch
from yolo_taskvec.files import save_vector
from yolo_taskvec.taskvector import TaskVector
value, out, n = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tv = TaskVector({f"model.{i}.weight": torch.full((64, 64), value) for i in range(16)}, {}, {"name": f"writer{value:g}"})
for _ in range(n):
    save_vector(tv, out)
print("done")
"""

READER = """
import sys, time
from pathlib import Path
from yolo_taskvec.files import load_vector
out, seconds = Path(sys.argv[1]), float(sys.argv[2])
seen, end = set(), time.time() + seconds
while time.time() < end:
    existed = out.exists()  # once it exists, atomic replacement means a complete file is always there
    try:
        tv = load_vector(out)
    except Exception as e:
        if existed:
            print("BAD", type(e).__name__, e)
            sys.exit(1)
        continue
    values = {float(t.unique().item()) for t in tv.deltas.values()}
    if len(values) != 1 or len(tv.deltas) != 16 or tv.meta["name"] != f"writer{min(values):g}":
        print("MIXED", values, tv.meta["name"])  # e.g. one version's header with the other's data
        sys.exit(1)
    seen |= values
print("seen", sorted(seen))
"""


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    """Two real processes rewrite the same path 25 times each while a third keeps reading it: every read is one
    complete version (header and data of the same write; ``safe_open`` alone could pair two versions)."""
    out = tmp_path / "shared.safetensors"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(v), str(out), "25"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (1.0, 2.0)]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), "12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [p.communicate(timeout=300) for p in writers]
    assert all(p.returncode == 0 for p in writers), results
    read_out, read_err = reader.communicate(timeout=300)
    assert reader.returncode == 0, read_out + read_err[-2000:]
    tv = load_vector(out)
    assert len(tv.deltas) == 16 and len({float(t.unique().item()) for t in tv.deltas.values()}) == 1
    assert tv.meta["name"] in ("writer1", "writer2")
    assert not temporaries(tmp_path)


DYING_WRITE = """
import io, os, signal, sys
import yolo_taskvec.checkpoint as ck
real_save = ck._torch_save  # the serializer save_checkpoint writes through

def save_then_die(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])  # half the checkpoint is written ...
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the process dies: no cleanup, no finally

ck._torch_save = save_then_die
from yolo_taskvec.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "replacing-a-file"])
def test_crash_mid_write_leaves_no_partial_file(tmp_path, base_pt, night_vector, existing):
    vector = night_vector.select(SMALL).save(tmp_path / "small.safetensors")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "merged.pt"
    if existing:
        out.write_bytes(b"the previous, complete file")
    argv = ["apply", f"base={base_pt}", f"vectors={vector}", "scale=0.5", f"out={out}", *(["exist_ok=true"] if existing else [])]
    run = subprocess.run([sys.executable, "-c", DYING_WRITE, *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    if existing:
        assert out.read_bytes() == b"the previous, complete file"
    else:
        assert not out.exists()
    stale = temporaries(out_dir)
    assert len(stale) == 1 and stale[0].name.startswith(".merged.pt.") and stale[0].stat().st_size > 1_000_000
    assert main(argv) == 0  # the next write of that path succeeds and clears the dead writer's temporary
    assert not temporaries(out_dir)
    assert load_model(out).task == "detect"


def test_a_failing_writer_keeps_the_previous_file(tmp_path):
    out = tmp_path / "table.json"
    write_text_atomic(out, json.dumps({"rows": 1}))
    with pytest.raises(RuntimeError, match="writer failed"), atomic_output(out) as tmp:
        tmp.write_text('{"rows": ')
        raise RuntimeError("writer failed")
    assert json.loads(out.read_text()) == {"rows": 1} and not temporaries(tmp_path)


def test_outputs_get_ordinary_permissions(tmp_path, night_vector):
    """mkstemp creates 0600 files; outputs must be readable like any file the user writes (umask), and a replaced
    file keeps its own mode."""
    umask = os.umask(0)
    os.umask(umask)
    path = night_vector.select(SMALL).save(tmp_path / "v.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    night_vector.select(SMALL).save(path)
    assert path.stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    """Only temporaries whose process is gone are removed: a concurrent live writer's file is never touched."""
    target = tmp_path / "x.pt"
    live = tmp_path / f".x.pt.{os.getpid()}.abc{TEMP_SUFFIX}"
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    dead = tmp_path / f".x.pt.{dead_pid}.abc{TEMP_SUFFIX}"
    other = tmp_path / f".y.pt.{dead_pid}.abc{TEMP_SUFFIX}"
    cousin = tmp_path / f".x.pt.{dead_pid}.{os.getpid()}.abc{TEMP_SUFFIX}"  # a live writer of "x.pt.<digits>"
    for p in (live, dead, other, cousin):
        p.write_bytes(b"partial")
    time.sleep(0.05)
    assert remove_stale_temps(target) == [dead]
    assert live.exists() and other.exists() and cousin.exists() and not dead.exists()


def test_checkpoint_write_is_complete_and_loadable(tmp_path, base_pt, night_vector):
    """The saved checkpoint is a valid zip whose tensors equal the merge (fp16), written via a temporary."""
    from yolo_taskvec import save

    merged = night_vector.select(SMALL).apply(base_pt, scale=0.5)
    out = save(merged, tmp_path / "m.pt")
    back = load_model(out)
    for key, value in merged.model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(back.state[key], value.half().float()), key
    with pytest.raises(OutputError, match="is also an input"):
        save(merged, base_pt)
    assert not temporaries(tmp_path)
    assert isinstance(TaskVector.load(night_vector.select(SMALL).save(tmp_path / "v.safetensors")), TaskVector)


KILLED_SWEEP = """
import os, signal, sys
from yolo_taskvec.sweep import sweep

def die_after_first_point(row):
    os.kill(os.getpid(), signal.SIGKILL)  # a real crash right after the first point was stored

sweep(sys.argv[1], [sys.argv[2]], data=sys.argv[3], scales="0:1:0.5", imgsz=320, batch=8, out=sys.argv[4], plot=False, verbose=False, callback=die_after_first_point)
"""


def test_sweep_killed_mid_run_resumes_without_recomputing(tmp_path, base_pt, night_vector):
    """SIGKILL after the first of three points: the results file is complete JSON with that point, and the rerun
    evaluates only the two missing points (helper D's resume, checked here against a real crash)."""
    from conftest import data_yaml

    from yolo_taskvec.sweep import sweep

    vector = night_vector.select(SMALL).save(tmp_path / "small.safetensors")
    out, data = tmp_path / "sweep", str(data_yaml("coco8.yaml"))
    run = subprocess.run([sys.executable, "-c", KILLED_SWEEP, str(base_pt), str(vector), data, str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    saved = json.loads((out / "sweep.json").read_text())
    assert len(saved["rows"]) == 1 and not temporaries(out)
    new_rows = []
    result = sweep(base_pt, [vector], data=data, scales="0:1:0.5", imgsz=320, batch=8, out=out, plot=False, verbose=False, callback=new_rows.append)
    assert result.evaluated == 2 and len(new_rows) == 2 and len(result.rows) == 3
    assert saved["rows"][0]["point"] not in [r["point"] for r in new_rows]
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 3


# ----------------------------------------------------------------------------------------------- interrupted saves
INTERRUPTED_SAVES = r"""
import json, os, resource, signal, sys
from pathlib import Path
import yolo_taskvec.checkpoint as ck

class Terminated(BaseException):
    pass

def on_term(signum, frame):
    raise Terminated

signal.signal(signal.SIGTERM, on_term)  # as the CLI does: SIGTERM unwinds like Ctrl-C
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background parent may have ignored it)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
model = ck.load_model(sys.argv[1]).module
out, size = Path(sys.argv[2]), int(sys.argv[3])
real_save, real_verify = ck._torch_save, ck.verify_archive

class Tripwire:
    # the real file underneath; at byte `at` of the archive, `action` runs (a real signal sent to this process)
    def __init__(self, f, at, action):
        self.f, self.at, self.action, self.written = f, at, action, 0
    def write(self, data):
        n = self.f.write(data)
        self.written += n
        if self.action and self.written >= self.at:
            action, self.action = self.action, None
            action()
        return n
    def flush(self):
        self.f.flush()

def kill(sig):
    return lambda: os.kill(os.getpid(), sig)

def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))

POINTS = [
    ("SIGINT at the first byte", 1, kill(signal.SIGINT)),
    ("SIGINT after 1 MB", 1 << 20, kill(signal.SIGINT)),
    ("SIGINT at half the archive", size // 2, kill(signal.SIGINT)),
    ("SIGTERM at half the archive", size // 2, kill(signal.SIGTERM)),
    ("SIGINT once the archive is complete", None, kill(signal.SIGINT)),
    ("file size limit at half the archive", 1, limit_file_size),
]
report = []
for label, at, action in POINTS:
    ck._torch_save, ck.verify_archive = real_save, real_verify
    if at is None:  # the last byte is written: the signal arrives while the archive is verified
        ck.verify_archive = lambda path: (action(), real_verify(path))
    else:
        ck._torch_save = lambda obj, f: real_save(obj, Tripwire(f, at, action))
    try:
        ck.save_checkpoint(model, out)
        outcome = "returned"
    except BaseException as e:
        outcome = f"{type(e).__name__}: {e}"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report.append({"point": label, "outcome": outcome, "previous": out.read_bytes() == b"the previous, complete file", "temporaries": sorted(p.name for p in out.parent.glob("*.tmp"))})
ck._torch_save, ck.verify_archive = real_save, real_verify
ck.save_checkpoint(model, out)
report.append({"point": "uninterrupted", "outcome": "returned", "size": out.stat().st_size, "temporaries": sorted(p.name for p in out.parent.glob("*.tmp"))})
print(json.dumps(report))
"""

SLOW_DISK_CLI = r"""
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background parent may have ignored it)
import yolo_taskvec.checkpoint as ck
real_save, half = ck._torch_save, int(sys.argv[1])

class SlowDisk:
    # a disk that stalls for a few seconds half-way through the archive (the parent signals meanwhile)
    def __init__(self, f):
        self.f, self.written, self.stalled = f, 0, False
    def write(self, data):
        n = self.f.write(data)
        self.written += n
        if not self.stalled and self.written >= half:
            self.stalled = True
            self.f.flush()
            time.sleep(5)
        return n
    def flush(self):
        self.f.flush()

ck._torch_save = lambda obj, f: real_save(obj, SlowDisk(f))
from yolo_taskvec.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def yolo26x(tmp_path_factory):
    """A yolo26x-sized checkpoint (59 M values, 119 MB) built offline from Ultralytics' yolo26x.yaml, and a small
    vector of it; in memory-backed storage where available, so the many 119 MB writes do not wait on the disk."""
    import tempfile

    from ultralytics.nn.tasks import DetectionModel

    from yolo_taskvec.checkpoint import save_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="yolo-taskvec-x-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    model = DetectionModel("yolo26x.yaml", nc=80, verbose=False)
    model.names, model.task, model.args = {i: f"class{i}" for i in range(80)}, "detect", {"imgsz": 640}
    base = save_checkpoint(model, folder / "x.pt")
    loaded = load_model(base)
    vector = TaskVector.from_models(loaded, loaded, parts=["model.0.*"]).save(folder / "x0.safetensors")
    yield {"dir": folder, "base": base, "vector": vector, "size": base.stat().st_size}
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_interrupted_saves_never_lie(yolo26x):
    """Real signals (SIGINT, SIGTERM) sent at the first byte, after 1 MB, half-way and after the last byte of a
    yolo26x checkpoint, and a real file-size limit hit half-way: each save raises (never returns), the previous file
    is intact and no temporary is left; then an uninterrupted save succeeds. (Ultralytics' retrying torch.save
    turned such an interruption into a second archive appended to the half-written one, reported as saved.)"""
    out_dir = yolo26x["dir"] / "points"
    out_dir.mkdir()
    out = out_dir / "merged.pt"
    out.write_bytes(b"the previous, complete file")
    run = subprocess.run([sys.executable, "-c", INTERRUPTED_SAVES, str(yolo26x["base"]), str(out), str(yolo26x["size"])], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {
        "SIGINT": "KeyboardInterrupt",
        "SIGTERM": "Terminated",
        "file size limit": "OutputError: cannot write",
    }
    for row in report[:-1]:
        want = next(v for k, v in expected.items() if row["point"].startswith(k))
        assert row["outcome"].startswith(want), row
        assert row["previous"] and row["temporaries"] == [], row
    final = report[-1]
    assert final["temporaries"] == [] and abs(final["size"] - yolo26x["size"]) < 4096
    assert load_model(out).task == "detect"


@pytest.mark.slow
def test_ctrl_c_during_a_large_merge_save_cli(yolo26x):
    """The review's case end to end: ``apply`` of a yolo26x-sized merge, SIGINT from another process while the
    checkpoint is half written (on a disk that stalls): exit 130, no "saved", the previous file intact."""
    out_dir = yolo26x["dir"] / "cli"
    out_dir.mkdir()
    out = out_dir / "merged.pt"
    out.write_bytes(b"the previous, complete file")
    argv = ["apply", f"base={yolo26x['base']}", f"vectors={yolo26x['vector']}", "scale=0.5", f"out={out}", "exist_ok=true"]
    argv = [a for a in argv if not a.startswith("exist_ok") or "exist_ok" in MODES["apply"][1]]
    child = subprocess.Popen([sys.executable, "-c", SLOW_DISK_CLI, str(yolo26x["size"] // 2), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and child.poll() is None:
        partial = [p for p in out_dir.glob(f"*{TEMP_SUFFIX}") if p.stat().st_size >= yolo26x["size"] // 2]
        if partial:
            child.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    stdout, stderr = child.communicate(timeout=600)
    assert partial, (child.returncode, stderr[-2000:])  # the signal was sent while the archive was half written
    assert child.returncode == 130, (child.returncode, stderr[-2000:])
    assert "saved" not in stdout and stderr.strip().splitlines()[-1].startswith("yolo-taskvec: interrupted"), (stdout, stderr)
    assert out.read_bytes() == b"the previous, complete file" and not temporaries(out_dir)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0, reason="needs user+mount namespaces (unshare -rm) to mount a small tmpfs")
def test_full_disk_during_a_large_save(yolo26x, tmp_path):
    """A 64 MiB file system (tmpfs in a private mount namespace) fills up half-way through the 119 MB yolo26x
    checkpoint: one sentence, exit 2, and nothing left on the full disk."""
    mount, listing = tmp_path / "small-disk", tmp_path / "listing.txt"
    mount.mkdir()
    script = Path(sys.executable).parent / "yolo-taskvec"
    inner = f'mount -t tmpfs -o size=64m tmpfs "{mount}" && "{script}" apply base="{yolo26x["base"]}" vectors="{yolo26x["vector"]}" out="{mount}/m.pt"; code=$?; ls -A "{mount}" > "{listing}"; exit $code'
    run = subprocess.run(["unshare", "-rm", "sh", "-c", inner], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [f"yolo-taskvec: error: no space left on the device while writing {mount}/m.pt; nothing was written."], run.stderr[-2000:]
    assert listing.read_text().split() == []


def test_written_files_are_verified_before_they_replace_anything(tmp_path, base_pt, night_vector):
    """What a retried or cut write leaves (half an archive, two archives in one file, trailing bytes) fails the
    verification that runs before the rename, so it can never replace the previous file."""
    from yolo_taskvec.checkpoint import verify_archive
    from yolo_taskvec.files import _verify_safetensors

    data = base_pt.read_bytes()
    vector = night_vector.select(SMALL).save(tmp_path / "v.safetensors").read_bytes()
    verify_archive(base_pt)
    _verify_safetensors(tmp_path / "v.safetensors")
    cases = {
        "half.pt": (data[: len(data) // 2], verify_archive, "truncated or corrupt"),
        "twice.pt": (data[: len(data) // 2] + data, verify_archive, "does not start with its first archive member"),
        "trailing.pt": (data + b"\0" * 100, verify_archive, "does not end with its zip end record"),
        "half.safetensors": (vector[: len(vector) // 2], _verify_safetensors, "its header is incomplete|does not end where the file ends"),
        "cut.safetensors": (vector[:-10], _verify_safetensors, "does not end where the file ends"),
        "trailing.safetensors": (vector + b"\0", _verify_safetensors, "does not end where the file ends"),
    }
    for name, (content, verify, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=reason):
            verify(tmp_path / name)
    out = tmp_path / "out.pt"
    out.write_bytes(b"the previous, complete file")
    with pytest.raises(OutputError, match=r"the file written for .*out\.pt failed verification \(it does not start with its first archive member"), atomic_output(out, verify=verify_archive) as tmp:
        tmp.write_bytes(data[:1000] + data)
    assert out.read_bytes() == b"the previous, complete file" and not temporaries(tmp_path)
