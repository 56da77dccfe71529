"""onnx_ops.to_onnx and the make_* builders: structure, validity and numbers.

The matrix test runs every op x opset x form x dtype x static/dynamic batch
through the ONNX checker, shape inference, onnxruntime (compared with the
numbanorm kernel and the float64 reference) and onnx.reference.
"""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import onnx_ops
from tests.conftest_onnx import ort_runner  # noqa: F401  (fixture)
from tests.onnx_helpers import (
    DTYPES,
    KERNEL_SOURCE,
    NATIVE_OP,
    NATIVE_SINCE,
    NORM_OP_TYPES,
    OPS,
    OPSETS,
    SHAPES,
    OrtNotImplemented,
    assert_close,
    kernel,
    make_input,
    offset_bound,
    op_args,
    ort_supports,
    reference_y,
    rng_for,
    round_params,
)


def test_kernel_source_is_reported():
    # The report says which implementation the matrix compared against.
    assert KERNEL_SOURCE in ("numbanorm", "reference")


# ------------------------------------------------------------------ matrix


@pytest.mark.parametrize("batch", ["static", "dynamic"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["native", "decomposed"])
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op", OPS)
def test_export_matrix(op, opset, form, dtype, batch, ort_runner):
    rng = rng_for(op, dtype, batch)
    args = op_args(op, rng)
    shape = SHAPES[op]
    input_shape = shape if batch == "static" else ("batch",) + shape[1:]
    decompose = form == "decomposed"

    if not decompose and opset < NATIVE_SINCE[op]:
        with pytest.raises(ValueError, match=f"opset {opset}.*from opset {NATIVE_SINCE[op]}"):
            onnx_ops.to_onnx(op, input_shape=input_shape, dtype=dtype, opset=opset, decompose=False, **args)
        return

    model = onnx_ops.to_onnx(op, input_shape=input_shape, dtype=dtype, opset=opset, decompose=decompose, **args)

    # Structure: the requested form, the requested opset, unique prefixed names.
    op_types = [n.op_type for n in model.graph.node]
    if decompose:
        assert not set(op_types) & NORM_OP_TYPES
    else:
        assert op_types.count(NATIVE_OP[op]) == 1
    assert [(i.domain, i.version) for i in model.opset_import] == [("", opset)]
    assert model.ir_version == helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and all(n.startswith(f"{op}/") for n in names)
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]

    # Validity: the full checker and strict shape inference.
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    y_type = inferred.graph.output[0].type.tensor_type
    assert y_type.elem_type == helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in y_type.shape.dim]
    assert dims == list(input_shape)

    # Numbers: batch 3 for the dynamic model, so that it really is dynamic.
    run_shape = shape if batch == "static" else (3,) + shape[1:]
    x = make_input(run_shape, dtype, rng)
    params = round_params(args, dtype)
    y_ref = reference_y(op, x, **params)
    y_kernel = kernel(op)(x, **params)
    assert_close(y_kernel, y_ref, dtype, "kernel vs reference")

    if decompose or ort_supports(NATIVE_OP[op], dtype):
        y = ort_runner.run1(model, x)
        assert y.dtype == np.dtype(dtype) and y.shape == x.shape
        assert_close(y, y_kernel, dtype, "onnxruntime vs kernel")
        assert_close(y, y_ref, dtype, "onnxruntime vs reference")
    else:
        # onnxruntime 1.32's CPU provider has no float64 InstanceNormalization
        # kernel; the model is valid ONNX, and decompose=None avoids it.
        with pytest.raises(OrtNotImplemented, match="InstanceNormalization"):
            ort_runner.run1(model, x)

    if dtype == "float16":
        return  # onnx.reference computes in the input dtype: no float16 oracle
    if not decompose and dtype == "float64" and op in ("layer_norm", "rms_norm"):
        # float64 native LayerNormalization / RMSNormalization carry
        # stash_type=11 (statistics in float64, as the data); onnx 1.23's
        # reference implementation only supports stash_type=1.
        with pytest.raises(NotImplementedError, match="stash_type"):
            ReferenceEvaluator(model).run(None, {"x": x})
        return
    y = ReferenceEvaluator(model).run(None, {"x": x})[0]
    if op == "batch_norm" and not decompose and opset < 14:
        # onnx 1.23's reference BatchNormalization_9 takes the filled-in
        # default momentum as a request for training mode and normalizes with
        # the batch's statistics; onnxruntime (above) follows the spec.
        assert np.max(np.abs(y - y_ref)) > 1e-2, "onnx.reference BatchNormalization-9 fixed? compare it again"
        return
    assert_close(y, y_ref, dtype, "onnx.reference vs reference")


