"""The cpu backend's direct convolutions (kernels/cpu/direct_conv.hpp, routed by
gpumat/backends/cpu_conv.py): every instruction-set copy this CPU runs and every accumulator
block shape of each pass against float64 torch, over strides, padding, dilation and awkward
shapes (1, primes, widths that are no multiple of a vector, an empty batch); the twin (im2col
+ BLAS) when the module is missing; the dispatch rule; the module's own input checks; and the
thread pool (thread counts, concurrent callers, fork)."""
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gpumat as gm
import gpumat.native as native
from gpumat.backends import cpu_conv
from gpumat.backends import get as get_backend

from test_conv import _torch_reference

pytestmark = pytest.mark.skipif(native._native is None,
                                reason=f"gpumat._native is not built: {native.native_import_error}")

NATIVE = native._native
CPU = get_backend("cpu")
PASSES = ["forward", "forward_channels", "backward_input", "backward_weight_pixels",
          "backward_weight_channels"]

#: (x shape, w shape, stride, padding, dilation)
GEOMETRIES = {
    "lenet_conv2": ((3, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    "primes_strided": ((2, 5, 13, 11), (7, 5, 3, 2), (2, 3), (1, 2), 1),
    "dilated_padded": ((2, 3, 9, 17), (5, 3, 3, 3), 1, (2, 3), (2, 3)),
    "one_pixel": ((2, 3, 1, 1), (4, 3, 1, 1), 1, 0, 1),
    "kernel_over_input": ((1, 2, 3, 4), (3, 2, 5, 6), 1, 1, 1),
    "stride_4_wide": ((2, 3, 23, 40), (9, 3, 5, 5), 4, 2, 1),
    "many_channels_tiny_plane": ((3, 33, 4, 4), (65, 33, 3, 3), 1, 1, 1),
    "single_channel_long_rows": ((2, 1, 5, 70), (6, 1, 2, 5), (1, 2), 0, (2, 1)),
}


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def out_shape(x_shape, w_shape, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    return (x_shape[0], w_shape[0],
            (x_shape[2] + 2 * ph - dh * (w_shape[2] - 1) - 1) // sh + 1,
            (x_shape[3] + 2 * pw - dw * (w_shape[3] - 1) - 1) // sw + 1)


def operands(x_shape, w_shape, stride, padding, dilation, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    g = rng.standard_normal(out_shape(x_shape, w_shape, stride, padding, dilation))
    return x, w, g


def torch_reference(x, w, g, stride, padding, dilation):
    """(y, grad_x, grad_w) in float64."""
    return _torch_reference(x, w, None, g, stride, padding, dilation, 1)[:3]


def assert_close(got, want, dtype, what):
    assert got.shape == want.shape and got.dtype == np.dtype(dtype), (what, got.shape, got.dtype)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11 * scale, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * scale, err_msg=what)


def direct(x, w, g, stride, padding, dilation, dtype):
    """(y, grad_x, grad_w) from the module's direct kernels."""
    x, w, g = (np.ascontiguousarray(a, dtype) for a in (x, w, g))
    geometry = (pair(stride), pair(padding), pair(dilation))
    y = NATIVE.conv2d_direct(x, w, *geometry)
    gx = NATIVE.conv2d_direct_backward_input(g, w, x.shape, *geometry)
    gw = NATIVE.conv2d_direct_backward_weight(g, x, w.shape[2:], *geometry)
    return y, gx, gw


@pytest.fixture
def restore_native_settings():
    """Undo ISA, tile and thread choices a test makes."""
    threads = NATIVE.native_threads()
    yield
    NATIVE.set_direct_conv_isa("auto")
    for name in PASSES:
        NATIVE.force_direct_conv_tile(name, -1)
    NATIVE.set_native_threads(threads)


# ---- every copy, every block shape ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa", NATIVE.direct_conv_isas() if NATIVE else [])
def test_every_isa_and_tile_matches_torch(isa, dtype, restore_native_settings):
    NATIVE.set_direct_conv_isa(isa)
    assert NATIVE.direct_conv_isa() == isa
    tiles = NATIVE.direct_conv_tiles()
    for name, geometry in GEOMETRIES.items():
        x_shape, w_shape, *hyper = geometry
        x, w, g = operands(x_shape, w_shape, *hyper)
        y_ref, gx_ref, gw_ref = torch_reference(x, w, g, *hyper)
        for pass_name in PASSES:
            for index, shape in enumerate(tiles[pass_name]):
                NATIVE.force_direct_conv_tile(pass_name, index)
                y, gx, gw = direct(x, w, g, *hyper, dtype)
                what = f"{name} {isa} {pass_name} {shape}"
                if pass_name.startswith("forward"):
                    assert_close(y, y_ref, dtype, what)
                elif pass_name == "backward_input":
                    assert_close(gx, gx_ref, dtype, what)
                else:
                    assert_close(gw, gw_ref, dtype, what)
            NATIVE.force_direct_conv_tile(pass_name, -1)


@pytest.mark.parametrize("isa", NATIVE.direct_conv_isas() if NATIVE else [])
def test_copies_agree_with_each_other(isa, restore_native_settings):
    """Each copy against the best one on the layers of LeNet-5 and ResNet-20 (float32)."""
    layers = [((8, 1, 32, 32), (6, 1, 5, 5), 1, 0, 1), ((8, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
              ((4, 16, 32, 32), (32, 16, 3, 3), 2, 1, 1), ((4, 64, 8, 8), (64, 64, 3, 3), 1, 1, 1)]
    for x_shape, w_shape, *hyper in layers:
        x, w, g = operands(x_shape, w_shape, *hyper, seed=3)
        NATIVE.set_direct_conv_isa("auto")
        best = direct(x, w, g, *hyper, np.float32)
        NATIVE.set_direct_conv_isa(isa)
        for got, want in zip(direct(x, w, g, *hyper, np.float32), best):
            scale = float(np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 20))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 20))
    n, c, o = draw(st.integers(0, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 19))
    return (n, c, h, w), (o, c, kh, kw), (sh, sw), (ph, pw), (dh, dw)


@settings(max_examples=60, deadline=None)
@given(geometry=geometries(), seed=st.integers(0, 2 ** 16), dtype=st.sampled_from(["f4", "f8"]))
def test_random_geometries_match_torch(geometry, seed, dtype):
    x_shape, w_shape, *hyper = geometry
    x, w, g = operands(x_shape, w_shape, *hyper, seed=seed)
    for got, want, what in zip(direct(x, w, g, *hyper, dtype), torch_reference(x, w, g, *hyper),
                               ("forward", "input", "weight")):
        assert_close(got, want, dtype, what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("forced", [None, "forward", "forward_channels"])
@pytest.mark.parametrize("x_shape, w_shape, padding, dilation", [
    ((4, 64, 8, 8), (64, 64, 3, 3), 1, 1),           # ResNet-20 stage 3: "same" padding
    ((3, 5, 9, 12), (7, 5, 3, 5), (0, 4), (2, 1)),   # no padding / full padding, dilated
    ((2, 16, 7, 7), (24, 16, 5, 5), 2, 1),
])
def test_input_gradient_as_a_forward_convolution(x_shape, w_shape, padding, dilation, forced,
                                                 dtype, restore_native_settings):
    """Stride 1: the input gradient may run as the forward convolution of grad_out with the
    flipped weight (either forward form, each forced in turn) -- the same values."""
    if forced is not None:
        NATIVE.force_direct_conv_tile(forced, 0)
    x, w, g = operands(x_shape, w_shape, 1, padding, dilation, seed=11)
    gx = direct(x, w, g, 1, padding, dilation, dtype)[1]
    assert_close(gx, torch_reference(x, w, g, 1, padding, dilation)[1], dtype, "grad input")


@pytest.mark.parametrize("x_shape, w_shape", [
    ((0, 3, 8, 8), (4, 3, 3, 3)),        # no images
    ((2, 0, 8, 8), (4, 0, 3, 3)),        # no input channels: y = 0, no input gradient
    ((2, 3, 8, 8), (0, 3, 3, 3)),        # no output channels
])
def test_empty_operands(x_shape, w_shape):
    x, w, g = operands(x_shape, w_shape, 1, 1, 1)
    y, gx, gw = direct(x, w, g, 1, 1, 1, np.float32)
    assert y.shape == g.shape and gx.shape == x_shape and gw.shape == w_shape
    assert not y.any() and not gx.any() and not gw.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa", NATIVE.direct_conv_isas() if NATIVE else [])
def test_bias_added_in_the_stores_is_adding_it_after(isa, dtype, restore_native_settings):
    """conv2d_direct(..., bias) is conv2d_direct(...) + bias bit for bit, on every copy,
    forward form and tile, with signed zeros, infinities and NaN among the biases."""
    NATIVE.set_direct_conv_isa(isa)
    tiles = NATIVE.direct_conv_tiles()
    for name, geometry in GEOMETRIES.items():
        x_shape, w_shape, *hyper = geometry
        x, w, _ = operands(x_shape, w_shape, *hyper)
        x, w = x.astype(dtype), w.astype(dtype)
        bias = np.random.default_rng(3).standard_normal(w_shape[0]).astype(dtype)
        bias[: 4] = [-0.0, np.inf, np.nan, 0.0][: min(4, w_shape[0])]
        args = [pair(v) for v in hyper]
        for pass_name in ("forward", "forward_channels"):
            for index, shape in enumerate(tiles[pass_name]):
                NATIVE.force_direct_conv_tile(pass_name, index)
                want = NATIVE.conv2d_direct(x, w, *args) + bias.reshape(1, -1, 1, 1)
                got = NATIVE.conv2d_direct(x, w, *args, bias)
                view = np.uint32 if dtype == np.float32 else np.uint64
                np.testing.assert_array_equal(got.view(view), want.view(view),
                                              err_msg=f"{name} {isa} {pass_name} {shape}")
            NATIVE.force_direct_conv_tile(pass_name, -1)
    # no input channel: the bias alone (0 + bias, as adding it to the zeros)
    empty = NATIVE.conv2d_direct(np.ones((2, 0, 4, 4), dtype), np.ones((3, 0, 3, 3), dtype),
                                 (1, 1), (1, 1), (1, 1), np.array([-0.0, 1.5, -2], dtype))
    np.testing.assert_array_equal(empty, np.zeros((2, 3, 4, 4), dtype)
                                  + np.array([-0.0, 1.5, -2], dtype).reshape(1, 3, 1, 1))
    assert not np.signbit(empty[:, 0]).any()


def test_bias_is_checked():
    x, w = np.ones((2, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32)
    geometry = ((1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="conv2d_direct: bias has 5 elements but w has 4 output "
                                         "channels"):
        NATIVE.conv2d_direct(x, w, *geometry, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="conv2d_direct: x is float32 but bias is float64"):
        NATIVE.conv2d_direct(x, w, *geometry, np.ones(4, np.float64))
    with pytest.raises(ValueError, match="conv2d_direct: bias must be 1-dimensional"):
        NATIVE.conv2d_direct(x, w, *geometry, np.ones((4, 1), np.float32))
    assert NATIVE.conv2d_direct(x, w, *geometry, np.ones(4, np.float32)).shape == (2, 4, 3, 3)


# ---- threads ----------------------------------------------------------------------------------

def test_results_do_not_depend_on_the_thread_count(restore_native_settings):
    """Every pass gives the same bits on 1, 2 and 3 threads (the weight gradient sums its
    per-chunk partials in a fixed order)."""
    x, w, g = operands((37, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1, seed=5)
    results = []
    for threads in (1, 2, 3):
        NATIVE.set_native_threads(threads)
        results.append(direct(x, w, g, 1, 0, 1, np.float32))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


def test_concurrent_callers_get_their_own_results():
    """Python threads calling at once (the GIL released): whoever finds the pool busy runs
    alone, and nobody's scratch buffers are shared."""
    cases = [operands((8, c, 12, 12), (5, c, 3, 3), 1, 1, 1, seed=c) for c in (1, 2, 3, 4)]
    expected = [direct(x, w, g, 1, 1, 1, np.float32) for x, w, g in cases]

    def work(i):
        return all(np.array_equal(got, want)
                   for _ in range(25)
                   for got, want in zip(direct(*cases[i], 1, 1, 1, np.float32), expected[i]))
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_gets_a_working_pool():
    x, w, g = operands((8, 3, 10, 10), (4, 3, 3, 3), 1, 1, 1)
    want = direct(x, w, g, 1, 1, 1, np.float32)[0]   # the parent's pool has started
    pid = os.fork()
    if pid == 0:                                       # pragma: no cover (the child)
        ok = np.array_equal(direct(x, w, g, 1, 1, 1, np.float32)[0], want)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_environment_chooses_isa_and_threads():
    code = ("import gpumat.native as n; k = n.kernels(); "
            "print(k.direct_conv_isa(), k.native_threads())")
    env = dict(os.environ, GPUMAT_CPU_ISA="baseline", GPUMAT_NUM_THREADS="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["baseline", "3"] and "GPUMAT_" not in result.stderr
    env = dict(os.environ, GPUMAT_CPU_ISA="no-such-isa", OMP_NUM_THREADS="2")
    env.pop("GPUMAT_NUM_THREADS", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == [NATIVE.direct_conv_isas()[-1], "2"]
    # a value the module passes over is said (it was silent)
    assert "GPUMAT_CPU_ISA='no-such-isa' is not one of" in result.stderr


@pytest.mark.parametrize("variable, value, said", [
    ("GPUMAT_CPU_ISA", "AVX2", "is not one of baseline"),
    ("GPUMAT_NUM_THREADS", "abc", "the usable CPUs are used"),
    ("GPUMAT_NUM_THREADS", "-3", "the usable CPUs are used"),
    ("GPUMAT_NUM_THREADS", "2.5", "it is read as 2"),
    ("GPUMAT_POOL_LINGER_US", "99999999999999999999", "below 2**31"),
    ("GPUMAT_NUM_THREADS", "4,2", None), ("GPUMAT_POOL_LINGER_US", "0", None),
    ("GPUMAT_CPU_ISA", "avx512vpopcntdq", None)])
def test_environment_values_the_module_passes_over_are_named(variable, value, said):
    from gpumat import native
    problems = native.environment_problems({variable: value})
    if said is None:
        assert problems == []
    else:
        assert len(problems) == 1 and repr(value) in problems[0] and said in problems[0]


# ---- the module's checks ----------------------------------------------------------------------

def test_module_checks_its_arguments():
    x = np.zeros((2, 3, 8, 8), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    g = np.zeros((2, 4, 6, 6), np.float32)
    ones = (1, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        NATIVE.conv2d_direct(x.astype(np.int32), w, ones, (0, 0), ones)
    with pytest.raises(TypeError, match="must match"):
        NATIVE.conv2d_direct(x, w.astype(np.float64), ones, (0, 0), ones)
    with pytest.raises(ValueError, match="C-contiguous"):
        NATIVE.conv2d_direct(np.asfortranarray(x), w, ones, (0, 0), ones)
    with pytest.raises(ValueError, match="4-dimensional"):
        NATIVE.conv2d_direct(x[0], w, ones, (0, 0), ones)
    with pytest.raises(ValueError, match="channels"):
        NATIVE.conv2d_direct(x, w[:, :2].copy(), ones, (0, 0), ones)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        NATIVE.conv2d_direct(x, w, (0, 1), (0, 0), ones)
    with pytest.raises(ValueError, match="padding must be at least 0"):
        NATIVE.conv2d_direct(x, w, ones, (-1, 0), ones)
    with pytest.raises(ValueError, match="exceeds the padded input"):
        NATIVE.conv2d_direct(x[:, :, :2].copy(), w, ones, (0, 0), ones)
    with pytest.raises(ValueError, match="too large"):
        NATIVE.conv2d_direct(x, w, ones, (1 << 40, 0), ones)
    with pytest.raises(ValueError, match="grad_out has shape"):
        NATIVE.conv2d_direct_backward_input(g[:, :, 1:].copy(), w, x.shape, ones, (0, 0), ones)
    with pytest.raises(ValueError, match="negative"):
        NATIVE.conv2d_direct_backward_input(g, w, (2, 3, -8, 8), ones, (0, 0), ones)
    with pytest.raises(ValueError, match="images"):
        NATIVE.conv2d_direct_backward_weight(g[:1].copy(), x, (3, 3), ones, (0, 0), ones)
    with pytest.raises(ValueError, match="grad_out has shape"):
        NATIVE.conv2d_direct_backward_weight(g, x, (2, 3), ones, (0, 0), ones)
    with pytest.raises(ValueError, match="not an instruction set"):
        NATIVE.set_direct_conv_isa("sse9")
    with pytest.raises(ValueError, match="unknown pass"):
        NATIVE.force_direct_conv_tile("sideways", 0)
    with pytest.raises(ValueError, match="at least 1"):
        NATIVE.set_native_threads(0)


# ---- routing and the twin ---------------------------------------------------------------------

def run_layer(x, w, g, **geometry):
    X, W, G = (gm.array(a, backend="cpu") for a in (x, w, g))
    return [gm.conv2d(X, W, **geometry).gather(),
            gm.conv2d_backward_input(G, W, x.shape, **geometry).gather(),
            gm.conv2d_backward_weight(G, X, w.shape, **geometry).gather()]


class CallCounter:
    def __init__(self, monkeypatch, names):
        self.calls = {name: 0 for name in names}
        for name in names:
            original = getattr(CPU, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)
            monkeypatch.setattr(CPU, name, counted)


def test_small_cnn_layers_run_direct_without_columns(monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    g = rng.standard_normal((16, 16, 10, 10)).astype(np.float32)
    counter = CallCounter(monkeypatch, ["im2col", "col2im", "conv_gemm", "matmul",
                                        "conv2d_direct", "conv2d_direct_backward_input",
                                        "conv2d_direct_backward_weight"])
    got = run_layer(x, w, g)
    assert counter.calls == {"im2col": 0, "col2im": 0, "conv_gemm": 0, "matmul": 0,
                             "conv2d_direct": 1, "conv2d_direct_backward_input": 1,
                             "conv2d_direct_backward_weight": 1}
    for a, b, what in zip(got, torch_reference(x, w, g, 1, 0, 1), ("y", "gx", "gw")):
        assert_close(a, b, np.float32, what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_and_lowering_agree(monkeypatch, dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 4, 11, 9)).astype(dtype)
    w = rng.standard_normal((7, 4, 3, 3)).astype(dtype)
    g = rng.standard_normal((5, 7, 7, 4)).astype(dtype)
    geometry = dict(stride=2, padding=(2, 1), dilation=(1, 2))
    monkeypatch.setattr(cpu_conv, "FORCE", True)
    with_direct = run_layer(x, w, g, **geometry)
    monkeypatch.setattr(cpu_conv, "FORCE", False)
    lowered = run_layer(x, w, g, **geometry)
    for a, b in zip(with_direct, lowered):
        assert_close(a, b.astype(np.float64), dtype, "direct vs im2col + BLAS")


def test_groups_and_depthwise_never_run_direct(monkeypatch):
    counter = CallCounter(monkeypatch, ["conv2d_direct"])
    x = np.ones((2, 4, 6, 6), np.float32)
    gm.conv2d(gm.array(x, backend="cpu"), np.ones((4, 2, 3, 3), np.float32), groups=2)
    gm.conv2d(gm.array(x, backend="cpu"), np.ones((4, 1, 3, 3), np.float32), groups=4)
    assert counter.calls["conv2d_direct"] == 0


def test_missing_module_falls_back_to_the_lowering(monkeypatch):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((4, 5, 10, 10)).astype(np.float32)
    with_native = run_layer(x, w, g, padding=1)
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_fallback_warned", False)
    monkeypatch.setattr(native, "native_import_error", "ImportError: simulated for the test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        without = run_layer(x, w, g, padding=1)
    assert [w.category for w in caught].count(native.NativeFallbackWarning) == 1
    for a, b in zip(without, with_native):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.mark.parametrize("kind, layer, expected", [
    ("forward", (64, 6, 16, (5, 5), (10, 10), False), True),          # LeNet conv2
    ("backward_weight", (32, 64, 64, (3, 3), (8, 8), False), True),   # ResNet-20 stage 3
    ("forward", (64, 16, 120, (5, 5), (1, 1), False), False),         # one output pixel
    ("backward_weight", (64, 16, 120, (5, 5), (1, 1), False), True),  # ... BLAS is slower
    ("forward", (8, 256, 384, (3, 3), (13, 13), False), False),       # AlexNet conv3
    ("forward", (32, 256, 256, (1, 1), (14, 14), True), False),       # wide 1x1
    ("forward", (32, 16, 16, (1, 1), (32, 32), True), True),          # narrow 1x1
    ("forward", (1, 128, 128, (3, 3), (56, 56), False), False),       # one image, big layer
    ("forward", (1, 64, 64, (3, 3), (224, 224), False), True),        # one image, small layer
    ("backward_input", (8, 256, 256, (3, 3), (56, 56), False), True), # VGG16 conv3, batch 8
    ("backward_weight", (8, 128, 128, (3, 3), (28, 28), False), False),
])
def test_dispatch_rule(kind, layer, expected):
    batch, channels, out_channels, kernel, out_hw, pointwise = layer
    assert cpu_conv.prefers_direct(kind, batch, channels, out_channels, kernel, out_hw,
                                   pointwise, threads=2) is expected


# ---- the result buffers the module keeps --------------------------------------------------------

def test_freed_results_are_reused_and_counted_as_held():
    NATIVE.clear_buffer_cache()
    assert NATIVE.buffer_cache_bytes() == 0
    x = np.zeros((4, 16, 32, 32), np.float32)
    y = NATIVE.conv2d_direct(x, np.zeros((16, 16, 3, 3), np.float32), (1, 1), (1, 1), (1, 1))
    address = y.__array_interface__["data"][0]
    assert address % 64 == 0
    del y
    assert NATIVE.buffer_cache_bytes() >= x.nbytes
    assert CPU.memory_info()["bytes_held"] >= x.nbytes
    again = NATIVE.conv2d_direct(x, np.zeros((16, 16, 3, 3), np.float32), (1, 1), (1, 1), (1, 1))
    assert again.__array_interface__["data"][0] == address      # the same buffer, no faults
    assert NATIVE.buffer_cache_bytes() == 0
    del again
    NATIVE.clear_buffer_cache()
    assert NATIVE.buffer_cache_bytes() == 0
