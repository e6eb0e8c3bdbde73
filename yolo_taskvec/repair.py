"""Repair a class-union model with unlabeled images: pseudo-labels from the specialists, Ultralytics' own trainer.

``repair(union, specialists, images, epochs=3)``:

1. **Pseudo-labels.** Every specialist (the base and each fine-tune, in the union's task order) predicts on every
   image and labels only its own classes (``conf`` threshold), mapped to the union's class ids by name; the union
   of these boxes (one class-wise NMS at ``iou`` where two sources own one class) is the image's label file.
   The labelled copy (images linked, labels written) lives in the run folder ``out/data``; nothing is written
   beside the images.
2. **Fine-tune.** Ultralytics' ``DetectionTrainer`` trains the union model itself (any union: one trunk with the
   block-diagonal head, or ``share=k`` branches) on that copy for ``epochs`` epochs, with its progress bars,
   augmentation, EMA and checkpoints in ``out``. BatchNorm statistics stay as merged (``freeze_bn=True``; their
   affine weights train): re-estimating them on the mixed repair batches scored lower on the calibration split
   (``benchmarks/results/union_frontier.md``, repair settings). The schedule is flat (AdamW at ``lr0`` = 1e-4, what
   Ultralytics' own ``optimizer=auto`` picks for a short run with ~85 classes; no warmup; mosaic as set for the
   whole run), so the model after epoch ``e`` of a longer repair is what ``epochs=e`` gives.

``mode="distill"`` adds, on every training batch, the specialists' own outputs as targets (``DistillLoss``: their class
probabilities for the student's logits of the same classes at every anchor, their box distances where they are
confident), at the price of one forward pass of every specialist per batch.

The result is the trained EMA model as a ready ``ultralytics.YOLO`` (a standard checkpoint once saved).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import ModelLike, load_model
from .errors import DataError, OutputError, TaskVecError
from .recipe import check_repair_options

DEFAULT_LR0 = 1e-4  # chosen on the frontier's calibration split (1e-3 forgets the merge in the first epoch)
VAL_IMAGES = 32  # pseudo-labelled images held as Ultralytics' val split when no labelled val data is given


# ----------------------------------------------------------------------------------------------- inputs
def check_repair(epochs: Any, images: Any, conf: Any = 0.25, mode: str = "pseudo") -> int:
    """Validate repair options before any work (``recipe.check_repair_options``); returns the epoch count."""
    return check_repair_options(epochs, images, conf, mode, least=1, images_key="images")[0]


def image_list(images: Any, split: str = "train") -> list[Path]:
    """Image files from folders, files, list files (.txt) and dataset yamls (their ``split`` images), in order."""
    from ultralytics.data.utils import IMG_FORMATS

    from .data import image_files

    items = [images] if isinstance(images, (str, os.PathLike)) else list(images or [])
    files: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.suffix.lower() in (".yaml", ".yml"):
            files += image_files(path, split)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
            if not found:
                raise DataError(f"image folder {path} has no images.")
            files += found
        elif path.suffix == ".txt" and path.is_file():
            files += [Path(line.strip()) if Path(line.strip()).is_absolute() else (path.parent / line.strip()).resolve() for line in path.read_text().splitlines() if line.strip()]
        elif path.is_file() and path.suffix[1:].lower() in IMG_FORMATS:
            files.append(path)
        else:
            raise DataError(f"{item} is not an image, an image folder, a list of images (.txt) or a dataset yaml.")
    if not files:
        raise DataError("no images to repair with.")
    seen: set[str] = set()
    return [f for f in files if not (str(f) in seen or seen.add(str(f)))]


def check_run_folder(out: Path, files: Sequence[Path]) -> None:
    """The run folder must not hold or sit inside an input image folder."""
    for folder in {f.resolve().parent for f in files} | {f.parent for f in files}:
        if out == folder or folder in out.parents or out in folder.parents:
            raise OutputError(f"run folder {out} overlaps the image folder {folder}; choose a folder outside every input.")


# ----------------------------------------------------------------------------------------------- pseudo-labels
def pseudo_label(
    specialists: Sequence[ModelLike],
    images: Sequence[Path],
    names: Mapping[int, str],
    out: str | os.PathLike,
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    val: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """A labelled copy of ``images`` in ``out`` (YOLO layout, union class ids); returns its dataset yaml.

    Each specialist labels its own classes (ids mapped by name into ``names``); boxes of one class from two
    sources are de-duplicated by class-wise NMS at ``iou``. ``val``: a labelled yaml with the union's classes for
    Ultralytics' val split; without it, the first ``VAL_IMAGES`` pseudo-labelled images serve (agreement with
    the specialists).
    """
    from ultralytics.utils import TQDM

    from .atomic import write_text_atomic
    from .classunion import ClassUnion, class_names, yaml_str

    out = Path(out).resolve()
    union = ClassUnion(dict(names), {})
    maps = []
    for model in specialists:
        own = class_names(model)
        maps.append(union.remap(own, what=f"specialist {getattr(model, 'name', model)}"))
    labels: dict[Path, list[tuple[int, float, list[float]]]] = {f: [] for f in images}
    for s, (model, remap) in enumerate(zip(specialists, maps)):
        yolo = _as_yolo(model)
        bar = TQDM(total=len(images), desc=f"pseudo-labels {s + 1}/{len(specialists)}", disable=not progress)
        for start in range(0, len(images), batch):
            chunk = [str(f) for f in images[start : start + batch]]
            for f, result in zip(images[start : start + batch], yolo.predict(chunk, conf=conf, iou=iou, imgsz=imgsz, device=device, verbose=False, save=False)):
                boxes = result.boxes
                for c, p, xywh in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xywhn.tolist()):
                    labels[f].append((remap[int(c)], float(p), xywh))
            bar.update(len(chunk))
        bar.close()
    root = out / "data"
    counts = {"images": len(images), "boxes": 0, "empty": 0}
    written = []
    for f in images:
        rows = _deduplicate(labels[f], iou)
        name = f"{hashlib.sha1(str(f.resolve().parent).encode()).hexdigest()[:8]}_{f.name}"
        link = root / "images" / "train" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f.resolve())
        label = (root / "labels" / "train" / name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows))
        counts["boxes"] += len(rows)
        counts["empty"] += not rows
        written.append(name)
    (root / "labels" / "train.cache").unlink(missing_ok=True)  # labels changed: never reuse an old cache
    lines = [f"# pseudo-labelled by {len(specialists)} specialists (conf {conf:g}), written by yolo-taskvec repair", f"path: {root}", "train: images/train"]
    if val is not None:
        from .data import load_data

        info = load_data(val, split="val")
        if class_names(info["names"]) != dict(names):
            raise DataError(f"repair val data {val} has other classes than the union model; write union views with union-data.")
        chosen = info["val"]
        lines.append("val: " + json.dumps([str(v) for v in chosen] if isinstance(chosen, list) else str(chosen)))  # JSON is valid YAML
    else:
        lines.append("val: val.txt")
        write_text_atomic(root / "val.txt", "".join(f"./images/train/{n}\n" for n in written[:VAL_IMAGES]))
    lines.append("names:")
    lines += [f"  {i}: {yaml_str(n)}" for i, n in names.items()]
    yaml = write_text_atomic(root / "data.yaml", "\n".join(lines) + "\n")
    write_text_atomic(root / "counts.txt", " ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
    return yaml


def _as_yolo(model: ModelLike):
    from ultralytics import YOLO
    from ultralytics.engine.model import Model

    from .checkpoint import to_yolo

    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".pt":
        return YOLO(str(model))
    loaded = load_model(model)
    return to_yolo(loaded.module, label=loaded.name)


def _deduplicate(rows: list[tuple[int, float, list[float]]], iou: float) -> list[tuple[int, float, float, float, float]]:
    """Class-wise NMS over the sources' boxes (normalized xywh); returns (class, x, y, w, h) rows."""
    import torchvision

    if not rows:
        return []
    cls = torch.tensor([r[0] for r in rows])
    score = torch.tensor([r[1] for r in rows])
    xywh = torch.tensor([r[2] for r in rows])
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    keep = torchvision.ops.batched_nms(xyxy, score, cls, iou).tolist()
    return [(int(cls[i]), *map(float, xywh[i])) for i in sorted(keep)]


