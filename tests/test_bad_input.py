"""Bad input: the right exception type, a message naming the argument and
the shapes, and neither x nor out nor the running statistics modified."""

import numpy as np
import pytest

import numbanorm

X4 = (2, 6, 3, 3)


def _x(shape=X4, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# (function, args, kwargs, exception, words the message must contain)
CASES = {
    "ln-shape-mismatch": ("layer_norm", lambda x: (x, (3, 4)), {}, ValueError,
                          ["normalized_shape", "(3, 4)", "(2, 6, 3, 3)"]),
    "ln-shape-too-long": ("layer_norm", lambda x: (x, (1, 2, 6, 3, 3)), {},
                          ValueError, ["normalized_shape"]),
    "ln-shape-empty": ("layer_norm", lambda x: (x, ()), {}, ValueError,
                       ["normalized_shape"]),
    "ln-shape-type": ("layer_norm", lambda x: (x, "3"), {}, TypeError,
                      ["normalized_shape"]),
    "ln-weight-shape": ("layer_norm", lambda x: (x, 3), {"weight": np.ones(4)},
                        ValueError, ["weight", "(3,)", "(4,)"]),
    "ln-bias-shape": ("layer_norm", lambda x: (x, (3, 3)), {"bias": np.ones(9)},
                      ValueError, ["bias", "(3, 3)", "(9,)"]),
    "ln-weight-complex": ("layer_norm", lambda x: (x, 3),
                          {"weight": np.ones(3, complex)}, TypeError, ["weight"]),
    "rms-shape": ("rms_norm", lambda x: (x, 4), {}, ValueError,
                  ["normalized_shape", "(4,)"]),
    "rms-weight": ("rms_norm", lambda x: (x, 3), {"weight": np.ones((3, 1))},
                   ValueError, ["weight"]),
    "gn-groups-divide": ("group_norm", lambda x: (x, 4), {}, ValueError,
                         ["num_groups=4", "C=6"]),
    "gn-groups-zero": ("group_norm", lambda x: (x, 0), {}, ValueError,
                       ["num_groups=0"]),
    "gn-groups-negative": ("group_norm", lambda x: (x, -2), {}, ValueError,
                           ["num_groups=-2"]),
    "gn-groups-float": ("group_norm", lambda x: (x, 2.0), {}, TypeError,
                        ["num_groups"]),
    "gn-weight": ("group_norm", lambda x: (x, 3), {"weight": np.ones(3)},
                  ValueError, ["weight", "(6,)", "(3,)"]),
    "in-bias": ("instance_norm", lambda x: (x,), {"bias": np.ones(5)},
                ValueError, ["bias", "(6,)", "(5,)"]),
    "bn-running-mean": ("batch_norm", lambda x: (x, np.zeros(5), np.ones(6)),
                        {}, ValueError, ["running_mean", "(6,)", "(5,)"]),
    "bn-running-var": ("batch_norm", lambda x: (x, np.zeros(6), np.ones((6, 1))),
                       {}, ValueError, ["running_var", "(6,)"]),
    "bn-missing-stats": ("batch_norm", lambda x: (x, None, None), {}, ValueError,
                         ["running_mean"]),
    "bn-weight": ("batch_norm", lambda x: (x, np.zeros(6), np.ones(6)),
                  {"weight": np.ones(2)}, ValueError, ["weight", "(6,)", "(2,)"]),
    "bn-train-one-value": ("batch_norm", lambda x: (x[:1, :, :1, :1], None, None),
                           {"training": True}, ValueError, ["more than 1 value"]),
    "bn-train-list-stats": ("batch_norm", lambda x: (x, [0.0] * 6, None),
                            {"training": True}, TypeError, ["running_mean"]),
    "bn-train-momentum": ("batch_norm", lambda x: (x, None, None),
                          {"training": True, "momentum": float("nan")},
                          ValueError, ["momentum"]),
    "gn-x-1d": ("group_norm", lambda x: (x[0, 0, 0], 1), {}, ValueError,
                ["x", "(3,)"]),
    "in-no-spatial": ("instance_norm", lambda x: (x[:, :, 0, 0],), {}, ValueError,
                      ["spatial", "(2, 6)"]),
    "bn-x-1d": ("batch_norm", lambda x: (x[0, 0, 0], np.zeros(3), np.ones(3)), {},
                ValueError, ["x", "(3,)"]),
    "ln-x-0d": ("layer_norm", lambda x: (np.asarray(x[0, 0, 0, 0]), 1), {},
                ValueError, ["x", "()"]),
}
for fn, nargs in [("layer_norm", lambda x: (x, 3)), ("rms_norm", lambda x: (x, 3)),
                  ("group_norm", lambda x: (x, 2)), ("instance_norm", lambda x: (x,)),
                  ("batch_norm", lambda x: (x, np.zeros(6), np.ones(6)))]:
    for eps in (0.0, -1e-5, float("nan"), float("inf")):
        CASES[f"{fn}-eps={eps}"] = (fn, nargs, {"eps": eps}, ValueError, ["eps"])
    CASES[f"{fn}-eps-str"] = (fn, nargs, {"eps": "1e-5"}, TypeError, ["eps"])


@pytest.mark.parametrize("case", list(CASES))
def test_bad_argument(case):
    fn, args, kwargs, exc, words = CASES[case]
    x = _x()
    x_before = x.copy()
    args = args(x)
    saved = [a.copy() if isinstance(a, np.ndarray) else None for a in args[1:]]
    with pytest.raises(exc) as info:
        getattr(numbanorm, fn)(*args, **kwargs)
    msg = str(info.value)
    assert fn in msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert np.array_equal(x, x_before)
    for a, s in zip(args[1:], saved):
        if s is not None:
            assert np.array_equal(a, s), "an argument was modified"


OPS = {
    "layer_norm": (lambda x, **k: numbanorm.layer_norm(x, 3, **k)),
    "rms_norm": (lambda x, **k: numbanorm.rms_norm(x, 3, **k)),
    "group_norm": (lambda x, **k: numbanorm.group_norm(x, 3, **k)),
    "instance_norm": (lambda x, **k: numbanorm.instance_norm(x, **k)),
    "batch_norm": (lambda x, **k: numbanorm.batch_norm(
        x, np.zeros(6), np.ones(6), **k)),
}
BAD_OUT = {
    "shape": (lambda x: np.zeros((2, 6, 9), np.float32), ValueError, "shape"),
    "dtype": (lambda x: np.zeros(X4, np.float64), ValueError, "dtype"),
    "layout": (lambda x: np.zeros((2, 3, 3, 6), np.float32).transpose(0, 3, 1, 2),
               ValueError, "C-contiguous"),
    "readonly": (lambda x: _readonly(np.zeros(X4, np.float32)), ValueError,
                 "read-only"),
    "list": (lambda x: [[0.0]], TypeError, "out"),
}


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("bad", list(BAD_OUT))
@pytest.mark.parametrize("fn", list(OPS))
def test_bad_out(fn, bad):
    make, exc, word = BAD_OUT[bad]
    x = _x()
    x_before = x.copy()
    out = make(x)
    out_before = out.copy() if isinstance(out, np.ndarray) else None
    with pytest.raises(exc, match=word):
        OPS[fn](x, out=out)
    assert np.array_equal(x, x_before)
    if out_before is not None:
        assert np.array_equal(out, out_before)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64,
                                   object, np.longdouble, "U3"])
