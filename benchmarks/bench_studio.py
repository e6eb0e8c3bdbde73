"""Redraw latency of the merge studio: slider move → new merged predictions shown, in a real browser.

Two phases, one run:

* **engine** (in this process, no server): ``Studio.view`` for a sequence of slider values on one image per dataset,
  per merge method (task arithmetic takes the direct hot-swap; other methods swap ``merge_states − base``), split
  into merge, swap and predict; side by side with what a studio without hot-swapping would do for the same recipe
  (``api.merge`` → a new YOLO → predict on the same images), medians over ``moves`` values;
* **browser**: ``yolo-taskvec studio`` started as a user starts it (a subprocess, on a free loopback port), driven
  by headless Chromium (Debian's ``chromium`` through Playwright): ``moves`` mouse clicks on the weight slider, each
  timed from the click to (a) the page's detections JSON updated and (b) every merge panel's new image loaded. Then
  the points ``scores`` are scored with the page's score button and a screenshot of the page is kept.

    python benchmarks/bench_studio.py                  # CPU; writes benchmarks/results/studio.{md,json,png}

The PNG is the screenshot of the page (not a chart). Timings on a shared CPU are noisy: the load average is stored.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import REPO, RESULTS, environment, environment_markdown, load_average, parse_args, write_outputs

DEFAULTS = {
    "base": "yolo26n-base80.pt",
    "tuned": "yolo26n-fruit-night.pt",
    "data": "fruit80.yaml,fruit80-night.yaml",
    "moves": "12",
    "values": "0.2,0.9,0.4,1.1,0.0,0.7",  # slider positions cycled through (large steps, so the drawings change)
    "methods": "task_arithmetic,ties,dare",
    "scores": "0,0.3,1,0.6",  # points scored with the page's button before the screenshot (the last stays shown)
    "device": "cpu",
    "chromium": "/usr/bin/chromium",
    "out": str(RESULTS),
}
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
RANGE = (-1.0, 2.0)  # the weight slider's range (yolo_taskvec.studio.app.WEIGHT_RANGE)


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered), 1), "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1), "max_ms": round(ordered[-1], 1), "n": len(ordered)}


# ----------------------------------------------------------------------------------------------- engine
def engine_phase(args: dict, vector_path: Path) -> dict:
    from yolo_taskvec.studio import Studio

    values = [float(v) for v in args["values"].split(",")]
    moves = int(args["moves"])
    studio = Studio(args["base"], [vector_path], data=args["data"].split(","), device=args["device"], out=tempfile.mkdtemp(prefix="bench-studio-run-"))
    images = studio.default_images()
    studio.view(studio.initial, images)  # predictor and base/fine-tune caches warm, as in the served studio
    rows = []
    for method in args["methods"].split(","):
        parts: dict[str, list[float]] = {"total_ms": [], "merge_ms": [], "swap_ms": [], "predict_ms": []}
        reload_ms = []
        for i in range(moves + 1):
            setting = studio.setting([values[i % len(values)]], method=method)
            view = studio.view(setting, images)
            t0 = time.perf_counter()
            merged = studio.merged_model(setting)  # what a studio without hot-swapping does: merge, new model, predict
            for _, path in images:
                merged.predict(path, imgsz=studio.imgsz, conf=studio.conf, iou=studio.iou, device=args["device"], verbose=False)
            if i == 0:
                continue  # warm-up of both paths
            reload_ms.append(1000 * (time.perf_counter() - t0))
            for key, series in parts.items():
                series.append(view.timings[key])
        row = {"method": method, **{k: stats(v) for k, v in parts.items()}, "reload": stats(reload_ms)}
        row["ratio_reload_over_swap"] = round(row["reload"]["median_ms"] / row["total_ms"]["median_ms"], 2)
        rows.append(row)
        print(f"engine {method}: redraw {row['total_ms']['median_ms']:.0f} ms (merge {row['merge_ms']['median_ms']:.0f}, swap {row['swap_ms']['median_ms']:.0f}, "
              f"predict {row['predict_ms']['median_ms']:.0f}) vs merge+new model+predict {row['reload']['median_ms']:.0f} ms (x{row['ratio_reload_over_swap']})", flush=True)
    return {"images": [k for k, _ in images], "imgsz": studio.imgsz, "rows": rows}


# ----------------------------------------------------------------------------------------------- browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_studio(args: dict, vector_path: Path, out: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "yolo_taskvec.cli", "studio", f"base={args['base']}", f"vectors={vector_path}", "scale=0.5", f"data={args['data']}", f"out={out}", f"port={port}", f"device={args['device']}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115 - the child owns it
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            sys.exit(f"the studio exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.3)


SHOWN = """(before) => {
  const imgs = [...document.querySelectorAll('[id$="-merge"] img')];
  return imgs.length > 0 && imgs.every((im, i) => im.complete && im.naturalWidth > 0 && im.currentSrc !== before[i]);
}"""


def merge_sources(page) -> list[str]:
    return page.eval_on_selector_all('[id$="-merge"] img', "els => els.map(e => e.currentSrc)")


def current(page) -> tuple[int, dict]:
    state = page.locator("#studio-state")
    return int(state.get_attribute("data-version") or 0), json.loads(state.get_attribute("data-view") or "{}")


def click_value(page, value: float) -> None:
    box = page.locator("#weight-0 input[type=range]").bounding_box()
    frac = (value - RANGE[0]) / (RANGE[1] - RANGE[0])
    page.mouse.click(box["x"] + box["width"] * frac, box["y"] + box["height"] / 2)


def set_value(page, value: float) -> None:
    """Type a value into the slider's number box (exact values for the scored points)."""
    box = page.locator("#weight-0 input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def wait_for_recipe(page, version: int, name: str, value: float, timeout_ms: int = 120_000) -> tuple[int, dict]:
    while True:
        page.wait_for_function(f"() => Number(document.querySelector('#studio-state')?.dataset.version || 0) > {version}", timeout=timeout_ms)
        version, view = current(page)
        if abs(view["setting"]["weights"][name] - value) < 1e-9:
            return version, view


def browser_phase(args: dict, vector_path: Path, screenshot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    values = [float(v) for v in args["values"].split(",")]
    moves = int(args["moves"])
    with tempfile.TemporaryDirectory(prefix="bench-studio-") as tmp:
        out = Path(tmp) / "run"
        proc, url, startup_s = start_studio(args, vector_path, out, Path(tmp) / "studio.log")
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args["chromium"], args=FLAGS)
                page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
                t0 = time.perf_counter()
                page.goto(url)
                page.wait_for_function("() => Number(document.querySelector('#studio-state')?.dataset.version || 0) > 0", timeout=120_000)
                first_view_s = time.perf_counter() - t0
                version, view = current(page)
                name = next(iter(view["setting"]["weights"]))
                to_state, to_images, server = [], [], []
                for i in range(moves + 1):
                    before, previous = merge_sources(page), view
                    t = time.perf_counter()
                    click_value(page, values[i % len(values)])
                    page.wait_for_function(f"() => Number(document.querySelector('#studio-state')?.dataset.version || 0) > {version}", timeout=120_000)
                    t_state = time.perf_counter()
                    target = float(page.locator("#weight-0 input[type=number]").input_value())
                    version, view = current(page)
                    if abs(view["setting"]["weights"][name] - target) > 1e-9:  # an intermediate value came first
                        version, view = wait_for_recipe(page, version, name, target)
                    if all(a["merge"] != b["merge"] for a, b in zip(view["images"], previous["images"])):
                        page.wait_for_function(SHOWN, arg=before, timeout=120_000)  # every drawing changed: wait for the new images
                    t_images = time.perf_counter()
                    if i == 0:
                        continue
                    to_state.append(1000 * (t_state - t))
                    to_images.append(1000 * (t_images - t))
                    server.append(view["timings_ms"]["total_ms"])
                print(f"browser: click -> detections {statistics.median(to_state):.0f} ms, -> images shown {statistics.median(to_images):.0f} ms (median of {moves}); server part {statistics.median(server):.0f} ms", flush=True)
                score_s = []
                for value in (float(v) for v in args["scores"].split(",")):
                    set_value(page, value)
                    version, view = wait_for_recipe(page, version, name, value)
                    t = time.perf_counter()
                    page.click("#score")
                    page.wait_for_function(f"() => (document.querySelector('#status')?.innerText || '').includes('{name} {value:g}: objective')", timeout=1_200_000)
                    score_s.append(round(time.perf_counter() - t, 1))
                page.wait_for_selector("#plot img", timeout=60_000)
                page.wait_for_function("() => [...document.querySelectorAll('img')].every(im => im.complete)")
                page.screenshot(path=str(screenshot), full_page=True)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "startup_s": round(startup_s, 1),
        "first_view_s": round(first_view_s, 2),
        "click_to_detections": stats(to_state),
        "click_to_images_shown": stats(to_images),
        "server_redraw": stats(server),
        "score_s": score_s,
    }


