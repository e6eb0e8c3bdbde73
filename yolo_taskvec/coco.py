"""COCO instances json for any YOLO-layout dataset, and pycocotools scoring (AP, AP50, AP75, APs/m/l).

* ``export_coco(data, split)`` turns a dataset yaml's labels into a COCO instances dict (boxes, and polygons when
  the labels are segments; ``area`` is the polygon's mask area or the box area, ``iscrowd`` 0), written
  atomically with ``out=``. Classes keep the COCO ids (1..90) when the names are COCO's 80, else ``index + 1``.
* ``find_coco_json(info, split)``: the json a dataset yaml names with ``coco_json:`` (a path, or a mapping per
  split, relative to the dataset ``path``), else ``<path>/annotations/instances_<split>[2017].json`` if present.
* ``GroundTruth`` wraps a pycocotools ``COCO`` with the lookups scoring needs: image ids by file name and category
  ids by class name (falling back to COCO's 80→91 ids when the dataset uses COCO's names).
* ``coco_scores(gt, detections, iou_type)`` runs ``COCOeval`` quietly and returns ``coco_AP``... (``coco_mask_AP``...
  for masks); area ranges without ground truth give NaN.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .data import dataset_name, image_files, load_data
from .errors import DataError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------------------------- labels
@dataclass
class LabelRecord:
    """One image's YOLO labels: normalized ``xywh`` boxes and, for segment labels, normalized polygons."""

    file: Path
    height: int
    width: int
    cls: np.ndarray  # (n,)
    boxes: np.ndarray  # (n, 4) normalized xywh
    segments: list[np.ndarray] = field(default_factory=list)  # n arrays (k, 2), normalized xy; empty for box labels


def _image_size(file: Path) -> tuple[int, int]:
    """(height, width) as Ultralytics reads it (EXIF orientation applied), from the header only."""
    from PIL import Image
    from ultralytics.data.utils import exif_size

    try:
        with Image.open(file) as im:
            w, h = exif_size(im)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable images
        raise DataError(f"image {file} cannot be read ({type(e).__name__}).") from e
    return int(h), int(w)


def read_label_file(label_file: Path, nc: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(cls, xywhn boxes, polygons)`` of one YOLO label file, parsed and de-duplicated as Ultralytics does."""
    from ultralytics.utils.ops import segments2boxes

    if not label_file.is_file():
        return np.zeros(0, np.float32), np.zeros((0, 4), np.float32), []
    rows = [line.split() for line in label_file.read_text(encoding="utf-8-sig").strip().splitlines() if line.strip()]
    segments: list[np.ndarray] = []
    try:
        if any(len(r) > 6 for r in rows):
            if any(len(r) == 5 for r in rows):
                raise ValueError("labels mix segment and box rows")
            segments = [np.array(r[1:], dtype=np.float32).reshape(-1, 2) for r in rows]
            lb = np.concatenate((np.array([r[0] for r in rows], dtype=np.float32)[:, None], segments2boxes(segments)), 1)
        else:
            lb = np.array(rows, dtype=np.float32).reshape(-1, 5)
    except ValueError as e:
        raise DataError(f"label file {label_file} is malformed ({str(e).splitlines()[0]}).") from e
    if len(lb) and (lb[:, 0] % 1 != 0).any() or len(lb) and lb[:, 0].max() >= nc:
        raise DataError(f"label file {label_file} has class ids outside 0..{nc - 1}.")
    _, keep = np.unique(lb, axis=0, return_index=True)
    if len(keep) < len(lb) and segments:  # distinct polygons may share a class and box
        _, keep = np.unique(np.array([c.tobytes() + s.tobytes() for c, s in zip(lb[:, 0], segments)], dtype=object), return_index=True)
    if len(keep) < len(lb):
        lb, segments = lb[keep], [segments[i] for i in keep] if segments else []
    return lb[:, 0], lb[:, 1:5], segments


def read_labels(data: str | os.PathLike, split: str = "val") -> tuple[list[LabelRecord], dict[int, str]]:
    """Every image of a split with its labels, and the dataset's class names."""
    from ultralytics.data.utils import img2label_paths

    info = load_data(data, split=split)
    names = {int(k): str(v) for k, v in info["names"].items()}
    files = image_files(data, split)
    records = []
    for file, label in zip(files, img2label_paths([str(f) for f in files])):
        cls, boxes, segments = read_label_file(Path(label), len(names))
        h, w = _image_size(file)
        records.append(LabelRecord(file, h, w, cls, boxes, segments))
    return records, names


# ----------------------------------------------------------------------------------------------- export
def coco80_names() -> list[str]:
    """The 80 COCO class names in Ultralytics' order."""
    from ultralytics.utils import ROOT, YAML

    return [str(v) for v in YAML.load(ROOT / "cfg/datasets/coco.yaml")["names"].values()]


def category_ids(names: Mapping[int, str]) -> dict[int, int]:
    """COCO category id of each class: COCO's own ids (1..90) for COCO's 80 names, else ``index + 1``."""
    from ultralytics.data.converter import coco80_to_coco91_class

    ordered = [names[i] for i in sorted(names)]
    if ordered == coco80_names():
        return dict(zip(sorted(names), coco80_to_coco91_class()))
    return {i: i + 1 for i in sorted(names)}


def _image_ids(files: Sequence[Path]) -> list[int]:
    """Numeric file stems when they are unique integers (COCO's own images), else 1..N in order."""
    stems = [f.stem for f in files]
    if all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(files) + 1))


