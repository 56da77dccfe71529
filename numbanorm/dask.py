"""numbanorm on Dask arrays: the five norms as lazy task graphs.

``pip install numbanorm[dask]`` installs the dependencies (``dask[array]``,
and ``distributed`` to run the graphs on a cluster).

Each function takes a ``dask.array.Array`` and returns one, without
computing anything (except :func:`batch_norm` with ``training=True`` and
running statistics to update, see there). The graphs run on any Dask
scheduler: threads, processes or a ``distributed`` cluster.

* Per-sample norms (:func:`layer_norm`, :func:`rms_norm`, :func:`group_norm`,
  :func:`instance_norm`) run the numpy function on every block. A block must
  hold whole rows: the normalized dims (for GroupNorm and InstanceNorm the
  spatial dims, and channels in whole groups) must not be split across
  blocks; if they are, ``x`` is rechunked and a :class:`RechunkWarning` names
  the dims. The kernels' results do not depend on how rows are shared out,
  so the output is bit-identical to the numpy function on the whole array.
* :func:`batch_norm` in training mode reduces per-block moments (count,
  mean, M2 per channel, float64) with Chan et al.'s pairwise update in a
  tree whose shape and merge order are fixed by the chunking (the result
  does not depend on the scheduler), then normalizes every block.

Each block runs numbanorm on one numba thread: Dask already runs blocks in
parallel, and nested thread pools would oversubscribe the cores. Set the
Dask config key ``numbanorm.threads-per-block`` (read when the graph is
built) to give each block more threads, e.g. for a few large blocks on the
threaded scheduler.
"""

import functools
import math
import numbers
import operator
import warnings

try:
    import dask
    import dask.array as da
    from dask.utils import parse_bytes
except ImportError as e:  # dask is an optional dependency
    raise ImportError(
        "numbanorm.dask needs Dask, an optional dependency: "
        "pip install numbanorm[dask]") from e

import numba
import numpy as np

from . import _api, _dispatch, _threading

__all__ = [
    "layer_norm",
    "rms_norm",
    "group_norm",
    "instance_norm",
    "batch_norm",
    "RechunkWarning",
]


class RechunkWarning(UserWarning):
    """``x`` was chunked across dims that a norm needs whole inside each
    block, and was rechunked (which moves data between blocks). Rechunk
    ``x`` yourself, once, to avoid it."""


# Per-channel partial moments of BatchNorm's training statistics: element
# count, shift k, mean of x - k, and the sum of squared deviations M2.
_MOMENTS = np.dtype([("n", "f8"), ("k", "f8"), ("d", "f8"), ("m2", "f8")])


# ---------------------------------------------------------------------------
# validation and chunking


def _check_x(x, fn, min_ndim, what):
    if not isinstance(x, da.Array):
        raise TypeError(
            f"{fn}: x must be a dask.array.Array, got {type(x).__name__} "
            f"(use numbanorm.{fn} for numpy arrays)")
    if any(math.isnan(s) for s in x.shape):
        raise ValueError(
            f"{fn}: x has unknown chunk sizes (shape {x.shape}); call "
            "x.compute_chunk_sizes() first")
    return _api._check_dtype_ndim(x, fn, min_ndim, what)


def _param(p, name, shape, fn, what):
    """A weight/bias/running statistic, validated as the numpy API does, as
    a C-contiguous copy in its own dtype (the blocks then get what the numpy
    function would get), or None.

    A copy: the graph must not see later in-place changes to the caller's
    array (e.g. an optimizer step between building y and computing it).
    """
    if p is None:
        return None
    if isinstance(p, da.Array):
        # np.asarray would compute it behind the caller's back
        raise TypeError(
            f"{fn}: {name} must be a numpy array or array_like, got a "
            f"dask.array.Array (shape {p.shape}); call .compute() on it first")
    return np.array(_api._checked_param(p, name, shape, fn, what), order="C")


def _graph_param(a, chunks):
    """A parameter as a Dask array: one graph key per block, rather than a
    copy inside every task."""
    return None if a is None else da.from_array(a, chunks=chunks)


def _threads():
    n = dask.config.get("numbanorm.threads-per-block", 1)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(
            "dask config numbanorm.threads-per-block must be an int >= 1, "
            f"got {n!r}")
    return int(n)


