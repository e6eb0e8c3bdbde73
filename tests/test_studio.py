"""The merge studio: bad input stops before any server, the engine swaps merges into one loaded model, and the page
itself, started by the CLI on a free loopback port, is driven by a real headless Chromium (Debian's ``chromium``
through Playwright): a slider moved, the redraw checked against ``swap()`` + ``predict``, the merge saved and loaded
with ``YOLO()``, a point scored into the sweep's plot. Scores are checked against ``evaluate`` on a small dataset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import DATASETS, IN_CI, REPO, WEIGHTS, data_yaml, weight

from yolo_taskvec import TaskVector, evaluate, merge, swap
from yolo_taskvec.cli import main
from yolo_taskvec.errors import OutputError

DATA = ("fruit80.yaml", "fruit80-night.yaml")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def need(condition: bool, message: str) -> None:
    """Skip locally, fail in CI (where .ci/run installs what the browser test needs)."""
    if not condition:
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def chromium() -> str:
    need(importlib_available("gradio"), "gradio is not installed (pip install -e '.[dev]')")
    need(importlib_available("playwright"), "playwright is not installed (pip install -e '.[dev]')")
    path = shutil.which("chromium") or "/usr/bin/chromium"
    need(Path(path).exists(), "Debian's chromium is not installed (apt-get install -y chromium)")
    return path


def importlib_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def night_file(tmp_path_factory, night_vector) -> Path:
    path = tmp_path_factory.mktemp("studio-vectors") / "night.safetensors"
    night_vector.save(path)
    return path


def snapshot(*roots: Path) -> dict[str, str]:
    """Hash of every file under the roots (symlinked images followed), label caches aside."""
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file() and p.suffix != ".cache"]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def boxes_match(shown: list[dict], result, tol_px: float = 0.01, tol_conf: float = 1e-4) -> bool:
    """The page's detections (rounded to 3 / 5 decimals) equal an Ultralytics result's."""
    data = result.boxes.data.tolist()
    if len(shown) != len(data):
        return False
    for d, row in zip(shown, data):
        if d["cls"] != int(row[5]) or abs(d["conf"] - row[4]) > tol_conf or max(abs(a - b) for a, b in zip(d["box"], row[:4])) > tol_px:
            return False
    return True


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["base=missing-base.pt", "vectors={night}", "data=fruit80.yaml"], "missing-base.pt"),
        (["base=yolo26n-base80.pt", "data=fruit80.yaml"], "models="),
        (["base=yolo26n-base80.pt", "vectors={night}", "data=fruit80.yaml", "method=tiez"], "did you mean ties"),
        (["base=yolo26n-base80.pt", "vectors={night}", "data=fruit80.yaml", "method=slerp"], "exactly 2"),
        (["base=yolo26n-base80.pt", "vectors={night}", "data=fruit80.yaml", "bn=recalibrate"], "recalibrate"),
        (["base=yolo26n-base80.pt", "vectors={night}", "data=no-such-data.yaml"], "no-such-data.yaml"),
        (["base=yolo26n-base80.pt", "vectors={night}", "data=fruit80.yaml", "port={busy}"], "choose another port"),
        (["base=yolo26n-base80.pt", "vectors={night}", "data=fruit80.yaml", "density=0.3"], "unknown recipe key 'density'"),
        (["base=yolo26n-base80.pt", "vectors={night}", "data=fruit80.yaml", "host=203.0.113.9"], "cannot serve on 203.0.113.9"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2_before_any_server(args, words, night_file, capsys):
    pytest.importorskip("gradio")
    weight("yolo26n-base80.pt")
    data_yaml("fruit80.yaml")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = ["studio", *(a.format(night=night_file, busy=busy.getsockname()[1]) for a in args)]
        t0 = time.perf_counter()
        code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("yolo-taskvec: error:") and len(err.splitlines()) == 1 and words in err, err
    assert time.perf_counter() - t0 < 30  # it returned: no server was started


def test_without_gradio_the_studio_says_how_to_install_it(monkeypatch, night_file, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    assert main(["studio", "base=yolo26n-base80.pt", f"vectors={night_file}", "data=fruit80.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "yolo-taskvec[studio]"' in err, err


# ----------------------------------------------------------------------------------------------- engine
def test_several_vectors_and_another_method_are_swapped_into_the_one_loaded_model(tmp_path, night_file, night_vector, base_pt):
    """The general path (merge_states − base, swapped in): the live weights equal merge()'s up to the rounding of
    b + (m − b) (a few float32 ulps of max(|b|, |m|), on a small share of entries), the predictions equal merge()'s,
    and the model is never replaced."""
    from yolo_taskvec.studio import Studio

    half = tmp_path / "half.safetensors"
    (night_vector * 0.5).save(half)
    studio = Studio(base_pt, [night_file, half], data=[data_yaml("fruit80-night.yaml")], out=tmp_path / "run")
    module = studio.model.model
    parts = {"backbone": 0.5, "neck": 0.8, "head": 1.0}
    setting = studio.setting([0.7, 0.4], parts, method="ties", params={"density": 0.5})
    image = studio.default_images()
    view = studio.view(setting, image)
    assert studio.model.model is module  # hot-swapped, not reloaded
    reference = merge(base_pt, [night_file, half], "ties", weights=[0.7, 0.4], scale=parts, density=0.5)
    live, merged, base = module.state_dict(), reference.model.state_dict(), studio.base.state
    differing = total = 0
    for key, m in merged.items():
        if m.is_floating_point():
            bound = 3 * 2.0**-24 * torch.maximum(base[key].abs(), m.abs()) + torch.finfo(torch.float32).tiny
            diff = (live[key] - m).abs()
            assert bool((diff <= bound).all()), key
            differing += int((diff > 0).sum())
            total += m.numel()
    assert differing / total < 0.01
    result = reference.predict(image[0][1], imgsz=studio.imgsz, conf=studio.conf, verbose=False)[0]
    assert boxes_match(view.rows[0].merge.detections, result)
    base_only = studio.view(studio.setting([0.0, 0.0]), image)
    assert base_only.rows[0].merge.detections == view.rows[0].base.detections  # weights 0: the base again
    assert view.rows[0].merge.detections != view.rows[0].base.detections  # so the comparison above can fail


def test_score_equals_evaluate_of_the_merge_and_writes_the_sweep_plot(tmp_path, night_pt, base_pt):
    """models= (a fine-tune by its bare name, τ extracted at start): the score button's numbers are Ultralytics'
    metrics of the merge that save() writes; references are the base and the fine-tune, scored once."""
    from yolo_taskvec.studio import Studio

    coco8 = data_yaml("coco8.yaml")
    studio = Studio(base_pt, [night_pt.name], data=[coco8], out=tmp_path / "run")
    name = studio.names[0]
    first = studio.score(studio.setting([0.8], {"backbone": 0.5, "neck": 1, "head": 1}))
    second = studio.score(studio.setting([0.3]))
    assert set(studio.references) == {"base", name} and len(studio.rows) == 2
    saved = studio.save(studio.setting([0.8], {"backbone": 0.5, "neck": 1, "head": 1}))
    assert saved == tmp_path / "run" / "merged.pt"
    expected = evaluate({"saved": saved, "base": base_pt}, [coco8], imgsz=studio.imgsz, progress=False)
    assert first["coco8/map50_95"] == expected.get("saved", "coco8") and first["coco8/map50"] == expected.get("saved", "coco8", "map50")
    assert studio.references["base"]["coco8"]["map50_95"] == expected.get("base", "coco8")
    assert second["backbone"] == 1.0 and second[name] == 0.3
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"studio.png", "studio.json", "studio.csv", "merged.pt"} <= files
    assert studio.save(studio.setting([0.3])) == tmp_path / "run" / "merged2.pt"  # never over an earlier save
    before = night_pt.stat().st_mtime_ns
    with pytest.raises(OutputError, match="also an input"):
        studio.save(studio.setting([0.3]), night_pt)
    assert night_pt.stat().st_mtime_ns == before


# ----------------------------------------------------------------------------------------------- browser
@contextlib.contextmanager
def studio_server(args: list[str], log: Path, timeout: float = 240.0):
    """``yolo-taskvec studio ...`` in a subprocess; yields its URL once the page answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "yolo_taskvec.cli", "studio", *args, f"port={port}"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"the studio exited with {proc.returncode}:\n{log.read_text()}"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, f"the studio did not answer within {timeout:.0f} s:\n{log.read_text()}"
            time.sleep(0.5)
        yield url, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_view(page, after: int, timeout_ms: int = 60_000) -> tuple[int, dict]:
    """Wait for a redraw newer than ``after``; returns its version and view."""
    page.wait_for_function(f"() => Number(document.querySelector('#studio-state')?.dataset.version || 0) > {after}", timeout=timeout_ms)
    state = page.locator("#studio-state")
    return int(state.get_attribute("data-version")), json.loads(state.get_attribute("data-view"))


