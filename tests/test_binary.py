"""gm.pack_signs / pack_conv_input / pack_conv_weight / xnor_gemm / xnor_conv2d on every backend.

The references are independent of the packed formulation: float64 products and convolutions
of the +-1 matrices b(v) = +1 where v >= 0, else -1 (NaN -> -1), with zero padding applied to
the *binarized* input, which is exactly what the XNOR kernels promise.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpumat as gm
from conftest import TESTED, assert_same
from quick_paths import compare_paths, count_short_calls


def signs(v):
    return np.where(np.asarray(v) >= 0, 1.0, -1.0)


def reference_pack(x, axis=-1):
    """Bit j of word w = x[..., 32w + j] >= 0 along ``axis``, built bit by bit."""
    bits = np.moveaxis(np.asarray(x) >= 0, axis, -1)
    n = bits.shape[-1]
    words = (n + 31) // 32
    padded = np.zeros(bits.shape[:-1] + (words * 32,), np.uint64)
    padded[..., :n] = bits
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    packed = (padded.reshape(bits.shape[:-1] + (words, 32)) * weights).sum(-1)
    return np.moveaxis(packed.astype(np.uint32), -1, axis)


def reference_conv(x, w, stride, padding):
    """conv2d(b(x), b(w)) in float64 with zero padding of the binarized input."""
    sh, sw = stride
    ph, pw = padding
    bx = np.pad(signs(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    bw = signs(w)
    kh, kw = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(bx, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw]                     # N, C, OH, OW, kh, kw
    return np.einsum("nchwij,ocij->nohw", windows, bw)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def with_garbage_tails(packed, n, rng):
    """The same packed signs with random bits in the padding of each row's last word."""
    packed = np.array(packed, copy=True)
    if n % 32:
        tail = rng.integers(0, 2**32, packed.shape[:-1], dtype=np.uint64).astype(np.uint32)
        packed[..., -1] |= tail & np.uint32(~((1 << (n % 32)) - 1) & 0xFFFFFFFF)
    return packed


# ---- packing --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((70,), 0), ((3, 70), -1), ((3, 70), 0), ((4, 33, 5), 1),
                                        ((2, 3, 1), 2), ((5, 0, 3), 0), ((2, 64, 2), 1)])
def test_pack_signs_along_any_axis(backend, shape, axis):
    x = rand(np.random.default_rng(0), *shape)
    if x.size:
        x.flat[:3] = [np.nan, -0.0, 0.0][:min(3, x.size)]
    assert_same(gm.pack_signs(gm.array(x, backend=backend), axis=axis), reference_pack(x, axis))


@pytest.mark.parametrize("n,c,h,w", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 31, 2, 3), (2, 32, 3, 3),
                                     (1, 33, 4, 1), (3, 100, 2, 2), (0, 16, 3, 3)])
def test_pack_conv_input_is_channels_packed_per_pixel(backend, n, c, h, w):
    x = rand(np.random.default_rng(c), n, c, h, w)
    if x.size:
        x[0, 0, 0, 0] = np.nan
        x.flat[-1] = -0.0
    got = gm.pack_conv_input(gm.array(x, backend=backend))
    assert_same(got, reference_pack(x.transpose(0, 2, 3, 1)))


def test_pack_conv_weight_is_each_taps_channels(backend):
    w = rand(np.random.default_rng(2), 5, 37, 3, 2)
    got = gm.pack_conv_weight(gm.array(w, backend=backend))
    assert_same(got, reference_pack(w.transpose(0, 2, 3, 1)))


# ---- xnor_gemm ------------------------------------------------------------------------------

GEMM_CASES = [(1, 1, 1), (3, 5, 31), (4, 7, 32), (5, 3, 33), (17, 13, 63), (16, 16, 64),
              (2, 33, 65), (9, 1, 200), (64, 65, 257), (0, 4, 10), (4, 0, 10)]


@pytest.mark.parametrize("m,n,k", GEMM_CASES)
@pytest.mark.parametrize("dtype", ["int32", "float32"])
def test_xnor_gemm_equals_the_pm1_product(backend, m, n, k, dtype):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b = rand(rng, m, k), rand(rng, n, k)
    pa = gm.pack_signs(gm.array(a, backend=backend))
    pb = gm.pack_signs(gm.array(b, backend=backend))
    expected = (signs(a) @ signs(b).T).astype(dtype)
    assert_same(gm.xnor_gemm(pa, pb, k, dtype=dtype), expected)
    # float rows are packed on the way in, k defaults to their width
    assert_same(gm.xnor_gemm(gm.array(a, backend=backend), gm.array(b, backend=backend),
                             dtype=dtype), expected)


@pytest.mark.parametrize("k", [1, 5, 33, 100])
def test_xnor_gemm_ignores_padding_bits(backend, k):
    rng = np.random.default_rng(k)
    a, b = rand(rng, 6, k), rand(rng, 9, k)
    pa = with_garbage_tails(reference_pack(a), k, rng)
    pb = with_garbage_tails(reference_pack(b), k, rng)
    got = gm.xnor_gemm(gm.array(pa, backend=backend), gm.array(pb, backend=backend), k)
    assert_same(got, (signs(a) @ signs(b).T).astype(np.int32))


def test_xnor_gemm_large_k_is_exact(backend):
    rng = np.random.default_rng(7)
    a, b = rand(rng, 33, 4099), rand(rng, 47, 4099)
    got = gm.xnor_gemm(gm.array(a, backend=backend), gm.array(b, backend=backend))
    assert_same(got, (signs(a) @ signs(b).T).astype(np.int32))


# ---- xnor_conv2d ----------------------------------------------------------------------------

