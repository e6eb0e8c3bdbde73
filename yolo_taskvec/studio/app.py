"""The studio's web page (Gradio) over ``session.Studio``, served on 127.0.0.1 by default.

Why Gradio (not Streamlit): a Gradio event runs one function and updates only its outputs, so moving a slider
re-draws the merge column alone (the cached base and fine-tune panels are not sent again); its queue serialises the
events that touch the one live model (``concurrency_id``) and drops stale slider positions (``trigger_mode=
"always_last"``); and the page is built in-process over a ready ``Studio`` object, so the CLI checks every input and
loads the models before the server starts, and a test can start it on a free port in a thread. Streamlit re-runs the
whole script on every interaction and owns the process's main loop (``streamlit run``), so the models would be
loaded inside its runtime and every panel re-sent on each move.

The page works offline: analytics are off (``analytics_enabled=False``, ``GRADIO_ANALYTICS_ENABLED=False``), no
share link, and Gradio's front end and fonts are served from the package. Detections are also written into the page
as JSON (``#studio-state[data-view]``, with a ``data-version`` counter per redraw), so a browser test compares
numbers, not pixels.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TaskVecError
from ..methods import get_method
from .session import LIVE_BN, Setting, Studio, StudioError

HOST = "127.0.0.1"
WEIGHT_RANGE = (-1.0, 2.0)
PART_RANGE = (0.0, 2.0)
CSS = """
.panel img {object-fit: contain;}
#studio-state {font-size: 0.85em; color: var(--body-text-color-subdued);}
#score-table table {font-size: 0.85em;}
footer {display: none !important;}
"""


def require_gradio() -> Any:
    """Import Gradio with analytics off, or one sentence on how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio as gr
    except ImportError as e:
        raise StudioError('the studio needs Gradio, which is not installed; install it with pip install "yolo-taskvec[studio]".') from e
    return gr


def check_address(host: str, port: int | None) -> None:
    """Refuse an address this machine cannot bind, or a port that is taken, before anything is loaded."""
    if port is not None and not 1 <= int(port) <= 65535:
        raise StudioError(f"port must lie in 1..65535, got {port}.")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will (a port in TIME_WAIT is free)
        try:
            s.bind((host, int(port or 0)))
        except OSError as e:
            where = f"{host}:{port}" if port else host
            hint = "choose another port= or leave it out for a free one" if port else "give host=127.0.0.1 (this machine) or an address of this machine"
            raise StudioError(f"cannot serve on {where} ({e.strerror or e}); {hint}.") from e


