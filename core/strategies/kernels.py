"""Fused query kernels: an uncertainty measure and a running exact top-k in one pass over the pool.

The query step scores every pool item and keeps the ``k`` best. Done naively it materialises a float64 score per
item and then sorts or partitions them. Here :class:`TopKAccumulator` keeps the ``k`` best (score, position) pairs
in a binary min-heap (O(k) memory, O(n) time: a new score costs one comparison with the heap minimum, and only the
few that enter cost O(log k)), and :meth:`TopKAccumulator.push_measure` computes the measure inside numba kernels
block by block, so the score vector is never built and most rows never get their exact score at all.
:func:`measure` exposes the exact row kernels as plain measures.

Exactness. Every score that enters the heap is computed by a *replica* of the float64 reference measure in
:mod:`activelab.strategies.uncertainty`: the same float64 operations in the same order, including numpy's pairwise
summation over the class axis (``0 + pairwise(terms)``, 8 accumulators per block of 128) and its sequential
summation over the leading (pass) axis, and libm's ``log``. So the scores are bit-identical to the reference for
row-major input (numpy's own summation order, hence its last bit, depends on the memory layout), and the picks are
those of top-k over the reference, tie order included. One exception: on CPUs with AVX-512, numpy's float64 ``log``
is its own vectorised one, which can differ from libm's in the last bit, so entropy and BALD scores can differ from
the reference by a few ulp of the entropies summed (BALD, a difference of entropies, by more ulp of its own value;
seen on a lent machine's CPU and on an AVX-512 development machine) and only scores that close can swap. Speed
comes from *pruning*, never from approximating a picked score: a row is skipped only when a rigorous upper bound on its
reference score is strictly below the current k-th best score ``thr`` (so an equal score with a lower position is
never lost); ``thr`` only grows, so a pruned row could not have entered later either. Every bound below carries a
slack that covers the float64 rounding of the reference (at least 1e-9) and the rounding of the bound itself; rows
outside a bound's preconditions (NaN or infinite entries, negative entries, a row sum outside [0.001, 1.001] for
entropy, entries above 1.001 for bald) are computed exactly.

- least_confidence ``1 - max p`` and margin ``-(p1 - p2)`` need no logarithm: the row maximum (and runner-up) are
  exact in any precision, so the exact score of every row is computed and compared with ``thr``. For up to 16
  float32 classes (8 float64) this comparison runs on SIMD groups of rows (see "Row groups" below), and the scalar
  code recomputes the score of the few rows that reach ``thr`` (or hold a NaN).
- entropy. With ``S``, ``Q``, ``R`` the row's sums of ``p``, ``p^2``, ``p^3`` (``S`` is not assumed to be 1),
  ``m`` its maximum and ``r_i = C p_i / S``, the entropy is exactly ``H = S log(C/S) - (S/C) sum g(r_i)`` with
  ``g(r) = r log r - r + 1 >= 0`` (entries >= 0). Since ``g'' = 1/r``, ``g(r) >= (r-1)^2 / (2 max(1, r))`` with
  ``max r = C m / S``, and, by Taylor's theorem with ``g'''' > 0``, ``g(r) >= (r-1)^2/2 - (r-1)^3/6``;
  ``S log(C/S)`` is concave, so below its tangent at ``S = 1``. This gives two upper bounds from ``(S, Q, R, m)``
  alone (no logarithm), tight for near-uniform rows:
  ``log C + (log C - 1)(S - 1) - (Q - S^2/C) / (2m)`` and ``log C + (log C - 1)(S - 1) + 5S/6 - CQ/S + C^2 R/(6S^2)``.
  For peaked rows a third: ``f(x) = -x log x`` is concave, so the rest of the row spread evenly maximises it,
  ``H <= f(m) + (C-1) f((S_b - m)/(C-1))`` for ``S <= S_b`` (the rest term grows with the rest below ``(C-1)/e``,
  so for ``C >= 4``), decreasing in ``m``: a bisection per chunk turns it into a cut ``m > m*``. A first pass over a
  chunk of rows computes ``(S, Q, R, m)`` (float32 sums for float32 input; their rounding is in the slack) and keeps
  the rows that every bound lets through; the exact entropy is computed for the ``k`` candidates with the largest
  bounds (this lifts ``thr`` at once); the other candidates that still reach ``thr`` get a vectorised float32
  estimate with a rigorous error bound (as for bald below), and the exact entropy only if that reaches ``thr``. On
  Dirichlet(1) rows with C = 10 and k = 1000 of 10^6, about 0.4% of the rows get an exact entropy (2% for
  Dirichlet(0.1)).
- bald ``max(H(mean_t p_t) - mean_t H(p_t), 0)``. A vectorised float32 pass (a branch-free polynomial log with
  error ``_LOG_ERR``) estimates each item's score with a rigorous error bound ``eps`` (log error times the item's
  probability mass plus the float32 rounding of the sums over passes and classes; derived at
  :func:`_bald_bounds`, valid when every entry lies in [0, 1.001]). The exact replica then runs on the items whose
  estimate plus ``eps`` reaches ``thr``, in the same order as for entropy: in practice about ``k`` items per block
  and a thin band.

Row groups. Per-row code over a handful of classes is latency-bound scalar work (a compiler does not vectorise
it across rows: that needs strided loads, and gathers are slow on CPUs with the Downfall mitigation). For C up to
one 64-byte vector of lanes (16 float32, 8 float64), least confidence, margin and entropy's bound pass handle G
rows at once (G = the lane count): one vector load per row, then each statistic (max, runner-up, S, Q, R, the
bits' OR) reduced for all G rows together by a transpose-reduce, and the threshold tests done on the G results at
once; the scalar code then runs only on the rows that pass. These are filters: a row is dropped only when its
exact score (least confidence, margin: the same float64 arithmetic) or a valid bound (entropy: the bounds above,
evaluated in float64 from the group's float32 sums, whose summation order the slack covers) is below ``thr``.
The last rows of a block, whose 64-byte load would pass the array's end, take the scalar path (the query-speed
benchmark shows what the groups gain).

Tie order: higher score first; equal scores: lower position first; NaN ranks last, below -inf (the
selectors' top-k is this accumulator, so they rank NaN so too): the ``k`` lowest NaN positions are kept in a side
heap and returned, after every non-NaN score, only when fewer than ``k`` non-NaN scores were pushed. The heaps compare
(score, position) pairs, so the result does not depend on the order in which the pairs arrive.

Memory: the accumulator holds O(k) (a heap of ``k`` pairs and one of ``k`` NaN positions). A fused push allocates
O(C) plus, for entropy and bald, O(block) candidate bounds (at most 65,536 rows at a time for entropy; until the
heap is full, chunks of max(4096, 4k) rows, so that the threshold rises before a whole block is a candidate) and, for
bald, a 512-item tile of float32 sums (and a float32 copy of a float64 block). Kernels are compiled once
(``cache=True``) and release the GIL.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

KINDS = ("least_confidence", "margin", "entropy", "bald")

_EXACT = dict(cache=True, nogil=True)                           # IEEE semantics, no reassociation or contraction
_BOUND = dict(cache=True, nogil=True, fastmath={"contract"})   # bounds only: an FMA never loosens them
_TINY = np.finfo(np.float64).tiny
_EPS64 = np.finfo(np.float64).eps
_U32 = 2.0 ** -24                      # unit roundoff of float32
_S_CHECK = 1.001                       # bounds need row sums (entropy) or entries (bald) <= this
_S_MIN = 1e-3                          # ... and entropy row sums >= this (float32 underflow stays negligible)
_CHUNK = 65536                         # rows per bound pass of the entropy kernel
_BALD_TILE = 512                       # items per tile of the bald estimate (its float32 sums stay in cache)


# ------------------------------------------------------------------------------------------ float32 bit casts
@intrinsic
def _f32_to_u32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _i32_to_f32(typingctx, i):
    if i != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


# ------------------------------------------------------------------------------------------ row groups in SIMD
# A row kernel over (B, C) rows with small C spends its time on per-row work that a compiler does not vectorise
# (its loops run over a few classes; vectorising across rows would need strided loads, and gathers are slow on
# CPUs with the Downfall mitigation). The intrinsics below handle a *group* of G rows at once (G = 16 float32 or 8
# float64: one 64-byte vector each) for C <= G: one vector load per row (the lanes past C masked), then each
# statistic reduced for all G rows together by a transpose-reduce (log2 G levels of two shuffles and one operation
# per pair of vectors), so a row costs a few vector operations. They compute *filters* only: which rows of the
# group need the exact scalar code (the scores themselves always come from it), so their summation order and the
# sign of a zero maximum do not matter. A group is only formed where its last row's 64-byte load stays inside the
# array; the last few rows take the scalar path.
_GROUP_BYTES = 64


def _group_rows(dtype: object) -> int:
    return _GROUP_BYTES * 8 // dtype.bitwidth


def _splat(builder, value, n):
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(ir.VectorType(value.type, n), ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, n), [0] * n))


def _transpose_reduce(builder, rows, combine):
    """``rows``: G tuples of vectors of G lanes, tuple r holding row r's lanes. Returns one tuple of vectors whose
    lane r is ``combine`` reduced over row r's lanes: at each level, pairs of tuples (a, b) ->
    combine(low halves of each row's partials, high halves) by two shuffles per vector."""
    n = len(rows)
    mask_type = ir.VectorType(ir.IntType(32), n)
    width, per = n, 1                 # lanes per row partial, row partials per vector
    while len(rows) > 1:
        half = width // 2
        low, high = [], []
        for base in (0, n):
            for g in range(per):
                low += [base + g * width + j for j in range(half)]
                high += [base + g * width + half + j for j in range(half)]
        low, high = ir.Constant(mask_type, low), ir.Constant(mask_type, high)
        rows = [combine(tuple(builder.shuffle_vector(x, y, low) for x, y in zip(a, b)),
                        tuple(builder.shuffle_vector(x, y, high) for x, y in zip(a, b)))
                for a, b in zip(rows[0::2], rows[1::2])]
        width, per = half, per * 2
    return rows[0]


def _reduce(builder, vecs, op):
    """One statistic per row (see :func:`_transpose_reduce`): lane r of the result is ``op`` over vector r."""
    return _transpose_reduce(builder, [(v,) for v in vecs], lambda a, b: (op(a[0], b[0]),))[0]


def _group_load(context, builder, array_type, array, row):
    """The G row vectors of rows row .. row+G-1, the <G x i1> mask of the lanes < C, their vector type and C."""
    n = _group_rows(array_type.dtype)
    vt = ir.VectorType(context.get_value_type(array_type.dtype), n)
    data = context.make_array(array_type)(context, builder, array)
    n_col = builder.extract_value(data.shape, 1)
    first = builder.gep(data.data, [builder.mul(row, n_col)])
    rows = [builder.load(builder.bitcast(builder.gep(first, [builder.mul(ir.Constant(n_col.type, r), n_col)]),
                                         vt.as_pointer()), align=1) for r in range(n)]
    lanes = ir.Constant(ir.VectorType(n_col.type, n), list(range(n)))
    return rows, builder.icmp_unsigned("<", lanes, _splat(builder, n_col, n)), vt, n_col


def _store_rows(context, builder, out_type, out, values):
    """Vector ``values[i]`` into row i of the 2-d array ``out`` (its first len(vector) entries)."""
    data = context.make_array(out_type)(context, builder, out)
    stride = builder.extract_value(data.strides, 0)
    base = builder.bitcast(data.data, ir.IntType(8).as_pointer())
    for i, value in enumerate(values):
        ptr = builder.gep(base, [builder.mul(ir.Constant(stride.type, i), stride)])
        builder.store(value, builder.bitcast(ptr, value.type.as_pointer()), align=1)


def _fill(builder, rows, live, vt, value):
    fill = ir.Constant(vt, [value] * vt.count)
    return [builder.select(live, v, fill) for v in rows]


def _vmax(builder):
    return lambda a, b: builder.select(builder.fcmp_ordered(">", a, b), a, b)


def _vmin(builder):
    return lambda a, b: builder.select(builder.fcmp_ordered("<", a, b), a, b)


def _bits(builder, mask):
    """A <G x i1> mask as an int64 with bit r for lane r."""
    return builder.zext(builder.bitcast(mask, ir.IntType(mask.type.count)), ir.IntType(64))


def _group_args(arr, row):
    return (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
            and arr.dtype in (types.float32, types.float64) and isinstance(row, types.Integer))


@intrinsic
def _lowest_bit(typingctx, x):
    """The index of the lowest set bit of a nonzero int64 (``llvm.cttz``)."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])
    return types.int64(types.int64), codegen


@intrinsic
def _group_lc(typingctx, arr, row, thr):
    """Bit r set where row ``row + r`` may enter: ``1 - max >= thr`` (as the scalar code computes it), or its sum
    is NaN (a NaN somewhere: the scalar code decides)."""
    if not _group_args(arr, row):
        return None

    def codegen(context, builder, signature, args):
        rows, live, vt, _ = _group_load(context, builder, signature.args[0], args[0],
                                     context.cast(builder, args[1], signature.args[1], types.intp))
        m = _reduce(builder, _fill(builder, rows, live, vt, float("-inf")), _vmax(builder))
        s = _reduce(builder, _fill(builder, rows, live, vt, 0.0), builder.fadd)
        dt = ir.VectorType(ir.DoubleType(), vt.count)
        score = builder.fsub(ir.Constant(dt, [1.0] * vt.count), builder.fpext(m, dt) if vt != dt else m)
        keep = builder.or_(builder.fcmp_unordered(">=", score, _splat(builder, args[2], vt.count)),
                           builder.fcmp_unordered("uno", s, s))
        return _bits(builder, keep)
    return types.int64(arr, row, types.float64), codegen


@intrinsic
def _group_margin(typingctx, arr, row, thr):
    """Bit r set where row ``row + r`` may enter: ``-(max - runner-up) >= thr`` (a tie counts twice, as in the
    scalar code), or its sum is NaN."""
    if not _group_args(arr, row):
        return None

    def codegen(context, builder, signature, args):
        rows, live, vt, _ = _group_load(context, builder, signature.args[0], args[0],
                                     context.cast(builder, args[1], signature.args[1], types.intp))
        vmax, vmin = _vmax(builder), _vmin(builder)
        n = vt.count
        top, second = _transpose_reduce(          # (max, runner-up) of partials: merging counts a tie twice
            builder, [(v, ir.Constant(vt, [float("-inf")] * n)) for v in _fill(builder, rows, live, vt, float("-inf"))],
            lambda a, b: (vmax(a[0], b[0]), vmax(vmin(a[0], b[0]), vmax(a[1], b[1]))))
        s = _reduce(builder, _fill(builder, rows, live, vt, 0.0), builder.fadd)
        dt = ir.VectorType(ir.DoubleType(), n)
        a1 = builder.fpext(top, dt) if vt != dt else top
        a2 = builder.fpext(second, dt) if vt != dt else second
        score = builder.fneg(builder.fsub(a1, a2))
        keep = builder.or_(builder.fcmp_unordered(">=", score, _splat(builder, args[2], n)),
                           builder.fcmp_unordered("uno", s, s))
        return _bits(builder, keep)
    return types.int64(arr, row, types.float64), codegen


@intrinsic
def _group_entropy(typingctx, arr, row, thr, cut, params, stats):
    """For the rows ``row .. row+G-1``: their max, sum, and sums of squares and cubes into ``stats[0..3, :G]``
    (the input's precision). Returns bit r (of the low 32) where the row needs the scalar bound code: it fails the
    bounds' preconditions (an entry with its sign bit set, or a sum outside [_S_MIN, _S_CHECK] or NaN; then bit
    32 + r is set too), or its max bound (``max <= cut``), quadratic and cubic bounds all reach ``thr`` (evaluated
    as :func:`_entropy_up` does, in float64; a filter, so the order of its roundings does not matter)."""
    if not (_group_args(arr, row) and isinstance(stats, types.Array) and stats.dtype == arr.dtype):
        return None

    def codegen(context, builder, signature, args):
        rows, live, vt, n_col = _group_load(context, builder, signature.args[0], args[0],
                                            context.cast(builder, args[1], signature.args[1], types.intp))
        n = vt.count
        ivt = ir.VectorType(ir.IntType(32 if signature.args[0].dtype == types.float32 else 64), n)
        dt = ir.VectorType(ir.DoubleType(), n)
        zeroed = _fill(builder, rows, live, vt, 0.0)
        m = _reduce(builder, _fill(builder, rows, live, vt, float("-inf")), _vmax(builder))
        s = _reduce(builder, zeroed, builder.fadd)
        squares = [builder.fmul(v, v) for v in zeroed]
        q = _reduce(builder, squares, builder.fadd)
        r = _reduce(builder, [builder.fmul(a, v) for a, v in zip(squares, zeroed)], builder.fadd)
        o = _reduce(builder, [builder.bitcast(v, ivt) for v in zeroed], builder.or_)
        _store_rows(context, builder, signature.args[5], args[5], (m, s, q, r))

        def wide(x):
            return builder.fpext(x, dt) if vt != dt else x

        def const(x):
            return ir.Constant(dt, [x] * n)
        m, s, q, r = wide(m), wide(s), wide(q), wide(r)
        sign_ok = builder.icmp_signed(">=", o, ir.Constant(ivt, [0] * n))
        in_range = builder.and_(builder.fcmp_ordered(">=", s, const(_S_MIN)),
                                builder.fcmp_ordered("<=", s, const(_S_CHECK)))
        bad = builder.not_(builder.and_(sign_ok, in_range))
        fmul, fadd, fsub = builder.fmul, builder.fadd, builder.fsub
        log_c, inv_c, slack_quad, slack_cubic = (_splat(builder, builder.extract_value(args[4], i), n)
                                                 for i in range(4))
        thr_v, cut_v = _splat(builder, args[2], n), _splat(builder, args[3], n)
        n_class = builder.sitofp(_splat(builder, n_col, n), dt)
        tangent = fadd(log_c, fmul(fsub(log_c, const(1.0)), fsub(s, const(1.0))))
        quad = fadd(tangent, slack_quad)
        spread = fsub(q, fmul(fmul(s, s), inv_c))
        quad_ok = builder.fcmp_unordered("<=", spread, fmul(fmul(const(2.0), m), fsub(quad, thr_v)))
        cubic = fadd(fadd(tangent, slack_cubic), fmul(s, const(5.0 / 6.0)))
        lhs = fadd(fmul(fmul(fmul(const(6.0), s), s), fsub(cubic, thr_v)),
                   fmul(n_class, fsub(fmul(n_class, r), fmul(fmul(const(6.0), q), s))))
        cubic_ok = builder.fcmp_unordered(">=", lhs, const(0.0))
        max_ok = builder.fcmp_unordered("<=", m, cut_v)
        keep = builder.or_(bad, builder.and_(max_ok, builder.and_(quad_ok, cubic_ok)))
        bits_bad = _bits(builder, bad)
        return builder.or_(_bits(builder, keep), builder.shl(bits_bad, ir.Constant(ir.IntType(64), 32)))
    return types.int64(arr, row, types.float64, types.float64, params, stats), codegen


@intrinsic
def _group_bald(typingctx, g, sp, ub, row, out):
    """Rows ``row .. row+15`` of bald's per (item, class) float32 tiles ``g`` (the estimate's terms), ``sp`` (sums
    of p) and uint32 ``ub`` (max of p's bits), each viewed as (items, C) with C <= 16: per item the float64 sum of
    its ``g``, the float64 sum of its ``sp`` and whether its max bits exceed ``_BITS_MAX`` (1.0, else 0.0), into
    ``out[0..2, :16]``. Sums of float32 values in float64 (any order: the rounding is far below the bound's slack)."""
    ok = all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in (g, sp, ub))
    if not (ok and g.dtype == sp.dtype == types.float32 and ub.dtype == types.uint32 and isinstance(row, types.Integer)
            and isinstance(out, types.Array) and out.dtype == types.float64):
        return None

    def codegen(context, builder, signature, args):
        row = context.cast(builder, args[3], signature.args[3], types.intp)
        dt = ir.VectorType(ir.DoubleType(), 16)
        sums = []
        for i in (0, 1):
            rows, live, vt, _ = _group_load(context, builder, signature.args[i], args[i], row)
            sums.append(_reduce(builder, [builder.fpext(v, dt) for v in _fill(builder, rows, live, vt, 0.0)],
                                builder.fadd))
        rows, live, vt, _ = _group_load(context, builder, signature.args[2], args[2], row)
        zero = ir.Constant(vt, [0] * 16)
        worst = _reduce(builder, [builder.select(live, v, zero) for v in rows],
                        lambda a, b: builder.select(builder.icmp_unsigned(">", a, b), a, b))
        bad = builder.icmp_unsigned(">", worst, ir.Constant(vt, [int(_BITS_MAX)] * 16))
        sums.append(builder.uitofp(bad, dt))
        _store_rows(context, builder, signature.args[4], args[4], sums)
        return context.get_dummy_value()
    return types.void(g, sp, ub, row, out), codegen


# Our weighted least-squares fit of log1p(f)/f for f = y - 1, y in [sqrt(1/2), sqrt(2)): |error of log| < 1.1e-5.
_P1, _P2, _P3, _P4, _P5 = (np.float32(c) for c in (
    0.9999188780784607, -0.49923354387283325, 0.3373451232910156, -0.2734990119934082, 0.17513063549995422))
_LN2_F32 = np.float32(math.log(2.0))
_SQRT_HALF_BITS = np.int32(0x3F3504F3)                              # float32 bits of sqrt(1/2)
_BITS_MAX = np.uint32(np.float32(_S_CHECK).view(np.uint32))         # largest accepted bald entry, as bits
#: ``|_flog(x) - log(x)| <= _LOG_ERR + 2u |log x|`` for float32 x in [2**-126, 1.001] (tested); below 2**-126,
#: ``x * _flog(x)`` is within 1e-35 of ``x log x``.
_LOG_ERR = 1.5e-5


@nb.njit(inline="always", **_BOUND)
def _flog(x):
    """Branch-free float32 natural log for x > 0, vectorisable (8 lanes): x = 2**k y with y in [sqrt(1/2),
    sqrt(2)), log y by a degree-5 polynomial in y - 1. x == 0 gives about -88 (so x * _flog(x) == 0)."""
    u = np.int32(_f32_to_u32(x))
    k = np.int32(np.int32(u - _SQRT_HALF_BITS) >> np.int32(23))
    f = _i32_to_f32(np.int32(u - np.int32(k << np.int32(23)))) - np.float32(1.0)
    p = _P5 * f + _P4
    p = p * f + _P3
    p = p * f + _P2
    p = p * f + _P1
    return np.float32(k) * _LN2_F32 + p * f


@nb.njit(**_BOUND)
def _flog_array(x, out):
    """``_flog`` over an array (for the tests)."""
    for i in range(x.size):
        out[i] = _flog(x[i])


# ------------------------------------------------------------------------------------------ reference replicas
@nb.njit(inline="always", **_EXACT)
def _plogp(x):
    """``x * log(max(x, tiny))`` in float64, NaN-propagating like ``np.maximum``."""
    return x * math.log(_TINY if x < _TINY else x)


@nb.njit(inline="always", **_EXACT)
def _pairwise_block(a, lo, n):
    """numpy's pairwise sum of ``a[lo:lo+n]`` for n <= 128: 8 accumulators, then the rest in order."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@nb.njit(**_EXACT)
def _pairwise(a, lo, n):
    """numpy's pairwise sum of ``a[lo:lo+n]`` (same order, same rounding). numpy recurses on halves (a multiple of
    8 on the left) above 128 items; this walks the same tree with an explicit stack (numba's cache cannot load
    recursive functions)."""
    if n <= 128:
        return _pairwise_block(a, lo, n)
    task_lo = np.empty(256, np.int64)
    task_n = np.empty(256, np.int64)         # n < 0: add the top two values
    values = np.empty(256)
    tasks, depth = 1, 0
    task_lo[0], task_n[0] = lo, n
    while tasks:
        tasks -= 1
        at, size = task_lo[tasks], task_n[tasks]
        if size < 0:
            depth -= 1
            values[depth - 1] += values[depth]
        elif size <= 128:
            values[depth] = _pairwise_block(a, at, size)
            depth += 1
        else:
            half = size // 2
            half -= half % 8
            task_lo[tasks], task_n[tasks] = 0, -1
            task_lo[tasks + 1], task_n[tasks + 1] = at + half, size - half
            task_lo[tasks + 2], task_n[tasks + 2] = at, half
            tasks += 3
    return values[0]


@nb.njit(inline="always", **_EXACT)
def _entropy_of(terms):
    """``-sum(terms)`` as numpy's ``np.sum(..., axis=-1)`` of a row-major array computes it (inlined: it runs once
    per row or pass of every exactly scored item)."""
    n = terms.size
    return -(0.0 + (_pairwise_block(terms, 0, n) if n <= 128 else _pairwise(terms, 0, n)))


@nb.njit(**_EXACT)
def _lc_row_slow(row):
    """``1 - max`` of a float64 row with numpy's NaN propagation (the fast kernel sends rows whose sum is NaN)."""
    m = row[0]
    for c in range(1, row.size):
        v = row[c]
        if v != v or v > m:
            m = v
        if m != m:
            break
    return 1.0 - m


