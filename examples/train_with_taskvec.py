"""Fine-tune a YOLO detector and get its task vector and WiSE-FT curve in the run folder, with one added line.

    python examples/train_with_taskvec.py base=yolo26n-base80.pt data=fruit80-night.yaml \\
        sweep=fruit80.yaml,fruit80-night.yaml scales=0,0.25,0.5,0.75,1 epochs=30 imgsz=320

Any other key=value goes to ``model.train`` as in ``yolo train``. Afterwards the run folder holds
``weights/best.pt``, ``weights/taskvec.safetensors`` (τ = best − base), ``sweep.csv`` and ``sweep.png``;
``yolo-taskvec apply base=... vectors=.../taskvec.safetensors scale=<best α> out=merged.pt`` builds the model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ultralytics import YOLO
from ultralytics.cfg import merge_equals_args, smart_value

from yolo_taskvec import resolve_yaml
from yolo_taskvec.callbacks import add_taskvec_callbacks


def main(argv: list[str] | None = None) -> Any:
    """Train with the integration; returns the trainer's ``taskvec`` outputs (vector path, sweep result)."""
    raw = dict(pair.partition("=")[::2] for pair in merge_equals_args(list(sys.argv[1:] if argv is None else argv)))
    base = raw.pop("base", "yolo26n-base80.pt")
    sweep = raw.pop("sweep", None)
    scales = raw.pop("scales", "0,0.25,0.5,0.75,1")
    args = {key: smart_value(value) for key, value in raw.items()}

    model = YOLO(base)
    add_taskvec_callbacks(model, sweep_data=sweep.split(",") if sweep else None, scales=scales)  # the one line
    args["data"] = str(resolve_yaml(Path(str(args.get("data", "fruit80-night.yaml")))))  # bare names: datasets_dir
    model.train(**{"epochs": 30, "imgsz": 320, **args})

    outputs = model.trainer.taskvec
    print(f"task vector: {outputs.vector}")
    if outputs.sweep is not None:
        best = outputs.sweep.best_point["scale"]  # the table and the plot are in the log and the run folder
        print(f"merge it: yolo-taskvec apply base={base} vectors={outputs.vector} scale={best:g} out=merged.pt")
    return outputs


if __name__ == "__main__":
    main()