@pytest.mark.parametrize("opset", range(13, 24))
@pytest.mark.parametrize("op", OPS)
def test_every_supported_opset(op, opset, ort_runner):
    # The matrix covers six opsets; every other opset in 13..23 must work too.
    rng = rng_for(op, "every-opset")
    args = op_args(op, rng)
    x = make_input(SHAPES[op], "float32", rng)
    forms = [True, None] + ([False] if opset >= NATIVE_SINCE[op] else [])
    for decompose in forms:
        model = onnx_ops.to_onnx(op, input_shape=("N",) + SHAPES[op][1:], opset=opset, decompose=decompose, **args)
        onnx.checker.check_model(model, full_check=True)
        assert_close(ort_runner.run1(model, x), reference_y(op, x, **args), "float32", f"decompose={decompose}")


@pytest.mark.parametrize("form", ["native", "decomposed"])
@pytest.mark.parametrize("op", OPS)
def test_export_without_weight_and_bias(op, form, ort_runner):
    args = op_args(op, rng_for(op, "plain"), affine=False)
    decompose = form == "decomposed"
    model = onnx_ops.to_onnx(op, input_shape=SHAPES[op], opset=23, decompose=decompose, **args)
    onnx.checker.check_model(model, full_check=True)
    x = make_input(SHAPES[op], "float32", rng_for(op, "plain-x"))
    y = ort_runner.run1(model, x)
    assert_close(y, kernel(op)(x, **args), "float32", "onnxruntime vs kernel")
    assert_close(y, reference_y(op, x, **args), "float32", "onnxruntime vs reference")
    inits = {t.name.split("/")[-1]: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    if decompose:
        # Nothing multiplies by ones or adds zeros.
        assert "weight" not in inits and "bias" not in inits
    elif op in ("group_norm", "instance_norm", "batch_norm"):
        # The operator requires scale and bias: ones and zeros stand in.
        assert np.all(inits["weight"] == 1) and np.all(inits["bias"] == 0)
    else:
        assert np.all(inits["weight"] == 1) and "bias" not in inits


# ----------------------------------------------------------- accuracy

_OFFSET_CASES = {
    "layer_norm": ((4, 64), {"normalized_shape": 64}),
    "group_norm": ((2, 8, 6, 6), {"num_groups": 4}),
    "instance_norm": ((2, 4, 8, 8), {}),
    "batch_norm": ((4, 4, 5, 5), {}),
    "rms_norm": ((4, 64), {"normalized_shape": 64}),
}


def _offset_input(op, offset, std, rng):
    shape, args = _OFFSET_CASES[op]
    x = (offset + std * rng.standard_normal(shape)).astype(np.float32)
    args = dict(args)
    if op == "batch_norm":
        # Stored statistics that fit the data, as in a trained model.
        xd = x.astype(np.float64)
        args["running_mean"] = xd.mean(axis=(0, 2, 3))
        args["running_var"] = xd.var(axis=(0, 2, 3))
    return x, args


@pytest.mark.parametrize("offset,std", [(1e4, 1.0), (1e3, 1e-2)], ids=["offset1e4", "offset1e3-std1e-2"])
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op", OPS)
def test_decomposition_is_accurate_on_large_offsets(op, opset, offset, std, ort_runner):
    x, args = _offset_input(op, offset, std, rng_for(op, offset))
    model = onnx_ops.to_onnx(op, input_shape=("N",) + x.shape[1:], opset=opset, decompose=True, **args)
    y = ort_runner.run1(model, x).astype(np.float64)
    y_ref = reference_y(op, x, **round_params(args, np.float32))
    err = np.abs(y - y_ref)
    bound = offset_bound(y_ref)
    assert np.all(err <= bound), f"max error {err.max():.3g}, worst ratio to the bound {(err / bound).max():.2f}"


@pytest.mark.parametrize("offset,std", [(1e4, 1.0), (1e3, 1e-2)], ids=["offset1e4", "offset1e3-std1e-2"])
def test_group_norm_default_is_accurate_on_large_offsets(offset, std, ort_runner):
    x, args = _offset_input("group_norm", offset, std, rng_for("gn-default-offset", offset))
    model = onnx_ops.to_onnx("group_norm", input_shape=x.shape, opset=21, **args)
    assert "InstanceNormalization" in {n.op_type for n in model.graph.node}
    y = ort_runner.run1(model, x).astype(np.float64)
    y_ref = reference_y("group_norm", x, **round_params(args, np.float32))
    assert np.all(np.abs(y - y_ref) <= offset_bound(y_ref))


def test_onnxruntime_native_group_norm_fails_on_large_offsets(ort_runner):
    # The measurement behind group_norm's default (decomposed): onnxruntime
    # runs GroupNormalization-21 as its function body, whose E[x^2]-E[x]^2
    # variance cancels. If this starts failing, onnxruntime has fixed it and
    # the default deserves a new measurement.
    x, args = _offset_input("group_norm", 1e4, 1.0, rng_for("gn-native-offset"))
    model = onnx_ops.to_onnx("group_norm", input_shape=x.shape, opset=21, decompose=False, **args)
    y = ort_runner.run1(model, x).astype(np.float64)
    y_ref = reference_y("group_norm", x, **args)
    err = np.abs(y - y_ref)
    assert not np.all(err <= 100 * offset_bound(y_ref))  # NaN counts as a failure too


@pytest.mark.parametrize("op", OPS)
def test_float16_decomposition_computes_in_float32(op, ort_runner):
    # |x| ~ 300: the variance (~1e5) overflows float16 (max 65504), so a
    # decomposition computed in float16 would give inf/0 here.
    rng = rng_for(op, "f16-wide")
    args = op_args(op, rng)
    x = (300 * rng.standard_normal(SHAPES[op])).astype(np.float16)
    if op == "batch_norm":
        args["running_var"] = np.full(SHAPES[op][1], 6e4)  # near the float16 maximum
        args["running_mean"] = np.zeros(SHAPES[op][1])
    model = onnx_ops.to_onnx(op, input_shape=x.shape, dtype="float16", opset=18, decompose=True, **args)
    nodes = model.graph.node
    first_cast = next(n for n in nodes if n.op_type == "Cast")
    assert first_cast.input[0] == "x" and helper.get_attribute_value(first_cast.attribute[0]) == TensorProto.FLOAT
    assert nodes[-1].op_type == "Cast" and nodes[-1].output[0] == "y"
    assert all(t.data_type != TensorProto.FLOAT16 for t in model.graph.initializer)
    y = ort_runner.run1(model, x)
    params = round_params(args, np.float16)
    assert_close(y, kernel(op)(x, **params), "float16", "onnxruntime vs kernel")
    assert_close(y, reference_y(op, x, **params), "float16", "onnxruntime vs reference")


# ------------------------------------------------------- forms and attributes

# The documented decompose=None table (onnx_ops.to_onnx docstring): the
# normalization operators the default model contains.
_DEFAULT_NORM_OPS = {
    "layer_norm": lambda opset, dtype: {"LayerNormalization"} if opset >= 17 else set(),
    "group_norm": lambda opset, dtype: set() if dtype == "float64" else {"InstanceNormalization"},
    "instance_norm": lambda opset, dtype: set() if dtype == "float64" else {"InstanceNormalization"},
    "batch_norm": lambda opset, dtype: {"BatchNormalization"},
    "rms_norm": lambda opset, dtype: {"RMSNormalization"} if opset >= 23 else set(),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op", OPS)
def test_default_form(op, opset, dtype):
    args = op_args(op, rng_for(op, "default"))
    model = onnx_ops.to_onnx(op, input_shape=SHAPES[op], dtype=dtype, opset=opset, **args)
    assert {n.op_type for n in model.graph.node} & NORM_OP_TYPES == _DEFAULT_NORM_OPS[op](opset, dtype)


@pytest.mark.parametrize("batch", ["static", "dynamic"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("opset", OPSETS)
def test_group_norm_default_form(opset, dtype, batch, ort_runner):
    # decompose=None's group_norm (float32/float16): InstanceNormalization on
    # (N, G, -1) after subtracting each group's first element.
    rng = rng_for("gn-default", dtype, batch)
    args = op_args("group_norm", rng)
    shape = SHAPES["group_norm"]
    input_shape = shape if batch == "static" else ("batch", shape[1], "H", "W")
    model = onnx_ops.to_onnx("group_norm", input_shape=input_shape, dtype=dtype, opset=opset, **args)
    op_types = [n.op_type for n in model.graph.node]
    assert op_types.count("InstanceNormalization") == 1 and "Slice" in op_types and "Sub" in op_types
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    x = make_input(shape if batch == "static" else (3, shape[1], 2, 5), dtype, rng)
    params = round_params(args, dtype)
    y = ort_runner.run1(model, x)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, kernel("group_norm")(x, **params), dtype, "onnxruntime vs kernel")
    assert_close(y, reference_y("group_norm", x, **params), dtype, "onnxruntime vs reference")
    if dtype == "float32":
        y = ReferenceEvaluator(model).run(None, {"x": x})[0]
        assert_close(y, reference_y("group_norm", x, **params), dtype, "onnx.reference vs reference")


@pytest.mark.parametrize("opset", OPSETS)
def test_reduce_mean_axes_form_follows_opset(opset):
    model = onnx_ops.to_onnx("layer_norm", input_shape=(2, 8), normalized_shape=8, opset=opset, decompose=True)
    reduces = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    assert len(reduces) == 2
    for n in reduces:
        has_attr = any(a.name == "axes" for a in n.attribute)
        assert has_attr == (opset < 18) and len(n.input) == (2 if opset >= 18 else 1)


@pytest.mark.parametrize("opset", [13, 14, 15, 23])
def test_batch_norm_version_follows_opset(opset):
    args = op_args("batch_norm", rng_for("bn-version"))
    model = onnx_ops.to_onnx("batch_norm", input_shape=SHAPES["batch_norm"], opset=opset, decompose=False, **args)
    (bn,) = model.graph.node
    assert onnx.defs.get_schema("BatchNormalization", opset).since_version == {13: 9, 14: 14}.get(opset, 15)
    assert not any(a.name == "training_mode" for a in bn.attribute)
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "group_norm", "rms_norm"])
def test_stash_type_matches_dtype(op, dtype):
    args = op_args(op, rng_for(op, "stash"))
    model = onnx_ops.to_onnx(op, input_shape=SHAPES[op], dtype=dtype, opset=23, decompose=False, **args)
    (node,) = [n for n in model.graph.node if n.op_type == NATIVE_OP[op]]
    stash = {a.name: helper.get_attribute_value(a) for a in node.attribute}["stash_type"]
    assert stash == (TensorProto.DOUBLE if dtype == "float64" else TensorProto.FLOAT)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["native", "decomposed"])
