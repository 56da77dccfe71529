"""Public functions: validate, reduce to the row problems of _kernels.py,
hand over to _dispatch.py. Nothing here loops over data."""

import math
import numbers
import operator
import sys

import numpy as np

from . import _buffers, _dispatch

# The dtype the kernels see for each accepted input dtype: float16 and
# bfloat16 travel as their bit patterns (see _kernels._load/_store).
# bfloat16 joins once ml_dtypes is imported (see _bf16).
_KERNEL_VIEW = {
    np.dtype(np.float32): None,
    np.dtype(np.float64): None,
    np.dtype(np.float16): np.dtype(np.uint16),
}


def _bf16():
    """ml_dtypes' bfloat16 dtype, or None while ml_dtypes is not imported.
    No bfloat16 array can exist before it is, so numbanorm does not import
    it itself: ml_dtypes 0.7.0 takes 1.3 s to import (0.6.0: 8 ms;
    measured on a 2-core Zen 1), more than the rest of numbanorm."""
    mod = sys.modules.get("ml_dtypes")
    if mod is None:
        return None
    dt = np.dtype(mod.bfloat16)
    _KERNEL_VIEW.setdefault(dt, np.dtype(np.int16))
    return dt


def _is_bf16(dt):
    # (not dt == _bf16(): numpy takes dtype == None for dtype == float64)
    bf = _bf16()
    return bf is not None and dt == bf


def _finfo(dt):
    """np.finfo, or ml_dtypes.finfo for bfloat16."""
    if _is_bf16(dt):
        return sys.modules["ml_dtypes"].finfo(dt)
    return np.finfo(dt)


class _Exporter:
    """Presents an array interface; np.asarray of it is a view whose base
    keeps the exporter, and through it the original array, alive."""
    __slots__ = ("__array_interface__", "_base")


def _writeable(a):
    """a itself, or for a read-only array a writeable view of its memory.

    numba types a read-only array apart from a writeable one and compiles
    every kernel again for it (seconds per signature, and outside what
    `numbanorm compile` prepares), although no kernel writes its inputs.
    The view is for the kernels only, which never write through it: the
    caller's array and its flags are untouched."""
    if a.flags.writeable:
        return a
    e = _Exporter()
    iface = dict(a.__array_interface__)
    iface["data"] = (iface["data"][0], False)
    e.__array_interface__ = iface
    e._base = a
    return np.asarray(e)


# ---------------------------------------------------------------------------
# validation helpers


def _check_x(x, fn, min_ndim, what):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: x must be a numpy.ndarray, got {type(x).__name__}")
    return _check_dtype_ndim(x, fn, min_ndim, what)


def _native(dt):
    return dt.newbyteorder("=") if dt.byteorder not in "=|" else dt


def _check_dtype_ndim(x, fn, min_ndim, what):
    """x's dtype in native byte order, if supported, and its rank (x: any
    array-like with .dtype, .ndim and .shape, numpy or Dask)."""
    dt = _native(x.dtype)
    if dt not in _KERNEL_VIEW and not _is_bf16(dt):
        raise TypeError(
            f"{fn}: x has dtype {x.dtype}; supported: float32, float64, "
            "float16, bfloat16")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{fn}: x must have shape {what} (at least {min_ndim} dims), "
            f"got shape {x.shape}")
    return dt


def _check_groups(num_groups, shape, fn):
    """num_groups as an int > 0 dividing C = shape[1]."""
    if type(num_groups) is int:  # the common case, fast
        pass
    elif isinstance(num_groups, (bool, np.bool_)) or not isinstance(
            num_groups, (numbers.Integral, np.integer)):
        raise TypeError(f"{fn}: num_groups must be an int, got {num_groups!r}")
    G = int(num_groups)
    C = shape[1]
    if G <= 0 or C % G:
        raise ValueError(
            f"{fn}: num_groups={G} must be > 0 and divide the number of "
            f"channels C={C} (x has shape {tuple(shape)})")
    return G


