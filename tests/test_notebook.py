"""notebooks/merge_then_validate.ipynb runs headless (nbclient) on CPU with the shared assets and small settings; it
uses the public API only, and its committed executed copy is the same notebook with outputs."""

from __future__ import annotations

import ast
import re

import nbformat
import pytest
from conftest import REPO, weight

NOTEBOOK = REPO / "notebooks" / "merge_then_validate.ipynb"
EXECUTED = REPO / "notebooks" / "merge_then_validate.executed.ipynb"


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_committed_without_outputs_and_uses_the_public_api():
    import yolo_taskvec

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = _code(nb)
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "/work" not in NOTEBOOK.read_text()  # inputs come from Ultralytics settings
    source = "\n".join(re.sub(r"^%.*$", "", c.source, flags=re.M) for c in code)
    imported = [node for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in imported:
        if isinstance(node, ast.ImportFrom) and node.module == "yolo_taskvec":
            assert {a.name for a in node.names} <= set(yolo_taskvec.__all__), "only names yolo_taskvec exports"
        else:
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n and n.startswith("yolo_taskvec.") for n in names), f"internal module imported: {names}"


def test_executed_copy_is_the_same_notebook_with_outputs():
    clean, executed = nbformat.read(NOTEBOOK, as_version=4), nbformat.read(EXECUTED, as_version=4)
    nbformat.validate(executed)
    assert [c.source for c in _code(executed)] == [c.source for c in _code(clean)]  # never drifts from the clean one
    assert [c.source for c in executed.cells if c.cell_type == "markdown"] == [c.source for c in clean.cells if c.cell_type == "markdown"]
    assert all(c.execution_count for c in _code(executed))
    outputs = [o for c in _code(executed) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2 and all(len(i) < 500_000 for i in images)  # the sweep's figure and the predictions, small
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "chosen on the selection split: α = " in text and "on val:" in text


@pytest.fixture()
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernelspec for this interpreter in a private folder, found by nbclient through JUPYTER_PATH."""
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter"
    install(kernel_name="yolo-taskvec-test", prefix=str(prefix), display_name="yolo-taskvec test")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    return "yolo-taskvec-test"


def test_notebook_executes_headless(tmp_path, kernel_name):
    from nbclient import NotebookClient

    weight("yolo26n-base80.pt"), weight("yolo26n-fruit-night.pt")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    overrides = f'SCALES = [0, 0.5, 1]\nSELECT = "train:0.1"\nIMGSZ = 320\nOUT = {str(tmp_path / "nb")!r}'
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the sweep's own figure and the three predictions, shown inline
    assert "chosen on a seeded 10% of each dataset's train images" in text and "fruit80-night.select/map50_95" in text  # chosen off val
    best = re.search(r"^chosen on [^\n]*: scale=([\d.]+) -> selection", text, flags=re.M).group(1)
    assert f"chosen on the selection split: α = {best}\n" in text  # the α used is the one the selection split chose
    assert re.search(rf"^merged \(α = {best}\)\s+fruit80-night\s+0\.\d+", text, flags=re.M)  # reported on val
    assert (tmp_path / "nb" / "merged.pt").exists() and (tmp_path / "nb" / "sweep.png").exists()
    line = next(x for x in text.splitlines() if x.startswith("YOLO('merged.pt').val on fruit80-night"))
    val, reported = (float(v) for v in line.replace(")", "").split("mAP50-95 ")[1].split(" (report above: "))
    assert val == pytest.approx(reported, abs=0.002)  # plain Ultralytics val of the reloaded file = the reported number
    assert re.search(r"^merged, α = [\d.]+\s+\S", text, flags=re.M)  # the merged model's detections were printed