def _whole(x, axes, fn, what, fixed=(), stacklevel=3):
    """x rechunked so that every axis in `axes` is one block, with a
    RechunkWarning naming them (`stacklevel` points it at the caller of the
    public function); x itself when they already are.

    The other axes keep their chunks, unless the merged blocks would exceed
    Dask's ``array.chunk-size``: then those not in `fixed` are chosen by
    Dask ("auto") to stay near it.
    """
    split = [ax for ax in axes if len(x.chunks[ax]) > 1]
    if not split:
        return x
    new = {ax: -1 for ax in axes}
    merged = x.dtype.itemsize * math.prod(
        x.shape[ax] if ax in axes else max(x.chunks[ax], default=0)
        for ax in range(x.ndim))
    if merged > parse_bytes(dask.config.get("array.chunk-size")):
        new.update({ax: "auto" for ax in range(x.ndim)
                    if ax not in axes and ax not in fixed})
    warnings.warn(RechunkWarning(
        f"{fn}: x (shape {x.shape}, chunks {x.chunks}) is split across "
        f"blocks along dim(s) {tuple(split)}, but {what} must be whole in "
        f"every block; rechunking with x.rechunk({new}). Rechunk x "
        "beforehand to avoid this."), stacklevel=stacklevel)
    return x.rechunk(new)


# ---------------------------------------------------------------------------
# block functions (module level, so that they pickle by reference)


def _with_threads(threads, fn, *args, **kwargs):
    # numba's thread count is per calling thread: setting it here does not
    # affect other tasks running concurrently in the same process. Serial
    # mode must not touch it (that would start numba's threading layer).
    if not _threading.parallel_allowed():
        return fn(*args, **kwargs)
    prev = numba.get_num_threads()
    n = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    if n == prev:
        return fn(*args, **kwargs)
    numba.set_num_threads(n)
    try:
        return fn(*args, **kwargs)
    finally:
        numba.set_num_threads(prev)


def _layer_norm_block(xb, wb, bb, *, normalized_shape, eps, return_stats,
                      threads):
    return _with_threads(threads, _api.layer_norm, xb, normalized_shape, wb,
                         bb, eps, return_stats=return_stats)


def _rms_norm_block(xb, wb, *, normalized_shape, eps, threads):
    return _with_threads(threads, _api.rms_norm, xb, normalized_shape, wb,
                         eps)


def _group_norm_block(xb, wb, bb, *, group_size, eps, return_stats, threads):
    # stats of shape (n, g) padded with ones to x's ndim, so that they can
    # be picked out of the tuple with x's block structure
    r = _with_threads(threads, _api.group_norm, xb, xb.shape[1] // group_size,
                      wb, bb, eps, return_stats=return_stats)
    if not return_stats:
        return r
    pad = (1,) * (xb.ndim - 2)
    y, mean, rstd = r
    return y, mean.reshape(mean.shape + pad), rstd.reshape(rstd.shape + pad)


def _batch_norm_eval_block(xb, rmb, rvb, wb, bb, *, eps, threads):
    return _with_threads(threads, _api.batch_norm, xb, rmb, rvb, wb, bb,
                         training=False, eps=eps)


def _kernel_view(xb):
    """A block as the flat C-contiguous buffer the kernels read (float16
    and bfloat16 as their bit patterns, see _api._KERNEL_VIEW)."""
    dt = _api._native(xb.dtype)
    return _api._flat(np.ascontiguousarray(xb, dtype=dt), dt)


def _channel_moments(xb):
    """Per-channel moments of one ``(N, C, *spatial)`` block, in float64:
    (count, shift k, mean of x - k, M2), each of shape (C,). The count is
    the same for every channel, N * prod(spatial).

    numbanorm's BatchNorm statistics (``_dispatch.batch_norm_stats``:
    moments shifted by the channel's first element) give
    k, the mean of x - k and the biased variance; M2 = variance * count is
    off by one float64 rounding, far below float32 or float64 output
    accuracy.
    """
    N, C = xb.shape[:2]
    S = math.prod(xb.shape[2:])
    n = N * S
    if n == 0:
        z = np.zeros(C)
        return z, z, z, z
    kx = _kernel_view(xb)
    k, d, var = _dispatch.batch_norm_stats(kx, N, C, S)
    return np.full(C, float(n)), k, d, var * n


