"""gpumat/normalization.py (gm.batch_norm_forward / gm.batch_norm_backward) on every backend:
forward against torch.nn.functional.batch_norm and NumPy float64 statistics, backward against
torch autograd, awkward shapes (C = 1, H*W = 1, N = 1, primes, empty batches), affine and
not, training and evaluation, large means with small spreads, every kernel variant of the
opencl backend, the cpu backend's native kernels against their NumPy twin (the fallback to
it is test_native_cpu_kernels.py's), and every argument check."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpumat as gm
import gpumat.native as native
from gpumat import nn
from gpumat.backends import base as backend_base
from gpumat.backends import get as get_backend
from gpumat.backends.array_module import ArrayModuleBackend
from gpumat.errors import BackendMismatchError, DtypeError, ShapeError

from conftest import AVAILABLE
from quick_paths import compare_paths, count_short_calls

DTYPES = [np.float32, np.float64]
#: N x C, N x C x H x W and N x C x L: C = 1, H*W = 1, N = 1 (with more than one value per
#: channel), primes, long rows (the row kernels), short ones (the flat kernels), wide N x C
SHAPES = [(8, 5), (2, 1), (1, 3, 2, 2), (4, 3, 5, 6), (2, 1, 1, 3), (3, 7, 1, 1),
          (5, 13, 11, 7), (2, 3, 17, 19), (3, 70), (2, 3, 5), (2, 4, 8, 9)]
EPS = 1e-5


def _skip_double(backend, dtype):
    if np.dtype(dtype) == np.float64 and not get_backend(backend).supports_float64:
        pytest.skip(f"{backend} device has no float64")


def _axes(ndim):
    return (0,) + tuple(range(2, ndim))


def _column(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def _tolerance(dtype, scale=1.0):
    """rtol and atol for results of magnitude ``scale`` (float32 sums of a few thousand
    terms: about 1e-6 relative)."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-5, atol=2e-5 * scale)
    return dict(rtol=1e-10, atol=1e-11 * scale)


def _close(result, expected, dtype, what, scale=None):
    assert isinstance(result, gm.Array), f"{what}: expected a gm.Array, got {type(result)}"
    got = result.gather()
    expected = np.asarray(expected, np.float64)
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype} != {np.dtype(dtype)}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    if scale is None:
        scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got.astype(np.float64), expected, err_msg=what,
                               **_tolerance(dtype, scale))


def _data(shape, dtype, seed, scale=2.0, offset=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + offset).astype(dtype)


def _torch_case(x, w, b, g, training, running):
    """torch's forward and autograd gradients in float64 for the given (cast) values."""
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    tw = None if w is None else torch.tensor(w.astype(np.float64), requires_grad=True)
    tb = None if b is None else torch.tensor(b.astype(np.float64), requires_grad=True)
    rm, rv = (None, None) if running is None else (torch.tensor(running[0].astype(np.float64)),
                                                   torch.tensor(running[1].astype(np.float64)))
    y = F.batch_norm(t, rm, rv, tw, tb, training, 0.1, EPS)
    y.backward(torch.tensor(g.astype(np.float64)))
    grads = [None if v is None else v.grad.numpy() for v in (t, tw, tb)]
    return y.detach().numpy(), grads


