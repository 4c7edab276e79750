"""Exact greedy k-center and nearest distances, with the bulk of the arithmetic in float32 matrix products.

Greedy k-center (farthest-first traversal) is the core-set selection of Sener & Savarese 2018: each pick is the
point farthest from everything labelled or picked so far. Done naively every pick computes N distances. Here:

- **Exact distances** are float64 ``sqrt(sum_k (a_k - b_k)^2)`` of the given coordinates (float32 embeddings
  are read as they are, never copied to float64), the squares added in numpy's pairwise order, so that
  :func:`exact_distance` equals numpy's ``np.sqrt(np.square(a - b).sum())`` bit for bit. Every decision -- which
  point is picked, every returned distance -- is taken on these values, ties going to the lower index: the picks
  and distances are those of a float64 numpy brute force, even where two distances tie only after rounding.
- **Bounds from float32 products.** Every point keeps ``hi[j]``, its exact distance to the nearest labelled item
  or applied pick. Picks are applied a batch (:data:`BATCH`) at a time: one BLAS product of the centred float32
  rows with the batch's rows gives each distance within a rigorous error bound (the products' rounding, ``2
  gamma_D |y||z|`` in any summation order, and the rounding of the rows to float32; see :func:`_apply`), and a pick
  whose lower bound is >= ``hi[j]`` cannot come closer. Only the others -- the points a pick really comes closer
  to, and a thin band around them -- get an exact distance. The rows are read once per batch, by BLAS.
- **Choosing.** A pick not yet applied can only lower a distance, so the next pick is found among the points whose
  ``hi`` reaches the best exact distance found so far: blocks of about sqrt(N) consecutive points, visited from the
  largest ``hi`` down, skip everything else; a candidate's distances to the unapplied picks are computed exactly,
  stopping as soon as it falls behind. When that took many distances (a cold start, where nothing is finite yet),
  the picks are applied at once. Neither the batch nor the blocks change the result, only the work.

Memory: a float32 copy of the points (N * D * 4 bytes) and a few length-N vectors; the products and the
temporaries of :func:`nearest_distances` are blocked to about :data:`TEMP_BYTES`.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

TEMP_BYTES = 16 << 20
"""Target size of one blocked temporary (a block of a distance matrix, a block of centred rows)."""
BATCH = 32
"""Picks applied together, in one matrix product over the points (the picks themselves do not depend on it)."""

_U32 = 2.0 ** -24
_TINY32 = 2.0 ** -149       # float32's smallest subnormal: rounding to float32 is off by at most half of it + u|v|


def _eps(dim: int) -> float:
    """Relative slack covering float64 rounding in norms, sums of ``dim`` squares and the exact distance itself
    (at most ``(dim + 4) * 2^-53`` each); a few times that, still ~1e-13 for D = 128."""
    return (dim + 16) * 2.0 ** -52


@nb.njit(cache=True, inline="always")
def _sq(a, i, b, j, k):
    t = np.float64(a[i, k]) - np.float64(b[j, k])
    return t * t


@nb.njit(cache=True)
def _sq_leaf(a, i, b, j, lo, n):
    """The pairwise sum of at most 128 squared differences: numpy's block of eight running sums."""
    if n < 8:
        s = 0.0
        for k in range(lo, lo + n):
            s += _sq(a, i, b, j, k)
        return s
    r0 = _sq(a, i, b, j, lo)
    r1 = _sq(a, i, b, j, lo + 1)
    r2 = _sq(a, i, b, j, lo + 2)
    r3 = _sq(a, i, b, j, lo + 3)
    r4 = _sq(a, i, b, j, lo + 4)
    r5 = _sq(a, i, b, j, lo + 5)
    r6 = _sq(a, i, b, j, lo + 6)
    r7 = _sq(a, i, b, j, lo + 7)
    k = lo + 8
    end = lo + n - n % 8
    while k < end:
        r0 += _sq(a, i, b, j, k)
        r1 += _sq(a, i, b, j, k + 1)
        r2 += _sq(a, i, b, j, k + 2)
        r3 += _sq(a, i, b, j, k + 3)
        r4 += _sq(a, i, b, j, k + 4)
        r5 += _sq(a, i, b, j, k + 5)
        r6 += _sq(a, i, b, j, k + 6)
        r7 += _sq(a, i, b, j, k + 7)
        k += 8
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while k < lo + n:
        s += _sq(a, i, b, j, k)
        k += 1
    return s


