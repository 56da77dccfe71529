"""The one place that decides how a kernel runs: serial or parallel, one
task per row or rows split into chunks across threads.

Both builds of a kernel come from the same Python function, and both plans
merge the same fixed chunks in the same order, so the choice changes the
speed and never the result.
"""

import math
import os
import types

import numba
import numpy as np
from numba import njit
from numba.np.ufunc import parallel as _numba_parallel

from . import _kernels as K
from . import _threading
from ._kernels import CHUNK

# Below this many elements a parallel launch (several microseconds) costs
# more than it saves; such calls run the serial build.
PARALLEL_MIN_ELEMENTS = 1 << 15


def _clone(fn, suffix):
    # A distinct function object (and qualname) per build, so that numba's
    # on-disk cache keeps the serial and the parallel builds apart.
    g = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                           fn.__defaults__, fn.__closure__)
    g.__qualname__ = fn.__qualname__ + suffix
    g.__module__ = fn.__module__
    g.__doc__ = fn.__doc__
    return g


_SERIAL = {name: njit(cache=True, nogil=True)(_clone(fn, "_serial"))
           for name, fn in K.KERNELS.items()}
_PARALLEL = {name: njit(cache=True, nogil=True, parallel=True)(
    _clone(fn, "_parallel")) for name, fn in K.KERNELS.items()}
_EMPTY = np.empty(0)


def num_threads():
    """numba.get_num_threads(). Once the threading layer is up, its getter
    is asked directly, without numba's launch check and its two locks:
    0.4 us a call against 2.5 (measured on a Zen 1), and a parallel call
    asks up to three times."""
    if getattr(_numba_parallel, "_is_initialized", False):
        get = getattr(_numba_parallel, "_get_num_threads", None)
        n = get() if get is not None else 0
        if n > 0:
            return n
    return numba.get_num_threads()


def use_parallel(n_elements):
    # parallel_allowed first: numba.get_num_threads() starts the threading
    # layer, which serial mode must never do
    return (_threading.parallel_allowed() and n_elements >= PARALLEL_MIN_ELEMENTS
            and num_threads() > 1)


class _launch:
    """``with _launch(n) as kern:`` gives the kernel table for a problem
    of n elements: the parallel builds when worth it and the threading
    guards allow it (see _threading), else the serial builds."""

    __slots__ = ("kern", "held")

    def __init__(self, n_elements):
        if n_elements < PARALLEL_MIN_ELEMENTS:  # tiny calls: no more checks
            self.held = False
            self.kern = _SERIAL
            return
        self.held = use_parallel(n_elements) and _threading.acquire()
        self.kern = _PARALLEL if self.held else _SERIAL

    def __enter__(self):
        return self.kern

    def __exit__(self, *exc):
        if self.held:
            _threading.release()


def _split_rows(R, L):
    """Split rows into chunks when one task per row would leave threads
    idle: fewer rows than a balanced multiple of the thread count, and rows
    long enough to be worth cutting."""
    T = num_threads()
    if L < 2 * CHUNK:
        return False
    return R / (T * math.ceil(R / T)) < 0.9