def test_rms_norm_default_eps_is_machine_epsilon(form, dtype):
    model = onnx_ops.to_onnx("rms_norm", input_shape=(2, 8), dtype=dtype, opset=23, normalized_shape=8,
                             decompose=form == "decomposed")
    eps = float(np.finfo(dtype).eps)
    if form == "native":
        (node,) = model.graph.node
        assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["epsilon"] == pytest.approx(eps)
    else:
        (t,) = [t for t in model.graph.initializer if t.name.endswith("/epsilon")]
        assert float(onnx.numpy_helper.to_array(t)) == eps


def test_symbolic_dims(ort_runner):
    # Named and unnamed symbolic dims beyond the batch: normalized dims for
    # layer_norm, spatial dims for group_norm (which then reshapes via Shape).
    ln = onnx_ops.to_onnx("layer_norm", input_shape=("N", None, 8), normalized_shape=8, opset=13)
    gn = onnx_ops.to_onnx("group_norm", input_shape=("N", 6, "H", "W"), num_groups=2, opset=18)
    assert "Shape" in {n.op_type for n in gn.graph.node}
    for model in (ln, gn):
        onnx.checker.check_model(model, full_check=True)
    rng = rng_for("symbolic")
    for shape in [(2, 3, 8), (1, 5, 8)]:
        x = make_input(shape, "float32", rng)
        assert_close(ort_runner.run1(ln, x), reference_y("layer_norm", x, normalized_shape=8), "float32", "ln")
    for shape in [(2, 6, 3, 4), (1, 6, 5, 2)]:
        x = make_input(shape, "float32", rng)
        assert_close(ort_runner.run1(gn, x), reference_y("group_norm", x, num_groups=2), "float32", "gn")


