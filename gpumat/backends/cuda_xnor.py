"""XNOR-popcount kernels for binarised networks on the cuda backend: pack_conv_input,
xnor_gemm and xnor_conv2d from kernels/cuda/xnor.cu, the kernels of kernels/common/xnor.h
that the OpenCL tests run on PoCL (tests/test_opencl_xnor.py also builds them with
:data:`DEFINES` and launches them with :func:`conv_launches`'s geometry).

Importing this module adds the three methods to ``CUDABackend``; the launch logic mirrors
gpumat/backends/opencl_xnor.py (GPU parameters), including the fused inference paths:
``pack_conv_input(x, mean_abs=True)`` (the channel mean of |x| from the packing reads),
``xnor_conv2d``'s ``pixel_scale`` / ``filter_scale`` / ``bias`` / ``residual`` epilogue
(rounded with __fmul_rn / __fadd_rn, never contracted into FMAs), and a whole XNOR-Net
layer's inference from the float input in two launches (``xnor_conv2d_fuses_layer``: the
packing with the batch norm folded in and the channel means, then the convolution, which
makes K from the means itself).
"""
import numpy as np

from .. import errors
from . import xnor_launch
from .cuda import CUDABackend, cupy
from .xnor_launch import cdiv

_SOURCE = "cuda/xnor.cu"
_INT_MAX = 2**31 - 1
#: The kernel's tunables (xnor.cu fixes XNOR_VW = XNOR_PACK_VW = 1): a thread keeps
#: XNOR_PB pixels x XNOR_NV filters, blocks of XNOR_WG threads interleave their pixels so
#: loads coalesce, and popcounts are the __popc instruction.  XNOR_NV is the most; a layer
#: with fewer filters uses a smaller power of two.  Blocks of 64, as OpenCL's GPU
#: parameters: with 128, ptxas (CUDA 13, sm_80 and sm_90) held the 8-filter build to 64-80
#: registers and spilled (52 B of stores, 304 B of loads on sm_90), where 64 compiles to
#: 111-115 registers without spilling.  Not yet timed on a GPU.
DEFINES = {"XNOR_NV": 8, "XNOR_PB": 4, "XNOR_WG": 64, "XNOR_FLAT_STAGE": 1,
           "XNOR_LOCAL_WORDS": 4096, "XNOR_CSA": 0, "XNOR_CONTIGUOUS": 0}
_PACK_BLOCK = 256
_MAX_BLOCKS = 65535 * 32      # pack's grid-stride loop covers the rest
_MAX_GRID_Y = 65535


def conv_defines(filters):
    """:data:`DEFINES` with XNOR_NV cut to the power of two covering ``filters``."""
    nv = 1
    while nv < filters and nv < DEFINES["XNOR_NV"]:
        nv *= 2
    return dict(DEFINES, XNOR_NV=min(nv, DEFINES["XNOR_NV"]))


def check_scaled_gemm_rows(rows):
    """xnor_gemm with row_scale, col_scale or bias makes b's rows the filters, whose blocks
    span grid y (at most 65535 of XNOR_NV rows): more rows are a ShapeError naming the
    call (OpenCL and cpu have no such limit)."""
    nv = conv_defines(rows)["XNOR_NV"]
    if cdiv(rows, nv) > _MAX_GRID_Y:
        raise errors.ShapeError(
            f"xnor_gemm: with row_scale, col_scale or bias the cuda backend takes b's rows as "
            f"its grid's filter blocks, at most {_MAX_GRID_Y * nv:,} rows; b has {rows:,} "
            f"(multiply unscaled, or in slices of b's rows)")


