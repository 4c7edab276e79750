"""Scorers for speech recognition (higher = ask a transcriber first). Random sampling is the core's ``random``.

- ``predicted_loss`` (the core's, :mod:`activelab.strategies.lossprediction`, shared with the vision plugin): the
  loss-prediction module's estimate of the utterance's CTC loss (Yoo & Kweon's learning loss, applied to ASR as by
  Luo et al. 2021). Left unset, or ``normalise: true``, as the card recommends, it ranks by the head trained on the
  loss per second of audio; ``false`` by the head trained on the raw utterance loss, which favours long utterances.
- ``ctc_least_confidence``: ``1 - exp(mean_t log max_k p_t(k))``, one minus the geometric-mean confidence of the
  best CTC path's frames (length-normalised).
- ``ctc_entropy``: the mean entropy of the CTC posteriors over the utterance's frames.
"""
from __future__ import annotations

from typing import Collection, Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from activelab.protocol import Context, Env, ItemId, Task
from activelab.strategies.lossprediction import PredictedLoss  # noqa: F401  (the core's; re-exported)
from activelab.strategies.uncertainty import score_chunks

from .task import CTC_ENTROPY, CTC_LEAST_CONFIDENCE


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Output:
    """A scorer that reads one per-utterance output of the task."""

    Config = _NoParams
    output: str

    def __init__(self, config: BaseModel | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs: Collection[str] = frozenset({self.output})

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        return score_chunks(task, candidates, self.needs, lambda out: out[self.output])


class CTCLeastConfidence(_Output):
    """Length-normalised least confidence of the best CTC path."""

    output = CTC_LEAST_CONFIDENCE


class CTCEntropy(_Output):
    """Mean frame entropy of the CTC posteriors."""

    output = CTC_ENTROPY