def test_group_norm_native_is_opset21_form_with_per_channel_scale():
    w = np.arange(6.0)
    model = onnx_ops.to_onnx("group_norm", input_shape=(1, 6, 2, 2), num_groups=2, weight=w, opset=21,
                             decompose=False)
    (node,) = model.graph.node
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits[node.input[1]].shape == (6,) and np.array_equal(inits[node.input[1]], w)
    with pytest.raises(ValueError, match="GroupNormalization.*opset 18.*from opset 21"):
        onnx_ops.to_onnx("group_norm", input_shape=(1, 6, 2, 2), num_groups=2, opset=18, decompose=False)


# ------------------------------------------------------------ bad arguments

_LN = {"normalized_shape": (4, 5)}


@pytest.mark.parametrize(
    "op,kwargs,exc,match",
    [
        ("softmax", {}, ValueError, "unknown op 'softmax'"),
        ("layer_norm", dict(_LN, opset=12), ValueError, "opset=12 is out of the supported range 13..23"),
        ("layer_norm", dict(_LN, opset=24), ValueError, "opset=24"),
        ("layer_norm", dict(_LN, opset="17"), TypeError, "opset must be an int"),
        ("layer_norm", dict(_LN, dtype="int32"), TypeError, "dtype must be float32, float64 or float16"),
        ("layer_norm", dict(_LN, dtype="bfloat16x"), TypeError, "dtype"),
        ("layer_norm", dict(_LN, decompose="yes"), TypeError, "decompose must be"),
        ("layer_norm", dict(_LN, opset=15, decompose=False), ValueError, "LayerNormalization.*opset 15.*17"),
        ("rms_norm", dict(_LN, opset=21, decompose=False), ValueError, "RMSNormalization.*opset 21.*23"),
        ("layer_norm", {"normalized_shape": (5, 4)}, ValueError,
         r"normalized_shape \(5, 4\) does not match.*\(2, 3, 4, 5\)"),
        ("layer_norm", {"normalized_shape": (1, 2, 3, 4, 5)}, ValueError, "more dims than the input shape"),
        ("layer_norm", {"normalized_shape": ()}, ValueError, "must not be empty"),
        ("layer_norm", {"normalized_shape": "45"}, TypeError, "normalized_shape"),
        ("layer_norm", dict(_LN, weight=np.ones(5)), ValueError, r"weight has shape \(5,\), expected \(4, 5\)"),
        ("layer_norm", dict(_LN, bias=np.ones((5, 4))), ValueError, r"bias has shape \(5, 4\), expected \(4, 5\)"),
        ("layer_norm", dict(_LN, weight=np.array(["a"] * 20).reshape(4, 5)), TypeError,
         "weight must be an array of real"),
        ("layer_norm", dict(_LN, eps=0.0), ValueError, "eps must be positive"),
        ("layer_norm", dict(_LN, eps=-1e-5), ValueError, "eps must be positive"),
        ("layer_norm", dict(_LN, eps=float("nan")), ValueError, "eps"),
        ("layer_norm", dict(_LN, eps="1e-5"), TypeError, "eps must be a positive float"),
        ("layer_norm", dict(_LN, dtype="float16", weight=np.full((4, 5), 1e6)), ValueError, "overflow float16"),
        ("layer_norm", {}, TypeError, "normalized_shape"),
        ("layer_norm", dict(_LN, num_groups=2), TypeError, "num_groups"),
        ("layer_norm", dict(_LN, name="ln"), TypeError, "unexpected keyword"),
        ("group_norm", {"num_groups": 2}, ValueError,
         r"num_groups=2 does not divide the channel count C=3 .*\(2, 3, 4, 5\)"),
        ("group_norm", {"num_groups": 0}, ValueError, "num_groups must be >= 1"),
        ("group_norm", {"num_groups": 1.5}, TypeError, "num_groups must be an int"),
        ("group_norm", {"num_groups": 3, "weight": np.ones(4)}, ValueError,
         r"weight has shape \(4,\), expected \(3,\)"),
        ("instance_norm", {"bias": np.ones((3, 1))}, ValueError, r"bias has shape \(3, 1\), expected \(3,\)"),
        ("batch_norm", {"running_mean": np.zeros(3)}, TypeError, "running_var"),
        ("batch_norm", {"running_mean": np.zeros(4), "running_var": np.ones(3)}, ValueError,
         r"running_mean has shape \(4,\), expected \(3,\)"),
        ("batch_norm", {"running_mean": np.zeros(3), "running_var": -np.ones(3)}, ValueError,
         "running_var must be >= 0"),
        ("rms_norm", {"normalized_shape": 4}, ValueError, r"normalized_shape \(4,\) does not match"),
        ("rms_norm", {"normalized_shape": 5, "eps": 0}, ValueError, "eps must be positive"),
    ],
)
def test_bad_arguments(op, kwargs, exc, match):
    kwargs = dict(kwargs)
    input_shape = kwargs.pop("input_shape", (2, 3, 4, 5))
    with pytest.raises(exc, match=match):
        onnx_ops.to_onnx(op, input_shape=input_shape, **kwargs)


