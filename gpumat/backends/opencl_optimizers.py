"""Fused optimizer updates of the opencl backend: kernels/opencl/optimizers.cl (the shared
kernels/common/optimizers.h), one launch per parameter, attached to ``OpenCLBackend`` at
import (``opencl.create()`` imports us)."""
import numpy as np

from .base import float_kernel_suffix
from .opencl import OpenCLBackend
from .opencl_elementwise import LOCAL_SIZE, _common_kernel, _grid, _live

_SOURCE = "opencl/optimizers.cl"


def _launch(self, name, p, args):
    n = p.size
    if n:
        knl = _common_kernel(self, _SOURCE, name + float_kernel_suffix(self, p.dtype, name))
        knl(self.queue, (_grid(self, n),), (LOCAL_SIZE,), *args[:-1], np.int64(n), *args[-1])


def _sgd_update(self, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    t = p.dtype.type
    _launch(self, "sgd_update", p, (_live(p), _live(g), _live(buf), (
        t(lr), t(momentum), t(dampening), t(weight_decay), np.int64(nesterov),
        np.int64(first))))


def _adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size,
                 bias2_sqrt):
    t = p.dtype.type
    _launch(self, "adam_update", p, (_live(p), _live(g), _live(m), _live(v), (
        t(lr), t(beta1), t(beta2), t(eps), t(weight_decay), np.int64(decoupled),
        t(step_size), t(bias2_sqrt))))


OpenCLBackend.sgd_update = _sgd_update
OpenCLBackend.adam_update = _adam_update
