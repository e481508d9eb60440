"""Entry points to the compiled CPU kernels (gpumat._native), with NumPy twins.

`pack_signs` calls the nanobind module when it was built and imports, and
otherwise falls back to `pack_signs_numpy`, which gives bit-identical results;
the first fallback warns once with `NativeFallbackWarning`, saying why the
native module is missing.  This module itself imports without the compiled
module, so a source checkout that was never built still works (slowly).

The XNOR-popcount kernels of binarised networks work the same way: `pack_conv_input`
(an NCHW float32 input's channel signs packed per pixel), `xnor_gemm` (the products of packed
+-1 rows) and `xnor_conv2d` (the binary convolution, exact at zero-padded borders) call the
module and otherwise their NumPy twins (`*_numpy`, bit-identical, on np.bitwise_count).
`window_mean_numpy` is the twin of the K (XNOR-Net's window mean of the channel mean |x|)
that the module's xnor_conv2d makes inside its pass with ``window_mean=True``.

The cpu backend's other native kernels (pooling, im2col / col2im, the direct
convolutions, bias + activation, batch normalisation and their gradients) are
reached through `kernels()`, which gives the module or, after the same one
warning, None; the backend then runs the NumPy twin, the array-module method it
inherits (gpumat/backends/cpu.py), or for the direct convolutions im2col + BLAS
(gpumat/backends/cpu_conv.py).
"""

from __future__ import annotations

import os
import re
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
    "pack_conv_input",
    "pack_conv_input_numpy",
    "pack_signs",
    "pack_signs_numpy",
    "window_mean_numpy",
    "xnor_conv2d",
    "xnor_conv2d_numpy",
    "xnor_gemm",
    "xnor_gemm_numpy",
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

#: the names GPUMAT_CPU_ISA takes (kernels/cpu/isa.hpp and the ladders of xnor.hpp and
#: direct_conv.hpp), and the native module's other settings
CPU_ISA_NAMES = ("baseline", "default", "portable", "avx2", "avx512", "avx512bw",
                 "avx512vpopcntdq")


def environment_problems(environ=os.environ):
    """What is wrong with the native module's environment variables: the module reads them
    once, in C++, and passes over a value it cannot use (the best instruction set, the CPU
    count, the default linger), so a typo would go unnoticed."""
    found = []
    isa = environ.get("GPUMAT_CPU_ISA")
    if isa is not None and isa not in CPU_ISA_NAMES:
        found.append(f"GPUMAT_CPU_ISA={isa!r} is not one of {', '.join(CPU_ISA_NAMES)}; "
                     f"the best instruction set is used")
    threads = environ.get("GPUMAT_NUM_THREADS")
    first = (threads or "").split(",")[0].strip()       # "4,2" (OpenMP's nesting) means 4
    if threads and not (first.isdigit() and int(first) >= 1):
        # what strtol, which reads it, makes of it
        prefix = re.match(r"\s*[+-]?\d+", threads)
        read = int(prefix.group()) if prefix else 0
        found.append(f"GPUMAT_NUM_THREADS={threads!r} is not a positive integer; "
                     + (f"it is read as {read}" if read >= 1 else "the usable CPUs are used"))
    linger = environ.get("GPUMAT_POOL_LINGER_US")
    if linger is not None and not (linger.strip().isdigit() and int(linger) < 2**31):
        found.append(f"GPUMAT_POOL_LINGER_US={linger!r} is not a whole number of "
                     f"microseconds below 2**31")
    return found


if HAVE_NATIVE:
    for _problem in environment_problems():
        warnings.warn(f"gpumat: {_problem}", RuntimeWarning, stacklevel=2)

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


# ---- XNOR-popcount ------------------------------------------------------------------------------

_WORD_BITS = 32
#: the largest k (and kh * kw * channels) the kernels take: their int32 sums stay far from
#: overflowing (the native module has the same limit)
MAX_XNOR_BITS = 1 << 28
#: elements of the NumPy twins' XOR temporaries, per chunk
_TWIN_CHUNK = 1 << 22

