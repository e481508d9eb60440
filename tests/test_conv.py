"""gpumat.conv: conv2d forward and gradients against PyTorch, im2col/col2im against NumPy,
the lowering paths (one batched matmul, 1x1 without im2col, depthwise direct) and every
argument error, on every available backend."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import gpumat as gm
from gpumat.backends import get as get_backend

from conftest import TESTED

#: the ``backend`` fixture only names a backend, so sharing it across examples is safe
_FIXTURE_OK = [HealthCheck.function_scoped_fixture]


def _tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-10) if np.dtype(dtype) == np.float64 else \
        dict(rtol=2e-4, atol=2e-4)


def _torch_reference(x, w, b, grad_out, stride, padding, dilation, groups):
    """(y, grad_x, grad_w, grad_b) from torch in float64 (grad_out None: forward only)."""
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    if grad_out is None:
        return ty.detach().numpy(), None, None, None
    ty.backward(torch.tensor(grad_out, dtype=torch.float64))
    return (ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(),
            None if tb is None else tb.grad.numpy())


def _output_shape(x_shape, w_shape, stride, padding, dilation):
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    oh = (x_shape[2] + 2 * ph - dh * (w_shape[2] - 1) - 1) // sh + 1
    ow = (x_shape[3] + 2 * pw - dw * (w_shape[3] - 1) - 1) // sw + 1
    return (x_shape[0], w_shape[0], oh, ow)


def check_conv(backend, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1,
               bias=True, dtype=np.float64, seed=0):
    """Forward and all three gradients of one convolution against torch."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    grad_out = rng.standard_normal(_output_shape(x_shape, w_shape, stride, padding,
                                                 dilation)).astype(dtype)
    y_ref, gx_ref, gw_ref, gb_ref = _torch_reference(x, w, b, grad_out, stride, padding,
                                                     dilation, groups)
    tol = _tolerance(dtype)
    X, W = gm.array(x, backend=backend), gm.array(w, backend=backend)
    B = None if b is None else gm.array(b, backend=backend)
    G = gm.array(grad_out, backend=backend)
    y = gm.conv2d(X, W, B, stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert y.dtype == np.dtype(dtype) and y.backend == backend
    np.testing.assert_allclose(y.gather(), y_ref, **tol, err_msg="forward")
    gx = gm.conv2d_backward_input(G, W, x_shape, stride, padding, dilation, groups)
    np.testing.assert_allclose(gx.gather(), gx_ref, **tol, err_msg="grad input")
    gw = gm.conv2d_backward_weight(G, X, w_shape, stride, padding, dilation, groups)
    np.testing.assert_allclose(gw.gather(), gw_ref, **tol, err_msg="grad weight")
    if bias:
        gb = gm.conv2d_backward_bias(G)
        np.testing.assert_allclose(gb.gather(), gb_ref, **tol, err_msg="grad bias")
    for result in (y, gx, gw):
        assert result.dtype == np.dtype(dtype)


# ---- forward and gradients against torch ------------------------------------------------------

AWKWARD = {
    # name: (x shape, w shape, stride, padding, dilation, groups)
    "plain_3x3": ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    "one_pixel_image": ((2, 3, 1, 1), (5, 3, 1, 1), 1, 0, 1, 1),
    "one_pixel_padded": ((1, 2, 1, 1), (3, 2, 3, 3), 1, 1, 1, 1),
    "kernel_equals_padded_input": ((2, 2, 3, 4), (3, 2, 5, 6), 1, 1, 1, 1),
    "stride_over_kernel": ((2, 3, 11, 9), (4, 3, 2, 2), 3, 0, 1, 1),
    "rectangular_everything": ((1, 4, 9, 13), (6, 2, 3, 2), (2, 3), (1, 2), (2, 1), 2),
    "dilation_3": ((2, 2, 13, 11), (3, 2, 3, 3), 1, 2, 3, 1),
    "dilation_2_stride_2": ((2, 4, 10, 10), (4, 2, 3, 3), 2, 1, 2, 2),
    "primes": ((3, 5, 7, 11), (7, 5, 3, 5), (2, 3), (1, 2), 1, 1),
    "groups_2": ((2, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2),
    "depthwise": ((2, 5, 7, 8), (5, 1, 3, 3), 1, 1, 1, 5),
    "depthwise_multiplier_2": ((2, 3, 8, 9), (6, 1, 3, 3), 2, 1, 2, 3),
    "depthwise_multiplier_3_rect": ((1, 2, 6, 7), (6, 1, 2, 3), (1, 2), (0, 1), (2, 1), 2),
    "depthwise_1x1": ((2, 4, 5, 5), (8, 1, 1, 1), 1, 0, 1, 4),
    "depthwise_long_reduction": ((3, 2, 17, 16), (4, 1, 3, 3), 1, 1, 1, 2),
    "pointwise": ((3, 4, 5, 6), (7, 4, 1, 1), 1, 0, 1, 1),
    "pointwise_dilated": ((3, 4, 5, 6), (7, 4, 1, 1), 1, 0, 3, 1),
    "pointwise_grouped": ((2, 6, 4, 3), (4, 3, 1, 1), 1, 0, 1, 2),
    "pointwise_stride_2": ((2, 3, 5, 6), (4, 3, 1, 1), 2, 0, 1, 1),
    "pointwise_padded": ((2, 3, 4, 4), (4, 3, 1, 1), 1, 1, 1, 1),
    "single_input_channel": ((2, 1, 6, 6), (4, 1, 3, 3), 1, 1, 1, 1),
    "batch_1": ((1, 3, 8, 8), (2, 3, 5, 5), 2, 2, 1, 1),
    "empty_batch": ((0, 3, 5, 5), (4, 3, 3, 3), 1, 1, 1, 1),
    "empty_batch_depthwise": ((0, 3, 5, 5), (3, 1, 3, 3), 1, 1, 1, 3),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(AWKWARD), ids=list(AWKWARD))
def test_conv2d_matches_torch(backend, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = AWKWARD[case]
    check_conv(backend, x_shape, w_shape, stride, padding, dilation, groups, dtype=dtype)


def test_conv2d_without_bias_and_with_numpy_operands(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    X = gm.array(x, backend=backend)
    y = gm.conv2d(X, w, padding=1)             # a NumPy weight is uploaded to X's backend
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    assert y.backend == backend
    np.testing.assert_allclose(y.gather(), ref, rtol=1e-10, atol=1e-10)


@st.composite
def conv_params(draw):
    groups_kind = draw(st.sampled_from(["one", "two", "depthwise"]))
    if groups_kind == "depthwise":
        c = draw(st.integers(1, 4))
        groups = c
        w_in = 1
        out_channels = c * draw(st.integers(1, 2))
    else:
        groups = 1 if groups_kind == "one" else 2
        w_in = draw(st.integers(1, 3))
        c = groups * w_in
        out_channels = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # image at least as large as the dilated kernel minus the padding (output >= 1)
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 7))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 7))
    n = draw(st.integers(1, 3))
    return ((n, c, h, w), (out_channels, w_in, kh, kw), (sh, sw), (ph, pw), (dh, dw), groups)


