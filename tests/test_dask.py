"""numbanorm.dask against the numpy functions, on Dask's threaded scheduler
and on a 2-process distributed LocalCluster over loopback."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import psutil  # noqa: E402

import numbanorm  # noqa: E402
import numbanorm.dask as nd  # noqa: E402
from numbanorm import _dispatch  # noqa: E402
from tests.conftest import assert_close, rng_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# A LocalCluster's scheduler serves HTTP on port 8787 even without a
# dashboard, and moves to a free port with this warning when another
# cluster (the benchmark's, another user's) holds it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Port \d+ is already in use:UserWarning")


@pytest.fixture(scope="module")
def cluster_client():
    """Two single-thread worker processes on loopback, shut down (and
    checked to be gone) when the module's tests are done."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)
    pids = list(client.run(os.getpid).values())
    assert len(pids) == 2
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        assert cluster.status == distributed.core.Status.closed
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        assert not alive, f"worker processes left running: {alive}"


@pytest.fixture(params=["threads", "distributed"])
def scheduler(request):
    """Makes dask.compute (also inside numbanorm.dask) use this scheduler."""
    if request.param == "threads":
        with dask.config.set(scheduler="threads"):
            yield "threads"
    else:
        client = request.getfixturevalue("cluster_client")
        with dask.config.set(scheduler=client):
            yield client


def _data(shape, dtype, *key, offset=0.0, std=1.0):
    x = rng_for(shape, str(dtype), *key).standard_normal(shape) * std + offset
    return x.astype(dtype)


def _params(C, *key):
    r = rng_for(C, *key)
    return r.standard_normal(C), r.standard_normal(C)


# ---------------------------------------------------------------------------
# per-sample ops: bit-identical to the numpy functions

# (op, shape, chunks, kwargs builder): batch split unevenly; channels split
# where the op allows it (whole groups; any for instance/batch norm)
CASES = {
    "layer_norm": ((11, 6, 40), ((4, 4, 3), (2, 4), 40),
                   lambda: dict(normalized_shape=40, weight=_params(40, 1)[0],
                                bias=_params(40, 2)[0])),
    "layer_norm_2d": ((7, 6, 40), ((5, 2), 6, 40),
                      lambda: dict(normalized_shape=(6, 40))),
    # 393216 elements: numpy's whole-array call runs the parallel plan, the
    # blocks the serial one
    "layer_norm_big": ((64, 8, 768), ((16, 20, 28), 8, 768),
                       lambda: dict(normalized_shape=768,
                                    weight=_params(768, 3)[0].astype(
                                        np.float32))),
    "rms_norm": ((11, 6, 40), ((1, 7, 3), 6, 40),
                 lambda: dict(normalized_shape=40, weight=_params(40, 4)[0])),
    "group_norm": ((7, 8, 5, 6), ((3, 4), (2, 6), 5, 6),
                   lambda: dict(num_groups=4, weight=_params(8, 5)[0],
                                bias=_params(8, 5)[1])),
    "group_norm_2d": ((9, 6), ((2, 7), 6), lambda: dict(num_groups=3)),
    "instance_norm": ((7, 6, 9), ((2, 2, 3), (1, 5), 9),
                      lambda: dict(weight=_params(6, 6)[0],
                                   bias=_params(6, 6)[1])),
    "batch_norm": ((7, 6, 5, 4), ((3, 4), (4, 2), (2, 3), 4),
                   lambda: dict(running_mean=_params(6, 7)[0],
                                running_var=np.abs(_params(6, 7)[1]) + 0.5,
                                weight=_params(6, 8)[0],
                                bias=_params(6, 8)[1])),
}
STATS = {"layer_norm", "group_norm", "instance_norm"}


def _op(case):
    return case.rsplit("_", 1)[0] if case.endswith(("_2d", "_big")) else case


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_per_block_ops_bit_identical(case, dtype, scheduler):
    shape, chunks, kw = CASES[case]
    op = _op(case)
    kw = kw()
    x = _data(shape, dtype, case)
    xd = da.from_array(x, chunks=chunks)
    stats = op in STATS
    if stats:
        kw["return_stats"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", nd.RechunkWarning)
        out = getattr(nd, op)(xd, **kw)
    expected = getattr(numbanorm, op)(x, **kw)
    if not stats:
        out, expected = (out,), (expected,)
    for o in out:
        assert isinstance(o, da.Array)
    got = dask.compute(*out)
    for o, g, e in zip(out, got, expected):
        assert o.shape == e.shape == g.shape and o.dtype == e.dtype == g.dtype
        assert np.array_equal(g, e, equal_nan=True), case


def test_parameters_are_copied_when_the_graph_is_built():
    x = _data((4, 3, 8), np.float32, "copy")
    w, b = _params(8, "copy")
    rm, rv = np.zeros(3), np.ones(3)
    xd = da.from_array(x, chunks=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nd.RechunkWarning)
        y = nd.layer_norm(xd, 8, w, b)
    yb = nd.batch_norm(xd, rm, rv)
    expected = numbanorm.layer_norm(x, 8, w, b), numbanorm.batch_norm(x, rm, rv)
    w += 1
    b += 1
    rm += 1
    got = dask.compute(y, yb, scheduler="threads")
    assert np.array_equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])


