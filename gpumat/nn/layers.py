"""The layers: ``Module`` subclasses with PyTorch's constructor arguments, parameter names,
layouts and default initialisation, each a thin owner of parameters around a functional op."""
import math

import gpumat as gm

from . import functional as F
from . import init
from .module import Module, Parameter

__all__ = ["Identity", "Linear", "Conv2d", "ReLU", "LeakyReLU", "ReLU6", "ELU", "Tanh",
           "Sigmoid", "Softmax", "LogSoftmax", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "Flatten",
           "LocalResponseNorm", "CrossEntropyLoss", "NLLLoss", "MSELoss"]


def _pair(value, name, minimum=None, owner=None):
    """``value`` as (h, w) ints; with ``minimum``, each at least that (kernel sizes, strides
    and dilations 1, paddings 0), refused here rather than deep in a first forward or an
    initializer (a 0 kernel divided by zero in kaiming_uniform_)."""
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(pair) < minimum:
        raise ValueError(f"{owner}: {name} must be at least {minimum}, got {value!r}")
    return pair


def _positive(value, name, owner):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def _new_parameter(*shape):
    return Parameter(gm.zeros(*shape))


class _Weighted(Module):
    """A layer with a ``weight`` and an optional ``bias`` (Linear, Conv2d)."""

    def _optional_bias(self, bias, size):
        """Register the bias (or its absence), then initialise as PyTorch does:
        kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight,
        and the same bound for the bias."""
        if bias:
            self.bias = _new_parameter(size)
        else:
            self.register_parameter("bias", None)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            fan_in, _ = init.fan_in_and_fan_out(self.weight.shape)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)


class Identity(Module):
    def forward(self, x):
        return x


class Linear(_Weighted):
    """y = x W^T + b; ``weight`` is out_features x in_features."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = _positive(in_features, "in_features", "Linear")
        self.out_features = _positive(out_features, "out_features", "Linear")
        self.weight = _new_parameter(out_features, in_features)
        self._optional_bias(bias, out_features)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Conv2d(_Weighted):
    """2-d convolution; ``weight`` is out x in/groups x kh x kw.  groups == in_channels is a
    depthwise convolution (its own kernel)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        self.in_channels = _positive(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive(out_channels, "out_channels", "Conv2d")
        self.groups = _positive(groups, "groups", "Conv2d")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1, "Conv2d")
        self.stride = _pair(stride, "stride", 1, "Conv2d")
        self.padding = _pair(padding, "padding", 0, "Conv2d")
        self.dilation = _pair(dilation, "dilation", 1, "Conv2d")
        self.weight = _new_parameter(out_channels, in_channels // groups, *self.kernel_size)
        self._optional_bias(bias, out_channels)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + ("" if self.bias is not None else ", bias=False")


class _Activation(Module):
    function = None

    def forward(self, x):
        return type(self).function(x)


class ReLU(_Activation):
    function = staticmethod(F.relu)


class ReLU6(_Activation):
    function = staticmethod(F.relu6)


class Tanh(_Activation):
    function = staticmethod(F.tanh)


class Sigmoid(_Activation):
    function = staticmethod(F.sigmoid)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Softmax(Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, "
                f"padding={self.padding}" + (", ceil_mode=True" if self.ceil_mode else ""))


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, "
                f"padding={self.padding}")


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class GlobalAvgPool2d(Module):
    """N x C x H x W -> N x C x 1 x 1 (AdaptiveAvgPool2d((1, 1)))."""

    def forward(self, x):
        return F.global_avg_pool2d(x)


class _BatchNorm(Module):
    expected_ndim = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        self.num_features = _positive(num_features, "num_features", type(self).__name__)
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(gm.ones(num_features))
            self.bias = Parameter(gm.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", gm.zeros(num_features))
            self.register_buffer("running_var", gm.ones(num_features))
            self.register_buffer("num_batches_tracked", gm.zeros(1, dtype="int64").reshape(()))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x):
        if x.ndim not in self.expected_ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): expected an input of "
                             f"{' or '.join(f'{n}-d' for n in self.expected_ndim)} with "
                             f"{self.num_features} channels on axis 1, got shape {x.shape}")
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if momentum is None:        # a cumulative moving average
                momentum = 1.0 / int(self.num_batches_tracked.item())
        # without running statistics, evaluation normalises with the batch's own, as torch
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or self.running_mean is None, momentum, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over N x C (fully connected layers)."""
    expected_ndim = (2,)


class BatchNorm2d(_BatchNorm):
    """Batch norm over N x C x H x W, per channel."""
    expected_ndim = (4,)


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim)


class LocalResponseNorm(Module):
    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class CrossEntropyLoss(Module):
    def __init__(self, label_smoothing=0.0, reduction="mean"):
        super().__init__()
        self.label_smoothing, self.reduction = label_smoothing, reduction

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, self.label_smoothing, self.reduction)


class NLLLoss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, log_probabilities, target):
        return F.nll_loss(log_probabilities, target, self.reduction)


class MSELoss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, prediction, target):
        return F.mse_loss(prediction, target, self.reduction)
