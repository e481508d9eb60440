"""The autograd engine: graph recording, accumulation, no_grad, freeing, errors."""
import gc

import numpy as np
import pytest

import gpumat as gm
import gpumat.nn.functional as F
from gpumat import nn


def var(values, backend, requires_grad=True):
    return nn.Variable(gm.array(np.asarray(values, np.float64), backend=backend),
                       requires_grad=requires_grad)


def test_shared_subexpression_accumulates(backend):
    x = var([1.0, 2.0, 3.0], backend)
    y = x * x                      # used twice below: both paths add up
    z = F.sum(y * 3 + y)
    z.backward()
    np.testing.assert_allclose(x.grad.gather(), 8 * np.array([1.0, 2.0, 3.0]))


def test_leaf_gradients_accumulate_across_backward_calls(backend):
    x = var([1.0, -2.0], backend)
    F.sum(x * 5).backward()
    F.sum(x * x).backward()
    np.testing.assert_allclose(x.grad.gather(), [5 + 2.0, 5 - 4.0])


def test_only_inputs_that_require_grad_get_one(backend):
    x = var([1.0, 2.0], backend)
    c = var([3.0, 4.0], backend, requires_grad=False)
    F.sum(x * c).backward()
    np.testing.assert_allclose(x.grad.gather(), [3.0, 4.0])
    assert c.grad is None


def test_backward_is_skipped_for_inputs_that_need_no_gradient(backend):
    calls = []

    class Probe(nn.Function):
        def forward(self, a, b):
            return a * b

        def backward(self, grad):
            calls.append(self.needs_grad)
            return grad, None

    x, c = var([1.0], backend), var([2.0], backend, requires_grad=False)
    Probe.apply(x, c).backward(gm.ones(1, dtype="double", backend=backend))
    assert calls == [(True, False)]


def test_no_grad_records_nothing(backend):
    x = var([1.0, 2.0], backend)
    with nn.no_grad():
        y = x * 2
        with nn.enable_grad():
            z = x * 3
    assert not y.requires_grad and y.creator is None
    assert z.requires_grad and z.creator is not None
    assert nn.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        F.sum(y).backward()


def test_detach_cuts_the_graph(backend):
    x = var([2.0], backend)
    y = x * x
    F.sum(y.detach() * x).backward()
    np.testing.assert_allclose(x.grad.gather(), [4.0])


def test_graph_is_freed_after_backward(backend):
    x = var(np.ones(4), backend)
    loss = F.sum(F.tanh(x * 2))
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()
    x.grad = None
    loss = F.sum(F.tanh(x * 2))
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.gather(), 2 * 2 * (1 - np.tanh(2.0) ** 2) * np.ones(4))


def test_backward_needs_a_scalar_or_a_gradient(backend):
    x = var(np.ones(3), backend)
    y = x * 2
    with pytest.raises(RuntimeError, match="single-element"):
        y.backward()
    with pytest.raises(ValueError, match="gradient has shape"):
        y.backward(gm.ones(4, dtype="double", backend=backend))


def test_wrong_gradient_shape_from_a_function_is_caught(backend):
    class Bad(nn.Function):
        def forward(self, a):
            return a * 1

        def backward(self, grad):
            return grad.reshape(-1)[:1]

    x = var(np.ones(3), backend)
    with pytest.raises(RuntimeError, match="Bad.backward returned a gradient of shape"):
        F.sum(Bad.apply(x)).backward()


def test_deep_graph_needs_no_recursion(backend):
    x = var([0.5], backend)
    y = x
    for _ in range(3000):          # deeper than Python's recursion limit
        y = y * 1.0001
    F.sum(y).backward()
    np.testing.assert_allclose(x.grad.gather(), [1.0001 ** 3000], rtol=1e-9)


def test_intermediate_arrays_are_released(backend):
    before = gm.memory_info(backend)["bytes_in_use"]
    x = var(np.ones((64, 64)), backend)
    w = var(np.ones((64, 64)) * 0.01, backend)
    for _ in range(3):
        loss = F.sum(F.relu(x @ w) * 2)
        loss.backward()
        x.grad = w.grad = None
        del loss
    gc.collect()
    held = gm.memory_info(backend)["bytes_in_use"] - before
    assert held == 2 * 64 * 64 * 8          # only x and w


def test_variable_basics(backend):
    x = var([[1.0, 2.0], [3.0, 4.0]], backend)
    assert x.shape == (2, 2) and x.ndim == 2 and x.size == 4 and x.backend == backend
    assert x.is_leaf and len(x) == 2
    np.testing.assert_array_equal(np.asarray(x), [[1, 2], [3, 4]])
    assert "requires_grad=True" in repr(x)
    y = x @ x
    assert not y.is_leaf and "MatMul" in repr(y)
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)
    assert float(F.sum(x)) == 10.0


def test_each_leaf_gets_a_gradient_of_its_own(backend):
    """An addition hands one gradient Array to both operands, and backward(g) hands g itself
    to a leaf: each leaf's .grad is still its own (sharing the buffer copy-on-write), so an
    in-place edit of one (clipping, scaling) changes no other, nor the caller's g."""
    w1, w2 = var([1.0, 2.0, 3.0], backend), var([4.0, 5.0, 6.0], backend)
    F.sum(w1 + w2).backward()
    w1.grad *= 0.5
    w2.grad[0] = 7.0
    np.testing.assert_array_equal(w1.grad.gather(), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(w2.grad.gather(), [7.0, 1.0, 1.0])
    a, b = var([1.0, 2.0], backend), var([3.0, 4.0], backend)
    g = gm.array(np.array([1.0, 2.0], np.float32), backend=backend)
    (a + b).backward(g)
    g *= 7
    np.testing.assert_array_equal(a.grad.gather(), [1.0, 2.0])
    np.testing.assert_array_equal(b.grad.gather(), [1.0, 2.0])
    leaf = var([1.0, 1.0], backend)
    leaf.backward(g)
    g[0] = 0.0
    np.testing.assert_array_equal(leaf.grad.gather(), [7.0, 14.0])


def test_writing_what_backward_needs_in_place_is_an_error(backend):
    """An Array a Function saw in its forward (an input Variable's data, its output) written
    in place before backward would give a wrong gradient silently: backward raises instead,
    and the next graph trains normally."""
    x, w = var([1.0, 2.0], backend), var([2.0, 3.0], backend)
    y = F.sum(x * w)
    x.data *= 10
    with pytest.raises(RuntimeError, match="modified in place after the forward pass"):
        y.backward()
    layer = nn.Linear(3, 2).to(backend)
    opt = nn.optim.SGD(layer.parameters(), lr=0.1)
    inputs = nn.Variable(gm.ones(4, 3, backend=backend), requires_grad=True)
    loss = F.sum(layer(inputs))
    F.sum(layer(inputs)).backward()
    opt.step()                                   # the weight, written in place
    with pytest.raises(RuntimeError, match="Linear: the data of one of its inputs"):
        loss.backward()
    out = F.relu(var([-1.0, 2.0], backend))
    out.data[1] = 5.0
    with pytest.raises(RuntimeError, match="ReLU.*its output was modified"):
        F.sum(out).backward()
    x, w = var([1.0, 2.0], backend), var([2.0, 3.0], backend)
    F.sum(x * w).backward()
    np.testing.assert_array_equal(w.grad.gather(), [1.0, 2.0])
