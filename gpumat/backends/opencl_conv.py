"""Convolution entry points for the opencl backend: im2col, col2im and the depthwise direct
convolution with its two gradients, from kernels/opencl/im2col.cl (the kernels live in
kernels/common/im2col.h, shared with the cuda build).

Importing this module adds them to ``OpenCLBackend``.  One program per precision (define
CONV_F64); kernel objects are built once per backend and kept in a dict, so a call costs a
lookup and one enqueue.
"""
import numpy as np

from . import opencl_gemm
from .opencl import LaunchKernel, OpenCLBackend
from .opencl_elementwise import LOCAL_SIZE, _live

_SOURCE = "opencl/im2col.cl"
_F64 = np.dtype(np.float64)
#: Kernel tunables (see kernels/common/im2col.h); module attributes so tests can force every
#: code path.  CONV_WG is the work-group size of depthwise_conv2d_backward_weight.
DEFINES = {"CONV_WG": 256, "CONV_RUN": 32, "CONV_DW_RUN": 4}
#: most work-groups one launch asks for; the kernels' grid-stride loops cover the rest
_MAX_GROUPS = 1 << 20
_GEOMETRY = [np.int64] * 14
_SIGNATURES = {
    "im2col": [None, None] + _GEOMETRY,
    "col2im": [None, None] + _GEOMETRY,
    "batch_sum_transpose": [None, None, np.int64, np.int64, np.int64],
    "depthwise_conv2d": [None, None, None, np.int64] + _GEOMETRY,
    "depthwise_conv2d_backward_input": [None, None, None, np.int64] + _GEOMETRY,
    "depthwise_conv2d_backward_weight": [None, None, None, np.int64] + _GEOMETRY,
}


def _kernel(self, name, dtype):
    try:
        cache = self._conv_kernels
    except AttributeError:
        cache = self._conv_kernels = {}
    f64 = np.dtype(dtype) == _F64
    key = (name, f64, tuple(sorted(DEFINES.items())))
    knl = cache.get(key)
    if knl is None:
        program = self.program(_SOURCE, dict(DEFINES, CONV_F64=int(f64)))
        knl = LaunchKernel(program, name + ("_f64" if f64 else "_f32"))
        knl.set_scalar_arg_dtypes(_SIGNATURES[name])
        cache[key] = knl
    return knl


def _geometry(input_shape, kernel, stride, padding, dilation, out_hw):
    return (*input_shape, *kernel, *stride, *padding, *dilation, *out_hw)


