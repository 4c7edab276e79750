"""The fused query kernels (activelab.strategies.kernels) against the float64 reference measures: the same picks as
top-k over the reference (tie order included), the same scores, bounds that really bound, and pruning that happens."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activelab.strategies import kernels as K
from activelab.strategies import uncertainty as U

REFERENCE = {"least_confidence": U.least_confidence, "margin": U.margin, "entropy": U.entropy, "bald": U.bald}
PROBS_KINDS = ("least_confidence", "margin", "entropy")


def reference_top_k(scores: np.ndarray, k: int, offset: int = 0) -> np.ndarray:
    """Brute force: higher score first, ties to the lower position, NaN after everything (even -inf)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.size), -np.where(np.isnan(scores), -np.inf, scores), np.isnan(scores)))
    return order[:k] + offset


def accumulate(kind: str, data: np.ndarray, k: int, block: int, offset: int = 0) -> K.TopKAccumulator:
    acc = K.TopKAccumulator(k)
    n = data.shape[1] if kind == "bald" else data.shape[0]
    for lo in range(0, n, block):
        piece = data[:, lo:lo + block] if kind == "bald" else data[lo:lo + block]
        acc.push_measure(kind, piece, offset + lo)
    return acc


def assert_same_picks(acc: K.TopKAccumulator, ref_scores: np.ndarray, k: int, offset: int = 0) -> None:
    positions, scores = acc.result()
    want = reference_top_k(ref_scores, k, offset)
    np.testing.assert_array_equal(positions, want)
    np.testing.assert_allclose(scores, ref_scores[want - offset], rtol=0, atol=1e-6)
    assert positions.dtype == np.int64 and scores.dtype == np.float64


def dirichlet(rng, alpha: float, shape: tuple[int, ...], n_class: int, dtype=np.float32) -> np.ndarray:
    return rng.dirichlet(np.full(n_class, alpha), size=shape).astype(dtype)


# ------------------------------------------------------------------------------------------ picks and scores
@pytest.mark.parametrize("kind", PROBS_KINDS)
@pytest.mark.parametrize("n_class,alpha", [(2, 1.0), (3, 0.1), (10, 0.1), (10, 1.0), (10, 5.0), (37, 5.0),
                                           (200, 1.0)])
def test_push_measure_picks_are_the_reference_top_k(kind, n_class, alpha):
    rng = np.random.default_rng(n_class * 1000 + int(alpha * 10))
    p = dirichlet(rng, alpha, (6000,), n_class)
    ref = REFERENCE[kind](p)
    for k, block, offset in [(1, 4096, 0), (25, 1000, 7), (600, 333, 0), (6000, 2048, 3)]:
        assert_same_picks(accumulate(kind, p, k, block, offset), ref, k, offset)


@pytest.mark.parametrize("n_pass,n_class,alpha", [(1, 5, 1.0), (2, 3, 0.1), (5, 10, 1.0), (20, 10, 0.1),
                                                  (20, 10, 5.0), (3, 60, 1.0)])
def test_bald_push_measure_picks_are_the_reference_top_k(n_pass, n_class, alpha):
    rng = np.random.default_rng(n_pass * 100 + n_class)
    x = dirichlet(rng, alpha, (n_pass, 3000), n_class)
    ref = U.bald(x)
    for k, block, offset in [(1, 4096, 0), (40, 700, 5), (900, 1024, 0)]:
        assert_same_picks(accumulate("bald", x, k, block, offset), ref, k, offset)


