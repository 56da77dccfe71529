"""numbanorm: normalization layers for the CPU as parallel Numba kernels.

Public functions follow ``torch.nn.functional``: :func:`layer_norm`,
:func:`group_norm`, :func:`instance_norm`, :func:`batch_norm`,
:func:`rms_norm`. They take and return numpy arrays.
"""

from . import _buffers, _threading
from ._api import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from ._buffers import set_buffer_cache
from ._threading import set_threading

_threading.configure()

__version__ = "0.1.0"


def info():
    """Versions, numba threading layer, thread count, CPU and cache folder."""
    import platform

    import numba
    import numpy

    from . import _dispatch

    if _threading.describe()["threading_layer"] == "(not started)" and \
            _threading.parallel_allowed():
        # numba starts its threading layer at the first parallel launch
        _dispatch.affine(numpy.zeros(1 << 16, numpy.float32),
                         numpy.zeros(1 << 16, numpy.float32), 1.0, 0.0)
    held, in_use = _buffers.cached_bytes()
    return {
        "numbanorm": __version__,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        **_threading.describe(),
        # get_num_threads() would start the threading layer
        "threads": numba.get_num_threads() if _threading.parallel_allowed()
        else 1,
        "cpu": _cpu_name(),
        # the streaming-store thresholds are taken from it (_dispatch._stream)
        "last_level_cache": "{:.0f} MiB{}".format(
            _dispatch.LLC_BYTES / 2**20, "" if _dispatch.LLC_REPORTED
            else " (not reported by the OS; assumed)"),
        "buffer_cache": "{:.0f} of {:.0f} MiB held, {:.0f} MiB in use".format(
            held / 2**20, _buffers._state["max_bytes"] / 2**20, in_use / 2**20),
        "cache_dir": numba.config.CACHE_DIR or "(next to the package, __pycache__)",
    }


def _cpu_name():
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

__all__ = [
    "layer_norm",
    "group_norm",
    "instance_norm",
    "batch_norm",
    "rms_norm",
    "info",
    "set_threading",
    "set_buffer_cache",
    "__version__",
]