# (N, C, H, W, O, kh, kw, stride, padding): channels around the word size, kernels 1x1 to 5x5
# and 1x3, strides 1-3, paddings 0-2, primes and 1-pixel images, filters not a multiple of 16.
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0),
    (1, 1, 1, 1, 1, 3, 3, 1, 1),
    (2, 3, 7, 5, 4, 3, 3, 1, 1),
    (1, 16, 8, 8, 16, 3, 3, 1, 1),
    (3, 16, 9, 9, 17, 3, 3, 2, 1),
    (1, 31, 5, 6, 7, 1, 3, 1, (0, 1)),
    (2, 32, 6, 6, 33, 3, 3, 1, 0),
    (1, 33, 11, 7, 5, 5, 5, 2, 2),
    (1, 64, 8, 8, 32, 3, 3, 2, 1),
    (1, 100, 5, 5, 3, 3, 3, 3, 2),
    (2, 5, 13, 1, 2, 3, 1, 1, (1, 0)),
    (1, 7, 4, 4, 1, 4, 4, 1, 0),
    (0, 8, 4, 4, 3, 3, 3, 1, 1),
    (2, 8, 4, 4, 0, 3, 3, 1, 1),
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_xnor_conv2d_equals_binarized_conv2d(backend, case):
    n, c, h, w, o, kh, kw, stride, padding = case
    rng = np.random.default_rng(sum(_pair(padding)) + n + c * 7 + o * 13 + h)
    x, weight = rand(rng, n, c, h, w), rand(rng, o, c, kh, kw)
    if x.size:
        x.flat[0], x.flat[-1] = np.nan, -0.0           # NaN binarizes to -1, -0.0 to +1
    expected = reference_conv(x, weight, _pair(stride), _pair(padding))
    got = gm.xnor_conv2d(gm.array(x, backend=backend), gm.array(weight, backend=backend),
                         stride=stride, padding=padding)
    assert_same(got, expected.astype(np.float32))
    packed = gm.xnor_conv2d(gm.pack_conv_input(gm.array(x, backend=backend)),
                            gm.pack_conv_weight(gm.array(weight, backend=backend)),
                            stride=stride, padding=padding, channels=c, dtype="int32")
    assert_same(packed, expected.astype(np.int32))


def test_xnor_conv2d_ignores_padding_bits(backend):
    rng = np.random.default_rng(3)
    x, w = rand(rng, 2, 37, 6, 5), rand(rng, 9, 37, 3, 3)
    xp = with_garbage_tails(reference_pack(x.transpose(0, 2, 3, 1)), 37, rng)
    wp = with_garbage_tails(reference_pack(w.transpose(0, 2, 3, 1)), 37, rng)
    got = gm.xnor_conv2d(gm.array(xp, backend=backend), gm.array(wp, backend=backend),
                         padding=1, channels=37, dtype="int32")
    assert_same(got, reference_conv(x, w, (1, 1), (1, 1)).astype(np.int32))


@pytest.mark.parametrize("layer", [(16, 32, 1), (32, 16, 2), (64, 8, 1), (256, 14, 1)])
def test_xnor_conv2d_network_layers(backend, layer):
    """ResNet-20's 3x3 layers and a 256-channel 14x14 one, as benchmarked in bench/."""
    channels, size, stride = layer
    rng = np.random.default_rng(channels)
    x = rand(rng, 2, channels, size, size)
    w = rand(rng, channels * stride, channels, 3, 3)
    got = gm.xnor_conv2d(gm.array(x, backend=backend), gm.array(w, backend=backend),
                         stride=stride, padding=1, dtype="int32")
    assert_same(got, reference_conv(x, w, (stride, stride), (1, 1)).astype(np.int32))


def test_xnor_conv2d_matches_torch_on_pm1_data(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x, w = signs(rand(rng, 2, 20, 9, 9)), signs(rand(rng, 6, 20, 3, 3))
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2,
                                          padding=1).numpy()
    got = gm.xnor_conv2d(gm.array(x.astype(np.float32), backend=backend),
                         gm.array(w.astype(np.float32), backend=backend), stride=2, padding=1)
    assert_same(got, expected.astype(np.float32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 2), c=st.integers(1, 70), h=st.integers(1, 9), w=st.integers(1, 9),
       o=st.integers(1, 20), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       backend=st.sampled_from(TESTED))
def test_xnor_conv2d_any_shape(n, c, h, w, o, kh, kw, sh, sw, ph, pw, backend):
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(c * 31 + o)
    x, weight = rand(rng, n, c, h, w), rand(rng, o, c, kh, kw)
    got = gm.xnor_conv2d(gm.array(x, backend=backend), gm.array(weight, backend=backend),
                         stride=(sh, sw), padding=(ph, pw), dtype="int32")
    assert_same(got, reference_conv(x, weight, (sh, sw), (ph, pw)).astype(np.int32))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 33), (37, 120, 400), (256, 84, 120)])
@pytest.mark.parametrize("factors", ["r", "c", "b", "rc", "rcb", "cb"])
def test_xnor_gemm_scaling_equals_the_float32_operations(backend, m, n, k, factors):
    """row_scale, col_scale, bias: ((v * K[m]) * alpha[n]) + bias[n], float32, one operation
    after another, bit for bit (an XNOR-Net linear layer's inference in one call)."""
    rng = np.random.default_rng(m + n + k)
    a, b = rand(rng, m, k), rand(rng, n, k)
    scales = {"r": ("row_scale", np.abs(rand(rng, m)), lambda y, v: y * v[:, None]),
              "c": ("col_scale", np.abs(rand(rng, n)), lambda y, v: y * v[None, :]),
              "b": ("bias", rand(rng, n), lambda y, v: y + v[None, :])}
    expected = (np.where(a >= 0, 1.0, -1.0) @ np.where(b >= 0, 1.0, -1.0).T).astype(np.float32)
    given = {}
    for key in factors:
        name, value, apply = scales[key]
        expected = apply(expected, value)
        given[name] = gm.array(value, backend=backend)
    for operands in [(a, b), None]:
        if operands is None:                          # packed rows
            got = gm.xnor_gemm(gm.pack_signs(gm.array(a, backend=backend)),
                               gm.pack_signs(gm.array(b, backend=backend)), k,
                               dtype="float32", **given)
        else:
            got = gm.xnor_gemm(*(gm.array(v, backend=backend) for v in operands),
                               dtype="float32", **given)
        np.testing.assert_array_equal(got.gather(), expected.astype(np.float32))


def test_xnor_gemm_scaling_arguments_are_checked(backend):
    a = gm.array(np.ones((3, 40), np.float32), backend=backend)
    b = gm.array(np.ones((5, 40), np.float32), backend=backend)
    with pytest.raises(TypeError, match="row_scale needs dtype='float32'"):
        gm.xnor_gemm(a, b, row_scale=gm.ones(3, backend=backend))
    with pytest.raises(ValueError, match=r"col_scale must hold one value per row of b's \(5\)"):
        gm.xnor_gemm(a, b, dtype="float32", col_scale=gm.ones(3, backend=backend))
    with pytest.raises(TypeError, match="bias must be single"):
        gm.xnor_gemm(a, b, dtype="float32", bias=gm.array(np.ones(5), backend=backend))
    # a (1, N) or (N, 1) vector is taken as the N values
    got = gm.xnor_gemm(a, b, dtype="float32", col_scale=gm.full((1, 5), 2.0, backend=backend))
    np.testing.assert_array_equal(got.gather(), np.full((3, 5), 80.0, np.float32))


