"""gm.sgd_update / gm.adam_update: the fused in-place kernels against a float64 NumPy
transcription of torch.optim's rules, on every backend and awkward sizes."""
import math

import numpy as np
import pytest

import gpumat as gm

SIZES = [(0,), (1,), (7,), (257,), (3, 5, 11), (100_003,)]
RNG = np.random.default_rng(17)


def sgd_reference(p, g, buf, lr, momentum, dampening, wd, nesterov, first):
    d = g + wd * p
    if momentum:
        buf = d.copy() if first else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def adam_reference(p, g, m, v, step, lr, b1, b2, eps, wd, decoupled):
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m = m + (1 - b1) * (g - m)
    v = b2 * v + (1 - b2) * g * g
    p = p - lr / (1 - b1 ** step) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** step) + eps)
    return p, m, v


def upload(x, backend, dtype):
    return gm.array(x.astype(dtype), backend=backend)


@pytest.mark.parametrize("shape", SIZES, ids=str)
@pytest.mark.parametrize("dtype", ["single", "double"])
@pytest.mark.parametrize("hyper", [
    dict(momentum=0.0, dampening=0.0, wd=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.0, wd=5e-4, nesterov=True),
    dict(momentum=0.5, dampening=0.25, wd=1e-2, nesterov=False)], ids=str)
def test_sgd_update(backend, shape, dtype, hyper):
    p, g, buf = (RNG.standard_normal(shape) for _ in range(3))
    args = (0.1, hyper["momentum"], hyper["dampening"], hyper["wd"], hyper["nesterov"])
    gp, gb = upload(p, backend, dtype), upload(buf, backend, dtype)
    for first in (True, False):
        gm.sgd_update(gp, upload(g, backend, dtype), gb, *args, first=first)
        p, buf = sgd_reference(p, g, buf, *args, first)
        tol = 1e-6 if dtype == "single" else 1e-14
        np.testing.assert_allclose(gp.gather(), p, rtol=tol, atol=tol)
        if hyper["momentum"]:
            np.testing.assert_allclose(gb.gather(), buf, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", SIZES, ids=str)
@pytest.mark.parametrize("dtype", ["single", "double"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_update(backend, shape, dtype, decoupled):
    p, g = RNG.standard_normal(shape), RNG.standard_normal(shape)
    m, v = np.zeros(shape), np.zeros(shape)
    gp, gmom, gvar = (upload(a, backend, dtype) for a in (p, m, v))
    for step in (1, 2, 3):
        args = (step, 1e-2, 0.9, 0.99, 1e-8, 0.05, decoupled)
        gm.adam_update(gp, upload(g, backend, dtype), gmom, gvar, *args)
        p, m, v = adam_reference(p, g, m, v, *args)
    tol = 2e-5 if dtype == "single" else 1e-12
    np.testing.assert_allclose(gp.gather(), p, rtol=tol, atol=tol)
    np.testing.assert_allclose(gmom.gather(), m, rtol=tol, atol=tol)
    np.testing.assert_allclose(gvar.gather(), v, rtol=tol, atol=tol)


def test_updates_copy_shared_storage_first(backend):
    p = gm.ones(4, backend=backend)
    snapshot = p.reshape(2, 2)                 # shares p's storage
    gm.sgd_update(p, gm.ones(4, backend=backend), lr=0.5)
    np.testing.assert_array_equal(p.gather(), [0.5] * 4)
    np.testing.assert_array_equal(snapshot.gather(), np.ones((2, 2)))


def test_update_errors(backend):
    p = gm.ones(3, backend=backend)
    with pytest.raises(ValueError, match="needs a buffer"):
        gm.sgd_update(p, p, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        gm.sgd_update(p, gm.ones(4, backend=backend), lr=0.1)
    with pytest.raises(TypeError, match="float32 but grad is float64"):
        gm.sgd_update(p, gm.ones(3, dtype="double", backend=backend), lr=0.1)
    with pytest.raises(TypeError, match="single or double"):
        gm.sgd_update(gm.ones(3, dtype="int32", backend=backend), p, lr=0.1)
    with pytest.raises(TypeError, match="finite real"):
        gm.sgd_update(p, p, lr=float("nan"))
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        gm.adam_update(p, p, gm.zeros(3, backend=backend), gm.zeros(3, backend=backend), 0)
    other = "cpu" if backend != "cpu" else None
    if other:
        with pytest.raises(ValueError, match="lives on"):
            gm.sgd_update(p, gm.ones(3, backend=other), lr=0.1)
    np.testing.assert_array_equal(p.gather(), np.ones(3))      # nothing was changed
