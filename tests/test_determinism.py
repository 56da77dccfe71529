"""Results do not depend on how a call runs: thread count, serial or
parallel build, one task per row or rows split into chunks."""

import numba
import numpy as np
import pytest

from numbanorm import _dispatch
from tests import reference as ref
from tests.conftest import OPS, assert_close, rng_for

# shapes that take the split plan on 2 threads, and ones that do not
SHAPES = {
    "layer_norm": [(3, 20000), (64, 768)],
    "rms_norm": [(3, 20000), (64, 768)],
    "group_norm": [(1, 6, 64, 64), (4, 8, 32, 32), (64, 8, 8, 8)],
    "instance_norm": [(1, 3, 128, 128), (4, 8, 32, 32), (8, 16, 16, 16)],
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


# rows or segments long enough for streaming stores (see _dispatch._stream):
# whole rows, split rows (on 2 threads), groups, channels, BatchNorm chunks;
# from 2**15 elements (below, the small LayerNorm/RMSNorm path, which never
# streams)
STREAM_SHAPES = {
    "layer_norm": [(24, 1537), (3, 20000)],
    "rms_norm": [(24, 1537), (3, 20000)],
    "group_norm": [(2, 6, 40, 41)],
    "instance_norm": [(2, 3, 40, 41)],
    "batch_norm": [(3, 2, 20000)],
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("affine", [True, False])
def test_streaming_stores_change_no_bit(op, affine, dtype, monkeypatch):
    """Large outputs are written with streaming stores of aligned vectors:
    the results are bitwise those of the plain loops, into a fresh array,
    into an out= view that starts between two vectors, and in place."""
    streamed = []
    real = _dispatch._stream

    def spy(*a, **k):
        streamed.append(real(*a, **k))
        return streamed[-1]

    monkeypatch.setattr(_dispatch, "_stream", spy)
    for shape in STREAM_SHAPES[op.name]:
        rng = rng_for("stream", op.name, shape, dtype, affine)
        x = (rng.standard_normal(shape) * 2 + 300).astype(dtype)
        kw = op.params(shape, affine, rng)
        for training in ((False, True) if op.name == "batch_norm" else (None,)):
            if training:
                kw = dict(kw, training=True, running_mean=None, running_var=None)
            monkeypatch.setattr(_dispatch, "NT_MIN_BYTES", 1 << 62)
            plain = op.call(x, **kw)
            monkeypatch.setattr(_dispatch, "NT_MIN_BYTES", 0)
            results = {"fresh": op.call(x, **kw)}
            buf = np.empty(x.size + 1, dtype)
            out = buf[1:].reshape(shape)
            op.call(x, out=out, **kw)
            results["offset out="] = out
            xin = x.copy()
            op.call(xin, out=xin, **kw)
            results["in place"] = xin
            for name, y in results.items():
                assert np.array_equal(y.view(np.uint8), plain.view(np.uint8)), \
                    (shape, training, name)
    if dtype != np.float16:
        assert any(streamed)  # the streaming path ran


def _fake_cache_tree(root, entries):
    for i, (level, kind, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return str(root)


def test_streaming_thresholds_follow_the_last_level_cache(tmp_path):
    """The cache size is read from sysfs as Linux writes it (instruction
    caches ignored, K/M suffixes), and None when there is nothing to read;
    whole rows stream from half of it, split rows and one-pass BatchNorm
    from all of it."""
    root = _fake_cache_tree(tmp_path / "a", [
        (1, "Data", "32K"), (1, "Instruction", "64K"),
        (2, "Unified", "512K"), (3, "Unified", "8192K")])
    assert _dispatch._last_level_cache_bytes(root) == 8 << 20
    root = _fake_cache_tree(tmp_path / "b", [
        (1, "Data", "48K"), (1, "Instruction", "64M"), (2, "Unified", "2M")])
    assert _dispatch._last_level_cache_bytes(root) == 2 << 20
    assert _dispatch._last_level_cache_bytes(str(tmp_path / "none")) is None
    assert _dispatch._last_level_cache_bytes(
        _fake_cache_tree(tmp_path / "c", [(3, "Unified", "garbage")])) is None

    assert _dispatch.NT_MIN_BYTES == _dispatch.LLC_BYTES // 2
    half = _dispatch.NT_MIN_BYTES // 4  # float32 elements in half the LLC
    L = 4096
    below = np.empty((half // L - 1, L), np.float32)
    at = np.empty((half // L, L), np.float32)
    twice = np.empty((2 * half // L, L), np.float32)
    assert not _dispatch._stream(below, below, L)
    assert _dispatch._stream(at, at, L)
    for kind in ({"split": True}, {"one_pass": True}):
        assert not _dispatch._stream(at, at, L, **kind)
        assert _dispatch._stream(twice, twice, L, **kind)
    # short rows never stream, whatever the size
    assert not _dispatch._stream(twice, twice, _dispatch.K.SHORT_ROW)


@pytest.mark.parametrize("apart, streams", [(0, True), (4, False), (16, False),
                                            (124, False), (128, True),
                                            (2048, True), (4092, True)])
def test_no_streaming_stores_into_an_output_just_past_the_input(apart, streams):
    """Streaming stores a few dozen bytes past x modulo 4 KiB stall the
    loads of x (4K aliasing): such an output is written with plain stores."""
    n = _dispatch.NT_MIN_BYTES // 4
    x = np.empty(n, np.float32)
    buf = np.empty(n * 4 + 8192, np.uint8)
    o = (x.__array_interface__["data"][0] + apart
         - buf.__array_interface__["data"][0]) % 4096
    y = buf[o:o + n * 4].view(np.float32)
    assert (_dispatch._address(y) - _dispatch._address(x)) % 4096 == apart
    assert _dispatch._stream(x, y, 4096) is streams


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 64, 14, 14), (1, 64, 16, 16),
                                   (1, 48, 7, 9)])
def test_group_norm_short_channels_one_call_per_group(shape, dtype):
    """group_norm_rows writes a group of channels of at most SHORT_CHANNEL
    positions in one call, and longer ones (or streamed ones) a channel at
    a time: the same expressions, so the same bits. Called with stream
    set, the kernel takes the per-channel loop on the same channels."""
    N, C, H, W = shape
    G, S = 2, H * W
    assert S <= _dispatch.K.SHORT_CHANNEL and C // G * S > _dispatch.K.SHORT_ROW
    rng = rng_for("short-channels", *shape, dtype)
    x = (rng.standard_normal(N * C * S) * 2 + 300).astype(dtype)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    ys = []
    for stream in (False, True):
        y = np.empty_like(x)
        stats = [np.empty(N * G) for _ in range(3)]
        _dispatch._SERIAL["group_norm_rows"](x, y, N * G, G, C // G, S, w, b,
                                             1e-5, *stats, stream)
        ys.append(y)
    assert np.array_equal(ys[0].view(np.uint8), ys[1].view(np.uint8))
    # and both are the normalization
    y_ref = ref.group_norm(x.reshape(shape), G, w, b, 1e-5)
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    assert_close(ys[0].reshape(shape), y_ref, dtype, f"group_norm{shape}")
