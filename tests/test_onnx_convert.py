"""onnx_ops.convert: fusing exporters' patterns, decomposing native norms, keeping the rest.

Source models are built node by node as PyTorch's TorchScript exporter emits
them (see the dumps in ONNX-FACTS §4: Constant nodes for scalars, initializers
for weights, axes as an attribute below opset 18), plus real exports when
torch is installed. Every converted model must pass the full checker and give
the source model's outputs in onnxruntime.
"""

import functools
import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_ops
from tests.conftest_onnx import ort_runner  # noqa: F401  (fixture)
from tests.onnx_helpers import (
    NATIVE_OP,
    NORM_OP_TYPES,
    OPS,
    OPSETS,
    SHAPES,
    assert_close,
    make_input,
    op_args,
    reference_y,
    rng_for,
)

DECOMPOSE = [None, False, True]
F32, F16 = np.dtype(np.float32), np.dtype(np.float16)


class Maker:
    """Builds a graph node by node, TorchScript style (Constant nodes for scalars)."""

    def __init__(self, opset, dtype=F32):
        self.opset, self.dtype = opset, np.dtype(dtype)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, op):
        self.n += 1
        return f"/m/{op}_{self.n}"

    def node(self, op, inputs, **attrs):
        name = self.name(op)
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_output_0"], name=name, **attrs))
        return f"{name}_output_0"

    def const(self, value, dtype=None):
        name = self.name("Constant")
        tensor = numpy_helper.from_array(np.asarray(value, dtype or self.dtype))
        self.nodes.append(helper.make_node("Constant", [], [f"{name}_output_0"], name=name, value=tensor))
        return f"{name}_output_0"

    def init(self, value, dtype=None):
        name = f"param_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name

    def reduce_mean(self, x, axes):
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.const(axes, np.int64)], keepdims=1)
        return self.node("ReduceMean", [x], axes=list(axes))

    def reshape(self, x, shape):
        attrs = {"allowzero": 0} if self.opset >= 14 else {}
        return self.node("Reshape", [x, shape], **attrs)

    def model(self, outputs, in_shape, extra_inputs=(), out_shape=None):
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        # The last node writes "y" (a graph output), as exporters name it.
        last = self.nodes[-1]
        old = last.output[0]
        last.output[0] = "y"
        outputs = ["y" if o == old else o for o in outputs]
        for n in self.nodes:
            n.input[:] = ["y" if i == old else i for i in n.input]
        graph = helper.make_graph(
            self.nodes,
            "torch_style",
            [helper.make_tensor_value_info("x", elem, list(in_shape))]
            + [helper.make_tensor_value_info(n, t, s) for n, t, s in extra_inputs],
            # y has x's shape in every pattern here (unless told), as exporters declare it.
            [helper.make_tensor_value_info(o, elem, list(out_shape or in_shape)) if o == "y"
             else helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
            self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", self.opset)])
        return _typed_outputs(m)


def _typed_outputs(model):
    """Give every graph output its inferred type and shape (the checker wants a shape)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known = {v.name: v for v in inferred.graph.value_info}
    known.update({v.name: v for v in inferred.graph.output if v.type.tensor_type.HasField("shape")})
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    return model


# ---------------------------------------------------- TorchScript patterns


def torch_layer_norm(opset, dtype=F32, affine=True, variant=None, eps=1e-5):
    """F.layer_norm over (4, 5) of x (N, 3, 4, 5) as exported below opset 17.

    float16 gets the exporter's Casts around the statistics (to double).
    ``variant`` changes the pattern in one place: most variants break it
    (std_output, sub_used, axes, pow4, eps_input), some keep it fusable
    (mul_square, eps_shared) or fusable without its weight (row_weight).
    """
    rng = rng_for("tln", opset, str(dtype), variant)
    m = Maker(opset, dtype)
    x = m.node("Mul", ["x", m.const(1.5)])  # something before the norm
    mean = m.reduce_mean(x, [-2, -1])
    sub = m.node("Sub", [x, mean])
    stats_dtype = np.float64 if m.dtype == F16 else m.dtype
    centered = m.node("Cast", [sub], to=TensorProto.DOUBLE) if m.dtype == F16 else sub
    if variant == "mul_square":
        sq = m.node("Mul", [centered, centered])
    else:
        sq = m.node("Pow", [centered, m.const(4.0 if variant == "pow4" else 2.0, stats_dtype)])
    var = m.reduce_mean(sq, [-1] if variant == "axes" else [-2, -1])
    eps_name = "eps_in" if variant == "eps_input" else m.const(eps, stats_dtype)
    add = m.node("Add", [var, eps_name])
    std = m.node("Sqrt", [add])
    y = m.node("Div", [centered, std])
    if m.dtype == F16:
        y = m.node("Cast", [y], to=TensorProto.FLOAT16)
    outputs, extra = [], []
    if variant == "std_output":
        outputs.append(std)
    if variant == "eps_input":
        extra.append(("eps_in", helper.np_dtype_to_tensor_dtype(np.dtype(stats_dtype)), []))
    if variant == "sub_used":
        outputs.append(m.node("Neg", [sub]))
    if variant == "eps_shared":
        outputs.append(m.node("Add", [x, eps_name]))
    if affine:
        wshape = (3, 1, 1) if variant == "row_weight" else (4, 5)
        y = m.node("Mul", [y, m.init(1 + 0.5 * rng.standard_normal(wshape))])
        y = m.node("Add", [y, m.init(rng.standard_normal((4, 5)))])
    m.node("Relu", [y])  # something after the norm
    return m.model(["y"] + outputs, ("N", 3, 4, 5), extra)


def torch_group_norm(opset, dtype=F32, G=2, variant=None):
    """F.group_norm(x (N, 4, 3, 5), G) as TorchScript exports it at every opset."""
    rng = rng_for("tgn", opset, str(dtype), variant)
    C = 4
    m = Maker(opset, dtype)
    r = m.reshape("x", m.const([0, G, -1], np.int64))
    ones = np.full(G, 2.0) if variant == "scale" else np.ones(G)
    inorm = m.node("InstanceNormalization", [r, m.const(ones), m.const(np.zeros(G))], epsilon=1e-5)
    back = m.reshape(inorm, m.node("Shape", ["x"]))
    y = m.node("Mul", [back, m.init(1 + 0.5 * rng.standard_normal((C, 1, 1)))])
    m.node("Add", [y, m.init(rng.standard_normal((C, 1, 1)))])
    return m.model(["y"], ("N", C, 3, 5))


def torch_rms_norm(opset, variant="pow_div_one", dtype=F32):
    """x * rsqrt(mean(x^2) + eps) * w in the forms exporters produce.

    pow_div_one: Pow, ReduceMean, Add, Sqrt, Div(1, .), Mul(x, .), Mul(w, .)
    (what torch.onnx exports for a hand-written RMSNorm); mul_recip: Mul(x, x)
    and Reciprocal; pow_div: Pow and Div(x, .); other_x: the final Mul takes
    another tensor than the squared one.
    """
    rng = rng_for("trms", opset, variant)
    m = Maker(opset, dtype)
    sq = m.node("Mul", ["x", "x"]) if variant == "mul_recip" else m.node("Pow", ["x", m.const(2.0)])
    ms = m.reduce_mean(sq, [-1])
    std = m.node("Sqrt", [m.node("Add", [ms, m.const(1e-6)])])
    if variant == "pow_div":
        y = m.node("Div", ["x", std])
    elif variant == "mul_recip":
        y = m.node("Mul", [m.node("Reciprocal", [std]), "x"])
    else:
        x2 = m.node("Neg", ["x"]) if variant == "other_x" else "x"
        y = m.node("Mul", [x2, m.node("Div", [m.const(1.0), std])])
    m.node("Mul", [m.init(1 + 0.5 * rng.standard_normal(8)), y])
    return m.model(["y"], ("N", 3, 8))


# ------------------------------------------------------------ checks


def _op_types(model):
    out = []
    for g in _graphs(model.graph):
        out += [n.op_type for n in g.node]
    return out


def _graphs(graph):
    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)


def _feeds(model, rng, batch=2):
    feeds = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = make_input(dims, dtype, rng) if dims else np.asarray(1e-5, dtype)
    return feeds


def assert_equivalent(ort_runner, source, converted, target, feeds=None, expected=None):
    """converted is valid at ``target`` and computes what source computes."""
    assert [i.version for i in converted.opset_import if i.domain in ("", "ai.onnx")] == [target]
    assert all(i.domain != "onnx_ops.pending" for i in converted.opset_import)
    onnx.checker.check_model(converted, full_check=True)
    feeds = feeds or _feeds(source, rng_for("feeds", source.graph.name))
    expected = expected if expected is not None else ort_runner.run(source, feeds)
    got = ort_runner.run(converted, feeds)
    assert [o.name for o in converted.graph.output] == [o.name for o in source.graph.output]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        assert_close(g, e, str(g.dtype), "converted vs source")


def _compute_ops(model):
    """The sorted op types without Constant nodes (the version converter adds those for axes)."""
    return sorted(t for t in _op_types(model) if t != "Constant")


def _count(model, op_type):
    return _op_types(model).count(op_type)


# ------------------------------------------------------------ patterns


@pytest.mark.parametrize("decompose", DECOMPOSE)
@pytest.mark.parametrize("target", OPSETS)
@pytest.mark.parametrize("dtype", [F32, F16], ids=["float32", "float16"])
@pytest.mark.parametrize("source", [13, 15, 18])
def test_layer_norm_pattern(source, dtype, target, decompose, ort_runner):
    model = torch_layer_norm(source, dtype)
    converted = onnx_ops.convert(model, target, decompose=decompose)
    fused = target >= 17 and decompose is not True
    if fused:
        assert _count(converted, "LayerNormalization") == 1
        assert not {"Pow", "Sqrt", "Div", "ReduceMean", "Cast"} & set(_op_types(converted))
        # Before and after the norm, as in the source.
        assert _op_types(converted) == ["Constant", "Mul", "LayerNormalization", "Relu"]
    else:
        assert _compute_ops(converted) == _compute_ops(model)
        assert _count(converted, "LayerNormalization") == 0
    assert_equivalent(ort_runner, model, converted, target)


@pytest.mark.parametrize("variant", [None, "mul_square"])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_pattern_without_affine(affine, variant, ort_runner):
    model = torch_layer_norm(13, affine=affine, variant=variant)
    converted = onnx_ops.convert(model, 17)
    (ln,) = [n for n in converted.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln.input) == (3 if affine else 2)
    assert {a.name: helper.get_attribute_value(a) for a in ln.attribute}["axis"] == -2
    assert_equivalent(ort_runner, model, converted, 17)


@pytest.mark.parametrize("decompose", DECOMPOSE)
@pytest.mark.parametrize("target", OPSETS)
@pytest.mark.parametrize("dtype", [F32, F16], ids=["float32", "float16"])
@pytest.mark.parametrize("source", [13, 18])
def test_group_norm_pattern(source, dtype, target, decompose, ort_runner):
    model = torch_group_norm(source, dtype)
    converted = onnx_ops.convert(model, target, decompose=decompose)
    if decompose is False and target >= 21:
        assert _count(converted, "GroupNormalization") == 1 and len(converted.graph.node) == 1
    elif decompose is True:
        assert not NORM_OP_TYPES & set(_op_types(converted))
    else:
        # None keeps the exporter's InstanceNormalization form (a decomposition already).
        assert _count(converted, "InstanceNormalization") == 1 and _count(converted, "GroupNormalization") == 0
    assert_equivalent(ort_runner, model, converted, target)


@pytest.mark.parametrize("decompose", DECOMPOSE)
@pytest.mark.parametrize("target", [13, 18, 21, 23])
@pytest.mark.parametrize("variant", ["pow_div_one", "mul_recip", "pow_div"])
@pytest.mark.parametrize("source", [13, 18])
def test_rms_norm_patterns(source, variant, target, decompose, ort_runner):
    model = torch_rms_norm(source, variant)
    converted = onnx_ops.convert(model, target, decompose=decompose)
    if target >= 23 and decompose is not True:
        assert _op_types(converted) == ["RMSNormalization"]
        (node,) = converted.graph.node
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["axis"] == -1 and attrs["epsilon"] == pytest.approx(1e-6)
    else:
        assert _count(converted, "RMSNormalization") == 0
    assert_equivalent(ort_runner, model, converted, target)


# Patterns that differ from the exporters' in one detail: left unfused.
@pytest.mark.parametrize(
    "build,why",
    [
        (lambda: torch_layer_norm(13, variant="std_output"), "an intermediate (Sqrt) is a graph output"),
        (lambda: torch_layer_norm(13, variant="sub_used"), "x - mean also feeds another node"),
        (lambda: torch_layer_norm(13, variant="axes"), "the two ReduceMeans have different axes"),
        (lambda: torch_layer_norm(13, variant="pow4"), "exponent 4"),
        (lambda: torch_layer_norm(13, variant="eps_input"), "epsilon is a graph input, not a constant"),
        (lambda: torch_layer_norm(13, eps=0.0), "epsilon 0"),
        (lambda: torch_group_norm(13, variant="scale"), "InstanceNormalization scale is not ones"),
        (lambda: torch_rms_norm(13, "other_x"), "the final Mul takes another tensor"),
    ],
)
def test_inexact_patterns_are_left_alone(build, why, ort_runner):
    model = build()
    converted = onnx_ops.convert(model, 23, decompose=False)
    assert not {"LayerNormalization", "GroupNormalization", "RMSNormalization"} & set(_op_types(converted)), why
    assert _compute_ops(converted) == _compute_ops(model), why
    feeds = _feeds(model, rng_for("inexact"))
    assert_equivalent(ort_runner, model, converted, 23, feeds)


def test_shared_eps_constant_survives_fusion(ort_runner):
    # The pattern fuses; the epsilon Constant stays for its other consumer.
    model = torch_layer_norm(13, variant="eps_shared")
    converted = onnx_ops.convert(model, 17)
    assert _count(converted, "LayerNormalization") == 1
    assert_equivalent(ort_runner, model, converted, 17)


def test_weight_along_other_axes_stays_a_mul(ort_runner):
    # A (3, 1, 1) weight on x (N, 3, 4, 5) normalized over (4, 5) scales rows,
    # which LayerNormalization's Scale cannot express: fuse the norm only.
    model = torch_layer_norm(13, variant="row_weight")
    converted = onnx_ops.convert(model, 17)
    assert _op_types(converted) == ["Constant", "Mul", "LayerNormalization", "Mul", "Add", "Relu"]
    assert_equivalent(ort_runner, model, converted, 17)


# ------------------------------------------------------------ native nodes

_NATIVE_SOURCES = [
    ("layer_norm", 17), ("layer_norm", 23),
    ("group_norm", 21), ("group_norm", 23),
    ("instance_norm", 13), ("instance_norm", 23),
    ("batch_norm", 13), ("batch_norm", 15),
    ("rms_norm", 23),
]


@functools.lru_cache(maxsize=None)
def _native_model(op, opset, dtype):
    args = op_args(op, rng_for("native", op))
    shape = ("N",) + SHAPES[op][1:]
    return onnx_ops.to_onnx(op, input_shape=shape, dtype=dtype, opset=opset, decompose=False, **args)


@pytest.mark.parametrize("decompose", DECOMPOSE)
@pytest.mark.parametrize("target", OPSETS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op,source", _NATIVE_SOURCES)
def test_native_nodes(op, source, dtype, target, decompose, ort_runner):
    model = _native_model(op, source, dtype)
    converted = onnx_ops.convert(model, target, decompose=decompose)
    norm_ops = NORM_OP_TYPES & set(_op_types(converted))
    has = onnx_ops.NATIVE_SINCE[op] <= target
    if decompose is True or (not has and op != "group_norm"):
        expected = set()
    elif op == "group_norm" and decompose is not False:
        expected = {"InstanceNormalization"}  # the default: shifted InstanceNormalization
    elif not has:
        expected = set()
    else:
        expected = {NATIVE_OP[op]}
    assert norm_ops == expected
    assert_equivalent(ort_runner, model, converted, target)


@pytest.mark.parametrize("source,target", [(14, 22), (22, 14), (16, 19), (20, 16)])
def test_odd_opsets(source, target, ort_runner):
    # Opsets between the six of the matrix, where Reshape/Identity/If and
    # friends change versions, both ways.
    model = onnx_ops.convert(torch_layer_norm(13), source, decompose=True)
    converted = onnx_ops.convert(model, target)
    assert _count(converted, "LayerNormalization") == (1 if target >= 17 else 0)
    assert_equivalent(ort_runner, model, converted, target)


@pytest.mark.parametrize("decompose", [None, True])
@pytest.mark.parametrize("op", ["group_norm", "instance_norm", "batch_norm"])
def test_norms_on_inputs_of_unknown_rank(op, decompose, ort_runner):
    # x is reshaped by a runtime shape, so its rank is unknown when the model
    # is converted; the rewrites then work on an (N, C, -1) view of x.
    rng = rng_for("unknown-rank", op)
    C = 6
    node_inputs = {
        "group_norm": (["h", "w", "b"], {"num_groups": 2, "epsilon": 1e-5}),
        "instance_norm": (["h", "w", "b"], {"epsilon": 1e-5}),
        "batch_norm": (["h", "w", "b", "mean", "var"], {"epsilon": 1e-5}),
    }[op]
    inits = [numpy_helper.from_array((1 + 0.5 * rng.standard_normal(C)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2, C).astype(np.float32), "var")]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["h"]),
         helper.make_node(NATIVE_OP[op], node_inputs[0], ["y"], **node_inputs[1])],
        "unknown_rank",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, ["R"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, "H", "W"])],
        inits,
    )
    source = 21 if op == "group_norm" else 13
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", source)])
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", source)])
    converted = onnx_ops.convert(model, 18, decompose=decompose)
    assert NATIVE_OP[op] not in _op_types(converted) or (op != "group_norm" and decompose is None)
    feeds = {"x": make_input((2, 24), np.float32, rng), "shape": np.array([2, C, 2, 2], np.int64)}
    assert_equivalent(ort_runner, model, converted, 18, feeds)


def test_float64_instance_norm_is_decomposed_by_default(ort_runner):
    # onnxruntime has no float64 InstanceNormalization kernel; the default
    # conversion decomposes it, so the model runs.
    model = _native_model("instance_norm", 13, "float64")
    converted = onnx_ops.convert(model, 13)
    assert "InstanceNormalization" not in _op_types(converted)
    x = make_input((2,) + SHAPES["instance_norm"][1:], np.float64, rng_for("in64"))
    args = op_args("instance_norm", rng_for("native", "instance_norm"))
    y = ort_runner.run1(converted, x)
    assert_close(y, reference_y("instance_norm", x, **args), "float64", "decomposed float64 instance norm")
    onnx.checker.check_model(converted, full_check=True)


def test_layer_norm_optional_outputs_survive_decomposition(ort_runner):
    rng = rng_for("ln-stats")
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "w", "b"], ["y", "mean", "rstd"], axis=-1, epsilon=1e-3)],
        "ln_stats",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8]),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3, 1]),
         helper.make_tensor_value_info("rstd", TensorProto.FLOAT, ["N", 3, 1])],
        [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    converted = onnx_ops.convert(model, 13)
    assert "LayerNormalization" not in _op_types(converted)
    assert_equivalent(ort_runner, model, converted, 13)


@pytest.mark.parametrize("decompose", DECOMPOSE)
@pytest.mark.parametrize("target", [13, 18, 21, 23])
def test_deprecated_group_norm_18(target, decompose, ort_runner):
    # GroupNormalization-18 scales per group (shape (G,)); the checker rejects
    # it but onnxruntime runs it. Native targets get GroupNormalization-21
    # with the values repeated per channel.
    rng = rng_for("gn18")
    G, C = 2, 6
    graph = helper.make_graph(
        [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=G, epsilon=1e-5)],
        "gn18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 3, 3])],
        [numpy_helper.from_array(rng.standard_normal(G).astype(np.float32), "s"),
         numpy_helper.from_array(rng.standard_normal(G).astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    converted = onnx_ops.convert(model, target, decompose=decompose)
    if decompose is False and target >= 21:
        (node,) = converted.graph.node
        scale = numpy_helper.to_array(next(t for t in converted.graph.initializer if t.name == node.input[1]))
        assert scale.shape == (C,)
    else:
        assert "GroupNormalization" not in _op_types(converted)
    assert_equivalent(ort_runner, model, converted, target)


# ------------------------------------------------------------ the rest of the model


def _plain_model(opset):
    """MatMul, Add, Relu, Reshape, ReduceMean (not a norm), Softmax: no normalization."""
    rng = rng_for("plain", opset)
    m = Maker(opset)
    h = m.node("MatMul", ["x", m.init(rng.standard_normal((8, 6)))])
    h = m.node("Relu", [m.node("Add", [h, m.init(rng.standard_normal(6))])])
    h = m.reshape(h, m.const([0, 2, 3], np.int64))
    h = m.reduce_mean(h, [1])
    m.node("Softmax", [h], axis=-1)
    return m.model(["y"], ("N", 8), out_shape=("N", 1, 3))


@pytest.mark.parametrize("target", OPSETS)
@pytest.mark.parametrize("source", [13, 18])
def test_model_without_norms(source, target, ort_runner):
    model = _plain_model(source)
    converted = onnx_ops.convert(model, target)
    assert sorted(set(_op_types(converted))) == sorted(set(_op_types(model)))
    assert_equivalent(ort_runner, model, converted, target)
    # Same opset: nothing to do, the graph is unchanged.
    if source == target:
        assert converted.graph == model.graph


def test_norm_inside_a_subgraph_is_rewritten(ort_runner):
    branch_model = torch_layer_norm(13)
    branch = branch_model.graph
    branch.name = "then"
    del branch.input[:]  # the branch reads x from the outer scope
    # The Relu (and its "y") become the branch output "ty".
    for n in branch.node:
        n.output[:] = ["ty" if o == "y" else o for o in n.output]
    del branch.output[:]
    branch.output.append(helper.make_tensor_value_info("ty", TensorProto.FLOAT, ["N", 3, 4, 5]))
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["ey"])], "else", [],
        [helper.make_tensor_value_info("ey", TensorProto.FLOAT, ["N", 3, 4, 5])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
        "with_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    converted = onnx_ops.convert(model, 17)
    assert _count(converted, "LayerNormalization") == 1
    # And back down, across If's version changes (13 -> 16 -> 13).
    back = onnx_ops.convert(converted, 13)
    assert _count(back, "LayerNormalization") == 0
    x = make_input((2, 3, 4, 5), np.float32, rng_for("if"))
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        assert_equivalent(ort_runner, model, converted, 17, feeds)
        assert_equivalent(ort_runner, model, back, 13, feeds)


def test_version_converter_failure_is_a_clear_error():
    # Gelu exists from opset 20 only: it cannot go down to 13.
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"])], "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(ValueError, match=r"version_converter could not convert \['Gelu'\] from opset 20 to 13"):
        onnx_ops.convert(model, 13)


def test_convert_argument_errors():
    model = torch_group_norm(13)
    with pytest.raises(ValueError, match="target_opset=12 is out of the supported range"):
        onnx_ops.convert(model, 12)
    with pytest.raises(TypeError, match="ModelProto"):
        onnx_ops.convert(model.graph, 17)
    with pytest.raises(TypeError, match="decompose"):
        onnx_ops.convert(model, 17, decompose="auto")
    no_default = helper.make_model(model.graph, opset_imports=[helper.make_opsetid("com.example", 1)])
    with pytest.raises(ValueError, match="no default-domain"):
        onnx_ops.convert(no_default, 17)
    before = model.SerializeToString()
    onnx_ops.convert(model, 23, decompose=False)
    assert model.SerializeToString() == before  # the input model is not modified


# ------------------------------------------------------------ PyTorch exports


def _torch_modules():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class RMSNorm(nn.Module):
        def __init__(self, d, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(d))
            self.eps = eps

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    class SmallNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.gn = nn.GroupNorm(4, 8)
            self.bn = nn.BatchNorm2d(8)
            self.ln = nn.LayerNorm(8)

        def forward(self, x):
            h = torch.relu(self.gn(self.conv(x)))
            h = self.bn(h).mean(dim=(2, 3))
            return self.ln(h)

    torch.manual_seed(0)
    modules = {
        "LayerNorm": (nn.LayerNorm([4, 5]), (2, 3, 4, 5)),
        "GroupNorm": (nn.GroupNorm(2, 4), (2, 4, 3, 5)),
        "InstanceNorm2d": (nn.InstanceNorm2d(4, affine=True), (2, 4, 3, 5)),
        "BatchNorm2d": (nn.BatchNorm2d(4), (2, 4, 3, 5)),
        "RMSNorm": (RMSNorm(8), (2, 3, 8)),
        "SmallNet": (SmallNet(), (2, 3, 6, 6)),
    }
    for module, _ in modules.values():
        for name, p in module.named_parameters():
            p.data = torch.randn_like(p) if "weight" not in name else 1 + 0.3 * torch.randn_like(p)
        for name, buf in module.named_buffers():
            if "running_mean" in name:
                buf.normal_()
            if "running_var" in name:
                buf.uniform_(0.5, 2.0)
        module.eval()
    return torch, modules


@functools.lru_cache(maxsize=None)
def _torch_export(name, opset):
    torch, modules = _torch_modules()
    module, shape = modules[name]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*shape),), f, opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("decompose", DECOMPOSE)
@pytest.mark.parametrize("target", OPSETS)
@pytest.mark.parametrize("source", [13, 17, 18])
@pytest.mark.parametrize("name", ["LayerNorm", "GroupNorm", "InstanceNorm2d", "BatchNorm2d", "RMSNorm", "SmallNet"])
def test_pytorch_exports(name, source, target, decompose, ort_runner):
    pytest.importorskip("torch")
    model = _torch_export(name, source)
    converted = onnx_ops.convert(model, target, decompose=decompose)
    types = set(_op_types(converted))
    if decompose is True:
        assert not NORM_OP_TYPES & types
    if name == "LayerNorm" and target >= 17 and decompose is not True:
        assert _op_types(converted) == ["LayerNormalization"]
    if name == "RMSNorm" and target >= 23 and decompose is not True:
        assert _op_types(converted) == ["RMSNormalization"]
    if name == "GroupNorm" and target >= 21 and decompose is False:
        assert _op_types(converted) == ["GroupNormalization"]
    feeds = {"x": make_input((3,) + tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]),
                             np.float32, rng_for("torch", name))}
    assert_equivalent(ort_runner, model, converted, target, feeds)


def test_pytorch_outputs_match_the_exports(ort_runner):
    # The exports themselves agree with PyTorch, so "same as the source" above
    # means "same as PyTorch".
    torch, modules = _torch_modules()
    for name, (module, shape) in modules.items():
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = module(x).numpy()
        for opset in (13, 17):
            y = ort_runner.run1(onnx_ops.convert(_torch_export(name, opset), 23), x.numpy())
            assert_close(y, expected, "float32", f"{name} opset {opset} -> 23 vs PyTorch")


@pytest.mark.parametrize("op", OPS)
def test_decompose_true_leaves_no_norm_operator(op, ort_runner):
    # Round trip: native at 23, decomposed at 23, fused/native again where a pattern allows.
    model = _native_model(op, 23, "float32")
    decomposed = onnx_ops.convert(model, 23, decompose=True)
    assert not NORM_OP_TYPES & set(_op_types(decomposed))
    assert_equivalent(ort_runner, model, decomposed, 23)
