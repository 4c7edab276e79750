"""Monte-Carlo dropout on any ``nn.Module``: what a task's ``predict`` uses to answer ``mc=MC(mode=...)``.

Two kinds of committee (see :class:`activelab.protocol.MC`):

- ``"dropout"`` (Gal et al.): a fresh mask for every item and every pass. Masks come from a ``torch.Generator``
  seeded by ``(seed, member, chunk)`` as given on entry, which runs on for the whole ``with`` block: the same
  calls in the same order give the same masks (reproducible) and no two items or passes share one. Enter the
  block once per chunk with ``chunk=<its index>`` (as below), or once around the whole ``predict`` call.
- ``"batchwise"`` (Ducoffe & Precioso 2015): ONE mask per member and dropout module, of shape
  ``(1, *feature_shape)``, drawn from a generator seeded by ``(seed, member, module)``. Member ``t`` is therefore
  the same partial network for every item of every chunk, and for every ``with`` block given the same seed.
  (Inputs whose feature shape varies, e.g. sequences of varying length, get one mask per feature shape.)

Only ``nn.Dropout`` (element-wise) and ``nn.Dropout1d/2d/3d`` (channel-wise) modules are switched on; everything
else stays in eval mode (BatchNorm keeps its running statistics) and every module's mode is restored on exit.
Dropout applied functionally inside a ``forward`` (``F.dropout(x, training=self.training)`` in a module that is not
one of those) is not touched. A task's predict (a generator) looks like::

    for n, x in enumerate(batches):
        with mc_dropout(self.model, mc.mode, mc.seed, chunk=n) as drop:
            probs = torch.stack([self.model(x).softmax(-1) for _ in drop.members(mc.samples)])  # (T, B, C)
        yield {"probs": probs.cpu().numpy()}

Closing the block before each ``yield`` means the model is never left in MC mode while the caller holds the
generator (a stream selector may stop reading it at any chunk).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from activelab.protocol import TORCH_SEED_BOUND, seed_for

MODES = ("dropout", "batchwise")
CHANNELWISE = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
DROPOUT = (nn.Dropout, *CHANNELWISE)


class MCDropout:
    """The state of one :func:`mc_dropout` block: which member is active, and the masks' random streams."""

    def __init__(self, mode: str, seed: int, member: int = 0, chunk: int = 0):
        self.mode = mode
        self.seed = seed
        self.member = member           # batchwise: the partial network used by the next forward pass
        self._stream = (member, chunk)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

    def members(self, n: int) -> Iterator[int]:
        """Iterate over committee members ``0 .. n-1``, making each the active one in turn."""
        for t in range(n):
            self.member = t
            yield t

    def mask(self, index: int, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A 0/1 keep-mask for ``x`` entering dropout module number ``index`` (broadcastable to ``x``)."""
        shape = tuple(x.shape)
        if isinstance(module, CHANNELWISE):
            shape = shape[:2] + (1,) * (x.dim() - 2)
        keep = 1.0 - float(module.p)
        if self.mode == "batchwise":
            key = (index, self.member, shape[1:], x.device, x.dtype)
            if key not in self._masks:
                seed = seed_for(self.seed, "batchwise", self.member, index, below=TORCH_SEED_BOUND)
                gen = torch.Generator().manual_seed(seed)
                draw = torch.empty((1, *shape[1:])).bernoulli_(keep, generator=gen)
                self._masks[key] = draw.to(device=x.device, dtype=x.dtype)
            return self._masks[key]
        gen = self._generators.get(x.device)
        if gen is None:
            seed = seed_for(self.seed, "dropout", *self._stream, below=TORCH_SEED_BOUND)
            gen = torch.Generator(device=x.device).manual_seed(seed)
            self._generators[x.device] = gen
        return torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(keep, generator=gen)


def _masked_forward(module: nn.Module, index: int, state: MCDropout) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        p = float(module.p)
        if p == 0.0:
            return x
        if p >= 1.0:
            return torch.zeros_like(x)
        return x * state.mask(index, module, x) / (1.0 - p)   # inverted dropout, as nn.Dropout in train mode

    return forward


@contextmanager
def mc_dropout(model: nn.Module, mode: str = "dropout", seed: int = 0, member: int = 0,
               chunk: int = 0) -> Iterator[MCDropout]:
    """Within the block, ``model``'s dropout modules drop with masks this helper controls; see the module doc.

    Yields an :class:`MCDropout`: set ``.member`` (or loop over ``.members(T)``) to pick the batchwise member.
    ``chunk`` only seeds the ``"dropout"`` mode's masks (batchwise masks must not depend on the chunk).
    Raises ``ValueError`` for an unknown mode or a model without dropout modules (MC dropout would silently
    return T identical passes).
    """
    if mode not in MODES:
        raise ValueError(f"mc_dropout: mode must be one of {', '.join(MODES)}, got {mode!r}")
    drops = [m for m in model.modules() if isinstance(m, DROPOUT)]
    if not drops:
        raise ValueError(f"mc_dropout: {type(model).__name__} has no nn.Dropout modules to sample masks for")
    state = MCDropout(mode, seed, member, chunk)
    modes = [(m, m.training) for m in model.modules()]
    patched: list[tuple[nn.Module, object]] = []
    model.eval()
    try:
        for index, module in enumerate(drops):
            module.train()
            patched.append((module, module.__dict__.get("forward")))
            module.forward = _masked_forward(module, index, state)
        yield state
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own
        for module, training in modes:
            module.training = training
