"""The cpu backend's native strided copies (kernels/cpu/copy.hpp): basic-indexing results and
concatenations of at least CPUBackend.NATIVE_COPY elements are copied by the native module,
split over its threads.  They must equal NumPy's bit for bit, for every element size, every
kind of basic key (steps of any sign, ints, None, Ellipsis), broadcast and reversed sources,
and any thread count; what the kernel does not take (other element sizes, small copies,
index arrays) goes to NumPy as before."""
from __future__ import annotations

import numpy as np
import pytest

import gpumat as gm
from gpumat import native
from gpumat.backends.cpu import CPUBackend

NATIVE = native.kernels()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native module is not built")

DTYPES = [np.float32, np.float64, np.int64, np.uint64, np.int32, np.uint32, np.uint8, np.bool_]
SHAPE = (5, 7, 33, 37)            # 42,735 elements: above NATIVE_COPY, primes everywhere
KEYS = [
    (slice(None), slice(None), slice(None, None, 2), slice(None, None, 2)),
    (slice(None), slice(1, 6)),                                  # a channel slice
    (Ellipsis, slice(None, None, -1)),                           # reversed rows
    (slice(None, None, -2), slice(None), slice(3, None, 3), slice(None, 30, 4)),
    (2,),                                                        # one image: contiguous
    (slice(None), 3, slice(None), slice(5, 6)),
    (None, slice(None), slice(None), slice(None), slice(None, None, 5)),
    (slice(None), slice(None), slice(31, 2, -7)),
    (slice(None), slice(None), slice(0, 0)),                     # empty
]


@pytest.fixture
def restore_threads():
    threads = NATIVE.native_threads()
    yield
    NATIVE.set_native_threads(threads)


def _data(dtype, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[::7] = -0.0
    flat[3::11] = np.nan
    words = flat.view(f"u{x.itemsize}")
    words[5::13] = np.array(np.nan, dtype).view(f"u{x.itemsize}") | 1   # another NaN payload
    return x


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    assert a.flags.c_contiguous
    assert a.tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.fixture
def native_calls(monkeypatch):
    """Every copy goes native (NATIVE_COPY lowered to 1); counts the native calls made."""
    calls = {"copy_strided": 0, "concatenate": 0}
    monkeypatch.setattr(CPUBackend, "NATIVE_COPY", 1)
    for name in calls:
        original = getattr(NATIVE, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)
        monkeypatch.setattr(NATIVE, name, counted)
    return calls


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("key", KEYS, ids=str)
def test_basic_indexing_matches_numpy_bit_for_bit(dtype, key, native_calls):
    x = _data(dtype)
    a = gm.array(x, backend="cpu")
    _same_bits(a[key].gather(), x[key])
    assert native_calls["copy_strided"] == (1 if x[key].size else 0)   # (empty: nothing to copy)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_copies_do_not_depend_on_the_thread_count(threads, restore_threads):
    NATIVE.set_native_threads(threads)
    x = _data(np.float32)
    for key in KEYS:
        _same_bits(NATIVE.copy_strided(x[key]), x[key])
    _same_bits(NATIVE.copy_strided(x), x)                         # one long row, in pieces
    _same_bits(NATIVE.concatenate([x, x[:, :2]], 1), np.concatenate([x, x[:, :2]], 1))


def test_native_copy_takes_any_strides():
    half = _data(np.float32, (41, 1031)).astype(np.float16)     # 2-byte elements
    _same_bits(NATIVE.copy_strided(half[::-1, 1::2]), half[::-1, 1::2])
    x = _data(np.float64, (41, 1031))
    for view in (x.T, x[::-1, ::-3], np.broadcast_to(x[:1], (41, 1031)),
                 np.broadcast_to(x[:, :1], (41, 1031)), x[7], x[:0]):
        _same_bits(NATIVE.copy_strided(view), view)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_concatenate_matches_numpy_bit_for_bit(dtype, axis, native_calls):
    x = _data(dtype)
    parts = [x, np.take(x, range(0), axis=axis),
             np.take(_data(dtype, seed=1), range(3), axis=axis)]
    arrays = [gm.array(p, backend="cpu") for p in parts]
    _same_bits(gm.cat(axis, *arrays).gather(), np.concatenate(parts, axis))
    assert native_calls["concatenate"] == 1


def test_concatenate_casts_mixed_dtypes_through_numpy(native_calls):
    x, y = _data(np.float32), _data(np.int32)
    out = gm.cat(1, gm.array(x, backend="cpu"), gm.array(y, backend="cpu"))
    _same_bits(out.gather(), np.concatenate([x, y], 1))      # float64, as NumPy promotes
    assert native_calls["concatenate"] == 0


def test_index_arrays_take_numpy(native_calls):
    x = _data(np.float32)
    a = gm.array(x, backend="cpu")
    rows = gm.array(np.array([4, 0, 4, 2]), backend="cpu")
    _same_bits(a[rows].gather(), x[[4, 0, 4, 2]])
    assert native_calls["copy_strided"] == 0


def test_small_copies_take_numpy(monkeypatch):
    calls = []
    monkeypatch.setattr(NATIVE, "copy_strided", lambda v: calls.append(v))
    x = _data(np.float32)
    a = gm.array(x, backend="cpu")
    _same_bits(a[:1, :1, ::2].gather(), x[:1, :1, ::2])       # 629 elements
    assert not calls


def test_bad_native_calls_name_the_problem():
    x = _data(np.float32, (4, 5))
    with pytest.raises(TypeError, match="complex128"):
        NATIVE.copy_strided(x.astype(np.complex128))
    with pytest.raises(ValueError, match="float64"):
        NATIVE.concatenate([x, x.astype(np.float64)], 0)
    with pytest.raises(ValueError, match="differ outside axis 0"):
        NATIVE.concatenate([x, x[:, :3]], 0)
    with pytest.raises(ValueError, match="out of range"):
        NATIVE.concatenate([x], 2)
    with pytest.raises(ValueError, match="at least one"):
        NATIVE.concatenate([], 0)
    _same_bits(NATIVE.concatenate([x, x], 1), np.concatenate([x, x], 1))   # still usable
