"""Compile every kernel ahead of use (``numbanorm compile``).

numba compiles a kernel for each argument type the first time it is called
and keeps the machine code in its on-disk cache: next to the package when
that folder is writable, otherwise in a per-user folder (``~/.cache`` or
``NUMBA_CACHE_DIR``), so a read-only site-packages works too. Running the
calls below once, e.g. while building a container image, means no process
ever compiles again.
"""

import os
import time

import ml_dtypes
import numpy as np

from . import _api, _dispatch

DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)
_DTYPE = {np.dtype(dt).name: dt for dt in DTYPES}


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
        out.append((f"batch_norm {label} params={np.dtype(dt).name}",
                    lambda x=x, C=C: _api.batch_norm(x, np.zeros(C, dt),
                                                     np.ones(C, dt))))
    return out


def _compile_dtypes(names, progress=None):
    """Calls _problems for the dtypes named; returns the seconds per dtype."""
    times = {}
    for name in names:
        dt = _DTYPE[name]
        t = time.perf_counter()
        for label, call in _problems(dt):
            if progress is not None:
                progress(f"{name} {label}")
            call()
        times[name] = time.perf_counter() - t
    return times


def _lock_cache_saves():
    """Serialize numba's cache writes across processes (an exclusive flock
    on the cache folder around each save). numba picks the file a new
    signature goes to from the index it read: two processes adding
    different signatures of one kernel at once could both pick the same
    file, and the index would then point one signature at the other's
    machine code. Returns False where this cannot be done (no fcntl, or a
    numba without the method patched here)."""
    try:
        import fcntl

        from numba.core.caching import IndexDataCacheFile
    except ImportError:
        return False
    save = getattr(IndexDataCacheFile, "save", None)
    if save is None or getattr(save, "_numbanorm_locked", False):
        return save is not None

    def locked_save(self, key, data):
        try:
            fd = os.open(self._cache_path, os.O_RDONLY)
        except OSError:  # a folder we may write but not open: unlocked
            return save(self, key, data)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return save(self, key, data)
        finally:
            os.close(fd)  # releases the lock

    locked_save._numbanorm_locked = True
    IndexDataCacheFile.save = locked_save
    return True


def _worker(names):
    _lock_cache_saves()
    times = _compile_dtypes(names)
    return times, cache_stats()


# Seconds each dtype took to compile in one process on a 2-core Zen 1 (the
# 16-bit types convert on every load and store; float32 has the streaming
# stores), to share the dtypes out evenly.
_COST = {"float32": 119, "float64": 88, "float16": 110, "bfloat16": 129}


def _split(names, jobs):
    """The dtypes in up to `jobs` groups of about equal compile time
    (longest first, each to the least loaded group)."""
    groups = [[] for _ in range(jobs)]
    load = [0] * jobs
    for name in sorted(names, key=lambda n: -_COST.get(n, 100)):
        i = load.index(min(load))
        groups[i].append(name)
        load[i] += _COST.get(name, 100)
    return [g for g in groups if g]


def compile_all(progress=None, jobs=1):
    """Call every kernel once per supported dtype, so that numba compiles
    (or loads from its cache) each of them. With jobs > 1 the dtypes are
    shared among that many fresh processes (numba compiles one function at
    a time per process), then this process calls everything once more,
    loading what they compiled. Returns (seconds per dtype, (kernels,
    signatures no process had to compile, signatures compiled)).
    ``progress(label)`` is called before each step run in this process."""
    names = [np.dtype(dt).name for dt in DTYPES]
    compiled = 0
    times = {}
    if jobs > 1 and _lock_cache_saves():
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fresh interpreters
        groups = _split(names, min(jobs, len(names)))
        with concurrent.futures.ProcessPoolExecutor(len(groups), mp_context=ctx) as pool:
            for t, (_, _, m) in pool.map(_worker, groups):
                times.update(t)
                compiled += m
    final = _compile_dtypes(names, progress)
    for name in names:
        times[name] = times.get(name, 0.0) + final[name]
    _dispatch.affine(np.zeros(1 << 16, np.float32), np.zeros(1 << 16, np.float32),
                     1.0, 0.0)
    # this process loads what the workers compiled (h), and compiles what
    # a worker's save did not keep (m, normally none)
    kernels, h, m = cache_stats()
    return ({name: times[name] for name in names},
            (kernels, max(h - compiled, 0), compiled + m))


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