# ---- values against torch ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_backward_match_torch(backend, shape, training, affine, dtype):
    _skip_double(backend, dtype)
    c = shape[1]
    x, g = _data(shape, dtype, 1), _data(shape, dtype, 2, offset=0.0)
    w = _data((c,), dtype, 3) if affine else None
    b = _data((c,), dtype, 4) if affine else None
    running = None if training else (_data((c,), dtype, 5),
                                     (np.random.default_rng(6).uniform(0.3, 3.0, c)).astype(dtype))
    y_ref, (dx_ref, dw_ref, db_ref) = _torch_case(x, w, b, g, training, running)
    put = lambda v: None if v is None else gm.array(v, backend=backend)
    X, G, W, B = put(x), put(g), put(w), put(b)
    if training:
        out = gm.batch_norm_forward(X, W, B, eps=EPS)
        x64 = x.astype(np.float64)
        mean_ref, var_ref = x64.mean(axis=_axes(x.ndim)), x64.var(axis=_axes(x.ndim))
    else:
        out = gm.batch_norm_forward(X, W, B, put(running[0]), put(running[1]), eps=EPS)
        mean_ref, var_ref = running
    assert isinstance(out, gm.BatchNormForward)
    _close(out.y, y_ref, dtype, "y")
    _close(out.mean, mean_ref, dtype, "mean")
    _close(out.var, var_ref, dtype, "var")
    _close(out.inv_std, 1 / np.sqrt(np.asarray(var_ref, np.float64) + EPS), dtype, "inv_std")
    grads = gm.batch_norm_backward(G, X, out.mean, out.inv_std, W, training=training)
    assert isinstance(grads, gm.BatchNormGradients)
    _close(grads.x, dx_ref, dtype, "dx")
    # without weight and bias, their gradients are still the per-channel sums
    xhat = (x.astype(np.float64) - _column(mean_ref, x.ndim)) * _column(
        1 / np.sqrt(np.asarray(var_ref, np.float64) + EPS), x.ndim)
    g64 = g.astype(np.float64)
    _close(grads.bias, g64.sum(axis=_axes(x.ndim)) if db_ref is None else db_ref, dtype, "dbias")
    _close(grads.weight, (g64 * xhat).sum(axis=_axes(x.ndim)) if dw_ref is None else dw_ref,
           dtype, "dweight")


def test_training_with_one_value_per_channel_gives_the_bias(backend):
    """torch refuses M = 1 in training; here the variance is 0, so y is the bias."""
    x = gm.array(np.array([[3.0, -1.0, 7.5]], np.float32), backend=backend)
    b = gm.array(np.array([0.5, -2.0, 1.0], np.float32), backend=backend)
    out = gm.batch_norm_forward(x, gm.ones(3, backend=backend), b)
    _close(out.y, [[0.5, -2.0, 1.0]], np.float32, "y")
    _close(out.var, np.zeros(3), np.float32, "var")
    grads = gm.batch_norm_backward(gm.ones((1, 3), backend=backend), x, out.mean, out.inv_std)
    _close(grads.x, np.zeros((1, 3)), np.float32, "dx")


def test_defaults_are_training_without_statistics_and_evaluation_with_them(backend):
    x = _data((6, 4, 3, 3), np.float32, 7)
    X = gm.array(x, backend=backend)
    rm, rv = gm.zeros(4, backend=backend), gm.ones(4, backend=backend) * 4.0
    _close(gm.batch_norm_forward(X).y,
           (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
               x.astype(np.float64).var(axis=(0, 2, 3), keepdims=True) + EPS), np.float32, "y")
    _close(gm.batch_norm_forward(X, mean=rm, var=rv).y, x / np.sqrt(4.0 + EPS), np.float32,
           "y eval")
    _close(gm.batch_norm_forward(X, mean=rm, var=rv, eps=0.5).y, x / np.sqrt(4.5),
           np.float32, "y eval, eps 0.5")


def test_evaluation_returns_the_statistics_it_used_as_values(backend):
    """The returned mean and var are the running statistics, and stay so when the running
    buffers are later updated in place (a backward pass still sees what the forward used)."""
    rm, rv = gm.array(np.float32([1, 2]), backend=backend), gm.array(np.float32([4, 9]),
                                                                         backend=backend)
    out = gm.batch_norm_forward(gm.ones((3, 2), backend=backend), mean=rm, var=rv)
    rm += 10.0
    rv *= 0.0
    np.testing.assert_array_equal(out.mean.gather(), [1, 2])
    np.testing.assert_array_equal(out.var.gather(), [4, 9])
    np.testing.assert_array_equal(rm.gather(), [11, 12])


