"""MATLAB-named vocabulary: size, reshape, permute, repmat, cat, find, sub2ind, ..."""
import numpy as np
import pytest

import gpumat as gm
from conftest import TESTED, assert_same

X = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)


def test_size_numel_ndims(backend):
    a = gm.array(X, backend=backend)
    assert gm.size(a) == (2, 3, 4) and gm.size(a, 1) == 3 and gm.size(a, -1) == 4
    assert gm.numel(a) == 24 and gm.ndims(a) == 3
    with pytest.raises(ValueError, match="axis 3 is out of bounds"):
        gm.size(a, 3)


def test_arithmetic_names(backend):
    x, y = X, X[::-1] + 1
    a, b = gm.array(x, backend=backend), gm.array(y, backend=backend)
    assert_same(gm.plus(a, b), x + y)
    assert_same(gm.minus(a, b), x - y)
    assert_same(gm.times(a, b), x * y)
    assert_same(gm.rdivide(a, b), x / y)
    assert_same(gm.power(b, 2), y ** 2)
    assert_same(gm.mtimes(a[0], b[0].T), x[0] @ y[0].T)


@pytest.mark.parametrize("shape", [(24,), (4, -1), (2, 2, 6), (-1,), (1, 24, 1)])
def test_reshape(backend, shape):
    assert_same(gm.reshape(gm.array(X, backend=backend), shape), X.reshape(shape))
    assert_same(gm.array(X, backend=backend).reshape(*shape), X.reshape(shape))


def test_reshape_errors(backend):
    a = gm.array(X, backend=backend)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(5, 5\)"):
        a.reshape(5, 5)
    with pytest.raises(ValueError, match="only one"):
        a.reshape(-1, -1)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (0, 2, 1), (2, 0, 1)])
def test_permute_and_transpose(backend, order):
    a = gm.array(X, backend=backend)
    assert_same(gm.permute(a, order), np.transpose(X, order))
    assert_same(a.T, X.T)
    assert_same(gm.transpose(a[0]), X[0].T)
    assert_same(gm.permute(gm.array(X[:, :1], backend=backend), (1, 0, 2)),
                np.transpose(X[:, :1], (1, 0, 2)))
    with pytest.raises(ValueError, match="permutation"):
        gm.permute(a, (0, 0, 1))


def test_permute_large_and_odd(backend):
    x = np.random.default_rng(0).standard_normal((17, 129, 31)).astype(np.float32)
    assert_same(gm.permute(gm.array(x, backend=backend), (2, 0, 1)), np.transpose(x, (2, 0, 1)))


def test_squeeze(backend):
    x = X.reshape(1, 2, 1, 12)
    a = gm.array(x, backend=backend)
    assert_same(gm.squeeze(a), np.squeeze(x))
    assert_same(gm.squeeze(a, 2), np.squeeze(x, 2))
    with pytest.raises(ValueError, match="size 2"):
        gm.squeeze(a, 1)


@pytest.mark.parametrize("reps", [(2, 3), (1,), (3,), (2, 1, 2), (1, 1, 1, 2), (0, 2)])
def test_repmat_is_numpy_tile(backend, reps):
    for x in (X[0], X[0, 0], X):
        assert_same(gm.repmat(gm.array(x, backend=backend), *reps), np.tile(x, reps))


def test_cat_horzcat_vertcat(backend):
    a, b = X[0], X[1, :2]
    ga, gb = gm.array(a, backend=backend), gm.array(b, backend=backend)
    assert_same(gm.cat(0, ga, gb), np.concatenate([a, b], 0))
    assert_same(gm.vertcat(ga, gb), np.vstack([a, b]))
    c = X[0, :, :1].astype(np.int32)
    assert_same(gm.horzcat(ga, gm.array(c, backend=backend)), np.hstack([a, c]))
    assert_same(gm.horzcat(gm.array(a[0], backend=backend), gm.array(b[1], backend=backend)),
                np.hstack([a[0], b[1]]))
    assert_same(gm.vertcat(gm.array(a[0], backend=backend), gm.array(b[1], backend=backend)),
                np.vstack([a[0], b[1]]))
    assert_same(gm.cat(-1, gm.array(X, backend=backend), gm.array(X[..., :1], backend=backend)),
                np.concatenate([X, X[..., :1]], -1))
    assert_same(gm.cat(1, [gm.array(X, backend=backend)] * 3), np.concatenate([X] * 3, 1))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)|differ"):
        gm.cat(1, ga, gb)


def test_horzcat_of_scalars(backend):
    # numpy.hstack makes 0-d inputs 1-d first, as vertcat already did
    one, two = gm.array(1.0, backend=backend), gm.array(2.0, backend=backend)
    assert_same(gm.horzcat(one, two), np.hstack([np.float32(1), np.float32(2)]))
    assert_same(gm.horzcat(one, gm.array([2.0, 3.0], backend=backend)),
                np.array([1, 2, 3], np.float32))



def test_find_sort_any_all(backend):
    x = np.array([[0, 3, 0], [2, 0, 1]], np.int32)
    a = gm.array(x, backend=backend)
    assert_same(gm.find(a), np.flatnonzero(x))
    assert_same(gm.sort(a, axis=1), np.sort(x, axis=1))
    assert_same(gm.any(a, 0), np.any(x, 0))
    assert_same(gm.all(a > -1), np.all(x > -1))
    assert_same(gm.find(a, 2), np.flatnonzero(x)[:2])
    assert_same(gm.find(a, np.int64(10)), np.flatnonzero(x))
    for n in (0, -1, 2.7, "2", True):      # -1 dropped the last match, 2.7 meant 2
        with pytest.raises(ValueError, match="positive integer"):
            gm.find(a, n)