@nb.njit(**_EXACT)
def _margin_row_slow(row):
    """``-(p1 - p2)`` of a float64 row, where np.partition sorts NaN last: any NaN in the row gives NaN."""
    m1 = row[0]
    m2 = -np.inf
    for c in range(1, row.size):
        v = row[c]
        if v != v or m1 != m1:
            return np.nan
        m2 = max(m2, min(m1, v))
        m1 = max(m1, v)
    return -(m1 - m2)


@nb.njit(**_EXACT)
def _bald_item(x, st0, n_pass, n_class, b, terms, mean):
    """Reference bald of item ``b`` from the flat view ``x`` (pass t, item b, class c at ``t*st0 + b*C + c``):
    sequential mean over passes, pairwise entropies over classes, sequential mean of the pass entropies."""
    base = b * n_class
    for c in range(n_class):
        mean[c] = 0.0
    for t in range(n_pass):
        for c in range(n_class):
            mean[c] += np.float64(x[t * st0 + base + c])
    for c in range(n_class):
        terms[c] = _plogp(mean[c] / n_pass)
    h_mean = _entropy_of(terms)
    h_sum = 0.0
    for t in range(n_pass):
        for c in range(n_class):
            terms[c] = _plogp(np.float64(x[t * st0 + base + c]))
        h_sum += _entropy_of(terms)
    mi = h_mean - h_sum / n_pass
    if mi != mi:
        return mi
    return mi if mi > 0.0 else 0.0