def test_float16_and_bfloat16():
    import ml_dtypes
    for dt in (np.float16, ml_dtypes.bfloat16):
        x = _data((6, 3, 50), np.float32, "half").astype(dt)
        y = nd.layer_norm(da.from_array(x, chunks=(4, 3, 50)), 50)
        g = y.compute(scheduler="threads")
        assert g.dtype == x.dtype
        assert np.array_equal(g, numbanorm.layer_norm(x, 50), equal_nan=True)


# chunkings that split a normalized dim (or a group), and the dims named
SPLIT = {
    "layer_norm": ((5, 6, 40), (2, (2, 4), 40), dict(normalized_shape=(6, 40)),
                   (1,)),
    "rms_norm": ((5, 40), (2, (30, 10)), dict(normalized_shape=40), (1,)),
    "group_norm": ((4, 8, 5, 6), (2, (3, 5), 5, (4, 2)), dict(num_groups=4),
                   (1, 3)),
    "instance_norm": ((4, 3, 5, 6), (2, 1, (2, 3), 6), {}, (2,)),
}


@pytest.mark.parametrize("op", list(SPLIT))
def test_split_normalized_dim_warns_and_rechunks(op, scheduler):
    shape, chunks, kw, dims = SPLIT[op]
    x = _data(shape, np.float32, "split", op)
    xd = da.from_array(x, chunks=chunks)
    with pytest.warns(nd.RechunkWarning) as rec:
        y = getattr(nd, op)(xd, **kw)
    msg = str(rec[0].message)
    assert f"dim(s) {dims}" in msg and str(shape) in msg, msg
    assert rec[0].filename == __file__  # points at the caller
    assert np.array_equal(y.compute(), getattr(numbanorm, op)(x, **kw))


def test_rechunk_keeps_blocks_near_chunk_size():
    """Merging the normalized dims would make huge blocks: the batch dim is
    then re-split (whole rows stay whole)."""
    xd = da.zeros((64, 4096), np.float32, chunks=(64, 256))
    with dask.config.set({"array.chunk-size": "256KiB"}), \
            pytest.warns(nd.RechunkWarning):
        y = nd.layer_norm(xd, 4096)
    assert y.chunks[1] == (4096,)
    assert max(y.chunks[0]) * 4096 * 4 <= 256 * 1024 * 1.25


def test_threads_per_block_config():
    x = _data((12, 40000), np.float32, "threads")
    xd = da.from_array(x, chunks=(5, 40000))
    with dask.config.set({"numbanorm.threads-per-block": 2}):
        y = nd.layer_norm(xd, 40000)
    assert np.array_equal(y.compute(scheduler="threads"),
                          numbanorm.layer_norm(x, 40000))
    with dask.config.set({"numbanorm.threads-per-block": 0}), \
            pytest.raises(ValueError, match="threads-per-block"):
        nd.layer_norm(xd, 40000)


def test_empty_batch():
    x = np.zeros((0, 3, 8), np.float32)
    y, mean, rstd = nd.layer_norm(da.from_array(x), 8, return_stats=True)
    g = dask.compute(y, mean, rstd, scheduler="threads")
    assert [a.shape for a in g] == [(0, 3, 8), (0, 3, 1), (0, 3, 1)]


# ---------------------------------------------------------------------------
# batch_norm training: a tree of per-block moments


def _bn_reference(x, rm, rv, w, b, momentum, eps):
    """Plainly, in long double (float64 would not do for float64 data with
    a large offset): two-pass mean and biased variance per channel."""
    x64 = x.astype(np.longdouble)
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x64.mean(axis=axes)
    var = ((x64 - np.expand_dims(mean, axes)) ** 2).mean(axis=axes)
    n = x.size // x.shape[1]

    def ch(a):
        return np.expand_dims(a, axes)
    y = (x64 - ch(mean)) / np.sqrt(ch(var) + eps) * ch(w) + ch(b)
    rm = (1 - momentum) * rm + momentum * mean
    rv = (1 - momentum) * rv + momentum * var * n / (n - 1)
    return tuple(a.astype(np.float64) for a in (y, rm, rv))


