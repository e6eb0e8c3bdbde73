"""notebooks/merge_then_validate.ipynb runs headless (nbclient) on CPU with the shared assets and small settings."""

from __future__ import annotations

import nbformat
import pytest
from conftest import REPO, weight

NOTEBOOK = REPO / "notebooks" / "merge_then_validate.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "/work" not in NOTEBOOK.read_text()  # inputs come from Ultralytics settings


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
    overrides = f'SCALES = [0, 0.5, 1]\nIMGSZ = 320\nOUT = {str(tmp_path / "nb")!r}'
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the α plot and the prediction, shown inline
    assert "best: scale=0.5" in text and "α = 0.5: fruit80 0.4" in text
    assert (tmp_path / "nb" / "merged.pt").exists() and (tmp_path / "nb" / "sweep.csv").exists()
    line = next(x for x in text.splitlines() if x.startswith("YOLO('merged.pt').val on fruit80-night"))
    val, swept = (float(v) for v in line.replace(")", "").split("mAP50-95 ")[1].split(" (sweep: "))
    assert val == pytest.approx(swept, abs=0.002)  # plain Ultralytics val of the reloaded file = the sweep's number
    assert "fruit_" in text  # the predicted image's name and its detections were printed
