"""Fused optimizer updates for the NumPy/CuPy backends, attached to ``ArrayModuleBackend``
at import (cuda replaces them with the shared kernels of ``cuda_optimizers``).

In-place array expressions with the scalars kept weak (Python floats), so float32 state
stays float32; the order of operations is kernels/common/optimizers.h's."""
from .array_module import ArrayModuleBackend


def _sgd_update(self, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    d = g + weight_decay * p if weight_decay else g
    if momentum:
        if first:
            buf[...] = d
        else:
            buf *= momentum
            buf += (1 - dampening) * d if dampening else d
        d = d + momentum * buf if nesterov else buf
    p -= lr * d


def _adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size,
                 bias2_sqrt):
    xp = self.xp
    if decoupled and weight_decay:
        p *= 1 - lr * weight_decay
    elif weight_decay:
        g = g + weight_decay * p
    m += (1 - beta1) * (g - m)
    v *= beta2
    v += (1 - beta2) * (g * g)
    denominator = xp.sqrt(v)
    denominator /= bias2_sqrt
    denominator += eps
    p -= step_size * m / denominator


ArrayModuleBackend.sgd_update = _sgd_update
ArrayModuleBackend.adam_update = _adam_update
