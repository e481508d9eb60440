"""Indexing and assignment with NumPy's semantics."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gpumat as gm
from conftest import TESTED, assert_same

X = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)

GET_KEYS = [
    1, -1, (2, 3), (1, 2, 3), (-1, -2, -3), slice(None), slice(1, 3), slice(None, None, -1),
    (slice(None, None, 2), slice(4, 0, -2)), (Ellipsis, 1), (1, Ellipsis), (None, 1),
    (slice(None), None, 2), (slice(3, 1),), (slice(10, 20),), (slice(-100, 100, 3),),
    ([0, 2],), ([3, 0, 3],), ([-1, 0],), (slice(None), [4, 0, 1]), ([0, 1], [2, 3]),
    ([[0, 1], [2, 3]], slice(None), [0, 5]), (1, slice(None), [0, 2]), ([0, 1], 2, [3, 4]),
    (slice(1, 3), [0, 0, 1], slice(None, None, -2)), (Ellipsis, [5, 0]), (0, [1, 2], 0),
    (np.array([1, 2]), slice(None), 0), (slice(None), np.array([[0], [4]])),
    (np.array([True, False, True, True]),), (slice(None), np.array([True, False, True, False, True])),
    (X[:, :, 0] > 40,), (0, X[0] % 3 == 0), (X > 55,), (Ellipsis, None),
]


@pytest.mark.parametrize("key", GET_KEYS, ids=lambda k: repr(k)[:40])
def test_getitem(backend, key):
    a = gm.array(X, backend=backend)
    assert_same(a[key], X[key])


def test_getitem_with_device_index_arrays(backend):
    a = gm.array(X, backend=backend)
    idx = gm.array(np.array([3, 1, -4]), backend=backend)
    mask = gm.array(X[:, 0, 0] > 30, backend=backend)
    assert_same(a[idx], X[np.array([3, 1, -4])])
    assert_same(a[mask], X[X[:, 0, 0] > 30])
    assert_same(a[a > 100], X[X > 100])
    assert_same(a[1, idx[:2]], X[1, np.array([3, 1])])


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int32", "int64", "float64"])
def test_getitem_dtypes_and_scalars(backend, dtype):
    x = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    a = gm.array(x, backend=backend)
    assert_same(a[1, 2, 3], x[1, 2, 3])
    assert_same(a[:, ::-1, 1:], x[:, ::-1, 1:])
    assert_same(a[[1, 0], :, [0, 3]], x[[1, 0], :, [0, 3]])


def test_index_errors(backend):
    a = gm.array(X, backend=backend)
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 4"):
        a[4]
    with pytest.raises(IndexError, match="out of bounds for axis 1 with size 5"):
        a[0, [1, 5]]
    with pytest.raises(IndexError, match="-6 is out of bounds"):
        a[0, gm.array(np.array([-6]), backend=backend)]
    with pytest.raises(IndexError, match="too many indices"):
        a[0, 0, 0, 0]
    with pytest.raises(IndexError, match=r"\(3,\)"):
        a[np.array([True, False, True])]
    with pytest.raises(IndexError, match="integer or logical"):
        a[np.array([0.5])]
    with pytest.raises(IndexError, match="single ellipsis"):
        a[..., 0, ...]
    assert_same(a[0, 0], X[0, 0])        # still usable after the errors


SET_CASES = [
    ((1,), 5.0), ((slice(None), 2), -1.0), ((Ellipsis, slice(None, None, -2)), 7.0),
    ((slice(1, 3), slice(0, 4), 0), np.arange(8, dtype=np.float32).reshape(2, 4)),
    ((slice(None), 0, slice(None)), np.arange(6, dtype=np.float32)),   # broadcast a row
    (([0, 3],), 9.0), (([0, 3], [1, 2], [5, 4]), np.array([1.5, 2.5], np.float32)),
    ((1, [0, 2], slice(None)), np.ones((2, 6), np.float32)),
    ((X > 100,), 0.0), ((X[:, 0, 0] > 30,), -3.0), ((slice(3, 1),), 1.0),
]


@pytest.mark.parametrize("key,value", SET_CASES, ids=lambda v: repr(v)[:30])
def test_setitem(backend, key, value):
    expected = X.copy()
    expected[key] = value
    a = gm.array(X, backend=backend)
    a[key] = value if np.isscalar(value) else gm.array(value, backend=backend)
    assert_same(a, expected)


def test_setitem_masked_with_values(backend):
    x = X.copy()
    mask = x % 7 == 0
    vals = -np.arange(mask.sum(), dtype=np.float32)
    x[mask] = vals
    a = gm.array(X, backend=backend)
    a[gm.array(mask, backend=backend)] = gm.array(vals, backend=backend)
    assert_same(a, x)


def test_setitem_casts_and_checks(backend):
    a = gm.zeros(3, dtype="int32", backend=backend)
    a[0] = 2.7
    a[1:] = gm.array([1.9, -2.2], dtype="double", backend=backend)
    assert_same(a, np.array([2, 1, -2], np.int32))
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)|shape \(2,\)"):
        a[:] = gm.array([1, 2], dtype="int32", backend=backend)
    with pytest.raises(OverflowError, match="uint8"):
        gm.zeros(2, dtype="uint8", backend=backend)[0] = -1


def test_setitem_refuses_numbers_that_do_not_fit(backend):
    # a NumPy scalar's own conversion would wrap (2**40 + 5 -> 5 in int32) without a word
    a = gm.zeros(3, dtype="int32", backend=backend)
    for number in (np.int64(2**40 + 5), np.uint64(2**64 - 1), np.float64(1e20), float("nan"),
                   np.float32(-3e9)):
        with pytest.raises(OverflowError, match="int32"):
            a[0] = number
    a[0], a[1], a[2] = np.int64(-7), np.float32(2.7), np.uint64(2**31 - 1)
    assert_same(a, np.array([-7, 2, 2**31 - 1], np.int32))


def test_setitem_drops_a_values_leading_ones(backend):
    # A(1, :) = row with a 1 x n row, and a value with more leading 1s, as NumPy takes them
    x = np.zeros((3, 4), np.float32)
    a = gm.array(x, backend=backend)
    a[0] = gm.ones(1, 4, backend=backend)
    a[1:] = np.full((1, 1, 2, 4), 2, np.float32)
    x[0], x[1:] = np.ones((1, 4)), np.full((1, 1, 2, 4), 2)
    assert_same(a, x)
    with pytest.raises(ValueError, match=r"shape \(2, 4\) into the indexed shape \(4,\)"):
        a[0] = np.ones((2, 4), np.float32)


SCALAR_MASK_KEYS = [(), (0,), (Ellipsis,), (slice(None), 1), (1, Ellipsis), (None, 0),
                    (slice(1, 3), None, slice(None))]


@pytest.mark.parametrize("holds", [True, False])
@pytest.mark.parametrize("where", [0, 1, 2])
@pytest.mark.parametrize("others", SCALAR_MASK_KEYS, ids=str)
def test_zero_d_logical_index(backend, holds, where, others):
    # NumPy's 0-d logical index: a new axis of length 1 (holds) or 0, placed by the
    # advanced-index rule (after the integers next to it, else first); in assignment, a
    # write everywhere the rest of the key says, or nowhere
    where = min(where, len(others))
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for mask in (np.array(holds), gm.array(np.array(holds), backend=backend)):
        key = others[:where] + (mask,) + others[where:]
        numpy_key = others[:where] + (np.array(holds),) + others[where:]
        expected = x[numpy_key]
        a = gm.array(x, backend=backend)
        assert_same(a[key], expected)
        y = x.copy()
        value = np.arange(expected.size, dtype=np.float32).reshape(expected.shape) - 100
        y[numpy_key] = value
        a[key] = value
        assert_same(a, y)
        a[key] = -1
        y[numpy_key] = -1
        assert_same(a, y)


def test_zero_d_logical_index_on_a_scalar(backend):
    s = gm.sum(gm.array([1.0, 2.0], backend=backend))
    s[s > 100] = 0                      # did write: the mask was dropped
    assert s.item() == 3.0
    assert s[s > 100].shape == (0,) and s[s > 1].shape == (1,)
    s[s > 1] = 7
    assert s.item() == 7.0
    with pytest.raises(ValueError, match="broadcast"):
        s[s > 100] = np.ones(3, np.float32)     # refused even where nothing is written
    with pytest.raises(IndexError, match="0-d logical index"):
        gm.zeros(3, backend=backend)[np.array(True), [0, 1]]


def test_setitem_copy_on_write(backend):
    a = gm.array(X, backend=backend)
    b = a.reshape(-1)
    c = a[...]
    a[0, 0, 0] = 100.0
    assert b.gather()[0] == 0 and c.gather()[0, 0, 0] == 0 and a.gather()[0, 0, 0] == 100


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_basic_slicing_hypothesis(data):
    shape = data.draw(st.lists(st.integers(0, 7), min_size=1, max_size=4).map(tuple))
    x = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    key = tuple(data.draw(st.one_of(
        st.integers(-n, n - 1) if n else st.just(slice(None)),
        st.builds(slice, st.none() | st.integers(-9, 9), st.none() | st.integers(-9, 9),
                  st.none() | st.integers(-3, 3).filter(bool)),
        st.lists(st.integers(-n, n - 1), min_size=0, max_size=3) if n else st.just(slice(None)),
    )) for n in shape)
    if sum(isinstance(k, list) for k in key) > 1:
        key = tuple(k if not isinstance(k, list) else slice(None) for k in key)  # avoid ragged
    for backend in TESTED:
        assert_same(gm.array(x, backend=backend)[key], x[key])
        y = x.copy()
        y[key] = -1
        a = gm.array(x, backend=backend)
        a[key] = -1
        assert_same(a, y)
