"""Detection scorers: one float per image, higher = ask first. They read the per-image scores the detection task
computes from its head (:mod:`.task`'s outputs), chunk by chunk, with the core's :func:`score_chunks`.

- ``miaod``: MI-AOD's image uncertainty, the mean of the ``top_k`` largest anchor discrepancies
  ``mean_c (s(f1) - s(f2))^2`` between the two adversarial classifiers (``mil: false``, as the official code), or
  the same with the MIL instance weights applied (``mil: true``, as the paper's text).
- ``anchor_entropy``: the binary entropy of the averaged classifiers' scores per anchor, averaged (``mean``) or
  maximised (``max``) over the image's anchors: the plain uncertainty-sampling baseline for a detector.
"""
from __future__ import annotations

from typing import Collection, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from activelab.protocol import Context, Env, ItemId, Task
from activelab.strategies.uncertainty import score_chunks

from .task import ANCHOR_ENTROPY_MAX, ANCHOR_ENTROPY_MEAN, MIAOD_UNCERTAINTY, MIAOD_UNCERTAINTY_MIL


class MIAODUncertainty:
    """MI-AOD's selection score (Yuan et al. 2021): disagreement of the two adversarial classifiers."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        mil: bool = False     # weight the anchor discrepancies by the MIL instance weights (the paper's text)

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.output = MIAOD_UNCERTAINTY_MIL if self.config.mil else MIAOD_UNCERTAINTY
        self.needs: Collection[str] = frozenset({self.output})

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        name = self.output
        return score_chunks(task, candidates, {name}, lambda out: out[name])


class AnchorEntropy:
    """Mean (or max) over an image's anchors of the binary entropy of its class scores."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        reduce: Literal["mean", "max"] = "mean"

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.output = ANCHOR_ENTROPY_MAX if self.config.reduce == "max" else ANCHOR_ENTROPY_MEAN
        self.needs: Collection[str] = frozenset({self.output})

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        name = self.output
        return score_chunks(task, candidates, {name}, lambda out: out[name])
