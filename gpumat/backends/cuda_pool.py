"""2-d pooling methods of the cuda backend: kernels/cuda/pool2d.cu (the shared
kernels/common/pool2d.h that the OpenCL tests run on PoCL) through cupy.RawModule, one thread
per output element forward and one per input element backward (a gather, so no atomics).
Attached to ``CUDABackend`` at import (``cuda.create()`` imports us), overriding the
CuPy-array version of ``pool_array_module``."""
import numpy as np

from .. import errors
from .base import float_kernel_suffix
from .cuda import CUDABackend, cupy

_SOURCE = "cuda/pool2d.cu"


def _suffix(dtype, what):
    return float_kernel_suffix(CUDABackend, dtype, what)


def _geometry_args(planes, h, w, out_hw, kernel, stride, padding):
    return tuple(np.int64(v) for v in (planes, h, w, out_hw[0], out_hw[1], kernel[0],
                                       kernel[1], stride[0], stride[1], padding[0], padding[1]))


def _dummy_indices(self):
    """A one-element int64 scratch array for the indices argument when they are not stored
    (the kernel never touches it then; not counted as user memory)."""
    buf = getattr(self, "_pool_dummy_indices", None)
    if buf is None:
        buf = self._pool_dummy_indices = self.xp.empty((1,), np.int64)
    return buf


def _pool2d(self, x, mode, kernel, stride, padding, ceil_mode, count_include_pad, out_hw,
            return_indices=True):
    suffix = _suffix(x.dtype, "pool2d")
    x = cupy.ascontiguousarray(x)
    n, c, h, w = x.shape
    out = self.empty((n, c) + tuple(out_hw), x.dtype)
    total = int(out.size)
    geometry = _geometry_args(n * c, h, w, out_hw, kernel, stride, padding)
    if mode == "max":
        indices = self.empty(out.shape, np.int64) if return_indices else None
        index_arg = indices if return_indices else _dummy_indices(self)
        self._launch(_SOURCE, "max_pool2d_forward" + suffix, total,
                     (x, out, index_arg, np.int64(1 if return_indices else 0)) + geometry)
        return out, indices
    if mode != "avg":
        raise ValueError(f"pool2d: unknown mode {mode!r}")
    self._launch(_SOURCE, "avg_pool2d_forward" + suffix, total,
                 (x, out, np.int64(1 if count_include_pad else 0)) + geometry)
    return out, None


def _pool2d_backward(self, grad_out, indices, input_shape, mode, kernel, stride, padding,
                     count_include_pad, out_hw):
    suffix = _suffix(grad_out.dtype, "pool2d_backward")
    grad_out = cupy.ascontiguousarray(grad_out)
    n, c, h, w = input_shape
    grad_in = self.empty(tuple(input_shape), grad_out.dtype)
    total = int(grad_in.size)
    geometry = _geometry_args(n * c, h, w, out_hw, kernel, stride, padding)
    if mode == "max":
        if indices is None or np.dtype(indices.dtype) != np.int64:
            raise errors.DtypeError("cuda pool2d_backward: max mode needs int64 indices")
        self._launch(_SOURCE, "max_pool2d_backward" + suffix, total,
                     (grad_out, cupy.ascontiguousarray(indices), grad_in) + geometry)
    elif mode == "avg":
        self._launch(_SOURCE, "avg_pool2d_backward" + suffix, total,
                     (grad_out, grad_in, np.int64(1 if count_include_pad else 0)) + geometry)
    else:
        raise ValueError(f"pool2d_backward: unknown mode {mode!r}")
    return grad_in


CUDABackend.pool2d = _pool2d
CUDABackend.pool2d_backward = _pool2d_backward
