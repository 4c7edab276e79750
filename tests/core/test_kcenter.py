"""Greedy k-center and nearest distances (activelab.strategies.kcenter): the same picks as a float64 brute force,
ties included, with bounded memory and with pruning that is visible on clustered data."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activelab.strategies import kcenter
from activelab.strategies.diversity import k_center_scores, nearest_distance


def brute_greedy(points, min_dist, budget):
    """The reference: float64, every point's distance recomputed at every step, ties to the lower index."""
    x = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    d = np.array(min_dist, dtype=np.float64)
    cold = bool(np.all(np.isinf(d)))
    k = min(max(budget, 1 if cold else 0), len(x))
    picked = np.zeros(len(x), dtype=bool)
    picks, at_pick = [], []
    for step in range(k):
        if step == 0 and cold:
            i = int(np.argmin(np.square(x - x.mean(axis=0)).sum(axis=1)))
        else:
            i = int(np.argmax(np.where(picked, -1.0, d)))
        picks.append(i)
        at_pick.append(d[i])
        picked[i] = True
        d = np.minimum(d, np.sqrt(np.square(x - x[i]).sum(axis=1)))
    return picks, np.array(at_pick), d


def brute_nearest(points, others):
    x = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    o = np.asarray(others, dtype=np.float64).reshape(len(others), -1)
    if len(o) == 0:
        return np.full(len(x), np.inf)
    return np.sqrt(np.square(x[:, None, :] - o[None, :, :]).sum(axis=-1)).min(axis=1)


def clustered(rng, n, dim, n_clusters, spread=0.3, dtype=np.float32):
    centres = rng.normal(size=(n_clusters, dim)) * 3.0
    return (centres[rng.integers(0, n_clusters, n)] + spread * rng.normal(size=(n, dim))).astype(dtype)


def check_against_brute_force(points, min_dist, budget, n_blocks=None, batch=kcenter.BATCH):
    """farthest_first's picks, pick distances and final distances (bit for bit), and the scores' top-k, against the
    brute force; neither ``n_blocks`` nor ``batch`` (picks applied together) may change the result."""
    min_dist = np.asarray(min_dist, dtype=np.float64)
    cold = bool(np.all(np.isinf(min_dist)))
    picks, at_pick, final = brute_greedy(points, min_dist, budget)
    got, got_at, got_final, _ = kcenter.farthest_first(points, min_dist, len(picks), cold, n_blocks=n_blocks,
                                                        batch=batch)
    assert list(got) == picks
    assert np.array_equal(got_at, at_pick)
    unpicked = np.setdiff1d(np.arange(len(min_dist)), picks)
    assert np.array_equal(got_final[unpicked], final[unpicked])
    scores = k_center_scores(points, min_dist, budget)
    order = np.lexsort((np.arange(len(scores)), -scores))             # TopK: score, then lower index
    assert list(order[:len(picks)]) == picks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", ["clustered", "isotropic"])
@pytest.mark.parametrize("start", ["labelled", "cold"])
def test_picks_equal_float64_brute_force(seed, shape, start):
    rng = np.random.default_rng(seed)
    n, dim = int(rng.integers(200, 600)), int(rng.integers(2, 40))
    points = clustered(rng, n, dim, 7) if shape == "clustered" else rng.normal(size=(n, dim)).astype(np.float32)
    if start == "cold":
        min_dist = np.full(n, np.inf)
    else:
        labelled = clustered(rng, 20, dim, 7) if shape == "clustered" else rng.normal(size=(20, dim))
        min_dist = brute_nearest(points, labelled.astype(np.float32))
    for n_blocks, batch in ((None, kcenter.BATCH), (1, 1), (5, 3), (40, 100)):
        check_against_brute_force(points, min_dist, int(rng.integers(1, 80)), n_blocks=n_blocks, batch=batch)


