"""Batch-aware scorers (BADGE, Cluster-Margin): conformance, brute-force checks and behaviour on planted data."""
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Candidates, Env, collect_scores, rng_for
from activelab.strategies.batch import (
    BADGE,
    ClusterMargin,
    average_linkage_clusters,
    gradient_factors,
    kmeans_pp_gradients,
    round_robin,
)
from activelab.strategies.selectors import TopK
from activelab.testing import ScorerConformance, make_context

torch.set_num_threads(1)
ENV = Env()


# ------------------------------------------------------------------------------------------ conformance
class TestBADGEConformance(ScorerConformance):
    covers = ("core", "scorer", "badge")

    def make_scorer(self):
        return BADGE(BADGE.Config(), ENV)


class TestBADGEWithoutBiasConformance(ScorerConformance):
    covers = ("core", "scorer", "badge")

    def make_scorer(self):
        return BADGE(BADGE.Config(bias=False), ENV)


class TestClusterMarginConformance(ScorerConformance):
    covers = ("core", "scorer", "cluster_margin")

    def make_scorer(self):
        return ClusterMargin(ClusterMargin.Config(), ENV)


class TestClusterMarginFeaturesConformance(ScorerConformance):
    covers = ("core", "scorer", "cluster_margin")

    def make_scorer(self):
        return ClusterMargin(ClusterMargin.Config(ratio=3, representation="features", distance_threshold=0.5,
                                                  max_cluster_points=10), ENV)


# ------------------------------------------------------------------------------------------ a scripted task
class FakeTask:
    """Fixed probabilities and embeddings for items "0".."N-1"; chunks of 3 items."""

    outputs = frozenset({PROBS, EMBEDDINGS, FEATURES})

    def __init__(self, probs, embeddings, chunk=3):
        self.probs, self.embeddings, self.chunk = np.asarray(probs), np.asarray(embeddings), chunk

    def pool_ids(self):
        return [str(i) for i in range(len(self.probs))]

    def predict(self, ids, want, mc=None):
        rows = [int(i) for i in ids]
        for start in range(0, len(rows), self.chunk):
            r = rows[start:start + self.chunk]
            out = {}
            if PROBS in want:
                out[PROBS] = self.probs[r]
            if EMBEDDINGS in want:
                out[EMBEDDINGS] = self.embeddings[r]
            if FEATURES in want:
                out[FEATURES] = self.embeddings[r]
            yield out