if hasattr(np, "bitwise_count"):                      # NumPy >= 2.0
    _popcount = np.bitwise_count
else:                                                 # pragma: no cover (NumPy 1.x)
    _BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def _popcount(words):
        counts = _BYTE_COUNTS[np.ascontiguousarray(words).view(np.uint8)]
        return counts.reshape(words.shape + (4,)).sum(axis=-1, dtype=np.uint8)


def _words(bits):
    return (bits + _WORD_BITS - 1) // _WORD_BITS


def _tail_mask(bits):
    rest = bits % _WORD_BITS
    return np.uint32(0xFFFFFFFF if rest == 0 else (1 << rest) - 1)


def _float_input(x, what):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: x must be a numpy.ndarray of float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{what}: x must be float32, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{what}: x must be 4-dimensional (N, C, H, W), got shape {x.shape}")
    return np.ascontiguousarray(x)


def _packed(a, what, name, layout):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what}: {name} must be a numpy.ndarray of uint32 (packed signs), got "
                        f"{type(a).__name__}")
    if a.dtype != np.uint32:
        raise TypeError(f"{what}: {name} must be uint32 (packed signs), got dtype {a.dtype}")
    if a.ndim != len(layout):
        raise ValueError(f"{what}: {name} must be {len(layout)}-dimensional "
                         f"({', '.join(layout)}), got shape {a.shape}")
    return np.ascontiguousarray(a)


