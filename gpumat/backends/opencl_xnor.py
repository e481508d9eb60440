"""XNOR-popcount kernels for binarised networks on the opencl backend: pack_conv_input,
xnor_gemm and xnor_conv2d, from kernels/opencl/xnor.cl (the kernels live in
kernels/common/xnor.h, shared with the cuda build).

Fused for inference: ``pack_conv_input(x, mean_abs=True)`` also returns the channel mean of
|x| (float32 sum over the channels in order, divided by C) from the same reads, and
``xnor_conv2d``'s optional ``pixel_scale`` / ``filter_scale`` / ``bias`` / ``residual`` are
applied as the results are stored (runtime flags: without them the kernel stores exactly as
before).  Given the float input, ``xnor_conv2d`` runs a whole XNOR-Net layer's inference
(``xnor_conv2d_fuses_layer``) in two launches, however many of its parts are asked for:
the packing (which batch-normalizes the values first with ``bn_*``, by the batch norm
kernels' own arithmetic, and takes the channel means of |x| for ``window_mean``), and the
convolution, which makes K from those means itself (XNOR_WINDOW_MEAN: xnor_window_mean's
sums, the cpu backend's bits) and applies its epilogue -- where the separate operations
took six to eight (a batch norm, its inv_std, the packing, K's box-filter convolution, the
convolution, the residual addition).  (xnor_window_mean's own launch, K on its own, was a
third launch until 2026-12-02: 25-30 us a layer on PoCL at batch 1.)

Importing this module adds the three methods to ``OpenCLBackend``.  gpumat/binary.py checks
shapes and dtypes first, so these only plan and launch.  The kernels' tunables are
preprocessor defines: CPU devices (PoCL) get 16-filter vectors, bit counting by shifts and
carry-save adders and whole runs of pixels per work-item; GPUs get the scalar register block
that the cuda build runs (see :func:`parameters`).  One program is built per set of defines
(``OpenCLBackend.program`` caches it) and its kernels are kept in a dict.
"""
import numpy as np

from .. import errors, native
from . import xnor_launch
from .opencl import LaunchKernel, OpenCLBackend, cl
from .opencl_elementwise import _live
from .xnor_launch import cdiv

_SOURCE = "opencl/xnor.cl"
_I32, _I64 = np.int32, np.int64
_INT_MAX = 2**31 - 1

#: Shipped parameters per device kind (the defines of kernels/common/xnor.h, plus PACK_WG,
#: the work-group size of xnor_pack_conv_input).  XNOR_NV is the most filter vectors per
#: work-item; a launch uses fewer (a power of two) when the layer has fewer filters.
#: Measured on PoCL 3.1 (2-core AVX-512 VM): PB 64 and WG 4 amortise the filter staging
#: and the per-pixel set-up; NV 2 and 4 tie.
CPU_PARAMETERS = {"XNOR_VW": 16, "XNOR_NV": 2, "XNOR_PB": 64, "XNOR_WG": 4,
                  "XNOR_FLAT_STAGE": 0, "XNOR_LOCAL_WORDS": 16384, "XNOR_CSA": 1,
                  "XNOR_PACK_VW": 16, "PACK_WG": 64}
GPU_PARAMETERS = {"XNOR_VW": 1, "XNOR_NV": 8, "XNOR_PB": 4, "XNOR_WG": 64,
                  "XNOR_FLAT_STAGE": 1, "XNOR_LOCAL_WORDS": 4096, "XNOR_CSA": 0,
                  "XNOR_PACK_VW": 1, "PACK_WG": 256}
#: Set to a dict of the keys above to force parameters on every device (tests, tuning).
PARAMETERS = None
#: most work-groups one pack launch asks for; its grid-stride loop covers the rest
_MAX_GROUPS = 1 << 16


def parameters(backend):
    """The parameters ``backend`` launches with: :data:`PARAMETERS` when set, else the
    shipped ones for its device kind."""
    if PARAMETERS is not None:
        return dict(PARAMETERS)
    cpu = bool(backend.cl_device.type & cl.device_type.CPU)
    return dict(CPU_PARAMETERS if cpu else GPU_PARAMETERS)