def order_of(scores):
    """TopK's order: higher score first, ties to the lower position."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))


def random_task(n=40, c=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return FakeTask(rng.dirichlet(np.full(c, 0.7), size=n), rng.normal(size=(n, d)))


# ------------------------------------------------------------------------------------------ BADGE: brute force
def explicit_gradients(probs, h, bias):
    """The C*D (C*(D+1) with the bias) gradient embeddings, formed explicitly: (p - onehot(argmax p)) (x) [h, 1]."""
    r = np.array(probs, dtype=np.float64)
    r[np.arange(len(r)), r.argmax(1)] -= 1.0
    hh = np.concatenate([h, np.ones((len(h), 1))], axis=1) if bias else np.asarray(h, dtype=np.float64)
    return np.einsum("ic,id->icd", r, hh).reshape(len(r), -1)


def brute_force_kmeans_pp(g, k, rng):
    """k-means++ seeding on explicit rows: largest norm first, then D^2 draws by the documented rule."""
    picks = [int(np.argmax(np.square(g).sum(1)))]
    while len(picks) < min(k, len(g)):
        d2 = np.min([np.square(g - g[c]).sum(1) for c in picks], axis=0)
        d2[picks] = 0.0
        cum = np.cumsum(d2)
        picks.append(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")))
    return picks


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_badge_seeding_matches_brute_force_kmeans_pp_on_explicit_gradients(bias, seed):
    task = random_task(seed=seed)
    g = explicit_gradients(task.probs, task.embeddings, bias)
    k = 12
    want = brute_force_kmeans_pp(g, k, rng_for(seed, "draws"))
    picks, dist = kmeans_pp_gradients(task.probs, task.embeddings, k, rng_for(seed, "draws"), bias)
    assert picks == want
    d2 = np.min([np.square(g - g[c]).sum(1) for c in want], axis=0)
    np.testing.assert_allclose(dist, np.sqrt(d2), rtol=1e-7, atol=1e-7)     # final distance to the nearest centre

    # the scorer: the top-k of its scores is that batch, in pick order, drawn from ctx.rng("badge")
    ctx = make_context({}, budget=k, seed=seed)
    scores = collect_scores(BADGE(BADGE.Config(bias=bias)).score(task, Candidates(task.pool_ids()), ctx))
    assert list(order_of(scores)[:k]) == brute_force_kmeans_pp(g, k, ctx.rng("badge"))
    picked = scores[order_of(scores)[:k]]
    assert np.all(np.diff(picked) < 0) and scores[order_of(scores)[k:]].max() < picked[-1]
    chosen = TopK().select(Candidates(task.pool_ids()), scores, k, ctx)
    assert list(chosen.positions) == list(order_of(scores)[:k])


def test_badge_draws_are_random_not_farthest_first():
    task = random_task(n=60, seed=5)
    batches = {tuple(kmeans_pp_gradients(task.probs, task.embeddings, 8, rng_for(s))[0]) for s in range(6)}
    assert len(batches) > 1                                   # sampled: different streams, different batches
    assert len({b[0] for b in batches}) == 1                  # but always the largest gradient first


def test_gradient_embedding_inner_products_factor_and_equal_autograd_last_layer_gradients():
    torch.manual_seed(0)
    n, d, c = 7, 5, 3
    for bias in (True, False):
        head = torch.nn.Linear(d, c, bias=bias).double()
        h = torch.randn(n, d, dtype=torch.float64)
        probs = head(h).softmax(-1).detach().numpy()
        grads = []
        for i in range(n):
            head.zero_grad()
            yhat = int(np.argmax(probs[i]))
            torch.nn.functional.cross_entropy(head(h[i:i + 1]), torch.tensor([yhat])).backward()
            parts = [head.weight.grad.reshape(-1)] + ([head.bias.grad] if bias else [])
            grads.append(torch.cat(parts).numpy())
        g = np.stack(grads)                                       # what BADGE means by the gradient embedding
        r, hh = gradient_factors(probs, h.numpy())
        gram = (r @ r.T) * (hh @ hh.T + (1.0 if bias else 0.0))    # <g_i, g_j> = <r_i, r_j> (<h_i, h_j> + 1)
        np.testing.assert_allclose(gram, g @ g.T, rtol=1e-9, atol=1e-12)
        # gradient norms (budget 0) and the first centre agree with the explicit embeddings
        picks, norms = kmeans_pp_gradients(probs, h.numpy(), 0, rng_for(0), bias)
        np.testing.assert_allclose(norms, np.linalg.norm(g, axis=1), rtol=1e-9)
        assert kmeans_pp_gradients(probs, h.numpy(), 1, rng_for(0), bias)[0] == [int(np.argmax(norms))]


def test_badge_degenerate_pools_still_give_distinct_picks():
    # identical gradients everywhere (sum of D^2 is 0 after the first pick), and zero gradients (one-hot probs)
    for probs in (np.tile([0.6, 0.3, 0.1], (9, 1)), np.tile([1.0, 0.0, 0.0], (9, 1))):
        task = FakeTask(probs, np.ones((9, 2)))
        scores = collect_scores(BADGE().score(task, task.pool_ids(), make_context({}, budget=5)))
        assert np.all(np.isfinite(scores))
        top = order_of(scores)[:5]
        assert len(set(top.tolist())) == 5 and np.all(np.diff(scores[top]) < 0)
    # every point twice: a duplicate of a centre is at distance exactly 0 (not a rounding residual, which can be
    # negative or positive) so it is never drawn while other points remain
    rng = np.random.default_rng(0)
    probs, emb = rng.dirichlet(np.ones(5), size=30), rng.normal(size=(30, 7)).astype(np.float32)
    for s in range(3):
        picks, dist = kmeans_pp_gradients(np.concatenate([probs, probs]), np.concatenate([emb, emb]), 30, rng_for(s))
        assert sorted(p % 30 for p in picks) == list(range(30))
        assert np.all(dist == 0.0)


@pytest.mark.parametrize("scorer", [BADGE(), ClusterMargin()], ids=["badge", "cluster_margin"])
def test_budget_beyond_the_pool_zero_budget_and_no_labels(scorer):
    task = random_task(n=11, seed=3)
    scores = collect_scores(scorer.score(task, task.pool_ids(), make_context({}, budget=50)))
    assert scores.shape == (11,) and np.all(np.isfinite(scores))
    assert len(set(scores.tolist())) == 11                     # every candidate picked, in a strict order
    none = collect_scores(scorer.score(task, task.pool_ids(), make_context({}, budget=0)))
    assert none.shape == (11,) and np.all(np.isfinite(none))
    assert collect_scores(scorer.score(task, [], make_context({}, budget=3))).shape == (0,)


# ------------------------------------------------------------------------------------------ Cluster-Margin
def planted(sizes=(7, 3, 6, 4, 5), n_confident=20, seed=0):
    """Tight, far-apart clusters of low-margin items (cluster 0 the least sure of all), then confident items
    scattered near cluster 0. Returns the task and each item's planted cluster (-1: confident)."""
    rng = np.random.default_rng(seed)
    emb, probs, cluster = [], [], []
    for j, size in enumerate(sizes):
        emb.append(np.array([20.0 * j, 0.0]) + 0.1 * rng.normal(size=(size, 2)))
        gap = (0.001 if j == 0 else 0.05 + 0.01 * j) + 0.0001 * rng.random(size)   # p1 - p2, small everywhere
        probs.append(np.stack([(1 + gap) / 2, (1 - gap) / 2], axis=1))
        cluster += [j] * size
    emb.append(rng.normal(size=(n_confident, 2)))
    probs.append(np.tile([0.97, 0.03], (n_confident, 1)))
    cluster += [-1] * n_confident
    perm = rng.permutation(len(cluster))                       # shuffle so positions carry no structure
    return FakeTask(np.concatenate(probs)[perm], np.concatenate(emb)[perm]), np.array(cluster)[perm]


