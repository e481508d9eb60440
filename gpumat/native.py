"""Entry points to the compiled CPU kernels (gpumat._native), with NumPy twins.

`pack_signs` calls the nanobind module when it was built and imports, and
otherwise falls back to `pack_signs_numpy`, which gives bit-identical results;
the first fallback warns once with `NativeFallbackWarning`, saying why the
native module is missing.  This module itself imports without the compiled
module, so a source checkout that was never built still works (slowly).

The cpu backend's other native kernels (pooling, im2col / col2im, the direct
convolutions, bias + activation, batch normalisation and their gradients) are
reached through `kernels()`, which gives the module or, after the same one
warning, None; the backend then runs the NumPy twin, the array-module method it
inherits (gpumat/backends/cpu.py), or for the direct convolutions im2col + BLAS
(gpumat/backends/cpu_conv.py).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

__all__ = [
    "HAVE_NATIVE",
    "buffer_cache_bytes",
    "NativeFallbackWarning",
    "kernels",
    "native_import_error",
    "openmp_threads",
    "pack_signs",
    "pack_signs_numpy",
]


class NativeFallbackWarning(RuntimeWarning):
    """gpumat._native could not be imported; a slower NumPy path is used."""


try:
    from gpumat import _native  # type: ignore[attr-defined]
except ImportError as error:  # not built, or built for another Python
    _native = None
    native_import_error: str | None = f"{type(error).__name__}: {error}"
    import importlib.util
    try:    # say "never built" rather than Python's confusing partial-import message
        if importlib.util.find_spec("gpumat._native") is None:
            native_import_error = ("the extension module was never built here (a source "
                                   "checkout used without pip install)")
    except (ImportError, ValueError):
        pass
else:
    native_import_error = None

HAVE_NATIVE: bool = _native is not None

_fallback_warned = False
_fallback_lock = threading.Lock()


def _warn_fallback_once() -> None:
    global _fallback_warned
    with _fallback_lock:
        if _fallback_warned:
            return
        _fallback_warned = True
    warnings.warn(
        "gpumat._native could not be imported "
        f"({native_import_error}); using the pure-NumPy fallback, which is "
        "slower. Reinstall gpumat (pip install -e .) to build it.",
        NativeFallbackWarning,
        stacklevel=3,
    )


def _validate(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"pack_signs expects a numpy.ndarray of float32, got {type(x).__name__}"
        )
    if x.dtype != np.float32:
        raise TypeError(f"pack_signs expects a float32 array, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(
            "pack_signs expects an array of shape (..., n) with at least 1 "
            f"dimension, got shape {x.shape}"
        )
    return np.ascontiguousarray(x)


def pack_signs_numpy(x: np.ndarray) -> np.ndarray:
    """NumPy twin of the native kernel: same validation, same bits.

    Bit j (LSB first) of word w in the result is 1 iff x[..., 32*w + j] >= 0;
    NaN gives 0, -0.0 gives 1, padding bits are 0.  Result shape is
    (..., ceil(n / 32)), dtype uint32.
    """
    x = _validate(x)
    n = x.shape[-1]
    words = (n + 31) // 32
    leading = x.shape[:-1]
    # `>=` is False for NaN and True for -0.0, exactly as the C++ compare.
    bits = x >= 0
    if words * 32 != n:
        padding = np.zeros(leading + (words * 32 - n,), dtype=bool)
        bits = np.concatenate([bits, padding], axis=-1)
    # packbits with bitorder="little" puts element j of each group of 8 in
    # bit j of a byte; four such bytes read as a little-endian uint32 are
    # the word with element j in bit j.
    packed_bytes = np.packbits(bits, axis=-1, bitorder="little")
    packed_bytes = np.ascontiguousarray(packed_bytes.reshape(leading + (words, 4)))
    return packed_bytes.view("<u4").reshape(leading + (words,)).astype(np.uint32, copy=False)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack the signs of a float32 array of shape (..., n) into uint32 words.

    Returns a new uint32 array of shape (..., ceil(n / 32)); see
    `pack_signs_numpy` for the bit layout.  Raises TypeError for a dtype other
    than float32 and ValueError for a 0-dimensional array.
    """
    x = _validate(x)
    if _native is not None:
        return _native.pack_signs(x)
    _warn_fallback_once()
    return pack_signs_numpy(x)


def kernels():
    """The compiled module gpumat._native, or None (warning once) where it is missing."""
    if _native is None:
        _warn_fallback_once()
    return _native


def buffer_cache_bytes() -> int:
    """Bytes of freed native results kept for reuse (0 without the module)."""
    if _native is None:
        return 0
    return int(_native.buffer_cache_bytes())


def openmp_threads() -> int:
    """Threads the native kernels may use: OpenMP's maximum, 1 without it."""
    if _native is None:
        return 1
    return int(_native.openmp_threads())
