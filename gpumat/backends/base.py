"""The interface every backend implements, and the op tables shared by all of them.

A backend works on its own *native* array objects (``numpy.ndarray`` on cpu, ``cupy.ndarray``
on cuda, ``CLBuffer`` on opencl).  Every native carries ``.shape``, ``.dtype``, ``.size`` and
``.nbytes`` and is C-contiguous.  Methods return *new* natives that share memory with nothing
except where stated (``reshape``), so the Array layer's copy-on-write bookkeeping stays exact.

The Array layer (``gpumat/array.py``) has already validated arguments before calling in here:
shapes broadcast, dtypes are supported, axes are normalised to non-negative ints, index arrays
are in range and non-negative.  A backend therefore implements NumPy's semantics for valid
input, and turns only device failures (out of memory, build errors) into gpumat errors.
"""
import numpy as np

#: Elementwise ops: name -> (number of inputs, NumPy ufunc or function name).
#: ``compute`` dtype = the dtype inputs are converted to before the op, ``out`` dtype = result.
MAP_OPS = {
    # arithmetic
    "add": (2, "add"), "subtract": (2, "subtract"), "multiply": (2, "multiply"),
    "divide": (2, "true_divide"), "floor_divide": (2, "floor_divide"), "mod": (2, "remainder"),
    "power": (2, "power"), "maximum": (2, "maximum"), "minimum": (2, "minimum"),
    # comparisons -> bool (compute dtype = promoted input dtype)
    "equal": (2, "equal"), "not_equal": (2, "not_equal"), "less": (2, "less"),
    "less_equal": (2, "less_equal"), "greater": (2, "greater"), "greater_equal": (2, "greater_equal"),
    # logical / bitwise
    "logical_and": (2, "logical_and"), "logical_or": (2, "logical_or"),
    "logical_xor": (2, "logical_xor"), "logical_not": (1, "logical_not"),
    "bitwise_and": (2, "bitwise_and"), "bitwise_or": (2, "bitwise_or"),
    "bitwise_xor": (2, "bitwise_xor"), "invert": (1, "invert"),
    # unary maths
    "negative": (1, "negative"), "abs": (1, "absolute"), "exp": (1, "exp"), "log": (1, "log"),
    "sqrt": (1, "sqrt"), "tanh": (1, "tanh"), "sigmoid": (1, None), "sign": (1, "sign"),
    "floor": (1, "floor"), "ceil": (1, "ceil"), "round": (1, "rint"), "isnan": (1, "isnan"),
    "isinf": (1, "isinf"), "isfinite": (1, "isfinite"), "square": (1, "square"),
    "reciprocal": (1, "reciprocal"), "sin": (1, "sin"), "cos": (1, "cos"),
    "log1p": (1, "log1p"), "expm1": (1, "expm1"),
    # ternary
    "where": (3, None),   # where(cond, a, b); compute dtype is result_type(a, b)
    "clip": (3, None),    # clip(x, lo, hi) = minimum(maximum(x, lo), hi), NaN-propagating
}

#: Reductions: name -> NumPy function giving the semantics (dtype rules included).
REDUCE_OPS = {"sum": "sum", "prod": "prod", "max": "max", "min": "min", "any": "any",
              "all": "all", "argmax": "argmax", "argmin": "argmin"}

#: Random distributions, identical bits on every backend (see gpumat/random.py).
RANDOM_KINDS = ("uniform", "normal", "integers")


