"""Optimizers from a few settings: what a task's config names (``optimizer: adam``, ``lr``, ...) made into a
``torch.optim.Optimizer`` in one place."""
from __future__ import annotations

from typing import Iterable

import torch

KINDS = ("adam", "adamw", "sgd")


def build_optimizer(params: Iterable[torch.nn.Parameter], kind: str = "adam", *, lr: float,
                    weight_decay: float = 0.0, momentum: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8) -> torch.optim.Optimizer:
    """``kind``: ``adam`` (``betas``, ``eps``, L2 ``weight_decay``), ``adamw`` (the same with decoupled weight
    decay) or ``sgd`` (``momentum``). Parameters that do not require a gradient are left out (a frozen backbone).
    The defaults are torch's, except AdamW's weight decay, which is 0 here as everywhere else."""
    trainable = [p for p in params if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam(trainable, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(trainable, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}; available: {', '.join(KINDS)}")