@nb.njit(cache=True)
def _sq_sum(a, i, b, j, lo, n):
    """``sum_k (a[i, k] - b[j, k])^2`` over ``k in [lo, lo + n)`` in float64, added in numpy's pairwise order
    (eight running sums over blocks of up to 128, then halves -- cut at multiples of 8 -- added pairwise), so the
    values equal numpy's ``np.square(a - b).sum()`` bit for bit. No fastmath: the order is kept. The halving
    recursion runs on an explicit stack (numba's cache mishandles recursive functions)."""
    if n <= 128:
        return _sq_leaf(a, i, b, j, lo, n)
    # frames: (start, length, state, left sum); state 0: new, 1: left half pending, 2: right half pending
    f_lo = np.empty(64, np.int64)
    f_n = np.empty(64, np.int64)
    f_state = np.zeros(64, np.int64)
    f_left = np.empty(64)
    f_lo[0], f_n[0], f_state[0] = lo, n, 0
    top = 0
    value = 0.0
    returning = False
    while True:
        if returning:
            if top < 0:
                return value
            if f_state[top] == 1:
                f_left[top] = value
                f_state[top] = 2
                half = f_n[top] // 2
                half -= half % 8
                top += 1
                f_lo[top], f_n[top], f_state[top] = f_lo[top - 1] + half, f_n[top - 1] - half, 0
                returning = False
            else:
                value = f_left[top] + value
                top -= 1
            continue
        if f_n[top] <= 128:
            value = _sq_leaf(a, i, b, j, f_lo[top], f_n[top])
            top -= 1
            returning = True
            continue
        half = f_n[top] // 2
        half -= half % 8
        f_state[top] = 1
        top += 1
        f_lo[top], f_n[top], f_state[top] = f_lo[top - 1], half, 0


@nb.njit(cache=True)
def _dist(a, i, b, j):
    """The exact distance between rows ``a[i]`` and ``b[j]``: float64, as numpy's brute force computes it."""
    return np.sqrt(_sq_sum(a, i, b, j, 0, a.shape[1]))


