"""MATLAB-named functions and the elementwise maths, reductions and shape vocabulary.

Names follow MATLAB (plus, times, mtimes, repmat, horzcat, find, ...); semantics follow Python
and NumPy: 0-based indices and axes, row-major order, NumPy broadcasting and dtype promotion.
"""
import builtins as _builtins   # this module defines sum, max, min, any, all, abs, round
import numbers

import numpy as np

from . import dtypes as _dtypes
from .array import (Array, _as_array, _normalize_axis, _operands, _shape_args, map_op, matmul,
                    reduce_op)
from .errors import ShapeError

# ---- arithmetic (MATLAB names) ---------------------------------------------------------------


def plus(a, b): return map_op("add", a, b)
def minus(a, b): return map_op("subtract", a, b)
def times(a, b): return map_op("multiply", a, b)
def rdivide(a, b): return map_op("divide", a, b)
def ldivide(a, b): return map_op("divide", b, a)
def power(a, b): return map_op("power", a, b)
def mtimes(a, b): return matmul(a, b)
def uminus(a): return map_op("negative", a)


# ---- elementwise maths ------------------------------------------------------------------------

def exp(a): return map_op("exp", a)
def log(a): return map_op("log", a)
def sqrt(a): return map_op("sqrt", a)
def tanh(a): return map_op("tanh", a)
def sigmoid(a): return map_op("sigmoid", a)
def abs(a): return map_op("abs", a)
def sign(a): return map_op("sign", a)
def floor(a): return map_op("floor", a)
def ceil(a): return map_op("ceil", a)
def maximum(a, b): return map_op("maximum", a, b)
def minimum(a, b): return map_op("minimum", a, b)
def isnan(a): return map_op("isnan", a)
def isinf(a): return map_op("isinf", a)
def isfinite(a): return map_op("isfinite", a)


def round(a):
    """Round half to even, as NumPy does (MATLAB rounds halves away from zero).
    Integer and logical Arrays are returned unchanged (a copy), as with numpy.round."""
    a = _as_array(a)
    if not _dtypes.is_float(a.dtype):
        return a.copy()
    return map_op("round", a)


def clip(a, lo, hi):
    """Limit values to [lo, hi]; NaN stays NaN.  ``lo``/``hi`` may be scalars or Arrays."""
    return map_op("clip", a, lo, hi)


def _backend_of(*values):
    """The backend of the first Array among ``values`` (None: the default): where array-likes
    (NumPy arrays, lists, numbers) go when they meet Arrays, as the operators place them."""
    for v in values:
        if isinstance(v, Array):
            return v._backend
    return None


def where(cond, a, b):
    """Elements of ``a`` where ``cond`` is true, else of ``b`` (broadcasting)."""
    cond = _as_array(cond, _backend_of(a, b)) if not isinstance(cond, Array) else cond
    if not _dtypes.is_bool(cond.dtype):
        cond = cond != 0
    return map_op("where", cond, a, b)


def logical_and(a, b): return map_op("logical_and", a, b)
def logical_or(a, b): return map_op("logical_or", a, b)
def logical_xor(a, b): return map_op("logical_xor", a, b)
def logical_not(a): return map_op("logical_not", a)


# ---- reductions -------------------------------------------------------------------------------

def sum(a, axis=None, keepdims=False): return reduce_op("sum", a, axis, keepdims)
def prod(a, axis=None, keepdims=False): return reduce_op("prod", a, axis, keepdims)
def max(a, axis=None, keepdims=False): return reduce_op("max", a, axis, keepdims)
def min(a, axis=None, keepdims=False): return reduce_op("min", a, axis, keepdims)
def argmax(a, axis=None, keepdims=False): return reduce_op("argmax", a, axis, keepdims)
def argmin(a, axis=None, keepdims=False): return reduce_op("argmin", a, axis, keepdims)
def any(a, axis=None, keepdims=False): return reduce_op("any", a, axis, keepdims)
def all(a, axis=None, keepdims=False): return reduce_op("all", a, axis, keepdims)


# ---- shape vocabulary -------------------------------------------------------------------------

