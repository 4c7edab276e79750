"""Training on every worker process together (DistributedDataParallel), for a task that declares
``fits_distributed = True`` (:mod:`activelab.hooks`) and runs with ``--nproc`` / torchrun (:mod:`activelab.distributed`).

Every rank runs the same ``fit``: the same seeds, the same minibatches in the same order. Each minibatch is then
cut into one contiguous part per rank (:func:`part`); a rank computes the SUM of its part's per-item losses times
:func:`factor` (``world size / minibatch size``) and DDP averages the ranks' gradients, so the step is the
gradient of the whole minibatch's MEAN loss, on every rank alike; with one process the same code is the plain
mean. A rank whose part is empty (a minibatch smaller than the number of ranks) still runs the forward pass on
zero items, so every rank takes part in every gradient exchange. What differs from one process: the order of
float sums, and batch norm, whose batch statistics each rank takes over its own part (SyncBatchNorm would share
them; not used, as in most DDP training).

Usage inside a task's training loop::

    net = ddp.wrap(self.model)                 # the model itself on one process
    for rows in minibatches:
        mine = ddp.part(rows)
        loss = F.cross_entropy(net(x[mine]), y[mine], reduction="sum") * ddp.factor(len(rows))
        loss.backward(); optimizer.step()
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from activelab.distributed import world


def active() -> bool:
    """True when this process is one of several in a process group."""
    return world()[1] > 1


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel when several processes train together (parameters broadcast from rank
    0 now, gradients averaged at every backward); ``model`` itself on one process. Use the wrapper for training
    forwards only; the model keeps every attribute of its own."""
    if not active():
        return model
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def part(rows: Any) -> Any:
    """This rank's contiguous share of a minibatch's rows (an array, tensor or list; all of it on one process)."""
    rank, ranks = world()
    if ranks == 1:
        return rows
    n = len(rows)
    start, stop = rank * n // ranks, (rank + 1) * n // ranks
    return rows[start:stop]


def factor(batch_size: int) -> float:
    """What a rank's summed per-item loss is multiplied by: ``world size / batch_size``."""
    return world()[1] / max(int(batch_size), 1)


def same_everywhere(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds the same values on every rank (a check for tests and debugging)."""
    if not active():
        return True
    import torch.distributed as dist

    flat = tensor.detach().float().reshape(-1).cpu()
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


