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
* Moments are computed per chunk of CHUNK elements over shifted data (see
  "Shifted data" below) and the chunks are merged with Chan et al.'s
  pairwise update, so E[x^2] - E[x]^2 is never formed over a row. Within a
  chunk, float64 data take two passes (mean, then squared deviations; the
  chunk sits in L1 for the second, so x streams from memory once); 32- and
  16-bit data take one pass, exact enough in float64 (see _chunk_moments).
* The chunking is fixed by the data layout and chunks are merged in index
  order, serially. The parallel and serial kernels therefore compute the same
  operations in the same order, and results do not depend on the thread count.
* Reassociation (for vectorized sums) is allowed in the small reduction
  functions only; see _REDUCE.
* float16 and bfloat16 arrive as their uint16 / int16 bit patterns (numba has
  no CPU half type); _load decodes exactly and _store rounds the float64
  result once, to nearest even.
"""

import math

import numpy as np
from numba import njit, prange, types
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

# Elements per moments chunk: 16 KiB of float32, 32 KiB of float64, both
# L1-resident for the second pass. It also sets the granularity at which one
# long row is split across threads.
CHUNK = 4096
# LayerNorm rows of up to this many elements take the short_rows kernel
# (one chunk per row, so at most CHUNK; longer rows gained nothing).
SHORT_ROW = 1024
# GroupNorm channels of up to this many positions have a group's output
# written in one call (see group_norm_rows). Measured on a Zen 1, one
# thread, float32, G = 32, time against a call per channel: 196 positions
# ((1, 1024, 14, 14), (1, 256, 14, 14)) 0.89x and 0.92x; 784 and 1024
# even; 3136 1.03x.
SHORT_CHANNEL = 256


# ---------------------------------------------------------------------------
# float16 / bfloat16 bit patterns <-> float64


def _bitcast(src, dst, ll_dst):
    """An intrinsic reinterpreting the bits of a ``src`` value as ``dst``."""
    @intrinsic
    def cast(typingctx, v):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ll_dst)
        return dst(src), codegen
    return cast


_f64_as_u64 = _bitcast(types.float64, types.uint64, ir.IntType(64))
_u64_as_f64 = _bitcast(types.uint64, types.float64, ir.DoubleType())
_f32_as_u32 = _bitcast(types.float32, types.uint32, ir.IntType(32))
_u32_as_f32 = _bitcast(types.uint32, types.float32, ir.FloatType())


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma): one instruction where a separate
    multiply and add would be two, and one rounding fewer. Written out
    rather than left to fastmath contraction, so that every build of every
    kernel rounds the same way."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = builder.module.declare_intrinsic(
            "llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
        return builder.call(fn, args)
    return sig, codegen


@intrinsic
def _bf16_as_f64(typingctx, v):
    """bfloat16 bits (int16) -> float64, exactly: bfloat16 is the upper
    half of a float32, so this is a shift, a bitcast and a widening."""
    sig = types.float64(types.int16)

    def codegen(context, builder, signature, args):
        u = builder.zext(args[0], ir.IntType(32))
        f = builder.bitcast(builder.shl(u, ir.Constant(ir.IntType(32), 16)),
                            ir.FloatType())
        return builder.fpext(f, ir.DoubleType())
    return sig, codegen


@intrinsic
def _f16_as_f64(typingctx, v):
    """float16 bits (uint16) -> float64 with LLVM's half type: exact, and
    one vectorized instruction (vcvtph2ps) on CPUs with F16C."""
    sig = types.float64(types.uint16)

    def codegen(context, builder, signature, args):
        h = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(h, ir.DoubleType())
    return sig, codegen


@intrinsic
def _f32_bits_to_f16_bits(typingctx, v):
    """float32 bits -> float16 bits, rounded to nearest even (vcvtps2ph
    with F16C)."""
    sig = types.uint16(types.uint32)

    def codegen(context, builder, signature, args):
        f = builder.bitcast(args[0], ir.FloatType())
        h = builder.fptrunc(f, ir.HalfType())
        return builder.bitcast(h, ir.IntType(16))
    return sig, codegen


@register_jitable
def _f64_to_f32_odd(v):
    """float32 bits of v rounded to odd: toward zero, with the last bit
    set when inexact. Rounding that once more to a format with fewer than
    22 mantissa bits (float16, bfloat16), to nearest even, gives v rounded
    to nearest even directly: no double-rounding error.

    From f = v rounded to nearest: when f is exact or its last bit is set,
    f is the odd rounding already (an odd f rounded either way is the
    truncation with the last bit set). Otherwise the odd rounding is the
    neighbour one step toward v: one down in magnitude when f rounded away
    from zero (Inf included: the step gives the largest float32), one up
    when it rounded toward it. Written as selects: with branches, the loop
    around every 16-bit store stayed scalar and mispredicted on whether f
    rounded away (17 ns against 2 ns per element, measured on a Zen 1)."""
    f = np.float32(v)  # to nearest even
    u = _f32_as_u32(f)
    back = np.float64(f)
    fix = (back != v) & (v == v) & ((u & np.uint32(1)) == 0)
    step = np.uint32(1) - np.uint32(2) * np.uint32(abs(back) > abs(v))
    return u + np.uint32(fix) * step  # step is 1 or -1 modulo 2**32


def _host_has_f16c():
    try:
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("f16c", False))
    except Exception:  # unknown CPU: the portable integer decoding
        return False


# Without F16C, LLVM would lower the half type through a runtime library
# call that numba's JIT does not provide; the integer decoding serves there.
_F16C = _host_has_f16c()


# Integer-only conversions between float64 and the 16-bit formats (M
# mantissa bits, exponent bias B: float16 M=10 B=15, bfloat16 M=7 B=127);
# branch-light, so they cost little next to the memory traffic.


@register_jitable
def _bits_to_f64(h, M, B):
    # Written as selects without calls, so that LLVM can vectorize it.
    h = np.int64(h) & 0xFFFF
    emask = (1 << (15 - M)) - 1
    ex = (h >> M) & emask
    m = h & ((1 << M) - 1)
    neg = (h >> 15) != 0
    e64 = 0x7FF if ex == emask else ex - B + 1023
    normal = _u64_as_f64(np.uint64(((h >> 15) << 63) | (e64 << 52)
                                   | (m << (52 - M))))
    # zero or subnormal: m * 2**(1 - B - M), exact
    sub = float(m) * (2.0 ** (1 - B - M))
    return normal if ex != 0 else (-sub if neg else sub)


@register_jitable
def _f64_to_bits(v, M, B):
    """Rounds a float64 straight to the 16-bit format, to nearest even (no
    float32 step, so no double rounding)."""
    b = np.int64(_f64_as_u64(v))
    sign = (b >> 48) & 0x8000
    ex = (b >> 52) & 0x7FF
    mant = b & 0xFFFFFFFFFFFFF
    emask = (1 << (15 - M)) - 1
    if ex == 0x7FF:  # Inf or NaN (quiet)
        return np.uint16(sign | (emask << M) | ((1 << (M - 1)) if mant else 0))
    e = ex - 1023 + B
    if e >= emask:
        return np.uint16(sign | (emask << M))
    if e <= 0:  # subnormal in the small format, or zero
        if e < -M:
            return np.uint16(sign)
        full = mant | (1 << 52)
        shift = 52 - M + 1 - e
        m = full >> shift
        rem = full & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (m & 1)):
            m += 1
        return np.uint16(sign | m)
    shift = 52 - M
    m = mant >> shift
    rem = mant & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (m & 1)):
        m += 1
    # a carry out of the mantissa bumps the exponent, up to Inf: correct
    return np.uint16(sign | ((e << M) + m))


def _load(a, i):
    raise NotImplementedError


def _store(a, i, v):
    raise NotImplementedError


@overload(_load, inline="always")
def _ov_load(a, i):
    if a.dtype == types.uint16:  # float16 bits
        if _F16C:
            return lambda a, i: _f16_as_f64(a[i])
        return lambda a, i: _bits_to_f64(a[i], 10, 15)
    if a.dtype == types.int16:  # bfloat16 bits
        return lambda a, i: _bf16_as_f64(a[i])
    return lambda a, i: np.float64(a[i])


@overload(_store, inline="always")
def _ov_store(a, i, v):
    if a.dtype == types.uint16:
        if _F16C:
            def impl(a, i, v):
                a[i] = _f32_bits_to_f16_bits(_f64_to_f32_odd(v))
            return impl

        def impl(a, i, v):
            a[i] = _f64_to_bits(v, 10, 15)
        return impl
    if a.dtype == types.int16:
        def impl(a, i, v):
            # bfloat16 is float32's upper half: round the odd-rounded
            # float32 to nearest even there (NaN kept quiet)
            u = _f64_to_f32_odd(v)
            quiet = (u >> np.uint32(16)) | np.uint32(0x40)
            even = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) \
                >> np.uint32(16)
            # a select without branches (it is inlined into every loop)
            r = even + np.uint32(v != v) * (quiet - even)
            a[i] = np.int16(np.int32(r) - ((np.int32(r) >> 15) << 16))
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
# expression (e.g. (x - k) - d) may be rearranged into a cancelling form.
# 'contract' lets q += v * v become one fused multiply-add (one rounding
# instead of two; measured 0.143 -> 0.109 ns per float32 element on one
# thread). No 'nnan'/'ninf', so NaN and Inf propagate.
_REDUCE = dict(fastmath={"reassoc", "contract"}, cache=True, nogil=True)


@njit(**_REDUCE)
def _sum_dev(xs, k):
    s = 0.0
    for i in range(xs.size):
        s += _load(xs, i) - k
    return s


@njit(**_REDUCE)
def _sum_sq_dev(xs, k, m):
    q = 0.0
    for i in range(xs.size):
        d = (_load(xs, i) - k) - m
        q += d * d
    return q


@njit(**_REDUCE)
def _sum_sq(xs):
    q = 0.0
    for i in range(xs.size):
        v = _load(xs, i)
        q += v * v
    return q


# Shifted data: all moments of a row are taken of x - k, where k is the
# row's first element (for BatchNorm, the channel's first element). Data
# with a large offset then sums small numbers, x - k is exact when x and k
# are within a factor of 2 (Sterbenz), and the mean is carried as k + d with
# d small, so the output ((x - k) - d) * rstd never rounds the mean at the
# offset's magnitude: float64 inputs with an offset of 1e4 keep ~1e-16
# relative accuracy, where rounding the mean alone would cost 1e-12.


@njit(**_REDUCE)
def _sums_dev(xs, c):
    s = 0.0
    q = 0.0
    for i in range(xs.size):
        v = _load(xs, i) - c
        s += v
        q += v * v
    return s, q


def _chunk_moments(x, lo, hi, k):
    """(mean of x - k, M2) of x[lo:hi] in float64."""
    raise NotImplementedError


@overload(_chunk_moments, inline="always")
def _ov_chunk_moments(x, lo, hi, k):
    if x.dtype == types.float64:
        # Two passes over the L1-resident chunk: the mean, then the squared
        # deviations from it, so M2 keeps float64's full relative accuracy.
        def two_pass(x, lo, hi, k):
            xs = x[lo:hi]
            d = _sum_dev(xs, k) / (hi - lo)
            return d, _sum_sq_dev(xs, k, d)
        return two_pass

    # 32- and 16-bit inputs: one pass of the sum and the sum of squares of
    # x - c, c the chunk's first element. x - c is exact in float64 and so is
    # its square (at most 2*25 significant bits); the one-pass formula
    # M2 = q - s*s/n then loses at most ~2n units of 2**-53 relative to M2,
    # because n*(c - mean)**2 <= n*M2 when c is one of the chunk's values
    # (~1e-12 for n = 4096, far below float32's 6e-8).
    def one_pass(x, lo, hi, k):
        xs = x[lo:hi]
        c = _load(xs, 0)
        s, q = _sums_dev(xs, c)
        mc = s / (hi - lo)
        return (c - k) + mc, max(q - s * mc, 0.0)
    return one_pass


@register_jitable(inline="always")
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    # Chan, Golub & LeVeque (1979): pairwise update of (n, mean, M2).
    n = n_a + n_b
    d = mean_b - mean_a
    f = n_b / n
    # (d * n_a) first: the first merge (n_a = 0) then adds an exact 0 even
    # when d * d overflows, instead of inf * 0 = NaN
    return n, mean_a + d * f, m2_a + m2_b + (d * n_a) * f * d


@register_jitable(inline="always")
def _span_moments(x, lo, hi, k):
    """(mean of x - k, M2) of x[lo:hi], chunked from lo, merged in order."""
    n = 0.0
    d = 0.0
    m2 = 0.0
    for c in range(lo, hi, CHUNK):
        e = min(c + CHUNK, hi)
        cd, cq = _chunk_moments(x, c, e, k)
        n, d, m2 = _merge(n, d, m2, float(e - c), cd, cq)
    return d, m2


def _row_sums(x, lo, n, k):
    """The sums _chunk_moments takes of the n elements x[lo:lo+n], n <=
    CHUNK, about k, their first element: (sum, sum of squares) of x - k for
    32- and 16-bit data, (mean, M2) for float64 (two passes). Inlined into
    _rows_moments; _row_moments finishes them outside it, so that
    q - s*d is not contracted. lo and n are unsigned: indexing then needs
    neither a slice (a reference count per row) nor a negative-index check
    per element."""
    raise NotImplementedError


@overload(_row_sums, inline="always")
def _ov_row_sums(x, lo, n, k):
    if x.dtype == types.float64:
        def two_pass(x, lo, n, k):
            s = 0.0
            for i in range(n):
                s += _load(x, lo + i) - k
            d = s / n
            q = 0.0
            for i in range(n):
                v = (_load(x, lo + i) - k) - d
                q += v * v
            return d, q
        return two_pass

    def one_pass(x, lo, n, k):
        s = 0.0
        q = 0.0
        for i in range(n):
            v = _load(x, lo + i) - k
            s += v
            q += v * v
        return s, q
    return one_pass


def _row_moments(x, a, q, n):
    """(mean of x - k, M2) of a row from _row_sums's (a, q)."""
    raise NotImplementedError


