"""Results do not depend on how a call runs: thread count, serial or
parallel build, one task per row or rows split into chunks."""

import numba
import numpy as np
import pytest

from numbanorm import _dispatch
from tests.conftest import OPS, rng_for

# shapes that take the split plan on 2 threads, and ones that do not
SHAPES = {
    "layer_norm": [(3, 20000), (64, 768)],
    "rms_norm": [(3, 20000), (64, 768)],
    "group_norm": [(1, 6, 64, 64), (4, 8, 32, 32)],
    "instance_norm": [(1, 3, 128, 128), (4, 8, 32, 32)],
    "batch_norm": [(8, 16, 32, 32), (3, 2, 20000)],
}


def _run(op, x, kw):
    kw = dict(kw)
    if op.name == "batch_norm":
        kw.update(training=True, running_mean=None, running_var=None)
    return op.call(x, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("k", [0, 1])
def test_bit_identical_across_plans(op, k, dtype, monkeypatch):
    shape = SHAPES[op.name][k]
    rng = rng_for("det", op.name, k, dtype)
    x = (rng.standard_normal(shape) * 2 + 300).astype(dtype)
    kw = op.params(shape, True, rng)
    results = {}
    threads = numba.get_num_threads()
    try:
        for t in sorted({1, 2, threads}):
            numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
            results[f"threads={t}"] = _run(op, x, kw)
        numba.set_num_threads(threads)
        for split in (True, False):
            monkeypatch.setattr(_dispatch, "_split_rows", lambda R, L, s=split: s)
            results[f"split={split}"] = _run(op, x, kw)
        monkeypatch.setattr(_dispatch, "PARALLEL_MIN_ELEMENTS", 1 << 62)
        results["serial"] = _run(op, x, kw)
    finally:
        numba.set_num_threads(threads)
    first = next(iter(results.values()))
    for name, y in results.items():
        assert np.array_equal(y.view(np.uint8), first.view(np.uint8)), name
