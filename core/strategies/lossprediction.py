"""Learning loss (Yoo & Kweon, CVPR 2019): ask first about the items whose loss the task's loss-prediction module
expects to be highest. Task-independent: the module (``activelab.torchkit.lossnet``) is a task's, trained with its
model; this scorer reads its estimate, the well-known output ``predicted_loss`` (the vision classification task
with ``loss_prediction`` on, the speech recognition task).

A ranking-trained estimate has no fixed offset or scale: only its order within one round means anything, which is
all a top-k selector uses. The paper scores a random subset of the pool each cycle (10,000 items of CIFAR-10):
pair this scorer with the ``subsample`` selector for that.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab.protocol import PREDICTED_LOSS, PREDICTED_LOSS_NORM, Context, Env, ItemId, Task

from .uncertainty import score_chunks


class PredictedLoss:
    """The task's predicted loss per candidate (higher = ask first)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        normalise: bool | None = Field(None, description=(
            "true: rank by the estimate of the loss per unit of the item's length (predicted_loss_per_second: the "
            "speech task's head trained on the loss per second of audio); false: by the estimate of the item's "
            "loss (predicted_loss); unset: the length-normalised one where the task offers it, else the other"))

    def __init__(self, config: BaseModel | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs = frozenset({PREDICTED_LOSS_NORM if self.config.normalise else PREDICTED_LOSS})

    def output(self, task: Task) -> str:
        """The output this scorer ranks ``task``'s candidates by."""
        if self.config.normalise is None and PREDICTED_LOSS_NORM in task.outputs:
            return PREDICTED_LOSS_NORM
        return next(iter(self.needs))

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        name = self.output(task)
        return score_chunks(task, candidates, {name}, lambda out: out[name])