def _count(value, what, name, minimum, maximum=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: {name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{what}: {name} must be {bound}, got {value}")
    return value


def _int_pair(value, what, name, minimum):
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{what}: {name} must be an int or a pair of ints, got {value!r}")
    return tuple(_count(v, what, name, minimum) for v in pair)


def _out_dtype(out_dtype, what):
    try:
        dtype = np.dtype(out_dtype)
    except TypeError:
        raise TypeError(f"{what}: out_dtype must be int32 or float32, got {out_dtype!r}") from None
    if dtype not in (np.dtype(np.int32), np.dtype(np.float32)):
        raise TypeError(f"{what}: out_dtype must be int32 or float32, got {dtype}")
    return dtype


def _check_gemm(a, b, k, out_dtype):
    what = "xnor_gemm"
    a = _packed(a, what, "a", ("M", "ceil(k/32)"))
    b = _packed(b, what, "b", ("N", "ceil(k/32)"))
    k = _count(k, what, "k", 1, MAX_XNOR_BITS)
    words = _words(k)
    if a.shape[1] != words or b.shape[1] != words:
        raise ValueError(f"{what}: k = {k} needs {words} words per row, but a has shape "
                         f"{a.shape} and b has shape {b.shape}")
    return a, b, k, _out_dtype(out_dtype, what)


def _check_conv(xp, wp, channels, stride, padding, out_hw, out_dtype):
    what = "xnor_conv2d"
    xp = _packed(xp, what, "xp", ("N", "H", "W", "ceil(C/32)"))
    wp = _packed(wp, what, "wp", ("O", "kh", "kw", "ceil(C/32)"))
    channels = _count(channels, what, "channels", 1)
    stride = _int_pair(stride, what, "stride", 1)
    padding = _int_pair(padding, what, "padding", 0)
    out_dtype = _out_dtype(out_dtype, what)
    words = _words(channels)
    if xp.shape[3] != words or wp.shape[3] != words:
        raise ValueError(f"{what}: {channels} channels need {words} words per pixel, but xp has "
                         f"shape {xp.shape} and wp has shape {wp.shape}")
    n, h, w, _ = xp.shape
    kh, kw = wp.shape[1:3]
    if kh < 1 or kw < 1:
        raise ValueError(f"{what}: the kernel must be at least 1 x 1, got wp of shape {wp.shape}")
    if kh * kw * words * _WORD_BITS > MAX_XNOR_BITS:
        raise ValueError(f"{what}: the kernel {kh} x {kw} x {channels} channels is too large")
    if h + 2 * padding[0] < kh or w + 2 * padding[1] < kw:
        raise ValueError(f"{what}: the kernel {kh} x {kw} exceeds the padded input "
                         f"{h + 2 * padding[0]} x {w + 2 * padding[1]}")
    geometry = ((h + 2 * padding[0] - kh) // stride[0] + 1,
                (w + 2 * padding[1] - kw) // stride[1] + 1)
    if out_hw is None:
        out_hw = geometry
    out_hw = _int_pair(out_hw, what, "out_hw", 0)
    if out_hw != geometry:
        raise ValueError(f"{what}: out_hw is {out_hw} but this geometry gives {geometry}")
    return xp, wp, channels, stride, padding, out_hw, out_dtype


def _check_float_operands(what, given, shapes, out_dtype):
    """Epilogue operands {name: ndarray or None}, checked against ``shapes``: float32 arrays
    of those shapes, only with out_dtype float32; {name: C-contiguous array or None}."""
    present = [name for name, v in given.items() if v is not None]
    if present and out_dtype != np.float32:
        raise ValueError(f"{what}: {', '.join(present)} need out_dtype float32, got "
                         f"{out_dtype}")
    checked = dict.fromkeys(given)
    for name in present:
        v = given[name]
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{what}: {name} must be a numpy.ndarray of float32, got "
                            f"{type(v).__name__}")
        if v.dtype != np.float32:
            raise TypeError(f"{what}: {name} must be float32, got dtype {v.dtype}")
        if v.shape != shapes[name]:
            raise ValueError(f"{what}: {name} must have shape {shapes[name]}, got {v.shape}")
        checked[name] = np.ascontiguousarray(v)
    return checked


def _check_scales(pixel_scale, filter_scale, bias, out_dtype, n, o, out_hw, residual=None):
    """The epilogue operands of xnor_conv2d, checked: float32 (N, OH, OW), (O,), (O,),
    (N, O, OH, OW) or None, only with out_dtype float32; C-contiguous copies where needed."""
    checked = _check_float_operands(
        "xnor_conv2d", {"pixel_scale": pixel_scale, "filter_scale": filter_scale,
                        "bias": bias, "residual": residual},
        {"pixel_scale": (n,) + tuple(out_hw), "filter_scale": (o,), "bias": (o,),
         "residual": (n, o) + tuple(out_hw)}, out_dtype)
    return tuple(checked.values())


def _apply_scales(out, pixel_scale, filter_scale, bias, residual=None):
    """(((out * pixel_scale) * filter_scale) + bias) + residual in float32, in place, each
    left out where None: the NumPy expression the native epilogue matches bit for bit."""
    if pixel_scale is not None:
        np.multiply(out, pixel_scale[:, None], out=out)
    if filter_scale is not None:
        np.multiply(out, filter_scale[None, :, None, None], out=out)
    if bias is not None:
        np.add(out, bias[None, :, None, None], out=out)
    if residual is not None:
        np.add(out, residual, out=out)
    return out


def _mean_abs_numpy(x):
    """The mean of |x| over axis 1 as the native kernel computes it: a float32 sum in channel
    order 0, 1, ..., C - 1 (from 0), then one division by C; (N, 1, H, W) float32."""
    n, c, h, w = x.shape
    total = np.zeros((n, 1, h, w), dtype=np.float32)
    for channel in range(c):
        total += np.abs(x[:, channel:channel + 1])
    with np.errstate(invalid="ignore"):          # C = 0: 0 / 0, NaN (NumPy's mean of nothing)
        return total / np.float32(c)


def pack_conv_input_numpy(x: np.ndarray, mean_abs: bool = False):
    """NumPy twin of the native `pack_conv_input`: same checks, same bits (and, with mean_abs,
    the same mean, bit for bit)."""
    x = _float_input(x, "pack_conv_input")
    n, c, h, w = x.shape
    words = _words(c)
    bits = np.zeros((n, h, w, words * _WORD_BITS), dtype=bool)
    # `>=` is False for NaN and True for -0.0, as the spec asks
    bits[..., :c] = (x >= 0).transpose(0, 2, 3, 1)
    packed = np.ascontiguousarray(np.packbits(bits, axis=-1, bitorder="little"))
    packed = packed.view("<u4").astype(np.uint32, copy=False).reshape(n, h, w, words)
    if mean_abs:
        return packed, _mean_abs_numpy(x)
    return packed


def pack_conv_input(x: np.ndarray, mean_abs: bool = False):
    """The channel signs of each pixel of a float32 (N, C, H, W) array, packed.

    Returns uint32 (N, H, W, ceil(C / 32)): bit j of word w of pixel (n, h, x) is 1 iff
    x[n, 32*w + j, h, x] >= 0 (NaN 0, -0.0 1); padding bits are 0.  The native kernel reads
    the NCHW floats and writes the words directly.  With mean_abs=True, returns
    (packed, mean) instead, mean float32 (N, 1, H, W) the mean over the channels of |x| (XNOR-
    Net's K before its box filter), computed in the same pass: summed in float32 in channel
    order 0..C-1, then divided by C (not multiplied by 1/C).  TypeError for another dtype,
    ValueError for another number of dimensions.
    """
    x = _float_input(x, "pack_conv_input")
    mean_abs = bool(mean_abs)
    if _native is not None:
        return _native.pack_conv_input(x, mean_abs)
    _warn_fallback_once()
    return pack_conv_input_numpy(x, mean_abs)


def _masked(a, mask):
    """a with its last word masked (a copy where the mask clears anything)."""
    if a.size and mask != 0xFFFFFFFF:
        a = a.copy()
        a[..., -1] &= mask
    return a


def _check_gemm_scales(row_scale, col_scale, bias, out_dtype, m, n):
    """xnor_gemm's epilogue operands, checked: float32 (M,), (N,), (N,) or None, only with
    out_dtype float32; C-contiguous copies where needed."""
    checked = _check_float_operands(
        "xnor_gemm", {"row_scale": row_scale, "col_scale": col_scale, "bias": bias},
        {"row_scale": (m,), "col_scale": (n,), "bias": (n,)}, out_dtype)
    return tuple(checked.values())


def xnor_gemm_numpy(a: np.ndarray, b: np.ndarray, k: int, out_dtype=np.int32,
                    row_scale=None, col_scale=None, bias=None) -> np.ndarray:
    """NumPy twin of the native `xnor_gemm`: same checks, same values (the epilogue as
    float32 NumPy operations, ((v * row_scale[:, None]) * col_scale) + bias)."""
    a, b, k, out_dtype = _check_gemm(a, b, k, out_dtype)
    row_scale, col_scale, bias = _check_gemm_scales(row_scale, col_scale, bias, out_dtype,
                                                    a.shape[0], b.shape[0])
    mask = _tail_mask(k)
    a, b = _masked(a, mask), _masked(b, mask)
    m, n = a.shape[0], b.shape[0]
    out = np.empty((m, n), dtype=np.int64)
    rows = max(1, _TWIN_CHUNK // max(1, n * a.shape[1]))
    for r0 in range(0, m, rows):
        differing = _popcount(a[r0:r0 + rows, None, :] ^ b[None, :, :]).sum(axis=-1,
                                                                             dtype=np.int64)
        out[r0:r0 + rows] = k - 2 * differing
    out = out.astype(out_dtype)
    if row_scale is not None:
        np.multiply(out, row_scale[:, None], out=out)
    if col_scale is not None:
        np.multiply(out, col_scale[None, :], out=out)
    if bias is not None:
        np.add(out, bias[None, :], out=out)
    return out


def xnor_gemm(a: np.ndarray, b: np.ndarray, k: int, out_dtype=np.int32, row_scale=None,
              col_scale=None, bias=None) -> np.ndarray:
    """The (M, N) products of the +-1 vectors packed in the rows of uint32 a (M, ceil(k/32))
    and b (N, ceil(k/32)): out[m, n] = k - 2 * popcount(a[m] ^ b[n]), the last word masked
    to its k % 32 real bits (when k % 32 != 0).  out_dtype is int32 or float32 (the exact
    integer, rounded once).  float32 only: row_scale (M,), col_scale (N,) and bias (N,) make
    each value ((v * row_scale[m]) * col_scale[n]) + bias[n], rounded step by step (an
    XNOR-Net linear layer: K, alpha, bias).  TypeError for dtypes, ValueError for shapes
    and k.
    """
    a, b, k, out_dtype = _check_gemm(a, b, k, out_dtype)
    row_scale, col_scale, bias = _check_gemm_scales(row_scale, col_scale, bias, out_dtype,
                                                    a.shape[0], b.shape[0])
    if _native is not None:
        return _native.xnor_gemm(a, b, k, out_dtype.name, row_scale, col_scale, bias)
    _warn_fallback_once()
    return xnor_gemm_numpy(a, b, k, out_dtype, row_scale, col_scale, bias)


def _valid_range(size, out_size, stride, pad, tap):
    """The output positions [first, last) whose tap `tap` reads inside [0, size), and the
    input position of the first."""
    first = max(0, -(-(pad - tap) // stride))
    last = min(out_size, (size - 1 + pad - tap) // stride + 1) if size - 1 + pad - tap >= 0 else 0
    return first, max(first, last), first * stride - pad + tap


def window_mean_numpy(mean, kernel, stride, padding, out_hw) -> np.ndarray:
    """XNOR-Net's K as the native xnor_conv2d makes it with window_mean, bit for bit: for
    float32 ``mean`` (N, 1, H, W) (the channel mean of |x|), the (N, OH, OW) float32 sums of
    mean over the kernel taps inside the image, in tap order (kernel row by kernel row, from
    0), divided by kh * kw (the padding's zeros counted in the average)."""
    what = "window_mean_numpy"
    (kh, kw) = _int_pair(kernel, what, "kernel", 1)
    (sh, sw) = _int_pair(stride, what, "stride", 1)
    (ph, pw) = _int_pair(padding, what, "padding", 0)
    (oh, ow) = _int_pair(out_hw, what, "out_hw", 0)
    n, _, h, w = mean.shape
    k = np.zeros((n, oh, ow), np.float32)
    for i in range(kh):
        r0, r1, ih = _valid_range(h, oh, sh, ph, i)
        for j in range(kw):
            c0, c1, iw = _valid_range(w, ow, sw, pw, j)
            if r0 < r1 and c0 < c1:
                k[:, r0:r1, c0:c1] += mean[:, 0, ih:ih + (r1 - r0 - 1) * sh + 1:sh,
                                           iw:iw + (c1 - c0 - 1) * sw + 1:sw]
    return k / np.float32(kh * kw)


def xnor_conv2d_numpy(xp, wp, channels, stride=1, padding=0, out_hw=None,
                      out_dtype=np.float32, pixel_scale=None, filter_scale=None,
                      bias=None, residual=None) -> np.ndarray:
    """NumPy twin of the native `xnor_conv2d`: same checks, same values (tap by tap, the
    taps outside the image skipped; the epilogue as float32 NumPy operations)."""
    xp, wp, channels, stride, padding, out_hw, out_dtype = _check_conv(
        xp, wp, channels, stride, padding, out_hw, out_dtype)
    pixel_scale, filter_scale, bias, residual = _check_scales(
        pixel_scale, filter_scale, bias, out_dtype, xp.shape[0], wp.shape[0], out_hw,
        residual)
    mask = _tail_mask(channels)
    xp, wp = _masked(xp, mask), _masked(wp, mask)
    n, h, w, words = xp.shape
    o, kh, kw, _ = wp.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, out_hw
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    for i in range(kh):
        r0, r1, ih = _valid_range(h, oh, sh, ph, i)
        for j in range(kw):
            c0, c1, iw = _valid_range(w, ow, sw, pw, j)
            if r0 >= r1 or c0 >= c1:
                continue
            pixels = xp[:, ih:ih + (r1 - r0 - 1) * sh + 1:sh, iw:iw + (c1 - c0 - 1) * sw + 1:sw]
            chunk = max(1, _TWIN_CHUNK // max(1, pixels.size))
            for f0 in range(0, o, chunk):
                taps = wp[f0:f0 + chunk, i, j]                       # (filters, words)
                differing = _popcount(pixels[:, None] ^ taps[None, :, None, None, :]).sum(
                    axis=-1, dtype=np.int64)
                out[:, f0:f0 + chunk, r0:r1, c0:c1] += channels - 2 * differing
    return _apply_scales(out.astype(out_dtype), pixel_scale, filter_scale, bias, residual)


def xnor_conv2d(xp, wp, channels, stride=1, padding=0, out_hw=None,
                out_dtype=np.float32, pixel_scale=None, filter_scale=None,
                bias=None, residual=None) -> np.ndarray:
    """conv2d(b(x), b(w)) with zero padding, exactly, from packed signs.

    xp is uint32 (N, H, W, ceil(C/32)) (pack_conv_input), wp uint32 (O, kh, kw, ceil(C/32))
    (the weights' channel signs per tap), channels = C.  Returns (N, O, OH, OW) of out_dtype
    (float32 or int32): out[n, o, oh, ow] sums C - 2 * popcount(xp[n, ih, iw] ^ wp[o, i, j])
    over the taps (i, j) whose input pixel (ih, iw) = (oh*sh - ph + i, ow*sw - pw + j) lies in
    the image, the channel tail masked.  Taps outside contribute 0, exactly as the zero
    padding of a float convolution of the +-1 values would.  out_hw, when given, must be the
    geometry's output size.

    The fused epilogue (float32 only): pixel_scale float32 (N, OH, OW), filter_scale float32
    (O,) and bias float32 (O,), each optional, make it
    out[n, o, oh, ow] = ((v * pixel_scale[n, oh, ow]) * filter_scale[o]) + bias[o], rounded
    to float32 after each operation (no FMA): bit-identical to NumPy's
    ``((y * K) * alpha) + bias`` on the unfused float32 result y, applied as the results
    are stored; residual float32 (N, O, OH, OW), also optional, is added after them (a
    residual block's addition).  TypeError for dtypes, ValueError for shapes and geometry.
    """
    xp, wp, channels, stride, padding, out_hw, out_dtype = _check_conv(
        xp, wp, channels, stride, padding, out_hw, out_dtype)
    pixel_scale, filter_scale, bias, residual = _check_scales(
        pixel_scale, filter_scale, bias, out_dtype, xp.shape[0], wp.shape[0], out_hw,
        residual)
    if _native is not None:
        return _native.xnor_conv2d(xp, wp, channels, stride, padding, out_hw, out_dtype.name,
                                   pixel_scale, filter_scale, bias, residual=residual)
    _warn_fallback_once()
    return xnor_conv2d_numpy(xp, wp, channels, stride, padding, out_hw, out_dtype,
                             pixel_scale, filter_scale, bias, residual)


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
    """OpenMP's maximum thread count, 1 without it.  (The native kernels no longer run
    OpenMP parallel regions -- OpenMP only vectorises their ``omp simd`` loops -- and split
    their work over the module's thread pool: ``kernels().native_threads()``.)"""
    if _native is None:
        return 1
    return int(_native.openmp_threads())