def _check_training(running_mean, running_var, momentum, C, count, shape,
                    fn):
    """Training BatchNorm's arguments: running statistics (optional) that
    can be updated in place, a finite momentum, more than one value per
    channel."""
    for name, r in (("running_mean", running_mean),
                    ("running_var", running_var)):
        if r is None:
            continue
        if not isinstance(r, np.ndarray) or r.dtype.kind != "f":
            raise TypeError(
                f"{fn}: {name} must be a float numpy.ndarray (it is "
                f"updated in place when training=True), got "
                f"{type(r).__name__}")
        if r.shape != (C,):
            raise ValueError(
                f"{fn}: {name} must have shape ({C},) (one per channel), "
                f"got shape {r.shape}")
        if not r.flags.writeable:
            raise ValueError(f"{fn}: {name} is read-only but training=True "
                             "updates it in place")
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(
            momentum, numbers.Real) or not math.isfinite(momentum):
        raise ValueError(f"{fn}: momentum must be a finite real number, "
                         f"got {momentum!r}")
    if count <= 1:
        raise ValueError(
            f"{fn}: training needs more than 1 value per channel, x has "
            f"shape {tuple(shape)}")


def _check_eps(eps, fn):
    if type(eps) is float and 0.0 < eps < math.inf:  # the common case, fast
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a real number, got {eps!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0.0):
        raise ValueError(f"{fn}: eps must be finite and > 0, got {eps!r}")
    return eps


def _normalized_shape(normalized_shape, x, fn):
    if type(normalized_shape) is int and x.ndim and \
            x.shape[-1] == normalized_shape:  # the common case, fast
        return (normalized_shape,)
    if isinstance(normalized_shape, (numbers.Integral, np.integer)) and \
            not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    else:
        try:
            shape = tuple(operator.index(d) for d in normalized_shape)
        except TypeError:
            raise TypeError(
                f"{fn}: normalized_shape must be an int or a tuple of ints, "
                f"got {normalized_shape!r}") from None
    if len(shape) == 0:
        raise ValueError(f"{fn}: normalized_shape must not be empty")
    if len(shape) > x.ndim or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(
            f"{fn}: normalized_shape {shape} does not match the trailing "
            f"dims of x with shape {x.shape}")
    return shape


def _param(p, name, shape, fn, what):
    """A weight/bias/running statistic as a C-contiguous float64 copy."""
    if p is None:
        return None
    return _writeable(np.ascontiguousarray(
        _checked_param(p, name, shape, fn, what), dtype=np.float64).ravel())


def _checked_param(p, name, shape, fn, what):
    a = np.asarray(p)
    if a.dtype.kind not in "fiu" and not _is_bf16(a.dtype):
        raise TypeError(f"{fn}: {name} must be a real array, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(
            f"{fn}: {name} must have shape {tuple(shape)} ({what}), "
            f"got shape {a.shape}")
    return a


# Below this many rows, LayerNorm/RMSNorm weights of x's dtype are used as
# they are; from it on, they are widened to float64 once per call.
_WIDEN_PARAMS_MIN_ROWS = 8


def _trailing_params(params, shape, fn, dt, rows):
    """LayerNorm/RMSNorm weight and bias (None where absent), flat, both of
    one dtype (to bound the compiled signatures): float64 copies, or, for
    fewer than _WIDEN_PARAMS_MIN_ROWS rows and weights already of x's
    dtype, the weights themselves. Widening once costs a pass over the
    weights, as much as a row: nothing next to many rows, whose output pass
    then reads float64 weights instead of converting them per element (15%
    faster on in-cache rows), but a doubling of the traffic of one long row."""
    if rows >= _WIDEN_PARAMS_MIN_ROWS:
        return [None if p is None else _param(p, name, shape, fn, "normalized_shape")
                for name, p in params]
    if all(p is None or (type(p) is np.ndarray and p.dtype == dt
                         and p.shape == shape and p.flags.c_contiguous)
           for _, p in params):  # the common case, fast
        return [None if p is None else _flat(p, dt) for _, p in params]
    arrays = [None if p is None else _checked_param(p, name, shape, fn,
                                                    "normalized_shape")
              for name, p in params]
    given = [a for a in arrays if a is not None]
    if given and all(a.dtype == dt and a.flags.c_contiguous for a in given):
        return [None if a is None else _flat(a, dt) for a in arrays]
    return [None if a is None
            else _writeable(np.ascontiguousarray(a, np.float64).reshape(-1))
            for a in arrays]


