"""Elementwise operators and maths against NumPy, with broadcasting and dtype promotion."""
import operator

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import gpumat as gm
from conftest import assert_same

NUMERIC = ["uint8", "int32", "uint32", "int64", "float32", "float64"]


def data(shape, dtype, seed=0, low=-50, high=50):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind == "u":
        return rng.integers(0, high, size=shape).astype(dtype)
    if np.dtype(dtype).kind == "i":
        return rng.integers(low, high, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * 10).astype(dtype)


ARITH = [operator.add, operator.sub, operator.mul, operator.truediv]


@pytest.mark.parametrize("op", ARITH + [operator.floordiv, operator.mod], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dta", NUMERIC)
@pytest.mark.parametrize("dtb", ["int32", "float32", "float64", "uint8"])
def test_binary_arithmetic_and_promotion(backend, op, dta, dtb):
    x = data((4, 5), dta, 1)
    y = data((5,), dtb, 2)
    if op in (operator.floordiv, operator.mod):
        y = np.where(y == 0, 3, y).astype(dtb)
    if op is operator.sub and (dta.startswith("u") and dtb.startswith("u")):
        x = x + y.max()  # keep unsigned results in range
    with np.errstate(all="ignore"):
        expected = op(x, y)
    got = op(gm.array(x, backend=backend), gm.array(y, backend=backend))
    tol = 1e-5 if expected.dtype == np.float32 else 1e-12
    assert_same(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("scalar", [2, -3, 1.5, True])
@pytest.mark.parametrize("op", ARITH + [operator.pow], ids=lambda f: f.__name__)
def test_python_scalars_are_weak(backend, dtype, scalar, op):
    x = data((3, 4), dtype, 3, low=1, high=6)
    a = gm.array(x, backend=backend)
    try:
        with np.errstate(all="ignore"):
            op(x, scalar)
    except (OverflowError, ValueError) as numpy_error:
        # a negative int into an unsigned array, or an integer to a negative integer power:
        # NumPy refuses, and gpumat must refuse the same way (not compute garbage)
        with pytest.raises(type(numpy_error)):
            op(a, scalar)
        return
    with np.errstate(all="ignore"):
        expected = op(x, scalar)
        expected_r = op(scalar, x) if op is not operator.pow else None
    tol = 1e-5 if expected.dtype == np.float32 else 1e-12
    assert_same(op(a, scalar), expected, rtol=tol)
    if expected_r is not None:
        assert_same(op(scalar, a), expected_r, rtol=tol)


def test_numpy_operand_is_uploaded(backend):
    x = data((3,), "float32")
    a = gm.array(x, backend=backend)
    assert_same(a + np.float32(1), x + np.float32(1))
    assert_same(np.ones(3, np.float32) + a, np.ones(3, np.float32) + x)
    assert_same(a * np.float64(2), x * np.float64(2))


@pytest.mark.parametrize("op", [operator.eq, operator.ne, operator.lt, operator.le, operator.gt,
                                operator.ge], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", ["bool"] + NUMERIC)
def test_comparisons_give_logical(backend, op, dtype):
    x = data((6, 1), dtype, 1, low=-3, high=3)
    y = data((1, 7), dtype, 2, low=-3, high=3)
    got = op(gm.array(x, backend=backend), gm.array(y, backend=backend))
    assert_same(got, op(x, y))
    assert_same(op(gm.array(x, backend=backend), 1), op(x, 1))


def test_comparisons_with_nan(backend):
    x = np.array([np.nan, 1.0, np.inf, -np.inf, 0.0], np.float32)
    y = np.array([np.nan, np.nan, np.inf, 1.0, -0.0], np.float32)
    a, b = gm.array(x, backend=backend), gm.array(y, backend=backend)
    for op in (operator.eq, operator.ne, operator.lt, operator.ge):
        assert_same(op(a, b), op(x, y))


COMPARISONS = [operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge]


@pytest.mark.parametrize("op", COMPARISONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("signed", ["int32", "int64"])
def test_signed_against_uint64_compares_exactly(backend, op, signed):
    # promoted to float64 (NumPy's result dtype) 2**53 + 1 would equal 2**53 and 2**63 - 1
    # would equal 2**63; NumPy compares the pair exactly, and so must gpumat, both ways round
    s = np.array([2**53 + 1, -1, 5, 0, np.iinfo(signed).min, np.iinfo(signed).max, 7],
                 np.int64).astype(signed)
    u = np.array([2**53, 2**64 - 1, 5, 0, 3, 2**63, 2**31 - 1], np.uint64)
    a, b = gm.array(s, backend=backend), gm.array(u, backend=backend)
    assert_same(op(a, b), op(s, u))
    assert_same(op(b, a), op(u, s))
    assert_same(op(a[:2, None], b), op(s[:2, None], u))     # broadcast


@pytest.mark.parametrize("op", COMPARISONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", ["uint8", "int32", "uint32", "int64", "uint64", "bool"])
def test_comparisons_with_python_ints_out_of_range(backend, op, dtype):
    # NumPy compares a Python int that the Array's dtype cannot hold exactly (every element
    # is on one side of it) rather than refusing it
    compared = 0
    for x in (np.array([0, 1, 3, 1], np.int64).astype(dtype), np.zeros((0, 2), dtype)):
        a = gm.array(x, backend=backend)
        for number in (-1, -300, 2**32, 2**63, 2**64, -2**63 - 1, 2**70):
            try:
                expected = op(x, number)
            except OverflowError:     # NumPy refuses a few (bool against 2**64 and beyond)
                continue
            assert_same(op(a, number), expected)
            assert_same(op(number, a), op(number, x))
            compared += 1
    assert compared >= 6

def test_logical_operators(backend):
    x = data((5, 4), "bool", 1)
    y = data((4,), "bool", 2)
    a, b = gm.array(x, backend=backend), gm.array(y, backend=backend)
    assert_same(a & b, x & y)
    assert_same(a | b, x | y)
    assert_same(a ^ b, x ^ y)
    assert_same(~a, ~x)
    assert_same(gm.logical_not(a), ~x)
    assert_same(gm.logical_xor(a, b), np.logical_xor(x, y))


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "uint32"])
def test_bitwise_on_integers(backend, dtype):
    x = data((9,), dtype, 1, low=0, high=100)
    y = data((9,), dtype, 2, low=0, high=100)
    a, b = gm.array(x, backend=backend), gm.array(y, backend=backend)
    assert_same(a & b, x & y)
    assert_same(a | b, x | y)
    assert_same(~a, ~x)


UNARY = {
    "exp": (gm.exp, np.exp), "log": (gm.log, np.log), "sqrt": (gm.sqrt, np.sqrt),
    "tanh": (gm.tanh, np.tanh), "abs": (gm.abs, np.abs), "sign": (gm.sign, np.sign),
    "floor": (gm.floor, np.floor), "round": (gm.round, np.round),
    "sigmoid": (gm.sigmoid, lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))),
    "negative": (lambda a: -a, np.negative),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_unary_maths(backend, name, dtype):
    ours, ref = UNARY[name]
    x = data((37, 3), dtype, 4)
    if name in ("log", "sqrt"):
        x = np.abs(x) + (1 if dtype[0] == "i" else 0.5)
    if dtype.startswith("float"):
        x.flat[:6] = [0.5, -0.5, 1.5, 2.5, -2.5, 0.0]      # rounding ties: half to even
    with np.errstate(all="ignore"):
        expected = ref(x)
    if name == "sigmoid":
        expected = expected.astype(np.float32 if dtype == "float32" else np.float64)
    got = ours(gm.array(x, backend=backend))
    tol = 2e-6 if expected.dtype == np.float32 else 1e-12
    assert_same(got, expected, rtol=tol, atol=tol)


def test_special_values(backend):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 88.0, -100.0, 100.0], np.float32)
    a = gm.array(x, backend=backend)
    with np.errstate(all="ignore"):
        assert_same(gm.exp(a), np.exp(x), rtol=2e-6)
        assert_same(gm.sign(a), np.sign(x))
        assert_same(gm.abs(a), np.abs(x))
        assert_same(gm.tanh(a), np.tanh(x), rtol=2e-6)
        sig = gm.sigmoid(a).gather()
    assert np.isnan(sig[0]) and sig[1] == 1 and sig[2] == 0 and np.all(np.isfinite(sig[3:]))
    np.testing.assert_allclose(sig[3:], 1 / (1 + np.exp(-x[3:].astype(np.float64))), rtol=2e-6,
                               atol=1e-40)   # sigmoid(-100) is a float32 denormal