def _polygon_area(polygon: list[float], h: int, w: int) -> float:
    from pycocotools import mask as mask_utils

    return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))))


def coco_from_records(records: Sequence[LabelRecord], names: Mapping[int, str], description: str = "") -> dict[str, Any]:
    """A COCO instances dict from YOLO label records (pixel coordinates at each image's own size)."""
    cats = category_ids(names)
    root = Path(os.path.commonpath([str(r.file.parent) for r in records])) if records else Path()
    images, annotations = [], []
    for image_id, r in zip(_image_ids([r.file for r in records]), records):
        images.append({"id": image_id, "file_name": r.file.relative_to(root).as_posix(), "width": r.width, "height": r.height})
        for i, (c, (cx, cy, bw, bh)) in enumerate(zip(r.cls, r.boxes)):
            x, y, bw, bh = (cx - bw / 2) * r.width, (cy - bh / 2) * r.height, bw * r.width, bh * r.height
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cats[int(c)], "bbox": [round(float(v), 3) for v in (x, y, bw, bh)], "iscrowd": 0}
            if r.segments:
                polygon = [round(float(v), 3) for v in (r.segments[i] * (r.width, r.height)).reshape(-1)]
                ann["segmentation"] = [polygon]
                ann["area"] = _polygon_area(polygon, r.height, r.width)
            else:
                ann["area"] = round(float(bw * bh), 3)
            annotations.append(ann)
    categories = [{"id": cats[i], "name": names[i], "supercategory": ""} for i in sorted(names)]
    info = {"description": description, "date_created": datetime.now().astimezone().isoformat(), "contributor": "yolo-taskvec coco-export"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def export_coco(data: str | os.PathLike, split: str = "val", out: str | os.PathLike | None = None, *, exist_ok: bool = True) -> dict[str, Any]:
    """COCO instances dict of a YOLO-layout dataset split (boxes, polygons for segment labels); ``out`` writes it.

    ``out`` may not lie inside the dataset's folders (its own ``annotations/instances_val.json`` is an input of
    ``coco=True`` scoring) and replaces an existing file only with ``exist_ok``; both are checked before reading.
    """
    from .atomic import check_output
    from .data import dataset_folders, resolve_yaml

    protected: list[Path] = []
    inputs = [data, resolve_yaml(Path(str(data)).expanduser())]
    if out is not None:
        protected = dataset_folders(data)
        check_output(out, inputs, exist_ok=exist_ok, protect=protected)
    records, names = read_labels(data, split)
    coco = coco_from_records(records, names, description=f"{dataset_name(data)} {split} (from YOLO labels)")
    if out is not None:
        write_text_atomic(out, json.dumps(coco), inputs=inputs, exist_ok=exist_ok, protect=protected)
    return coco


# ----------------------------------------------------------------------------------------------- ground truth
def find_coco_json(info: Mapping[str, Any], split: str = "val") -> Path | None:
    """The instances json of a dataset split: yaml key ``coco_json`` (path or per-split mapping), else auto-detected."""
    root = Path(info.get("path") or ".")
    given = info.get("coco_json")
    if isinstance(given, Mapping):
        given = given.get(split)
    if given:
        path = Path(str(given)).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"coco_json {path} named by the dataset yaml does not exist.")
        return path
    for name in (f"instances_{split}.json", f"instances_{split}2017.json"):
        if (root / "annotations" / name).is_file():
            return root / "annotations" / name
    return None