def _flat(a, dt):
    """A C-contiguous array of dtype dt as the flat buffer the kernels take
    (float16/bfloat16 as their bit patterns)."""
    flat = a.reshape(-1)
    view = _KERNEL_VIEW[dt]
    # the view first: the array interface of a bfloat16 array has no
    # bfloat16 in it (numpy would rebuild it as raw 2-byte voids)
    return _writeable(flat if view is None else flat.view(view))


def _check_out(out, x, dt, fn, channels_last_ok=False):
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{fn}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(
            f"{fn}: out has shape {out.shape}, expected x's shape {x.shape}")
    if out.dtype != dt:
        raise ValueError(
            f"{fn}: out has dtype {out.dtype}, expected {dt} (x's dtype, "
            "native byte order)")
    if not out.flags.c_contiguous and not (
            channels_last_ok and _channels_last_view(out) is not None):
        raise ValueError(
            f"{fn}: out must be C-contiguous"
            + (" or channels-last" if channels_last_ok else "")
            + f" (strides {out.strides} for shape {out.shape})")
    if not out.flags.writeable:
        raise ValueError(f"{fn}: out is read-only")


def _prepare(x, dt, out):
    """Returns (y, kx, ky): the result array and the flat buffers the kernel
    reads and writes.

    A C-contiguous native x is read where it is. Any other x (a slice, a
    transpose, a channels-last view, another byte order) is first copied into
    the output buffer and normalized in place there, so no temporary as large
    as x is made.
    """
    direct = x.flags.c_contiguous and x.dtype == dt
    if out is None and direct and _KERNEL_VIEW[dt] is None:  # fast path
        y = _buffers.empty(x.shape, dt, like=x)
        return y, _writeable(x.reshape(-1)), y.reshape(-1)
    if out is not None and out is not x and direct and \
            np.may_share_memory(out, x) and not (
                out.__array_interface__["data"][0]
                == x.__array_interface__["data"][0]):
        # out partially overlaps x: read from a private copy of x
        x = x.copy()
    y = _buffers.empty(x.shape, dt, like=x if direct else None) \
        if out is None else out
    ky = _flat(y, dt)
    if direct:
        return y, _flat(x, dt), ky
    np.copyto(y, x, casting="unsafe")
    return y, ky, ky


def _channels_last_view(a):
    """The C-contiguous (N, *spatial, C) view of a channels-last
    (N, C, *spatial) array (an NCHW view of an NHWC buffer), else None."""
    if a.ndim < 3 or a.flags.c_contiguous:
        return None
    t = np.moveaxis(a, 1, -1)
    return t if t.flags.c_contiguous else None


def _is_channels_last(x, dt):
    return x.dtype == dt and _channels_last_view(x) is not None


def _prepare_channels_last(x, dt, out):
    """(y, kx, ky) over the channels-last buffers when x is channels-last
    and out is None or channels-last too, else None. The result keeps x's
    layout, so the data are read and written where they are."""
    xt = _channels_last_view(x) if x.dtype == dt else None
    if xt is None:
        return None
    if out is None:
        yt = _buffers.empty(xt.shape, dt, like=xt)
        y = np.moveaxis(yt, -1, 1)
    else:
        yt = _channels_last_view(out)
        if yt is None:
            return None
        y = out
        if np.may_share_memory(out, x) and not (
                out.__array_interface__["data"][0]
                == x.__array_interface__["data"][0]
                and out.strides == x.strides):
            xt = xt.copy()  # partial overlap: read from a private copy
    return y, _flat(xt, dt), _flat(yt, dt)


