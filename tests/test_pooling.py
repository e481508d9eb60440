"""2-d pooling (gpumat/pooling.py) against PyTorch: forward values and indices, autograd
gradients (float64 reference), every argument error, on every backend."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import gpumat as gm
from conftest import assert_same, float_tolerance

DTYPES = ["float32", "float64"]
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---- references ---------------------------------------------------------------------------

def values(shape, dtype, seed, nan=False, neg_inf=False):
    """Small integers (so windows have ties, exact in float32), optionally with NaN / -inf."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=shape).astype(np.float64)
    if nan:
        x[rng.random(shape) < 0.15] = np.nan
    if neg_inf:
        x[rng.random(shape) < 0.3] = -np.inf
    return x.astype(dtype)


def torch_max(x, kernel, stride, padding, ceil_mode, grad):
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    out, idx = F.max_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)
    out.backward(torch.tensor(grad.astype(np.float64)))
    return out.detach().numpy(), idx.numpy(), t.grad.numpy()


def torch_avg(x, kernel, stride, padding, ceil_mode, count_include_pad, grad):
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    out = F.avg_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode,
                       count_include_pad=count_include_pad)
    out.backward(torch.tensor(grad.astype(np.float64)))
    return out.detach().numpy(), t.grad.numpy()


def torch_out_shape(x_shape, kernel, stride, padding, ceil_mode):
    return tuple(F.max_pool2d(torch.zeros(x_shape, dtype=torch.float64), kernel, stride, padding,
                              ceil_mode=ceil_mode).shape)


def check_max(backend, x, kernel, stride, padding, ceil_mode, seed=0):
    dtype = x.dtype
    tol = float_tolerance(dtype)
    out_shape = torch_out_shape(x.shape, kernel, stride, padding, ceil_mode)
    grad = np.random.default_rng(seed + 1).standard_normal(out_shape).astype(dtype)
    ref, ref_idx, ref_grad = torch_max(x, kernel, stride, padding, ceil_mode, grad)
    a = gm.array(x, backend=backend)
    out, idx = gm.max_pool2d(a, kernel, stride, padding, ceil_mode, return_indices=True)
    assert_same(out, ref.astype(dtype), rtol=0)            # max pooling is exact
    assert_same(idx, ref_idx)                              # int64, first max / last NaN
    assert_same(gm.max_pool2d(a, kernel, stride, padding, ceil_mode), ref.astype(dtype), rtol=0)
    got = gm.max_pool2d_backward(gm.array(grad, backend=backend), idx, x.shape, kernel, stride,
                                 padding, ceil_mode)
    assert_same(got, ref_grad.astype(dtype), rtol=tol, atol=tol)


def check_avg(backend, x, kernel, stride, padding, ceil_mode, count_include_pad, seed=0):
    dtype = x.dtype
    tol = float_tolerance(dtype)
    out_shape = torch_out_shape(x.shape, kernel, stride, padding, ceil_mode)
    grad = np.random.default_rng(seed + 2).standard_normal(out_shape).astype(dtype)
    ref, ref_grad = torch_avg(x, kernel, stride, padding, ceil_mode, count_include_pad, grad)
    a = gm.array(x, backend=backend)
    out = gm.avg_pool2d(a, kernel, stride, padding, ceil_mode, count_include_pad)
    assert_same(out, ref.astype(dtype), rtol=tol, atol=tol)
    got = gm.avg_pool2d_backward(gm.array(grad, backend=backend), x.shape, kernel, stride,
                                 padding, ceil_mode, count_include_pad)
    assert_same(got, ref_grad.astype(dtype), rtol=tol, atol=tol)


# ---- property tests -----------------------------------------------------------------------

