"""ONNX graphs for the numbanorm normalizations; importable without numba.

- :func:`to_onnx` exports one normalization as a model (input "x", output "y").
- ``make_layer_norm``, ``make_group_norm``, ``make_instance_norm``,
  ``make_batch_norm``, ``make_rms_norm`` append one normalization to a graph
  under construction and return the output name.
- :func:`convert` rewrites the normalizations of an existing model for another
  opset: native operators the target lacks become decompositions, and the
  decomposed patterns exporters emit are fused into native operators.

Every function takes ``decompose``: False for the native operator, True for a
graph of basic operators, None for the documented per-op default (see
:func:`to_onnx`). Supported opsets are ``MIN_OPSET``..``MAX_OPSET`` (13..23);
``NATIVE_SINCE`` maps each op to the first opset with its native operator.
"""

from ._builders import make_batch_norm, make_group_norm, make_instance_norm, make_layer_norm, make_rms_norm
from ._convert import convert
from ._export import to_onnx
from ._io import load_model, save_model
from ._opset import MAX_OPSET, MIN_OPSET, NATIVE_SINCE

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "NATIVE_SINCE",
    "convert",
    "load_model",
    "make_batch_norm",
    "make_group_norm",
    "make_instance_norm",
    "make_layer_norm",
    "make_rms_norm",
    "save_model",
    "to_onnx",
]