# ---- fused XNOR-Net scaling ------------------------------------------------------------------

@pytest.mark.parametrize("n,c,h,w", [(1, 1, 1, 1), (2, 16, 7, 5), (3, 33, 4, 4), (1, 100, 3, 2)])
def test_pack_conv_input_mean_abs(backend, n, c, h, w):
    x = rand(np.random.default_rng(c), n, c, h, w)
    packed, mean = gm.pack_conv_input(gm.array(x, backend=backend), mean_abs=True)
    assert_same(packed, reference_pack(x.transpose(0, 2, 3, 1)))
    assert_same(mean, np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True).astype(
        np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", [(1, 1, 4, 4, 1, 1, 0), (2, 16, 9, 7, 17, 2, 1),
                                  (1, 33, 6, 6, 5, 1, 2), (2, 5, 5, 5, 16, 1, 1)])
@pytest.mark.parametrize("factors", ["k", "a", "b", "ka", "kab", "ab", "kb"])
def test_fused_scaling_equals_the_float32_operations(backend, case, factors):
    """((v * K) * alpha) + bias in float32, one operation after another, bit for bit."""
    n, c, h, w, o, stride, padding = case
    rng = np.random.default_rng(o + c)
    x, weight = rand(rng, n, c, h, w), rand(rng, o, c, 3, 3)
    oh, ow = (h + 2 * padding - 3) // stride + 1, (w + 2 * padding - 3) // stride + 1
    k = np.abs(rand(rng, n, 1, oh, ow))
    alpha = np.abs(rand(rng, o))
    bias = rand(rng, o)
    expected = reference_conv(x, weight, (stride, stride), (padding, padding)).astype(np.float32)
    given = {}
    if "k" in factors:
        expected = expected * k
        given["pixel_scale"] = gm.array(k, backend=backend)
    if "a" in factors:
        expected = expected * alpha.reshape(1, -1, 1, 1)
        given["filter_scale"] = gm.array(alpha, backend=backend)
    if "b" in factors:
        expected = expected + bias.reshape(1, -1, 1, 1)
        given["bias"] = gm.array(bias, backend=backend)
    got = gm.xnor_conv2d(gm.array(x, backend=backend), gm.array(weight, backend=backend),
                         stride=stride, padding=padding, **given)
    np.testing.assert_array_equal(got.gather(), expected.astype(np.float32))


@pytest.mark.parametrize("case", [(1, 1, 4, 4, 1, 1, 0), (2, 16, 9, 7, 17, 2, 1),
                                  (1, 33, 6, 6, 5, 1, 2), (3, 16, 32, 32, 16, 1, 1)])
def test_window_mean_scale_is_xnor_nets_k(backend, case):
    """pixel_scale='window_mean': K, the mean over each 3x3 window (padding zeros counted) of
    the channel mean of |x|, made from x by the call itself (on cpu inside the kernel's pass,
    on OpenCL and CUDA by a kernel between the packing and the convolution), then alpha and
    the bias."""
    n, c, h, w, o, stride, padding = case
    rng = np.random.default_rng(o + c + h)
    x, weight = rand(rng, n, c, h, w), rand(rng, o, c, 3, 3)
    alpha, bias = np.abs(rand(rng, o)), rand(rng, o)
    mean = np.pad(np.abs(x.astype(np.float64)).mean(axis=1),
                  ((0, 0), (padding, padding), (padding, padding)))
    k = np.lib.stride_tricks.sliding_window_view(mean, (3, 3), axis=(1, 2))[
        :, ::stride, ::stride].mean(axis=(3, 4))[:, None]
    expected = (reference_conv(x, weight, (stride, stride), (padding, padding)) * k
                * alpha.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1))
    xg, wg = gm.array(x, backend=backend), gm.array(weight, backend=backend)
    for w_given in (wg, gm.pack_conv_weight(wg)):
        got = gm.xnor_conv2d(xg, w_given, stride=stride, padding=padding, channels=c,
                             pixel_scale="window_mean",
                             filter_scale=gm.array(alpha, backend=backend),
                             bias=gm.array(bias, backend=backend))
        assert got.dtype == np.float32 and got.shape == expected.shape
        # K in float32 against float64: a few ulps, scaled by products of at most 9 C
        np.testing.assert_allclose(got.gather(), expected, rtol=1e-5, atol=1e-5 * 9 * c)


@pytest.mark.parametrize("case", [(1, 1, 4, 4, 1, (3, 3), 1, 0), (2, 16, 9, 7, 17, (3, 3), 2, 1),
                                  (1, 33, 6, 5, 5, (2, 3), (1, 2), (0, 2)),
                                  (2, 5, 11, 9, 16, (5, 5), (2, 1), 2),
                                  (1, 7, 3, 3, 4, (1, 1), 1, 0),
                                  # rows mostly padding (the cpu kernel reads them in place)
                                  (2, 13, 5, 4, 3, (3, 3), (2, 5000), (1, 4500))])
