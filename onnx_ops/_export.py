"""``to_onnx``: a one-normalization model with input "x" and output "y"."""

import inspect

import onnx
from onnx import helper

from . import _checks, _opset
from ._builders import BUILDERS


def to_onnx(op, *, input_shape, dtype="float32", opset=21, decompose=None, **op_args):
    """Export one normalization as an ONNX model with input ``"x"`` and output ``"y"``.

    Parameters
    ----------
    op : {"layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm"}
        The normalization, with the semantics of ``torch.nn.functional``
        (biased variance inside sqrt(var + eps); batch_norm in inference mode).
    input_shape : sequence of int, str or None
        Shape of x. A str (e.g. ``"N"``) is a named symbolic dim, None an
        unnamed one; a dynamic batch size works for every op. group_norm,
        instance_norm and batch_norm need the channel count (axis 1) as an
        int, layer_norm and rms_norm accept symbolic normalized dims.
    dtype : {"float32", "float64", "float16"} or numpy dtype, default "float32"
        Element type of x, y and the parameters (which are rounded to it).
    opset : int, default 21
        Default-domain opset, 13..23.
    decompose : bool or None, default None
        False: the native operator; ValueError if ``opset`` has none
        (LayerNormalization from 17, GroupNormalization from 21,
        RMSNormalization from 23; InstanceNormalization and
        BatchNormalization exist at every supported opset). True: a graph of
        basic operators (no normalization operator) that runs on runtimes
        without the native one, accurate also when |mean| >> std. None: per
        op, the best form on onnxruntime 1.32 CPU (measured with
        ``benchmarks/onnx_support_table.py`` and
        ``benchmarks/onnx_groupnorm_timing.py``):

        ==============  =================================================
        layer_norm      native from opset 17, decomposed below
        group_norm      InstanceNormalization over (N, G, -1) on data
                        shifted by each group's first element (float64:
                        decomposed). Not GroupNormalization: onnxruntime
                        has no kernel and runs the function body, whose
                        E[x^2]-E[x]^2 variance gives NaN for inputs with a
                        large mean, and is the slowest form
        instance_norm   native, except float64 (decomposed: onnxruntime's
                        CPU InstanceNormalization has no float64 kernel)
        batch_norm      native
        rms_norm        native from opset 23, decomposed below
        ==============  =================================================

        The native kernels are faster, but onnxruntime's LayerNormalization,
        InstanceNormalization and BatchNormalization lose about 1e-3 on
        float32 data whose mean is 1e4 times its std; use decompose=True for
        such data.
    **op_args
        The keyword arguments of the numbanorm function, without x:

        - layer_norm: ``normalized_shape, weight=None, bias=None, eps=1e-5``
        - group_norm: ``num_groups, weight=None, bias=None, eps=1e-5``
        - instance_norm: ``weight=None, bias=None, eps=1e-5``
        - batch_norm: ``running_mean, running_var, weight=None, bias=None,
          eps=1e-5``
        - rms_norm: ``normalized_shape, weight=None, eps=None`` (None: the
          machine epsilon of ``dtype``)

        Weights and biases become initializers. Absent ones are omitted where
        the operator allows it, else they are ones and zeros.

    Returns
    -------
    onnx.ModelProto
        A model that passes ``onnx.checker.check_model(full_check=True)``,
        with the smallest IR version that carries ``opset``.

    Raises
    ------
    ValueError
        Unknown ``op``, ``opset`` out of range or without the native operator
        for ``decompose=False``, parameter shapes that do not match,
        ``normalized_shape`` that is not the trailing dims of
        ``input_shape``, ``num_groups`` that does not divide C, ``eps <= 0``.
    TypeError
        Arguments of the wrong kind (e.g. a non-float ``dtype``, a missing
        or unexpected keyword argument).

    Notes
    -----
    The decompositions compute a two-pass variance on data shifted by each
    row's first element, so they stay accurate when |mean| >> std (float32
    at offset 1e4, std 1: error below 2e-6 where a plain two-pass graph is off
    by 1e-3). float16 input is cast to float32 for the whole computation, as
    ``stash_type=1`` does for the native operators; float64 native operators
    get ``stash_type`` float64 (onnx.reference implements only float32).

    Examples
    --------
    >>> import onnx_ops
    >>> m = onnx_ops.to_onnx("group_norm", input_shape=("N", 32, 8, 8), num_groups=8, opset=18)
    >>> [i.name for i in m.graph.input], [o.name for o in m.graph.output]
    (['x'], ['y'])
    """
    if op not in BUILDERS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(_opset.OPS)}")
    opset = _opset.check_opset(opset)
    dtype = _checks.check_dtype(dtype)
    shape = _checks.check_input_shape(input_shape)
    elem = _opset.tensor_type(dtype)
    graph = helper.make_graph(
        [],
        f"numbanorm_{op}",
        [helper.make_tensor_value_info("x", elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, list(shape))],
    )
    builder = BUILDERS[op]
    reserved = {"graph", "x", "opset", "decompose", "name", "output"} & op_args.keys()
    if reserved:
        raise TypeError(f"to_onnx({op!r}) got unexpected keyword arguments {sorted(reserved)}")
    try:
        inspect.signature(builder).bind(graph, "x", **op_args, opset=opset)
    except TypeError as exc:
        raise TypeError(f"to_onnx({op!r}): {exc}") from None
    builder(graph, "x", **op_args, opset=opset, decompose=decompose, name=op, output="y")
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="numbanorm.onnx_ops",
        ir_version=_opset.min_ir_version(opset),
    )
    onnx.checker.check_model(model, full_check=True)
    return model
