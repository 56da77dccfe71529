"""A cache of large output buffers for the allocating calls.

A fresh ``np.empty`` of many MiB comes from ``mmap``: the kernel then maps
and zeroes every page on first write, which costs about as much as the
normalization itself on a large input (a (64, 512, 768) float32 LayerNorm:
~20 ms allocating vs ~8 ms into a preallocated ``out=``). Inference loops
call the same shapes again and again, so, as PyTorch's and onnxruntime's
allocators do, numbanorm keeps the buffers of results the caller has
dropped and hands them out again.

A buffer is free when nothing but the cache refers to it: every array
handed out is a view whose ``base`` is the cached buffer, so while the
caller holds the result (or any view of it) the buffer's reference count
says so. Buffers below ``MIN_BYTES`` are left to malloc, which already
reuses small blocks. The cache holds at most ``max_bytes`` (default 1 GiB,
or ``NUMBANORM_BUFFER_CACHE`` in bytes; 0 turns it off); see
:func:`numbanorm.set_buffer_cache`.
"""

import math
import os
import sys
import threading
import weakref

import numpy as np

MIN_BYTES = 1 << 20


def _default_max():
    v = os.environ.get("NUMBANORM_BUFFER_CACHE", "").strip()
    if not v:
        return 1 << 30
    try:
        n = int(v)
    except ValueError:
        raise ValueError(
            f"NUMBANORM_BUFFER_CACHE={v!r} is not a number of bytes") from None
    if n < 0:
        raise ValueError(f"NUMBANORM_BUFFER_CACHE={v!r} must be >= 0")
    return n


_lock = threading.Lock()
_cache = []  # 1-d uint8 arrays, most recently used last
_state = {"max_bytes": _default_max()}



def _refs(buffers, i):
    return sys.getrefcount(buffers[i])


# What _refs reports for a buffer only the cache holds, measured rather than
# assumed (how many references the interpreter's own temporaries add
# differs between Python versions).
_FREE_REFS = _refs([np.empty(1, np.uint8)], 0)


def _is_free(buffers, i):
    return _refs(buffers, i) == _FREE_REFS


# Where a result starts relative to its input, modulo a 4 KiB page. A store
# and a later load whose addresses agree in their low 12 bits are taken to
# conflict until the store's full address is known ("4K aliasing"): with y a
# few dozen bytes past x modulo 4 KiB, the loads of x that run ahead of the
# stores of y keep stalling (measured, GroupNorm (32, 64, 56, 56) float32,
# one thread: 1.14-1.38x the time with y 16-96 bytes past x, none beyond
# 256). Results of the allocating calls start half a page from their input.
_PAGE = 4096
_APART = 2048


def _address(a):
    return a.__array_interface__["data"][0]


# id -> data address of the cached buffers: reading an address costs ~4 us
# (measured on a Zen 1), a third of handing out a buffer
_addresses = {}
# The last input a result was placed against (a weak reference) and its
# address: inference loops and benchmarks pass the same x again, and an
# array's data address does not change while it lives. (ndarray.resize can
# move it; a stale address then only places the result less well.) Handing
# out a buffer between GroupNorm (1, 512, 32, 32) calls, whose 4 MiB of x
# and y leave the interpreter's data out of the CPU caches, took 23-36 us
# and takes 15-19 (Zen 1).
_last_like = [None, 0]


def _like_address(like):
    ref = _last_like[0]
    if ref is not None and ref() is like:
        return _last_like[1]
    a = _address(like)
    try:
        _last_like[:] = [weakref.ref(like), a]
    except TypeError:  # not weakly referenceable: not remembered
        pass
    return a


def _offset(buf, like):
    """The byte offset into buf at which a result for input ``like`` starts
    half a page from it (0 when there is no input)."""
    if like is None:
        return 0
    base = _addresses.get(id(buf))
    if base is None:
        base = _address(buf)
    return (_like_address(like) + _APART - base) % _PAGE


def _placed(buf, nbytes, dtype, shape, like):
    """The result of ``nbytes`` in buf, at _offset(buf, like); its base is
    buf (what _is_free counts on)."""
    return np.ndarray(shape, dtype, buffer=buf, offset=_offset(buf, like))


def empty(shape, dtype, like=None):
    """``np.empty(shape, dtype)``, from the cache when large; placed half a
    page (modulo 4 KiB) from the input array ``like`` when given."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or _state["max_bytes"] == 0:
        return np.empty(shape, dtype)  # the cache off: plain arrays
    if nbytes + _PAGE > _state["max_bytes"]:
        if like is None:
            return np.empty(shape, dtype)
        return _placed(np.empty(nbytes + _PAGE, np.uint8), nbytes, dtype,
                       shape, like)
    size = nbytes + _PAGE  # room to place the result (see _offset)
    with _lock:
        buf = None
        # the most recently used free buffer first: it is the one most likely
        # still in the CPU caches (taking the least recently used one made
        # two buffers alternate, and an allocating (8, 128, 768) float64
        # LayerNorm 1.3-1.5x slower than into one out= array)
        for i in range(len(_cache) - 1, -1, -1):
            # a buffer at most twice the request, so that a small result
            # does not pin a large buffer
            if size <= _cache[i].size <= 2 * size and _is_free(_cache, i):
                buf = _cache.pop(i)
                break
        if buf is None:
            if _evict(_state["max_bytes"] - size) > _state["max_bytes"] - size:
                return np.empty(shape, dtype)  # full of results still in use
            buf = np.empty(size, np.uint8)
            _addresses[id(buf)] = _address(buf)
        _cache.append(buf)
        return _placed(buf, nbytes, dtype, shape, like)


def _evict(limit):
    """Drop free buffers, least recently used first, until the cache holds
    at most ``limit`` bytes (buffers in use stay); returns what it holds."""
    total = sum(b.size for b in _cache)
    i = 0
    while total > limit and i < len(_cache):
        if _is_free(_cache, i):
            total -= _cache[i].size
            _addresses.pop(id(_cache[i]), None)
            del _cache[i]
        else:
            i += 1
    return total


def set_buffer_cache(max_bytes):
    """Set how many bytes of dropped results numbanorm keeps for reuse.

    Parameters
    ----------
    max_bytes : int
        0 turns the cache off and frees its buffers. The default is 1 GiB
        (or the environment variable ``NUMBANORM_BUFFER_CACHE``).

    Returns
    -------
    int
        The previous setting.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 0:
        raise ValueError(
            f"set_buffer_cache: max_bytes must be an int >= 0, got {max_bytes!r}")
    with _lock:
        prev = _state["max_bytes"]
        _state["max_bytes"] = int(max_bytes)
        _evict(int(max_bytes))
    return prev


def cached_bytes():
    """(bytes held by the cache, bytes of it in use by live results)."""
    with _lock:
        total = sum(b.size for b in _cache)
        used = 0
        for i in range(len(_cache)):
            if not _is_free(_cache, i):
                used += _cache[i].size
    return total, used