# ----------------------------------------------------------------------------------------------- page
class Page:
    """The Gradio Blocks of one studio, and the handlers that keep it in step with the live model."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self.version = itertools.count(1)
        self.param_inputs: list[tuple[str, str, Any]] = []  # (method, param, component)

    # ------------------------------------------------------------------ building
    def build(self) -> Any:
        gr = require_gradio()
        s = self.studio
        init = s.initial
        with gr.Blocks(title="yolo-taskvec studio", analytics_enabled=False, delete_cache=(600, 1800)) as blocks:  # drawn panels: kept 30 min
            gr.Markdown(f"## yolo-taskvec studio\n{s.summary()} · hot-swapped on one loaded model")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=300):
                    self.weights = [gr.Slider(*WEIGHT_RANGE, value=w, step=0.05, label=f"weight · {n}", elem_id=f"weight-{i}") for i, (n, w) in enumerate(init.weights)]
                    with gr.Accordion("per-part scales", open=False):
                        self.parts = [gr.Slider(*PART_RANGE, value=v, step=0.05, label=g, elem_id=f"part-{g}") for g, v in init.parts]
                    self.method = gr.Dropdown(s.methods(), value=init.method, label="method", elem_id="method")
                    for name in s.methods():
                        for p in get_method(name).params:
                            self.param_inputs.append((name, p.name, self._param(gr, name, p, dict(init.params) if name == init.method else {}, visible=name == init.method)))
                    self.seed = gr.Number(init.seed, precision=0, label="seed", visible=get_method(init.method).random, elem_id="seed")
                    self.orthogonalize = gr.Checkbox(False, label="orthogonalize the vectors first", visible=len(s.names) > 1, elem_id="orthogonalize")
                    self.bn = gr.Radio(list(LIVE_BN), value=init.bn, label="BatchNorm statistics", info="recalibrate re-estimates them on images: use merge or sweep with bn=recalibrate", elem_id="bn")
                    self.conf = gr.Slider(0.05, 0.95, value=s.conf, step=0.05, label="confidence threshold (display)", elem_id="conf")
                    with gr.Row():
                        self.score_button = gr.Button("score", variant="primary", elem_id="score")
                        self.save_button = gr.Button("save", elem_id="save")
                    self.status = gr.Markdown("", elem_id="status")
                    self.saved = gr.HTML("", elem_id="studio-saved")
                with gr.Column(scale=3):
                    self.choices, self.cells = [], []
                    for ds, files in s.images.items():
                        self.choices.append(gr.Dropdown([f.name for f in files], value=files[0].name, label=f"{ds} · val image", elem_id=f"image-{ds}"))
                        self.cells.append(self._cell_row(gr, ds))
                    with gr.Accordion("your own image", open=False):
                        self.upload = gr.Image(type="filepath", sources=["upload"], label="upload an image", height=200, elem_id="upload")
                        self.cells.append(self._cell_row(gr, "upload"))
                    self.state = gr.HTML(self._state_html(None), elem_id="studio-state-box")
                    gr.Markdown("**scores** · *score* validates the current merge on the datasets' val splits (a scale picked by these numbers is picked on the data they report: the saved model card says so); the plot is the sweep's, with the base and each fine-tune as references")
                    self.plot = gr.Image(show_label=False, interactive=False, format="png", elem_id="plot", buttons=["fullscreen"])
                    self.table = gr.Markdown("", elem_id="score-table")
            self._wire(gr, blocks)
        return blocks

    def _param(self, gr: Any, method: str, p: Any, given: dict, visible: bool) -> Any:
        value = given.get(p.name, p.default)
        label = f"{p.name} ({method}): {p.doc}"
        elem = f"param-{method}-{p.name}"
        if isinstance(p.default, float) and p.low is not None and p.high is not None:
            return gr.Slider(p.low, p.high, value=value, step=(p.high - p.low) / 100, label=label, visible=visible, elem_id=elem)
        return gr.Number(value, label=label, precision=0 if isinstance(p.default, int) else None, minimum=p.low, maximum=p.high, visible=visible, elem_id=elem)

    def _cell_row(self, gr: Any, row: str) -> list[Any]:
        s = self.studio
        labels = ["base", *(f"fine-tune · {n}" for n in s.names), "merge"]
        ids = ["base", *(f"ft-{i}" for i in range(len(s.names))), "merge"]
        with gr.Row(equal_height=True):
            return [gr.Image(label=label, interactive=False, height=260, format="jpeg", elem_id=f"cell-{row}-{i}", elem_classes=["panel"], buttons=["fullscreen"]) for label, i in zip(labels, ids)]

    @property
    def setting_inputs(self) -> list[Any]:
        return [*self.weights, *self.parts, self.method, *(c for _, _, c in self.param_inputs), self.seed, self.orthogonalize, self.bn]

    @property
    def image_inputs(self) -> list[Any]:
        return [self.conf, *self.choices, self.upload]

    def _wire(self, gr: Any, blocks: Any) -> None:
        every_cell = [c for row in self.cells for c in row]
        merge_cells = [row[-1] for row in self.cells]
        inputs = [*self.setting_inputs, *self.image_inputs]
        common = {"concurrency_id": "model", "concurrency_limit": 1, "trigger_mode": "always_last", "show_progress": "hidden"}
        for comp in self.setting_inputs:
            comp.change(self.on_setting, inputs, [*merge_cells, self.state, self.status], **common)
        for comp in self.image_inputs:
            comp.change(self.on_images, inputs, [*every_cell, self.state, self.status], **common)
        self.method.change(self.on_method, [self.method], [c for _, _, c in self.param_inputs] + [self.seed], show_progress="hidden")
        self.score_button.click(self.on_score, inputs, [self.plot, self.table, self.status], concurrency_id="model", concurrency_limit=1, show_progress="minimal")
        self.save_button.click(self.on_save, inputs, [self.saved, self.status], concurrency_id="model", concurrency_limit=1, show_progress="minimal")
        blocks.load(self.on_images, inputs, [*every_cell, self.state, self.status], concurrency_id="model", concurrency_limit=1, show_progress="hidden")

    # ------------------------------------------------------------------ handlers
    def _read(self, values: Sequence[Any]) -> tuple[Setting, float, list[tuple[str, str] | None]]:
        """Setting, threshold and one ``(key, path)`` slot per image row (None: nothing chosen), from the inputs'
        values in ``setting_inputs + image_inputs`` order."""
        s = self.studio
        values = list(values)

        def take(n: int) -> list[Any]:
            return [values.pop(0) for _ in range(n)]

        weights, parts = take(len(self.weights)), take(len(self.parts))
        (method,) = take(1)
        params = {p: v for (m, p, _), v in zip(self.param_inputs, take(len(self.param_inputs))) if m == method}
        seed, orthogonalize, bn, conf = take(4)
        names, upload = take(len(self.choices)), values.pop(0)
        setting = s.setting(weights, parts, method, params, bn, int(seed or 0), bool(orthogonalize))
        slots: list[tuple[str, str] | None] = [(f"{ds}/{name}", s.image_path(ds, name)) if name else None for ds, name in zip(s.images, names)]
        slots.append((f"upload/{Path(upload).name}", str(upload)) if upload else None)
        return setting, float(conf), slots

    def _render(self, values: Sequence[Any], full: bool) -> list[Any]:
        gr = require_gradio()
        try:
            setting, conf, slots = self._read(values)
            view = self.studio.view(setting, [slot for slot in slots if slot is not None], conf)
        except TaskVecError as e:
            n = sum(len(r) for r in self.cells) if full else len(self.cells)
            return [gr.skip()] * (n + 1) + [f"⚠️ {e}"]
        shown = iter(view.rows)
        out = []
        for slot in slots:
            row = next(shown) if slot is not None else None
            panels = [row.base, *(row.finetunes[n] for n in self.studio.names), row.merge] if row else [None] * (len(self.studio.names) + 2)
            out += [p.image if p is not None else None for p in (panels if full else panels[-1:])]
        t = view.timings
        status = f"{setting.describe()} · redraw {t['total_ms']:.0f} ms (merge {t['merge_ms']:.0f}, swap {t['swap_ms']:.0f}, predict {t['predict_ms']:.0f})"
        return [*out, self._state_html(view), status]

    def on_setting(self, *values: Any) -> list[Any]:
        return self._render(values, full=False)

    def on_images(self, *values: Any) -> list[Any]:
        return self._render(values, full=True)

    def on_method(self, method: str) -> list[Any]:
        gr = require_gradio()
        random = method in self.studio.methods() and get_method(method).random
        return [gr.update(visible=m == method) for m, _, _ in self.param_inputs] + [gr.update(visible=random)]

    def on_score(self, *values: Any) -> list[Any]:
        gr = require_gradio()
        try:
            setting, _, _ = self._read(values)
            row = self.studio.score(setting)
        except TaskVecError as e:
            return [gr.skip(), gr.skip(), f"⚠️ {e}"]
        from PIL import Image

        path = self.studio.out / "studio.png"
        status = f"scored {setting.describe()}: objective {row['objective']:.4f} ({row['seconds']:.1f} s) · {path}"
        with Image.open(path) as plot:  # the pixels, not the path: the run folder need not be one Gradio may serve
            return [plot.convert("RGB"), self._table_markdown(), status]

    def on_save(self, *values: Any) -> list[Any]:
        gr = require_gradio()
        try:
            setting, _, _ = self._read(values)
            path = self.studio.save(setting)
        except TaskVecError as e:
            return [gr.skip(), f"⚠️ {e}"]
        text = html.escape(str(path))
        return [f'<div id="saved-path" data-path="{text}">saved <code>{text}</code></div>', f"saved {path} ({setting.describe()}), with {path.stem}.recipe.yaml and {path.stem}.md"]

    # ------------------------------------------------------------------ text
    def _state_html(self, view: Any) -> str:
        """A small visible line, and the whole view as JSON in a data attribute (for scripts and browser tests)."""
        if view is None:
            return '<div id="studio-state" data-version="0"></div>'
        doc = view.as_dict()
        counts = " · ".join(f"{r['image']}: base {len(r['base'])}, merge {len(r['merge'])} detections" for r in doc["images"])
        payload = html.escape(json.dumps(doc, separators=(",", ":")), quote=True)
        return f'<div id="studio-state" data-version="{next(self.version)}" data-view="{payload}">{html.escape(counts)}</div>'

    def _table_markdown(self) -> str:
        from ..plots import metric_label

        rows = self.studio.table()
        if not rows:
            return ""
        cols = list(rows[0])
        heads = [c.replace("/", " ").replace(c.rsplit("/", 1)[-1], metric_label(c.rsplit("/", 1)[-1])) if "/" in c else c for c in cols]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |" for r in rows]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- serving
def serve(studio: Studio, *, host: str = HOST, port: int | None = None, block: bool = True, quiet: bool = False) -> tuple[Any, str]:
    """Serve a ready studio; returns ``(blocks, url)``. ``block=False`` returns at once (the server runs in a thread;
    ``blocks.close()`` stops it)."""
    require_gradio()
    studio.view(studio.initial, studio.default_images())  # warm the predictor and the caches before the first visit
    blocks = Page(studio).build()
    blocks.queue(default_concurrency_limit=1)
    _, url, _ = blocks.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True, quiet=True, footer_links=[], css=CSS, ssr_mode=False, mcp_server=False, enable_monitoring=False)
    url = f"http://{host}:{blocks.server_port}/" if url is None else url
    if not quiet:
        print(f"yolo-taskvec studio: {url}  ({studio.summary()}; outputs in {studio.out}; Ctrl+C stops)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: serving on {host}: anyone who can reach this machine can use the studio (it has no login).", file=sys.stderr, flush=True)
    if block:
        try:
            blocks.block_thread()
        finally:
            blocks.close()
    return blocks, url


def launch(recipe: Any, inputs: Any = None, *, data: Sequence[str], host: str = HOST, port: int | None = None, block: bool = True, quiet: bool = False, **studio_kwargs: Any) -> tuple[Any, str]:
    """Check everything (Gradio installed, address free, recipe and inputs), load, then serve (see ``serve``).

    ``recipe``: a ``Recipe`` or a base (then ``inputs`` and recipe fields, as ``Studio`` takes them)."""
    require_gradio()
    check_address(host, port)
    studio = Studio(recipe, inputs, data=data, **studio_kwargs)
    return serve(studio, host=host, port=port, block=block, quiet=quiet)
