"""Batch normalisation, forward and backward, as fused per-channel kernels.

    y, mean, inv_std, var = gm.batch_norm_forward(x, weight, bias)          # training
    y = gm.batch_norm_forward(x, weight, bias, running_mean, running_var).y  # evaluation
    dx, dweight, dbias = gm.batch_norm_backward(grad, x, mean, inv_std, weight)

``x`` is N x C or N x C x H x W (any N x C x ..., C-contiguous), channel axis 1.  With M the
number of values per channel (N times the spatial size):

  * training: ``mean`` and the biased ``var`` are the batch's per channel (computed so that a
    large mean with a small spread stays accurate), ``inv_std = 1 / sqrt(var + eps)`` and
    ``y = (x - mean) * inv_std * weight + bias`` (the mean is held in x's dtype, so y is as
    exact as its rounding allows: within about ulp(mean) * inv_std * |weight|);
  * evaluation (``mean`` and ``var`` given, the running statistics): the same map with them;
  * backward, with ``xhat = (x - mean) * inv_std``: ``dbias = sum(grad)`` and
    ``dweight = sum(grad * xhat)`` per channel, and ``dx = weight * inv_std * (grad -
    dbias / M - xhat * dweight / M)`` in training (the batch statistics depend on x), or
    ``grad * weight * inv_std`` in evaluation.  Only x, mean and inv_std are kept from the
    forward pass, never the normalised activations.

These are torch.nn.functional.batch_norm's values and the gradients its autograd gives.  The
running-statistics update (momentum, the unbiased variance) is the caller's: the forward
returns the batch's biased ``var`` for it (gpumat.nn's BatchNorm does exactly torch's
update), and no argument is written.  ``weight`` / ``bias`` None mean 1 / 0
(``affine=False``).  Inputs are single or double Arrays (array-likes are uploaded to the
default backend); every Array argument must share x's backend and dtype.  The backends
implement ``Backend.batch_norm_forward`` / ``batch_norm_backward``: kernels/common/
batchnorm.h on opencl and cuda, kernels/cpu/batchnorm.hpp on cpu (NumPy without it).
"""
import collections
import math
import numbers

import numpy as np

from .activations import _as_input, _second
from .array import Array, _exact_natives
from .errors import ShapeError

__all__ = ["batch_norm_forward", "batch_norm_backward", "BatchNormForward",
           "BatchNormGradients"]

#: gm.batch_norm_forward's result: the output, the statistics it normalised with (the batch's
#: in training; in evaluation the given ones, as Arrays sharing their storage), and
#: 1 / sqrt(var + eps).  ``mean`` and ``inv_std`` are what batch_norm_backward takes.
BatchNormForward = collections.namedtuple("BatchNormForward", "y mean inv_std var")

#: gm.batch_norm_backward's result; an entry not asked for is None.
BatchNormGradients = collections.namedtuple("BatchNormGradients", "x weight bias")


def _input(x, func, name="x"):
    x = _as_input(x, func, name)
    if x.ndim < 2:
        raise ShapeError(f"{func}: {name} must be N x C or N x C x H x W (channels on axis "
                         f"1), got shape {x.shape}")
    return x


def _per_channel(x, v, func, name):
    """``v`` checked as a vector of x's C channels: 1-d, x's backend and dtype."""
    v = _second(x, v, func, name)
    if v.shape != (x.shape[1],):
        raise ShapeError(f"{func}: {name} must be 1-d with one value per channel "
                         f"(x.shape[1] = {x.shape[1]}; x has shape {x.shape}), got shape "
                         f"{v.shape}")
    return v


def _optional(x, v, func, name):
    return None if v is None else _per_channel(x, v, func, name)


def _flag(value, func, name):
    if not isinstance(value, bool):
        raise TypeError(f"{func}: {name} must be True or False, got {value!r}")
    return value


def _values_per_channel(x, training, func):
    """M, the number of values per channel; training needs at least one."""
    count = x.size // x.shape[1] if x.shape[1] else 0
    if training and count == 0 and x.shape[1]:
        raise ShapeError(f"{func}: training needs at least one value per channel to compute "
                         f"batch statistics, got an empty batch of shape {x.shape}")
    return count


def _native(v):
    return None if v is None else v._live


_FLOAT32 = np.dtype(np.float32)


