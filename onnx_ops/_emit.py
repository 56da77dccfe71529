"""One emitter per normalization and form: the native operator or a decomposition.

Every emitter writes into a ``Scope`` and assumes validated arguments. Parameters
such as weights are *operands*: either a numpy array (a constant, reshaped and
cast here, at build time) or a ``Ref`` to a tensor already in the graph (as
``convert`` finds them), which gets Reshape/Cast nodes when needed.

The decompositions share one numerical recipe, ``_standardize``:

- Statistics are computed in float32 for float16 input (Cast in, Cast out),
  as the native operators do with stash_type=1.
- The variance is two-pass: subtract the mean, then average the squares; never
  E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std (that is
  what onnxruntime's inlined GroupNormalization body does, giving NaN at an
  offset of 1e4).
- Before the two passes each row is shifted by its first element. Two-pass alone
  is not enough in float32: at an offset of 1e4 the mean itself is only known to
  half an ulp of 1e4 (5e-4), and that error goes straight into x - mean. The
  shift is exact for values within a factor of two of each other (Sterbenz), so
  the mean and the deviations are computed on values of the size of the spread
  and keep full relative precision; for values further apart there is no
  cancellation to fear. Measured at offset 1e4, std 1 in onnxruntime: plain
  two-pass float32 is off by 1e-3, shifted two-pass by 3e-7. (numbanorm's
  kernels use the same shifted moments.)
- 1/sqrt(var + eps) is computed once per row (Reciprocal) and folded with the
  per-channel weight where both are per-row/per-channel, so that only one
  multiply touches every element.
"""

from typing import NamedTuple

import numpy as np

from . import _opset


class Ref(NamedTuple):
    """A tensor already present in the graph, used as an operand."""

    name: str
    dtype: np.dtype


def operand(s, value, dtype, shape, hint):
    """Materialize ``value`` (array or Ref) as a tensor of ``dtype`` and ``shape``."""
    if isinstance(value, Ref):
        name = s.cast(value.name, value.dtype, dtype, hint=f"{hint}_cast")
        if shape is not None:
            name = s.node("Reshape", [name, s.int64s(shape, f"{hint}_shape")], hint=hint)
        return name
    array = np.asarray(value)
    if shape is not None:
        array = array.reshape(shape)
    return s.const(array, dtype, hint)


def _eps_const(s, eps, dtype):
    return s.const(np.asarray(eps, dtype=dtype), dtype, "epsilon")


def _standardize(s, xc, axes, eps, ct):
    """Shifted two-pass moments of ``xc`` over ``axes`` (keepdims).

    Returns ``d = x - mean`` (full shape), ``rstd = 1/sqrt(var + eps)`` and the
    shift and shifted mean (reduced shape), whose sum is the mean.
    """
    n = len(axes)
    first = s.node(
        "Slice",
        [xc, s.int64s([0] * n, "starts"), s.int64s([1] * n, "ends"), s.int64s(axes, "slice_axes")],
        hint="shift",
    )
    z = s.node("Sub", [xc, first], hint="shifted")
    zmean = s.reduce_mean(z, axes, "shifted_mean")
    d = s.node("Sub", [z, zmean], hint="centered")
    sq = s.node("Mul", [d, d], hint="squared")
    var = s.reduce_mean(sq, axes, "var")
    var_eps = s.node("Add", [var, _eps_const(s, eps, ct)], hint="var_eps")
    std = s.node("Sqrt", [var_eps], hint="std")
    rstd = s.node("Reciprocal", [std], hint="rstd")
    return d, rstd, first, zmean


# ---------------------------------------------------------------- layer_norm


def layer_norm_native(s, x, dtype, k, normalized_shape, weight, bias, eps, output, mean_output=None, rstd_output=None):
    """LayerNormalization-17 over the last ``k`` axes."""
    if weight is None:
        weight = np.ones(normalized_shape if normalized_shape is not None else (1,) * k)
    inputs = [x, operand(s, weight, dtype, None, "weight")]
    if bias is not None:
        inputs.append(operand(s, bias, dtype, None, "bias"))
    outputs = [output, mean_output or "", rstd_output or ""]
    while outputs[-1] == "":
        outputs.pop()
    s.node(
        "LayerNormalization",
        inputs,
        outputs=outputs,
        axis=-k,
        epsilon=float(eps),
        stash_type=_opset.stash_type(dtype),
    )
    return output


