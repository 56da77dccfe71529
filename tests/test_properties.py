"""Property tests over random shapes, groups, layouts and dtypes."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import numbanorm
from tests import reference as ref
from tests.conftest import LAYOUTS, arrange, assert_close

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 8))
    spatial = tuple(draw(st.lists(st.integers(1, 9), min_size=0, max_size=3)))
    shape = (n, c) + spatial
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layout = draw(st.sampled_from([l for l in LAYOUTS if l != "channels_last"
                                   or len(shape) >= 3]))
    offset = draw(st.sampled_from([0.0, 1.0, -50.0, 1e3]))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    data = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    return arrange(data, dtype, layout), np.dtype(dtype)


@SETTINGS
@given(problems(), st.data())
def test_group_norm_any_groups(p, data):
    x, dt = p
    C = x.shape[1]
    G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    affine = data.draw(st.booleans())
    rng = np.random.default_rng(C)
    w = rng.standard_normal(C) if affine else None
    b = rng.standard_normal(C) if affine else None
    y = numbanorm.group_norm(x, G, w, b)
    assert_close(y, ref.group_norm(x, G, w, b)[0], dt, f"G={G}")


@SETTINGS
@given(problems(), st.data())
def test_layer_and_rms_norm_any_trailing_dims(p, data):
    x, dt = p
    k = data.draw(st.integers(1, x.ndim))
    ns = x.shape[x.ndim - k:]
    rng = np.random.default_rng(k)
    w = rng.standard_normal(ns)
    assert_close(numbanorm.layer_norm(x, ns, w), ref.layer_norm(x, ns, w)[0],
                 dt, f"layer_norm {ns}")
    assert_close(numbanorm.rms_norm(x, ns, w), ref.rms_norm(x, ns, w), dt,
                 f"rms_norm {ns}")


@SETTINGS
@given(problems())
def test_batch_norm_training_any_shape(p):
    x, dt = p
    assume(x.size // x.shape[1] >= 2)
    C = x.shape[1]
    rm, rv = np.zeros(C), np.ones(C)
    y = numbanorm.batch_norm(x, rm, rv, training=True)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, np.zeros(C), np.ones(C),
                                           training=True)
    assert_close(y, y_ref, dt, "batch_norm")
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-12)
