"""Activation methods of the opencl backend: kernels/opencl/activations.cl (the shared
kernels/common/activations.h), attached to ``OpenCLBackend`` at import (``opencl.create()``
imports us).

Each entry point is one launch, one pass over memory where the op allows it:
  * bias + activation: ``bias_act_rows`` / ``bias_act_cols`` when the bias axis gives long
    rows (NCHW with a large H*W, or N x F with many features), so the channel is found once
    per row, else ``bias_act_flat``; CPU devices take the float8 ``bias_act_rows_vec``;
  * softmax and its backward: one work-group per line (local-memory max and sum) for long
    lines, one work-item per line for short or strided ones; the line is read twice for the
    statistics and once for the output, all inside one launch.  CPU devices (PoCL)
    vectorise across work-items, which a one-item-per-line loop defeats, so there contiguous
    lines go to OpenCL-only float8 kernels (kernels/opencl/activations_vec.h), about 8x
    faster than the portable per-line kernel on PoCL.
"""
import numpy as np

from .base import ACTIVATIONS, float_kernel_suffix
from .opencl import OpenCLBackend, cl
from .opencl_elementwise import LOCAL_SIZE, _common_kernel, _grid, _live

_SOURCE = "opencl/activations.cl"
#: the work-group size the _group kernels and bias_grad are written for (ACT_GROUP)
_GROUP = 256
#: most work-groups put along a grid dimension (CUDA-based drivers allow no more)
_MAX_GROUPS = 65535
#: a line at least this long gets a work-group of its own ...
GROUP_MIN_LENGTH = 256
#: ... unless there are this many lines of stride > 1, which one work-item each reads
#: with neighbouring addresses
ITEM_MIN_STRIDED_LINES = 2048
#: on CPU devices, fewer lines than this (long ones) each get a work-group
CPU_MIN_LINES = 16
#: on CPU devices, contiguous softmax lines and bias rows go to the vector (float8) kernels
#: of activations.cl (one work-item per row) ...
CPU_VECTOR_ROWS = True
#: ... where there are at least this many bias rows to spread over the cores
CPU_MIN_ROWS = 64
#: ... and the bias gradient, one work-item per channel, where there are this many channels
CPU_MIN_BIAS_CHANNELS = 16
#: ... and activations without bias are cut into chunks of this many elements (a multiple
#: of 8), one per work-item, when there are at least CPU_MIN_CHUNKS of them
CPU_CHUNK = 4096
CPU_MIN_CHUNKS = 8
#: rows shorter than this go to the flat bias kernel (a row kernel would idle most items)
ROW_MIN_LENGTH = 64


def _suffix(self, dtype, what):
    return float_kernel_suffix(self, dtype, what)


def _three_d(shape, axis):
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


def _vector_chunks(self, n):
    """Whether an n-element activation goes to the float8 chunk kernels (CPU devices)."""
    return (CPU_VECTOR_ROWS and n >= CPU_MIN_CHUNKS * CPU_CHUNK
            and bool(self.cl_device.type & cl.device_type.CPU))


def _act_code(act):
    try:
        return ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}") from None


