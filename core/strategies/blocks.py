"""Scores that travel unread: a block of a task's outputs with the name of its measure.

A scorer of the uncertainty family yields :class:`MeasureBlock` chunks instead of score arrays. Any consumer
that wants numbers gets them with ``np.asarray(block)`` (the measure runs then, in :mod:`.kernels`); a top-k
selector hands the block to :meth:`.kernels.TopKAccumulator.push_measure` instead, which computes the measure
and keeps the running top-k in one pass over the probabilities and never materialises the score vector.

Tasks yield their outputs in batches of their own size (a CNN's 128 images) and a scorer passes them on as
such; a top-k selector joins them (:func:`joined`) into blocks of :data:`BLOCK_ROWS` items (fewer where that would
exceed :data:`BLOCK_BYTES`), so the per-call overhead of a kernel is paid once per 64k items and memory stays
bounded, while a stream selector still stops after the batch holding its last pick.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from . import kernels

BLOCK_ROWS = 65536
BLOCK_BYTES = 64 << 20


class MeasureBlock:
    """``kind`` (one of :data:`.kernels.KINDS`) over ``data``: ``(B, C)`` probabilities, or ``(T, B, C)`` for
    ``"bald"``; ``len()`` is the number of items B."""

    __slots__ = ("kind", "data")

    def __init__(self, kind: str, data: np.ndarray):
        self.kind = kind
        self.data = data

    def __len__(self) -> int:
        return int(self.data.shape[1] if self.kind == "bald" else self.data.shape[0])

    @property
    def on_host(self) -> bool:
        """True for numpy data (the fused kernels' input); False for a torch tensor, measured where it lives."""
        return isinstance(self.data, np.ndarray)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        scores = kernels.measure(self.kind, self.data) if self.on_host else torch_measure(self.kind, self.data)
        return scores if dtype is None else scores.astype(dtype, copy=False)


def torch_measure(kind: str, probs: object) -> np.ndarray:
    """The measure of a torch tensor of probabilities, computed with torch on the tensor's device (a task whose
    probabilities are on the GPU does not copy them to the host; only the B scores come back), in float64."""
    import torch

    p = probs.to(torch.float64)                                       # type: ignore[attr-defined]
    if kind == "least_confidence":
        scores = 1.0 - p.amax(dim=-1)
    elif kind == "margin":
        if p.shape[-1] < 2:
            raise ValueError(f"margin needs at least 2 classes, got probabilities of shape {tuple(p.shape)}")
        top2 = p.topk(2, dim=-1).values
        scores = -(top2[..., 0] - top2[..., 1])
    elif kind == "entropy":
        scores = torch.special.entr(p).sum(dim=-1)
    elif kind == "bald":
        scores = (torch.special.entr(p.mean(dim=0)).sum(dim=-1) - torch.special.entr(p).sum(dim=-1).mean(dim=0))
        scores = scores.clamp_min(0.0)
    else:
        raise ValueError(f"unknown measure {kind!r}; one of {', '.join(kernels.KINDS)}")
    return scores.cpu().numpy()


def reblock(arrays: Iterable[np.ndarray], axis: int = 0, rows: int = BLOCK_ROWS,
            max_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Consecutive arrays joined along the item ``axis`` into blocks of ``rows`` items or ``max_bytes``, whichever
    is fewer items (1,000 classes x 20 MC passes would make a 64k block 5 GB); the last block may be smaller. An
    array that is already that large passes through without a copy."""
    pending: list[np.ndarray] = []
    held = 0
    target = rows
    for array in arrays:
        array = np.asarray(array)
        if not pending:
            per_item = array.nbytes // max(1, array.shape[axis])
            target = max(1, min(rows, max_bytes // max(1, per_item)))
            if array.shape[axis] >= target:
                yield array
                continue
        pending.append(array)
        held += array.shape[axis]
        if held >= target:
            yield np.concatenate(pending, axis=axis)
            pending, held = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending, axis=axis)


def joined(chunks: Iterable[object], rows: int = BLOCK_ROWS, max_bytes: int = BLOCK_BYTES) -> Iterator[object]:
    """A score stream with consecutive :class:`MeasureBlock` chunks of one kind joined as :func:`reblock` joins
    arrays (other chunks pass through as they are). A top-k selector reads its stream through this; a stream
    selector does not, so it still stops after the task's batch holding its last pick."""
    run: list[MeasureBlock] = []

    def flush() -> Iterator[MeasureBlock]:
        if run:
            kind = run[0].kind
            axis = 1 if kind == "bald" else 0
            for data in reblock((b.data for b in run), axis=axis, rows=rows, max_bytes=max_bytes):
                yield MeasureBlock(kind, data)
            run.clear()

    held = 0
    for chunk in chunks:
        if isinstance(chunk, MeasureBlock) and chunk.on_host and (not run or chunk.kind == run[0].kind):
            run.append(chunk)
            held += len(chunk)
            per_item = chunk.data.nbytes // max(1, len(chunk))
            if held >= max(1, min(rows, max_bytes // max(1, per_item))):
                yield from flush()
                held = 0
            continue
        yield from flush()
        held = 0
        if isinstance(chunk, MeasureBlock) and chunk.on_host:
            run.append(chunk)
            held = len(chunk)
        else:
            yield chunk
    yield from flush()
