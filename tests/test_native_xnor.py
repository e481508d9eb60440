"""The XNOR-popcount kernels of the cpu backend (kernels/cpu/xnor.hpp, gpumat/native.py,
gpumat/backends/cpu_xnor.py): pack_conv_input, xnor_gemm and xnor_conv2d, native and NumPy
twin, against independent float64 references (+-1 matrices, torch's conv2d on +-1 data) over
awkward shapes, on every instruction-set copy this CPU runs (in process and through
GPUMAT_CPU_ISA in a fresh interpreter), with garbage in the packed tails, on one thread and
several; their argument checks; the fallback without the module."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import gpumat.native as native
from gpumat.backends import get as get_backend

NATIVE = native._native
needs_native = pytest.mark.skipif(NATIVE is None, reason=f"gpumat._native is not built: "
                                                          f"{native.native_import_error}")
ISAS = NATIVE.xnor_isas() if NATIVE is not None else []

CHANNELS = [1, 3, 16, 31, 32, 33, 64, 100]
KS = [1, 5, 31, 32, 33, 63, 64, 65, 200]
SPECIAL = np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45],
                   dtype=np.float32)

#: (N, C, H, W, O, kernel, stride, padding)
GEOMETRIES = [
    (2, 16, 9, 11, 5, (3, 3), 1, 1),
    (1, 3, 7, 7, 4, (3, 3), 2, 1),
    (3, 33, 6, 5, 17, (3, 3), 1, 2),
    (2, 64, 8, 8, 16, (3, 3), 1, 1),
    (1, 100, 5, 7, 7, (1, 3), (1, 2), (0, 1)),
    (2, 31, 13, 13, 9, (5, 5), 3, 2),
    (3, 1, 1, 1, 1, (1, 1), 1, 0),
    (1, 1, 1, 1, 33, (3, 3), 1, 1),            # a 3x3 kernel over one pixel
    (3, 32, 17, 19, 33, (5, 5), 2, 2),
    (2, 16, 32, 32, 16, (3, 3), 1, 1),          # ResNet-20 stage 1
    (2, 16, 32, 32, 32, (3, 3), 2, 1),          # its downsampling
    (1, 8, 23, 29, 7, (3, 1), (3, 1), (1, 0)),
    (1, 5, 11, 3, 17, (5, 5), 1, 2),            # 6 columns of 5 channels share a word
    (3, 10, 13, 12, 6, (2, 4), (1, 3), (0, 2)),
    (1, 256, 14, 14, 17, (3, 3), 1, 1),
    (2, 65, 5, 5, 1, (3, 3), 1, 0),
]


def ids(geometry):
    n, c, h, w, o, k, s, p = geometry
    return f"n{n}c{c}h{h}w{w}o{o}k{k[0]}x{k[1]}s{s}p{p}"


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def words(n):
    return (n + 31) // 32


def signs(words_array, n):
    """The first n packed signs of each row as +-1 float64 (bit j of word w: element 32w + j;
    a set bit is +1) -- written from the specification, the tail bits past n ignored."""
    shifts = np.arange(32, dtype=np.uint32)
    bits = (words_array[..., :, None] >> shifts) & np.uint32(1)
    bits = bits.reshape(words_array.shape[:-1] + (words_array.shape[-1] * 32,))[..., :n]
    return np.where(bits == 1, 1.0, -1.0)


def with_garbage(packed, n, seed):
    """packed with random bits in the padding bits of each last word (n signs a row)."""
    rest = n % 32
    if rest == 0 or packed.size == 0:
        return packed
    rng = np.random.default_rng(seed)
    out = packed.copy()
    noise = rng.integers(0, 2 ** 32, out.shape[:-1], dtype=np.uint32)
    out[..., -1] |= noise & np.uint32(0xFFFFFFFF ^ ((1 << rest) - 1))
    return out


def random_words(shape, seed):
    return np.random.default_rng(seed).integers(0, 2 ** 32, shape, dtype=np.uint32)


def pack_reference(x):
    """pack_conv_input from pack_signs of the channels-last copy (a separate native kernel with
    its own tests) -- or bit by bit where the module is missing."""
    return native.pack_signs_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


def gemm_reference(a, b, k):
    return signs(a, k) @ signs(b, k).T


def conv_reference(xp, wp, channels, stride, padding):
    """float64 conv2d of the +-1 values, with zero padding, by torch."""
    x = torch.from_numpy(signs(xp, channels).transpose(0, 3, 1, 2).copy())
    w = torch.from_numpy(signs(wp, channels).transpose(0, 3, 1, 2).copy())
    return torch.nn.functional.conv2d(x, w, stride=pair(stride), padding=pair(padding)).numpy()


def out_hw(h, w, kernel, stride, padding):
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    return ((h + 2 * ph - kernel[0]) // sh + 1, (w + 2 * pw - kernel[1]) // sw + 1)


def conv_operands(geometry, seed):
    n, c, h, w, o, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((o, c) + kernel).astype(np.float32)
    xp = pack_reference(x)
    wp = pack_reference(weight)
    return xp, wp


def assert_exact(got, want, dtype, what):
    assert isinstance(got, np.ndarray), what
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = np.argwhere(got != want)
    assert bad.size == 0, (f"{what}: {len(bad)} of {got.size} values differ, first at "
                           f"{tuple(bad[0])}: {got[tuple(bad[0])]} != {want[tuple(bad[0])]}")


@pytest.fixture
def restore_isa():
    yield
    if NATIVE is not None:
        NATIVE.set_xnor_isa("auto")


@pytest.fixture
def restore_threads():
    threads = NATIVE.native_threads() if NATIVE is not None else 1
    yield
    if NATIVE is not None:
        NATIVE.set_native_threads(threads)


# ---- pack_conv_input --------------------------------------------------------------------------

def special_input(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if x.size:
        flat = x.reshape(-1)
        where = rng.choice(flat.size, size=max(1, flat.size // 4), replace=False)
        flat[where] = rng.choice(SPECIAL, size=where.size)
    return x


@pytest.mark.parametrize("channels", CHANNELS)
def test_pack_conv_input_twin_matches_reference(channels):
    x = special_input((3, channels, 5, 7), channels)
    want = pack_reference(x)
    assert want.shape == (3, 5, 7, words(channels))
    # and the reference itself, bit by bit: element 32 w + j in bit j of word w
    assert_exact(signs(want, channels), np.where(x >= 0, 1.0, -1.0).transpose(0, 2, 3, 1),
                 np.float64, "reference")
    assert_exact(native.pack_conv_input_numpy(x), want, np.uint32, f"twin C={channels}")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_pack_conv_input_native_matches_reference(isa, restore_isa):
    NATIVE.set_xnor_isa(isa)
    assert NATIVE.xnor_isa() == isa
    for channels in CHANNELS:
        for shape in [(1, channels, 1, 1), (3, channels, 5, 7), (2, channels, 13, 17),
                      (1, channels, 32, 32), (0, channels, 4, 4), (2, channels, 0, 3)]:
            x = special_input(shape, channels + shape[2])
            want = pack_reference(x)
            assert_exact(NATIVE.pack_conv_input(x), want, np.uint32, f"{isa} {shape}")
            assert_exact(native.pack_conv_input(x), want, np.uint32, f"{isa} {shape}")


@needs_native
def test_pack_conv_input_padding_bits_are_zero():
    for channels in (1, 17, 31, 33, 63):
        packed = native.pack_conv_input(np.ones((2, channels, 3, 5), np.float32))
        assert int(sum(bin(int(v)).count("1") for v in packed.reshape(-1))) == 2 * 15 * channels


@needs_native
def test_pack_conv_input_large_and_threaded(restore_threads):
    # big enough for the thread pool, and for several pixel blocks per image
    x = special_input((3, 40, 70, 90), 3)
    want = pack_reference(x)
    for threads in (1, 2, 3):
        NATIVE.set_native_threads(threads)
        assert_exact(native.pack_conv_input(x), want, np.uint32, f"{threads} threads")


@needs_native
def test_pack_conv_input_of_one_pixel_images(restore_threads):
    """N x C x 1 x 1 (a binary linear layer's rows) takes the row packer and sums each row in
    channel order, eight rows at a time: the twin's words and means exactly, for batches that
    are and are not multiples of eight, on one thread and two."""
    for channels in CHANNELS:
        for batch in (2, 9, 300):
            x = special_input((batch, channels, 1, 1), batch + channels)
            x[x == np.inf] = 1.5                      # means that are numbers, mostly
            want_words, want_mean = native.pack_conv_input_numpy(x, True)
            assert_exact(want_words, pack_reference(x), np.uint32, "twin")
            for threads in (1, 2):
                NATIVE.set_native_threads(threads)
                got_words, got_mean = NATIVE.pack_conv_input(x, True)
                what = f"C={channels} N={batch} threads={threads}"
                assert_exact(got_words, want_words, np.uint32, what)
                np.testing.assert_array_equal(got_mean, want_mean, err_msg=what)


# ---- xnor_gemm ---------------------------------------------------------------------------------

GEMM_SHAPES = [(1, 1), (3, 5), (7, 40), (17, 3), (33, 70), (16, 16), (100, 9), (0, 4), (4, 0),
               (2, 33)]


@pytest.mark.parametrize("k", KS)
def test_xnor_gemm_twin_matches_reference(k):
    for m, n in GEMM_SHAPES:
        a = random_words((m, words(k)), m + k)
        b = random_words((n, words(k)), n + 2 * k)
        want = gemm_reference(a, b, k)
        for dtype in (np.int32, np.float32):
            got = native.xnor_gemm_numpy(with_garbage(a, k, 1), with_garbage(b, k, 2), k, dtype)
            assert_exact(got, want, dtype, f"twin m={m} n={n} k={k}")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_xnor_gemm_native_matches_reference(isa, restore_isa):
    NATIVE.set_xnor_isa(isa)
    for k in KS:
        for m, n in GEMM_SHAPES:
            a = random_words((m, words(k)), m + k)
            b = random_words((n, words(k)), n + 2 * k)
            want = gemm_reference(a, b, k)
            garbage_a, garbage_b = with_garbage(a, k, 3), with_garbage(b, k, 4)
            for dtype in (np.int32, np.float32):
                what = f"{isa} m={m} n={n} k={k} {np.dtype(dtype).name}"
                assert_exact(native.xnor_gemm(a, b, k, dtype), want, dtype, what)
                assert_exact(NATIVE.xnor_gemm(garbage_a, garbage_b, k, np.dtype(dtype).name),
                             want, dtype, what + " (garbage tails)")


@needs_native
def test_xnor_gemm_epilogue_is_the_float32_operations(restore_threads):
    """row_scale, col_scale, bias: ((v * row_scale[m]) * col_scale[n]) + bias[n] in float32,
    one operation after another, native (one thread and two) and twin alike; int32 results
    refuse them."""
    rng = np.random.default_rng(5)
    for m, n, k in [(5, 7, 33), (37, 120, 400), (300, 4, 65), (1200, 900, 64)]:
        a, b = random_words((m, words(k)), m), random_words((n, words(k)), n)
        v = gemm_reference(a, b, k).astype(np.float32)
        row, col = (np.abs(rng.standard_normal(s)).astype(np.float32) for s in (m, n))
        bias = rng.standard_normal(n).astype(np.float32)
        for given in ({"row_scale": row}, {"col_scale": col}, {"bias": bias},
                      {"row_scale": row, "col_scale": col, "bias": bias}):
            want = v.copy()
            if "row_scale" in given:
                want = want * row[:, None]
            if "col_scale" in given:
                want = want * col[None, :]
            if "bias" in given:
                want = want + bias[None, :]
            what = f"m={m} n={n} k={k} {sorted(given)}"
            assert_exact(native.xnor_gemm_numpy(a, b, k, np.float32, **given), want,
                         np.float32, "twin " + what)
            for threads in (1, 2):
                NATIVE.set_native_threads(threads)
                assert_exact(native.xnor_gemm(a, b, k, np.float32, **given), want, np.float32,
                             f"native {threads} threads " + what)
    a = random_words((3, 1), 1)
    with pytest.raises(ValueError, match="need out_dtype float32"):
        native.xnor_gemm(a, a, 20, np.int32, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"row_scale must have shape \(3,\)"):
        native.xnor_gemm(a, a, 20, np.float32, row_scale=np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="need float32 results"):
        NATIVE.xnor_gemm(a, a, 20, "int32", None, None, np.zeros(3, np.float32))


@needs_native
def test_xnor_gemm_large_threaded_matches_twin(restore_threads):
    k = 1000
    a = random_words((130, words(k)), 1)
    b = random_words((300, words(k)), 2)
    want = native.xnor_gemm_numpy(a, b, k)
    for threads in (1, 2, 4):
        NATIVE.set_native_threads(threads)
        assert_exact(native.xnor_gemm(a, b, k), want, np.int32, f"{threads} threads")
        # and with the lanes along a (b has few rows)
        assert_exact(native.xnor_gemm(a, b[:5], k), want[:, :5], np.int32, f"{threads} few b")


@needs_native
def test_float_results_past_two_to_the_24():
    """Sums past 2**24 take the path that converts the int32 result (rounded once, as NumPy's
    cast of the exact value); smaller ones the exact FMA path."""
    k = (1 << 24) + 101
    a = random_words((2, words(k)), 5)
    b = random_words((3, words(k)), 6)
    b[0] = a[0]                              # a product of k, which float32 rounds
    want = native.xnor_gemm_numpy(a, b, k, np.int32)
    assert want[0, 0] == k
    got = native.xnor_gemm(a, b, k, np.float32)
    assert_exact(got, want.astype(np.float32), np.float32, "k past 2**24")
    channels = 20000 * 32 - 5                # 3 x 3 taps of 640K channels: 2**24 < 3 kh kw Wc 32
    xp = random_words((1, 3, 3, words(channels)), 7)
    wp = random_words((2, 3, 3, words(channels)), 8)
    wp[0] = xp[0]
    want = native.xnor_conv2d_numpy(xp, wp, channels, 1, 1, None, np.int32)
    got = native.xnor_conv2d(xp, wp, channels, 1, 1, None, np.float32)
    assert want[0, 0, 1, 1] == 9 * channels
    assert_exact(got, want.astype(np.float32), np.float32, "conv past 2**24")


# ---- xnor_conv2d -------------------------------------------------------------------------------

def conv_case(geometry, seed):
    n, c, h, w, o, kernel, stride, padding = geometry
    xp, wp = conv_operands(geometry, seed)
    return xp, wp, c, pair(stride), pair(padding), out_hw(h, w, kernel, stride, padding)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=ids)
def test_xnor_conv2d_twin_matches_torch(geometry):
    xp, wp, c, stride, padding, hw = conv_case(geometry, 11)
    want = conv_reference(xp, wp, c, stride, padding)
    got = native.xnor_conv2d_numpy(with_garbage(xp, c, 5), with_garbage(wp, c, 6), c, stride,
                                   padding, hw, np.int32)
    assert_exact(got, want, np.int32, ids(geometry))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_xnor_conv2d_native_matches_torch(isa, restore_isa):
    NATIVE.set_xnor_isa(isa)
    for geometry in GEOMETRIES:
        xp, wp, c, stride, padding, hw = conv_case(geometry, 12)
        want = conv_reference(xp, wp, c, stride, padding)
        what = f"{isa} {ids(geometry)}"
        assert_exact(native.xnor_conv2d(xp, wp, c, stride, padding, hw, np.float32), want,
                     np.float32, what)
        got = NATIVE.xnor_conv2d(with_garbage(xp, c, 7), with_garbage(wp, c, 8), c, stride,
                                 padding, hw, "int32")
        assert_exact(got, want, np.int32, what + " (garbage tails, int32)")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_xnor_conv2d_awkward_shapes(isa, restore_isa):
    """Every channel count against kernels 1x1, 3x3, 5x5 and 1x3, strides 1-3, padding 0-2,
    several filter counts (whole and partial blocks of filters, partial vectors of lanes)."""
    NATIVE.set_xnor_isa(isa)
    rng = np.random.default_rng(13)
    for index, channels in enumerate(CHANNELS):
        for kernel in [(1, 1), (3, 3), (5, 5), (1, 3)]:
            stride = [1, 2, 3][(index + kernel[0]) % 3]
            padding = [0, 1, 2][(index + kernel[1]) % 3]
            h, w = [(5, 7), (1, 1), (11, 2), (13, 13)][index % 4]
            if h + 2 * padding < kernel[0] or w + 2 * padding < kernel[1]:
                h, w = kernel[0] + 2, kernel[1] + 3
            o = [1, 7, 16, 17, 33][(index + kernel[0] + kernel[1]) % 5]
            n = [1, 3][index % 2]
            xp = random_words((n, h, w, words(channels)), rng.integers(1 << 30))
            wp = random_words((o,) + kernel + (words(channels),), rng.integers(1 << 30))
            hw = out_hw(h, w, kernel, stride, padding)
            want = conv_reference(xp, wp, channels, stride, padding)
            got = NATIVE.xnor_conv2d(xp, wp, channels, pair(stride), pair(padding), hw, "int32")
            what = f"{isa} C={channels} k={kernel} s={stride} p={padding} {h}x{w} O={o} N={n}"
            assert_exact(got, want, np.int32, what)
            assert_exact(native.xnor_conv2d_numpy(xp, wp, channels, stride, padding, hw,
                                                  np.int32), want, np.int32, "twin " + what)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_xnor_conv2d_strides_and_paddings_far_beyond_the_image(isa, restore_isa):
    """Rows that would be mostly padding are read in place, with the padded copy's results
    and a scratch that does not grow with the stride or padding (a 4 x 4 image at stride
    and padding 10**8 took 0.8 GB, 3.8 GB with window_mean)."""
    NATIVE.set_xnor_isa(isa)
    rng = np.random.default_rng(17)
    for channels, kernel, stride, padding, (h, w) in [
            (3, (3, 3), (1, 5000), (1, 4000), (4, 5)), (13, (3, 3), (2, 6000), (1, 5000), (6, 3)),
            (40, (1, 3), (3, 4500), (2, 4500), (7, 2)), (6, (5, 5), (4000, 1), (3000, 2), (5, 9))]:
        xp = random_words((2, h, w, words(channels)), rng.integers(1 << 30))
        wp = random_words((5,) + kernel + (words(channels),), rng.integers(1 << 30))
        hw = out_hw(h, w, kernel, stride, padding)
        want = conv_reference(xp, wp, channels, stride, padding)
        got = NATIVE.xnor_conv2d(xp, wp, channels, pair(stride), pair(padding), hw, "int32")
        assert_exact(got, want, np.int32, f"{isa} C={channels} s={stride} p={padding}")
    xp = random_words((1, 4, 4, 1), 5)
    wp = random_words((2, 3, 3, 1), 6)
    hw = out_hw(4, 4, (3, 3), (1, 10**8), (1, 10**8))
    got = NATIVE.xnor_conv2d(xp, wp, 3, (1, 10**8), (1, 10**8), hw, "int32")
    assert got.shape == (1, 2) + hw == (1, 2, 4, 3)
    assert_exact(got[:, :, :, 1:2], conv_reference(xp, wp, 3, 1, 1)[:, :, :, 1:2], np.int32,
                 "the one window over the image")


@needs_native
def test_xnor_conv2d_empty_batch_or_filters():
    for n, o in [(0, 4), (2, 0), (0, 0)]:
        xp = random_words((n, 5, 6, 1), 1)
        wp = random_words((o, 3, 3, 1), 2)
        for f in (native.xnor_conv2d, native.xnor_conv2d_numpy):
            got = f(xp, wp, 20, 1, 1, None, np.float32)
            assert got.shape == (n, o, 5, 6) and got.dtype == np.float32


def test_xnor_conv2d_on_an_empty_image_gives_zeros():
    # padding alone makes the output: every tap lies outside, so every sum is empty
    for n, h, w in [(2, 0, 4), (1, 3, 0)]:
        xp = random_words((n, h, w, 1), 1)
        wp = random_words((3, 1, 1, 1), 2)
        for f in (native.xnor_conv2d, native.xnor_conv2d_numpy):
            got = f(xp, wp, 7, 1, 1, None, np.int32)
            assert got.shape == (n, 3, h + 2, w + 2) and not got.any()


@needs_native
def test_xnor_conv2d_threads_and_row_blocks(restore_threads):
    # batches smaller than the pool's chunk count split images into blocks of output rows
    for geometry in [(1, 64, 30, 26, 64, (3, 3), 1, 1), (3, 16, 40, 40, 32, (3, 3), 2, 1),
                     (8, 96, 16, 16, 40, (3, 3), 1, 1)]:
        xp, wp, c, stride, padding, hw = conv_case(geometry, 14)
        want = conv_reference(xp, wp, c, stride, padding)
        for threads in (1, 2, 5):
            NATIVE.set_native_threads(threads)
            got = native.xnor_conv2d(xp, wp, c, stride, padding, hw, np.int32)
            assert_exact(got, want, np.int32, f"{ids(geometry)} {threads} threads")


@needs_native
def test_xnor_conv2d_keeps_its_weight_preparations(restore_isa):
    """The weight blocks and border table are made once per (weights, geometry, instruction
    set) and used again only while the weights' words are unchanged: a buffer refilled in
    place, another geometry or another instruction set each get their own, and every call's
    result is the reference's."""
    NATIVE.clear_xnor_prepared_cache()
    geometry = (2, 33, 9, 7, 17, (3, 3), 1, 1)
    xp, wp, c, stride, padding, hw = conv_case(geometry, 21)
    want = conv_reference(xp, wp, c, stride, padding)
    for _ in range(3):
        assert_exact(NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "int32"), want,
                     np.int32, "kept weights")
    stats = NATIVE.xnor_prepared_cache()
    assert (stats["entries"], stats["hits"], stats["misses"]) == (1, 2, 1), stats
    assert stats["bytes"] >= wp.nbytes
    # the same buffer refilled with other weights: the kept entry is stale, not used
    wp[...] = random_words(wp.shape, 22)
    want = conv_reference(xp, wp, c, stride, padding)
    assert_exact(NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "int32"), want, np.int32,
                 "refilled weights")
    # one bit of the last filter's last tap flipped (the end of the compared words)
    wp[-1, -1, -1, -1] ^= np.uint32(1)
    want = conv_reference(xp, wp, c, stride, padding)
    assert_exact(NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "int32"), want, np.int32,
                 "one bit flipped")
    stats = NATIVE.xnor_prepared_cache()
    assert (stats["entries"], stats["misses"]) == (1, 3), stats
    # another padding (another border table) and float output (a float table) of the same
    # weights, and every instruction set's copy
    for isa in ISAS:
        NATIVE.set_xnor_isa(isa)
        for pad, dtype in [((0, 0), "int32"), ((2, 1), "float32"), (padding, "float32")]:
            hw2 = out_hw(9, 7, (3, 3), stride, pad)
            want2 = conv_reference(xp, wp, c, stride, pad)
            for _ in range(2):
                assert_exact(NATIVE.xnor_conv2d(xp, wp, c, stride, pad, hw2, dtype),
                             want2.astype(dtype), np.dtype(dtype), f"{isa} {pad} {dtype}")
    NATIVE.clear_xnor_prepared_cache()
    assert NATIVE.xnor_prepared_cache()["entries"] == 0


