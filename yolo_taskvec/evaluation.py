"""Score many models on many datasets with Ultralytics' own validators, built once and reused.

For each (dataset, validation task, class names, ``single_cls``, stride) one Ultralytics ``DetectionValidator`` or
``SegmentationValidator`` is built as ``YOLO.val`` builds it (``rect=True``, same arguments); its dataloader is run
ONCE and the collated batches (decoded, letterboxed uint8 images and labels) stay resident on the device. The
first model of an architecture is prepared by Ultralytics' ``AutoBackend`` as ``val`` prepares it (a private copy,
Conv+BatchNorm fused, on the device, fp16 on GPU); later models are fused into that same model in place
(``FusedTemplate``: bit-identical weights, no deep copy or rebuild). Each is scored by the validator's own loop pieces (``init_metrics``, ``preprocess``, forward, ``postprocess``, ``update_metrics``,
``get_stats``) over the resident batches. The numbers are Ultralytics' own: they equal a fresh
``YOLO(path).val(data=..., imgsz=..., batch=...)`` on the same settings.

Which validator scores what: a segment model on segment data (label files with polygons) gets box and mask
metrics; a detect model on segment data, and a segment model on detect-only data, are scored on boxes with the
detection validator. So a dual-purpose detect+segment model is scorable on both kinds of data.

Models with other class sets (e.g. a class-union model) get their own validator, because Ultralytics builds the
labels for the model's class count (labels of classes a model cannot predict are dropped, as in ``YOLO.val``).

``coco=True`` also scores with pycocotools (``coco_AP``, ``coco_AP50``, ``coco_AP75``, ``coco_APs/m/l``, and
``coco_mask_*`` for masks) against the dataset's COCO instances json (``coco_json:`` in the yaml, or
``annotations/instances_<split>.json`` under its root), or one exported from its YOLO labels when it has none.
Predictions are scaled back to each image's original resolution.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import write_text_atomic
from .bootstrap import ImageStats
from .checkpoint import LoadedModel, ModelLike, load_model
from .data import dataset_name, image_files, load_data, patched
from .errors import DataError, TaskVecError
from .limits import GB, MAX_BATCH, MAX_IMGSZ, MIN_IMGSZ, available_memory

BOX_METRICS = {"map50_95": "metrics/mAP50-95(B)", "map50": "metrics/mAP50(B)", "precision": "metrics/precision(B)", "recall": "metrics/recall(B)"}
MASK_METRICS = {"mask_map50_95": "metrics/mAP50-95(M)", "mask_map50": "metrics/mAP50(M)", "mask_precision": "metrics/precision(M)", "mask_recall": "metrics/recall(M)"}
TASKS = ("detect", "segment")
DEVICE_TYPES = ("cpu", "cuda", "mps")


# ----------------------------------------------------------------------------------------------- entry checks
def check_image_settings(imgsz: Any, batch: Any) -> tuple[int, int]:
    """``(imgsz, batch)`` as ints within ``[32, MAX_IMGSZ]`` and ``[1, MAX_BATCH]``."""
    from .recipe import parse_int

    return parse_int(imgsz, "imgsz", MIN_IMGSZ, MAX_IMGSZ), parse_int(batch, "batch", 1, MAX_BATCH)


def check_batch_memory(imgsz: int, batch: int, device: torch.device) -> None:
    """Refuse settings whose input batch alone (uint8 images as decoded plus the fp32 tensor the model reads, a lower
    bound of what validation allocates) does not fit in the memory available on ``device``."""
    need = batch * 3 * imgsz * imgsz * (1 + 4)
    free = None
    if device.type == "cuda":
        with contextlib.suppress(RuntimeError, AssertionError):
            free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        free = available_memory()
    if free is not None and need > free:
        raise TaskVecError(f"imgsz={imgsz} with batch={batch} needs at least {need / GB:.1f} GB for one input batch, more than the {free / GB:.1f} GB available on {device.type}; lower imgsz or batch.")


def select_device_checked(device: Any) -> torch.device:
    """Ultralytics' ``select_device`` with one sentence for a device that does not exist or cannot validate."""
    from ultralytics.utils.torch_utils import select_device

    from .recipe import check_device

    device = check_device(device)  # the one syntax and availability check (recipes, scoring, the CLI)
    try:
        with quiet_ultralytics(True), torch_threads(None):  # select_device lowers torch's threads for training loaders
            selected = select_device("" if device is None else device, verbose=False)
    except (ValueError, AssertionError, RuntimeError) as e:
        count = torch.cuda.device_count()
        raise TaskVecError(f"device={device} is not available here ({count} CUDA device{'s' if count != 1 else ''}); use device=cpu{', 0' if count else ''}{' or mps' if torch.backends.mps.is_available() else ''}.") from e
    if not isinstance(selected, torch.device) or selected.type not in DEVICE_TYPES:
        raise TaskVecError(f"device={device} cannot run validation here; use cpu, a CUDA index such as 0 (or 0,1), or mps.")
    return selected


