"""Convolution entry points for the opencl backend: im2col, col2im and the depthwise direct
convolution with its two gradients, from kernels/opencl/im2col.cl (the kernels live in
kernels/common/im2col.h, shared with the cuda build).

Importing this module adds them to ``OpenCLBackend``.  One program per precision (define
CONV_F64); kernel objects are built once per backend and kept in a dict, so a call costs a
lookup and one enqueue.
"""
import numpy as np

from .opencl import OpenCLBackend
from .opencl_elementwise import LOCAL_SIZE, _live

_SOURCE = "opencl/im2col.cl"
_F64 = np.dtype(np.float64)
#: Kernel tunables (see kernels/common/im2col.h); module attributes so tests can force every
#: code path.  CONV_WG is the work-group size of depthwise_conv2d_backward_weight.
DEFINES = {"CONV_WG": 256, "CONV_RUN": 4, "CONV_DW_RUN": 4}
#: most work-groups one launch asks for; the kernels' grid-stride loops cover the rest
_MAX_GROUPS = 1 << 20
_GEOMETRY = [np.int64] * 14
_SIGNATURES = {
    "im2col": [None, None] + _GEOMETRY,
    "col2im": [None, None] + _GEOMETRY,
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
        knl = getattr(program, name + ("_f64" if f64 else "_f32"))
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
    _run(self, "col2im", cols.dtype, out.size, (_live(cols), out.data),
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


OpenCLBackend.im2col = _im2col
OpenCLBackend.col2im = _col2im
OpenCLBackend.depthwise_conv2d = _depthwise_conv2d
OpenCLBackend.depthwise_conv2d_backward_input = _depthwise_conv2d_backward_input
OpenCLBackend.depthwise_conv2d_backward_weight = _depthwise_conv2d_backward_weight