@needs_native
def test_xnor_conv2d_weight_preparations_stay_bounded():
    """Many layers' weights: the cache keeps at most its entry count, the oldest leave first,
    and results stay exact for weights it dropped."""
    NATIVE.clear_xnor_prepared_cache()
    geometry = (1, 16, 5, 5, 4, (3, 3), 1, 1)
    xp, _, c, stride, padding, hw = conv_case(geometry, 23)
    layers = [random_words((4, 3, 3, 1), 100 + i) for i in range(130)]
    for wp in layers:
        NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "int32")
    stats = NATIVE.xnor_prepared_cache()
    assert 0 < stats["entries"] < len(layers), stats
    first = layers[0]
    assert_exact(NATIVE.xnor_conv2d(xp, first, c, stride, padding, hw, "int32"),
                 conv_reference(xp, first, c, stride, padding), np.int32, "dropped, remade")
    assert NATIVE.xnor_prepared_cache()["misses"] == len(layers) + 1
    NATIVE.clear_xnor_prepared_cache()


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_xnor_conv2d_packs_float_input_in_its_own_pass(isa, restore_isa):
    """Float input handed to the module as it is (each chunk packs the rows it reads): the
    values of packing it first, special values included, int32 and float32 with every
    factor of the epilogue, on every geometry."""
    NATIVE.set_xnor_isa(isa)
    for index, geometry in enumerate(GEOMETRIES):
        n, c, h, w, o, kernel, stride, padding = geometry
        x = special_input((n, c, h, w), 30 + index)
        wp = with_garbage(pack_reference(special_input((o, c) + kernel, 60 + index)), c, index)
        xp = pack_reference(x)
        hw = out_hw(h, w, kernel, stride, padding)
        geometry_args = (c, pair(stride), pair(padding), hw)
        what = f"{isa} {ids(geometry)}"
        assert_exact(NATIVE.xnor_conv2d(x, wp, *geometry_args, "int32"),
                     conv_reference(xp, wp, c, stride, padding), np.int32, what)
        rng = np.random.default_rng(index)
        factors = (rng.standard_normal((n,) + hw).astype(np.float32),
                   rng.standard_normal(o).astype(np.float32),
                   rng.standard_normal(o).astype(np.float32))
        assert_exact(NATIVE.xnor_conv2d(x, wp, *geometry_args, "float32", *factors),
                     NATIVE.xnor_conv2d(xp, wp, *geometry_args, "float32", *factors),
                     np.float32, what + " (float32, scaled)")


