"""Low-budget scorers (activelab.strategies.coldstart): TypiClust and ProbCover against planted clusters and brute
force, and the conformance kit for each."""
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from activelab.errors import UserError
from activelab.protocol import EMBEDDINGS, FEATURES, Candidates, Env
from activelab.strategies import coldstart
from activelab.strategies.coldstart import (
    ProbCover,
    TypiClust,
    delta_graph,
    max_cover,
    nearest_other_class,
    purity_delta,
    typiclust_order,
)
from activelab.strategies.selectors import TopK
from activelab.testing import ScorerConformance, make_context

torch.set_num_threads(1)
ENV = Env()


# ------------------------------------------------------------------------------------------ conformance
class TestTypiClustConformance(ScorerConformance):
    covers = ("core", "scorer", "typiclust")

    def make_scorer(self):
        return TypiClust(TypiClust.Config(), ENV)


class TestProbCoverConformance(ScorerConformance):
    covers = ("core", "scorer", "probcover")

    def make_scorer(self):
        return ProbCover(ProbCover.Config(), ENV)         # delta="auto": k from the toy task's label_schema


class TestProbCoverOnEmbeddingsConformance(ScorerConformance):
    covers = ("core", "scorer", "probcover")

    def make_scorer(self):
        return ProbCover(ProbCover.Config(features=EMBEDDINGS, delta=0.3, normalize=False), ENV)


# ------------------------------------------------------------------------------------------ a planted task
class PlantedTask:
    """Fixed FEATURES (and EMBEDDINGS: the same rows, or others); ids "0".."n-1"; chunks of 7; records calls."""

    outputs = frozenset({FEATURES, EMBEDDINGS})

    def __init__(self, x, embeddings=None, chunk=7):
        self.x = np.asarray(x, dtype=np.float32)
        self.e = self.x if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        self.chunk, self.calls = chunk, []

    def pool_ids(self):
        return [str(i) for i in range(len(self.x))]

    def predict(self, ids, want, mc=None):
        self.calls.append(set(want))
        rows = np.array([int(i) for i in ids], dtype=np.int64)
        for start in range(0, len(rows), self.chunk):
            r = rows[start:start + self.chunk]
            yield {name: (self.x if name == FEATURES else self.e)[r] for name in want}


def planted(sizes, dim=8, sep=12.0, spread=1.0, seed=0):
    """Well-separated Gaussian clusters of the given sizes (centres sep * e_c), rows shuffled."""
    rng = np.random.default_rng(seed)
    member = np.repeat(np.arange(len(sizes)), sizes)
    centres = sep * np.eye(len(sizes), dim)
    x = centres[member] + spread * rng.normal(size=(len(member), dim))
    perm = rng.permutation(len(member))
    return x[perm], member[perm]


def setting(x, labelled=(), budget=5, round=1, seed=0):
    """The task, its candidates (every unlabelled row, as positions) and a context."""
    task = PlantedTask(x)
    ids = task.pool_ids()
    labels = {ids[i]: 0 for i in labelled}
    rows = [r for r in range(len(ids)) if ids[r] not in labels]
    return task, Candidates(ids, rows), np.array(rows), make_context(labels, round=round, seed=seed, budget=budget)


def top(scores, k):
    """What TopK asks for, in its order (ties to the lower position)."""
    ctx = make_context()
    return list(TopK().select(list(range(len(scores))), scores, k, ctx).positions)


def pairwise(x):
    x = np.asarray(x, dtype=np.float64)
    return np.sqrt(np.square(x[:, None, :] - x[None, :, :]).sum(-1))


def brute_mean_knn(x, k):
    d = pairwise(x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1) if k >= 1 else np.zeros(len(x))


