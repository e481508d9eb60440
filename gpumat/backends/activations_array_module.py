"""Activations for the array-module backends (NumPy on cpu, CuPy on cuda), attached to
``ArrayModuleBackend`` at import.

Vectorised whole-array expressions, written to touch memory as few times as NumPy allows:
results are computed into one fresh buffer and updated in place (``out=``), so bias + ReLU
is two passes and softmax four, without temporaries the size of the input beyond the output.
These are also the reference the OpenCL and CUDA kernels (kernels/common/activations.h) are
tested against, so each expression mirrors the kernel's comparison order: NaN input gives
NaN forward, and the backward values at the kinks are torch's.
"""
import numpy as np

from .array_module import ArrayModuleBackend


def _three_d(shape, axis):
    """(outer, shape[axis], inner) with outer * shape[axis] * inner == prod(shape)."""
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


def _activate(xp, v, act, param, fresh):
    """act(v); overwrites ``v`` where that saves a pass, if it is a ``fresh`` buffer."""
    out = v if fresh else None
    if act == "relu":
        v = xp.maximum(v, 0, out=out)    # NaN-propagating, as torch's clamp_min
    elif act == "leaky_relu":
        v = xp.where(v > 0, v, v * v.dtype.type(param))
    elif act == "relu6":
        v = xp.clip(v, 0, 6, out=out)
    elif act == "elu":
        v = xp.where(v > 0, v, v.dtype.type(param) * xp.expm1(v))
    elif act == "identity":
        v = v if fresh else v.copy()
    else:
        raise ValueError(f"bias_act: unknown activation {act!r}")
    return v


def _bias_act(self, x, b, axis, act, param):
    xp = self.xp
    with np.errstate(all="ignore"):
        if b is None:
            v = _activate(xp, x, act, param, fresh=False)
        else:
            outer, channels, inner = _three_d(x.shape, axis)
            v = (x.reshape(outer, channels, inner) + b.reshape(1, channels, 1)).reshape(x.shape)
            v = _activate(xp, v, act, param, fresh=True)
    return self._new(lambda: v.astype(x.dtype, copy=False), x.shape, x.dtype)


def _act_backward(self, grad, x, act, param):
    xp = self.xp
    zero = xp.zeros((), dtype=grad.dtype)
    with np.errstate(all="ignore"):
        if act == "relu":
            out = xp.where(x <= 0, zero, grad)
        elif act == "leaky_relu":
            out = xp.where(x > 0, grad, grad * grad.dtype.type(param))
        elif act == "relu6":
            out = xp.where((x <= 0) | (x >= 6), zero, grad)
        elif act == "elu":
            out = xp.where(x <= 0, grad * grad.dtype.type(param) * xp.exp(x), grad)
        elif act == "identity":
            out = grad.copy()
        else:
            raise ValueError(f"act_backward: unknown activation {act!r}")
    return self._new(lambda: out.astype(grad.dtype, copy=False), grad.shape, grad.dtype)


def _bias_grad(self, grad, axis):
    outer, channels, inner = _three_d(grad.shape, axis)
    out = grad.reshape(outer, channels, inner).sum(axis=(0, 2))
    return self._new(lambda: out.astype(grad.dtype, copy=False), (channels,), grad.dtype)


def _line_sum(a, axis):
    """Sum along ``axis`` (kept); long float32 lines accumulate in float64, because NumPy
    adds a strided axis one term at a time (error growing with the length), not pairwise."""
    wide = np.float64 if a.dtype == np.float32 and a.shape[axis] > _LONG_LINE else None
    return a.sum(axis=axis, keepdims=True, dtype=wide).astype(a.dtype, copy=False)


#: lines longer than this are summed in float64 (see _line_sum)
_LONG_LINE = 4096


def _softmax(self, x, axis, log):
    xp = self.xp
    if x.size == 0:     # no lines, or lines of length 0 (whose max does not exist)
        return self.copy(x)
    with np.errstate(all="ignore"):
        shifted = x - x.max(axis=axis, keepdims=True)      # NaN-propagating max
        if log:
            shifted -= xp.log(_line_sum(xp.exp(shifted), axis))
        else:
            xp.exp(shifted, out=shifted)
            shifted /= _line_sum(shifted, axis)
    return self._new(lambda: shifted.astype(x.dtype, copy=False), x.shape, x.dtype)


def _softmax_backward(self, grad, y, axis, log):
    xp = self.xp
    with np.errstate(all="ignore"):
        if log:
            out = grad - xp.exp(y) * _line_sum(grad, axis)
        else:
            out = grad * y
            out -= y * _line_sum(out, axis)   # y * (g - sum(g * y))
    return self._new(lambda: out.astype(grad.dtype, copy=False), grad.shape, grad.dtype)


ArrayModuleBackend.bias_act = _bias_act
ArrayModuleBackend.act_backward = _act_backward
ArrayModuleBackend.bias_grad = _bias_grad
ArrayModuleBackend.softmax = _softmax
ArrayModuleBackend.softmax_backward = _softmax_backward