@needs_native
def test_xnor_conv2d_packs_float_input_in_row_blocks(restore_threads):
    # small batches split images into blocks of output rows, each packing the input rows its
    # planes read (overlapping its neighbours'), strided and padded
    for index, geometry in enumerate([(1, 64, 30, 26, 64, (3, 3), 1, 1),
                                      (3, 16, 40, 40, 32, (3, 3), 2, 1),
                                      (2, 40, 23, 9, 5, (5, 3), (2, 1), (2, 0)),
                                      (1, 7, 50, 6, 3, (4, 4), 3, 0)]):
        n, c, h, w, o, kernel, stride, padding = geometry
        x = special_input((n, c, h, w), 90 + index)
        wp = pack_reference(special_input((o, c) + kernel, 95 + index))
        want = conv_reference(pack_reference(x), wp, c, stride, padding)
        hw = out_hw(h, w, kernel, stride, padding)
        for threads in (1, 2, 5):
            NATIVE.set_native_threads(threads)
            got = NATIVE.xnor_conv2d(x, wp, c, pair(stride), pair(padding), hw, "int32")
            assert_exact(got, want, np.int32, f"{ids(geometry)} {threads} threads")


@needs_native
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 70), h=st.integers(1, 9), w=st.integers(1, 9),
       o=st.integers(1, 20), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       seed=st.integers(0, 1000))
