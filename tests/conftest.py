"""Shared test machinery: the registry of ops and their references, input
generators (dtypes, layouts, hard data), and the accuracy check."""

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib

import ml_dtypes
import numpy as np
import pytest

import numbanorm
from tests import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------- compiling the kernels

COMPILE_RUN = pytest.StashKey()
# where the controller of a parallel (pytest-xdist) run leaves that compile's
# result for its workers, which start after it
_COMPILE_RUN_FILE = "NUMBANORM_TESTS_COMPILE_RUN"


def _kernel_cache_is_empty():
    if os.environ.get("NUMBA_CACHE_DIR"):
        return not glob.glob(os.path.join(os.environ["NUMBA_CACHE_DIR"], "numbanorm*",
                                          "_kernels.*.nbi"))
    return not glob.glob(os.path.join(ROOT, "numbanorm", "__pycache__", "_kernels.*.nbi"))


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        # Workers run side by side on one kernel cache: a test that compiles
        # a signature saves it under the same lock as numbanorm compile's
        # processes (see numbanorm._warmup._lock_cache_saves).
        from numbanorm import _warmup

        _warmup._lock_cache_saves()


def pytest_sessionstart(session):
    """On an empty kernel cache (a fresh clone), compile every kernel first
    with ``numbanorm compile``, which shares the work among the CPUs; the
    tests then load the kernels instead of compiling them one at a time.
    test_cli.py's test_compile_fills_the_cache checks this run. With a
    cache already there (stale or not) the tests compile what they need.
    In a parallel run only the controller compiles, before its workers
    start."""
    if hasattr(session.config, "workerinput") or not _kernel_cache_is_empty():
        return
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    if report is not None:
        report.write_line("empty kernel cache: running numbanorm compile first")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "numbanorm", "compile"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    session.config.stash[COMPILE_RUN] = proc
    fd, path = tempfile.mkstemp(prefix="numbanorm-compile-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"args": proc.args, "returncode": proc.returncode,
                   "stdout": proc.stdout, "stderr": proc.stderr}, f)
    os.environ[_COMPILE_RUN_FILE] = path
    if report is not None:
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        report.write_line(f"numbanorm compile: exit {proc.returncode} in "
                          f"{time.perf_counter() - t:.0f} s: {last[:100]}")


def pytest_unconfigure(config):
    if COMPILE_RUN in config.stash and os.environ.get(_COMPILE_RUN_FILE):
        os.unlink(os.environ.pop(_COMPILE_RUN_FILE))


def compile_run(config):
    """The ``numbanorm compile`` run of pytest_sessionstart (a
    CompletedProcess), in this process or the controller; None if there
    was none."""
    if COMPILE_RUN in config.stash:
        return config.stash[COMPILE_RUN]
    path = os.environ.get(_COMPILE_RUN_FILE)
    if not path:
        return None
    with open(path) as f:
        return subprocess.CompletedProcess(**json.load(f))


BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "bfloat16": BF16,
}
# (mantissa bits, smallest normal exponent) per dtype, for ulps
_FORMAT = {
    np.dtype(np.float64): (52, -1022),
    np.dtype(np.float32): (23, -126),
    np.dtype(np.float16): (10, -14),
    BF16: (7, -126),
}


def ulp(v, dtype):
    """Spacing of `dtype` numbers at |v| (v float64), as float64."""
    mbits, emin = _FORMAT[np.dtype(dtype)]
    a = np.abs(np.asarray(v, dtype=np.float64))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(np.where(a > 0, e, emin), emin)
    return np.exp2(e - mbits)


def allowed_error(y_ref, dtype):
    """The accuracy contract: float32 within 4 * 2**-23 * max(1, |y_ref|);
    float64 within 1e-12 relative; float16/bfloat16 within 1 ulp of the
    output dtype."""
    dtype = np.dtype(dtype)
    y_ref = np.asarray(y_ref, dtype=np.float64)
    if dtype == np.float32:
        return 4 * 2.0**-23 * np.maximum(1.0, np.abs(y_ref))
    if dtype == np.float64:
        return 1e-12 * np.maximum(1.0, np.abs(y_ref))
    return ulp(y_ref, dtype)