def kernel_defines(params, filters=None):
    """The kernel defines of ``params``; with ``filters``, no more filter vectors per
    work-item than a power of two covering the layer's filters (fewer programs to build)."""
    defines = {k: int(v) for k, v in params.items() if k.startswith("XNOR_")}
    if filters is not None:
        vectors = cdiv(max(filters, 1), defines["XNOR_VW"])
        nv = 1
        while nv < vectors and nv < defines["XNOR_NV"]:
            nv *= 2
        defines["XNOR_NV"] = min(nv, defines["XNOR_NV"])
    return defines


def _kernel(self, name, defines):
    try:
        cache = self._xnor_kernels
    except AttributeError:
        cache = self._xnor_kernels = {}
    key = (name, tuple(sorted(defines.items())))
    knl = cache.get(key)
    if knl is None:
        knl = LaunchKernel(self.program(_SOURCE, defines), name)
        if name == "xnor_conv2d":
            knl.set_scalar_arg_dtypes([None] * 3 + [_I32] * 15 + [_I64] * 3 + [_I32]
                                      + [None] * 4 + [_I32])
        elif name == "xnor_pack_conv_input_fused":
            knl.set_scalar_arg_dtypes([None] * 7 + [_I64] * 4 + [_I32])
        elif name == "xnor_window_mean":
            knl.set_scalar_arg_dtypes([None] * 2 + [_I64] + [_I32] * 10)
        else:
            knl.set_scalar_arg_dtypes([None] * 2 + [_I64] * 4)
        cache[key] = knl
    return knl


