"""BatchNorm recalibration: re-estimate running statistics of a merged model on unlabeled images.

Statistics are reset and re-accumulated as a cumulative average (``momentum=None``) over a bounded number of
letterboxed batches from one or more dataset yamls (their ``train`` split by default, interleaved), with no
gradients and no labels. Everything except the BatchNorm layers stays in eval mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from .data import image_files
from .errors import DataError, TaskVecError


def _interleave(lists: Sequence[list[Path]]) -> list[Path]:
    return [p for group in itertools.zip_longest(*lists) for p in group if p is not None]


def letterboxed_batches(files: Sequence[Path], imgsz: int, batch: int, limit: int) -> Iterator[torch.Tensor]:
    """Float RGB batches (0-1), letterboxed to ``imgsz`` square, at most ``limit`` of them."""
    from ultralytics.data.augment import LetterBox

    box = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)
    chunk: list[np.ndarray] = []
    produced = 0
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            raise DataError(f"image {f} cannot be read.")
        chunk.append(box(image=img)[..., ::-1].transpose(2, 0, 1))
        if len(chunk) == batch:
            yield torch.from_numpy(np.ascontiguousarray(np.stack(chunk))).float() / 255
            chunk, produced = [], produced + 1
            if produced >= limit:
                return
    if chunk:
        yield torch.from_numpy(np.ascontiguousarray(np.stack(chunk))).float() / 255


@torch.no_grad()
def recalibrate(module: torch.nn.Module, data: str | Sequence[str] | None, *, batches: int = 16, batch: int = 16, imgsz: int = 640, split: str = "train", device: str | torch.device | None = None) -> int:
    """Reset and re-estimate every BatchNorm's running statistics in place; returns the images used."""
    if not data:
        raise TaskVecError("bn=recalibrate needs bn_data: one or more dataset yamls whose images re-estimate the BatchNorm statistics.")
    if batches < 1:
        raise TaskVecError(f"bn_batches must be at least 1, got {batches}.")
    yamls = [data] if isinstance(data, (str, Path)) else list(data)
    files = _interleave([image_files(y, split) for y in yamls])
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise TaskVecError("the model has no BatchNorm layers to recalibrate (is it fused?).")
    device = torch.device(device) if device is not None else next(module.parameters()).device
    momenta = [m.momentum for m in bns]
    module.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for x in letterboxed_batches(files, imgsz, batch, batches):
            module(x.to(device, next(module.parameters()).dtype))
            seen += len(x)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        module.eval()
    return seen
