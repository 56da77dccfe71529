"""Time GroupNormalization-21 against onnx_ops' graphs in onnxruntime.

The measurement behind group_norm's ``decompose=None`` default: the native
GroupNormalization-21, onnx_ops' decomposition (decompose=True), onnx_ops'
default (InstanceNormalization on shifted data), and for comparison the
InstanceNormalization graph PyTorch's TorchScript exporter emits; each with
its float32 error at a large offset (1e4, std 1).
``--all`` adds native vs decomposed timings for the other norms, whose
defaults are native.

Run: ``python benchmarks/onnx_groupnorm_timing.py [--threads 1] [--repeat 20] [--all]``
"""

import argparse
import pathlib
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import onnx_ops  # noqa: E402
from tests import reference  # noqa: E402


def _session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _median_ms(session, x, repeat):
    session.run(None, {"x": x})  # warm-up: allocations, thread pool
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def torch_style_group_norm(shape, G, weight, bias, eps=1e-5, opset=18):
    """PyTorch's TorchScript export of F.group_norm: Reshape, InstanceNormalization(ones), Reshape, Mul, Add."""
    C = shape[1]
    cshape = (C,) + (1,) * (len(shape) - 2)
    inits = [
        numpy_helper.from_array(np.array([0, G, -1], np.int64), "grouped"),
        numpy_helper.from_array(np.ones(G, np.float32), "ones"),
        numpy_helper.from_array(np.zeros(G, np.float32), "zeros"),
        numpy_helper.from_array(np.asarray(weight, np.float32).reshape(cshape), "w"),
        numpy_helper.from_array(np.asarray(bias, np.float32).reshape(cshape), "b"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "grouped"], ["r"]),
        helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["n"], epsilon=eps),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["n", "s"], ["n4"]),
        helper.make_node("Mul", ["n4", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "torch_group_norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _offset_error(model, shape, G, weight, bias):
    small = (2,) + shape[1:3] + (8,) * (len(shape) - 3)
    x = (1e4 + np.random.default_rng(1).standard_normal(small)).astype(np.float32)
    # The timed models have static shapes; rebuild each at the small shape.
    model = model(small)
    y = _session(model, 1).run(None, {"x": x})[0].astype(np.float64)
    y_ref = reference.group_norm(x, G, weight, bias)[0]
    return "NaN" if not np.all(np.isfinite(y)) else f"{np.abs(y - y_ref).max():.2e}"


def group_norm(args):
    shape, G = (8, 256, 64, 64), 32
    rng = np.random.default_rng(0)
    C = shape[1]
    weight, bias = 1 + 0.5 * rng.standard_normal(C), rng.standard_normal(C)
    x = rng.standard_normal(shape).astype(np.float32)
    graphs = {
        "GroupNormalization-21 (native)": lambda s: onnx_ops.to_onnx(
            "group_norm", input_shape=s, num_groups=G, weight=weight, bias=bias, opset=21, decompose=False),
        "onnx_ops decomposition (decompose=True)": lambda s: onnx_ops.to_onnx(
            "group_norm", input_shape=s, num_groups=G, weight=weight, bias=bias, opset=21, decompose=True),
        "onnx_ops default (shifted InstanceNormalization)": lambda s: onnx_ops.to_onnx(
            "group_norm", input_shape=s, num_groups=G, weight=weight, bias=bias, opset=21),
        "PyTorch export (InstanceNormalization)": lambda s: torch_style_group_norm(s, G, weight, bias),
    }
    print(f"GroupNorm {shape} G={G} float32, onnxruntime {ort.__version__} CPU, "
          f"intra_op_num_threads={args.threads}, median of {args.repeat} runs\n")
    print("| graph | median ms | max abs err at offset 1e4 |")
    print("|---|---|---|")
    for name, build in graphs.items():
        ms = _median_ms(_session(build(shape), args.threads), x, args.repeat)
        print(f"| {name} | {ms:.1f} | {_offset_error(build, shape, G, weight, bias)} |")


def other_norms(args):
    rng = np.random.default_rng(0)
    cases = [
        ("layer_norm", (8, 512, 768), {"normalized_shape": 768}, 17),
        ("instance_norm", (8, 64, 64, 64), {}, 17),
        ("batch_norm", (16, 64, 56, 56), {"running_mean": np.zeros(64), "running_var": np.ones(64)}, 17),
        ("rms_norm", (4, 512, 4096), {"normalized_shape": 4096}, 23),
    ]
    print("\n| op | shape | opset | native ms | decomposed ms |")
    print("|---|---|---|---|---|")
    for op, shape, kwargs, opset in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        ms = {}
        for decompose in (False, True):
            model = onnx_ops.to_onnx(op, input_shape=shape, opset=opset, decompose=decompose, **kwargs)
            ms[decompose] = _median_ms(_session(model, args.threads), x, args.repeat)
        print(f"| {op} | {shape} | {opset} | {ms[False]:.1f} | {ms[True]:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per graph (default 20)")
    parser.add_argument("--all", action="store_true", help="also time the other norms")
    args = parser.parse_args()
    group_norm(args)
    if args.all:
        other_norms(args)


if __name__ == "__main__":
    main()