# ------------------------------------------------------------------------------------------ the heaps
# A kernel calls a heap function only for a score that reaches the threshold: a call that passes arrays costs
# reference counting, so the heap code is one leaf function per heap and the kernels keep the threshold in a local.
@nb.njit(inline="always", **_EXACT)
def _worse(s1, p1, s2, p2):
    """(s1, p1) ranks below (s2, p2): a lower score, or the same score at a later position (no NaN here)."""
    return (s1 < s2) | ((s1 == s2) & (p1 > p2))


@nb.njit(**_EXACT)
def _offer(hs, hp, st, s, p):
    """Offer a non-NaN (score, position) to the min-heap ``hs``/``hp`` (size ``st[0]`` <= k): the worst kept pair
    sits at the root. True if it went in."""
    n = st[0]
    if n < hs.size:                           # not full: append and sift up
        i = n
        while i > 0:
            parent = (i - 1) >> 1
            if not _worse(s, p, hs[parent], hp[parent]):
                break
            hs[i] = hs[parent]
            hp[i] = hp[parent]
            i = parent
        st[0] = n + 1
    elif _worse(hs[0], hp[0], s, p):          # better than the root: replace it and sift down
        i = 0
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n:
                child += np.int64(_worse(hs[child + 1], hp[child + 1], hs[child], hp[child]))
            if not _worse(hs[child], hp[child], s, p):
                break
            hs[i] = hs[child]
            hp[i] = hp[child]
            i = child
    else:
        return False
    hs[i] = s
    hp[i] = p
    st[3] += 1
    return True


