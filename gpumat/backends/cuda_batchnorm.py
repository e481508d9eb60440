"""Batch normalisation methods of the cuda backend: kernels/cuda/batchnorm.cu (the shared
kernels/common/batchnorm.h, whose OpenCL build the tests run on PoCL) through
cupy.RawModule, with the launch plan of ``batchnorm_launch`` (reductions spread over
GROUPS_PER_SM blocks per multiprocessor).  Attached to ``CUDABackend`` at import
(``cuda.create()`` imports us), overriding the CuPy-array versions of
``batchnorm_array_module``."""
import numpy as np

from . import batchnorm_launch
from .base import float_kernel_suffix
from .cuda import CUDABackend, cupy

_SOURCE = "cuda/batchnorm.cu"
#: blocks per multiprocessor a reduction aims for
GROUPS_PER_SM = 4


class _Launcher(batchnorm_launch.Launcher):
    def __init__(self, backend):
        self.backend = backend
        self.target_groups = GROUPS_PER_SM * max(
            1, int(backend._props.get("multiProcessorCount", 1)))

    def empty(self, shape, dtype):
        return self.backend.empty(shape, dtype)

    def free(self, native):
        self.backend.free(native)

    def buffer(self, native):
        return cupy.ascontiguousarray(native)

    def _run(self, name, dtype, grid, block, args):
        name += float_kernel_suffix(self.backend, dtype, "batch_norm")
        kernel = self.backend.module(_SOURCE).get_function(name)
        with self.backend.cuda_device:
            kernel(grid, block, args)

    def groups(self, name, dtype, count, args):
        self._run(name, dtype, (count,), (batchnorm_launch.GROUP,), args)

    def items(self, name, dtype, count, args):
        if count:
            blocks = min(-(-count // batchnorm_launch.GROUP), batchnorm_launch.MAX_ROWS * 32)
            self._run(name, dtype, (blocks,), (batchnorm_launch.GROUP,), args)

    def rows(self, name, dtype, count, before, after):
        for row0 in range(0, count, batchnorm_launch.MAX_ROWS):
            self._run(name, dtype, (1, min(count - row0, batchnorm_launch.MAX_ROWS)),
                      (batchnorm_launch.GROUP, 1), tuple(before) + (np.int64(row0),) + after)


def _launcher(self):
    return batchnorm_launch.launcher_of(self, _Launcher)


def _batch_norm_forward(self, x, weight, bias, mean, var, eps):
    return batchnorm_launch.forward(_launcher(self), x, weight, bias, mean, var, eps)


def _batch_norm_backward(self, grad, x, mean, inv_std, weight, training, input_grad,
                         param_grads):
    return batchnorm_launch.backward(_launcher(self), grad, x, mean, inv_std, weight, training,
                                     input_grad, param_grads)


def _batch_norm_inv_std(self, var, eps):
    return batchnorm_launch.inverse_std(_launcher(self), var, eps)


CUDABackend.batch_norm_forward = _batch_norm_forward
CUDABackend.batch_norm_inv_std = _batch_norm_inv_std
CUDABackend.batch_norm_backward = _batch_norm_backward
