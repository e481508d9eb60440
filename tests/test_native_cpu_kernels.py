"""The cpu backend's native kernels (kernels/cpu/: pooling, im2col / col2im, bias +
activation and their gradients): the compiled kernel against its NumPy twin (the array-module
method the cpu backend falls back to) and an independent reference (torch, or loops written
from the specification), over awkward shapes (1, primes, an empty batch, large), special
values, every input check of the module itself, and the fallback when the module is
missing (batch norm's kernels take part in that one; test_batchnorm.py tests the rest)."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpumat as gm
import gpumat.native as native
from gpumat.backends import get as get_backend
from gpumat.backends.array_module import ArrayModuleBackend
from gpumat.backends.base import ACTIVATIONS

pytestmark = pytest.mark.skipif(native._native is None,
                                reason=f"gpumat._native is not built: {native.native_import_error}")

DTYPES = [np.float32, np.float64]
CPU = get_backend("cpu")


@pytest.fixture(autouse=True)
def _lowering_only(monkeypatch):
    """gm.conv2d here runs the lowering these kernels serve, not the direct convolutions
    that the cpu backend prefers for most layers (tests/test_cpu_direct_conv.py)."""
    from gpumat.backends import cpu_conv
    monkeypatch.setattr(cpu_conv, "FORCE", False)

#: (input shape, kernel, stride, padding, ceil_mode): 1s, primes, overhanging ceil windows,
#: overlapping and disjoint windows, an empty batch, and one large input
POOL_CASES = [
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0), False),
    ((2, 3, 7, 11), (2, 2), (2, 2), (0, 0), False),
    ((2, 3, 7, 11), (2, 2), (2, 2), (0, 0), True),
    ((1, 2, 13, 5), (3, 3), (2, 2), (1, 1), False),
    ((1, 2, 13, 5), (3, 3), (2, 2), (1, 1), True),
    ((3, 1, 9, 9), (3, 2), (1, 3), (1, 1), True),
    ((1, 5, 6, 8), (2, 3), (3, 2), (0, 1), False),
    ((2, 2, 5, 7), (5, 7), (1, 1), (2, 3), False),
    ((1, 1, 17, 19), (4, 4), (4, 4), (0, 0), False),
    ((1, 1, 31, 29), (3, 3), (1, 1), (0, 0), True),
    ((0, 3, 8, 8), (2, 2), (2, 2), (0, 0), False),
    ((8, 16, 64, 64), (2, 2), (2, 2), (0, 0), False),
    ((4, 6, 28, 28), (2, 2), (2, 2), (0, 0), False),      # LeNet's pools
    ((5, 16, 10, 10), (2, 2), (2, 2), (0, 0), False),     # ... 5 outputs a row (4 + 1)
    ((2, 3, 9, 8), (2, 2), (2, 2), (0, 0), False),        # 2x2 rows of exactly 4
    ((2, 3, 6, 7), (2, 2), (2, 2), (0, 0), False),        # 2x2 rows of 3: the general path
    ((3, 5, 8, 8), (8, 8), (8, 8), (0, 0), False),        # one window a plane (ResNet's end)
    ((2, 3, 7, 9), (6, 9), (2, 2), (0, 0), False),        # ... from the corner, a row short
]


def pool_out_hw(shape, kernel, stride, padding, ceil_mode):
    return tuple(gm.pooling.pool2d_output_size(shape[2 + a], kernel[a], stride[a], padding[a],
                                               ceil_mode) for a in range(2))


def pool_case(case):
    """A POOL_CASES entry with its output size appended."""
    return tuple(case) + (pool_out_hw(*case),)


def special_values(shape, dtype, seed):
    """Small integers (ties in every window) with NaN, +-inf and signed zeros mixed in."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=shape).astype(np.float64)
    u = rng.random(shape)
    x[u < 0.05] = np.nan
    x[(u >= 0.05) & (u < 0.1)] = -np.inf
    x[(u >= 0.1) & (u < 0.12)] = np.inf
    x[(u >= 0.12) & (u < 0.2)] = -0.0
    return x.astype(dtype)