@nb.njit(**_EXACT)
def _offer_nan(npos, st, p):
    """Keep the k lowest positions of NaN scores: a max-heap of positions (size ``st[1]``)."""
    n = st[1]
    if n < npos.size:
        i = n
        while i > 0 and npos[(i - 1) >> 1] < p:
            npos[i] = npos[(i - 1) >> 1]
            i = (i - 1) >> 1
        st[1] = n + 1
    elif p < npos[0]:
        i = 0
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and npos[child + 1] > npos[child]:
                child += 1
            if npos[child] <= p:
                break
            npos[i] = npos[child]
            i = child
    else:
        return
    npos[i] = p


@nb.njit(**_EXACT)
def _push_scores(scores, start, hs, hp, npos, st):
    k = hs.size
    thr = hs[0] if st[0] == k else -np.inf
    for i in range(scores.size):
        s = np.float64(scores[i])
        if s >= thr:
            if _offer(hs, hp, st, s, start + i):
                thr = hs[0] if st[0] == k else -np.inf
        elif s != s:
            _offer_nan(npos, st, start + i)


# ------------------------------------------------------------------------------------------ probs kernels
@nb.njit(inline="always", **_EXACT)
def _enter(score, pos, thr, hs, hp, npos, st):
    """Offer an exact score that may enter (NaN to the NaN heap); returns the threshold after it."""
    if score != score:
        _offer_nan(npos, st, pos)
    elif score >= thr and _offer(hs, hp, st, score, pos):
        return hs[0] if st[0] == hs.size else -np.inf
    return thr


