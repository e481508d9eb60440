"""Convolution entry points for the cuda backend: im2col, col2im and the depthwise direct
convolution with its two gradients, from kernels/cuda/im2col.cu (the kernels live in
kernels/common/im2col.h, the source the OpenCL build runs on PoCL in CI).

Importing this module replaces the CuPy versions that ``conv_array_module`` gives every
array-module backend with these kernels on ``CUDABackend``.
"""
import numpy as np

from . import conv_array_module  # noqa: F401  (the interface the overrides below replace)
from .cuda import CUDABackend, cupy

_SOURCE = "cuda/im2col.cu"
_F64 = np.dtype(np.float64)
#: the kernels' defaults in kernels/common/im2col.h: block size of
#: depthwise_conv2d_backward_weight (CONV_WG), outputs per thread of im2col (CONV_RUN) and of
#: depthwise_conv2d (CONV_DW_RUN)
_REDUCE_BLOCK = 256
_RUN = 4
_DW_RUN = 4
#: most blocks of the weight-gradient launch; its grid-stride loop covers the rest
_MAX_BLOCKS = 65535 * 32


def _name(base, dtype):
    return base + ("_f64" if np.dtype(dtype) == _F64 else "_f32")


def _runs(rows, row_length, run):
    """Threads of a kernel giving each ``run`` consecutive elements of ``rows`` rows."""
    return rows * -(-row_length // run)


def _geometry(input_shape, kernel, stride, padding, dilation, out_hw):
    return tuple(np.int64(v) for v in (*input_shape, *kernel, *stride, *padding, *dilation,
                                       *out_hw))


def _im2col(self, x, kernel, stride, padding, dilation, out_hw):
    n, c = x.shape[:2]
    out = self.empty((n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1]), x.dtype)
    threads = _runs(n * c * kernel[0] * kernel[1] * out_hw[0], out_hw[1], _RUN)
    self._launch(_SOURCE, _name("im2col", x.dtype), threads if out.size else 0,
                 (cupy.ascontiguousarray(x), out)
                 + _geometry(x.shape, kernel, stride, padding, dilation, out_hw))
    return out


def _col2im(self, cols, input_shape, kernel, stride, padding, dilation, out_hw):
    out = self.empty(tuple(input_shape), cols.dtype)
    self._launch(_SOURCE, _name("col2im", cols.dtype), out.size,
                 (cupy.ascontiguousarray(cols), out)
                 + _geometry(input_shape, kernel, stride, padding, dilation, out_hw))
    return out


def _depthwise_conv2d(self, x, w, stride, padding, dilation, multiplier, out_hw):
    n, c = x.shape[:2]
    out = self.empty((n, c * multiplier) + tuple(out_hw), x.dtype)
    threads = _runs(n * c * multiplier * out_hw[0], out_hw[1], _DW_RUN)
    self._launch(_SOURCE, _name("depthwise_conv2d", x.dtype), threads if out.size else 0,
                 (cupy.ascontiguousarray(x), cupy.ascontiguousarray(w), out, np.int64(multiplier))
                 + _geometry(x.shape, w.shape[2:], stride, padding, dilation, out_hw))
    return out


def _depthwise_conv2d_backward_input(self, grad_out, w, input_shape, stride, padding, dilation,
                                     multiplier, out_hw):
    out = self.empty(tuple(input_shape), grad_out.dtype)
    self._launch(_SOURCE, _name("depthwise_conv2d_backward_input", grad_out.dtype), out.size,
                 (cupy.ascontiguousarray(grad_out), cupy.ascontiguousarray(w), out,
                  np.int64(multiplier))
                 + _geometry(input_shape, w.shape[2:], stride, padding, dilation, out_hw))
    return out


def _depthwise_conv2d_backward_weight(self, grad_out, x, weight_shape, stride, padding,
                                      dilation, multiplier, out_hw):
    out = self.empty(tuple(weight_shape), grad_out.dtype)
    if out.size == 0:
        return out
    if grad_out.size == 0:          # no products to sum (empty batch)
        out.fill(0)
        return out
    kernel = self.module(_SOURCE).get_function(
        _name("depthwise_conv2d_backward_weight", grad_out.dtype))
    blocks = min(out.size, _MAX_BLOCKS)
    with self.cuda_device:
        kernel((blocks,), (_REDUCE_BLOCK,),
               (cupy.ascontiguousarray(grad_out), cupy.ascontiguousarray(x), out,
                np.int64(multiplier))
               + _geometry(x.shape, weight_shape[2:], stride, padding, dilation, out_hw))
    return out


CUDABackend.im2col = _im2col
CUDABackend.col2im = _col2im
CUDABackend.depthwise_conv2d = _depthwise_conv2d
CUDABackend.depthwise_conv2d_backward_input = _depthwise_conv2d_backward_input
CUDABackend.depthwise_conv2d_backward_weight = _depthwise_conv2d_backward_weight