def assert_identical(got, want):
    """Same shape, dtype and bits (NaN where NaN, zeros with their signs)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype,
                                                                  want.shape, want.dtype)
    np.testing.assert_array_equal(got, want)
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def twin(method, *args):
    """The NumPy twin: the array-module method the cpu backend inherits, run on it."""
    return getattr(ArrayModuleBackend, method)(CPU, *args)


# ---- pooling --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool_matches_twin_and_torch(case, dtype):
    shape, kernel, stride, padding, ceil_mode, out_hw = pool_case(case)
    x = special_values(shape, dtype, seed=sum(shape))
    for with_indices in (False, True):
        out, index = CPU.pool2d(x, "max", kernel, stride, padding, ceil_mode, True, out_hw,
                                return_indices=with_indices)
        twin_out, twin_index = twin("pool2d", x, "max", kernel, stride, padding, ceil_mode,
                                    True, out_hw, with_indices)
        assert out.flags.c_contiguous and out.flags.writeable
        np.testing.assert_array_equal(out, twin_out)       # NaN payloads may differ
        if with_indices:
            assert_identical(index, twin_index)
    if x.shape[0]:
        t_out, t_index = F.max_pool2d(torch.from_numpy(x), kernel, stride, padding,
                                      ceil_mode=ceil_mode, return_indices=True)
        np.testing.assert_array_equal(out, t_out.numpy())
        assert_identical(index, t_index.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 5), (0, 4, 3, 3), (32, 64, 8, 8),
                                   (3, 2, 61, 67)])
def test_global_avg_pool_is_the_float64_mean(shape, dtype, monkeypatch):
    """Each plane summed in float64 from +0.0 and divided once, natively and by the NumPy
    twin alike (a plane of -0.0 gives +0.0, NaN and infinities propagate), and torch's
    adaptive average to float rounding."""
    x = special_values(shape, dtype, seed=sum(shape) + 3)
    if x.size:
        x[0, 0] = -0.0
    with np.errstate(invalid="ignore"):
        want = (x.astype(np.float64).sum(axis=(2, 3), keepdims=True, initial=0.0)
                / (shape[2] * shape[3])).astype(dtype)
    def same(got):          # equal values and zero signs (a NaN's sign depends on the order)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        numbers = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))

    got = CPU.global_avg_pool2d(x)
    assert got.flags.c_contiguous
    same(got)
    monkeypatch.setattr(native, "kernels", lambda: None)
    same(CPU.global_avg_pool2d(x))
    if x.size:
        finite = np.random.default_rng(1).standard_normal(shape).astype(dtype)
        np.testing.assert_allclose(
            CPU.global_avg_pool2d(finite),
            F.adaptive_avg_pool2d(torch.from_numpy(finite), 1).numpy(),
            rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_avg_pool_matches_twin_and_torch(case, count_include_pad, dtype):
    shape, kernel, stride, padding, ceil_mode, out_hw = pool_case(case)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    out, index = CPU.pool2d(x, "avg", kernel, stride, padding, ceil_mode, count_include_pad,
                            out_hw)
    assert index is None
    twin_out, _ = twin("pool2d", x, "avg", kernel, stride, padding, ceil_mode,
                       count_include_pad, out_hw)
    # the same additions in the same order, except the twin's reshaped sum for big tiles
    # (whose other order can differ by a few float32 ulps of the window's terms, so an
    # absolute margin too where a mean of 64 values nearly cancels)
    np.testing.assert_allclose(out, twin_out, rtol=1e-6 if dtype == np.float32 else 1e-14,
                               atol=1e-6 if dtype == np.float32 else 1e-14)
    if not (tuple(stride) == tuple(kernel) and kernel[0] * kernel[1] >= 16):
        assert_identical(out, twin_out)
    ref = F.avg_pool2d(torch.from_numpy(x.astype(np.float64)), kernel, stride, padding,
                       ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-6)


def foreign_indices(index, shape, seed):
    """The forward's indices with a quarter replaced by random ones: in other windows,
    outside the plane, negative."""
    rng = np.random.default_rng(seed)
    plane = shape[2] * shape[3]
    replace = rng.random(index.shape) < 0.25
    return np.where(replace, rng.integers(-plane, 2 * plane, size=index.shape), index)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("foreign", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool_backward_matches_twin_and_torch(case, foreign, dtype):
    shape, kernel, stride, padding, ceil_mode, out_hw = pool_case(case)
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    _, index = CPU.pool2d(x, "max", kernel, stride, padding, ceil_mode, True, out_hw)
    grad = np.random.default_rng(3).standard_normal(shape[:2] + out_hw).astype(dtype)
    grad.reshape(-1)[::7] = -0.0                  # a -0.0 gradient keeps its sign when assigned
    if foreign:
        index = foreign_indices(index, shape, seed=4)
    got = CPU.pool2d_backward(grad, index, shape, "max", kernel, stride, padding, True, out_hw)
    assert_identical(got, twin("pool2d_backward", grad, index, shape, "max", kernel, stride,
                               padding, True, out_hw))
    if not foreign and shape[0]:
        t = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        F.max_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode).backward(
            torch.from_numpy(grad.astype(np.float64)))
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_avg_pool_backward_matches_twin_and_torch(case, count_include_pad, dtype):
    shape, kernel, stride, padding, ceil_mode, out_hw = pool_case(case)
    grad = np.random.default_rng(5).standard_normal(shape[:2] + out_hw).astype(dtype)
    got = CPU.pool2d_backward(grad, None, shape, "avg", kernel, stride, padding,
                              count_include_pad, out_hw)
    assert_identical(got, twin("pool2d_backward", grad, None, shape, "avg", kernel, stride,
                               padding, count_include_pad, out_hw))
    if shape[0]:
        t = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        F.avg_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode,
                     count_include_pad=count_include_pad).backward(
            torch.from_numpy(grad.astype(np.float64)))
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_pooling_generic_backward_agrees_with_forced_generic_twin(monkeypatch):
    """The twin's overlapping-window (scatter-add) path gives the same bits as its disjoint
    one, and the native kernel matches both."""
    from gpumat.backends import pool_array_module
    shape, kernel, stride = (2, 3, 9, 10), (2, 2), (2, 2)
    out_hw = pool_out_hw(shape, kernel, stride, (0, 0), True)
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    _, index = CPU.pool2d(x, "max", kernel, stride, (0, 0), True, True, out_hw)
    grad = np.random.default_rng(7).standard_normal(shape[:2] + out_hw).astype(np.float32)
    got = CPU.pool2d_backward(grad, index, shape, "max", kernel, stride, (0, 0), True, out_hw)
    monkeypatch.setattr(pool_array_module, "FORCE_GENERIC", True)
    generic = twin("pool2d_backward", grad, index, shape, "max", kernel, stride, (0, 0), True,
                   out_hw)
    np.testing.assert_array_equal(got, generic)


# ---- im2col / col2im ------------------------------------------------------------------------

#: (input shape, kernel, stride, padding, dilation)
CONV_CASES = [
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 7, 11), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 13, 5), (5, 3), (2, 3), (2, 0), (1, 2)),
    ((3, 1, 9, 9), (2, 2), (3, 1), (3, 2), (2, 1)),
    ((0, 3, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((64, 1, 32, 32), (5, 5), (1, 1), (0, 0), (1, 1)),    # LeNet's convolutions
    ((64, 6, 14, 14), (5, 5), (1, 1), (0, 0), (1, 1)),
    ((2, 7, 3, 3), (3, 3), (2, 2), (5, 5), (1, 1)),       # padding wider than the input
]


def conv_out_hw(shape, kernel, stride, padding, dilation):
    return tuple((shape[2 + a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1)
                 // stride[a] + 1 for a in range(2))


def reference_im2col(x, kernel, stride, padding, dilation, out_hw):
    """Loops over the specification of Backend.im2col."""
    n, c, h, w = x.shape
    cols = np.zeros((n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1]), x.dtype)
    for ci in range(c):
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                row = (ci * kernel[0] + i) * kernel[1] + j
                for oh in range(out_hw[0]):
                    for ow in range(out_hw[1]):
                        hh = oh * stride[0] - padding[0] + i * dilation[0]
                        ww = ow * stride[1] - padding[1] + j * dilation[1]
                        if 0 <= hh < h and 0 <= ww < w:
                            cols[:, row, oh * out_hw[1] + ow] = x[:, ci, hh, ww]
    return cols


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_im2col_and_col2im_match_twin_and_reference(case, dtype):
    shape, kernel, stride, padding, dilation = case
    out_hw = conv_out_hw(shape, kernel, stride, padding, dilation)
    x = special_values(shape, dtype, seed=8)
    args = (kernel, stride, padding, dilation, out_hw)
    cols = CPU.im2col(x, *args)
    assert_identical(cols, twin("im2col", x, *args))
    if shape[0] <= 3:
        assert_identical(cols, reference_im2col(x, *args))
    g = np.random.default_rng(9).standard_normal(cols.shape).astype(dtype)
    back = CPU.col2im(g, shape, *args)
    assert_identical(back, twin("col2im", g, shape, *args))
    out = np.full(cols.shape, np.nan, dtype)         # the in-place form writes every entry
    assert native._native.im2col(x, *args, out=out) is None
    assert_identical(out, cols)
    # adjointness: <im2col(x), g> == <x, col2im(g)>
    x64 = np.random.default_rng(10).standard_normal(shape)
    lhs = np.sum(native._native.im2col(x64, *args) * g.astype(np.float64))
    rhs = np.sum(x64 * native._native.col2im(g.astype(np.float64), shape, *args))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_conv2d_through_native_lowering_matches_torch():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 3, 11, 13)).astype(np.float32)
    w = rng.standard_normal((7, 3, 3, 5)).astype(np.float32)
    geometry = dict(stride=(2, 2), padding=(1, 0), dilation=(1, 2))
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    tw = torch.from_numpy(w.astype(np.float64)).requires_grad_()
    ty = F.conv2d(tx, tw, **geometry)
    g = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.from_numpy(g.astype(np.float64)))
    X, W, G = (gm.array(a, backend="cpu") for a in (x, w, g))
    np.testing.assert_allclose(gm.conv2d(X, W, **geometry).gather(), ty.detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gm.conv2d_backward_input(G, W, x.shape, **geometry).gather(),
                               tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gm.conv2d_backward_weight(G, X, w.shape, **geometry).gather(),
                               tw.grad.numpy(), rtol=1e-4, atol=1e-3)


# ---- activations ----------------------------------------------------------------------------

ACT_SHAPES = [((1,), 0), ((7,), 0), ((3, 5), 1), ((2, 3, 5, 7), 1), ((1, 13, 1, 17), 3),
              ((0, 4, 3), 1), ((64, 6, 28, 28), 1), ((64, 120), 1), ((5, 3, 2), 0)]


def kink_values(shape, dtype, seed):
    """Normal values with every activation's kinks and the specials mixed in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 4
    specials = np.array([0.0, -0.0, 6.0, -1e-30, 1e-30, np.nan, np.inf, -np.inf, 5.999, 6.001])
    flat = x.reshape(-1)
    if flat.size:
        picks = rng.random(flat.size) < 0.3
        flat[picks] = rng.choice(specials, size=int(picks.sum()))
    return x.astype(dtype)