@settings(max_examples=40, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(params=conv_params(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_hypothesis_float64(backend, params, bias, seed):
    x_shape, w_shape, stride, padding, dilation, groups = params
    check_conv(backend, x_shape, w_shape, stride, padding, dilation, groups, bias=bias,
               seed=seed)


@settings(max_examples=15, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(params=conv_params(), seed=st.integers(0, 2**16))
def test_conv2d_hypothesis_float32(backend, params, seed):
    x_shape, w_shape, stride, padding, dilation, groups = params
    check_conv(backend, x_shape, w_shape, stride, padding, dilation, groups, dtype=np.float32,
               seed=seed)


# ---- which path runs ------------------------------------------------------------------------

class _Counter:
    """Counts calls of chosen backend methods (patched on the instance)."""

    def __init__(self, monkeypatch, backend, names):
        self.calls = {name: 0 for name in names}
        for name in names:
            original = getattr(backend, name, None)
            if original is None:        # a hook this backend does not have (conv_gemm)
                continue

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)
            monkeypatch.setattr(backend, name, counted)


_PATH_METHODS = ["im2col", "col2im", "matmul", "conv_gemm", "depthwise_conv2d",
                 "depthwise_conv2d_backward_input", "depthwise_conv2d_backward_weight"]


def _calls(backend, x_shape, w_shape, **kw):
    """Zero-argument callables running the forward and the two gradients of one conv."""
    rng = np.random.default_rng(0)
    X = gm.array(rng.standard_normal(x_shape), backend=backend)
    W = gm.array(rng.standard_normal(w_shape), backend=backend)
    y = gm.conv2d(X, W, **kw)
    return {"forward": lambda: gm.conv2d(X, W, **kw),
            "input": lambda: gm.conv2d_backward_input(y, W, x_shape, **kw),
            "weight": lambda: gm.conv2d_backward_weight(y, X, w_shape, **kw)}


def _lowering_only(monkeypatch):
    """cpu: the lowering's own paths, without the direct kernels that run first
    (gpumat/backends/cpu_conv.py; tests/test_cpu_direct_conv.py tests those)."""
    from gpumat.backends import cpu_conv
    monkeypatch.setattr(cpu_conv, "FORCE", False)


def _counts(monkeypatch, backend, call):
    _lowering_only(monkeypatch)
    counter = _Counter(monkeypatch, get_backend(backend), _PATH_METHODS)
    call()
    monkeypatch.undo()
    return {k: v for k, v in counter.calls.items() if v}


def test_general_path_is_one_im2col_and_one_batched_matmul(backend, monkeypatch):
    calls = _calls(backend, (4, 4, 6, 6), (6, 2, 3, 3), padding=1, groups=2)
    assert _counts(monkeypatch, backend, calls["forward"]) == {"im2col": 1, "matmul": 1}
    assert _counts(monkeypatch, backend, calls["input"]) == {"matmul": 1, "col2im": 1}
    assert _counts(monkeypatch, backend, calls["weight"]) == {"im2col": 1, "matmul": 1}


def _product(backend):
    """The backend method that runs the ungrouped convolution's products."""
    return "conv_gemm" if hasattr(get_backend(backend), "conv_gemm") else "matmul"


def test_pointwise_path_skips_im2col(backend, monkeypatch):
    calls = _calls(backend, (3, 4, 5, 5), (6, 4, 1, 1), dilation=2)
    product = _product(backend)
    assert _counts(monkeypatch, backend, calls["forward"]) == {product: 1}
    assert _counts(monkeypatch, backend, calls["input"]) == {product: 1}
    assert _counts(monkeypatch, backend, calls["weight"]) == {product: 1}


def test_ungrouped_path_is_one_im2col_and_one_product(backend, monkeypatch):
    calls = _calls(backend, (3, 4, 6, 6), (5, 4, 3, 3), padding=1)
    product = _product(backend)
    assert _counts(monkeypatch, backend, calls["forward"]) == {"im2col": 1, product: 1}
    assert _counts(monkeypatch, backend, calls["input"]) == {product: 1, "col2im": 1}
    assert _counts(monkeypatch, backend, calls["weight"]) == {"im2col": 1, product: 1}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((3, 5, 9, 9), (16, 5, 3, 3), 1, 1),      # C_out 16: the narrow (N <= 16) parameters
    ((1, 7, 8, 10), (20, 7, 3, 3), 1, 1),     # one image: no sum over the batch
    ((2, 3, 11, 10), (33, 3, 5, 5), 2, 2),    # C_out over a column block, ragged edges
    ((4, 2, 6, 6), (3, 2, 3, 3), 1, 0),       # C_out far below a vector of columns
])
def test_direct_gemm_path_matches_torch(backend, x_shape, w_shape, stride, padding, dtype):
    """Shapes around the conv_gemm parameters' edges (opencl; elsewhere the matmul path)."""
    check_conv(backend, x_shape, w_shape, stride, padding, dtype=dtype)


def test_conv_gemm_parameters_on_cpu_devices():
    if "opencl" not in TESTED:
        pytest.skip("opencl backend not available")
    from gpumat.backends import opencl_conv, opencl_gemm
    b = get_backend("opencl")
    tuned = opencl_gemm.parameters(b)[0]
    narrow, wide = (opencl_conv.conv_gemm_parameters(b, n) for n in (16, 17))
    if tuned["WGM"] == 1 and tuned["WGN"] == 1 and not tuned.get("USE_LOCAL"):
        assert (narrow["NWI"], narrow["MWI"], wide["NWI"], wide["MWI"]) == (1, 4, 1, 8)
    else:
        assert narrow == wide == tuned


def test_depthwise_path_runs_the_direct_kernels(backend, monkeypatch):
    calls = _calls(backend, (2, 3, 6, 6), (6, 1, 3, 3), padding=1, groups=3)
    assert _counts(monkeypatch, backend, calls["forward"]) == {"depthwise_conv2d": 1}
    assert _counts(monkeypatch, backend, calls["input"]) == {"depthwise_conv2d_backward_input": 1}
    assert _counts(monkeypatch, backend, calls["weight"]) == {"depthwise_conv2d_backward_weight": 1}


def test_opencl_kernels_cover_more_work_than_the_grid(monkeypatch):
    """The grid-stride loops: force tiny grids so every work-item handles several elements."""
    if "opencl" not in TESTED:
        pytest.skip("opencl backend not available")
    from gpumat.backends import opencl_conv
    monkeypatch.setattr(opencl_conv, "_MAX_GROUPS", 2)
    check_conv("opencl", (2, 3, 9, 8), (6, 1, 3, 3), 1, 1, 1, 3, dtype=np.float64)
    check_conv("opencl", (2, 3, 9, 8), (4, 3, 3, 2), 2, 1, 2, 1, dtype=np.float64)


@pytest.mark.parametrize("defines", [dict(CONV_RUN=1, CONV_DW_RUN=1, CONV_WG=64),
                                     dict(CONV_RUN=3, CONV_DW_RUN=5, CONV_WG=128)])
def test_opencl_kernel_tunables(monkeypatch, defines):
    """Other run lengths and work-group sizes give the same results (the CUDA build uses the
    defaults; tuning may pick others)."""
    if "opencl" not in TESTED:
        pytest.skip("opencl backend not available")
    from gpumat.backends import opencl_conv
    monkeypatch.setattr(opencl_conv, "DEFINES", dict(opencl_conv.DEFINES, **defines))
    for case in ("rectangular_everything", "depthwise_multiplier_2", "depthwise_long_reduction",
                 "stride_over_kernel"):
        check_conv("opencl", *AWKWARD[case], dtype=np.float64)


# ---- im2col and col2im ----------------------------------------------------------------------

def im2col_reference(x, kernel, stride, padding, dilation):
    """Straight from the definition, one element at a time."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = np.zeros((n, c, kh, kw, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            for r in range(oh):
                for s in range(ow):
                    ih, iw = r * sh - ph + i * dh, s * sw - pw + j * dw
                    if 0 <= ih < h and 0 <= iw < w:
                        cols[:, :, i, j, r, s] = x[:, :, ih, iw]
    return cols.reshape(n, c * kh * kw, oh * ow)


def col2im_reference(cols, input_shape, kernel, stride, padding, dilation):
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    blocks = cols.reshape(n, c, kh, kw, oh, ow)
    x = np.zeros(input_shape, np.float64)
    for i in range(kh):
        for j in range(kw):
            for r in range(oh):
                for s in range(ow):
                    ih, iw = r * sh - ph + i * dh, s * sw - pw + j * dw
                    if 0 <= ih < h and 0 <= iw < w:
                        x[:, :, ih, iw] += blocks[:, :, i, j, r, s]
    return x


@st.composite
def lowering_params(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    hw = tuple(max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, 6))
               for k, p, d in zip(kernel, padding, dilation))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) + hw
    return shape, kernel, stride, padding, dilation


@settings(max_examples=40, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(params=lowering_params(), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_im2col_col2im_match_numpy_and_are_adjoint(backend, params, seed, dtype):
    shape, kernel, stride, padding, dilation = params
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    cols_ref = im2col_reference(x, kernel, stride, padding, dilation)
    cols = gm.im2col(gm.array(x, backend=backend), kernel, stride, padding, dilation)
    assert cols.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cols.gather(), cols_ref)          # a pure copy: exact

    c = rng.standard_normal(cols_ref.shape).astype(dtype)
    back = gm.col2im(gm.array(c, backend=backend), shape, kernel, stride, padding, dilation)
    assert back.shape == shape and back.dtype == np.dtype(dtype)
    tol = _tolerance(dtype)
    np.testing.assert_allclose(back.gather(), col2im_reference(c, shape, kernel, stride,
                                                               padding, dilation), **tol)
    # <im2col(x), c> == <x, col2im(c)>
    lhs = float(np.sum(cols.gather().astype(np.float64) * c))
    rhs = float(np.sum(x.astype(np.float64) * back.gather().astype(np.float64)))
    assert lhs == pytest.approx(rhs, rel=tol["rtol"] * 10, abs=tol["atol"] * 10)


def test_im2col_int_arguments_and_layout(backend):
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    cols = gm.im2col(gm.array(x, backend=backend), 2)
    assert cols.shape == (2, 8, 4)
    # row (c=1, i=0, j=1), column (oh=1, ow=0) reads x[n, 1, 1, 1]
    np.testing.assert_array_equal(cols.gather()[:, 1 * 4 + 0 * 2 + 1, 1 * 2 + 0], x[:, 1, 1, 1])


def test_col2im_overlaps_add_up(backend):
    # a 3x3 kernel, stride 1, padding 1 on a 4x4 image: each pixel is read by as many windows
    # as there are taps that land on it
    shape = (1, 1, 4, 4)
    ones = gm.array(np.ones((1, 9, 16), np.float32), backend=backend)
    counts = gm.col2im(ones, shape, 3, padding=1).gather()
    expected = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], np.float32)
    np.testing.assert_array_equal(counts[0, 0], expected)


# ---- argument errors ------------------------------------------------------------------------

def _arrays(backend, x_shape=(2, 4, 5, 5), w_shape=(6, 2, 3, 3), dtype=np.float32):
    return (gm.zeros(x_shape, dtype=dtype, backend=backend),
            gm.zeros(w_shape, dtype=dtype, backend=backend))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(stride=0), gm.ShapeError, "stride"),
    (dict(stride=(1, -2)), gm.ShapeError, "stride"),
    (dict(dilation=0), gm.ShapeError, "dilation"),
    (dict(padding=-1), gm.ShapeError, "padding"),
    (dict(padding=(0, -3)), gm.ShapeError, "padding"),
    (dict(stride=1.5), TypeError, "stride"),
    (dict(padding=(1, 2, 3)), TypeError, "padding"),
    (dict(dilation=True), TypeError, "dilation"),
    (dict(groups=0), gm.ShapeError, "groups"),
    (dict(groups=2.0), TypeError, "groups"),
    (dict(groups=3), gm.ShapeError, "groups"),     # 4 channels != 3 * 2
    (dict(groups=4), gm.ShapeError, "groups"),     # 4 != 4 * 2
])
def test_conv2d_bad_hyperparameters(backend, kwargs, error, words):
    x, w = _arrays(backend)
    kwargs = dict(dict(groups=2), **kwargs)
    with pytest.raises(error, match=words):
        gm.conv2d(x, w, **kwargs)


def test_conv2d_bad_shapes(backend):
    x, w = _arrays(backend)
    with pytest.raises(gm.ShapeError, match=r"x must be 4-d"):
        gm.conv2d(gm.zeros((4, 5, 5), backend=backend), w, groups=2)
    with pytest.raises(gm.ShapeError, match=r"w must be 4-d"):
        gm.conv2d(x, gm.zeros((6, 2, 3), backend=backend), groups=2)
    with pytest.raises(gm.ShapeError, match=r"x has 4 channels.*groups \* w.shape\[1\] = 2"):
        gm.conv2d(x, w)                                      # groups=1 but w expects 2
    with pytest.raises(gm.ShapeError, match="output channels are not a multiple of groups"):
        gm.conv2d(x, gm.zeros((5, 2, 3, 3), backend=backend), groups=2)
    with pytest.raises(gm.ShapeError, match="kernel height 7.*padded input height 5"):
        gm.conv2d(x, gm.zeros((6, 2, 7, 3), backend=backend), groups=2)
    with pytest.raises(gm.ShapeError, match="kernel width 3 with dilation 3 spans 7"):
        gm.conv2d(x, w, groups=2, dilation=(1, 3))
    with pytest.raises(gm.ShapeError, match=r"bias must have shape \(6,\)"):
        gm.conv2d(x, w, gm.zeros((5,), backend=backend), groups=2)
    with pytest.raises(gm.ShapeError, match=r"bias must have shape \(6,\)"):
        gm.conv2d(x, w, gm.zeros((1, 6), backend=backend), groups=2)
    # exactly fitting is fine: kernel == padded input gives a 1x1 output
    assert gm.conv2d(x, gm.zeros((6, 2, 7, 7), backend=backend), groups=2,
                     padding=1).shape == (2, 6, 1, 1)


def test_conv2d_bad_dtypes(backend):
    x, w = _arrays(backend)
    with pytest.raises(gm.DtypeError, match=r"x must be single .*int32"):
        gm.conv2d(gm.zeros((2, 4, 5, 5), dtype="int32", backend=backend), w, groups=2)
    with pytest.raises(gm.DtypeError, match=r"w must be single .*uint8"):
        gm.conv2d(x, gm.zeros((6, 2, 3, 3), dtype="uint8", backend=backend), groups=2)
    with pytest.raises(gm.DtypeError, match=r"bias must be single .*bool"):
        gm.conv2d(x, w, gm.zeros((6,), dtype="logical", backend=backend), groups=2)
    if get_backend(backend).supports_float64:
        with pytest.raises(gm.DtypeError, match=r"dtypes differ \(x is float32, w is float64\)"):
            gm.conv2d(x, gm.zeros((6, 2, 3, 3), dtype="double", backend=backend), groups=2)
        with pytest.raises(gm.DtypeError, match="bias is float64"):
            gm.conv2d(x, w, gm.zeros((6,), dtype="double", backend=backend), groups=2)
    with pytest.raises(TypeError):                           # DtypeError is a TypeError
        gm.conv2d(x, gm.zeros((6, 2, 3, 3), dtype="int32", backend=backend), groups=2)


def test_conv2d_backend_mismatch():
    others = [b for b in TESTED if b != "cpu"]
    if "cpu" not in TESTED or not others:
        pytest.skip("needs two backends")
    x, _ = _arrays("cpu")
    _, w = _arrays(others[0])
    with pytest.raises(gm.BackendMismatchError):
        gm.conv2d(x, w, groups=2)


def test_backward_bad_arguments(backend):
    x, w = _arrays(backend)
    g = gm.zeros((2, 6, 3, 3), backend=backend)
    with pytest.raises(gm.ShapeError, match="grad_out has shape"):
        gm.conv2d_backward_input(gm.zeros((2, 6, 4, 3), backend=backend), w, x.shape, groups=2)
    with pytest.raises(gm.ShapeError, match="input_shape must be a 4-tuple"):
        gm.conv2d_backward_input(g, w, (2, 4, 5), groups=2)
    with pytest.raises(gm.ShapeError, match="input_shape has 4 channels"):
        gm.conv2d_backward_input(g, w, x.shape, groups=1)
    with pytest.raises(gm.ShapeError, match="padding must be non-negative"):
        gm.conv2d_backward_input(g, w, x.shape, padding=-1, groups=2)
    with pytest.raises(gm.ShapeError, match="grad_out must be 4-d"):
        gm.conv2d_backward_input(gm.zeros((6, 3, 3), backend=backend), w, x.shape, groups=2)
    with pytest.raises(gm.ShapeError, match="grad_out has shape"):
        gm.conv2d_backward_weight(gm.zeros((2, 5, 3, 3), backend=backend), x, w.shape, groups=2)
    with pytest.raises(gm.ShapeError, match="weight_shape must be a 4-tuple"):
        gm.conv2d_backward_weight(g, x, (6, 2, 3), groups=2)
    with pytest.raises(gm.ShapeError, match="stride must be positive"):
        gm.conv2d_backward_weight(g, x, w.shape, stride=0, groups=2)
    with pytest.raises(gm.ShapeError, match="x must be 4-d"):
        gm.conv2d_backward_weight(g, gm.zeros((4, 5, 5), backend=backend), w.shape, groups=2)
    with pytest.raises(gm.DtypeError, match="x must be single"):
        gm.conv2d_backward_weight(g, gm.zeros(x.shape, dtype="int32", backend=backend),
                                  w.shape, groups=2)
    with pytest.raises(gm.DtypeError, match="grad_out must be single"):
        gm.conv2d_backward_bias(gm.zeros((2, 6, 3, 3), dtype="int32", backend=backend))
    with pytest.raises(gm.ShapeError, match="grad_out must be 4-d"):
        gm.conv2d_backward_bias(gm.zeros((6, 3, 3), backend=backend))


def test_lowering_bad_arguments(backend):
    x, _ = _arrays(backend)
    with pytest.raises(gm.ShapeError, match="kernel_size must be positive"):
        gm.im2col(x, 0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        gm.im2col(x, "3")
    with pytest.raises(gm.ShapeError, match="x must be 4-d"):
        gm.im2col(gm.zeros((4, 5, 5), backend=backend), 3)
    with pytest.raises(gm.ShapeError, match="kernel height 6"):
        gm.im2col(x, 6)
    with pytest.raises(gm.DtypeError, match="x must be single"):
        gm.im2col(gm.zeros(x.shape, dtype="int32", backend=backend), 3)
    cols = gm.im2col(x, 3, padding=1)
    with pytest.raises(gm.ShapeError, match="cols has shape"):
        gm.col2im(cols, x.shape, 3)                           # padding forgotten
    with pytest.raises(gm.ShapeError, match="cols must be 3-d"):
        gm.col2im(cols.reshape(2, 36, 5, 5), x.shape, 3, padding=1)
    with pytest.raises(gm.ShapeError, match="input_shape"):
        gm.col2im(cols, (2, 4, -5, 5), 3, padding=1)
    with pytest.raises(gm.ShapeError, match="dilation must be positive"):
        gm.col2im(cols, x.shape, 3, padding=1, dilation=(1, 0))


# ---- conv2d_backward_input as a forward convolution (stride 1) ------------------------------

def _force_forward_route(monkeypatch):
    from gpumat import conv as conv_module
    _lowering_only(monkeypatch)
    monkeypatch.setattr(conv_module, "BACKWARD_INPUT_WEIGHT_RATIO", 0)
    monkeypatch.setattr(conv_module, "BACKWARD_INPUT_AREA_RATIO", 1e9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, padding, dilation", [
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1),                 # "same" padding
    ((2, 3, 9, 8), (5, 3, 3, 3), 0, 1),                 # no padding: full transposed padding
    ((1, 2, 10, 12), (3, 2, 3, 5), (2, 4), (1, 1)),     # padding = kernel span - 1
    ((2, 2, 13, 11), (3, 2, 3, 2), (1, 2), (3, 2)),     # dilation, rectangular kernel
    ((1, 3, 5, 5), (2, 3, 5, 5), 2, 1),                 # kernel as large as the padded input
])
def test_backward_input_by_forward_conv_matches_torch(backend, monkeypatch, x_shape, w_shape,
                                                      padding, dilation, dtype):
    _force_forward_route(monkeypatch)
    check_conv(backend, x_shape, w_shape, 1, padding, dilation, dtype=dtype)


def test_backward_input_routes(backend, monkeypatch):
    """Forced: one im2col and one product, no col2im; stride 2 or grouped: the col2im path."""
    _force_forward_route(monkeypatch)
    product = _product(backend)
    calls = _calls(backend, (2, 3, 6, 6), (4, 3, 3, 3), padding=1)
    assert _counts(monkeypatch, backend, calls["input"]) == {"im2col": 1, product: 1}
    _force_forward_route(monkeypatch)
    calls = _calls(backend, (2, 3, 7, 7), (4, 3, 3, 3), padding=1, stride=2)
    assert _counts(monkeypatch, backend, calls["input"]) == {product: 1, "col2im": 1}
    _force_forward_route(monkeypatch)
    calls = _calls(backend, (2, 4, 6, 6), (4, 2, 3, 3), padding=1, groups=2)
    assert _counts(monkeypatch, backend, calls["input"]) == {"matmul": 1, "col2im": 1}


def test_backward_input_route_thresholds():
    from gpumat import conv as conv_module
    geometry = conv_module._Geometry("t", (32, 32), (3, 3), 1, 1, 1)
    assert conv_module._as_forward_conv((8, 16, 32, 32), (16, 16, 3, 3), geometry, 1)
    assert not conv_module._as_forward_conv((1, 256, 32, 32), (384, 256, 3, 3), geometry, 1)
    assert not conv_module._as_forward_conv((8, 16, 32, 32), (16, 16, 3, 3), geometry, 2)
    unpadded = conv_module._Geometry("t", (14, 14), (5, 5), 1, 0, 1)    # 196 vs 100 pixels
    assert not conv_module._as_forward_conv((8, 6, 14, 14), (1, 6, 5, 5), unpadded, 1)
    too_padded = conv_module._Geometry("t", (8, 8), (3, 3), 1, 3, 1)    # padding > span - 1
    assert not conv_module._as_forward_conv((64, 64, 8, 8), (1, 64, 3, 3), too_padded, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 4, 2), (0, 3, 2), (2, 0, 3)])
def test_opencl_batch_sum_transpose(monkeypatch, shape, dtype):
    """conv2d_backward_weight's last step on opencl: the batch sum of (R x K) products,
    transposed; tiny grids make work-items loop."""
    if "opencl" not in TESTED:
        pytest.skip("opencl backend not available")
    from gpumat.backends import opencl_conv
    monkeypatch.setattr(opencl_conv, "_MAX_GROUPS", 1)
    b = get_backend("opencl")
    a = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    if a.size == 0:
        a = np.zeros(shape, dtype)
    held = gm.array(a, backend="opencl") if a.size else None     # keeps the buffer alive
    native = held._live if a.size else b.empty(shape, dtype)
    got = b.to_numpy(b.batch_sum_transpose(native))
    np.testing.assert_allclose(got, a.sum(axis=0).T, rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("direct", [None, False])
def test_bias_gives_the_bits_of_adding_it_after(backend, direct, monkeypatch):
    """gm.conv2d(x, w, b) is gm.conv2d(x, w) + b bit for bit on every backend: the cpu
    backend's direct kernel adds b as it stores its results, im2col + GEMM (direct=False) and
    the other backends in one pass of their bias kernel."""
    from gpumat.backends import cpu_conv
    monkeypatch.setattr(cpu_conv, "FORCE", direct)
    rng = np.random.default_rng(11)
    for x_shape, w_shape, stride, padding in [((3, 6, 14, 14), (16, 6, 5, 5), 1, 0),
                                              ((2, 5, 9, 7), (7, 5, 3, 3), 2, 1),
                                              ((1, 3, 1, 1), (4, 3, 1, 1), 1, 0)]:
        x = gm.array(rng.standard_normal(x_shape).astype(np.float32), backend=backend)
        w = gm.array(rng.standard_normal(w_shape).astype(np.float32), backend=backend)
        b_host = rng.standard_normal(w_shape[0]).astype(np.float32)
        b_host[:3] = [-0.0, np.inf, np.nan]
        b = gm.array(b_host, backend=backend)
        got = gm.conv2d(x, w, b, stride=stride, padding=padding).gather()
        want = gm.conv2d(x, w, stride=stride, padding=padding).gather() \
            + b_host.reshape(1, -1, 1, 1)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