# ----------------------------------------------------------------------------------------------- run and report
def run(args: dict) -> tuple[dict, Path]:
    from yolo_taskvec import TaskVector

    if not Path(args["chromium"]).exists():
        sys.exit(f"{args['chromium']} not found: apt-get install -y chromium (or chromium=path)")
    env = environment(args["device"])
    with tempfile.TemporaryDirectory(prefix="bench-studio-vec-") as tmp:
        vector_path = Path(tmp) / "fruit-night.safetensors"
        TaskVector.from_models(args["base"], args["tuned"], name="fruit-night").save(vector_path)
        engine = engine_phase(args, vector_path)
        screenshot = Path(tmp) / "studio.png"
        browser = browser_phase(args, vector_path, screenshot)
        kept = Path(tempfile.mkdtemp(prefix="bench-studio-shot-")) / "studio.png"
        shutil.copy(screenshot, kept)
    return {"environment": env, "args": args, "engine": engine, "browser": browser, "load_average_end": load_average()}, kept


def markdown(runs: dict) -> str:
    lines = ["# Merge studio: redraw latency (slider move → new merged predictions shown)", "", "Generated by `python benchmarks/bench_studio.py` (see its docstring). `studio.png` is a screenshot of the page taken by that run.", ""]
    for kind, res in runs.items():
        e, b = res["engine"], res["browser"]
        lines += [f"## {kind}", "", *environment_markdown(res["environment"], res.get("load_average_end"))[:-1], f"- images: {', '.join(e['images'])} at imgsz {e['imgsz']}; one vector (τ fruit-night); medians of {res['args']['moves']} moves", ""]
        lines += ["### In the browser (yolo-taskvec studio in a subprocess, headless Chromium)", "", "| measure | median | p90 | max |", "|---|---|---|---|"]
        for label, key in (("click → detections in the page", "click_to_detections"), ("click → every merge image shown", "click_to_images_shown"), ("server part (merge + swap + predict)", "server_redraw")):
            s = b[key]
            lines.append(f"| {label} | {s['median_ms']:.0f} ms | {s['p90_ms']:.0f} ms | {s['max_ms']:.0f} ms |")
        lines += ["", f"Start-up (process start → page served): {b['startup_s']} s; first view in the browser: {b['first_view_s']} s; score button: {', '.join(f'{s} s' for s in b['score_s'])} (the first also scores the base and the fine-tune as references).", ""]
        lines += ["### Server side per method (hot-swap on the loaded model vs a new merged model per move)", "", "| method | redraw | merge | swap | predict (all images) | merge() + new YOLO + predict | ratio |", "|---|---|---|---|---|---|---|"]
        for r in e["rows"]:
            lines.append(f"| {r['method']} | {r['total_ms']['median_ms']:.0f} ms | {r['merge_ms']['median_ms']:.0f} ms | {r['swap_ms']['median_ms']:.0f} ms | {r['predict_ms']['median_ms']:.0f} ms | {r['reload']['median_ms']:.0f} ms | **{r['ratio_reload_over_swap']}×** |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse_args(argv, DEFAULTS)
    result, screenshot = run(args)
    kind = "cpu" if str(args["device"]) == "cpu" else "cuda"
    write_outputs("studio", result, args["out"], kind=kind, markdown=markdown, plot=lambda runs, path: shutil.copy(screenshot, path))


if __name__ == "__main__":
    main(sys.argv[1:])
