"""gpumat/activations.py on every backend: forward against torch.nn.functional, backward
against torch autograd (float64 references), awkward shapes, extreme values and every error."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpumat as gm
from gpumat.errors import BackendMismatchError, DtypeError, ShapeError

from conftest import AVAILABLE

DTYPES = [np.float32, np.float64]
#: torch forward of each activation and its gpumat forward / backward (param-taking ones get
#: a non-default parameter so a dropped parameter shows)
ACTS = {
    "relu": (lambda t: F.relu(t), lambda x: gm.relu(x), lambda g, x: gm.relu_backward(g, x)),
    "leaky_relu": (lambda t: F.leaky_relu(t, 0.2), lambda x: gm.leaky_relu(x, 0.2),
                   lambda g, x: gm.leaky_relu_backward(g, x, 0.2)),
    "relu6": (lambda t: F.relu6(t), lambda x: gm.relu6(x),
              lambda g, x: gm.relu6_backward(g, x)),
    "elu": (lambda t: F.elu(t, 0.7), lambda x: gm.elu(x, 0.7),
            lambda g, x: gm.elu_backward(g, x, 0.7)),
}


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if np.dtype(dtype) == np.float32 else \
        dict(rtol=1e-11, atol=1e-12)


def _skip_double(backend, dtype):
    if np.dtype(dtype) == np.float64 and not gm.zeros(1, backend=backend)._backend.supports_float64:
        pytest.skip(f"{backend} device has no float64")


def _close(result, expected, dtype, atol_scale=1.0):
    assert isinstance(result, gm.Array)
    got = result.gather()
    expected = np.asarray(expected)
    assert got.dtype == np.dtype(dtype), f"dtype {got.dtype} != {np.dtype(dtype)}"
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    tol = _tol(dtype)
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                               equal_nan=True, rtol=tol["rtol"], atol=tol["atol"] * atol_scale)


def _data(shape, dtype, seed=0, scale=3.0):
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    return x.astype(dtype)


def _kinks(dtype):
    """Values at and around every activation's kink, and the specials."""
    return np.array([-7, -1, -1e-30, 0, 1e-30, 0.5, 1, 5.999, 6, 6.001, 40, -40, 1e4, -1e4,
                     np.inf, -np.inf, np.nan], dtype=dtype)


# ---- activations ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 5, 7), (1, 13, 1, 17)])
def test_activation_forward_and_backward_match_torch(backend, act, dtype, shape):
    _skip_double(backend, dtype)
    torch_fn, forward, backward = ACTS[act]
    x = _data(shape, dtype)
    g = _data(shape, dtype, seed=1)
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    y = torch_fn(t)
    y.backward(torch.tensor(g.astype(np.float64)))
    X, G = gm.array(x, backend=backend), gm.array(g, backend=backend)
    _close(forward(X), y.detach().numpy(), dtype)
    _close(backward(G, X), t.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTS))
def test_activation_kinks_and_specials_match_torch(backend, act, dtype):
    """Exact zeros, the relu6 bound, huge values, +-inf and NaN: forward and the gradient
    torch's autograd gives there (an infinite or NaN gradient included)."""
    _skip_double(backend, dtype)
    torch_fn, forward, backward = ACTS[act]
    x = _kinks(dtype)
    g = np.linspace(-2, 3, x.size).astype(dtype)
    g[-3:] = [np.inf, 1.5, 2.0]          # an infinite gradient where relu blocks it
    t = torch.tensor(x, requires_grad=True)
    y = torch_fn(t)
    y.backward(torch.tensor(g))
    X, G = gm.array(x, backend=backend), gm.array(g, backend=backend)
    _close(forward(X), y.detach().numpy(), dtype)
    _close(backward(G, X), t.grad.numpy(), dtype)


