"""Scorers that look at where candidates lie in embedding space, not only at how unsure the model is.

- :class:`InformationDensity` (Settles & Craven 2008): an uncertainty score weighted by how representative the
  candidate is of the candidates.
- :class:`KCenterGreedy` (core-set, Sener & Savarese 2018): farthest-first traversal from the labelled items.
"""
from __future__ import annotations

from typing import Any, Collection, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activelab.protocol import EMBEDDINGS, Context, Env, ItemId, ScoreStream, Task, iter_chunks

from .uncertainty import UNCERTAINTY

# Scores of these bases can be negative; density weighting is applied above this floor (see InformationDensity).
_FLOOR = {"margin": -1.0}


def embed(task: Task, ids: Sequence[ItemId], name: str = EMBEDDINGS) -> np.ndarray:
    """``(len(ids), D)`` float32 rows of the task's output ``name`` (``EMBEDDINGS``, ``FEATURES``, ...) for
    ``ids``, gathered chunk by chunk."""
    parts = []
    for out in task.predict(ids, {name}) if len(ids) else ():
        e = np.asarray(out[name], dtype=np.float32)
        parts.append(e.reshape(len(e), -1))
    points = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    if len(points) != len(ids):
        raise ValueError(f"task.predict yielded {len(points)} rows of {name!r} for {len(ids)} items")
    return points


