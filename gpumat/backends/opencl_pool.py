"""2-d pooling methods of the opencl backend: kernels/opencl/pool2d.cl (the shared
kernels/common/pool2d.h), one work-item per output element forward and one per input element
backward (a gather, so no atomics).  Attached to ``OpenCLBackend`` at import
(``opencl.create()`` imports us)."""
import numpy as np

from .. import errors
from .base import float_kernel_suffix
from .opencl import OpenCLBackend
from .opencl_elementwise import LOCAL_SIZE, _common_kernel, _grid, _live

_SOURCE = "opencl/pool2d.cl"


def _suffix(self, dtype, what):
    return float_kernel_suffix(self, dtype, what)


def _geometry_args(planes, h, w, out_hw, kernel, stride, padding):
    return tuple(np.int64(v) for v in (planes, h, w, out_hw[0], out_hw[1], kernel[0],
                                       kernel[1], stride[0], stride[1], padding[0], padding[1]))


def _dummy_indices(self):
    """A one-element int64 buffer for the indices argument when they are not stored."""
    buf = getattr(self, "_pool_dummy_indices", None)
    if buf is None:
        buf = self._pool_dummy_indices = self.empty((1,), np.int64)
        self._bytes_in_use -= buf.nbytes      # backend-owned scratch, not user memory
    return buf


def _pool2d(self, x, mode, kernel, stride, padding, ceil_mode, count_include_pad, out_hw,
            return_indices=True):
    suffix = _suffix(self, x.dtype, "pool2d")
    n, c, h, w = x.shape
    planes = n * c
    out = self.empty((n, c) + tuple(out_hw), x.dtype)
    total = out.size
    geometry = _geometry_args(planes, h, w, out_hw, kernel, stride, padding)
    if mode == "max":
        indices = self.empty(out.shape, np.int64) if return_indices else None
        if total:
            knl = _common_kernel(self, _SOURCE, "max_pool2d_forward" + suffix)
            index_buf = indices.data if return_indices else _dummy_indices(self).data
            knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(x), out.data,
                index_buf, np.int64(1 if return_indices else 0), *geometry)
        return out, indices
    if mode != "avg":
        raise ValueError(f"pool2d: unknown mode {mode!r}")
    if total:
        knl = _common_kernel(self, _SOURCE, "avg_pool2d_forward" + suffix)
        knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(x), out.data,
            np.int64(1 if count_include_pad else 0), *geometry)
    return out, None


def _pool2d_backward(self, grad_out, indices, input_shape, mode, kernel, stride, padding,
                     count_include_pad, out_hw):
    suffix = _suffix(self, grad_out.dtype, "pool2d_backward")
    n, c, h, w = input_shape
    grad_in = self.empty(tuple(input_shape), grad_out.dtype)
    total = grad_in.size
    geometry = _geometry_args(n * c, h, w, out_hw, kernel, stride, padding)
    if mode == "max":
        if indices is None or np.dtype(indices.dtype) != np.int64:
            raise errors.DtypeError("opencl pool2d_backward: max mode needs int64 indices")
        if total:
            knl = _common_kernel(self, _SOURCE, "max_pool2d_backward" + suffix)
            knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(grad_out),
                _live(indices), grad_in.data, *geometry)
    elif mode == "avg":
        if total:
            knl = _common_kernel(self, _SOURCE, "avg_pool2d_backward" + suffix)
            knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(grad_out),
                grad_in.data, np.int64(1 if count_include_pad else 0), *geometry)
    else:
        raise ValueError(f"pool2d_backward: unknown mode {mode!r}")
    return grad_in


OpenCLBackend.pool2d = _pool2d
OpenCLBackend.pool2d_backward = _pool2d_backward