def test_cluster_margin_spreads_the_batch_over_planted_clusters_smallest_first():
    sizes = (7, 3, 6, 4, 5)
    task, cluster = planted(sizes)
    k = 5
    scorer = ClusterMargin(ClusterMargin.Config(ratio=sum(sizes) / k))      # k_m = every low-margin item
    scores = collect_scores(scorer.score(task, Candidates(task.pool_ids()), make_context({}, budget=k)))
    batch = order_of(scores)[:k]
    assert sorted(cluster[batch]) == [0, 1, 2, 3, 4]           # margin alone would take 5 items of cluster 0
    assert [sizes[c] for c in cluster[batch]] == sorted(sizes)  # visited smallest cluster first
    # twice the batch with 5 clusters: every cluster once before any twice
    scorer = ClusterMargin(ClusterMargin.Config(ratio=sum(sizes) / 10, n_clusters=5))
    scores = collect_scores(scorer.score(task, task.pool_ids(), make_context({}, budget=10)))
    batch = order_of(scores)[:10]
    assert sorted(cluster[batch[:5]]) == [0, 1, 2, 3, 4] and sorted(cluster[batch[5:]]) == [0, 1, 2, 3, 4]
    assert np.all(cluster[batch] >= 0)                         # nothing confident
    assert scores[order_of(scores)[10:]].max() < scores[batch[-1]]


def test_cluster_margin_samples_within_clusters_with_the_context_rng():
    task, cluster = planted()
    scorer = ClusterMargin(ClusterMargin.Config(ratio=5))
    batches = set()
    for seed in range(5):
        ctx = make_context({}, budget=5, seed=seed)
        first = collect_scores(scorer.score(task, task.pool_ids(), ctx))
        np.testing.assert_array_equal(first, collect_scores(scorer.score(task, task.pool_ids(), ctx)))
        batch = order_of(first)[:5]
        assert sorted(cluster[batch]) == [0, 1, 2, 3, 4]
        batches.add(tuple(batch))
    assert len(batches) > 1                                     # random within a cluster, not its least margin


def test_cluster_margin_top_k_is_its_batch_and_the_rest_keep_the_margin_order():
    task, _ = planted()
    candidates = Candidates(task.pool_ids(), np.arange(3, 45))
    ctx = make_context({"0": 1}, budget=6, seed=4)
    cfg = ClusterMargin.Config(ratio=4)
    scores = collect_scores(ClusterMargin(cfg).score(task, candidates, ctx))
    # the same batch from the building blocks, with the same stream
    uncertainty = -np.abs(task.probs[candidates.rows, 0] - task.probs[candidates.rows, 1])
    kept = np.argsort(-uncertainty, kind="stable")[:24]
    rng = ctx.rng("cluster_margin")
    labels = average_linkage_clusters(task.embeddings[candidates.rows][kept], 6, None, cfg.max_cluster_points, rng)
    batch = kept[round_robin(labels, uncertainty[kept], 6, rng)]
    chosen = TopK().select(candidates, scores, 6, ctx)
    assert list(chosen.positions) == list(batch)
    rest = np.setdiff1d(np.arange(len(candidates)), batch)
    np.testing.assert_allclose(scores[rest], uncertainty[rest], atol=1e-12)