@pytest.mark.parametrize("kind", KINDS := K.KINDS)
def test_float64_input_and_layouts(kind):
    rng = np.random.default_rng(3)
    if kind == "bald":
        x = dirichlet(rng, 0.5, (7, 800), 6, np.float64)
        layouts = [x, np.asfortranarray(x), x[:, ::2], np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)]
    else:
        x = dirichlet(rng, 0.5, (1500,), 12, np.float64)
        layouts = [x, np.asfortranarray(x), x[::3], np.repeat(x, 2, axis=1)[:, ::2]]
    for data in layouts:
        ref = REFERENCE[kind](data)
        np.testing.assert_allclose(K.measure(kind, data), ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(K.measure(kind, data.astype(np.float32)), REFERENCE[kind](data.astype(np.float32)),
                                   rtol=0, atol=1e-12)
        acc = K.TopKAccumulator(50)
        acc.push_measure(kind, data, 0)
        assert_same_picks(acc, ref, 50)


def numpy_log_is_libm() -> bool:
    """Whether numpy's float64 log is the C library's here (the kernels call libm's). On CPUs with AVX-512 numpy
    uses its own vectorised log, which can differ in the last bit (seen on a lent machine's CPU)."""
    v = np.random.default_rng(0).uniform(1e-6, 1.0, 20_000)
    return bool(np.array_equal(np.log(v), np.array([math.log(t) for t in v])))


@pytest.mark.parametrize("kind", K.KINDS)
def test_measure_is_bit_identical_to_the_reference_for_row_major_input(kind):
    """Bit for bit where numpy's log is libm's (CPUs without AVX-512); otherwise each logarithm may differ in its
    last bits, so a score that sums p log p terms may differ by a few ulp of the terms' magnitude (up to log C per
    entropy): BALD, a difference of two entropies, can then differ by more than a few ulp of its own, smaller
    value. The bound allowed is 16 eps log C absolute (plus 4 eps relative), far below any real error."""
    exact = kind in ("least_confidence", "margin") or numpy_log_is_libm()
    rng = np.random.default_rng(11)
    for n_class in (1, 2, 7, 8, 9, 16, 129, 300):
        if kind == "margin" and n_class < 2:
            continue
        shape = (4, 500) if kind == "bald" else (500,)
        for dtype in (np.float32, np.float64):
            x = dirichlet(rng, 0.3, shape, n_class, dtype)
            if exact:
                np.testing.assert_array_equal(K.measure(kind, x), REFERENCE[kind](x))
            else:
                got, ref = K.measure(kind, x), REFERENCE[kind](x)
                eps = np.finfo(np.float64).eps
                np.testing.assert_allclose(got, ref, rtol=4 * eps, atol=16 * eps * max(1.0, math.log(n_class)))


# ------------------------------------------------------------------------------------------ ties, NaN, edge cases
@pytest.mark.parametrize("kind", K.KINDS)
def test_exact_ties_go_to_the_lower_position(kind):
    rng = np.random.default_rng(5)
    if kind == "bald":
        base = dirichlet(rng, 1.0, (6, 40), 5)
        x = base[:, rng.integers(0, 40, size=2000)]           # every item repeated ~50 times
    else:
        base = dirichlet(rng, 1.0, (40,), 5)
        x = base[rng.integers(0, 40, size=2000)]
    ref = REFERENCE[kind](x)
    for k in (1, 30, 75, 2000):
        assert_same_picks(accumulate(kind, x, k, 128), ref, k)


@pytest.mark.parametrize("kind", K.KINDS)
def test_nan_rows_rank_last_and_fill_up_only(kind):
    rng = np.random.default_rng(6)
    if kind == "bald":
        x = dirichlet(rng, 1.0, (4, 300), 6)
        x[1, ::7, 2] = np.nan
        ref = U.bald(x)
    else:
        x = dirichlet(rng, 1.0, (300,), 6)
        x[::7, 2] = np.nan
        x[3::11, 0] = np.nan
        ref = REFERENCE[kind](x)
    n_nan = int(np.isnan(ref).sum())
    assert n_nan > 20
    for k in (10, 300 - n_nan, 300 - n_nan + 5, 300, 1000):
        acc = accumulate(kind, x, k, 64)
        positions, scores = acc.result()
        np.testing.assert_array_equal(positions, reference_top_k(ref, k))
        assert len(positions) == min(k, 300)
        assert np.isnan(scores).sum() == max(0, min(k, 300) - (300 - n_nan))


@pytest.mark.parametrize("kind", K.KINDS)
def test_mostly_nan_blocks_fill_up_with_distinct_positions(kind):
    """Most rows NaN and k below the block size: NaN rows, evaluated first, never count twice."""
    rng = np.random.default_rng(7)
    shape = (3, 300) if kind == "bald" else (300,)
    x = dirichlet(rng, 1.0, shape, 6)
    if kind == "bald":
        x[0, 10:, 0] = np.nan
    else:
        x[10:, 0] = np.nan
    ref = REFERENCE[kind](x)
    for k in (5, 20, 299):
        positions, scores = accumulate(kind, x, k, 300).result()
        np.testing.assert_array_equal(positions, reference_top_k(ref, k))


def test_invalid_probabilities_are_scored_like_the_reference():
    rng = np.random.default_rng(8)
    p = dirichlet(rng, 1.0, (2000,), 10, np.float64)
    p[::13] *= 3.0                                   # rows summing to 3
    p[5::17, 1] = -0.2                               # negative entries
    p[7::19, 4] = np.inf
    p[9::23, 3] = -np.inf
    p[11::29] = 0.0                                  # all-zero rows
    p[13::31] *= 1e-25                               # rows of tiny sums (float32 squares underflow)
    for kind in PROBS_KINDS:
        ref = REFERENCE[kind](p)
        np.testing.assert_array_equal(K.measure(kind, p), ref)
        for k in (5, 150, 2000):
            positions, scores = accumulate(kind, p, k, 300).result()
            np.testing.assert_array_equal(positions, reference_top_k(ref, k))
    x = dirichlet(rng, 1.0, (5, 800), 4, np.float64)
    x[0, ::9, 0] += 0.5                               # entries above 1.001
    x[2, 3::11, 1] = -0.01
    x[4, 5::13] = 0.0
    ref = U.bald(x)
    np.testing.assert_allclose(K.measure("bald", x), ref, rtol=0, atol=1e-12)
    assert_same_picks(accumulate("bald", x, 100, 256), ref, 100)


@pytest.mark.parametrize("kind", K.KINDS)
def test_k_zero_empty_blocks_and_k_above_n(kind):
    rng = np.random.default_rng(9)
    shape = (3, 50) if kind == "bald" else (50,)
    x = dirichlet(rng, 1.0, shape, 4)
    empty = x[:, :0] if kind == "bald" else x[:0]
    ref = REFERENCE[kind](x)

    acc = K.TopKAccumulator(0)
    acc.push_measure(kind, x, 0)
    positions, scores = acc.result()
    assert positions.size == 0 and scores.size == 0 and acc.seen == 50

    acc = K.TopKAccumulator(80)
    acc.push_measure(kind, empty, 0)
    acc.push_measure(kind, x, 0)
    acc.push_measure(kind, empty, 50)
    assert acc.seen == 50
    assert_same_picks(acc, ref, 80)
    assert len(acc.result()[0]) == 50

    acc = K.TopKAccumulator(3)
    assert acc.result()[0].size == 0 and acc.seen == 0


def test_errors_like_the_reference():
    with pytest.raises(ValueError, match="margin needs at least 2 classes"):
        K.measure("margin", np.ones((3, 1)))
    with pytest.raises(ValueError, match="margin needs at least 2 classes"):
        K.TopKAccumulator(2).push_measure("margin", np.ones((3, 1), np.float32), 0)
    with pytest.raises(ValueError, match="unknown measure"):
        K.TopKAccumulator(2).push_measure("variance", np.ones((3, 2)), 0)
    with pytest.raises(ValueError, match=r"\(T, B, C\)"):
        K.measure("bald", np.ones((3, 2)))
    with pytest.raises(ValueError, match="k must be"):
        K.TopKAccumulator(-1)
    acc = K.TopKAccumulator(2)
    acc.push_measure("least_confidence", np.ones((3, 1)), 0)    # C = 1 is fine for least confidence
    np.testing.assert_array_equal(acc.result()[1], [0.0, 0.0])


# ------------------------------------------------------------------------------------------ push()
def check_push(values: list[float], k: int, cuts: list[int], dtype=np.float64) -> None:
    scores = np.asarray(values, dtype=dtype)
    acc = K.TopKAccumulator(k)
    edges = sorted({0, len(scores), *[c for c in cuts if 0 <= c <= len(scores)]})
    for lo, hi in zip(edges[:-1], edges[1:]):
        acc.push(scores[lo:hi], lo)
    positions, got = acc.result()
    want = reference_top_k(scores, k)
    np.testing.assert_array_equal(positions, want)
    np.testing.assert_array_equal(got, scores[want].astype(np.float64))
    assert acc.seen == len(scores)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                                 st.sampled_from([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan])), max_size=80),
       k=st.integers(0, 90), cuts=st.lists(st.integers(0, 80), max_size=6))