def _moments_chunk(xb, axis, keepdims, threads=1):
    """da.reduction's chunk: the block's partial moments, shaped as a
    keepdims reduction over `axis` (every axis but the channels)."""
    C = xb.shape[1]
    out = np.zeros((1, C) + (1,) * (xb.ndim - 2), _MOMENTS)
    flat = out.reshape(C)
    n, k, d, m2 = _with_threads(threads, _channel_moments, xb)
    flat["n"], flat["k"], flat["d"], flat["m2"] = n, k, d, m2
    return out


def _merge_moments(a, b):
    """Chan, Golub & LeVeque's pairwise update of (n, mean, M2) per channel,
    as numbanorm's kernels merge chunks. The merged partial keeps a's shift
    and re-expresses b's mean as (k_b - k_a) + d_b: k_b - k_a is exact in
    float64 for float32 or 16-bit shifts within a factor of 2**29 of each
    other (float64 shifts: within a factor of 2), so the mean of data with
    a large offset is not rounded at the offset's magnitude. Empty partials
    are the identity."""
    out = np.empty_like(a)
    n = a["n"] + b["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = ((b["k"] - a["k"]) + b["d"]) - a["d"]
        f = b["n"] / n
        d = a["d"] + delta * f
        m2 = a["m2"] + b["m2"] + delta * delta * a["n"] * f
    a_empty = a["n"] == 0
    b_empty = b["n"] == 0
    out["n"] = n
    out["k"] = np.where(a_empty, b["k"], a["k"])
    out["d"] = np.where(a_empty, b["d"], np.where(b_empty, a["d"], d))
    out["m2"] = np.where(a_empty, b["m2"], np.where(b_empty, a["m2"], m2))
    return out


def _moments_combine(parts, axis, keepdims):
    """Merges the partials of a group of blocks, in block-index order (C
    order over the reduced axes), so the tree gives the same bits on every
    run and scheduler."""
    C = parts.shape[1]
    rows = np.moveaxis(parts, 1, -1).reshape(-1, C)
    acc = rows[0].copy()
    for r in rows[1:]:
        acc = _merge_moments(acc, r)
    if keepdims:
        return acc.reshape((1, C) + (1,) * (parts.ndim - 2))
    return acc


def _batch_moments(x, threads):
    """Per-channel moments of x as a (C,) Dask array of _MOMENTS, chunked
    as x's channels: a tree reduction over every other axis."""
    return da.reduction(
        x, functools.partial(_moments_chunk, threads=threads),
        _moments_combine, combine=_moments_combine,
        axis=tuple(ax for ax in range(x.ndim) if ax != 1), keepdims=False,
        dtype=_MOMENTS, concatenate=True, meta=np.empty((0,), _MOMENTS),
        name="batch_norm-moments")


def _batch_norm_train_block(xb, st, wb, bb, *, eps, threads):
    """The normalize pass with the batch statistics `st` (this block's
    channels), in the same float64 operations as numbanorm.batch_norm."""
    var = st["m2"] / st["n"]
    w = None if wb is None else np.asarray(wb, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = _api.batch_norm_scale(var + eps, w)
    beta = np.zeros(xb.shape[1]) if bb is None else \
        np.ascontiguousarray(bb, np.float64)
    dt = _api._native(xb.dtype)
    y, kx, ky = _api._prepare(xb, dt, None)
    if xb.size:
        N, C = xb.shape[:2]
        S = math.prod(xb.shape[2:])
        _with_threads(threads, _dispatch.segments_affine, kx, ky, N, C, S,
                      np.ascontiguousarray(st["k"]),
                      np.ascontiguousarray(st["d"]), scale, beta)
    return y


# ---------------------------------------------------------------------------
# graph builders


def _map(func, x, params, out_meta, nstats=0, stats_chunks=None,
         stats_meta=None, **kwargs):
    """func(x_block, *param_blocks, **kwargs) on every block of x.

    params: (dask array or None, the x axes it spans). With nstats > 0 func
    returns (y, stat_1, ...); the stats' blocks have x's ndim and
    `stats_chunks`. Computing y and its stats together (dask.compute(y,
    mean, rstd)) runs func once per block.
    """
    ind = tuple(range(x.ndim))
    args = [x, ind]
    for p, axes in params:
        args += [p, None] if p is None else [p, axes]
    if not nstats:
        return da.blockwise(func, ind, *args, meta=out_meta, **kwargs)
    tmp = da.blockwise(func, ind, *args,
                       meta=np.empty((0,) * x.ndim, object), **kwargs)
    y = tmp.map_blocks(operator.getitem, 0, meta=out_meta)
    stats = [tmp.map_blocks(operator.getitem, i + 1, chunks=stats_chunks,
                            meta=stats_meta) for i in range(nstats)]
    return (y, *stats)


def _meta(ndim, dt):
    return np.empty((0,) * ndim, dt)


# ---------------------------------------------------------------------------
# public functions


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *,
               return_stats=False):
    """Layer normalization of a Dask array over its trailing
    ``normalized_shape`` dims; see :func:`numbanorm.layer_norm`.

    Parameters
    ----------
    x : dask.array.Array
        float32, float64, float16 or bfloat16; shape
        ``(*, *normalized_shape)``. The normalized dims must each be one
        block (chunk the leading dims as you like); if they are not, ``x``
        is rechunked with a :class:`RechunkWarning`.
    normalized_shape : int or tuple of int
        Must equal the trailing dims of ``x``.
    weight, bias : array_like, optional
        numpy arrays of shape ``normalized_shape``; copied into the graph
        when it is built (later changes to them do not affect ``y``).
    eps : float
        Added to the variance; finite and > 0.
    return_stats : bool
        Also return ``mean`` and ``rstd = 1/sqrt(var + eps)`` as Dask arrays
        of shape ``x.shape[:axis]`` followed by ones (as
        :func:`numbanorm.layer_norm`), chunked as ``x``'s leading dims.

    Returns
    -------
    y or (y, mean, rstd) : dask.array.Array
        Lazy; ``y`` has ``x``'s shape and (native byte order) dtype and is
        bit-identical to ``numbanorm.layer_norm`` on the computed ``x``.
        Compute ``y`` and the stats together (``dask.compute(y, mean,
        rstd)``) to run the kernel once per block.

    Raises
    ------
    TypeError, ValueError
        When the graph is built, for the same bad inputs as the numpy
        function (with the same messages), for a non-Dask ``x``, and for
        unknown chunk sizes.
    """
    fn = "layer_norm"
    dt = _check_x(x, fn, 1, "(*, *normalized_shape)")
    shape = _api._normalized_shape(normalized_shape, x, fn)
    axis = x.ndim - len(shape)
    trailing = tuple(range(axis, x.ndim))
    w = _param(weight, "weight", shape, fn, "normalized_shape")
    b = _param(bias, "bias", shape, fn, "normalized_shape")
    eps = _api._check_eps(eps, fn)
    x = _whole(x, trailing, fn, "the normalized dims")
    w, b = _graph_param(w, -1), _graph_param(b, -1)
    stats_chunks = x.chunks[:axis] + ((1,),) * len(shape)
    return _map(_layer_norm_block, x, [(w, trailing), (b, trailing)],
                _meta(x.ndim, dt), 2 if return_stats else 0, stats_chunks,
                _meta(x.ndim, _api._stats_dtype(dt)),
                normalized_shape=shape, eps=eps,
                return_stats=bool(return_stats), threads=_threads())


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """Root-mean-square normalization of a Dask array over its trailing
    dims; see :func:`numbanorm.rms_norm`.

    Parameters
    ----------
    x : dask.array.Array
        As :func:`layer_norm`.
    normalized_shape : int or tuple of int
        Must equal the trailing dims of ``x``.
    weight : array_like, optional
        Shape ``normalized_shape``; copied into the graph.
    eps : float, optional
        Added to the mean of squares; None is the machine epsilon of ``x``'s
        dtype.

    Returns
    -------
    y : dask.array.Array
        Lazy, bit-identical to ``numbanorm.rms_norm`` on the computed ``x``.
    """
    fn = "rms_norm"
    dt = _check_x(x, fn, 1, "(*, *normalized_shape)")
    shape = _api._normalized_shape(normalized_shape, x, fn)
    trailing = tuple(range(x.ndim - len(shape), x.ndim))
    w = _param(weight, "weight", shape, fn, "normalized_shape")
    if eps is not None:
        eps = _api._check_eps(eps, fn)
    x = _whole(x, trailing, fn, "the normalized dims")
    w = _graph_param(w, -1)
    return _map(_rms_norm_block, x, [(w, trailing)], _meta(x.ndim, dt),
                normalized_shape=shape, eps=eps, threads=_threads())


def _channel_norm(fn, x, dt, G, weight, bias, eps, return_stats):
    C = x.shape[1]
    Cg = C // G
    spatial = tuple(range(2, x.ndim))
    w = _param(weight, "weight", (C,), fn, "one per channel")
    b = _param(bias, "bias", (C,), fn, "one per channel")
    eps = _api._check_eps(eps, fn)
    # blocks may cut the channels between groups (each block then holds
    # whole groups), never inside one
    axes = spatial
    if any(c % Cg for c in x.chunks[1]):
        axes = (1,) + spatial
    x = _whole(x, axes, fn,
               "the spatial dims" + (f" and groups of {Cg} channels"
                                     if G < C else ""), fixed=(1,),
               stacklevel=4)
    w = _graph_param(w, (x.chunks[1],))
    b = _graph_param(b, (x.chunks[1],))
    stats_chunks = (x.chunks[0], tuple(c // Cg for c in x.chunks[1])) + \
        ((1,),) * len(spatial)
    r = _map(_group_norm_block, x, [(w, (1,)), (b, (1,))], _meta(x.ndim, dt),
             2 if return_stats else 0, stats_chunks,
             _meta(x.ndim, _api._stats_dtype(dt)), group_size=Cg, eps=eps,
             return_stats=bool(return_stats), threads=_threads())
    if not return_stats:
        return r
    y, mean, rstd = r
    idx = (slice(None), slice(None)) + (0,) * len(spatial)
    return y, mean[idx], rstd[idx]


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *,
               return_stats=False):
    """Group normalization of a Dask array; see :func:`numbanorm.group_norm`.

    Parameters
    ----------
    x : dask.array.Array
        Shape ``(N, C, *spatial)`` or ``(N, C)``. The spatial dims must each
        be one block and channel blocks must hold whole groups (multiples
        of ``C // num_groups`` channels); otherwise ``x`` is rechunked with
        a :class:`RechunkWarning`. The batch dim may be chunked freely.
    num_groups : int
        > 0 and dividing ``C``.
    weight, bias : array_like, optional
        numpy arrays of shape ``(C,)``; copied into the graph.
    eps : float
        Added to the variance; finite and > 0.
    return_stats : bool
        Also return ``mean`` and ``rstd``, Dask arrays of shape
        ``(N, num_groups)``.

    Returns
    -------
    y or (y, mean, rstd) : dask.array.Array
        Lazy, bit-identical to ``numbanorm.group_norm`` on the computed
        ``x``.
    """
    fn = "group_norm"
    dt = _check_x(x, fn, 2, "(N, C, *spatial)")
    G = _api._check_groups(num_groups, x.shape, fn)
    return _channel_norm(fn, x, dt, G, weight, bias, eps, return_stats)


def instance_norm(x, weight=None, bias=None, eps=1e-5, *, return_stats=False):
    """Instance normalization of a Dask array; see
    :func:`numbanorm.instance_norm`.

    Parameters
    ----------
    x : dask.array.Array
        Shape ``(N, C, *spatial)`` with at least one spatial dim. The spatial
        dims must each be one block (otherwise ``x`` is rechunked with a
        :class:`RechunkWarning`); batch and channels may be chunked freely.
    weight, bias : array_like, optional
        numpy arrays of shape ``(C,)``; copied into the graph.
    eps : float
        Added to the variance; finite and > 0.
    return_stats : bool
        Also return ``mean`` and ``rstd``, Dask arrays of shape ``(N, C)``.

    Returns
    -------
    y or (y, mean, rstd) : dask.array.Array
        Lazy, bit-identical to ``numbanorm.instance_norm`` on the computed
        ``x``.
    """
    fn = "instance_norm"
    dt = _check_x(x, fn, 3, "(N, C, *spatial) with at least one spatial dim")
    return _channel_norm(fn, x, dt, x.shape[1], weight, bias, eps,
                         return_stats)


def batch_norm(x, running_mean, running_var, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5):
    """Batch normalization of a Dask array per channel (axis 1); see
    :func:`numbanorm.batch_norm`.

    Any chunking works: the statistics are per channel, and blocks may
    split every dim.

    Parameters
    ----------
    x : dask.array.Array
        Shape ``(N, C, *spatial)`` or ``(N, C)``.
    running_mean, running_var : numpy.ndarray or None
        Shape ``(C,)``. Required when ``training=False`` (then array_like,
        copied into the graph).
        When ``training=True`` they are updated in place (see Notes) and
        must be writable float numpy arrays, or None.
    weight, bias : array_like, optional
        numpy arrays of shape ``(C,)``; copied into the graph.
    training : bool
        Normalize with the batch's own statistics and update the running
        ones, instead of normalizing with the running statistics.
    momentum : float
        Weight of the batch statistics in the running update,
        ``r = (1 - momentum) * r + momentum * s`` (the unbiased variance for
        ``running_var``), as :func:`numbanorm.batch_norm`.
    eps : float
        Added to the variance; finite and > 0.

    Returns
    -------
    y : dask.array.Array
        Lazy, same shape and (native byte order) dtype as ``x``.

    Notes
    -----
    When the running statistics are updated: with ``training=True`` and
    ``running_mean`` or ``running_var`` given, the call computes the batch
    statistics right away (one reading pass over ``x`` with the scheduler
    ``dask.compute`` would use, e.g. the active ``distributed.Client``),
    updates the running statistics in place, and returns before the
    normalize pass has run: ``y`` is lazy, with the statistics embedded as
    constants. So the running statistics are updated exactly once per
    call, by the time it returns, as with :func:`numbanorm.batch_norm`,
    whichever scheduler runs the graph (on a cluster a task could not
    update the caller's arrays) and however often ``y`` is computed. If
    computing the statistics fails, they are left unchanged. ``x``'s graph
    runs twice, once per pass; persist ``x`` first if it is expensive.

    With ``training=True`` and both running statistics None, nothing is
    computed: the statistics are a reduction inside ``y``'s graph.

    The statistics are per-block moments (count, mean, M2 per channel in
    float64, from numbanorm's kernels) merged with Chan et al.'s pairwise
    update in a tree (``dask.array.reduction``) whose shape and merge order
    depend only on the chunking. float32 outputs agree with
    ``numbanorm.batch_norm`` on the whole array within a few units of
    2**-23 relative; the difference is the order of the merges.
    """
    fn = "batch_norm"
    dt = _check_x(x, fn, 2, "(N, C, *spatial)")
    N, C = x.shape[:2]
    S = math.prod(x.shape[2:])
    cchunks = (x.chunks[1],)
    w = _graph_param(_param(weight, "weight", (C,), fn, "one per channel"),
                     cchunks)
    b = _graph_param(_param(bias, "bias", (C,), fn, "one per channel"),
                     cchunks)
    eps = _api._check_eps(eps, fn)
    threads = _threads()
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(
                f"{fn}: running_mean and running_var are required when "
                "training=False")
        rm = _graph_param(_param(running_mean, "running_mean", (C,), fn,
                                 "one per channel"), cchunks)
        rv = _graph_param(_param(running_var, "running_var", (C,), fn,
                                 "one per channel"), cchunks)
        return _map(_batch_norm_eval_block, x,
                    [(rm, (1,)), (rv, (1,)), (w, (1,)), (b, (1,))],
                    _meta(x.ndim, dt), eps=eps, threads=threads)

    _api._check_training(running_mean, running_var, momentum, C, N * S,
                         x.shape, fn)
    stats = _batch_moments(x, threads)
    if running_mean is not None or running_var is not None:
        (st,) = dask.compute(stats)
        m = float(momentum)
        if running_mean is not None:
            mean = st["k"] + st["d"]
            running_mean[...] = (1.0 - m) * running_mean + m * mean
        if running_var is not None:
            n = N * S
            var = st["m2"] / st["n"]
            running_var[...] = (1.0 - m) * running_var + \
                m * var * (n / (n - 1))
        stats = da.from_array(st, chunks=cchunks)
    return _map(_batch_norm_train_block, x,
                [(stats, (1,)), (w, (1,)), (b, (1,))], _meta(x.ndim, dt),
                eps=eps, threads=threads)
