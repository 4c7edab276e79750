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
from activelab.protocol import (
    Candidates,
    Context,
    ItemId,
    Picks,
    ScoreStream,
    candidate_ids,
    collect_scores,
    iter_blocks,
    iter_chunks,
)

from .blocks import MeasureBlock, joined
from .kernels import TopKAccumulator


def top_k(scores: ScoreStream, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and scores of the ``k`` highest of ``n`` scores, best first (ties: lower position first; NaN
    ranks last), in one pass over the chunks with O(k) memory; a :class:`~.blocks.MeasureBlock` chunk is
    measured and ranked in the same pass. ``ValueError`` when the chunks do not hold exactly ``n`` scores."""
    best = TopKAccumulator(max(0, min(k, n)))
    for chunk in joined(iter_blocks(scores)):
        if isinstance(chunk, MeasureBlock) and chunk.on_host:
            best.push_measure(chunk.kind, chunk.data, best.seen)
        else:
            best.push(np.asarray(chunk).reshape(-1), best.seen)
        if best.seen > n:
            break
    if best.seen != n:
        raise ValueError(f"the scorer returned {best.seen} scores for {n} candidates")
    return best.result()


def top_k_indices(scores: ScoreStream, k: int, n: int) -> np.ndarray:
    """Indices of the ``k`` highest of ``n`` scores, best first (see :func:`top_k`)."""
    return top_k(scores, k, n)[0]


def subset(available: Sequence[ItemId], positions: np.ndarray) -> Sequence[ItemId]:
    """``available`` at ``positions``, still as :class:`~activelab.protocol.Candidates` when it was one."""
    if isinstance(available, Candidates):
        return available.take(positions)
    return candidate_ids(available, positions)


def random_k(candidates: Sequence[ItemId], k: int, ctx: Context) -> Picks:
    """``k`` candidates uniformly at random without repeats (``ctx.rng("initial")``): the uninformed first batch."""
    k = max(0, min(k, len(candidates)))
    positions = ctx.rng("initial").choice(len(candidates), size=k, replace=False)
    return Picks(candidate_ids(candidates, positions), positions)


class TopK:
    """The ``k`` highest-scoring candidates, best first; ``k`` at random when there are no scores yet."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    allows_repeats = False

    def __init__(self, config: BaseModel | None = None, env: object = None):
        self.config = config or self.Config()

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> Sequence[ItemId]:
        return available if isinstance(available, Candidates) else list(available)

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> Picks:
        if scores is None:
            return random_k(candidates, k, ctx)
        if k <= 0 or len(candidates) == 0:
            return Picks([], [], [])
        positions, values = top_k(scores, k, len(candidates))
        return Picks(candidate_ids(candidates, positions), positions, values)


class Subsample(TopK):
    """Top-k over a random subset of ``size`` available items (``ctx.rng("subsample")``, kept in pool order), as
    learning loss does with 10,000: scoring cost stays fixed however large the pool grows."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = Field(10000, ge=1, description="how many random available items to score each round")

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> Sequence[ItemId]:
        if len(available) <= self.config.size:
            return TopK.candidates(self, available, ctx)
        chosen = np.sort(ctx.rng("subsample").choice(len(available), size=self.config.size, replace=False))
        return subset(available, chosen)


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

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> Sequence[ItemId]:
        return subset(available, ctx.rng("stream").permutation(len(available)))

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> Picks:
        limit = min(k, self.config.budget) if self.config.budget is not None else k
        limit = max(0, min(limit, len(candidates)))
        if scores is None:
            return Picks(candidate_ids(candidates, range(limit)), np.arange(limit))
        positions: list[int] = []
        values: list[float] = []
        if limit == 0:
            return Picks([], [], [])
        chunks = iter_chunks(scores)
        seen = 0
        try:
            for chunk in chunks:
                if seen + len(chunk) > len(candidates):
                    raise ValueError(f"the scorer returned more scores than the {len(candidates)} candidates")
                for i in np.flatnonzero(chunk > self.config.threshold)[: limit - len(positions)].tolist():
                    positions.append(seen + i)
                    values.append(float(chunk[i]))
                seen += len(chunk)
                if len(positions) == limit:
                    return Picks(candidate_ids(candidates, positions), positions, values)
            if seen != len(candidates):
                raise ValueError(f"the scorer returned {seen} scores for {len(candidates)} candidates")
        finally:
            chunks.close()
            close = getattr(scores, "close", None)
            if close is not None:                   # stop the scorer's predictions too
                close()
        return Picks(candidate_ids(candidates, positions), positions, values)


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

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> Sequence[ItemId]:
        return available if isinstance(available, Candidates) else list(available)

    def shares(self, scores: np.ndarray) -> np.ndarray:
        n = len(scores)
        if np.any(~np.isfinite(scores)) or np.any(scores < 0):
            raise ValueError(f"proportional selection needs finite non-negative scores, got {scores.tolist()}")
        base = scores / scores.sum() if scores.sum() > 0 else np.full(n, 1.0 / n)
        floor = self.config.floor
        if n * floor > 1.0 + 1e-12:
            raise UserError(f"selector.params.floor: {floor} per candidate is more than all samples for {n} candidates")
        return floor + (1.0 - n * floor) * base

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> Picks:
        n = len(candidates)
        if n == 0 or k <= 0:
            return Picks([])
        values = np.zeros(n) if scores is None else collect_scores(scores)
        if len(values) != n:
            raise ValueError(f"the scorer returned {len(values)} scores for {n} candidates")
        positions = np.repeat(np.arange(n), largest_remainder(self.shares(values), k))
        return Picks(candidate_ids(candidates, positions), positions, None if scores is None else values[positions])