def size(a, axis=None):
    """``size(A)`` is the shape tuple; ``size(A, axis)`` one extent (0-based axis)."""
    a = _as_array(a)
    if axis is None:
        return a.shape
    return a.shape[_normalize_axis(axis, a.ndim)]


def numel(a): return _as_array(a).size
def ndims(a): return _as_array(a).ndim


def reshape(a, *shape): return _as_array(a).reshape(*shape)
def permute(a, order): return _as_array(a).permute(order)
def squeeze(a, axis=None): return _as_array(a).squeeze(axis)
def transpose(a, axes=None): return _as_array(a).transpose(axes)
def broadcast_to(a, *shape): return _as_array(a).broadcast_to(*shape)


def repmat(a, *reps):
    """Tile ``a``: ``repmat(A, 2, 3)`` stacks 2 copies down and 3 across (numpy.tile rules for
    any number of dimensions)."""
    a = _as_array(a)
    reps = _shape_args(reps)
    nd = _builtins.max(a.ndim, len(reps))
    shape = (1,) * (nd - a.ndim) + a.shape
    reps = (1,) * (nd - len(reps)) + reps
    interleaved = tuple(v for pair in zip((1,) * nd, shape) for v in pair)
    expanded = tuple(v for pair in zip(reps, shape) for v in pair)
    tiled = a.reshape(interleaved).broadcast_to(expanded)
    return tiled.reshape(tuple(r * s for r, s in zip(reps, shape)))


def cat(axis, *arrays):
    """MATLAB's ``cat(dim, A, B, ...)`` with a 0-based ``axis``."""
    if len(arrays) == 1 and isinstance(arrays[0], (list, tuple)):
        arrays = tuple(arrays[0])
    if not arrays:
        raise ValueError("cat needs at least one Array")
    arrays, backend = _operands(arrays, "cat")
    arrays = [_as_array(x, backend) for x in arrays]
    first = arrays[0]
    if first.ndim == 0:
        raise ShapeError("cat: zero-dimensional Arrays cannot be concatenated")
    ax = _normalize_axis(axis, first.ndim)
    for x in arrays[1:]:
        if x.ndim != first.ndim or _builtins.any(s != t for i, (s, t) in enumerate(zip(x.shape, first.shape))
                                       if i != ax):
            raise ShapeError(f"cat along axis {ax}: shapes "
                             + ", ".join(str(y.shape) for y in arrays)
                             + " differ outside that axis")
    dtype = np.result_type(*[x.dtype for x in arrays])
    _dtypes.check_result(dtype, "cat")
    return Array._wrap(backend, backend.concatenate([x._live for x in arrays], ax, dtype))


def horzcat(*arrays):
    """Side by side (numpy.hstack: axis 1, or axis 0 for vectors)."""
    backend = _backend_of(*arrays)
    arrays = [_as_array(x, backend) if not isinstance(x, Array) else x for x in arrays]
    arrays = [x.reshape(1) if x.ndim == 0 else x for x in arrays]     # numpy.atleast_1d
    return cat(0 if arrays and arrays[0].ndim == 1 else 1, *arrays)


def vertcat(*arrays):
    """Stacked (numpy.vstack: vectors become rows)."""
    backend = _backend_of(*arrays)
    arrays = [_as_array(x, backend) if not isinstance(x, Array) else x for x in arrays]
    return cat(0, *[x.reshape(1, -1) if x.ndim <= 1 else x for x in arrays])


# ---- search and sort --------------------------------------------------------------------------

def find(a, n=None):
    """0-based row-major flat indices (int64) of the nonzero elements; the first ``n`` only
    when given.  (MATLAB's find is 1-based and column-major.)"""
    if n is not None and (isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral)
                          or n < 1):
        raise ValueError(f"find: n must be a positive integer (as in MATLAB), got {n!r}")
    a = _as_array(a)
    out = Array._wrap(a._backend, a._backend.flatnonzero(a.reshape(-1)._live))
    if n is not None:
        out = out[:int(n)]
    return out