@pytest.mark.parametrize("data", ["normal", "offset"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_training(dtype, data, scheduler):
    # the batch spans 5 blocks; channels and a spatial dim are split too
    shape = (13, 3, 4, 5)
    chunks = ((3, 3, 3, 3, 1), (2, 1), 4, (2, 3))
    offset, std = (1e3, 1e-2) if data == "offset" else (0.0, 1.0)
    x = _data(shape, dtype, "bn", data, offset=offset, std=std)
    w, b = _params(3, "bn")
    momentum, eps = 0.3, 1e-5
    rm0 = np.full(3, offset) + _params(3, "rm")[0]
    rv0 = np.abs(_params(3, "rv")[0]) + 0.5
    rdt = np.dtype(dtype)
    rm, rv = rm0.astype(rdt), rv0.astype(rdt)
    rm_np, rv_np = rm.copy(), rv.copy()

    xd = da.from_array(x, chunks=chunks)
    assert xd.numblocks[0] == 5
    y = nd.batch_norm(xd, rm, rv, w, b, training=True, momentum=momentum,
                      eps=eps)
    y_np = numbanorm.batch_norm(x, rm_np, rv_np, w, b, training=True,
                                momentum=momentum, eps=eps)
    y_ref, rm_ref, rv_ref = _bn_reference(x, rm0.astype(rdt), rv0.astype(rdt),
                                          w, b, momentum, eps)
    got = y.compute()
    assert got.dtype == x.dtype and got.shape == x.shape
    assert_close(got, y_np, dtype, "vs numbanorm.batch_norm")
    assert_close(got, y_ref, dtype, "vs float64 reference")
    # running statistics: updated once, as numbanorm.batch_norm does
    rtol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(rm, rm_np, rtol=rtol)
    np.testing.assert_allclose(rv, rv_np, rtol=rtol)
    np.testing.assert_allclose(rm, rm_ref, rtol=rtol)
    np.testing.assert_allclose(rv, rv_ref, rtol=rtol)
    before = rm.copy(), rv.copy()
    again = y.compute()
    assert np.array_equal(again, got)
    assert np.array_equal(rm, before[0]) and np.array_equal(rv, before[1])
    # without running statistics: the statistics stay in y's graph, and the
    # result is the same bits
    y_lazy = nd.batch_norm(xd, None, None, w, b, training=True, eps=eps)
    assert np.array_equal(y_lazy.compute(), got)


def test_batch_norm_training_same_bits_on_every_scheduler(cluster_client):
    x = _data((10, 4, 30), np.float32, "sched", offset=5.0)
    xd = da.from_array(x, chunks=((2, 3, 5), (1, 3), (7, 23)))
    y = nd.batch_norm(xd, None, None, training=True)
    a = y.compute(scheduler="threads")
    b = y.compute(scheduler="sync")
    c = y.compute(scheduler=cluster_client)
    assert np.array_equal(a, b) and np.array_equal(a, c)


# ---------------------------------------------------------------------------
# laziness: building a graph runs no kernel


KERNELS = ["layer_norm", "small_layer_norm", "rms_norm", "small_rms_norm",
           "group_norm", "batch_norm_stats", "batch_norm_stats_nhwc",
           "segments_affine", "affine_nhwc"]


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = dict.fromkeys(KERNELS, 0)
    for name in KERNELS:
        fn = getattr(_dispatch, name)

        def counted(*a, _fn=fn, _name=name, **k):
            calls[_name] += 1
            return _fn(*a, **k)
        monkeypatch.setattr(_dispatch, name, counted)
    return calls


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "group_norm",
                                "instance_norm", "batch_norm_eval",
                                "batch_norm_train_no_running"])
def test_building_the_graph_computes_nothing(op, kernel_calls):
    x = _data((6, 4, 10), np.float32, "lazy")
    xd = da.from_array(x, chunks=(2, 4, (4, 6)))  # also a rechunk for some
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nd.RechunkWarning)
        y = {
            "layer_norm": lambda: nd.layer_norm(xd, 10, return_stats=True)[0],
            "rms_norm": lambda: nd.rms_norm(xd, 10),
            "group_norm": lambda: nd.group_norm(xd, 2),
            "instance_norm": lambda: nd.instance_norm(xd),
            "batch_norm_eval": lambda: nd.batch_norm(xd, np.zeros(4),
                                                     np.ones(4)),
            "batch_norm_train_no_running": lambda: nd.batch_norm(
                xd, None, None, training=True),
        }[op]()
    assert sum(kernel_calls.values()) == 0
    y.compute(scheduler="threads")
    assert sum(kernel_calls.values()) > 0


