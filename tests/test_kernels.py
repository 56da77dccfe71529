"""Every op against its float64 reference over dtype x shape x affine x
memory layout, plus out=, in-place, return_stats and training BatchNorm."""

import math

import numpy as np
import pytest

import numbanorm
from tests import reference as ref
from tests.conftest import DTYPES, LAYOUTS, OPS, arrange, assert_close, rng_for

def _applies(shape, dtype, layout):
    if layout == "channels_last":
        return len(shape) >= 3
    if layout == "byteswapped":  # ml_dtypes has no byte-swapped bfloat16
        return dtype != "bfloat16"
    return True


def _is_channels_last(x):
    return (x.ndim >= 3 and x.dtype.isnative and not x.flags.c_contiguous
            and np.moveaxis(x, 1, -1).flags.c_contiguous)


CHANNEL_OPS = ("group_norm", "instance_norm", "batch_norm", "batch_norm_train")

CASES = [(op, shape, dtype, layout) for op in OPS for shape in OPS[op].shapes
         for dtype in DTYPES for layout in LAYOUTS
         if _applies(shape, dtype, layout)]


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("opname,shape,dtype,layout", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_matches_reference(opname, shape, dtype, affine, layout):
    op = OPS[opname]
    rng = rng_for(opname, shape, dtype, affine, layout)
    data = rng.standard_normal(shape) * 3 + 0.5
    x = arrange(data, DTYPES[dtype], layout)
    kw = op.params(shape, affine, rng)
    x_before = x.copy()
    y = op.call(x, **kw)
    assert y.shape == x.shape
    if opname in CHANNEL_OPS and _is_channels_last(x):
        # channel norms keep a channels-last input's layout
        assert np.moveaxis(y, 1, -1).flags.c_contiguous
    else:
        assert y.flags.c_contiguous
    assert np.array_equal(x, x_before, equal_nan=True), "x was modified"
    assert_close(y, op.reference(x, **kw), x.dtype.newbyteorder("="),
                 f"{opname}{shape} {dtype} {layout}")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_out_and_in_place(op, dtype):
    shape = op.shapes[3] if len(op.shapes) > 3 else op.shapes[-1]
    rng = rng_for(op.name, "out", dtype)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    kw = op.params(shape, True, rng)
    expected = op.call(x, **kw)
    out = np.full_like(x, np.nan)
    r = op.call(x, **kw, out=out)
    assert r is out
    assert np.array_equal(out, expected)
    xi = x.copy()
    r = op.call(xi, **kw, out=xi)
    assert r is xi
    assert np.array_equal(xi, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_layer_norm_stats(dtype):
    rng = rng_for("ln-stats", dtype)
    x = (rng.standard_normal((2, 3, 40)) + 7).astype(DTYPES[dtype])
    y, mean, rstd = numbanorm.layer_norm(x, (3, 40), return_stats=True)
    _, mref, rref = ref.layer_norm(x, (3, 40))
    sd = np.float64 if dtype == "float64" else np.float32
    assert mean.shape == rstd.shape == (2, 1, 1)
    assert mean.dtype == rstd.dtype == sd
    np.testing.assert_allclose(mean, mref, rtol=2 * np.finfo(sd).eps)
    np.testing.assert_allclose(rstd, rref, rtol=2 * np.finfo(sd).eps)
    # the stats broadcast against x and reproduce y
    recon = (x.astype(np.float64) - mean) * rstd
    assert_close(y, recon, x.dtype, "y vs stats") if dtype == "float64" else None


@pytest.mark.parametrize("fn", ["group_norm", "instance_norm"])
def test_group_stats(fn):
    rng = rng_for("gn-stats", fn)
    x = (rng.standard_normal((3, 6, 5, 7)) * 4 - 2).astype(np.float32)
    if fn == "group_norm":
        y, mean, rstd = numbanorm.group_norm(x, 2, return_stats=True)
        _, mref, rref = ref.group_norm(x, 2)
        G = 2
    else:
        y, mean, rstd = numbanorm.instance_norm(x, return_stats=True)
        _, mref, rref = ref.instance_norm(x)
        G = 6
    assert mean.shape == rstd.shape == (3, G)
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, mref, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(rstd, rref, rtol=1e-7)


def test_group_norm_extremes_equal_layer_and_instance_norm():
    rng = rng_for("gn-extremes")
    x = rng.standard_normal((2, 6, 5, 5))
    np.testing.assert_array_equal(
        numbanorm.group_norm(x, 1), numbanorm.layer_norm(x, (6, 5, 5)))
    np.testing.assert_array_equal(
        numbanorm.group_norm(x, 6), numbanorm.instance_norm(x))


@pytest.mark.parametrize("shape,G", [((32, 512), 32), ((8, 512, 2, 2), 32),
                                     ((16, 64), 64), ((4, 96, 4, 4), 3),
                                     ((32, 64, 4, 4), 64)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_group_norm_of_many_small_groups(shape, G, dtype):
    """Groups of up to SHORT_ROW elements take their own kernel (a tile of
    groups per call): against the reference on offset data, fresh, into
    out= and in place, with the statistics."""
    rng = rng_for("gn-small-groups", shape, G, dtype)
    dt = DTYPES[dtype]
    x = (rng.standard_normal(shape) * 2 + 40).astype(dt)
    C = shape[1]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    want = ref.group_norm(x, G, w, b)
    y, mean, rstd = numbanorm.group_norm(x, G, w, b, return_stats=True)
    assert_close(y, want[0], dt, f"group_norm{shape} G={G}")
    np.testing.assert_allclose(mean, want[1].reshape(mean.shape), rtol=1e-6)
    np.testing.assert_allclose(rstd, want[2].reshape(rstd.shape), rtol=1e-5)
    out = np.empty_like(x)
    numbanorm.group_norm(x, G, w, b, out=out)
    assert np.array_equal(out.view(np.uint8), y.view(np.uint8))
    xin = x.copy()
    numbanorm.group_norm(xin, G, w, b, out=xin)
    assert np.array_equal(xin.view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 7), (8, 16, 32, 32), (2, 3, 9000),
                                   (600, 64), (300, 64, 1, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_batch_norm_training(shape, dtype):
    rng = rng_for("bn-train", shape, dtype)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    C = shape[1]
    rm = rng.standard_normal(C).astype(np.float32)
    rv = (rng.random(C) + 0.5).astype(np.float32)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training=True,
                                           momentum=0.3)
    y = numbanorm.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3)
    assert_close(y, y_ref, dtype, "batch_norm training")
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-6)
    # without running statistics: normalizes all the same
    y2 = numbanorm.batch_norm(x, None, None, w, b, training=True)
    assert np.array_equal(y, y2)


# One position per channel ((N, C), BatchNorm1d's input, or (N, C, 1, 1)):
# the channels-last kernels over one sample of N positions; serial and
# parallel sizes.
@pytest.mark.parametrize("shape", [(5, 3), (32, 256), (600, 64), (4096, 16),
                                   (300, 64, 1, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_batch_norm_one_position_per_channel(shape, dtype, training):
    rng = rng_for("bn-rows", shape, dtype, training)
    offset = 300 if dtype == "float16" else 1e4
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    C = shape[1]
    rm = rng.standard_normal(C) + offset
    rv = rng.random(C) + 0.5
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y_ref = ref.batch_norm(x, rm, rv, w, b, training=training)
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    y = numbanorm.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training)
    assert_close(y, y_ref, dtype, f"batch_norm{shape} training={training}")
    # the (N, C) and (N, C, 1, 1) views of the same data agree bitwise
    x4 = x.reshape(x.shape[:2] + (1, 1))
    y4 = numbanorm.batch_norm(x4, rm.copy(), rv.copy(), w, b, training=training)
    assert np.array_equal(y4.reshape(y.shape).view(np.uint8), y.view(np.uint8))


# BatchNorm inference with short per-channel segments runs many samples as
# rows with repeated parameters (_dispatch.segments_affine): the same bits
# as the per-segment plan, and right against the reference.
@pytest.mark.parametrize("shape", [(64, 8, 2), (40, 16, 3, 3), (32, 4, 32), (600, 5, 7)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_batch_norm_short_segments(shape, dtype, monkeypatch):
    from numbanorm import _dispatch

    rng = rng_for("bn-short", shape, dtype)
    offset = 300 if dtype == "float16" else 1e4
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    C = shape[1]
    rm, rv = rng.standard_normal(C) + offset, rng.random(C) + 0.5
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    calls = []
    real = _dispatch._PARALLEL["nhwc_apply"], _dispatch._SERIAL["nhwc_apply"]
    monkeypatch.setitem(_dispatch._PARALLEL, "nhwc_apply",
                        lambda *a: calls.append(1) or real[0](*a))
    monkeypatch.setitem(_dispatch._SERIAL, "nhwc_apply",
                        lambda *a: calls.append(1) or real[1](*a))
    y = numbanorm.batch_norm(x, rm, rv, w, b)
    assert calls, "the rows plan was not taken"
    y_ref = ref.batch_norm(x, rm, rv, w, b)
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    assert_close(y, y_ref, dtype, f"batch_norm{shape}")
    monkeypatch.setattr(_dispatch, "SHORT_SEGMENT", 0)
    segments = numbanorm.batch_norm(x, rm, rv, w, b)
    assert np.array_equal(y.view(np.uint8), segments.view(np.uint8))


# BatchNorm training with few positions per channel takes its statistics
# per column of the (N, C*S) matrix (_dispatch._column_stats): right
# against the reference, running statistics included, with an offset, and
# a NaN poisons only its channel. (64, 3, 4) is float64 data whose squared
# deviations overflow a column's accumulator; the per-segment plan then
# recomputes them on scaled data (see test_hostile for S = 1).
@pytest.mark.parametrize("shape", [(64, 8, 2), (40, 16, 3, 2), (32, 4, 8),
                                   (600, 5, 7), (2048, 64, 2), (40, 1024, 1, 8)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_batch_norm_training_few_positions(shape, dtype, monkeypatch):
    from numbanorm import _dispatch

    rng = rng_for("bn-columns", shape, dtype)
    offset = 300 if dtype == "float16" else 1e4
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    N, C = shape[:2]
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    calls = []
    real = _dispatch._column_stats
    monkeypatch.setattr(_dispatch, "_column_stats",
                        lambda *a: calls.append(1) or real(*a))
    rm1, rv1 = rm.copy(), rv.copy()
    y = numbanorm.batch_norm(x, rm1, rv1, w, b, training=True, momentum=0.3)
    wide = math.prod(shape[1:]) > _dispatch.COLUMN_WIDTH
    assert bool(calls) != wide, "the column plan was (not) taken"
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training=True,
                                           momentum=0.3)
    assert_close(y, y_ref, dtype, f"batch_norm{shape} training")
    np.testing.assert_allclose(rm1, rm_ref, rtol=1e-12)
    np.testing.assert_allclose(rv1, rv_ref, rtol=1e-12 if dtype != "float16" else 1e-6)
    xn = x.copy()
    xn[N // 2, 1].flat[-1] = np.nan
    yn = numbanorm.batch_norm(xn, None, None, w, b, training=True)
    assert np.isnan(yn[:, 1]).all()
    keep = np.ones(C, bool)
    keep[1] = False
    assert np.array_equal(yn[:, keep], y[:, keep])


def test_batch_norm_training_few_positions_overflow():
    from numbanorm import _dispatch

    rng = rng_for("bn-columns-overflow")
    x = rng.standard_normal((64, 3, 4)) * 2.0**511
    assert _dispatch._column_stats(x.ravel(), 64, 3, 4) is None
    y = numbanorm.batch_norm(x, None, None, training=True)
    assert_close(y, ref.batch_norm(x, None, None, training=True)[0],
                 np.float64, "batch_norm training at 7e153")


# Inference BatchNorm with the running statistics and parameters in one
# float dtype has them formed by a kernel (_dispatch.batch_norm_inference):
# the same bits as the general path (parameters passed as lists), with or
# without weight and bias, in x's dtype or float64, on the segment, rows
# and one-position plans; a channel whose running_var + eps is not > 0
# sends the call to the general path before anything is written, and comes
# out NaN, without a warning.
@pytest.mark.parametrize("shape", [(1, 64, 8, 8), (4, 3, 7), (2, 64, 32, 32), (1, 5, 5000),
                                   (64, 8, 2), (40, 6)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_params_folded_by_a_kernel(shape, dtype, monkeypatch):
    import warnings

    from numbanorm import _dispatch

    rng = rng_for("bn-apply", shape, dtype)
    x = (rng.standard_normal(shape) * 2 + 300).astype(dtype)
    C = shape[1]
    rm = rng.standard_normal(C) + 300
    rv = rng.random(C) + 0.5
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    calls = []
    monkeypatch.setitem(_dispatch._SERIAL, "batch_norm_fold",
                        lambda *a, _k=_dispatch._SERIAL["batch_norm_fold"]: calls.append(1) or _k(*a))

    def lists(*ps):
        return [None if p is None else p.tolist() for p in ps]

    for pdt in (dtype, "float64"):
        p = [a.astype(pdt) for a in (rm, rv, w, b)]
        for wi, bi in ((p[2], p[3]), (None, None), (p[2], None), (None, p[3])):
            del calls[:]
            y = numbanorm.batch_norm(x, p[0], p[1], wi, bi)
            assert calls, "the kernel did not form the parameters"
            general = numbanorm.batch_norm(x, *lists(p[0], p[1], wi, bi))
            assert np.array_equal(y.view(np.uint8), general.view(np.uint8))
            assert_close(y, ref.batch_norm(x, p[0], p[1], wi, bi)[0], dtype,
                         f"batch_norm{shape} params {pdt}")
    p = [a.astype(dtype) for a in (rm, rv, w, b)]
    p[1][1] = -1.0
    p[1][-1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = numbanorm.batch_norm(x, *p)
        xin = x.copy()
        assert numbanorm.batch_norm(xin, *p, out=xin) is xin
    assert np.isnan(y[:, 1]).all() and np.isnan(y[:, -1]).all()
    general = numbanorm.batch_norm(x, *lists(*p))
    assert np.array_equal(y.view(np.uint8), general.view(np.uint8))
    assert np.array_equal(xin.view(np.uint8), y.view(np.uint8))


# The common calls' fast paths (C-contiguous float32/float64 data,
# parameters as float32/float64 arrays, for LayerNorm/RMSNorm of x's dtype,
# eps a float) against the general path, taken here by passing the same
# parameters as lists and eps as a numpy float: the same bits. The fast
# path skips _check_x; the general path runs it.
FAST_CALLS = {  # serial and parallel sizes, whole and split rows
    "layer_norm": [(1, 768), (8, 768), (3, 2048), (8, 4096), (64, 768), (3, 20000)],
    "rms_norm": [(1, 768), (8, 768), (3, 2048), (8, 4096), (64, 768), (3, 20000)],
    "group_norm": [(1, 32, 4, 4), (2, 64, 8, 16), (1, 8, 3000), (2, 64, 32, 32)],
    "instance_norm": [(1, 3, 64, 64), (2, 8, 16), (1, 8, 64, 64)],
    "batch_norm": [(1, 64, 8, 8), (32, 256), (4, 3, 7), (4, 64, 16, 16), (600, 64)],
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_fast_paths_match_the_general_path(op, affine, dtype, monkeypatch):
    from numbanorm import _api

    checks = []
    real = _api._check_x
    monkeypatch.setattr(_api, "_check_x", lambda *a: checks.append(1) or real(*a))
    for shape in FAST_CALLS[op.name]:
        rng = rng_for("small", op.name, shape, dtype, affine)
        x = (rng.standard_normal(shape) * 2 + 300).astype(dtype)
        kw = op.params(shape, affine, rng)
        arrays = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v
                  for k, v in kw.items()}
        lists = {k: v.tolist() if isinstance(v, np.ndarray) else v
                 for k, v in arrays.items()}
        lists["eps"] = np.float64(np.finfo(dtype).eps if op.name == "rms_norm" else 1e-5)
        del checks[:]
        fast = op.call(x, **arrays)
        assert not checks, f"{op.name}{shape}: the fast path was not taken"
        general = op.call(x, **lists)
        assert checks, f"{op.name}{shape}: the general path was not taken"
        assert np.array_equal(fast.view(np.uint8), general.view(np.uint8)), shape
        out = np.full_like(x, np.nan)
        assert op.call(x, **arrays, out=out) is out
        assert np.array_equal(out.view(np.uint8), general.view(np.uint8)), shape
        assert_close(fast, op.reference(x, **kw), dtype, f"{op.name}{shape}")


def test_rms_norm_default_eps_is_dtype_epsilon():
    x = np.full((2, 4), 1e-3, np.float16)
    y = numbanorm.rms_norm(x, 4)
    eps = float(np.finfo(np.float16).eps)
    expected = 1e-3 / np.sqrt(float(np.float16(1e-3)) ** 2 + eps)
    assert_close(y, np.full((2, 4), float(np.float16(1e-3)) / np.sqrt(
        float(np.float16(1e-3)) ** 2 + eps)), np.float16, "rms eps")
    assert abs(float(y[0, 0]) - expected) < 1e-2


@pytest.mark.parametrize("fn,args", [
    ("layer_norm", ((0, 5), 5)), ("rms_norm", ((0, 5), 5)),
    ("group_norm", ((0, 4, 3), 2)), ("instance_norm", ((0, 4, 3),)),
    ("batch_norm", ((0, 4, 3), np.zeros(4), np.ones(4))),
])
def test_empty_batch(fn, args):
    x = np.empty(args[0], np.float32)
    y = getattr(numbanorm, fn)(x, *args[1:])
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("opname,kw", [
    ("group_norm", {"num_groups": 32}), ("group_norm", {"num_groups": 1}),
    ("instance_norm", {}), ("batch_norm", {"training": True}),
    ("batch_norm", {"training": False})])
def test_channels_last_kept_out_and_in_place(opname, kw, dtype):
    """Channels-last inputs are normalized where they are: the result, an
    out= in the same layout and out=x all agree with the reference."""
    rng = rng_for("channels_last", opname, dtype, tuple(kw))
    N, C, H, W = 3, 64, 17, 9
    nhwc = (rng.standard_normal((N, H, W, C)) * 0.01 + 300).astype(dtype)
    x = nhwc.transpose(0, 3, 1, 2)
    params = {"weight": rng.standard_normal(C), "bias": rng.standard_normal(C)}
    if opname == "batch_norm":
        params["running_mean"] = np.full(C, 300.0)
        params["running_var"] = np.full(C, 1e-4)
    ref_kw = {k: (v.copy() if isinstance(v, np.ndarray) else v)
              for k, v in {**kw, **params}.items()}
    expected = ref.REFERENCES[opname](x, **ref_kw)
    expected = expected[0] if isinstance(expected, tuple) else expected
    x_before = x.copy()

    def run(**extra):
        p = {k: (v.copy() if isinstance(v, np.ndarray) else v)
             for k, v in params.items()}
        return getattr(numbanorm, opname)(x if "out" not in extra or extra["out"] is not x else x, **kw, **p, **extra)

    y = run()
    assert np.moveaxis(y, 1, -1).flags.c_contiguous
    assert np.array_equal(x, x_before)
    assert_close(y, expected, np.dtype(dtype), f"{opname} channels-last")
    out = np.empty_like(x)  # keeps the channels-last layout
    assert run(out=out) is out
    assert np.array_equal(out, y)
    out_c = np.empty(x.shape, x.dtype)  # C-contiguous out works too
    assert run(out=out_c) is out_c
    assert_close(out_c, expected, np.dtype(dtype), f"{opname} C out")
    r = run(out=x)
    assert r is x
    assert np.array_equal(x, y)
