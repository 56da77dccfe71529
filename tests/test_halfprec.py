"""float16/bfloat16 travel through the kernels as bit patterns; the
conversions must be exact (decode) and correctly rounded (encode)."""

import ml_dtypes
import numpy as np
import pytest
from numba import njit

from numbanorm._kernels import _bits_to_f64, _f64_to_bits, _load, _store

FORMATS = {"float16": (np.float16, 10, 15), "bfloat16": (ml_dtypes.bfloat16, 7, 127)}


@njit
def _decode(h, out, M, B):
    for i in range(h.size):
        out[i] = _bits_to_f64(h[i], M, B)


@njit
def _encode(v, out, M, B):
    for i in range(v.size):
        out[i] = _f64_to_bits(v[i], M, B)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_decode_every_bit_pattern(fmt):
    dt, M, B = FORMATS[fmt]
    bits = np.arange(65536, dtype=np.uint16)
    got = np.empty(65536)
    _decode(bits, got, M, B)
    with np.errstate(invalid="ignore"):
        want = bits.view(dt).astype(np.float64)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def _values():
    rng = np.random.default_rng(7)
    v = rng.standard_normal(200_000) * 10.0 ** rng.integers(-45, 40, 200_000)
    special = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 2.0**-24,
               2.0**-25, 2.0**-25 * 1.0000001, 3 * 2.0**-26, 1 + 2.0**-11,
               1 + 3 * 2.0**-11, 2.0**-133, 2.0**-134, 3.3895e38, 3.40e38]
    # every float16 midpoint (ties must go to even)
    h = np.arange(0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = (h[:-1] + h[1:]) / 2
    return np.concatenate([v, special, -np.array(special), mids, -mids])


def _nearest_even_bf16(v):
    """Exact round-to-nearest-even to bfloat16 via float64 neighbours (the
    bfloat16 grid is a subset of float64, so comparisons are exact)."""
    lo = v.astype(ml_dtypes.bfloat16)  # within one step of the answer
    out = lo.copy()
    f = lo.astype(np.float64)
    up = np.nextafter(lo, np.array(np.inf, ml_dtypes.bfloat16)).astype(np.float64)
    dn = np.nextafter(lo, np.array(-np.inf, ml_dtypes.bfloat16)).astype(np.float64)
    for cand in (up, dn):
        with np.errstate(invalid="ignore"):
            better = np.abs(cand - v) < np.abs(f - v)
            tie = (np.abs(cand - v) == np.abs(f - v)) & (
                cand.astype(ml_dtypes.bfloat16).view(np.uint16) % 2 == 0)
        take = (better | tie) & np.isfinite(v)
        out[take] = cand[take].astype(ml_dtypes.bfloat16)
        f = out.astype(np.float64)
    return out


def test_encode_float16_matches_numpy():
    v = _values()
    got = np.empty(v.size, np.uint16)
    _encode(v, got, 10, 15)
    with np.errstate(over="ignore"):
        want = v.astype(np.float16)  # numpy rounds float64 -> float16 directly
    assert np.array_equal(got.view(np.float16), want, equal_nan=True)
    assert np.array_equal(got.view(np.float16).view(np.uint16), want.view(np.uint16))


def test_encode_bfloat16_is_correctly_rounded():
    v = _values()
    v = v[np.abs(v) < 3.3e38]
    got = np.empty(v.size, np.uint16)
    _encode(v, got, 7, 127)
    want = _nearest_even_bf16(v)
    bad = got != want.view(np.uint16)
    assert not bad.any(), v[bad][:5]


def test_encode_nan_stays_nan():
    got = np.empty(2, np.uint16)
    _encode(np.array([np.nan, -np.nan]), got, 10, 15)
    assert np.isnan(got.view(np.float16)).all()
    _encode(np.array([np.nan, -np.nan]), got, 7, 127)
    assert np.isnan(got.view(ml_dtypes.bfloat16).astype(np.float32)).all()


@njit
def _load_all(a, out):
    for i in range(a.size):
        out[i] = _load(a, i)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_kernel_load_decodes_every_bit_pattern(fmt):
    """The decoding the kernels use (LLVM's half type where the CPU has
    F16C, a shift for bfloat16) agrees with the integer decoding and with
    ml_dtypes on all 65536 patterns, NaN payloads aside."""
    dt, M, B = FORMATS[fmt]
    bits = np.arange(65536, dtype=np.uint16)
    view = bits if fmt == "float16" else bits.view(np.int16)
    got = np.empty(65536)
    _load_all(view, got)
    with np.errstate(invalid="ignore"):  # casting NaN patterns
        want = bits.view(dt).astype(np.float64)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.array_equal(np.signbit(got[~nan]), np.signbit(want[~nan]))


@njit
def _store_all(v, out):
    for i in range(v.size):
        _store(out, i, v[i])


def test_kernel_store_float16_matches_numpy():
    """The encoding the kernels use (float32 rounded to odd, then F16C
    where available) is float64 -> float16 rounded once."""
    v = _values()
    got = np.empty(v.size, np.uint16)
    _store_all(v, got)
    with np.errstate(over="ignore"):
        want = v.astype(np.float16)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got.view(np.float16)), nan)
    bad = got[~nan] != want[~nan].view(np.uint16)
    assert not bad.any(), v[~nan][bad][:5]


def test_kernel_store_bfloat16_is_correctly_rounded():
    v = _values()
    got = np.empty(v.size, np.int16)
    _store_all(v, got)
    finite = np.abs(v) < 3.3e38
    want = _nearest_even_bf16(v[finite])
    bad = got[finite].view(np.uint16) != want.view(np.uint16)
    assert not bad.any(), v[finite][bad][:5]
    # everywhere, near and beyond bfloat16's range too, the same bits as the
    # integer encoding (tested above); NaN stays NaN
    ref = np.empty(v.size, np.uint16)
    _encode(v, ref, 7, 127)
    nan = np.isnan(v)
    assert np.array_equal(got.view(np.uint16)[~nan], ref[~nan])
    assert np.isnan(got[nan].view(ml_dtypes.bfloat16).astype(np.float32)).all()