def images_per_launch(image_pixels, defines):
    """Most images one xnor_conv2d launch may cover: the kernel indexes pixels with ints."""
    room = _INT_MAX - 2 * defines["XNOR_WG"] * defines["XNOR_PB"]
    if image_pixels > room:
        raise errors.ShapeError(
            f"xnor_conv2d: an output image of {image_pixels:,} pixels is more than the "
            f"kernel's int pixel indices cover ({room:,})")
    return max(1, room // max(image_pixels, 1))


def launch_conv(self, x, w, out, images, height, width, words, channels, filters, kernel,
                stride, padding, out_hw, out_strides, params=None, pixel_scale=None,
                filter_scale=None, bias=None, residual=None, window_mean=False):
    """Run xnor_conv2d over ``images`` packed (height, width, words) images ``x`` and
    ``filters`` packed (kernel, words) filters ``w`` into ``out`` (int32 or float32) at
    element strides ``out_strides`` = (image, filter, output pixel).  The optional float32
    natives ``pixel_scale`` (images x output pixels; with ``window_mean``, the channel means
    images x 1 x height x width, from which the kernel makes K), ``filter_scale`` and
    ``bias`` (filters) and ``residual`` (laid out as ``out``) need a float32 ``out``: see
    kernels/common/xnor.h's epilogue."""
    params = parameters(self) if params is None else params
    defines = kernel_defines(params, filters)
    wg, pb = defines["XNOR_WG"], defines["XNOR_PB"]
    ob = defines["XNOR_NV"] * defines["XNOR_VW"]
    image_pixels = out_hw[0] * out_hw[1]
    step = images_per_launch(image_pixels, defines)
    knl = _kernel(self, "xnor_conv2d", defines)
    out_float = int(np.dtype(out.dtype) == np.float32)
    factors, epilogue = epilogue_arguments(pixel_scale, filter_scale, bias, residual)
    if epilogue and not out_float:
        raise errors.DtypeError("xnor_conv2d: scale and bias factors need float32 results")
    if window_mean and epilogue & 1:
        epilogue |= xnor_launch.WINDOW_MEAN
    for first in range(0, images, step):
        count = min(step, images - first)
        grid = (cdiv(count * image_pixels, wg * pb) * wg, cdiv(filters, ob))
        knl(self.queue, grid, (wg, 1), _live(x), _live(w), out.data, first, count, height,
            width, words, channels, filters, kernel[0], kernel[1], stride[0], stride[1],
            padding[0], padding[1], out_hw[0], out_hw[1], *out_strides, out_float,
            *factors, epilogue)


def epilogue_arguments(pixel_scale, filter_scale, bias, residual=None):
    """xnor_conv2d's (pixel_scale, filter_scale, bias, residual) buffers (None: a null
    pointer, never read) and its epilogue flags (1, 2, 4, 8 as in kernels/common/xnor.h)."""
    factors, flags = [], 0
    for bit, factor in xnor_launch.epilogue_factors(pixel_scale, filter_scale, bias, residual):
        if factor is None or factor.size == 0:
            factors.append(None)
        else:
            factors.append(_live(factor))
            flags |= bit
    return factors, flags


def gemm_roles(m, n, params):
    """Whose rows play the filters in xnor_gemm's 1 x 1 convolution, 'a' or 'b' (see
    xnor_launch.gemm_roles)."""
    return xnor_launch.gemm_roles(m, n, lambda filters: kernel_defines(params, filters))


# ---- backend methods ----------------------------------------------------------------------

def _pack_conv_input(self, x, mean_abs=False, bn=None):
    n, c, h, w = x.shape
    words = cdiv(c, 32)
    out = self.empty((n, h, w, words), np.uint32)
    params = parameters(self)
    if bn is not None:
        folded, temporaries = xnor_launch.fold_batch_norm(self, bn)
        mean = _pack_fused(self, x, out, params, mean_abs, folded)
        for t in temporaries:
            self.free(t)
        return (out, mean) if mean_abs else out
    if mean_abs:
        return out, _pack_fused(self, x, out, params, mean_abs=True)
    blocks = n * words * cdiv(h * w, params["XNOR_PACK_VW"])
    if blocks == 0:
        return out
    wg = params["PACK_WG"]
    groups = min(cdiv(blocks, wg), _MAX_GROUPS)
    knl = _kernel(self, "xnor_pack_conv_input", kernel_defines(params))
    knl(self.queue, (groups * wg,), (wg,), _live(x), out.data, n, c, h * w, words)
    return out


def _pack_fused(self, x, out, params, mean_abs=False, bn=None):
    """xnor_pack_conv_input_fused: the words of ``x`` (float32 N x C x H x W) into ``out``,
    x batch-normalized first where ``bn`` = (mean, inv_std, weight, bias) (weight and bias
    may be None); returns the (N, 1, H, W) channel means of |x| with ``mean_abs``, else
    None."""
    n, c, h, w = x.shape
    mean = None
    if mean_abs:
        if c == 0 and n * h * w:             # the mean of nothing, as NumPy's
            return self.full((n, 1, h, w), np.nan, np.float32)
        mean = self.empty((n, 1, h, w), np.float32)
    blocks = n * cdiv(h * w, params["XNOR_PACK_VW"])
    if blocks == 0 or c == 0:
        return mean
    flags, operands = xnor_launch.pack_flags(mean, bn)
    wg = params["PACK_WG"]
    groups = min(cdiv(blocks, wg), _MAX_GROUPS)
    knl = _kernel(self, "xnor_pack_conv_input_fused", kernel_defines(params))
    knl(self.queue, (groups * wg,), (wg,), _live(x), out.data,
        *(None if a is None else _live(a) for a in operands), n, c, h * w, cdiv(c, 32), flags)
    return mean


def _window_mean(self, mean, kernel, stride, padding, out_hw):
    """xnor_window_mean: K (N x OH x OW float32) from ``mean`` (N x 1 x H x W)."""
    n, _, h, w = mean.shape
    k = self.empty((n,) + tuple(out_hw), np.float32)
    if k.size == 0:
        return k
    rows = n * out_hw[0]                     # a work-item per output row
    params = parameters(self)
    wg = min(params["PACK_WG"], rows)
    # (the packing's program: built once for both)
    knl = _kernel(self, "xnor_window_mean", kernel_defines(params))
    knl(self.queue, (min(cdiv(rows, wg), _MAX_GROUPS) * wg,), (wg,), _live(mean), k.data, n,
        h, w, *kernel, *stride, *padding, *out_hw)
    return k


def _xnor_gemm(self, a, b, k, out_dtype, row_scale=None, col_scale=None, bias=None):
    m, n = a.shape[0], b.shape[0]
    words = a.shape[1]
    out = self.empty((m, n), out_dtype)
    if out.size == 0:
        return out
    if k == 0:
        self.free(out)
        return self.full((m, n), 0, out_dtype)
    params = parameters(self)
    # with an epilogue a's rows are the pixels (row_scale: their pixel scale) and b's the
    # filters (col_scale, bias), whichever pads less otherwise
    scaled = any(f is not None for f in (row_scale, col_scale, bias))
    roles = "b" if scaled else gemm_roles(m, n, params)
    x, w, pixels, filters, strides = xnor_launch.gemm_operands(a, b, m, n, roles)
    launch_conv(self, x, w, out, 1, 1, pixels, words, k, filters, (1, 1), (1, 1), (0, 0),
                (1, pixels), strides, params, pixel_scale=row_scale, filter_scale=col_scale,
                bias=bias)
    return out


def _xnor_conv2d(self, xp, wp, channels, stride, padding, out_hw, out_dtype,
                 pixel_scale=None, filter_scale=None, bias=None, window_mean=False,
                 bn_mean=None, bn_var=None, bn_weight=None, bn_bias=None, bn_eps=1e-5,
                 residual=None):
    n = xp.shape[0]
    o, kh, kw = wp.shape[:3]
    oh, ow = out_hw
    out = self.empty((n, o, oh, ow), out_dtype)
    if out.size == 0:
        return out
    temporaries, means = [], None
    if np.dtype(xp.dtype) == np.float32:         # a whole layer: pack (and the means) first
        params = parameters(self)
        bn = None if bn_mean is None else (bn_mean, bn_var, bn_weight, bn_bias, bn_eps)
        xp, means, temporaries = xnor_launch.layer_input(
            self, xp, window_mean, bn,
            lambda x, out, mean_abs, folded: _pack_fused(self, x, out, params, mean_abs,
                                                         folded))
    try:
        h, w, words = xp.shape[1:]
        if channels == 0 or kh * kw == 0 or xp.size == 0:   # no taps, or every tap outside
            if means is not None:
                pixel_scale = _window_mean(self, means, (kh, kw), stride, padding, out_hw)
                temporaries.append(pixel_scale)
            self.free(out)
            # every v is 0: the epilogue still runs, on the zeros (on the host: a 1 x 1
            # "convolution" would be costlier to set up than this rare case)
            out = self.full((n, o, oh, ow), 0, out_dtype)
            if all(f is None for f in (pixel_scale, filter_scale, bias, residual)):
                return out
            return _epilogue_on_host(self, out, pixel_scale, filter_scale, bias, residual)
        launch_conv(self, xp, wp, out, n, h, w, words, channels, o, (kh, kw), stride, padding,
                    out_hw, (o * oh * ow, oh * ow, 1),
                    pixel_scale=pixel_scale if means is None else means,
                    filter_scale=filter_scale, bias=bias, residual=residual,
                    window_mean=means is not None)
        return out
    finally:
        for t in temporaries:
            self.free(t)


def _epilogue_on_host(self, out, pixel_scale, filter_scale, bias, residual=None):
    """The epilogue on an all-zero result (layers whose taps all fall outside the image):
    the same float32 operations in NumPy, in the kernel's order (the cpu backend's and the
    native twin's ``native._apply_scales``)."""
    y = self.to_numpy(out)
    self.free(out)
    host = [None if a is None else self.to_numpy(a)
            for a in (pixel_scale, filter_scale, bias, residual)]
    return self.from_numpy(native._apply_scales(y, *host))


OpenCLBackend.pack_conv_input = _pack_conv_input
OpenCLBackend.xnor_gemm = _xnor_gemm
OpenCLBackend.xnor_conv2d = _xnor_conv2d
OpenCLBackend.xnor_conv2d_fuses_layer = True
