"""Execute a clean notebook headless and write a copy with its outputs (what the committed ``*.executed.ipynb`` is).

    python notebooks/execute.py                                     # merge_then_validate.ipynb -> .executed.ipynb
    python notebooks/execute.py SRC.ipynb DST.ipynb ['SCALES = [0, 1]']   # optional parameter overrides

Runs with this interpreter (a private kernelspec, as the test does) and Ultralytics' current settings; the clean
notebook is never modified. The copy keeps the clean notebook's metadata, so the two differ only in outputs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def execute(src: Path, dst: Path, overrides: str = "", timeout: int = 3600) -> Path:
    import nbformat
    from ipykernel.kernelspec import install
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as prefix, tempfile.TemporaryDirectory() as cwd:
        install(kernel_name="notebook-execute", prefix=prefix, display_name="notebook execute")
        os.environ["JUPYTER_PATH"] = str(Path(prefix, "share", "jupyter"))
        nb = nbformat.read(src, as_version=4)
        metadata = dict(nb.metadata)
        if overrides:
            index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
            nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]}))
        NotebookClient(nb, kernel_name="notebook-execute", timeout=timeout, resources={"metadata": {"path": cwd}}).execute()
        nb.metadata = {**metadata, "language_info": nb.metadata.get("language_info", {})}
        tmp = dst.with_name(f".{dst.name}.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, dst)
    return dst


if __name__ == "__main__":
    args = sys.argv[1:]
    source = Path(args[0]) if args else HERE / "merge_then_validate.ipynb"
    target = Path(args[1]) if len(args) > 1 else source.with_name(source.stem + ".executed.ipynb")
    print(f"wrote {execute(source, target, args[2] if len(args) > 2 else '')}")
