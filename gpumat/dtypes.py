"""The dtypes gpumat supports, their MATLAB names, and NumPy-exact result-type rules."""
import functools

import numpy as np

from .errors import DtypeError

#: Every dtype an Array may hold.  float32 ("single") is the default.
SUPPORTED = tuple(np.dtype(t) for t in (
    np.bool_, np.uint8, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64))

ALIASES = {
    "single": np.float32, "double": np.float64, "logical": np.bool_,
    "float": np.float32,  # MATLAB users write 'float' for single precision
}

DEFAULT = np.dtype(np.float32)


def normalize(dtype, *, allow_none=False):
    """Return the NumPy dtype for a gpumat/MATLAB/NumPy dtype name; TypeError if unsupported."""
    if dtype is None:
        if allow_none:
            return None
        return DEFAULT
    if isinstance(dtype, str) and dtype.lower() in ALIASES:
        return np.dtype(ALIASES[dtype.lower()])
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DtypeError(f"unknown dtype {dtype!r}") from None
    if not dt.isnative:
        dt = dt.newbyteorder("=")      # '>f4' holds float32 values: Arrays keep them natively
    if dt not in SUPPORTED:
        names = ", ".join(str(t) for t in SUPPORTED)
        raise DtypeError(f"dtype {dt} is not supported by gpumat (supported: {names}; "
                         f"aliases: single, double, logical)")
    return dt


def is_float(dtype):
    return np.dtype(dtype).kind == "f"


def is_integer(dtype):
    return np.dtype(dtype).kind in "iu"


def is_bool(dtype):
    return np.dtype(dtype).kind == "b"


def _dummy(arg):
    """A zero-size NumPy stand-in for an operand: arrays by dtype, Python scalars stay weak."""
    if isinstance(arg, np.dtype):
        return np.empty(0, arg)
    return arg


@functools.lru_cache(maxsize=4096)
def ufunc_result(ufunc_name, operand_kinds):
    """Result dtype NumPy gives for ``ufunc(*operands)``.

    ``operand_kinds`` holds np.dtype for arrays and the Python type (bool/int/float) for
    scalars, so NEP 50 weak-scalar promotion is reproduced exactly by asking NumPy itself.
    """
    dummies = [np.empty(0, k) if isinstance(k, np.dtype) else k(0) for k in operand_kinds]
    with np.errstate(all="ignore"):
        out = getattr(np, ufunc_name)(*dummies)
    if isinstance(out, tuple):
        out = out[0]
    return np.dtype(out.dtype) if hasattr(out, "dtype") else np.dtype(type(out))


@functools.lru_cache(maxsize=1024)
def reduction_result(func_name, dtype):
    """Result dtype of ``numpy.<func_name>`` over an array of ``dtype`` (e.g. sum(int32) -> int64)."""
    with np.errstate(all="ignore"):
        return np.dtype(getattr(np, func_name)(np.zeros(1, dtype)).dtype)


def check_result(dtype, what):
    """Reject a NumPy result dtype gpumat cannot hold (e.g. int16 from an odd promotion)."""
    dt = np.dtype(dtype)
    if dt not in SUPPORTED:
        raise DtypeError(f"{what} would produce dtype {dt}, which gpumat does not support")
    return dt
