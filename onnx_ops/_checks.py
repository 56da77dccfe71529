"""Argument checks shared by the builders and ``to_onnx``.

Each check raises TypeError for a wrong kind of value and ValueError for a
wrong value, with a message that names the argument and the shapes involved.
"""

import numbers

import numpy as np

from . import _opset


def check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32, float64 or float16, got {dtype!r}") from exc
    if dt not in _opset.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, float64 or float16, got {dt}")
    return dt


def check_input_shape(shape, argname="input_shape"):
    """A tuple of int (>= 0), str (symbolic) or None (unknown) entries."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"{argname} must be a sequence of int, str or None, got {shape!r}")
    out = []
    for i, d in enumerate(shape):
        if d is None or isinstance(d, str):
            out.append(d)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            if d < 0:
                raise ValueError(f"{argname}[{i}] = {d} is negative: {tuple(shape)}")
            out.append(int(d))
        else:
            raise TypeError(f"{argname}[{i}] must be an int, a str or None, got {d!r}")
    return tuple(out)


def check_eps(eps, argname="eps"):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{argname} must be a positive float, got {eps!r}")
    eps = float(eps)
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"{argname} must be positive and finite, got {eps!r}")
    return eps


def check_int(value, argname, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argname} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{argname} must be >= {minimum}, got {value}")
    return int(value)


def check_normalized_shape(normalized_shape, input_shape):
    """normalized_shape as a tuple; it must match the trailing dims of input_shape."""
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    if isinstance(normalized_shape, (str, bytes)) or not hasattr(normalized_shape, "__iter__"):
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    ns = tuple(check_int(d, "normalized_shape entries") for d in normalized_shape)
    if not ns:
        raise ValueError("normalized_shape must not be empty")
    k = len(ns)
    if k > len(input_shape):
        raise ValueError(
            f"normalized_shape {ns} has more dims than the input shape {tuple(input_shape)}"
        )
    trailing = tuple(input_shape[len(input_shape) - k:])
    for want, have in zip(ns, trailing):
        # A symbolic or unknown input dim is accepted: normalized_shape fixes it.
        if isinstance(have, int) and have != want:
            raise ValueError(
                f"normalized_shape {ns} does not match the trailing dims {trailing} "
                f"of the input shape {tuple(input_shape)}"
            )
    return ns


def check_param(value, argname, expected_shape, dtype, what):
    """A weight-like array: numeric, of ``expected_shape``, rounded to ``dtype``.

    Parameters are rounded to the model dtype once, here, so that the native
    operator (which needs them in that dtype) and the decomposition (which may
    compute in float32) use the same values.
    """
    if value is None:
        return None
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{argname} must be an array of numbers: {exc}") from exc
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{argname} must be an array of real numbers, got dtype {array.dtype}")
    expected_shape = tuple(expected_shape)
    if array.shape != expected_shape:
        raise ValueError(f"{argname} has shape {array.shape}, expected {expected_shape} ({what})")
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = array.astype(np.float64).astype(dtype)
    overflow = np.isfinite(array.astype(np.float64)) & ~np.isfinite(rounded)
    if overflow.any():
        raise ValueError(f"{argname} has values that overflow {np.dtype(dtype)}")
    return rounded


def check_channels(input_shape, op, min_rank):
    """The channel count (axis 1), which must be a known int."""
    if len(input_shape) < min_rank:
        layout = "(N, C)" if min_rank == 2 else "(N, C, D1, ...)"
        raise ValueError(
            f"{op} needs an input of rank >= {min_rank} {layout}, got input shape {tuple(input_shape)}"
        )
    channels = input_shape[1]
    if not isinstance(channels, int):
        raise ValueError(
            f"{op} needs a known channel count (axis 1) to size its parameters, "
            f"got input shape {tuple(input_shape)}"
        )
    return channels
