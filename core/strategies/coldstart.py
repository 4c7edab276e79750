"""Low-budget ("cold start") scorers: they choose on a label-free representation of the pool, not on a model.

- :class:`TypiClust` (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and Low
  Budgets", ICML 2022): cluster labelled + candidates into ``|L| + B`` clusters, take the most typical item of each
  cluster that holds the fewest labelled items.
- :class:`ProbCover` (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022):
  greedy maximum coverage with balls of radius ``delta``.

Both embed the labelled items (``ctx.labels``, ids the task knows) and the candidates with the task output named by
their ``features`` field (:data:`~activelab.protocol.FEATURES` by default: a self-supervised or PCA representation
that exists before any model is trained, so round 0 can use them; ``"embeddings"`` works too). As in the authors'
code (avihu111/TypiClust) the rows are L2-normalised by default. Both are batch methods: the batch is built greedily
and returned as scores whose top-k, ties to the lower position (as :class:`~.selectors.TopK` breaks them), is the
greedy batch in pick order. Nearest neighbours and ranges use faiss ``IndexFlatL2`` (exact search in float32; every
distance a decision is read from is recomputed in float64); k-means is scikit-learn's, seeded from ``ctx``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Collection, Iterator, Literal, Sequence, Union

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from scipy import sparse

from activelab import hooks
from activelab.errors import UserError
from activelab.protocol import FEATURES, Context, Env, ItemId, Task, rng_for

from .diversity import embed

_SK_SEED_BOUND = 2**32 - 1     # scikit-learn's random_state must be below 2**32


# --------------------------------------------------------------------------------------------- shared helpers
def unit_rows(points: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32 and C-contiguous (what faiss wants)."""
    x = np.asarray(points, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(np.divide(x, norms, out=np.zeros_like(x), where=norms > 0))


def pool_points(task: Task, candidates: Sequence[ItemId], labelled: Sequence[ItemId], name: str,
                normalize: bool) -> np.ndarray:
    """``(len(labelled) + len(candidates), D)`` float32 rows of the task output ``name``: the labelled items first,
    then the candidates in their order (row ``len(labelled) + j`` is candidate ``j``)."""
    cand = embed(task, candidates, name)
    lab = embed(task, list(labelled), name) if len(labelled) else np.zeros((0, cand.shape[1]), dtype=np.float32)
    if len(lab) and lab.shape[1] != cand.shape[1]:
        raise ValueError(f"task output {name!r} has {lab.shape[1]} columns for labelled items, {cand.shape[1]} "
                         "for candidates")
    points = np.concatenate([lab, cand]) if len(lab) else cand
    return unit_rows(points) if normalize else np.ascontiguousarray(points, dtype=np.float32)


def kmeans_labels(points: np.ndarray, k: int, seed: int, n_init: int = 1, minibatch_above: int = 50,
                  batch_size: int = 5000) -> np.ndarray:
    """k-means cluster of every row (int64, ``0 .. k-1``), ``k`` clipped to ``[1, len(points)]``.

    scikit-learn's ``KMeans`` (k-means++ start, ``n_init`` starts) up to ``minibatch_above`` clusters and
    ``MiniBatchKMeans(batch_size=5000)`` above, as the TypiClust code does; ``seed`` is the ``random_state``, so the
    result is deterministic. With fewer distinct rows than clusters some clusters stay empty (no warning)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    n = len(points)
    k = max(1, min(int(k), n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if k <= minibatch_above:
        km: Any = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    else:
        km = MiniBatchKMeans(n_clusters=k, n_init=n_init, batch_size=batch_size, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return np.asarray(km.fit_predict(points), dtype=np.int64)


def _sk_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(_SK_SEED_BOUND))


def _flat_index(points: np.ndarray) -> Any:
    index = faiss.IndexFlatL2(points.shape[1])
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    return index


def _pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (float64) between rows ``a[i]`` and ``b[i]``; ``b`` may have an extra middle axis."""
    a64 = np.asarray(a, dtype=np.float64)
    diff = np.asarray(b, dtype=np.float64) - (a64[:, None, :] if np.ndim(b) == 3 else a64)
    return np.sqrt(np.einsum("...d,...d->...", diff, diff))


# --------------------------------------------------------------------------------------------- TypiClust
def mean_knn_distance(points: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Mean Euclidean distance (float64) from each row to its ``k`` nearest other rows; 0 where ``k < 1``.

    TypiClust's typicality is its inverse. The neighbours come from an exact faiss search (float32, ``k + 1`` hits,
    the row itself dropped; where ``k + 1`` duplicates hide it, the farthest hit is dropped instead) and their
    distances are recomputed in float64. Memory: the ``k`` neighbours' rows of ``block`` queries at a time."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = len(points)
    k = min(int(k), n - 1)
    if k < 1:
        return np.zeros(n)
    index = _flat_index(points)
    out = np.empty(n)
    for start in range(0, n, block):
        q = points[start:start + block]
        _, hits = index.search(q, k + 1)
        is_self = hits == np.arange(start, start + len(q))[:, None]
        keep = ~is_self
        keep[~is_self.any(axis=1), -1] = False
        near = hits[keep].reshape(len(q), k)
        out[start:start + len(q)] = _pair_distances(q, points[near]).mean(axis=1)
    return out


def typiclust_order(points: np.ndarray, n_labelled: int, clusters: np.ndarray, k_neighbours: int = 20,
                    min_cluster_size: int = 5) -> np.ndarray:
    """TypiClust's greedy order of every candidate (rows ``n_labelled ..`` of ``points``), as candidate indices.

    Each step takes the cluster with (1) more than ``min_cluster_size`` points, (2) the fewest labelled items,
    counting the picks made so far, (3) the most points, (4) the lowest cluster number, among clusters with a
    candidate left, and from it the candidate of highest typicality (lowest mean distance to its
    ``min(k_neighbours, size // 2)`` nearest neighbours within the cluster, labelled members included; ties to the
    lower candidate). Since a cluster's key only grows with its own picks, the sequence is a sort of
    ``(small, labelled + rank within the cluster, -size, cluster)`` over the candidates: O(N log N) after the
    per-cluster neighbour searches (sum of size^2 * D)."""
    n = len(points)
    m = n - n_labelled
    clusters = np.asarray(clusters, dtype=np.int64)
    n_clusters = int(clusters.max()) + 1 if n else 0
    size = np.bincount(clusters, minlength=n_clusters)
    labelled = np.bincount(clusters[:n_labelled], minlength=n_clusters)
    dist = np.zeros(n)
    by_cluster = np.argsort(clusters, kind="stable")
    bounds = np.searchsorted(clusters[by_cluster], np.arange(n_clusters + 1))
    for c in np.unique(clusters[n_labelled:]):
        members = by_cluster[bounds[c]:bounds[c + 1]]
        dist[members] = mean_knn_distance(points[members], min(k_neighbours, len(members) // 2))
    cand = clusters[n_labelled:]
    within = np.lexsort((np.arange(m), dist[n_labelled:], cand))          # by cluster, then typicality
    starts = np.searchsorted(cand[within], cand[within], side="left")
    rank = np.empty(m, dtype=np.int64)
    rank[within] = np.arange(m) - starts
    small = size[cand] <= min_cluster_size
    return np.lexsort((cand, -size[cand], labelled[cand] + rank, small))


def order_scores(order: np.ndarray) -> np.ndarray:
    """Scores whose descending order is ``order`` (candidate indices, first = best): ``m - rank``."""
    scores = np.empty(len(order))
    scores[order] = len(order) - np.arange(len(order), dtype=np.float64)
    return scores


class TypiClust:
    """TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): a typical item from each uncovered cluster.

    The labelled items and the candidates (their ``features``, L2-normalised unless ``normalize=False``) are
    clustered by k-means into ``min(|L| + B, max_clusters)`` clusters, ``B = min(ctx.budget, len(candidates))``
    (``KMeans`` up to ``minibatch_above`` = 50 clusters, else ``MiniBatchKMeans``, batch 5000, capped at 500 clusters:
    the authors' code; seeded from ``ctx.rng("typiclust")``). Then, ``B`` times: the cluster with the fewest labelled
    items (the batch's own picks counted), ties to the larger cluster, gives its most typical candidate, where
    typicality(x) = 1 / mean Euclidean distance to its K = min(20, cluster size // 2) nearest neighbours in the
    cluster. Clusters of at most ``min_cluster_size`` = 5 points are used last. See :func:`typiclust_order`.

    Scores: the greedy is continued through every candidate and candidate number ``r`` of that order scores
    ``len(candidates) - r``, so the top-k is the greedy prefix for every k (the clustering itself depends on
    ``ctx.budget``). Cost: k-means, plus exact neighbour searches within each cluster (sum of size^2 * D).

    Deviations from the paper and the authors' code, all deliberate:

    - Typicality is measured among all of a cluster's points, labelled ones included, once per call; the code
      measures it among the cluster's unlabelled points and recomputes it after each pick from that cluster (the
      same first pick from a cluster without labels).
    - Distances are Euclidean, as the paper defines typicality; the code averages squared distances (faiss's
      ``IndexFlatL2`` output) and adds 1e-5 (ranking by the mean distance needs no epsilon).
    - The labelled counts include the picks so far (the paper's loop); the code walks a fixed cluster order
      cyclically. They differ only when a batch takes two items from one cluster.
    - Small clusters are used last instead of never, so a batch is always full (the code could run out).
    - Only the labelled items and the candidates are clustered (the code clusters its whole train set); with the
      loop's TopK selector the candidates are all unlabelled items.
    - ``n_init = 1`` k-means start by default (the code used scikit-learn's then-default 10, or 3 for
      MiniBatchKMeans).
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        features: str = Field(FEATURES, description="task output to cluster: 'features' (label-free, usable at "
                                                    "round 0) or 'embeddings' (the model's)")
        normalize: bool = Field(True, description="L2-normalise each row first (the authors' code does)")
        k_neighbours: int = Field(20, ge=1, description="K of typicality: neighbours in the cluster (at most half "
                                                        "its size)")
        min_cluster_size: int = Field(5, ge=0, description="clusters of at most this many points (labelled + "
                                                           "candidates) are used only after all others")
        max_clusters: int = Field(500, ge=1, description="cap on the number of clusters |L| + B")
        minibatch_above: int = Field(50, ge=1, description="KMeans up to this many clusters, MiniBatchKMeans "
                                                           "above")
        n_init: int = Field(1, ge=1, description="k-means starts (k-means++ initialisation)")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs: Collection[str] = frozenset({self.config.features})
        self.stats: dict[str, float] = {}

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        cfg = self.config
        if len(candidates) == 0:
            return np.zeros(0)
        labelled = sorted(ctx.labels)               # independent of the order the store hands them over
        points = pool_points(task, candidates, labelled, cfg.features, cfg.normalize)
        batch = max(0, min(int(ctx.budget), len(candidates)))
        n_clusters = min(len(labelled) + batch, cfg.max_clusters, len(points))
        clusters = kmeans_labels(points, n_clusters, _sk_seed(ctx.rng("typiclust")), cfg.n_init,
                                 cfg.minibatch_above)
        order = typiclust_order(points, len(labelled), clusters, cfg.k_neighbours, cfg.min_cluster_size)
        self.stats = {"clusters": float(n_clusters),
                      "uncovered_clusters": float(len(np.setdiff1d(clusters, clusters[:len(labelled)])))}
        return order_scores(order)


# --------------------------------------------------------------------------------------------- ProbCover
class DeltaGraph:
    """The delta-ball graph in CSR form (the arrays of a ``scipy.sparse.csr_matrix``): the points ``y`` with
    ``||x - y|| < delta`` are ``indices[indptr[x]:indptr[x + 1]]``, ``x`` itself included (a point covers itself).
    Symmetric by construction."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr, self.indices = indptr, indices

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_edges(self) -> int:
        return int(self.indptr[-1])

    def ball(self, x: int) -> np.ndarray:
        return self.indices[self.indptr[x]:self.indptr[x + 1]]

    def balls(self, rows: np.ndarray) -> np.ndarray:
        """The concatenated balls of ``rows`` (with repeats), without a Python loop."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows].astype(np.int64)
        lens = self.indptr[rows + 1].astype(np.int64) - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, dtype=self.indices.dtype)
        offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        return self.indices[offsets + np.arange(total)]

    def iter_balls(self, rows: np.ndarray, limit: int = 1 << 22) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(rows part, their concatenated balls)`` for consecutive parts of ``rows`` holding about ``limit`` edges
        each (at least one row), so the temporaries stay bounded however many edges the rows have."""
        rows = np.asarray(rows, dtype=np.int64)
        ends = np.cumsum(self.indptr[rows + 1] - self.indptr[rows])
        start = 0
        while start < len(rows):
            base = int(ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + limit, side="right")))
            yield rows[start:stop], self.balls(rows[start:stop])
            start = stop

    def permuted(self, rows: np.ndarray, relabel: np.ndarray) -> "DeltaGraph":
        """The same graph with new numbers: new row ``i`` is old row ``rows[i]``, old point ``j`` is ``relabel[j]``.
        O(E) (no distance is recomputed)."""
        rows = np.asarray(rows, dtype=np.int64)
        relabel = np.asarray(relabel, dtype=self.indices.dtype)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(self.indptr[rows + 1] - self.indptr[rows], out=indptr[1:])
        indices = np.empty(int(indptr[-1]), dtype=self.indices.dtype)
        at = 0
        for _, ball in self.iter_balls(rows):
            indices[at:at + len(ball)] = relabel[ball]
            at += len(ball)
        return DeltaGraph(indptr, indices)


def delta_graph(points: np.ndarray, delta: float, max_edges: int = 10**8) -> DeltaGraph:
    """The directed graph x -> y iff ||x - y|| < delta over every row (ProbCover's graph), sparse.

    Exact range search with faiss ``IndexFlatL2`` (float32 squared distances, so a pair within ~1e-6 relative of
    ``delta`` may fall either side), queried in blocks sized to keep each block's hits near 16M; each pair is kept
    once, from its lower-numbered point, and mirrored, so the graph is symmetric; self loops are added. Time
    O(N^2 D); memory 4 bytes per edge (int32 indices when N < 2^31) plus the build's temporaries.
    ``UserError`` when the graph would have more than ``max_edges`` edges (delta too large for the pool)."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = len(points)
    index = _flat_index(points)
    radius = float(delta) ** 2
    dtype = np.int32 if n < 2**31 else np.int64
    srcs, dsts = [], []
    found, start, block = 0, 0, 256
    while start < n:
        q = points[start:start + block]
        lims, _, hits = index.range_search(q, radius)
        src = np.repeat(np.arange(start, start + len(q), dtype=np.int64), np.diff(lims.astype(np.int64)))
        keep = hits > src
        srcs.append(src[keep].astype(dtype))
        dsts.append(hits[keep].astype(dtype))
        found += int(keep.sum())
        if n + 2 * found > max_edges:
            raise UserError(f"probcover: the delta-ball graph with delta={delta:.4g} would have more than "
                            f"max_edges={max_edges} edges over {n} points; lower delta or raise max_edges")
        start += len(q)
        per_query = max(1.0, 2 * found / start)
        block = int(np.clip(2**24 / per_query, 64, 4096))
    src = np.concatenate(srcs + dsts + [np.arange(n, dtype=dtype)])
    dst = np.concatenate(dsts + srcs + [np.arange(n, dtype=dtype)])
    del srcs, dsts
    csr = sparse.csr_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))   # O(E) counting sort
    return DeltaGraph(csr.indptr, csr.indices)


def nearest_other_class(points: np.ndarray, classes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each row in ``queries``, the Euclidean distance (float64) to the nearest row of another class
    (``inf`` if there is none): the largest radius whose open ball around it is pure. Exact faiss search per class,
    the distance to the hit recomputed in float64."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.int64)
    out = np.full(len(queries), np.inf)
    for c in np.unique(classes[queries]):
        others = np.flatnonzero(classes != c)
        if len(others) == 0:
            continue
        mine = np.flatnonzero(classes[queries] == c)
        _, hits = _flat_index(points[others]).search(points[queries[mine]], 1)
        out[mine] = _pair_distances(points[queries[mine]], points[others[hits[:, 0]]])
    return out


def purity_delta(pure_radius: np.ndarray, alpha: float) -> float:
    """The largest delta whose purity (the fraction of points whose open delta-ball holds one class only) is at
    least ``alpha``, given each point's ``pure_radius`` (:func:`nearest_other_class`): a ball around x is pure iff
    delta <= pure_radius(x), so it is the ceil(alpha N)-th largest radius. ``inf`` when all share one class."""
    r = np.sort(np.asarray(pure_radius, dtype=np.float64))
    need = min(len(r), max(1, math.ceil(alpha * len(r) - 1e-9)))
    return float(r[len(r) - need])


def max_cover(graph: DeltaGraph, n_labelled: int, n_picks: int, fallback: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ProbCover's greedy: ``n_picks`` points among rows ``n_labelled ..`` of the graph.

    The labelled rows' balls start covered. Each step picks the point whose ball holds the most uncovered points
    (ties to the lower row), then covers its ball (removing every edge into those points). Once everything is
    covered, the next point of ``fallback`` (row numbers, a random order) not picked yet is taken. Returns the
    picks, how many points each newly covered, every row's gain after the last pick (0 for labelled and picked
    rows) and the uncovered mask. O(N) per step plus the edges into newly covered points."""
    n = len(graph)
    uncovered = np.ones(n, dtype=bool)
    if n_labelled:
        uncovered[graph.indices[:graph.indptr[n_labelled]]] = False
    gain = np.add.reduceat(uncovered[graph.indices], graph.indptr[:-1], dtype=np.int64)
    key = gain.copy()
    key[:n_labelled] = -1
    picks, gains = np.empty(n_picks, dtype=np.int64), np.empty(n_picks, dtype=np.int64)
    next_fallback = 0
    for step in range(n_picks):
        x = int(np.argmax(key))
        if key[x] <= 0:                                   # all covered: fall back on the random order
            while key[fallback[next_fallback]] < 0:
                next_fallback += 1
            x = int(fallback[next_fallback])
        ball = graph.ball(x)
        new = ball[uncovered[ball]]
        uncovered[new] = False
        for _, touched in graph.iter_balls(new):
            np.subtract.at(gain, touched, 1)
            key[touched] = np.where(key[touched] < 0, -1, gain[touched])
        key[x] = -1
        picks[step], gains[step] = x, len(new)
    gain[:n_labelled] = 0
    gain[picks] = 0
    return picks, gains, gain, uncovered


class ProbCover:
    """ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022): greedy maximum probability coverage.

    Over the labelled items and the candidates (their ``features``, L2-normalised unless ``normalize=False``), the
    graph x -> y iff ||x - y|| < delta (:func:`delta_graph`, sparse); the labelled items' balls count as covered.
    Then ``min(ctx.budget, len(candidates))`` times: pick the candidate whose ball holds the most uncovered points
    (ties to the lower position), and cover its ball (:func:`max_cover`). Once every point is covered the paper picks
    at random: here the rest of the batch follows a permutation of the candidates drawn from ``ctx.rng("probcover")``.

    ``delta="auto"`` (default) chooses delta as the paper does: k-means pseudo-labels with k = the number of classes
    (``purity_clusters``, or the number of choices in the task's ``label_schema``), and the largest delta whose purity
    -- the fraction of points whose ball holds a single pseudo-label -- is at least ``alpha`` = 0.95. It is computed
    exactly (:func:`purity_delta`) rather than searched on a grid, from each point's distance to the nearest point of
    another pseudo-label, on ``purity_sample`` = 10,000 points drawn at random when there are more (the sample and the
    k-means are seeded from ``ctx.seed`` only, so delta moves only as the pool does). ``delta`` may be a number
    instead (the authors used fixed values per dataset on normalised features).

    Scores: the picks score above everything else, in pick order. Every other candidate scores its gain after the
    batch (the uncovered points in its ball: what the next greedy step maximises; ties to the lower position), and a
    candidate with nothing left to cover a value in (0, 0.5] by its place in the random order. The top-(k + 1) is
    the greedy; further down the order is a static ranking. ``stats`` holds the last call's delta, edges and
    coverage (before and after the batch).

    Cost: the graph is O(N^2 D) time (exact range search; the paper's code does the same on a GPU) and 4 bytes per
    edge (``max_edges`` = 1e8 guards memory); each pick O(N) plus the edges it removes. delta and the graph are
    computed on the rows sorted by item id and kept (with a copy of those rows) while later calls bring the same
    items with the same features -- every round when the features are label-free and TopK scores the whole pool --
    so a later round pays O(E + N D) for them; the results are the same as without the cache (see :meth:`graph`).

    Deviations, deliberate:

    - delta's purity is estimated on a random sample of points for large pools, and from exact radii, not a grid.
    - Only candidates are picked; the code's argmax could return a labelled point once everything is covered.
    - The random fallback is deterministic (``ctx.rng``); ties in the greedy go to the lower position, as in the
      code (a commented-out line there draws among the top 5).
    - Only the labelled items and the candidates are in the graph (the code uses its whole train set).
    - A point's ball includes the point itself (as in the code, where d(x, x) = 0 < delta); distances are faiss
      float32, so a pair within ~1e-6 (relative) of delta may fall either side.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        features: str = Field(FEATURES, description="task output to cover: 'features' (label-free, usable at "
                                                    "round 0) or 'embeddings' (the model's)")
        normalize: bool = Field(True, description="L2-normalise each row first (the authors' code does)")
        delta: Union[Literal["auto"], PositiveFloat] = Field(
            "auto", description="ball radius, or 'auto': the largest radius with purity >= alpha")
        alpha: float = Field(0.95, gt=0.0, le=1.0, description="purity required by delta='auto'")
        purity_clusters: int | None = Field(
            None, ge=2, description="k of the k-means pseudo-labels for delta='auto' (the number of classes); "
                                    "default: the number of choices in the task's label_schema")
        purity_sample: int = Field(10_000, ge=1, description="points whose balls estimate the purity")
        n_init: int = Field(1, ge=1, description="k-means starts for the pseudo-labels")
        max_edges: int = Field(10**8, ge=1, description="refuse a graph with more edges than this (memory)")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs: Collection[str] = frozenset({self.config.features})
        self.stats: dict[str, float] = {}
        self._cache: dict[Any, Any] = {}

    def n_classes(self, task: Task) -> int:
        if self.config.purity_clusters is not None:
            return self.config.purity_clusters
        schema = hooks.label_schema(task)
        kind = schema() if schema is not None else {}
        names = kind.get("choices") if kind.get("type") == "choices" else None
        if not names or len(names) < 2:
            raise UserError("probcover: delta='auto' needs the number of classes: set purity_clusters (or a "
                            "numeric delta); the task's label_schema lists no choices")
        return len(names)

    def choose_delta(self, points: np.ndarray, k: int, seed: int) -> float:
        """delta='auto': the largest radius whose balls are ``alpha``-pure w.r.t. k-means pseudo-labels."""
        cfg = self.config
        rng = rng_for(seed, "probcover-purity")
        classes = kmeans_labels(points, k, _sk_seed(rng), cfg.n_init)
        n = len(points)
        queries = np.arange(n) if n <= cfg.purity_sample else np.sort(rng.choice(n, cfg.purity_sample, replace=False))
        return purity_delta(nearest_other_class(points, classes, queries), cfg.alpha)

    def graph(self, task: Task, points: np.ndarray, ids: Sequence[ItemId], seed: int) -> tuple[DeltaGraph, float]:
        """delta and the delta-ball graph over ``points`` (rows in the order of ``ids``).

        Both are computed on the rows sorted by item id, so they depend on the set of items only (not on which are
        labelled, nor on the order of ``ctx.labels``): a resumed run gets what an uninterrupted one got. They are
        kept, with the sorted rows, until a call brings another set of items or other features."""
        cfg = self.config
        canon = np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
        sorted_ids = [ids[i] for i in canon]
        rows = points[canon]
        cache = self._cache
        if cache.get("ids") != sorted_ids or not np.array_equal(cache["points"], rows):
            cache = self._cache = {"ids": sorted_ids, "points": rows}
        if cfg.delta == "auto":
            key = ("delta", seed, self.n_classes(task))
            if key not in cache:
                cache[key] = self.choose_delta(rows, key[2], seed)
            delta = cache[key]
        else:
            delta = float(cfg.delta)
        if cache.get("graph_delta") != delta:
            cache.pop("graph", None)
            cache["graph"], cache["graph_delta"] = delta_graph(rows, delta, cfg.max_edges), delta
        place = np.empty(len(ids), dtype=np.int64)
        place[canon] = np.arange(len(ids))
        return cache["graph"].permuted(place, canon), delta

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        cfg = self.config
        m = len(candidates)
        if m == 0:
            return np.zeros(0)
        labelled = sorted(ctx.labels)
        n_lab = len(labelled)
        points = pool_points(task, candidates, labelled, cfg.features, cfg.normalize)
        graph, delta = self.graph(task, points, labelled + list(candidates), ctx.seed)
        order = ctx.rng("probcover").permutation(m)
        n_picks = max(0, min(int(ctx.budget), m))
        picks, gains, gain, uncovered = max_cover(graph, n_lab, n_picks, order + n_lab)
        place = np.empty(m, dtype=np.int64)
        place[order] = np.arange(m)
        rest = gain[n_lab:]
        scores = np.where(rest > 0, rest, 0.5 * (m - place) / m).astype(np.float64)
        picked = picks - n_lab
        scores[picked] = 0.0
        top = scores.max() + 1.0
        scores[picked] = top + np.arange(n_picks - 1, -1, -1, dtype=np.float64)
        n_uncovered = int(uncovered.sum())
        self.stats = {"delta": float(delta), "edges": float(graph.n_edges),
                      "coverage_before": (len(points) - n_uncovered - int(gains.sum())) / len(points),
                      "coverage": (len(points) - n_uncovered) / len(points)}
        return scores