def _tile_rows(R, L, kern, nbytes=None):
    """Rows per task of the whole-row kernels, so that a tile is still in
    cache for its output pass, and at least 4 tasks per thread in the
    parallel build. Measured on 2 threads, interleaved runs:

    * layer_norm_rows (rows of more than SHORT_ROW elements, and RMSNorm):
      rows of up to 1024 elements in tiles of ~1K elements, longer rows in
      tiles of up to 16K. On data that does not fit the caches (2**25
      float32 elements) ~1K tiles took 0.76-0.86x the time of 16K tiles for
      L = 64..1024 and were even with them in cache, but a row at a time
      was 1.16x slower at L = 2048.
    * short_rows (LayerNorm, L <= SHORT_ROW; nbytes = x.nbytes): tiles of
      ~4K elements when x is at most IN_CACHE_BYTES, else ~1K. Its cost per
      tile (two calls) favours long tiles in cache ((8, 128, 768): 4K tiles
      0.91x the time of layer_norm_rows, 1K tiles 1.03x), but out of cache
      tiles of several rows of 768 or 1024 elements were 1.2-1.4x slower
      than one row per tile, while 64- and 256-element rows gain either way
      (0.66x and 0.85x with ~1K tiles)."""
    if nbytes is not None and L <= K.SHORT_ROW:
        tr = max(1, (4096 if nbytes <= IN_CACHE_BYTES else 1024) // L)
    elif L <= (1 << 10):
        tr = max(1, (1 << 10) // L)
    else:
        tr = max(1, (1 << 14) // L)
    if kern is _PARALLEL:
        tr = min(tr, max(1, R // (4 * num_threads())))
    return tr


# Inputs up to this size are taken to stay in the caches between a tile's
# statistics and its output pass (x and y: 16 MiB, half of the 32 MiB L3
# of the Zen 4 it was measured on); see _tile_rows. On a Zen 1 with an
# 8 MiB L3, 2 MiB instead changed nothing measurable ((8, 128, 768),
# (16, 128, 768), (4096, 64), (32768, 64): 0.99-1.02).
IN_CACHE_BYTES = 8 << 20


def _rows_kernel(L):
    return "short_rows" if L <= K.SHORT_ROW else "layer_norm_rows"


def _n_chunks(L):
    return max(1, -(-L // CHUNK))


def _split_row_stats(kern, x, R, L, eps):
    """Row statistics with each row cut into chunks shared across threads;
    the merge is serial and in chunk order (see merge_rows)."""
    nk = _n_chunks(L)
    part = np.empty((R * nk, 2))
    shift, dmean, rstd = np.empty(R), np.empty(R), np.empty(R)
    kern["chunk_moments"](x, R, L, nk, R, part)
    _SERIAL["merge_rows"](x, part, R, L, nk, eps, shift, dmean, rstd)
    return shift, dmean, rstd


def _pair(w, b):
    """Absent parameters as empty arrays of the present one's dtype."""
    if w is not None and b is not None:
        return w, b
    like = w if w is not None else b
    empty = _EMPTY if like is None else like[:0]
    return (empty if w is None else w), (empty if b is None else b)


def _last_level_cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """The size of the largest data cache of CPU 0 as Linux reports it, or
    None where it does not (another OS, a container hiding sysfs)."""
    best = None
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    for name in entries:
        if not name.startswith("index"):
            continue
        try:
            with open(os.path.join(root, name, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(root, name, "size")) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit() and int(digits) > 0:
            best = max(best or 0, int(digits) * scale)
    return best


# The last-level cache the streaming-store thresholds are taken from; where
# it cannot be read, 32 MiB, the L3 of the Zen 4 machine the thresholds
# were first measured on.
LLC_REPORTED = _last_level_cache_bytes()
LLC_BYTES = LLC_REPORTED or (32 << 20)
# From this input size on, outputs of whole rows are written with streaming
# stores (see _stream): x and y together no longer fit the last-level cache.
NT_MIN_BYTES = LLC_BYTES // 2


def _stream(x, y, L, split=False, one_pass=False):
    """Whether the output pass over rows (or segments) of L elements should
    use streaming stores (_kernels.NT_LANES): from NT_MIN_BYTES (half the
    last-level cache) for whole rows, from the whole cache when x is read
    again for the output (split rows) or only once (BatchNorm inference).
    Measured, 2 threads, float32, interleaved against plain stores (time
    ratios), on a Zen 4 with a 32 MiB L3:

    * whole rows or groups (the statistics, then the output while the row
      is in cache): (512, 4096) LayerNorm 1.25 (8 MiB), (1024, 4096) 0.78
      (16 MiB), (16, 1024, 4096) 0.70, RMSNorm (16, 512, 4096) 0.54,
      GroupNorm (8, 256, 64, 64) 0.71, (32, 64, 56, 56) 0.85, InstanceNorm
      (8, 64, 128, 128) 0.73; rows of 256..1024 elements 1.3-2.0, as the
      per-row setup of the aligned vectors does not pay;
    * split rows (x read again for the output): 1.2 at 16 MiB, 0.93 at
      32 MiB, 0.89 at 64 MiB;
    * BatchNorm inference (one pass, no statistics): 1.48 at 25 MiB, where
      plain stores keep part of y in the 32 MiB L3 between calls.

    On a Zen 1 with an 8 MiB L3 (victim cache): whole rows, LayerNorm
    (128, 4096) 1.00 (2 MiB), GroupNorm (2, 64, 64, 64) 0.94 (2 MiB),
    LayerNorm (256, 4096) 0.77 and GroupNorm (4, 64, 64, 64) 0.74 (4 MiB),
    LayerNorm (512, 4096) 0.93 and GroupNorm (8, 64, 64, 64) 0.84 (8 MiB);
    split rows 0.86 at 2 MiB, 0.82 at 4 MiB, 0.80 at 8 MiB, InstanceNorm
    (1, 3, 1024, 1024) 0.84 (12 MiB); BatchNorm inference 0.77 at 24 MiB.
    """
    big = 2 * NT_MIN_BYTES if (split or one_pass) else NT_MIN_BYTES
    if not (x.nbytes >= big and L > K.SHORT_ROW and x.dtype.itemsize >= 4):
        return False
    # y a few dozen bytes past x modulo 4 KiB (4K aliasing, see _buffers):
    # streaming stores then stall the loads of x far more than plain stores
    # do. Zen 1, (32, 64, 56, 56) float32, time plain / streaming: y 16
    # bytes past x, BatchNorm 4.8 / 11.7 ms, GroupNorm 7.5 / 14.8 ms; 64
    # bytes, 5.0 / 6.6 and 8.3 / 9.7; from 128 bytes on (and at 0, in
    # place) streaming is the faster, 0.73-0.95x.
    apart = (_address(y) - _address(x)) % 4096
    return not 0 < apart < ALIASED_BYTES


# y this many bytes past x (modulo 4 KiB) or fewer takes plain stores.
ALIASED_BYTES = 128


def _address(a):
    return a.__array_interface__["data"][0]


def layer_norm(x, y, R, L, w, b, mode, eps):
    """Returns per-row (shift, mean of x - shift, rstd), float64 (R,)."""
    w, b = _pair(w, b)
    nt = 4 if mode in (0, 3) else 0  # the modes that can stream
    with _launch(R * L) as kern:
        if kern is _PARALLEL and _split_rows(R, L):
            shift, dmean, rstd = _split_row_stats(kern, x, R, L, eps)
            kern["apply_rows"](x, y, R, L, _n_chunks(L), shift, dmean, rstd,
                               w, b, mode | (nt * _stream(x, y, L, split=True)))
        else:
            shift, dmean, rstd = np.empty(R), np.empty(R), np.empty(R)
            kern[_rows_kernel(L)](x, y, R, L,
                                  _tile_rows(R, L, kern, x.nbytes), w, b,
                                  mode | (nt * _stream(x, y, L)), eps, shift,
                                  dmean, rstd)
    return shift, dmean, rstd


def small_layer_norm(x, y, R, L, w, b, mode, eps):
    """layer_norm for fewer than PARALLEL_MIN_ELEMENTS elements: the serial
    build, one task, statistics discarded (see _kernels.small_rows)."""
    if w is None or b is None:
        w, b = _pair(w, b)
    if L <= K.SHORT_ROW:
        _SERIAL["small_rows"](x, y, R, L, w, b, mode, eps)
    else:
        _SERIAL["layer_norm_rows"](x, y, R, L, R, w, b, mode, eps,
                                   np.empty(R), np.empty(R), np.empty(R))


def small_rms_norm(x, y, R, L, w, b, mode, eps):
    """rms_norm for fewer than PARALLEL_MIN_ELEMENTS elements: the serial
    build, one call (b is None; w, when given, in x's dtype)."""
    _SERIAL["rms_norm_rows"](x, y, R, L, _tile_rows(R, L, _SERIAL),
                             _EMPTY if w is None else w, mode, eps,
                             np.empty(R))


def rms_norm(x, y, R, L, w, mode, eps):
    w, empty = _pair(w, None)
    with _launch(R * L) as kern:
        if kern is _PARALLEL and _split_rows(R, L):
            nk = _n_chunks(L)
            part = np.empty((R * nk, 1))
            rstd = np.empty(R)
            zeros = np.zeros(R)
            kern["chunk_sumsq"](x, R, L, nk, part)
            _SERIAL["merge_rows_sumsq"](x, part, R, L, nk, eps, rstd)
            kern["apply_rows"](x, y, R, L, nk, zeros, zeros, rstd, w,
                               empty, mode)
        else:
            kern["rms_norm_rows"](x, y, R, L, _tile_rows(R, L, kern), w,
                                  mode | (4 * _stream(x, y, L)),
                                  eps, np.empty(R))


def group_norm(x, y, N, C, G, S, w, b, eps):
    """x, y: flat (N, C, S) buffers; w, b: float64 (C,). Returns per-group
    (shift, mean of x - shift, rstd), float64 (N*G,)."""
    R = N * G
    Cg = C // G
    L = Cg * S
    with _launch(R * L) as kern:
        if kern is _PARALLEL and _split_rows(R, L):
            return _group_norm_split(kern, x, y, N, C, G, S, w, b, eps)
        shift, dmean, rstd = np.empty(R), np.empty(R), np.empty(R)
        if L <= K.SHORT_ROW:
            kern["group_norm_short"](x, y, R, G, Cg, S,
                                     _tile_rows(R, L, kern, x.nbytes), w, b,
                                     eps, shift, dmean, rstd)
        else:
            kern["group_norm_rows"](x, y, R, G, Cg, S, w, b, eps, shift,
                                    dmean, rstd, _stream(x, y, S))
    return shift, dmean, rstd


def _group_norm_split(kern, x, y, N, C, G, S, w, b, eps):
    Cg = C // G
    shift, dmean, rstd = _split_row_stats(kern, x, N * G, Cg * S, eps)
    # per (n, c) segment: the group's statistics, the channel's affine;
    # scale = rstd * w, as in group_norm_rows, so both plans agree
    g_of_c = np.arange(C) // Cg

    def per_segment(a):
        return np.ascontiguousarray(a.reshape(N, G)[:, g_of_c]).reshape(-1)

    scale = (rstd.reshape(N, G)[:, g_of_c] * w).reshape(-1)
    beta = np.ascontiguousarray(np.broadcast_to(b, (N, C))).reshape(-1)
    kern["apply_segments"](x, y, N * C, N * C, S, _n_chunks(S),
                           per_segment(shift), per_segment(dmean), scale, beta,
                           _stream(x, y, S, split=True))
    return shift, dmean, rstd


def _folded(dmean, scale, beta):
    """nhwc_apply's constant term beta - dmean*scale (see
    _kernels._apply_elementwise)."""
    return beta - dmean * scale


def _nhwc_block_size(N, S, C):
    """Positions per channels-last block: ~64K elements, so that the cost
    of a block's setup (per-channel shifts and accumulators, the per-group
    sums) is spread thin (4x faster than 4K-element blocks), still cache
    resident for float64's second pass, and at least 8 blocks in all to
    share among threads."""
    return max(1, min(S, (1 << 16) // C, -(-(N * S) // 8)))


def group_norm_nhwc(x, y, N, C, G, S, w, b, eps):
    """group_norm on channels-last flat (N, S, C) buffers; same returns."""
    B = _nhwc_block_size(N, S, C)
    nb = -(-S // B)
    part = np.empty((N * nb * G, 2))
    shift, dmean, rstd = np.empty(N * G), np.empty(N * G), np.empty(N * G)
    with _launch(N * C * S) as kern:
        kern["nhwc_moments"](x, N, S, C, G, B, nb, True, part)
        kern["nhwc_merge"](x, part, N, S, C, G, B, nb, eps, shift, dmean, rstd)
        # per (n, c): the group's statistics, the channel's affine;
        # scale = rstd * w, as in group_norm_rows
        g_of_c = np.arange(C) // (C // G)

        def per_channel(a):
            return np.ascontiguousarray(a.reshape(N, G)[:, g_of_c]).reshape(-1)

        scale = (rstd.reshape(N, G)[:, g_of_c] * w).reshape(-1)
        beta = np.ascontiguousarray(np.broadcast_to(b, (N, C))).reshape(-1)
        kern["nhwc_apply"](x, y, N, S, C, B, nb, C,
                           per_channel(shift), scale,
                           _folded(per_channel(dmean), scale, beta))
    return shift, dmean, rstd


def batch_norm_stats_nhwc(x, N, C, S):
    """batch_norm_stats on channels-last flat (N, S, C) buffers."""
    B = _nhwc_block_size(N, S, C)
    nb = -(-S // B)
    part = np.empty((N * nb * C, 2))
    shift, dmean, var = np.empty(C), np.empty(C), np.empty(C)
    with _launch(N * C * S) as kern:
        kern["nhwc_moments"](x, N, S, C, C, B, nb, False, part)
        kern["nhwc_merge_channels"](x, part, N, S, C, B, nb, shift, dmean, var)
    return shift, dmean, var


def affine_nhwc(x, y, N, C, S, shift, dmean, scale, beta):
    """segments_affine on channels-last flat (N, S, C) buffers."""
    B = _nhwc_block_size(N, S, C)
    with _launch(N * C * S) as kern:
        kern["nhwc_apply"](x, y, N, S, C, B, -(-S // B), 0,
                           shift, scale, _folded(dmean, scale, beta))


# One position per channel ((N, C), BatchNorm1d's input, or (N, C, 1, 1)):
# the C-contiguous buffer is channels-last data of one sample with N
# positions, which the channels-last kernels take in blocks of positions.
# The per-(n, c) kernels would take one segment per element: (4096, 1024)
# float32 on a 2-core Zen 1 took 89 ms (inference) and 279 ms (training),
# PyTorch 3.1 and 5.5; as channels-last data, 2.4-3.1 and 4.7-6.3.
#
# Per-(n, c) segments of a few positions cost more per call (the call, its
# slices, its vector epilogue: ~50-70 ns on a Zen 1) than per element. From
# ROWS_MIN_SAMPLES samples on, segments of at most SHORT_SEGMENT positions
# run as the N rows of C*S elements they are:
#
# * inference (segments_affine): each channel's parameters repeated S times,
#   the rows as nhwc_apply with one position per sample; the repeats cost at
#   most 3/32 of x. Measured, 2**20 float32 elements, C = 64, 2 threads,
#   segments -> rows: S = 2 12.6 -> 0.70 ms, S = 16 1.03 -> 0.42, S = 32
#   0.61 -> 0.40, S = 64 0.45 -> 0.39, S = 128 even; with few samples the
#   repeats cost more than they save ((8, 512, 49): 157 -> 222 us). The same
#   bits either way: both compute fma(x - shift, scale, beta - dmean*scale).
# * training statistics (batch_norm_stats, S <= COLUMN_SEGMENT and rows
#   of at most COLUMN_WIDTH elements): the C*S columns' moments as
#   channels-last data of one sample of N positions, each channel's S
#   columns then merged (_column_stats). The channels-last kernels' cost
#   per block grows with the row's width (per-column accumulators, a block
#   of fewer positions): measured, float32, 2 threads, 2**18 and 2**21
#   elements, time of segments / columns: S = 2: 7-19x (C = 16..256),
#   2.1-9.7x (C = 1024), 2.3-6.7x (C = 2048); S = 4: 2.6-9.3x (C = 16..256),
#   1.1-3.2x (C = 1024); S = 8: 1.1-3.8x (C = 16..256), 0.73-1.48 (C = 512),
#   0.39-0.84 (C = 1024); S = 16: 0.96-1.74 (C = 16..64), 0.47-0.88 (C =
#   256); S = 32: 0.46-1.16 (C = 16..64).
SHORT_SEGMENT = 32
ROWS_MIN_SAMPLES = 32
COLUMN_SEGMENT = 8
COLUMN_WIDTH = 4096


def batch_norm_stats(x, N, C, S):
    """Per-channel (shift, mean of x - shift, biased variance) over N
    segments of S elements."""
    if S == 1 or (S <= COLUMN_SEGMENT and C * S <= COLUMN_WIDTH
                  and N >= ROWS_MIN_SAMPLES):
        stats = _column_stats(x, N, C, S)
        if stats is not None:
            return stats
    nk = _n_chunks(S)
    part = np.empty((N * C * nk, 2))
    shift, dmean, var = np.empty(C), np.empty(C), np.empty(C)
    with _launch(N * C * S) as kern:
        kern["chunk_moments"](x, N * C, S, nk, C, part)
        kern["merge_columns"](x, part, N, C, S, nk, shift, dmean, var)
    return shift, dmean, var


def _column_stats(x, N, C, S):
    """batch_norm_stats from the moments of the C*S columns of x as an
    (N, C*S) matrix. The columns of a channel have N elements each, so
    their merge is the mean of the column means and the mean of the column
    variances plus the variance of the column means, in float64.

    None when a float64 channel's variance came out NaN or infinite from
    finite data (beyond ~1e154, where nhwc_merge_channels gives NaN):
    merge_columns then recomputes it on scaled data."""
    k, d, var = batch_norm_stats_nhwc(x, 1, C * S, N)
    with np.errstate(invalid="ignore", over="ignore"):
        if S > 1:
            k, d, var = k.reshape(C, S), d.reshape(C, S), var.reshape(C, S)
            # the column means relative to the channel's shift, its first
            # column's (x[0, c, 0], as merge_columns); for 32-bit data
            # k - k[:, :1] is exact in float64
            m = (k - k[:, :1]) + d
            d = m.mean(axis=1)
            var = var.mean(axis=1) + np.square(m - d[:, None]).mean(axis=1)
            k = np.ascontiguousarray(k[:, 0])
        if x.dtype == np.float64 and (~np.isfinite(var) & np.isfinite(d)).any():
            return None
    return k, d, var


def segments_affine(x, y, N, C, S, shift, dmean, scale, beta):
    """y = ((x - shift[c]) - dmean[c]) * scale[c] + beta[c] per channel."""
    if S == 1:  # one position per channel: see above
        affine_nhwc(x, y, 1, C, N, shift, dmean, scale, beta)
        return
    if S <= SHORT_SEGMENT and N >= ROWS_MIN_SAMPLES:
        c = _folded(dmean, scale, beta)
        with _launch(N * C * S) as kern:
            kern["nhwc_apply"](x, y, N, 1, C * S, 1, 1, 0, np.repeat(shift, S),
                               np.repeat(scale, S), np.repeat(c, S))
        return
    with _launch(N * C * S) as kern:
        kern["apply_segments"](x, y, N * C, C, S, _n_chunks(S), shift, dmean,
                               scale, beta,
                               _stream(x, y, min(S, CHUNK), one_pass=True))


def batch_norm_inference(x, y, N, C, S, rm, rv, w, b, eps):
    """segments_affine with the per-channel parameters formed from the
    running statistics and parameters as given (one float dtype, w and b
    empty when absent) by the serial batch_norm_fold kernel. False, with
    nothing written, where a channel's rv + eps is not > 0."""
    par = np.empty((4, C))
    if _SERIAL["batch_norm_fold"](rm, rv, w, b, eps, par):
        return False
    segments_affine(x, y, N, C, S, par[0], par[3], par[1], par[2])
    return True


def affine(x, y, a, b):
    """The benchmarks' speed-of-light kernel: y = a*x + b in x's dtype."""
    with _launch(x.size) as kern:
        kern["affine"](x, y, x.dtype.type(a), x.dtype.type(b))
