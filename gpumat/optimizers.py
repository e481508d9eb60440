"""Fused, in-place optimizer updates: one kernel pass per parameter instead of five or six
elementwise operations, each with its own temporary.

    gm.sgd_update(w, dw, buf, lr=0.1, momentum=0.9)      # w and buf change in place
    gm.adam_update(w, dw, m, v, step=t, lr=1e-3)

These are the kernels behind ``gpumat.nn.optim``; the rules are torch.optim's (see
kernels/common/optimizers.h).  They are the only gm functions that modify their arguments:
an updated Array that shared storage with others (a reshape, a state_dict snapshot) gets its
own copy first, so the others keep their values.
"""
import math
import numbers

import numpy as np

from .array import Array
from .errors import BackendMismatchError, DtypeError, ShapeError

__all__ = ["sgd_update", "adam_update"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _check(what, param, **arrays):
    if not isinstance(param, Array):
        raise TypeError(f"{what}: param must be a gm.Array, got {type(param).__name__}")
    if param.dtype not in _FLOATS:
        raise DtypeError(f"{what}: param must be single or double, got {param.dtype}")
    for name, a in arrays.items():
        if not isinstance(a, Array):
            raise TypeError(f"{what}: {name} must be a gm.Array, got {type(a).__name__}")
        if a.backend != param.backend:
            raise BackendMismatchError(f"{what}: param lives on {param.backend!r} but {name} "
                                       f"on {a.backend!r}")
        if a.dtype != param.dtype:
            raise DtypeError(f"{what}: param is {param.dtype} but {name} is {a.dtype}")
        if a.shape != param.shape:
            raise ShapeError(f"{what}: param has shape {param.shape} but {name} has shape "
                             f"{a.shape}")


def _real(what, **values):
    for name, v in values.items():
        if type(v) is float or type(v) is int:      # the common case, without the ABC check
            if math.isfinite(v):
                continue
        elif not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v):
            continue
        raise TypeError(f"{what}: {name} must be a finite real number, got {v!r}")


def sgd_update(param, grad, buffer=None, lr=0.01, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, first=False):
    """One SGD step in place: d = grad + weight_decay * param; with momentum, buffer =
    d (when ``first``) or momentum * buffer + (1 - dampening) * d, and d = buffer (or
    d + momentum * buffer with ``nesterov``); then param -= lr * d.  ``buffer`` is needed
    only with momentum."""
    what = "sgd_update"
    _real(what, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    if momentum and buffer is None:
        raise ValueError(f"{what}: momentum {momentum} needs a buffer Array")
    arrays = {"grad": grad} if buffer is None else {"grad": grad, "buffer": buffer}
    _check(what, param, **arrays)
    param._make_private()
    if buffer is not None:
        buffer._make_private()
    backend = param._backend
    backend.sgd_update(param._live, grad._live, (buffer if buffer is not None else param)._live,
                       float(lr), float(momentum), float(dampening), float(weight_decay),
                       bool(nesterov), bool(first))
    return param


def adam_update(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, decoupled=False):
    """One Adam step in place (AdamW with ``decoupled``) for step number ``step`` >= 1:
    exp_avg and exp_avg_sq are the running first and second moments (start them at 0)."""
    what = "adam_update"
    _real(what, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
        raise ValueError(f"{what}: step must be an int >= 1, got {step!r}")
    _check(what, param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    for a in (param, exp_avg, exp_avg_sq):
        a._make_private()
    step_size = lr / (1 - beta1 ** step)
    bias2_sqrt = math.sqrt(1 - beta2 ** step)
    param._backend.adam_update(param._live, grad._live, exp_avg._live, exp_avg_sq._live,
                               float(lr), float(beta1), float(beta2), float(eps),
                               float(weight_decay), bool(decoupled), step_size, bias2_sqrt)
    return param
