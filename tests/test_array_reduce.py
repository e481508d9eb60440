"""Reductions, scans, sort, find and matmul against NumPy (float64 where precision matters)."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gpumat as gm
from conftest import assert_same

DTYPES = ["bool", "uint8", "int32", "uint32", "int64", "float32", "float64"]
SHAPES = [(1,), (7,), (3, 5), (2, 1, 13), (4, 3, 2, 5), (1009,), (31, 37)]


def data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 9, size=shape).astype(dtype)   # many ties for argmax/sort
    return rng.standard_normal(shape).astype(dtype)


def axes_of(shape):
    return [None] + list(range(len(shape))) + [-1]


@pytest.mark.parametrize("op", ["sum", "prod", "max", "min", "any", "all", "argmax", "argmin"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reductions(backend, op, dtype, shape):
    x = data(shape, dtype, 1)
    if op == "prod" and dtype.startswith("float"):
        x = (1 + x / 20).astype(dtype)        # keep products near 1
    a = gm.array(x, backend=backend)
    for axis in axes_of(shape):
        for keepdims in (False, True):
            expected = getattr(np, op)(x, axis=axis, keepdims=keepdims)
            got = getattr(gm, op)(a, axis=axis, keepdims=keepdims)
            rtol = 1e-5 if np.asarray(expected).dtype == np.float32 else 1e-12
            assert_same(got, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("op", ["mean", "var", "std"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "bool"])
def test_statistics(backend, op, dtype):
    x = data((6, 11, 3), dtype, 2)
    a = gm.array(x, backend=backend)
    for axis in axes_of(x.shape):
        for keepdims in (False, True):
            expected = getattr(np, op)(x, axis=axis, keepdims=keepdims)
            rtol = 1e-5 if expected.dtype == np.float32 else 1e-12
            assert_same(getattr(gm, op)(a, axis=axis, keepdims=keepdims), expected, rtol=rtol)
    assert_same(gm.var(a, axis=1, ddof=1), np.var(x, axis=1, ddof=1),
                rtol=1e-5 if x.dtype == np.float32 else 1e-12)


def test_reduction_methods(backend):
    x = data((4, 6), "float32", 3)
    a = gm.array(x, backend=backend)
    assert_same(a.sum(1), x.sum(1), rtol=1e-6)
    assert_same(a.max(0, keepdims=True), x.max(0, keepdims=True))
    assert_same(a.mean(), np.float32(x.mean()), rtol=1e-6)
    assert_same(a.argmin(), np.argmin(x))


def test_nan_in_max_min_argmax(backend):
    x = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 0.5, 2.0, -1.0]], np.float32)
    a = gm.array(x, backend=backend)
    for axis in (None, 0, 1):
        for op in ("max", "min", "argmax", "argmin"):
            assert_same(getattr(gm, op)(a, axis=axis), getattr(np, op)(x, axis=axis))


def test_long_float_sum_is_accurate(backend):
    x = np.full(10_000_019, 0.1, np.float32)
    got = gm.sum(gm.array(x, backend=backend)).item()
    assert abs(got - x.astype(np.float64).sum()) / x.astype(np.float64).sum() < 1e-5


def test_large_axis_reductions(backend):
    x = data((2003, 517), "float32", 4)
    a = gm.array(x, backend=backend)
    ref = x.astype(np.float64)
    assert_same(gm.sum(a, 0), ref.sum(0).astype(np.float32), rtol=1e-4, atol=1e-4)
    assert_same(gm.sum(a, 1), ref.sum(1).astype(np.float32), rtol=1e-4, atol=1e-4)
    assert_same(gm.argmax(a, 0), np.argmax(x, 0))


def test_empty_reductions(backend):
    a = gm.zeros(0, 3, backend=backend)
    x = np.zeros((0, 3), np.float32)
    assert_same(gm.sum(a), x.sum())
    assert_same(gm.sum(a, 0), x.sum(0))
    assert_same(gm.prod(a, 0), x.prod(0))
    assert_same(gm.any(a, 0), x.any(0))
    assert_same(gm.all(a), x.all())
    assert_same(gm.max(a, 1), x.max(1))         # shape (0,): nothing is reduced over nothing
    with pytest.raises(ValueError, match="empty"):
        gm.max(a)
    with pytest.raises(ValueError, match="empty"):
        gm.argmin(a, axis=0)


def test_zero_d_arrays_take_axis_0_and_minus_1(backend):
    # as NumPy's reductions take them (and cumsum, squeeze); mean and var follow sum
    x = np.array(2.5, np.float32)
    z = gm.array(x, backend=backend)
    for axis in (0, -1):
        for name in ("sum", "max", "min", "argmax", "any", "all", "cumsum", "prod"):
            assert_same(getattr(gm, name)(z, axis=axis), getattr(np, name)(x, axis=axis))
        assert_same(gm.mean(z, axis=axis), x)
        assert_same(gm.var(z, axis=axis), np.float32(0))
        assert z.squeeze(axis).shape == ()
    for bad in (1, -2):
        with pytest.raises(ValueError, match=f"axis {bad} is out of bounds"):
            gm.sum(z, axis=bad)
        with pytest.raises(ValueError, match=f"axis {bad} is out of bounds"):
            gm.cumsum(z, axis=bad)


def test_variance_over_no_degrees_of_freedom(backend):
    # NumPy divides by max(N - ddof, 0): a spread over nothing is inf, no spread NaN
    x = np.array([1.0, 4.0, 2.0, 8.0, 5.0], np.float32)
    a = gm.array(x, backend=backend)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for ddof in (4, 5, 7):
            assert_same(gm.var(a, ddof=ddof), np.var(x, ddof=ddof))
            assert_same(gm.std(a, ddof=ddof), np.std(x, ddof=ddof))
        ones = np.ones((2, 3), np.float32)
        assert_same(gm.var(gm.array(ones, backend=backend), axis=1, ddof=3),
                    np.var(ones, axis=1, ddof=3))


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int32", "int64", "float32", "float64"])
@pytest.mark.parametrize("shape", [(1,), (0,), (17,), (4, 9), (3, 1, 6)])
def test_cumsum(backend, dtype, shape):
    x = data(shape, dtype, 5)
    a = gm.array(x, backend=backend)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert_same(gm.cumsum(a), np.cumsum(x), rtol=rtol, atol=rtol)
    for axis in range(len(shape)):
        assert_same(gm.cumsum(a, axis), np.cumsum(x, axis), rtol=rtol, atol=rtol)


def test_long_cumsum(backend):
    x = np.ones(1_000_000, np.int32)
    assert_same(gm.cumsum(gm.array(x, backend=backend)), np.cumsum(x))


@pytest.mark.parametrize("dtype", DTYPES + ["uint64"])
@pytest.mark.parametrize("shape", [(1,), (0,), (2,), (13,), (5, 8), (3, 4, 7), (1000,)])
def test_sort_is_stable_like_numpy(backend, dtype, shape):
    x = data(shape, dtype, 6)
    a = gm.array(x, backend=backend)
    for axis in range(len(shape)):
        values, idx = gm.sort(a, axis=axis, return_indices=True)
        order = np.argsort(x, axis=axis, kind="stable")
        assert_same(idx, order)
        assert_same(values, np.take_along_axis(x, order, axis=axis))


def test_sort_descending_and_nan(backend):
    x = np.array([3.0, np.nan, 1.0, 3.0, -np.inf, np.nan, 0.0, -0.0], np.float32)
    a = gm.array(x, backend=backend)
    values, idx = gm.sort(a, descending=True, return_indices=True)
    # NaNs first (in order), then descending values, ties in original order: a stable
    # lexicographic sort on (not NaN, -x)
    expected_idx = np.lexsort((np.where(np.isnan(x), 0, -x), ~np.isnan(x)))
    assert expected_idx[:2].tolist() == [1, 5]
    assert idx.gather().tolist() == expected_idx.tolist()
    assert_same(values, x[expected_idx])
    asc, asc_idx = gm.sort(a, return_indices=True)
    assert_same(asc_idx, np.argsort(x, kind="stable"))


@pytest.mark.parametrize("dtype", ["int32", "float32", "bool", "uint8"])
def test_sort_descending_matches_reversed_stable_order(backend, dtype):
    x = data((6, 40), dtype, 7)
    values, idx = gm.sort(gm.array(x, backend=backend), axis=1, descending=True,
                          return_indices=True)
    for row, (v, i) in enumerate(zip(values.gather(), idx.gather())):
        key = -x[row].astype(np.float64)
        order = np.argsort(key, kind="stable")
        assert i.tolist() == order.tolist()
        assert v.tolist() == x[row][order].tolist()


def test_long_sort(backend):
    x = data((300_001,), "float32", 8)
    assert_same(gm.sort(gm.array(x, backend=backend)), np.sort(x))


@pytest.mark.parametrize("shape", [(0,), (1,), (9,), (4, 5), (3, 0, 2), (200, 301)])
def test_find(backend, shape):
    x = data(shape, "int32", 9) % 3 == 0
    assert_same(gm.find(gm.array(x, backend=backend)), np.flatnonzero(x))
    y = data(shape, "float32", 10)
    assert_same(gm.find(gm.array(y, backend=backend) > 0.5), np.flatnonzero(y > 0.5))
    if x.size:
        assert_same(gm.find(gm.array(x, backend=backend), 2), np.flatnonzero(x)[:2])


MATMUL_SHAPES = [((3, 4), (4, 5)), ((1, 1), (1, 1)), ((7, 13), (13, 1)), ((4,), (4, 3)),
                 ((3, 4), (4,)), ((5,), (5,)), ((0, 3), (3, 2)), ((2, 0), (0, 3)),
                 ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((65, 129), (129, 33)),
                 ((1, 257), (257, 1)), ((97, 1), (1, 89))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_matmul(backend, sa, sb, dtype):
    x, y = data(sa, dtype, 11), data(sb, dtype, 12)
    expected = x.astype(np.float64) @ y.astype(np.float64)
    got = gm.array(x, backend=backend) @ gm.array(y, backend=backend)
    assert got.dtype == (x @ y).dtype
    k = sa[-1]
    rtol = 1e-5 * max(1, np.sqrt(k)) if dtype == "float32" else 1e-12
    assert_same(got, expected.astype(got.dtype), rtol=rtol, atol=rtol * 10)
    assert_same(gm.mtimes(gm.array(x, backend=backend), gm.array(y, backend=backend)),
                expected.astype(got.dtype), rtol=rtol, atol=rtol * 10)


def test_matmul_mixed_dtypes_and_large(backend):
    x = data((300, 200), "float32", 13)
    y = data((200, 150), "float64", 14)
    got = gm.array(x, backend=backend) @ gm.array(y, backend=backend)
    assert got.dtype == np.float64
    assert_same(got, x.astype(np.float64) @ y, rtol=1e-10, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(0, 70))
def test_matmul_hypothesis(m, n, k):
    from conftest import TESTED
    x, y = data((m, k), "float32", m), data((k, n), "float32", n)
    for backend in TESTED:
        got = gm.array(x, backend=backend) @ gm.array(y, backend=backend)
        assert_same(got, (x.astype(np.float64) @ y).astype(np.float32), rtol=1e-4, atol=1e-4)