def test_nn_batch_norm_in_evaluation_keeps_its_statistics_for_backward(backend):
    x = _data((4, 3, 2, 2), np.float64, 8)
    if not gm.zeros(1, backend=backend)._backend.supports_float64:
        x = x.astype(np.float32)
    mean0, var0 = _data((3,), x.dtype, 9), np.float64([0.5, 1.5, 2.5]).astype(x.dtype)
    rm, rv = gm.array(mean0, backend=backend), gm.array(var0, backend=backend)
    v = nn.Variable(gm.array(x, backend=backend), requires_grad=True)
    w = nn.Variable(gm.array(np.ones(3, x.dtype) * 2, backend=backend), requires_grad=True)
    y = nn.functional.batch_norm(v, rm, rv, w, None, training=False)
    rm += 5.0                        # moved after the forward pass, before backward
    (y * y).sum().backward()
    y_ref, (dx_ref, dw_ref, _) = _torch_case(x, np.ones(3, x.dtype) * 2, None,
                                             2 * y.data.gather(), False, (mean0, var0))
    _close(v.grad, dx_ref, x.dtype, "dx")
    _close(w.grad, dw_ref, x.dtype, "dweight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_options_skip_what_is_not_asked_for(backend, dtype):
    _skip_double(backend, dtype)
    shape = (5, 3, 4, 4)
    x, g = _data(shape, dtype, 10), _data(shape, dtype, 11)
    w = _data((3,), dtype, 12)
    X, G, W = (gm.array(v, backend=backend) for v in (x, g, w))
    out = gm.batch_norm_forward(X, W)
    full = gm.batch_norm_backward(G, X, out.mean, out.inv_std, W)
    only_x = gm.batch_norm_backward(G, X, out.mean, out.inv_std, W, param_grads=False)
    only_params = gm.batch_norm_backward(G, X, out.mean, out.inv_std, W, input_grad=False)
    assert only_x.weight is None and only_x.bias is None and only_params.x is None
    np.testing.assert_array_equal(only_x.x.gather(), full.x.gather())
    np.testing.assert_array_equal(only_params.weight.gather(), full.weight.gather())
    np.testing.assert_array_equal(only_params.bias.gather(), full.bias.gather())
    for training in (True, False):
        none = gm.batch_norm_backward(G, X, out.mean, out.inv_std, W, training=training,
                                      input_grad=False, param_grads=False)
        assert tuple(none) == (None, None, None)
    evaluation = gm.batch_norm_backward(G, X, out.mean, out.inv_std, W, training=False,
                                        param_grads=False)
    _close(evaluation.x, g * _column(w * out.inv_std.gather(), 4), dtype, "eval dx")


# ---- large means, small spreads ---------------------------------------------------------------

def _large_mean_case(shape, dtype, seed, spread):
    """1e3 + spread * N(0, 1), with the first value of every channel (and channel 0's first
    row) far out: a one-pass sum of squares, or any sum around that value, goes wrong."""
    x = np.random.default_rng(seed).standard_normal(shape) * spread + 1000.0
    x[0] += 40 * spread
    return x.astype(dtype)


def _exact_moments(x):
    """Per-channel mean (math.fsum: a float64 sum of values near 1e3 is itself off by an
    ulp or two) and the biased variance around it, in float64."""
    channels = np.moveaxis(x.astype(np.float64), 1, 0).reshape(x.shape[1], -1)
    mean = np.array([math.fsum(row) / row.size for row in channels])
    centred = channels - mean[:, None]
    return mean, np.array([math.fsum(row) / row.size for row in centred * centred])


def _check_large_mean(out, x, w, dtype):
    x64 = x.astype(np.float64)
    mean, var = _exact_moments(x)
    ulp = float(np.spacing(np.asarray(1000.0, dtype)))
    rtol = 2e-6 if np.dtype(dtype) == np.float32 else 1e-12
    # the mean's rounding, plus summation errors relative to the spread (not to the mean)
    np.testing.assert_allclose(out.mean.gather(), mean, rtol=0,
                               atol=ulp + rtol * np.sqrt(var).max(), err_msg="mean")
    np.testing.assert_allclose(out.var.gather(), var, rtol=rtol, err_msg="var")
    # y can be no better than the mean's rounding allows: half an ulp of 1e3 over the spread
    inv = 1 / np.sqrt(var + EPS)
    y = (x64 - _column(mean, x.ndim)) * _column(inv * w, x.ndim)
    bound = _column(ulp * inv * np.abs(w), x.ndim) + rtol * np.abs(y) + rtol
    error = np.abs(out.y.gather() - y)
    assert (error <= bound).all(), f"y off by {error.max()} (bound {bound.max()})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spread", [1.0, 1e-2])
@pytest.mark.parametrize("shape", [(64, 6, 16, 16), (300, 7), (5, 3, 1, 1), (9, 2, 7, 5)],
                         ids=str)
def test_large_mean_with_small_spread_stays_accurate(backend, shape, spread, dtype):
    _skip_double(backend, dtype)
    x = _large_mean_case(shape, dtype, 13, spread)
    w = _data((shape[1],), dtype, 14)
    out = gm.batch_norm_forward(gm.array(x, backend=backend), gm.array(w, backend=backend))
    _check_large_mean(out, x, w.astype(np.float64), dtype)