def conv_launches(images, image_pixels, filters, defines):
    """[(first image, images, grid, block)] for xnor_conv2d: batches cut so that pixel
    indices fit the kernel's ints; grid y covers the filter blocks."""
    wg, pb, nv = defines["XNOR_WG"], defines["XNOR_PB"], defines["XNOR_NV"]
    room = _INT_MAX - 2 * wg * pb
    if image_pixels > room:
        raise errors.ShapeError(
            f"xnor_conv2d: an output image of {image_pixels:,} pixels is more than the "
            f"kernel's int pixel indices cover ({room:,})")
    if cdiv(filters, nv) > _MAX_GRID_Y:
        raise errors.ShapeError(
            f"xnor_conv2d: {filters:,} filters need more than {_MAX_GRID_Y} blocks of "
            f"{nv} along grid y")
    step = max(1, room // max(image_pixels, 1))
    return [(first, min(step, images - first),
             (cdiv(min(step, images - first) * image_pixels, wg * pb), cdiv(filters, nv)),
             (wg, 1, 1))
            for first in range(0, images, step)]


def gemm_roles(m, n):
    """Whose rows play the filters in xnor_gemm's 1 x 1 convolution, as
    opencl_xnor.gemm_roles (see xnor_launch.gemm_roles)."""
    return xnor_launch.gemm_roles(m, n, conv_defines)


def epilogue_arguments(out, pixel_scale, filter_scale, bias, residual=None):
    """xnor_conv2d's four factor pointers and its epilogue flags (1, 2, 4, 8 as in
    kernels/common/xnor.h); an absent factor passes ``out``, which the kernel never reads
    through that pointer."""
    factors, flags = [], 0
    for bit, factor in xnor_launch.epilogue_factors(pixel_scale, filter_scale, bias, residual):
        if factor is None or factor.size == 0:
            factors.append(out)
        else:
            factors.append(cupy.ascontiguousarray(factor))
            flags |= bit
    return tuple(factors), np.int32(flags)


def _launch_conv(self, x, w, out, images, height, width, words, channels, filters, kernel,
                 stride, padding, out_hw, out_strides, pixel_scale=None, filter_scale=None,
                 bias=None, residual=None, window_mean=False):
    defines = conv_defines(filters)
    function = self.module(_SOURCE, defines).get_function("xnor_conv2d")
    geometry = tuple(np.int32(v) for v in (
        height, width, words, channels, filters, kernel[0], kernel[1], stride[0],
        stride[1], padding[0], padding[1], out_hw[0], out_hw[1]))
    strides = tuple(np.int64(s) for s in out_strides)
    out_float = np.int32(np.dtype(out.dtype) == np.float32)
    factors, epilogue = epilogue_arguments(out, pixel_scale, filter_scale, bias, residual)
    if epilogue and not out_float:
        raise errors.DtypeError("xnor_conv2d: scale and bias factors need float32 results")
    if window_mean and epilogue & 1:     # pixel_scale holds the means: the kernel makes K
        epilogue = np.int32(epilogue | xnor_launch.WINDOW_MEAN)
    x, w = cupy.ascontiguousarray(x), cupy.ascontiguousarray(w)
    with self.cuda_device:
        for first, count, grid, block in conv_launches(images, out_hw[0] * out_hw[1],
                                                       filters, defines):
            function(grid, block, (x, w, out, np.int32(first), np.int32(count))
                     + geometry + strides + (out_float,) + factors + (epilogue,))


def _pack_conv_input(self, x, mean_abs=False, bn=None):
    n, c, h, w = x.shape
    words = cdiv(c, 32)
    out = self.empty((n, h, w, words), np.uint32)
    if bn is not None:
        folded, temporaries = xnor_launch.fold_batch_norm(self, bn)
        mean = _pack_fused(self, x, out, mean_abs, folded)
        for t in temporaries:
            self.free(t)
        return (out, mean) if mean_abs else out
    if mean_abs:
        return out, _pack_fused(self, x, out, mean_abs=True)
    blocks = n * words * h * w
    if blocks == 0:
        return out
    function = self.module(_SOURCE, DEFINES).get_function("xnor_pack_conv_input")
    with self.cuda_device:
        function((min(cdiv(blocks, _PACK_BLOCK), _MAX_BLOCKS),), (_PACK_BLOCK,),
                 (cupy.ascontiguousarray(x), out, np.int64(n), np.int64(c),
                  np.int64(h * w), np.int64(words)))
    return out


def _pack_fused(self, x, out, mean_abs=False, bn=None):
    """xnor_pack_conv_input_fused: the words of ``x`` into ``out``, x batch-normalized first
    where ``bn`` = (mean, inv_std, weight, bias) (weight and bias may be None); returns the
    (N, 1, H, W) channel means of |x| (float32 sum over the channels in order, divided by C)
    with ``mean_abs``, else None."""
    n, c, h, w = x.shape
    mean = self.empty((n, 1, h, w), np.float32) if mean_abs else None
    blocks = n * h * w
    if blocks == 0:
        return mean
    if c == 0:
        if mean is not None:                 # the mean of nothing, as NumPy's
            mean.fill(np.nan)
        return mean
    flags, operands = xnor_launch.pack_flags(mean, bn)
    x = cupy.ascontiguousarray(x)
    # absent operands pass x, which the kernel never reads through them
    operands = tuple(x if a is None else cupy.ascontiguousarray(a) for a in operands)
    function = self.module(_SOURCE, DEFINES).get_function("xnor_pack_conv_input_fused")
    with self.cuda_device:
        function((min(cdiv(blocks, _PACK_BLOCK), _MAX_BLOCKS),), (_PACK_BLOCK,),
                 (x, out) + operands + (np.int64(n), np.int64(c), np.int64(h * w),
                                        np.int64(cdiv(c, 32)), np.int32(flags)))
    return mean


def _window_mean(self, mean, kernel, stride, padding, out_hw):
    """xnor_window_mean: K (N x OH x OW float32) from ``mean`` (N x 1 x H x W)."""
    n, _, h, w = mean.shape
    k = self.empty((n,) + tuple(out_hw), np.float32)
    if k.size == 0:
        return k
    rows = n * out_hw[0]                     # a thread per output row
    function = self.module(_SOURCE, DEFINES).get_function("xnor_window_mean")
    with self.cuda_device:
        function((min(cdiv(rows, _PACK_BLOCK), _MAX_BLOCKS),), (_PACK_BLOCK,),
                 (mean, k, np.int64(n)) + tuple(np.int32(v) for v in (
                     h, w, *kernel, *stride, *padding, *out_hw)))
    return k


def _xnor_gemm(self, a, b, k, out_dtype, row_scale=None, col_scale=None, bias=None):
    m, n = a.shape[0], b.shape[0]
    out = self.empty((m, n), out_dtype)
    if out.size == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    # with an epilogue a's rows are the pixels (row_scale) and b's the filters (col_scale,
    # bias), as opencl_xnor does
    scaled = any(f is not None for f in (row_scale, col_scale, bias))
    if scaled:
        check_scaled_gemm_rows(n)
    roles = "b" if scaled else gemm_roles(m, n)
    x, w, pixels, filters, strides = xnor_launch.gemm_operands(a, b, m, n, roles)
    _launch_conv(self, x, w, out, 1, 1, pixels, a.shape[1], k, filters, (1, 1), (1, 1),
                 (0, 0), (1, pixels), strides, pixel_scale=row_scale, filter_scale=col_scale,
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
    temporaries, means = [], None                # (counted in bytes_in_use: freed below)
    if np.dtype(xp.dtype) == np.float32:         # a whole layer: pack (and the means) first
        bn = None if bn_mean is None else (bn_mean, bn_var, bn_weight, bn_bias, bn_eps)
        xp, means, temporaries = xnor_launch.layer_input(
            self, xp, window_mean, bn,
            lambda x, out, mean_abs, folded: _pack_fused(self, x, out, mean_abs, folded))
    try:
        h, w, words = xp.shape[1:]
        if channels == 0 or kh * kw == 0 or xp.size == 0:   # no taps, or every tap outside
            if means is not None:
                pixel_scale = _window_mean(self, means, (kh, kw), stride, padding, out_hw)
                temporaries.append(pixel_scale)
            out.fill(0)    # every v is 0; the epilogue in the kernel's order, as cupy float32
            if pixel_scale is not None:
                out *= pixel_scale.reshape(n, 1, oh, ow)
            if filter_scale is not None:
                out *= filter_scale.reshape(1, o, 1, 1)
            if bias is not None:
                out += bias.reshape(1, o, 1, 1)
            if residual is not None:
                out += residual.reshape(n, o, oh, ow)
            return out
        _launch_conv(self, xp, wp, out, n, h, w, words, channels, o, (kh, kw), stride,
                     padding, out_hw, (o * oh * ow, oh * ow, 1),
                     pixel_scale=pixel_scale if means is None else means,
                     filter_scale=filter_scale, bias=bias, residual=residual,
                     window_mean=means is not None)
        return out
    finally:
        for t in temporaries:
            self.free(t)


CUDABackend.pack_conv_input = _pack_conv_input
CUDABackend.xnor_gemm = _xnor_gemm
CUDABackend.xnor_conv2d = _xnor_conv2d
CUDABackend.xnor_conv2d_fuses_layer = True