@pytest.mark.parametrize("dtype, one_from", [("float32", np.float32(9.010914)),
                                             ("float64", np.float64(19.061547465398498))])
def test_tanh_saturates_exactly(backend, dtype, one_from):
    # from the first |x| whose tanh rounds to 1 (one_from: 1 - tanh(x) below half an ulp of
    # 1) on, tanh is exactly +-1 on every backend, so that a saturated unit's derivative
    # 1 - y * y is 0; PoCL's built-in stays 1 ulp short of 1 there
    x = np.concatenate([np.linspace(one_from, 4 * one_from, 1001),
                        [30, 1e30, np.finfo(dtype).max, np.inf]]).astype(dtype)
    x = np.concatenate([x, -x])
    got = gm.tanh(gm.array(x, backend=backend)).gather()
    if backend == "opencl":     # cpu (NumPy) and torch follow their libm a few ulps later
        np.testing.assert_array_equal(got, np.sign(x))
    np.testing.assert_array_equal(got[np.abs(x) >= 20], np.sign(x[np.abs(x) >= 20]))
    below = np.nextafter(np.array([one_from, 1.0, 0.5], dtype), 0)
    assert_same(gm.tanh(gm.array(below, backend=backend)), np.tanh(below), rtol=2e-7)


@pytest.mark.parametrize("dtype", ["float32", "int32", "float64"])
def test_maximum_minimum_clip(backend, dtype):
    x = data((8, 9), dtype, 5)
    y = data((9,), dtype, 6)
    a, b = gm.array(x, backend=backend), gm.array(y, backend=backend)
    assert_same(gm.maximum(a, b), np.maximum(x, y))
    assert_same(gm.minimum(a, 0), np.minimum(x, 0))
    assert_same(gm.clip(a, -5, 7), np.clip(x, -5, 7))
    assert_same(gm.clip(a, b, 20), np.clip(x, y, 20))


