"""Public node-level builders: append one normalization to a graph under construction.

Each ``make_*`` function takes an ``onnx.GraphProto`` (for instance one made by
``onnx.helper.make_graph``) and the name of the input tensor, checks the
arguments against that tensor's dtype and shape, appends the nodes and
initializers and returns the name of the output tensor.
"""

import numpy as np
from onnx import helper

from . import _checks, _emit, _opset
from ._graph import Scope, graph_names, lookup_tensor, unique_scope


def _begin(graph, x, opset, name, output):
    """Common prologue: checks, x's type, a fresh scope and the output name."""
    if not hasattr(graph, "node") or not hasattr(graph, "initializer"):
        raise TypeError(f"graph must be an onnx.GraphProto, got {type(graph).__name__}")
    if not isinstance(x, str) or not x:
        raise TypeError(f"x must be the name (str) of a tensor in the graph, got {x!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    opset = _opset.check_opset(opset)
    info = lookup_tensor(graph, x, opset)
    if info.dtype not in _opset.FLOAT_DTYPES:
        raise TypeError(f"{x!r} has dtype {info.dtype}; normalizations take float16, float32 or float64")
    taken = graph_names(graph)
    if output is not None:
        if not isinstance(output, str) or not output:
            raise TypeError(f"output must be a non-empty str, got {output!r}")
        produced = {o for n in graph.node for o in n.output}
        produced |= {v.name for v in graph.input} | {t.name for t in graph.initializer}
        if output in produced:
            raise ValueError(f"output name {output!r} is already produced in the graph")
    scope = Scope(opset, unique_scope(name, taken), taken)
    if output is None:
        output = scope.fresh("output")
    else:
        taken.add(output)
    return opset, info, scope, output


def _end(graph, scope, info, output):
    graph.node.extend(scope.nodes)
    graph.initializer.extend(scope.initializers)
    if output not in {v.name for v in graph.output} and output not in {v.name for v in graph.value_info}:
        graph.value_info.append(helper.make_tensor_value_info(output, _opset.tensor_type(info.dtype), list(info.shape)))
    return output


def make_layer_norm(graph, x, normalized_shape, weight=None, bias=None, eps=1e-5, *, opset, decompose=None,
                    name="layer_norm", output=None):
    """Append a layer normalization over the trailing ``normalized_shape`` dims.

    y = (x - mean) / sqrt(var + eps) * weight + bias, with the mean and the
    biased variance taken over the last ``len(normalized_shape)`` axes, as
    ``torch.nn.functional.layer_norm``.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph under construction. Nodes are appended to ``graph.node`` and
        parameters to ``graph.initializer``; place the call after the node
        that produces ``x`` and before the nodes that consume the output.
    x : str
        Name of the input tensor. Its dtype (float16, float32 or float64) and
        shape are taken from ``graph.input``, ``graph.value_info``,
        ``graph.output`` or the initializers, else from ONNX shape inference.
    normalized_shape : int or sequence of int
        The trailing dims of x to normalize over.
    weight, bias : array_like, optional
        Of shape ``normalized_shape``; rounded to x's dtype. Absent means no
        scaling / no shift.
    eps : float, default 1e-5
        Added to the variance; must be positive.
    opset : int
        Default-domain opset of the model the graph belongs to, 13..23. It
        selects the operator versions and forms (e.g. ReduceMean's ``axes`` is
        an attribute up to 17 and an input from 18).
    decompose : bool or None, default None
        False: the native operator (ValueError if ``opset`` has none). True: a
        graph of basic operators. None: the default choice, see
        :func:`onnx_ops.to_onnx`.
    name : str
        Prefix of every node and new tensor name (``name/...``). If the graph
        already uses it, ``name_1``, ``name_2``... is used instead.
    output : str, optional
        Name of the output tensor; by default ``<name>/output``. It must not
        be produced by anything in the graph yet (it may be listed in
        ``graph.output``).

    Returns
    -------
    str
        The name of the output tensor. Unless it is a graph output, a
        ``value_info`` entry with x's dtype and shape is added for it, so that
        further builders can be chained on it.

    Notes
    -----
    Native form: LayerNormalization-17 (``axis=-len(normalized_shape)``,
    ``stash_type`` float32, float64 for float64 input). Decomposition:
    Slice/Sub/ReduceMean/Mul/Add/Sqrt/Reciprocal, a shifted two-pass variance,
    computed in float32 for float16 input.

    Examples
    --------
    >>> import onnx, onnx_ops
    >>> from onnx import TensorProto, helper
    >>> g = helper.make_graph([], "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 16])], [])
    >>> onnx_ops.make_layer_norm(g, "h", 16, opset=17, name="ln")
    'ln/output'
    """
    opset, info, s, output = _begin(graph, x, opset, name, output)
    ns = _checks.check_normalized_shape(normalized_shape, info.shape)
    weight = _checks.check_param(weight, "weight", ns, info.dtype, "normalized_shape")
    bias = _checks.check_param(bias, "bias", ns, info.dtype, "normalized_shape")
    eps = _checks.check_eps(eps)
    if _opset.resolve_form("layer_norm", opset, info.dtype, decompose) == _opset.NATIVE:
        _emit.layer_norm_native(s, x, info.dtype, len(ns), ns, weight, bias, eps, output)
    else:
        _emit.layer_norm_decomposed(s, x, info.dtype, len(ns), weight, bias, eps, output)
    return _end(graph, s, info, output)


def make_group_norm(graph, x, num_groups, weight=None, bias=None, eps=1e-5, *, opset, decompose=None,
                    name="group_norm", output=None):
    """Append a group normalization.

    The C channels (axis 1) are split into ``num_groups`` groups; each group of
    each sample is normalized over its channels and all spatial positions,
    then scaled and shifted per channel, as ``torch.nn.functional.group_norm``.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph under construction. Nodes are appended to ``graph.node`` and
        parameters to ``graph.initializer``; place the call after the node
        that produces ``x`` and before the nodes that consume the output.
    x : str
        Name of the input tensor. Its dtype (float16, float32 or float64) and
        shape are taken from ``graph.input``, ``graph.value_info``,
        ``graph.output`` or the initializers, else from ONNX shape inference.
    num_groups : int
        Number of groups; must divide the channel count C = shape[1], which
        must be known.
    weight, bias : array_like, optional
        Per channel, shape (C,); rounded to x's dtype.
    eps : float, default 1e-5
        Added to the variance; must be positive.
    opset : int
        Default-domain opset of the model the graph belongs to, 13..23. It
        selects the operator versions and forms (e.g. ReduceMean's ``axes`` is
        an attribute up to 17 and an input from 18).
    decompose : bool or None, default None
        False: the native operator (ValueError if ``opset`` has none). True: a
        graph of basic operators. None: the default choice, see
        :func:`onnx_ops.to_onnx`.
    name : str
        Prefix of every node and new tensor name (``name/...``). If the graph
        already uses it, ``name_1``, ``name_2``... is used instead.
    output : str, optional
        Name of the output tensor; by default ``<name>/output``. It must not
        be produced by anything in the graph yet (it may be listed in
        ``graph.output``).

    Returns
    -------
    str
        The name of the output tensor. Unless it is a graph output, a
        ``value_info`` entry with x's dtype and shape is added for it, so that
        further builders can be chained on it.

    Notes
    -----
    Native form: GroupNormalization-21 with per-channel scale and bias (never
    the deprecated opset-18 form, whose scale is per group). Decomposition:
    x viewed as (N, G, C/G, -1), a shifted two-pass variance, the weight folded
    into the per-group 1/std. The default for float32/float16 is a third
    form: InstanceNormalization over x viewed as (N, G, -1), after
    subtracting each group's first element (which keeps onnxruntime's kernel
    accurate when |mean| >> std), then the per-channel affine.
    """
    opset, info, s, output = _begin(graph, x, opset, name, output)
    channels = _checks.check_channels(info.shape, "group_norm", 2)
    num_groups = _checks.check_int(num_groups, "num_groups")
    if channels % num_groups:
        raise ValueError(
            f"num_groups={num_groups} does not divide the channel count C={channels} "
            f"of the input shape {info.shape}"
        )
    weight = _checks.check_param(weight, "weight", (channels,), info.dtype, "one per channel")
    bias = _checks.check_param(bias, "bias", (channels,), info.dtype, "one per channel")
    eps = _checks.check_eps(eps)
    form = _opset.resolve_form("group_norm", opset, info.dtype, decompose)
    if form == _opset.NATIVE:
        _emit.group_norm_native(s, x, info.dtype, channels, num_groups, weight, bias, eps, output)
    elif form == _opset.VIA_INSTANCE_NORM:
        _emit.group_norm_via_instance_norm(s, x, info.dtype, channels, info.shape[2:], num_groups, weight, bias, eps,
                                           output)
    else:
        _emit.group_norm_decomposed(s, x, info.dtype, channels, info.shape[2:], num_groups, weight, bias, eps, output)
    return _end(graph, s, info, output)


def make_instance_norm(graph, x, weight=None, bias=None, eps=1e-5, *, opset, decompose=None,
                       name="instance_norm", output=None):
    """Append an instance normalization.

    Each channel of each sample is normalized over the spatial axes 2..r-1,
    then scaled and shifted per channel, as
    ``torch.nn.functional.instance_norm`` with ``use_input_stats=True``.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph under construction. Nodes are appended to ``graph.node`` and
        parameters to ``graph.initializer``; place the call after the node
        that produces ``x`` and before the nodes that consume the output.
    x : str
        Name of the input tensor. Its dtype (float16, float32 or float64) and
        shape are taken from ``graph.input``, ``graph.value_info``,
        ``graph.output`` or the initializers, else from ONNX shape inference.
    weight, bias : array_like, optional
        Per channel, shape (C,); rounded to x's dtype. C = shape[1] must be
        known and the rank at least 3.
    eps : float, default 1e-5
        Added to the variance; must be positive.
    opset : int
        Default-domain opset of the model the graph belongs to, 13..23. It
        selects the operator versions and forms (e.g. ReduceMean's ``axes`` is
        an attribute up to 17 and an input from 18).
    decompose : bool or None, default None
        False: the native operator (ValueError if ``opset`` has none). True: a
        graph of basic operators. None: the default choice, see
        :func:`onnx_ops.to_onnx`.
    name : str
        Prefix of every node and new tensor name (``name/...``). If the graph
        already uses it, ``name_1``, ``name_2``... is used instead.
    output : str, optional
        Name of the output tensor; by default ``<name>/output``. It must not
        be produced by anything in the graph yet (it may be listed in
        ``graph.output``).

    Returns
    -------
    str
        The name of the output tensor. Unless it is a graph output, a
        ``value_info`` entry with x's dtype and shape is added for it, so that
        further builders can be chained on it.

    Notes
    -----
    Native form: InstanceNormalization-6 (-22 at opset 23), with ones/zeros for
    an absent weight/bias since the operator requires both. Decomposition: a
    shifted two-pass variance over axes 2..r-1.
    """
    opset, info, s, output = _begin(graph, x, opset, name, output)
    channels = _checks.check_channels(info.shape, "instance_norm", 3)
    weight = _checks.check_param(weight, "weight", (channels,), info.dtype, "one per channel")
    bias = _checks.check_param(bias, "bias", (channels,), info.dtype, "one per channel")
    eps = _checks.check_eps(eps)
    if _opset.resolve_form("instance_norm", opset, info.dtype, decompose) == _opset.NATIVE:
        _emit.instance_norm_native(s, x, info.dtype, channels, weight, bias, eps, output)
    else:
        _emit.instance_norm_decomposed(s, x, info.dtype, len(info.shape), weight, bias, eps, output)
    return _end(graph, s, info, output)


def make_batch_norm(graph, x, running_mean, running_var, weight=None, bias=None, eps=1e-5, *, opset,
                    decompose=None, name="batch_norm", output=None):
    """Append a batch normalization in inference mode.

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias per
    channel (axis 1), as ``torch.nn.functional.batch_norm`` with
    ``training=False``.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph under construction. Nodes are appended to ``graph.node`` and
        parameters to ``graph.initializer``; place the call after the node
        that produces ``x`` and before the nodes that consume the output.
    x : str
        Name of the input tensor. Its dtype (float16, float32 or float64) and
        shape are taken from ``graph.input``, ``graph.value_info``,
        ``graph.output`` or the initializers, else from ONNX shape inference.
    running_mean, running_var : array_like
        Stored statistics, shape (C,); ``running_var`` must be >= 0. C =
        shape[1] must be known.
    weight, bias : array_like, optional
        Per channel, shape (C,). All four arrays are rounded to x's dtype.
    eps : float, default 1e-5
        Added to the variance; must be positive.
    opset : int
        Default-domain opset of the model the graph belongs to, 13..23. It
        selects the operator versions and forms (e.g. ReduceMean's ``axes`` is
        an attribute up to 17 and an input from 18).
    decompose : bool or None, default None
        False: the native operator (ValueError if ``opset`` has none). True: a
        graph of basic operators. None: the default choice, see
        :func:`onnx_ops.to_onnx`.
    name : str
        Prefix of every node and new tensor name (``name/...``). If the graph
        already uses it, ``name_1``, ``name_2``... is used instead.
    output : str, optional
        Name of the output tensor; by default ``<name>/output``. It must not
        be produced by anything in the graph yet (it may be listed in
        ``graph.output``).

    Returns
    -------
    str
        The name of the output tensor. Unless it is a graph output, a
        ``value_info`` entry with x's dtype and shape is added for it, so that
        further builders can be chained on it.

    Notes
    -----
    Native form: BatchNormalization-15 (-14 at opset 14, -9 at opset 13, which
    require the parameters in x's dtype). Decomposition:
    (x - mean) * factor + bias with the per-channel factor
    weight / sqrt(var + eps) computed in float64 when the graph is built.
    """
    opset, info, s, output = _begin(graph, x, opset, name, output)
    channels = _checks.check_channels(info.shape, "batch_norm", 2)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm in inference mode needs running_mean and running_var")
    running_mean = _checks.check_param(running_mean, "running_mean", (channels,), info.dtype, "one per channel")
    running_var = _checks.check_param(running_var, "running_var", (channels,), info.dtype, "one per channel")
    if (running_var < 0).any():
        raise ValueError(f"running_var must be >= 0, got a minimum of {running_var.min()}")
    weight = _checks.check_param(weight, "weight", (channels,), info.dtype, "one per channel")
    bias = _checks.check_param(bias, "bias", (channels,), info.dtype, "one per channel")
    eps = _checks.check_eps(eps)
    if _opset.resolve_form("batch_norm", opset, info.dtype, decompose) == _opset.NATIVE:
        _emit.batch_norm_native(s, x, info.dtype, channels, running_mean, running_var, weight, bias, eps, output)
    else:
        _emit.batch_norm_decomposed(
            s, x, info.dtype, len(info.shape), running_mean, running_var, weight, bias, eps, output
        )
    return _end(graph, s, info, output)


def make_rms_norm(graph, x, normalized_shape, weight=None, eps=None, *, opset, decompose=None,
                  name="rms_norm", output=None):
    """Append an RMS normalization over the trailing ``normalized_shape`` dims.

    y = x / sqrt(mean(x**2) + eps) * weight, the mean taken over the last
    ``len(normalized_shape)`` axes, as ``torch.nn.functional.rms_norm``.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph under construction. Nodes are appended to ``graph.node`` and
        parameters to ``graph.initializer``; place the call after the node
        that produces ``x`` and before the nodes that consume the output.
    x : str
        Name of the input tensor. Its dtype (float16, float32 or float64) and
        shape are taken from ``graph.input``, ``graph.value_info``,
        ``graph.output`` or the initializers, else from ONNX shape inference.
    normalized_shape : int or sequence of int
        The trailing dims of x to normalize over.
    weight : array_like, optional
        Of shape ``normalized_shape``; rounded to x's dtype.
    eps : float or None, default None
        Added to the mean square. None means the machine epsilon of x's
        dtype, ``numpy.finfo(dtype).eps``, as in PyTorch.
    opset : int
        Default-domain opset of the model the graph belongs to, 13..23. It
        selects the operator versions and forms (e.g. ReduceMean's ``axes`` is
        an attribute up to 17 and an input from 18).
    decompose : bool or None, default None
        False: the native operator (ValueError if ``opset`` has none). True: a
        graph of basic operators. None: the default choice, see
        :func:`onnx_ops.to_onnx`.
    name : str
        Prefix of every node and new tensor name (``name/...``). If the graph
        already uses it, ``name_1``, ``name_2``... is used instead.
    output : str, optional
        Name of the output tensor; by default ``<name>/output``. It must not
        be produced by anything in the graph yet (it may be listed in
        ``graph.output``).

    Returns
    -------
    str
        The name of the output tensor. Unless it is a graph output, a
        ``value_info`` entry with x's dtype and shape is added for it, so that
        further builders can be chained on it.

    Notes
    -----
    Native form: RMSNormalization-23 (``axis=-len(normalized_shape)``).
    Decomposition: Mul/ReduceMean/Add/Sqrt/Reciprocal/Mul, computed in
    float32 for float16 input.
    """
    opset, info, s, output = _begin(graph, x, opset, name, output)
    ns = _checks.check_normalized_shape(normalized_shape, info.shape)
    weight = _checks.check_param(weight, "weight", ns, info.dtype, "normalized_shape")
    eps = float(np.finfo(info.dtype).eps) if eps is None else _checks.check_eps(eps)
    if _opset.resolve_form("rms_norm", opset, info.dtype, decompose) == _opset.NATIVE:
        _emit.rms_norm_native(s, x, info.dtype, len(ns), ns, weight, eps, output)
    else:
        _emit.rms_norm_decomposed(s, x, info.dtype, len(ns), weight, eps, output)
    return _end(graph, s, info, output)


BUILDERS = {
    "layer_norm": make_layer_norm,
    "group_norm": make_group_norm,
    "instance_norm": make_instance_norm,
    "batch_norm": make_batch_norm,
    "rms_norm": make_rms_norm,
}