@pytest.mark.slow
def test_studio_page_in_headless_chromium(tmp_path, night_file, base_pt):
    executable = chromium()
    from playwright.sync_api import sync_playwright
    from ultralytics import YOLO

    for name in DATA:
        data_yaml(name)
    out = tmp_path / "run"
    watched = (night_file, WEIGHTS / "yolo26n-base80.pt", *(DATASETS / Path(d).stem for d in DATA))
    inputs_before = snapshot(*watched)
    args = ["base=yolo26n-base80.pt", f"vectors={night_file}", "scale=0.5", f"data={','.join(DATA)}", f"out={out}"]  # bare names: weights_dir, datasets_dir
    with studio_server(args, tmp_path / "studio.log") as (url, port), sync_playwright() as pw:
        with socket.socket() as s:  # bound to 127.0.0.1 only: another loopback address is refused
            assert s.connect_ex(("127.0.0.2", port)) != 0
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        version, before = read_view(page, 0)
        name = next(iter(before["setting"]["weights"]))
        assert before["setting"]["weights"][name] == 0.5

        # move the slider: a click at 2/3 of the track of [-1, 2] (about 1.0)
        track = page.locator("#weight-0 input[type=range]").bounding_box()
        page.mouse.click(track["x"] + track["width"] * 2 / 3, track["y"] + track["height"] / 2)
        page.wait_for_function("() => Number(document.querySelector('#weight-0 input[type=number]').value) !== 0.5")
        alpha = float(page.locator("#weight-0 input[type=number]").input_value())
        while True:  # the redraw for the slider's final value (an earlier one may arrive first)
            version, after = read_view(page, version)
            if after["setting"]["weights"][name] == alpha:
                break
        page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
        assert 0.8 <= alpha <= 1.2
        assert [r["path"] for r in after["images"]] == [r["path"] for r in before["images"]] and len(after["images"]) == len(DATA)
        assert any(b["merge"] != a["merge"] for b, a in zip(before["images"], after["images"]))  # the merge changed

        # the shown merge and base equal swap() + predict on a model loaded here
        settings = after["settings"]
        model = YOLO(base_pt)
        for row in after["images"]:
            assert boxes_match(row["base"], model.predict(row["path"], imgsz=settings["imgsz"], conf=settings["conf"], iou=settings["iou"], verbose=False)[0])
        swap(model, TaskVector.load(night_file), alpha)
        for row in after["images"]:
            assert boxes_match(row["merge"], model.predict(row["path"], imgsz=settings["imgsz"], conf=settings["conf"], iou=settings["iou"], verbose=False)[0])

        # save: the checkpoint is the shown merge (fp16), written into the run folder, loadable with YOLO()
        page.click("#save")
        page.wait_for_selector("#saved-path", timeout=120_000)
        saved = Path(page.locator("#saved-path").get_attribute("data-path"))
        assert saved.parent == out and saved.suffix == ".pt"
        loaded = YOLO(saved)
        shown = {k: v.half() for k, v in model.model.state_dict().items() if v.is_floating_point()}
        assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in shown.items())
        assert loaded.ckpt["taskvec"]["recipe"]["scale"] == alpha and saved.with_suffix(".recipe.yaml").exists() and "by eye" in saved.with_suffix(".md").read_text() and loaded.predict(after["images"][1]["path"], imgsz=settings["imgsz"], verbose=False)

        # another method (the general path: merge_states − base swapped in): its parameter shows, the merge follows
        assert not page.locator("#param-ties-density").is_visible()
        page.click("#method input")
        page.click('#method li[role=option][aria-label="ties"]')
        while True:
            version, ties = read_view(page, version)
            if ties["setting"]["method"] == "ties":
                break
        page.locator("#param-ties-density").wait_for(state="visible")  # its own event: it may come after the redraw
        assert ties["setting"]["params"]["density"] == 0.2  # the method's other parameters at their defaults
        merged = merge(base_pt, [night_file], "ties", weights=[alpha], scale={"backbone": 1, "neck": 1, "head": 1}, density=0.2)
        for row in ties["images"]:
            assert boxes_match(row["merge"], merged.predict(row["path"], imgsz=settings["imgsz"], conf=settings["conf"], iou=settings["iou"], verbose=False)[0])

        # score: the point is added to the sweep's plot (written in the run folder) with both references
        page.click("#score")
        page.wait_for_selector("#plot img", timeout=600_000)
        results = json.loads((out / "studio.json").read_text())
        assert len(results["rows"]) == 1 and results["rows"][0][name] == alpha
        assert set(results["references"]) == {"base", name} and (out / "studio.png").stat().st_size > 10_000
        assert f"{results['rows'][0]['objective']:.4g}" in page.locator("#score-table").inner_text()
        assert requests and all(u.startswith((url, f"ws://127.0.0.1:{port}/", "data:", "blob:")) for u in requests), sorted(set(requests))  # offline
        browser.close()
    assert snapshot(*watched) == inputs_before  # the studio never modifies its inputs
