"""The output-buffer cache of the allocating calls (numbanorm/_buffers.py):
a buffer is handed out again only once nothing refers to the result."""

import math
import threading

import numpy as np
import pytest

import numbanorm
from numbanorm import _buffers

SHAPE = (64, 8192)  # 2 MiB of float32: above the cache's threshold


@pytest.fixture(autouse=True)
def fresh_cache():
    prev = numbanorm.set_buffer_cache(0)  # empties it
    numbanorm.set_buffer_cache(64 << 20)
    yield
    numbanorm.set_buffer_cache(prev)


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _ptr(a):
    return a.__array_interface__["data"][0]


def test_dropped_result_buffer_is_reused():
    x = _x()
    y1 = numbanorm.layer_norm(x, SHAPE[-1])
    p = _ptr(y1)
    expected = y1.copy()
    del y1
    y2 = numbanorm.layer_norm(x, SHAPE[-1])
    assert _ptr(y2) == p
    assert np.array_equal(y2, expected)


@pytest.mark.parametrize("holder", ["result", "view", "memoryview", "list"])
def test_held_result_is_never_handed_out_again(holder):
    x1, x2 = _x(1), _x(2)
    y1 = numbanorm.layer_norm(x1, SHAPE[-1])
    kept = {"result": lambda a: a, "view": lambda a: a[::3, 5:],
            "memoryview": memoryview, "list": lambda a: [a]}[holder](y1)
    before = y1.copy()
    p = _ptr(y1)
    del y1
    y2 = numbanorm.layer_norm(x2, SHAPE[-1])
    assert _ptr(y2) != p
    assert not np.may_share_memory(y2, before)
    held = np.asarray(kept[0] if holder == "list" else kept)
    assert np.array_equal(held, before[::3, 5:] if holder == "view" else before)


def test_live_results_never_share_memory_across_threads():
    x = _x()
    bad = []

    def work():
        mine = []
        for _ in range(30):
            y = numbanorm.rms_norm(x, SHAPE[-1])
            y[0, 0] = threading.get_ident() % 1000  # mark it as ours
            mine.append(y)
            if len(mine) > 3:
                mine.pop(0)
            for m in mine:
                if m[0, 0] != threading.get_ident() % 1000:
                    bad.append(1)

    ts = [threading.Thread(target=work) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad
    total, used = _buffers.cached_bytes()
    assert total <= 64 << 20 and used == 0


def test_cache_off_and_small_results_allocate_plainly():
    numbanorm.set_buffer_cache(0)
    y = numbanorm.layer_norm(_x(), SHAPE[-1])
    assert y.flags.owndata
    assert _buffers.cached_bytes() == (0, 0)
    numbanorm.set_buffer_cache(64 << 20)
    small = numbanorm.layer_norm(np.ones((4, 768), np.float32), 768)
    assert small.flags.owndata


def test_cap_is_respected():
    numbanorm.set_buffer_cache(3 << 20)  # room for one 2 MiB result
    ys = [numbanorm.layer_norm(_x(i), SHAPE[-1]) for i in range(3)]
    total, used = _buffers.cached_bytes()
    assert total <= 3 << 20
    assert len({_ptr(y) for y in ys}) == 3


@pytest.mark.parametrize("bad", [-1, 1.5, "1G", True, None])
def test_set_buffer_cache_validates(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        numbanorm.set_buffer_cache(bad)


@pytest.mark.parametrize("op", ["layer_norm", "group_norm", "channels_last"])
def test_results_start_half_a_page_from_their_input(op):
    """Against 4K aliasing (see _buffers._APART): the allocating calls place
    their result 2048 bytes from x modulo 4 KiB, in fresh and reused cache
    buffers and when the result is too large for the cache."""
    for cap in (64 << 20, 1 << 20):
        numbanorm.set_buffer_cache(cap)
        for seed in range(3):
            x = _x(seed)
            if op == "layer_norm":
                y = numbanorm.layer_norm(x, SHAPE[-1])
                xa, ya = x, y
            elif op == "group_norm":
                y = numbanorm.group_norm(x.reshape(4, 16, 64, 128), 4)
                xa, ya = x, y
            else:
                xa = x.reshape(4, 32, 64, 64)  # an NHWC buffer, seen as NCHW
                y = numbanorm.group_norm(xa.transpose(0, 3, 1, 2), 4)
                ya = np.moveaxis(y, 1, -1)
                assert ya.flags.c_contiguous
            assert (_ptr(ya) - _ptr(xa)) % 4096 == 2048, (cap, seed)
            del y, ya


def test_placement_follows_each_input():
    """The address of the last input is remembered (_buffers._like_address):
    inputs at other addresses, the same input again, and a new input in a
    dropped one's place each get their result half a page away."""
    numbanorm.set_buffer_cache(64 << 20)
    n = math.prod(SHAPE)
    base = np.random.default_rng(7).standard_normal(n + 2048).astype(np.float32)
    views = [base[k:k + n].reshape(SHAPE) for k in (0, 4, 250, 512, 1000, 0)]
    for x in views + views[::-1]:
        y = numbanorm.layer_norm(x, SHAPE[-1])
        assert (_ptr(y) - _ptr(x)) % 4096 == 2048
        del y
    for seed in range(4):
        x = np.ascontiguousarray(views[seed + 1])  # may take a dropped x's id
        y = numbanorm.layer_norm(x, SHAPE[-1])
        assert (_ptr(y) - _ptr(x)) % 4096 == 2048
        del x, y


def test_the_most_recently_used_free_buffer_is_reused():
    """With two free buffers, calls keep taking the one used last (still in
    the CPU caches) instead of alternating between them."""
    x = _x()
    a = numbanorm.layer_norm(x, SHAPE[-1])
    b = numbanorm.layer_norm(x, SHAPE[-1])  # a is held: a second buffer
    assert not np.may_share_memory(a, b)
    del a, b
    ptrs = set()
    for _ in range(4):
        ptrs.add(_ptr(numbanorm.layer_norm(x, SHAPE[-1])))
    assert len(ptrs) == 1
    assert len(_buffers._cache) == 2
