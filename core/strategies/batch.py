"""Batch-aware scorers: the batch is chosen as a whole (uncertain AND diverse), then turned into scores.

- :class:`BADGE` (Ash, Zhang, Krishnamurthy, Langford & Agarwal, "Deep Batch Active Learning by Diverse, Uncertain
  Gradient Lower Bounds", ICLR 2020): k-means++ seeding on last-layer gradient embeddings.
- :class:`ClusterMargin` (Citovsky, DeSalvo, Gentile, Karydas, Rajagopalan, Rostamizadeh & Kumar, "Batch Active
  Learning at Scale", NeurIPS 2021): the lowest-margin candidates, spread over agglomerative clusters round-robin.

Like :class:`~.diversity.KCenterGreedy`, each scorer picks up to ``ctx.budget`` candidates in order and returns
scores whose top-k (ties to the lower position, as :class:`~.selectors.TopK` breaks them) is exactly that batch in
pick order; every candidate outside the batch scores lower. The scores therefore depend on ``ctx.budget``: with a
stream selector or another budget, only the pick order's prefix is meaningful. Randomness comes from
``ctx.rng("badge")`` and ``ctx.rng("cluster_margin")``, so a resumed run picks what an uninterrupted one does.
"""
from __future__ import annotations

import math
from typing import Any, Collection, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Context, Env, ItemId, Task

from .diversity import embed
from .selectors import subset
from .uncertainty import margin

_BLOCK_BYTES = 16 << 20      # target size of one blocked float64 temporary
_SNAP = 64 * 2.0 ** -52      # squared distances below this fraction of |g_i|^2 + |g_c|^2 are rounding: set to 0


# ------------------------------------------------------------------------------------------- gathering
def _host(value: Any) -> np.ndarray:
    """A task output as a numpy array (numpy, lists, or torch tensors on any device)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def gather(task: Task, ids: Sequence[ItemId], want: Collection[str]) -> dict[str, np.ndarray]:
    """``task.predict(ids, want)``'s chunks joined along the item axis, each output as a numpy array with one row
    per id (trailing axes flattened). ``ValueError`` when the chunks do not cover ``ids`` exactly."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in want}
    for out in task.predict(ids, set(want)) if len(ids) else ():
        for name in want:
            a = _host(out[name])
            parts[name].append(a.reshape(len(a), -1))
    joined = {}
    for name, chunks in parts.items():
        joined[name] = np.concatenate(chunks) if chunks else np.zeros((0, 0))
        if len(joined[name]) != len(ids):
            raise ValueError(f"task.predict yielded {len(joined[name])} rows of {name!r} for {len(ids)} items")
    return joined


def _rank_scores(picks: Sequence[int], rest: np.ndarray) -> np.ndarray:
    """Scores whose top-``len(picks)`` is ``picks`` in order: ``rest`` (finite, one per candidate) for everything
    else, and for pick j ``top + (len(picks) - j) * step`` with ``top = max(rest over unpicked)`` -- strictly
    decreasing along the picks and strictly above every unpicked score."""
    scores = np.array(rest, dtype=np.float64)
    picks = np.asarray(picks, dtype=np.int64)
    if len(picks) == 0:
        return scores
    unpicked = np.ones(len(scores), dtype=bool)
    unpicked[picks] = False
    top = float(scores[unpicked].max()) if unpicked.any() else 0.0
    step = max(1.0, abs(top))
    scores[picks] = top + step * np.arange(len(picks), 0, -1, dtype=np.float64)
    return scores


# ------------------------------------------------------------------------------------------- BADGE
def gradient_factors(probs: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two factors of BADGE's gradient embeddings: ``r = p - onehot(argmax p)`` (``(N, C)`` float64; ties to the
    lower class) and ``h`` (the embeddings, as given).

    For a softmax linear last layer ``softmax(W h + b)`` and the cross-entropy at the predicted label ``yhat``, the
    gradient with respect to ``W`` is ``r h^T`` and with respect to ``b`` is ``r``: the gradient embedding
    ``g = r (x) [h, 1]`` (``C * (D + 1)`` numbers; ``C * D`` without the bias). It is never formed: inner products
    factor, ``<g_i, g_j> = <r_i, r_j> (<h_i, h_j> + 1)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    r = p.copy()
    r[np.arange(len(p)), p.argmax(axis=1)] -= 1.0
    return r, embeddings