def test_clip_with_bounds_past_the_dtype(backend):
    # a bound the dtype cannot hold clips nothing on its side (np.clip takes these too)
    x = np.array([1, -3, 7, 2**31 - 1], np.int32)
    a = gm.array(x, backend=backend)
    assert_same(gm.clip(a, -10**10, 10**10), x)
    assert_same(gm.clip(a, 0, 10**10), np.clip(x, 0, 2**31 - 1))
    assert_same(gm.clip(a, -10**10, 2), np.clip(x, -2**31, 2))
    u = np.array([1, 200], np.uint8)
    assert_same(gm.clip(gm.array(u, backend=backend), -5, 100), np.clip(u, 0, 100))


def test_permute_axes_must_be_integers(backend):
    a = gm.zeros(2, 3, 4, backend=backend)
    assert a.permute(np.int64(2), 0, 1).shape == (4, 2, 3)
    for order in ((2.9, 0.1, 1.5), (True, False, 2), ("210",)):
        with pytest.raises(TypeError, match="axis must be an integer"):
            a.permute(*order)
    with pytest.raises(TypeError, match="axis must be an integer"):
        gm.permute(a, [2.0, 0, 1])


def test_nan_propagates_in_maximum_and_clip(backend):
    x = np.array([np.nan, 1.0, 5.0], np.float32)
    a = gm.array(x, backend=backend)
    assert_same(gm.maximum(a, 2.0), np.maximum(x, np.float32(2)))
    assert_same(gm.minimum(a, 2.0), np.minimum(x, np.float32(2)))
    assert_same(gm.clip(a, 0, 3), np.clip(x, 0, 3))


def test_power(backend):
    x = np.abs(data((5, 4), "float32", 7)) + 0.1
    y = data((4,), "float32", 8) / 10
    assert_same(gm.array(x, backend=backend) ** gm.array(y, backend=backend), x ** y, rtol=1e-5)
    xi = data((7,), "int64", 9, low=-4, high=5)
    assert_same(gm.array(xi, backend=backend) ** 3, xi ** 3)
    assert_same(gm.power(gm.array(xi, backend=backend), 2), xi ** 2)


