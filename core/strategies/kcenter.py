"""Exact greedy k-center and nearest distances that never read more than they must.

Greedy k-center (farthest-first traversal) is the core-set selection of Sener & Savarese 2018: each pick is the
point farthest from everything labelled or picked so far. Done naively every pick reads all N embeddings. Here:

- **Exact distances** are float64 ``sqrt(sum_k (a_k - b_k)^2)`` of the given coordinates (float32 embeddings
  are read as they are, never copied to float64), the squares added in numpy's pairwise order, so that
  :func:`exact_distance` equals numpy's ``np.sqrt(np.square(a - b).sum())`` bit for bit. Every decision -- which
  point is picked, every returned pick distance -- is taken on these values, ties going to the lower index: the
  picks are those of a float64 numpy brute force, even where two distances tie only after rounding.
- **Bounds instead of distances.** The points are split into groups (two-level k-means on a sample, about sqrt(N)
  groups; any split is correct, a good one prunes more). Within a group the offsets ``y = x - mu_g`` from the
  group mean are stored as int16 vectors ``s_g * q`` with the rounding residual ``r`` of each point. A distance to
  a new centre ``c`` (also quantised, relative to the group mean) is then an integer dot product -- exact, no
  overflow by the choice of scales -- and the triangle inequality gives an interval
  ``[delta - r_j - r_c, delta + r_j + r_c]`` that contains the exact distance (widened by a few units in the last
  place for the float64 arithmetic). Every point keeps an interval ``[L_j, H_j]`` around its exact distance to
  the nearest labelled/picked item.
- **Pruning, exact by the triangle inequality.** A group is skipped for a new centre ``c`` when
  ``d(c, mu_g) - rho_g >= max_{j in g} H_j`` (``rho_g`` = the group's radius): every member is then at least as
  far from ``c`` as from its current nearest item, so no distance changes. The same test per point with its own
  ``|y_j|`` skips the dot product. On clustered embeddings (the penultimate layer of a trained classifier) a pick
  touches only the groups of its own cluster; on isotropic data nothing prunes and a step costs one int16 pass over
  the data (half the bytes of float32) plus scalar work.
- **Picking.** The next pick is the unpicked point of largest exact distance. Only points whose upper bound
  ``H_j`` reaches the largest lower bound ``max L`` can be it; their exact distances are computed (cached and
  extended incrementally over new picks, abandoned as soon as they fall below the best found; the item a point's
  upper bound came from is tried first, and a bitwise copy of the best so far inherits its distance) and compared
  exactly.

Memory: the int16 copy (N * D * 2 bytes) and a dozen length-N vectors; temporaries of the clustering and of
:func:`nearest_distances` are blocked to about :data:`TEMP_BYTES`.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

TEMP_BYTES = 16 << 20
"""Target size of one blocked temporary (a block of a distance matrix, a block of centred rows)."""

_NORM_CAP = 46339.0         # int vectors of norm <= 46339 have |dot| <= 46339**2 < 2**31: exact int32 sums
_COORD_CAP = 32700.0        # and coordinates inside int16
_U32 = 2.0 ** -24
_LLOYD = 4                  # Lloyd iterations on the sample (the grouping only has to be good, not converged)


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
def _nearest_to_mean(x):
    """The first row nearest the float64 mean (rows added in order, as numpy's ``mean(axis=0)`` does)."""
    n, dim = x.shape
    mean = np.zeros((1, dim))
    for i in range(n):
        for k in range(dim):
            mean[0, k] += x[i, k]
    for k in range(dim):
        mean[0, k] /= n
    best, arg = np.inf, 0
    for i in range(n):
        s = _sq_sum(x, i, mean, 0, 0, dim)
        if s < best:
            best, arg = s, i
    return arg


@nb.njit(cache=True)
def _quantise(x, orig, gstart, eps):
    """Group means, offsets quantised to int16 (positions = group order), their squared norms, residuals and
    (inflated) offset norms, the groups' radii and scales."""
    n = orig.shape[0]
    dim = x.shape[1]
    n_groups = gstart.shape[0] - 1
    mu = np.zeros((n_groups, dim))
    for g in range(n_groups):
        for p in range(gstart[g], gstart[g + 1]):
            for k in range(dim):
                mu[g, k] += x[orig[p], k]
        cnt = gstart[g + 1] - gstart[g]
        if cnt > 0:
            for k in range(dim):
                mu[g, k] /= cnt
    q = np.empty((n, dim), np.int16)
    nq = np.empty(n, np.int64)
    res = np.empty(n)
    ynorm = np.empty(n)
    rho = np.zeros(n_groups)
    scale = np.ones(n_groups)
    cap = _NORM_CAP - 0.5 * np.sqrt(dim) - 2.0
    for g in range(n_groups):
        amax = 0.0
        ymax = 0.0
        for p in range(gstart[g], gstart[g + 1]):
            s2 = 0.0
            for k in range(dim):
                y = x[orig[p], k] - mu[g, k]
                s2 += y * y
                amax = max(amax, abs(y))
            if not np.isfinite(s2):
                raise ValueError("embeddings must be finite")
            ynorm[p] = np.sqrt(s2) * (1.0 + eps)
            ymax = max(ymax, ynorm[p])
        rho[g] = ymax
        s = max(ymax / cap, amax / _COORD_CAP)
        if not s > 0.0:
            s = 1.0
        scale[g] = s
        inv = 1.0 / s
        for p in range(gstart[g], gstart[g + 1]):
            n2 = 0
            r2 = 0.0
            for k in range(dim):
                y = x[orig[p], k] - mu[g, k]
                v = math.floor(y * inv + 0.5)       # any integer near y / s will do: r measures what it misses
                iv = np.int64(v)
                q[p, k] = iv
                n2 += iv * iv
                e = y - s * v
                r2 += e * e
            nq[p] = n2
            res[p] = np.sqrt(r2) * (1.0 + eps) + eps * ynorm[p]
    return mu, rho, scale, q, nq, res, ynorm


@nb.njit(cache=True)
def _refresh(g, gstart, picked, lo, hi, lmax, hmax):
    a = -1.0
    b = -1.0
    for j in range(gstart[g], gstart[g + 1]):
        if not picked[j]:
            a = max(a, lo[j])
            b = max(b, hi[j])
    lmax[g] = a
    hmax[g] = b


@nb.njit(cache=True)
def _extend(j, n_done, limit, limit_orig, x, orig, pick_orig, exv, exa, exn, stats):
    """Extend j's cached exact distance over the picks not yet included; stop early once j cannot beat
    ``(limit, limit_orig)``. Returns (value, True when it covers all ``n_done`` picks)."""
    v = exv[j]
    a = exa[j]
    i = exn[j]
    oj = orig[j]
    while i < n_done:
        if v <= 0.0:                      # nothing comes closer than 0: exact over all picks
            i = n_done
            break
        if v < limit or (v == limit and oj > limit_orig):
            break
        d = _dist(x, oj, x, pick_orig[i])
        stats[1] += 1
        if d < v:
            v = d
            a = i
        i += 1
    exv[j] = v
    exa[j] = a
    exn[j] = i
    return v, i == n_done


@nb.njit(cache=True)
def _same(x, i, j):
    for k in range(x.shape[1]):
        if x[i, k] != x[j, k]:
            return False
    return True


@nb.njit(cache=True)
def _near_first(j, n_done, x, orig, pick_orig, hi, near, exv, exa, exn, stats):
    """The exact distance to the item j's upper bound came from (usually its nearest), when the cache does not
    cover it yet: a cheap first look. A distance of 0 settles j's exact distance at once."""
    nj = near[j]
    if nj < exn[j]:
        return np.inf
    d = _dist(x, orig[j], x, pick_orig[nj])
    stats[1] += 1
    hi[j] = min(hi[j], d)
    if d <= 0.0 and exn[j] < n_done:          # distances are >= 0: nothing comes closer
        if d < exv[j]:
            exv[j] = d
            exa[j] = nj
        exn[j] = n_done
    return d


@nb.njit(cache=True)
def _choose(n_done, x, m, orig, gstart, picked, lo, hi, near, lmax, hmax, pick_orig, exv, exa, exn, stats):
    """The unpicked position with the largest exact distance (ties: lowest original index) and that distance."""
    n_groups = gstart.shape[0] - 1
    thr = -1.0
    for g in range(n_groups):
        thr = max(thr, lmax[g])
    order = np.argsort(-hmax)
    best = -1
    bestv = -1.0
    besto = orig.shape[0]                 # no original index reaches it
    for gi in range(n_groups):
        g = order[gi]
        if hmax[g] < thr or hmax[g] < bestv:
            break
        for j in range(gstart[g], gstart[g + 1]):
            if picked[j]:
                continue
            h = hi[j]
            if h < thr or h < bestv or (h == bestv and orig[j] > besto):
                continue
            if exn[j] < n_done:
                if best >= 0 and m[j] == m[best] and _same(x, orig[j], orig[best]):
                    # a copy of the best so far (ties are common among copies): the same distances, bit for bit
                    exv[j], exa[j], exn[j] = bestv, exa[best], n_done
                    lo[j], hi[j], near[j] = bestv, bestv, exa[best]
                    if orig[j] < besto:
                        best, besto = j, orig[j]
                    continue
                d = _near_first(j, n_done, x, orig, pick_orig, hi, near, exv, exa, exn, stats)
                if d < bestv or (d == bestv and orig[j] > besto):
                    continue
            v, done = _extend(j, n_done, bestv, besto, x, orig, pick_orig, exv, exa, exn, stats)
            if v < hi[j]:
                hi[j] = v
                near[j] = exa[j]
            if done:
                lo[j] = v
                if v > bestv or (v == bestv and orig[j] < besto):
                    best, bestv, besto = j, v, orig[j]
                    thr = max(thr, v)
    return best, bestv


@nb.njit(cache=True)
def _update(step, c, x, mu, rho, scale, q, nq, res, ynorm, gstart, picked, lo, hi, near, lmax, hmax, w, z, eps,
            stats):
    """Tighten every point's interval with the new centre ``x[c]``, skipping groups and points that provably
    cannot come closer to it than they already are."""
    n_groups = gstart.shape[0] - 1
    dim = x.shape[1]
    cap = _NORM_CAP - 0.5 * np.sqrt(dim) - 2.0
    one_m = 1.0 - eps
    one_p = 1.0 + eps
    up2 = 1.0 + 2.0 * eps                 # >= 1 / (1 - eps)
    up4 = 1.0 + 4.0 * eps
    for g in range(n_groups):
        zn2 = 0.0
        zmax = 0.0
        for k in range(dim):
            z[k] = x[c, k] - mu[g, k]
            zn2 += z[k] * z[k]
            zmax = max(zmax, abs(z[k]))
        zn = np.sqrt(zn2)
        zlo = zn * one_m
        if (zlo - rho[g]) * one_m >= hmax[g]:
            stats[2] += 1
            continue
        t = max(zn / cap, zmax / _COORD_CAP)
        if not t > 0.0:
            t = 1.0
        nw = 0
        r2 = 0.0
        inv = 1.0 / t
        for k in range(dim):
            v = math.floor(z[k] * inv + 0.5)
            iv = np.int64(v)
            w[k] = iv
            nw += iv * iv
            e = z[k] - t * v
            r2 += e * e
        rz = np.sqrt(r2) * one_p + eps * zn
        s2 = scale[g] * scale[g]
        bw = t * t * nw
        e4 = 4.0 * eps
        st2 = 2.0 * scale[g] * t
        evals = 0
        for j in range(gstart[g], gstart[g + 1]):
            if picked[j]:
                continue
            h = hi[j]
            if (zlo - ynorm[j]) * one_m >= h:
                continue
            row = q[j]
            acc = np.int32(0)
            for k in range(dim):          # exact: every partial sum is bounded by |q_j| |w| < 2^31
                acc = np.int32(acc + np.int32(row[k]) * np.int32(w[k]))
            evals += 1
            a = s2 * nq[j]
            d2 = a + bw - st2 * acc
            eta = e4 * (a + bw)
            rr = (res[j] + rz) * one_p
            # fast reject: the lower end of the interval is >= H_j, so nothing changes
            kk = (h * up2 + rr) * up4
            if d2 - eta >= kk * kk:
                continue
            dlo = np.sqrt(max(d2 - eta, 0.0))
            dhi = np.sqrt(d2 + eta)
            lj = (dlo * one_m - rr) * one_m
            hj = (dhi * one_p + rr) * one_p
            if lj < lo[j]:
                lo[j] = max(lj, 0.0)
            if hj < h:
                hi[j] = hj
                near[j] = step
        stats[0] += evals
        _refresh(g, gstart, picked, lo, hi, lmax, hmax)


@nb.njit(cache=True)
def _greedy(x, orig, gstart, mu, rho, scale, q, nq, res, ynorm, m, n_picks, first, eps, stats):
    n, dim = q.shape
    n_groups = gstart.shape[0] - 1
    lo = m.copy()
    hi = m.copy()
    exv = m.copy()                        # exact distance over the first exn[j] picks (and the labelled items)
    exa = np.full(n, -1, np.int64)        # ... attained at that pick (-1: a labelled item)
    exn = np.zeros(n, np.int64)
    near = np.full(n, -1, np.int64)       # the item whose distance is <= hi[j] (-1: labelled)
    picked = np.zeros(n, np.bool_)
    group = np.empty(n, np.int64)
    lmax = np.empty(n_groups)
    hmax = np.empty(n_groups)
    for g in range(n_groups):
        for j in range(gstart[g], gstart[g + 1]):
            group[j] = g
        _refresh(g, gstart, picked, lo, hi, lmax, hmax)
    pick_pos = np.empty(n_picks, np.int64)
    pick_orig = np.empty(n_picks, np.int64)
    pick_score = np.empty(n_picks)
    w = np.empty(dim, np.int16)
    z = np.empty(dim)
    for step in range(n_picks):
        if step == 0 and first >= 0:
            p, v = first, m[first]
        else:
            p, v = _choose(step, x, m, orig, gstart, picked, lo, hi, near, lmax, hmax, pick_orig, exv, exa, exn, stats)
        pick_pos[step] = p
        pick_orig[step] = orig[p]
        pick_score[step] = v
        picked[p] = True
        lo[p] = -1.0
        hi[p] = -1.0
        _refresh(group[p], gstart, picked, lo, hi, lmax, hmax)
        _update(step, orig[p], x, mu, rho, scale, q, nq, res, ynorm, gstart, picked, lo, hi, near, lmax, hmax, w, z,
                eps, stats)
    # final distances of the unpicked: exact where they could reach the last pick's, else an upper bound that is
    # itself the exact distance to one labelled or picked item
    final = np.empty(n)
    last = pick_score[n_picks - 1] if n_picks > 0 else np.inf
    for j in range(n):
        if picked[j]:
            continue
        if hi[j] >= last:
            _near_first(j, n_picks, x, orig, pick_orig, hi, near, exv, exa, exn, stats)
            v, _ = _extend(j, n_picks, -1.0, 0, x, orig, pick_orig, exv, exa, exn, stats)
        else:
            v = exv[j]
            if exn[j] < n_picks and near[j] >= 0:
                v = min(v, _dist(x, orig[j], x, pick_orig[near[j]]))
                stats[1] += 1
        final[j] = v
    for step in range(n_picks):
        final[pick_pos[step]] = pick_score[step]
    return pick_orig, pick_score, final


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


def _assign(x: np.ndarray, centres: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (float32, blocked) for every row of ``x - shift``; approximate is fine."""
    half = 0.5 * np.einsum("ij,ij->i", centres, centres)
    rows = max(1, TEMP_BYTES // (4 * max(len(centres), x.shape[1], 1)))
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), rows):
        block = np.asarray(x[s:s + rows], dtype=np.float32) - shift
        out[s:s + rows] = np.argmax(block @ centres.T - half, axis=1)
    return out


def _kmeans(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` centres from a few Lloyd iterations on ``sample`` (float32, already centred), started at random rows."""
    centres = sample[rng.choice(len(sample), min(k, len(sample)), replace=False)].copy()
    zero = np.zeros(sample.shape[1], np.float32)
    for _ in range(_LLOYD):
        label = _assign(sample, centres, zero)
        order = np.argsort(label, kind="stable")
        counts = np.bincount(label, minlength=len(centres))
        ok = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[ok]
        sums = np.add.reduceat(sample[order], starts, axis=0, dtype=np.float64)
        centres[ok] = (sums / counts[ok, None]).astype(np.float32)
    return centres


def _groups(x: np.ndarray, n_groups: int, seed: int = 0) -> np.ndarray:
    """A group label per row, from two-level k-means: about sqrt(G) coarse centres, then each coarse group split
    in proportion to its share of a sample (16 rows per group); every row goes to its nearest coarse centre, then
    to the nearest of that group's fine centres. Costs about ``2 sqrt(G) N D`` multiply-adds instead of ``G N D``.
    Deterministic (fixed seed); the picks do not depend on it, only the amount of pruning."""
    n, dim = x.shape
    if n_groups <= 1 or n <= 1:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    shift = np.asarray(x.mean(axis=0, dtype=np.float64), dtype=np.float32)
    sample = np.asarray(x[np.sort(rng.choice(n, min(n, 16 * n_groups), replace=False))], dtype=np.float32) - shift
    coarse = _kmeans(sample, max(1, round(math.sqrt(n_groups))), rng)
    sample_label = _assign(sample, coarse, np.zeros(dim, np.float32))
    fine = []
    for c in range(len(coarse)):
        part = sample[sample_label == c]
        k = max(1, round(n_groups * len(part) / len(sample)))
        fine.append(_kmeans(part, k, rng) if len(part) > k else (part if len(part) else coarse[c:c + 1]))
    label = _assign(x, coarse, shift)
    order = np.argsort(label, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(label, minlength=len(coarse)))])
    offset = 0
    out = np.empty(n, np.int64)
    for c in range(len(coarse)):
        rows = order[bounds[c]:bounds[c + 1]]
        step = max(1, TEMP_BYTES // (4 * max(dim, len(fine[c]), 1)))
        for s in range(0, len(rows), step):
            idx = rows[s:s + step]
            out[idx] = offset + _assign(x[idx], fine[c], shift)
        offset += len(fine[c])
    return out


def default_groups(n: int, n_picks: int) -> int:
    """About sqrt(N) groups (the clustering costs N * G * D, a step G * D plus the groups it cannot skip), none
    for a few picks or a small pool."""
    if n_picks < 16 or n < 1024:
        return 1
    return int(min(512, round(math.sqrt(n)), 4 * n_picks))


def farthest_first(points: np.ndarray, min_dist: np.ndarray, n_picks: int, cold: bool,
                   n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Greedy k-center: ``n_picks`` picks (capped at N), each the point of largest exact distance to everything
    labelled (``min_dist``) or picked before it, ties to the lower index; with ``cold`` the first pick is the point
    nearest the (float64) mean instead. Returns ``(picks, pick_distances, final, stats)``: the picked indices in
    order, each one's exact distance when picked, every point's final distance (a pick's: when picked; an
    unpicked point's: exact where it is within the bounds' width of the last pick's distance, otherwise the exact
    distance to one labelled or picked item within that width of the nearest -- always below the last pick's, or
    equal and at a higher index), and counters ``point_evals`` (int16 distance bounds computed), ``exact_evals``,
    ``groups_skipped``, ``n_groups``."""
    x = _as_matrix(points)
    n, dim = x.shape
    m = np.array(min_dist, dtype=np.float64).reshape(-1)
    if len(m) != n:
        raise ValueError(f"min_dist has {len(m)} entries for {n} points")
    if not np.all(m >= 0):
        raise ValueError("min_dist must be distances: >= 0 (inf where nothing is labelled), not NaN")
    n_picks = max(0, min(int(n_picks), n))
    if n_groups is None:
        n_groups = default_groups(n, n_picks)
    n_groups = max(1, min(int(n_groups), n))
    label = _groups(x, n_groups) if n_picks else np.zeros(n, np.int64)
    orig = np.argsort(label, kind="stable").astype(np.int64)
    counts = np.bincount(label, minlength=n_groups)
    gstart = np.concatenate([[0], np.cumsum(counts[counts > 0])]).astype(np.int64)
    eps = _eps(dim)
    mu, rho, scale, q, nq, res, ynorm = _quantise(x, orig, gstart, eps)
    first = -1
    if cold and n_picks:
        first = int(np.flatnonzero(orig == _nearest_to_mean(x))[0])
    stats = np.zeros(3, np.int64)
    picks, pick_dist, final_pos = _greedy(x, orig, gstart, mu, rho, scale, q, nq, res, ynorm, m[orig], n_picks,
                                          first, eps, stats)
    final = np.empty(n)
    final[orig] = final_pos
    info = {"point_evals": int(stats[0]), "exact_evals": int(stats[1]), "groups_skipped": int(stats[2]),
            "n_groups": len(gstart) - 1}
    return picks, pick_dist, final, info


# ---- nearest distances ----------------------------------------------------------------------------------------

@nb.njit(cache=True)
def _centre_rows(a, lo, hi, shift, out, norm2, err):
    """Rows ``lo:hi`` of ``a`` minus ``shift`` as float32 into ``out``, the float64 squared norms of those float32
    rows and a bound on the rounding to float32 (``2^-24 * |row|``, inflated)."""
    for i in range(hi - lo):
        s = 0.0
        for k in range(a.shape[1]):
            v = np.float32(a[lo + i, k] - shift[k])
            out[i, k] = v
            s += np.float64(v) * np.float64(v)
        norm2[i] = s
        err[i] = 1.01 * _U32 * np.sqrt(s)


@nb.njit(cache=True)
def _scan(dots, xn2, xerr, on2, oerr_max, on_max, gam, x, x0, o, o0, best, eps, stats):
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
        eta = 2.02 * gam * np.sqrt(xn2[i]) * on_max + 8.0 * u64 * (xn2[i] + on_max * on_max)
        lim = (b * (1.0 + 2.0 * eps) + xerr[i] + oerr_max) * (1.0 + eps)
        thr = lim * lim * (1.0 + eps) + eta - xn2[i]
        for k in range(n_o):
            if k != arg and on2[k] - 2.0 * np.float64(dots[i, k]) < thr:
                d = _dist(x, x0 + i, o, o0 + k)
                stats[0] += 1
                if d < b:
                    b = d
                    lim = (b * (1.0 + 2.0 * eps) + xerr[i] + oerr_max) * (1.0 + eps)
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
    cache_all = len(o) * dim * 4 <= TEMP_BYTES

    def other_blocks():
        for s in range(0, len(o), ob):
            e = min(len(o), s + ob)
            oc, on2, oerr = np.empty((e - s, dim), np.float32), np.empty(e - s), np.empty(e - s)
            _centre_rows(o, s, e, shift, oc, on2, oerr)
            yield s, oc, on2, float(oerr.max()), float(np.sqrt(on2.max()))

    cached = list(other_blocks()) if cache_all else None
    xc, xn2, xerr = np.empty((pb, dim), np.float32), np.empty(pb), np.empty(pb)
    for s in range(0, n, pb):
        e = min(n, s + pb)
        _centre_rows(x, s, e, shift, xc, xn2, xerr)
        for o0, oc, on2, oerr_max, on_max in (cached if cached is not None else other_blocks()):
            dots = xc[:e - s] @ oc.T
            _scan(dots, xn2, xerr, on2, oerr_max, on_max, gam, x, s, o, o0, best, eps, stats)
            del dots                      # before the next block's products are allocated
    return best, {"exact_evals": int(stats[0])}
