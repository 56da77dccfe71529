"""Shared machinery for the ONNX tests: cases, inputs, references, tolerances.

``kernel(op)`` is the numbanorm function for an op when numbanorm imports, and
otherwise the float64 reference of ``tests/reference.py``; ``KERNEL_SOURCE``
says which. Every test compares with the reference as well.
"""

import zlib

import numpy as np
import onnxruntime as ort

from tests import reference

OPS = ("layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm")
OPSETS = (13, 15, 17, 18, 21, 23)
DTYPES = ("float32", "float64", "float16")
NATIVE_OP = {
    "layer_norm": "LayerNormalization",
    "group_norm": "GroupNormalization",
    "instance_norm": "InstanceNormalization",
    "batch_norm": "BatchNormalization",
    "rms_norm": "RMSNormalization",
}
NATIVE_SINCE = {"layer_norm": 17, "group_norm": 21, "instance_norm": 6, "batch_norm": 9, "rms_norm": 23}
NORM_OP_TYPES = set(NATIVE_OP.values())

# Relative to the output scale max(1, max|y_ref|).
TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2}

try:
    import numbanorm

    KERNEL_SOURCE = "numbanorm"
except ImportError:  # numbanorm (numba) not importable: fall back to the references
    numbanorm = None
    KERNEL_SOURCE = "reference"


def reference_y(op, x, **op_args):
    """The float64 reference output of ``op`` (y only)."""
    out = reference.REFERENCES[op](x, **op_args)
    return out[0] if isinstance(out, tuple) else out


def kernel(op):
    """The function the exported graphs must agree with: numbanorm's, else the reference."""
    if numbanorm is not None:
        return getattr(numbanorm, op)
    return lambda x, **op_args: reference_y(op, x, **op_args)


# ------------------------------------------------------------------ cases

#: Static input shape (batch 2) of each op in the export matrix.
SHAPES = {
    "layer_norm": (2, 3, 4, 5),
    "group_norm": (2, 6, 3, 4),
    "instance_norm": (2, 3, 4, 5),
    "batch_norm": (2, 3, 4, 5),
    "rms_norm": (2, 3, 8),
}


def op_args(op, rng, affine=True):
    """Keyword arguments (parameters as float64 arrays) for ``op`` on SHAPES[op]."""
    shape = SHAPES[op]
    C = shape[1]
    if op in ("layer_norm", "rms_norm"):
        ns = shape[2:]
        args = {"normalized_shape": ns}
        if affine:
            args["weight"] = 1 + 0.5 * rng.standard_normal(ns)
        if affine and op == "layer_norm":
            args["bias"] = rng.standard_normal(ns)
        if op == "layer_norm":
            args["eps"] = 1e-5
        return args
    args = {}
    if op == "group_norm":
        args["num_groups"] = 3
    if op == "batch_norm":
        args["running_mean"] = rng.standard_normal(C)
        args["running_var"] = rng.uniform(0.5, 2.0, C)
    if affine:
        args["weight"] = 1 + 0.5 * rng.standard_normal(C)
        args["bias"] = rng.standard_normal(C)
    args["eps"] = 1e-5
    return args


def rng_for(*key):
    """A generator seeded by ``key``: the same data for the same case, in any test order."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_input(shape, dtype, rng, offset=0.5, scale=2.0):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def round_params(args, dtype):
    """The parameters as the model stores them: rounded to ``dtype``."""
    return {k: (np.asarray(v).astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in args.items()}


def assert_close(y, y_ref, dtype, what):
    """max |y - y_ref| <= TOLERANCE[dtype] * max(1, max |y_ref|)."""
    y = np.asarray(y, dtype=np.float64)
    y_ref = np.asarray(y_ref, dtype=np.float64)
    assert y.shape == y_ref.shape, f"{what}: shape {y.shape} != {y_ref.shape}"
    assert np.all(np.isfinite(y)), f"{what}: non-finite output"
    scale = max(1.0, float(np.max(np.abs(y_ref))))
    err = float(np.max(np.abs(y - y_ref)))
    tol = TOLERANCE[str(np.dtype(dtype))] * scale
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def offset_bound(y_ref):
    """The large-offset accuracy contract for float32 graphs: 16 * 4 ulps(1) * max(1, |y_ref|)."""
    return 16 * 4 * 2.0**-23 * np.maximum(1.0, np.abs(y_ref))


# ------------------------------------------------------------- onnxruntime


class OrtRunner:
    """Builds and caches onnxruntime CPU sessions (keyed by the serialized model)."""

    def __init__(self):
        self._sessions = {}

    def session(self, model):
        key = model.SerializeToString()
        sess = self._sessions.get(key)
        if sess is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3  # unused-initializer warnings are noise here
            sess = ort.InferenceSession(key, options, providers=["CPUExecutionProvider"])
            self._sessions[key] = sess
        return sess

    def run(self, model, feeds):
        """All outputs for ``feeds`` (a dict, or one array for input "x")."""
        if not isinstance(feeds, dict):
            feeds = {"x": feeds}
        return self.session(model).run(None, feeds)

    def run1(self, model, x):
        return self.run(model, x)[0]


#: onnxruntime 1.32's error when a CPU kernel for a dtype is missing.
OrtNotImplemented = ort.capi.onnxruntime_pybind11_state.NotImplemented


def ort_supports(op_type, dtype):
    """False where onnxruntime 1.32 CPU has no kernel: InstanceNormalization in float64."""
    return not (op_type == "InstanceNormalization" and np.dtype(dtype) == np.float64)