def test_property_native_equals_twin(n, c, h, w, o, kh, kw, sh, sw, ph, pw, seed):
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    xp = random_words((n, h, w, words(c)), seed)
    wp = random_words((o, kh, kw, words(c)), seed + 1)
    hw = out_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    want = native.xnor_conv2d_numpy(xp, wp, c, (sh, sw), (ph, pw), hw, np.int32)
    assert_exact(NATIVE.xnor_conv2d(xp, wp, c, (sh, sw), (ph, pw), hw, "int32"), want, np.int32,
                 "property")


# ---- every copy through GPUMAT_CPU_ISA, in a fresh interpreter ---------------------------------

SUBPROCESS_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    import gpumat.native as native
    k = native.kernels()
    print(k.xnor_isa())
    rng = np.random.default_rng(0)
    xp = rng.integers(0, 2**32, (2, 9, 10, 2), dtype=np.uint32)
    wp = rng.integers(0, 2**32, (17, 3, 3, 2), dtype=np.uint32)
    a = rng.integers(0, 2**32, (9, 3), dtype=np.uint32)
    b = rng.integers(0, 2**32, (21, 3), dtype=np.uint32)
    x = rng.standard_normal((2, 40, 7, 9)).astype(np.float32)
    ok = (np.array_equal(k.xnor_conv2d(xp, wp, 50, (1, 2), (1, 1), (9, 5), "int32"),
                         native.xnor_conv2d_numpy(xp, wp, 50, (1, 2), (1, 1), (9, 5), np.int32))
          and np.array_equal(k.xnor_gemm(a, b, 70, "float32"),
                             native.xnor_gemm_numpy(a, b, 70, np.float32))
          and np.array_equal(k.pack_conv_input(x), native.pack_conv_input_numpy(x)))
    print("ok" if ok else "MISMATCH")