def test_batch_norm_training_updates_running_stats_at_call(kernel_calls):
    x = _data((10, 3, 8), np.float32, "eager")
    xd = da.from_array(x, chunks=(2, 3, 8))
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with dask.config.set(scheduler="threads"):
        y = nd.batch_norm(xd, rm, rv, training=True)
    # one reading pass for the statistics, none for the output yet
    assert kernel_calls["batch_norm_stats"] == 5
    assert kernel_calls["segments_affine"] == 0
    assert not np.array_equal(rm, np.zeros(3))
    y.compute(scheduler="threads")
    assert kernel_calls["segments_affine"] == 5
    assert kernel_calls["batch_norm_stats"] == 5


# ---------------------------------------------------------------------------
# validation: the numpy API's errors, raised when the graph is built

X3 = np.zeros((4, 6, 5), np.float32)
X2 = np.zeros((1, 6), np.float32)
BAD = [
    ("layer_norm", X3, dict(normalized_shape=4)),
    ("layer_norm", X3, dict(normalized_shape=5, weight=np.ones(4))),
    ("layer_norm", X3, dict(normalized_shape=5, eps=-1.0)),
    ("layer_norm", X3, dict(normalized_shape="a")),
    ("rms_norm", X3, dict(normalized_shape=(6, 4))),
    ("rms_norm", X3, dict(normalized_shape=5, eps=float("nan"))),
    ("group_norm", X3, dict(num_groups=4)),
    ("group_norm", X3, dict(num_groups=2.0)),
    ("group_norm", X3, dict(num_groups=3, bias=np.ones(5))),
    ("instance_norm", X2, {}),
    ("batch_norm", X3, dict(running_mean=None, running_var=np.ones(6))),
    ("batch_norm", X3, dict(running_mean=np.ones(5), running_var=np.ones(6))),
    ("batch_norm", X3, dict(running_mean=np.ones(5), running_var=None,
                            training=True)),
    ("batch_norm", X3, dict(running_mean=None, running_var=[1.0] * 6,
                            training=True)),
    ("batch_norm", X3, dict(running_mean=None, running_var=None,
                            training=True, momentum=float("inf"))),
    ("batch_norm", X2, dict(running_mean=None, running_var=None,
                            training=True)),
    ("layer_norm", X3.astype(np.int32), dict(normalized_shape=5)),
]


@pytest.mark.parametrize("op, x, kw", BAD)
def test_bad_input_same_error_as_numpy(op, x, kw, kernel_calls):
    with pytest.raises((TypeError, ValueError)) as e_np:
        getattr(numbanorm, op)(x, **kw)
    kw = {k: (v.copy() if isinstance(v, np.ndarray) else v)
          for k, v in kw.items()}
    before = {k: v.copy() for k, v in kw.items() if isinstance(v, np.ndarray)}
    with pytest.raises(e_np.type) as e_dask:
        getattr(nd, op)(da.from_array(x, chunks=2), **kw)
    assert str(e_dask.value) == str(e_np.value)
    assert sum(kernel_calls.values()) == 0
    for k, v in before.items():
        assert np.array_equal(kw[k], v)


def test_bad_input_specific_to_dask():
    with pytest.raises(TypeError,
                       match="dask.array.Array.*numbanorm.layer_norm"):
        nd.layer_norm(np.zeros((2, 3)), 3)
    xd = da.zeros((2, 3), chunks=1)
    with pytest.raises(TypeError, match="weight .*compute"):
        nd.layer_norm(xd, 3, weight=da.ones(3))
    unknown = xd[xd[:, 0] > 0]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        nd.layer_norm(unknown, 3)


# ---------------------------------------------------------------------------
# packaging


def test_import_numbanorm_does_not_import_dask():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "import sys, numbanorm; print(sorted(m for m in sys.modules " \
           "if m == 'dask' or m.startswith(('dask.', 'distributed'))))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_dask_says_how_to_install(monkeypatch):
    import importlib
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.delitem(sys.modules, "numbanorm.dask")
    with pytest.raises(ImportError, match=r"pip install numbanorm\[dask\]"):
        importlib.import_module("numbanorm.dask")


def test_benchmark_quick():
    from benchmarks import dask_case
    r = dask_case.run(quick=True)
    for key in ("local_s", "cluster_s", "cluster_gather_s", "overhead_ratio",
                "block_compute_s", "block_local_1thread_s", "block_bytes",
                "transfer_s_per_block", "transfer_bytes_per_s", "crossover",
                "nbytes", "blocks", "workers"):
        assert key in r, key
    assert r["identical"]
    for key in ("overhead_s", "local_s_per_gb", "cluster_machine_s_per_gb",
                "resident", "shipped", "min_nbytes_resident",
                "min_nbytes_shipped", "network_bytes_per_s"):
        assert key in r["crossover"], key
    assert "crossover estimate" in dask_case.report(r)