def check_finite(state: Mapping[str, torch.Tensor], label: str) -> None:
    """Refuse a model with NaN or Inf weights: it would score 0.000 without a word."""
    floats = {k: t for k, t in state.items() if t.is_floating_point() and t.numel()}
    if not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats.values()]).all()):  # one synchronization
        return
    bad = [k for k, t in floats.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise TaskVecError(f"model {label} holds NaN or Inf values in {len(bad)} tensors (e.g. {bad[0]}); it cannot be scored.")


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def quiet_ultralytics(enabled: bool = True) -> Iterator[None]:
    """Silence Ultralytics' info logging (and with it its own progress bars) inside the block."""
    from ultralytics.utils import LOGGER

    if not enabled:
        yield
        return
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def available_cpus() -> int:
    """The logical CPUs this process may run on (``OMP_NUM_THREADS`` is no guide: importing Ultralytics sets it to 1)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (``None``: unchanged) and restored after it."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def no_label_cache_writes() -> contextlib.AbstractContextManager[None]:
    """Ultralytics' datasets read an existing ``labels/<split>.cache`` but write none inside the block.

    Building a dataset otherwise writes that cache beside the user's labels: scoring must leave the dataset folders
    as they were (they may be shared or read-only); parsing the labels of a val split again takes well under a second.
    """
    from ultralytics.data import dataset

    def keep_in_memory(prefix: str, path: Path, x: dict, version: str) -> None:
        x["version"] = version  # what Ultralytics' saver sets on the in-memory cache, without the file

    return patched(dataset, "save_dataset_cache_file", keep_in_memory)


def no_nms_time_limit(seconds_per_image: float = 1e4) -> contextlib.AbstractContextManager[None]:
    """Ultralytics' NMS without its time limit inside the block (restored after it).

    ``non_max_suppression`` stops after 2 s + 0.05 s per image of a batch and silently returns no detections for
    the rest of the batch; on a busy CPU that limit is reached and a validation's mAP then depends on the machine's
    load. Scoring wants the same numbers on any machine, so the Evaluator lifts the limit while it scores.
    """
    import functools

    from ultralytics.utils import nms

    return patched(nms, "non_max_suppression", functools.partial(nms.non_max_suppression, max_time_img=seconds_per_image))


def model_label(model: ModelLike) -> str:
    """A short name for a model in tables: the checkpoint's stem, else the YOLO/module's own label."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model).stem
    if isinstance(model, LoadedModel):
        return model.name
    path = getattr(model, "ckpt_path", None) or getattr(getattr(model, "model", None), "pt_path", None) or getattr(model, "pt_path", None)
    if path:
        return Path(str(path)).stem
    return str(getattr(model, "model_name", None) or type(model).__name__)


def _is_fused(module: torch.nn.Module) -> bool:
    is_fused = getattr(module, "is_fused", None)
    return bool(callable(is_fused) and is_fused())


def source_module(model: ModelLike) -> tuple[torch.nn.Module, bool]:
    """``(module, owned)``: the model's own module, read without copying (``owned``: loaded here from a file)."""
    from ultralytics.engine.model import Model

    if isinstance(model, LoadedModel):
        return model.module, False
    if isinstance(model, (str, os.PathLike)):
        return load_model(model).module, True
    inner = model.model if isinstance(model, Model) else model
    if isinstance(inner, torch.nn.Module) and hasattr(inner, "yaml"):
        return inner, False
    return load_model(model).module, True  # raises the loader's one-sentence error


def model_state(module: torch.nn.Module, as_saved: bool, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The module's state in fp32 on ``device`` (default: the CPU), where the scoring model runs, so a model merged
    on that GPU is not copied to the CPU and back (never the caller's tensors when they are changed); with
    ``as_saved``, floating-point values rounded to fp16 as a saved checkpoint holds them (unless some exceed fp16's
    range: such a model cannot be saved, so it is scored as it is). The range check is one synchronization."""
    from .checkpoint import FP16_MAX

    device = torch.device(device) if device is not None else torch.device("cpu")
    state = {k: (v.detach().to(device, torch.float32) if v.is_floating_point() else v.detach().to(device)) for k, v in module.state_dict().items()}
    floats = [v for v in state.values() if v.is_floating_point() and v.numel()]
    if as_saved and (not floats or float(torch.stack([t.abs().amax() for t in floats]).amax()) <= FP16_MAX):
        state = {k: (v.half().float() if v.is_floating_point() else v) for k, v in state.items()}
    return state


def private_module(module: torch.nn.Module, state: Mapping[str, torch.Tensor], owned: bool) -> torch.nn.Module:
    """An fp32 eval module holding ``state`` that evaluation may fuse in place (the caller's model is never touched)."""
    module = module if owned else copy.deepcopy(module)
    module.float().load_state_dict(state)
    for m in module.modules():  # as Ultralytics' load_checkpoint sets them
        if hasattr(m, "inplace"):
            m.inplace = True
    if not hasattr(module, "stride"):
        module.stride = torch.tensor([32.0])
    return module.eval()


class FusedTemplate:
    """One fused model per architecture, on the device, that takes each new model's weights in place.

    Built once by Ultralytics' ``AutoBackend`` (deep copy, Conv+BatchNorm fusion, device, fp16); afterwards a model
    of the same architecture is loaded by fusing its tensors with the same function Ultralytics uses
    (``fuse_conv_bn_weights``) and copying them into the fused model, with no deep copy or rebuild. The recipe is
    verified bit for bit against AutoBackend's own fusion when the template is built; architectures with other
    fusions (RepConv, Conv2, RepVGGDW, ConvTranspose, QAT) are prepared by AutoBackend for every model instead.
    """

    def __init__(self, backend: Any, recipe: list[tuple[str, str, float]] | None) -> None:
        self.backend, self.recipe = backend, recipe
        self.targets = backend.model.state_dict() if recipe is not None else {}
        self.current: Any = None

    @classmethod
    def build(cls, module: torch.nn.Module, device: torch.device, fp16: bool, verbose: bool) -> FusedTemplate:
        """Fuse ``module`` (consumed) with AutoBackend as ``YOLO.val`` does, and derive the in-place loading recipe."""
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.autobackend import AutoBackend

        module = module.to(device)  # fused where it runs, as YOLO.val fuses a checkpoint loaded onto its device
        unfused = {k: v.detach().clone() for k, v in module.state_dict().items()}
        conv_bn, swappable = _fusable_convs(module)
        with quiet_ultralytics(not verbose), torch.inference_mode(False):
            backend = AutoBackend(model=module, device=device, fp16=fp16, fuse=True, verbose=False, end2end=get_cfg().nms is False)
        backend.eval()
        fused = backend.model.state_dict()
        recipe = _recipe(fused, unfused, conv_bn) if swappable else None
        template = cls(backend, recipe)
        if recipe is not None:
            expected = {k: v.clone() for k, v in fused.items()}
            template.load(unfused)
            if any(not torch.equal(template.targets[k], v) for k, v in expected.items()):  # never trust an unverified recipe
                for k, v in expected.items():
                    template.targets[k].copy_(v)
                template.recipe, template.targets = None, {}
        return template

    @torch.no_grad()
    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Fuse ``state`` (unfused fp32, on the template's device) into the template's tensors in place."""
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        for kind, key, eps in self.recipe:
            if kind == "copy":
                self.targets[key].copy_(state[key])
                continue
            w, b = fuse_conv_bn_weights(state[f"{key}.conv.weight"], state.get(f"{key}.conv.bias"), state[f"{key}.bn.running_mean"], state[f"{key}.bn.running_var"], eps, state[f"{key}.bn.weight"], state[f"{key}.bn.bias"])
            self.targets[f"{key}.conv.weight"].copy_(w)
            self.targets[f"{key}.conv.bias"].copy_(b)


def _fusable_convs(module: torch.nn.Module) -> tuple[dict[str, float], bool]:
    """Conv+BatchNorm pairs AutoBackend will fold (name -> eps), and whether every fusion in the model is one of them."""
    from ultralytics.nn.modules import Conv, Conv2, ConvTranspose, RepConv, RepVGGDW

    conv_bn = {name: float(m.bn.eps) for name, m in module.named_modules() if isinstance(m, Conv) and isinstance(getattr(m, "bn", None), torch.nn.BatchNorm2d)}
    other = any(isinstance(m, (Conv2, ConvTranspose, RepConv, RepVGGDW)) or hasattr(m, "weight_quantizer") for m in module.modules())
    return conv_bn, not other


def _recipe(fused: Mapping[str, torch.Tensor], unfused: Mapping[str, torch.Tensor], conv_bn: Mapping[str, float]) -> list[tuple[str, str, float]] | None:
    """How each fused tensor follows from the unfused ones: ``("fuse", conv name, eps)`` or ``("copy", key, 0)``."""
    recipe: list[tuple[str, str, float]] = []
    for key, value in fused.items():
        prefix, _, leaf = key.rpartition(".")
        owner = prefix[: -len(".conv")] if prefix.endswith(".conv") else None
        if owner in conv_bn:
            if leaf == "weight":
                recipe.append(("fuse", owner, conv_bn[owner]))
            elif leaf != "bias":
                return None
        elif key in unfused and unfused[key].shape == value.shape:
            recipe.append(("copy", key, 0.0))
        else:
            return None
    return recipe


def _model_arg(module: torch.nn.Module, key: str, default: Any = None) -> Any:
    args = getattr(module, "args", None) or {}
    return args.get(key, default) if isinstance(args, Mapping) else getattr(args, key, default)


def has_segments(data: str | os.PathLike, split: str = "val") -> bool:
    """True when a split's label files hold polygons (segment data), False for box labels."""
    from ultralytics.data.utils import img2label_paths

    for label in img2label_paths([str(f) for f in image_files(data, split)]):
        if os.path.isfile(label):
            with open(label, encoding="utf-8-sig") as f:
                for line in f:
                    if len(line.split()) > 6:
                        return True
                    if line.strip():
                        break
    return False


def _detection_output(preds: Any, nc: int, end2end: bool) -> torch.Tensor:
    """A segment model's raw output reduced to what the detection validator reads: boxes and class scores."""
    y = preds
    while isinstance(y, (list, tuple)):
        y = y[0]
    return y if end2end else y[:, : 4 + nc]


def _timer(device: torch.device):
    from ultralytics.utils.ops import Profile

    return Profile(device=device)


# ----------------------------------------------------------------------------------------------- evaluator
@dataclass
class _Dataset:
    name: str
    yaml: str
    info: dict[str, Any]
    segments: bool
    gt: Any = None  # coco.GroundTruth, built on first use


@dataclass
class _Pass:
    """One validator with its resident batches."""

    validator: Any
    batches: list[dict[str, Any]]
    task: str


@dataclass
class PreparedModel:
    """A model made ready for scoring: its (rounded) weights and the fused template that runs them."""

    template: FusedTemplate
    state: dict[str, torch.Tensor]
    task: str
    names: dict[int, str]
    single_cls: bool
    label: str

    @property
    def backend(self) -> Any:
        """The fused AutoBackend with this model's weights loaded (loaded now if another model's were)."""
        if self.template.current is not self:
            self.template.load(self.state)
            self.template.current = self
        return self.template.backend


class Evaluator:
    """Validators, dataloaders and preprocessed batches built once per dataset, reused for every model.

    >>> ev = Evaluator(["fruit80.yaml", "fruit80-night.yaml"], imgsz=320)
    >>> ev("yolo26n-base80.pt")
    {'fruit80': {'map50_95': 0.439, 'map50': 0.765, ...}, 'fruit80-night': {...}}

    ``half=None`` means fp16 on CUDA and fp32 on CPU (where Ultralytics never uses fp16); ``conf=None`` is
    Ultralytics' validation default (0.001). ``verbose`` prints Ultralytics' results lines; ``progress`` shows a
    progress bar per pass. ``as_saved=True`` scores each model's weights as a saved checkpoint holds them (rounded
    to fp16, as Ultralytics and ``save`` store them), so an in-memory merge scores exactly what ``YOLO(saved.pt).val()``
    gives; ``as_saved=False`` scores the fp32 weights as ``merged.val()`` does (they differ by ~0.003 mAP at most on
    the reference merges). Checkpoint files are fp16 already, so for paths both are the same. ``threads``: torch
    threads for CPU inference, all logical CPUs by default (Ultralytics' ``select_device`` sets cores − 1 to leave one
    for training dataloaders; batches here are decoded up front, so inference may use every core). The process's
    thread setting is restored after each pass. Ultralytics' NMS time limit is lifted while scoring
    (``no_nms_time_limit``), so metrics do not depend on the machine's load. ``per_image=True`` keeps Ultralytics'
    per-image matching statistics of the latest model scored on each dataset in ``image_stats[dataset]``
    (``yolo_taskvec.bootstrap.ImageStats``: bootstrap intervals over the val images).
    """

    def __init__(
        self,
        data: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        imgsz: int = 640,
        batch: int = 16,
        device: str | torch.device | None = None,
        half: bool | None = None,
        conf: float | None = None,
        iou: float = 0.7,
        split: str = "val",
        coco: bool = False,
        verbose: bool = False,
        progress: bool = True,
        as_saved: bool = True,
        threads: int | None = None,
        per_image: bool = False,
    ) -> None:
        yamls = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if not yamls:
            raise DataError("no dataset given; pass one or more dataset yamls.")
        imgsz, batch = check_image_settings(imgsz, batch)
        if conf is not None and not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:  # NaN fails both comparisons
            raise TaskVecError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}.")
        self.imgsz, self.batch, self.conf, self.iou, self.split = int(imgsz), int(batch), conf, iou, split
        self.coco, self.verbose, self.progress, self.as_saved = coco, verbose, progress, as_saved
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise TaskVecError(f"threads must be a positive integer, got {threads!r}.")
        self.device = select_device_checked(device)
        check_batch_memory(self.imgsz, self.batch, self.device)
        self.threads = (threads or available_cpus()) if self.device.type == "cpu" else None
        self.half = (self.device.type == "cuda") if half is None else bool(half) and self.device.type != "cpu"
        self.datasets = [self._dataset(str(y)) for y in yamls]
        names = [d.name for d in self.datasets]
        for i, d in enumerate(self.datasets):  # unique names for two yamls with one stem
            if names.count(d.name) > 1:
                d.name = f"{d.name}#{names[: i + 1].count(d.name)}"
        self.passes: dict[tuple, _Pass] = {}
        self.templates: dict[tuple, FusedTemplate] = {}
        self.timings: dict[str, float] = defaultdict(float)
        self.per_image = bool(per_image)
        self.image_stats: dict[str, ImageStats] = {}  # per_image: the latest model's statistics per dataset
        self._save_dir = tempfile.TemporaryDirectory(prefix="yolo-taskvec-val-")

    def _dataset(self, yaml: str) -> _Dataset:
        with quiet_ultralytics(not self.verbose):
            info = load_data(yaml, split=self.split)
        if not info.get(self.split):
            raise DataError(f"dataset {yaml} has no '{self.split}' split.")
        return _Dataset(dataset_name(yaml), yaml, info, has_segments(yaml, self.split))

    @property
    def names(self) -> list[str]:
        """Dataset names, in order (the keys of every result)."""
        return [d.name for d in self.datasets]

    # ------------------------------------------------------------------ models
    def prepare(self, model: ModelLike | PreparedModel) -> PreparedModel:
        """Make ``model`` ready to score: fused on the device as Ultralytics' AutoBackend fuses it for ``val``.

        The first model of an architecture is fused by AutoBackend itself (on a private copy); later ones are fused
        into that same on-device model in place (see ``FusedTemplate``), with bit-identical weights.
        """
        if isinstance(model, PreparedModel):
            return model
        from ultralytics.nn.autobackend import check_class_names
        from ultralytics.nn.tasks import guess_model_task

        with _timer(self.device) as t, torch_threads(self.threads):  # the whole candidate keeps to the scoring threads
            module, owned = source_module(model)
            task = getattr(module, "task", None) or guess_model_task(module)
            if task not in TASKS:
                raise TaskVecError(f"{model_label(model)} is a {task} model; evaluation scores detect and segment models.")
            state = model_state(module, self.as_saved, self.device)
            check_finite(state, model_label(model))
            names = check_class_names(dict(getattr(module, "names", None) or {}))
            key = (type(module).__name__, task, json.dumps(module.yaml, sort_keys=True, default=str), tuple(names.items()), tuple((k, tuple(v.shape)) for k, v in state.items()))
            template = self.templates.get(key)
            if template is None:
                template = FusedTemplate.build(private_module(module, state, owned), self.device, self.half, self.verbose)
                if template.recipe is not None:
                    self.templates[key] = template
            prepared = PreparedModel(template, state, task, names, bool(_model_arg(module, "single_cls", False)), model_label(model))
            if template.current is None:
                template.current = prepared  # built with these weights
        self.timings["prepare"] += t.t
        return prepared

    def __call__(self, model: ModelLike | PreparedModel) -> dict[str, dict[str, float]]:
        """``{dataset: {"map50_95", "map50", "precision", "recall", [mask_*], [coco_*]}}`` for one model."""
        prepared = self.prepare(model)
        return {d.name: self.score(prepared, d) for d in self.datasets}

    # ------------------------------------------------------------------ passes
    def _pass(self, prepared: PreparedModel, dataset: _Dataset) -> _Pass:
        task = "segment" if prepared.task == "segment" and dataset.segments else "detect"
        stride = int(prepared.backend.stride)
        key = (dataset.name, task, tuple(sorted(prepared.names.items())), prepared.single_cls, stride)
        if key not in self.passes:
            with _timer(self.device) as t:
                self.passes[key] = self._build_pass(prepared, dataset, task)
            self.timings["data"] += t.t
        return self.passes[key]

    def _build_pass(self, prepared: PreparedModel, dataset: _Dataset, task: str) -> _Pass:
        """An Ultralytics validator set up as ``YOLO.val`` sets it up, and its batches decoded once."""
        from ultralytics.models.yolo.detect import DetectionValidator
        from ultralytics.models.yolo.segment import SegmentationValidator
        from ultralytics.utils import TQDM

        args = {
            "task": task,
            "mode": "val",
            "data": dataset.yaml,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "conf": self.conf,
            "iou": self.iou,
            "split": self.split,
            "rect": True,
            "plots": False,
            "save_json": False,
            "verbose": self.verbose,
            "single_cls": prepared.single_cls,
            "device": str(self.device),
            "quantize": 16 if prepared.backend.fp16 else None,
        }
        cls = SegmentationValidator if task == "segment" else DetectionValidator
        with quiet_ultralytics(not self.verbose):
            v = cls(save_dir=Path(self._save_dir.name), args=args)
            v.training = False
            v.device, v.data = self.device, dataset.info
            if self.device.type in {"cpu", "mps"}:
                v.args.workers = 0  # as Ultralytics' val: CPU time goes to inference, not loading
            v.stride, v.names = prepared.backend.stride, prepared.backend.names
            with no_label_cache_writes():
                v.dataloader = v.get_dataloader(dataset.info.get(self.split), v.args.batch)
        blocking = self.device.type in {"cpu", "mps"}
        batches = []
        bar = TQDM(v.dataloader, desc=f"decoding {dataset.name}", total=len(v.dataloader), disable=not self.progress)
        for b in bar:
            batches.append({k: (x.to(self.device, non_blocking=not blocking) if isinstance(x, torch.Tensor) else x) for k, x in b.items()})
        return _Pass(v, batches, task)

    def score(self, prepared: ModelLike | PreparedModel, dataset: str | _Dataset) -> dict[str, float]:
        """Run one (prepared) model over one dataset's resident batches with the validator's own steps."""
        from ultralytics.utils import TQDM
        from ultralytics.utils.torch_utils import unwrap_model

        prepared = self.prepare(prepared)
        if isinstance(dataset, str):
            if dataset not in self.names:
                raise DataError(f"dataset {dataset} is not one of this evaluator's ({', '.join(self.names)}).")
            dataset = self.datasets[self.names.index(dataset)]
        p = self._pass(prepared, dataset)
        with torch_threads(self.threads):  # loading the weights into the fused model is part of the candidate's work
            v, model = p.validator, prepared.backend
        boxes_of_segment_model = prepared.task == "segment" and p.task == "detect"
        collector = self._coco_collector(dataset, p) if self.coco else None
        forward, post = _timer(self.device), _timer(self.device)
        with quiet_ultralytics(not self.verbose), torch.inference_mode(), torch_threads(self.threads), no_nms_time_limit():
            v.init_metrics(unwrap_model(model))
            bar = TQDM(p.batches, desc=f"{prepared.label} | {dataset.name}", total=len(p.batches), disable=not self.progress)
            for i, stored in enumerate(bar):
                v.batch_i = i
                batch = v.preprocess(dict(stored))
                with forward:
                    raw = model(batch["img"])
                with post:
                    preds = v.postprocess(_detection_output(raw, v.nc, v.end2end) if boxes_of_segment_model else raw)
                    v.update_metrics(preds, batch)
                if collector is not None:
                    collector.add(v, raw, preds, batch)
            if self.per_image:  # read before get_stats clears them
                self.image_stats[dataset.name] = ImageStats.from_metrics(v.metrics.stats, [f for b in p.batches for f in b["im_file"]])
            with _timer(self.device) as t:
                stats = v.get_stats()
                v.finalize_metrics()
            if self.verbose:
                v.print_results()
        self.timings["forward"] += forward.t
        self.timings["postprocess"] += post.t
        self.timings["metrics"] += t.t
        out = {k: float(stats[key]) for k, key in BOX_METRICS.items()}
        if p.task == "segment":
            out.update({k: float(stats[key]) for k, key in MASK_METRICS.items()})
        if collector is not None:
            with _timer(self.device) as t:
                out.update(collector.scores(verbose=self.verbose))
            self.timings["coco"] += t.t
        return out

    def _coco_collector(self, dataset: _Dataset, p: _Pass) -> _CocoCollector:
        from .coco import GroundTruth

        if dataset.gt is None:
            dataset.gt = GroundTruth.for_dataset(dataset.info, self.split, dataset.yaml)
        return _CocoCollector(dataset.gt, masks=p.task == "segment" and dataset.gt.has_masks)


class _CocoCollector:
    """Predictions of one pass in COCO results format, at each image's original resolution."""

    def __init__(self, gt: Any, masks: bool) -> None:
        self.gt, self.masks = gt, masks
        self.boxes: list[dict[str, Any]] = []
        self.segments: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def add(self, v: Any, raw: Any, preds: list[dict[str, torch.Tensor]], batch: dict[str, Any]) -> None:
        from ultralytics.models.yolo.detect import DetectionValidator
        from ultralytics.utils import ops

        from .coco import detection_results

        imgsz = batch["img"].shape[2:]
        native = None
        if self.masks:  # masks at the letterboxed size (as Ultralytics' save_json), then scaled to the original
            proto = raw[0][1] if isinstance(raw[0], tuple) else raw[1]
            native = DetectionValidator.postprocess(v, raw[0])
        for si, pred in enumerate(preds):
            image_id = self.gt.image_id(batch["im_file"][si])
            self.image_ids.append(image_id)
            pbatch = {"imgsz": imgsz, "ori_shape": batch["ori_shape"][si], "ratio_pad": batch["ratio_pad"][si]}
            masks = None
            if native is not None:
                d = native[si]
                full = ops.process_mask_native(proto[si], d["extra"], d["bboxes"], shape=imgsz)
                scaled = v.scale_preds({"bboxes": d["bboxes"], "masks": full}, pbatch)
                masks = scaled["masks"].cpu().numpy()
            boxes = DetectionValidator.scale_preds(v, pred, pbatch)["bboxes"].cpu().numpy()
            b, s = detection_results(image_id, boxes, pred["conf"].cpu().numpy(), pred["cls"].cpu().numpy(), self.gt.category, masks)
            self.boxes += b
            self.segments += s

    def scores(self, verbose: bool = False) -> dict[str, float]:
        from .coco import coco_scores

        out = coco_scores(self.gt, self.boxes, "bbox", self.image_ids, verbose=verbose)
        if self.masks:
            out.update(coco_scores(self.gt, self.segments, "segm", self.image_ids, verbose=verbose))
        return out


# ----------------------------------------------------------------------------------------------- results
@dataclass
class Results:
    """Rows of ``{"model", "dataset", metric: value, ...}`` with table, CSV/JSON export and ``best``."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    images: dict[tuple[str, str], ImageStats] = field(default_factory=dict, repr=False)  # (model, dataset): per_image=True

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r["model"] for r in self.rows))

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r["dataset"] for r in self.rows))

    @property
    def metrics(self) -> list[str]:
        keys: dict[str, None] = {}
        for r in self.rows:
            keys.update(dict.fromkeys(k for k in r if k not in ("model", "dataset")))
        return list(keys)

    def get(self, model: str, dataset: str, metric: str = "map50_95") -> float:
        """One value; ``KeyError`` when that model/dataset/metric was not scored."""
        for r in self.rows:
            if r["model"] == model and r["dataset"] == dataset and metric in r:
                return r[metric]
        raise KeyError(f"no {metric} for model {model} on {dataset}")

    def pivot(self, metric: str = "map50_95") -> dict[str, dict[str, float]]:
        """``{model: {dataset: value}}`` of one metric."""
        out: dict[str, dict[str, float]] = {}
        for r in self.rows:
            if metric in r:
                out.setdefault(r["model"], {})[r["dataset"]] = r[metric]
        return out

    def best(self, metric: str = "map50_95", dataset: str | None = None) -> tuple[str, float]:
        """``(model, value)`` with the highest ``metric`` on ``dataset``, or the highest mean over all datasets."""
        table = self.pivot(metric)
        if not table:
            raise KeyError(f"no model has {metric}")
        if dataset is not None:
            scored = {m: v[dataset] for m, v in table.items() if dataset in v}
        else:
            scored = {m: sum(v.values()) / len(v) for m, v in table.items()}
        model = max(scored, key=lambda m: (scored[m] if not math.isnan(scored[m]) else -math.inf))
        return model, scored[model]

    def table(self, metrics: Sequence[str] | None = None, digits: int = 3) -> str:
        """A plain-text table, one row per (model, dataset)."""
        metrics = list(metrics or self.metrics)
        head = ["model", "dataset", *metrics]
        body = [[str(r["model"]), str(r["dataset"]), *(_fmt(r.get(m), digits) for m in metrics)] for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(cells, widths))) for cells in [head, *body]]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the rows as CSV (atomically)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["model", "dataset", *self.metrics], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return write_text_atomic(path, buf.getvalue())

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the rows as a JSON list (atomically; NaN becomes null)."""
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.rows]
        return write_text_atomic(path, json.dumps(rows, indent=1))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Results:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls([{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows])


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def named_models(models: Mapping[str, ModelLike] | Sequence[ModelLike] | ModelLike) -> dict[str, ModelLike]:
    """``{label: model}``; labels from ``model_label``, made unique with ``#2``, ``#3``..."""
    if isinstance(models, Mapping):
        return {str(k): v for k, v in models.items()}
    items = [models] if isinstance(models, (str, os.PathLike, torch.nn.Module, LoadedModel)) or hasattr(models, "predictor") else list(models)
    out: dict[str, ModelLike] = {}
    for m in items:
        label = base = model_label(m)
        n = 1
        while label in out:
            n += 1
            label = f"{base}#{n}"
        out[label] = m
    return out


def training_imgsz(model: ModelLike) -> int:
    """The image size a model was trained at (640 when its checkpoint does not say)."""
    if isinstance(model, LoadedModel):
        return int(model.train_args.get("imgsz") or 640)
    source, _ = source_module(model)
    return int((getattr(source, "args", None) or {}).get("imgsz") or 640)


def evaluate(models: Mapping[str, ModelLike] | Sequence[ModelLike] | ModelLike, data: str | os.PathLike | Sequence[str | os.PathLike], **evaluator_kwargs: Any) -> Results:
    """Score every model on every dataset (one ``Evaluator``: validators and batches built once) → ``Results``.

    Without ``imgsz``, the first model's training image size is used, as ``YOLO(path).val()`` does. With
    ``per_image=True`` the results keep each (model, dataset)'s per-image statistics in ``Results.images``
    (``yolo_taskvec.bootstrap``: intervals over the val images).
    """
    from .checkpoint import resolve_weights

    named = named_models(models)
    for model in named.values():  # a missing file fails before any dataset is decoded
        if isinstance(model, (str, os.PathLike)):
            resolve_weights(model, (".pt", ".safetensors"))
    if evaluator_kwargs.get("imgsz") is None and named:  # as YOLO(path).val(): the model's training size
        evaluator_kwargs["imgsz"] = training_imgsz(next(iter(named.values())))
    evaluator = Evaluator(data, **evaluator_kwargs)
    rows, images = [], {}
    for name, model in named.items():
        for dataset, values in evaluator(model).items():
            rows.append({"model": name, "dataset": dataset, **values})
            if evaluator.per_image:
                images[(name, dataset)] = evaluator.image_stats[dataset]
    return Results(rows, images)