def exact_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The exact distance between two vectors, as every decision here takes it."""
    a2 = np.ascontiguousarray(np.reshape(a, (1, -1)))
    b2 = np.ascontiguousarray(np.reshape(b, (1, -1)))
    return float(_dist(a2, 0, b2, 0))


@nb.njit(cache=True)
def _nearest_row(x, mean):
    """The first row nearest ``mean`` (a (1, D) float64 array)."""
    best, arg = np.inf, 0
    for i in range(x.shape[0]):
        s = _sq_sum(x, i, mean, 0, 0, x.shape[1])
        if s < best:
            best, arg = s, i
    return arg


@nb.njit(cache=True)
def _refresh(g, bstart, picked, hi, hmax):
    """``hmax[g]``: the largest distance of an unpicked point of block ``g`` (-1 if none)."""
    b = -1.0
    for j in range(bstart[g], bstart[g + 1]):
        if not picked[j]:
            b = max(b, hi[j])
    hmax[g] = b


@nb.njit(cache=True)
def _refresh_all(bstart, picked, hi, hmax):
    for g in range(bstart.shape[0] - 1):
        _refresh(g, bstart, picked, hi, hmax)


@nb.njit(cache=True)
def _choose(applied, n_done, x, bstart, picked, hi, hmax, picks, stats):
    """The unpicked point with the largest exact distance to everything labelled or picked (ties: the lowest index)
    and that distance. ``hi[j]`` is exact over the labelled items and the first ``applied`` picks; the picks
    ``applied .. n_done - 1``, not yet applied, can only lower it. So a point whose ``hi`` is below the best exact
    distance found so far cannot be the answer, nor can a block whose largest ``hi`` is; blocks are visited from the
    largest ``hi`` down. A candidate's distances to the unapplied picks are computed exactly, stopping as soon as it
    falls behind."""
    best, bestv = -1, -1.0
    for g in np.argsort(-hmax):
        if hmax[g] < bestv:
            break
        for j in range(bstart[g], bstart[g + 1]):
            v = hi[j]
            if picked[j] or v < bestv or (v == bestv and j > best):
                continue
            for t in range(applied, n_done):
                v = min(v, _dist(x, j, x, picks[t]))
                stats[1] += 1
                if v < bestv or (v == bestv and j > best):
                    break
            if v > bestv or (v == bestv and j < best):
                best, bestv = j, v
    return best, bestv


@nb.njit(cache=True)
def _apply(dots, p0, t0, xn2, xerr, xnorm, cn2, cerr, cnorm, x, picks, picked, hi, scale, eps, gam):
    """Apply the picks ``t0 ..`` (one per column of ``dots``) to points ``p0 .. p0 + len(dots) - 1``: ``hi[j]``
    becomes the exact distance to the nearest of them where one comes closer. Returns the number of exact
    distances computed.

    ``dots`` are the float32 products of the centred rows scaled by ``scale`` (a power of two, so that the largest
    row has norm ~1: nothing overflows float32, and only what is ~1e-38 of the largest can underflow) and rounded to
    float32, y (points) and z (picks): ``|y - z|^2`` is ``|y|^2 + |z|^2 - 2 y.z`` within ``eta = 2.02 gamma_D
    |y||z| + c1 (|y|^2 + |z|^2) + 2 D 2^-149`` (the products' rounding in any summation order, ``gamma_D = D u /
    (1 - D u)``; float64 rounding; float32 underflow), and the scaled exact distance is within the rounding errors
    to float32 ``r_y + r_z`` of ``|y - z|`` (triangle inequality). A pick whose lower bound is >= ``scale *
    hi[j]`` (inflated by a few units in the last place) cannot come closer. One pass over the point's row with the
    batch's largest ``r_z`` settles the usual case, none coming closer; otherwise each pick that might (or whose
    bound is NaN) gets its exact distance."""
    n_c = dots.shape[1]
    one_p = 1.0 + eps
    up2 = 1.0 + 2.0 * eps                 # >= 1 / (1 - eps)
    up4 = 1.0 + 4.0 * eps
    c1 = 16.0 * 2.0 ** -53 + 4.0 * eps
    g2 = 2.02 * gam
    under = 2.0 * x.shape[1] * _TINY32     # float32 underflow in the products
    cw = np.empty(n_c)
    for t in range(n_c):
        cw[t] = cn2[t] * (1.0 - c1) - under
    cerr_max = cerr.max()
    evals = 0
    for i in range(dots.shape[0]):
        j = p0 + i
        if picked[j]:
            continue
        gy = g2 * xnorm[j]
        kk = (hi[j] * scale * up2 + (xerr[j] + cerr_max) * one_p) * up4
        low = np.inf
        for t in range(n_c):
            low = min(low, cw[t] - 2.0 * np.float64(dots[i, t]) - gy * cnorm[t])
        if low >= kk * kk - xn2[j] * (1.0 - c1):
            continue
        for t in range(n_c):
            a = xn2[j] + cn2[t]
            kk = (hi[j] * scale * up2 + (xerr[j] + cerr[t]) * one_p) * up4
            if not a - 2.0 * np.float64(dots[i, t]) - (gy * cnorm[t] + c1 * a + under) >= kk * kk:
                hi[j] = min(hi[j], _dist(x, j, x, picks[t0 + t]))
                evals += 1
    return evals


def _as_matrix(a: np.ndarray) -> np.ndarray:
    """2-D, C-contiguous, float32 or float64 without changing a value (float16 widens to float32, the rest to
    float64)."""
    a = np.asarray(a)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    elif a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if a.ndim != 2:
        a = a.reshape(len(a), -1)
    return np.ascontiguousarray(a)


def farthest_first(points: np.ndarray, min_dist: np.ndarray, n_picks: int, cold: bool,
                   n_blocks: int | None = None, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Greedy k-center: ``n_picks`` picks (capped at N), each the point of largest exact distance to everything
    labelled (``min_dist``) or picked before it, ties to the lower index; with ``cold`` the first pick is the point
    nearest the (float64) mean instead. Returns ``(picks, pick_distances, final, stats)``: the picked indices in
    order, each one's exact distance when picked, every point's exact final distance (a pick's: when picked), and
    counters ``exact_evals`` (exact distances computed to apply picks), ``choice_evals`` (... to choose them) and
    ``n_blocks``. ``n_blocks`` (default about sqrt(N)) and ``batch`` change the work, never the result."""
    x = _as_matrix(points)
    n, dim = x.shape
    m = np.array(min_dist, dtype=np.float64).reshape(-1)
    if len(m) != n:
        raise ValueError(f"min_dist has {len(m)} entries for {n} points")
    if not np.all(m >= 0):
        raise ValueError("min_dist must be distances: >= 0 (inf where nothing is labelled), not NaN")
    if not np.isfinite(x).all():
        raise ValueError("embeddings must be finite")
    n_picks = max(0, min(int(n_picks), n))
    batch = max(1, int(batch))
    n_blocks = max(1, min(int(n_blocks or round(math.sqrt(n))), n))
    bstart = np.arange(n_blocks + 1, dtype=np.int64) * n // n_blocks
    hi, picked, hmax = m.copy(), np.zeros(n, np.bool_), np.empty(n_blocks)
    _refresh_all(bstart, picked, hi, hmax)
    picks, pick_dist = np.empty(n_picks, np.int64), np.empty(n_picks)
    xc, xn2, xerr = np.empty((n if n_picks else 0, dim), np.float32), np.zeros(n), np.zeros(n)
    scale = 1.0
    if n_picks:
        # numpy's float64 mean, as the brute force takes it (rows added in order; for D = 1 numpy adds pairwise
        # over the float64 values, which casting float32 in buffers would not reproduce)
        shift = np.asarray(x, dtype=np.float64).mean(axis=0) if dim == 1 else x.mean(axis=0, dtype=np.float64)
        scale = _scale(_spread(x, shift))
        _centre_rows(x, 0, n, shift, scale, xc, xn2, xerr)
    xnorm = np.sqrt(xn2)
    gam = dim * _U32 / (1.0 - dim * _U32) if dim * _U32 < 0.5 else np.inf
    rows = max(1, TEMP_BYTES // (4 * batch))
    eps = _eps(dim)
    stats = np.zeros(2, np.int64)
    applied = 0                           # picks 0 .. applied - 1 are applied to every hi
    for step in range(n_picks):
        before = stats[1]
        if step == 0 and cold:
            p = int(_nearest_row(x, shift.reshape(1, -1)))     # the first row nearest the mean
            v = m[p]
        else:
            p, v = _choose(applied, step, x, bstart, picked, hi, hmax, picks, stats)
        picks[step], pick_dist[step], picked[p] = p, v, True
        _refresh(np.searchsorted(bstart, p, side="right") - 1, bstart, picked, hi, hmax)
        # apply a full batch; the last picks; or at once when choosing took many exact distances (a cold start,
        # where no point has a finite distance yet)
        if step + 1 - applied == batch or step + 1 == n_picks or stats[1] - before > n // 64 + batch:
            new = picks[applied:step + 1]
            for p0 in range(0, n, rows):
                dots = xc[p0:p0 + rows] @ xc[new].T
                stats[0] += _apply(dots, p0, applied, xn2, xerr, xnorm, xn2[new], xerr[new], xnorm[new], x, picks,
                                   picked, hi, scale, eps, gam)
            _refresh_all(bstart, picked, hi, hmax)
            applied = step + 1
    final = hi
    final[picks] = pick_dist
    return picks, pick_dist, final, {"exact_evals": int(stats[0]), "choice_evals": int(stats[1]),
                                     "n_blocks": n_blocks}


# ---- nearest distances ----------------------------------------------------------------------------------------

@nb.njit(cache=True)
def _spread(a, shift):
    """The largest float64 norm of a row of ``a - shift``."""
    top = 0.0
    for i in range(a.shape[0]):
        s = 0.0
        for k in range(a.shape[1]):
            v = a[i, k] - shift[k]
            s += v * v
        top = max(top, s)
    return np.sqrt(top)


def _scale(spread: float) -> float:
    """A power of two that brings ``spread`` into [0.5, 1) (exact to apply; 1 for 0 or non-finite)."""
    return math.ldexp(1.0, -math.frexp(spread)[1]) if 0.0 < spread < np.inf else 1.0


@nb.njit(cache=True)
def _centre_rows(a, lo, hi, shift, scale, out, norm2, err):
    """Rows ``lo:hi`` of ``a`` minus ``shift``, times ``scale`` (a power of two), as float32 into ``out``; the float64
    squared norms of those float32 rows and a bound on the rounding to float32 (``2^-24 |row|``, inflated, plus
    float32 underflow: ``2^-149 sqrt(D)``)."""
    for i in range(hi - lo):
        s = 0.0
        for k in range(a.shape[1]):
            v = np.float32((a[lo + i, k] - shift[k]) * scale)
            out[i, k] = v
            s += np.float64(v) * np.float64(v)
        norm2[i] = s
        err[i] = 1.01 * _U32 * np.sqrt(s) + _TINY32 * np.sqrt(a.shape[1])


@nb.njit(cache=True)
def _scan(dots, xn2, xerr, on2, oerr_max, on_max, gam, x, x0, o, o0, best, scale, eps, stats):
    """For each row of the float32 block ``dots`` (centred points x centred others): exact distance to the
    block's approximate nearest, then to every other whose lower bound is below the best so far."""
    n_o = dots.shape[1]
    u64 = 2.0 ** -53
    for i in range(dots.shape[0]):
        arg = 0
        amin = np.inf
        for k in range(n_o):
            a = on2[k] - 2.0 * np.float64(dots[i, k])
            if a < amin:
                amin = a
                arg = k
        b = best[x0 + i]
        d = _dist(x, x0 + i, o, o0 + arg)
        stats[0] += 1
        if d < b:
            b = d
        eta = (2.02 * gam * np.sqrt(xn2[i]) * on_max + 8.0 * u64 * (xn2[i] + on_max * on_max)
               + 2.0 * x.shape[1] * _TINY32)
        lim = (b * scale * (1.0 + 2.0 * eps) + xerr[i] + oerr_max) * (1.0 + eps)
        thr = lim * lim * (1.0 + eps) + eta - xn2[i]
        for k in range(n_o):
            if k != arg and not on2[k] - 2.0 * np.float64(dots[i, k]) >= thr:     # NaN: look
                d = _dist(x, x0 + i, o, o0 + k)
                stats[0] += 1
                if d < b:
                    b = d
                    lim = (b * scale * (1.0 + 2.0 * eps) + xerr[i] + oerr_max) * (1.0 + eps)
                    thr = lim * lim * (1.0 + eps) + eta - xn2[i]
        best[x0 + i] = b


def nearest_distances(points: np.ndarray, others: np.ndarray, block: int = 1024) -> tuple[np.ndarray, dict]:
    """Exact distance (:func:`exact_distance`) from each row of ``points`` to its nearest row of ``others``
    (``inf`` if none), and ``{"exact_evals": ...}``.

    Candidates come from float32 matrix products of centred blocks (``|x|^2 + |o|^2 - 2 x.o``); a rigorous bound on
    their error (``2 gamma_D |x||o|`` for the products, ``2^-24`` relative for the rounding to float32) decides
    which candidates are recomputed exactly: the block's approximate nearest, and any other whose lower bound is
    below the best exact distance so far. Temporaries: ``block`` rows of ``others`` times as many points as keep
    the float32 block of products near :data:`TEMP_BYTES`."""
    x = _as_matrix(points)
    n = len(x)
    best = np.full(n, np.inf)
    stats = np.zeros(1, np.int64)
    if n == 0 or len(others) == 0:
        return best, {"exact_evals": 0}
    o = _as_matrix(others)
    if o.shape[1] != x.shape[1]:
        raise ValueError(f"points have {x.shape[1]} dimensions, others {o.shape[1]}")
    dim = x.shape[1]
    eps = _eps(dim)
    gam = dim * _U32 / (1.0 - dim * _U32) if dim * _U32 < 0.5 else np.inf
    ob = max(1, min(int(block), len(o)))
    pb = max(1, min(n, TEMP_BYTES // (4 * max(ob, dim))))
    shift = o.mean(axis=0, dtype=np.float64)
    scale = _scale(max(_spread(x, shift), _spread(o, shift)))
    cache_all = len(o) * dim * 4 <= TEMP_BYTES

    def other_blocks():
        for s in range(0, len(o), ob):
            e = min(len(o), s + ob)
            oc, on2, oerr = np.empty((e - s, dim), np.float32), np.empty(e - s), np.empty(e - s)
            _centre_rows(o, s, e, shift, scale, oc, on2, oerr)
            yield s, oc, on2, float(oerr.max()), float(np.sqrt(on2.max()))

    cached = list(other_blocks()) if cache_all else None
    xc, xn2, xerr = np.empty((pb, dim), np.float32), np.empty(pb), np.empty(pb)
    for s in range(0, n, pb):
        e = min(n, s + pb)
        _centre_rows(x, s, e, shift, scale, xc, xn2, xerr)
        for o0, oc, on2, oerr_max, on_max in (cached if cached is not None else other_blocks()):
            dots = xc[:e - s] @ oc.T
            _scan(dots, xn2, xerr, on2, oerr_max, on_max, gam, x, s, o, o0, best, scale, eps, stats)
            del dots                      # before the next block's products are allocated
    return best, {"exact_evals": int(stats[0])}
