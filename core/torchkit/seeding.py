"""Seeded randomness for torch code that must not disturb anyone else's.

``with seeded(seed, device):`` seeds torch's global generators (the CPU's and, for a CUDA ``device``, that
device's) and puts them back as they were on exit. Everything drawn inside (a network's initialisation, dropout
masks, ``torch.randperm`` without a generator, SpecAugment) is therefore determined by ``seed`` alone, and code
outside the block sees the same random numbers whether or not the block ran. Derive ``seed`` with
:func:`activelab.protocol.seed_for` from the run seed, the round and a stream name::

    with seeded(seed_for(ctx.seed, ctx.round, "vision-fit"), self.device):
        for x, y in batches:
            ...
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def forked_devices(device: torch.device | str | None) -> list[int]:
    """The CUDA device indices whose generators :func:`seeded` saves and restores for ``device`` (none for the
    CPU or any other kind)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Inside the block torch's CPU generator (and ``device``'s, when it is a CUDA device) starts from ``seed``;
    on exit every generator the block forked is restored. ``device=None``: the CPU only, for code that builds
    models on the CPU and moves them afterwards."""
    devices = forked_devices(device)
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)    # as torch.manual_seed, but only the forked ones
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
