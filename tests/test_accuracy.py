"""The accuracy contract on hard data: float32 within 4 * 2**-23 *
max(1, |y_ref|) of a float64 computation on the same float32 inputs, float64
within 1e-12 relative, float16/bfloat16 within 1 ulp."""

import ml_dtypes
import numpy as np
import pytest

import numbanorm
from tests.conftest import DTYPES, OPS, assert_close, rng_for

# name -> (offset, std). "offset 1e4, std 1" loses all of float32's
# accuracy in E[x^2] - E[x]^2, and ~1e-3 in a float32 two-pass.
DATA = {
    "normal": (0.0, 1.0),
    "offset1e4": (1e4, 1.0),
    "offset1e3_std1e-2": (1e3, 1e-2),
}

SHAPES = {
    "layer_norm": (16, 768),
    "rms_norm": (16, 768),
    "group_norm": (2, 8, 24, 24),
    "instance_norm": (2, 3, 40, 40),
    "batch_norm": (6, 4, 30, 30),
}


def _kw(op, shape, rng):
    kw = op.params(shape, True, rng)
    if op.name == "batch_norm":
        kw["training"] = True
        kw["running_mean"] = None
        kw["running_var"] = None
    return kw


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("data", list(DATA))
def test_hard_data(op, data, dtype):
    offset, std = DATA[data]
    if DTYPES[dtype].itemsize == 2 and offset >= 1e4:
        offset = 1e3  # 1e4 + N(0,1) is a handful of distinct float16 values
    shape = SHAPES[op.name]
    rng = rng_for("acc", op.name, data, dtype)
    x = (rng.standard_normal(shape) * std + offset).astype(DTYPES[dtype])
    kw = _kw(op, shape, rng)
    assert_close(op.call(x, **kw), op.reference(x, **kw), x.dtype,
                 f"{op.name} {data} {dtype}")


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_rows_of_2_to_20_elements(op, offset):
    shape = {"layer_norm": (2, 2**20), "rms_norm": (2, 2**20),
             "group_norm": (1, 4, 512, 512), "instance_norm": (1, 2, 1024, 1024),
             "batch_norm": (4, 2, 512, 512)}[op.name]
    rng = rng_for("long", op.name, offset)
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    kw = _kw(op, shape, rng)
    assert_close(op.call(x, **kw), op.reference(x, **kw), np.float32,
                 f"{op.name} 2**20 rows")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("value", [0.0, 3.7, -1e4, 1e30])
def test_constant_rows_give_bias_exactly(value, dtype):
    dt = DTYPES[dtype]
    rng = rng_for("const", value, dtype)
    b = rng.standard_normal(5).astype(dt)
    w = rng.standard_normal(5).astype(dt)
    with np.errstate(over="ignore"):
        representable = np.isfinite(np.asarray(value).astype(dt))
    if not representable:
        value = float(ml_dtypes.finfo(dt).max) / 2  # huge, as large as dt allows
    x = np.full((3, 5), value, dt)
    y = numbanorm.layer_norm(x, 5, weight=w, bias=b)
    assert np.array_equal(y, np.broadcast_to(b, y.shape))
    x4 = np.full((2, 5, 3, 3), value, dt)
    for y in (numbanorm.group_norm(x4, 5, weight=w, bias=b),
              numbanorm.instance_norm(x4, weight=w, bias=b),
              numbanorm.batch_norm(x4, None, None, w, b, training=True)):
        assert np.array_equal(y, np.broadcast_to(b.reshape(1, 5, 1, 1), y.shape))


def test_nan_and_inf_poison_only_their_row():
    rng = rng_for("nan-rows")
    x = rng.standard_normal((4, 6, 5)).astype(np.float32)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = np.inf
    y = numbanorm.layer_norm(x, (6, 5))
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    assert np.isfinite(y[[0, 3]]).all()
    y = numbanorm.group_norm(x[..., None], 3)
    assert np.isnan(y[1, 2:4]).all() and np.isnan(y[2, 0:2]).all()
    assert np.isfinite(y[1, [0, 1, 4, 5]]).all() and np.isfinite(y[2, 2:]).all()
    assert np.isfinite(y[[0, 3]]).all()
    y = numbanorm.rms_norm(x, 5)
    assert np.isnan(y[1, 2]).all() and np.isnan(y[2, 0]).all()
    bad = np.zeros(y.shape, bool)
    bad[1, 2] = bad[2, 0] = True
    assert np.isfinite(y[~bad]).all()
    yb = numbanorm.batch_norm(x, None, None, training=True)
    assert np.isnan(yb[:, 2]).all() and np.isnan(yb[:, 0]).all()
    assert np.isfinite(yb[:, [1, 3, 4, 5]]).all()


def test_float32_near_max_does_not_overflow():
    rng = rng_for("huge")
    x = (rng.standard_normal((4, 300)) * 1e37 + 1e38).astype(np.float32)
    assert np.isfinite(x).all()
    kw = {}
    op = OPS["layer_norm"]
    assert_close(numbanorm.layer_norm(x, 300), op.reference(x, normalized_shape=300),
                 np.float32, "1e38")
    assert np.isfinite(numbanorm.rms_norm(x, 300)).all()
    assert np.isfinite(numbanorm.group_norm(x.reshape(4, 3, 100), 3)).all()
    del kw


def test_subnormal_inputs():
    x = (np.arange(1, 41, dtype=np.float64) * 1e-42).astype(np.float32).reshape(2, 20)
    assert (np.abs(x) < np.finfo(np.float32).tiny).all()
    op = OPS["layer_norm"]
    assert_close(numbanorm.layer_norm(x, 20, eps=1e-30),
                 op.reference(x, normalized_shape=20, eps=1e-30), np.float32,
                 "subnormal")
