"""Suggestive Annotation (Yang, Zhang, Chen, Zhang & Chen, "Suggestive Annotation: A Deep Active Learning Framework
for Biomedical Image Segmentation", MICCAI 2017): the most uncertain candidates by bootstrap disagreement, then the
most representative of them by greedy maximum cover.

Like :class:`~.batch.BADGE`, :class:`SuggestiveAnnotation` is a batch-aware scorer: it picks up to ``ctx.budget``
candidates in order and returns scores whose top-k (ties to the lower position, as :class:`~.selectors.TopK`
breaks them) is exactly that batch in pick order; every other candidate scores its uncertainty, below the batch.
"""
from __future__ import annotations

import heapq
import math
from typing import Collection, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab import hooks
from activelab.errors import UserError
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC,
    MC_SEED_BOUND,
    PROBS,
    Context,
    Env,
    ItemId,
    Task,
    seed_for,
)

from .batch import _rank_scores
from .coldstart import unit_rows
from .diversity import embed
from .uncertainty import score_chunks


# ------------------------------------------------------------------------------------------- measures
def bootstrap_variance(mc_probs: np.ndarray) -> np.ndarray:
    """The paper's uncertainty for each item: the variance of the predicted probabilities across the bootstrap
    members (population variance, over the leading member axis), averaged over the classes -- the paper averages
    the per-pixel variance of the foreground probability over an image; here the "pixels" are the classes.
    ``mc_probs`` is ``(T, B, C)``; returns ``(B,)`` float64."""
    p = np.asarray(mc_probs, dtype=np.float64)
    return p.var(axis=0).mean(axis=-1)


def max_cover(candidates: np.ndarray, represented: np.ndarray, k: int) -> tuple[list[int], float]:
    """Greedy maximisation of the representativeness ``F(S) = sum_{x in represented} max_{s in S} cos(s, x)`` over
    subsets ``S`` of ``candidates`` with ``|S| <= k`` (Suggestive Annotation's generalised maximum set cover).

    Rows are unit vectors (float32; :func:`~.coldstart.unit_rows`), so ``cos`` is a dot product; a negative cosine
    counts as 0 (``F(empty) = 0``), which keeps ``F`` monotone and submodular (a facility-location function), so the
    greedy is within ``1 - 1/e`` of the best subset. Each step takes the candidate of largest gain ``F(S + c) - F(S)``,
    ties to the lower index. The greedy is lazy (Minoux): a candidate's last computed gain bounds its gain now, so
    only candidates whose bound could still win are re-evaluated -- the same picks as the plain greedy (every gain
    is computed by the same float32 row product and float64 sum, and each term ``max(0, cos - best)`` can only
    shrink as ``best`` grows, so the bounds hold in floating point too). Memory: O(len(represented)) besides the
    rows; time: one ``len(represented) x D`` product per evaluation, ``len(candidates)`` of them up front.

    Returns the picks (indices into ``candidates``, in pick order) and ``F`` of the picks."""
    best = np.zeros(len(represented), dtype=np.float32)

    def row(c: int) -> np.ndarray:
        return represented @ candidates[c]

    def gain(c: int) -> float:
        return float(np.sum(np.maximum(row(c) - best, 0.0), dtype=np.float64))

    heap = [(-gain(c), c) for c in range(len(candidates))]
    heapq.heapify(heap)
    picks: list[int] = []
    total = 0.0
    while heap and len(picks) < min(k, len(candidates)):
        _, c = heapq.heappop(heap)
        fresh = (-gain(c), c)
        if heap and fresh > heap[0]:          # another candidate's bound may beat it: look again later
            heapq.heappush(heap, fresh)
            continue
        picks.append(c)
        total += -fresh[0]
        np.maximum(best, row(c), out=best)
    return picks, total