def sort(a, axis=-1, descending=False, return_indices=False):
    """Sorted along ``axis`` (stable; NaN last ascending, first descending).  With
    ``return_indices=True`` also the int64 positions, like MATLAB's ``[B, I] = sort(A)``."""
    a = _as_array(a)
    if a.ndim == 0:
        a = a.reshape(1)
    ax = _normalize_axis(axis, a.ndim)
    values, indices = a._backend.sort(a._live, ax, bool(descending))
    values = Array._wrap(a._backend, values)
    indices = Array._wrap(a._backend, indices)
    if return_indices:
        return values, indices
    indices.release()
    return values


def isequal(a, *others):
    """True when every Array has the same shape and the same values (NaN != NaN, as MATLAB)."""
    a = _as_array(a, _backend_of(a, *others))
    for b in others:
        b = _as_array(b, a._backend)
        if a.shape != b.shape:
            return False
        if a.size and not bool(all(map_op("equal", a, b))):
            return False
    return True


def allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
    """numpy.allclose: |a - b| <= atol + rtol * |b| everywhere (broadcasting)."""
    a = _as_array(a, _backend_of(a, b))
    b = _as_array(b, a._backend)
    x = a.astype(np.float64) if a.dtype.kind != "f" else a
    y = b.astype(x.dtype) if b.dtype != x.dtype else b
    diff = abs(x - y)
    # finite pairs within the tolerance (a finite value is never close to an infinity, whose
    # tolerance would be infinite too), or equal (infinities of one sign), as NumPy
    ok = isfinite(x) & isfinite(y) & (diff <= atol + rtol * abs(y))
    ok = ok | (x == y)
    if equal_nan:
        ok = ok | (isnan(x) & isnan(y))
    return bool(all(ok))


def _require_integers(a, func, what):
    if a.dtype.kind not in "iu":
        raise TypeError(f"{func}: {what} must be integers, got dtype {a.dtype} (as in NumPy; "
                        f"round them first)")


def sub2ind(shape, *subs):
    """Row-major flat index of 0-based subscripts (numpy.ravel_multi_index); checks bounds."""
    shape = _shape_args((shape,))
    if len(subs) != len(shape):
        raise ValueError(f"sub2ind: {len(subs)} subscripts given for a {len(shape)}-d shape {shape}")
    flat = 0
    backend = _backend_of(*subs)
    for axis, (s, n) in enumerate(zip(subs, shape)):
        if isinstance(s, numbers.Integral):
            if not 0 <= s < n:
                raise IndexError(f"sub2ind: subscript {s} is out of range for axis {axis} of size {n}")
            flat = flat * n + int(s)
            continue
        s = _as_array(s, backend)
        _require_integers(s, "sub2ind", f"the subscripts of axis {axis}")
        if s.size and (int(min(s).item()) < 0 or int(max(s).item()) >= n):
            raise IndexError(f"sub2ind: subscripts out of range for axis {axis} of size {n}")
        s = s.astype("int64") if s.dtype != np.int64 else s
        flat = flat * n + s
    return flat


def ind2sub(shape, index):
    """0-based subscripts of row-major flat indices (numpy.unravel_index): a tuple of Arrays,
    or of ints for an int index."""
    shape = _shape_args((shape,))
    total = int(np.prod(shape, dtype=np.int64))
    if isinstance(index, numbers.Integral):
        if not 0 <= index < total:
            raise IndexError(f"ind2sub: index {index} is out of range for shape {shape}")
        return tuple(int(v) for v in np.unravel_index(int(index), shape))
    index = _as_array(index)
    _require_integers(index, "ind2sub", "the indices")
    if index.size and (int(min(index).item()) < 0 or int(max(index).item()) >= total):
        raise IndexError(f"ind2sub: indices out of range for shape {shape}")
    index = index.astype("int64") if index.dtype != np.int64 else index
    out = []
    for j, n in enumerate(shape):
        stride = int(np.prod(shape[j + 1:], dtype=np.int64))
        sub = index if stride == 1 else index // stride
        out.append(sub % n if j > 0 else sub)
    return tuple(out)