def _unaliased(params, out):
    """The parameters, each copied if it shares memory with out (e.g. a
    weight that is a view of x, normalized with out=x): x may be copied
    into out, and the kernels read the parameters while out is written."""
    if out is None:
        return list(params)
    return [p if p is None or not np.may_share_memory(p, out) else p.copy()
            for p in params]


def _stats_out(a, dtype, shape):
    # rstd of a near-constant row can exceed float32's range: inf, quietly
    with np.errstate(over="ignore"):
        return a.astype(dtype).reshape(shape)


def _rows(x, shape):
    """(axis, R, L): x as R rows of the L elements of its trailing `shape`."""
    axis = x.ndim - len(shape)
    return axis, math.prod(x.shape[:axis]), math.prod(shape)


def _stats_dtype(dt):
    return np.float64 if dt == np.float64 else np.float32


def _affine_mode(w, b):
    return (1 if w is not None else 0) | (2 if b is not None else 0)


# ---------------------------------------------------------------------------
# public functions


_SMALL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# rms_norm's default eps for the plain path (np.finfo costs ~2 us a call)
_MACHINE_EPS = {dt: float(np.finfo(dt).eps) for dt in _SMALL_DTYPES}


def _plain_rows(kernel, x, L, w, b, eps, out):
    """The common LayerNorm or RMSNorm call on C-contiguous float32/float64 x
    with parameters of its dtype (kernel: _dispatch.small_layer_norm or
    small_rms_norm, which runs it below 2**15 elements; b None for
    RMSNorm), with the checks it needs and no more; None when anything is
    unusual, and the general path then validates and explains. Fewer than
    2**15 elements (a few rows: inference on one token or one sample) run
    one serial kernel, where a Python-level detour costs more than the
    kernel (each attribute read below costs ~0.1 us on a 2-core Zen 1, the
    kernel ~2 us); larger calls skip ~25-30 us of the general path's
    validation, a third of a (8, 4096) LayerNorm."""
    if type(L) is tuple and len(L) == 1:
        L = L[0]
    if not (type(x) is np.ndarray and type(L) is int and type(eps) is float
            and 0.0 < eps < math.inf):
        return None
    dt = x.dtype
    n = x.size
    if not (dt in _SMALL_DTYPES and n and x.ndim and x.shape[-1] == L
            and (f := x.flags).c_contiguous
            and f.writeable):  # read-only arrays: see _writeable
        return None
    mode = 0
    if w is not None:
        if not (type(w) is np.ndarray and (w.dtype is dt or w.dtype == dt)
                and w.shape == (L,) and (f := w.flags).c_contiguous
                and f.writeable):
            return None
        mode = 1
    if b is not None:
        if not (type(b) is np.ndarray and (b.dtype is dt or b.dtype == dt)
                and b.shape == (L,) and (f := b.flags).c_contiguous
                and f.writeable):
            return None
        mode |= 2
    small = n < _dispatch.PARALLEL_MIN_ELEMENTS
    if out is None:
        y = np.empty(x.shape, dt) if small else _buffers.empty(x.shape, dt, like=x)
    elif (type(out) is np.ndarray and out.dtype == dt and out.shape == x.shape
          and out.flags.c_contiguous and out.flags.writeable
          and (out is x or not np.may_share_memory(out, x))
          and (w is None or not np.may_share_memory(w, out))
          and (b is None or not np.may_share_memory(b, out))):
        y = out
    else:
        return None
    R = n // L
    # ravel: a view of a C-contiguous array, and cheaper than reshape(-1)
    if small:
        kernel(x.ravel(), y.ravel(), R, L, w, b, mode, eps)
        return y
    if R >= _WIDEN_PARAMS_MIN_ROWS:  # as _trailing_params
        w = None if w is None else w.astype(np.float64)
        b = None if b is None else b.astype(np.float64)
    if kernel is _dispatch.small_rms_norm:
        _dispatch.rms_norm(x.ravel(), y.ravel(), R, L, w, mode, eps)
    else:
        _dispatch.layer_norm(x.ravel(), y.ravel(), R, L, w, b, mode, eps)
    return y