def layer_norm_decomposed(s, x, dtype, k, weight, bias, eps, output, mean_output=None, rstd_output=None):
    """Shifted two-pass layer norm over the last ``k`` axes, from basic ops."""
    ct = _opset.compute_dtype(dtype)
    axes = list(range(-k, 0))
    xc = s.cast(x, dtype, ct, hint="x_float")
    d, rstd, first, zmean = _standardize(s, xc, axes, eps, ct)
    y = s.node("Mul", [d, rstd], hint="normalized")
    if weight is not None:
        y = s.node("Mul", [y, operand(s, weight, ct, None, "weight")], hint="scaled")
    if bias is not None:
        y = s.node("Add", [y, operand(s, bias, ct, None, "bias")], hint="affine")
    s.finish(s.cast(y, ct, dtype, hint="y_cast"), output)
    # LayerNormalization's optional outputs have the stash type (float32).
    if mean_output:
        mean = s.node("Add", [first, zmean], hint="mean")
        s.finish(s.cast(mean, ct, np.float32), mean_output)
    if rstd_output:
        s.finish(s.cast(rstd, ct, np.float32), rstd_output)
    return output


# ---------------------------------------------------------------- group_norm


def _channel_affine(s, weight, bias, channels, dtype):
    """Scale and bias operands of shape (C,) for the native per-channel ops,
    which require both: ones and zeros when absent."""
    weight = np.ones(channels) if weight is None else weight
    bias = np.zeros(channels) if bias is None else bias
    return operand(s, weight, dtype, None, "weight"), operand(s, bias, dtype, None, "bias")


def group_norm_native(s, x, dtype, channels, num_groups, weight, bias, eps, output):
    """GroupNormalization-21; weight and bias, if given, have shape (C,)."""
    s.node(
        "GroupNormalization",
        [x, *_channel_affine(s, weight, bias, channels, dtype)],
        outputs=output,
        num_groups=int(num_groups),
        epsilon=float(eps),
        stash_type=_opset.stash_type(dtype),
    )
    return output


