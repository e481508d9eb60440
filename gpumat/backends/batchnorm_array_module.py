"""Batch normalisation for the array-module backends (NumPy on cpu, CuPy on cuda), attached
to ``ArrayModuleBackend`` at import.  The reference the kernels are tested against (cuda
replaces these with kernels/common/batchnorm.h, cpu with kernels/cpu/batchnorm.hpp where the
native module is built).

Statistics: the mean is summed in float64; the variance is the float64 mean of the squares
of ``x - mean`` (mean rounded to x's dtype, the difference exact where it matters: for
values close together), plus the square of that rounding, so a large mean with a small
spread loses nothing.  The centred values are computed once, into the output buffer, and
scaled there in place, so the forward is a few passes without temporaries beyond the output
and one square.  The maps use kernels/common/batchnorm.h's order of operations:
``y = (x - mean) * (inv_std * weight) + bias`` and
``dx = (inv_std * weight) * ((grad - sum_grad / M) - (x - mean) * (inv_std * (dweight / M)))``.
"""
import numpy as np

from .array_module import ArrayModuleBackend


def _dims(shape):
    """(N, C, inner) of an N x C x ... shape."""
    inner = int(np.prod(shape[2:], dtype=np.int64))
    return int(shape[0]), int(shape[1]), inner


def _column(v):
    return v.reshape(1, -1, 1)


def _scale(inv_std, weight):
    return inv_std if weight is None else inv_std * weight


def _batch_norm_forward(self, x, weight, bias, mean, var, eps):
    xp = self.xp
    n, c, inner = _dims(x.shape)
    dtype = x.dtype
    v = x.reshape(n, c, inner)
    with np.errstate(all="ignore"):
        if mean is None:
            count = max(n * inner, 1)
            mean64 = v.sum(axis=(0, 2), dtype=np.float64) / count
            mean = self._new(lambda: mean64.astype(dtype), (c,), dtype)
            y = self._new(lambda: v - _column(mean), v.shape, dtype)
            drift = mean64 - mean                      # the rounding of the mean, squared
            var64 = xp.square(y).sum(axis=(0, 2), dtype=np.float64) / count - drift * drift
            var64 = xp.maximum(var64, 0)
            var = self._new(lambda: var64.astype(dtype), (c,), dtype)
            inv_std = self._new(lambda: (1 / xp.sqrt(var64 + eps)).astype(dtype), (c,), dtype)
        else:
            inv_std = self._new(lambda: 1 / xp.sqrt(var + dtype.type(eps)), (c,), dtype)
            y = self._new(lambda: v - _column(mean), v.shape, dtype)
        y *= _column(_scale(inv_std, weight))
        if bias is not None:
            y += _column(bias)
    return y.reshape(x.shape), mean, var, inv_std


def _batch_norm_backward(self, grad, x, mean, inv_std, weight, training, input_grad,
                         param_grads):
    xp = self.xp
    n, c, inner = _dims(x.shape)
    dtype = x.dtype
    g, v = grad.reshape(n, c, inner), x.reshape(n, c, inner)
    sums = grad_x = None
    with np.errstate(all="ignore"):
        if training or param_grads:
            products = v - _column(mean)
            products *= g
            sums = (g.sum(axis=(0, 2), dtype=np.float64).astype(dtype),     # dbias
                    (products.sum(axis=(0, 2), dtype=np.float64) * inv_std).astype(dtype))
            del products
        if input_grad:
            scale = _column(_scale(inv_std, weight))
            if training:
                count = dtype.type(max(n * inner, 1))
                grad_bias, grad_weight = sums
                grad_x = self._new(lambda: g - _column(grad_bias / count), g.shape, dtype)
                correction = v - _column(mean)
                correction *= _column(inv_std * (grad_weight / count))
                grad_x -= correction
                del correction
                grad_x *= scale
            else:
                grad_x = self._new(lambda: g * scale, g.shape, dtype)
            grad_x = grad_x.reshape(x.shape)
    if not param_grads:
        return grad_x, None, None
    grad_bias, grad_weight = (self._track(s) for s in sums)
    return grad_x, grad_weight, grad_bias


ArrayModuleBackend.batch_norm_forward = _batch_norm_forward
ArrayModuleBackend.batch_norm_backward = _batch_norm_backward