# ----------------------------------------------------------------------------------------------- training
def fine_tune(
    module: nn.Module,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    epochs: int,
    imgsz: int = 640,
    batch: int = 16,
    lr0: float = DEFAULT_LR0,
    device: str | None = None,
    workers: int = 0,
    seed: int = 0,
    save_period: int = -1,
    val: bool = False,
    callbacks: Mapping[str, Any] | None = None,
    teachers: Sequence[nn.Module] | None = None,
    rows: Sequence[Sequence[tuple[int, int]]] | None = None,
    distill: float = 1.0,
    freeze_bn: bool = True,
    **train_args: Any,
) -> nn.Module:
    """Train ``module`` itself (not a rebuild from its yaml) with Ultralytics' DetectionTrainer; returns the EMA model.

    Flat schedule: AdamW at ``lr0``, no warmup, ``lrf=1``, ``close_mosaic=0`` (override with ``train_args``).
    Run files (weights, args, results.csv, ``epoch<N>.pt`` with ``save_period``) go to ``out``. ``callbacks``:
    Ultralytics callback events -> functions of the trainer (e.g. ``on_train_epoch_end``). ``teachers`` with
    ``rows`` (per teacher: its (own id, union id) pairs): add their logit and box distillation (``DistillLoss``,
    weight ``distill``) to the detection loss. ``freeze_bn``: BatchNorm layers run in eval mode throughout (their
    running statistics stay as they are; their affine weights still train).
    """
    from ultralytics.models.yolo.detect import DetectionTrainer

    from .evaluation import no_label_cache_writes

    out = Path(out).resolve()
    overrides = {
        "model": "union.pt",  # a name only: the trainer trains ``module`` itself
        "data": str(data),
        "epochs": int(epochs),
        "imgsz": int(imgsz),
        "batch": int(batch),
        "device": "cpu" if device is None else str(device),
        "workers": int(workers),
        "optimizer": "AdamW",
        "lr0": float(lr0),
        "lrf": 1.0,
        "warmup_epochs": 0.0,
        "warmup_bias_lr": 0.0,
        "close_mosaic": 0,
        "seed": int(seed),
        "project": str(out.parent),
        "name": out.name,
        "exist_ok": True,
        "plots": False,
        "val": bool(val),
        "save_period": int(save_period),
        "amp": False,
        "verbose": False,
        **train_args,
    }
    trainable = _trainable_copy(module)
    if teachers:
        trainable.criterion = DistillLoss(trainable, teachers, rows or [], distill)
    trainer = DetectionTrainer(overrides=overrides)
    trainer.model = trainable
    for event, fn in (callbacks or {}).items():
        trainer.add_callback(event, fn)
    if freeze_bn:
        trainer.add_callback("on_train_batch_start", _batchnorm_eval)
    with no_label_cache_writes() if not str(data).startswith(str(out)) else _nothing():
        trainer.train()
    ema = getattr(trainer, "ema", None)
    result = (ema.ema if ema is not None else trainer.model).float().eval()
    for p in result.parameters():
        p.requires_grad_(False)
    return result


