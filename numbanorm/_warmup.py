"""Compile every kernel ahead of use (``numbanorm compile``).

numba compiles a kernel for each argument type the first time it is called
and keeps the machine code in its on-disk cache: next to the package when
that folder is writable, otherwise in a per-user folder (``~/.cache`` or
``NUMBA_CACHE_DIR``), so a read-only site-packages works too. Running the
calls below once, e.g. while building a container image, means no process
ever compiles again.
"""

import time

import ml_dtypes
import numpy as np

from . import _api, _dispatch

DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)


def _problems(dt):
    """(label, call) pairs that together reach every kernel and plan: the
    serial and parallel builds, whole and split rows, contiguous and
    channels-last data, weights in x's dtype, in float64 and absent."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.standard_normal(shape).astype(dt)

    small, big, long_row = arr(4, 64), arr(64, 1024), arr(1, 3 * 4096 * 4)
    # rows longer than _kernels.SHORT_ROW take another kernel
    small_long, big_long = arr(2, 2048), arr(32, 2048)
    # groups of up to _kernels.SHORT_ROW elements take their own kernel
    img, big_img = arr(2, 8, 4, 4), arr(2, 64, 32, 32)
    long_group = arr(1, 2, 40, 40)
    nhwc = arr(2, 16, 16, 64).transpose(0, 3, 1, 2)
    out = []
    for label, x in (("small", small), ("parallel", big), ("split", long_row),
                     ("small long-row", small_long),
                     ("parallel long-row", big_long)):
        L = x.shape[-1]
        for wdt in (dt, np.float64, None):
            w = None if wdt is None else np.ones(L, wdt)
            b = None if wdt is None else np.zeros(L, wdt)
            out.append((f"layer_norm {label} w={wdt and np.dtype(wdt).name}",
                        lambda x=x, L=L, w=w, b=b: _api.layer_norm(x, L, w, b)))
            out.append((f"rms_norm {label} w={wdt and np.dtype(wdt).name}",
                        lambda x=x, L=L, w=w: _api.rms_norm(x, L, w)))
    one_group = arr(1, 4, 128, 64)  # one long group: the split plan
    for label, x in (("small", img), ("parallel", big_img),
                     ("small long-group", long_group),
                     ("split", one_group), ("channels-last", nhwc)):
        C = x.shape[1]
        out.append((f"group_norm {label}",
                    lambda x=x: _api.group_norm(x, 2 if x.shape[1] % 2 == 0 else 1)))
        out.append((f"instance_norm {label}", lambda x=x: _api.instance_norm(x)))
        out.append((f"batch_norm train {label}",
                    lambda x=x: _api.batch_norm(x, None, None, training=True)))
        out.append((f"batch_norm {label}",
                    lambda x=x, C=C: _api.batch_norm(x, np.zeros(C), np.ones(C))))
    return out


def compile_all(progress=None):
    """Call every kernel once per supported dtype, so that numba compiles
    (or loads from its cache) each of them; returns the seconds spent per
    dtype. ``progress(label)`` is called before each step."""
    times = {}
    for dt in DTYPES:
        name = np.dtype(dt).name
        t = time.perf_counter()
        for label, call in _problems(dt):
            if progress is not None:
                progress(f"{name} {label}")
            call()
        times[name] = time.perf_counter() - t
    _dispatch.affine(np.zeros(1 << 16, np.float32), np.zeros(1 << 16, np.float32),
                     1.0, 0.0)
    return times


def cache_stats():
    """(kernels with a compiled signature, signatures loaded from the disk
    cache, signatures compiled in this process)."""
    kernels = hits = misses = 0
    for table in (_dispatch._SERIAL, _dispatch._PARALLEL):
        for disp in table.values():
            if disp.signatures:
                kernels += 1
            hits += sum(disp.stats.cache_hits.values())
            misses += sum(disp.stats.cache_misses.values())
    return kernels, hits, misses