def torch_reference(act, param, x):
    t = torch.from_numpy(x.astype(np.float64))
    return {"identity": lambda: t, "relu": lambda: F.relu(t),
            "leaky_relu": lambda: F.leaky_relu(t, param), "relu6": lambda: F.relu6(t),
            "elu": lambda: F.elu(t, param)}[act]().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("shape_axis", ACT_SHAPES, ids=str)
def test_bias_act_matches_twin_and_torch(shape_axis, act, dtype):
    shape, axis = shape_axis
    x = kink_values(shape, dtype, seed=13)
    param = 0.3
    for b in (None, np.random.default_rng(14).standard_normal(shape[axis]).astype(dtype)):
        got = CPU.bias_act(x, b, axis, act, param)
        want = twin("bias_act", x, b, axis, act, param)
        if act == "elu":          # libm's expm1 and NumPy's may differ in the last bit
            np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0)
        else:
            assert_identical(got, want)
        biased = x if b is None else x + np.expand_dims(
            b, tuple(i for i in range(x.ndim) if i != axis))
        np.testing.assert_allclose(got, torch_reference(act, param, biased),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("shape_axis", ACT_SHAPES, ids=str)
def test_act_backward_matches_twin(shape_axis, act, dtype):
    shape, _ = shape_axis
    x = kink_values(shape, dtype, seed=15)
    grad = kink_values(shape, dtype, seed=16)
    got = CPU.act_backward(grad, x, act, 0.7)
    want = twin("act_backward", grad, x, act, 0.7)
    if act == "elu":
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0)
    else:
        assert_identical(got, want)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "relu6", "elu"])
