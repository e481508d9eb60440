"""Differentiable batch normalisation, local response normalisation and dropout.

Batch norm runs on the fused kernels of ``gm.batch_norm_forward`` / ``gm.batch_norm_backward``
(one pass for the statistics and one for the output, one for the gradient sums and one for
dx); it keeps x and the per-channel mean and inv_std for backward, not the normalised input.
"""
import gpumat as gm

from ...errors import ShapeError
from ..autograd import Function

__all__ = ["batch_norm", "local_response_norm", "dropout"]


class BatchNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over N x C or N x C x H x W.  In
    training the statistics are the batch's (biased variance) and the running buffers move
    toward them (unbiased variance), as torch.nn.BatchNorm does; in evaluation the running
    statistics are used."""

    def __init__(self, training, momentum, eps, running_mean, running_var):
        self.training, self.momentum, self.eps = training, momentum, eps
        self.running_mean, self.running_var = running_mean, running_var

    def forward(self, x, weight=None, bias=None):
        if x.ndim not in (2, 4):
            raise ShapeError(f"batch_norm: the input must be N x C or N x C x H x W, got "
                             f"shape {x.shape}")
        channels = x.shape[1]
        count = x.size // max(channels, 1)
        if self.training:
            if count < 2:
                raise ShapeError(f"batch_norm: training needs more than one value per channel "
                                 f"to estimate a variance, got input shape {x.shape}")
            out = gm.batch_norm_forward(x, weight, bias, eps=self.eps, training=True)
            self._update_running(out.mean, out.var, count)
        else:
            if self.running_mean is None:
                raise ValueError("batch_norm: evaluation needs running statistics "
                                 "(track_running_stats=True)")
            out = gm.batch_norm_forward(x, weight, bias, self.running_mean, self.running_var,
                                        eps=self.eps, training=False)
        if self.recording:
            self.x, self.weight, self.mean, self.inv_std = x, weight, out.mean, out.inv_std
        return out.y

    def _update_running(self, mean, var, count):
        if self.running_mean is None:
            return
        m = self.momentum
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += (m * count / (count - 1)) * var

    def backward(self, grad):
        gx, gw, gb = (self.needs_grad + (False, False))[:3]
        grad_x, grad_weight, grad_bias = gm.batch_norm_backward(
            grad, self.x, self.mean, self.inv_std, self.weight, training=self.training,
            input_grad=gx, param_grads=gw or gb)
        return grad_x, grad_weight if gw else None, grad_bias if gb else None


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm.  ``running_mean`` / ``running_var`` are Arrays
    updated in place when ``training`` (None: use batch statistics and keep none)."""
    return BatchNorm.apply(x, weight, bias, training=training or running_mean is None,
                           momentum=momentum, eps=eps, running_mean=running_mean,
                           running_var=running_var)


class LocalResponseNorm(Function):
    """torch.nn.functional.local_response_norm: y = x / (k + alpha * mean of x^2 over a
    window of ``size`` channels)^beta, the window padded with zeros by size // 2 channels
    before and (size - 1) // 2 after.  The channel-window mean is an average pooling of
    x^2 seen as an (N, 1, C, H*W) image, so forward and backward run on the pooling
    kernels."""

    def __init__(self, size, alpha, beta, k):
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def _pool_args(self):
        return dict(kernel_size=(self.size, 1), stride=1, padding=(self.size // 2, 0))

    def forward(self, x):
        if x.ndim < 3:
            raise ShapeError(f"local_response_norm: the input must be N x C x ..., got {x.shape}")
        n, c = x.shape[:2]
        planes = x.reshape(n, 1, c, x.size // max(n * c, 1))
        window = gm.avg_pool2d(planes * planes, **self._pool_args())
        if window.shape[2] != c:                  # an even size pads one channel less after
            window = window[:, :, :c]
        denominator = window.reshape(x.shape) * self.alpha + self.k
        y = x * denominator ** -self.beta
        if self.recording:
            self.x, self.denominator, self.y, self.planes_shape = x, denominator, y, planes.shape
        return y

    def backward(self, grad):
        x, n = self.x, self.x.shape[0]
        # through the window: d y_c / d x_j = -2 alpha beta x_j / size * sum over the windows
        # c that contain j of grad_c y_c / denominator_c (avg_pool's adjoint)
        through = (grad * self.y / self.denominator).reshape(self.planes_shape)
        if self.size % 2 == 0:                    # the forward dropped its last window
            through = gm.cat(2, through, gm.zeros(n, 1, 1, self.planes_shape[3],
                                                  dtype=x.dtype, backend=x.backend))
        spread = gm.avg_pool2d_backward(through, self.planes_shape, **self._pool_args())
        return grad * self.denominator ** -self.beta \
            - (2 * self.alpha * self.beta) * x * spread.reshape(x.shape)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """AlexNet's cross-channel normalisation (torch.nn.functional.local_response_norm)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    return LocalResponseNorm.apply(x, size=size, alpha=alpha, beta=beta, k=k)


class Dropout(Function):
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        keep = gm.rand(*x.shape, dtype=x.dtype, backend=x.backend) >= self.p
        self.mask = keep.astype(x.dtype) * (1.0 / (1.0 - self.p))
        return x * self.mask

    def backward(self, grad):
        return grad * self.mask


def dropout(x, p=0.5, training=True):
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) while
    training (inverted dropout); the identity otherwise.  Draws from gpumat's generator, so
    ``gm.seed`` makes the masks reproducible on every backend."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    if p == 1:                  # every element dropped: zeros (and zero gradients), as torch
        return x * 0.0
    return Dropout.apply(x, p=p)
