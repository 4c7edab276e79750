"""The network both tabular tasks use, how it is trained, and how it forms a committee.

A small MLP (two hidden layers, dropout after the first) is enough for tables of a few hundred rows. Everything
random is drawn from generators seeded by the caller (the task passes seeds made from ``(seed, round, purpose)``
with :func:`activelab.protocol.seed_for`), so a fit, a committee and every dropout mask are the same in every
process, on a resumed run as on an uninterrupted one, and the global torch RNG is never touched by training.

Dropout is explicit: :meth:`MLP.forward` takes the mask to apply (or none). Training draws a fresh mask per
step; MC dropout draws the masks of a committee with :func:`dropout_masks`. One code path, no ``model.train()``
/ ``model.eval()`` switching to forget.

Committees (what the core calls ``MC``):

- ``"dropout"``: the trained network under ``samples`` dropout masks, a fresh mask per row and pass (Gal et al.);
  BALD uses it.
- ``"batchwise"``: one mask per member, shared by every row: member t is the same sub-network for the whole pool
  (Ducoffe & Precioso 2015); the core's ``qbc`` uses it.
- ``"bootstrap"``: separate networks, each trained on a bootstrap resample of the labels (the task's
  ``fit_bootstrap``); ``qbc`` with ``members: bootstrap`` and this plugin's ``committee_variance`` use it.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from activelab.protocol import MC, seed_for

MC_MODES = ("dropout", "batchwise", "bootstrap")


class ModelConfig(BaseModel):
    """The network and its training: the fields every tabular task's ``params`` share."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(32, ge=1, description="width of the MLP's two hidden layers")
    dropout: float = Field(0.3, ge=0.0, lt=1.0,
                           description="dropout after the first hidden layer, in training and for MC dropout")
    epochs: int = Field(100, ge=1, description="full-batch Adam steps per fit (each step sees every labelled row)")
    lr: float = Field(0.005, gt=0.0, description="Adam learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, description="Adam weight decay (L2 penalty)")
    chunk_size: int = Field(256, ge=1, description="rows per predict() chunk")


class MLP(nn.Module):
    """``x -> Linear -> ReLU -> dropout -> Linear -> ReLU -> h -> Linear -> out``.

    ``forward`` returns ``(out, h)``: ``h`` is the input of the linear head, which is what the core's embedding
    scorers (k-center, density) and expected gradient length expect as ``EMBEDDINGS``. ``out`` is
    ``head(h) * target_std + target_mean``: a regression task sets these two buffers to the mean and spread of
    its labelled targets so the network starts by predicting their mean; a classifier leaves them at 0 and 1.
    Being buffers, they travel with ``state_dict`` like the weights.
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, dropout: float):
        super().__init__()
        self.p = dropout
        self.hidden1 = nn.Linear(d_in, hidden)
        self.hidden2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)
        self.register_buffer("target_mean", torch.tensor(0.0))
        self.register_buffer("target_std", torch.tensor(1.0))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask``: multiplies the first hidden layer (already scaled by ``1 / (1 - p)``); None = no dropout."""
        h = torch.relu(self.hidden1(x))
        if mask is not None:
            h = h * mask
        h = torch.relu(self.hidden2(h))
        return self.head(h) * self.target_std + self.target_mean, h


def new_model(d_in: int, d_out: int, cfg: ModelConfig, seed: int, device: torch.device) -> MLP:
    """A freshly initialised network; the initial weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):      # seed the CPU generator here without disturbing anyone else's
        torch.manual_seed(seed)
        model = MLP(d_in, cfg.hidden, d_out, cfg.dropout)
    return model.to(device)


def dropout_masks(p: float, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Inverted-dropout masks: each entry is 0 with probability ``p``, else ``1 / (1 - p)``. Drawn on the CPU
    from ``generator`` (the same numbers on every device), then moved to ``device``."""
    keep = torch.rand(tuple(shape), generator=generator) >= p
    return (keep.float() / (1.0 - p)).to(device)


def train(model: MLP, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
          cfg: ModelConfig, seed: int) -> float:
    """Full-batch Adam for ``cfg.epochs`` steps, a fresh dropout mask per step drawn from ``seed``. Returns the
    loss of the last step. With no rows the model is left as initialised and the loss is NaN."""
    if len(x) == 0:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.epochs):
        mask = dropout_masks(model.p, (len(x), model.hidden1.out_features), generator, x.device)
        optimizer.zero_grad()
        loss = loss_fn(model(x, mask)[0], y)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def check_mc(mc: MC | None, n_members: int) -> None:
    """Refuse an MC request this model cannot serve, with a message that says why (``ValueError``)."""
    if mc is None:
        return
    if mc.mode not in MC_MODES:
        raise ValueError(f"unknown MC mode {mc.mode!r}; available: {', '.join(MC_MODES)}")
    if mc.samples < 1:
        raise ValueError(f"MC needs samples >= 1, got {mc.samples}")
    if mc.mode == "bootstrap" and mc.samples > n_members:
        raise ValueError(f"MC(mode='bootstrap', samples={mc.samples}) needs fit_bootstrap(labels, {mc.samples}, "
                         f"seed) first; {n_members} members are trained")


def committee_chunks(model: MLP, members: Sequence[MLP], x: torch.Tensor, mc: MC | None,
                     chunk_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(out, h)`` for consecutive chunks of the rows of ``x``: shapes ``(B, ...)`` without ``mc``, and
    ``(T, B, ...)`` with it (one slice per committee member). Runs under inference mode."""
    if mc is not None and mc.mode == "batchwise":   # one mask per member for the whole pool: drawn once
        masks = dropout_masks(model.p, (mc.samples, 1, model.hidden1.out_features),
                              torch.Generator().manual_seed(seed_for(mc.seed, "batchwise")), x.device)
    for n, start in enumerate(range(0, len(x), chunk_size)):
        rows = x[start:start + chunk_size]
        with torch.inference_mode():
            if mc is None:
                yield model(rows)
                continue
            if mc.mode == "bootstrap":
                passes = [member(rows) for member in members[: mc.samples]]
            elif mc.mode == "batchwise":
                passes = [model(rows, masks[t]) for t in range(mc.samples)]
            else:                                   # "dropout": a fresh mask per row and pass, seeded per chunk
                generator = torch.Generator().manual_seed(seed_for(mc.seed, "dropout", n))
                fresh = dropout_masks(model.p, (mc.samples, len(rows), model.hidden1.out_features), generator,
                                      x.device)
                passes = [model(rows, fresh[t]) for t in range(mc.samples)]
            yield torch.stack([out for out, _ in passes]), torch.stack([h for _, h in passes])