def _rows_of_runs(shape, run):
    """Work-items of a kernel that gives each one ``run`` consecutive elements of a row of an
    array of ``shape`` (rows are its last axis)."""
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return rows * -(-shape[-1] // run)


def _run(self, name, dtype, items, buffers, scalars):
    """Launch a grid-stride kernel with about one work-item per unit of work."""
    if items == 0:
        return
    groups = min(-(-items // LOCAL_SIZE), _MAX_GROUPS)
    self.launch(_kernel(self, name, dtype), (groups * LOCAL_SIZE,), (LOCAL_SIZE,),
                *buffers, *scalars)


def _im2col(self, x, kernel, stride, padding, dilation, out_hw):
    n, c = x.shape[:2]
    out = self.empty((n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1]), x.dtype)
    runs = _rows_of_runs((n * c * kernel[0] * kernel[1] * out_hw[0], out_hw[1]),
                         DEFINES["CONV_RUN"])
    _run(self, "im2col", x.dtype, runs if out.size else 0, (_live(x), out.data),
         _geometry(x.shape, kernel, stride, padding, dilation, out_hw))
    return out


def _col2im(self, cols, input_shape, kernel, stride, padding, dilation, out_hw):
    out = self.empty(tuple(input_shape), cols.dtype)
    runs = _rows_of_runs(out.shape, DEFINES["CONV_RUN"])
    _run(self, "col2im", cols.dtype, runs if out.size else 0, (_live(cols), out.data),
         _geometry(input_shape, kernel, stride, padding, dilation, out_hw))
    return out


def _depthwise_conv2d(self, x, w, stride, padding, dilation, multiplier, out_hw):
    n, c = x.shape[:2]
    out = self.empty((n, c * multiplier) + tuple(out_hw), x.dtype)
    runs = _rows_of_runs(out.shape, DEFINES["CONV_DW_RUN"])
    _run(self, "depthwise_conv2d", x.dtype, runs, (_live(x), _live(w), out.data),
         (multiplier,) + _geometry(x.shape, w.shape[2:], stride, padding, dilation, out_hw))
    return out


def _depthwise_conv2d_backward_input(self, grad_out, w, input_shape, stride, padding, dilation,
                                     multiplier, out_hw):
    out = self.empty(tuple(input_shape), grad_out.dtype)
    _run(self, "depthwise_conv2d_backward_input", grad_out.dtype, out.size,
         (_live(grad_out), _live(w), out.data),
         (multiplier,) + _geometry(input_shape, w.shape[2:], stride, padding, dilation, out_hw))
    return out


def _depthwise_conv2d_backward_weight(self, grad_out, x, weight_shape, stride, padding,
                                      dilation, multiplier, out_hw):
    out = self.empty(tuple(weight_shape), grad_out.dtype)
    if out.size == 0:
        return out
    if grad_out.size == 0:          # no products to sum (empty batch)
        self.free(out)
        return self.full(tuple(weight_shape), 0, grad_out.dtype)
    groups = min(out.size, _MAX_GROUPS)
    wg = DEFINES["CONV_WG"]
    self.launch(_kernel(self, "depthwise_conv2d_backward_weight", grad_out.dtype),
                (groups * wg,), (wg,), _live(grad_out), _live(x), out.data,
                multiplier,
                *_geometry(x.shape, weight_shape[2:], stride, padding, dilation, out_hw))
    return out


def conv_gemm_parameters(backend, N):
    """The gemm parameters for the convolution's products, whose N is short (C_out, or a
    feature map of a few hundred pixels).  On a CPU device (1 x 1 work-groups, PoCL) one
    vector of columns per work-item (NWI = 1) and, for N <= 16, 4-row blocks give 2-8x the
    tuned square-matrix parameters on these shapes (more work-items, no guarded N edge); on
    other devices the tuned parameters stand."""
    params = opencl_gemm.parameters(backend)[0]
    if params["WGM"] == 1 and params["WGN"] == 1 and not params.get("USE_LOCAL"):
        params = dict(params, NWI=1, MWI=4 if N <= 16 else 8)
    return params


def _conv_gemm(self, a, b, M, N, K, batch, a_sb, b_sb, trans_a=False, trans_b=False):
    """(batch, M, N) = op(A[z]) @ op(B[z]) for z < batch, A[z] at element z * a_sb of ``a``
    (0: one A for all), likewise B; op transposes where asked (see opencl_gemm.run)."""
    out = self.empty((batch, M, N), a.dtype)
    if out.size == 0:
        return out
    return opencl_gemm.run(self, a, b, out, M, N, K, batch, 1.0, 0.0, trans_a, trans_b,
                           a_sb=a_sb, b_sb=b_sb, params=conv_gemm_parameters(self, N))


def _batch_sum_transpose(self, a):
    """(K, R) = the sum over the first axis of ``a`` (B, R, K), transposed: one launch."""
    b, r, k = a.shape
    out = self.empty((k, r), a.dtype)
    if out.size == 0:
        return out
    if b == 0:
        self.free(out)
        return self.full((k, r), 0, a.dtype)
    _run(self, "batch_sum_transpose", a.dtype, out.size, (_live(a), out.data), (b, r, k))
    return out


OpenCLBackend.conv_gemm = _conv_gemm
OpenCLBackend.batch_sum_transpose = _batch_sum_transpose
OpenCLBackend.im2col = _im2col
OpenCLBackend.col2im = _col2im
OpenCLBackend.depthwise_conv2d = _depthwise_conv2d
OpenCLBackend.depthwise_conv2d_backward_input = _depthwise_conv2d_backward_input
OpenCLBackend.depthwise_conv2d_backward_weight = _depthwise_conv2d_backward_weight
