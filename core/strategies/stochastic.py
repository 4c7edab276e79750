"""Stochastic batch acquisition (Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron & Gal, "Stochastic Batch
Acquisition: A Simple Baseline for Deep Active Learning", TMLR 2023).

Top-k of a single-item score takes k near-copies of the same information. Sampling the batch instead, with the
better-scored items more likely, costs nothing extra and is competitive with BatchBALD and BADGE. The batch is k
draws WITHOUT replacement from

- ``power``: ``p_i ∝ s_i^beta`` (the paper's PowerBALD / PowerEntropy; scores must be >= 0),
- ``softmax``: ``p_i ∝ exp(beta s_i)``,
- ``softrank``: ``p_i ∝ rank_i^-beta`` (rank 1 = the highest score; only the order of the scores matters),

taken, as in the paper, by the Gumbel-top-k trick: the top-k of ``log p_i + g_i`` with ``g_i ~ Gumbel(0, 1)``
i.i.d. (equivalently the paper's ``s_i + Gumbel(0, 1/beta)`` etc., scaled by ``beta``) is a sample of k items
without replacement, in draw order, from ``p``. ``beta = 1`` by default (the paper's default); ``beta -> inf``
tends to plain top-k, ``beta -> 0`` to uniform random.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab.errors import UserError
from activelab.protocol import Candidates, Context, ItemId, Picks, ScoreStream, candidate_ids, collect_scores

from .selectors import random_k, top_k

_TINY = np.finfo(np.float64).tiny


def perturbed(scores: np.ndarray, mode: str, beta: float, rng: np.random.Generator) -> np.ndarray:
    """``log p_i + Gumbel(0, 1)`` up to a constant, for the ``mode``'s ``p`` (see the module doc); its top-k is a
    draw without replacement. NaN scores stay NaN (they rank last). ``ValueError`` for a negative score under
    ``power``."""
    s = np.asarray(scores, dtype=np.float64)
    noise = rng.gumbel(size=len(s))
    if mode == "softmax":
        return beta * s + noise
    if mode == "power":
        if np.any(s < 0):
            raise UserError(f"selector stochastic (mode: power) needs non-negative scores (p = s^beta), got "
                            f"{np.nanmin(s):.6g}; use mode: softmax or softrank for scores that can be negative "
                            f"(margin)")
        return beta * np.log(np.maximum(s, _TINY)) + noise
    if mode == "softrank":
        order = np.lexsort((np.arange(len(s)), -s))              # best first; ties to the lower position; NaN last
        rank = np.empty(len(s))
        rank[order] = np.arange(1, len(s) + 1)
        out = -beta * np.log(rank) + noise
        out[np.isnan(s)] = np.nan
        return out
    raise ValueError(f"unknown mode {mode!r}; one of power, softmax, softrank")


class StochasticBatch:
    """Stochastic batch acquisition (Kirsch et al. 2023) over any scorer: k candidates sampled without replacement
    with ``p_i ∝ s_i^beta`` (``power``), ``exp(beta s_i)`` (``softmax``) or ``rank_i^-beta`` (``softrank``), by the
    Gumbel-top-k trick with noise from ``ctx.rng("stochastic")`` (reproducible, and the same on a resumed run).

    - Picks come in draw order; :attr:`Picks.scores` are the picked items' ORIGINAL scores (not the perturbed ones),
      so the recorded batch says how informative the scorer found each item.
    - ``power`` needs scores >= 0 (BALD, entropy, least confidence): a negative score is a :class:`UserError`. A
      zero score gets probability ~0: such items come after every positive one, in random order among themselves.
    - NaN scores are drawn last (as :class:`~.selectors.TopK` ranks them), in position order.
    - No scores yet (the first batch): k candidates uniformly at random, as :class:`~.selectors.TopK`.

    Memory: the N scores are collected (float64, chunk by chunk; a measure block is measured on the way) and one
    N-vector of perturbed scores; the top-k then keeps O(k).
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        mode: Literal["power", "softmax", "softrank"] = Field(
            "power", description="p ∝ score^beta (scores >= 0), exp(beta * score), or rank^-beta")
        beta: float = Field(1.0, gt=0.0, description="inverse temperature: large = close to top-k, small = random")

    allows_repeats = False

    def __init__(self, config: Config | None = None, env: object = None):
        self.config = config or self.Config()

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> Sequence[ItemId]:
        return available if isinstance(available, Candidates) else list(available)

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> Picks:
        if scores is None:
            return random_k(candidates, k, ctx)
        n = len(candidates)
        if k <= 0 or n == 0:
            return Picks([], [], [])
        values = collect_scores(scores)
        if len(values) != n:
            raise ValueError(f"the scorer returned {len(values)} scores for {n} candidates")
        keys = perturbed(values, self.config.mode, self.config.beta, ctx.rng("stochastic"))
        positions, _ = top_k(keys, k, n)
        return Picks(candidate_ids(candidates, positions), positions, values[positions])
