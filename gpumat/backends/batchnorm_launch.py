"""Which batch-norm kernels (kernels/common/batchnorm.h) run, with which arguments, for the
backends that build that source: opencl (opencl_batchnorm.py) and cuda (cuda_batchnorm.py).
Each supplies a ``Launcher`` that knows its buffers and how to start a kernel; the passes
themselves are written once, here.

Forward in training: one reduction launch for the per-channel statistics (a work-group per
channel, or per chunk of a channel where the channels alone cannot fill the device, then a
small merge launch) and one map launch for y.  Evaluation: a C-item launch for inv_std and
the map.  Backward: one reduction for sum(grad) and sum(grad * (x - mean)) (skipped in
evaluation when no parameter gradient is asked for) and one map for dx.  The maps take the
row kernels where rows are long (the channel found once per row, no division per value),
else the flat kernel.
"""
import numpy as np

from .base import BATCH_NORM_ROW_WALK, batch_norm_chunks, batch_norm_dims

#: the work-group size of the reductions (BN_GROUP)
GROUP = 256
#: most rows one launch of a _rows kernel covers (grid dimension 1)
MAX_ROWS = 65535
#: rows at least this long go to the _rows kernels (as the activations' bias kernels)
ROW_MIN_LENGTH = 64


class Launcher:
    """A backend's side: ``empty`` / ``free`` natives, ``buffer`` (a native as a kernel
    argument), and three ways to start a kernel ``name`` (without its _f32 / _f64 suffix):
    ``groups`` (``count`` work-groups of GROUP items), ``items`` (a grid-stride launch over
    ``count`` items) and ``rows`` (a _rows kernel over ``count`` rows, launched MAX_ROWS at a
    time with the first row's index between ``before`` and ``after``).  ``target_groups`` is
    how many work-groups fill the device."""

    target_groups = 1

    def empty(self, shape, dtype):
        raise NotImplementedError

    def free(self, native):
        raise NotImplementedError

    def buffer(self, native):
        raise NotImplementedError

    def groups(self, name, dtype, count, args):
        raise NotImplementedError

    def items(self, name, dtype, count, args):
        raise NotImplementedError

    def rows(self, name, dtype, count, before, after):
        raise NotImplementedError


def launcher_of(backend, make):
    """``backend``'s Launcher, made by ``make(backend)`` on first use and kept on it."""
    launcher = backend.__dict__.get("_batch_norm_launcher")
    if launcher is None:
        launcher = backend._batch_norm_launcher = make(backend)
    return launcher


def _reduce(launcher, name, dims, dtype, inputs, outputs, finish_args, extra=()):
    """A per-channel reduction over x of ``dims``: ``inputs``, ``outputs`` and the trailing
    ``extra`` are kernel arguments; with several chunks per channel the partials go through
    a scratch buffer and name + '_finish', whose arguments ``finish_args(partial, chunks)``
    gives."""
    batch, channels, inner = dims
    chunks = batch_norm_chunks(channels, batch * inner, launcher.target_groups)
    width = 3 if name == "bn_stats" else 2
    partial = launcher.empty((channels * chunks * width if chunks > 1 else 1,), dtype)
    try:
        launcher.groups(name, dtype, min(channels * chunks, MAX_ROWS), (
            *inputs, launcher.buffer(partial), *outputs, *(np.int64(d) for d in dims),
            np.int64(chunks), np.int64(inner >= BATCH_NORM_ROW_WALK), *extra))
        if chunks > 1:
            launcher.items(name + "_finish", dtype, channels,
                           finish_args(launcher.buffer(partial), np.int64(chunks)))
    finally:
        launcher.free(partial)