def _bias_act(self, x, b, axis, act, param):
    suffix = _suffix(self, x.dtype, "bias_act")
    code = np.int64(_act_code(act))
    scalar = x.dtype.type(param)
    out = self.empty(x.shape, x.dtype)
    n = x.size
    if n == 0:
        return out
    if b is None and _vector_chunks(self, n):
        knl = _common_kernel(self, _SOURCE, "act_chunks_vec" + suffix)
        knl(self.queue, (_grid(self, -(-n // CPU_CHUNK)),), (LOCAL_SIZE,), _live(x), out.data,
            np.int64(n), np.int64(CPU_CHUNK), code, scalar)
        return out
    if b is None:
        knl = _common_kernel(self, _SOURCE, "bias_act_flat" + suffix)
        # any buffer for the unused bias pointer
        knl(self.queue, (_grid(self, n),), (LOCAL_SIZE,), _live(x), _live(x), out.data,
            np.int64(n), np.int64(1), np.int64(1), np.int64(0), code, scalar)
        return out
    outer, channels, inner = _three_d(x.shape, axis)
    if CPU_VECTOR_ROWS and self.cl_device.type & cl.device_type.CPU:
        on_cols = inner == 1
        rows, cols = (outer, channels) if on_cols else (outer * channels, inner)
        if rows >= CPU_MIN_ROWS:
            knl = _common_kernel(self, _SOURCE, "bias_act_rows_vec" + suffix)
            knl(self.queue, (_grid(self, rows),), (LOCAL_SIZE,), _live(x), _live(b), out.data,
                np.int64(rows), np.int64(cols), np.int64(channels), np.int64(on_cols), code,
                scalar)
            return out
    if inner >= ROW_MIN_LENGTH or (inner == 1 and channels >= ROW_MIN_LENGTH):
        on_cols = inner == 1
        rows, cols = (outer, channels) if on_cols else (outer * channels, inner)
        knl = _common_kernel(self, _SOURCE, ("bias_act_cols" if on_cols else "bias_act_rows")
                             + suffix)
        extra = () if on_cols else (np.int64(channels),)
        for row0 in range(0, rows, _MAX_GROUPS):
            # one work-group per row: the rows give the parallelism
            knl(self.queue, (LOCAL_SIZE, min(rows - row0, _MAX_GROUPS)), (LOCAL_SIZE, 1),
                _live(x), _live(b), out.data, np.int64(row0), np.int64(cols), *extra, code,
                scalar)
        return out
    knl = _common_kernel(self, _SOURCE, "bias_act_flat" + suffix)
    knl(self.queue, (_grid(self, n),), (LOCAL_SIZE,), _live(x), _live(b), out.data,
        np.int64(n), np.int64(channels), np.int64(inner), np.int64(1), code, scalar)
    return out


def _act_backward(self, grad, x, act, param):
    suffix = _suffix(self, grad.dtype, "act_backward")
    code = np.int64(_act_code(act))
    out = self.empty(grad.shape, grad.dtype)
    n = grad.size
    if _vector_chunks(self, n):
        knl = _common_kernel(self, _SOURCE, "act_backward_chunks_vec" + suffix)
        knl(self.queue, (_grid(self, -(-n // CPU_CHUNK)),), (LOCAL_SIZE,), _live(grad),
            _live(x), out.data, np.int64(n), np.int64(CPU_CHUNK), code,
            grad.dtype.type(param))
    elif n:
        knl = _common_kernel(self, _SOURCE, "act_backward" + suffix)
        knl(self.queue, (_grid(self, grad.size),), (LOCAL_SIZE,), _live(grad), _live(x),
            out.data, np.int64(grad.size), code, grad.dtype.type(param))
    return out


def _bias_grad(self, grad, axis):
    suffix = _suffix(self, grad.dtype, "bias_grad")
    outer, channels, inner = _three_d(grad.shape, axis)
    out = self.empty((channels,), grad.dtype)
    if channels == 0:
        return out
    if (CPU_VECTOR_ROWS and self.cl_device.type & cl.device_type.CPU and inner >= 8
            and channels >= CPU_MIN_BIAS_CHANNELS):
        knl = _common_kernel(self, _SOURCE, "bias_grad_vec" + suffix)
        knl(self.queue, (_grid(self, channels),), (LOCAL_SIZE,), _live(grad), out.data,
            np.int64(outer), np.int64(channels), np.int64(inner))
        return out
    knl = _common_kernel(self, _SOURCE, "bias_grad" + suffix)
    groups = min(channels, _MAX_GROUPS)
    knl(self.queue, (groups * _GROUP,), (_GROUP,), _live(grad), out.data, np.int64(outer),
        np.int64(channels), np.int64(inner))
    return out


def _line_launch(self, name, suffix, shape, axis, args):
    """Launch a softmax-family kernel over the lines of ``shape`` along ``axis``."""
    outer, length, inner = _three_d(shape, axis)
    lines = outer * inner
    if lines == 0 or length == 0:
        return
    sizes = (np.int64(lines), np.int64(length), np.int64(inner))
    if self.cl_device.type & cl.device_type.CPU:
        # a CPU runs a work-item's loop at full speed and a work-group's barriers slowly:
        # groups only pay off where there are too few lines to occupy the cores
        grouped = length >= GROUP_MIN_LENGTH and lines < CPU_MIN_LINES
        if inner == 1 and not grouped and CPU_VECTOR_ROWS:
            knl = _common_kernel(self, _SOURCE, name + "_rows_vec" + suffix)
            knl(self.queue, (_grid(self, lines),), (LOCAL_SIZE,), *args[:-1],
                np.int64(lines), np.int64(length), args[-1])
            return
    else:
        grouped = length >= GROUP_MIN_LENGTH and (inner == 1 or lines < ITEM_MIN_STRIDED_LINES)
    if grouped:
        knl = _common_kernel(self, _SOURCE, name + "_group" + suffix)
        groups = min(lines, _MAX_GROUPS)
        knl(self.queue, (groups * _GROUP,), (_GROUP,), *args[:-1], *sizes, args[-1])
    else:
        knl = _common_kernel(self, _SOURCE, name + "_item" + suffix)
        knl(self.queue, (_grid(self, lines),), (LOCAL_SIZE,), *args[:-1], *sizes, args[-1])


def _softmax(self, x, axis, log):
    suffix = _suffix(self, x.dtype, "softmax")
    out = self.empty(x.shape, x.dtype)
    if x.size:
        _line_launch(self, "softmax", suffix, x.shape, axis,
                     (_live(x), out.data, np.int64(1 if log else 0)))
    return out


def _softmax_backward(self, grad, y, axis, log):
    suffix = _suffix(self, grad.dtype, "softmax_backward")
    out = self.empty(grad.shape, grad.dtype)
    if grad.size:
        _line_launch(self, "softmax_backward", suffix, grad.shape, axis,
                     (_live(grad), _live(y), out.data, np.int64(1 if log else 0)))
    return out


OpenCLBackend.bias_act = _bias_act
OpenCLBackend.act_backward = _act_backward
OpenCLBackend.bias_grad = _bias_grad
OpenCLBackend.softmax = _softmax
OpenCLBackend.softmax_backward = _softmax_backward
