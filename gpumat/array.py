"""The Array type: an n-d matrix on one backend, with NumPy semantics and MATLAB vocabulary.

An Array owns a reference to a *storage* (a backend buffer) plus its own shape.  Reshapes and
same-dtype conversions share storage; anything that writes (``A[k] = v``, ``A += B``) first
copies a shared storage (copy-on-write, as MATLAB does), so Arrays behave as values and no
Array ever sees another change under it, on any backend.  Every operation validates its
arguments here, then calls the backend through the interface in ``backends/base.py``; this
module knows no backend by name.
"""
import math
import numbers

import numpy as np

from . import backends as _backends
from . import dtypes as _dtypes
from . import memory as _memory
from .backends.base import MAP_OPS, numpy_slice
from .errors import (BackendMismatchError, DtypeError, ReleasedArrayError, ShapeError)

_LOGICAL_OPS = {"logical_and", "logical_or", "logical_xor", "logical_not"}
_BITWISE_OPS = {"bitwise_and", "bitwise_or", "bitwise_xor", "invert"}
_COMPARISONS = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"}
# per comparison: whether it holds when the left operand is the smaller one (and, swapped,
# when the right one is)
_HOLDS_WHEN_LEFT_SMALLER = {"equal": False, "not_equal": True, "less": True, "less_equal": True,
                            "greater": False, "greater_equal": False}
_SWAPPED = {"equal": "equal", "not_equal": "not_equal", "less": "greater",
            "less_equal": "greater_equal", "greater": "less", "greater_equal": "less_equal"}
_FLOAT64 = np.dtype(np.float64)
_PYTHON_SCALARS = (bool, int, float)


class _Storage:
    """A backend buffer, the number of Arrays sharing it, and its version: how many times it
    was written in place (``Array._make_private`` counts every such write: setitem, the
    optimizer updates), so that what was made from its values can tell it is stale."""

    __slots__ = ("backend", "native", "refs", "version")

    def __init__(self, backend, native):
        self.backend = backend
        self.native = native
        self.refs = 1
        self.version = 0

    def drop(self):
        self.refs -= 1
        if self.refs == 0:
            self.backend.free(self.native)
            self.native = None