def _map(launcher, name, dims, dtype, arrays, flags):
    """A per-channel map: ``arrays`` (inputs, vectors and output as kernel arguments) and the
    kernel's trailing ``flags``."""
    batch, channels, inner = dims
    n = batch * channels * inner
    if n == 0:
        return
    if inner >= ROW_MIN_LENGTH or (inner == 1 and channels >= ROW_MIN_LENGTH):
        on_cols = inner == 1
        rows, cols = (batch, channels) if on_cols else (batch * channels, inner)
        launcher.rows(name + "_rows", dtype, rows, arrays,
                      (np.int64(cols), np.int64(channels), np.int64(on_cols)) + flags)
    else:
        launcher.items(name + "_flat", dtype, n, arrays + (np.int64(n), np.int64(channels),
                                                           np.int64(inner)) + flags)


def _inv_std(launcher, var, inv_std, eps):
    channels, dtype = var.shape[0], np.dtype(var.dtype)
    launcher.items("bn_inv_std", dtype, channels, (launcher.buffer(var), launcher.buffer(inv_std),
                                                   np.int64(channels), dtype.type(eps)))


def inverse_std(launcher, var, eps):
    """Evaluation's 1 / sqrt(var + eps) per channel, by the kernel the forward pass uses (so
    bit for bit its inv_std: what a kernel folding the batch norm in needs)."""
    inv_std = launcher.empty(var.shape, var.dtype)
    if var.shape[0]:
        _inv_std(launcher, var, inv_std, eps)
    return inv_std


def forward(launcher, x, weight, bias, mean, var, eps):
    """Backend.batch_norm_forward through ``launcher``."""
    dims = batch_norm_dims(x.shape)
    channels = dims[1]
    dtype = np.dtype(x.dtype)
    t_eps = dtype.type(eps)
    arg = launcher.buffer
    inv_std = launcher.empty((channels,), dtype)
    if mean is None:
        mean, var = launcher.empty((channels,), dtype), launcher.empty((channels,), dtype)
        if channels:
            outputs = (arg(mean), arg(var), arg(inv_std))
            _reduce(launcher, "bn_stats", dims, dtype, (arg(x),), outputs,
                    lambda partial, chunks: (arg(x), partial) + outputs + (
                        np.int64(channels), np.int64(dims[2]), chunks, t_eps), (t_eps,))
    elif channels:
        _inv_std(launcher, var, inv_std, eps)
    y = launcher.empty(x.shape, dtype)
    spare = arg(mean)           # any buffer of C elements for an absent weight or bias
    _map(launcher, "bn_forward", dims, dtype,
         (arg(x), arg(mean), arg(inv_std), spare if weight is None else arg(weight),
          spare if bias is None else arg(bias), arg(y)),
         (np.int64(weight is not None), np.int64(bias is not None)))
    return y, mean, var, inv_std


def backward(launcher, grad, x, mean, inv_std, weight, training, input_grad, param_grads):
    """Backend.batch_norm_backward through ``launcher``."""
    dims = batch_norm_dims(x.shape)
    batch, channels, inner = dims
    dtype = np.dtype(x.dtype)
    arg = launcher.buffer
    grad_weight = grad_bias = grad_x = None
    if training or param_grads:
        grad_weight, grad_bias = (launcher.empty((channels,), dtype) for _ in range(2))
        if channels:
            outputs = (arg(grad_weight), arg(grad_bias))
            _reduce(launcher, "bn_backward_sums", dims, dtype,
                    (arg(grad), arg(x), arg(mean), arg(inv_std)), outputs,
                    lambda partial, chunks: (partial, arg(inv_std)) + outputs + (
                        np.int64(channels), chunks))
    if input_grad:
        grad_x = launcher.empty(x.shape, dtype)
        spare = arg(mean)
        _map(launcher, "bn_backward_input", dims, dtype,
             (arg(grad), arg(x), arg(mean), arg(inv_std),
              spare if weight is None else arg(weight),
              spare if grad_weight is None else arg(grad_weight),
              spare if grad_bias is None else arg(grad_bias), arg(grad_x)),
             (np.int64(weight is not None), np.int64(training), np.int64(batch * inner)))
    if not param_grads and grad_weight is not None:
        # the map was queued before the sums' memory can be reused (launches run in order)
        launcher.free(grad_weight)
        launcher.free(grad_bias)
        grad_weight = grad_bias = None
    return grad_x, grad_weight, grad_bias
