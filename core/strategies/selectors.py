"""Selectors: which candidates to score this round, and which of them to ask about (see ``Selector``).

- :class:`TopK`: pool-based, the k highest scores.
- :class:`Subsample`: pool-based on a random subset of the pool (Yoo & Kweon score 10,000 random items).
- :class:`StreamThreshold`: stream-based selective sampling, ask while score > threshold until the budget is spent.
- :class:`Proportional`: query synthesis, k samples shared among generators in proportion to their scores.

Ties are broken by candidate order (the earlier candidate first) everywhere, so selections are reproducible.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab.errors import UserError
from activelab.protocol import Context, ItemId, ScoreStream, collect_scores, iter_chunks


def top_k_indices(scores: ScoreStream, k: int, n: int) -> np.ndarray:
    """Indices of the ``k`` highest of ``n`` scores, best first (ties: lower index first; NaN ranks last).

    Keeps a running top-k over the chunks, so memory is O(k + chunk). Raises ``ValueError`` when the chunks do
    not hold exactly ``n`` scores.
    """
    k = max(0, min(k, n))
    best_s = np.zeros(0)
    best_i = np.zeros(0, dtype=np.int64)
    seen = 0
    for chunk in iter_chunks(scores):
        s = np.concatenate([best_s, np.where(np.isnan(chunk), -np.inf, chunk)])
        i = np.concatenate([best_i, np.arange(seen, seen + len(chunk), dtype=np.int64)])
        seen += len(chunk)
        keep = np.lexsort((i, -s))[:k]
        best_s, best_i = s[keep], i[keep]
    if seen != n:
        raise ValueError(f"the scorer returned {seen} scores for {n} candidates")
    return best_i


def random_k(candidates: Sequence[ItemId], k: int, ctx: Context) -> list[ItemId]:
    """``k`` candidates uniformly at random without repeats (``ctx.rng("initial")``): the uninformed first batch."""
    k = max(0, min(k, len(candidates)))
    return [candidates[i] for i in ctx.rng("initial").choice(len(candidates), size=k, replace=False)]


class TopK:
    """The ``k`` highest-scoring candidates, best first; ``k`` at random when there are no scores yet."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    allows_repeats = False

    def __init__(self, config: BaseModel | None = None, env: object = None):
        self.config = config or self.Config()

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> list[ItemId]:
        return list(available)

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> list[ItemId]:
        if scores is None:
            return random_k(candidates, k, ctx)
        if k <= 0 or len(candidates) == 0:
            return []
        return [candidates[i] for i in top_k_indices(scores, k, len(candidates))]


class Subsample(TopK):
    """Top-k over a random subset of ``size`` available items (``ctx.rng("subsample")``, kept in pool order), as
    learning loss does with 10,000: scoring cost stays fixed however large the pool grows."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = Field(10000, ge=1, description="how many random available items to score each round")

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> list[ItemId]:
        if len(available) <= self.config.size:
            return list(available)
        chosen = np.sort(ctx.rng("subsample").choice(len(available), size=self.config.size, replace=False))
        return [available[i] for i in chosen]


class StreamThreshold:
    """Stream-based selective sampling: items arrive one at a time in a random order (``ctx.rng("stream")``);
    each is asked about when its score exceeds ``threshold``, until ``k`` items are asked for. The score stream
    is consumed only up to the chunk holding the last item asked for, so items after it are never scored.
    With no scores yet, the first ``k`` arrivals are asked about.

    ``budget`` caps the number asked per round below the loop's ``k`` (a selector never returns more than ``k``).
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        threshold: float = Field(description="ask about an arriving item when its score is above this")
        budget: int | None = Field(None, ge=0, description="at most this many queries per round (default: k)")

    allows_repeats = False

    def __init__(self, config: Config, env: object = None):
        self.config = config

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> list[ItemId]:
        return [available[i] for i in ctx.rng("stream").permutation(len(available))]

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> list[ItemId]:
        limit = min(k, self.config.budget) if self.config.budget is not None else k
        limit = max(0, min(limit, len(candidates)))
        if scores is None:
            return list(candidates[:limit])
        chosen: list[ItemId] = []
        if limit == 0:
            return chosen
        chunks = iter_chunks(scores)
        position = 0
        try:
            for chunk in chunks:
                for s in chunk:
                    if position >= len(candidates):
                        raise ValueError(f"the scorer returned more scores than the {len(candidates)} candidates")
                    if s > self.config.threshold:
                        chosen.append(candidates[position])
                        if len(chosen) == limit:
                            return chosen
                    position += 1
            if position != len(candidates):
                raise ValueError(f"the scorer returned {position} scores for {len(candidates)} candidates")
        finally:
            chunks.close()
            close = getattr(scores, "close", None)
            if close is not None:                   # stop the scorer's predictions too
                close()
        return chosen


def largest_remainder(shares: np.ndarray, k: int) -> np.ndarray:
    """Integer counts summing to ``k`` proportional to ``shares`` (Hamilton's method: floor of each quota, then
    one more for the largest remainders; ties to the earlier entry)."""
    shares = np.asarray(shares, dtype=np.float64)
    quota = k * shares / shares.sum()
    counts = np.floor(quota).astype(np.int64)
    left = int(np.clip(k - counts.sum(), 0, len(counts)))
    counts[np.lexsort((np.arange(len(counts)), -(quota - counts)))[:left]] += 1
    return counts


class Proportional:
    """Query synthesis: ``k`` samples shared among the candidates (generators, e.g. corruption levels) in
    proportion to their scores, by the largest-remainder method (on-demand learning: scores = 1/PSNR, so harder
    levels get more). Scores must be non-negative; no scores yet, or all zero, means equal shares.

    ``floor`` is a minimum share per candidate: shares become ``floor + (1 - n * floor) * s / sum(s)`` (needs
    ``n * floor <= 1``). Returns each candidate id repeated by its count, in candidate order.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        floor: float = Field(0.0, ge=0.0, le=1.0, description="minimum share of the samples per candidate")

    allows_repeats = True

    def __init__(self, config: Config | None = None, env: object = None):
        self.config = config or self.Config()

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> list[ItemId]:
        return list(available)

    def shares(self, scores: np.ndarray) -> np.ndarray:
        n = len(scores)
        if np.any(~np.isfinite(scores)) or np.any(scores < 0):
            raise ValueError(f"proportional selection needs finite non-negative scores, got {scores.tolist()}")
        base = scores / scores.sum() if scores.sum() > 0 else np.full(n, 1.0 / n)
        floor = self.config.floor
        if n * floor > 1.0 + 1e-12:
            raise UserError(f"selector.params.floor: {floor} per candidate is more than all samples for {n} candidates")
        return floor + (1.0 - n * floor) * base

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> list[ItemId]:
        n = len(candidates)
        if n == 0 or k <= 0:
            return []
        values = np.zeros(n) if scores is None else collect_scores(scores)
        if len(values) != n:
            raise ValueError(f"the scorer returned {len(values)} scores for {n} candidates")
        counts = largest_remainder(self.shares(values), k)
        return [c for c, m in zip(candidates, counts) for _ in range(m)]
