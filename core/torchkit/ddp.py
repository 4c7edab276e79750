"""Training on every worker process together (DistributedDataParallel), for a task that declares
``fits_distributed = True`` (:mod:`activelab.hooks`) and runs with ``--nproc`` or torchrun
(:mod:`activelab.distributed`).

Every rank runs the same ``fit``: the same seeds, the same minibatches in the same order. :func:`share` cuts
each minibatch into one contiguous part per rank and says what to multiply the SUM of the part's per-item losses
by (``world size / minibatch size``): DDP averages the ranks' gradients, so the step is the gradient of the whole
minibatch's MEAN loss, on every rank alike; with one process the same code is the plain mean. A minibatch with
fewer items than ranks is not cut: every rank computes all of it (factor ``1 / size``), and the average of equal
gradients is that gradient. What differs from one process: the order of float sums, batch norm (each rank's batch
statistics are over its own part; SyncBatchNorm would share them, not used here as in most DDP training) and
any loss over pairs of items, whose pairs form within a part.

Usage inside a task's training loop::

    net = ddp.wrap(self.model)                 # the model itself on one process
    for rows in minibatches:
        mine, factor = ddp.share(rows)
        loss = F.cross_entropy(net(x[mine]), y[mine], reduction="sum") * factor
        loss.backward(); optimizer.step()
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from activelab.distributed import training_together, world


def active() -> bool:
    """True inside a fit every worker runs at once (several processes and the recipe's ``loop.train_on_all``);
    otherwise the task trains alone (rank 0, or one process) and these helpers change nothing."""
    return world()[1] > 1 and training_together()


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


def share(rows: Any) -> tuple[Any, float]:
    """This rank's contiguous part of a minibatch's rows (an array, tensor or list) and the factor for the sum of
    its per-item losses; ``(rows, 1 / len(rows))`` on one process or when there are fewer rows than ranks."""
    rank, ranks = world()
    n = len(rows)
    if not active() or n < ranks:
        return rows, 1.0 / max(n, 1)
    return rows[rank * n // ranks:(rank + 1) * n // ranks], ranks / n


def same_everywhere(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds the same values on every rank (a check for tests and debugging)."""
    if world()[1] == 1:
        return True
    import torch.distributed as dist

    flat = tensor.detach().float().reshape(-1).cpu()
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