@contextlib.contextmanager
def _quiet_stdout(quiet: bool = True):
    """pycocotools prints progress on stdout; keep it off unless asked."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class GroundTruth:
    """A pycocotools ``COCO`` ground truth with image-id and category-id lookups for YOLO predictions."""

    def __init__(self, source: str | os.PathLike | Mapping[str, Any], names: Mapping[int, str], label: str = "") -> None:
        from pycocotools.coco import COCO

        self.label = label or (str(source) if not isinstance(source, Mapping) else "in-memory COCO json")
        with _quiet_stdout():
            if isinstance(source, Mapping):
                self.coco = COCO()
                self.coco.dataset = dict(source)
                self.coco.createIndex()
            else:
                try:
                    self.coco = COCO(str(source))
                except (OSError, ValueError, KeyError) as e:
                    raise DataError(f"COCO json {source} cannot be read ({type(e).__name__}: {e}).") from e
        self._ids = self._file_index()
        self.category = self._category_map(names)
        anns = self.coco.dataset.get("annotations", [])
        self.has_masks = bool(anns) and all(a.get("segmentation") for a in anns)

    @classmethod
    def for_dataset(cls, info: Mapping[str, Any], split: str, data: str | os.PathLike) -> GroundTruth:
        """The dataset's own instances json when it has one, else one exported from its YOLO labels."""
        names = {int(k): str(v) for k, v in info["names"].items()}
        path = find_coco_json(info, split)
        if path is not None:
            return cls(path, names)
        return cls(export_coco(data, split), names, label=f"{dataset_name(data)} {split} labels")

    def _file_index(self) -> dict[str, int]:
        index: dict[str, int] = {}
        for img in self.coco.dataset.get("images", []):
            index[Path(img["file_name"]).as_posix()] = img["id"]
        return index

    def image_id(self, file: str | os.PathLike) -> int:
        """The json image id of a file, matched by its trailing path components (``name``, ``folder/name``...)."""
        parts = Path(file).parts
        for n in range(1, len(parts) + 1):
            key = Path(*parts[-n:]).as_posix()
            if key in self._ids:
                return self._ids[key]
        raise DataError(f"image {Path(file).name} is not in the COCO json ({self.label}).")

    def _category_map(self, names: Mapping[int, str]) -> dict[int, int]:
        """Dataset class id → json category id, by name; COCO's 80→91 ids when the dataset uses COCO's names."""
        by_name = {c["name"]: c["id"] for c in self.coco.dataset.get("categories", [])}
        mapping = {i: by_name[n] for i, n in names.items() if n in by_name}
        if len(mapping) < len(names):
            fallback = category_ids(names)
            if [names[i] for i in sorted(names)] == coco80_names():
                mapping = {i: mapping.get(i, fallback[i]) for i in names}
        if not mapping:
            raise DataError(f"none of the dataset's class names ({', '.join(list(names.values())[:4])}, ...) is a category of {self.label}.")
        return mapping


def coco_scores(gt: GroundTruth, detections: list[dict[str, Any]], iou_type: str = "bbox", image_ids: Sequence[int] | None = None, verbose: bool = False) -> dict[str, float]:
    """pycocotools AP, AP50, AP75, APs, APm, APl of ``detections`` (COCO results format); NaN where COCO gives -1."""
    from pycocotools.cocoeval import COCOeval

    prefix = "coco_" if iou_type == "bbox" else "coco_mask_"
    if not detections:
        return {f"{prefix}{k}": 0.0 for k in STAT_NAMES}
    with _quiet_stdout(not verbose):
        results = gt.coco.loadRes(detections)
        ev = COCOeval(gt.coco, results, iouType=iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {f"{prefix}{k}": (float(v) if v >= 0 else math.nan) for k, v in zip(STAT_NAMES, ev.stats[:6])}


def detection_results(image_id: int, boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, category: Mapping[int, int], masks: np.ndarray | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO result entries of one image: boxes (pixel xyxy at the original resolution) and, given masks, segments.

    Detections of classes the json does not know are left out (they cannot be scored). The two lists are separate
    because pycocotools replaces a result's segmentation by its box when both are present.
    """
    from pycocotools import mask as mask_utils

    keep = [i for i, c in enumerate(classes.tolist()) if int(c) in category]
    boxes, segments = [], []
    rles = mask_utils.encode(np.asfortranarray(masks[keep].transpose(1, 2, 0).astype(np.uint8))) if masks is not None and keep else []
    for j, i in enumerate(keep):
        x1, y1, x2, y2 = boxes_xyxy[i].tolist()
        entry = {"image_id": image_id, "category_id": category[int(classes[i])], "score": round(float(scores[i]), 5)}
        boxes.append({**entry, "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]})
        if masks is not None:
            segments.append({**entry, "segmentation": {"size": rles[j]["size"], "counts": rles[j]["counts"].decode()}})
    return boxes, segments