def test_window_mean_has_the_same_bits_on_every_backend(backend, case):
    """pixel_scale='window_mean' on any backend: K exactly as native.window_mean_numpy makes
    it from the backend's own channel means (window sums in tap order over the taps inside
    the image, divided by kh * kw), so inference is bit for bit the same everywhere."""
    from gpumat import native
    n, c, h, w, o, kernel, stride, padding = case
    rng = np.random.default_rng(n + c + h)
    x, weight = rand(rng, n, c, h, w), rand(rng, o, c, *kernel)
    alpha = np.abs(rand(rng, o))
    xg, wp = gm.array(x, backend=backend), gm.pack_conv_weight(gm.array(weight, backend=backend))
    packed, mean = gm.pack_conv_input(xg, mean_abs=True)
    s2, p2 = (stride, stride) if isinstance(stride, int) else stride, \
        (padding, padding) if isinstance(padding, int) else padding
    out_hw = tuple((size + 2 * p - k) // s + 1 for size, k, s, p in zip((h, w), kernel, s2, p2))
    k = native.window_mean_numpy(mean.gather(), kernel, s2, p2, out_hw)
    want = gm.xnor_conv2d(packed, wp, stride=stride, padding=padding, channels=c,
                          pixel_scale=gm.array(k, backend=backend),
                          filter_scale=gm.array(alpha, backend=backend))
    got = gm.xnor_conv2d(xg, wp, stride=stride, padding=padding, pixel_scale="window_mean",
                         filter_scale=gm.array(alpha, backend=backend))
    np.testing.assert_array_equal(got.gather(), want.gather())


@pytest.mark.parametrize("padding", [(0, 2), (1, 1000)])
def test_strides_near_two_to_the_31(backend, padding):
    """Geometry at the edge of the kernels' 32-bit indices: K's window sums stay inside the
    image (OpenCL's window-mean kernel computed pw - j + sw - 1 in 32 bits, wrapped, and read
    and wrote outside its buffers) and the results are the float64 reference's."""
    rng = np.random.default_rng(31)
    x, weight = rand(rng, 2, 3, 3, 4), rand(rng, 2, 3, 2, 3)
    stride = (1, 2**31 - 1)
    got = gm.xnor_conv2d(gm.array(x, backend=backend), gm.array(weight, backend=backend),
                         stride=stride, padding=padding, pixel_scale="window_mean")
    # one output column (the window at input columns -pw .. -pw + 2): the same as stride 1
    want = reference_conv(x, weight, (1, 1), padding)[..., :1]
    mean = np.abs(x.astype(np.float64)).mean(axis=1)
    padded = np.pad(mean, ((0, 0), (padding[0],) * 2, (padding[1],) * 2))
    k = np.lib.stride_tricks.sliding_window_view(padded, (2, 3), axis=(1, 2))[..., :1, :, :]
    want = want * k.mean(axis=(3, 4))[:, None]
    assert got.shape == want.shape
    np.testing.assert_allclose(got.gather(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [(2, 16, 9, 7, 5, 1, 1), (1, 40, 6, 6, 3, 2, 1),
                                  (2, 3, 5, 5, 17, 1, 0)])
def test_batch_norm_in_front_equals_normalizing_first(backend, case):
    """batch_norm=(mean, var, weight, bias, eps): bit for bit gm.batch_norm_forward's output
    convolved (every backend folds it into its packing), with and without the affine
    part."""
    n, c, h, w, o, stride, padding = case
    rng = np.random.default_rng(n + c + o)
    mean = rand(rng, c)
    x = rand(rng, n, c, h, w) * 2 + mean.reshape(1, -1, 1, 1)
    x[:, :, ::2, ::3] = mean.reshape(1, -1, 1, 1)                # normalized zeros
    var, weight, shift = np.abs(rand(rng, c)) + 0.1, rand(rng, c), rand(rng, c)
    alpha = np.abs(rand(rng, o))

    def arr(v):
        return None if v is None else gm.array(v, backend=backend)

    xg, wg = arr(x), gm.pack_conv_weight(arr(rand(rng, o, c, 3, 3)))
    for weight_given, shift_given in [(weight, shift), (None, None)]:
        statistics = (arr(mean), arr(var), arr(weight_given), arr(shift_given), 1e-5)
        y = gm.batch_norm_forward(xg, statistics[2], statistics[3], statistics[0],
                                  statistics[1], 1e-5, training=False).y
        for scales in [{}, {"pixel_scale": "window_mean", "filter_scale": arr(alpha)}]:
            want = gm.xnor_conv2d(y, wg, stride=stride, padding=padding, channels=c, **scales)
            got = gm.xnor_conv2d(xg, wg, stride=stride, padding=padding, channels=c,
                                 batch_norm=statistics, **scales)
            np.testing.assert_array_equal(got.gather(), want.gather())


PACK_BN_SHAPES = [(9, 400, 1, 1), (1, 120, 1, 1), (17, 33, 1, 1), (2, 20, 5, 7), (3, 1, 4, 4)]


@pytest.mark.parametrize("shape", PACK_BN_SHAPES)
def test_pack_conv_input_batch_norm_equals_normalizing_first(backend, shape):
    """pack_conv_input(x, batch_norm=...) packs (and averages) gm.batch_norm_forward's output
    bit for bit, on every backend, for a binary linear layer's rows (N x C x 1 x 1) and for
    images, with and without the affine part; nothing but the results stays counted."""
    check_pack_batch_norm(backend, shape)


@pytest.mark.parametrize("shape", PACK_BN_SHAPES)
def test_pack_conv_input_batch_norm_numpy_twins(shape, monkeypatch):
    """The same on the cpu backend without its native module (the NumPy twins: the batch
    norm first, then the packing)."""
    from gpumat import native
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_fallback_warned", True)
    check_pack_batch_norm("cpu", shape)


def check_pack_batch_norm(backend, shape):
    n, c, h, w = shape
    rng = np.random.default_rng(n + c)
    mean = rand(rng, c)
    x = rand(rng, n, c, h, w) * 2 + mean.reshape(1, -1, 1, 1)
    x.reshape(n, c, -1)[::2, :, 0] = mean                       # normalized zeros
    var, weight, shift = np.abs(rand(rng, c)) + 0.1, rand(rng, c), rand(rng, c)

    def arr(v):
        return None if v is None else gm.array(v, backend=backend)

    xg = arr(x)
    for weight_given, shift_given in [(weight, shift), (None, None), (weight, None)]:
        statistics = (arr(mean), arr(var), arr(weight_given), arr(shift_given), 1e-5)
        y = gm.batch_norm_forward(xg, statistics[2], statistics[3], statistics[0],
                                  statistics[1], 1e-5, training=False).y
        want, want_mean = gm.pack_conv_input(y, mean_abs=True)
        gm.backends.get(backend).synchronize()
        before = gm.memory_info(backend)["bytes_in_use"]
        got, got_mean = gm.pack_conv_input(xg, mean_abs=True, batch_norm=statistics)
        assert gm.memory_info(backend)["bytes_in_use"] == before + got.nbytes + got_mean.nbytes
        np.testing.assert_array_equal(got.gather(), want.gather())
        np.testing.assert_array_equal(got_mean.gather().view(np.uint32),
                                      want_mean.gather().view(np.uint32))
        np.testing.assert_array_equal(gm.pack_conv_input(xg, batch_norm=statistics).gather(),
                                      want.gather())
        del got, got_mean, want, want_mean, y        # (the next round counts from zero)


def test_pack_conv_input_batch_norm_is_checked(backend):
    x = gm.array(np.ones((4, 6, 1, 1), np.float32), backend=backend)
    good = gm.array(np.ones(6, np.float32), backend=backend)
    with pytest.raises(TypeError, match=r"pack_conv_input: batch_norm must be \(running_mean, "
                                        r"running_var, weight, bias, eps\)"):
        gm.pack_conv_input(x, batch_norm=(good, good))
    with pytest.raises(gm.ShapeError, match=r"pack_conv_input: batch_norm's running_var must "
                                            r"have shape \(6,\) for 6 input channels, got "
                                            r"\(5,\)"):
        gm.pack_conv_input(x, batch_norm=(good, good[:5], None, None, 1e-5))
    with pytest.raises(ValueError, match="pack_conv_input: batch_norm's eps must be finite"):
        gm.pack_conv_input(x, batch_norm=(good, good, None, None, -1.0))
    other = "cpu" if backend != "cpu" else next((b for b in TESTED if b != "cpu"), None)
    if other is not None:
        elsewhere = gm.array(np.ones(6, np.float32), backend=other)
        with pytest.raises(gm.BackendMismatchError, match="batch_norm's running_mean is on"):
            gm.pack_conv_input(x, batch_norm=(elsewhere, good, None, None, 1e-5))
    assert gm.pack_conv_input(x, batch_norm=(good, good, None, None, 1e-5)).shape == (4, 1, 1, 1)


def test_a_whole_layer_keeps_no_temporaries(backend):
    """A fused layer call (batch norm, K, residual: packed input, channel means, K and
    inv_std made on the way) leaves only its result counted in the backend's memory."""
    rng = np.random.default_rng(13)
    c = 12

    def arr(v):
        return gm.array(v, backend=backend)

    x, wp = arr(rand(rng, 2, c, 6, 5)), gm.pack_conv_weight(arr(rand(rng, 4, c, 3, 3)))
    statistics = (arr(rand(rng, c)), arr(np.abs(rand(rng, c)) + 0.5), arr(rand(rng, c)),
                  arr(rand(rng, c)), 1e-5)
    residual = arr(rand(rng, 2, 4, 6, 5))
    gm.backends.get(backend).synchronize()
    before = gm.memory_info(backend)["bytes_in_use"]
    y = gm.xnor_conv2d(x, wp, padding=1, channels=c, pixel_scale="window_mean",
                       batch_norm=statistics, residual=residual)
    assert gm.memory_info(backend)["bytes_in_use"] == before + y.nbytes
    y.release()
    assert gm.memory_info(backend)["bytes_in_use"] == before


def test_backends_without_a_fused_layer_get_the_separate_operations(backend, monkeypatch):
    """A backend whose xnor_conv2d takes only packed input (xnor_conv2d_fuses_layer False,
    the base class's default) gets batch_norm_forward, pack_conv_input, K by the box filter
    and the residual addition around it from gm.xnor_conv2d: the fused call's bits, K's to
    float32 rounding."""
    rng = np.random.default_rng(17)
    c, o = 20, 6

    def arr(v):
        return gm.array(v, backend=backend)

    x, wp = arr(rand(rng, 2, c, 7, 6)), gm.pack_conv_weight(arr(rand(rng, o, c, 3, 3)))
    statistics = (arr(rand(rng, c)), arr(np.abs(rand(rng, c)) + 0.5), arr(rand(rng, c)),
                  arr(rand(rng, c)), 1e-5)
    factors = {"filter_scale": arr(np.abs(rand(rng, o))), "bias": arr(rand(rng, o)),
               "residual": arr(rand(rng, 2, o, 4, 3))}
    calls = []
    impl = gm.backends.get(backend)
    original = impl.xnor_conv2d
    fused = [gm.xnor_conv2d(x, wp, stride=2, padding=1, channels=c, batch_norm=statistics,
                            pixel_scale=k, **factors).gather() for k in (None, "window_mean")]
    monkeypatch.setattr(impl, "xnor_conv2d_fuses_layer", False)
    monkeypatch.setattr(impl, "xnor_conv2d", lambda xp, *a, **kw: calls.append(
        (xp.dtype, sorted(kw))) or original(xp, *a, **kw))
    separate = [gm.xnor_conv2d(x, wp, stride=2, padding=1, channels=c, batch_norm=statistics,
                               pixel_scale=k, **factors).gather()
                for k in (None, "window_mean")]
    assert calls == [(np.uint32, ["bias", "filter_scale"]),
                     (np.uint32, ["bias", "filter_scale", "pixel_scale"])]
    np.testing.assert_array_equal(separate[0], fused[0])
    np.testing.assert_allclose(separate[1], fused[1], rtol=1e-5, atol=1e-5 * 9 * c)


def test_no_input_channel_gives_the_epilogue_of_zeros(backend):
    """C = 0: every product is the empty sum 0 (as conv2d's), the scaling runs on the zeros
    (the bias and residual stay), and K, the mean |x| over no channel, is NaN."""
    def arr(v):
        return gm.array(np.asarray(v, np.float32), backend=backend)

    x, w = arr(np.zeros((2, 0, 4, 3))), arr(np.zeros((3, 0, 3, 3)))
    residual = arr(np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3))
    got = gm.xnor_conv2d(x, w, padding=1, dtype="int32")
    np.testing.assert_array_equal(got.gather(), np.zeros((2, 3, 4, 3), np.int32))
    got = gm.xnor_conv2d(x, w, padding=1, filter_scale=arr([1, 2, 3]), bias=arr([1, 2, 3]),
                         residual=residual)
    want = np.broadcast_to(np.float32([1, 2, 3]).reshape(1, 3, 1, 1), (2, 3, 4, 3)) \
        + residual.gather()
    np.testing.assert_array_equal(got.gather(), want)
    got = gm.xnor_conv2d(x, w, padding=1, pixel_scale="window_mean", bias=arr([1, 2, 3]))
    assert np.isnan(got.gather()).all()


def test_residual_is_added_last(backend):
    """residual=R: the result plus R, bit for bit the separate addition (added as the kernel
    stores its results), after the scaling and with packed or float operands."""
    rng = np.random.default_rng(11)
    x, weight = rand(rng, 2, 20, 7, 6), rand(rng, 9, 20, 3, 3)
    alpha, shift, residual = np.abs(rand(rng, 9)), rand(rng, 9), rand(rng, 2, 9, 4, 3)

    def arr(v):
        return gm.array(v, backend=backend)

    xg, wg = arr(x), arr(weight)
    for operands in [(xg, wg), (gm.pack_conv_input(xg), gm.pack_conv_weight(wg))]:
        for scales in [{}, {"filter_scale": arr(alpha)},
                       {"pixel_scale": "window_mean", "filter_scale": arr(alpha),
                        "bias": arr(shift)}]:
            if scales.get("pixel_scale") == "window_mean" and operands[0].dtype != np.float32:
                continue
            plain = gm.xnor_conv2d(*operands, stride=2, padding=1, channels=20, **scales)
            got = gm.xnor_conv2d(*operands, stride=2, padding=1, channels=20,
                                 residual=arr(residual), **scales)
            np.testing.assert_array_equal(got.gather(), (plain + arr(residual)).gather())
    with pytest.raises(ValueError, match=r"residual must have shape \(2, 9, 4, 3\)"):
        gm.xnor_conv2d(xg, wg, stride=2, padding=1, residual=arr(residual[:, :, :3]))
    with pytest.raises(TypeError, match="residual needs dtype='float32'"):
        gm.xnor_conv2d(xg, wg, stride=2, padding=1, dtype="int32", residual=arr(residual))


# ---- bad input ------------------------------------------------------------------------------

def test_bad_input_is_named(backend):
    def arr(v):
        return gm.array(v, backend=backend)

    x = arr(np.ones((1, 4, 5, 5), np.float32))
    w = arr(np.ones((2, 4, 3, 3), np.float32))
    with pytest.raises(TypeError, match="float64"):
        gm.xnor_conv2d(x.astype("double"), w)
    with pytest.raises(ValueError, match="channel counts disagree.*x says 4.*w says 3"):
        gm.xnor_conv2d(x, arr(np.ones((2, 3, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="channels= .* is needed"):
        gm.xnor_conv2d(gm.pack_conv_input(x), gm.pack_conv_weight(w))
    with pytest.raises(ValueError, match="33 channels need 2"):
        gm.xnor_conv2d(gm.pack_conv_input(x), gm.pack_conv_weight(w), channels=33)
    # a packed operand keeps ceil(C / 32) words: channels= checks the float one against it
    with pytest.raises(ValueError, match="channel counts disagree .x says 4, channels says 3"):
        gm.xnor_conv2d(x, gm.pack_conv_weight(arr(np.ones((2, 3, 3, 3), np.float32))),
                       channels=3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        gm.xnor_conv2d(x, arr(np.ones((2, 4, 7, 7), np.float32)))
    with pytest.raises(ValueError, match="4-d"):
        gm.xnor_conv2d(arr(np.ones((4, 5, 5), np.float32)), w)
    with pytest.raises(TypeError, match="'int32' or 'float32'"):
        gm.xnor_conv2d(x, w, dtype="float64")
    with pytest.raises(TypeError, match="pixel_scale needs dtype='float32'"):
        gm.xnor_conv2d(x, w, dtype="int32", pixel_scale=arr(np.ones((1, 3, 3), np.float32)))
    with pytest.raises(ValueError, match=r"filter_scale must have shape \(2,\)"):
        gm.xnor_conv2d(x, w, filter_scale=arr(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="pixel_scale must have shape"):
        gm.xnor_conv2d(x, w, pixel_scale=arr(np.ones((1, 5, 5), np.float32)))
    with pytest.raises(ValueError, match="an Array, None or 'window_mean', got 'mean'"):
        gm.xnor_conv2d(x, w, pixel_scale="mean")
    with pytest.raises(TypeError, match="makes K from the float input, but x is packed"):
        gm.xnor_conv2d(gm.pack_conv_input(x), w, pixel_scale="window_mean")
    with pytest.raises(TypeError, match="pixel_scale needs dtype='float32'"):
        gm.xnor_conv2d(x, w, dtype="int32", pixel_scale="window_mean")
    stats = (arr(np.zeros(4, np.float32)), arr(np.ones(4, np.float32)), None, None, 1e-5)
    with pytest.raises(TypeError, match="batch_norm normalizes the float input, but x is packed"):
        gm.xnor_conv2d(gm.pack_conv_input(x), w, batch_norm=stats)
    with pytest.raises(TypeError, match=r"batch_norm must be \(running_mean, running_var"):
        gm.xnor_conv2d(x, w, batch_norm=stats[:2])
    with pytest.raises(ValueError, match=r"batch_norm's running_var must have shape \(4,\)"):
        gm.xnor_conv2d(x, w, batch_norm=(stats[0], arr(np.ones(5, np.float32)), None, None, 0))
    with pytest.raises(TypeError, match="batch_norm's weight must be single"):
        gm.xnor_conv2d(x, w, batch_norm=(*stats[:2], arr(np.ones(4)), None, 1e-5))
    with pytest.raises(ValueError, match="batch_norm's eps must be finite and >= 0"):
        gm.xnor_conv2d(x, w, batch_norm=(*stats[:4], -1.0))
    a = gm.pack_signs(arr(np.ones((3, 40), np.float32)))
    with pytest.raises(ValueError, match="k=70 needs 3 words"):
        gm.xnor_gemm(a, a, 70)
    # past the kernels' 2**28 signs per product: the same error on every backend
    huge = arr(np.zeros((1, 2**23 + 1), np.uint32))
    with pytest.raises(ValueError, match=r"k=268,435,457 is more than the kernels' "
                       r"268,435,456 \(2\*\*28\)"):
        gm.xnor_gemm(huge, huge, 2**28 + 1)
    wide = arr(np.zeros((1, 2049, 2048, 2), np.uint32))
    with pytest.raises(ValueError, match="a 2049 x 2048 kernel of 33 channels is more than"):
        gm.xnor_conv2d(arr(np.ones((1, 33, 1, 1), np.float32)), wide, padding=1025)
    del huge, wide
    with pytest.raises(ValueError, match="k .* is needed"):
        gm.xnor_gemm(a, a)
    with pytest.raises(TypeError, match="int32"):
        gm.xnor_gemm(arr(np.ones((3, 2), np.int32)), a, 40)
    with pytest.raises(TypeError, match="float32"):
        gm.pack_conv_input(arr(np.ones((1, 2, 3, 3), np.int32)))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        gm.pack_signs(arr(np.ones((3, 4), np.float32)), axis=2)
    with pytest.raises(TypeError, match="axis must be an integer, got 1.0"):
        gm.pack_signs(arr(np.ones((3, 4), np.float32)), axis=1.0)
    # the library stays usable after each error
    assert_same(gm.xnor_conv2d(x, w, padding=1, dtype="int32"),
                reference_conv(np.ones((1, 4, 5, 5)), np.ones((2, 4, 3, 3)), (1, 1),
                               (1, 1)).astype(np.int32))


def test_the_quick_checks_agree_with_the_full_ones(backend, monkeypatch):
    """gm.xnor_conv2d checks a layer's usual arguments by a short path and everything else by
    the full one: for each call here -- valid ones and ones each check must refuse -- both
    give the same result bits, or the same error and message.  The layer's calls take the
    short path (it must not quietly hand everything to the long one)."""
    from gpumat import binary

    rng = np.random.default_rng(29)
    c, o = 20, 6

    def arr(v):
        return gm.array(v, backend=backend)

    x, w = arr(rand(rng, 2, c, 7, 6)), arr(rand(rng, o, c, 3, 3))
    xp, wp = gm.pack_conv_input(x), gm.pack_conv_weight(w)
    stats = (arr(rand(rng, c)), arr(np.abs(rand(rng, c)) + 0.5), arr(rand(rng, c)),
             arr(rand(rng, c)), 1e-5)
    alpha, shift = arr(np.abs(rand(rng, o))), arr(rand(rng, o))
    residual = arr(rand(rng, 2, o, 4, 3))
    released = arr(rand(rng, o))
    released.release()
    layer = dict(stride=2, padding=1, channels=c, pixel_scale="window_mean",
                 filter_scale=alpha, bias=shift, batch_norm=stats, residual=residual)
    calls = [
        ((x, wp), layer),
        ((x, wp), dict(stride=(2, 1), padding=(1, 0))),
        ((xp, wp), dict(channels=c, dtype="int32")),
        ((xp, wp), dict(channels=c, stride=2, padding=1, filter_scale=alpha, residual=residual)),
        ((x, wp), dict(stride=2, padding=1, pixel_scale=arr(np.ones((2, 4, 3), np.float32)))),
        ((x, wp), dict(stride=2, padding=1, pixel_scale=arr(np.ones((2, 1, 4, 3), np.float32)))),
        ((x, wp), dict(stride=2, padding=1, batch_norm=(*stats[:2], None, None, 1e-3))),
        ((x, wp), dict(stride=2, padding=1, batch_norm=(*stats[:4], 1))),          # int eps
        ((x, wp), dict(stride=2, padding=1, batch_norm=(*stats[:4], np.float32(1e-5)))),
        ((x, wp), dict(stride=[2, 2], padding=1)),
        ((x, wp), dict(dtype=np.float32)),
        ((x, wp), dict(dtype="single", channels=c)),
        # refused
        ((x, wp), dict(channels=c + 1)),
        ((x, wp), dict(channels=0)),
        ((xp, wp), dict(channels=0)),
        ((xp, wp), {}),
        ((x, wp), dict(stride=0)),
        ((x, wp), dict(padding=-1)),
        ((x, wp), dict(stride=True)),
        ((x, wp), dict(stride=(1, 2, 3))),
        ((x, wp), dict(dtype="float64")),
        ((x, wp), dict(dtype="int32", filter_scale=alpha)),
        ((x, wp), dict(filter_scale=arr(np.ones(o + 1, np.float32)))),
        ((x, wp), dict(bias=arr(np.ones(o)))),                                    # float64
        ((x, wp), dict(bias=released)),
        ((x, wp), dict(padding=1, residual=arr(np.ones((2, o, 7, 5), np.float32)))),
        ((x, wp), dict(pixel_scale="mean")),
        ((xp, wp), dict(channels=c, pixel_scale="window_mean")),
        ((xp, wp), dict(channels=c, batch_norm=stats)),
        ((x, wp), dict(batch_norm=stats[:4])),
        ((x, wp), dict(batch_norm=(*stats[:4], float("nan")))),
        ((x, wp), dict(batch_norm=(*stats[:4], -1.0))),
        ((x, wp), dict(batch_norm=(stats[0], arr(np.ones(c + 1, np.float32)), None, None, 0.0))),
        ((x, wp), dict(batch_norm=(stats[0], stats[1], arr(np.ones(c)), None, 0.0))),
        ((x, wp), dict(batch_norm=(stats[0], stats[1], None, released, 0.0))),
        ((x.astype("double"), wp), {}),
        ((x, arr(np.ones((o, 3, 3, 2), np.uint32))), {}),                        # 2 words
        ((x, arr(np.ones((o, 9, 9, 1), np.uint32))), {}),                        # too large
        ((arr(np.ones((c, 7, 6), np.float32)), wp), {}),
        ((released, wp), {}),
    ]

    refused, taken, _ = compare_paths(monkeypatch, binary, "_xnor_conv2d_fast", gm.xnor_conv2d,
                                      calls)
    assert sum(refused) == 28
    assert taken[:5] == [True] * 5, taken


def test_the_quick_gemm_checks_agree_with_the_full_ones(backend, monkeypatch):
    """gm.xnor_gemm checks a binary linear layer's usual arguments by a short path and the
    rest by the full one: for each call here -- valid ones and ones each check must refuse --
    both give the same result bits, or the same error and message; the layer's calls take
    the short path."""
    from gpumat import binary, nn

    rng = np.random.default_rng(37)
    k, m, n = 45, 3, 5

    def arr(v, dtype=np.float32):
        return gm.array(np.asarray(v, dtype), backend=backend)

    a, b = arr(rand(rng, m, k)), arr(rand(rng, n, k))
    ap, bp = gm.pack_signs(a), gm.pack_signs(b)
    rows, cols, shift = arr(np.abs(rand(rng, m))), arr(np.abs(rand(rng, n))), arr(rand(rng, n))
    released = arr(np.ones(n))
    released.release()
    calls = [
        ((ap, bp, k), {}),
        ((ap, bp, k), dict(dtype="float32", row_scale=rows, col_scale=cols, bias=shift)),
        ((ap, bp, k), dict(dtype="single", col_scale=cols)),
        ((ap, bp, 33), {}),                                       # k one past a word
        ((ap, bp, k), dict(dtype="float32", bias=shift)),
        # the full path's, valid
        ((a, b), {}),
        ((ap, bp, np.int64(k)), {}),
        ((ap, bp, k), dict(dtype=np.float32, row_scale=rows)),
        ((ap, bp, k), dict(dtype="float32", col_scale=cols.reshape(n, 1))),
        # refused
        ((ap, bp, 0), {}),
        ((ap, bp, 65), {}),
        ((ap, bp, True), {}),
        ((ap, bp), {}),
        ((a, bp, k), {}),
        ((ap, bp, k), dict(dtype="float64")),
        ((ap, bp, k), dict(row_scale=rows)),                      # int32 with factors
        ((ap, bp, k), dict(dtype="float32", row_scale=cols)),     # wrong length
        ((ap, bp, k), dict(dtype="float32", bias=arr(np.ones(n), np.float64))),
        ((ap, bp, k), dict(dtype="float32", bias=released)),
        ((ap.reshape(1, m, -1), bp, k), {}),
        ((arr(np.ones((m, 2)), np.int32), bp, k), {}),
        ((released, bp, k), {}),
    ]

    refused, taken, _ = compare_paths(monkeypatch, binary, "_xnor_gemm_fast", gm.xnor_gemm,
                                      calls)
    assert refused == [False] * 9 + [True] * 13, refused
    assert taken[:5] == [True] * 5 and not any(taken[5:]), taken
    fc = nn.BinaryLinear(k, n, bias=True, mode="xnor")         # in inference: the short path
    fc.to(backend)
    fc.eval()

    def infer():
        with nn.no_grad():
            fc(a)
    assert count_short_calls(monkeypatch, binary, "_xnor_gemm_fast", infer) == [True]


def test_pack_conv_input_short_path(backend, monkeypatch):
    """gm.pack_conv_input's short path (a binary linear layer's every call) gives what the
    full checks give, results or errors and messages, and the layer's calls take it."""
    from gpumat import binary, nn
    rng = np.random.default_rng(41)
    n, c = 5, 37

    def arr(v, dtype=np.float32):
        return gm.array(np.asarray(v, dtype), backend=backend)

    x, image = arr(rand(rng, n, c, 1, 1)), arr(rand(rng, 2, c, 3, 4))
    mean, var = arr(rand(rng, c)), arr(np.abs(rand(rng, c)) + 0.5)
    weight, shift = arr(rand(rng, c)), arr(rand(rng, c))
    released = arr(np.ones(c))
    released.release()
    calls = [
        ((x,), {}),
        ((x, True), {}),
        ((image, True), {}),
        ((x, True), dict(batch_norm=(mean, var, weight, shift, 1e-5))),
        ((x, False), dict(batch_norm=(mean, var, None, None, 0.0))),
        ((image,), dict(batch_norm=(mean, var, weight, None, 1e-3))),
        # the full path's, valid
        ((x, 1), {}),
        ((x, True), dict(batch_norm=[mean, var, weight, shift, 1e-5])),
        ((x, True), dict(batch_norm=(mean, var, weight, shift, 1))),
        ((x, True), dict(batch_norm=(mean, var, weight, shift, np.float32(1e-5)))),
        # refused
        ((arr(rand(rng, n, c, 1, 1), np.float64),), {}),
        ((x.reshape(n, c),), {}),
        ((released,), {}),
        ((x, True), dict(batch_norm=(mean, var, weight, shift))),
        ((x, True), dict(batch_norm=(mean, None, weight, shift, 1e-5))),
        ((x, True), dict(batch_norm=(mean, var[:5], weight, shift, 1e-5))),
        ((x, True), dict(batch_norm=(mean, var, arr(np.ones(c), np.float64), shift, 1e-5))),
        ((x, True), dict(batch_norm=(mean, var, weight, released, 1e-5))),
        ((x, True), dict(batch_norm=(mean, var, weight, shift, -1e-5))),
        ((x, True), dict(batch_norm=(mean, var, weight, shift, float("inf")))),
    ]
    refused, taken, _ = compare_paths(monkeypatch, binary, "_pack_conv_input_fast",
                                      gm.pack_conv_input, calls)
    assert refused == [False] * 10 + [True] * 10, refused
    assert taken[:6] == [True] * 6 and not any(taken[6:]), taken
    fc = nn.BinaryLinear(c, 4, bias=True, mode="xnor").to(backend).eval()
    bn = nn.BatchNorm1d(c).to(backend).eval()

    def infer():
        with nn.no_grad():
            fc(x.reshape(n, c))
            fc(x.reshape(n, c), batch_norm=bn)
    assert count_short_calls(monkeypatch, binary, "_pack_conv_input_fast", infer) == [True] * 2


def test_array_like_operands_go_to_xs_backend(backend):
    """NumPy scale, bias and batch norm operands are placed on x's backend, whatever the
    default backend is, with the results of the same operands given as Arrays there."""
    r = np.random.default_rng(3)
    x = gm.array(r.standard_normal((2, 5, 6, 6)).astype(np.float32), backend=backend)
    w = gm.pack_conv_weight(gm.array(r.standard_normal((3, 5, 3, 3)).astype(np.float32),
                                     backend=backend))
    host = dict(filter_scale=r.random(3).astype(np.float32),
                bias=r.standard_normal(3).astype(np.float32))
    stats = (r.standard_normal(5).astype(np.float32), r.random(5).astype(np.float32) + 0.5)
    want = gm.xnor_conv2d(x, w, padding=1, batch_norm=(
        *(gm.array(v, backend=backend) for v in stats), None, None, 1e-5),
        **{k: gm.array(v, backend=backend) for k, v in host.items()})
    previous = gm.default_backend()
    try:
        for default in TESTED:
            gm.use(default)
            got = gm.xnor_conv2d(x, w, padding=1, batch_norm=(*stats, None, None, 1e-5), **host)
            assert got.backend == backend
            assert_same(got, want.gather())
    finally:
        gm.use(previous)


def test_operands_on_two_backends_are_refused():
    if len(TESTED) < 2:
        pytest.skip("needs two backends")
    first, second = TESTED[:2]
    x = gm.array(np.ones((1, 4, 5, 5), np.float32), backend=first)
    w = gm.array(np.ones((2, 4, 3, 3), np.float32), backend=second)
    with pytest.raises(gm.BackendMismatchError, match=f"{first}.*{second}"):
        gm.xnor_conv2d(x, w)