# ---- the opencl kernel variants ----------------------------------------------------------------

#: (name, settings): the CPU-device kernels (one item per channel), the portable kernels with
#: one work-group per channel, with several per channel (chunks and their merge), with the
#: reductions' row walk everywhere or nowhere, and with the maps' flat kernel everywhere
OPENCL_VARIANTS = {
    "per_channel_items": dict(vector=True),
    "groups": dict(vector=False),
    "chunks": dict(vector=False, target_groups=10 ** 6, min_chunk=300),
    "row_walk": dict(vector=False, row_walk=1, target_groups=10 ** 6, min_chunk=50),
    "value_walk": dict(vector=False, row_walk=10 ** 9),
    "flat_maps": dict(vector=False, row_map=10 ** 9),
}
#: long rows, short rows, N x C wide and narrow, one channel, rows not a multiple of 8
OPENCL_SHAPES = [(16, 4, 32, 32), (40, 5, 3, 3), (257, 70), (600, 3), (7, 1, 9, 31),
                 (3, 2, 1, 1), (2, 3, 300)]


def _opencl_variant(monkeypatch, name):
    if "opencl" not in AVAILABLE:
        pytest.skip("opencl unavailable")
    from gpumat.backends import batchnorm_launch, opencl_batchnorm
    settings = OPENCL_VARIANTS[name]
    monkeypatch.setattr(opencl_batchnorm, "CPU_VECTOR_CHANNELS", settings["vector"])
    launcher = opencl_batchnorm._Launcher(get_backend("opencl"))
    if "target_groups" in settings:
        launcher.target_groups = settings["target_groups"]
    monkeypatch.setattr(get_backend("opencl"), "_batch_norm_launcher", launcher, raising=False)
    if "min_chunk" in settings:
        monkeypatch.setattr(backend_base, "BATCH_NORM_MIN_CHUNK", settings["min_chunk"])
    if "row_walk" in settings:
        monkeypatch.setattr(batchnorm_launch, "BATCH_NORM_ROW_WALK", settings["row_walk"])
    if "row_map" in settings:
        monkeypatch.setattr(batchnorm_launch, "ROW_MIN_LENGTH", settings["row_map"])


def _twin(method, *args):
    """The NumPy reference: the array-module method, run on the cpu backend's arrays."""
    return getattr(ArrayModuleBackend, method)(get_backend("cpu"), *args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OPENCL_SHAPES, ids=str)
@pytest.mark.parametrize("variant", sorted(OPENCL_VARIANTS))
def test_opencl_kernel_variants_match_the_numpy_reference(monkeypatch, variant, shape, dtype):
    _opencl_variant(monkeypatch, variant)
    _skip_double("opencl", dtype)
    c = shape[1]
    x, g = _data(shape, dtype, 15), _data(shape, dtype, 16)
    w, b = _data((c,), dtype, 17), _data((c,), dtype, 18)
    rm, rv = _data((c,), dtype, 19), np.abs(_data((c,), dtype, 20)) + np.asarray(0.5, dtype)
    put = lambda v: gm.array(v, backend="opencl")
    for weight, bias, running in ((w, b, None), (None, None, None), (w, None, (rm, rv)),
                                  (None, b, (rm, rv))):
        training = running is None
        stats = (None, None) if training else running
        y, mean, var, inv_std = _twin("batch_norm_forward", x, weight, bias, *stats, EPS)
        out = gm.batch_norm_forward(put(x), None if weight is None else put(weight),
                                    None if bias is None else put(bias),
                                    *(None if s is None else put(s) for s in stats), eps=EPS)
        for got, want, what in ((out.y, y, "y"), (out.mean, mean, "mean"),
                                (out.var, var, "var"), (out.inv_std, inv_std, "inv_std")):
            _close(got, want, dtype, f"{what} ({variant}, training={training})")
        want = _twin("batch_norm_backward", g, x, mean, inv_std, weight, training, True, True)
        got = gm.batch_norm_backward(put(g), put(x), put(mean), put(inv_std),
                                     None if weight is None else put(weight), training=training)
        for r, e, what in zip(got, want, ("dx", "dweight", "dbias")):
            _close(r, e, dtype, f"{what} ({variant}, training={training})")