def group_norm_decomposed(s, x, dtype, channels, rest, num_groups, weight, bias, eps, output, per_group=False):
    """Shifted two-pass group norm from basic ops.

    ``x`` is viewed as (N, G, C/G, rest) so that the statistics reduce over the
    last two axes and the per-channel weight, viewed as (G, C/G, 1), folds into
    the per-row 1/std before touching the data. ``rest`` is x's shape after
    the channel axis (None if unknown). ``per_group`` takes weights of shape
    (G,) (GroupNormalization-18) instead of (C,).
    """
    ct = _opset.compute_dtype(dtype)
    G = int(num_groups)
    xc = s.cast(x, dtype, ct, hint="x_float")
    grouped = s.node("Reshape", [xc, s.int64s([0, G, channels // G, -1], "grouped_shape")], hint="grouped")
    d, rstd, _, _ = _standardize(s, grouped, [2, 3], eps, ct)
    wshape = [G, 1, 1] if per_group else [G, channels // G, 1]
    scale = rstd
    if weight is not None:
        scale = s.node("Mul", [rstd, operand(s, weight, ct, wshape, "weight")], hint="scale")
    y = s.node("Mul", [d, scale], hint="normalized")
    if bias is not None:
        y = s.node("Add", [y, operand(s, bias, ct, wshape, "bias")], hint="affine")
    y = s.node("Reshape", [y, _shape_of(s, x, channels, rest)], hint="ungrouped")
    s.finish(s.cast(y, ct, dtype, hint="y_cast"), output)
    return output


def group_norm_via_instance_norm(s, x, dtype, channels, rest, num_groups, weight, bias, eps, output, per_group=False):
    """Group norm as InstanceNormalization over (N, G, -1), on shifted data.

    onnxruntime's InstanceNormalization kernel is the fastest way it has to
    normalize groups, but it is inaccurate when |mean| >> std (as PyTorch's
    export of GroupNorm, which is this graph without the shift). Subtracting
    each group's first element first (exact, see the module docstring) brings
    the mean to the size of the spread, where the kernel is accurate. Computed
    in float32 for float16 input.
    """
    ct = _opset.compute_dtype(dtype)
    G = int(num_groups)
    xc = s.cast(x, dtype, ct, hint="x_float")
    grouped = s.node("Reshape", [xc, s.int64s([0, G, -1], "grouped_shape")], hint="grouped")
    first = s.node(
        "Slice", [grouped, s.int64s([0], "starts"), s.int64s([1], "ends"), s.int64s([2], "slice_axes")], hint="shift"
    )
    z = s.node("Sub", [grouped, first], hint="shifted")
    n = s.node(
        "InstanceNormalization",
        [z, s.const(np.ones(G), ct, "ones"), s.const(np.zeros(G), ct, "zeros")],
        hint="normalized",
        epsilon=float(eps),
    )
    # The affine stage runs on x's own shape when its rank is known
    # (onnxruntime broadcasts a (C, 1, 1) weight over (N, C, H, W) some 10%
    # faster than (C, 1) over (N, C, H*W)); otherwise on a (N, C, -1) view, or
    # on (N, G, -1) for per-group parameters.
    if per_group:
        y, pshape, back = n, [G, 1], True
    elif rest is not None:
        y = s.node("Reshape", [n, _shape_of(s, x, channels, rest)], hint="ungrouped")
        pshape, back = [channels] + [1] * len(rest), False
    else:
        y = s.node("Reshape", [n, s.int64s([0, channels, -1], "channel_shape")], hint="channels")
        pshape, back = [channels, 1], True
    if weight is not None:
        y = s.node("Mul", [y, operand(s, weight, ct, pshape, "weight")], hint="scaled")
    if bias is not None:
        y = s.node("Add", [y, operand(s, bias, ct, pshape, "bias")], hint="affine")
    if back:
        y = s.node("Reshape", [y, _shape_of(s, x, channels, rest)], hint="ungrouped")
    s.finish(s.cast(y, ct, dtype, hint="y_cast"), output)
    return output


def _shape_of(s, x, channels, rest):
    """x's shape as a tensor: a constant when only the batch size is unknown, else Shape(x)."""
    if channels is not None and rest is not None and all(isinstance(v, (int, np.integer)) for v in rest):
        # 0 copies the batch size, so a static target shape also serves a dynamic batch.
        return s.int64s([0, channels, *rest], "out_shape")
    return s.node("Shape", [x], hint="x_shape")


def _per_channel_view(s, xc, rank):
    """(x viewed so that axis 1 is the channel and the stats axes follow, those axes, param shape).

    With an unknown rank, x is viewed as (N, C, -1); the caller reshapes back.
    """
    if rank is None:
        flat = s.node("Reshape", [xc, s.int64s([0, 0, -1], "flat_shape")], hint="flat")
        return flat, [2], [-1, 1]
    return xc, list(range(2, rank)), [-1] + [1] * (rank - 2)


# ------------------------------------------------------------- instance_norm


def instance_norm_native(s, x, dtype, channels, weight, bias, eps, output):
    """InstanceNormalization-6 (or -22 from opset 22; same signature); weight and bias of shape (C,)."""
    s.node(
        "InstanceNormalization",
        [x, *_channel_affine(s, weight, bias, channels, dtype)],
        outputs=output,
        epsilon=float(eps),
    )
    return output


def _per_channel_output(s, x, centered, scale, bias, ct, pshape, rank, dtype, output):
    """centered * scale [+ bias] in the per-channel view (parameters of shape
    ``pshape``), back to x's shape when the view flattened it (unknown rank),
    cast back to x's dtype into ``output``."""
    y = s.node("Mul", [centered, scale], hint="normalized")
    if bias is not None:
        y = s.node("Add", [y, operand(s, bias, ct, pshape, "bias")], hint="affine")
    if rank is None:
        y = s.node("Reshape", [y, s.node("Shape", [x], hint="x_shape")], hint="unflat")
    s.finish(s.cast(y, ct, dtype, hint="y_cast"), output)
    return output


def instance_norm_decomposed(s, x, dtype, rank, weight, bias, eps, output):
    """Shifted two-pass instance norm from basic ops (statistics over axes 2..r-1)."""
    ct = _opset.compute_dtype(dtype)
    xc = s.cast(x, dtype, ct, hint="x_float")
    view, axes, pshape = _per_channel_view(s, xc, rank)
    d, rstd, _, _ = _standardize(s, view, axes, eps, ct)
    scale = rstd
    if weight is not None:
        scale = s.node("Mul", [rstd, operand(s, weight, ct, pshape, "weight")], hint="scale")
    return _per_channel_output(s, x, d, scale, bias, ct, pshape, rank, dtype, output)


# ---------------------------------------------------------------- batch_norm


def batch_norm_native(s, x, dtype, channels, running_mean, running_var, weight, bias, eps, output):
    """BatchNormalization in inference mode: version 9, 14 or 15 by opset.

    Versions 9 and 14 require scale and bias (9: also the statistics) to have
    X's type; version 15 lets each pair have its own float type, so operands
    that already exist in the graph keep theirs.
    """
    version = _opset.batch_norm_version(s.opset)
    if weight is None:
        weight = np.ones(channels, dtype)
    if bias is None:
        bias = np.zeros(channels, dtype)

    def typed(value, same_as_x, hint):
        own = np.dtype(value.dtype) if hasattr(value, "dtype") else None
        keep = not same_as_x and own in _opset.FLOAT_DTYPES
        return operand(s, value, own if keep else dtype, None, hint)

    stats_typed_as_x = version == 9
    params_typed_as_x = version < 15
    s.node(
        "BatchNormalization",
        [
            x,
            typed(weight, params_typed_as_x, "weight"),
            typed(bias, params_typed_as_x, "bias"),
            typed(running_mean, stats_typed_as_x, "running_mean"),
            typed(running_var, stats_typed_as_x, "running_var"),
        ],
        outputs=output,
        epsilon=float(eps),
    )
    return output


def batch_norm_decomposed(s, x, dtype, rank, running_mean, running_var, weight, bias, eps, output):
    """Inference batch norm as (x - mean) * (w / sqrt(var + eps)) + b.

    The mean is subtracted first rather than folded into the bias
    (x * scale + shift), which would cancel when |x| >> std. With constant
    statistics the per-channel factor is computed here in float64.
    """
    ct = _opset.compute_dtype(dtype)
    xc = s.cast(x, dtype, ct, hint="x_float")
    view, _, pshape = _per_channel_view(s, xc, rank)
    if not any(isinstance(v, Ref) for v in (running_var, weight)):
        factor = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
        if weight is not None:
            factor = factor * np.asarray(weight, np.float64)
        scale = s.const(factor.reshape(pshape), ct, "scale")
    else:
        var = operand(s, running_var, ct, pshape, "running_var")
        std = s.node("Sqrt", [s.node("Add", [var, _eps_const(s, eps, ct)], hint="var_eps")], hint="std")
        scale = s.node("Reciprocal", [std], hint="rstd")
        if weight is not None:
            scale = s.node("Mul", [scale, operand(s, weight, ct, pshape, "weight")], hint="scale")
    centered = s.node("Sub", [view, operand(s, running_mean, ct, pshape, "running_mean")], hint="centered")
    return _per_channel_output(s, x, centered, scale, bias, ct, pshape, rank, dtype, output)


# ------------------------------------------------------------------ rms_norm


def rms_norm_native(s, x, dtype, k, normalized_shape, weight, eps, output):
    """RMSNormalization-23 over the last ``k`` axes.

    The scale gets X's type: the schema allows another type, but ONNX shape
    inference (and onnxruntime) reject it.
    """
    if weight is None:
        weight = np.ones(normalized_shape if normalized_shape is not None else (1,) * k)
    s.node(
        "RMSNormalization",
        [x, operand(s, weight, dtype, None, "weight")],
        outputs=output,
        axis=-k,
        epsilon=float(eps),
        stash_type=_opset.stash_type(dtype),
    )
    return output


def rms_norm_decomposed(s, x, dtype, k, weight, eps, output):
    """x / sqrt(mean(x^2) + eps) * w from basic ops. No mean is subtracted, so no cancellation."""
    ct = _opset.compute_dtype(dtype)
    axes = list(range(-k, 0))
    xc = s.cast(x, dtype, ct, hint="x_float")
    ms = s.reduce_mean(s.node("Mul", [xc, xc], hint="squared"), axes, "mean_square")
    std = s.node("Sqrt", [s.node("Add", [ms, _eps_const(s, eps, ct)], hint="ms_eps")], hint="rms")
    y = s.node("Mul", [xc, s.node("Reciprocal", [std], hint="rrms")], hint="normalized")
    if weight is not None:
        y = s.node("Mul", [y, operand(s, weight, ct, None, "weight")], hint="scaled")
    s.finish(s.cast(y, ct, dtype, hint="y_cast"), output)
    return output