# ------------------------------------------------------------------------------------------ TypiClust
def test_typiclust_picks_one_item_per_planted_cluster_the_densest_and_larger_clusters_first():
    sizes = [60, 25, 45, 35, 50]
    x, member = planted(sizes)
    task, candidates, rows, ctx = setting(x, budget=len(sizes))
    scores = TypiClust(TypiClust.Config(normalize=False)).score(task, candidates, ctx)
    picks = top(scores, len(sizes))
    assert sorted(member[picks]) == list(range(len(sizes)))              # one per cluster
    assert list(member[picks]) == list(np.argsort(sizes)[::-1])          # no labels: larger clusters first
    for p in picks:
        mine = np.flatnonzero(member == member[p])
        dist = brute_mean_knn(x[mine], min(20, len(mine) // 2))
        assert mine[np.argmin(dist)] == p                                 # the most typical point of its cluster


def test_typiclust_one_per_cluster_on_normalised_features_too():
    x, member = planted([40, 40, 40, 40], seed=3)
    task, candidates, rows, ctx = setting(x, budget=4)
    picks = top(TypiClust().score(task, candidates, ctx), 4)
    assert sorted(member[picks]) == [0, 1, 2, 3]


def test_typiclust_avoids_clusters_that_hold_labels():
    x, member = planted([40, 40, 40, 40], seed=1)
    labelled = [int(np.flatnonzero(member == 0)[0]), int(np.flatnonzero(member == 1)[3])]
    task, candidates, rows, ctx = setting(x, labelled=labelled, budget=2)
    scorer = TypiClust(TypiClust.Config(normalize=False))
    picks = top(scorer.score(task, candidates, ctx), 2)
    assert sorted(member[rows[picks]]) == [2, 3]
    assert scorer.stats["clusters"] == 4 and scorer.stats["uncovered_clusters"] == 2
    assert task.calls and all(want == {FEATURES} for want in task.calls)


def test_typiclust_uses_small_clusters_last():
    x, member = planted([50, 40, 30, 3], seed=2)                         # cluster 3: an outlier group of 3
    task, candidates, rows, ctx = setting(x, budget=4)
    order = top(TypiClust(TypiClust.Config(normalize=False)).score(task, candidates, ctx), len(x))
    assert list(member[order[:4]]) == [0, 1, 2, 0]                       # a second pick from the largest cluster
    assert list(member[order[-3:]]) == [3, 3, 3]                         # the small cluster only at the very end
    keep_small = TypiClust(TypiClust.Config(normalize=False, min_cluster_size=0))
    assert list(member[top(keep_small.score(task, candidates, ctx), 4)]) == [0, 1, 2, 3]


def brute_typiclust(points, n_labelled, clusters, k_neighbours, min_size):
    """The paper's loop, literally: cluster with (not small, fewest labelled incl. picks, largest, lowest number)."""
    n = len(points)
    size = np.bincount(clusters)
    count = np.bincount(clusters[:n_labelled], minlength=len(size))
    dist = np.zeros(n)
    for c in range(len(size)):
        mine = np.flatnonzero(clusters == c)
        if len(mine):
            dist[mine] = brute_mean_knn(points[mine], min(k_neighbours, len(mine) // 2))
    left = set(range(n_labelled, n))
    order = []
    while left:
        live = sorted({int(clusters[i]) for i in left})
        c = min(live, key=lambda c: (size[c] <= min_size, count[c], -size[c], c))
        best = min((i for i in left if clusters[i] == c), key=lambda i: (dist[i], i))
        order.append(best - n_labelled)
        left.remove(best)
        count[c] += 1
    return order


@pytest.mark.parametrize("seed", range(4))
def test_typiclust_order_equals_the_papers_loop(seed):
    rng = np.random.default_rng(seed)
    n, n_labelled = int(rng.integers(30, 90)), int(rng.integers(0, 10))
    points = rng.normal(size=(n, 3)).astype(np.float32)
    clusters = rng.integers(0, int(rng.integers(2, 12)), size=n)
    clusters = np.unique(clusters, return_inverse=True)[1]
    for k_neighbours, min_size in ((20, 5), (3, 0), (2, 8)):
        got = typiclust_order(points, n_labelled, clusters, k_neighbours, min_size)
        assert list(got) == brute_typiclust(points, n_labelled, clusters, k_neighbours, min_size)


def test_typiclust_top_k_of_scores_is_the_greedy_order(monkeypatch):
    x, member = planted([30, 20, 25, 15, 40, 10], dim=6, sep=4.0, spread=1.5, seed=5)
    task, candidates, rows, ctx = setting(x, labelled=[0, 7, 19], budget=6, round=3, seed=4)
    seen = []
    real = coldstart.kmeans_labels
    monkeypatch.setattr(coldstart, "kmeans_labels", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    scores = TypiClust().score(task, candidates, ctx)
    points = coldstart.unit_rows(np.concatenate([x[[0, 19, 7]], x[rows]]))     # labelled items sorted by id
    greedy = typiclust_order(points, 3, seen[0])
    assert len(np.unique(seen[0])) == 3 + 6                               # |L| + B clusters
    for k in (1, 6, len(rows)):
        assert top(scores, k) == list(greedy[:k])
    assert np.all(np.isfinite(scores)) and len(np.unique(scores)) == len(scores)


def test_typiclust_is_deterministic_and_handles_odd_budgets():
    x, _ = planted([20, 20, 20], seed=6)
    for labelled in ([], [1, 2]):
        for budget in (0, 1, 3, 500):                                     # 500: more than the pool
            task, candidates, rows, ctx = setting(x, labelled=labelled, budget=budget)
            a = TypiClust().score(task, candidates, ctx)
            b = TypiClust().score(PlantedTask(x), list(candidates), ctx)
            np.testing.assert_array_equal(a, b)
            assert a.shape == (len(rows),) and np.all(np.isfinite(a)) and len(np.unique(a)) == len(a)
    task, _, _, ctx = setting(x)
    assert TypiClust().score(task, [], ctx).shape == (0,)


def test_features_name_the_output_used():
    x, member = planted([30, 30, 30], seed=7)
    for cls in (TypiClust, ProbCover):
        scorer = cls(cls.Config(features=EMBEDDINGS, **({"delta": 2.0} if cls is ProbCover else {})))
        assert set(scorer.needs) == {EMBEDDINGS}
        assert set(cls().needs) == {FEATURES}
        task = PlantedTask(np.zeros_like(x), embeddings=x)
        scorer.score(task, task.pool_ids(), make_context(budget=3))
        assert task.calls and all(want == {EMBEDDINGS} for want in task.calls)


# ------------------------------------------------------------------------------------------ ProbCover
def brute_graph(x, delta):
    return pairwise(x) < delta


def coverage_along(x, labelled, picks, delta):
    """The fraction of points within delta of a labelled point or of one of the first j picks, j = 0..len."""
    adj = brute_graph(x, delta)
    covered = adj[list(labelled)].any(axis=0) if len(labelled) else np.zeros(len(x), dtype=bool)
    out = [covered.mean()]
    for p in picks:
        covered = covered | adj[p]
        out.append(covered.mean())
    return np.array(out)


def safe_delta(x, delta):
    """delta moved off every pairwise distance (float32 range search must agree with float64 brute force)."""
    d = pairwise(x)
    while np.any(np.abs(d - delta) < 1e-4 * max(delta, 1.0)):
        delta *= 1.0137
    return delta


def test_probcovers_cover_grows_with_each_pick():
    x, member = planted([120, 40, 30, 20], dim=4, sep=6.0, spread=1.0, seed=8)
    delta = safe_delta(x, 1.6)
    task, candidates, rows, ctx = setting(x, budget=len(x))
    scorer = ProbCover(ProbCover.Config(delta=delta, normalize=False))
    scores = scorer.score(task, candidates, ctx)
    picks = top(scores, len(x))
    cover = coverage_along(x, [], picks, delta)
    full = int(np.argmax(cover == 1.0))
    assert cover[-1] == 1.0 and 1 < full < len(x)
    assert np.all(np.diff(cover[:full + 1]) > 0)                         # strictly more with each pick until full
    assert np.all(cover[full:] == 1.0)
    assert brute_graph(x, delta)[picks[0]].sum() == brute_graph(x, delta).sum(axis=1).max()   # densest ball first
    assert member[picks[0]] == 0                                          # in the largest cluster
    assert scorer.stats["coverage_before"] == 0.0 and scorer.stats["coverage"] == 1.0
    assert sorted(picks) == list(range(len(x)))                           # the fallback completes the order


def test_probcover_counts_labelled_balls_as_covered():
    x, member = planted([80, 30, 30], dim=4, sep=6.0, spread=1.0, seed=9)
    delta = safe_delta(x, 2.5)
    adj = brute_graph(x, delta)
    big = np.flatnonzero(member == 0)
    centre = int(big[np.argmax(adj[big].sum(axis=1))])                   # the densest ball of the largest cluster
    task, candidates, rows, ctx = setting(x, labelled=[centre], budget=5)
    scorer = ProbCover(ProbCover.Config(delta=delta, normalize=False))
    picks = rows[top(scorer.score(task, candidates, ctx), 5)]
    assert member[picks[0]] != 0                                          # without the label it would be cluster 0
    covered = adj[centre]
    gains = (adj[rows] & ~covered).sum(axis=1)
    assert (adj[picks[0]] & ~covered).sum() == gains.max()
    cover = coverage_along(x, [centre], picks, delta)
    assert cover[0] == pytest.approx(covered.mean()) and scorer.stats["coverage_before"] == pytest.approx(cover[0])
    assert np.all(np.diff(cover[: int(np.argmax(cover == 1.0)) + 1]) > 0)


def brute_max_cover(x, labelled, candidates, delta):
    """The paper's greedy with a dense matrix until everything is covered (ties to the lower candidate)."""
    adj = brute_graph(x, delta)
    covered = adj[list(labelled)].any(axis=0) if len(labelled) else np.zeros(len(x), dtype=bool)
    picks, gains = [], []
    left = list(candidates)
    while not covered.all():
        gain = [(adj[c] & ~covered).sum() for c in left]
        best = left[int(np.argmax(gain))]
        picks.append(best)
        gains.append(int(max(gain)))
        covered |= adj[best]
        left.remove(best)
    return picks, gains


@pytest.mark.parametrize("seed", range(5))
def test_probcover_greedy_equals_brute_force_on_a_tiny_case(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(int(rng.integers(25, 45)), 2))
    delta = safe_delta(x, float(rng.uniform(0.4, 1.0)))
    labelled = sorted(rng.choice(len(x), size=int(rng.integers(0, 4)), replace=False).tolist())
    task, candidates, rows, ctx = setting(x, labelled=labelled, budget=len(x))
    want, want_gains = brute_max_cover(x, labelled, rows, delta)
    scores = ProbCover(ProbCover.Config(delta=delta, normalize=False)).score(task, candidates, ctx)
    got = rows[top(scores, len(rows))]
    assert list(got[:len(want)]) == want
    assert sorted(got) == list(rows)
    # the graph and the greedy's bookkeeping themselves
    points = np.concatenate([x[labelled], x[rows]]).astype(np.float32)
    graph = delta_graph(points, delta)
    dense = np.zeros((len(x), len(x)), dtype=bool)
    for i in range(len(x)):
        dense[i, graph.ball(i)] = True
    np.testing.assert_array_equal(dense, brute_graph(points, delta))
    picks, gains, _, uncovered = max_cover(graph, len(labelled), len(want), np.arange(len(labelled), len(x)))
    assert list(gains) == want_gains and not uncovered.any()


def test_probcover_budget_prefix_is_the_greedy_and_the_rest_ranks_by_gain():
    x, _ = planted([40, 30, 20], dim=3, sep=5.0, spread=1.2, seed=10)
    delta = safe_delta(x, 1.0)
    task, candidates, rows, ctx = setting(x, labelled=[3], budget=4)
    scores = ProbCover(ProbCover.Config(delta=delta, normalize=False)).score(task, candidates, ctx)
    want, _ = brute_max_cover(x, [3], rows, delta)
    assert len(want) > 5
    assert list(rows[top(scores, 5)]) == want[:5]                         # the batch, then the next greedy pick
    assert np.all(np.isfinite(scores))
    adj = brute_graph(x, delta)
    covered = adj[[3] + want[:4]].any(axis=0)
    rest = np.setdiff1d(np.arange(len(rows)), top(scores, 4))
    gains = (adj[rows[rest]] & ~covered).sum(axis=1)
    positive = gains > 0
    np.testing.assert_array_equal(scores[rest][positive], gains[positive])


def test_probcover_is_deterministic_and_handles_odd_budgets():
    x, _ = planted([20, 20, 20], dim=3, sep=5.0, seed=11)
    for labelled in ([], [4, 5]):
        for budget in (0, 1, 7, 500):
            task, candidates, rows, ctx = setting(x, labelled=labelled, budget=budget)
            cfg = ProbCover.Config(purity_clusters=3)
            a = ProbCover(cfg).score(task, candidates, ctx)
            np.testing.assert_array_equal(a, ProbCover(cfg).score(PlantedTask(x), list(candidates), ctx))
            assert a.shape == (len(rows),) and np.all(np.isfinite(a))
            assert len(np.unique(a[top(a, budget)])) == min(budget, len(rows))
    task, _, _, ctx = setting(x)
    assert ProbCover(ProbCover.Config(purity_clusters=3)).score(task, [], ctx).shape == (0,)


def test_probcover_keeps_delta_and_graph_while_the_items_stay_the_same(monkeypatch):
    x, _ = planted([40, 30, 20], dim=3, sep=5.0, seed=16)
    built = []
    real = coldstart.delta_graph
    monkeypatch.setattr(coldstart, "delta_graph", lambda *a, **k: built.append(a[1]) or real(*a, **k))
    cfg = ProbCover.Config(purity_clusters=3)
    kept = ProbCover(cfg)
    labelled = [5, 17, 40]
    for round in range(1, 4):                  # each round the picks join the labelled items: the same 90 items
        task, candidates, rows, ctx = setting(x, labelled=labelled, budget=4, round=round)
        scores = kept.score(task, candidates, ctx)
        fresh = ProbCover(cfg).score(task, candidates, ctx)
        np.testing.assert_array_equal(scores, fresh)
        labelled = labelled + list(rows[top(scores, 4)])
    assert len(built) == 1 + 3                 # the kept scorer built it once; each fresh one once
    task, candidates, rows, ctx = setting(x, labelled=labelled, budget=4, round=4)
    shuffled = make_context({str(i): 0 for i in reversed(labelled)}, round=4, budget=4)
    assert list(shuffled.labels) != list(ctx.labels)
    np.testing.assert_array_equal(kept.score(task, candidates, ctx), kept.score(task, candidates, shuffled))
    assert len(built) == 4                     # the labels' order does not matter
    other = x.copy()
    other[0] += 1.0                            # other features for the same items: built anew
    kept.score(PlantedTask(other), candidates, ctx)
    assert len(built) == 5


def test_probcover_fallback_is_a_seeded_random_order():
    x = np.random.default_rng(12).normal(size=(30, 2))
    task, candidates, rows, _ = setting(x)
    big = ProbCover.Config(delta=100.0, normalize=False)                  # one pick covers everything
    orders = [top(ProbCover(big).score(task, candidates, make_context(budget=30, round=r)), 30) for r in (1, 1, 2)]
    assert orders[0] == orders[1] and orders[0][1:] != orders[2][1:]
    assert orders[0][1:] != sorted(orders[0][1:])


# ------------------------------------------------------------------------------------------ delta
def brute_purity(x, classes, delta):
    d = pairwise(x)
    return np.mean([np.all(classes[d[i] < delta] == classes[i]) for i in range(len(x))])


@pytest.mark.parametrize("seed", range(3))
def test_purity_delta_is_the_largest_pure_enough_radius(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    classes = rng.integers(0, 3, size=60)
    radius = nearest_other_class(x, classes, np.arange(60))
    d = pairwise(x)
    want = np.array([d[i, classes != classes[i]].min() for i in range(60)])
    np.testing.assert_allclose(radius, want, rtol=1e-12)
    for alpha in (0.95, 0.5, 1.0):
        delta = purity_delta(radius, alpha)
        assert brute_purity(x, classes, delta) >= alpha
        assert brute_purity(x, classes, delta * (1 + 1e-9) + 1e-12) < alpha
    assert purity_delta(np.full(5, np.inf), 0.95) == np.inf


def test_auto_delta_separates_planted_clusters():
    x, member = planted([50, 40, 30], dim=5, sep=10.0, spread=1.0, seed=13)
    task, candidates, rows, ctx = setting(x, budget=3)
    scorer = ProbCover(ProbCover.Config(normalize=False, purity_clusters=3))
    picks = top(scorer.score(task, candidates, ctx), 3)
    d = pairwise(x)
    gap = min(d[np.ix_(member == a, member == b)].min() for a in range(3) for b in range(3) if a != b)
    assert scorer.stats["delta"] >= gap                                  # pseudo-labels = planted clusters
    assert brute_purity(x.astype(np.float32), member, scorer.stats["delta"]) >= 0.95   # the rows it was given
    assert sorted(member[picks]) == [0, 1, 2]
    sampled = ProbCover(ProbCover.Config(normalize=False, purity_clusters=3, purity_sample=40))
    sampled.score(task, candidates, ctx)
    assert sampled.stats["delta"] >= gap


def test_auto_delta_needs_the_number_of_classes():
    x, _ = planted([10, 10], seed=14)
    task, candidates, _, ctx = setting(x)
    with pytest.raises(UserError, match="purity_clusters"):
        ProbCover().score(task, candidates, ctx)                          # PlantedTask has no label_schema


def test_probcover_refuses_a_graph_over_max_edges_and_validates_its_config():
    x, _ = planted([30, 30], seed=15)
    task, candidates, _, ctx = setting(x)
    with pytest.raises(UserError, match="max_edges"):
        ProbCover(ProbCover.Config(delta=1e6, max_edges=500)).score(task, candidates, ctx)
    for bad in ({"delta": 0.0}, {"delta": "big"}, {"alpha": 0.0}, {"purity_clusters": 1}):
        with pytest.raises(ValidationError):
            ProbCover.Config.model_validate(bad)
    with pytest.raises(ValidationError):
        TypiClust.Config.model_validate({"k_neighbours": 0})