def test_push_matches_a_brute_force_lexsort(values, k, cuts):
    check_push(values, k, cuts)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=60),
       k=st.integers(0, 70), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_push_float32_scores(values, k, cuts):
    check_push(values, k, cuts, np.float32)


def test_push_random_blocks_and_out_of_order_positions():
    rng = np.random.default_rng(12)
    scores = np.round(rng.normal(size=50_000), 2)        # many exact ties
    scores[rng.random(scores.size) < 0.01] = np.nan
    scores[rng.random(scores.size) < 0.01] = -np.inf
    for k in (1, 100, 3000):
        check_push(scores.tolist(), k, list(range(0, 50_000, 6553)))
    acc = K.TopKAccumulator(500)                         # blocks pushed in reverse order, with gaps
    for lo in range(45_000, -1, -5000):
        acc.push(scores[lo:lo + 4000], lo)
    keep = np.concatenate([np.arange(lo, lo + 4000) for lo in range(0, 50_000, 5000)])
    np.testing.assert_array_equal(acc.result()[0], keep[reference_top_k(scores[keep], 500)])


# ------------------------------------------------------------------------------------------ the bounds
def test_fast_log_error_bound():
    """_flog is within _LOG_ERR + 2u|log x| of log x: every third float32 of the reduction interval in two
    binades, random x over every exponent; below the normal range x * _flog(x) is negligible."""
    lo, hi = np.float32(math.sqrt(0.5)).view(np.int32), np.float32(math.sqrt(2.0)).view(np.int32)
    y = np.arange(lo, hi, 3, dtype=np.int32).view(np.float32)
    rng = np.random.default_rng(0)
    wide = rng.integers(np.float32(2.0 ** -126).view(np.int32), np.float32(K._S_CHECK).view(np.int32) + 1,
                        size=1_000_000, dtype=np.int32).view(np.float32)
    for x in (y, y * np.float32(0.5), wide):
        got = np.empty_like(x)
        K._flog_array(x, got)
        exact = np.log(x.astype(np.float64))
        assert (np.abs(got - exact) <= K._LOG_ERR + 2.0 * 2.0 ** -24 * np.abs(exact)).all()
    tiny = np.array([0.0, 1e-45, 1e-40, 2.0 ** -127], np.float32)
    got = np.empty_like(tiny)
    K._flog_array(tiny, got)
    assert (np.abs(tiny.astype(np.float64) * got) < 1e-35).all()