@overload(_row_moments, inline="always")
def _ov_row_moments(x, a, q, n):
    if x.dtype == types.float64:
        return lambda x, a, q, n: (a, q)

    def one_pass(x, a, q, n):  # as _chunk_moments, whose c is k here
        d = a / n
        return d, max(q - a * d, 0.0)
    return one_pass


@njit(**_REDUCE)
def _rows_moments(x, r0, r1, L, shift, sums, sqs):
    """For rows r0..r1 of L <= CHUNK elements: shift[r] = the row's first
    element k, (sums[r], sqs[r]) = _row_sums of the row about k."""
    n = np.uint64(L)
    for r in range(r0, r1):
        lo = np.uint64(r) * n
        k = _load(x, lo)
        shift[r] = k
        sums[r], sqs[r] = _row_sums(x, lo, n, k)


@register_jitable
def _span_sumsq(x, lo, hi):
    s = 0.0
    for c in range(lo, hi, CHUNK):
        s += _sum_sq(x[c:min(c + CHUNK, hi)])
    return s


# ---------------------------------------------------------------------------
# output passes


# Streaming (nontemporal) stores. A plain store of y first reads the
# line it writes into the cache (read for ownership), so a pass over data
# larger than the caches moves x, y and y again; a nontemporal store
# writes the line without reading it. llvm's vectorizer keeps no such
# store (it needs an aligned vector), so the output is written here as
# aligned vectors of NT_LANES elements, built in IR, with the same
# float64 arithmetic as the plain loops (the results are bitwise equal).
# Measured, 2**25 float32 elements, 2 threads: y = fma(x - k, s, c) in
# 0.78x the time of the plain y = a*x + b limit kernel. In cache it is
# 2.6x slower (y must go to memory), so callers use it on large data only.
NT_LANES = 8
_FLOATS = (types.float32, types.float64)