@st.composite
def geometries(draw):
    """(input NCHW shape, kernel, stride, padding, ceil_mode) that torch accepts."""
    kernel, stride, padding, size = [], [], [], []
    for _ in range(2):
        k = draw(st.integers(1, 5))
        p = draw(st.integers(0, k // 2))
        kernel.append(k)
        padding.append(p)
        stride.append(draw(st.integers(1, 6)))                # stride > kernel included
        size.append(draw(st.integers(max(1, k - 2 * p), 13)))  # 1x1, primes, kernel == input
    n = draw(st.integers(0, 2))
    c = draw(st.integers(1, 3))
    as_int = draw(st.booleans()) and kernel[0] == kernel[1] and stride[0] == stride[1] \
        and padding[0] == padding[1]
    pick = (lambda v: v[0]) if as_int else tuple
    return ((n, c) + tuple(size), pick(kernel), pick(stride), pick(padding),
            draw(st.booleans()))


@SETTINGS
@given(geometry=geometries(), dtype=st.sampled_from(DTYPES), nan=st.booleans(),
       neg_inf=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_max_pool2d_hypothesis(backend, geometry, dtype, nan, neg_inf, seed):
    shape, kernel, stride, padding, ceil_mode = geometry
    check_max(backend, values(shape, dtype, seed, nan, neg_inf), kernel, stride, padding,
              ceil_mode, seed)


@SETTINGS
@given(geometry=geometries(), dtype=st.sampled_from(DTYPES), count_include_pad=st.booleans(),
       nan=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_avg_pool2d_hypothesis(backend, geometry, dtype, count_include_pad, nan, seed):
    shape, kernel, stride, padding, ceil_mode = geometry
    x = values(shape, dtype, seed, nan) + np.random.default_rng(seed).random(shape).astype(dtype)
    check_avg(backend, x, kernel, stride, padding, ceil_mode, count_include_pad, seed)


# ---- chosen cases -------------------------------------------------------------------------

AWKWARD = [
    # (shape, kernel, stride, padding, ceil_mode)
    ((1, 1, 1, 1), 1, None, 0, False),               # 1x1 input
    ((1, 1, 1, 1), 3, 1, 1, False),                  # 1x1 input, all but the centre padded
    ((2, 3, 7, 5), (7, 5), None, 0, False),          # kernel == input
    ((1, 2, 11, 13), 3, 5, 0, False),                # stride > kernel, primes
    ((1, 2, 11, 13), 3, 5, 1, True),                 # ceil_mode overhang
    ((1, 1, 5, 5), 2, 2, 1, True),                   # last window dropped by the ceil rule
    ((2, 2, 6, 7), (4, 2), (3, 1), (2, 1), True),    # padding = kernel // 2, both axes
    ((1, 1, 8, 8), 2, None, 0, False),               # the classic 2x2/2
    ((3, 4, 9, 9), 3, 2, 1, False),                  # ResNet's stem pool
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_awkward_geometries(backend, case, dtype):
    shape, kernel, stride, padding, ceil_mode = case
    x = values(shape, dtype, 3)
    check_max(backend, x, kernel, stride, padding, ceil_mode)
    for count_include_pad in (True, False):
        check_avg(backend, x + 0.25, kernel, stride, padding, ceil_mode, count_include_pad)


def test_every_small_geometry(backend):
    """Exhaustive over small sizes: torch accepts exactly what gpumat accepts, and the output
    shapes (ceil_mode rule included) agree."""
    x_all = values((1, 1, 5, 5), "float32", 4)
    for size, k, s, p, ceil_mode in itertools.product(range(1, 6), range(1, 5), range(1, 4),
                                                      range(0, 3), (False, True)):
        x = x_all[:, :, :size, :size].copy()
        try:
            ref = F.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=ceil_mode)
        except RuntimeError:
            with pytest.raises(ValueError):
                gm.max_pool2d(gm.array(x, backend=backend), k, s, p, ceil_mode)
            with pytest.raises(ValueError):
                gm.avg_pool2d(gm.array(x, backend=backend), k, s, p, ceil_mode)
            continue
        got = gm.max_pool2d(gm.array(x, backend=backend), k, s, p, ceil_mode)
        assert_same(got, ref.numpy(), rtol=0)
        ref = F.avg_pool2d(torch.tensor(x), k, s, p, ceil_mode=ceil_mode)
        assert_same(gm.avg_pool2d(gm.array(x, backend=backend), k, s, p, ceil_mode),
                    ref.numpy(), rtol=1e-6, atol=1e-6)


def test_ties_go_to_first_and_nan_to_last(backend):
    x = np.array([[[[2, 2, 1, 2], [np.nan, 0, np.nan, 5]]]], np.float32)
    out, idx = gm.max_pool2d(gm.array(x, backend=backend), (1, 4), return_indices=True)
    assert_same(out, np.array([[[[2], [np.nan]]]], np.float32), rtol=0)
    assert_same(idx, np.array([[[[0], [6]]]], np.int64))     # torch: h * W + w of the last NaN
    neg = np.full((1, 1, 2, 2), -np.inf, np.float64)
    _, idx = gm.max_pool2d(gm.array(neg, backend=backend), 2, padding=1, return_indices=True)
    assert_same(idx, np.array([[[[0, 1], [2, 3]]]], np.int64))


def test_chw_input(backend):
    x = values((3, 6, 7), "float32", 5)
    a = gm.array(x, backend=backend)
    out, idx = gm.max_pool2d(a, 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    assert_same(out, ref.numpy(), rtol=0)
    assert_same(idx, ref_idx.numpy())
    grad = np.ones(tuple(ref.shape), np.float32)
    back = gm.max_pool2d_backward(gm.array(grad, backend=backend), idx, x.shape, 3, 2, 1)
    assert back.shape == x.shape
    avg = gm.avg_pool2d(a, 2)
    assert_same(avg, F.avg_pool2d(torch.tensor(x), 2).numpy(), rtol=1e-6)
    assert gm.avg_pool2d_backward(avg, x.shape, 2).shape == x.shape
    assert gm.global_avg_pool2d(a).shape == (3, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 1, 1), (0, 2, 3, 3), (1, 2, 13, 17)])
def test_global_avg_pool2d(backend, shape, dtype):
    tol = float_tolerance(dtype)
    x = np.random.default_rng(6).standard_normal(shape).astype(dtype)
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    ref = F.adaptive_avg_pool2d(t, 1)
    grad = np.random.default_rng(7).standard_normal(tuple(ref.shape)).astype(dtype)
    ref.backward(torch.tensor(grad.astype(np.float64)))
    out = gm.global_avg_pool2d(gm.array(x, backend=backend))
    assert_same(out, ref.detach().numpy().astype(dtype), rtol=tol, atol=tol)
    back = gm.global_avg_pool2d_backward(gm.array(grad, backend=backend), shape)
    assert_same(back, t.grad.numpy().astype(dtype), rtol=tol, atol=tol)


def test_return_types(backend):
    a = gm.array(values((1, 2, 4, 4), "float32", 8), backend=backend)
    out = gm.max_pool2d(a, 2)
    assert isinstance(out, gm.Array) and out.dtype == np.float32 and out.shape == (1, 2, 2, 2)
    out, idx = gm.max_pool2d(a, 2, return_indices=True)
    assert idx.dtype == np.int64 and idx.shape == out.shape and idx.backend == backend
    # NumPy input goes to the default backend; an empty stride means "same as the kernel"
    host = values((1, 1, 4, 6), "float32", 11)
    assert_same(gm.max_pool2d(host, (2, 3), ()), F.max_pool2d(torch.tensor(host), (2, 3)).numpy(),
                rtol=0)


def test_larger_input_matches_torch(backend):
    """More planes and outputs than one work-group, float32 with random (tie-free) values."""
    x = np.random.default_rng(9).standard_normal((4, 16, 33, 31)).astype(np.float32)
    check_max(backend, x, 3, 2, 1, True)
    check_avg(backend, x, (3, 2), (2, 3), (1, 1), True, False)


# ---- every kernel path, forced -------------------------------------------------------------

PATH_CASES = AWKWARD + [
    # (shape, kernel, stride, padding, ceil_mode)
    ((2, 3, 9, 11), 2, 2, 0, False),                 # disjoint, floor remainder (zero-fill)
    ((2, 3, 10, 12), 2, 2, 0, False),                # disjoint, cells tile the input exactly
    ((1, 2, 12, 12), 2, 3, 1, True),                 # stride > kernel, padding, ceil_mode
    ((1, 2, 13, 10), (3, 1), (4, 2), (1, 0), False),  # disjoint, different axes
    ((2, 2, 8, 8), 8, 8, 0, False),                  # global window
    ((1, 2, 11, 9), 3, 2, 1, True),                  # overlapping, kernel <= 2 * stride
    ((1, 2, 11, 9), (5, 3), (2, 1), (2, 1), False),  # overlapping, kernel > 2 * stride
    ((1, 1, 7, 70), 2, 2, 0, False),                 # rows wider than 64 columns
    ((1, 2, 9, 10), 4, 4, 0, False),                 # big tiles, floor remainder
    ((1, 2, 9, 10), 4, 4, 0, True),                  # big tiles, ceil_mode overhang
    ((2, 1, 12, 8), (4, 8), (4, 8), 0, False),       # big tiles, exact
]


def _backend_paths(backend):
    """(module, attribute, values) of the path switches the backend has."""
    if backend == "opencl":
        from gpumat.backends import opencl_pool
        return [(opencl_pool, "BACKWARD_PATH", ["auto", "flat", "gather", "scatter"]),
                (opencl_pool, "FORWARD_PATH", ["auto", "flat", "rows"]),
                # one work-group row per launch: the row kernels' multi-launch split
                (opencl_pool, "_MAX_ROW_GROUPS", [65535, 1])]
    if backend == "cpu":
        from gpumat.backends import pool_array_module
        return [(pool_array_module, "FORCE_GENERIC", [False, True])]
    return []


@pytest.mark.parametrize("case", PATH_CASES, ids=str)
def test_forced_paths_agree(backend, case, monkeypatch):
    """Every forward and backward path (opencl: flat / row / scatter kernels; cpu: the
    disjoint-window fast path and the generic one) matches torch and each other bit for
    bit, including for NaN inputs."""
    switches = _backend_paths(backend)
    if not switches:
        pytest.skip(f"{backend} has no path switches")
    shape, kernel, stride, padding, ceil_mode = case
    x = values(shape, "float64", 5, nan=True)
    results = []
    for module, name, options in switches:
        for option in options:
            monkeypatch.setattr(module, name, option)
            check_max(backend, x, kernel, stride, padding, ceil_mode, seed=7)
            for include in (True, False):
                check_avg(backend, x + 0.25, kernel, stride, padding, ceil_mode, include)
            a = gm.array(x, backend=backend)
            out, idx = gm.max_pool2d(a, kernel, stride, padding, ceil_mode, return_indices=True)
            grad = gm.array(np.random.default_rng(1).standard_normal(out.shape), backend=backend)
            results.append([r.to_numpy() if hasattr(r, "to_numpy") else np.asarray(r) for r in (
                out, idx, gm.max_pool2d_backward(grad, idx, shape, kernel, stride, padding,
                                                 ceil_mode),
                gm.avg_pool2d(a, kernel, stride, padding, ceil_mode, False),
                gm.avg_pool2d_backward(grad, shape, kernel, stride, padding, ceil_mode,
                                       False))])
        monkeypatch.undo()
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel, stride", [(8, 8), (4, 4), (2, 2), (3, 2)])
def test_max_of_signed_zeros_is_the_first(backend, kernel, stride):
    """A window whose maximum is zero gives its first zero, sign included (torch's first-max
    rule), on the value-only and the indexed paths."""
    x = np.random.default_rng(4).choice(np.array([-0.0, 0.0, -1.0]), size=(2, 3, 8, 8))
    ref = F.max_pool2d(torch.tensor(x), kernel, stride).numpy()
    for got in (gm.max_pool2d(gm.array(x, backend=backend), kernel, stride),
                gm.max_pool2d(gm.array(x, backend=backend), kernel, stride,
                              return_indices=True)[0]):
        got = np.asarray(got)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))


@pytest.mark.parametrize("case", [((2, 3, 9, 11), 2, 2, 0, False),
                                  ((1, 2, 12, 12), 2, 3, 1, True),
                                  ((1, 2, 11, 9), 3, 2, 1, True)], ids=str)
def test_max_backward_ignores_foreign_indices(backend, case, monkeypatch):
    """An index outside its output's window (or its plane) contributes nothing, on every
    backward path: the gradient is torch's for the valid indices alone."""
    shape, kernel, stride, padding, ceil_mode = case
    x = np.random.default_rng(2).standard_normal(shape)
    a = gm.array(x, backend=backend)
    _, idx = gm.max_pool2d(a, kernel, stride, padding, ceil_mode, return_indices=True)
    idx = idx.to_numpy() if hasattr(idx, "to_numpy") else np.asarray(idx)
    grad = np.random.default_rng(3).standard_normal(idx.shape)
    bad = idx.copy()
    bad.flat[::3] = (bad.flat[::3] + 5 * shape[-1] + 3) % (shape[-1] * shape[-2])
    bad.flat[1::7] = -1
    bad.flat[2::11] = shape[-1] * shape[-2]
    keep = bad == idx
    expected = np.zeros(shape)
    for flat in np.ndindex(idx.shape):
        if keep[flat]:
            plane = expected[flat[0], flat[1]].reshape(-1)
            plane[idx[flat]] += grad[flat]
    options = [(None, None, None)]
    for module, name, values_ in _backend_paths(backend):
        options += [(module, name, v) for v in values_]
    for module, name, option in options:
        if module is not None:
            monkeypatch.setattr(module, name, option)
        got = gm.max_pool2d_backward(gm.array(grad, backend=backend),
                                     gm.array(bad, backend=backend), shape, kernel, stride,
                                     padding, ceil_mode)
        assert_same(got, expected, rtol=1e-12, atol=1e-12)
        monkeypatch.undo()


# ---- argument errors ----------------------------------------------------------------------

def test_the_largest_window_averages_exactly(backend):
    ones = gm.ones(1, 1, 4, 4, backend=backend)
    out = gm.avg_pool2d(ones, 2**31 - 1, padding=2**30 - 1)
    np.testing.assert_allclose(out.item(), 16 / (2**31 - 1) ** 2, rtol=1e-6)


def test_argument_errors(backend):
    a = gm.array(values((1, 2, 5, 5), "float32", 10), backend=backend)
    g2 = gm.array(np.zeros((1, 2, 2, 2), np.float32), backend=backend)
    idx = gm.max_pool2d(a, 2, return_indices=True)[1]
    for pool in (gm.max_pool2d, gm.avg_pool2d):
        with pytest.raises(ValueError, match=r"4-d NCHW .*\(5, 5\)"):
            pool(gm.array(np.zeros((5, 5), np.float32), backend=backend), 2)
        with pytest.raises(ValueError, match=r"\(1, 1, 1, 5, 5\)"):
            pool(gm.array(np.zeros((1, 1, 1, 5, 5), np.float32), backend=backend), 2)
        with pytest.raises(ValueError, match=r"kernel_size must be positive, got \(0, 0\)"):
            pool(a, 0)
        with pytest.raises(ValueError, match=r"kernel_size must be positive, got \(2, -1\)"):
            pool(a, (2, -1))
        with pytest.raises(ValueError, match=r"stride must be positive, got \(0, 1\)"):
            pool(a, 2, (0, 1))
        with pytest.raises(ValueError, match=r"padding must be non-negative, got \(-1, -1\)"):
            pool(a, 3, 1, -1)
        with pytest.raises(ValueError, match=r"padding=\(2, 2\) and kernel_size=\(3, 3\)"):
            pool(a, 3, 1, 2)
        with pytest.raises(ValueError, match=r"padding=\(0, 2\) and kernel_size=\(2, 2\)"):
            pool(a, 2, 1, (0, 2))
        with pytest.raises(ValueError, match=r"\(1, 2, 5, 5\).*kernel_size=\(7, 7\).*too small"):
            pool(a, 7)
        with pytest.raises(ValueError, match=r"kernel_size=\(6, 1\)"):
            pool(a, (6, 1), padding=0)
        with pytest.raises(TypeError, match=r"int32"):
            pool(gm.array(np.zeros((1, 1, 4, 4), np.int32), backend=backend), 2)
        # a window area past 64 bits made the average's divisor 0 (inf); 2**70 did not fit
        # a kernel argument
        with pytest.raises(ValueError, match=r"kernel_size \(4294967296, 4294967296\) is too "
                                             r"large"):
            pool(a, 2**32, padding=2**31)
        with pytest.raises(ValueError, match=r"stride \(1180591620717411303424, 2\) is too large"):
            pool(a, 2, (2**70, 2))
        with pytest.raises(TypeError, match=r"kernel_size .* got 2.5"):
            pool(a, 2.5)
        with pytest.raises(TypeError, match=r"kernel_size .* got \(2, 2, 2\)"):
            pool(a, (2, 2, 2))
        with pytest.raises(TypeError, match=r"stride .* got 'x'"):
            pool(a, 2, "x")
        with pytest.raises(TypeError, match=r"stride .* got 2.5"):
            pool(a, 2, 2.5)
        with pytest.raises(TypeError, match=r"padding .* got True"):
            pool(a, 2, 2, True)
        with pytest.raises(ValueError, match=r"\(1, 0, 4, 4\)"):
            pool(gm.array(np.zeros((1, 0, 4, 4), np.float32), backend=backend), 2)
    # backward: gradient / indices / input shape that do not fit the forward
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 2, 2, 2\).*\(1, 2, 3, 3\)"):
        gm.max_pool2d_backward(g2, idx, (1, 2, 5, 5), 2, ceil_mode=True)
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 2, 2, 2\).*\(1, 2, 1, 1\)"):
        gm.avg_pool2d_backward(g2, (1, 2, 5, 5), 3)
    with pytest.raises(ValueError, match=r"indices have shape \(1, 2, 2, 2\).*\(1, 2, 1, 1\)"):
        gm.max_pool2d_backward(gm.zeros((1, 2, 1, 1), backend=backend), idx, (1, 2, 5, 5), 3)
    with pytest.raises(TypeError, match=r"indices must be int64.*int32"):
        gm.max_pool2d_backward(g2, idx.astype("int32"), (1, 2, 5, 5), 2)
    with pytest.raises(TypeError, match=r"grad_out .*int32"):
        gm.avg_pool2d_backward(g2.astype("int32"), (1, 2, 5, 5), 2)
    with pytest.raises(ValueError, match=r"input_shape .*\(5, 5\)"):
        gm.avg_pool2d_backward(g2, (5, 5), 2)
    with pytest.raises(ValueError, match=r"padding=\(3, 3\)"):
        gm.avg_pool2d_backward(g2, (1, 2, 5, 5), 2, 1, 3)
    # global pooling
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        gm.global_avg_pool2d(gm.zeros((2, 3), backend=backend))
    with pytest.raises(TypeError, match=r"int32"):
        gm.global_avg_pool2d(gm.array(np.zeros((1, 1, 2, 2), np.int32), backend=backend))
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 2, 2, 2\).*\(1, 2, 1, 1\)"):
        gm.global_avg_pool2d_backward(g2, (1, 2, 5, 5))