def entropy_bounds(p: np.ndarray) -> np.ndarray:
    p = np.ascontiguousarray(p)
    cand, up = np.empty(len(p), np.int64), np.empty(len(p))
    bits = p.view(np.int32 if p.dtype == np.float32 else np.int64)
    n = K._entropy_bounds(p, bits, -np.inf, np.inf, K._entropy_params(p.shape[1]), cand, up)
    assert n == len(p)
    np.testing.assert_array_equal(cand, np.arange(len(p)))
    return up


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_entropy_bounds_bound_the_reference(dtype):
    rng = np.random.default_rng(13)
    for n_class in (1, 2, 4, 10, 50, 300):
        for alpha in (0.02, 0.3, 1.0, 30.0, 1e4):
            p = rng.dirichlet(np.full(n_class, alpha), size=1500)
            p[:300] *= rng.uniform(0.95, 1.001, size=(300, 1))      # sums below 1
            p[300:500][rng.random((200, n_class)) < 0.3] = 0.0
            p[500:520] = 1.0 / n_class                               # uniform rows: the bounds' equality case
            p = p.astype(dtype)
            up, ref = entropy_bounds(p), U.entropy(p)
            assert (ref <= up).all(), (n_class, alpha, (ref - up).max())
            if n_class >= 4 and alpha >= 30.0:                       # near-uniform rows: tight
                assert np.median(up - ref) < 1e-2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_entropy_max_cut_and_estimate_bound_the_reference(dtype):
    """Rows whose maximum exceeds the cut for ``thr`` have entropy below ``thr``; the float32 estimate plus its
    error bound is above the entropy."""
    rng = np.random.default_rng(18)
    for n_class in (4, 5, 10, 60):
        for alpha in (0.02, 0.1, 1.0, 30.0):
            p = rng.dirichlet(np.full(n_class, alpha), size=2000)
            p[:300] *= rng.uniform(0.9, 1.001, size=(300, 1))
            p[300:400][rng.random((100, n_class)) < 0.5] = 0.0
            p = np.ascontiguousarray(p.astype(dtype))
            ref = U.entropy(p)
            params = K._entropy_params(n_class)
            for thr in np.quantile(ref, [0.0, 0.3, 0.7, 0.95, 1.0]):
                cut = K._max_cut(thr, params[4], params[5], n_class)
                assert (ref[p.max(axis=1) > cut] < thr).all(), (n_class, alpha, thr, cut)
            up = np.full(len(p), 1e9)
            K._entropy_refine(p, np.arange(len(p)), up, len(p), -np.inf, params[5])
            assert (ref <= up).all(), (n_class, alpha, (ref - up).max())
            assert (up - ref).max() < 1e-3