def mean_cosine(points: np.ndarray) -> np.ndarray:
    """``mean_u cos(e_x, e_u)`` over all rows ``u`` (``x`` included) for every row ``x``, in O(N D):
    the mean of cosines is ``e_x_hat . mean_u e_u_hat``. A zero embedding has similarity 0 to everything."""
    x = np.asarray(points, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return unit @ unit.mean(axis=0) if len(x) else np.zeros(0)


class InformationDensity:
    """``base(x) * (mean_{u in U} cos(e_x, e_u))^beta`` with U = the candidates being scored (x included).

    Differences from the plain formula, all documented choices:

    - The MEAN similarity is clipped at 0 before the power (a candidate that is on average dissimilar to the
      pool gets weight 0); clipping each pairwise cosine would need the N x N matrix, which is never formed.
    - Bases whose scores can be negative are weighted above their floor: margin's ``-(p1 - p2)`` lies in
      [-1, 0], and ``(s + 1) * w - 1`` is used, which ranks as ``(1 - (p1 - p2)) * w``; multiplying a negative
      score by a density weight would favour the least representative items instead.
    - ``beta = 0`` returns the base scores exactly.

    Two passes over the candidates: one for the embeddings (held as float32 until the N density weights are
    computed), then the base scorer's own walk, weighted chunk by chunk.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        base: Literal[tuple(UNCERTAINTY)] = Field("entropy", description="uncertainty scorer to weight")  # type: ignore[valid-type]
        base_params: dict[str, Any] = Field(default_factory=dict, description="params of the base scorer")
        beta: float = Field(1.0, ge=0.0, description="weight of the density term")

        @model_validator(mode="after")
        def _check_base_params(self) -> "InformationDensity.Config":
            try:
                UNCERTAINTY[self.base].Config.model_validate(self.base_params)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"base_params for base '{self.base}': {problems}") from None
            return self

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        base_cls = UNCERTAINTY[self.config.base]
        self.base = base_cls(base_cls.Config.model_validate(self.config.base_params), env or Env())
        self.needs: Collection[str] = frozenset(self.base.needs) | {EMBEDDINGS}
        self.floor = _FLOOR.get(self.config.base, 0.0)

    def density(self, task: Task, candidates: Sequence[ItemId]) -> np.ndarray:
        """The weights ``max(0, mean cos)^beta`` for the candidates."""
        return np.maximum(mean_cosine(embed(task, candidates)), 0.0) ** self.config.beta

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        if len(candidates) == 0:
            return iter(())
        return self._weighted(self.base.score(task, candidates, ctx), self.density(task, candidates))

    def _weighted(self, base: ScoreStream, weight: np.ndarray) -> Iterator[np.ndarray]:
        start = 0
        for chunk in iter_chunks(base):
            w = weight[start:start + len(chunk)]
            start += len(chunk)
            yield chunk * w + self.floor * (1.0 - w)      # = (chunk - floor) * w + floor; exact when w == 1


def k_center_scores(points: np.ndarray, min_dist: np.ndarray, budget: int) -> np.ndarray:
    """Greedy k-center (farthest-first; the core-set of Sener & Savarese 2018) over ``points``, turned into scores
    whose top-k is the greedy order.

    ``min_dist[i]`` is point i's distance to the nearest labelled item (``inf`` where nothing is labelled).
    ``budget`` picks are made, each the point farthest from everything labelled or picked so far (ties to the
    lower index). A picked point scores its distance at the moment it was picked (a non-increasing sequence);
    an unpicked point scores its final distance, which is at most the last pick's. With equal scores the lower
    index comes first (as :class:`~activelab.strategies.selectors.TopK` breaks ties), and with that the top-k of the
    scores is exactly the greedy sequence. With nothing labelled the first pick is the point nearest the mean of all
    points, and it scores just above the highest other score (distances there are infinite).

    Exact (:mod:`.kcenter`): every decision and every score uses float64 distances of the given coordinates
    (float32 embeddings are not copied to float64), so the picks and scores are those of a float64 brute force,
    ties included. The bulk of the arithmetic is float32 matrix products (BLAS), 32 picks at a time, whose rigorous
    error bounds rule out every pick that cannot come closer to a point; only the rest get an exact distance.
    Extra memory: N * D * 4 bytes plus O(N).
    """
    from .kcenter import farthest_first

    dist = np.array(min_dist, dtype=np.float64).reshape(-1)
    n = len(dist)
    if n == 0:
        return dist
    cold = bool(np.all(np.isinf(dist)))
    n_picks = min(max(budget, 1 if cold else 0), n)
    picks, _, scores, _ = farthest_first(points, dist, n_picks, cold)
    if cold:
        first = int(picks[0])
        others = np.delete(scores, first)
        scores[first] = np.nextafter(others.max(), np.inf) if len(others) else 0.0
    return scores


def nearest_distance(points: np.ndarray, others: np.ndarray, block: int = 1024) -> np.ndarray:
    """Euclidean distance (float64) from each row of ``points`` to its nearest row of ``others`` (``inf`` if none).

    float32 (or float64) rows are used as given. Blocked over both: float32 products ``|x|^2 + |o|^2 - 2 x.o``
    of ``block`` rows of ``others`` against as many points as keep that block near 16 MB, so memory stays bounded
    whatever N and M. The result is exact (float64 distances of the given coordinates, as a brute force computes
    them): a rigorous bound on the float32 error selects which candidates to recompute in float64 -- the block's
    approximate nearest and any other that could still beat it (:func:`.kcenter.nearest_distances`).
    """
    from .kcenter import nearest_distances

    return nearest_distances(points, others, block)[0]


class KCenterGreedy:
    """Core-set selection by greedy k-center (Sener & Savarese 2018) on the task's embeddings.

    Up to ``ctx.budget`` farthest-first picks starting from the labelled items (``ctx.labels``, embedded with
    ``task.predict`` too, so they must be ids the task knows); see :func:`k_center_scores` for how the picks
    become scores (top-k of the scores = the greedy picks, in order). Memory: the embeddings of the candidates
    and labelled items plus a 16-bit copy of the candidates'; time: an exact nearest-labelled pass, then k greedy
    steps that skip every group of points a pick provably cannot move (so well under N D per step on clustered
    features, N D on structureless ones; see :mod:`.kcenter`). With nothing labelled the traversal starts from the
    candidate nearest the mean embedding. The result depends on ``ctx.budget``: with a stream selector or a budget other
    than the loop's, only the greedy prefix is meaningful.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    needs: Collection[str] = frozenset({EMBEDDINGS})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        points = embed(task, candidates)
        labelled = list(ctx.labels)
        min_dist = nearest_distance(points, embed(task, labelled)) if labelled else np.full(len(points), np.inf)
        return k_center_scores(points, min_dist, ctx.budget)