def _plain_channels(x, eps, out):
    """_plain_rows's checks for the per-channel norms (GroupNorm,
    InstanceNorm, BatchNorm inference), at any size: (y, N, C, S) for a
    non-empty C-contiguous float32/float64 x, else None."""
    if not (type(x) is np.ndarray and type(eps) is float
            and 0.0 < eps < math.inf):
        return None
    dt = x.dtype
    if not (dt in _SMALL_DTYPES and x.size and x.ndim >= 2
            and (f := x.flags).c_contiguous and f.writeable):
        return None
    if out is None:
        y = _buffers.empty(x.shape, dt, like=x)
    elif (type(out) is np.ndarray and out.dtype == dt and out.shape == x.shape
          and out.flags.c_contiguous and out.flags.writeable
          and (out is x or not np.may_share_memory(out, x))):
        y = out
    else:
        return None
    N, C = x.shape[:2]
    return y, N, C, x.size // (N * C)


def _plain_channel_param(p, C):
    """A per-channel parameter for the plain path: a float64 copy (so it
    cannot alias the output) of a float32/float64 array of shape (C,), else
    None."""
    if type(p) is np.ndarray and p.dtype in _SMALL_DTYPES and p.shape == (C,):
        return p.astype(np.float64)
    return None


def _plain_group_norm(x, G, weight, bias, eps, out):
    """group_norm's (and instance_norm's, G = C) common call (C-contiguous
    float32/float64 x, parameters absent or float32/float64 arrays), with
    the checks it needs and no more, as _plain_rows; None when anything is
    unusual. The general path's Python costs ~25 us a call on a 2-core Zen
    1: 2-4x the kernel's time on small inputs, and still ~0.3x on the
    (1, 256, 14, 14) of a CNN's inference."""
    call = _plain_channels(x, eps, out)
    if call is None:
        return None
    y, N, C, S = call
    if not (type(G) is int and 0 < G and C % G == 0):
        return None
    w = np.ones(C) if weight is None else _plain_channel_param(weight, C)
    b = np.zeros(C) if bias is None else _plain_channel_param(bias, C)
    if w is None or b is None:
        return None
    _dispatch.group_norm(x.ravel(), y.ravel(), N, C, G, S, w, b, eps)
    return y


def batch_norm_scale(var_eps, w):
    """BatchNorm's per-channel scale, 1 / sqrt(var + eps) * weight, in
    float64 (var_eps: var + eps; w: float64 or None); every path of
    numbanorm.batch_norm and numbanorm.dask forms it here, so they agree
    bit for bit."""
    scale = 1.0 / np.sqrt(var_eps)
    if w is not None:
        scale *= w
    return scale


def _kernel_params(params, dt, C):
    """Whether each of params (None: absent) is an array a kernel takes as
    it is: dtype dt, shape (C,), C-contiguous, writeable and aligned (a
    read-only or unaligned array is another numba signature, compiled at
    its first use)."""
    for p in params:
        if p is not None and not (
                type(p) is np.ndarray and p.dtype == dt and p.shape == (C,)
                and (f := p.flags).c_contiguous and f.writeable and f.aligned):
            return False
    return True


