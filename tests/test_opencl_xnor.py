"""The opencl backend's XNOR-popcount kernels (gpumat/backends/opencl_xnor.py over
kernels/common/xnor.h): pack_conv_input, xnor_gemm and xnor_conv2d, called at the backend
level and compared with float64 NumPy references on +-1 data (and torch's conv2d).

The same common source is the CUDA build, so the kernels are also built here with the GPU
and CUDA parameters (scalar filter words, interleaved work-items, popcount instructions)
and with awkward tunables (tiny local stages that force chunking, odd vector widths and
pixel blocks), and the CUDA launcher's geometry (cuda_xnor.conv_launches) is run through
the OpenCL build of the kernel.
"""
import numpy as np
import pytest

pytest.importorskip("pyopencl")

from gpumat.backends import cuda_xnor, opencl_xnor  # noqa: E402
from gpumat.errors import KernelBuildError, ShapeError  # noqa: E402


@pytest.fixture
def params():
    """Force kernel parameters for one test (restored afterwards)."""
    saved = opencl_xnor.PARAMETERS

    def use(values):
        opencl_xnor.PARAMETERS = None if values is None else dict(values)
    yield use
    opencl_xnor.PARAMETERS = saved


# ---- independent references -----------------------------------------------------------------

def signs(x):
    """+1 where x >= 0, else -1 (NaN -> -1), as float64."""
    with np.errstate(invalid="ignore"):
        return np.where(x >= 0, 1.0, -1.0)