@pytest.mark.parametrize("variant", sorted(OPENCL_VARIANTS))
def test_opencl_kernel_variants_keep_large_means_accurate(monkeypatch, variant):
    _opencl_variant(monkeypatch, variant)
    for shape in ((64, 3, 16, 16), (2000, 3), (9, 2, 7, 5)):
        x = _large_mean_case(shape, np.float32, 21, 1e-2)
        w = np.float64([1.5, -0.5, 2.0][:shape[1]])
        out = gm.batch_norm_forward(gm.array(x, backend="opencl"),
                                    gm.array(w.astype(np.float32), backend="opencl"))
        _check_large_mean(out, x, w, np.float32)


def test_opencl_map_kernels_over_more_than_65535_rows(monkeypatch):
    """The row kernels launch at most 65535 rows at a time: both launches must be right."""
    _opencl_variant(monkeypatch, "groups")
    for shape in ((65536 + 3, 64), (2, 32768 + 5, 64)):
        x, g = _data(shape, np.float32, 22), _data(shape, np.float32, 23)
        w = _data((shape[1],), np.float32, 24)
        y, mean, var, inv_std = _twin("batch_norm_forward", x, w, None, None, None, EPS)
        out = gm.batch_norm_forward(gm.array(x, backend="opencl"),
                                    gm.array(w, backend="opencl"))
        _close(out.y, y, np.float32, "y")
        want = _twin("batch_norm_backward", g, x, mean, inv_std, w, True, True, False)[0]
        got = gm.batch_norm_backward(gm.array(g, backend="opencl"), gm.array(x, backend="opencl"),
                                     out.mean, out.inv_std, gm.array(w, backend="opencl"),
                                     param_grads=False)
        _close(got.x, want, np.float32, "dx")


# ---- empty inputs -----------------------------------------------------------------------------

def test_empty_batch(backend):
    x = gm.zeros((0, 3, 4, 4), backend=backend)
    rm, rv = gm.zeros(3, backend=backend), gm.ones(3, backend=backend) * 3.0
    with pytest.raises(ShapeError, match=r"at least one value per channel.*\(0, 3, 4, 4\)"):
        gm.batch_norm_forward(x)
    with pytest.raises(ShapeError, match=r"at least one value per channel.*\(0, 3, 4, 4\)"):
        gm.batch_norm_backward(x, x, rm, rv)
    out = gm.batch_norm_forward(x, gm.ones(3, backend=backend), None, rm, rv)
    assert out.y.shape == (0, 3, 4, 4)
    _close(out.inv_std, np.full(3, 1 / np.sqrt(3.0 + EPS)), np.float32, "inv_std")
    grads = gm.batch_norm_backward(x, x, rm, out.inv_std, training=False)
    assert grads.x.shape == (0, 3, 4, 4)
    _close(grads.weight, np.zeros(3), np.float32, "dweight")
    _close(grads.bias, np.zeros(3), np.float32, "dbias")
    # an empty batch of rows, and rows without channels
    assert gm.batch_norm_forward(gm.zeros((4, 0), backend=backend)).y.shape == (4, 0)
    none = gm.zeros((2, 0, 3), backend=backend)
    grads = gm.batch_norm_backward(none, none, gm.zeros(0, backend=backend),
                                   gm.zeros(0, backend=backend))
    assert grads.x.shape == (2, 0, 3) and grads.weight.shape == (0,)


# ---- the cpu backend's native kernels ----------------------------------------------------------

needs_native = pytest.mark.skipif(native._native is None,
                                  reason=f"gpumat._native is not built: "
                                         f"{native.native_import_error}")