def _plain_batch_norm(x, running_mean, running_var, weight, bias, eps, out):
    """batch_norm's common inference call, as _plain_group_norm: the
    per-channel scale as the general path takes it, 1 / sqrt(var + eps) *
    weight in float64, when every var + eps is > 0 (else the general path,
    which turns the others into NaN channels without a warning). With the
    statistics and parameters in one dtype, a kernel forms them
    (_dispatch.batch_norm_inference)."""
    call = _plain_channels(x, eps, out)
    if call is None:
        return None
    y, N, C, S = call
    rm = running_mean
    if (type(rm) is np.ndarray and rm.dtype in _SMALL_DTYPES
            and running_var is not None
            and _kernel_params((rm, running_var, weight, bias), rm.dtype, C)):
        empty = rm[:0]
        if _dispatch.batch_norm_inference(
                x.ravel(), y.ravel(), N, C, S, running_mean, running_var,
                empty if weight is None else weight,
                empty if bias is None else bias, eps):
            return y
        return None  # a channel's var + eps is not > 0: see above
    k = _plain_channel_param(running_mean, C)
    var = _plain_channel_param(running_var, C)
    if k is None or var is None:
        return None
    var += eps
    if not var.min() > 0.0:
        return None
    w = None
    if weight is not None:
        w = _plain_channel_param(weight, C)
        if w is None:
            return None
    scale = batch_norm_scale(var, w)
    beta = np.zeros(C) if bias is None else _plain_channel_param(bias, C)
    if beta is None:
        return None
    _dispatch.segments_affine(x.ravel(), y.ravel(), N, C, S, k, np.zeros(C),
                              scale, beta)
    return y


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *,
               out=None, return_stats=False):
    """Layer normalization over the trailing ``normalized_shape`` dims.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with the mean and
    the biased variance taken per sample over the trailing dims, as
    ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    x : numpy.ndarray
        float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``), any
        layout; shape ``(*, *normalized_shape)``.
    normalized_shape : int or tuple of int
        Must equal the trailing dims of ``x``.
    weight, bias : array_like, optional
        Shape ``normalized_shape``.
    eps : float
        Added to the variance; finite and > 0.
    out : numpy.ndarray, optional
        C-contiguous array of ``x``'s shape and dtype to write into;
        ``out=x`` normalizes in place.
    return_stats : bool
        Also return ``mean`` and ``rstd = 1/sqrt(var + eps)``, shaped as ONNX
        LayerNormalization's optional outputs: ``x.shape[:axis]`` followed by
        ones. float32 for 16- and 32-bit inputs, float64 for float64.

    Returns
    -------
    y or (y, mean, rstd)

    Notes
    -----
    Statistics and the output are computed in float64 and rounded once (see
    ``numbanorm._kernels``): float32 results are within a few ulps of a
    float64 computation also for data with a large offset.
    """
    if not return_stats:
        y = _plain_rows(_dispatch.small_layer_norm, x, normalized_shape,
                        weight, bias, eps, out)
        if y is not None:
            return y
    fn = "layer_norm"
    dt = _check_x(x, fn, 1, "(*, *normalized_shape)")
    shape = _normalized_shape(normalized_shape, x, fn)
    axis, R, L = _rows(x, shape)
    w, b = _trailing_params((("weight", weight), ("bias", bias)), shape, fn,
                            dt, R)
    eps = _check_eps(eps, fn)
    _check_out(out, x, dt, fn)
    w, b = _unaliased((w, b), out)
    y, kx, ky = _prepare(x, dt, out)
    if x.size:
        k, d, rstd = _dispatch.layer_norm(kx, ky, R, L, w, b,
                                          _affine_mode(w, b), eps)
        if not return_stats:
            return y
        mean = k + d
    else:
        mean = rstd = np.full(R, np.nan)
    if not return_stats:
        return y
    sshape = x.shape[:axis] + (1,) * len(shape)
    sd = _stats_dtype(dt)
    return y, _stats_out(mean, sd, sshape), _stats_out(rstd, sd, sshape)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None):
    """Root-mean-square normalization over the trailing dims.

    ``y = x / sqrt(mean(x**2) + eps) * weight``, as
    ``torch.nn.functional.rms_norm``; ``eps=None`` uses the machine epsilon
    of ``x``'s dtype. Arguments as in :func:`layer_norm`.
    """
    y = _plain_rows(_dispatch.small_rms_norm, x, normalized_shape, weight, None,
                    _MACHINE_EPS.get(getattr(x, "dtype", None))
                    if eps is None else eps, out)
    if y is not None:
        return y
    fn = "rms_norm"
    dt = _check_x(x, fn, 1, "(*, *normalized_shape)")
    shape = _normalized_shape(normalized_shape, x, fn)
    _, R, L = _rows(x, shape)
    w, = _trailing_params((("weight", weight),), shape, fn, dt, R)
    if eps is None:
        eps = float(_finfo(dt).eps)
    eps = _check_eps(eps, fn)
    _check_out(out, x, dt, fn)
    w, = _unaliased((w,), out)
    y, kx, ky = _prepare(x, dt, out)
    if x.size:
        _dispatch.rms_norm(kx, ky, R, L, w, _affine_mode(w, None), eps)
    return y


