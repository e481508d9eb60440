"""Define-by-run reverse-mode differentiation on gpumat Arrays: ``Variable`` and ``Function``.

    x = Variable(gm.randn(8, 3), requires_grad=True)
    loss = F.sum(F.tanh(x @ w))
    loss.backward()                 # fills x.grad and w.grad (gm.Arrays)

A ``Variable`` wraps an Array and remembers the ``Function`` that produced it.  A Function is
a small class with ``forward`` (Arrays in, one Array out) and ``backward`` (the output's
gradient in, one gradient per input out), both written on gpumat ops, so every differentiable
op runs on every backend.  ``Function.apply`` records a graph node only when grad mode is on
and some input requires a gradient, so inference (``with no_grad():`` or inputs that need no
gradient) builds no graph and keeps nothing alive.  The core Array stays a plain matrix.

``Variable.backward`` walks the graph once in reverse topological order, summing the
gradients that meet at a node before calling its backward, and accumulates into the ``.grad``
of leaves that require one (as PyTorch does: call ``zero_grad`` between steps).  Saved Arrays
and graph edges are dropped as soon as a node has run, so the memory a step uses is returned
when ``backward`` finishes.
"""
import contextlib
import threading

import numpy as np

from ..array import Array
from ..creation import array as _array

__all__ = ["Variable", "Function", "no_grad", "enable_grad", "is_grad_enabled",
           "as_variable", "as_array"]

_state = threading.local()