def test_division_by_zero_follows_numpy(backend):
    x = np.array([1.0, -1.0, 0.0], np.float32)
    with np.errstate(all="ignore"):
        assert_same(gm.array(x, backend=backend) / 0.0, x / np.float32(0))
        xi = np.array([7, -7, 0], np.int32)
        zi = np.zeros(3, np.int32)
        assert_same(gm.array(xi, backend=backend) // gm.array(zi, backend=backend), xi // zi)
        assert_same(gm.array(xi, backend=backend) % gm.array(zi, backend=backend), xi % zi)
    xm = np.array([7, -7, 7, -7], np.int64)
    ym = np.array([3, 3, -3, -3], np.int64)
    assert_same(gm.array(xm, backend=backend) // gm.array(ym, backend=backend), xm // ym)
    assert_same(gm.array(xm, backend=backend) % gm.array(ym, backend=backend), xm % ym)
    xf, yf = xm.astype(np.float32) + 0.5, ym.astype(np.float32)
    assert_same(gm.array(xf, backend=backend) % gm.array(yf, backend=backend), xf % yf, rtol=1e-6)


def test_in_place_operators(backend):
    x = data((3, 4), "float32", 1)
    a = gm.array(x, backend=backend)
    alias = a.reshape(12)           # shares storage until a write
    a += 1
    a *= gm.array(x, backend=backend)
    a -= 2
    a /= 4
    expected = ((x + 1) * x - 2) / 4
    assert_same(a, expected, rtol=1e-6)
    assert_same(alias, x.reshape(12))          # copy-on-write: the alias kept the old values
    i = gm.array(np.arange(5, dtype=np.int32), backend=backend)
    i += 2
    assert_same(i, np.arange(5, dtype=np.int32) + 2)
    with pytest.raises(TypeError, match="same_kind"):
        i /= 2


def test_in_place_cannot_broadcast_into_smaller(backend):
    a = gm.zeros(3, backend=backend)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        a += gm.zeros(2, 3, backend=backend)


def test_where(backend):
    x = data((4, 5), "float32", 1)
    cond = x > 0
    assert_same(gm.where(gm.array(cond, backend=backend), gm.array(x, backend=backend), -1.0),
                np.where(cond, x, np.float32(-1)))


broadcastable = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                                  min_side=0, max_side=6)


@settings(max_examples=40, deadline=None)
@given(shapes=broadcastable, seed=st.integers(0, 2 ** 16))
def test_broadcasting_hypothesis(shapes, seed):
    for backend in _backends():
        x = data(shapes.input_shapes[0], "float32", seed)
        y = data(shapes.input_shapes[1], "float32", seed + 1)
        a, b = gm.array(x, backend=backend), gm.array(y, backend=backend)
        assert_same(a + b, x + y)
        assert_same(a * b - 1, x * y - 1, rtol=1e-6)
        assert_same(a > b, x > y)


@settings(max_examples=25, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=2, max_dims=3, max_side=4),
       dta=st.sampled_from(NUMERIC), dtb=st.sampled_from(NUMERIC))
def test_promotion_hypothesis(shapes, dta, dtb):
    for backend in _backends():
        x = data(shapes.input_shapes[0], dta, 1, low=0, high=20)
        y = data(shapes.input_shapes[1], dtb, 2, low=0, high=20)
        got = gm.array(x, backend=backend) * gm.array(y, backend=backend)
        assert got.dtype == (x * y).dtype
        assert_same(got, x * y, rtol=1e-6)


def _backends():
    from conftest import TESTED
    return TESTED


def test_large_elementwise(backend):
    x = data((1_000_003,), "float32", 11)
    a = gm.array(x, backend=backend)
    assert_same(gm.tanh(a) * 2 + a, np.tanh(x) * 2 + x, rtol=1e-5, atol=1e-5)


def test_zero_size_ops(backend):
    a = gm.zeros(0, 3, backend=backend)
    assert (a + 1).shape == (0, 3)
    assert (a @ gm.ones(3, 2, backend=backend)).shape == (0, 2)
    assert gm.exp(a).shape == (0, 3)


def test_ops_on_strided_and_transposed_selections(backend):
    """Slices with steps and transposes (NumPy views) used as operands give NumPy's answers."""
    x = data((12, 17, 5), "float32", 21)
    y = data((17, 12), "float32", 22)
    a, b = gm.array(x, backend=backend), gm.array(y, backend=backend)
    xv, yv = x[::3, 1::2, ::-2], y.T[::-3]
    av, bv = a[::3, 1::2, ::-2], b.T[::-3]
    assert_same(av * 2 + gm.exp(av / 10), xv * 2 + np.exp(xv / 10), rtol=1e-6)
    assert_same(gm.sum(av, 1), xv.sum(1), rtol=1e-5)
    assert_same(gm.argmax(av, 0), np.argmax(xv, 0))
    assert_same(bv @ b[:, ::3], (yv.astype(np.float64) @ y[:, ::3]).astype(np.float32),
                rtol=1e-5, atol=1e-5)
    assert_same(gm.sort(bv, axis=1), np.sort(yv, axis=1))
    assert_same(gm.array(x.transpose(2, 0, 1)[:, ::5], backend=backend) - 1,
                x.transpose(2, 0, 1)[:, ::5] - 1)
