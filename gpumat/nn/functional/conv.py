"""Differentiable convolution and pooling on gpumat's kernels (im2col + SGEMM, depthwise,
pooling), with PyTorch's semantics and argument names."""
import gpumat as gm

from ...errors import ShapeError
from ..autograd import Function

__all__ = ["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "global_avg_pool2d"]


class Conv2d(Function):
    def __init__(self, stride, padding, dilation, groups):
        self.geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def forward(self, x, w, b=None):
        if b is not None and b.shape != (w.shape[0],):
            raise ShapeError(f"conv2d: the bias must have shape ({w.shape[0]},) for "
                             f"{w.shape[0]} output channels, got {b.shape}")
        # (gm.conv2d adds the bias: the cpu backend's direct kernel as it stores its results)
        y = gm.conv2d(x, w, b, **self.geometry)
        if self.recording:
            self.x, self.w = x, w
        return y

    def backward(self, grad):
        gx, gw, gb = (self.needs_grad + (False,))[:3]
        x, w = self.x, self.w
        return (gm.conv2d_backward_input(grad, w, x.shape, **self.geometry) if gx else None,
                gm.conv2d_backward_weight(grad, x, w.shape, **self.geometry) if gw else None,
                gm.bias_add_backward(grad, axis=1) if gb else None)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d: x is N x C x H x W, weight O x C/groups x kh x kw."""
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)


class MaxPool2d(Function):
    def __init__(self, kernel_size, stride, padding, ceil_mode):
        self.geometry = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                             ceil_mode=ceil_mode)

    def forward(self, x):
        if not self.recording:
            return gm.max_pool2d(x, **self.geometry)
        y, self.indices = gm.max_pool2d(x, return_indices=True, **self.geometry)
        self.shape = x.shape
        return y

    def backward(self, grad):
        return gm.max_pool2d_backward(grad, self.indices, self.shape, **self.geometry)


class AvgPool2d(Function):
    def __init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad):
        self.geometry = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                             ceil_mode=ceil_mode, count_include_pad=count_include_pad)

    def forward(self, x):
        self.shape = x.shape
        return gm.avg_pool2d(x, **self.geometry)

    def backward(self, grad):
        return gm.avg_pool2d_backward(grad, self.shape, **self.geometry)


class GlobalAvgPool2d(Function):
    def forward(self, x):
        self.shape = x.shape
        return gm.global_avg_pool2d(x)

    def backward(self, grad):
        return gm.global_avg_pool2d_backward(grad, self.shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """torch.nn.functional.max_pool2d (stride defaults to the kernel size)."""
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                           ceil_mode=ceil_mode)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """torch.nn.functional.avg_pool2d (stride defaults to the kernel size)."""
    return AvgPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                           ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def global_avg_pool2d(x):
    """The mean of every H x W plane: N x C x H x W -> N x C x 1 x 1."""
    return GlobalAvgPool2d.apply(x)


def _adaptive_weights(size, out, dtype, backend):
    """The (out x size) averaging matrix of torch's adaptive pooling along one axis: row i
    averages input positions floor(i*size/out) .. ceil((i+1)*size/out) - 1."""
    import numpy as np
    m = np.zeros((out, size), dtype)
    for i in range(out):
        start, stop = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:stop] = 1.0 / (stop - start)
    return gm.array(m, backend=backend)


class AdaptiveAvgPool2d(Function):
    """General adaptive average pooling as two small products with averaging matrices
    (windows of varying size and overlap, which a fixed-stride pooling kernel cannot do)."""

    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        n, c, h, w = x.shape
        oh, ow = self.output_size
        self.shape = x.shape
        self.rows = _adaptive_weights(h, oh, x.dtype, x.backend)       # oh x h
        self.cols = _adaptive_weights(w, ow, x.dtype, x.backend)       # ow x w
        t = gm.gemm(x.reshape(n * c * h, w), self.cols, trans_b=True)  # (n c h) x ow
        t = t.reshape(n * c, h, ow)
        y = gm.gemm(self.rows.reshape(1, oh, h), t)                    # (n c) x oh x ow
        return y.reshape(n, c, oh, ow)

    def backward(self, grad):
        n, c, h, w = self.shape
        oh, ow = self.output_size
        t = gm.gemm(self.rows.reshape(1, oh, h), grad.reshape(n * c, oh, ow), trans_a=True)
        g = gm.gemm(t.reshape(n * c * h, ow), self.cols)               # (n c h) x w
        return g.reshape(n, c, h, w)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def adaptive_avg_pool2d(x, output_size):
    """torch.nn.functional.adaptive_avg_pool2d.  (1, 1) is global pooling; sizes that divide
    the input run on the pooling kernel; any other size runs two small products."""
    oh, ow = _pair(output_size)
    shape = x.shape
    if len(shape) != 4:
        raise ShapeError(f"adaptive_avg_pool2d: the input must be N x C x H x W, got {shape}")
    h, w = shape[2:]
    if min(oh, ow) < 1:
        raise ShapeError(f"adaptive_avg_pool2d: output_size must be positive, got {output_size}")
    if (oh, ow) == (1, 1):
        return global_avg_pool2d(x)
    if (oh, ow) == (h, w):
        from .math import reshape
        return reshape(x, shape)
    if h % oh == 0 and w % ow == 0:
        kernel = (h // oh, w // ow)
        return avg_pool2d(x, kernel, kernel)
    return AdaptiveAvgPool2d.apply(x, output_size=(oh, ow))
