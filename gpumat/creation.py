"""Creating Arrays: from data (gm.array, gm.gpu_array) and MATLAB's constructors."""
import math
import numbers

import numpy as np

from . import backends as _backends
from . import dtypes as _dtypes
from . import random as _random
from .array import Array, _check_backend_dtype, _shape_args, from_numpy


def _python_data_dtype(x):
    """Python data follows the library's defaults: floats -> single, ints -> int64."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu" and arr.dtype not in _dtypes.SUPPORTED:
        return arr.astype(np.int64)
    return arr


def array(x, dtype=None, backend=None):
    """An Array holding ``x`` (Array, NumPy array, list or scalar) on ``backend``.

    NumPy arrays keep their dtype (bit-exact); Python floats become single (the default float,
    as in PyTorch) and Python ints int64, unless ``dtype`` says otherwise.
    """
    target = _backends.get(backend)
    if isinstance(x, Array):
        out = x.to(target)
        return out if dtype is None else out.astype(dtype)
    if isinstance(x, (np.ndarray, np.generic)):
        host = np.asarray(x)
    else:
        host = _python_data_dtype(x)
    if host.dtype == object or host.dtype.kind not in "biuf":
        raise _dtypes.DtypeError(f"cannot make an Array from data of dtype {host.dtype}")
    if dtype is not None:
        host = host.astype(_dtypes.normalize(dtype))
    return from_numpy(host, target)


def gpu_array(x, dtype=None):
    """``x`` on the default GPU backend (cuda, else opencl); on a machine with neither, on cpu
    with a warning (once) that says why."""
    gpu = _backends.default_gpu()
    if gpu is None:
        reasons = "; ".join(f"{name}: {info['reason']}" for name, info in _backends.report().items()
                            if name in _backends.GPU_NAMES)
        _backends.warn_once("gpu_array-fallback",
                            f"gpu_array: no GPU backend is available ({reasons}); using cpu")
        gpu = _backends.get("cpu")
    return array(x, dtype=dtype, backend=gpu)


def _creation_target(dtype, backend):
    target = _backends.get(backend)
    dtype = _dtypes.normalize(dtype)
    _check_backend_dtype(target, dtype)
    return target, dtype


def empty(*shape, dtype="single", backend=None):
    target, dtype = _creation_target(dtype, backend)
    return Array._wrap(target, target.empty(_shape_args(shape), dtype))


def full(*shape_and_value, value=None, dtype="single", backend=None):
    """``gm.full((3, 4), 7.5)`` or ``gm.full(3, 4, value=7.5)``."""
    if value is None:
        if len(shape_and_value) < 2:
            raise TypeError("full needs a shape and a value: gm.full((3, 4), 7.5)")
        *shape, value = shape_and_value
    else:
        shape = shape_and_value
    target, dtype = _creation_target(dtype, backend)
    if isinstance(value, Array):
        value = value.item()
    return Array._wrap(target, target.full(_shape_args(tuple(shape)), dtype.type(value).item(), dtype))


def zeros(*shape, dtype="single", backend=None):
    """Zeros of the given shape: ``zeros(3, 4)`` or ``zeros((3, 4))`` (``zeros(3)`` is a vector
    of 3, following NumPy, not MATLAB's 3-by-3)."""
    return full(*shape, value=0, dtype=dtype, backend=backend)


def ones(*shape, dtype="single", backend=None):
    return full(*shape, value=1, dtype=dtype, backend=backend)


def _random_array(kind, shape, dtype, backend, low=0, span=1):
    target, dtype = _creation_target(dtype, backend)
    shape = _shape_args(shape)
    n = int(np.prod(shape, dtype=np.int64))
    key, counter = _random.GLOBAL.take(n)
    try:
        native = target.random(kind, shape, dtype, key, counter, low, span)
    except BaseException:
        _random.GLOBAL.give_back(key, counter, n)
        raise
    return Array._wrap(target, native)


def rand(*shape, dtype="single", backend=None):
    """Uniform [0, 1) numbers; the same numbers on every backend after the same gm.seed."""
    if not _dtypes.is_float(_dtypes.normalize(dtype)):
        raise _dtypes.DtypeError(f"rand makes floating-point numbers, not {dtype}")
    return _random_array("uniform", shape, dtype, backend)


def randn(*shape, dtype="single", backend=None):
    """Standard normal numbers (Box-Muller on the shared counter-based generator)."""
    if not _dtypes.is_float(_dtypes.normalize(dtype)):
        raise _dtypes.DtypeError(f"randn makes floating-point numbers, not {dtype}")
    return _random_array("normal", shape, dtype, backend)


def randi(limits, *shape, dtype="int64", backend=None):
    """Random integers, MATLAB style: ``randi(imax, ...)`` draws from 1..imax,
    ``randi((lo, hi), ...)`` from lo..hi inclusive."""
    if isinstance(limits, (tuple, list)):
        if len(limits) != 2:
            raise ValueError(f"randi: limits must be imax or (lo, hi), got {limits!r}")
        low, high = (int(v) for v in limits)
    else:
        low, high = 1, int(limits)
    if high < low:
        raise ValueError(f"randi: empty range [{low}, {high}]")
    span = high - low + 1
    if span > 2 ** 32:
        raise ValueError(f"randi: the range [{low}, {high}] is wider than 2**32 values")
    dt = _dtypes.normalize(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if low < info.min or high > info.max:
            raise OverflowError(f"randi: [{low}, {high}] does not fit {dt}")
    return _random_array("integers", shape, dtype, backend, low, span)


def seed(value):
    """Reset the shared random generator (affects every backend identically)."""
    _random.GLOBAL.seed(value)


def eye(n, m=None, k=0, dtype="single", backend=None):
    """Identity-like matrix: ones on diagonal ``k`` of an n-by-m matrix."""
    m = n if m is None else m
    _shape_args((n, m))
    rows = arange(n, dtype="int64", backend=backend).reshape(n, 1)
    cols = arange(m, dtype="int64", backend=backend).reshape(1, m)
    return (cols - rows == k).astype(dtype)


def _infer_range_dtype(values, dtype):
    if dtype is not None:
        return _dtypes.normalize(dtype)
    if all(isinstance(v, numbers.Integral) for v in values):
        return np.dtype(np.int64)
    return _dtypes.DEFAULT


def arange(start, stop=None, step=1, dtype=None, backend=None):
    """NumPy's arange (``stop`` excluded); integers give int64, floats single."""
    if stop is None:
        start, stop = 0, start
    if step == 0:
        raise ValueError("arange: step must not be zero")
    dtype = _infer_range_dtype((start, stop, step), dtype)
    n = max(0, math.ceil((stop - start) / step))
    target, dtype = _creation_target(dtype, backend)
    return Array._wrap(target, target.arange(start, step, n, dtype))


def colon(a, b, step=1, dtype=None, backend=None):
    """MATLAB's ``a:step:b`` -- ``b`` included when the steps land on it."""
    if step == 0:
        raise ValueError("colon: step must not be zero")
    n = math.floor((b - a) / step + 1e-10) + 1
    dtype = _infer_range_dtype((a, b, step), dtype)
    target, dtype = _creation_target(dtype, backend)
    return Array._wrap(target, target.arange(a, step, max(n, 0), dtype))


def linspace(start, stop, num=100, dtype="single", backend=None):
    """``num`` evenly spaced values from start to stop inclusive (NumPy's formula)."""
    num = int(num)
    if num < 0:
        raise ValueError(f"linspace: num must be non-negative, got {num}")
    target, dtype = _creation_target(dtype, backend)
    step = (stop - start) / (num - 1) if num > 1 else 0.0
    out = Array._wrap(target, target.arange(start, step, num, dtype))
    if num > 1:
        out[num - 1] = stop      # exact endpoint, as NumPy guarantees
    return out