def assert_close(y, y_ref, dtype, what=""):
    y = np.asarray(y)
    assert y.dtype == np.dtype(dtype), f"{what}: dtype {y.dtype} != {dtype}"
    y64 = y.astype(np.float64)
    y_ref = np.broadcast_to(np.asarray(y_ref, dtype=np.float64), y.shape)
    nan_ref = np.isnan(y_ref)
    assert np.array_equal(np.isnan(y64), nan_ref), f"{what}: NaN pattern differs"
    err = np.abs(y64 - y_ref)[~nan_ref]
    tol = allowed_error(y_ref, dtype)[~nan_ref]
    if err.size:
        worst = np.argmax(err / tol)
        assert np.all(err <= tol), (
            f"{what}: max error {err.max():.3g} exceeds the bound "
            f"(worst ratio {(err / tol)[worst]:.2f} at ref "
            f"{y_ref[~nan_ref][worst]:.6g})")


# ---------------------------------------------------------------------------
# inputs

LAYOUTS = ["contiguous", "strided", "transposed", "channels_last", "byteswapped"]


def arrange(data, dtype, layout):
    """`data` (float64) cast to `dtype` and laid out in memory as `layout`;
    the values are the same in every layout."""
    dtype = np.dtype(dtype)
    v = data.astype(dtype)
    if layout == "contiguous":
        return np.ascontiguousarray(v)
    if layout == "strided":
        big = np.zeros(v.shape[:-1] + (2 * v.shape[-1] + 1,), dtype)
        big[..., 1::2] = v
        return big[..., 1::2]
    if layout == "transposed":
        order = tuple(reversed(range(v.ndim)))
        return np.ascontiguousarray(v.transpose(order)).transpose(order)
    if layout == "channels_last":
        if v.ndim < 3:
            return None
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(v, 1, -1)), -1, 1)
    if layout == "byteswapped":
        if dtype == BF16:
            return None
        return v.astype(dtype.newbyteorder("S"))
    if layout == "negative":
        return np.ascontiguousarray(v[..., ::-1])[..., ::-1]
    raise ValueError(layout)


def rng_for(*key):
    """A generator seeded by the test's parameters (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---------------------------------------------------------------------------
# the registry: each op knows how to build its arguments for a given x and
# how to call numbanorm and the float64 reference with them.


class Op:
    def __init__(self, name, shapes, min_ndim):
        self.name = name
        self.shapes = shapes
        self.min_ndim = min_ndim

    def params(self, shape, affine, rng):
        """Keyword arguments (weights as float64) for x of this shape."""
        n = self.name
        kw = {}
        if n in ("layer_norm", "rms_norm"):
            k = 2 if len(shape) >= 3 else 1
            kw["normalized_shape"] = tuple(shape[-k:])
            pshape = kw["normalized_shape"]
        else:
            pshape = (shape[1],)
        if n == "group_norm":
            C = shape[1]
            kw["num_groups"] = max(g for g in (1, 2, 3, 4) if C % g == 0)
        if n == "batch_norm":
            kw["running_mean"] = rng.standard_normal(pshape)
            kw["running_var"] = rng.random(pshape) + 0.5
        if affine:
            kw["weight"] = rng.standard_normal(pshape)
            if n != "rms_norm":
                kw["bias"] = rng.standard_normal(pshape)
        return kw

    def call(self, x, **kw):
        return getattr(numbanorm, self.name)(x, **kw)

    def reference(self, x, **kw):
        kw = {k: v for k, v in kw.items() if k not in ("out", "return_stats")}
        if self.name == "rms_norm" and kw.get("eps") is None:
            kw["eps"] = float(ml_dtypes.finfo(x.dtype).eps)
        r = ref.REFERENCES[self.name](x, **kw)
        return r[0] if isinstance(r, tuple) else r


OPS = {
    "layer_norm": Op("layer_norm", [(7,), (3, 5), (2, 3, 17), (4, 9000),
                                    (64, 768), (3, 20000)], 1),
    "rms_norm": Op("rms_norm", [(7,), (3, 5), (2, 3, 17), (4, 9000),
                                (64, 768), (3, 20000)], 1),
    "group_norm": Op("group_norm", [(2, 6), (2, 6, 5), (2, 6, 4, 4),
                                    (3, 8, 32, 32), (1, 6, 64, 64),
                                    (2, 4, 3, 4, 5), (64, 8, 8, 8)], 2),
    "instance_norm": Op("instance_norm", [(2, 3, 5), (2, 3, 4, 4),
                                          (1, 3, 128, 128), (2, 2, 3, 4, 5),
                                          (8, 16, 16, 16)], 3),
    "batch_norm": Op("batch_norm", [(5, 3), (4, 3, 7), (2, 3, 4, 4),
                                    (8, 16, 32, 32), (1, 3, 20000)], 2),
}


@pytest.fixture(params=list(OPS))
def op(request):
    return OPS[request.param]