def _batchnorm_eval(trainer: Any) -> None:
    """Keep every BatchNorm in eval mode (Ultralytics puts the model in train mode at each epoch's start)."""
    for m in trainer.model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _trainable_copy(module: nn.Module) -> nn.Module:
    import copy

    out = copy.deepcopy(module).float()
    for p in out.parameters():
        p.requires_grad_(True)
    out.pt_path = None
    return out


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# ----------------------------------------------------------------------------------------------- distillation
class DistillLoss:
    """Ultralytics' detection loss plus logit and box distillation from the specialists on every training batch.

    For every anchor of every batch (augmented images), each teacher's class probabilities are soft targets for the
    student's logits of the same classes (BCE, normalized like Ultralytics' class loss by the targets' total), and
    its raw box distances are targets for the student's, weighted by the teacher's top class probability at that
    anchor (smooth L1). Both the one-to-many and the one-to-one heads are distilled. A one-trunk union shares its
    anchors with every teacher; a ``share=k`` union holds each teacher's anchors in its own levels.
    """

    def __init__(self, model: nn.Module, teachers: Sequence[nn.Module], rows: Sequence[Sequence[tuple[int, int]]], weight: float = 1.0):
        self.model = model
        self.teachers = [t.float().eval() for t in teachers]
        for t in self.teachers:
            for p in t.parameters():
                p.requires_grad_(False)
        self.rows = [list(r) for r in rows]
        self.weight = float(weight)
        self.base: Any = None

    def update(self) -> None:
        if self.base is not None and hasattr(self.base, "update"):
            self.base.update()

    def __call__(self, preds: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        if self.base is None:
            self.base = self.model.init_criterion()
        loss, items = self.base(preds, batch)
        if self.weight <= 0:
            return loss, items
        preds = preds[1] if isinstance(preds, tuple) else preds  # validation passes (decoded, raw)
        images = batch["img"]
        with torch.no_grad():
            outputs = [_raw_heads(t.to(images.device), images) for t in self.teachers]
        hyp = self.model.args
        extra = images.new_zeros(())
        for head in ("one2many", "one2one") if "one2one" in preds else (None,):
            student = preds[head] if head else preds
            extra = extra + self._head_loss(student, [o[head] if head else o for o in outputs], float(getattr(hyp, "cls", 0.5)), float(getattr(hyp, "box", 7.5)))
        return loss + self.weight * extra * images.shape[0], items

    def _head_loss(self, student: Mapping[str, torch.Tensor], teachers: Sequence[Mapping[str, torch.Tensor]], cls_gain: float, box_gain: float) -> torch.Tensor:
        import torch.nn.functional as F

        scores, boxes = student["scores"], student["boxes"]
        anchors = scores.shape[-1]
        cls_loss = box_loss = scores.new_zeros(())
        cls_norm = box_norm = scores.new_zeros(())
        for s, (teacher, rows) in enumerate(zip(teachers, self.rows)):
            t_scores, t_boxes = teacher["scores"].float(), teacher["boxes"].float()
            n = t_scores.shape[-1]
            span = slice(0, n) if n == anchors else slice(s * n, (s + 1) * n)
            if not rows:
                continue
            old = torch.tensor([o for o, _ in rows], device=scores.device)
            new = torch.tensor([w for _, w in rows], device=scores.device)
            target = t_scores.index_select(1, old).sigmoid()
            mine = scores[:, :, span].index_select(1, new)
            cls_loss = cls_loss + F.binary_cross_entropy_with_logits(mine, target, reduction="sum")
            cls_norm = cls_norm + target.sum()
            weight = target.max(1).values.unsqueeze(1)  # (B, 1, n): how sure the teacher is at each anchor
            box_loss = box_loss + (F.smooth_l1_loss(boxes[:, :, span], t_boxes, reduction="none") * weight).sum()
            box_norm = box_norm + weight.sum() * boxes.shape[1]
        return cls_gain * cls_loss / cls_norm.clamp(min=1.0) + box_gain * box_loss / box_norm.clamp(min=1.0)


def _raw_heads(model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """The Detect head's raw outputs (boxes, class logits per anchor) of a model in eval mode."""
    out = model(images)
    raw = out[1] if isinstance(out, tuple) else out
    return raw


# ----------------------------------------------------------------------------------------------- API
def default_run_folder() -> Path:
    """A new ``<runs_dir>/taskvec/repair<N>`` folder (Ultralytics' increment rule)."""
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.files import increment_path

    return Path(increment_path(Path(SETTINGS["runs_dir"]).resolve() / "taskvec" / "repair", mkdir=True))


def repair_module(
    module: nn.Module,
    specialists: Sequence[ModelLike],
    images: Any,
    *,
    epochs: int = 3,
    conf: float = 0.25,
    iou: float = 0.7,
    mode: str = "pseudo",
    out: str | os.PathLike | None = None,
    imgsz: int = 640,
    batch: int = 16,
    lr0: float = DEFAULT_LR0,
    device: str | None = None,
    workers: int = 0,
    seed: int = 0,
    val: str | os.PathLike | None = None,
    progress: bool = True,
    freeze_bn: bool = True,
    **train_args: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """The repaired copy of a union ``module`` (its ``names`` are the union's) and a record of what was done."""
    epochs = check_repair(epochs, images, conf, mode)
    if not specialists:
        raise TaskVecError("repair needs the specialists whose classes the union holds (the base and each fine-tune).")
    files = image_list(images)
    out = Path(out).expanduser().resolve() if out is not None else default_run_folder()
    check_run_folder(out, files)
    names = {int(k): str(v) for k, v in module.names.items()}
    data = pseudo_label(specialists, files, names, out, conf=conf, iou=iou, imgsz=imgsz, batch=batch, device=device, val=val, progress=progress)
    teach = {}
    if mode == "distill":
        from .classunion import ClassUnion, class_names

        union = ClassUnion(names, {})
        teach = {"teachers": [load_model(m).module for m in specialists], "rows": [sorted(union.remap(class_names(m)).items()) for m in specialists]}
    trained = fine_tune(module, data, out / "train", epochs=epochs, imgsz=imgsz, batch=batch, lr0=lr0, device=device, workers=workers, seed=seed, freeze_bn=freeze_bn, **teach, **train_args)
    trained.names = names
    counts = dict(item.split("=") for item in (out / "data" / "counts.txt").read_text().split())
    record = {"epochs": epochs, "mode": mode, "conf": float(conf), "images": len(files), "pseudo_boxes": int(counts["boxes"]), "lr0": float(lr0), "batchnorm": "frozen" if freeze_bn else "trained", "imgsz": int(imgsz), "run": str(out)}
    return trained, record


def repair(
    model: ModelLike,
    specialists: Sequence[ModelLike],
    images: Any,
    *,
    epochs: int = 3,
    conf: float = 0.25,
    imgsz: int | None = None,
    **options: Any,
):
    """Repair a union ``model`` on unlabeled ``images`` with pseudo-labels from ``specialists`` (see module docs).

    ``specialists``: the models whose classes the union holds (base first, then each fine-tune; class ids are
    matched by name). ``images``: image folders, files, ``.txt`` lists or dataset yamls (train split; labels
    unused). ``out``: the run folder (default a new ``<runs_dir>/taskvec/repair<N>``); ``options``: see
    ``repair_module`` (``iou``, ``batch``, ``lr0``, ``freeze_bn``, ``device``, ``workers``, ``seed``, ``val``, trainer
    arguments).
    Returns a ready ``ultralytics.YOLO``.
    """
    check_repair(epochs, images, conf, options.get("mode", "pseudo"))
    union = load_model(model)
    imgsz = int(imgsz or union.train_args.get("imgsz") or 640)
    trained, record = repair_module(union.module, specialists, images, epochs=epochs, conf=conf, imgsz=imgsz, **options)
    return as_repaired_yolo(trained, union, record)


def as_repaired_yolo(module: nn.Module, union: Any, record: Mapping[str, Any]):
    """The repaired module as a ready ``ultralytics.YOLO`` whose provenance adds ``repair`` to the union's."""
    from .checkpoint import to_yolo

    provenance = {**dict(union.ckpt.get("taskvec") or {}), "repair": dict(record)}
    return to_yolo(module, label=f"repaired({union.name})", train_args=union.train_args, ckpt_extra={"taskvec": provenance})


def repair_union(module: nn.Module, base: Any, vectors: Sequence[Any], recipe: Any, imgsz: int) -> tuple[nn.Module, dict[str, Any]]:
    """A recipe's ``repair=``: the merged union ``module`` fine-tuned on ``recipe.repair_images`` with pseudo-labels
    from its sources (the base and each input, rebuilt exactly from the task vectors); returns it and the record."""
    from .branches import source_state
    from .checkpoint import build_module
    from .classunion import vector_names

    specialists = [base.module] + [build_module(base, source_state(base, tv), target_yaml=tv.meta.get("target_yaml"), names=vector_names(tv)) for tv in vectors]
    return repair_module(module, specialists, list(recipe.repair_images), epochs=recipe.repair, conf=recipe.repair_conf, mode=recipe.repair_mode, imgsz=imgsz, device=recipe.device)