# ------------------------------------------------------------------------------------------- scorer
class SuggestiveAnnotation:
    """Suggestive Annotation (Yang et al., MICCAI 2017): uncertain by bootstrap disagreement, then representative.

    1. ``members`` models are trained on bootstrap resamples of the labelled items (the task's
       ``fit_bootstrap(labels, members, seed)``, seeded from ``ctx``); a candidate's uncertainty is the variance of
       their class probabilities, averaged over the classes (:func:`bootstrap_variance`).
    2. The ``K_u = ceil(ratio * k)`` most uncertain candidates (ties to the earlier one; k = ``ctx.budget``) are the
       paper's candidate set S_c.
    3. From S_c, k items are picked greedily to maximise ``F(S) = sum_{x in U} max_{s in S} cos(f_s, f_x)``, U the
       candidates (the paper's S_u: every unannotated item), f the task's ``embeddings`` (the paper's image
       descriptor from the FCN's encoder) or, with ``representation: features``, its label-free ``features``
       (:func:`max_cover`).

    Scores: pick j of k scores above everything else, in pick order; every other candidate its uncertainty (see the
    module). Cost: training ``members`` models per call (the task's ``fit_bootstrap``: usually the dominant cost),
    one bootstrap prediction and one embedding pass over the candidates, then about ``K_u + k`` products of
    ``len(U) x D`` for the lazy greedy.

    Defaults and deviations:

    - ``members = 4``, ``ratio = 2`` (K_u = 16 for k = 8): the paper's setting as we recall it (4 FCNs, K = 16,
      k = 8); not checked against its text, which was not available here (a public re-implementation also uses 4
      bootstrapped FCNs, with K = 20 and k = 10).
    - A classification analogue: the paper's uncertainty is per pixel (variance of the foreground probability across
      the FCNs) averaged over the image; here the variance of each class probability, averaged over the classes.
    - The similarity descriptor comes from the task's current model (trained on every label), not from the
      bootstrap members. Which network's encoder the paper uses was not checked (the public re-implementation
      averages the cosine similarity over the bootstrap members' encoders).
    - A negative cosine counts as 0 in ``F`` (with non-negative descriptors, as after a ReLU, nothing changes); this
      keeps ``F(empty) = 0`` and the greedy's guarantee.
    - ``max_represented``: U is every candidate, as in the paper, up to this many; above it, that many candidates
      drawn without replacement from ``ctx.rng("suggestive")`` stand for U (an unbiased estimate of ``F`` up to a
      constant factor), so memory and time stay bounded on large pools.
    - Labelled items are neither in U nor count as covering it (the paper covers S_u by S_a alone).
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        members: int = Field(4, ge=2, description="bootstrap models whose disagreement (variance) is the uncertainty")
        ratio: float = Field(2.0, ge=1.0, description="K_u / k: how many of the most uncertain candidates the "
                                                       "representative batch of k is chosen from")
        representation: Literal["embeddings", "features"] = Field(
            "embeddings", description="descriptor whose cosine similarity measures representativeness: the model's "
                                      "embeddings (the paper) or the task's label-free features")
        max_represented: int = Field(20000, ge=1, description="represent at most this many candidates in F (a "
                                                              "random subset above it)")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.space = EMBEDDINGS if self.config.representation == "embeddings" else FEATURES
        self.needs: Collection[str] = frozenset({PROBS, BOOTSTRAP, self.space})
        self.stats: dict[str, float] = {}

    def uncertainty(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        """Train the bootstrap members and return each candidate's :func:`bootstrap_variance`."""
        cfg = self.config
        fit_bootstrap = hooks.fit_bootstrap(task)
        if fit_bootstrap is None:
            raise UserError(f"scorer.name: suggestive needs a task with fit_bootstrap(labels, size, seed); task "
                            f"{type(task).__name__} has none")
        seed = seed_for(ctx.seed, ctx.round, "suggestive", below=MC_SEED_BOUND)
        fit_bootstrap(ctx.labels, cfg.members, seed)
        mc = MC(samples=cfg.members, mode="bootstrap", seed=seed)
        chunks = list(score_chunks(task, candidates, {PROBS}, lambda out: bootstrap_variance(out[PROBS]), mc=mc))
        return np.concatenate(chunks)

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        cfg = self.config
        m = len(candidates)
        if m == 0:
            return np.zeros(0)
        u = self.uncertainty(task, candidates, ctx)
        k = min(max(int(ctx.budget), 0), m)
        if k == 0:
            return u
        k_u = min(m, max(k, math.ceil(cfg.ratio * k)))
        pool = np.argsort(-u, kind="stable")[:k_u]               # S_c, most uncertain first
        points = unit_rows(embed(task, candidates, self.space))
        if m > cfg.max_represented:
            rows = np.sort(ctx.rng("suggestive").choice(m, size=cfg.max_represented, replace=False))
            represented = points[rows]
        else:
            represented = points
        picks, cover = max_cover(points[pool], represented, k)
        self.stats = {"candidate_set": float(k_u), "represented": float(len(represented)),
                      "coverage": cover / len(represented)}
        return _rank_scores(pool[picks], u)
