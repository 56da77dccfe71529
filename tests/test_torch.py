"""Cross-check against torch.nn.functional when PyTorch is installed
(an optional peer, never a dependency)."""

import numpy as np
import pytest

import numbanorm
from tests import reference as ref
from tests.conftest import rng_for

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


CASES = {
    "layer_norm": ((4, 7, 96), lambda x, w, b: numbanorm.layer_norm(x, (7, 96), w, b),
                   lambda x, w, b: F.layer_norm(x, (7, 96), w, b), (7, 96)),
    "rms_norm": ((4, 7, 96), lambda x, w, b: numbanorm.rms_norm(x, 96, w, eps=1e-6),
                 lambda x, w, b: F.rms_norm(x, (96,), w, eps=1e-6), (96,)),
    "group_norm": ((3, 8, 9, 9), lambda x, w, b: numbanorm.group_norm(x, 4, w, b),
                   lambda x, w, b: F.group_norm(x, 4, w, b), (8,)),
    "instance_norm": ((3, 8, 9, 9), lambda x, w, b: numbanorm.instance_norm(x, w, b),
                      lambda x, w, b: F.instance_norm(x, weight=w, bias=b), (8,)),
    "batch_norm": ((5, 8, 9, 9),
                   lambda x, w, b: numbanorm.batch_norm(x, None, None, w, b, training=True),
                   lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                   (8,)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_torch(name, dtype):
    shape, ours, theirs, pshape = CASES[name]
    rng = rng_for("torch", name, dtype)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    w = rng.standard_normal(pshape).astype(dtype)
    b = rng.standard_normal(pshape).astype(dtype)
    y = ours(x, w, b)
    yt = theirs(_t(x), _t(w), _t(b) if name != "rms_norm" else None).numpy()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, yt, rtol=tol, atol=tol)


def test_more_accurate_than_torch_on_offset_data():
    rng = rng_for("torch-offset")
    x = (rng.standard_normal((8, 4096)) * 1e-2 + 1e3).astype(np.float32)
    y_ref = ref.layer_norm(x, 4096)[0]
    ours = np.abs(numbanorm.layer_norm(x, 4096) - y_ref).max()
    theirs = np.abs(F.layer_norm(_t(x), (4096,)).numpy() - y_ref).max()
    assert ours <= 4 * 2.0**-23 * np.abs(y_ref).max()
    assert ours < theirs