#: channel-wise (rows of 16 or more) and column-wise (shorter rows) layouts, one of each
#: large enough to split over the threads
NATIVE_SHAPES = [(8, 5), (3, 70), (4, 3, 5, 6), (2, 3, 17, 19), (1, 2, 4, 4), (5, 13, 1, 1),
                 (6, 2, 15), (0, 3, 2, 2), (256, 64, 16, 16), (65536, 70)]


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NATIVE_SHAPES, ids=str)
def test_native_kernels_match_the_numpy_twin(shape, dtype):
    cpu = get_backend("cpu")
    c = shape[1]
    x, g = _data(shape, dtype, 25), _data(shape, dtype, 26)
    w, b = _data((c,), dtype, 27), _data((c,), dtype, 28)
    rm, rv = _data((c,), dtype, 29), np.abs(_data((c,), dtype, 30)) + np.asarray(0.5, dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for weight, bias, stats in ((w, b, (None, None)), (None, None, (None, None)),
                                (w, None, (rm, rv)), (None, b, (rm, rv))):
        training = stats[0] is None
        if training and shape[0] == 0:
            continue
        got = cpu.batch_norm_forward(x, weight, bias, *stats, EPS)
        want = _twin("batch_norm_forward", x, weight, bias, *stats, EPS)
        for r, e in zip(got, want):
            assert r.dtype == e.dtype and r.shape == e.shape
            np.testing.assert_allclose(r, e, **tol)
        if not training:        # the given statistics come back as they are
            assert got[1] is rm and got[2] is rv
        for input_grad, param_grads in ((True, True), (True, False), (False, True)):
            args = (g, x, got[1], got[3], weight, training, input_grad, param_grads)
            for r, e in zip(cpu.batch_norm_backward(*args), _twin("batch_norm_backward", *args)):
                assert (r is None) == (e is None)
                if r is not None:
                    assert r.dtype == e.dtype and r.shape == e.shape
                    np.testing.assert_allclose(r, e, rtol=tol["rtol"],
                                               atol=tol["atol"] * max(1, np.abs(e).max(initial=0)))


@needs_native
def test_native_kernels_reject_bad_input_with_exceptions():
    K = native._native
    x = np.zeros((2, 3, 4, 4), np.float32)
    v = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        K.batch_norm_forward(x.astype(np.int32), None, None, None, None, EPS)
    with pytest.raises(ValueError, match="at least 2-dimensional"):
        K.batch_norm_forward(np.zeros(3, np.float32), None, None, None, None, EPS)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.batch_norm_forward(x[:, :, ::2], None, None, None, None, EPS)
    with pytest.raises(ValueError, match="weight has 2 elements but x has 3 channels"):
        K.batch_norm_forward(x, np.zeros(2, np.float32), None, None, None, EPS)
    with pytest.raises(TypeError, match="x is float32 but bias is float64"):
        K.batch_norm_forward(x, None, np.zeros(3), None, None, EPS)
    with pytest.raises(ValueError, match="given together"):
        K.batch_norm_forward(x, None, None, v, None, EPS)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        K.batch_norm_forward(x, None, None, None, None, -1.0)
    with pytest.raises(ValueError, match="at least one value per channel"):
        K.batch_norm_forward(np.zeros((0, 3), np.float32), None, None, None, None, EPS)
    with pytest.raises(ValueError, match="grad has shape"):
        K.batch_norm_backward(x[:1], x, v, v, None, True, True, True)
    with pytest.raises(ValueError, match="inv_std has 4 elements"):
        K.batch_norm_backward(x, x, v, np.zeros(4, np.float32), None, True, True, True)
    with pytest.raises(TypeError, match="they must match"):
        K.batch_norm_backward(x, x.astype(np.float64), v, v, None, True, True, True)


def test_memory_is_released(backend):
    """Every buffer a pass makes is either returned or freed (the scratch of the chunked
    reductions, the sums behind dx when no parameter gradient is asked for)."""
    x = gm.array(_data((6, 3, 8, 8), np.float32, 32), backend=backend)
    before = gm.memory_info(backend)["bytes_in_use"]
    with gm.scope():
        out = gm.batch_norm_forward(x, gm.ones(3, backend=backend))
        gm.batch_norm_backward(x, x, out.mean, out.inv_std, param_grads=False)
        gm.batch_norm_backward(x, x, out.mean, out.inv_std, input_grad=False)
        gm.batch_norm_forward(x, mean=out.mean, var=out.var)
    assert gm.memory_info(backend)["bytes_in_use"] == before


# ---- argument checks --------------------------------------------------------------------------

def test_errors_name_the_values(backend):
    x = gm.zeros((2, 3, 4, 4), backend=backend)
    v = gm.zeros(3, backend=backend)
    with pytest.raises(ShapeError, match=r"x must be N x C .*got shape \(5,\)"):
        gm.batch_norm_forward(gm.zeros(5, backend=backend))
    with pytest.raises(DtypeError, match="int32"):
        gm.batch_norm_forward(gm.zeros((2, 3), dtype="int32", backend=backend))
    with pytest.raises(ShapeError, match=r"weight must be 1-d with one value per channel "
                                         r"\(x.shape\[1\] = 3.*got shape \(4,\)"):
        gm.batch_norm_forward(x, gm.zeros(4, backend=backend))
    with pytest.raises(ShapeError, match=r"bias .*got shape \(1, 3\)"):
        gm.batch_norm_forward(x, None, gm.zeros((1, 3), backend=backend))
    with pytest.raises(ValueError, match="pass mean and var only with training=False"):
        gm.batch_norm_forward(x, mean=v, var=v, training=True)
    with pytest.raises(ValueError, match="var missing"):
        gm.batch_norm_forward(x, mean=v)
    with pytest.raises(ValueError, match="mean and var missing"):
        gm.batch_norm_forward(x, training=False)
    with pytest.raises(ShapeError, match=r"var .*got shape \(2,\)"):
        gm.batch_norm_forward(x, mean=v, var=gm.zeros(2, backend=backend))
    for eps in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"eps must be finite and >= 0, got {eps!r}"):
            gm.batch_norm_forward(x, eps=eps)
    for eps in (True, "1e-5", None):
        with pytest.raises(TypeError, match=f"eps must be a real number, got {eps!r}"):
            gm.batch_norm_forward(x, eps=eps)
    with pytest.raises(TypeError, match="training must be True or False, got 1"):
        gm.batch_norm_forward(x, training=1)
    with pytest.raises(ShapeError, match=r"grad has shape \(2, 3, 4, 4\) but x has shape "
                                         r"\(2, 3, 4, 5\)"):
        gm.batch_norm_backward(x, gm.zeros((2, 3, 4, 5), backend=backend), v, v)
    with pytest.raises(ShapeError, match=r"inv_std .*got shape \(2,\)"):
        gm.batch_norm_backward(x, x, v, gm.zeros(2, backend=backend))
    with pytest.raises(TypeError, match="input_grad must be True or False, got None"):
        gm.batch_norm_backward(x, x, v, v, input_grad=None)
    if x._backend.supports_float64:
        with pytest.raises(DtypeError, match="x is float32 but weight is float64"):
            gm.batch_norm_forward(x, v.astype("double"))
        with pytest.raises(DtypeError, match="grad is float32 but x is float64"):
            gm.batch_norm_backward(x, x.astype("double"), v, v)


