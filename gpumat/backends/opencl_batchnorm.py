"""Batch normalisation methods of the opencl backend: kernels/opencl/batchnorm.cl, attached
to ``OpenCLBackend`` at import (``opencl.create()`` imports us).

On GPUs and accelerators, the shared kernels of kernels/common/batchnorm.h with the launch
plan of ``batchnorm_launch`` (a statistics or gradient-sum reduction, then a map).  CPU
devices (PoCL) run work-group barriers slowly and a work-item's own loop well, so there each
pass is one launch of the OpenCL-only kernels of kernels/opencl/batchnorm_vec.h: one
work-item per channel computes its statistics (or gradient sums) and then maps its rows
while they are in cache, eight values at a time.
"""
import numpy as np

from . import batchnorm_launch
from .base import batch_norm_dims, float_kernel_suffix
from .opencl import OpenCLBackend, cl
from .opencl_elementwise import LOCAL_SIZE, _common_kernel, _grid, _live

_SOURCE = "opencl/batchnorm.cl"
#: work-groups per compute unit a reduction aims for on GPUs (CPU devices: one)
GPU_GROUPS_PER_UNIT = 4
#: on CPU devices, the one-item-per-channel kernels (tests turn this off to run the portable
#: kernels on PoCL), which do a channel about this many times faster than the portable
#: kernels there (measured on PoCL, ResNet-sized layers) ...
CPU_VECTOR_CHANNELS = True
CPU_ITEM_ADVANTAGE = 8
#: ... unless too few channels to keep the cores busy share more values than this
CPU_MAX_SERIAL_VALUES = 1 << 16


class _Launcher(batchnorm_launch.Launcher):
    def __init__(self, backend):
        self.backend = backend
        device = backend.cl_device
        units = max(1, int(device.max_compute_units))
        self.target_groups = units if device.type & cl.device_type.CPU \
            else units * GPU_GROUPS_PER_UNIT

    def empty(self, shape, dtype):
        return self.backend.empty(shape, dtype)

    def free(self, native):
        self.backend.free(native)

    def buffer(self, native):
        return _live(native)

    def _kernel(self, name, dtype):
        suffix = float_kernel_suffix(self.backend, dtype, "batch_norm")
        return _common_kernel(self.backend, _SOURCE, name + suffix)

    def groups(self, name, dtype, count, args):
        group = batchnorm_launch.GROUP
        self._kernel(name, dtype)(self.backend.queue, (count * group,), (group,), *args)

    def items(self, name, dtype, count, args):
        self._kernel(name, dtype)(self.backend.queue, (_grid(self.backend, count),),
                                  (LOCAL_SIZE,), *args)

    def rows(self, name, dtype, count, before, after):
        knl = self._kernel(name, dtype)
        for row0 in range(0, count, batchnorm_launch.MAX_ROWS):
            # one work-group per row: the rows give the parallelism
            knl(self.backend.queue, (LOCAL_SIZE, min(count - row0, batchnorm_launch.MAX_ROWS)),
                (LOCAL_SIZE, 1), *before, np.int64(row0), *after)


def _launcher(self):
    return batchnorm_launch.launcher_of(self, _Launcher)


def _per_channel_items(self, dims):
    """Whether a pass over x of ``dims`` goes to the one-item-per-channel kernels."""
    batch, channels, inner = dims
    if not (CPU_VECTOR_CHANNELS and self.cl_device.type & cl.device_type.CPU) or not channels:
        return False
    return (channels * CPU_ITEM_ADVANTAGE >= int(self.cl_device.max_compute_units)
            or channels * batch * inner <= CPU_MAX_SERIAL_VALUES)


def _per_channel_launch(self, name, dtype, channels, args):
    # local size 1: every channel is a work-group of its own, so they spread over the cores
    knl = _common_kernel(self, _SOURCE, name + float_kernel_suffix(self, dtype, "batch_norm"))
    knl(self.queue, (channels,), (1,), *args)


def _batch_norm_forward(self, x, weight, bias, mean, var, eps):
    dims = batch_norm_dims(x.shape)
    if not _per_channel_items(self, dims):
        return batchnorm_launch.forward(_launcher(self), x, weight, bias, mean, var, eps)
    channels, dtype = dims[1], x.dtype
    training = mean is None
    if training:
        mean, var = self.empty((channels,), dtype), self.empty((channels,), dtype)
    inv_std, y = self.empty((channels,), dtype), self.empty(x.shape, dtype)
    spare = _live(mean)         # any buffer of C elements for an absent weight or bias
    _per_channel_launch(self, "bn_forward_vec", dtype, channels, (
        _live(x), _live(mean), _live(var), spare if weight is None else _live(weight),
        spare if bias is None else _live(bias), y.data, _live(mean), _live(var),
        inv_std.data, *(np.int64(d) for d in dims), np.int64(weight is not None),
        np.int64(bias is not None), np.int64(training), dtype.type(eps)))
    return y, mean, var, inv_std


def _batch_norm_backward(self, grad, x, mean, inv_std, weight, training, input_grad,
                         param_grads):
    dims = batch_norm_dims(x.shape)
    if not _per_channel_items(self, dims):
        return batchnorm_launch.backward(_launcher(self), grad, x, mean, inv_std, weight,
                                         training, input_grad, param_grads)
    channels, dtype = dims[1], x.dtype
    grad_x = grad_weight = grad_bias = None
    if param_grads:
        grad_weight, grad_bias = (self.empty((channels,), dtype) for _ in range(2))
    if input_grad:
        grad_x = self.empty(x.shape, dtype)
    spare = _live(mean)         # any buffer of C elements for an absent vector
    _per_channel_launch(self, "bn_backward_vec", dtype, channels, (
        _live(grad), _live(x), _live(mean), _live(inv_std),
        spare if weight is None else _live(weight), spare if grad_x is None else grad_x.data,
        spare if grad_weight is None else grad_weight.data,
        spare if grad_bias is None else grad_bias.data, *(np.int64(d) for d in dims),
        np.int64(weight is not None), np.int64(training), np.int64(input_grad),
        np.int64(param_grads)))
    return grad_x, grad_weight, grad_bias


def _batch_norm_inv_std(self, var, eps):
    return batchnorm_launch.inverse_std(_launcher(self), var, eps)


OpenCLBackend.batch_norm_forward = _batch_norm_forward
OpenCLBackend.batch_norm_inv_std = _batch_norm_inv_std
OpenCLBackend.batch_norm_backward = _batch_norm_backward