def test_act_backward_matches_torch_autograd(act):
    x = kink_values((4, 33), np.float64, seed=17)
    x[np.isnan(x)] = 1.0        # torch's vectorised loops disagree with its scalar ones at NaN
    grad = np.random.default_rng(18).standard_normal(x.shape)
    t = torch.from_numpy(x).requires_grad_()
    param = 0.7
    out = {"relu": lambda: F.relu(t), "leaky_relu": lambda: F.leaky_relu(t, param),
           "relu6": lambda: F.relu6(t), "elu": lambda: F.elu(t, param)}[act]()
    out.backward(torch.from_numpy(grad))
    np.testing.assert_allclose(CPU.act_backward(grad, x, act, param), t.grad.numpy(),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_axis", ACT_SHAPES + [((3, 1000, 7), 1), ((2000, 3), 0)], ids=str)
def test_bias_grad_matches_twin_and_float64(shape_axis, dtype):
    shape, axis = shape_axis
    grad = np.random.default_rng(19).standard_normal(shape).astype(dtype)
    got = CPU.bias_grad(grad, axis)
    assert got.dtype == dtype and got.shape == (shape[axis],)
    exact = grad.astype(np.float64).sum(axis=tuple(i for i in range(grad.ndim) if i != axis))
    # accumulated in float64: one rounding, better than the twin's float32 sums
    np.testing.assert_allclose(got, exact.astype(dtype), rtol=1e-6 if dtype == np.float32
                               else 1e-13, atol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(got, twin("bias_grad", grad, axis), rtol=1e-4, atol=1e-4)


# ---- the module's own input checks ----------------------------------------------------------

def test_native_kernels_reject_bad_input_with_exceptions():
    K = native._native
    x = np.zeros((2, 3, 8, 8), np.float32)
    pair = (2, 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.pool2d_max(x.astype(np.int32), pair, pair, (0, 0), (4, 4), True)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.im2col(x.astype(np.float16), pair, (1, 1), (0, 0), (1, 1), (7, 7))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.pool2d_avg(x[:, :, ::2], pair, pair, (0, 0), (2, 4), True)
    with pytest.raises(ValueError, match="4-dimensional"):
        K.pool2d_max(x[0], pair, pair, (0, 0), (4, 4), True)
    with pytest.raises(ValueError, match="kernel must be at least 1"):
        K.pool2d_max(x, (0, 2), pair, (0, 0), (4, 4), True)
    with pytest.raises(ValueError, match="padding must be at least 0"):
        K.im2col(x, pair, (1, 1), (-1, 0), (1, 1), (7, 7))
    with pytest.raises(TypeError, match="indices must be int64"):
        K.pool2d_max_backward(np.zeros((2, 3, 4, 4), np.float32),
                              np.zeros((2, 3, 4, 4), np.int32), (8, 8), pair, pair, (0, 0))
    with pytest.raises(ValueError, match="indices have shape"):
        K.pool2d_max_backward(np.zeros((2, 3, 4, 4), np.float32),
                              np.zeros((2, 3, 4, 3), np.int64), (8, 8), pair, pair, (0, 0))
    with pytest.raises(ValueError, match="cols has shape"):
        K.col2im(np.zeros((2, 12, 48), np.float32), (2, 3, 8, 8), pair, (1, 1), (0, 0),
                 (1, 1), (7, 7))
    with pytest.raises(ValueError, match="out has shape"):
        K.im2col(x, pair, (1, 1), (0, 0), (1, 1), (7, 7), out=np.zeros((2, 12, 48), np.float32))
    with pytest.raises(TypeError, match="they must match"):
        K.im2col(x, pair, (1, 1), (0, 0), (1, 1), (7, 7), out=np.zeros((2, 12, 49)))
    read_only = np.zeros((2, 12, 49), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(TypeError):          # nanobind refuses a read-only output
        K.im2col(x, pair, (1, 1), (0, 0), (1, 1), (7, 7), out=read_only)
    with pytest.raises(TypeError, match="they must match"):
        K.act_backward(np.zeros(3, np.float32), np.zeros(3, np.float64), 1, 0.0)
    with pytest.raises(ValueError, match="grad has shape"):
        K.act_backward(np.zeros(3, np.float32), np.zeros(4, np.float32), 1, 0.0)
    with pytest.raises(ValueError, match="unknown activation code 9"):
        K.bias_act(np.zeros(3, np.float32), None, 0, 9, 0.0)
    with pytest.raises(ValueError, match="bias has 2 elements"):
        K.bias_act(np.zeros((3, 4), np.float32), np.zeros(2, np.float32), 1, 1, 0.0)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        K.bias_grad(np.zeros((3, 4), np.float32), 2)
    with pytest.raises(TypeError):          # not an array at all: nanobind's own TypeError
        K.act_backward([1.0], [1.0], 1, 0.0)


def test_same_bytes_compares_memory_not_values():
    K = native._native
    a = np.array([0.0, np.nan, 1.5], np.float32)
    assert K.same_bytes(a, a.copy())                    # NaN == NaN bitwise
    b = a.copy()
    b[0] = -0.0                                         # equal value, other bits
    assert not K.same_bytes(a, b)
    assert not K.same_bytes(a, a[:2].copy())
    assert K.same_bytes(np.zeros((0, 3)), np.zeros((3, 0)))


def test_windows_outside_the_input_do_not_crash():
    """Geometry the Python layer would reject (windows past the input) reads nothing
    outside it: every window is clipped."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out, index = native._native.pool2d_max(x, (2, 2), (3, 3), (0, 0), (4, 4), True)
    assert out.shape == (1, 1, 4, 4) and index.shape == out.shape
    native._native.pool2d_avg(x, (2, 2), (3, 3), (1, 1), (5, 5), False)
    native._native.im2col(x, (2, 2), (3, 3), (0, 0), (1, 1), (9, 9))


# ---- the fallback when the module is missing ------------------------------------------------

def run_lenet_ops():
    """Every native entry point once, through the public gm functions, on cpu."""
    rng = np.random.default_rng(20)
    x = gm.array(rng.standard_normal((3, 2, 12, 12)).astype(np.float32), backend="cpu")
    w = gm.array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), backend="cpu")
    b = gm.array(rng.standard_normal(4).astype(np.float32), backend="cpu")
    y = gm.bias_relu(gm.conv2d(x, w, padding=1), b)
    p, idx = gm.max_pool2d(y, 2, return_indices=True)
    a = gm.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    gp = gm.max_pool2d_backward(p, idx, y.shape, 2)
    ga = gm.avg_pool2d_backward(a, y.shape, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    gy = gm.relu_backward(gp + ga, y)
    gx = gm.conv2d_backward_input(gy, w, x.shape, padding=1)
    gw = gm.conv2d_backward_weight(gy, x, w.shape, padding=1)
    gb = gm.bias_add_backward(gy, axis=1)
    bn = gm.batch_norm_forward(y, b, b)
    bn_grads = gm.batch_norm_backward(gy, y, bn.mean, bn.inv_std, b)
    bn_eval = gm.batch_norm_forward(y, b, None, bn.mean, bn.var)
    bn_eval_grads = gm.batch_norm_backward(gy, y, bn.mean, bn_eval.inv_std, b, training=False)
    return [t.gather() for t in (y, p, idx, a, gp, ga, gy, gx, gw, gb, *bn, *bn_grads,
                                 bn_eval.y, *bn_eval_grads)]


def test_fallback_to_numpy_twins_warns_once_and_agrees(monkeypatch):
    with_native = run_lenet_ops()
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_fallback_warned", False)
    monkeypatch.setattr(native, "native_import_error", "ImportError: simulated for the test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        without = run_lenet_ops()
        run_lenet_ops()
    fallback = [w for w in caught if issubclass(w.category, native.NativeFallbackWarning)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    assert "simulated for the test" in str(fallback[0].message)
    for got, want in zip(without, with_native):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_native_results_are_writable_arrays():
    """Results own their memory and take in-place writes (setitem on the Array layer)."""
    y = gm.relu(gm.array(np.ones((2, 3), np.float32), backend="cpu"))
    y[0, 0] = 5
    np.testing.assert_array_equal(y.gather(), [[5, 1, 1], [1, 1, 1]])


# ---- the columns remembered between a forward pass and its weight gradient ------------------

def weight_gradient_reference(x, g, w_shape, padding):
    tx = torch.from_numpy(x.astype(np.float64))
    tw = torch.zeros(w_shape, dtype=torch.float64, requires_grad=True)
    F.conv2d(tx, tw, padding=padding).backward(torch.from_numpy(g.astype(np.float64)))
    return tw.grad.numpy()


def test_remembered_columns_never_serve_a_changed_input():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((4, 5, 9, 9)).astype(np.float32)
    X, W, G = (gm.array(a, backend="cpu") for a in (x, w, g))
    gm.conv2d(X, W, padding=1)                      # remembers X's columns
    X[1, 2, 3, 4] = 100.0                           # an in-place write in between
    x[1, 2, 3, 4] = 100.0
    got = gm.conv2d_backward_weight(G, X, w.shape, padding=1).gather()
    np.testing.assert_allclose(got, weight_gradient_reference(x, g, w.shape, 1), rtol=1e-4,
                               atol=1e-3)
    # another input of the same shape reuses the entry's buffers, with its own columns
    y = rng.standard_normal(x.shape).astype(np.float32)
    Y = gm.array(y, backend="cpu")
    gm.conv2d(Y, W, padding=1)
    got = gm.conv2d_backward_weight(G, X, w.shape, padding=1).gather()
    np.testing.assert_allclose(got, weight_gradient_reference(x, g, w.shape, 1), rtol=1e-4,
                               atol=1e-3)


def test_remembered_columns_are_read_only_and_counted_as_held():
    x = np.random.default_rng(22).standard_normal((2, 3, 6, 6)).astype(np.float32)
    CPU._columns.clear()
    native._native.clear_buffer_cache()     # freed native results kept for reuse
    assert CPU.memory_info()["bytes_held"] == 0
    cols = CPU.im2col(x, (3, 3), (1, 1), (1, 1), (1, 1), (6, 6), shared=True)
    assert not cols.flags.writeable
    assert_identical(cols, CPU.im2col(x, (3, 3), (1, 1), (1, 1), (1, 1), (6, 6)))
    assert CPU.memory_info()["bytes_held"] == cols.nbytes + x.nbytes
    assert CPU.im2col(x.copy(), (3, 3), (1, 1), (1, 1), (1, 1), (6, 6), shared=True) is cols
    CPU._columns.clear()
    assert CPU.memory_info()["bytes_held"] == 0


def test_remembered_columns_are_per_thread():
    """Threads lowering inputs of one shape at once never see each other's columns."""
    import threading
    rng = np.random.default_rng(23)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    inputs = [rng.standard_normal((3, 2, 8, 8)).astype(np.float32) for _ in range(4)]
    expected = [F.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy() for x in inputs]
    failures = []

    def work(i):
        X, W = gm.array(inputs[i], backend="cpu"), gm.array(w, backend="cpu")
        for _ in range(30):
            got = gm.conv2d(X, W).gather()
            if not np.allclose(got, expected[i], rtol=1e-4, atol=1e-4):
                failures.append(i)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