def test_cluster_margin_distance_threshold_extremes():
    task, _ = planted()
    uncertainty = -np.abs(task.probs[:, 0] - task.probs[:, 1])
    # a tiny epsilon: every point its own cluster, ties broken by uncertainty -> plain margin order
    tiny = ClusterMargin(ClusterMargin.Config(ratio=3, distance_threshold=1e-9))
    scores = collect_scores(tiny.score(task, task.pool_ids(), make_context({}, budget=4)))
    assert list(order_of(scores)[:4]) == list(np.argsort(-uncertainty, kind="stable")[:4])
    # a huge epsilon: one cluster, so random picks among the k_m least sure
    huge = ClusterMargin(ClusterMargin.Config(ratio=3, distance_threshold=1e9))
    scores = collect_scores(huge.score(task, task.pool_ids(), make_context({}, budget=4)))
    assert set(order_of(scores)[:4]) <= set(np.argsort(-uncertainty, kind="stable")[:12])
    with pytest.raises(ValidationError):
        ClusterMargin.Config(n_clusters=3, distance_threshold=1.0)
    with pytest.raises(ValidationError):
        ClusterMargin.Config(ratio=0.5)


def test_round_robin_visits_clusters_by_size_then_uncertainty():
    labels = np.array([0, 0, 0, 1, 1, 2, 3])
    priority = np.array([0.0, 0.0, 0.0, -0.5, -0.5, -0.9, -0.1])   # cluster 3 is the less sure of the singletons
    picks = round_robin(labels, priority, 7, rng_for(0))
    assert [int(labels[p]) for p in picks] == [3, 2, 1, 0, 1, 0, 0]
    assert sorted(picks) == list(range(7))
    assert round_robin(labels, priority, 0, rng_for(0)) == []
    assert len(round_robin(labels, priority, 3, rng_for(0))) == 3


def test_average_linkage_matches_scipy_and_the_subsample_keeps_its_clusters(monkeypatch):
    from scipy.cluster.hierarchy import fcluster, linkage

    def same_partition(a, b):
        return len(set(zip(a, b))) == len(set(a)) == len(set(b))

    points = np.random.default_rng(2).uniform(size=(200, 2))
    want = fcluster(linkage(points[:60], method="average"), 8, criterion="maxclust")
    assert same_partition(average_linkage_clusters(points[:60], 8, None, 100, rng_for(0)).tolist(), want.tolist())
    # above max_points, the points that went through HAC keep the clusters HAC gave them
    import sklearn.cluster

    seen = []
    real = sklearn.cluster.AgglomerativeClustering

    class Recording(real):
        def fit(self, x, y=None):
            fitted = super().fit(x, y)
            seen.append((np.array(x), fitted.labels_.copy()))
            return fitted

    monkeypatch.setattr(sklearn.cluster, "AgglomerativeClustering", Recording)
    labels = average_linkage_clusters(points, 8, None, 60, rng_for(0))
    (x, hac), = seen
    rows = [int(np.flatnonzero((points == row).all(1))[0]) for row in x]
    assert same_partition(labels[rows].tolist(), hac.tolist())


def test_average_linkage_is_bounded_by_max_points(monkeypatch):
    import sklearn.cluster

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]])
    truth = np.repeat(np.arange(3), 50)
    points = centres[truth] + rng.normal(size=(150, 2))
    fitted = []
    real = sklearn.cluster.AgglomerativeClustering

    class Recording(real):
        def fit(self, x, y=None):
            fitted.append(len(x))
            return super().fit(x, y)

    monkeypatch.setattr(sklearn.cluster, "AgglomerativeClustering", Recording)
    labels = average_linkage_clusters(points, 3, None, 20, rng_for(1))
    assert fitted == [20]                                       # only max_points of them went through HAC
    assert len(set(zip(labels.tolist(), truth.tolist()))) == 3  # yet the planted partition is recovered
    assert len(set(labels.tolist())) == 3
    full = average_linkage_clusters(points, 3, None, 1000, rng_for(1))
    assert fitted == [20, 150] and len(set(zip(full.tolist(), truth.tolist()))) == 3
