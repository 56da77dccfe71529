"""Row kernels. Every norm is reduced here to a few problems on flat,
C-contiguous buffers:

* rows: R rows of L contiguous elements, statistics per row
  (LayerNorm: R = prod(leading dims), L = prod(normalized_shape);
  GroupNorm: R = N*G, L = (C/G)*HxW; InstanceNorm: GroupNorm with G = C;
  RMSNorm: like LayerNorm, mean of squares only);
* segments: R*C segments of S = HxW contiguous elements that share one
  per-channel affine (GroupNorm, InstanceNorm and BatchNorm outputs);
* columns: BatchNorm's training statistics, per channel over the N segments
  of that channel.

Numerical choices, shared by all kernels:

* Statistics are accumulated in float64 whatever the input dtype, and the
  output is computed in float64 and rounded once: a float32 result is then as
  good as a float64 computation rounded to float32 (float32 arithmetic would
  lose ~1e-3 on data with an offset of 1e4 and std 1e-2).
* Moments are computed per chunk of CHUNK elements with two passes (mean, then
  the sum of squared deviations from it): the chunk sits in L1 for the second
  pass, so x streams from memory once. Chunks are merged with Chan et al.'s
  pairwise update. This never forms E[x^2] - E[x]^2, so large offsets do not
  cancel, and M2 is a sum of non-negative terms (no clamp needed).
* The chunking is fixed by the data layout and chunks are merged in index
  order, serially. The parallel and serial kernels therefore compute the same
  operations in the same order, and results do not depend on the thread count.
* No fastmath: reassociation would let the compiler pick a summation order per
  call site, which breaks the previous point; instead the inner loops carry
  four explicit accumulators that the SLP vectorizer maps onto SIMD lanes.
* float16 and bfloat16 arrive as their uint16 / int16 bit patterns (numba has
  no CPU half type); _load decodes exactly and _store rounds the float64
  result once, to nearest even.
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload, register_jitable

# Elements per moments chunk: 16 KiB of float32, 32 KiB of float64, both
# L1-resident for the second pass. It also sets the granularity at which one
# long row is split across threads.
CHUNK = 4096


# ---------------------------------------------------------------------------
# float16 / bfloat16 bit patterns <-> float64


@register_jitable
def _bits_to_f64(h, mbits, ebias):
    h = np.int64(h) & 0xFFFF
    emask = (1 << (15 - mbits)) - 1
    ef = (h >> mbits) & emask
    m = h & ((1 << mbits) - 1)
    if ef == emask:
        v = np.inf if m == 0 else np.nan
    elif ef == 0:
        v = math.ldexp(float(m), 1 - ebias - mbits)
    else:
        v = math.ldexp(float(m + (1 << mbits)), ef - ebias - mbits)
    return -v if (h >> 15) else v


@register_jitable
def _f64_to_bits(v, mbits, ebias):
    # Rounds a float64 straight to the small format (no float32 step, so no
    # double rounding): scale by a power of two (exact), rint (ties to even).
    emask = (1 << (15 - mbits)) - 1
    if v != v:
        return np.uint16((emask << mbits) | (1 << (mbits - 1)))
    sign = 0x8000 if math.copysign(1.0, v) < 0.0 else 0
    a = abs(v)
    if a == np.inf:
        return np.uint16(sign | (emask << mbits))
    emin = 1 - ebias
    if a < math.ldexp(1.0, emin):
        # subnormal grid; rounding up to 2**mbits gives the smallest normal's
        # encoding, which is correct
        m = np.int64(np.rint(math.ldexp(a, mbits - emin)))
        return np.uint16(sign | m)
    fr, ex = math.frexp(a)
    e = ex - 1
    m = np.int64(np.rint(math.ldexp(a, mbits - e)))
    if m == (1 << (mbits + 1)):
        m = 1 << mbits
        e += 1
    ef = e + ebias
    if ef >= emask:
        return np.uint16(sign | (emask << mbits))
    return np.uint16(sign | (ef << mbits) | (m - (1 << mbits)))


def _load(a, i):
    raise NotImplementedError


def _store(a, i, v):
    raise NotImplementedError


@overload(_load, inline="always")
def _ov_load(a, i):
    if a.dtype == types.uint16:  # float16 bits
        return lambda a, i: _bits_to_f64(a[i], 10, 15)
    if a.dtype == types.int16:  # bfloat16 bits
        return lambda a, i: _bits_to_f64(a[i], 7, 127)
    return lambda a, i: np.float64(a[i])


@overload(_store, inline="always")
def _ov_store(a, i, v):
    if a.dtype == types.uint16:
        def impl(a, i, v):
            a[i] = _f64_to_bits(v, 10, 15)
        return impl
    if a.dtype == types.int16:
        def impl(a, i, v):
            u = np.int32(_f64_to_bits(v, 7, 127))
            a[i] = np.int16(u - ((u >> 15) << 16))  # same bits, signed
        return impl

    def impl(a, i, v):
        a[i] = v
    return impl


# ---------------------------------------------------------------------------
# moments of one chunk, and the merge


# The reductions below are the only code compiled with reassociation
# allowed: it lets LLVM vectorize the sums (2.5x faster than four explicit
# accumulators, which it leaves scalar). The flag is set on these small
# functions only, so the order they sum in is fixed by their own compiled
# code, the same in the serial and the parallel builds, and no other
# expression (e.g. (x - mean) * rstd) may be rearranged into a cancelling
# form. Only 'reassoc': no 'nnan'/'ninf', so NaN and Inf propagate.
_REDUCE = dict(fastmath={"reassoc"}, cache=True, nogil=True)


@njit(**_REDUCE)
def _sum(xs):
    s = 0.0
    for i in range(xs.size):
        s += _load(xs, i)
    return s


@njit(**_REDUCE)
def _sum_sq_dev(xs, m):
    q = 0.0
    for i in range(xs.size):
        d = _load(xs, i) - m
        q += d * d
    return q


@njit(**_REDUCE)
def _sum_sq(xs):
    q = 0.0
    for i in range(xs.size):
        v = _load(xs, i)
        q += v * v
    return q


@register_jitable
def _chunk_moments(x, lo, hi):
    """(mean, M2) of x[lo:hi] in float64: two passes over an L1-resident
    chunk."""
    xs = x[lo:hi]
    mean = _sum(xs) / (hi - lo)
    return mean, _sum_sq_dev(xs, mean)


@register_jitable
def _chunk_sumsq(x, lo, hi):
    return _sum_sq(x[lo:hi])


@register_jitable
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    # Chan, Golub & LeVeque (1979): exact pairwise update of (n, mean, M2).
    n = n_a + n_b
    d = mean_b - mean_a
    f = n_b / n
    return n, mean_a + d * f, m2_a + m2_b + d * d * n_a * f


@register_jitable
def _span_moments(x, lo, hi):
    """(mean, M2) of x[lo:hi], chunked from lo, merged in order."""
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        cm, cq = _chunk_moments(x, c, e)
        n, mean, m2 = _merge(n, mean, m2, float(e - c), cm, cq)
    return mean, m2


@register_jitable
def _span_sumsq(x, lo, hi):
    s = 0.0
    for c in range(lo, hi, CHUNK):
        s += _chunk_sumsq(x, c, min(c + CHUNK, hi))
    return s


# ---------------------------------------------------------------------------
# output passes


@register_jitable
def _apply_elementwise(x, y, lo, j0, n, shift, scale, w, b, mode):
    """y[lo+k] = (x[lo+k] - shift) * scale [* w[j0+k]] [+ b[j0+k]].

    mode bit 1: weight, bit 2: bias. The branches sit outside the loops so
    that each loop stays a plain vectorizable stream; slices make every
    index start at 0 (no negative-index wraparound checks in the loop).
    """
    xs = x[lo:lo + n]
    ys = y[lo:lo + n]
    if mode == 0:
        for k in range(n):
            _store(ys, k, (_load(xs, k) - shift) * scale)
    elif mode == 1:
        ws = w[j0:j0 + n]
        for k in range(n):
            _store(ys, k, (_load(xs, k) - shift) * scale * ws[k])
    elif mode == 2:
        bs = b[j0:j0 + n]
        for k in range(n):
            _store(ys, k, (_load(xs, k) - shift) * scale + bs[k])
    else:
        ws = w[j0:j0 + n]
        bs = b[j0:j0 + n]
        for k in range(n):
            _store(ys, k, (_load(xs, k) - shift) * scale * ws[k] + bs[k])


@register_jitable
def _apply_affine(x, y, lo, n, shift, scale, beta):
    """y = (x - shift) * scale + beta over one segment sharing one channel."""
    xs = x[lo:lo + n]
    ys = y[lo:lo + n]
    for k in range(n):
        _store(ys, k, (_load(xs, k) - shift) * scale + beta)


@register_jitable
def _rstd(m2, n, eps):
    return 1.0 / math.sqrt(m2 / n + eps)


# ---------------------------------------------------------------------------
# kernels. Each is compiled twice (serial and parallel, see _dispatch.py);
# prange is a plain range in the serial build.


def layer_norm_rows(x, y, R, L, w, b, mode, eps, mean, rstd):
    """One task per row: moments, then the output pass while the row is hot."""
    for r in prange(R):
        lo = r * L
        m, m2 = _span_moments(x, lo, lo + L)
        s = _rstd(m2, L, eps)
        mean[r] = m
        rstd[r] = s
        _apply_elementwise(x, y, lo, 0, L, m, s, w, b, mode)


def rms_norm_rows(x, y, R, L, w, mode, eps):
    for r in prange(R):
        lo = r * L
        s = 1.0 / math.sqrt(_span_sumsq(x, lo, lo + L) / L + eps)
        _apply_elementwise(x, y, lo, 0, L, 0.0, s, w, w, mode)


def chunk_moments(x, R, L, K, part):
    """part[r*K + k] = (mean, M2) of chunk k of row r; rows are split into
    K chunks of CHUNK elements, the last one shorter."""
    for t in prange(R * K):
        r = t // K
        k = t - r * K
        lo = r * L + k * CHUNK
        hi = min(lo + CHUNK, r * L + L)
        m, m2 = _chunk_moments(x, lo, hi)
        part[t, 0] = m
        part[t, 1] = m2


def chunk_sumsq(x, R, L, K, part):
    for t in prange(R * K):
        r = t // K
        k = t - r * K
        lo = r * L + k * CHUNK
        hi = min(lo + CHUNK, r * L + L)
        part[t, 0] = _chunk_sumsq(x, lo, hi)


def merge_rows(part, R, L, K, eps, mean, rstd):
    """Merge each row's K chunk moments in order (same order as
    _span_moments, so the split and the per-row kernels agree bit for bit)."""
    for r in range(R):
        n = 0.0
        m = 0.0
        m2 = 0.0
        for k in range(K):
            c = min(CHUNK, L - k * CHUNK)
            n, m, m2 = _merge(n, m, m2, float(c), part[r * K + k, 0],
                              part[r * K + k, 1])
        mean[r] = m
        rstd[r] = _rstd(m2, L, eps)


def merge_rows_sumsq(part, R, L, K, eps, rstd):
    for r in range(R):
        s = 0.0
        for k in range(K):
            s += part[r * K + k, 0]
        rstd[r] = 1.0 / math.sqrt(s / L + eps)


def apply_rows(x, y, R, L, K, mean, rstd, w, b, mode):
    """Output pass, one task per chunk of a row (for rows split across
    threads)."""
    for t in prange(R * K):
        r = t // K
        k = t - r * K
        j0 = k * CHUNK
        n = min(CHUNK, L - j0)
        _apply_elementwise(x, y, r * L + j0, j0, n, mean[r], rstd[r], w, b,
                           mode)


def group_norm_rows(x, y, R, G, Cg, S, w, b, eps, mean, rstd):
    """Rows of Cg channels x S positions; w, b: float64 (C,) (ones/zeros
    when absent: per-channel affine costs one fused multiply-add either
    way)."""
    L = Cg * S
    for r in prange(R):
        lo = r * L
        m, m2 = _span_moments(x, lo, lo + L)
        s = _rstd(m2, L, eps)
        mean[r] = m
        rstd[r] = s
        c0 = (r % G) * Cg
        for ci in range(Cg):
            _apply_affine(x, y, lo + ci * S, S, m, s * w[c0 + ci], b[c0 + ci])


def apply_segments(x, y, NS, P, S, K, shift, scale, beta):
    """y = (x - shift[p]) * scale[p] + beta[p] over NS segments of S
    elements, segment i using parameters p = i % P (P = C for BatchNorm,
    P = N*C for GroupNorm); one task per chunk of a segment."""
    for t in prange(NS * K):
        i = t // K
        k = t - i * K
        c = i % P
        j0 = k * CHUNK
        n = min(CHUNK, S - j0)
        _apply_affine(x, y, i * S + j0, n, shift[c], scale[c], beta[c])


def merge_columns(part, N, C, S, K, mean, var):
    """BatchNorm training statistics: channel c merges the K chunks of each
    of its N segments, in (n, k) order. Writes the mean and the biased
    variance."""
    for c in prange(C):
        n = 0.0
        m = 0.0
        m2 = 0.0
        for i in range(N):
            base = (i * C + c) * K
            for k in range(K):
                cnt = min(CHUNK, S - k * CHUNK)
                n, m, m2 = _merge(n, m, m2, float(cnt), part[base + k, 0],
                                  part[base + k, 1])
        mean[c] = m
        var[c] = m2 / n


def affine(x, y, a, b):
    """y = x * a + b in x's dtype (the speed-of-light reference used by the
    benchmarks: one read of x and one write of y)."""
    for i in prange(x.size):
        y[i] = x[i] * a + b


KERNELS = {
    f.__name__: f
    for f in (
        layer_norm_rows, rms_norm_rows, chunk_moments, chunk_sumsq,
        merge_rows, merge_rows_sumsq, apply_rows, group_norm_rows,
        apply_segments, merge_columns, affine,
    )
}