def test_float64_points_far_from_the_origin_and_tiny_clusters():
    """Offsets of 1e4 and clusters of size 1e-3: float32 matvecs would lose everything; the bounds stay exact."""
    rng = np.random.default_rng(11)
    base = rng.normal(size=(5, 16)) * 10.0 + 1e4
    points = base[rng.integers(0, 5, 400)] + 1e-3 * rng.normal(size=(400, 16))
    for dtype in (np.float64, np.float32):
        check_against_brute_force(points.astype(dtype), np.full(400, np.inf), 60, n_blocks=8)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_exact_ties_and_duplicates_on_an_integer_grid(data):
    """Integer coordinates: many distances tie exactly (and are computed exactly in any order), many points are
    duplicates; every tie must go to the lower index, as in the brute force."""
    n = data.draw(st.integers(1, 40))
    dim = data.draw(st.integers(1, 4))
    coords = data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=dim, max_size=dim), min_size=n, max_size=n))
    points = np.array(coords, dtype=np.float32)
    mode = data.draw(st.sampled_from(["cold", "labelled", "zero", "mixed"]))
    if mode == "cold":
        min_dist = np.full(n, np.inf)
    elif mode == "zero":
        min_dist = np.zeros(n)                                    # everything labelled, at distance 0
    elif mode == "mixed":
        min_dist = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0 ** 0.5, 2.0, np.inf]),
                                               min_size=n, max_size=n)))
    else:
        k = data.draw(st.integers(1, 5))
        labelled = np.array(data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=dim, max_size=dim),
                                               min_size=k, max_size=k)), dtype=np.float32)
        min_dist = brute_nearest(points, labelled)
    budget = data.draw(st.integers(0, n + 3))
    n_blocks = data.draw(st.sampled_from([None, 1, 2, 7]))
    batch = data.draw(st.sampled_from([1, 2, kcenter.BATCH, 100]))
    check_against_brute_force(points, min_dist, budget, n_blocks=n_blocks, batch=batch)


def test_edge_cases():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(10, 3)).astype(np.float32)
    # budget beyond N: every point picked, scores a strict greedy order
    check_against_brute_force(points, rng.uniform(1, 2, 10), 25)
    # budget 0: the scores are the given distances; cold start still makes one pick
    dist = rng.uniform(0, 1, 10)
    assert np.array_equal(k_center_scores(points, dist, 0), dist)
    cold = k_center_scores(points, np.full(10, np.inf), 0)
    assert np.all(np.isfinite(cold)) and int(np.argmax(cold)) == brute_greedy(points, np.full(10, np.inf), 0)[0][0]
    # everything labelled at distance 0: picks in index order
    assert list(np.lexsort((np.arange(10), -k_center_scores(points, np.zeros(10), 4)))[:4]) == [0, 1, 2, 3]
    # one point, no points
    assert k_center_scores(points[:1], np.full(1, np.inf), 3).tolist() == [0.0]
    assert k_center_scores(np.zeros((0, 3), np.float32), np.zeros(0), 3).shape == (0,)
    # all duplicates
    check_against_brute_force(np.ones((30, 4), np.float32), np.full(30, np.inf), 8)
    with pytest.raises(ValueError):
        k_center_scores(np.array([[0.0], [np.nan]]), np.full(2, np.inf), 1)
    with pytest.raises(ValueError):
        k_center_scores(points, np.full(10, -1.0), 1)
    with pytest.raises(ValueError):
        k_center_scores(points, np.full(10, np.nan), 1)
    # float16 and integer embeddings are widened without changing a value
    check_against_brute_force(points.astype(np.float16), dist, 4)
    check_against_brute_force(np.round(points * 3).astype(np.int64), dist, 4)


def test_few_exact_distances_on_clustered_and_isotropic_data():
    """The float32 bounds leave an exact distance only where a pick might come closer (or might be chosen): a few
    percent of what a brute force computes (n * k), on clustered data and on isotropic data alike, cold or not."""
    rng = np.random.default_rng(5)
    n, dim, k = 6000, 32, 120
    points = clustered(rng, n, dim, 30, spread=0.2)
    iso = rng.normal(size=(n, dim)).astype(np.float32)
    for x, min_dist in ((points, brute_nearest(points, clustered(rng, 30, dim, 30, spread=0.2))),
                        (iso, brute_nearest(iso, rng.normal(size=(30, dim)).astype(np.float32))),
                        (iso, np.full(n, np.inf))):
        picks, at_pick, _ = brute_greedy(x, min_dist, k)
        got, got_at, _, stats = kcenter.farthest_first(x, min_dist, k, bool(np.isinf(min_dist).all()))
        assert list(got) == picks
        assert np.array_equal(got_at, at_pick)
        assert stats["n_blocks"] > 1
        assert stats["exact_evals"] + stats["choice_evals"] < 0.05 * n * k