@pytest.mark.parametrize(
    "op,input_shape,kwargs,match",
    [
        ("group_norm", ("N", "C", 4), {"num_groups": 1}, r"known channel count .*\('N', 'C', 4\)"),
        ("batch_norm", (2,), {"running_mean": np.zeros(1), "running_var": np.ones(1)}, "rank >= 2"),
        ("instance_norm", (2, 3), {}, r"rank >= 3 \(N, C, D1, ...\)"),
        ("layer_norm", (2, -1), {"normalized_shape": 1}, "negative"),
    ],
)
def test_bad_input_shapes(op, input_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        onnx_ops.to_onnx(op, input_shape=input_shape, **kwargs)


def test_bad_input_shape_kind():
    with pytest.raises(TypeError, match="input_shape"):
        onnx_ops.to_onnx("layer_norm", input_shape=8, normalized_shape=8)
    with pytest.raises(TypeError, match=r"input_shape\[1\]"):
        onnx_ops.to_onnx("layer_norm", input_shape=(2, 8.0), normalized_shape=8)


# ---------------------------------------------------------------- builders


def _graph(inputs, outputs=()):
    return helper.make_graph(
        [],
        "user_graph",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
    )


def test_builders_inside_a_larger_graph(ort_runner):
    rng = rng_for("builders")
    C = 6
    w_gn, b_gn = rng.standard_normal(C), rng.standard_normal(C)
    w_ln = rng.standard_normal(16)
    graph = _graph([("img", ["N", C, 4, 4])], [("out", ["N", C, 16])])
    h = onnx_ops.make_group_norm(graph, "img", 3, w_gn, b_gn, opset=18, name="block0/gn")
    graph.node.append(helper.make_node("Relu", [h], ["act"], name="block0/relu"))
    graph.node.append(
        helper.make_node("Reshape", ["act", "flat_shape"], ["flat"], name="block0/flatten")
    )
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, C, 16], np.int64), "flat_shape"))
    # "flat" has no declared type: the builder finds it by shape inference.
    h2 = onnx_ops.make_layer_norm(graph, "flat", 16, w_ln, opset=18, decompose=False, name="block0/ln")
    h3 = onnx_ops.make_rms_norm(graph, h2, 16, eps=1e-6, opset=18, name="block0/rms", output="out")
    assert h3 == "out"
    assert h.startswith("block0/gn/") and h2.startswith("block0/ln/")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    names = [n.name for n in graph.node]
    assert len(set(names)) == len(names)

    x = make_input((2, C, 4, 4), "float32", rng)
    step = np.maximum(reference_y("group_norm", x, num_groups=3, weight=w_gn, bias=b_gn), 0).reshape(2, C, 16)
    step = reference_y("layer_norm", step, normalized_shape=16, weight=w_ln.astype(np.float32))
    expected = reference_y("rms_norm", step, normalized_shape=16, eps=1e-6)
    assert_close(ort_runner.run(model, {"img": x})[0], expected, "float32", "composed graph")


