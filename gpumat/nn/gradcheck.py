"""Numerical gradient checking: compare the gradients ``backward`` computes with central
finite differences, for any function of Variables (a layer, a functional op, a model).

    ok = nn.gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])

Work in double precision: a float32 difference quotient is too noisy to check anything.
The function's output is reduced to a scalar with a fixed random weighting, so every output
element's gradient path is exercised by one backward pass.  Inputs with up to
``max_elements`` entries are checked element by element; larger ones along ``directions``
random directions (a directional derivative each), which keeps big layers affordable.
"""
import numpy as np

import gpumat as gm

from .autograd import Variable

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """The analytical and numerical gradients disagree; the message says where."""


def _scalar(output, weights):
    return float((output.data * weights).sum().item())


def gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, max_elements=64,
              directions=6, seed=0):
    """Check ``function(*inputs)``'s gradients with respect to every input Variable that has
    ``requires_grad``; returns True or raises GradcheckError naming the input, the element
    (or direction), and both values."""
    inputs = list(inputs)
    rng = np.random.default_rng(seed)
    output = function(*inputs)
    if not isinstance(output, Variable):
        raise TypeError(f"gradcheck: the function must return a Variable, got "
                        f"{type(output).__name__}")
    host_weights = rng.standard_normal(output.shape)
    weights = gm.array(host_weights.astype(output.dtype), backend=output.backend)
    for v in inputs:
        if isinstance(v, Variable):
            v.grad = None
    output.backward(weights)

    def loss():
        return _scalar(function(*inputs), weights)

    for position, v in enumerate(inputs):
        if not (isinstance(v, Variable) and v.requires_grad):
            continue
        if v.grad is None:
            raise GradcheckError(f"gradcheck: input {position} (shape {v.shape}) received no "
                                 f"gradient")
        analytical = v.grad.gather().astype(np.float64)
        base = v.data
        host = base.gather()

        def probe(delta):
            v.data = gm.array((host + delta).astype(host.dtype), backend=base.backend)
            try:
                return loss()
            finally:
                v.data = base

        if host.size <= max_elements:
            for index in np.ndindex(host.shape):
                delta = np.zeros(host.shape)
                delta[index] = eps
                numerical = (probe(delta) - probe(-delta)) / (2 * eps)
                _compare(numerical, analytical[index], atol, rtol,
                         f"input {position} (shape {v.shape}) element {index}")
        else:
            for k in range(directions):
                direction = rng.standard_normal(host.shape)
                direction /= np.linalg.norm(direction)
                numerical = (probe(eps * direction) - probe(-eps * direction)) / (2 * eps)
                _compare(numerical, float((analytical * direction).sum()), atol, rtol,
                         f"input {position} (shape {v.shape}) random direction {k}")
    return True


def _compare(numerical, analytical, atol, rtol, where):
    if not abs(numerical - analytical) <= atol + rtol * abs(numerical):
        raise GradcheckError(f"gradcheck: {where}: backward gives {analytical:.9g}, finite "
                             f"differences give {numerical:.9g}")