@pytest.mark.parametrize("vector_chunks", [True, False])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_long_activations_match_torch(backend, act, vector_chunks, monkeypatch):
    """35005 elements: enough for opencl's float8 chunk kernels (CPU devices) with a ragged
    last chunk, and the portable kernels with the flag off."""
    if backend == "opencl":
        from gpumat.backends import opencl_activations
        monkeypatch.setattr(opencl_activations, "CPU_VECTOR_ROWS", vector_chunks)
    torch_fn, forward, backward = ACTS[act]
    x = np.resize(_kinks(np.float32), (5, 7001))
    x[:, ::3] = _data((5, 2334), np.float32)
    g = _data(x.shape, np.float32, seed=1)
    t = torch.tensor(x, requires_grad=True)
    y = torch_fn(t)
    y.backward(torch.tensor(g))
    X, G = gm.array(x, backend=backend), gm.array(g, backend=backend)
    _close(forward(X), y.detach().numpy(), np.float32)
    expected = t.grad.numpy()
    if act in ("elu", "relu6"):
        # torch's own gradient at NaN input depends on the tensor's length: its scalar loop
        # gives grad (as gpumat does everywhere), its vectorised loop NaN (elu) or 0 (relu6)
        expected = np.where(np.isnan(x), g, expected)
    _close(backward(G, X), expected, np.float32)


def test_default_parameters_match_torch(backend):
    x = _kinks(np.float32)
    t = torch.tensor(x, requires_grad=True)
    F.leaky_relu(t).sum().backward()
    X = gm.array(x, backend=backend)
    _close(gm.leaky_relu(X), F.leaky_relu(torch.tensor(x)).numpy(), np.float32)
    _close(gm.leaky_relu_backward(gm.ones(x.size, backend=backend), X), t.grad.numpy(),
           np.float32)
    _close(gm.elu(X), F.elu(torch.tensor(x)).numpy(), np.float32)


# ---- bias -----------------------------------------------------------------------------------