def _channel_norm(fn, x, dt, G, weight, bias, eps, out, return_stats):
    N, C = x.shape[:2]
    w = _param(weight, "weight", (C,), fn, "one per channel")
    b = _param(bias, "bias", (C,), fn, "one per channel")
    eps = _check_eps(eps, fn)
    _check_out(out, x, dt, fn, channels_last_ok=_is_channels_last(x, dt))
    S = math.prod(x.shape[2:])
    w, b = _unaliased((w, b), out)
    cl = _prepare_channels_last(x, dt, out)
    y, kx, ky = cl if cl is not None else _prepare(x, dt, out)
    if x.size:
        run = _dispatch.group_norm if cl is None else _dispatch.group_norm_nhwc
        k, d, rstd = run(
            kx, ky, N, C, G, S, np.ones(C) if w is None else w,
            np.zeros(C) if b is None else b, eps)
        if not return_stats:
            return y
        mean = k + d
    else:
        mean = rstd = np.full(N * G, np.nan)
    if not return_stats:
        return y
    sd = _stats_dtype(dt)
    return y, _stats_out(mean, sd, (N, G)), _stats_out(rstd, sd, (N, G))


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, out=None,
               return_stats=False):
    """Group normalization: statistics per sample and per group of
    ``C // num_groups`` consecutive channels, over those channels' spatial
    positions; per-channel affine. As ``torch.nn.functional.group_norm``.

    Parameters
    ----------
    x : numpy.ndarray
        Shape ``(N, C, *spatial)`` or ``(N, C)``; dtypes as :func:`layer_norm`.
    num_groups : int
        > 0 and dividing ``C``. 1 is LayerNorm over ``(C, *spatial)``; ``C``
        is InstanceNorm.
    weight, bias : array_like, optional
        Shape ``(C,)``.
    eps, out :
        As :func:`layer_norm`.
    return_stats : bool
        Also return ``mean`` and ``rstd``, shape ``(N, num_groups)``.
    """
    if not return_stats:
        y = _plain_group_norm(x, num_groups, weight, bias, eps, out)
        if y is not None:
            return y
    fn = "group_norm"
    dt = _check_x(x, fn, 2, "(N, C, *spatial)")
    G = _check_groups(num_groups, x.shape, fn)
    return _channel_norm(fn, x, dt, G, weight, bias, eps, out, return_stats)


