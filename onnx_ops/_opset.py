"""What each default-domain opset offers for normalization, in one place.

Everything that depends on the opset number lives here, so that the emitters in
``_emit.py`` read as "if this opset has X, emit X": the version in which each
native normalization operator appeared, the form of ReduceMean's ``axes``, the
BatchNormalization version in effect, and the default choice between a native
operator and a decomposition.
"""

import numpy as np
from onnx import TensorProto, helper

MIN_OPSET = 13
MAX_OPSET = 23

OPS = ("layer_norm", "group_norm", "instance_norm", "batch_norm", "rms_norm")

#: First default-domain opset with a usable native operator for each norm.
#: GroupNormalization-18 is left out on purpose: it is deprecated (the checker
#: rejects it) and has per-group instead of per-channel scale and bias.
#: BatchNormalization-9 (in effect at opsets 13 and 14) is usable in inference.
NATIVE_SINCE = {
    "layer_norm": 17,  # LayerNormalization-17
    "group_norm": 21,  # GroupNormalization-21 (per-channel scale, stash_type)
    "instance_norm": 6,  # InstanceNormalization-6, -22 (adds bfloat16 only)
    "batch_norm": 9,  # BatchNormalization-9, -14, -15
    "rms_norm": 23,  # RMSNormalization-23
}

# The default ONNX domain, under both of its names.
DEFAULT_DOMAINS = ("", "ai.onnx")

NATIVE_OP_TYPE = {
    "layer_norm": "LayerNormalization",
    "group_norm": "GroupNormalization",
    "instance_norm": "InstanceNormalization",
    "batch_norm": "BatchNormalization",
    "rms_norm": "RMSNormalization",
}

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# The forms a normalization can be emitted in.
NATIVE = "native"  # the ONNX normalization operator
DECOMPOSED = "decomposed"  # basic operators only (Reduce*, Sub, Mul, Sqrt, ...)
VIA_INSTANCE_NORM = "instance_norm"  # group_norm only: shifted InstanceNormalization over (N, G, -1)


def check_opset(opset, argname="opset"):
    """Return ``opset`` as an int, or raise if it is outside 13..23."""
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"{argname} must be an int in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"{argname}={opset} is out of the supported range {MIN_OPSET}..{MAX_OPSET}")
    return int(opset)


def has_native(op, opset):
    return opset >= NATIVE_SINCE[op]


def reduce_axes_as_input(opset):
    """ReduceMean takes ``axes`` as an attribute up to opset 17, as an input from 18."""
    return opset >= 18


def batch_norm_version(opset):
    """The BatchNormalization version in effect at ``opset`` (9, 14 or 15)."""
    if opset >= 15:
        return 15
    if opset >= 14:
        return 14
    return 9


def stash_type(dtype):
    """The ``stash_type`` for LayerNormalization, GroupNormalization-21, RMSNormalization.

    float16 (and float32) compute the statistics in float32, the spec default.
    float64 asks for float64: with the default, a runtime that follows the spec
    (onnxruntime does for GroupNormalization-21, which it runs as the
    function body) computes float64 statistics in float32.
    """
    return TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT


def compute_dtype(dtype):
    """The dtype the decompositions compute in: float32 for float16, else the dtype."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def tensor_type(dtype):
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def default_form(op, opset, dtype):
    """The ``decompose=None`` policy, measured on onnxruntime 1.32 CPU.

    Numbers from ``benchmarks/onnx_groupnorm_timing.py --all`` and
    ``benchmarks/onnx_support_table.py`` (float32, one thread):

    - group_norm: never GroupNormalization. onnxruntime has no kernel for it
      and inlines the function body, whose E[x^2] - E[x]^2 variance gives NaN
      at an offset of 1e4; it is also the slowest form (18 ms on
      (8, 256, 64, 64), G=32, against 15 ms for the decomposition).
      InstanceNormalization on data shifted by each group's first element is
      the fastest accurate form (11 ms); float64 takes the decomposition, as
      onnxruntime has no float64 InstanceNormalization kernel.
    - layer_norm (from opset 17), instance_norm, batch_norm, rms_norm (from
      opset 23): native; their kernels are 1.5 to 3.5 times faster than the
      decomposition. instance_norm in float64 is decomposed (no onnxruntime
      kernel).

    The native LayerNormalization, InstanceNormalization and
    BatchNormalization kernels lose about 1e-3 (absolute, on outputs of
    order 1) when |mean| / std is about 1e4 in float32, where the
    decompositions stay within a few ulps; ``decompose=True`` is the choice
    for such data.
    """
    dtype = np.dtype(dtype)
    if op == "group_norm":
        return DECOMPOSED if dtype == np.float64 else VIA_INSTANCE_NORM
    if not has_native(op, opset):
        return DECOMPOSED
    if op == "instance_norm" and dtype == np.float64:
        return DECOMPOSED
    return NATIVE


def resolve_form(op, opset, dtype, decompose):
    """Turn the user's ``decompose`` argument into the form to emit."""
    if decompose is None:
        return default_form(op, opset, dtype)
    if not isinstance(decompose, (bool, np.bool_)):
        raise TypeError(f"decompose must be True, False or None, got {decompose!r}")
    if decompose:
        return DECOMPOSED
    if not has_native(op, opset):
        raise ValueError(
            f"decompose=False asks for the native {NATIVE_OP_TYPE[op]} operator, which "
            f"opset {opset} does not have (it exists from opset {NATIVE_SINCE[op]}); "
            "use a higher opset or decompose=None/True"
        )
    return NATIVE


def min_ir_version(opset):
    """The smallest IR version that can carry ``opset`` (old runtimes reject newer IRs)."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