BIAS_CASES = [
    ((2, 3, 5, 7), 1),        # NCHW, short rows: the flat kernel
    ((2, 3, 9, 11), 1),       # NCHW, rows of 99: the row kernel
    ((4, 10), 1),             # N x F, few features: flat
    ((5, 67), 1),             # N x F, many features: row kernel with the bias along rows
    ((67, 5), 0),             # bias along axis 0
    ((3, 4, 5), -1),
    ((1,), 0),
    ((2, 1, 1, 1), 1),
    ((1, 131, 1, 1), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", BIAS_CASES)
def test_bias_add_relu_and_backward_match_torch(backend, dtype, shape, axis):
    _skip_double(backend, dtype)
    x = _data(shape, dtype)
    ax = axis % len(shape)
    b = _data((shape[ax],), dtype, seed=2)
    g = _data(shape, dtype, seed=3)
    view = [1] * len(shape)
    view[ax] = shape[ax]
    t = torch.tensor(x.astype(np.float64))
    tb = torch.tensor(b.astype(np.float64), requires_grad=True)
    y = F.relu(t + tb.reshape(view))
    y.backward(torch.tensor(g.astype(np.float64)))
    X, B, G = (gm.array(v, backend=backend) for v in (x, b, g))
    _close(gm.bias_add(X, B, axis=axis), (t + tb.reshape(view)).detach().numpy(), dtype)
    _close(gm.bias_relu(X, B, axis=axis), y.detach().numpy(), dtype)
    # through relu: the bias gradient of relu(x + b) is bias_add_backward(relu_backward(...))
    pre = gm.bias_add(X, B, axis=axis)
    _close(gm.bias_add_backward(gm.relu_backward(G, pre), axis=axis), tb.grad.numpy(), dtype)
    _close(gm.bias_add_backward(G, axis=axis),
           g.astype(np.float64).sum(axis=tuple(i for i in range(len(shape)) if i != ax)),
           dtype)


@pytest.mark.parametrize("vector_rows", [True, False])
@pytest.mark.parametrize("shape,axis", [((2, 20, 9, 11), 1), ((3, 20, 300), 1),
                                        ((1000, 20), 1), ((2, 3, 5), 1)])
def test_opencl_bias_grad_kernels(shape, axis, vector_rows, monkeypatch):
    """The float8 per-channel kernel (CPU devices) and the work-group one."""
    if "opencl" not in AVAILABLE:
        pytest.skip("opencl unavailable")
    from gpumat.backends import opencl_activations
    monkeypatch.setattr(opencl_activations, "CPU_VECTOR_ROWS", vector_rows)
    g = _data(shape, np.float32)
    expected = g.astype(np.float64).sum(axis=tuple(i for i in range(len(shape)) if i != axis))
    _close(gm.bias_add_backward(gm.array(g, backend="opencl"), axis=axis), expected,
           np.float32, atol_scale=10)


@pytest.mark.parametrize("vector_rows", [True, False])
@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu", "relu6", "elu"])
@pytest.mark.parametrize("shape,axis", [((2, 3, 9, 11), 1), ((70, 67), 1), ((70, 5), 1),
                                        ((3, 70, 13), 1)])
def test_opencl_bias_kernels_agree(act, shape, axis, vector_rows, monkeypatch):
    """On opencl, the float8 row kernel (CPU devices) and the portable ones, every act."""
    if "opencl" not in AVAILABLE:
        pytest.skip("opencl unavailable")
    from gpumat.backends import opencl_activations
    monkeypatch.setattr(opencl_activations, "CPU_VECTOR_ROWS", vector_rows)
    x = _kinks(np.float32)
    x = np.resize(x, shape) * np.float32(1.0)
    b = _data((shape[axis],), np.float32, seed=4)
    X, B = gm.array(x, backend="opencl"), gm.array(b, backend="opencl")
    got = X._backend.to_numpy(X._backend.bias_act(X._live, B._live, axis, act, 0.3))
    cpu = gm.zeros(1, backend="cpu")._backend
    expected = cpu.bias_act(x, b, axis, act, 0.3)     # the NumPy reference implementation
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("vector_rows", [True, False])
def test_bias_relu_more_than_65535_rows(backend, vector_rows, monkeypatch):
    """The row kernel launches at most 65535 rows at a time: both chunks must be right."""
    if backend == "opencl":     # elsewhere the flag changes nothing: the case runs twice
        from gpumat.backends import opencl_activations
        monkeypatch.setattr(opencl_activations, "CPU_VECTOR_ROWS", vector_rows)
    x = _data((65536 + 3, 64), np.float32)
    b = _data((64,), np.float32, seed=1)
    _close(gm.bias_relu(gm.array(x, backend=backend), gm.array(b, backend=backend)),
           np.maximum(x + b, 0), np.float32)
    x = _data((2, 32768 + 5, 64), np.float32)
    b = _data((32768 + 5,), np.float32, seed=1)
    _close(gm.bias_relu(gm.array(x, backend=backend), gm.array(b, backend=backend)),
           np.maximum(x + b[:, None], 0), np.float32)


def test_bias_with_specials_and_empty_inputs(backend):
    x = np.array([[1, np.nan, -np.inf], [np.inf, -2, 0]], np.float32)
    b = np.array([np.inf, 1, 2], np.float32)
    X, B = gm.array(x, backend=backend), gm.array(b, backend=backend)
    with np.errstate(invalid="ignore"):
        _close(gm.bias_add(X, B), x + b, np.float32)
        _close(gm.bias_relu(X, B), np.where(np.isnan(x + b), np.nan, np.maximum(x + b, 0)),
               np.float32)
    empty = gm.zeros((0, 3, 2, 2), backend=backend)
    assert gm.bias_relu(empty, gm.ones(3, backend=backend)).shape == (0, 3, 2, 2)
    _close(gm.bias_add_backward(empty), np.zeros(3), np.float32)
    assert gm.relu(gm.zeros((4, 0), backend=backend)).shape == (4, 0)


# ---- softmax --------------------------------------------------------------------------------

SOFTMAX_CASES = [((1,), 0), ((7,), -1), ((3, 5), 0), ((3, 5), 1), ((5, 1), 1), ((1, 5), 0),
                 ((2, 3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 5, 7), 0),
                 ((2, 3, 5, 7), 1), ((2, 3, 5, 7), 2), ((2, 3, 5, 7), -1), ((13, 300), -1),
                 ((3, 300, 2), 1), ((2, 100003), -1), ((100003, 3), 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES)
def test_softmax_and_log_softmax_match_torch(backend, dtype, shape, axis):
    _skip_double(backend, dtype)
    x = _data(shape, dtype)
    g = _data(shape, dtype, seed=1)
    X, G = gm.array(x, backend=backend), gm.array(g, backend=backend)
    for torch_fn, forward, backward in ((F.softmax, gm.softmax, gm.softmax_backward),
                                        (F.log_softmax, gm.log_softmax,
                                         gm.log_softmax_backward)):
        t = torch.tensor(x.astype(np.float64), requires_grad=True)
        y = torch_fn(t, dim=axis)
        y.backward(torch.tensor(g.astype(np.float64)))
        Y = forward(X, axis=axis)
        _close(Y, y.detach().numpy(), dtype)
        # the backward takes gpumat's own forward output, as a training step would; a sum
        # over 100003 float32 terms is good to about 1e-5 absolute, not 1e-6
        _close(backward(G, Y, axis=axis), t.grad.numpy(), dtype,
               atol_scale=10.0 if shape[axis] > 10000 else 1.0)


def test_softmax_defaults_to_the_last_axis(backend):
    x = _data((3, 4, 5), np.float32)
    X = gm.array(x, backend=backend)
    _close(gm.softmax(X), F.softmax(torch.tensor(x), -1).numpy(), np.float32)
    _close(gm.log_softmax(X), F.log_softmax(torch.tensor(x), -1).numpy(), np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [3, 300])
def test_softmax_is_stable_for_large_magnitudes(backend, dtype, length):
    _skip_double(backend, dtype)
    x = _data((6, length), dtype, scale=1e4)
    x[0] = 1e4                            # all equal and huge
    x[1] = -1e4
    x[2, 0] = 1e4                         # one dominant entry
    X = gm.array(x, backend=backend)
    t = torch.tensor(x.astype(np.float64))
    for torch_fn, forward in ((F.softmax, gm.softmax), (F.log_softmax, gm.log_softmax)):
        got = forward(X, axis=1)
        assert np.isfinite(got.gather()).all()
        _close(got, torch_fn(t, dim=1).numpy(), dtype)


@pytest.mark.parametrize("length", [4, 300])
def test_softmax_nan_and_inf_lines_match_torch(backend, length):
    x = _data((5, length), np.float32)
    x[0, 1] = np.nan                      # NaN anywhere: the whole line is NaN
    x[1, 2] = np.inf                      # +inf: NaN as well (inf - inf)
    x[2, :] = -np.inf                     # nothing but -inf: NaN
    x[3, 0] = -np.inf                     # one -inf: probability 0, log-probability -inf
    X = gm.array(x, backend=backend)
    t = torch.tensor(x)
    _close(gm.softmax(X), F.softmax(t, -1).numpy(), np.float32)
    _close(gm.log_softmax(X), F.log_softmax(t, -1).numpy(), np.float32)


@pytest.mark.parametrize("shape,axis", [((64, 300), -1), ((300, 40), 0), ((5, 7), 1),
                                        ((40, 1003), 1), ((3, 40, 8), 1)])
def test_softmax_work_group_and_work_item_kernels_agree(shape, axis, monkeypatch):
    """On opencl, force each of the two line kernels the device would not pick here."""
    if "opencl" not in AVAILABLE:
        pytest.skip("opencl unavailable")
    from gpumat.backends import opencl_activations
    x = _data(shape, np.float32)
    g = _data(shape, np.float32, seed=1)
    X, G = gm.array(x, backend="opencl"), gm.array(g, backend="opencl")
    results = []
    # groups everywhere, then portable items, then (CPU devices, contiguous lines) float8 rows
    for cpu_lines, min_length, vec in ((10**9, 1, False), (0, 10**9, False), (0, 10**9, True)):
        monkeypatch.setattr(opencl_activations, "CPU_VECTOR_ROWS", vec)
        monkeypatch.setattr(opencl_activations, "CPU_MIN_LINES", cpu_lines)
        monkeypatch.setattr(opencl_activations, "ITEM_MIN_STRIDED_LINES", cpu_lines)
        monkeypatch.setattr(opencl_activations, "GROUP_MIN_LENGTH", min_length)
        Y, L = gm.softmax(X, axis=axis), gm.log_softmax(X, axis=axis)
        results.append([Y.gather(), L.gather(), gm.softmax_backward(G, Y, axis=axis).gather(),
                        gm.log_softmax_backward(G, L, axis=axis).gather()])
    for other in results[1:]:
        for a, b in zip(results[0], other):   # backward: float32 sums of ~300 terms of ~3
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5)
    t = torch.tensor(x.astype(np.float64))
    np.testing.assert_allclose(results[0][0], F.softmax(t, axis).numpy(), rtol=1e-5, atol=1e-6)


def test_softmax_of_empty_arrays(backend):
    assert gm.softmax(gm.zeros((0, 5), backend=backend)).shape == (0, 5)
    assert gm.log_softmax(gm.zeros((3, 0), backend=backend), axis=1).shape == (3, 0)
    e = gm.zeros((0, 5), backend=backend)
    assert gm.softmax_backward(e, e).shape == (0, 5)


def test_accepts_array_likes_and_double_stays_double():
    x = [[1.0, 2.0], [3.0, -4.0]]
    _close(gm.relu(x), np.maximum(np.array(x, np.float32), 0), np.float32)
    xd = np.array(x)
    if gm.array(xd)._backend.supports_float64:
        _close(gm.softmax(xd), F.softmax(torch.tensor(xd), -1).numpy(), np.float64)


# ---- errors ---------------------------------------------------------------------------------

def test_errors_name_the_values(backend):
    x = gm.zeros((2, 3, 4), backend=backend)
    b = gm.zeros(3, backend=backend)
    with pytest.raises(DtypeError, match="int32"):
        gm.relu(gm.zeros((2, 3), dtype="int32", backend=backend))
    with pytest.raises(DtypeError, match="bool"):
        gm.softmax(gm.zeros((2, 3), backend=backend) > 0)
    with pytest.raises(ShapeError, match=r"axis 3 .*3-d.*-3 \.\. 2"):
        gm.softmax(x, axis=3)
    with pytest.raises(ShapeError, match="axis -4"):
        gm.log_softmax(x, axis=-4)
    with pytest.raises(ShapeError, match="axis 5"):
        gm.bias_add(x, b, axis=5)
    with pytest.raises(ShapeError, match="axis 3"):
        gm.bias_add_backward(x, axis=3)
    with pytest.raises(ShapeError, match="axis 7"):
        gm.softmax_backward(x, x, axis=7)
    with pytest.raises(TypeError, match="axis must be an integer, got 1.5"):
        gm.softmax(x, axis=1.5)
    with pytest.raises(ShapeError, match=r"x.shape\[1\] = 3 elements .*got shape \(4,\)"):
        gm.bias_add(x, gm.zeros(4, backend=backend))
    with pytest.raises(ShapeError, match=r"x.shape\[2\] = 4 .*got shape \(1, 4\)"):
        gm.bias_relu(x, gm.zeros((1, 4), backend=backend), axis=2)
    with pytest.raises(DtypeError, match="int32"):
        gm.bias_add(x, gm.zeros(3, dtype="int32", backend=backend))
    with pytest.raises(ShapeError, match=r"grad has shape \(2, 3, 4\) but x has shape \(2, 3\)"):
        gm.relu_backward(x, gm.zeros((2, 3), backend=backend))
    with pytest.raises(ShapeError, match=r"grad has shape \(2, 3, 4\) but y has shape \(4,\)"):
        gm.log_softmax_backward(x, gm.zeros(4, backend=backend))
    with pytest.raises(ShapeError, match="0-d"):
        gm.relu(gm.zeros((), backend=backend))
    with pytest.raises(ShapeError, match="0-d"):
        gm.softmax(gm.zeros((), backend=backend))
    with pytest.raises(TypeError, match="negative_slope must be a real number, got 'a'"):
        gm.leaky_relu(x, "a")
    with pytest.raises(TypeError, match="alpha must be a real number, got None"):
        gm.elu_backward(x, x, None)
    with pytest.raises(TypeError, match="negative_slope .* got True"):
        gm.leaky_relu_backward(x, x, True)
    if x._backend.supports_float64:
        with pytest.raises(DtypeError, match="float32 but x is float64"):
            gm.relu_backward(x, x.astype("double"))
        with pytest.raises(DtypeError, match="float32 but y is float64"):
            gm.softmax_backward(x, x.astype("double"))


def test_backends_never_mix():
    others = [n for n in AVAILABLE if n != "cpu"]
    if not others:
        pytest.skip("only the cpu backend is available")
    x = gm.zeros((2, 3), backend="cpu")
    y = gm.zeros((2, 3), backend=others[0])
    with pytest.raises(BackendMismatchError, match=f"'cpu'.*'{others[0]}'"):
        gm.bias_add(x, gm.zeros(3, backend=others[0]))
    with pytest.raises(BackendMismatchError, match=f"'{others[0]}'.*'cpu'"):
        gm.relu_backward(y, x)
    with pytest.raises(BackendMismatchError):
        gm.softmax_backward(x, y)