def test_backends_never_mix():
    others = [n for n in AVAILABLE if n != "cpu"]
    if not others:
        pytest.skip("only the cpu backend is available")
    x = gm.zeros((2, 3), backend="cpu")
    with pytest.raises(BackendMismatchError, match=f"'cpu'.*'{others[0]}'"):
        gm.batch_norm_forward(x, gm.ones(3, backend=others[0]))
    with pytest.raises(BackendMismatchError, match=f"'cpu'.*'{others[0]}'"):
        gm.batch_norm_backward(x, x, gm.zeros(3, backend="cpu"), gm.ones(3, backend=others[0]))


def test_accepts_array_likes():
    out = gm.batch_norm_forward([[1.0, 2.0], [3.0, 6.0]])
    _close(out.y, [[-1, -1], [1, 1]], np.float32, "y", scale=1e2)
    _close(out.mean, [2, 4], np.float32, "mean")


def _evaluation_bits(backend, dtype, shape, affine):
    """Evaluation on ``backend`` against the float operations one by one in NumPy:
    inv_std = 1 / sqrt(var + eps) and y = ((x - mean) * (inv_std * weight)) + bias, each
    rounded on its own (no fused multiply-add)."""
    c = shape[1]
    x = _data(shape, dtype, 41, scale=3.0)
    mean, var = _data((c,), dtype, 42), np.abs(_data((c,), dtype, 43)) + dtype(0.25)
    w, b = (_data((c,), dtype, 44), _data((c,), dtype, 45)) if affine else (None, None)
    put = lambda v: None if v is None else gm.array(v, backend=backend)   # noqa: E731
    out = gm.batch_norm_forward(put(x), put(w), put(b), put(mean), put(var), EPS,
                                training=False)
    inv = dtype(1) / np.sqrt(var + dtype(EPS))
    scale = inv if w is None else inv * w
    y = (x - _column(mean, x.ndim)) * _column(scale, x.ndim)
    if b is not None:
        y = y + _column(b, x.ndim)
    np.testing.assert_array_equal(out.inv_std.gather(), inv)
    np.testing.assert_array_equal(out.y.gather(), y)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_evaluation_is_the_float_operations_bit_for_bit(backend, dtype, affine):
    """The evaluation map is never contracted into FMAs (nor inv_std approximated): every
    backend gives NumPy's bits, which is what lets gm.xnor_conv2d fold a batch norm into
    its packing and still take the very signs the separate layer would give."""
    _skip_double(backend, dtype)
    for shape in [(4, 3, 5, 6), (3, 70), (2, 5, 17, 19)]:
        _evaluation_bits(backend, np.dtype(dtype).type, shape, affine)