def _forward_fast(x, weight, bias, mean, var, eps, training):
    """batch_norm_forward for the arguments a layer passes on every call -- float32 Arrays on
    one backend, C-element vectors, a float eps, ``training`` None or the bool the statistics
    imply, no empty axis -- checked with as few Python operations as that takes (a batch norm
    at batch 1 spent ~20 us in the full checks, against ~4 us in its kernel).  Returns None for
    anything else, which the full checks then take (and name what is wrong): both hand the
    backend the same arguments and wrap its results alike."""
    if type(x) is not Array:
        return None
    xn = x._native
    if xn is None or xn.dtype != _FLOAT32 or len(xn.shape) < 2 or 0 in xn.shape:
        return None
    if type(eps) is not float or not 0.0 <= eps < math.inf:
        return None
    given = mean is not None
    if (var is not None) != given:
        return None
    if training is None:
        training = not given
    elif type(training) is not bool or training == given:
        return None
    backend = x._storage.backend
    natives = _exact_natives((weight, bias, mean, var), backend, _FLOAT32, (xn.shape[1],))
    if natives is None:
        return None
    return _forward_results(backend, backend.batch_norm_forward(xn, *natives, eps), training,
                            mean, var)


def _forward_results(backend, natives, training, mean, var):
    y, batch_mean, batch_var, inv_std = natives
    wrap = lambda native: Array._wrap(backend, native)
    if training:
        mean, var = wrap(batch_mean), wrap(batch_var)
    else:       # new Arrays on the caller's storage: a later in-place update of the running
        mean, var = mean._share(mean._live), var._share(var._live)   # statistics copies
    return BatchNormForward(wrap(y), mean, wrap(inv_std), var)


def batch_norm_forward(x, weight=None, bias=None, mean=None, var=None, eps=1e-5,
                       training=None):
    """``(x - mean) * inv_std * weight + bias`` per channel (axis 1) of ``x``, as a
    BatchNormForward(y, mean, inv_std, var).

    Training (the default when ``mean`` and ``var`` are None) normalises with the batch's
    mean and biased variance, which it returns; evaluation (``mean`` and ``var`` given,
    ``training`` False or None) with the given statistics.  ``eps`` (>= 0) is added to the
    variance.  One pass over x for the statistics and one for the output."""
    fast = _forward_fast(x, weight, bias, mean, var, eps, training)
    if fast is not None:
        return fast
    func = "batch_norm_forward"
    x = _input(x, func)
    given = (mean is not None, var is not None)
    if training is None:
        training = not any(given)
    _flag(training, func, "training")
    if training and any(given):
        raise ValueError(f"{func}: training normalises with the batch's own statistics; "
                         f"pass mean and var only with training=False")
    if not training and not all(given):
        missing = " and ".join(n for n, g in zip(("mean", "var"), given) if not g)
        raise ValueError(f"{func}: evaluation (training=False) needs the running mean and "
                         f"var; {missing} missing")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{func}: eps must be a real number, got {eps!r}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{func}: eps must be finite and >= 0, got {eps!r}")
    weight = _optional(x, weight, func, "weight")
    bias = _optional(x, bias, func, "bias")
    if not training:
        mean = _per_channel(x, mean, func, "mean")
        var = _per_channel(x, var, func, "var")
    _values_per_channel(x, training, func)
    backend = x._backend
    return _forward_results(backend, backend.batch_norm_forward(
        x._live, _native(weight), _native(bias), _native(mean), _native(var), float(eps)),
        training, mean, var)


def batch_norm_backward(grad, x, mean, inv_std, weight=None, training=True, input_grad=True,
                        param_grads=True):
    """Gradients of batch_norm_forward as a BatchNormGradients(x, weight, bias), given the
    output gradient ``grad``, the forward's input ``x`` and the ``mean`` and ``inv_std`` it
    returned.  ``training`` must be the forward's mode.  ``input_grad`` / ``param_grads``
    False skip dx / (dweight, dbias), which are then None; dweight and dbias are also
    computed without a weight or bias (the gradients at weight 1 and bias 0).  One pass
    reducing sum(grad) and sum(grad * xhat) per channel (skipped in evaluation without
    parameter gradients) and one for dx."""
    func = "batch_norm_backward"
    grad = _input(grad, func, "grad")
    x = _second(grad, x, func, "x", first="grad")
    if x.shape != grad.shape:
        raise ShapeError(f"{func}: grad has shape {grad.shape} but x has shape {x.shape}; "
                         f"they must match")
    mean = _per_channel(x, mean, func, "mean")
    inv_std = _per_channel(x, inv_std, func, "inv_std")
    weight = _optional(x, weight, func, "weight")
    for name, value in (("training", training), ("input_grad", input_grad),
                        ("param_grads", param_grads)):
        _flag(value, func, name)
    _values_per_channel(x, training, func)
    backend = x._backend
    results = backend.batch_norm_backward(grad._live, x._live, mean._live, inv_std._live,
                                          _native(weight), training, input_grad, param_grads)
    return BatchNormGradients(*(None if r is None else Array._wrap(backend, r)
                                for r in results))
