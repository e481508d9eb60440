"""Activation methods of the cuda backend: kernels/cuda/activations.cu (the shared
kernels/common/activations.h, whose OpenCL build the tests run on PoCL) through
cupy.RawModule, with the launch choices of ``opencl_activations`` for a GPU: the row kernel
for bias + activation over long rows, one block per line for long softmax lines, one thread
per line otherwise.  Attached to ``CUDABackend`` at import (``cuda.create()`` imports us),
overriding the CuPy-array versions of ``activations_array_module``."""
import numpy as np

from .base import ACTIVATIONS, float_kernel_suffix
from .cuda import CUDABackend, cupy

_SOURCE = "cuda/activations.cu"
_BLOCK = 256              # ACT_GROUP of the block-per-line kernels and bias_grad
_MAX_ROWS = 65535         # gridDim.y limit: the row kernel is launched in chunks
_MAX_GROUPS = 65535 * 32  # blocks of a grid-stride / block-stride launch
GROUP_MIN_LENGTH = 256
ITEM_MIN_STRIDED_LINES = 2048
ROW_MIN_LENGTH = 64


def _suffix(dtype, what):
    return float_kernel_suffix(CUDABackend, dtype, what)


def _three_d(shape, axis):
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


def _act_code(act):
    try:
        return np.int64(ACTIVATIONS[act])
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}") from None


def _run(self, name, grid, block, args):
    kernel = self.module(_SOURCE).get_function(name)
    with self.cuda_device:
        kernel(grid, block, args)


def _bias_act(self, x, b, axis, act, param):
    suffix = _suffix(x.dtype, "bias_act")
    code = _act_code(act)
    scalar = x.dtype.type(param)
    x = cupy.ascontiguousarray(x)
    out = self.empty(x.shape, x.dtype)
    n = int(x.size)
    if n == 0:
        return out
    if b is None:
        self._launch(_SOURCE, "bias_act_flat" + suffix, n,
                     (x, x, out, np.int64(n), np.int64(1), np.int64(1), np.int64(0), code,
                      scalar))
        return out
    b = cupy.ascontiguousarray(b)
    outer, channels, inner = _three_d(x.shape, axis)
    if inner >= ROW_MIN_LENGTH or (inner == 1 and channels >= ROW_MIN_LENGTH):
        on_cols = inner == 1
        rows, cols = (outer, channels) if on_cols else (outer * channels, inner)
        name = ("bias_act_cols" if on_cols else "bias_act_rows") + suffix
        extra = () if on_cols else (np.int64(channels),)
        for row0 in range(0, rows, _MAX_ROWS):
            _run(self, name, (1, min(rows - row0, _MAX_ROWS)), (_BLOCK, 1),
                 (x, b, out, np.int64(row0), np.int64(cols)) + extra + (code, scalar))
        return out
    self._launch(_SOURCE, "bias_act_flat" + suffix, n,
                 (x, b, out, np.int64(n), np.int64(channels), np.int64(inner), np.int64(1),
                  code, scalar))
    return out


def _act_backward(self, grad, x, act, param):
    suffix = _suffix(grad.dtype, "act_backward")
    out = self.empty(grad.shape, grad.dtype)
    self._launch(_SOURCE, "act_backward" + suffix, int(grad.size),
                 (cupy.ascontiguousarray(grad), cupy.ascontiguousarray(x), out,
                  np.int64(grad.size), _act_code(act), grad.dtype.type(param)))
    return out


def _bias_grad(self, grad, axis):
    suffix = _suffix(grad.dtype, "bias_grad")
    outer, channels, inner = _three_d(grad.shape, axis)
    out = self.empty((channels,), grad.dtype)
    if channels:
        _run(self, "bias_grad" + suffix, (min(channels, _MAX_GROUPS),), (_BLOCK,),
             (cupy.ascontiguousarray(grad), out, np.int64(outer), np.int64(channels),
              np.int64(inner)))
    return out


def _line_launch(self, name, suffix, shape, axis, arrays, log):
    outer, length, inner = _three_d(shape, axis)
    lines = outer * inner
    if lines == 0 or length == 0:
        return
    args = tuple(arrays) + (np.int64(lines), np.int64(length), np.int64(inner),
                            np.int64(1 if log else 0))
    if length >= GROUP_MIN_LENGTH and (inner == 1 or lines < ITEM_MIN_STRIDED_LINES):
        _run(self, name + "_group" + suffix, (min(lines, _MAX_GROUPS),), (_BLOCK,), args)
    else:
        self._launch(_SOURCE, name + "_item" + suffix, lines, args)


def _softmax(self, x, axis, log):
    suffix = _suffix(x.dtype, "softmax")
    x = cupy.ascontiguousarray(x)
    out = self.empty(x.shape, x.dtype)
    if x.size:
        _line_launch(self, "softmax", suffix, x.shape, axis, (x, out), log)
    return out


def _softmax_backward(self, grad, y, axis, log):
    suffix = _suffix(grad.dtype, "softmax_backward")
    out = self.empty(grad.shape, grad.dtype)
    if grad.size:
        _line_launch(self, "softmax_backward", suffix, grad.shape, axis,
                     (cupy.ascontiguousarray(grad), cupy.ascontiguousarray(y), out), log)
    return out


CUDABackend.bias_act = _bias_act
CUDABackend.act_backward = _act_backward
CUDABackend.bias_grad = _bias_grad
CUDABackend.softmax = _softmax
CUDABackend.softmax_backward = _softmax_backward