class Array:
    """An n-d matrix on a backend.  Create with ``gm.array``, ``gm.zeros`` & co."""

    __slots__ = ("_storage", "_native", "__weakref__")
    __array_ufunc__ = None      # NumPy defers to our reflected operators: ndarray + Array -> Array
    __hash__ = None

    # ---- construction (internal) ------------------------------------------------------------
    @classmethod
    def _wrap(cls, backend, native):
        """An Array owning a freshly created native."""
        self = object.__new__(cls)
        self._storage = _Storage(backend, native)
        self._native = native
        _memory.register(self)
        return self

    def _share(self, native):
        """An Array sharing this one's storage, seen through ``native`` (a reshape)."""
        other = object.__new__(type(self))
        other._storage = self._storage
        self._storage.refs += 1
        other._native = native
        _memory.register(other)
        return other

    def __init__(self, *args, **kwargs):
        raise TypeError("create Arrays with gm.array(...), gm.zeros(...) and friends")

    # ---- state ------------------------------------------------------------------------------
    @property
    def _live(self):
        native = self._native
        if native is None:
            raise ReleasedArrayError("this Array was released (by A.release() or by the "
                                     "gm.scope() it was created in) and cannot be used")
        return native

    @property
    def _backend(self):
        self._live
        return self._storage.backend

    def release(self):
        """Free the device memory now.  Later use raises ReleasedArrayError.  Idempotent."""
        if self._native is not None:
            self._native = None
            self._storage.drop()

    @property
    def released(self):
        return self._native is None

    def __del__(self):
        try:
            self.release()
        except Exception:       # interpreter shutdown: the backend may be gone already
            pass

    def _make_private(self):
        """Copy-on-write: give this Array its own storage before it is written in place (and
        count the write in the storage's version)."""
        storage = self._storage
        if storage.refs > 1:
            native = storage.backend.copy(self._live)
            storage.refs -= 1
            shared, storage = storage, _Storage(storage.backend, native)
            storage.version = shared.version
            self._storage, self._native = storage, native
        storage.version += 1

    def _become(self, other):
        """Take over ``other``'s storage (for in-place operators); ``other`` is spent."""
        self._live
        native = other._live
        written = self._storage.version + 1     # an in-place write: the version still grows
        self._storage.drop()
        self._storage, self._native = other._storage, native
        self._storage.version = max(self._storage.version, written)
        other._native = None        # ownership moved: other's release must not drop it

    # ---- properties -------------------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self._live.shape)

    @property
    def dtype(self):
        return np.dtype(self._live.dtype)

    @property
    def ndim(self):
        return len(self._live.shape)

    @property
    def size(self):
        return int(self._live.size)

    @property
    def nbytes(self):
        return int(self._live.nbytes)

    @property
    def backend(self):
        """Name of the backend holding the data ('cpu', 'opencl' or 'cuda')."""
        return self._backend.name

    @property
    def device(self):
        return self._backend.device

    @property
    def T(self):
        return self.transpose()

    # ---- conversion -------------------------------------------------------------------------
    def gather(self):
        """A NumPy copy of the data (MATLAB's gather)."""
        return self._backend.to_numpy(self._live)

    def __array__(self, dtype=None, copy=None):
        out = self.gather()
        return out if dtype is None else out.astype(dtype)

    def to(self, backend):
        """This Array on ``backend`` (shares storage when it is already there)."""
        target = _backends.get(backend)
        if target is self._backend:
            return self._share(self._live)
        return from_numpy(self.gather(), target)

    def astype(self, dtype):
        dtype = _dtypes.normalize(dtype)
        _check_backend_dtype(self._backend, dtype)
        if dtype == self.dtype:
            return self._share(self._live)
        return Array._wrap(self._backend, self._backend.astype(self._live, dtype))

    def copy(self):
        return Array._wrap(self._backend, self._backend.copy(self._live))

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs an Array of size 1, this one has shape {self.shape}")
        return self.gather().reshape(()).item()

    def tolist(self):
        return self.gather().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if not _dtypes.is_integer(self.dtype):
            raise TypeError(f"only integer Arrays can be used as an index, not {self.dtype}")
        return int(self.item())

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of an Array of shape {self.shape} is ambiguous; "
                             f"use gm.any(A) or gm.all(A)")
        return bool(self.item())

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d Array")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d Array")
        for i in range(self.shape[0]):
            yield self[i]

    def __repr__(self):
        if self.released:
            return "gm.Array(<released>)"
        body = np.array2string(self.gather(), separator=", ", prefix="    ", threshold=200)
        return (f"gm.Array({body}, dtype={self.dtype}, backend={self.backend!r})")

    def __str__(self):
        if self.released:
            return "<released gm.Array>"
        return str(self.gather())

    # ---- layout -----------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = _shape_args(shape, allow_minus_one=True)
        shape = _resolve_reshape(self.shape, shape)
        return self._share(self._backend.reshape(self._live, shape))

    def ravel(self):
        return self.reshape(-1)

    flatten = ravel

    def squeeze(self, axis=None):
        if axis is None:
            shape = tuple(s for s in self.shape if s != 1)
        else:
            axes = {_normalize_axis(a, self.ndim) for a in _as_tuple(axis)}
            if self.ndim == 0:
                return self.reshape(())
            for a in axes:
                if self.shape[a] != 1:
                    raise ShapeError(f"squeeze: axis {a} of shape {self.shape} has size "
                                     f"{self.shape[a]}, not 1")
            shape = tuple(s for i, s in enumerate(self.shape) if i not in axes)
        return self.reshape(shape)

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        if not axes:
            axes = tuple(range(self.ndim))[::-1]
        return self.permute(axes)

    def permute(self, *order):
        order = tuple(order[0] if len(order) == 1 and isinstance(order[0], (tuple, list))
                      else order)
        if sorted(_normalize_axis(a, self.ndim) for a in order) != list(range(self.ndim)):
            raise ShapeError(f"permute: order {order} is not a permutation of the "
                             f"{self.ndim} axes of shape {self.shape}")
        order = tuple(_normalize_axis(a, self.ndim) for a in order)
        if order == tuple(range(self.ndim)):
            return self._share(self._live)
        shape = tuple(self.shape[a] for a in order)
        moved = [a for a in order if self.shape[a] != 1]
        if moved == sorted(moved):
            # only size-1 axes move: the memory order is unchanged, a reshape suffices
            return self.reshape(shape)
        return Array._wrap(self._backend, self._backend.permute(self._live, order))

    def broadcast_to(self, *shape):
        shape = _shape_args(shape)
        try:
            out_shape = np.broadcast_shapes(self.shape, shape)
        except ValueError:
            out_shape = None
        if out_shape != shape:
            raise ShapeError(f"cannot broadcast an Array of shape {self.shape} to shape {shape}")
        if shape == self.shape:
            return self._share(self._live)
        return Array._wrap(self._backend, self._backend.broadcast_to(self._live, shape))

    # ---- operators --------------------------------------------------------------------------
    def __add__(self, other): return map_op("add", self, other)
    def __radd__(self, other): return map_op("add", other, self)
    def __sub__(self, other): return map_op("subtract", self, other)
    def __rsub__(self, other): return map_op("subtract", other, self)
    def __mul__(self, other): return map_op("multiply", self, other)
    def __rmul__(self, other): return map_op("multiply", other, self)
    def __truediv__(self, other): return map_op("divide", self, other)
    def __rtruediv__(self, other): return map_op("divide", other, self)
    def __floordiv__(self, other): return map_op("floor_divide", self, other)
    def __rfloordiv__(self, other): return map_op("floor_divide", other, self)
    def __mod__(self, other): return map_op("mod", self, other)
    def __rmod__(self, other): return map_op("mod", other, self)
    def __pow__(self, other): return map_op("power", self, other)
    def __rpow__(self, other): return map_op("power", other, self)
    def __matmul__(self, other): return matmul(self, other)
    def __rmatmul__(self, other): return matmul(other, self)
    def __neg__(self): return map_op("negative", self)
    def __pos__(self): return self.copy()
    def __abs__(self): return map_op("abs", self)
    def __eq__(self, other): return map_op("equal", self, other)
    def __ne__(self, other): return map_op("not_equal", self, other)
    def __lt__(self, other): return map_op("less", self, other)
    def __le__(self, other): return map_op("less_equal", self, other)
    def __gt__(self, other): return map_op("greater", self, other)
    def __ge__(self, other): return map_op("greater_equal", self, other)
    def __and__(self, other): return map_op("bitwise_and", self, other)
    def __rand__(self, other): return map_op("bitwise_and", other, self)
    def __or__(self, other): return map_op("bitwise_or", self, other)
    def __ror__(self, other): return map_op("bitwise_or", other, self)
    def __xor__(self, other): return map_op("bitwise_xor", self, other)
    def __rxor__(self, other): return map_op("bitwise_xor", other, self)

    def __invert__(self):
        return map_op("logical_not" if _dtypes.is_bool(self.dtype) else "invert", self)

    def _inplace(self, op, other):
        result = map_op(op, self, other) if op != "matmul" else matmul(self, other)
        if result.dtype != self.dtype:
            if not np.can_cast(result.dtype, self.dtype, "same_kind"):
                name = {"divide": "/", "power": "**"}.get(op, op)
                raise DtypeError(f"in-place {name}: cannot store the {result.dtype} result in "
                                 f"this {self.dtype} Array (casting rule 'same_kind'); "
                                 f"use A = A {name} B instead")
            result = result.astype(self.dtype)
        if result.shape != self.shape:
            raise ShapeError(f"in-place operation: result shape {result.shape} does not match "
                             f"the Array's shape {self.shape}")
        self._become(result)
        return self

    def __iadd__(self, other): return self._inplace("add", other)
    def __isub__(self, other): return self._inplace("subtract", other)
    def __imul__(self, other): return self._inplace("multiply", other)
    def __itruediv__(self, other): return self._inplace("divide", other)
    def __ifloordiv__(self, other): return self._inplace("floor_divide", other)
    def __imod__(self, other): return self._inplace("mod", other)
    def __ipow__(self, other): return self._inplace("power", other)
    def __imatmul__(self, other): return self._inplace("matmul", other)
    def __iand__(self, other): return self._inplace("bitwise_and", other)
    def __ior__(self, other): return self._inplace("bitwise_or", other)
    def __ixor__(self, other): return self._inplace("bitwise_xor", other)

    # ---- reductions (methods delegate to the module functions) ------------------------------
    def sum(self, axis=None, keepdims=False): return reduce_op("sum", self, axis, keepdims)
    def prod(self, axis=None, keepdims=False): return reduce_op("prod", self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return reduce_op("max", self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return reduce_op("min", self, axis, keepdims)
    def any(self, axis=None, keepdims=False): return reduce_op("any", self, axis, keepdims)
    def all(self, axis=None, keepdims=False): return reduce_op("all", self, axis, keepdims)
    def argmax(self, axis=None, keepdims=False): return reduce_op("argmax", self, axis, keepdims)
    def argmin(self, axis=None, keepdims=False): return reduce_op("argmin", self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def var(self, axis=None, ddof=0, keepdims=False): return var(self, axis, ddof, keepdims)
    def std(self, axis=None, ddof=0, keepdims=False): return std(self, axis, ddof, keepdims)
    def cumsum(self, axis=None): return cumsum(self, axis)

    # ---- indexing ---------------------------------------------------------------------------
    def __getitem__(self, key):
        key, holds, (placed, axis), _ = _scalar_mask(self, key)
        if holds is not None:
            out = self[key]          # the mask as a new axis of length 1 ...
            if placed != axis:
                order = [d for d in range(out.ndim) if d != placed]
                out = out.permute(order[:axis] + [placed] + order[axis:])
            # ... or 0 where it does not hold
            return out if holds else out[(slice(None),) * axis + (slice(0, 0),)]
        backend = self._backend
        flat = _single_full_mask(self, key)
        if flat is not None:
            source = self.reshape(-1)
            return Array._wrap(backend, backend.getitem(source._live, (flat._live,)))
        norm, _ = _normalize_key(self, key)
        if all(isinstance(k, slice) and k == slice(0, n, 1) for k, n in zip(norm, self.shape)) \
                and len(norm) == self.ndim:
            return self._share(self._live)
        natives = tuple(k._live if isinstance(k, Array) else k for k in norm)
        return Array._wrap(backend, backend.getitem(self._live, natives))

    def __setitem__(self, key, value):
        key, holds, (placed, axis), rest = _scalar_mask(self, key)
        if holds is not None:
            # the mask is a new axis of length 1 where it holds, 0 where not: a value that
            # cannot go there is refused even where nothing is written
            target = list(_normalize_key(self, key)[1]())
            target.insert(axis, target.pop(placed))
            if not holds:
                target[axis] = 0
            v = _setitem_value(self, value, target)
            if holds:
                at = axis - (len(target) - np.ndim(v))     # the new axis in the value
                if at >= 0:
                    v = v.reshape(v.shape[:at] + v.shape[at + 1:])
                self[rest] = v
            return
        backend = self._backend
        flat = _single_full_mask(self, key)
        if flat is not None:
            target_shape = (flat.size,)
        norm, target_shape_fn = (None, None) if flat is not None else _normalize_key(self, key)
        if flat is None:
            target_shape = target_shape_fn()
        value = _setitem_value(self, value, target_shape)
        self._make_private()
        value_native = value._live if isinstance(value, Array) else value
        if flat is not None:
            view = backend.reshape(self._live, (self.size,))
            backend.setitem(view, (flat._live,), value_native)
        else:
            natives = tuple(k._live if isinstance(k, Array) else k for k in norm)
            backend.setitem(self._live, natives, value_native)


# =============================================================================================
# helpers shared by the Array methods and gpumat's functions
# =============================================================================================

def from_numpy(x, backend):
    """Upload NumPy array ``x`` (a supported dtype, in either byte order) to ``backend`` (an
    instance)."""
    _dtypes.normalize(x.dtype)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    _check_backend_dtype(backend, x.dtype)
    return Array._wrap(backend, backend.from_numpy(np.asarray(x, order="C")))


def _exact_native(value, backend, dtype, shape):
    """``value``'s native buffer where it is a live Array of exactly ``dtype`` and ``shape``
    on ``backend``, else None: the whole check of an operand on the short argument paths
    (gm.xnor_conv2d, gm.xnor_gemm, gm.batch_norm_forward), which leave anything else to their
    full checks."""
    if type(value) is not Array:
        return None
    native = value._native
    if (native is None or value._storage.backend is not backend or native.dtype != dtype
            or native.shape != shape):
        return None
    return native


def _exact_natives(values, backend, dtype, shape):
    """The natives of ``values`` (None staying None) where every one given passes
    _exact_native, else None."""
    natives = []
    for value in values:
        native = None if value is None else _exact_native(value, backend, dtype, shape)
        if native is None and value is not None:
            return None
        natives.append(native)
    return natives


def _check_backend_dtype(backend, dtype):
    if np.dtype(dtype) == np.float64 and not backend.supports_float64:
        raise DtypeError(f"the {backend.name} device {backend.device!r} does not support "
                         f"double precision (float64); use single (float32)")


def _shape_args(args, allow_minus_one=False):
    """(3, 4), ((3, 4),) and ([3, 4],) all mean shape (3, 4)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    elif len(args) == 1 and isinstance(args[0], Array):
        args = tuple(int(v) for v in args[0].gather().ravel())
    shape = []
    for s in args:
        if type(s) is not int:      # plain ints (the common case) skip the ABC checks
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, (numbers.Integral, Array)):
                raise TypeError(f"shape entries must be integers, got {s!r} in {tuple(args)}")
            s = int(s)
        if s < 0 and not (allow_minus_one and s == -1):
            raise ShapeError(f"negative dimension {s} in shape {tuple(args)}")
        shape.append(s)
    return tuple(shape)


def _resolve_reshape(old, new):
    size = math.prod(old)
    if new.count(-1) > 1:
        raise ShapeError(f"reshape: only one dimension can be -1, got {new}")
    if -1 in new:
        known = math.prod(s for s in new if s != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape an Array of shape {old} into shape {new}")
        new = tuple(size // known if s == -1 else s for s in new)
    if math.prod(new) != size:
        raise ShapeError(f"cannot reshape an Array of shape {old} ({size} elements) into "
                         f"shape {new}")
    return new


def _as_tuple(axis):
    return tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)


def _normalize_axis(axis, ndim):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    axis = int(axis)
    # a 0-d Array takes axis 0 or -1, as NumPy's reductions do
    if not (-ndim <= axis < ndim or (ndim == 0 and axis in (0, -1))):
        raise ShapeError(f"axis {axis} is out of bounds for an Array of dimension {ndim}")
    return axis % ndim if ndim else 0


def _python_scalar_kind(x):
    if isinstance(x, (bool, np.bool_)):
        return bool
    if isinstance(x, numbers.Integral):
        return int
    return float


def _operands(values, what):
    """Turn op arguments into Arrays (one backend) and weak Python scalars."""
    backend = None
    convert = False
    for v in values:
        if isinstance(v, Array):
            b = v._backend
            if backend is None:
                backend = b
            elif b is not backend:
                raise BackendMismatchError(
                    f"{what}: operands live on two backends, {backend.name!r} and {b.name!r}; "
                    f"move one with A.to({backend.name!r})")
        elif type(v) not in _PYTHON_SCALARS:
            convert = True
    if backend is None:
        backend = _backends.default()
    if not convert:
        return values, backend
    out = []
    for v in values:
        if isinstance(v, Array) or type(v) in _PYTHON_SCALARS:
            out.append(v)
        elif isinstance(v, (bool, int, float)) and not isinstance(v, np.generic):
            out.append(_python_scalar_kind(v)(v))     # subclasses of bool/int/float
        elif isinstance(v, numbers.Real) and not isinstance(v, np.generic):
            out.append(float(v))                      # Fraction, Decimal, ...
        else:
            x = np.asarray(v)
            if x.dtype == object or x.dtype.kind not in "biuf":
                raise DtypeError(f"{what}: cannot use an operand of type {type(v).__name__} "
                                 f"(dtype {x.dtype})")
            out.append(from_numpy(_host_dtype(x), backend))
    return out, backend


def _host_dtype(x):
    """NumPy data as gpumat stores it: supported dtypes unchanged; others rejected clearly."""
    _dtypes.normalize(x.dtype)
    return x


def _kind(v):
    return v.dtype if isinstance(v, Array) else _python_scalar_kind(v)


def _check_scalar_fits(v, dtype, what):
    if isinstance(v, int) and not isinstance(v, bool) and np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        if not info.min <= v <= info.max:
            raise OverflowError(f"{what}: Python integer {v} is out of bounds for {dtype}")


_MAP_DTYPES = {}       # (op, operand kinds) -> (out dtype, compute dtype)


def _map_dtypes(op, kinds):
    """NumPy's result dtype for ``op`` on operands of ``kinds``, and the dtype the inputs are
    converted to before the op (the promoted inputs for comparisons, bool for logical ops)."""
    key = (op, kinds)
    cached = _MAP_DTYPES.get(key)
    if cached is not None:
        return cached
    ufunc = MAP_OPS[op][1]
    try:
        if op == "sigmoid":
            out_dtype = _dtypes.ufunc_result("exp", kinds)
        elif op == "where":
            out_dtype = _dtypes.ufunc_result("where", (np.dtype(bool),) + kinds[1:])
        else:
            out_dtype = _dtypes.ufunc_result(ufunc or op, kinds)
    except (TypeError, ValueError) as exc:
        names = ", ".join(str(k) if isinstance(k, np.dtype) else k.__name__ for k in kinds)
        raise DtypeError(f"{op} is not supported for operands of type ({names}): {exc}") from None
    _dtypes.check_result(out_dtype, op)
    if op in _LOGICAL_OPS:
        compute = np.dtype(bool)
    elif op == "where" or out_dtype != np.bool_ or op in _BITWISE_OPS:
        compute = out_dtype
    else:       # comparisons and isnan & co: compare in the promoted input dtype
        compute = np.dtype(_dtypes.ufunc_result("add", kinds) if len(kinds) > 1 else kinds[0])
    _MAP_DTYPES[key] = out_dtype, compute
    return out_dtype, compute


def _negative_exponent(exponent):
    """Whether an integer power's exponent (a number or a signed-integer Array) has a value
    below 0: NumPy refuses those, and a device kernel would give 0 without a word (one
    reduction, for Array exponents only)."""
    if isinstance(exponent, Array):
        return (exponent.dtype.kind == "i" and exponent.size > 0
                and reduce_op("min", exponent).item() < 0)
    return isinstance(exponent, int) and exponent < 0


def _exact_integer_compare(op, operands, kinds, compute):
    """A comparison NumPy makes exactly where the promoted dtype would not: a signed integer
    Array against a uint64 one (promoted to float64, 2**53 + 1 would equal 2**53), and an
    integer Array against a Python int outside its dtype's range (which cannot be converted).
    None where the ordinary path is exact.  ``kinds`` are the operands' (map_op's)."""
    a, b = operands
    if (isinstance(a, Array) and isinstance(b, Array) and compute == _FLOAT64
            and {kinds[0].kind, kinds[1].kind} == {"i", "u"}):
        # the signed operand is smaller wherever it is negative; elsewhere it converts to
        # uint64 exactly
        flip = kinds[0].kind == "u"
        signed, unsigned = (b, a) if flip else (a, b)
        negative = map_op("less", signed, 0)
        as_unsigned = signed.astype(np.uint64)
        pairs = (unsigned, as_unsigned) if flip else (as_unsigned, unsigned)
        where_unsigned = map_op(op, *pairs)
        holds = _HOLDS_WHEN_LEFT_SMALLER[_SWAPPED[op] if flip else op]
        if holds:
            return map_op("logical_or", where_unsigned, negative)
        return map_op("logical_and", where_unsigned, map_op("logical_not", negative))
    for side, scalar in enumerate(operands):
        other = operands[1 - side]
        if (isinstance(scalar, int) and not isinstance(scalar, bool) and isinstance(other, Array)
                and compute.kind in "iu"):
            info = np.iinfo(compute)
            if info.min <= scalar <= info.max:
                return None
            # every element of the Array lies on one side of the number
            array_smaller = scalar > info.max
            name = op if side == 1 else _SWAPPED[op]
            holds = _HOLDS_WHEN_LEFT_SMALLER[name] if array_smaller \
                else _HOLDS_WHEN_LEFT_SMALLER[_SWAPPED[name]]
            from .creation import full
            return full(other.shape, holds, dtype=bool, backend=other._backend)
    return None


def map_op(op, *values):
    """Apply elementwise ``op`` (a name in backends.base.MAP_OPS) with NumPy broadcasting."""
    arrays, backend = _operands(values, op)
    kinds = tuple(_kind(v) for v in arrays)
    out_dtype, compute = _map_dtypes(op, kinds)
    if op in _COMPARISONS:
        exact = _exact_integer_compare(op, arrays, kinds, compute)
        if exact is not None:
            return exact
    if op == "clip" and compute.kind in "iu":
        # a bound past the dtype's range clips nothing there: the range's end does the same
        info = np.iinfo(compute)
        arrays = [min(max(v, int(info.min)), int(info.max))
                  if isinstance(v, int) and not isinstance(v, bool) else v for v in arrays]
    shapes = []
    for v in arrays:
        if isinstance(v, Array):
            shapes.append(v.shape)
        else:
            _check_scalar_fits(v, compute, op)
    if op == "power" and compute.kind in "iu" and _negative_exponent(arrays[1]):
        raise ValueError("Integers to negative integer powers are not allowed (as in NumPy); "
                         "use a float base")
    if out_dtype == _FLOAT64 or compute == _FLOAT64:
        _check_backend_dtype(backend, _FLOAT64)
    out_shape = shapes[0] if shapes.count(shapes[0]) == len(shapes) else None
    if out_shape is None:
        try:
            out_shape = np.broadcast_shapes(*shapes)
        except ValueError:
            raise ShapeError(f"{op}: operands could not be broadcast together with shapes "
                             + " ".join(str(s) for s in shapes)) from None
    natives = [v._live if isinstance(v, Array) else v for v in arrays]
    out = backend.map(op, natives, out_dtype, compute)
    if tuple(out.shape) != out_shape:
        out = backend.reshape(out, out_shape)
    return Array._wrap(backend, out)


def reduce_op(op, a, axis=None, keepdims=False):
    a = _as_array(a)
    ax = None if axis is None else _normalize_axis(axis, a.ndim)
    if a.ndim == 0 and ax is not None:
        ax = None
    n = a.size if ax is None else a.shape[ax]
    if n == 0 and op in ("max", "min", "argmax", "argmin"):
        raise ValueError(f"{op} of an empty Array (shape {a.shape}"
                         + (f", axis {ax})" if ax is not None else ")") + " has no identity")
    out = a._backend.reduce(op, a._live, ax, bool(keepdims))
    return Array._wrap(a._backend, out)


def _as_array(x, backend=None):
    if isinstance(x, Array):
        return x
    from .creation import array
    return array(x, backend=backend)


def _float_dtype(dtype):
    return dtype if _dtypes.is_float(dtype) else np.dtype(np.float64)


def _count_along(a, axis):
    """How many values a reduction over ``axis`` (None: all) of ``a`` combines."""
    if axis is None:
        return a.size
    axis = _normalize_axis(axis, a.ndim)
    return a.shape[axis] if a.ndim else 1


def mean(a, axis=None, keepdims=False):
    a = _as_array(a)
    target = _float_dtype(a.dtype)
    x = a if a.dtype == target else a.astype(target)
    n = _count_along(a, axis)
    s = reduce_op("sum", x, axis, keepdims)
    return map_op("divide", s, float(n)) if n else map_op("multiply", s, float("nan"))


def var(a, axis=None, ddof=0, keepdims=False):
    """Variance with NumPy's default normalisation by N - ddof (MATLAB's var uses N - 1)."""
    a = _as_array(a)
    target = _float_dtype(a.dtype)
    x = a if a.dtype == target else a.astype(target)
    n = _count_along(a, axis)
    d = x - mean(x, axis, keepdims=True)
    s = reduce_op("sum", d * d, axis, keepdims)
    # NumPy's max(N - ddof, 0): inf for a spread over no degrees of freedom, NaN for none
    return map_op("divide", s, float(max(n - ddof, 0)))


def std(a, axis=None, ddof=0, keepdims=False):
    return map_op("sqrt", var(a, axis, ddof, keepdims))


def cumsum(a, axis=None):
    a = _as_array(a)
    if axis is None or a.ndim == 0:
        _normalize_axis(0 if axis is None else axis, a.ndim)
        a = a.reshape(-1)
        axis = 0
    ax = _normalize_axis(axis, a.ndim)
    return Array._wrap(a._backend, a._backend.cumsum(a._live, ax))


def matmul(a, b):
    (a, b), backend = _operands((a, b), "matmul")
    a, b = _as_array(a, backend), _as_array(b, backend)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: operands must have at least one dimension, got shapes "
                         f"{a.shape} and {b.shape} (use * for scalars)")
    for x in (a, b):
        if _dtypes.is_bool(x.dtype):
            raise DtypeError("matmul of logical Arrays is not supported; convert with "
                             "A.astype('single') first")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ShapeError(f"matmul: inner dimensions differ: shapes {a.shape} and {b.shape} "
                         f"({k_a} != {k_b})")
    batch_a = a.shape[:-2]
    batch_b = b.shape[:-2]
    try:
        np.broadcast_shapes(batch_a, batch_b)
    except ValueError:
        raise ShapeError(f"matmul: batch dimensions of shapes {a.shape} and {b.shape} do not "
                         f"broadcast") from None
    out_dtype = np.result_type(a.dtype, b.dtype)
    _dtypes.check_result(out_dtype, "matmul")
    _check_backend_dtype(backend, out_dtype)
    return Array._wrap(backend, backend.matmul(a._live, b._live, out_dtype))


# ---- indexing -------------------------------------------------------------------------------

def _is_scalar_mask(k):
    return isinstance(k, (Array, np.ndarray)) and k.ndim == 0 and k.dtype == np.bool_


def _scalar_mask(a, key):
    """NumPy's 0-d logical index (``s[s > 100] = 0`` on a 0-d Array): a new axis of length 1
    where it holds and 0 where it does not.  Returns (the key with it as None, None (no such
    index) or whether it holds, the new axis's place in the result, the key without it)."""
    entries = key if isinstance(key, tuple) else (key,)
    found = [i for i, k in enumerate(entries) if _is_scalar_mask(k)]
    if not found:
        return key, None, (None, None), key
    if len(found) > 1 or any(_is_index_array(k) for i, k in enumerate(entries)
                             if i not in found):
        raise IndexError("a 0-d logical index can only be combined with integers, slices, "
                         "None and ...")
    i = found[0]
    mask = entries[i]
    if isinstance(mask, Array) and mask._backend is not a._backend:
        raise BackendMismatchError(f"indexing: the mask lives on {mask.backend!r} and the "
                                   f"Array on {a.backend!r}")
    holds = bool(mask.item())
    with_axis = entries[:i] + (None,) + entries[i + 1:]
    # its place in the result, by NumPy's rule for advanced indices (the mask, and the
    # integers along with it): where the first of them stands if they are side by side,
    # else first
    consumed = sum(1 for k in entries if k is not None and k is not Ellipsis and k is not mask)
    expanded = []
    for k in entries:
        expanded.extend([slice(None)] * (a.ndim - consumed) if k is Ellipsis else [k])
    advanced = [j for j, k in enumerate(expanded)
                if k is mask or isinstance(k, numbers.Integral)]

    def made_by(keys):
        return sum(1 for k in keys if k is None or isinstance(k, slice))
    axis = 0
    if advanced[-1] - advanced[0] == len(advanced) - 1:
        axis = made_by(expanded[:advanced[0]])
    # and where the None in its stead puts it
    placed = made_by(expanded[:next(j for j, k in enumerate(expanded) if k is mask)])
    return with_axis, holds, (placed, axis), entries[:i] + entries[i + 1:]


def _single_full_mask(a, key):
    """For ``A[mask]`` with a logical mask of A's shape: the int64 flat indices, else None."""
    if isinstance(key, tuple):
        if len(key) != 1:
            return None
        key = key[0]
    if isinstance(key, Array):
        if not _dtypes.is_bool(key.dtype) or key.shape != a.shape or a.ndim < 2:
            return None
        mask = key
    elif isinstance(key, np.ndarray) and key.dtype == np.bool_ and key.shape == a.shape and a.ndim >= 2:
        mask = from_numpy(key, a._backend)
    else:
        return None
    if mask._backend is not a._backend:
        raise BackendMismatchError(f"indexing: the mask lives on {mask.backend!r} and the "
                                   f"Array on {a.backend!r}")
    return Array._wrap(a._backend, a._backend.flatnonzero(mask._live))


def _is_index_array(k):
    return isinstance(k, (Array, np.ndarray, list))


def _normalize_key(a, key):
    """Key -> (per-axis tuple for the backend, function giving the indexed shape)."""
    if not isinstance(key, tuple):
        key = (key,)
    shape = a.shape
    backend = a._backend
    entries = []
    for k in key:
        if isinstance(k, (bool, np.bool_)):
            raise IndexError("a Python bool as an index is not supported; use a logical Array")
        if k is Ellipsis or k is None or isinstance(k, slice):
            entries.append(k)
        elif isinstance(k, numbers.Integral):
            entries.append(int(k))
        elif _is_index_array(k):
            entries.append(_index_array(k, backend))
        else:
            raise IndexError(f"invalid index {k!r} of type {type(k).__name__}: use integers, "
                             f"slices, None, ..., integer arrays or logical masks")
    if sum(e is Ellipsis for e in entries) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    consumed = sum(e.ndim if isinstance(e, Array) and _dtypes.is_bool(e.dtype) else
                   (0 if e is None or e is Ellipsis else 1) for e in entries)
    if consumed > a.ndim:
        raise IndexError(f"too many indices for an Array of shape {shape}: {consumed} were given")
    if Ellipsis in [e for e in entries if not isinstance(e, Array)]:
        i = next(j for j, e in enumerate(entries) if e is Ellipsis and not isinstance(e, Array))
        entries[i:i + 1] = [slice(None)] * (a.ndim - consumed)
    else:
        entries += [slice(None)] * (a.ndim - consumed)
    has_arrays = any(isinstance(e, Array) for e in entries)
    norm = []
    axis = 0
    for e in entries:
        if e is None:
            norm.append(None)
            continue
        if isinstance(e, Array) and _dtypes.is_bool(e.dtype):
            covered = shape[axis:axis + e.ndim]
            if e.shape != covered:
                raise IndexError(f"logical index of shape {e.shape} does not match the indexed "
                                 f"Array's shape {covered} at axis {axis}")
            norm.extend(_mask_to_indices(e, covered))
            axis += e.ndim
            continue
        n = shape[axis]
        if isinstance(e, int):
            if not -n <= e < n:
                raise IndexError(f"index {e} is out of bounds for axis {axis} with size {n}")
            e %= n
            norm.append(from_numpy(np.asarray(e, np.int64), backend) if has_arrays else e)
        elif isinstance(e, slice):
            start, stop, step = e.indices(n)
            norm.append(slice(start, stop, step))
        else:
            norm.append(_checked_indices(e, n, axis))
        axis += 1

    def indexed_shape():
        probe = np.broadcast_to(np.empty((), np.uint8), shape)
        probe_key = tuple(np.zeros(k.shape, np.intp) if isinstance(k, Array) else
                          (numpy_slice(k) if isinstance(k, slice) else k) for k in norm)
        return probe[probe_key].shape
    return tuple(norm), indexed_shape


def _index_array(k, backend):
    if isinstance(k, Array):
        if k._backend is not backend:
            raise BackendMismatchError(f"indexing: the index lives on {k.backend!r} and the "
                                       f"Array on {backend.name!r}")
        if not (_dtypes.is_integer(k.dtype) or _dtypes.is_bool(k.dtype)):
            raise IndexError(f"arrays used as indices must be integer or logical, not {k.dtype}")
        return k
    x = np.asarray(k)
    if x.size == 0 and x.dtype.kind == "f":
        x = x.astype(np.int64)     # [] is an empty integer index, as in NumPy
    if x.dtype.kind not in "biu":
        raise IndexError(f"arrays used as indices must be integer or logical, not {x.dtype}")
    if x.dtype.kind in "iu":
        x = x.astype(np.int64)
    return from_numpy(x, backend)


def _checked_indices(idx, n, axis):
    """int64 indices in [0, n): negative ones wrapped, out-of-range ones an IndexError."""
    if idx.dtype != np.int64:
        idx = idx.astype(np.int64)
    if idx.size:
        lo = int(reduce_op("min", idx).item())
        hi = int(reduce_op("max", idx).item())
        if lo < -n or hi >= n:
            bad = lo if lo < -n else hi
            raise IndexError(f"index {bad} is out of bounds for axis {axis} with size {n}")
        if lo < 0:
            idx = map_op("where", map_op("less", idx, 0), map_op("add", idx, n), idx)
    return idx


def _mask_to_indices(mask, covered):
    """A k-d logical mask -> k int64 index arrays (NumPy's nonzero), in row-major order."""
    backend = mask._backend
    flat = Array._wrap(backend, backend.flatnonzero(mask.reshape(-1)._live))
    out = []
    for j, n in enumerate(covered):
        stride = int(np.prod(covered[j + 1:], dtype=np.int64))
        idx = flat if stride == 1 else map_op("floor_divide", flat, stride)
        out.append(map_op("mod", idx, n) if j > 0 else idx)
    return out


def _setitem_value(a, value, target_shape):
    if isinstance(value, Array):
        if value._backend is not a._backend:
            raise BackendMismatchError(f"assignment: the value lives on {value.backend!r} and "
                                       f"the Array on {a.backend!r}")
        v = value
    elif isinstance(value, _PYTHON_SCALARS) or (isinstance(value, np.generic) and np.ndim(value) == 0):
        dtype = np.dtype(a.dtype)
        try:
            if dtype.kind in "iu" and not isinstance(value, (bool, np.bool_)):
                # the number itself (a NumPy scalar's C cast would wrap 2**40 + 5 to 5 in
                # int32), truncated toward zero as the conversion does, must fit
                number = int(value.item() if isinstance(value, np.generic) else value)
                _check_scalar_fits(number, dtype, "its value")
            return dtype.type(value).item()
        except (OverflowError, ValueError) as exc:
            raise OverflowError(f"assignment: {value!r} does not fit the Array's dtype "
                                f"{a.dtype}: {exc}") from None
    else:
        x = np.asarray(value)
        if x.dtype.kind not in "biuf":
            raise DtypeError(f"assignment: cannot assign a value of dtype {x.dtype}")
        if x.dtype not in _dtypes.SUPPORTED:
            x = x.astype(a.dtype)
        v = from_numpy(x, a._backend)
    extra = v.ndim - len(target_shape)
    if extra > 0 and all(n == 1 for n in v.shape[:extra]):
        v = v.reshape(v.shape[extra:])      # A(1, :) = row: leading 1s go, as in NumPy
    try:
        ok = np.broadcast_shapes(v.shape, target_shape) == tuple(target_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"assignment: could not broadcast a value of shape {v.shape} into "
                         f"the indexed shape {tuple(target_shape)}")
    if v.dtype != a.dtype:
        v = v.astype(a.dtype)
    return v        # the Array, not its native: a dropped temporary would free the buffer