def test_nearest_distance_is_exact():
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        x = rng.normal(size=(700, 24)).astype(dtype)
        o = rng.normal(size=(90, 24)).astype(dtype)
        o[:5] = x[:5]                                             # distance 0
        got = nearest_distance(x, o, block=32)
        assert np.array_equal(got, brute_nearest(x, o))                 # bit for bit
        assert np.all(got[:5] == 0.0) and got.dtype == np.float64
    # far from the origin, nearest neighbours 1e-3 apart: the float32 products alone could not tell them apart
    base = rng.normal(size=(50, 8)) + 1e3
    x = (base[rng.integers(0, 50, 300)] + 1e-3 * rng.normal(size=(300, 8))).astype(np.float32)
    o = (base + 1e-3 * rng.normal(size=(50, 8))).astype(np.float32)
    assert np.array_equal(nearest_distance(x, o, block=7), brute_nearest(x, o))
    assert np.all(np.isinf(nearest_distance(x, o[:0])))
    assert nearest_distance(x[:0], o).shape == (0,)


def test_nearest_distance_memory_is_bounded_by_the_block_not_n_times_m():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20_000, 16)).astype(np.float32)
    o = rng.normal(size=(1_000, 16)).astype(np.float32)
    nearest_distance(x[:50], o[:50])                              # compile outside the measurement
    tracemalloc.start()
    got = nearest_distance(x, o, block=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full = 20_000 * 1_000 * 8                                     # one float64 distance matrix: 160 MB
    assert peak < kcenter.TEMP_BYTES + (4 << 20), peak             # one block of products plus small change
    assert peak < full / 8
    sample = rng.choice(20_000, 300, replace=False)
    assert np.array_equal(got[sample], brute_nearest(x[sample], o))


def test_exact_distance_is_numpys_float64_distance_bit_for_bit():
    """Decisions are taken on these values; they equal numpy's brute force (pairwise summation) exactly, so even a
    tie that exists only after rounding is broken the same way."""
    rng = np.random.default_rng(6)
    for dim in (1, 3, 7, 8, 9, 16, 100, 128, 129, 300, 1000):
        a = rng.normal(size=(50, dim)).astype(np.float32)
        b = rng.normal(size=dim).astype(np.float32)
        ref = np.sqrt(np.square(a.astype(np.float64) - b.astype(np.float64)).sum(axis=1))
        assert [kcenter.exact_distance(row, b) for row in a] == ref.tolist()


@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e-30), (np.float64, 1e-20), (np.float64, 1e20),
                                          (np.float64, 1e100), (np.float32, 1e-25), (np.float32, 1e19)])
def test_exact_at_any_scale(dtype, scale):
    """The float32 products work on rows scaled by a power of two to norm ~1: coordinates whose products would
    overflow float32 (about 2e19 and up) or underflow it (about 1e-21 and down) are as exact as ordinary ones, for
    the greedy picks and for the nearest distances."""
    rng = np.random.default_rng(int(-np.log10(scale)) % 97)
    points = (clustered(rng, 300, 4, 5, dtype=np.float64) * scale).astype(dtype)
    labelled = (clustered(rng, 10, 4, 5, dtype=np.float64) * scale).astype(dtype)
    min_dist, _ = kcenter.nearest_distances(points, labelled)
    assert np.array_equal(min_dist, brute_nearest(points, labelled))
    for batch in (1, kcenter.BATCH):
        check_against_brute_force(points, min_dist, 40, batch=batch)
        check_against_brute_force(points, np.full(300, np.inf), 40, batch=batch)


def test_cold_start_in_one_dimension_uses_numpys_mean():
    """For (N, 1) points numpy's mean adds pairwise, not row by row: the first pick (nearest that mean) must use
    numpy's value, or a near-tie around the mean goes the other way."""
    found = False
    for seed in range(100):
        x = np.random.default_rng(seed).normal(size=(300, 1)) + 3.0
        x[2:] = 3.0 + np.sign(x[2:] - 3.0) * (1.5 + np.abs(x[2:] - 3.0))     # everything else far from the mean
        sequential = float(np.add.accumulate(x[:, 0])[-1] / len(x))
        for k in range(-40, 41):                                             # a pair nearly equidistant from it
            x[0, 0], x[1, 0] = sequential - 0.25 + k * np.spacing(sequential), sequential + 0.25
            if x.mean(axis=0)[0] != float(np.add.accumulate(x[:, 0])[-1] / len(x)):
                check_against_brute_force(x, np.full(300, np.inf), 3)
                found = True
        if found:
            break
    assert found, "no case where numpy's mean differs from the row-by-row one"