# The per-row code is inlined (``inline="always"``: no call, so no refcount pair per row).
@nb.njit(inline="always", **_EXACT)
def _lc_row(p, b, start, thr, hs, hp, npos, st):
    """Row ``b``'s exact least confidence, offered to the heap when it reaches ``thr``; returns the new thr."""
    n_class = p.shape[1]
    m0 = p[b, 0]                              # max and sum (a NaN detector), two interleaved accumulators
    m1 = m0
    s0 = m0
    s1 = m0 - m0
    c = 1
    while c + 1 < n_class:
        v = p[b, c]
        w = p[b, c + 1]
        m0 = max(m0, v)
        m1 = max(m1, w)
        s0 += v
        s1 += w
        c += 2
    if c < n_class:
        v = p[b, c]
        m0 = max(m0, v)
        s0 += v
    s0 += s1
    score = 1.0 - np.float64(max(m0, m1))
    if s0 != s0:                              # a NaN somewhere (or inf - inf): numpy's semantics, slowly
        score = _lc_row_slow(p[b].astype(np.float64))
    elif score < thr:
        return thr
    return _enter(score, start + b, thr, hs, hp, npos, st)


@nb.njit(inline="always", **_EXACT)
def _margin_row(p, b, start, thr, hs, hp, npos, st):
    """Row ``b``'s exact margin score, offered to the heap when it reaches ``thr``; returns the new thr."""
    n_class = p.shape[1]
    a1 = p[b, 0]                              # max, runner-up (a tie counts twice) and sum (a NaN detector)
    a2 = -np.inf
    s = a1
    for c in range(1, n_class):
        v = p[b, c]
        a2 = max(a2, min(a1, v))
        a1 = max(a1, v)
        s += v
    score = -(np.float64(a1) - np.float64(a2))
    if s != s:
        score = _margin_row_slow(p[b].astype(np.float64))
    elif score < thr:
        return thr
    return _enter(score, start + b, thr, hs, hp, npos, st)


