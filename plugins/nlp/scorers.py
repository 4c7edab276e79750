"""Scorers for translation (higher = ask a translator first). Random sampling is the core's ``random``.

- ``nll``: the length-normalised negative log-likelihood of the model's own greedy translation, ``-1/|y| sum_k
  log p(y_k | y_<k, x)`` (EOS counted): low = the model is sure of what it would output.
- ``mc_disagreement``: MC-dropout disagreement: the greedy translation ``y`` is decoded once without dropout,
  then scored under ``samples`` dropout passes; the score is the variance of the passes' length-normalised NLL
  divided by its mean (an index of dispersion: how much the "partial networks" disagree about the same output,
  relative to how unlikely they find it). Not BLEU between sampled decodes, which would need ``samples`` decodes.
- ``curriculum_nll``: curriculum active learning: the most uncertain (``nll``) sentences among those whose CDF
  difficulty is within the current query competence ``c(r) = competence(r, rounds, c0, p)`` of round ``r``.
  In-competence sentences score their NLL (>= 0); the others score ``-1 - difficulty`` (< 0), so they come
  only after every in-competence sentence, easiest first (a batch larger than what the competence admits is
  filled with the next-easiest sentences). The query competence grows over AL rounds (it reaches 1 at round
  ``rounds``), while the training sampler's competence grows over the training steps of each round.
"""
from __future__ import annotations

from typing import Collection, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab.protocol import MC, MC_DROPOUT, MC_SEED_BOUND, Context, Env, ItemId, Task, seed_for
from activelab.strategies.uncertainty import score_chunks

from .curriculum import POWERS, competence
from .translation import DIFFICULTY, NLL


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GreedyNLL:
    """Length-normalised NLL of the model's own greedy translation."""

    Config = _NoParams
    needs: Collection[str] = frozenset({NLL})

    def __init__(self, config: BaseModel | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        return score_chunks(task, candidates, {NLL}, lambda out: out[NLL])


def dispersion(nll_passes: np.ndarray) -> np.ndarray:
    """``var_t / mean_t`` over the leading (pass) axis of (T, B) NLLs."""
    p = np.asarray(nll_passes, dtype=np.float64)
    return p.var(axis=0) / np.maximum(p.mean(axis=0), 1e-12)


class MCDisagreement:
    """MC-dropout disagreement about the greedy translation (see the module doc)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        samples: int = Field(10, ge=2, description="MC dropout passes T")

    needs: Collection[str] = frozenset({NLL, MC_DROPOUT})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        seed = seed_for(ctx.seed, ctx.round, "nlp-mc-disagreement", below=MC_SEED_BOUND)
        mc = MC(samples=self.config.samples, mode="dropout", seed=seed)
        return score_chunks(task, candidates, {NLL}, lambda out: dispersion(out[NLL]), mc=mc)


class CurriculumNLL:
    """The most uncertain sentences among those within the current query competence (see the module doc)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rounds: int = Field(5, ge=1, description="query rounds T until every difficulty is allowed")
        competence: Literal["linear", "sqrt"] = "sqrt"
        c0: float = Field(0.01, gt=0, le=1)

    needs: Collection[str] = frozenset({NLL, DIFFICULTY})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def competence(self, round: int) -> float:
        cfg = self.config
        return competence(round, cfg.rounds, cfg.c0, POWERS[cfg.competence])

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        c = self.competence(ctx.round)

        def measure(out):
            d = np.asarray(out[DIFFICULTY], dtype=np.float64)
            return np.where(d <= c, out[NLL], -1.0 - d)

        return score_chunks(task, candidates, {NLL, DIFFICULTY}, measure)
