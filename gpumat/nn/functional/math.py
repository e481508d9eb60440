"""Differentiable arithmetic, matrix products, reductions and shape operations.

Binary operations broadcast as NumPy does; their backward sums the gradient back over the
broadcast axes (``unbroadcast``).  Python numbers are constants.  Each Function here is the
whole op: forward on gpumat Arrays, backward on gpumat Arrays.
"""
import numbers

import gpumat as gm

from ...blas import matmul_2d
from ...errors import DtypeError, ShapeError
from ..autograd import Function, Variable

__all__ = ["add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "matmul",
           "linear", "sum", "mean", "reshape", "flatten", "permute", "transpose", "getitem",
           "cat", "unbroadcast"]


def unbroadcast(grad, shape):
    """``grad`` summed down to ``shape`` (the shape of an operand that was broadcast)."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    for _ in range(extra):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def _shape(value):
    return value.shape if isinstance(value, gm.Array) else ()


# ---- elementwise arithmetic -------------------------------------------------------------------

class Add(Function):
    def forward(self, a, b):
        self.shapes = _shape(a), _shape(b)
        return a + b

    def backward(self, grad):
        ga, gb = self.needs_grad
        return (unbroadcast(grad, self.shapes[0]) if ga else None,
                unbroadcast(grad, self.shapes[1]) if gb else None)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = _shape(a), _shape(b)
        return a - b

    def backward(self, grad):
        ga, gb = self.needs_grad
        return (unbroadcast(grad, self.shapes[0]) if ga else None,
                unbroadcast(-grad, self.shapes[1]) if gb else None)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        ga, gb = self.needs_grad
        return (unbroadcast(grad * self.b, _shape(self.a)) if ga else None,
                unbroadcast(grad * self.a, _shape(self.b)) if gb else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, grad):
        ga, gb = self.needs_grad
        scaled = grad / self.b
        return (unbroadcast(scaled, _shape(self.a)) if ga else None,
                unbroadcast(-scaled * self.a / self.b, _shape(self.b)) if gb else None)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, grad):
        return -grad


class Pow(Function):
    """``a ** exponent`` for a constant real exponent."""

    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, a):
        self.a = a
        return a ** self.exponent

    def backward(self, grad):
        p = self.exponent
        return grad * (p * self.a ** (p - 1)) if p != 2 else grad * (2 * self.a)


class Exp(Function):
    def forward(self, a):
        self.y = gm.exp(a)
        return self.y

    def backward(self, grad):
        return grad * self.y


class Log(Function):
    def forward(self, a):
        self.a = a
        return gm.log(a)

    def backward(self, grad):
        return grad / self.a


class Sqrt(Function):
    def forward(self, a):
        self.y = gm.sqrt(a)
        return self.y

    def backward(self, grad):
        return grad / (2 * self.y)


def add(a, b):
    """a + b with broadcasting."""
    return Add.apply(a, b)


def sub(a, b):
    """a - b with broadcasting."""
    return Sub.apply(a, b)


def mul(a, b):
    """a * b with broadcasting."""
    return Mul.apply(a, b)


def div(a, b):
    """a / b with broadcasting."""
    return Div.apply(a, b)


def neg(a):
    return Neg.apply(a)


def pow(a, exponent):
    """``a ** exponent`` for a real number ``exponent``."""
    if isinstance(exponent, (Variable, gm.Array)) or not isinstance(exponent, numbers.Real):
        raise TypeError(f"pow: the exponent must be a real number, got {type(exponent).__name__}")
    return Pow.apply(a, exponent=exponent)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def sqrt(a):
    return Sqrt.apply(a)


# ---- products -------------------------------------------------------------------------------

def _check_product(what, a, b):
    """Two 2-d float Arrays of one dtype and backend (then matmul_2d needs no more checks)."""
    if not (isinstance(a, gm.Array) and isinstance(b, gm.Array)):
        raise TypeError(f"{what}: operands must be Arrays or Variables, got "
                        f"{type(a).__name__} and {type(b).__name__}")
    if a.dtype != b.dtype or a.dtype.kind != "f":
        raise DtypeError(f"{what}: operands must share one float dtype, got {a.dtype} and "
                         f"{b.dtype}")
    if a.backend != b.backend:
        raise gm.BackendMismatchError(f"{what}: operands live on {a.backend!r} and "
                                      f"{b.backend!r}")


class MatMul(Function):
    """2-d @ 2-d (the products of the layers; batched products go through conv/linear)."""

    def forward(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ShapeError(f"matmul: differentiable products take 2-d operands with "
                             f"matching inner dimensions, got shapes {a.shape} and {b.shape}")
        _check_product("matmul", a, b)
        self.a, self.b = a, b
        return matmul_2d(a, b)

    def backward(self, grad):
        ga, gb = self.needs_grad
        return (matmul_2d(grad, self.b, trans_b=True) if ga else None,
                matmul_2d(self.a, grad, trans_a=True) if gb else None)


class Linear(Function):
    """y = x @ W^T + b with PyTorch's layout: x is N x in, W is out x in, b has out."""

    def forward(self, x, w, b=None):
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
            raise ShapeError(f"linear: the input must be N x in_features and the weight "
                             f"out_features x in_features; got input {x.shape} and weight "
                             f"{w.shape}")
        if b is not None and b.shape != (w.shape[0],):
            raise ShapeError(f"linear: the bias must have shape ({w.shape[0]},), got {b.shape}")
        _check_product("linear", x, w)
        self.x, self.w = x, w
        y = matmul_2d(x, w, trans_b=True)
        return y if b is None else gm.bias_add(y, b, axis=1)

    def backward(self, grad):
        gx, gw, gb = (self.needs_grad + (False,))[:3]
        return (matmul_2d(grad, self.w) if gx else None,
                matmul_2d(grad, self.x, trans_a=True) if gw else None,
                gm.bias_add_backward(grad, axis=1) if gb else None)