def _nt_vector(form):
    """An intrinsic storing NT_LANES results at y[i], nontemporally, &y[i]
    aligned to their size; x and y of one float dtype, the arithmetic in
    float64 as in the plain loops:

    * "fma":    fma(x[i:] - k, s, c)
    * "fma_wb": fma(fma(x[i:] - k, s, c), w[j:], b[j:])
    * "mul":    x[i:] * s
    * "mul_w":  (x[i:] * s) * w[j:]

    For other dtypes it compiles to a trap: callers test _nt_ok first, a
    constant that removes the call."""
    @intrinsic
    def nt(typingctx, x, y, i, k, s, c, w, b, j):
        sig = types.void(x, y, types.intp, types.float64, types.float64,
                         types.float64, w, b, types.intp)

        def codegen(context, builder, signature, args):
            xa, ya, idx, kk, ss, cc, wa, ba, jdx = args
            xt, yt, _, _, _, _, wt, bt, _ = signature.args
            if not (xt.dtype in _FLOATS and yt.dtype == xt.dtype
                    and wt.dtype in _FLOATS and bt.dtype in _FLOATS):
                trap = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), []),
                    "llvm.trap")
                builder.call(trap, [])
                return context.get_dummy_value()
            vd = ir.VectorType(ir.DoubleType(), NT_LANES)
            i32 = ir.IntType(32)

            def splat(v):
                u = builder.insert_element(ir.Constant(vd, ir.Undefined), v,
                                           ir.Constant(i32, 0))
                return builder.shuffle_vector(
                    u, ir.Constant(vd, ir.Undefined),
                    ir.Constant(ir.VectorType(i32, NT_LANES), [0] * NT_LANES))

            def pointer(aty, aval, at):
                arr = context.make_array(aty)(context, builder, aval)
                et = context.get_data_type(aty.dtype)
                return builder.bitcast(builder.gep(arr.data, [at]),
                                       ir.VectorType(et, NT_LANES).as_pointer())

            def load(aty, aval, at):
                v = builder.load(pointer(aty, aval, at),
                                 align=aty.dtype.bitwidth // 8)
                return v if aty.dtype == types.float64 else builder.fpext(v, vd)

            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vd, [vd, vd, vd]),
                "llvm.fma.v%df64" % NT_LANES)
            xv = load(xt, xa, idx)
            if form.startswith("fma"):
                r = builder.call(fma, [builder.fsub(xv, splat(kk)), splat(ss),
                                       splat(cc)])
                if form == "fma_wb":
                    r = builder.call(fma, [r, load(wt, wa, jdx),
                                           load(bt, ba, jdx)])
            else:
                r = builder.fmul(xv, splat(ss))
                if form == "mul_w":
                    r = builder.fmul(r, load(wt, wa, jdx))
            if yt.dtype != types.float64:
                r = builder.fptrunc(
                    r, ir.VectorType(context.get_data_type(yt.dtype), NT_LANES))
            st = builder.store(r, pointer(yt, ya, idx),
                               align=NT_LANES * yt.dtype.bitwidth // 8)
            st.set_metadata("nontemporal", builder.module.add_metadata(
                [ir.Constant(i32, 1)]))
            return context.get_dummy_value()
        return sig, codegen
    return nt


_nt_fma = _nt_vector("fma")
_nt_fma_wb = _nt_vector("fma_wb")
_nt_mul = _nt_vector("mul")
_nt_mul_w = _nt_vector("mul_w")


def _nt_ok(x, y, w, b):
    raise NotImplementedError


@overload(_nt_ok, inline="always")
def _ov_nt_ok(x, y, w, b):
    ok = (x.dtype in _FLOATS and y.dtype == x.dtype and w.dtype in _FLOATS
          and b.dtype in _FLOATS)
    return lambda x, y, w, b: ok


@register_jitable(inline="always")
def _nt_span(y, lo, n):
    """(h, e): y[lo+h:lo+e] is whole vectors aligned to their size; (n, n),
    no vectors, when y is not even aligned to its elements."""
    size = y.itemsize
    addr = y.ctypes.data + lo * size
    if addr % size != 0:
        return n, n
    step = NT_LANES * size
    h = min(n, ((step - addr % step) % step) // size)
    return h, h + (n - h) // NT_LANES * NT_LANES


@register_jitable
def _apply_out(x, y, lo, j0, n, k, d, scale, w, b, mode):
    """_apply_elementwise, with streaming stores when mode has bit 4 set
    (modes 0 and 3 of float32/float64 data; else plain)."""
    m = mode & 3
    if not (mode >= 4 and (m == 0 or m == 3) and _nt_ok(x, y, w, b)):
        _apply_elementwise(x, y, lo, j0, n, k, d, scale, w, b, m)
        return
    h, e = _nt_span(y, lo, n)
    _apply_elementwise(x, y, lo, j0, h, k, d, scale, w, b, m)
    c = -(d * scale)
    if m == 0:
        for i in range(lo + h, lo + e, NT_LANES):
            _nt_fma(x, y, i, k, scale, c, w, b, 0)
    else:
        for i in range(h, e, NT_LANES):
            _nt_fma_wb(x, y, lo + i, k, scale, c, w, b, j0 + i)
    _apply_elementwise(x, y, lo + e, j0 + e, n - e, k, d, scale, w, b, m)


@register_jitable
def _scale_out(x, y, lo, j0, n, scale, w, mode):
    """_apply_scale, streaming when mode has bit 4 set."""
    m = mode & 3
    if not (mode >= 4 and _nt_ok(x, y, w, w)):
        _apply_scale(x, y, lo, j0, n, scale, w, m)
        return
    h, e = _nt_span(y, lo, n)
    _apply_scale(x, y, lo, j0, h, scale, w, m)
    if m == 0:
        for i in range(lo + h, lo + e, NT_LANES):
            _nt_mul(x, y, i, 0.0, scale, 0.0, w, w, 0)
    else:
        for i in range(h, e, NT_LANES):
            _nt_mul_w(x, y, lo + i, 0.0, scale, 0.0, w, w, j0 + i)
    _apply_scale(x, y, lo + e, j0 + e, n - e, scale, w, m)


@register_jitable
def _affine_out(x, y, lo, n, k, d, scale, beta, stream):
    """_apply_affine, streaming when stream is true."""
    if not (stream and _nt_ok(x, y, x, x)):
        _apply_affine(x, y, lo, n, k, d, scale, beta)
        return
    h, e = _nt_span(y, lo, n)
    _apply_affine(x, y, lo, h, k, d, scale, beta)
    c = beta - d * scale
    for i in range(lo + h, lo + e, NT_LANES):
        _nt_fma(x, y, i, k, scale, c, x, x, 0)
    _apply_affine(x, y, lo + e, n - e, k, d, scale, beta)


@register_jitable
def _apply_elementwise(x, y, lo, j0, n, k, d, scale, w, b, mode):
    """y[lo+i] = ((x[lo+i] - k) - d) * scale [* w[j0+i]] [+ b[j0+i]].

    mode bit 1: weight, bit 2: bias. The branches sit outside the loops so
    that each loop stays a plain vectorizable stream (one function each,
    below).

    Except with a bias alone (modes 0, 1, 3), ((x - k) - d) * scale is computed
    as fma(x - k, scale, c), c = -d*scale: x - k stays exact (the shift
    keeps the offset out, and a constant row still gives exactly 0), and
    rounding c costs at most 2**-53 * |d*scale| where |d*scale| =
    |k - mean| / std <= sqrt(L), far below the output's rounding. It saves
    one float64 operation per element (measured on one thread, float32 in
    cache: 0.188 -> 0.140 ns per element without weight and bias); mode 2
    already takes one operation per term as fma((x - k) - d, scale, b).
    """
    lo = np.uint64(lo)
    j0 = np.uint64(j0)
    n = np.uint64(n)
    c = -(d * scale)
    if mode == 0:
        _shift_scale(x, y, lo, n, k, scale, c)
    elif mode == 1:
        _shift_scale_w(x, y, w, lo, j0, n, k, scale, c)
    elif mode == 2:
        _shift_scale_b(x, y, b, lo, j0, n, k, d, scale)
    else:
        _shift_scale_wb(x, y, w, b, lo, j0, n, k, scale, c)


# The output loops, one per function and with unsigned indices (lo, j0, n:
# no slice, so no reference count per call, and no negative-index check per
# element). One loop per function because LLVM's first optimization of a
# function holding several float16/bfloat16 loops (one per mode) left them
# all scalar; numba optimizes each function once more when it links it into
# a kernel, and that copy, the one its disk cache keeps, was vectorized. A
# process that compiled its kernels therefore ran the scalar copy: measured
# on a Zen 1, a float16 output pass at 5.5-6 ns per element against 2.0
# once loaded from the cache, and LayerNorm (8, 512, 768) in 16.3 ms against
# 6.2. Each loop alone is vectorized the first time.


@register_jitable
def _shift_scale(x, y, lo, n, k, scale, c):
    for i in range(n):
        _store(y, lo + i, _fma(_load(x, lo + i) - k, scale, c))


@register_jitable
def _shift_scale_w(x, y, w, lo, j0, n, k, scale, c):
    for i in range(n):
        _store(y, lo + i,
               _fma(_load(x, lo + i) - k, scale, c) * _load(w, j0 + i))


@register_jitable
def _shift_scale_b(x, y, b, lo, j0, n, k, d, scale):
    for i in range(n):
        _store(y, lo + i,
               _fma((_load(x, lo + i) - k) - d, scale, _load(b, j0 + i)))


@register_jitable
def _shift_scale_wb(x, y, w, b, lo, j0, n, k, scale, c):
    for i in range(n):
        _store(y, lo + i, _fma(_fma(_load(x, lo + i) - k, scale, c),
                               _load(w, j0 + i), _load(b, j0 + i)))


@njit(cache=True, nogil=True)
def _rows_apply(x, y, r0, r1, L, shift, dmean, rstd, w, b, mode):
    """_apply_elementwise over the whole rows r0..r1 in one call, with
    unsigned indices (see _row_sums). The mode is tested per row: with
    the test outside the row loop the call cost 17 ns more (measured,
    64-element rows, one row per call)."""
    n = np.uint64(L)
    j0 = np.uint64(0)
    for r in range(r0, r1):
        lo = np.uint64(r) * n
        k = shift[r]
        scale = rstd[r]
        c = -(dmean[r] * scale)
        if mode == 0:
            _shift_scale(x, y, lo, n, k, scale, c)
        elif mode == 1:
            _shift_scale_w(x, y, w, lo, j0, n, k, scale, c)
        elif mode == 2:
            _shift_scale_b(x, y, b, lo, j0, n, k, dmean[r], scale)
        else:
            _shift_scale_wb(x, y, w, b, lo, j0, n, k, scale, c)


@register_jitable
def _apply_scale(x, y, lo, j0, n, scale, w, mode):
    """RMSNorm's output: y[lo+i] = x[lo+i] * scale [* w[j0+i]] (mode bit 1:
    weight), without LayerNorm's centering."""
    lo = np.uint64(lo)
    n = np.uint64(n)
    if mode == 0:
        _scale(x, y, lo, n, scale)
    else:
        _scale_w(x, y, w, lo, np.uint64(j0), n, scale)


@register_jitable
def _scale(x, y, lo, n, scale):  # see _shift_scale
    for i in range(n):
        _store(y, lo + i, _load(x, lo + i) * scale)


@register_jitable
def _scale_w(x, y, w, lo, j0, n, scale):
    for i in range(n):
        _store(y, lo + i, _load(x, lo + i) * scale * _load(w, j0 + i))


@register_jitable
def _apply_affine(x, y, lo, n, k, d, scale, beta):
    """y = ((x - k) - d) * scale + beta over one segment sharing one
    channel, as fma(x - k, scale, beta - d*scale) (see _apply_elementwise
    for why folding d in is exact enough)."""
    xs = x[lo:lo + n]
    ys = y[lo:lo + n]
    c = beta - d * scale
    for i in range(n):
        _store(ys, i, _fma(_load(xs, i) - k, scale, c))


@register_jitable(inline="always")
def _rstd(m2, n, eps):
    return 1.0 / math.sqrt(m2 / n + eps)


# Float64 rows whose deviations exceed ~1e154 overflow their sum of squares
# (float32/16-bit data cannot: their statistics are float64). Such a row's
# statistics are taken again of the data scaled by 2**-600, exactly (a power
# of two), and scaled back; normalization does not depend on the scale
# (eps, scaled by 2**-1200, vanishes next to such a variance).
_DOWN = 2.0 ** -600


@register_jitable(inline="always")
def _rescued_stats(x, lo, hi, k, d, m2, eps):
    """(d, rstd) for the elements x[lo:hi] with moments (d, m2) about k:
    the plain result, or for an overflowed M2 of finite data the result of
    the scaled recomputation (two plain passes, a rare slow path)."""
    n = hi - lo
    if not (m2 == np.inf and math.isfinite(d)):
        return d, _rstd(m2, n, eps)
    ks = k * _DOWN
    t = 0.0
    for i in range(lo, hi):
        t += _load(x, i) * _DOWN - ks
    ds = t / n
    q = 0.0
    for i in range(lo, hi):
        v = (_load(x, i) * _DOWN - ks) - ds
        q += v * v
    return ds / _DOWN, _DOWN / math.sqrt(q / n + eps * _DOWN * _DOWN)


@register_jitable
def _rrms(x, lo, hi, sumsq, eps):
    """1/rms of x[lo:hi] given its sum of squares. An Inf in the row would
    give 1/sqrt(inf) = 0 and a row of zeros; the row is NaN instead, as
    LayerNorm's statistics make it. An overflowed float64 sum of finite
    squares is recomputed on scaled data, as in _rescued_stats."""
    n = hi - lo
    if math.isfinite(sumsq):
        return 1.0 / math.sqrt(sumsq / n + eps)
    if sumsq != np.inf:
        return np.nan
    q = 0.0
    for i in range(lo, hi):
        v = _load(x, i) * _DOWN
        q += v * v
    if not math.isfinite(q):
        return np.nan
    return _DOWN / math.sqrt(q / n + eps * _DOWN * _DOWN)


# ---------------------------------------------------------------------------
# kernels. Each is compiled twice (serial and parallel, see _dispatch.py);
# prange is a plain range in the serial build. Row statistics are returned
# as (shift k, mean of x - k, rstd).


@register_jitable(inline="always")
def _row_stats(x, r, L, eps, shift, dmean, rstd):
    """Statistics of row r, stored and returned as (k, d, rstd). The shift
    is read before the row is written (y may be x)."""
    lo = r * L
    k = _load(x, lo)
    d, m2 = _span_moments(x, lo, lo + L, k)
    d, s = _rescued_stats(x, lo, lo + L, k, d, m2, eps)
    shift[r] = k
    dmean[r] = d
    rstd[r] = s
    return k, d, s


def layer_norm_rows(x, y, R, L, TR, w, b, mode, eps, shift, dmean, rstd):
    """One task per tile of TR rows: the tile's moments, then its output
    pass while the rows are hot. Taking several rows' statistics back to
    back lets their latency-bound ends (merge, sqrt, division) overlap the
    next row's loads: short rows (L = 64) run 1.7x faster than row by row.
    A row's output is written after every row of its tile was read, so
    y may be x."""
    for t in prange((R + TR - 1) // TR):
        r0 = t * TR
        r1 = min(r0 + TR, R)
        for r in range(r0, r1):
            _row_stats(x, r, L, eps, shift, dmean, rstd)
        for r in range(r0, r1):
            _apply_out(x, y, r * L, 0, L, shift[r], dmean[r], rstd[r], w, b,
                       mode)


def short_rows(x, y, R, L, TR, w, b, mode, eps, shift, dmean, rstd):
    """layer_norm_rows for rows of at most SHORT_ROW elements (one chunk):
    the same arithmetic (_row_stats of one chunk merged into nothing, then
    _apply_elementwise), with the loops over a tile's rows inside two calls
    instead of two calls per row. A call (slices, reference counts) costs
    about as much as a 64-element row: one thread, float32 (4096, 64):
    30 ns per row against 65."""
    for t in prange((R + TR - 1) // TR):
        r0 = t * TR
        _short_tile(x, y, r0, min(r0 + TR, R), L, w, b, mode, eps, shift,
                    dmean, rstd)


@register_jitable(inline="always")
def _short_tile(x, y, r0, r1, L, w, b, mode, eps, shift, dmean, rstd):
    """short_rows's task: rows r0..r1's statistics, then their output."""
    _short_stats(x, r0, r1, L, eps, shift, dmean, rstd)
    _rows_apply(x, y, r0, r1, L, shift, dmean, rstd, w, b, mode)


@register_jitable(inline="always")
def _short_stats(x, r0, r1, L, eps, shift, dmean, rstd):
    """(shift, dmean, rstd) of rows r0..r1 of L <= CHUNK elements: the
    statistics of _row_stats for a one-chunk row, in one call."""
    _rows_moments(x, r0, r1, L, shift, dmean, rstd)
    for r in range(r0, r1):
        d, m2 = _row_moments(x, dmean[r], rstd[r], L)
        n, d, m2 = _merge(0.0, 0.0, 0.0, float(L), d, m2)
        dmean[r], rstd[r] = _rescued_stats(x, r * L, r * L + L, shift[r],
                                           d, m2, eps)


def small_rows(x, y, R, L, w, b, mode, eps):
    """A whole LayerNorm of few rows of at most SHORT_ROW elements in one
    serial task, as one tile of short_rows (the same arithmetic), its
    statistics kept in a scratch array made here: each array argument of a
    kernel call costs ~0.2 us to pass (measured on a 2-core Zen 1: 1.6 us
    for a call with 7 arrays that does nothing, 1.0 us with 4), as much as
    the arithmetic of a 768-element row. (Longer rows go to
    layer_norm_rows: inlining its tile here made this kernel take 25 s to
    compile per signature instead of a few.)"""
    s = np.empty((3, R))
    _short_tile(x, y, 0, R, L, w, b, mode, eps, s[0], s[1], s[2])


def rms_norm_rows(x, y, R, L, TR, w, mode, eps, rstd):
    """As layer_norm_rows, for the mean of squares. Rows of at most
    SHORT_ROW elements (one chunk, never streamed) take a tile's sums and
    its output in one call each, as short_rows. Measured, one thread,
    float32 with a weight, per row: 16 elements 160 -> 34 ns, 64 195 -> 70,
    128 245 -> 131, 1024 even."""
    for t in prange((R + TR - 1) // TR):
        r0 = t * TR
        r1 = min(r0 + TR, R)
        if L <= SHORT_ROW:
            _rows_sumsq(x, r0, r1, L, rstd)
            for r in range(r0, r1):
                rstd[r] = _rrms(x, r * L, r * L + L, rstd[r], eps)
            _rows_scale(x, y, r0, r1, L, rstd, w, mode & 3)
            continue
        for r in range(r0, r1):
            lo = r * L
            rstd[r] = _rrms(x, lo, lo + L, _span_sumsq(x, lo, lo + L), eps)
        for r in range(r0, r1):
            _scale_out(x, y, r * L, 0, L, rstd[r], w, mode)


@njit(**_REDUCE)
def _rows_sumsq(x, r0, r1, L, q):
    """q[r] = the sum of squares of row r, for rows r0..r1 of L <= CHUNK
    elements (the loop of _sum_sq, unsigned indices as _rows_moments)."""
    n = np.uint64(L)
    for r in range(r0, r1):
        lo = np.uint64(r) * n
        s = 0.0
        for i in range(n):
            v = _load(x, lo + i)
            s += v * v
        q[r] = s


@njit(cache=True, nogil=True)
def _rows_scale(x, y, r0, r1, L, rstd, w, mode):
    """_apply_scale over the whole rows r0..r1 in one call (see
    _rows_apply)."""
    n = np.uint64(L)
    j0 = np.uint64(0)
    for r in range(r0, r1):
        lo = np.uint64(r) * n
        if mode == 0:
            _scale(x, y, lo, n, rstd[r])
        else:
            _scale_w(x, y, w, lo, j0, n, rstd[r])


def chunk_moments(x, R, L, nk, P, part):
    """part[r*nk + j] = moments of chunk j of row r (rows of L elements cut
    into nk chunks of CHUNK, the last one shorter), shifted by the first
    element of row r % P (P = R: the row's own; P = C for BatchNorm's
    (n, c) segments: channel c's first element)."""
    for t in prange(R * nk):
        r = t // nk
        j = t - r * nk
        lo = r * L + j * CHUNK
        hi = min(lo + CHUNK, r * L + L)
        d, m2 = _chunk_moments(x, lo, hi, _load(x, (r % P) * L))
        part[t, 0] = d
        part[t, 1] = m2


def chunk_sumsq(x, R, L, nk, part):
    for t in prange(R * nk):
        r = t // nk
        j = t - r * nk
        lo = r * L + j * CHUNK
        hi = min(lo + CHUNK, r * L + L)
        part[t, 0] = _sum_sq(x[lo:hi])


def merge_rows(x, part, R, L, nk, eps, shift, dmean, rstd):
    """Merge each row's chunk moments in order (the order of _span_moments,
    so the split and the per-row plans agree bit for bit); runs before any
    output is written, so the shifts read from x are still the inputs."""
    for r in range(R):
        n = 0.0
        d = 0.0
        m2 = 0.0
        for j in range(nk):
            c = min(CHUNK, L - j * CHUNK)
            n, d, m2 = _merge(n, d, m2, float(c), part[r * nk + j, 0],
                              part[r * nk + j, 1])
        k = _load(x, r * L)
        shift[r] = k
        dmean[r], rstd[r] = _rescued_stats(x, r * L, r * L + L, k, d, m2, eps)


def merge_rows_sumsq(x, part, R, L, nk, eps, rstd):
    for r in range(R):
        s = 0.0
        for j in range(nk):
            s += part[r * nk + j, 0]
        rstd[r] = _rrms(x, r * L, r * L + L, s, eps)


def apply_rows(x, y, R, L, nk, shift, dmean, rstd, w, b, mode):
    """Output pass, one task per chunk of a row (rows split across
    threads)."""
    for t in prange(R * nk):
        r = t // nk
        j = t - r * nk
        j0 = j * CHUNK
        n = min(CHUNK, L - j0)
        _apply_out(x, y, r * L + j0, j0, n, shift[r], dmean[r], rstd[r], w,
                   b, mode)


def group_norm_rows(x, y, R, G, Cg, S, w, b, eps, shift, dmean, rstd,
                    stream):
    """Rows of Cg channels x S positions; w, b: float64 (C,) (ones/zeros
    when absent: with a per-channel affine the cost is the same); stream:
    write y with streaming stores."""
    L = Cg * S
    for r in prange(R):
        k, d, s = _row_stats(x, r, L, eps, shift, dmean, rstd)
        if S <= SHORT_CHANNEL and not stream:
            # short channels: one call for the group's channels (the same
            # expressions), as a call per channel costs ~50 ns
            _rows_affine(x, y, r, r + 1, G, Cg, S, shift, dmean, rstd, w, b)
            continue
        lo = r * L
        c0 = (r % G) * Cg
        for ci in range(Cg):
            _affine_out(x, y, lo + ci * S, S, k, d, s * w[c0 + ci],
                        b[c0 + ci], stream)


def group_norm_short(x, y, R, G, Cg, S, TR, w, b, eps, shift, dmean, rstd):
    """group_norm_rows for groups of Cg * S <= SHORT_ROW elements, in tiles
    of TR rows: the statistics of a tile in one call (as short_rows), then
    its output in one call. A call per group and per channel, as
    group_norm_rows makes, costs ~150 ns per group and ~50 ns per channel
    (measured on a 2-core Zen 1): 55 ns per element of a (32, 512)
    GroupNorm, where the arithmetic takes ~1."""
    for t in prange((R + TR - 1) // TR):
        r0 = t * TR
        r1 = min(r0 + TR, R)
        _short_stats(x, r0, r1, Cg * S, eps, shift, dmean, rstd)
        _rows_affine(x, y, r0, r1, G, Cg, S, shift, dmean, rstd, w, b)


@njit(cache=True, nogil=True)
def _rows_affine(x, y, r0, r1, G, Cg, S, shift, dmean, rstd, w, b):
    """group_norm_rows's output for rows r0..r1 (the same expressions as
    its _affine_out calls), with unsigned indices (see _row_sums)."""
    n = np.uint64(S)
    for r in range(r0, r1):
        k = shift[r]
        d = dmean[r]
        s = rstd[r]
        c0 = (r % G) * Cg
        for ci in range(Cg):
            scale = s * w[c0 + ci]
            c = b[c0 + ci] - d * scale
            lo = np.uint64(r * Cg + ci) * n
            for i in range(n):
                _store(y, lo + i, _fma(_load(x, lo + i) - k, scale, c))


def apply_segments(x, y, NS, P, S, nk, shift, dmean, scale, beta, stream):
    """y = ((x - shift[p]) - dmean[p]) * scale[p] + beta[p] over NS
    segments of S elements, segment i using parameters p = i % P (P = C
    for BatchNorm, P = N*C for GroupNorm); one task per chunk; stream:
    write y with streaming stores."""
    for t in prange(NS * nk):
        i = t // nk
        j = t - i * nk
        p = i % P
        j0 = j * CHUNK
        n = min(CHUNK, S - j0)
        _affine_out(x, y, i * S + j0, n, shift[p], dmean[p], scale[p],
                    beta[p], stream)


def batch_norm_fold(rm, rv, w, b, eps, par):
    """Inference BatchNorm's per-channel parameters from the running
    statistics and the parameters as given (one float dtype; w, b empty
    when absent), in float64 as the general path forms them
    (_api.batch_norm_scale): par[0] the shift rm, par[1] the scale
    1 / sqrt(rv + eps) * w, par[2] the bias (0 when absent), par[3] the
    mean of x - shift, 0. One serial call instead of ~12 numpy operations,
    which cost more than the kernel on a small call (BatchNorm (1, 64, 8, 8)
    on a Zen 1: ~30 us of Python around a 9 us kernel). Returns the number
    of channels whose rv + eps is not > 0 (NaN included); the caller then
    takes the general path, which makes them NaN channels."""
    bad = 0
    for c in range(rm.size):
        v = _load(rv, c) + eps
        if not v > 0.0:
            bad += 1
            continue
        s = 1.0 / math.sqrt(v)
        if w.size:
            s *= _load(w, c)
        par[0, c] = _load(rm, c)
        par[1, c] = s
        par[2, c] = _load(b, c) if b.size else 0.0
        par[3, c] = 0.0
    return bad


def merge_columns(x, part, N, C, S, nk, shift, dmean, var):
    """BatchNorm training statistics: channel c merges the chunks of each
    of its N segments in (n, chunk) order. Writes the shift, the mean of
    x - shift and the biased variance."""
    for c in prange(C):
        n = 0.0
        d = 0.0
        m2 = 0.0
        for i in range(N):
            base = (i * C + c) * nk
            for j in range(nk):
                cnt = min(CHUNK, S - j * CHUNK)
                n, d, m2 = _merge(n, d, m2, float(cnt), part[base + j, 0],
                                  part[base + j, 1])
        k = _load(x, c * S)
        shift[c] = k
        if m2 == np.inf and math.isfinite(d):
            # float64 data beyond ~1e154: as _rescued_stats, over the
            # channel's N segments
            ks = k * _DOWN
            t = 0.0
            for i in range(N):
                for e in range((i * C + c) * S, (i * C + c) * S + S):
                    t += _load(x, e) * _DOWN - ks
            ds = t / n
            q = 0.0
            for i in range(N):
                for e in range((i * C + c) * S, (i * C + c) * S + S):
                    v = (_load(x, e) * _DOWN - ks) - ds
                    q += v * v
            d = ds / _DOWN
            vc = (q / n) / _DOWN / _DOWN  # the variance; n * it may overflow
        else:
            vc = m2 / n
        dmean[c] = d
        # a variance beyond float64's range (data beyond ~1e154 can have
        # one) would give a zero scale and a silently constant output: NaN
        var[c] = vc if vc != np.inf else np.nan


# Channels-last data: per sample, S positions of C contiguous channels
# (an NCHW view of an NHWC buffer). Statistics per (sample, group) are
# taken over blocks of B positions (B*C ~ 64K elements, see
# _dispatch._nhwc_block_size) with per-channel accumulators, so the inner
# loop runs along the contiguous channels and vectorizes without
# reassociation; each block's channels are then summed into groups, and the
# blocks are merged in order (Chan).


# The channels-last sums keep one accumulator per channel in memory (C is
# not known at compile time), so every position costs a load and a store of
# acc and sq per channel. Two positions per pass share them, with their
# squares in a chain of fused multiply-adds (float adds and the float32 ->
# float64 conversions share two of a Zen 1's four FP pipes; fmas run on the
# other two). Walking two rows at once defeats the hardware prefetcher,
# so each pass prefetches the next pair's lines. Measured on a Zen 1, 2
# threads, float32 (8, 4096 positions, 256 channels), the statistics pass:
# one position per pass 2.9-3.3 ms, two with the prefetch 2.4-2.5 ms (4.0
# without it); four positions per pass were faster in cache (one thread,
# per element 0.40 ns against 0.61 and 0.47) but 3.2-3.6 ms from memory.
# One loop per function, as the output loops (see _shift_scale).


@intrinsic
def _prefetch(typingctx, a, i):
    """A hint to fetch the cache line of a[i] (llvm.prefetch: read, keep in
    all levels); it never faults."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(),
                                                   [i8p, i32, i32, i32]))
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(a, i), codegen


@register_jitable
def _prefetch_span(x, lo, hi):
    for i in range(lo, hi, np.uint64(64 // x.itemsize)):
        _prefetch(x, i)


@register_jitable
def _nhwc_sums2(x, o, uC, bc, acc, sq):
    for c in range(uC):
        k = bc[c]
        v0 = _load(x, o + c) - k
        v1 = _load(x, o + uC + c) - k
        acc[c] += v0 + v1
        sq[c] = _fma(v1, v1, _fma(v0, v0, sq[c]))


@register_jitable
def _nhwc_sums1(x, o, uC, bc, acc, sq):
    for c in range(uC):
        v = _load(x, o + c) - bc[c]
        acc[c] += v
        sq[c] = _fma(v, v, sq[c])


def _nhwc_block(x, base, s0, s1, C, Cg, kc, acc, dc):
    """Per-group moments of positions [s0, s1): afterwards dc[c] holds the
    group's mean of x - kc and acc[c] the channel's share of the group's
    M2 (summed over the group's channels by the caller)."""
    raise NotImplementedError


@overload(_nhwc_block, inline="always")
def _ov_nhwc_block(x, base, s0, s1, C, Cg, kc, acc, dc):
    if x.dtype == types.float64:
        # two passes, as _chunk_moments: group means, then squared
        # deviations from them
        def two_pass(x, base, s0, s1, C, Cg, kc, acc, dc):
            acc[:] = 0.0
            for s in range(s0, s1):
                xs = x[base + s * C:base + s * C + C]
                for c in range(C):
                    acc[c] += _load(xs, c) - kc[c]
            cnt = (s1 - s0) * Cg
            for c0 in range(0, C, Cg):
                t = 0.0
                for c in range(c0, c0 + Cg):
                    t += acc[c]
                for c in range(c0, c0 + Cg):
                    dc[c] = t / cnt
            acc[:] = 0.0
            for s in range(s0, s1):
                xs = x[base + s * C:base + s * C + C]
                for c in range(C):
                    v = (_load(xs, c) - kc[c]) - dc[c]
                    acc[c] += v * v
        return two_pass

    # 32- and 16-bit data: one pass of sums and sums of squares of x - b,
    # b the group's first element in this block; exact enough for the
    # reason given in _chunk_moments.
    def one_pass(x, base, s0, s1, C, Cg, kc, acc, dc):
        blk = x[base + s0 * C:base + s0 * C + C]
        sq = np.zeros(C)
        bc = np.empty(C)
        for c0 in range(0, C, Cg):
            b = _load(blk, c0)
            for c in range(c0, c0 + Cg):
                bc[c] = b
        acc[:] = 0.0
        uC = np.uint64(C)
        end = np.uint64(base + s1 * C)
        s = s0
        while s + 2 <= s1:
            o = np.uint64(base + s * C)
            _prefetch_span(x, o + (uC + uC), min(o + np.uint64(4) * uC, end))
            _nhwc_sums2(x, o, uC, bc, acc, sq)
            s += 2
        if s < s1:
            _nhwc_sums1(x, np.uint64(base + s * C), uC, bc, acc, sq)
        cnt = (s1 - s0) * Cg
        for c0 in range(0, C, Cg):
            t = 0.0
            q = 0.0
            for c in range(c0, c0 + Cg):
                t += acc[c]
                q += sq[c]
            mb = t / cnt
            for c in range(c0, c0 + Cg):
                dc[c] = (bc[c0] - kc[c0]) + mb
                acc[c] = 0.0
            acc[c0] = max(q - t * mb, 0.0)
    return one_pass


def nhwc_moments(x, N, S, C, G, B, nb, per_sample, part):
    """part[(n*nb + j)*G + g] = (mean of x - k_g, M2) of group g over block
    j of sample n; k_g is the group's first element, x[n, 0, g*Cg], or
    x[0, 0, g*Cg] for all samples if not per_sample (BatchNorm)."""
    Cg = C // G
    for t in prange(N * nb):
        n = t // nb
        j = t - n * nb
        base = n * S * C
        kbase = base if per_sample else 0
        kc = np.empty(C)
        for c0 in range(0, C, Cg):  # (no integer division per channel)
            k = _load(x, kbase + c0)
            for c in range(c0, c0 + Cg):
                kc[c] = k
        acc = np.empty(C)
        dc = np.empty(C)
        _nhwc_block(x, base, j * B, min(j * B + B, S), C, Cg, kc, acc, dc)
        for g in range(G):
            q = 0.0
            for c in range(g * Cg, g * Cg + Cg):
                q += acc[c]
            part[t * G + g, 0] = dc[g * Cg]
            part[t * G + g, 1] = q


def nhwc_merge(x, part, N, S, C, G, B, nb, eps, shift, dmean, rstd):
    """Merges each (sample, group)'s blocks in order; reads the shifts
    before any output is written."""
    Cg = C // G
    for r in prange(N * G):
        n = r // G
        g = r - n * G
        cnt = 0.0
        d = 0.0
        m2 = 0.0
        for j in range(nb):
            i = (n * nb + j) * G + g
            cnt, d, m2 = _merge(cnt, d, m2, float((min(j * B + B, S) - j * B) * Cg),
                                part[i, 0], part[i, 1])
        shift[r] = _load(x, n * S * C + g * Cg)
        dmean[r] = d
        # overflowed M2: NaN rather than a silently zero scale (see merge_columns)
        rstd[r] = _rstd(m2, cnt, eps) if not (
            m2 == np.inf and math.isfinite(d)) else np.nan


def nhwc_merge_channels(x, part, N, S, C, B, nb, shift, dmean, var):
    """BatchNorm training statistics from nhwc_moments(G=C, shared
    shifts): channel c merges its blocks in (n, block) order."""
    for c in prange(C):
        cnt = 0.0
        d = 0.0
        m2 = 0.0
        for t in range(N * nb):
            j = t % nb
            i = t * C + c
            cnt, d, m2 = _merge(cnt, d, m2, float(min(j * B + B, S) - j * B),
                                part[i, 0], part[i, 1])
        shift[c] = _load(x, c)
        dmean[c] = d
        var[c] = m2 / cnt if not (m2 == np.inf and math.isfinite(d)) else np.nan


def nhwc_apply(x, y, N, S, C, B, nb, pn, kc, sc, cc):
    """y = fma(x - kc, sc, cc) along the channels, per-channel parameters at
    n*pn (pn = C: per sample; pn = 0: shared). kc is the shift, and
    cc = beta - dmean*scale is folded in by the caller, exact enough for the
    reason given in _apply_elementwise."""
    for t in prange(N * nb):
        n = t // nb
        j = t - n * nb
        base = n * S * C
        p0 = n * pn
        k = kc[p0:p0 + C]
        a = sc[p0:p0 + C]
        b = cc[p0:p0 + C]
        for s in range(j * B, min(j * B + B, S)):
            xs = x[base + s * C:base + s * C + C]
            ys = y[base + s * C:base + s * C + C]
            for c in range(C):
                _store(ys, c, _fma(_load(xs, c) - k[c], a[c], b[c]))


def affine(x, y, a, b):
    """y = x * a + b in x's dtype (the speed-of-light reference used by the
    benchmarks: one read of x and one write of y)."""
    for i in prange(x.size):
        y[i] = x[i] * a + b


KERNELS = {
    f.__name__: f
    for f in (
        layer_norm_rows, short_rows, small_rows, rms_norm_rows, chunk_moments,
        chunk_sumsq,
        merge_rows, merge_rows_sumsq, apply_rows, group_norm_rows,
        group_norm_short,
        apply_segments, batch_norm_fold, merge_columns, nhwc_moments,
        nhwc_merge,
        nhwc_merge_channels, nhwc_apply,
        affine,
    )
}
