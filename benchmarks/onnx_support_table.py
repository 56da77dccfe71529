"""Which exported forms onnxruntime runs, and how accurate they are on large offsets.

For every op x opset x form (native operator / decomposition) this builds the
model with ``onnx_ops.to_onnx`` and reports:

- whether onnxruntime (CPU provider) runs it in float32, float64 and float16
  ("ok", or the error onnxruntime gives);
- the max abs error of the float32 model against a float64 reference on
  data with a large offset (offset 1e4, std 1), and whether it is within the
  decompositions' contract 16 * 4 * 2**-23 * max(1, |y_ref|);
- which form ``decompose=None`` picks for float32.

Run: ``python benchmarks/onnx_support_table.py`` (prints a markdown table).
"""

import argparse
import pathlib
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import onnx_ops  # noqa: E402
from onnx_ops import _opset  # noqa: E402
from tests import reference  # noqa: E402

OPSETS = (13, 15, 17, 18, 21, 23)

# Moderately sized problems: enough elements per row for the statistics to matter.
CASES = {
    "layer_norm": ((4, 16, 256), {"normalized_shape": 256}),
    "group_norm": ((4, 32, 16, 16), {"num_groups": 8}),
    "instance_norm": ((4, 8, 16, 16), {}),
    "batch_norm": ((4, 8, 16, 16), {}),
    "rms_norm": ((4, 16, 256), {"normalized_shape": 256}),
}


def _inputs(op, dtype, offset, std, seed=0):
    rng = np.random.default_rng(seed)
    shape, args = CASES[op]
    x = (offset + std * rng.standard_normal(shape)).astype(dtype)
    args = dict(args)
    C = shape[1]
    if op in ("group_norm", "instance_norm", "batch_norm"):
        args["weight"] = 1 + 0.5 * rng.standard_normal(C)
        args["bias"] = rng.standard_normal(C)
    else:
        args["weight"] = 1 + 0.5 * rng.standard_normal(shape[-1])
        if op == "layer_norm":
            args["bias"] = rng.standard_normal(shape[-1])
    if op == "batch_norm":
        # Stored statistics that fit the data, as in a trained model.
        xd = x.astype(np.float64)
        args["running_mean"] = xd.mean(axis=(0, 2, 3))
        args["running_var"] = xd.var(axis=(0, 2, 3))
    return x, args


def _reference(op, x, args):
    out = reference.REFERENCES[op](x, **{k: (np.asarray(v, x.dtype) if isinstance(v, np.ndarray) else v)
                                         for k, v in args.items()})
    return out[0] if isinstance(out, tuple) else out


def _session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _runs(op, opset, decompose, dtype):
    x, args = _inputs(op, dtype, 0.5, 2.0)
    model = onnx_ops.to_onnx(op, input_shape=x.shape, dtype=dtype, opset=opset, decompose=decompose, **args)
    try:
        y = _session(model).run(None, {"x": x})[0]
    except Exception as exc:  # report what onnxruntime says
        text = str(exc)
        code = text.split(":")[2].strip() if text.count(":") >= 2 else type(exc).__name__
        return code
    scale = max(1.0, float(np.abs(_reference(op, x, args)).max()))
    err = float(np.abs(y.astype(np.float64) - _reference(op, x, args)).max()) / scale
    tol = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2}[dtype]
    return "ok" if err <= tol else f"wrong ({err:.1e})"


def _offset_error(op, opset, decompose, offset=1e4, std=1.0):
    x, args = _inputs(op, "float32", offset, std, seed=1)
    model = onnx_ops.to_onnx(op, input_shape=x.shape, opset=opset, decompose=decompose, **args)
    y = _session(model).run(None, {"x": x})[0].astype(np.float64)
    y_ref = _reference(op, x, args)
    err = np.abs(y - y_ref)
    bound = 16 * 4 * 2.0**-23 * np.maximum(1.0, np.abs(y_ref))
    if not np.all(np.isfinite(y)):
        return "NaN", "no"
    return f"{err.max():.2e}", "yes" if np.all(err <= bound) else "no"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    print(f"onnxruntime {ort.__version__} CPUExecutionProvider; float32 error at offset 1e4, std 1, "
          "vs a float64 reference; bound = 16*4*2**-23*max(1,|y_ref|).\n"
          "default: the form decompose=None picks for float32. group_norm's instance_norm form "
          "(shifted InstanceNormalization) is decompose=None's choice for float32/float16; for float64 "
          "decompose=None picks the decomposition (n/a).\n")
    header = ["op", "opset", "form", "default", "float32", "float64", "float16", "max abs err (f32)", "within bound"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for op in _opset.OPS:
        for opset in OPSETS:
            forms = [_opset.DECOMPOSED]
            if op == "group_norm":
                forms.append(_opset.VIA_INSTANCE_NORM)
            if _opset.has_native(op, opset):
                forms.append(_opset.NATIVE)
            for form in forms:
                # The InstanceNormalization form of group_norm is what
                # decompose=None emits for float32/float16.
                decompose = {_opset.DECOMPOSED: True, _opset.NATIVE: False}.get(form)
                default = _opset.default_form(op, opset, "float32") == form
                cells = [
                    "n/a" if decompose is None and dt == "float64" else _runs(op, opset, decompose, dt)
                    for dt in ("float32", "float64", "float16")
                ]
                err, ok = _offset_error(op, opset, decompose)
                row = [op, str(opset), form, "*" if default else ""] + cells + [err, ok]
                print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
