"""Learning loss (Yoo & Kweon, CVPR 2019): a small module attached to a network predicts the network's loss on an
input from the features of several of its stages, trained jointly with it by a pairwise ranking loss; the items
with the highest predicted loss are asked about first (the ``predicted_loss`` scorer). One implementation for every
plugin (the vision classifier's stages, the speech encoder's depths):

- :class:`LossPredictionConfig`: the recipe's ``loss_prediction`` section (hidden width, lambda, margin, when the
  module's gradient stops at the network);
- :class:`LossPredictionModule`: per tapped feature map, global average pooling -> FC(hidden) -> ReLU; the
  results concatenated -> FC -> the predicted loss(es);
- :func:`ranking_loss`: the pair ranking loss, pairs taken by splitting the minibatch in halves;
- :class:`Taps`: the outputs of named submodules recorded during a forward pass (forward hooks), so a plugin
  taps a network's stages without changing the network.

A training step then reads::

    with Taps(model, ("layer1", "layer2", "layer3", "layer4")) as taps:
        logits = model(x)
    losses = F.cross_entropy(logits, y, reduction="none")
    features = [t.detach() for t in taps.outputs] if stop_gradient else taps.outputs
    loss = losses.mean() + cfg.weight * ranking_loss(module(features)[:, 0], losses, cfg.margin)

A plugin whose feature maps need another pooling (the speech plugin's, over the real frames of padded
utterances) pools them itself and hands the module (B, D) vectors, which it takes as they are.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class LossPredictionConfig(BaseModel):
    """The loss-prediction module and its share of the training loss:
    ``target loss + weight * ranking loss``; after ``detach_after`` of the training (the card: epoch 120 of 200)
    the module's gradient stops at the network it reads."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    hidden: int = Field(128, ge=1)             # FC width per tapped depth (card: 128)
    weight: float = Field(1.0, ge=0)           # lambda (card: 1)
    margin: float = Field(1.0, ge=0)           # xi (card: 1)
    detach_after: float | None = Field(0.6, ge=0, le=1)   # fraction of steps; card: epoch 120 of 200; None = never


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C), the mean over every position; a (B, D) vector is returned as it is."""
    if x.dim() < 2:
        raise ValueError(f"a tapped feature needs a batch and a channel axis, got shape {tuple(x.shape)}")
    return x if x.dim() == 2 else x.flatten(2).mean(dim=2)


class LossPredictionModule(nn.Module):
    """Learning-loss module: each tapped feature is globally average-pooled -> FC(hidden) -> ReLU; the results are
    concatenated -> FC -> ``outputs`` predicted losses per item.

    ``dims``: the channel count of each tap, in the order they are passed. Parameters are created in that order
    (one FC per tap, then the output layer), so a seeded construction gives the same weights every time.
    ``outputs`` > 1 gives several final layers sharing the pooled features (the speech plugin ranks the raw loss
    and the loss per second of audio)."""

    def __init__(self, dims: Sequence[int], hidden: int = 128, outputs: int = 1):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.out = nn.Linear(hidden * len(dims), outputs)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The tapped features, (B, C, *spatial) or already pooled (B, D) -> (B, outputs)."""
        if len(features) != len(self.fcs):
            raise ValueError(f"the loss-prediction module reads {len(self.fcs)} taps, got {len(features)}")
        pooled = [F.relu(fc(global_average_pool(f))) for fc, f in zip(self.fcs, features)]
        return self.out(torch.cat(pooled, dim=1))


def ranking_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The learning-loss pair ranking loss. The batch is split into pairs (i, B-1-i) (first half against the
    reversed second half; an odd middle item sits out) and each pair costs
    ``max(0, -sign(l_i - l_j) * (lhat_i - lhat_j) + margin)``; the mean over pairs is returned. ``target`` is
    detached here, so the ranking loss never trains the model through the true losses. (A pair of equal true
    losses costs ``margin`` with no gradient.)"""
    if predicted.shape != target.shape or predicted.dim() != 1:
        raise ValueError(f"ranking_loss needs two 1-d tensors of one shape, got {tuple(predicted.shape)} and "
                         f"{tuple(target.shape)}")
    half = predicted.shape[0] // 2
    if half == 0:
        return predicted.sum() * 0.0
    target = target.detach()
    diff_pred = predicted[:half] - predicted.flip(0)[:half]
    diff_true = target[:half] - target.flip(0)[:half]
    return F.relu(-torch.sign(diff_true) * diff_pred + margin).mean()


class Taps:
    """``with Taps(model, names) as taps:``: the outputs of ``model``'s submodules ``names`` (dotted, as
    ``named_modules`` gives them) during the forward pass inside the block, in the order of ``names``
    (``taps.outputs``). The hooks are removed on exit; the model itself is not changed. Each pass overwrites the
    previous one's outputs."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        missing = [n for n in names if n not in dict(model.named_modules())]
        if missing:
            raise ValueError(f"no submodule {', '.join(missing)} in {type(model).__name__} to tap")
        self.modules = [model.get_submodule(n) for n in names]
        self.names = list(names)
        self._seen: list[torch.Tensor | None] = [None] * len(names)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "Taps":
        for i, module in enumerate(self.modules):
            self._hooks.append(module.register_forward_hook(self._recorder(i)))
        return self

    def _recorder(self, i: int):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._seen[i] = output
        return record

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def outputs(self) -> list[torch.Tensor]:
        """The tapped outputs of the last forward pass (every name must have run)."""
        silent = [n for n, t in zip(self.names, self._seen) if t is None]
        if silent:
            raise RuntimeError(f"the forward pass did not run {', '.join(silent)}")
        return list(self._seen)   # type: ignore[arg-type]


def channels(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[int]:
    """The channel count (axis 1) of each tap of ``model`` on ``example`` (a small batch), for
    :class:`LossPredictionModule`'s ``dims``: one forward pass in eval mode without gradients (no random numbers
    drawn, no batch-norm statistics changed); the model's mode is put back."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), Taps(model, names) as taps:
            model(example)
            return [int(t.shape[1]) for t in taps.outputs]
    finally:
        model.train(training)