""")


@needs_native
@pytest.mark.parametrize("name,expected", [("baseline", "baseline"), ("avx2", "avx2"),
                                           ("avx512bw", "avx512bw"), ("avx512", None),
                                           ("no-such-isa", None)])
def test_environment_caps_the_isa(name, expected):
    if expected is not None and expected not in ISAS:
        pytest.skip(f"this CPU has no {expected}")
    if expected is None:      # avx512: the best copy up to AVX-512; unknown names: the best
        expected = ISAS[-1]
    env = dict(os.environ, GPUMAT_CPU_ISA=name)
    result = subprocess.run([sys.executable, "-c", SUBPROCESS_CHECK], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected, "ok"], result.stdout + result.stderr


@needs_native
def test_isa_selection():
    assert ISAS[0] in ("baseline", "portable")
    assert NATIVE.xnor_isa() in ISAS
    with pytest.raises(ValueError, match="not an instruction set"):
        NATIVE.set_xnor_isa("sse9")
    try:
        NATIVE.set_xnor_isa(ISAS[0])
        assert NATIVE.xnor_isa() == ISAS[0]
        NATIVE.set_xnor_isa("auto")
        assert NATIVE.xnor_isa() == ISAS[-1]
        if "avx512bw" in ISAS:          # the direct convolutions' name: the best AVX-512 copy
            NATIVE.set_xnor_isa(ISAS[0])
            NATIVE.set_xnor_isa("avx512")
            assert NATIVE.xnor_isa() == ISAS[-1]
    finally:
        NATIVE.set_xnor_isa("auto")


@needs_native
def test_the_two_kernel_families_choose_their_copies_apart():
    """One ladder implementation (kernels/cpu/isa.hpp), one selection per family: moving the
    XNOR kernels to their baseline copy leaves the direct convolutions' choice alone, and each
    family knows only its own names."""
    direct = NATIVE.direct_conv_isas()
    try:
        NATIVE.set_xnor_isa(ISAS[0])
        assert NATIVE.direct_conv_isa() == direct[-1]
        NATIVE.set_direct_conv_isa(direct[0])
        assert (NATIVE.xnor_isa(), NATIVE.direct_conv_isa()) == (ISAS[0], direct[0])
        with pytest.raises(ValueError, match="'avx512bw' is not an instruction set"):
            NATIVE.set_direct_conv_isa("avx512bw")
        assert NATIVE.direct_conv_isa() == direct[0]            # a refused name changes nothing
    finally:
        NATIVE.set_xnor_isa("auto")
        NATIVE.set_direct_conv_isa("auto")
    assert (NATIVE.xnor_isa(), NATIVE.direct_conv_isa()) == (ISAS[-1], direct[-1])


# ---- argument checks ---------------------------------------------------------------------------

BAD_DTYPES = [np.int32, np.float64, np.uint8, np.int64]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_wrong_dtypes_raise_type_error_naming_them(dtype):
    name = np.dtype(dtype).name
    good_w = np.zeros((4, 3, 3, 1), np.uint32)
    for f in (native.xnor_conv2d, native.xnor_conv2d_numpy):
        with pytest.raises(TypeError, match=f"xp.*{name}"):
            f(np.zeros((1, 5, 5, 1), dtype), good_w, 20, 1, 1)
        with pytest.raises(TypeError, match=f"wp.*{name}"):
            f(np.zeros((1, 5, 5, 1), np.uint32), good_w.astype(dtype), 20, 1, 1)
    for f in (native.xnor_gemm, native.xnor_gemm_numpy):
        with pytest.raises(TypeError, match=f"a.*{name}"):
            f(np.zeros((2, 1), dtype), np.zeros((2, 1), np.uint32), 5)
        with pytest.raises(TypeError, match=f"b.*{name}"):
            f(np.zeros((2, 1), np.uint32), np.zeros((2, 1), dtype), 5)
    if name != "float32":
        for f in (native.pack_conv_input, native.pack_conv_input_numpy):
            with pytest.raises(TypeError, match=name):
                f(np.zeros((1, 2, 3, 3), dtype))


def test_bad_out_dtype_and_shapes_raise():
    a = np.zeros((2, 2), np.uint32)
    xp, wp = np.zeros((1, 5, 5, 1), np.uint32), np.zeros((4, 3, 3, 1), np.uint32)
    for f in (native.xnor_gemm, native.xnor_gemm_numpy):
        with pytest.raises(TypeError, match="out_dtype.*float64"):
            f(a, a, 40, np.float64)
        with pytest.raises(ValueError, match="k = 70 needs 3 words.*shape \\(2, 2\\)"):
            f(a, a, 70)
        with pytest.raises(ValueError, match="k must be"):
            f(a, a, 0)
        with pytest.raises(TypeError, match="k must be an int"):
            f(a, a, 40.0)
        with pytest.raises(ValueError, match="a must be 2-dimensional.*\\(2, 2, 1\\)"):
            f(a[..., None], a, 40)
    for f in (native.xnor_conv2d, native.xnor_conv2d_numpy):
        with pytest.raises(TypeError, match="out_dtype.*int64"):
            f(xp, wp, 20, 1, 1, None, np.int64)
        with pytest.raises(ValueError, match="40 channels need 2 words.*\\(1, 5, 5, 1\\)"):
            f(xp, wp, 40, 1, 1)
        with pytest.raises(ValueError, match="channels must be at least 1, got 0"):
            f(xp, wp, 0, 1, 1)
        with pytest.raises(ValueError, match="stride must be at least 1"):
            f(xp, wp, 20, 0, 1)
        with pytest.raises(ValueError, match="padding must be at least 0"):
            f(xp, wp, 20, 1, -1)
        with pytest.raises(ValueError, match="out_hw is \\(4, 5\\).*\\(5, 5\\)"):
            f(xp, wp, 20, 1, 1, (4, 5))
        with pytest.raises(ValueError, match="exceeds the padded input 5 x 5"):
            f(xp, np.zeros((4, 7, 3, 1), np.uint32), 20, 1, 0)
        with pytest.raises(ValueError, match="xp must be 4-dimensional.*\\(5, 5, 1\\)"):
            f(xp[0], wp, 20, 1, 1)
    for f in (native.pack_conv_input, native.pack_conv_input_numpy):
        with pytest.raises(ValueError, match="4-dimensional.*\\(2, 3, 4\\)"):
            f(np.zeros((2, 3, 4), np.float32))
        with pytest.raises(TypeError):
            f([[[[1.0]]]])


@needs_native
def test_module_checks_its_arguments_itself():
    a = np.zeros((2, 2), np.uint32)
    xp, wp = np.zeros((1, 5, 5, 1), np.uint32), np.zeros((4, 3, 3, 1), np.uint32)
    with pytest.raises(TypeError, match="a must be uint32.*int32"):
        NATIVE.xnor_gemm(a.astype(np.int32), a, 40, "int32")
    with pytest.raises(TypeError, match="out_dtype must be int32 or float32, got float16"):
        NATIVE.xnor_gemm(a, a, 40, "float16")
    with pytest.raises(ValueError, match="k = 70 needs 3 words"):
        NATIVE.xnor_gemm(a, a, 70, "int32")
    with pytest.raises(ValueError, match="C-contiguous"):
        NATIVE.xnor_gemm(np.zeros((2, 4), np.uint32)[:, ::2], a, 40, "int32")
    with pytest.raises(TypeError, match="xp must be uint32.*or float32.*got dtype float64"):
        NATIVE.xnor_conv2d(xp.astype(np.float64), wp, 20, (1, 1), (1, 1), (5, 5), "int32")
    with pytest.raises(ValueError, match=r"float input xp \(1, 5, 5, 1\) has 5 channels, "
                                         r"but channels = 20"):
        NATIVE.xnor_conv2d(xp.astype(np.float32), wp, 20, (1, 1), (1, 1), (5, 5), "int32")
    with pytest.raises(ValueError, match="C-contiguous"):
        NATIVE.xnor_conv2d(np.zeros((1, 20, 5, 10), np.float32)[..., ::2], wp, 20, (1, 1),
                           (1, 1), (5, 5), "int32")
    with pytest.raises(ValueError, match="out_hw is \\(5, 4\\)"):
        NATIVE.xnor_conv2d(xp, wp, 20, (1, 1), (1, 1), (5, 4), "int32")
    with pytest.raises(ValueError, match="stride must be at least 1"):
        NATIVE.xnor_conv2d(xp, wp, 20, (1, 0), (1, 1), (5, 5), "int32")
    with pytest.raises(ValueError, match="channels"):
        NATIVE.xnor_conv2d(xp, wp, 33, (1, 1), (1, 1), (5, 5), "int32")
    with pytest.raises(ValueError, match="too large"):
        NATIVE.xnor_conv2d(xp, wp, 20, (1, 1), (1 << 40, 1), (5, 5), "int32")
    with pytest.raises(ValueError, match="exceeds the padded input"):
        NATIVE.xnor_conv2d(xp, np.zeros((4, 9, 3, 1), np.uint32), 20, (1, 1), (1, 1), (5, 5),
                           "int32")
    with pytest.raises(TypeError, match="x must be float32.*float64"):
        NATIVE.pack_conv_input(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="4-dimensional"):
        NATIVE.pack_conv_input(np.zeros((2, 3, 3), np.float32))


# ---- the fallback and the backend --------------------------------------------------------------

def test_fallback_uses_the_twins_and_warns_once(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_fallback_warned", False)
    monkeypatch.setattr(native, "native_import_error", "ImportError: simulated for the test")
    xp, wp, c, stride, padding, hw = conv_case(GEOMETRIES[2], 15)
    a, b = random_words((5, 2), 1), random_words((7, 2), 2)
    x = special_input((2, 33, 4, 5), 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert_exact(native.xnor_conv2d(xp, wp, c, stride, padding, hw, np.int32),
                         conv_reference(xp, wp, c, stride, padding), np.int32, "fallback")
            assert_exact(native.xnor_gemm(a, b, 50), gemm_reference(a, b, 50), np.int32,
                         "fallback")
            assert_exact(native.pack_conv_input(x), pack_reference(x), np.uint32, "fallback")
    fallback = [w for w in caught if issubclass(w.category, native.NativeFallbackWarning)]
    assert len(fallback) == 1 and "simulated for the test" in str(fallback[0].message)


@pytest.mark.parametrize("with_module", [True, False])
def test_cpu_backend_methods(with_module, monkeypatch):
    if with_module and NATIVE is None:
        pytest.skip("gpumat._native is not built")
    backend = get_backend("cpu")
    if not with_module:
        monkeypatch.setattr(native, "_native", None)
        monkeypatch.setattr(native, "_fallback_warned", True)
    x = special_input((2, 20, 6, 7), 17)
    weight = special_input((5, 20, 3, 3), 18)
    xp = backend.pack_conv_input(x)
    assert_exact(xp, pack_reference(x), np.uint32, "backend pack_conv_input")
    wp = pack_reference(weight)
    before = backend.memory_info()["bytes_in_use"]
    y = backend.xnor_conv2d(xp, wp, 20, (2, 1), (1, 0), (3, 5), np.dtype(np.float32))
    assert backend.memory_info()["bytes_in_use"] == before + y.nbytes
    assert_exact(y, conv_reference(xp, wp, 20, (2, 1), (1, 0)), np.float32, "backend conv")
    # float input, packed by the backend's convolution itself (the twin packs it first)
    assert backend.xnor_conv2d_fuses_layer
    assert_exact(backend.xnor_conv2d(x, wp, 20, (2, 1), (1, 0), (3, 5), np.dtype(np.float32)),
                 y, np.float32, "backend conv of float input")
    a, b = random_words((6, 3), 3), random_words((4, 3), 4)
    assert_exact(backend.xnor_gemm(a, b, 90, np.dtype(np.int32)), gemm_reference(a, b, 90),
                 np.int32, "backend gemm")


# ---- the fused epilogue and the fused mean of |x| ----------------------------------------------

#: (N, C, H, W, O, kernel, stride, padding): C = 1, 16, 33; O = 1, 17; strides 1 and 2;
#: padding 0, 1, 2; partial vectors of lanes and partial blocks of filters
EPILOGUE_GEOMETRIES = [
    (2, 1, 7, 9, 17, (3, 3), 1, 1),
    (3, 16, 9, 11, 1, (3, 3), 2, 2),
    (2, 33, 6, 5, 17, (3, 3), 1, 0),
    (1, 16, 13, 12, 17, (3, 3), 1, 1),
    (2, 33, 11, 10, 1, (5, 5), 2, 2),
    (1, 1, 5, 6, 1, (1, 1), 2, 0),
    (2, 16, 32, 32, 17, (3, 3), 1, 1),          # ResNet-20 stage 1 (16-bit lanes), threaded
    (4, 64, 8, 8, 17, (3, 3), 2, 1),
]


def scale_operands(n, o, hw, seed):
    """pixel_scale (N, OH, OW), filter_scale (O,), bias (O,): float32 of both signs, zeros
    among them (a -0.0 product must stay -0.0 where no bias follows)."""
    rng = np.random.default_rng(seed)
    pixel = rng.standard_normal((n,) + tuple(hw)).astype(np.float32)
    pixel.reshape(-1)[::7] = 0.0
    filt = rng.standard_normal(o).astype(np.float32) * np.float32(0.37)
    bias = rng.standard_normal(o).astype(np.float32)
    return pixel, filt, bias


def scaled_reference(y, pixel, filt, bias):
    """((y * K) * alpha) + bias in float32 NumPy, each factor left out where None."""
    out = y
    if pixel is not None:
        out = out * pixel[:, None]
    if filt is not None:
        out = out * filt[None, :, None, None]
    if bias is not None:
        out = out + bias[None, :, None, None]
    assert out.dtype == np.float32
    return out


def assert_bits_equal(got, want, what):
    """Equal values with equal signs (-0.0 apart from 0.0): the same float32 bits."""
    assert got.dtype == np.float32 and got.shape == want.shape, what
    np.testing.assert_array_equal(got, want, err_msg=what)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want), err_msg=what)


SCALE_COMBINATIONS = [(p, f, b) for p in (False, True) for f in (False, True)
                      for b in (False, True)]


def check_epilogue(conv, geometry, seed, label):
    xp, wp, c, stride, padding, hw = conv_case(geometry, seed)
    n, o = xp.shape[0], wp.shape[0]
    y = conv(xp, wp, c, stride, padding, hw, np.float32)
    assert_exact(y, conv_reference(xp, wp, c, stride, padding).astype(np.float32),
                 np.float32, f"{label} {ids(geometry)} unfused")
    pixel, filt, bias = scale_operands(n, o, hw, seed + 1)
    # the residual is added last: after every combination of the others (a product right
    # before it included, where an FMA contraction would show), zeros of both signs in it
    residual = np.random.default_rng(seed).standard_normal((n, o) + hw).astype(np.float32)
    residual.reshape(-1)[::5] = 0.0
    residual.reshape(-1)[1::5] = -0.0
    for use_pixel, use_filter, use_bias in SCALE_COMBINATIONS:
        args = (pixel if use_pixel else None, filt if use_filter else None,
                bias if use_bias else None)
        want = scaled_reference(y, *args)
        what = f"{label} {ids(geometry)} scales {use_pixel, use_filter, use_bias}"
        assert_bits_equal(conv(xp, wp, c, stride, padding, hw, np.float32, *args), want, what)
        assert_bits_equal(conv(xp, wp, c, stride, padding, hw, np.float32, *args,
                               residual=residual), want + residual, what + " + residual")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_xnor_conv2d_fused_epilogue_is_bit_exact(isa, restore_isa):
    """The epilogue fused into every copy's stores equals the float32 NumPy expression on the
    unfused result bit for bit (no FMA contraction), every combination of factors."""
    NATIVE.set_xnor_isa(isa)

    def conv(xp, wp, c, stride, padding, hw, dtype, *scales, residual=None):
        return NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, np.dtype(dtype).name, *scales,
                                  residual=residual)

    for index, geometry in enumerate(EPILOGUE_GEOMETRIES):
        check_epilogue(conv, geometry, 40 + index, isa)


def test_xnor_conv2d_twin_fused_epilogue_is_bit_exact():
    for index, geometry in enumerate(EPILOGUE_GEOMETRIES[:6]):
        check_epilogue(native.xnor_conv2d_numpy, geometry, 40 + index, "twin")


@needs_native
def test_xnor_conv2d_fused_epilogue_threads(restore_threads):
    geometry = (3, 32, 16, 16, 33, (3, 3), 1, 1)
    for threads in (1, 3):
        NATIVE.set_native_threads(threads)
        check_epilogue(native.xnor_conv2d, geometry, 60, f"{threads} threads")


@needs_native
def test_xnor_conv2d_fused_epilogue_past_two_to_the_24():
    """The path that converts the int32 result (sums past 2**24) fuses the same epilogue."""
    channels = 20000 * 32 - 5
    xp = random_words((1, 3, 3, words(channels)), 7)
    wp = random_words((2, 3, 3, words(channels)), 8)
    wp[0] = xp[0]
    y = native.xnor_conv2d(xp, wp, channels, 1, 1, None, np.float32)
    pixel, filt, bias = scale_operands(1, 2, (3, 3), 9)
    got = native.xnor_conv2d(xp, wp, channels, 1, 1, None, np.float32, pixel, filt, bias)
    assert_bits_equal(got, scaled_reference(y, pixel, filt, bias), "past 2**24")


def mean_abs_input(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 10.0, size=(1, shape[1], 1, 1)))
    x = x.astype(np.float32)
    x.reshape(-1)[::11] = -0.0
    return x


@pytest.mark.parametrize("channels", CHANNELS)
def test_pack_conv_input_twin_mean_abs(channels):
    x = mean_abs_input((3, channels, 5, 7), channels)
    packed, mean = native.pack_conv_input_numpy(x, mean_abs=True)
    assert_exact(packed, pack_reference(x), np.uint32, "twin packed")
    assert mean.dtype == np.float32 and mean.shape == (3, 1, 5, 7)
    np.testing.assert_allclose(mean, np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True),
                               rtol=1e-6, atol=0)
    assert_exact(native.pack_conv_input_numpy(x, False), pack_reference(x), np.uint32,
                 "twin packed, no mean")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_pack_conv_input_native_mean_abs(isa, restore_isa):
    """The mean of |x| from the packing pass: within 1e-6 of float64, bit-identical to the
    twin (the same float32 sum in channel order and division), the packed signs unchanged."""
    NATIVE.set_xnor_isa(isa)
    for channels in CHANNELS:
        for shape in [(3, channels, 5, 7), (1, channels, 1, 1), (2, channels, 17, 9)]:
            x = mean_abs_input(shape, channels + shape[2])
            want_packed = pack_reference(x)
            packed, mean = NATIVE.pack_conv_input(x, True)
            what = f"{isa} {shape}"
            assert_exact(packed, want_packed, np.uint32, what)
            assert_exact(NATIVE.pack_conv_input(x), want_packed, np.uint32, what + " plain")
            assert_exact(NATIVE.pack_conv_input(x, False), want_packed, np.uint32, what)
            assert mean.dtype == np.float32 and mean.shape == (shape[0], 1) + shape[2:]
            reference = np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True)
            np.testing.assert_allclose(mean, reference, rtol=1e-6, atol=0, err_msg=what)
            np.testing.assert_array_equal(mean, native.pack_conv_input_numpy(x, True)[1],
                                          err_msg=what)


@needs_native
def test_pack_conv_input_mean_abs_large_and_threaded(restore_threads):
    x = mean_abs_input((32, 16, 32, 32), 5)
    x[3, :, 4, 4] = np.nan                      # NaN propagates to its pixel's mean only
    for threads in (1, 3):
        NATIVE.set_native_threads(threads)
        packed, mean = native.pack_conv_input(x, mean_abs=True)
        assert_exact(packed, pack_reference(x), np.uint32, f"{threads} threads")
        np.testing.assert_array_equal(mean, native.pack_conv_input_numpy(x, True)[1])
        assert np.isnan(mean[3, 0, 4, 4]) and np.isnan(mean).sum() == 1


# ---- XNOR-Net's K made inside the convolution (window_mean) -------------------------------------

#: (N, C, H, W, O, kernel, stride, padding): borders, strides, a window larger than the image
WINDOW_GEOMETRIES = EPILOGUE_GEOMETRIES + [
    (1, 5, 3, 3, 2, (3, 3), 3, 2), (2, 40, 9, 7, 3, (5, 3), (2, 1), (2, 0)),
    (1, 7, 30, 6, 4, (4, 4), 3, 1), (1, 70, 4, 4, 9, (5, 5), 1, 2),
    # rows of more than one 16-lane vector at strides 1, 2 and 3 (a partial second vector)
    (1, 8, 5, 37, 3, (3, 3), 1, 1), (1, 8, 9, 45, 3, (3, 3), 2, 1), (1, 3, 5, 52, 2, (3, 3), 3, 1),
    # output rows summed several at a time (8, 4, 2 and 1 side by side): LeNet-5's 5 x 5
    # layer (8 + 2 rows), and a tall stride-2 image with borders (1 + 8 + 8 + 2 + 1)
    (3, 6, 14, 14, 16, (5, 5), 1, 0), (1, 8, 40, 20, 3, (3, 3), 2, 1),
    # strides and paddings far beyond the image: rows read in place (xnor.hpp's
    # mostly_padding), with column groups, 16-bit lanes and two channel words
    (1, 5, 4, 5, 3, (3, 3), (1, 5000), (1, 4000)), (2, 13, 6, 3, 4, (3, 3), (2, 6000), (1, 5000)),
    (1, 40, 3, 2, 5, (1, 3), (1, 4500), (0, 4500))]


def window_reference(mean, kernel, stride, padding):
    """The mean over each kernel window of float64 ``mean``, the padding's zeros counted."""
    kh, kw = kernel
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    padded = np.pad(mean[:, 0].astype(np.float64), ((0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    return windows[:, ::sh, ::sw].mean(axis=(3, 4))


def check_window_mean(conv, geometry, seed, label):
    """conv (the module or the backend) with float input and window_mean equals the packed
    path given K = window_mean_numpy(mean) as its pixel scale, bit for bit; that K is the
    window average to float32 rounding."""
    n, c, h, w, o, kernel, stride, padding = geometry
    x = mean_abs_input((n, c, h, w), seed)
    wp = pack_reference(mean_abs_input((o, c) + kernel, seed + 1))
    xp, mean = native.pack_conv_input_numpy(x, True)
    hw = out_hw(h, w, kernel, stride, padding)
    k = native.window_mean_numpy(mean, kernel, stride, padding, hw)
    # a float32 sum of at most kh kw = 25 positive terms and one division: within 2e-6
    np.testing.assert_allclose(k, window_reference(mean, kernel, stride, padding), rtol=2e-6,
                               atol=0, err_msg=f"{label} {ids(geometry)} K")
    _, filt, bias = scale_operands(n, o, hw, seed + 2)
    for factors in [(None, None), (filt, None), (filt, bias), (None, bias)]:
        got = conv(x, wp, c, pair(stride), pair(padding), hw, factors, True)
        want = native.xnor_conv2d_numpy(xp, wp, c, stride, padding, hw, np.float32, k,
                                        *factors)
        assert_bits_equal(got, want, f"{label} {ids(geometry)} window_mean "
                                     f"{[f is not None for f in factors]}")


def module_conv(x, wp, c, stride, padding, hw, factors, window_mean, bn=(None,) * 4 + (1e-5,)):
    mean, var, weight, bias, eps = bn
    return NATIVE.xnor_conv2d(x, wp, c, stride, padding, hw, "float32", None, *factors,
                              window_mean=window_mean, bn_mean=mean, bn_var=var,
                              bn_weight=weight, bn_bias=bias, bn_eps=eps)


def test_window_mean_numpy_without_the_module():
    # the twin's K alone (the module's tests above compare against it)
    for index, geometry in enumerate(WINDOW_GEOMETRIES):
        n, c, h, w, o, kernel, stride, padding = geometry
        mean = np.abs(mean_abs_input((n, 1, h, w), index))
        hw = out_hw(h, w, kernel, stride, padding)
        k = native.window_mean_numpy(mean, kernel, stride, padding, hw)
        assert k.dtype == np.float32 and k.shape == (n,) + hw
        np.testing.assert_allclose(k, window_reference(mean, kernel, stride, padding),
                                   rtol=2e-6, atol=0, err_msg=ids(geometry))


@needs_native
def test_window_mean_arguments_are_checked():
    x = mean_abs_input((2, 20, 6, 7), 3)
    xp, wp = pack_reference(x), pack_reference(mean_abs_input((5, 20, 3, 3), 4))
    k = np.ones((2, 6, 7), np.float32)
    with pytest.raises(ValueError, match="window_mean makes the pixel scale from the float32"):
        NATIVE.xnor_conv2d(xp, wp, 20, (1, 1), (1, 1), (6, 7), "float32", window_mean=True)
    with pytest.raises(ValueError, match="no pixel_scale"):
        NATIVE.xnor_conv2d(x, wp, 20, (1, 1), (1, 1), (6, 7), "float32", k, window_mean=True)
    with pytest.raises(ValueError, match="window_mean and residual need out_dtype float32"):
        NATIVE.xnor_conv2d(x, wp, 20, (1, 1), (1, 1), (6, 7), "int32", window_mean=True)


def test_epilogue_arguments_are_checked():
    xp, wp, c, stride, padding, hw = conv_case((2, 20, 6, 7, 5, (3, 3), 1, 1), 3)
    pixel, filt, bias = scale_operands(2, 5, hw, 4)
    functions = [native.xnor_conv2d, native.xnor_conv2d_numpy]
    for conv in functions:
        for name, bad in [("pixel_scale", pixel.astype(np.float64)),
                          ("filter_scale", filt.astype(np.float16)),
                          ("bias", bias.astype(np.int32)), ("bias", list(bias))]:
            kwargs = {name: bad}
            with pytest.raises(TypeError, match=name):
                conv(xp, wp, c, stride, padding, hw, np.float32, **kwargs)
        for name, bad in [("pixel_scale", pixel[:1]), ("pixel_scale", pixel[:, None]),
                          ("filter_scale", filt[:4]), ("bias", np.concatenate([bias, bias[:1]]))]:
            with pytest.raises(ValueError, match=name):
                conv(xp, wp, c, stride, padding, hw, np.float32, **{name: bad})
        with pytest.raises(ValueError, match="float32"):
            conv(xp, wp, c, stride, padding, hw, np.int32, pixel_scale=pixel)
        residual = np.zeros((2, 5) + hw, np.float32)
        with pytest.raises(ValueError, match=r"residual must have shape \(2, 5, 6, 7\)"):
            conv(xp, wp, c, stride, padding, hw, np.float32, residual=residual[:, :4])
        with pytest.raises(TypeError, match="residual"):
            conv(xp, wp, c, stride, padding, hw, np.float32, residual=residual.astype(np.float16))
        with pytest.raises(ValueError, match="residual need out_dtype float32"):
            conv(xp, wp, c, stride, padding, hw, np.int32, residual=residual)
    if NATIVE is not None:
        for name, bad in [("pixel_scale", pixel.astype(np.float64)),
                          ("filter_scale", filt.astype(np.float16))]:
            with pytest.raises(TypeError, match=name):
                NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "float32", **{name: bad})
        with pytest.raises(ValueError, match="bias"):
            NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "float32", bias=bias[:3])
        with pytest.raises(ValueError, match="float32"):
            NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "int32", bias=bias)
        # a strided pixel_scale: the module wants it contiguous, the wrapper copies it
        strided = np.repeat(pixel, 2, axis=2)[:, :, ::2]
        with pytest.raises(ValueError, match="pixel_scale"):
            NATIVE.xnor_conv2d(xp, wp, c, stride, padding, hw, "float32", strided)
        np.testing.assert_array_equal(
            native.xnor_conv2d(xp, wp, c, stride, padding, hw, np.float32, strided),
            native.xnor_conv2d(xp, wp, c, stride, padding, hw, np.float32, pixel))


