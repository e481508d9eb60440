"""Same-shape float add / subtract / multiply / divide on the cpu backend run in the native
module (kernels/cpu/arith.hpp, split over the thread pool) from CPUBackend.NATIVE_ARITH
elements: the results must be NumPy's bit for bit -- NaN payloads, infinities, signed zeros,
subnormals -- with any thread count, through gpumat's operators and autograd's sums, and
everything the kernel does not take (broadcasting, mixed dtypes, integers, small or strided
operands) keeps NumPy's path."""
from __future__ import annotations

import operator

import numpy as np
import pytest

import gpumat as gm
from gpumat import native
from gpumat.backends import cpu as cpu_backend

NATIVE = native.kernels()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native module is not built")

OPS = {"add": (np.add, operator.add), "subtract": (np.subtract, operator.sub),
       "multiply": (np.multiply, operator.mul), "divide": (np.divide, operator.truediv)}
LIMIT = cpu_backend.CPUBackend.NATIVE_ARITH


def _awkward(shape, dtype, seed):
    """Random values salted with every special value, spread over every chunk."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    info = np.finfo(dtype)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny / 4, -info.tiny / 3,
                info.max, info.tiny, 1.0, -1.0]
    for i, value in enumerate(specials):
        flat[i::97 + 2 * i] = value
    bits = flat.view(np.uint32 if dtype == np.float32 else np.uint64)
    bits[5::389] |= 0x7F800000 if dtype == np.float32 else 0x7FF0000000000000
    bits[5::389] |= 0x12345 if dtype == np.float32 else 0x123456789   # NaNs with payloads
    return x


def _same_bits(got, want, a=None, b=None):
    """Bitwise equal; where both operands (a, b) are NaN, NaN with either payload: IEEE 754
    leaves the choice open, and add and multiply being commutative, compilers swap their
    operands (NumPy's own loops as much as this kernel)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    view = np.uint32 if got.dtype == np.float32 else np.uint64
    got_bits, want_bits = got.view(view).copy(), want.view(view).copy()
    if a is not None:
        both = np.isnan(a) & np.isnan(b)
        assert np.isnan(got[both]).all()
        ok = (got_bits[both] == a.view(view)[both] | _quiet(view)) | (
            got_bits[both] == b.view(view)[both] | _quiet(view))
        assert ok.all()
        got_bits[both] = want_bits[both]
    np.testing.assert_array_equal(got_bits, want_bits)


def _quiet(view):
    return view(0x00400000) if view is np.uint32 else view(0x0008000000000000)


@pytest.fixture
def restore_threads():
    threads = NATIVE.native_threads()
    yield
    NATIVE.set_native_threads(threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", sorted(OPS))
def test_kernel_is_numpy_bit_for_bit_with_any_thread_count(op, dtype, restore_threads):
    reference, _ = OPS[op]
    code = cpu_backend.ARITH_OPS[op]
    for shape in [(1,), (7,), (LIMIT - 1,), (LIMIT + 3,), (3, 7, 61, 67), (1 << 20,)]:
        a, b = _awkward(shape, dtype, 1), _awkward(shape, dtype, 2)[::-1].copy()
        with np.errstate(all="ignore"):
            want = reference(a, b)
        for threads in (1, 2, 3, 7):
            NATIVE.set_native_threads(threads)
            _same_bits(NATIVE.arith(a, b, code), want, a, b)
    empty = np.empty((0, 5), dtype)
    assert NATIVE.arith(empty, empty, code).shape == (0, 5)


@pytest.mark.parametrize("op", sorted(OPS))
def test_operators_take_the_kernel_and_keep_numpys_bits(op, monkeypatch):
    reference, operator_ = OPS[op]
    calls = []
    real = NATIVE.arith

    class Counting:
        def __getattr__(self, name):
            return getattr(NATIVE, name)

        def arith(self, *args):
            calls.append(args[2])
            return real(*args)
    monkeypatch.setattr(native, "kernels", lambda: Counting())
    a_host = _awkward((5, 16, 21, 23), np.float32, 3)        # 38,640 elements
    b_host = _awkward((5, 16, 21, 23), np.float32, 4)
    a, b = gm.array(a_host, backend="cpu"), gm.array(b_host, backend="cpu")
    with np.errstate(all="ignore"):
        _same_bits(operator_(a, b).gather(), reference(a_host, b_host), a_host, b_host)
        assert calls == [cpu_backend.ARITH_OPS[op]]
        # what the kernel does not take keeps NumPy's path, with NumPy's results
        others = [
            (a_host, b_host[:1]),                              # broadcasting
            (a_host, b_host.astype(np.float64)),               # mixed dtypes
            (a_host[:, :, :, :3], b_host[:, :, :, :3]),        # below the limit
            (a_host.astype(np.int32), b_host.astype(np.int32) | 1),    # integers
        ]
        for x_host, y_host in others:
            x, y = gm.array(x_host, backend="cpu"), gm.array(y_host, backend="cpu")
            np.testing.assert_array_equal(operator_(x, y).gather(),
                                          operator_(x_host, y_host))
    assert calls == [cpu_backend.ARITH_OPS[op]]       # only the first call took the kernel


def test_residual_sums_and_their_gradients_match_numpy():
    """A residual addition through autograd: the forward sum and the gradient that reaches a
    tensor used twice (summed by autograd) are NumPy's."""
    from gpumat import nn
    rng = np.random.default_rng(5)
    x_host = rng.standard_normal((4, 16, 24, 24)).astype(np.float32)
    g_host = rng.standard_normal((4, 16, 24, 24)).astype(np.float32)
    x = nn.Variable(gm.array(x_host, backend="cpu"), requires_grad=True)
    y = x * x + x                        # x reaches y by two paths: autograd adds them
    y.backward(gm.array(g_host, backend="cpu"))
    _same_bits(y.data.gather(), x_host * x_host + x_host)
    want = g_host * x_host + g_host * x_host + g_host     # the sum of the three paths
    np.testing.assert_allclose(x.grad.gather(), want, rtol=1e-6, atol=1e-6)


def test_bad_operands_name_the_problem():
    a = np.ones((40000,), np.float32)
    with pytest.raises(ValueError, match=r"arith: a has shape \(40000,\) but b has shape \(40001,\)"):
        NATIVE.arith(a, np.ones((40001,), np.float32), 0)
    with pytest.raises(TypeError, match="arith: a is float32 but b is float64; they must match"):
        NATIVE.arith(a, np.ones((40000,), np.float64), 0)
    with pytest.raises(TypeError, match="arith: a must be float32 or float64, got dtype int32"):
        NATIVE.arith(a.astype(np.int32), a.astype(np.int32), 0)
    with pytest.raises(ValueError, match="arith: b must be C-contiguous"):
        NATIVE.arith(a[:20000], np.ones((40000,), np.float32)[::2], 0)
    with pytest.raises(ValueError, match="arith: unknown operation code 4"):
        NATIVE.arith(a, a, 4)
    # and the library stays usable
    _same_bits(NATIVE.arith(a, a, 0), a + a)
