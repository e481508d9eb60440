"""Differentiable activations and softmax, on gpumat's fused activation kernels."""
import gpumat as gm

from ..autograd import Function

__all__ = ["relu", "leaky_relu", "relu6", "elu", "tanh", "sigmoid", "softmax", "log_softmax"]


class _PiecewiseLinear(Function):
    """An activation whose backward kernel takes the forward input (gm.*_backward(grad, x))."""

    forward_fn = backward_fn = None

    def __init__(self, **param):
        self.param = param

    def forward(self, x):
        if self.recording:
            self.x = x
        return type(self).forward_fn(x, **self.param)

    def backward(self, grad):
        return type(self).backward_fn(grad, self.x, **self.param)


class ReLU(_PiecewiseLinear):
    forward_fn, backward_fn = staticmethod(gm.relu), staticmethod(gm.relu_backward)


class LeakyReLU(_PiecewiseLinear):
    forward_fn, backward_fn = staticmethod(gm.leaky_relu), staticmethod(gm.leaky_relu_backward)


class ReLU6(_PiecewiseLinear):
    forward_fn, backward_fn = staticmethod(gm.relu6), staticmethod(gm.relu6_backward)


class ELU(_PiecewiseLinear):
    forward_fn, backward_fn = staticmethod(gm.elu), staticmethod(gm.elu_backward)


class Tanh(Function):
    def forward(self, x):
        self.y = gm.tanh(x)
        return self.y

    def backward(self, grad):
        y = self.y
        return grad * (1 - y * y)


class Sigmoid(Function):
    def forward(self, x):
        self.y = gm.sigmoid(x)
        return self.y

    def backward(self, grad):
        y = self.y
        return grad * (y * (1 - y))


class Softmax(Function):
    def __init__(self, axis, log):
        self.axis, self.log = axis, log

    def forward(self, x):
        self.y = (gm.log_softmax if self.log else gm.softmax)(x, axis=self.axis)
        return self.y

    def backward(self, grad):
        backward = gm.log_softmax_backward if self.log else gm.softmax_backward
        return backward(grad, self.y, axis=self.axis)


def relu(x):
    return ReLU.apply(x)


def leaky_relu(x, negative_slope=0.01):
    return LeakyReLU.apply(x, negative_slope=negative_slope)


def relu6(x):
    return ReLU6.apply(x)


def elu(x, alpha=1.0):
    return ELU.apply(x, alpha=alpha)


def tanh(x):
    return Tanh.apply(x)


def sigmoid(x):
    return Sigmoid.apply(x)


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis, log=False)


def log_softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis, log=True)
