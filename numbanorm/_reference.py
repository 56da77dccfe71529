"""Plain float64 (long double where available) references used by the
command's self-check. The test suite keeps its own, separate copy."""

import numpy as np

_WIDE = np.longdouble


def _w(a):
    return None if a is None else np.asarray(a, dtype=np.float64).astype(_WIDE)


def _moments(x, axes):
    mean = x.mean(axis=axes, keepdims=True)
    return mean, ((x - mean) ** 2).mean(axis=axes, keepdims=True)


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = y * _w(weight).reshape(shape)
    if bias is not None:
        y = y + _w(bias).reshape(shape)
    return y.astype(np.float64)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = _w(x)
    k = 1 if np.ndim(normalized_shape) == 0 else len(normalized_shape)
    mean, var = _moments(x, tuple(range(x.ndim - k, x.ndim)))
    return _affine((x - mean) / np.sqrt(var + eps), weight, bias, x.shape[x.ndim - k:])


def rms_norm(x, normalized_shape, weight=None, eps=1e-5):
    x = _w(x)
    k = 1 if np.ndim(normalized_shape) == 0 else len(normalized_shape)
    ms = (x ** 2).mean(axis=tuple(range(x.ndim - k, x.ndim)), keepdims=True)
    return _affine(x / np.sqrt(ms + eps), weight, None, x.shape[x.ndim - k:])


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    x = _w(x)
    g = x.reshape(x.shape[0], num_groups, -1)
    mean, var = _moments(g, (2,))
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return _affine(y, weight, bias, (1, x.shape[1]) + (1,) * (x.ndim - 2))


def instance_norm(x, weight=None, bias=None, eps=1e-5):
    return group_norm(x, x.shape[1], weight, bias, eps)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """Inference mode."""
    x = _w(x)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    y = (x - _w(running_mean).reshape(shape)) / np.sqrt(_w(running_var).reshape(shape) + eps)
    return _affine(y, weight, bias, shape)