def instance_norm(x, weight=None, bias=None, eps=1e-5, *, out=None,
                  return_stats=False):
    """Instance normalization: statistics per sample and channel over the
    spatial positions; as ``torch.nn.functional.instance_norm`` with
    ``use_input_stats=True``.

    ``x`` has shape ``(N, C, *spatial)`` with at least one spatial dim (a
    layer with one neuron per channel has nothing to normalize over).
    ``return_stats`` gives ``mean`` and ``rstd`` of shape ``(N, C)``. Other
    arguments as :func:`group_norm`.
    """
    if not return_stats and type(x) is np.ndarray and x.ndim >= 3:
        y = _plain_group_norm(x, x.shape[1], weight, bias, eps, out)
        if y is not None:
            return y
    fn = "instance_norm"
    dt = _check_x(x, fn, 3, "(N, C, *spatial) with at least one spatial dim")
    return _channel_norm(fn, x, dt, x.shape[1], weight, bias, eps, out,
                         return_stats)


def batch_norm(x, running_mean, running_var, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5, *, out=None):
    """Batch normalization per channel (axis 1), as
    ``torch.nn.functional.batch_norm``.

    With ``training=False`` the output uses ``running_mean`` and
    ``running_var``. With ``training=True`` it uses the batch's own mean and
    biased variance, and updates ``running_mean`` / ``running_var`` in place
    (when given): ``r = (1 - momentum) * r + momentum * s``, with the
    unbiased variance for ``running_var``.

    Parameters
    ----------
    x : numpy.ndarray
        Shape ``(N, C, *spatial)`` or ``(N, C)``.
    running_mean, running_var : numpy.ndarray or None
        Shape ``(C,)``. Required when ``training=False``; when
        ``training=True`` they must be writable float arrays, or None.
    weight, bias : array_like, optional
        Shape ``(C,)``.
    momentum : float
        Weight of the batch statistics in the running update.
    eps, out :
        As :func:`layer_norm`.
    """
    if not training:
        y = _plain_batch_norm(x, running_mean, running_var, weight, bias, eps,
                              out)
        if y is not None:
            return y
    fn = "batch_norm"
    dt = _check_x(x, fn, 2, "(N, C, *spatial)")
    N, C = x.shape[:2]
    S = math.prod(x.shape[2:])
    w = _param(weight, "weight", (C,), fn, "one per channel")
    b = _param(bias, "bias", (C,), fn, "one per channel")
    eps = _check_eps(eps, fn)
    training = bool(training)
    if training:
        _check_training(running_mean, running_var, momentum, C, N * S,
                        x.shape, fn)
        rm = rv = None
    else:
        if running_mean is None or running_var is None:
            raise ValueError(
                f"{fn}: running_mean and running_var are required when "
                "training=False")
        rm = _param(running_mean, "running_mean", (C,), fn, "one per channel")
        rv = _param(running_var, "running_var", (C,), fn, "one per channel")
    _check_out(out, x, dt, fn, channels_last_ok=_is_channels_last(x, dt))
    w, b, rm, rv = _unaliased((w, b, rm, rv), out)
    cl = _prepare_channels_last(x, dt, out)
    y, kx, ky = cl if cl is not None else _prepare(x, dt, out)
    if training:
        stats = _dispatch.batch_norm_stats if cl is None else \
            _dispatch.batch_norm_stats_nhwc
        k, d, var = stats(kx, N, C, S)
        mean = k + d
    else:
        k, d, var = rm, np.zeros(C), rv
    with np.errstate(invalid="ignore", divide="ignore"):
        # a negative running_var gives a NaN channel, without a warning
        scale = batch_norm_scale(var + eps, w)
    beta = np.zeros(C) if b is None else b
    if x.size:
        run = _dispatch.segments_affine if cl is None else _dispatch.affine_nhwc
        run(kx, ky, N, C, S, k, d, scale, beta)
    if training:
        m = float(momentum)
        if running_mean is not None:
            running_mean[...] = (1.0 - m) * running_mean + m * mean
        if running_var is not None:
            n = N * S
            running_var[...] = (1.0 - m) * running_var + m * var * (n / (n - 1))
    return y