def matmul(a, b):
    """a @ b of two matrices."""
    return MatMul.apply(a, b)


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` (torch.nn.functional.linear) for x of N x in_features."""
    return Linear.apply(x, weight, bias)


# ---- reductions -----------------------------------------------------------------------------

def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ShapeError(f"axis {a} is out of range for a {ndim}-d Variable")
        out.append(a % max(ndim, 1))
    return tuple(sorted(set(out)))


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        self.axes = _axes(self.axis, a.ndim)
        out = a
        for ax in reversed(self.axes):
            out = out.sum(axis=ax, keepdims=True)
        return out if self.keepdims else out.reshape(
            tuple(s for i, s in enumerate(a.shape) if i not in self.axes))

    def backward(self, grad):
        kept = tuple(1 if i in self.axes else s for i, s in enumerate(self.shape))
        return grad.reshape(kept).broadcast_to(self.shape)


def sum(a, axis=None, keepdims=False):
    """Sum over ``axis`` (an int, a tuple, or None for all)."""
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    """Mean over ``axis`` (an int, a tuple, or None for all)."""
    shape = a.shape
    count = 1
    for ax in _axes(axis, len(shape)):
        count *= shape[ax]
    return mul(sum(a, axis, keepdims), 1.0 / max(count, 1))


# ---- shapes ---------------------------------------------------------------------------------

class Reshape(Function):
    def __init__(self, shape):
        self.target = shape

    def forward(self, a):
        self.shape = a.shape
        return a.reshape(self.target)

    def backward(self, grad):
        return grad.reshape(self.shape)


class Permute(Function):
    def __init__(self, order):
        self.order = order

    def forward(self, a):
        return a.permute(self.order)

    def backward(self, grad):
        inverse = [0] * len(self.order)
        for i, o in enumerate(self.order):
            inverse[o] = i
        return grad.permute(inverse)


def reshape(a, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape.apply(a, shape=shape)


def flatten(a, start_dim=1):
    """Merge the axes from ``start_dim`` on (torch.flatten; 1 keeps the batch axis)."""
    shape = a.shape
    ndim = max(len(shape), 1)
    if isinstance(start_dim, bool) or not isinstance(start_dim, int) \
            or not -ndim <= start_dim < ndim:
        raise ShapeError(f"flatten: start_dim {start_dim!r} is out of range for a {len(shape)}-d "
                         f"input of shape {shape} (from {-ndim} to {ndim - 1})")
    start = start_dim % ndim
    return reshape(a, shape[:start] + (-1,)) if shape[start:] else reshape(a, shape + (1,))


def permute(a, *order):
    if len(order) == 1 and isinstance(order[0], (tuple, list)):
        order = tuple(order[0])
    return Permute.apply(a, order=tuple(int(o) % len(a.shape) for o in order))


def transpose(a, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return permute(a, axes or tuple(range(len(a.shape)))[::-1])


def _basic_key(key):
    """Whether ``key`` uses only basic indexing (ints, slices, None, ...), whose backward
    writes each input element at most once."""
    parts = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, slice)
               or (isinstance(k, numbers.Integral) and not isinstance(k, bool)) for k in parts)


class GetItem(Function):
    def __init__(self, key):
        self.key = key

    def forward(self, a):
        self.shape, self.dtype, self.backend = a.shape, a.dtype, a.backend
        return a[self.key]

    def backward(self, grad):
        out = gm.zeros(self.shape, dtype=self.dtype, backend=self.backend)
        out[self.key] = grad
        return out


def getitem(a, key):
    """``a[key]`` for basic indexing (ints, slices, None, ...)."""
    if not _basic_key(key):
        raise IndexError("differentiable indexing takes ints, slices, None and ...; index "
                         "arrays and masks repeat elements, so use gm ops on .data instead")
    return GetItem.apply(a, key=key)


class Cat(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        return gm.cat(self.axis, *arrays)

    def backward(self, grad):
        grads, start = [], 0
        index = [slice(None)] * grad.ndim
        for size, needs in zip(self.sizes, self.needs_grad):
            if needs:
                index[self.axis] = slice(start, start + size)
                grads.append(grad[tuple(index)])
            else:
                grads.append(None)
            start += size
        return tuple(grads)


def cat(variables, axis=1):
    """Concatenate along ``axis`` (inception branches along channels)."""
    variables = list(variables)
    if not variables:
        raise ValueError("cat: needs at least one input")
    ndim = len(variables[0].shape)
    if not -ndim <= axis < ndim:
        raise ShapeError(f"cat: axis {axis} is out of range for {ndim}-d inputs")
    return Cat.apply(*variables, axis=axis % ndim)