class Backend:
    """Base class.  Subclasses set ``name`` and implement every method below."""

    name = "abstract"
    #: False where the device cannot hold float64 (the Array layer raises DtypeError then).
    supports_float64 = True

    # ---- identity -------------------------------------------------------------------------
    @property
    def device(self):
        """Human-readable description of the device, e.g. 'NVIDIA H100 (cuda:0)'."""
        raise NotImplementedError

    # ---- memory ---------------------------------------------------------------------------
    def empty(self, shape, dtype):
        raise NotImplementedError

    def from_numpy(self, x):
        """Upload a C-contiguous NumPy array of a supported dtype."""
        raise NotImplementedError

    def to_numpy(self, a):
        raise NotImplementedError

    def free(self, a):
        """Release the memory of native ``a`` now (it is never used again)."""
        raise NotImplementedError

    def memory_info(self):
        """{'bytes_in_use': int, 'bytes_held': int} (held = kept by a pool for reuse)."""
        raise NotImplementedError

    def synchronize(self):
        """Wait until queued work is done (for timing)."""

    # ---- creation -------------------------------------------------------------------------
    def full(self, shape, value, dtype):
        raise NotImplementedError

    def arange(self, start, step, n, dtype):
        """``start + step * i`` for i in range(n), computed in float64/int64 then cast."""
        raise NotImplementedError

    def random(self, kind, shape, dtype, seed, counter, low=0, span=1):
        """Counter-based random numbers matching ``gpumat.random.reference`` bit for bit
        (uniform, integers) or to float rounding (normal).  ``integers`` draws
        ``low + floor(u * span)`` with ``span <= 2**32``."""
        raise NotImplementedError

    # ---- layout ---------------------------------------------------------------------------
    def reshape(self, a, shape):
        """A native with the new shape *sharing a's memory* (a is contiguous)."""
        raise NotImplementedError

    def copy(self, a):
        raise NotImplementedError

    def astype(self, a, dtype):
        raise NotImplementedError

    def permute(self, a, axes):
        """numpy.transpose(a, axes), materialised."""
        raise NotImplementedError

    def broadcast_to(self, a, shape):
        """numpy.broadcast_to(a, shape), materialised."""
        raise NotImplementedError

    def concatenate(self, arrays, axis, dtype):
        """numpy.concatenate(arrays, axis) with every input cast to ``dtype``."""
        raise NotImplementedError

    # ---- elementwise, reductions, scans ---------------------------------------------------
    def map(self, op, args, out_dtype, compute_dtype):
        """Broadcasting elementwise op from MAP_OPS.  ``args`` are natives or Python scalars;
        inputs are converted to ``compute_dtype``, the result has ``out_dtype``."""
        raise NotImplementedError

    def reduce(self, op, a, axis, keepdims):
        """REDUCE_OPS over one non-negative ``axis`` or all elements (axis=None), with NumPy's
        result dtypes (sum(int32) -> int64, argmax -> int64, NaN propagates in max/min,
        ties in argmax/argmin go to the first index).  ``a`` is never empty here for
        max/min/argmax/argmin (the Array layer rejects that)."""
        raise NotImplementedError

    def cumsum(self, a, axis):
        """numpy.cumsum(a, axis) with NumPy's result dtype."""
        raise NotImplementedError

    def matmul(self, a, b, out_dtype):
        """numpy.matmul semantics for numeric dtypes (inputs cast to out_dtype)."""
        raise NotImplementedError

    def sort(self, a, axis, descending):
        """(values, int64 indices) along ``axis``; ties keep their original order (stable);
        NaNs go last in ascending order and first in descending order."""
        raise NotImplementedError

    # ---- indexing -------------------------------------------------------------------------
    def getitem(self, a, key):
        """NumPy indexing with a normalised ``key``: a tuple with one entry per indexed axis,
        each an int (in range, non-negative), a slice (from ``slice.indices``, so start/stop/
        step are ints), ``None`` (new axis), or a native int64 array (in range, non-negative).
        Boolean masks were already turned into int64 arrays.  Returns a new native."""
        raise NotImplementedError

    def setitem(self, a, key, value):
        """In-place ``a[key] = value``; ``key`` as in getitem, ``value`` a native already cast
        to a.dtype and broadcastable to the indexed shape, or a Python scalar."""
        raise NotImplementedError

    def flatnonzero(self, a):
        """numpy.flatnonzero(a) as an int64 native (MATLAB find, 0-based)."""
        raise NotImplementedError

    # ---- kernel entry points --------------------------------------------------------------
    def pack_signs(self, a):
        """Pack signs of float32 ``a`` along its last axis into uint32 words: bit j of word w
        is 1 iff a[..., 32*w + j] >= 0 (NaN -> 0); padding bits are 0."""
        raise NotImplementedError


def numpy_slice(s):
    """A normalised slice (from ``slice.indices``) that NumPy reads the same way: with a
    negative step, a negative stop means 'run past index 0', not 'count from the end'."""
    if s.step < 0:
        if s.start < 0:                 # (-1, -1, -1): the empty range before index 0
            return slice(0, 0, 1)
        if s.stop < 0:
            return slice(s.start, None, s.step)
    return s


def numpy_key(key):
    """A normalised backend key as NumPy indexing accepts it."""
    return tuple(numpy_slice(k) if isinstance(k, slice) else k for k in key)