def test_entropy_bounds_refuse_rows_outside_their_preconditions():
    p = np.full((5, 5), 0.2)
    p[0, 0] = -0.01
    p[1, 0] = np.nan
    p[2, 0] = 0.3                                                    # sum 1.1
    p[3] = 0.0
    p[4] = 1e-5                                                      # sum 5e-5
    assert np.isinf(entropy_bounds(p)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bald_bounds_bound_the_reference(dtype):
    rng = np.random.default_rng(14)
    for n_pass, n_class in [(1, 3), (2, 2), (7, 10), (20, 10), (25, 60)]:
        for alpha in (0.02, 0.5, 5.0):
            x = rng.dirichlet(np.full(n_class, alpha), size=(n_pass, 800))
            x[:, :100] *= 0.99
            x[:, 100:200][rng.random((n_pass, 100, n_class)) < 0.3] = 0.0
            x[:, 200:210] = np.minimum(1.5 * x[:, 200:210], 1.0009)
            x = x.astype(dtype)
            up, ref = K._bald_upper(x), U.bald(x)
            assert np.isfinite(up).all()
            assert (ref <= up).all(), (n_pass, n_class, alpha, (ref - up).max())
            assert (up - ref).max() < 1e-3                           # tight enough to prune
    bad = np.full((3, 4, 2), 0.5)
    bad[0, 0, 0], bad[1, 1, 1], bad[2, 2, 0], bad[0, 3, 1] = -0.1, np.nan, 1.01, np.inf
    assert np.isinf(K._bald_upper(bad)).all()


# ------------------------------------------------------------------------------------------ pruning
def test_entropy_pruning_happens_and_stays_exact():
    rng = np.random.default_rng(15)
    p = dirichlet(rng, 1.0, (200_000,), 10)
    ref = U.entropy(p)
    acc = accumulate("entropy", p, 200, 65536)
    assert_same_picks(acc, ref, 200)
    assert acc.exact_rows < 0.03 * len(p)


def test_entropy_pruning_of_peaked_rows():
    rng = np.random.default_rng(19)
    p = dirichlet(rng, 0.1, (100_000,), 10)
    ref = U.entropy(p)
    acc = accumulate("entropy", p, 100, 65536)
    assert_same_picks(acc, ref, 100)
    assert acc.exact_rows < 0.05 * len(p)


def test_bald_pruning_happens_and_stays_exact():
    rng = np.random.default_rng(16)
    x = dirichlet(rng, 1.0, (20, 30_000), 10)
    ref = U.bald(x)
    acc = accumulate("bald", x, 100, 65536)
    assert_same_picks(acc, ref, 100)
    assert acc.exact_rows < 0.05 * x.shape[1]


@pytest.mark.parametrize("kind", ["entropy", "bald"])
def test_near_ties_with_the_top_survive_pruning(kind):
    """Near-uniform rows (where the bounds are nearly tight) plus copies of the best ones nudged by 1e-9, so scores
    sit a hair apart in both directions, must keep their exact places: a bound without its slack, or a pruning
    test that is not strict, loses some of them."""
    rng = np.random.default_rng(17)
    if kind == "entropy":
        x = dirichlet(rng, 1e4, (20_000,), 8, np.float64)
        top = reference_top_k(U.entropy(x), 50)
        twins = x[top].copy()
        twins[:, 0] += 1e-9 * rng.choice([-1.0, 1.0], size=50)
        twins[:, 1] -= twins[:, 0] - x[top, 0]
        x = np.concatenate([x, twins, x[top]])
    else:
        x = dirichlet(rng, 2.0, (6, 8000), 6, np.float64)
        top = reference_top_k(U.bald(x), 50)
        twins = x[:, top].copy()
        twins[:, :, 0] += 1e-9 * rng.choice([-1.0, 1.0], size=(6, 50))
        twins[:, :, 1] -= twins[:, :, 0] - x[:, top, 0]
        x = np.concatenate([x, twins, x[:, top]], axis=1)
    ref = REFERENCE[kind](x)
    for k in (50, 100, 150):
        assert_same_picks(accumulate(kind, x, k, 4096), ref, k)


# ------------------------------------------------------------------------------------------ SIMD row groups
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_groups_for_every_small_class_count(dtype):
    """Every class count a group serves (1 .. 16 lanes of float32, 1 .. 8 of float64) and the first it does not,
    blocks whose row count leaves a scalar tail, special values inside groups: the reference's picks."""
    rng = np.random.default_rng(5)
    lanes = 64 // np.dtype(dtype).itemsize
    for n_class in range(1, lanes + 2):
        for alpha in (0.1, 1.0, 30.0):
            p = dirichlet(rng, alpha, (700,), n_class, dtype)
            p[3::41] *= 2.5                               # sums above 1.001
            p[5::43, 0] = -0.0                            # sign bit set on a zero
            p[7::47, -1] = -0.05                          # negative entries
            p[9::53, 0] = np.nan
            p[11::59, -1] = np.inf
            p[13::61] = 0.0
            p[15::67] = 1.0 / n_class                     # uniform rows (ties, and the bounds' equality case)
            for kind in PROBS_KINDS:
                if kind == "margin" and n_class < 2:
                    continue
                ref = REFERENCE[kind](p)
                for k, block in ((1, 700), (40, 97), (300, 256)):
                    positions, scores = accumulate(kind, p, k, block).result()
                    np.testing.assert_array_equal(positions, reference_top_k(ref, k), err_msg=f"{kind} C={n_class}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_filters_keep_exactly_the_rows_that_may_enter(dtype):
    """The group filters for least confidence and margin flag exactly the rows whose exact score reaches the
    threshold or whose sum is NaN; entropy's flags every row that fails the bounds' preconditions, and never a
    row whose max bound (max > cut) rules it out, and its statistics are the rows' max and power sums."""
    import numba as nb

    @nb.njit
    def lc(p, b, t):
        return K._group_lc(p, b, t)

    @nb.njit
    def margin(p, b, t):
        return K._group_margin(p, b, t)

    @nb.njit
    def entropy(p, b, thr, cut, params, stats):
        return K._group_entropy(p, b, thr, cut, params, stats)

    def bits(mask, lanes, shift=0):
        return np.array([(mask >> (shift + r)) & 1 for r in range(lanes)], dtype=bool)

    rng = np.random.default_rng(9)
    lanes = 64 // np.dtype(dtype).itemsize
    for n_class in range(1, lanes + 1):
        for trial in range(12):
            p = dirichlet(rng, float(rng.choice([0.1, 1.0, 10.0])), (3 * lanes,), n_class, dtype)
            row, col = rng.integers(lanes, 2 * lanes), rng.integers(0, n_class)
            if trial % 4 == 1:
                p[row, col] = np.nan
            elif trial % 4 == 2:
                p[row, col] = -p[row, col]
            elif trial % 4 == 3:
                p[row] *= 3.0
            group = p[lanes:2 * lanes].astype(np.float64)
            sums = group.sum(axis=1)
            score = 1.0 - group.max(axis=1)
            thr = float(np.nanmedian(score)) if not np.isnan(score).all() else 0.5
            np.testing.assert_array_equal(bits(lc(p, lanes, thr), lanes), (score >= thr) | np.isnan(sums))
            if n_class >= 2:
                top2 = np.sort(group, axis=1)[:, -2:]
                score = -(top2[:, 1] - top2[:, 0])
                thr = float(np.nanmedian(score)) if not np.isnan(score).all() else 0.0
                np.testing.assert_array_equal(bits(margin(p, lanes, thr), lanes), (score >= thr) | np.isnan(sums))
            params = K._entropy_params(n_class)
            stats = np.empty((4, lanes), dtype)
            maxima = p[lanes:2 * lanes].max(axis=1)
            cut = float(np.nanmedian(maxima))
            flags = entropy(p, lanes, -np.inf, cut, params, stats)
            bad = np.signbit(group).any(axis=1) | ~((sums >= K._S_MIN) & (sums <= K._S_CHECK))
            np.testing.assert_array_equal(bits(flags, lanes, 32), bad)
            keep = bits(flags, lanes)
            assert keep[bad].all() and not keep[~bad & (maxima > cut)].any()
            ok = ~bad
            np.testing.assert_array_equal(stats[0][ok], maxima[ok])
            for i, power in ((1, 1), (2, 2), (3, 3)):
                np.testing.assert_allclose(stats[i][ok], (group[ok] ** power).sum(axis=1), rtol=1e-5)


def test_bald_bound_groups_for_every_small_class_count():
    """bald's per-item bound sums run on SIMD groups of 16 items for C <= 16 (the rest one by one): for every
    class count up to 17, item counts that leave a remainder, and invalid entries inside groups, the bounds bound
    the reference and the picks are the reference's."""
    rng = np.random.default_rng(12)
    for n_class in range(1, 18):
        x = dirichlet(rng, float(rng.choice([0.3, 3.0])), (4, 531), n_class)
        x[1, 7::37, 0] = 1.5                              # an entry above 1.001
        x[2, 9::41, -1] = -0.01                           # a negative entry
        x[3, 11::43, 0] = np.nan
        ref = U.bald(x)
        up = K._bald_upper(x)
        finite = ~np.isnan(ref)
        assert (ref[finite] <= up[finite]).all(), n_class
        assert np.isinf(up[7::37]).all() and np.isinf(up[9::41]).all() and np.isinf(up[11::43]).all()
        for k, block in ((5, 531), (60, 200)):
            positions, _ = accumulate("bald", x, k, block).result()
            np.testing.assert_array_equal(positions, reference_top_k(ref, k), err_msg=f"C={n_class}")
