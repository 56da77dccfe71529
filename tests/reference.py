"""Plain float64 references for every norm, written for clarity, not speed.

Each function takes the same arguments as its numbanorm twin, computes in
float64 with the textbook two-pass formulas (mean, then the mean of squared
deviations), and returns float64 results. Tests round or compare as they need.
These functions share no code with numbanorm on purpose.
"""

import ml_dtypes
import numpy as np


# Computed in long double where the platform has one (80-bit on x86-64):
# plain float64 rounds a mean of ~1e4 by ~1e-12, as much as the float64
# accuracy bound itself. Results are returned as float64.
_WIDE = np.longdouble


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64).astype(_WIDE)


def _out(*arrays):
    r = tuple(None if a is None else np.asarray(a, dtype=np.float64)
              for a in arrays)
    return r if len(r) > 1 else r[0]


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    x = _f64(x)
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return _out(y, mean, rstd)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    x = _f64(x)
    n, c = x.shape[:2]
    g = x.reshape(n, num_groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = ((g - mean) * rstd).reshape(x.shape)
    cshape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * _f64(weight).reshape(cshape)
    if bias is not None:
        y = y + _f64(bias).reshape(cshape)
    return _out(y, mean.reshape(n, num_groups), rstd.reshape(n, num_groups))


def instance_norm(x, weight=None, bias=None, eps=1e-5):
    return group_norm(x, x.shape[1], weight, bias, eps)


def batch_norm(x, running_mean, running_var, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5):
    """Returns (y, new_running_mean, new_running_var); inputs are not modified."""
    x = _f64(x)
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    cshape = (1, c) + (1,) * (x.ndim - 2)
    rm = _f64(running_mean)
    rv = _f64(running_var)
    if training:
        count = x.size // c
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(cshape)) ** 2).mean(axis=axes)
        if rm is not None:
            rm = (1 - momentum) * rm + momentum * mean
        if rv is not None:
            rv = (1 - momentum) * rv + momentum * var * count / (count - 1)
    else:
        mean, var = rm, rv
    y = (x - mean.reshape(cshape)) / np.sqrt(var.reshape(cshape) + eps)
    if weight is not None:
        y = y * _f64(weight).reshape(cshape)
    if bias is not None:
        y = y + _f64(bias).reshape(cshape)
    return _out(y, rm, rv)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    if eps is None:
        eps = float(ml_dtypes.finfo(np.asarray(x).dtype).eps)
    x = _f64(x)
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    ms = (x ** 2).mean(axis=axes, keepdims=True)
    y = x / np.sqrt(ms + eps)
    if weight is not None:
        y = y * _f64(weight)
    return _out(y)


REFERENCES = {
    "layer_norm": layer_norm,
    "group_norm": group_norm,
    "instance_norm": instance_norm,
    "batch_norm": batch_norm,
    "rms_norm": rms_norm,
}