# ---- the batch norm in front folded into the packing pass (bn_mean & co.) -----------------------

def batch_norm_operands(channels, seed):
    """Evaluation statistics and affine parameters: negative weights among them, and a mean
    that equals some inputs exactly (see bn_input), so that normalized zeros occur."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(channels).astype(np.float32)
    var = (rng.uniform(0.01, 4.0, channels)).astype(np.float32)
    weight = rng.standard_normal(channels).astype(np.float32)
    bias = (0.5 * rng.standard_normal(channels)).astype(np.float32)
    bias[::3] = 0.0
    return mean, var, weight, bias


def bn_input(shape, mean, seed):
    x = mean_abs_input(shape, seed) + mean.reshape(1, -1, 1, 1)
    x[:, :, ::3, ::2] = mean.reshape(1, -1, 1, 1)      # (x - mean) == 0 exactly
    return x


def check_batch_norm_fold(conv, geometry, seed, label):
    """conv (module or backend) with float input and bn_*: bit for bit the packed path on the
    cpu backend's own batch norm output, with and without weight and bias, with K made in the
    pass or given, scaled and plain."""
    backend = get_backend("cpu")
    n, c, h, w, o, kernel, stride, padding = geometry
    mean, var, weight, bias = batch_norm_operands(c, seed)
    x = bn_input((n, c, h, w), mean, seed + 1)
    wp = pack_reference(mean_abs_input((o, c) + kernel, seed + 2))
    hw = out_hw(h, w, kernel, stride, padding)
    _, filt, shift = scale_operands(n, o, hw, seed + 3)
    for bn_weight, bn_bias, eps in [(weight, bias, 1e-5), (None, None, 1e-3), (weight, None, 0.0)]:
        y = backend.batch_norm_forward(x, bn_weight, bn_bias, mean, var, eps)[0]
        packed, y_mean = native.pack_conv_input_numpy(y, True)
        k = native.window_mean_numpy(y_mean, kernel, stride, padding, hw)
        what = f"{label} {ids(geometry)} weight={bn_weight is not None} bias={bn_bias is not None}"
        got = conv(x, wp, c, pair(stride), pair(padding), hw, (filt, shift), True,
                   (mean, var, bn_weight, bn_bias, eps))
        assert_bits_equal(got, native.xnor_conv2d_numpy(packed, wp, c, stride, padding, hw,
                                                        np.float32, k, filt, shift), what)
        got = conv(x, wp, c, pair(stride), pair(padding), hw, (None, None), False,
                   (mean, var, bn_weight, bn_bias, eps))
        assert_bits_equal(got, native.xnor_conv2d_numpy(packed, wp, c, stride, padding, hw,
                                                        np.float32), what + " plain")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_xnor_conv2d_window_mean_and_batch_norm_are_the_twins(isa, restore_isa):
    """K made in the pass, and the batch norm in front folded into it: every copy's bits are
    the twins' (K) and the separate batch norm's (the fold)."""
    NATIVE.set_xnor_isa(isa)
    for index, geometry in enumerate(WINDOW_GEOMETRIES):
        check_window_mean(module_conv, geometry, 70 + index, isa)
        check_batch_norm_fold(module_conv, geometry, 100 + index, isa)


@needs_native
def test_xnor_conv2d_window_mean_and_batch_norm_threaded(restore_threads):
    # whole images per chunk (batch 32) and blocks of output rows (small batches)
    for threads in (1, 2, 5):
        NATIVE.set_native_threads(threads)
        for index, geometry in enumerate([(32, 16, 32, 32, 16, (3, 3), 1, 1),
                                          (1, 64, 30, 26, 9, (3, 3), 1, 1),
                                          (3, 40, 17, 11, 5, (3, 3), 2, 1)]):
            label = f"{threads} threads"
            check_window_mean(module_conv, geometry, 80 + index, label)
            check_batch_norm_fold(module_conv, geometry, 110 + index, label)


@needs_native
def test_batch_norm_fold_arguments_are_checked():
    mean, var, weight, bias = batch_norm_operands(20, 1)
    x = bn_input((2, 20, 6, 7), mean, 2)
    xp, wp = pack_reference(x), pack_reference(mean_abs_input((5, 20, 3, 3), 4))
    geometry = (20, (1, 1), (1, 1), (6, 7), "float32")
    with pytest.raises(ValueError, match="bn_mean normalizes the float32 input"):
        NATIVE.xnor_conv2d(xp, wp, *geometry, bn_mean=mean, bn_var=var)
    with pytest.raises(ValueError, match="bn_mean needs bn_var"):
        NATIVE.xnor_conv2d(x, wp, *geometry, bn_mean=mean)
    with pytest.raises(ValueError, match="need bn_mean"):
        NATIVE.xnor_conv2d(x, wp, *geometry, bn_var=var)
    with pytest.raises(ValueError, match=r"bn_weight must have shape \(20,\)"):
        NATIVE.xnor_conv2d(x, wp, *geometry, bn_mean=mean, bn_var=var, bn_weight=weight[:4])
    with pytest.raises(TypeError, match="bn_bias must be float32"):
        NATIVE.xnor_conv2d(x, wp, *geometry, bn_mean=mean, bn_var=var,
                           bn_bias=bias.astype(np.float64))
    with pytest.raises(ValueError, match="bn_eps must be finite and >= 0"):
        NATIVE.xnor_conv2d(x, wp, *geometry, bn_mean=mean, bn_var=var, bn_eps=-1.0)


# pack_conv_input's batch norm: the pixel path (any image) and the row path (one-pixel images,
# a binary linear layer's rows: blocks of 8, so 9 and 17 rows leave a partial block)
PACK_BN_SHAPES = [(9, 400, 1, 1), (17, 33, 1, 1), (8, 1, 1, 1), (1, 120, 1, 1),
                  (3, 20, 6, 7), (2, 64, 5, 3), (300, 31, 1, 1)]


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_pack_conv_input_batch_norm_is_the_separate_batch_norm_packed(isa, restore_isa,
                                                                      restore_threads):
    """pack_conv_input(x, bn_*) (and its channel means) bit for bit the cpu backend's own
    batch norm output packed, on every instruction-set copy and thread count, with and
    without weight and bias."""
    NATIVE.set_xnor_isa(isa)
    backend = get_backend("cpu")
    for index, shape in enumerate(PACK_BN_SHAPES):
        mean, var, weight, bias = batch_norm_operands(shape[1], 130 + index)
        x = bn_input(shape, mean, 140 + index)
        x.reshape(-1)[5::97] = np.nan
        for bn_weight, bn_bias, eps in [(weight, bias, 1e-5), (None, None, 1e-3),
                                        (weight, None, 0.0)]:
            y = backend.batch_norm_forward(x, bn_weight, bn_bias, mean, var, eps)[0]
            want, want_mean = native.pack_conv_input_numpy(y, True)
            what = f"{isa} {shape} weight={bn_weight is not None} bias={bn_bias is not None}"
            for threads in (1, 2, 7):
                NATIVE.set_native_threads(threads)
                packed, got_mean = NATIVE.pack_conv_input(x, True, mean, var, bn_weight,
                                                          bn_bias, eps)
                assert_exact(packed, want, np.uint32, what)
                assert_bits_equal(got_mean, want_mean, what + " mean")
                assert_exact(NATIVE.pack_conv_input(x, False, mean, var, bn_weight, bn_bias,
                                                    eps), want, np.uint32, what + " plain")


@needs_native
def test_pack_conv_input_batch_norm_arguments_are_checked():
    mean, var, weight, bias = batch_norm_operands(20, 1)
    x = bn_input((4, 20, 1, 1), mean, 2)
    with pytest.raises(ValueError, match="pack_conv_input: bn_mean needs bn_var"):
        NATIVE.pack_conv_input(x, True, mean)
    with pytest.raises(ValueError, match="pack_conv_input: bn_var, bn_weight and bn_bias need "
                                         "bn_mean"):
        NATIVE.pack_conv_input(x, True, None, var)
    with pytest.raises(ValueError, match=r"pack_conv_input: bn_weight must have shape \(20,\)"):
        NATIVE.pack_conv_input(x, True, mean, var, weight[:4])
    with pytest.raises(TypeError, match="pack_conv_input: bn_bias must be float32"):
        NATIVE.pack_conv_input(x, True, mean, var, None, bias.astype(np.float64))
    with pytest.raises(ValueError, match="pack_conv_input: bn_eps must be finite and >= 0"):
        NATIVE.pack_conv_input(x, False, mean, var, None, None, float("nan"))
    assert_exact(NATIVE.pack_conv_input(x), pack_reference(x), np.uint32, "still usable")


@pytest.mark.parametrize("with_module", [True, False])
def test_cpu_backend_fused_methods(with_module, monkeypatch):
    if with_module and NATIVE is None:
        pytest.skip("gpumat._native is not built")
    backend = get_backend("cpu")
    if not with_module:
        monkeypatch.setattr(native, "_native", None)
        monkeypatch.setattr(native, "_fallback_warned", True)
    x = mean_abs_input((2, 20, 6, 7), 17)
    before = backend.memory_info()["bytes_in_use"]
    xp, mean = backend.pack_conv_input(x, mean_abs=True)
    assert backend.memory_info()["bytes_in_use"] == before + xp.nbytes + mean.nbytes
    assert_exact(xp, pack_reference(x), np.uint32, "backend pack_conv_input")
    assert_exact(backend.pack_conv_input(x), pack_reference(x), np.uint32, "plain")
    np.testing.assert_allclose(mean, np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True),
                               rtol=1e-6, atol=0)
    wp = pack_reference(mean_abs_input((5, 20, 3, 3), 18))
    y = backend.xnor_conv2d(xp, wp, 20, (1, 1), (1, 1), (6, 7), np.dtype(np.float32))
    k = np.ascontiguousarray(mean.reshape(2, 6, 7))
    alpha = np.linspace(0.5, 1.5, 5, dtype=np.float32)
    bias = np.linspace(-1, 1, 5, dtype=np.float32)
    got = backend.xnor_conv2d(xp, wp, 20, (1, 1), (1, 1), (6, 7), np.dtype(np.float32),
                              pixel_scale=k, filter_scale=alpha, bias=bias)
    assert_bits_equal(got, scaled_reference(y, k, alpha, bias), "backend fused")
    got = backend.xnor_conv2d(xp, wp, 20, (1, 1), (1, 1), (6, 7), np.dtype(np.float32), k,
                              alpha)
    assert_bits_equal(got, scaled_reference(y, k, alpha, None), "backend fused, no bias")

    def backend_conv(x, wp, c, stride, padding, hw, factors, window_mean):
        return backend.xnor_conv2d(x, wp, c, stride, padding, hw, np.dtype(np.float32), None,
                                   *factors, window_mean=window_mean)

    # float input and K made from it: the module in its pass, the twins beforehand, one result
    for index, geometry in enumerate(WINDOW_GEOMETRIES[:4]):
        check_window_mean(backend_conv, geometry, 90 + index, f"backend {with_module}")

    def backend_bn_conv(x, wp, c, stride, padding, hw, factors, window_mean, bn):
        mean, var, weight, shift, eps = bn
        before = backend.memory_info()["bytes_in_use"]
        y = backend.xnor_conv2d(x, wp, c, stride, padding, hw, np.dtype(np.float32), None,
                                *factors, window_mean=window_mean, bn_mean=mean, bn_var=var,
                                bn_weight=weight, bn_bias=shift, bn_eps=eps)
        # only the result stays counted (the twins' normalized input was a temporary)
        assert backend.memory_info()["bytes_in_use"] == before + y.nbytes
        return y

    # ... and the batch norm in front, folded into the pass or run first: the same bits
    for index, geometry in enumerate(WINDOW_GEOMETRIES[:4]):
        check_batch_norm_fold(backend_bn_conv, geometry, 120 + index, f"backend {with_module}")