@pytest.mark.parametrize("fn", list(OPS))
def test_bad_dtype(fn, dtype):
    x = np.zeros(X4, dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        OPS[fn](x)


@pytest.mark.parametrize("fn", list(OPS))
def test_not_an_array(fn):
    with pytest.raises(TypeError, match="numpy.ndarray"):
        OPS[fn](_x().tolist())


def test_batch_norm_training_error_leaves_running_stats_alone():
    x = _x()
    rm, rv = np.zeros(6), np.ones(6)
    with pytest.raises(ValueError):
        numbanorm.batch_norm(x, rm, rv, weight=np.ones(5), training=True)
    assert np.array_equal(rm, np.zeros(6)) and np.array_equal(rv, np.ones(6))


def test_out_overlapping_x_gives_correct_result():
    rng = np.random.default_rng(3)
    buf = rng.standard_normal(2 * 64 + 8).astype(np.float32)
    x = buf[:128].reshape(2, 64)
    expected = numbanorm.layer_norm(x.copy(), 64)
    out = buf[8:136].reshape(2, 64)  # shifted by 8 elements: partial overlap
    numbanorm.layer_norm(x, 64, out=out)
    np.testing.assert_array_equal(out, expected)


def test_read_only_input():
    x = _x()
    x.flags.writeable = False
    y = numbanorm.layer_norm(x, (3, 3))
    np.testing.assert_array_equal(y, numbanorm.layer_norm(x.copy(), (3, 3)))