def test_builder_reusing_a_name_gets_a_fresh_prefix():
    graph = _graph([("h", ["N", 8])])
    out1 = onnx_ops.make_layer_norm(graph, "h", 8, opset=13, name="ln")
    out2 = onnx_ops.make_layer_norm(graph, out1, 8, opset=13, name="ln")
    assert out1.startswith("ln/") and out2.startswith("ln_1/")
    names = [n.name for n in graph.node]
    assert len(set(names)) == len(names)
    assert all(n.startswith(("ln/", "ln_1/")) for n in names)
    tensors = [o for n in graph.node for o in n.output] + [t.name for t in graph.initializer]
    assert len(set(tensors)) == len(tensors)
    # The value_info added for out1 is what let the second call find its type.
    assert out1 in {v.name for v in graph.value_info}


def test_builder_errors():
    graph = _graph([("h", ["N", 8])])
    graph.node.append(helper.make_node("Identity", ["h"], ["taken"]))
    with pytest.raises(ValueError, match="'taken' is already produced"):
        onnx_ops.make_layer_norm(graph, "h", 8, opset=17, output="taken")
    with pytest.raises(ValueError, match="cannot determine the dtype and shape of 'nowhere'.*value_info"):
        onnx_ops.make_layer_norm(graph, "nowhere", 8, opset=17)
    with pytest.raises(TypeError, match="opset"):
        onnx_ops.make_layer_norm(graph, "h", 8)
    with pytest.raises(TypeError, match="onnx.GraphProto"):
        onnx_ops.make_layer_norm(helper.make_model(graph), "h", 8, opset=17)
    ints = helper.make_graph([], "g", [helper.make_tensor_value_info("i", TensorProto.INT64, [2, 8])], [])
    with pytest.raises(TypeError, match="'i' has dtype int64"):
        onnx_ops.make_rms_norm(ints, "i", 8, opset=23)
    before = len(graph.node)
    with pytest.raises(ValueError):
        onnx_ops.make_group_norm(graph, "h", 3, opset=21)  # C=8 is not divisible by 3
    assert len(graph.node) == before  # nothing appended on error


def test_public_api():
    assert set(onnx_ops.__all__) >= {
        "to_onnx", "convert", "make_layer_norm", "make_group_norm", "make_instance_norm", "make_batch_norm",
        "make_rms_norm",
    }
    for name in onnx_ops.__all__:
        obj = getattr(onnx_ops, name)
        if callable(obj):
            assert obj.__doc__ and "Parameters" in obj.__doc__ and "Returns" in obj.__doc__, name


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("onnx_ops._builders", "onnx_ops._export", "onnx_ops._convert"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.failed == 0, name
        assert result.attempted > 0, name


def test_onnx_ops_imports_without_numba():
    code = (
        "import sys\n"
        "sys.modules['numba'] = None  # any import of numba now fails\n"
        "import onnx_ops\n"
        "m = onnx_ops.to_onnx('group_norm', input_shape=('N', 4, 2, 2), num_groups=2)\n"
        "onnx_ops.convert(m, 13)\n"
        "assert 'numbanorm' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_repo_root())
    assert result.returncode == 0, result.stderr


def _repo_root():
    import pathlib

    return str(pathlib.Path(__file__).resolve().parents[1])