@pytest.mark.parametrize("variant", sorted(OPENCL_VARIANTS))
def test_opencl_evaluation_variants_are_the_float_operations(monkeypatch, variant):
    _opencl_variant(monkeypatch, variant)
    for shape in OPENCL_SHAPES:
        for affine in (True, False):
            _evaluation_bits("opencl", np.float32, shape, affine)


def test_the_quick_checks_agree_with_the_full_ones(backend, monkeypatch):
    """gm.batch_norm_forward checks a layer's usual arguments by a short path and everything
    else by the full one: for each call here -- valid ones and ones each check must refuse --
    both give the same result bits (all four results), or the same error and message.  The
    layers' calls take the short path (it must not quietly hand everything to the long one)."""
    from gpumat import normalization

    rng = np.random.default_rng(31)
    c = 6

    def arr(v, dtype=np.float32):
        return gm.array(np.asarray(v, dtype), backend=backend)

    x, x2 = arr(rng.standard_normal((3, c, 4, 5))), arr(rng.standard_normal((7, c)))
    w, b = arr(rng.standard_normal(c)), arr(rng.standard_normal(c))
    m, v = arr(rng.standard_normal(c)), arr(rng.uniform(0.5, 2.0, c))
    released = arr(np.ones(c))
    released.release()
    calls = [
        ((x, w, b, m, v), dict(eps=1e-5)),                        # a BatchNorm2d in eval
        ((x, w, b), dict(eps=1e-5)),                              # ... in training
        ((x2, w, b, m, v), dict(eps=1e-3, training=False)),       # BatchNorm1d
        ((x2, None, None), dict(eps=0.0, training=True)),         # affine=False
        ((x, None, b, m, v), dict(eps=2.0)),
        ((x, w, b, m, v), dict(eps=1)),                           # int eps: the full path
        ((x, w, b, m, v), dict(eps=np.float64(1e-5))),
        # refused
        ((x, w, b, m, v), dict(eps=1e-5, training=np.bool_(False))),
        ((x, w.astype("double"), b), {}),
        ((x, w, b, m, v), dict(eps=1e-5, training=True)),
        ((x, w, b), dict(eps=1e-5, training=False)),
        ((x, w, b, m, None), {}),
        ((x, w, b, m, v), dict(eps=-1.0)),
        ((x, w, b, m, v), dict(eps=float("nan"))),
        ((x, w, b, m, v), dict(eps=float("inf"))),
        ((x, w, b, m, v), dict(eps=True)),
        ((x, w, b, m, v), dict(training=1)),
        ((x, arr(np.ones(c + 1)), b), {}),
        ((x, w, released), {}),
        ((x, w, b, m, arr(np.ones((1, c)))), {}),
        ((arr(np.ones(c)), w, b), {}),                             # 1-d x
        ((arr(np.ones((0, c, 2, 2))), w, b), {}),                  # empty batch in training
        ((arr(np.ones((0, c, 2, 2))), w, b, m, v), {}),            # ... in evaluation
        ((arr(np.ones((3, c)), np.int32), w, b), {}),
        ((released, w, b), {}),
    ]

    refused, taken, _ = compare_paths(monkeypatch, normalization, "_forward_fast",
                                      gm.batch_norm_forward, calls)
    assert refused == [False] * 7 + [True] * 15 + [False, True, True], refused
    assert taken[:5] == [True] * 5 and not any(taken[5:]), taken

    def layers():       # the layers' calls: evaluation and training, 1d and 2d
        for layer, inp in ((nn.BatchNorm2d(c), x), (nn.BatchNorm1d(c), x2)):
            layer.to(backend)
            layer(inp)
            layer.eval()
            with nn.no_grad():
                layer(inp)
    assert count_short_calls(monkeypatch, normalization, "_forward_fast", layers) == [True] * 4
