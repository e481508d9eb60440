"""The pointwise and softmax layers of a CNN, forward and backward, as fused kernels.

    h = gm.bias_relu(x, b)               # relu(x + b[c]) over NCHW, one pass
    p = gm.softmax(logits, axis=-1)
    dx = gm.relu_backward(dh, x)

Semantics are PyTorch's (torch.nn.functional and the gradients its autograd gives):

  * ``bias_add(x, b, axis=1)`` adds ``b[c]`` to every element with index c along ``axis``
    (NCHW or N x F: the channel axis); ``bias_add_backward(grad, axis)`` sums ``grad`` over
    every other axis;
  * ``relu``, ``leaky_relu(negative_slope)``, ``relu6`` and ``elu(alpha)`` give NaN for NaN
    input; their backward functions take the forward *input* ``x`` and give torch's value at
    the kinks: relu 0 at x = 0, leaky_relu ``slope * grad`` at 0, relu6 0 at x = 0 and x = 6,
    elu ``alpha * grad`` at 0; at a NaN input relu, relu6 and elu pass ``grad`` through and
    leaky_relu gives ``slope * grad`` (torch's scalar rules; torch's vectorised CPU loops
    give NaN for elu and 0 for relu6 there, so torch itself differs with the length);
  * ``softmax`` / ``log_softmax`` subtract the line's maximum before exponentiating, so any
    finite input is safe; a line holding NaN or +inf, or only -inf, gives NaN, as in torch.
    Their backward functions take the forward *output* ``y``.

Inputs are single or double Arrays (array-likes are uploaded to the default backend), at
least 1-d; two Array arguments must share backend, shape (bias: length) and dtype.  The
backends implement ``Backend.bias_act`` / ``act_backward`` / ``bias_grad`` / ``softmax`` /
``softmax_backward`` (kernels/common/activations.h on opencl and cuda, NumPy on cpu).
"""
import numbers

import numpy as np

from .array import Array, _check_backend_dtype, _normalize_axis
from .errors import BackendMismatchError, DtypeError, ShapeError