def is_grad_enabled():
    """Whether operations on Variables record a graph now."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def _grad_mode(enabled):
    previous = is_grad_enabled()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = previous


def no_grad():
    """Context manager (and decorator) under which no graph is recorded: for evaluation and
    for parameter updates."""
    return _grad_mode(False)


def enable_grad():
    """Context manager that turns graph recording back on inside a ``no_grad`` block."""
    return _grad_mode(True)


class Function:
    """One differentiable operation.  Subclasses implement ``forward(*arrays)`` returning an
    Array, and ``backward(grad)`` returning one gradient (an Array, or None for "no
    gradient") per forward input; they keep what backward needs as attributes of ``self``.
    Constructor keyword arguments are the op's hyper-parameters (stride, axis, ...).

    ``self.needs_grad[i]`` tells backward whether input i needs a gradient, so it can skip
    work (the input gradient of a network's first convolution, for example); it is set
    before ``forward`` runs, so a forward whose gradient nobody needs (evaluation) can skip
    saving anything (``self.recording``).  Inputs that
    are not Variables (Arrays, Python numbers, None) are constants and never need one.
    """

    needs_grad = ()
    inputs = ()

    @classmethod
    def apply(cls, *inputs, **params):
        fn = cls(**params)
        arrays = [v.data if isinstance(v, Variable) else v for v in inputs]
        if is_grad_enabled():
            needs = tuple(isinstance(v, Variable) and v.requires_grad for v in inputs)
        else:
            needs = (False,) * len(inputs)
        record = any(needs)
        fn.needs_grad = needs
        out = fn.forward(*arrays)
        result = Variable._make(out, record)
        if record:
            fn.inputs = inputs
            result.creator = fn
            # what backward reads (the Variables' data, the output) as it is now: a write
            # in place before backward would make it compute a wrong gradient silently
            fn._seen = tuple((a, a._storage, a._storage.version) for a, v in
                             zip(arrays, inputs) if isinstance(v, Variable)) + \
                ((out, out._storage, out._storage.version),)
        return result

    def _check_unchanged(self):
        """Raise where an Array this Function saw in its forward (an input Variable's data,
        its output) was written in place since (torch raises too)."""
        for position, (array, storage, version) in enumerate(getattr(self, "_seen", ())):
            if array._storage is not storage or storage.version != version:
                what = ("its output" if position == len(self._seen) - 1
                        else "the data of one of its inputs")
                raise RuntimeError(
                    f"backward() through {self.name}: {what} was modified in place after the "
                    f"forward pass (by an in-place operator, an assignment into it or an "
                    f"optimizer step), so its gradient would be wrong; modify a copy, or "
                    f"call backward() first")

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @property
    def recording(self):
        """Whether backward may run: some input needs a gradient and grad mode is on."""
        return any(self.needs_grad)

    @property
    def name(self):
        return type(self).__name__

    released = False

    def _release(self):
        """Drop the inputs and everything saved for backward (the graph is spent)."""
        self.__dict__.clear()
        self.released = True


class Variable:
    """An Array in the autograd graph.  ``data`` is the Array, ``grad`` its gradient (an Array
    of the same shape after ``backward``, else None); ``creator`` is the Function that made it
    (None for leaves: inputs and parameters)."""

    __slots__ = ("data", "grad", "requires_grad", "creator", "__weakref__")
    __array_ufunc__ = None      # ndarray + Variable -> our reflected operators
    __hash__ = object.__hash__  # identity, like Array's values would not give

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Variable):
            data = data.data
        elif not isinstance(data, Array):
            data = _array(data)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None

    @classmethod
    def _make(cls, data, requires_grad):
        self = object.__new__(cls)
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self.creator = None
        return self

    # ---- what it holds ----------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    backend = property(lambda self: self.data.backend)
    device = property(lambda self: self.data.device)

    @property
    def is_leaf(self):
        return self.creator is None

    def gather(self):
        """A NumPy copy of the data."""
        return self.data.gather()

    numpy = gather

    def __array__(self, dtype=None, copy=None):
        out = self.data.gather()
        return out if dtype is None else out.astype(dtype)

    def item(self):
        return self.data.item()

    def __float__(self):
        return float(self.data.item())

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        made = f", creator={self.creator.name}" if self.creator is not None else ""
        return f"Variable({self.data!r}{grad}{made})"

    def detach(self):
        """The same data, cut from the graph (no gradient flows through it)."""
        return Variable._make(self.data, False)

    def requires_grad_(self, flag=True):
        if not self.is_leaf:
            raise RuntimeError("requires_grad can only be changed on leaf Variables "
                               f"(this one was made by {self.creator.name})")
        self.requires_grad = bool(flag)
        return self

    # ---- differentiation --------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Gradients of this Variable with respect to every leaf that requires one, added to
        the leaves' ``.grad``.  ``grad`` defaults to 1 for a single-element Variable.  The
        graph is freed afterwards unless ``retain_graph``."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a Variable that does not require a gradient: no "
                               "input of the computation had requires_grad=True (or it ran "
                               "under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a single-element "
                                   f"Variable (a loss); this one has shape {self.shape}")
            from ..creation import ones
            grad = ones(*self.shape, dtype=self.dtype, backend=self.data._backend)
        else:
            grad = as_array(grad, self.data)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): the gradient has shape {grad.shape} but the "
                                 f"Variable has shape {self.shape}")
        _run_backward(self, grad, retain_graph)

    # ---- operators (the functions live in functional.math) -----------------------------------
    def __add__(self, other): return _math().add(self, other)
    def __radd__(self, other): return _math().add(other, self)
    def __sub__(self, other): return _math().sub(self, other)
    def __rsub__(self, other): return _math().sub(other, self)
    def __mul__(self, other): return _math().mul(self, other)
    def __rmul__(self, other): return _math().mul(other, self)
    def __truediv__(self, other): return _math().div(self, other)
    def __rtruediv__(self, other): return _math().div(other, self)
    def __neg__(self): return _math().neg(self)
    def __pow__(self, exponent): return _math().pow(self, exponent)
    def __matmul__(self, other): return _math().matmul(self, other)
    def __rmatmul__(self, other): return _math().matmul(other, self)
    def __getitem__(self, key): return _math().getitem(self, key)

    def reshape(self, *shape): return _math().reshape(self, *shape)
    def flatten(self, start_dim=0): return _math().flatten(self, start_dim)
    def permute(self, *order): return _math().permute(self, *order)
    def transpose(self, *axes): return _math().transpose(self, *axes)
    def sum(self, axis=None, keepdims=False): return _math().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _math().mean(self, axis, keepdims)

    @property
    def T(self):
        return _math().transpose(self)


def _math():
    from .functional import math
    return math


def as_variable(value):
    """``value`` as a Variable (Arrays and array-likes become constants)."""
    return value if isinstance(value, Variable) else Variable(value)


def as_array(value, like=None):
    """The Array behind ``value`` (a Variable, an Array, or data uploaded to ``like``'s
    backend)."""
    if isinstance(value, Variable):
        return value.data
    if isinstance(value, Array):
        return value
    backend = like._backend if like is not None else None
    host = np.asarray(value)
    if like is not None and host.dtype.kind == "f":
        host = host.astype(like.dtype)
    return _array(host, backend=backend)


def _graph_order(root):
    """The Functions that ``root`` depends on, each after every Function that consumes its
    output (reverse topological order), found without recursion (deep ResNets)."""
    order = []
    seen = set()
    stack = [(root.creator, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            order.append(fn)
            continue
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        stack.append((fn, True))
        for v, needs in zip(fn.inputs, fn.needs_grad):
            if needs and v.creator is not None and id(v.creator) not in seen:
                stack.append((v.creator, False))
    order.reverse()
    return order


def _accumulate(existing, grad):
    return grad if existing is None else existing + grad


def _leaf_grad(existing, grad):
    """A leaf's .grad plus ``grad``: the first as an Array of its own sharing grad's buffer
    (copy-on-write), since an addition passes one gradient Array to both its operands (and
    backward(g) would hand the caller's g itself): an in-place edit of one leaf's .grad
    (clipping, scaling) must not change another's."""
    return grad._share(grad._live) if existing is None else existing + grad


def _run_backward(root, grad, retain_graph):
    if root.creator is None:                       # a leaf: its gradient is grad itself
        root.grad = _leaf_grad(root.grad, grad)
        return
    pending = {id(root.creator): grad}
    for fn in _graph_order(root):
        if fn.released:
            raise RuntimeError(f"backward() through a graph that was already freed (at "
                               f"{fn.name}); pass retain_graph=True to the first backward() "
                               f"to differentiate twice")
        grad_out = pending.pop(id(fn), None)
        if grad_out is None:                       # no gradient reached this node
            if not retain_graph:
                fn._release()
            continue
        fn._check_unchanged()
        grads = fn.backward(grad_out)
        if not isinstance(grads, tuple):
            grads = (grads,)
        for v, needs, g in zip(fn.inputs, fn.needs_grad, grads):
            if not needs or g is None:
                continue
            if g.shape != v.data.shape:
                raise RuntimeError(f"{fn.name}.backward returned a gradient of shape "
                                   f"{g.shape} for an input of shape {v.data.shape}")
            creator = v.creator
            if creator is None:
                v.grad = _leaf_grad(v.grad, g)
            else:
                key = id(creator)
                pending[key] = _accumulate(pending.get(key), g)
        if not retain_graph:
            fn._release()
