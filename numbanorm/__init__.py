"""numbanorm: normalization layers for the CPU as parallel Numba kernels.

Public functions follow ``torch.nn.functional``: :func:`layer_norm`,
:func:`group_norm`, :func:`instance_norm`, :func:`batch_norm`,
:func:`rms_norm`. They take and return numpy arrays.
"""

from ._api import batch_norm, group_norm, instance_norm, layer_norm, rms_norm

__version__ = "0.1.0"

__all__ = [
    "layer_norm",
    "group_norm",
    "instance_norm",
    "batch_norm",
    "rms_norm",
    "__version__",
]