__all__ = ["bias_add", "bias_add_backward", "bias_relu", "relu", "relu_backward",
           "leaky_relu", "leaky_relu_backward", "relu6", "relu6_backward", "elu",
           "elu_backward", "softmax", "softmax_backward", "log_softmax", "log_softmax_backward"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ---- argument handling ----------------------------------------------------------------------

def _as_input(x, func, name, backend=None):
    if not isinstance(x, Array):
        from .creation import array
        x = array(x, backend=backend)
    if x.dtype not in _FLOATS:
        raise DtypeError(f"{func}: {name} must be single (float32) or double (float64), "
                         f"got {x.dtype}")
    _check_backend_dtype(x._backend, x.dtype)
    if x.ndim == 0:
        raise ShapeError(f"{func}: {name} must have at least one dimension, got a 0-d Array")
    return x


def _second(x, other, func, name, first="x"):
    """``other`` checked against ``x``: same backend and dtype (shape is the caller's)."""
    other = _as_input(other, func, name, backend=x.backend)
    if other.backend != x.backend:
        raise BackendMismatchError(f"{func}: {first} lives on {x.backend!r} and {name} on "
                                   f"{other.backend!r}; move one with gm.gpu_array / backend=")
    if other.dtype != x.dtype:
        raise DtypeError(f"{func}: {first} is {x.dtype} but {name} is {other.dtype}; "
                         f"they must match")
    return other


def _same_shape(a, b, func, name_a, name_b):
    if a.shape != b.shape:
        raise ShapeError(f"{func}: {name_a} has shape {a.shape} but {name_b} has shape "
                         f"{b.shape}; they must match")


def _axis(axis, ndim, func):
    try:
        return _normalize_axis(axis, ndim)
    except ShapeError:
        raise ShapeError(f"{func}: axis {axis} is out of range for a {ndim}-d input "
                         f"(valid: {-ndim} .. {ndim - 1})") from None
    except TypeError:
        raise TypeError(f"{func}: axis must be an integer, got {axis!r}") from None


def _param(value, func, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {name} must be a real number, got {value!r}")
    return float(value)


def _bias(x, b, axis, func):
    x = _as_input(x, func, "x")
    axis = _axis(axis, x.ndim, func)
    b = _second(x, b, func, "b")
    channels = x.shape[axis]
    if b.ndim != 1 or b.shape[0] != channels:
        raise ShapeError(f"{func}: b must be 1-d with x.shape[{axis}] = {channels} elements "
                         f"(x has shape {x.shape}), got shape {b.shape}")
    return x, b, axis


def _forward(x, b, axis, act, param, func):
    if b is None:
        x = _as_input(x, func, "x")
        bias = None
    else:
        x, b, axis = _bias(x, b, axis, func)
        bias = b._live
    backend = x._backend
    return Array._wrap(backend, backend.bias_act(x._live, bias, axis, act, param))


def _backward(grad, x, act, param, func):
    grad = _as_input(grad, func, "grad")
    x = _second(grad, x, func, "x", first="grad")
    _same_shape(grad, x, func, "grad", "x")
    backend = grad._backend
    return Array._wrap(backend, backend.act_backward(grad._live, x._live, act, param))


# ---- bias -----------------------------------------------------------------------------------

def bias_add(x, b, axis=1):
    """``x + b`` with ``b`` (x.shape[axis] elements) broadcast along ``axis``."""
    return _forward(x, b, axis, "identity", 0.0, "bias_add")


def bias_add_backward(grad, axis=1):
    """Gradient of bias_add with respect to ``b``: ``grad`` summed over every axis but
    ``axis`` (the gradient with respect to ``x`` is ``grad`` itself)."""
    grad = _as_input(grad, "bias_add_backward", "grad")
    axis = _axis(axis, grad.ndim, "bias_add_backward")
    backend = grad._backend
    return Array._wrap(backend, backend.bias_grad(grad._live, axis))


def bias_relu(x, b, axis=1):
    """``relu(x + b)`` (bias broadcast along ``axis``) in one pass over memory."""
    return _forward(x, b, axis, "relu", 0.0, "bias_relu")


# ---- activations ----------------------------------------------------------------------------

def relu(x):
    """max(x, 0); NaN stays NaN."""
    return _forward(x, None, 0, "relu", 0.0, "relu")


def relu_backward(grad, x):
    """``grad`` where x > 0, else 0 (0 at x = 0, as torch)."""
    return _backward(grad, x, "relu", 0.0, "relu_backward")


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else ``negative_slope * x``."""
    slope = _param(negative_slope, "leaky_relu", "negative_slope")
    return _forward(x, None, 0, "leaky_relu", slope, "leaky_relu")


def leaky_relu_backward(grad, x, negative_slope=0.01):
    """``grad`` where x > 0, else ``negative_slope * grad`` (the latter at x = 0)."""
    slope = _param(negative_slope, "leaky_relu_backward", "negative_slope")
    return _backward(grad, x, "leaky_relu", slope, "leaky_relu_backward")


def relu6(x):
    """min(max(x, 0), 6); NaN stays NaN."""
    return _forward(x, None, 0, "relu6", 0.0, "relu6")


def relu6_backward(grad, x):
    """``grad`` where 0 < x < 6, else 0 (torch's hardtanh_backward)."""
    return _backward(grad, x, "relu6", 0.0, "relu6_backward")


def elu(x, alpha=1.0):
    """x where x > 0, else ``alpha * (exp(x) - 1)``."""
    alpha = _param(alpha, "elu", "alpha")
    return _forward(x, None, 0, "elu", alpha, "elu")


def elu_backward(grad, x, alpha=1.0):
    """``grad`` where x > 0, else ``alpha * exp(x) * grad`` (the latter at x = 0)."""
    alpha = _param(alpha, "elu_backward", "alpha")
    return _backward(grad, x, "elu", alpha, "elu_backward")


# ---- softmax --------------------------------------------------------------------------------

def _softmax(x, axis, log, func):
    x = _as_input(x, func, "x")
    axis = _axis(axis, x.ndim, func)
    backend = x._backend
    return Array._wrap(backend, backend.softmax(x._live, axis, log))


def _softmax_backward(grad, y, axis, log, func):
    grad = _as_input(grad, func, "grad")
    y = _second(grad, y, func, "y", first="grad")
    _same_shape(grad, y, func, "grad", "y")
    axis = _axis(axis, grad.ndim, func)
    backend = grad._backend
    return Array._wrap(backend, backend.softmax_backward(grad._live, y._live, axis, log))


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""
    return _softmax(x, axis, False, "softmax")


def log_softmax(x, axis=-1):
    """(x - max) - log(sum(exp(x - max))) along ``axis``."""
    return _softmax(x, axis, True, "log_softmax")


def softmax_backward(grad, y, axis=-1):
    """Gradient of softmax given its output ``y``: ``y * (grad - sum(grad * y))``."""
    return _softmax_backward(grad, y, axis, False, "softmax_backward")


def log_softmax_backward(grad, y, axis=-1):
    """Gradient of log_softmax given its output ``y``: ``grad - exp(y) * sum(grad)``."""
    return _softmax_backward(grad, y, axis, True, "log_softmax_backward")