def _dots(h: np.ndarray, c: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = h @ c`` in float64, ``h`` converted block by block (never a float64 copy of all of it)."""
    c = np.asarray(c, dtype=np.float64)
    rows = max(1, _BLOCK_BYTES // (8 * max(h.shape[1], 1)))
    for start in range(0, len(h), rows):
        np.dot(np.asarray(h[start:start + rows], dtype=np.float64), c, out=out[start:start + rows])
    return out


def _row_norms2(h: np.ndarray) -> np.ndarray:
    """``|h_i|^2`` in float64, ``h`` converted block by block."""
    out = np.empty(len(h))
    rows = max(1, _BLOCK_BYTES // (8 * max(h.shape[1], 1)))
    for start in range(0, len(h), rows):
        block = np.asarray(h[start:start + rows], dtype=np.float64)
        out[start:start + rows] = np.einsum("ij,ij->i", block, block)
    return out


def kmeans_pp_gradients(probs: np.ndarray, embeddings: np.ndarray, k: int, rng: np.random.Generator,
                        bias: bool = True) -> tuple[list[int], np.ndarray]:
    """BADGE's k-means++ seeding on the gradient embeddings of ``probs`` and ``embeddings`` (see
    :func:`gradient_factors`), in O(N (C + D)) time per centre and O(N (C + D)) memory.

    The first centre is the point of largest gradient norm (ties to the lower index), as the authors' code does.
    Each further centre: ``u = rng.random()``, and the point ``i`` with ``cumsum(w)[i - 1] <= u * sum(w) <
    cumsum(w)[i]`` for weights ``w`` = squared distance to the nearest chosen centre (0 for chosen points), i.e. a
    draw with probability proportional to ``D^2``. When every unchosen point coincides with a centre (``sum(w) = 0``)
    the ``floor(u * m)``-th of the ``m`` unchosen points (in index order) is taken instead. Squared distances are
    ``|g_i|^2 + |g_c|^2 - 2 <g_i, g_c>`` in float64, clipped at 0, and set to 0 below a rounding tolerance of
    ``64 * 2^-52 * (|g_i|^2 + |g_c|^2)`` (so a duplicate of a centre is never drawn while others remain).

    Returns the ``min(k, N)`` chosen indices in order and every point's final distance (not squared) to its
    nearest centre (its gradient norm when ``k == 0``).
    """
    r, h = gradient_factors(probs, embeddings)
    n = len(r)
    extra = 1.0 if bias else 0.0
    norm2 = np.einsum("ij,ij->i", r, r) * (_row_norms2(h) + extra)       # |g_i|^2 = |r_i|^2 (|h_i|^2 + 1)
    n_picks = min(max(k, 0), n)
    if n_picks == 0:
        return [], np.sqrt(norm2)
    first = int(np.argmax(norm2))
    picks = [first]
    chosen = np.zeros(n, dtype=bool)
    chosen[first] = True
    d2 = np.full(n, np.inf)
    hh = np.empty(n)
    for step in range(n_picks):
        c = picks[-1]
        new = norm2 + norm2[c] - 2.0 * (r @ r[c]) * (_dots(h, h[c], hh) + extra)
        new[new < _SNAP * (norm2 + norm2[c])] = 0.0
        np.minimum(d2, new, out=d2)
        d2[chosen] = 0.0
        if step == n_picks - 1:
            break
        cum = np.cumsum(d2)
        u = rng.random()
        if cum[-1] > 0.0:
            i = int(np.searchsorted(cum, u * cum[-1], side="right"))
        else:
            i = int(np.flatnonzero(~chosen)[int(u * (n - len(picks)))])
        picks.append(i)
        chosen[i] = True
    return picks, np.sqrt(d2)


class BADGE:
    """Batch Active learning by Diverse Gradient Embeddings (Ash et al., ICLR 2020).

    Each candidate x becomes its gradient embedding: the gradient of the cross-entropy loss, at the model's own
    predicted label ``yhat``, with respect to the LAST LAYER's parameters. The last layer is assumed to be a linear
    layer followed by a softmax (the task's ``embeddings`` are its input ``h``, its ``probs`` the softmax output), so
    the gradient is ``(p - onehot(yhat)) (x) h`` in closed form (see :func:`gradient_factors`); its norm is large
    where the model is unsure, and its direction carries the features. The batch is the k-means++ seeding of these
    embeddings (:func:`kmeans_pp_gradients`): the largest gradient norm first, then draws with probability
    proportional to the squared distance to the nearest centre, from ``ctx.rng("badge")``.

    Defaults and deviations:

    - ``bias=True``: the bias gradient ``p - onehot(yhat)`` is included (the embedding ``h`` gains a coordinate 1).
      The paper's embedding is ``C * D`` (weights only); ``bias=False`` gives exactly that.
    - The ``N x C(D + 1)`` embedding matrix is never formed: distances use ``<g_i, g_j> = <r_i, r_j> (<h_i, h_j>
      + 1)``, O(N (C + D)) per centre, so a batch of k costs O(k N (C + D)) time; memory is the probabilities
      (float64) and embeddings (float32) of the candidates.
    - As in the paper only the candidates are seeded on; the labelled items (``ctx.labels``) are not centres.
    - Scores (see the module): pick j of k scores ``top + (k - j) * max(1, top)``, every other candidate its final
      gradient-space distance to the nearest picked centre, ``top`` being the largest of these; with ``budget = 0``
      the gradient norms. A ``budget`` larger than the candidates picks them all, in k-means++ order.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        bias: bool = Field(True, description="include the last layer's bias gradient (p - onehot(yhat)) in the "
                                             "gradient embedding; false = the paper's C*D weight gradient only")

    needs: Collection[str] = frozenset({PROBS, EMBEDDINGS})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        out = gather(task, candidates, (PROBS, EMBEDDINGS))
        emb = out[EMBEDDINGS]
        emb = emb if emb.dtype in (np.float32, np.float64) else emb.astype(np.float32)
        picks, dist = kmeans_pp_gradients(out[PROBS], emb, ctx.budget, ctx.rng("badge"), self.config.bias)
        return _rank_scores(picks, dist)


# ------------------------------------------------------------------------------------------- Cluster-Margin
def average_linkage_clusters(points: np.ndarray, n_clusters: int | None, distance_threshold: float | None,
                             max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels (``(m,)`` int64) by hierarchical agglomerative clustering with average linkage on Euclidean
    distances (scikit-learn's ``AgglomerativeClustering``), cut at ``n_clusters`` clusters (at most one per point)
    or at ``distance_threshold``.

    Memory is bounded by ``max_points``: average linkage needs all pairwise distances (``8 * m^2 / 2`` bytes), so
    when there are more points, ``max_points`` of them drawn without replacement from ``rng`` are clustered, and
    every other point joins the cluster whose mean (of its clustered points) is nearest.
    """
    x = np.asarray(points, dtype=np.float64)
    m = len(x)
    sample = np.arange(m) if m <= max_points else np.sort(rng.choice(m, size=max_points, replace=False))
    xs = x[sample]
    if len(xs) < 2 or (distance_threshold is None and n_clusters is not None and n_clusters >= len(xs)):
        sub = np.arange(len(xs), dtype=np.int64)
    else:
        from sklearn.cluster import AgglomerativeClustering

        hac = AgglomerativeClustering(n_clusters=None if distance_threshold is not None else n_clusters,
                                      distance_threshold=distance_threshold, linkage="average", metric="euclidean")
        sub = np.asarray(hac.fit(xs).labels_, dtype=np.int64)
    if len(sample) == m:
        return sub
    n_sub = int(sub.max()) + 1
    centres = np.zeros((n_sub, x.shape[1]))
    np.add.at(centres, sub, xs)
    centres /= np.bincount(sub, minlength=n_sub)[:, None]
    labels = np.empty(m, dtype=np.int64)
    c2 = np.einsum("ij,ij->i", centres, centres)
    rows = max(1, _BLOCK_BYTES // (8 * max(n_sub, x.shape[1], 1)))
    for start in range(0, m, rows):
        block = x[start:start + rows]
        labels[start:start + rows] = np.argmin(c2[None, :] - 2.0 * block @ centres.T, axis=1)
    labels[sample] = sub
    return labels


def round_robin(labels: np.ndarray, priority: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Cluster-Margin's sampling: clusters (of ``labels``) sorted by size, smallest first, visited in turn, each
    visit taking one of its remaining members uniformly at random, until ``k`` are taken or none remain.

    Ties between clusters of equal size go to the one holding the highest ``priority`` (the most uncertain
    member), then to the lower index. Members are drawn by shuffling each cluster once, with ``rng``, in that
    visiting order. Returns indices into ``labels`` in pick order."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or k <= 0:
        return []
    ids, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    best = np.full(len(ids), -np.inf)
    np.maximum.at(best, inverse, np.asarray(priority, dtype=np.float64))
    first = np.full(len(ids), len(labels))
    np.minimum.at(first, inverse, np.arange(len(labels)))
    order = np.lexsort((first, -best, sizes))
    queues = [rng.permutation(np.flatnonzero(inverse == c)).tolist() for c in order]
    picks: list[int] = []
    depth = 0
    while len(picks) < k and depth < int(sizes.max()):
        for queue in queues:
            if depth < len(queue):
                picks.append(int(queue[depth]))
                if len(picks) == k:
                    break
        depth += 1
    return picks


class ClusterMargin:
    """Cluster-Margin (Citovsky et al., NeurIPS 2021): uncertainty by margin, diversity by clusters.

    Of the candidates, the ``k_m = ceil(ratio * k)`` with the smallest margin ``p(y1|x) - p(y2|x)`` are kept (ties
    to the earlier candidate; k = ``ctx.budget``); they are clustered by average-linkage hierarchical agglomerative
    clustering (HAC) of their embeddings; then the clusters are visited smallest first, round-robin, each visit
    drawing one member uniformly at random (``ctx.rng("cluster_margin")``), until k are picked
    (:func:`round_robin`; equal sizes go to the cluster with the smaller least margin).

    Defaults and deviations:

    - ``ratio = 10`` (k_m = 10 k). ``ratio = 1`` is plain margin sampling in a cluster-spread order; a large ratio
      leans on diversity.
    - **Clustering per call, of the k_m points only.** The paper runs HAC once, on the whole pool's embeddings from
      the first model, and keeps the clusters for the run; here the k_m margin-selected candidates are clustered on
      every call, with the current model's ``embeddings`` (or, with ``representation: features``, the task's fixed
      label-free ``features``, the closer analogue of clusters that do not change between rounds). Nothing is
      cached, so a resumed run recomputes the same clusters.
    - **How many clusters.** The paper cuts the dendrogram at a distance ``epsilon``; a fixed distance depends on
      the embedding's scale, so by default the tree is cut at ``n_clusters`` clusters, which defaults to k (one
      per batch item, so the batch is spread over k clusters). ``distance_threshold`` gives the paper's
      epsilon-cut instead; ``n_clusters`` and ``distance_threshold`` exclude each other.
    - **Bounded memory.** Average linkage needs the k_m x k_m distances; above ``max_cluster_points`` points a
      random subset of that many is clustered and the rest join their nearest cluster mean
      (:func:`average_linkage_clusters`); ``8 * max_cluster_points^2 / 2`` bytes at most (100 MB at 5,000).
    - Labelled items (``ctx.labels``) play no part, as in the paper.
    - Scores (see the module): every candidate outside the batch scores ``-(p1 - p2)`` (in [-1, 0]), so they keep
      the margin ranking; pick j of k scores ``top + (k - j)``, ``top`` being the largest of those.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ratio: float = Field(10.0, ge=1.0, description="k_m / k: how many lowest-margin candidates to cluster per "
                                                        "item of the batch")
        n_clusters: int | None = Field(None, ge=1, description="cut the average-linkage tree at this many clusters "
                                                              "(default: the budget k); excludes distance_threshold")
        distance_threshold: float | None = Field(None, gt=0.0, description="cut the tree at this average-linkage "
                                                                           "distance (the paper's epsilon) instead")
        max_cluster_points: int = Field(5000, ge=2, description="cluster at most this many of the k_m points; "
                                                                "the others join the nearest cluster mean")
        representation: Literal["embeddings", "features"] = Field(
            "embeddings", description="what is clustered: the model's embeddings, or the task's label-free features")

        @model_validator(mode="after")
        def _one_cut(self) -> "ClusterMargin.Config":
            if self.n_clusters is not None and self.distance_threshold is not None:
                raise ValueError("give n_clusters or distance_threshold, not both")
            return self

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.space = EMBEDDINGS if self.config.representation == "embeddings" else FEATURES
        self.needs: Collection[str] = frozenset({PROBS, self.space})

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        cfg = self.config
        n = len(candidates)
        if n == 0:
            return np.zeros(0)
        uncertainty = margin(gather(task, candidates, (PROBS,))[PROBS])        # -(p1 - p2): higher = less sure
        k = min(max(ctx.budget, 0), n)
        if k == 0:
            return uncertainty
        k_m = min(n, max(k, math.ceil(cfg.ratio * k)))
        kept = np.argsort(-uncertainty, kind="stable")[:k_m]
        rng = ctx.rng("cluster_margin")
        points = embed(task, subset(candidates, kept), self.space)
        n_clusters = None if cfg.distance_threshold is not None else (cfg.n_clusters or k)
        labels = average_linkage_clusters(points, n_clusters, cfg.distance_threshold, cfg.max_cluster_points, rng)
        picks = kept[round_robin(labels, uncertainty[kept], k, rng)]
        return _rank_scores(picks, uncertainty)
