"""The cpu backend's native GEMM for small 2-d products (kernels/cpu/direct_conv.hpp,
``small_gemm``; routed by CPUBackend.gemm): every instruction-set copy and block shape, every
transpose, alpha and beta, awkward shapes, against float64 NumPy; the routing (small 2-d
products natively, the rest to BLAS) and the module's checks."""
import numpy as np
import pytest

import gpumat as gm
import gpumat.native as native
from gpumat.backends import get as get_backend

pytestmark = pytest.mark.skipif(native._native is None,
                                reason=f"gpumat._native is not built: {native.native_import_error}")

NATIVE = native._native
CPU = get_backend("cpu")

#: (m, k, n): 1s, primes, widths that are no multiple of a vector, an empty k, LeNet's fc1
SHAPES = [(1, 1, 1), (3, 5, 7), (13, 1, 17), (1, 31, 33), (17, 29, 65), (64, 400, 120),
          (5, 0, 4), (0, 3, 4), (6, 8, 0)]


def operands(m, k, n, trans_a, trans_b, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    return a, b, c


def reference(a, b, c, alpha, beta, trans_a, trans_b):
    a64 = a.astype(np.float64).T if trans_a else a.astype(np.float64)
    b64 = b.astype(np.float64).T if trans_b else b.astype(np.float64)
    out = alpha * (a64 @ b64)
    return out if c is None or beta == 0 else out + beta * c


def assert_close(got, want, dtype, k):
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 2e-6 * max(1, k) ** 0.5
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


@pytest.fixture
def restore_isa():
    yield
    NATIVE.set_direct_conv_isa("auto")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa", NATIVE.direct_conv_isas() if NATIVE else [])
def test_every_isa_shape_and_transpose_matches_numpy(isa, dtype, restore_isa):
    NATIVE.set_direct_conv_isa(isa)
    for m, k, n in SHAPES:
        for trans_a in (False, True):
            for trans_b in (False, True):
                a, b, c = operands(m, k, n, trans_a, trans_b, dtype)
                for alpha, beta, with_c in ((1.0, 0.0, False), (0.5, 0.0, True),
                                            (-2.0, 1.5, True), (1.0, 1.0, True)):
                    got = NATIVE.gemm(a, b, c if with_c else None, alpha, beta, trans_a,
                                      trans_b)
                    want = reference(a, b, c if with_c else None, alpha, beta, trans_a,
                                     trans_b)
                    assert_close(got, want, dtype, k)


def test_beta_zero_never_reads_c():
    a, b, c = operands(4, 6, 5, False, False, np.float32)
    c[:] = np.nan
    np.testing.assert_array_equal(NATIVE.gemm(a, b, c, 1.0, 0.0, False, False),
                                  NATIVE.gemm(a, b, None, 1.0, 0.0, False, False))


def test_backend_routes_small_products_natively(monkeypatch):
    calls = []
    original = NATIVE.gemm
    monkeypatch.setattr(NATIVE, "gemm", lambda *args: calls.append(1) or original(*args))
    rng = np.random.default_rng(1)
    x = gm.array(rng.standard_normal((64, 400)).astype(np.float32), backend="cpu")
    w = gm.array(rng.standard_normal((120, 400)).astype(np.float32), backend="cpu")
    bias = gm.array(rng.standard_normal(120).astype(np.float32), backend="cpu")
    got = gm.gemm(x, w, bias, alpha=2.0, beta=1.0, trans_b=True).gather()
    assert calls == [1]
    want = 2.0 * x.gather().astype(np.float64) @ w.gather().T.astype(np.float64) + bias.gather()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    batched = gm.array(np.ones((2, 16, 16), np.float32), backend="cpu")   # BLAS
    gm.gemm(batched, batched)
    row = gm.array(np.ones((1, 600), np.float32), backend="cpu")       # op(B) too big
    gm.gemm(row, gm.array(np.ones((600, 600), np.float32), backend="cpu"))
    many = gm.array(np.ones((256, 256), np.float32), backend="cpu")    # too much work
    gm.gemm(many, many)
    assert calls == [1]


def test_module_checks_its_arguments():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        NATIVE.gemm(a.astype(np.int64), a, None, 1.0, 0.0, False, True)
    with pytest.raises(TypeError, match="must match"):
        NATIVE.gemm(a, a.astype(np.float64), None, 1.0, 0.0, False, True)
    with pytest.raises(ValueError, match="2-dimensional"):
        NATIVE.gemm(a[None], a, None, 1.0, 0.0, False, True)
    with pytest.raises(ValueError, match="op\\(a\\) is 3 x 4 but op\\(b\\) is 3 x 4"):
        NATIVE.gemm(a, a, None, 1.0, 0.0, False, False)
    with pytest.raises(ValueError, match="C-contiguous"):
        NATIVE.gemm(a, np.asfortranarray(np.zeros((4, 5), np.float32)), None, 1.0, 0.0,
                    False, False)
    with pytest.raises(ValueError, match="not the product's"):
        NATIVE.gemm(a, a, np.zeros((3, 4), np.float32), 1.0, 1.0, False, True)