@nb.njit(inline="always", **_EXACT)
def _groups_end(p):
    """Rows [0, end) are handled in whole SIMD groups (0 when C exceeds a group's lanes); the rest row by row."""
    n_row, n_class = p.shape
    g = _GROUP_BYTES // p.itemsize
    if n_class > g or n_row < g:
        return 0
    end = (n_row // g) * g
    while end > 0 and (end - 1) * n_class + g > n_row * n_class:
        end -= g
    return end


@nb.njit(**_EXACT)
def _lc_margin_push(margin, p, start, hs, hp, npos, st):
    """Least confidence (``margin`` False) or margin: whole SIMD groups through their filter, the rows that pass
    and the last rows through the exact scalar code."""
    n_row = p.shape[0]
    g = _GROUP_BYTES // p.itemsize
    thr = hs[0] if st[0] == hs.size else -np.inf
    end = _groups_end(p)
    for b0 in range(0, end, g):
        keep = _group_margin(p, b0, thr) if margin else _group_lc(p, b0, thr)   # the rows that may enter
        while keep:
            j = _lowest_bit(keep)
            keep &= keep - 1
            if margin:
                thr = _margin_row(p, b0 + j, start, thr, hs, hp, npos, st)
            else:
                thr = _lc_row(p, b0 + j, start, thr, hs, hp, npos, st)
    for b in range(end, n_row):
        if margin:
            thr = _margin_row(p, b, start, thr, hs, hp, npos, st)
        else:
            thr = _lc_row(p, b, start, thr, hs, hp, npos, st)
    st[2] += n_row


@nb.njit(**_EXACT)
def _max_bound(m, s_bound, n_class):
    """The largest entropy of a row with maximum ``m``, entries >= 0 and sum <= ``s_bound``: the rest spread
    evenly, ``f(m) + (C-1) f((s_bound - m) / (C-1))`` with ``f(x) = -x log(max(x, tiny))`` (Jensen: f is concave;
    the rest term grows with the rest while it is below (C-1)/e, true for C >= 4). Decreases for m >= s_bound/C."""
    rest = n_class - 1
    return -_plogp(m) - rest * _plogp((s_bound - m) / rest)


@nb.njit(**_EXACT)
def _max_cut(thr, s_bound, slack, n_class):
    """The cut ``m*`` with ``_max_bound(m*) < thr - slack``: a row (entries >= 0, sum <= s_bound) whose maximum
    exceeds it has entropy below ``thr``. Bisection; +inf when there is no such cut (or C < 4)."""
    target = thr - slack
    if n_class < 4 or not target > -np.inf:
        return np.inf
    lo, hi = s_bound / n_class, s_bound
    if _max_bound(hi, s_bound, n_class) >= target:
        return np.inf
    if _max_bound(lo, s_bound, n_class) < target:
        return lo
    for _ in range(60):                       # invariant: bound(lo) >= target > bound(hi)
        mid = 0.5 * (lo + hi)
        if _max_bound(mid, s_bound, n_class) < target:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12:
            break
    return hi


@nb.njit(inline="always", **_BOUND)
def _entropy_up(m, s, q, r, thr, cut, n_class, params):
    """The smaller of the quadratic and cubic bounds of a row (entries >= 0, sum in [_S_MIN, _S_CHECK]) from its
    max ``m`` and power sums ``S, Q, R``; -inf when a bound, or the max bound (``m > cut``), is below ``thr``."""
    log_c, inv_c, slack_quad, slack_cubic, _, _ = params
    tangent = log_c + (log_c - 1.0) * (s - 1.0)
    quad = tangent + slack_quad                     # the bound is quad - spread / 2m
    spread = q - s * s * inv_c                      # sum (p - S/C)^2
    if spread > 2.0 * m * (quad - thr) or m > cut:   # the quadratic bound, or the max bound, is below thr
        return -np.inf
    cubic = tangent + slack_cubic + s * (5.0 / 6.0)  # the bound is cubic - CQ/S + C^2 R / 6S^2
    if 6.0 * s * s * (cubic - thr) + n_class * (n_class * r - 6.0 * q * s) < 0.0:
        return -np.inf
    return min(quad - spread / (2.0 * m), cubic + (n_class * n_class * r / (6.0 * s) - n_class * q) / s)


@nb.njit(**_BOUND)
def _entropy_bounds(p, bits, thr, cut, params, cand, cand_up):
    """Pass 1 over rows: per row the max and the power sums S, Q, R of p, p^2, p^3 (in the input's precision) and
    whether an entry has its sign bit set. Rows whose smaller bound reaches ``thr`` go to ``cand`` with that bound
    (+inf when the bounds do not apply); rows whose maximum exceeds ``cut`` (see :func:`_max_cut`) are out at once.
    Whole SIMD groups of rows first (:func:`_group_entropy` computes the statistics and rules out the rows over
    ``cut``), then the last rows one by one (two interleaved accumulators)."""
    n_row, n_class = p.shape
    n_cand = 0
    g = _GROUP_BYTES // p.itemsize
    stats = np.empty((4, g), p.dtype)
    end = _groups_end(p)
    for b0 in range(0, end, g):
        flags = _group_entropy(p, b0, thr, cut, params, stats)
        todo = flags & 0xFFFFFFFF
        while todo:
            j = _lowest_bit(todo)
            todo &= todo - 1
            if (flags >> (32 + j)) & 1:
                cand[n_cand] = b0 + j
                cand_up[n_cand] = np.inf
                n_cand += 1
                continue
            up = _entropy_up(np.float64(stats[0, j]), np.float64(stats[1, j]), np.float64(stats[2, j]),
                             np.float64(stats[3, j]), thr, cut, n_class, params)
            if up > -np.inf:
                cand[n_cand] = b0 + j
                cand_up[n_cand] = up
                n_cand += 1
    for b in range(end, n_row):
        m0 = p[b, 0]
        m1 = m0
        s0 = m0
        s1 = m0 - m0
        q0 = m0 * m0
        q1 = s1
        r0 = q0 * m0
        r1 = s1
        o = bits[b, 0]
        c = 1
        while c + 1 < n_class:
            v = p[b, c]
            w = p[b, c + 1]
            vv = v * v
            ww = w * w
            m0 = max(m0, v)
            m1 = max(m1, w)
            s0 += v
            s1 += w
            q0 += vv
            q1 += ww
            r0 += vv * v
            r1 += ww * w
            o |= bits[b, c] | bits[b, c + 1]
            c += 2
        if c < n_class:
            v = p[b, c]
            vv = v * v
            m0 = max(m0, v)
            s0 += v
            q0 += vv
            r0 += vv * v
            o |= bits[b, c]
        s = np.float64(s0 + s1)
        if not (o >= 0 and _S_MIN <= s <= _S_CHECK):
            up = np.inf
        else:
            up = _entropy_up(np.float64(max(m0, m1)), s, np.float64(q0 + q1), np.float64(r0 + r1), thr, cut,
                             n_class, params)
        if up > -np.inf:
            cand[n_cand] = b
            cand_up[n_cand] = up
            n_cand += 1
    return n_cand


@nb.njit(**_BOUND)
def _flog_terms(x, t, n):
    """``t[i] = x[i] _flog(x[i])`` over float32 arrays. Vectorised."""
    for i in range(n):
        t[i] = x[i] * _flog(x[i])


@nb.njit(**_BOUND)
def _entropy_refine(p, cand, cand_up, n_cand, thr, slack):
    """Tighten the finite candidate bounds that reach ``thr`` with a float32 estimate of the entropy: rows gathered
    in tiles, ``x _flog(x)`` vectorised. Per term the estimate is off by at most ``x _LOG_ERR + 1.2u`` (plus
    ``1.4u`` for float64 input rounded to float32; see :func:`_bald_bounds`), so the row's by
    ``_LOG_ERR S + 2.6 C u``, doubled, plus ``slack`` for the reference's rounding."""
    n_class = p.shape[1]
    tile = 4096
    x = np.empty(tile * n_class, np.float32)
    t = np.empty(tile * n_class, np.float32)
    rows = np.empty(tile, np.int64)
    per_row = 2.0 * 2.6 * n_class * _U32 + slack
    j = 0
    while j < n_cand:
        n = 0
        while j < n_cand and n < tile:
            if cand[j] >= 0 and thr <= cand_up[j] < np.inf:
                for c in range(n_class):
                    x[n * n_class + c] = np.float32(p[cand[j], c])
                rows[n] = j
                n += 1
            j += 1
        _flog_terms(x, t, n * n_class)
        for i in range(n):
            est = 0.0
            mass = 0.0
            for c in range(i * n_class, (i + 1) * n_class):
                est -= t[c]
                mass += x[c]
            cand_up[rows[i]] = min(cand_up[rows[i]], est + 2.0 * _LOG_ERR * mass + per_row)


@nb.njit(**_EXACT)
def _early(cand_up, n_cand, k):
    """The k-th largest candidate bound (-inf if there are no more than k candidates): the candidates at or above
    it are evaluated first. A scratch heap of k bounds (np.partition would add seconds of compilation)."""
    if n_cand <= k:
        return -np.inf
    hs = np.empty(k)
    hp = np.empty(k, np.int64)
    st = np.zeros(4, np.int64)
    for j in range(n_cand):
        if st[0] < k or cand_up[j] > hs[0]:
            _offer(hs, hp, st, cand_up[j], j)
    return hs[0]


@nb.njit(**_EXACT)
def _entropy_exact(p, start, cand, cand_up, n_cand, floor, terms, hs, hp, npos, st):
    """Exact entropies of the candidates whose bound is >= ``floor`` and reaches the live threshold, in position
    order; an evaluated candidate is marked done (row -1)."""
    k = hs.size
    thr = hs[0] if st[0] == k else -np.inf
    for j in range(n_cand):
        b = cand[j]
        if b < 0 or cand_up[j] < floor or cand_up[j] < thr:
            continue
        cand[j] = -1
        st[2] += 1
        for c in range(p.shape[1]):
            terms[c] = _plogp(np.float64(p[b, c]))
        thr = _enter(_entropy_of(terms), start + b, thr, hs, hp, npos, st)


@nb.njit(**_EXACT)
def _entropy_push(p, bits, start, hs, hp, npos, st, params):
    """Per chunk of rows: bounds without logarithms; the exact entropies of the k candidates with the largest
    bounds (they lift the threshold); float32 estimates for the candidates that still reach it; the exact entropies
    of those whose estimate does."""
    n_row, n_class = p.shape
    k = hs.size
    chunk = min(n_row, _CHUNK)
    cand = np.empty(chunk, np.int64)
    cand_up = np.empty(chunk)
    terms = np.empty(n_class)
    lo = 0
    while lo < n_row:
        # until the heap is full every row is a candidate: a short first chunk lifts the threshold sooner
        size = chunk if st[0] == k else min(chunk, max(4096, 4 * k))
        rows, bits_rows = p[lo:lo + size], bits[lo:lo + size]
        thr = hs[0] if st[0] == k else -np.inf
        cut = _max_cut(thr, params[4], params[5], n_class)
        n_cand = _entropy_bounds(rows, bits_rows, thr, cut, params, cand, cand_up)
        first = _early(cand_up, n_cand, k)
        if first > -np.inf:
            _entropy_exact(rows, start + lo, cand, cand_up, n_cand, first, terms, hs, hp, npos, st)
        thr = hs[0] if st[0] == k else -np.inf
        _entropy_refine(rows, cand, cand_up, n_cand, thr, params[5])
        _entropy_exact(rows, start + lo, cand, cand_up, n_cand, -np.inf, terms, hs, hp, npos, st)
        lo += size


@nb.njit(**_EXACT)
def _measure_rows(kind, p, out):
    """Reference scores of every row: 0 least confidence, 1 margin, 2 entropy."""
    row = np.empty(p.shape[1])
    terms = np.empty(p.shape[1])
    for b in range(p.shape[0]):
        for c in range(p.shape[1]):
            row[c] = p[b, c]
        if kind == 2:
            for c in range(p.shape[1]):
                terms[c] = _plogp(row[c])
            out[b] = _entropy_of(terms)
            continue
        a1 = row[0]                           # max, runner-up and sum (a NaN detector), branch-free
        a2 = -np.inf
        s = a1
        for c in range(1, p.shape[1]):
            v = row[c]
            a2 = max(a2, min(a1, v))
            a1 = max(a1, v)
            s += v
        if s != s:
            out[b] = _lc_row_slow(row) if kind == 0 else _margin_row_slow(row)
        else:
            out[b] = 1.0 - a1 if kind == 0 else -(a1 - a2)


# ------------------------------------------------------------------------------------------ bald kernels
@nb.njit(**_BOUND)
def _bald_accumulate(xa, xb, sp, sl, ub):
    """Two pass slabs ``xa``, ``xb`` (float32, equal length) into the per (item, class) float32 sums of p and of
    p log p, and the max of p's bits (> _BITS_MAX: negative, NaN or above 1.001). Vectorised."""
    for i in range(xa.size):
        v = xa[i]
        w = xb[i]
        sp[i] += v + w
        sl[i] += v * _flog(v) + w * _flog(w)
        a = _f32_to_u32(v)
        e = _f32_to_u32(w)
        a = a if a > e else e
        ub[i] = a if a > ub[i] else ub[i]


@nb.njit(**_BOUND)
def _bald_terms(sp, sl, n, inv_t, g):
    """Per (item, class): mean_t p log p - mu log mu, with mu = mean_t p. Vectorised."""
    for i in range(n):
        mu = sp[i] * inv_t
        g[i] = sl[i] * inv_t - mu * _flog(mu)


@nb.njit(inline="always", **_BOUND)
def _bald_up(est, mass, bad, n_pass, rounding):
    """An item's bound from its estimate ``est`` and mass (see :func:`_bald_bounds`); +inf for a ``bad`` item."""
    if bad:
        return np.inf
    return max(est + 2.0 * (2.01 * _LOG_ERR * mass / n_pass + rounding) + 1e-9, 0.0)


@nb.njit(**_BOUND)
def _bald_bounds(x, st0, n_pass, n_item, n_class, up):
    """Per item an upper bound ``up`` on the reference bald of float32 values ``x`` (laid out as in
    :func:`_slabs`; +inf when an entry is outside [0, 1.001] or NaN).

    Error of the float32 estimate ``sum_c g_c`` against the exact ``sum_c (mean_t phi(p) - phi(mu))``,
    ``phi(x) = x log x``, ``u = 2**-24``, per class: ``x _flog(x)`` is off by ``<= x _LOG_ERR + 1.2u`` (its
    ``2u|log x|`` part times ``x`` is ``<= 0.74u``, plus the product's rounding) and the float32 sum over T passes
    by ``<= 0.38 T u``, mu by a factor ``1 +- (T+1)u`` (hence ``phi(mu)`` by ``<= 1.4 (T+1) u``), ``mu _flog(mu)`` by
    ``mu _LOG_ERR + 1.2u``, the subtraction by ``0.75u``, a float64 input's rounding to float32 by ``2.8u``: in all
    ``<= 2.01 _LOG_ERR M + C u (1.8 T + 8)`` with ``M = sum_c mu_c``; doubled, plus 1e-9 for the reference.
    The per-item sums over classes (in float64) run on SIMD groups of 16 items for C <= 16 (:func:`_group_bald`)."""
    tile = min(_BALD_TILE, n_item) * n_class
    sp = np.empty(tile, np.float32)
    sl = np.empty(tile, np.float32)
    g = np.empty(tile, np.float32)
    ub = np.empty(tile, np.uint32)
    zeros = np.zeros(tile, np.float32)
    sums = np.empty((3, 16))
    inv_t = np.float32(1.0 / n_pass)
    rounding = n_class * _U32 * (1.8 * n_pass + 8.0)
    for b0 in range(0, n_item, _BALD_TILE):
        n = min(_BALD_TILE, n_item - b0) * n_class
        sp[:n] = 0.0
        sl[:n] = 0.0
        ub[:n] = 0
        base = b0 * n_class
        for t in range(0, n_pass, 2):
            lo = t * st0 + base
            if t + 1 < n_pass:
                _bald_accumulate(x[lo:lo + n], x[lo + st0:lo + st0 + n], sp, sl, ub)
            else:                             # an odd pass out: paired with zeros (0 log 0 = 0)
                _bald_accumulate(x[lo:lo + n], zeros[:n], sp, sl, ub)
        _bald_terms(sp, sl, n, inv_t, g)
        n_tile = n // n_class
        g2, sp2 = g[:n].reshape((n_tile, n_class)), sp[:n].reshape((n_tile, n_class))
        ub2 = ub[:n].reshape((n_tile, n_class))
        end = _groups_end(g2)                 # whole groups of 16 items in SIMD (C <= 16), the rest one by one
        for i0 in range(0, end, 16):
            _group_bald(g2, sp2, ub2, i0, sums)
            for r in range(16):
                up[b0 + i0 + r] = _bald_up(sums[0, r], sums[1, r], sums[2, r] > 0.0, n_pass, rounding)
        for i in range(end, n_tile):
            est = 0.0
            mass = 0.0
            worst = np.uint32(0)
            for j in range(i * n_class, (i + 1) * n_class):
                est += g[j]
                mass += sp[j]
                worst = max(worst, ub[j])
            up[b0 + i] = _bald_up(est, mass, worst > _BITS_MAX, n_pass, rounding)


@nb.njit(**_EXACT)
def _bald_push(x, st0, n_pass, n_item, n_class, start, up, hs, hp, npos, st):
    """The exact score of the items whose bound ``up`` reaches the threshold: the k with the largest bounds first,
    then the others that still reach the live threshold, in position order."""
    k = hs.size
    thr = hs[0] if st[0] == k else -np.inf
    cand = np.empty(n_item, np.int64)
    cand_up = np.empty(n_item)
    n_cand = 0
    for b in range(n_item):
        if up[b] >= thr:
            cand[n_cand] = b
            cand_up[n_cand] = up[b]
            n_cand += 1
    first = _early(cand_up, n_cand, k)
    terms = np.empty(n_class)
    mean = np.empty(n_class)
    for early in (True, False):
        for j in range(n_cand):
            if (cand_up[j] >= first) != early or cand_up[j] < thr:
                continue
            b = cand[j]
            st[2] += 1
            thr = _enter(_bald_item(x, st0, n_pass, n_class, b, terms, mean), start + b, thr, hs, hp, npos, st)


@nb.njit(**_EXACT)
def _bald_measure(x, st0, n_pass, n_item, n_class, out):
    terms = np.empty(n_class)
    mean = np.empty(n_class)
    for b in range(n_item):
        out[b] = _bald_item(x, st0, n_pass, n_class, b, terms, mean)


# ------------------------------------------------------------------------------------------ python side
def _float_array(data: np.ndarray) -> np.ndarray:
    a = np.asarray(data)
    if a.dtype != np.float32 and a.dtype != np.float64:
        a = a.astype(np.float64)
    return a


def _rows(kind: str, data: np.ndarray) -> np.ndarray:
    """A row-major (B, C) float32/float64 block, checked like the reference."""
    p = _float_array(data)
    if p.ndim != 2:
        raise ValueError(f"{kind} needs probabilities of shape (B, C), got {p.shape}")
    if kind == "margin" and p.shape[1] < 2:
        raise ValueError(f"margin needs at least 2 classes, got probabilities of shape {p.shape}")
    if p.shape[1] == 0 and p.shape[0] > 0:
        raise ValueError(f"{kind} needs at least 1 class, got probabilities of shape {p.shape}")
    return np.ascontiguousarray(p)


def _slabs(data: np.ndarray) -> tuple[np.ndarray, int, int, int, int]:
    """``(flat, st0, T, B, C)``: a 1-d view where pass t, item b, class c sit at ``t*st0 + b*C + c``. Only the
    block is copied (to row-major), and only when its (B, C) slabs are not row-major."""
    x = _float_array(data)
    if x.ndim != 3:
        raise ValueError(f"bald needs MC probabilities of shape (T, B, C), got {x.shape}")
    n_pass, n_item, n_class = x.shape
    if n_pass == 0 or (n_class == 0 and n_item > 0):
        raise ValueError(f"bald needs at least one pass and one class, got {x.shape}")
    size = x.itemsize
    slab_ok = (x.strides[2] == size or n_class == 1) and (x.strides[1] == n_class * size or n_item == 1)
    pass_ok = n_pass == 1 or (x.strides[0] > 0 and x.strides[0] % size == 0)
    if not (slab_ok and pass_ok) or x.size == 0:
        x = np.ascontiguousarray(x)
    st0 = x.strides[0] // size if n_pass > 1 else n_item * n_class
    span = (n_pass - 1) * st0 + n_item * n_class
    flat = np.lib.stride_tricks.as_strided(x, shape=(span,), strides=(size,), writeable=False)
    return flat, st0, n_pass, n_item, n_class


def _bald_upper(data: np.ndarray) -> np.ndarray:
    """Upper bounds on the reference bald of each item of a (T, B, C) block, from its float32 values (a float64
    block is rounded to a float32 copy; the bounds allow for that rounding)."""
    x = np.asarray(data)
    if x.dtype != np.float32:
        x = np.asarray(x, dtype=np.float32)
    flat, st0, n_pass, n_item, n_class = _slabs(x)
    up = np.empty(n_item)
    if n_item:
        _bald_bounds(flat, st0, n_pass, n_item, n_class, up)
    return up


def _entropy_params(n_class: int) -> tuple[float, float, float, float, float, float]:
    """(log C, 1/C, slack of the quadratic bound, slack of the cubic bound, sum bound, slack of the max bound).

    A slack covers the float64 rounding of the reference entropy (at least 1e-9) and the rounding of its bound for
    rows of entries in [0, 1.001] summed in float32 (unit roundoff u; float64 input is only more accurate): S, Q,
    R are off by at most C u S, (C+1) u Q, (C+2) u R, with Q <= m S and R <= m^2 S, times the bound's derivatives
    in S, Q, R (for the quadratic bound at most max(log C, 1), 1/2m; for the cubic one log C + 1 + C + C^2/3, C/S,
    C^2/6S^2); doubled. The max bound needs no more: its m is exact, and it uses the sum bound, the largest true
    sum of a row whose float32 sum is <= 1.001."""
    log_c = math.log(n_class)
    reference = 1e-9 + 8.0 * (n_class + 4) * _EPS64 * (log_c + 1.0)
    quad = 2.0 * (n_class + 1) * _U32 * (max(log_c, 1.0) * _S_CHECK + 0.51) + reference
    size = n_class * n_class / 2.0 + 2.0 * n_class + log_c + 1.0
    cubic = 2.0 * (n_class + 2) * _U32 * size * 1.01 + reference
    s_bound = _S_CHECK * (1.0 + 2.0 * (n_class + 1) * _U32)
    return log_c, 1.0 / n_class, quad, cubic, s_bound, reference


def measure(kind: str, data: np.ndarray) -> np.ndarray:
    """The scores of one block, float64 1-d, equal (to float rounding) to the float64 reference measure.

    ``data``: (B, C) probabilities for least_confidence/margin/entropy; (T, B, C) for bald. float32 or float64,
    any strides. Uses the exact row kernels (bit-identical to the reference for row-major input).
    """
    if kind == "bald":
        flat, st0, n_pass, n_item, n_class = _slabs(data)
        out = np.empty(n_item)
        if n_item:
            _bald_measure(flat, st0, n_pass, n_item, n_class, out)
        return out
    if kind not in KINDS:
        raise ValueError(f"unknown measure {kind!r}; expected one of {KINDS}")
    p = _rows(kind, data)
    out = np.empty(p.shape[0])
    if p.shape[0]:
        _measure_rows(KINDS.index(kind), p, out)
    return out


class TopKAccumulator:
    """Running exact top-k over blocks of scores, O(k) memory, O(n) time.

    Order: higher score first; equal scores: lower position first; NaN last (NaN positions only fill up a result
    that has fewer than ``k`` non-NaN scores). ``exact_rows`` counts the rows whose score a push computed exactly
    (by ``push_measure``; the other rows were pruned by a bound, see the module docstring).
    """

    def __init__(self, k: int):
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self._hs = np.empty(k)                    # min-heap: the worst kept (score, position) at the root
        self._hp = np.empty(k, dtype=np.int64)
        self._np = np.empty(k, dtype=np.int64)    # max-heap of the lowest NaN positions
        self._st = np.zeros(4, dtype=np.int64)    # heap size, NaN heap size, exact rows, insertions
        self._seen = 0

    @property
    def seen(self) -> int:
        """How many scores/rows were pushed in total."""
        return self._seen

    @property
    def exact_rows(self) -> int:
        """Rows whose measure the fused pushes computed exactly (the others provably could not enter)."""
        return int(self._st[2])

    def _heap(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._hs, self._hp, self._np, self._st

    def push(self, scores: np.ndarray, start: int) -> None:
        """scores of positions start .. start+len(scores)-1 (positions are global, increasing across pushes)."""
        s = _float_array(scores).reshape(-1)
        self._seen += s.size
        if s.size and self.k:
            _push_scores(np.ascontiguousarray(s), int(start), *self._heap())

    def push_measure(self, kind: str, data: np.ndarray, start: int) -> None:
        """FUSED: compute measure(kind, data) row by row and push, without materialising the score vector;
        may prune rows that provably cannot enter the current top-k."""
        if kind == "bald":
            flat, st0, n_pass, n_item, n_class = _slabs(data)
            self._seen += n_item
            if n_item and self.k:
                _bald_push(flat, st0, n_pass, n_item, n_class, int(start), _bald_upper(data), *self._heap())
            return
        if kind not in KINDS:
            raise ValueError(f"unknown measure {kind!r}; expected one of {KINDS}")
        p = _rows(kind, data)
        self._seen += p.shape[0]
        if not p.shape[0] or not self.k:
            return
        if kind in ("least_confidence", "margin"):
            _lc_margin_push(kind == "margin", p, int(start), *self._heap())
        else:
            bits = p.view(np.int32 if p.dtype == np.float32 else np.int64)
            _entropy_push(p, bits, int(start), *self._heap(), _entropy_params(p.shape[1]))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions int64, scores float64), best first, length min(k, total pushed)."""
        n, n_nan = int(self._st[0]), int(self._st[1])
        scores, positions = self._hs[:n], self._hp[:n]
        order = np.lexsort((positions, -scores))
        nan_pos = np.sort(self._np[:n_nan])[: self.k - n]
        out_pos = np.concatenate([positions[order], nan_pos]).astype(np.int64)
        out_scores = np.concatenate([scores[order], np.full(nan_pos.size, np.nan)])
        return out_pos, out_scores