def test_isequal_and_allclose(backend):
    a = gm.array(X, backend=backend)
    assert gm.isequal(a, gm.array(X.copy(), backend=backend))
    assert not gm.isequal(a, a + 1)
    assert not gm.isequal(a, a.reshape(6, 4))
    nan = gm.array([np.nan, 1.0], backend=backend)
    assert not gm.isequal(nan, nan)
    assert gm.allclose(a, a + 1e-7 * a)
    assert not gm.allclose(a, a + 1)
    assert gm.allclose(nan, nan, equal_nan=True) and not gm.allclose(nan, nan)
    inf = gm.array([np.inf, -np.inf], backend=backend)
    assert gm.allclose(inf, inf)
    # a finite value is never close to an infinity (its tolerance would be infinite), as NumPy
    one = gm.array(np.array([1.0]), backend=backend)
    minus_inf = gm.array(np.array([-np.inf]), backend=backend)
    assert not gm.allclose(one, inf) and not gm.allclose(inf, one)
    assert not gm.allclose(inf, minus_inf) and not gm.allclose(one, minus_inf)


def test_integer_arrays_to_negative_powers_are_refused(backend):
    """NumPy refuses integers to negative integer powers; an Array exponent is checked too
    (a device kernel gave 0 without a word), and the non-negative ones still compute."""
    base = gm.array(np.array([2, 3], np.int32), backend=backend)
    for exponent in (gm.array(np.array([-1, 2], np.int32), backend=backend), -1):
        with pytest.raises(ValueError, match="negative integer powers"):
            base ** exponent
    with pytest.raises(ValueError, match="negative integer powers"):
        2 ** gm.array(np.array([3, -2], np.int64), backend=backend)
    assert_same(base ** gm.array(np.array([0, 3], np.int32), backend=backend),
                np.array([1, 27], np.int32))


def test_sub2ind_ind2sub(backend):
    shape = (3, 4, 5)
    subs = [np.array([0, 2, 1]), np.array([3, 0, 2]), np.array([4, 1, 0])]
    flat = gm.sub2ind(shape, *[gm.array(s, backend=backend) for s in subs])
    assert_same(flat, np.ravel_multi_index(subs, shape))
    back = gm.ind2sub(shape, flat)
    for got, ref in zip(back, np.unravel_index(np.ravel_multi_index(subs, shape), shape)):
        assert_same(got, ref.astype(np.int64))
    assert gm.sub2ind(shape, 1, 2, 3) == np.ravel_multi_index((1, 2, 3), shape)
    assert gm.ind2sub(shape, 37) == tuple(int(v) for v in np.unravel_index(37, shape))
    with pytest.raises(IndexError, match="out of range"):
        gm.sub2ind(shape, 3, 0, 0)
    with pytest.raises(IndexError, match="out of range"):
        gm.ind2sub(shape, gm.array([60], backend=backend))
    # float subscripts are refused, as by NumPy (they were truncated: 1.5 -> 1)
    with pytest.raises(TypeError, match="sub2ind.*integers, got dtype float32"):
        gm.sub2ind((3, 4), gm.array([1.5, 2.0], backend=backend), gm.array([0, 1], backend=backend))
    with pytest.raises(TypeError, match="sub2ind.*axis 0"):
        gm.sub2ind((3, 4), 2.0, 1)
    with pytest.raises(TypeError, match="ind2sub.*integers"):
        gm.ind2sub((3, 4), gm.array([1.5], backend=backend))


def test_broadcast_to(backend):
    a = gm.array(X[0, :1], backend=backend)
    assert_same(gm.broadcast_to(a, (5, 3, 4)), np.broadcast_to(X[0, :1], (5, 3, 4)))
    with pytest.raises(ValueError, match=r"\(1, 4\).*\(3, 5\)"):
        gm.broadcast_to(a, (3, 5))


def test_pack_signs(backend):
    x = np.random.default_rng(1).standard_normal((3, 70)).astype(np.float32)
    x[0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    got = gm.pack_signs(gm.array(x, backend=backend))
    bits = np.zeros((3, 96), np.uint64)
    bits[:, :70] = x >= 0
    ref = (bits.reshape(3, 3, 32) << np.arange(32, dtype=np.uint64)).sum(-1).astype(np.uint32)
    assert_same(got, ref)
    with pytest.raises(TypeError, match="float64"):
        gm.pack_signs(gm.array(x.astype(np.float64), backend=backend))


def test_array_likes_go_to_the_arrays_backend(backend):
    """NumPy arrays, lists and numbers meeting an Array in where, isequal, allclose, horzcat,
    vertcat and sub2ind are placed on that Array's backend, whatever the default is (they
    went to the default and raised BackendMismatchError), as the operators place them."""
    previous = gm.default_backend()
    a = gm.array(np.array([1.0, 2.0], np.float32), backend=backend)
    try:
        for default in TESTED:
            gm.use(default)
            assert gm.where(np.array([True, False]), a, 0).backend == backend
            assert_same(gm.where(True, a, 0), np.array([1.0, 2.0], np.float32))
            assert gm.isequal(np.array([1.0, 2.0], np.float32), a)
            assert gm.allclose([1.0, 2.0], a)
            assert_same(gm.horzcat(a, np.array([3.0], np.float32)),
                        np.array([1.0, 2.0, 3.0], np.float32))
            assert gm.vertcat(np.array([0.0, 0.0], np.float32), a).backend == backend
            rows = gm.array(np.array([1, 2]), backend=backend)
            assert_same(gm.sub2ind((3, 4), rows, np.array([0, 3])), np.array([4, 11]))
    finally:
        gm.use(previous)