def pack_rows(x):
    """(..., n) floats -> (..., ceil(n / 32)) uint32, bit j of word w = x[32 w + j] >= 0."""
    n = x.shape[-1]
    words = -(-n // 32)
    with np.errstate(invalid="ignore"):
        bits = np.zeros(x.shape[:-1] + (words * 32,), np.uint64)
        bits[..., :n] = x >= 0
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    return (bits.reshape(x.shape[:-1] + (words, 32)) * weights).sum(-1).astype(np.uint32)


def with_garbage(packed, n, rng):
    """``packed`` rows of n signs with random bits in the padding of each last word."""
    r = n % 32
    if r == 0:
        return packed
    garbage = rng.integers(0, 2**32, packed.shape[:-1], dtype=np.uint64).astype(np.uint32)
    out = packed.copy()
    out[..., -1] |= garbage & np.uint32(~((1 << r) - 1) & 0xFFFFFFFF)
    return out


def conv_reference(x, w, stride, padding):
    """float64 conv2d (cross-correlation) with zero padding: N C H W x O C kh kw."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def run_conv(ocl, x, w, stride, padding, out_dtype=np.int32, garbage_rng=None):
    """pack_conv_input(x), w packed in NumPy, xnor_conv2d; returns (result, packed x)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = ocl.pack_conv_input(ocl.from_numpy(x))
    wp_host = pack_rows(np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
    if garbage_rng is not None:
        wp_host = with_garbage(wp_host, c, garbage_rng)
        xp_host = with_garbage(ocl.to_numpy(xp), c, garbage_rng)
        ocl.free(xp)
        xp = ocl.from_numpy(xp_host)
    out_hw = (out_size(h, kh, stride[0], padding[0]), out_size(wd, kw, stride[1], padding[1]))
    y = ocl.xnor_conv2d(xp, ocl.from_numpy(wp_host), c, stride, padding, out_hw, out_dtype)
    return ocl.to_numpy(y), ocl.to_numpy(xp)


def check_conv(ocl, rng, n, c, h, wd, o, kh, kw, stride, padding, out_dtype=np.int32,
               garbage=False):
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
    got, _ = run_conv(ocl, x, w, stride, padding, out_dtype, rng if garbage else None)
    expected = conv_reference(signs(x), signs(w), stride, padding)
    assert got.dtype == np.dtype(out_dtype)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.astype(np.float64), expected)


def check_gemm(ocl, rng, m, n, k, out_dtype=np.int32, garbage=False):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    ap, bp = pack_rows(a), pack_rows(b)
    if garbage:
        ap, bp = with_garbage(ap, k, rng), with_garbage(bp, k, rng)
    got = ocl.to_numpy(ocl.xnor_gemm(ocl.from_numpy(ap), ocl.from_numpy(bp), k, out_dtype))
    assert got.dtype == np.dtype(out_dtype) and got.shape == (m, n)
    np.testing.assert_array_equal(got.astype(np.float64), signs(a) @ signs(b).T)


# ---- pack_conv_input ------------------------------------------------------------------------

@pytest.mark.parametrize("n,c,h,w", [
    (1, 1, 1, 1), (3, 3, 5, 7), (2, 16, 4, 4), (1, 31, 3, 11), (2, 32, 1, 17),
    (1, 33, 7, 3), (3, 64, 2, 5), (2, 100, 5, 5), (1, 40, 33, 1),
])
def test_pack_conv_input(ocl, n, c, h, w):
    rng = np.random.default_rng(n * 1000 + c * 10 + h)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    flat = x.reshape(-1)
    specials = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, -np.nan], np.float32)
    flat[rng.choice(flat.size, min(flat.size, 6), replace=False)] = specials[:min(flat.size, 6)]
    got = ocl.to_numpy(ocl.pack_conv_input(ocl.from_numpy(x)))
    assert got.dtype == np.uint32 and got.shape == (n, h, w, -(-c // 32))
    np.testing.assert_array_equal(got, pack_rows(np.ascontiguousarray(x.transpose(0, 2, 3, 1))))


def test_pack_conv_input_signs_of_zero_and_nan(ocl):
    x = np.array([[-0.0, 0.0, np.nan, -1.0, 1.0, -np.inf, np.inf]], np.float32)
    x = x.reshape(1, 7, 1, 1)
    got = ocl.to_numpy(ocl.pack_conv_input(ocl.from_numpy(x)))
    assert got.reshape(-1)[0] == 0b1010011     # -0.0 and +0.0 -> 1, NaN -> 0


@pytest.mark.parametrize("shape", [(0, 5, 3, 3), (2, 5, 0, 3), (2, 5, 3, 0)])
def test_pack_conv_input_empty(ocl, shape):
    got = ocl.pack_conv_input(ocl.from_numpy(np.zeros(shape, np.float32)))
    assert got.shape == (shape[0], shape[2], shape[3], 1) and got.dtype == np.uint32


# ---- xnor_gemm ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 5, 31, 32, 33, 63, 64, 65, 200])
@pytest.mark.parametrize("m,n", [(1, 1), (7, 16), (17, 33), (40, 3), (1, 70)])
def test_xnor_gemm(ocl, m, n, k):
    check_gemm(ocl, np.random.default_rng(m * 7919 + n * 31 + k), m, n, k)


@pytest.mark.parametrize("out_dtype", [np.int32, np.float32])
def test_xnor_gemm_dtypes_and_garbage_padding(ocl, out_dtype):
    rng = np.random.default_rng(5)
    for m, n, k in [(9, 20, 45), (33, 2, 100), (3, 3, 1)]:
        check_gemm(ocl, rng, m, n, k, out_dtype, garbage=True)


@pytest.mark.parametrize("m,n", [(0, 5), (5, 0), (0, 0)])
def test_xnor_gemm_empty(ocl, m, n):
    a = ocl.from_numpy(np.zeros((m, 2), np.uint32))
    b = ocl.from_numpy(np.zeros((n, 2), np.uint32))
    got = ocl.xnor_gemm(a, b, 40, np.int32)
    assert got.shape == (m, n) and got.dtype == np.int32


def test_xnor_gemm_k_zero(ocl):
    a = ocl.from_numpy(np.zeros((3, 0), np.uint32))
    b = ocl.from_numpy(np.zeros((4, 0), np.uint32))
    np.testing.assert_array_equal(ocl.to_numpy(ocl.xnor_gemm(a, b, 0, np.float32)),
                                  np.zeros((3, 4), np.float32))


def test_xnor_gemm_both_roles(ocl):
    """Either operand may play the filters (opencl_xnor.gemm_roles): both give a @ b.T."""
    params = opencl_xnor.parameters(ocl)
    rng = np.random.default_rng(11)
    roles = set()
    for m, n in [(2, 300), (300, 2), (64, 64)]:
        roles.add(opencl_xnor.gemm_roles(m, n, params))
        check_gemm(ocl, rng, m, n, 77)
    assert roles == {"a", "b"}


# ---- xnor_conv2d ----------------------------------------------------------------------------

# (N, C, H, W, O, kh, kw, stride, padding): every C, kernel, stride and padding of the issue,
# H and W of 1 and primes, batches of 1 and 3, O off the tile sizes
CONV_CASES = [
    (1, 1, 5, 5, 1, 3, 3, (1, 1), (1, 1)),
    (3, 3, 7, 11, 7, 3, 3, (1, 1), (1, 1)),
    (2, 16, 8, 8, 16, 3, 3, (1, 1), (1, 1)),
    (1, 16, 13, 13, 17, 3, 3, (2, 2), (1, 1)),
    (3, 31, 5, 7, 33, 3, 3, (1, 1), (0, 0)),
    (1, 32, 11, 5, 16, 1, 1, (1, 1), (0, 0)),
    (2, 33, 7, 7, 7, 5, 5, (1, 1), (2, 2)),
    (1, 64, 6, 6, 17, 3, 3, (2, 2), (1, 1)),
    (1, 100, 5, 5, 33, 3, 3, (3, 3), (2, 2)),
    (3, 16, 1, 1, 7, 3, 3, (1, 1), (1, 1)),
    (1, 3, 1, 13, 16, 1, 3, (1, 1), (0, 1)),
    (2, 32, 13, 1, 1, 3, 3, (2, 1), (1, 1)),
    (1, 5, 17, 19, 33, 5, 5, (3, 2), (2, 1)),
    (3, 64, 3, 2, 16, 1, 3, (1, 2), (0, 2)),
    (1, 7, 9, 9, 1, 5, 5, (1, 1), (0, 0)),
    (2, 1, 31, 29, 17, 3, 3, (2, 3), (0, 1)),
    (1, 12, 4, 4, 7, 1, 1, (3, 3), (2, 2)),
    (1, 40, 3, 3, 7, 5, 5, (1, 1), (2, 2)),      # every tap of some pixels outside
    (2, 200, 4, 5, 16, 3, 3, (1, 1), (1, 1)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_xnor_conv2d(ocl, case):
    n, c, h, w, o, kh, kw, stride, padding = case
    check_conv(ocl, np.random.default_rng(sum(case[:7])), n, c, h, w, o, kh, kw, stride,
               padding)


@pytest.mark.parametrize("out_dtype", [np.int32, np.float32])
def test_xnor_conv2d_matches_torch(ocl, out_dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for n, c, h, w, o, kh, kw, stride, padding in CONV_CASES[::3]:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
        got, _ = run_conv(ocl, x, wt, stride, padding, out_dtype)
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(signs(x)), torch.from_numpy(signs(wt)), stride=stride,
            padding=padding).numpy()
        assert got.dtype == np.dtype(out_dtype)
        np.testing.assert_array_equal(got.astype(np.float64), expected)


def test_xnor_conv2d_garbage_padding(ocl):
    rng = np.random.default_rng(17)
    for n, c, h, w, o, kh, kw, stride, padding in CONV_CASES:
        if c % 32:
            check_conv(ocl, rng, n, c, h, w, o, kh, kw, stride, padding, np.float32,
                       garbage=True)


@pytest.mark.parametrize("n,o", [(0, 5), (2, 0), (0, 0)])
def test_xnor_conv2d_empty(ocl, n, o):
    xp = ocl.from_numpy(np.zeros((n, 4, 4, 1), np.uint32))
    wp = ocl.from_numpy(np.zeros((o, 3, 3, 1), np.uint32))
    got = ocl.xnor_conv2d(xp, wp, 20, (1, 1), (1, 1), (4, 4), np.int32)
    assert got.shape == (n, o, 4, 4) and got.dtype == np.int32


def test_xnor_conv2d_empty_image(ocl):
    """H = 0 with padding: every tap is outside, so every output is 0."""
    xp = ocl.from_numpy(np.zeros((2, 0, 3, 1), np.uint32))
    wp = ocl.from_numpy(np.ones((4, 1, 1, 1), np.uint32))
    got = ocl.xnor_conv2d(xp, wp, 8, (1, 1), (1, 0), (2, 3), np.float32)
    np.testing.assert_array_equal(ocl.to_numpy(got), np.zeros((2, 4, 2, 3), np.float32))


def test_xnor_conv2d_batch_split(ocl, monkeypatch):
    """Batches whose pixel count would overflow the kernel's ints run as several launches
    (here forced small): images n0 .. n0 + N - 1 land in their own output planes."""
    monkeypatch.setattr(opencl_xnor, "_INT_MAX", 1000)
    rng = np.random.default_rng(23)
    defines = opencl_xnor.kernel_defines(opencl_xnor.parameters(ocl), 9)
    assert opencl_xnor.images_per_launch(100, defines) < 5   # so 5 images take 2 launches
    check_conv(ocl, rng, 5, 20, 10, 10, 9, 3, 3, (1, 1), (1, 1))


# ---- tunables and the other dialect's configuration -----------------------------------------

TUNABLES = {
    "gpu": dict(opencl_xnor.GPU_PARAMETERS),
    "cuda": dict(cuda_xnor.DEFINES, XNOR_VW=1, XNOR_PACK_VW=1, PACK_WG=64),
    # a 64-word stage: chunks of (tap, word) rows, and fewer taps per combined row
    "cpu_chunked": dict(opencl_xnor.CPU_PARAMETERS, XNOR_LOCAL_WORDS=64, XNOR_NV=2),
    "cpu_small": dict(opencl_xnor.CPU_PARAMETERS, XNOR_VW=4, XNOR_NV=3, XNOR_PB=5,
                      XNOR_WG=2, XNOR_PACK_VW=4, PACK_WG=3),
    "cpu_flat": dict(opencl_xnor.CPU_PARAMETERS, XNOR_VW=8, XNOR_PB=16, XNOR_WG=8,
                     XNOR_FLAT_STAGE=1, XNOR_CONTIGUOUS=0, XNOR_PACK_VW=8),
    "scalar_csa": dict(opencl_xnor.GPU_PARAMETERS, XNOR_CSA=1, XNOR_NV=3, XNOR_PB=2,
                       XNOR_WG=16, XNOR_LOCAL_WORDS=96, XNOR_FLAT_STAGE=0),
}
TUNED_CONV_CASES = [CONV_CASES[i] for i in (1, 3, 6, 8, 12, 15, 17, 18)]


@pytest.mark.parametrize("name", [None] + list(TUNABLES))
def test_gemm_epilogue_with_every_tunables_set(ocl, params, name):
    """xnor_gemm with row_scale / col_scale / bias (a's rows as the pixels, b's as the
    filters, whatever pads less otherwise): ((v * r) * c) + b bit for bit."""
    params(None if name is None else TUNABLES[name])
    rng = np.random.default_rng(43)
    for m, n, k in [(5, 40, 200), (33, 7, 65), (1, 1, 31), (70, 3, 400)]:
        a, b = (rng.standard_normal(s).astype(np.float32) for s in ((m, k), (n, k)))
        r, c = (np.abs(rng.standard_normal(s)).astype(np.float32) for s in (m, n))
        bias = rng.standard_normal(n).astype(np.float32)
        got = ocl.to_numpy(ocl.xnor_gemm(
            ocl.from_numpy(pack_rows(a)), ocl.from_numpy(pack_rows(b)), k, np.float32,
            row_scale=ocl.from_numpy(r), col_scale=ocl.from_numpy(c),
            bias=ocl.from_numpy(bias)))
        want = ((((signs(a) @ signs(b).T).astype(np.float32) * r[:, None]) * c[None, :])
                + bias[None, :])
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", list(TUNABLES))
def test_non_default_tunables(ocl, params, name):
    params(TUNABLES[name])
    rng = np.random.default_rng(29)
    for n, c, h, w, o, kh, kw, stride, padding in TUNED_CONV_CASES:
        check_conv(ocl, rng, n, c, h, w, o, kh, kw, stride, padding, np.float32,
                   garbage=True)
    for m, n, k in [(5, 40, 200), (33, 7, 65), (1, 1, 31)]:
        check_gemm(ocl, rng, m, n, k, garbage=True)


def test_cuda_scaled_gemm_rows_are_bounded_by_its_grid():
    """A scaled xnor_gemm on cuda makes b's rows the filter blocks of grid y: up to
    65535 * XNOR_NV rows pass, more are a ShapeError naming xnor_gemm (not the convolution
    it launches)."""
    most = 65535 * cuda_xnor.DEFINES["XNOR_NV"]
    for rows in (1, 7, 9, most):
        cuda_xnor.check_scaled_gemm_rows(rows)
    with pytest.raises(ShapeError, match=f"xnor_gemm: .* at most {most:,} rows; b has "
                       f"{most + 1:,}"):
        cuda_xnor.check_scaled_gemm_rows(most + 1)


def test_cuda_launch_geometry_on_opencl(ocl):
    """cuda_xnor's launches (grid of blocks, batch splits) run the OpenCL build of the same
    kernel with cuda_xnor's defines: global size = grid * block."""
    rng = np.random.default_rng(31)
    for n, c, h, w, o, kh, kw, stride, padding in TUNED_CONV_CASES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
        out_hw = (out_size(h, kh, stride[0], padding[0]),
                  out_size(w, kw, stride[1], padding[1]))
        defines = dict(cuda_xnor.conv_defines(o), XNOR_VW=1, XNOR_PACK_VW=1)
        knl = opencl_xnor._kernel(ocl, "xnor_conv2d", defines)
        xp = ocl.from_numpy(pack_rows(np.ascontiguousarray(x.transpose(0, 2, 3, 1))))
        wp = ocl.from_numpy(pack_rows(np.ascontiguousarray(wt.transpose(0, 2, 3, 1))))
        out = ocl.empty((n, o) + out_hw, np.int32)
        launches = cuda_xnor.conv_launches(n, out_hw[0] * out_hw[1], o, defines)
        for first, count, grid, block in launches:
            knl(ocl.queue, (grid[0] * block[0], grid[1]), block[:2], xp.data, wp.data,
                out.data, first, count, h, w, -(-c // 32), c, o, kh, kw, *stride, *padding,
                *out_hw, o * out_hw[0] * out_hw[1], out_hw[0] * out_hw[1], 1, 0,
                None, None, None, None, 0)
        np.testing.assert_array_equal(ocl.to_numpy(out).astype(np.float64),
                                      conv_reference(signs(x), signs(wt), stride, padding))


def test_cuda_gemm_roles_mirror_opencl():
    for m, n in [(1, 300), (300, 1), (64, 64), (7, 9)]:
        assert cuda_xnor.gemm_roles(m, n) == opencl_xnor.gemm_roles(
            m, n, dict(cuda_xnor.DEFINES, XNOR_VW=1))


def test_build_error_carries_the_log(ocl, params):
    params(dict(opencl_xnor.CPU_PARAMETERS, XNOR_LOCAL_WORDS=8))   # < one row of filters
    x = ocl.from_numpy(np.ones((1, 4, 2, 2), np.float32))
    wp = ocl.from_numpy(np.ones((4, 1, 1, 1), np.uint32))
    with pytest.raises(KernelBuildError) as info:
        ocl.xnor_conv2d(ocl.pack_conv_input(x), wp, 4, (1, 1), (0, 0), (2, 2), np.int32)
    assert "XNOR_LOCAL_WORDS" in str(info.value)


# ---- fused inference: mean |x| while packing, scale / bias epilogue while storing ---------

MEAN_CASES = [(1, 1, 5, 5), (2, 16, 8, 8), (3, 33, 7, 9), (1, 64, 4, 4), (2, 100, 3, 17),
              (1, 32, 1, 1), (2, 5, 33, 1)]


def check_mean_abs(ocl, n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) * rng.uniform(0.1, 10)).astype(np.float32)
    x.reshape(-1)[:2] = [-0.0, -np.inf if c > 40 else 0.0][:min(2, x.size)]
    packed, mean = ocl.pack_conv_input(ocl.from_numpy(x), mean_abs=True)
    got_packed, got_mean = ocl.to_numpy(packed), ocl.to_numpy(mean)
    np.testing.assert_array_equal(got_packed, ocl.to_numpy(ocl.pack_conv_input(
        ocl.from_numpy(x))))
    np.testing.assert_array_equal(got_packed, pack_rows(np.ascontiguousarray(
        x.transpose(0, 2, 3, 1))))
    assert got_mean.dtype == np.float32 and got_mean.shape == (n, 1, h, w)
    np.testing.assert_allclose(got_mean, np.abs(x.astype(np.float64)).mean(1, keepdims=True),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("n,c,h,w", MEAN_CASES)
def test_pack_conv_input_mean_abs(ocl, n, c, h, w):
    check_mean_abs(ocl, n, c, h, w, n * 100 + c + h)


@pytest.mark.parametrize("name", ["gpu", "cuda", "cpu_small", "cpu_flat"])
def test_pack_conv_input_mean_abs_tunables(ocl, params, name):
    params(TUNABLES[name])
    for i, (n, c, h, w) in enumerate(MEAN_CASES):
        check_mean_abs(ocl, n, c, h, w, i)


def test_pack_conv_input_mean_abs_empty(ocl):
    packed, mean = ocl.pack_conv_input(ocl.from_numpy(np.zeros((2, 3, 0, 4), np.float32)),
                                       mean_abs=True)
    assert packed.shape == (2, 0, 4, 1) and mean.shape == (2, 1, 0, 4)
    assert mean.dtype == np.float32


# (N, C, H, W, O, k, stride, padding): C = 1, 16, 33; O = 1, 17; stride 2; padding 0, 1, 2
EPILOGUE_CASES = [
    (2, 1, 7, 9, 17, 3, 1, 1),
    (3, 16, 8, 8, 1, 3, 2, 1),
    (1, 33, 6, 7, 17, 3, 1, 0),
    (2, 16, 9, 5, 17, 5, 2, 2),
    (1, 33, 5, 5, 1, 1, 2, 0),
    (2, 64, 4, 4, 33, 3, 1, 2),
]
COMBINATIONS = [(p, f, b) for p in (0, 1) for f in (0, 1) for b in (0, 1)]


def epilogue_factors(rng, n, o, oh, ow):
    """Factors like XNOR-Net's: K > 0 (any magnitude), alpha > 0, bias of either sign."""
    k = (rng.uniform(0.01, 3.0, (n, oh, ow)) * rng.choice([1e-3, 1.0, 7.0])).astype(
        np.float32)
    alpha = rng.uniform(0.01, 2.0, o).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    return k, alpha, bias


def expected_epilogue(y, k, alpha, bias, combination):
    """NumPy float32, one operation at a time: ((y * K) * alpha) + bias, factors skipped."""
    n, o, oh, ow = y.shape
    out = y.astype(np.float32)
    if combination[0]:
        out = out * k.reshape(n, 1, oh, ow)
    if combination[1]:
        out = out * alpha.reshape(1, o, 1, 1)
    if combination[2]:
        out = out + bias.reshape(1, o, 1, 1)
    assert out.dtype == np.float32
    return out


def check_epilogue(ocl, rng, case):
    n, c, h, w, o, k, s, p = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
    out_hw = (out_size(h, k, s, p), out_size(w, k, s, p))
    xp = ocl.pack_conv_input(ocl.from_numpy(x))
    wp = ocl.from_numpy(pack_rows(np.ascontiguousarray(wt.transpose(0, 2, 3, 1))))
    plain = ocl.to_numpy(ocl.xnor_conv2d(xp, wp, c, (s, s), (p, p), out_hw, np.float32))
    np.testing.assert_array_equal(plain.astype(np.float64),
                                  conv_reference(signs(x), signs(wt), (s, s), (p, p)))
    kk, alpha, bias = epilogue_factors(rng, n, o, *out_hw)
    natives = [ocl.from_numpy(kk), ocl.from_numpy(alpha), ocl.from_numpy(bias)]
    for combination in COMBINATIONS:
        given = [a if on else None for a, on in zip(natives, combination)]
        got = ocl.to_numpy(ocl.xnor_conv2d(xp, wp, c, (s, s), (p, p), out_hw, np.float32,
                                           pixel_scale=given[0], filter_scale=given[1],
                                           bias=given[2]))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected_epilogue(plain, kk, alpha, bias,
                                                             combination),
                                      err_msg=f"{case} factors {combination}")


@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_xnor_conv2d_epilogue_bit_exact(ocl, case):
    check_epilogue(ocl, np.random.default_rng(sum(case)), case)


@pytest.mark.parametrize("name", ["gpu", "cuda", "cpu_small", "cpu_flat", "cpu_chunked"])
def test_xnor_conv2d_epilogue_tunables(ocl, params, name):
    """Every store path: scalar (GPU, CUDA), vectors of 4 / 8 filters, the 16 x 16
    transposed store (the CPU default, and its chunked stage)."""
    params(TUNABLES[name])
    rng = np.random.default_rng(41)
    for case in EPILOGUE_CASES:
        check_epilogue(ocl, rng, case)


def test_xnor_conv2d_epilogue_is_not_contracted(ocl):
    """Values where a fused multiply-add would round differently from ((v*K)*alpha)+bias:
    the kernel must not contract (FP_CONTRACT OFF)."""
    rng = np.random.default_rng(43)
    n, c, h, w, o = 2, 16, 8, 8, 17
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    xp = ocl.pack_conv_input(ocl.from_numpy(x))
    wp = ocl.from_numpy(pack_rows(np.ascontiguousarray(wt.transpose(0, 2, 3, 1))))
    plain = ocl.to_numpy(ocl.xnor_conv2d(xp, wp, c, (1, 1), (1, 1), (h, w), np.float32))
    kk = rng.uniform(0.1, 1.0, (n, h, w)).astype(np.float32)
    alpha = rng.uniform(0.1, 1.0, o).astype(np.float32)
    bias = rng.uniform(-1, 1, o).astype(np.float32)
    unfused = ((plain * kk[:, None]) * alpha[None, :, None, None]) + bias[None, :, None, None]
    # fma(v * K, alpha, bias), rounded once (exact in float64 for float32 operands): it
    # differs from the unfused result somewhere, so contraction would fail this test
    # (checked: PoCL with FP_CONTRACT ON contracts the one-expression form and fails)
    fma = ((plain * kk[:, None]).astype(np.float64) * alpha[None, :, None, None]
           + bias[None, :, None, None]).astype(np.float32)
    assert (fma != unfused).any()
    got = ocl.to_numpy(ocl.xnor_conv2d(xp, wp, c, (1, 1), (1, 1), (h, w), np.float32,
                                       pixel_scale=ocl.from_numpy(kk),
                                       filter_scale=ocl.from_numpy(alpha),
                                       bias=ocl.from_numpy(bias)))
    np.testing.assert_array_equal(got, unfused)


def test_xnor_conv2d_epilogue_without_taps(ocl):
    """Every tap outside (H = 0): v = 0 everywhere, and the epilogue still applies."""
    xp = ocl.from_numpy(np.zeros((2, 0, 3, 1), np.uint32))
    wp = ocl.from_numpy(np.ones((4, 1, 1, 1), np.uint32))
    kk = np.full((2, 2, 3), 2.0, np.float32)
    alpha = np.arange(1, 5, dtype=np.float32)
    bias = np.arange(4, dtype=np.float32) - 1.5
    got = ocl.xnor_conv2d(xp, wp, 8, (1, 1), (1, 0), (2, 3), np.float32,
                          pixel_scale=ocl.from_numpy(kk), filter_scale=ocl.from_numpy(alpha),
                          bias=ocl.from_numpy(bias))
    np.testing.assert_array_equal(ocl.to_numpy(got),
                                  np.broadcast_to(bias.reshape(1, 4, 1, 1), (2, 4, 2, 3)))


# ---- a whole layer's inference (xnor_conv2d_fuses_layer) ---------------------------------------

#: (n, c, h, w, o, kh, kw, stride, padding): one channel, one word, a word and a tail, pixel
#: runs that leave remainders (h * w not a multiple of 16), 32 filters of 16 adjacent output
#: pixels (the CPU layout's transposed stores), kernels of other sizes, strides, no padding
LAYER_CASES = [(2, 1, 5, 7, 3, 3, 3, (1, 1), (1, 1)), (2, 16, 9, 9, 32, 3, 3, (1, 1), (1, 1)),
               (1, 40, 6, 7, 17, 3, 3, (2, 2), (1, 1)), (3, 33, 8, 8, 32, 3, 3, (1, 1), (1, 1)),
               (1, 20, 7, 5, 5, 2, 3, (1, 2), (0, 2)), (2, 64, 4, 4, 16, 1, 1, (1, 1), (0, 0)),
               (1, 8, 11, 9, 6, 5, 5, (2, 1), (2, 2))]


def check_fused_layer(ocl, rng, n, c, h, w, o, kh, kw, stride, padding):
    """gm.xnor_conv2d given the float input, a batch norm, K, alpha, a bias and a residual
    == the same operations one by one on opencl, bit for bit: batch_norm_forward,
    pack_conv_input(mean_abs=True), K as native.window_mean_numpy makes it from those means,
    the packed convolution with its epilogue, the addition."""
    import gpumat as gm
    from gpumat import native
    out_hw = (out_size(h, kh, stride[0], padding[0]), out_size(w, kw, stride[1], padding[1]))
    put = lambda v: None if v is None else gm.array(v, backend="opencl")   # noqa: E731
    mean = rng.standard_normal(c).astype(np.float32)
    x = (rng.standard_normal((n, c, h, w)) * 2 + mean.reshape(1, -1, 1, 1)).astype(np.float32)
    x[:, :, ::3, ::2] = mean.reshape(1, -1, 1, 1)             # normalized zeros
    var = (np.abs(rng.standard_normal(c)) + 0.1).astype(np.float32)
    weight, shift = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    wp = gm.pack_conv_weight(put(rng.standard_normal((o, c, kh, kw)).astype(np.float32)))
    alpha = np.abs(rng.standard_normal(o)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    residual = rng.standard_normal((n, o) + out_hw).astype(np.float32)
    xg = put(x)
    for bn_weight, bn_shift in [(weight, shift), (None, None), (weight, None), (None, shift)]:
        statistics = (put(mean), put(var), put(bn_weight), put(bn_shift), 1e-5)
        y = gm.batch_norm_forward(xg, statistics[2], statistics[3], statistics[0],
                                  statistics[1], 1e-5, training=False).y
        packed, means = gm.pack_conv_input(y, mean_abs=True)
        k = native.window_mean_numpy(means.gather(), (kh, kw), stride, padding, out_hw)
        for extra in [{}, {"bias": put(bias), "residual": put(residual)}]:
            want = gm.xnor_conv2d(packed, wp, stride=stride, padding=padding, channels=c,
                                  pixel_scale=put(k), filter_scale=put(alpha),
                                  bias=extra.get("bias"))
            if "residual" in extra:
                want = want + extra["residual"]
            got = gm.xnor_conv2d(xg, wp, stride=stride, padding=padding, channels=c,
                                 batch_norm=statistics, pixel_scale="window_mean",
                                 filter_scale=put(alpha), **extra)
            np.testing.assert_array_equal(got.gather(), want.gather())


@pytest.mark.parametrize("name", [None] + list(TUNABLES))
def test_fused_layer_equals_the_separate_operations(ocl, params, name):
    """The two launches of a fused layer (packing with the batch norm folded in and the
    channel means, the convolution making K from them, with its epilogue) give the separate
    operations' bits, with the shipped parameters (None) and every other set, the CUDA
    build's included."""
    params(None if name is None else TUNABLES[name])
    rng = np.random.default_rng(37)
    for case in LAYER_CASES:
        check_fused_layer(ocl, rng, *case)
