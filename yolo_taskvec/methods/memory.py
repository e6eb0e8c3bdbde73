"""Fresh memory for merged tensors: large CPU outputs on transparent huge pages where the system offers them.

A merge writes one new model. On CPU, first writing fresh memory costs a page fault per 4 KiB page (about as much as
reading the inputs once on yolo26x); memory advised for transparent huge pages (Linux ``MADV_HUGEPAGE``, the
kernel's ``madvise`` mode) takes one fault per 2 MiB and halves that cost. ``arena(nbytes)`` (the merge driver's)
reserves one such mapping for a whole merge: outputs from ``ARENA_MIN`` bytes are cut from it, each a tensor with
its own storage (no two share one; the mapping lives while any of them does). Outside an arena, a tensor from
``HUGE_PAGE`` bytes gets its own mapping. Mappings start on a huge-page boundary (they are 2 MiB larger than
asked); untouched address space costs nothing, so no memory is added. Anywhere else (other devices, small tensors,
other systems, a failing mapping): ``torch.empty``.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import threading
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch

HUGE_PAGE = 1 << 21  # bytes; outside an arena, tensors of at least this size get their own advised mapping
ARENA_MIN = 1 << 16  # bytes; smaller outputs come from the allocator's heap (reused memory, no page faults)
ALIGN = 64  # bytes: arena pieces start on cache lines
T = TypeVar("T")
_ADVISE = getattr(mmap, "MADV_HUGEPAGE", None)
_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)


def empty(shape: torch.Size | tuple[int, ...], *, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` on ``like``'s device (dtype ``like``'s unless given); on CPU
    from ``ARENA_MIN`` bytes up cut from the current ``arena``, else from ``HUGE_PAGE`` bytes up in its own mapping
    advised for huge pages."""
    dtype = dtype or like.dtype
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    if like.device.type == "cpu" and nbytes >= ARENA_MIN:
        reserve = getattr(_LOCAL, "arena", None)
        out = reserve.take(numel, dtype) if reserve is not None else _Mapping(nbytes).take(numel, dtype) if nbytes >= HUGE_PAGE else None
        if out is not None:
            return out.view(shape)
    return torch.empty(shape, dtype=dtype, device=like.device)


class _Mapping:
    """A private anonymous mapping of at least ``nbytes`` starting on a huge-page boundary, advised for huge pages
    (where the system allows it), handed out front to back as tensors with their own storage."""

    def __init__(self, nbytes: int):
        self.buffer, self.used, self.end = None, 0, 0
        if _ADVISE is None or not _FLAGS:
            return
        try:
            buffer = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=_FLAGS)
            start = -torch.frombuffer(buffer, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE
            buffer.madvise(_ADVISE, start, nbytes // HUGE_PAGE * HUGE_PAGE)  # a last partial huge page: 4 KiB pages
        except (OSError, ValueError, TypeError):
            return
        self.buffer, self.used, self.end = buffer, start, start + nbytes

    def take(self, numel: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The next ``numel`` entries as a tensor (keeping the mapping alive), or None when it is full or failed."""
        nbytes = numel * dtype.itemsize
        if self.buffer is None or self.used + nbytes > self.end:
            return None
        out = torch.frombuffer(self.buffer, dtype=dtype, count=numel, offset=self.used)
        self.used += -(-nbytes // ALIGN) * ALIGN
        return out


_LOCAL = threading.local()


@contextlib.contextmanager
def arena(nbytes: int) -> Iterator[None]:
    """Within (this thread): CPU outputs from ``ARENA_MIN`` bytes are cut from one mapping of ``nbytes`` (plus
    alignment) advised for huge pages; once it is full, ``empty`` falls back to its other sources."""
    previous = getattr(_LOCAL, "arena", None)
    _LOCAL.arena = _Mapping(nbytes) if nbytes > 0 else None
    try:
        yield
    finally:
        _LOCAL.arena = previous


def arena_size(sizes: Sequence[int]) -> int:
    """Bytes an ``arena`` needs for outputs of ``sizes`` bytes: those that ``empty`` cuts from it (from
    ``ARENA_MIN`` bytes), each rounded up to ``ALIGN``, so the arena is filled exactly."""
    return sum(-(-n // ALIGN) * ALIGN for n in sizes if n >= ARENA_MIN)


def runs(items: Sequence[T], sizes: Sequence[int], limit: int) -> list[list[T]]:
    """``items`` cut into consecutive runs whose ``sizes`` add up to at most ``limit`` (an item larger than
    ``limit`` is a run of its own)."""
    out: list[list[T]] = []
    total = 0
    for item, n in zip(items, sizes):
        if not out or total + n > limit:
            out.append([])
            total = 0
        out[-1].append(item)
        total += n
    return out


def flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a 1-D tensor (a view where it can be; a 1-D tensor itself, without a call)."""
    return t if t.dim() == 1 else t.reshape(-1)


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(t)`` (contiguous), large CPU tensors on huge pages (see ``empty``)."""
    return empty(t.shape, like=t)


_POOL = threading.local()


def scratch(name: str, rows: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A ``(rows, size)`` scratch buffer kept between calls (per thread, name, dtype and device), so the chunk
    buffers of a merge are not allocated, page-faulted and freed again for every tensor. Contents are undefined."""
    pool = getattr(_POOL, "buffers", None)
    if pool is None:
        pool = _POOL.buffers = {}
    key = (name, dtype, str(device))
    buf = pool.get(key)
    if buf is None or buf.shape[0] < rows or buf.shape[1] < size:
        buf = pool[key] = torch.empty(max(rows, buf.shape[0] if buf is not None else 0), max(size, buf.shape[1] if buf is not None else 0), dtype=dtype, device=device)
    return buf[:rows, :size]


def views(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into consecutive contiguous tensors shaped as ``like`` (``as_strided``: cheaper than split + view)."""
    out, offset = [], 0
    for t in like:
        out.append(flat.as_strided(t.shape, t.stride() if t.is_contiguous() else _strides(t.shape), offset))
        offset += t.numel()
    return out


def _strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))
