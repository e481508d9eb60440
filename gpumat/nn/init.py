"""Weight initialisers: Xavier/Glorot, He/Kaiming, truncated normal, and constants.

Each ``*_`` function fills a Parameter (or Variable, or Array inside a Parameter) in place
and returns it, as torch.nn.init does.  Numbers are drawn from gpumat's counter-based
generator on the cpu and uploaded, so after ``gm.seed(n)`` a model starts from the same
weights on every backend.
"""
import math

import numpy as np

import gpumat as gm

from .autograd import Variable

__all__ = ["calculate_gain", "fan_in_and_fan_out", "uniform_", "normal_", "constant_", "zeros_",
           "ones_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
           "trunc_normal_"]

_GAINS = {"linear": 1.0, "conv2d": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
          "selu": 3.0 / 4}


def calculate_gain(nonlinearity, param=None):
    """The recommended scale for weights feeding ``nonlinearity`` (torch's table)."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope * slope))
    if nonlinearity not in _GAINS:
        raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}; known: "
                         + ", ".join(sorted(list(_GAINS) + ["leaky_relu"])))
    return _GAINS[nonlinearity]


def fan_in_and_fan_out(shape):
    """(fan_in, fan_out) of a weight: in x receptive field, out x receptive field."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with at least 2 dimensions, got "
                         f"shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:], dtype=np.int64))
    return shape[1] * receptive, shape[0] * receptive


def _data(target):
    if not isinstance(target, Variable):
        raise TypeError(f"initialisers fill a Parameter or Variable, got {type(target).__name__}")
    return target.data


def _fill(target, host):
    """Write the NumPy values ``host`` into ``target`` (Parameter/Variable) on its backend."""
    data = _data(target)
    target.data = gm.array(host.astype(data.dtype, copy=False), backend=data.backend)
    return target


def _uniform_host(shape, low, high, dtype):
    """Draws in the parameter's precision (float32 for most models: four times faster to
    generate than float64, and what the weights keep anyway)."""
    u = gm.rand(*shape, dtype=dtype, backend="cpu").gather()
    return low + (high - low) * u


def _normal_host(shape, mean, std, dtype):
    return mean + std * gm.randn(*shape, dtype=dtype, backend="cpu").gather()


def uniform_(target, a=0.0, b=1.0):
    return _fill(target, _uniform_host(target.shape, a, b, _data(target).dtype))


def normal_(target, mean=0.0, std=1.0):
    return _fill(target, _normal_host(target.shape, mean, std, _data(target).dtype))


def constant_(target, value):
    return _fill(target, np.full(target.shape, value, np.float64))


def zeros_(target):
    return constant_(target, 0.0)


def ones_(target):
    return constant_(target, 1.0)


def xavier_uniform_(target, gain=1.0):
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = fan_in_and_fan_out(target.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(target, -bound, bound)


def xavier_normal_(target, gain=1.0):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(target.shape)
    return normal_(target, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(shape, a, mode, nonlinearity):
    fan_in, fan_out = fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(target, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """U(-b, b) with b = gain * sqrt(3 / fan) (He et al., 2015).  ``a=sqrt(5)`` is PyTorch's
    default for Linear and Conv2d weights (b = 1 / sqrt(fan_in))."""
    bound = math.sqrt(3.0) * _kaiming_std(target.shape, a, mode, nonlinearity)
    return uniform_(target, -bound, bound)


def kaiming_normal_(target, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """N(0, std^2) with std = gain / sqrt(fan) (He et al., 2015)."""
    return normal_(target, 0.0, _kaiming_std(target.shape, a, mode, nonlinearity))


def trunc_normal_(target, mean=0.0, std=0.1, a=None, b=None):
    """N(mean, std^2) restricted to [a, b] (default mean -/+ 2 std) by redrawing the values
    outside, as TensorFlow's truncated_normal (std 0.1 in the LeNet tutorial)."""
    low = mean - 2 * std if a is None else a
    high = mean + 2 * std if b is None else b
    if not low < high:
        raise ValueError(f"trunc_normal_: the interval [{low}, {high}] is empty")
    dtype = _data(target).dtype
    values = _normal_host(target.shape, mean, std, dtype)
    outside = (values < low) | (values > high)
    for _ in range(100):
        count = int(outside.sum())
        if not count:
            break
        values[outside] = _normal_host((count,), mean, std, dtype)
        outside = (values < low) | (values > high)
    # an interval far in the tail can defeat redrawing: clip the stragglers
    return _fill(target, np.clip(values, low, high))
