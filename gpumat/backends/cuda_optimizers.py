"""Fused optimizer updates of the cuda backend: kernels/cuda/optimizers.cu (the shared
kernels/common/optimizers.h, whose OpenCL build the tests run on PoCL) through
cupy.RawModule, one launch per parameter.  Attached to ``CUDABackend`` at import
(``cuda.create()`` imports us), overriding the CuPy-array versions."""
import numpy as np

from .base import float_kernel_suffix
from .cuda import CUDABackend

_SOURCE = "cuda/optimizers.cu"


def _sgd_update(self, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    t = p.dtype.type
    name = "sgd_update" + float_kernel_suffix(self, p.dtype, "sgd_update")
    self._launch(_SOURCE, name, int(p.size), (
        p, g, buf, np.int64(p.size), t(lr), t(momentum), t(dampening), t(weight_decay),
        np.int64(nesterov), np.int64(first)))


def _adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size,
                 bias2_sqrt):
    t = p.dtype.type
    name = "adam_update" + float_kernel_suffix(self, p.dtype, "adam_update")
    self._launch(_SOURCE, name, int(p.size), (
        p, g, m, v, np.int64(p.size), t(lr), t(beta1), t(beta2), t(eps), t(weight_decay),
        np.int64(decoupled), t(step_size), t(bias2_sqrt)))


CUDABackend.sgd_update = _sgd_update
CUDABackend.adam_update = _adam_update
