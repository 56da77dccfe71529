"""Error measures and tolerances of the ``numbanorm`` command.

Two bounds, both elementwise against a float64 reference ``r``:

- numbanorm's contract (the README's accuracy section): float32 within
  ``4 * 2**-23 * max(1, |r|)``, float64 within ``1e-12 * max(1, |r|)``,
  float16 and bfloat16 within 1 ulp of ``r`` in the output dtype.
- the bound a peer runtime (onnxruntime, onnx.reference) is held to:
  ``64 * eps * max(1, |r|)`` for float32 and float64 (16 times numbanorm's
  float32 bound, the bound of ``benchmarks/onnx_support_table.py``), and
  ``4 * eps * max(1, |r|)`` for float16 and bfloat16, where ``eps`` is the
  dtype's machine epsilon. A two-pass variance computed in float32 stays
  inside both (onnx_ops's decompositions in onnxruntime: up to ~20 ulps in
  float32, 0.5 in float16); a variance lost to cancellation or to float16
  overflow does not.

Errors are reported in ulps of ``max(1, |r|)``, the unit of these bounds:
``|y - r| / (eps * max(1, |r|))``. A result correctly rounded from ``r`` is
within 0.5 of them in every dtype.

A reference value that is not finite after rounding to the output dtype (a
NaN or Inf in the input, an output beyond the dtype's range) must be matched
exactly; a non-finite result where the reference is finite is an error.
"""

import math
from typing import NamedTuple

import ml_dtypes
import numba
import numpy as np

# the contract's float32 factor and the peers' factors, in units of eps*max(1, |r|)
_CONTRACT_F32 = 4.0
_CONTRACT_F64_REL = 1e-12
_PEER_WIDE = 64.0
_PEER_HALF = 4.0


class Error(NamedTuple):
    """The error of one result against the reference.

    ``max_abs`` and ``ulps`` (in units of ``eps * max(1, |r|)``) are taken
    over the finite results whose reference is finite; they are NaN when
    ``nonfinite`` > 0. ``nonfinite`` counts the elements that are not finite
    where the reference is (or the reverse, or a different NaN/Inf).
    ``within`` tells whether every element is inside the bound that was
    asked for.
    """

    max_abs: float
    ulps: float
    nonfinite: int
    within: bool


def eps(dtype):
    """Machine epsilon (2**-mantissa bits) of a float dtype, bfloat16 included.

    Parameters
    ----------
    dtype : dtype

    Returns
    -------
    float
    """
    return float(ml_dtypes.finfo(dtype).eps)


def describe_bounds():
    """The two bounds in words, ulps as in :class:`Error`.

    Returns
    -------
    (str, str)
        numbanorm's bound and the runtimes' bound.
    """
    return (
        "float32 4 ulps, float64 1e-12*max(1,|y|), float16/bfloat16 1 ulp of y",
        "float32/float64 64 ulps, float16/bfloat16 4 ulps",
    )


class Reference:
    """A float64 reference prepared for comparing results of one output dtype.

    Parameters
    ----------
    y_ref : array_like
        The reference values (float64 or wider).
    dtype : dtype
        The output dtype of the results to compare (float16, bfloat16,
        float32 or float64).
    """

    def __init__(self, y_ref, dtype):
        self.dtype = np.dtype(dtype)
        self.values = np.ascontiguousarray(y_ref, dtype=np.float64)
        self._rounded = None

    def rounded(self):
        """The reference rounded to the output dtype (as float64)."""
        if self._rounded is None:
            with np.errstate(over="ignore", invalid="ignore"):
                self._rounded = self.values.astype(self.dtype).astype(np.float64)
        return self._rounded


@numba.njit(cache=True, nogil=True)
def _errors(y, r, eps, nmant, minexp, want_ulps):
    """One pass over a result and its reference: (max |y - r|, the largest
    error in units of eps*max(1, |r|), in ulps of r when asked, and the
    number of pairs where either is not finite)."""
    max_abs = 0.0
    max_units = 0.0
    max_ulps = 0.0
    special = 0
    for i in range(y.size):
        yi = np.float64(y[i])
        ri = r[i]
        if not (math.isfinite(yi) and math.isfinite(ri)):
            special += 1
            continue
        d = abs(yi - ri)
        a = abs(ri)
        if d > max_abs:
            max_abs = d
        u = d / (eps * max(1.0, a))
        if u > max_units:
            max_units = u
        if want_ulps:
            _, e = math.frexp(a)  # a = m * 2**e with m in [0.5, 1)
            v = d / math.ldexp(1.0, max(e - 1, minexp) - nmant)
            if v > max_ulps:
                max_ulps = v
    return max_abs, max_units, max_ulps, special


def measure(y, ref, bound="contract"):
    """Compare a result with its float64 reference.

    Parameters
    ----------
    y : numpy.ndarray
        The result, of the reference's shape, in its output dtype (float16,
        bfloat16, float32 or float64).
    ref : Reference or array_like
        The reference; an array is prepared for ``y.dtype``.
    bound : {"contract", "peer"}
        Which bound ``within`` is checked against (see the module docstring).

    Returns
    -------
    Error
    """
    dtype = np.dtype(y.dtype)
    if not isinstance(ref, Reference) or ref.dtype != dtype:
        ref = Reference(ref.values if isinstance(ref, Reference) else ref, dtype)
    if y.shape != ref.values.shape:
        raise ValueError(f"result of shape {y.shape} against a reference of shape "
                         f"{ref.values.shape}")
    fi = ml_dtypes.finfo(dtype)
    # 16-bit floats widen exactly to float32, which the pass reads natively
    flat = np.ascontiguousarray(y if dtype.itemsize >= 4 else y.astype(np.float32)).reshape(-1)
    half_contract = bound == "contract" and dtype.itemsize < 4
    max_abs, units, ulps, special = _errors(flat, ref.values.reshape(-1), float(fi.eps),
                                            int(fi.nmant), int(fi.minexp), half_contract)
    if special:
        nonfinite = _count_nonfinite(np.asarray(y, dtype=np.float64), ref.rounded())
        if nonfinite:
            return Error(float("nan"), float("nan"), nonfinite, False)
    if bound == "peer":
        within = units <= (_PEER_WIDE if dtype.itemsize >= 4 else _PEER_HALF)
    elif dtype == np.float32:
        within = units <= _CONTRACT_F32
    elif dtype == np.float64:
        within = units * float(fi.eps) <= _CONTRACT_F64_REL
    else:
        within = ulps <= 1.0
    return Error(float(max_abs), float(units), 0, bool(within))


def _count_nonfinite(yd, rounded):
    """Elements where the result and the rounded reference disagree about
    being NaN, +Inf or -Inf."""
    ref_finite, y_finite = np.isfinite(rounded), np.isfinite(yd)
    special = ~ref_finite
    same = special & ((np.isnan(rounded) & np.isnan(yd)) | (yd == rounded))
    return int(np.count_nonzero(ref_finite != y_finite)
               + np.count_nonzero(special & ~y_finite & ~same))
