"""Binarized (XNOR-popcount) kernels: sign packing, the +-1 matrix product and convolution.

    wp = gm.pack_conv_weight(w)                 # O x C x kh x kw float -> O x kh x kw x Wc words
    y = gm.xnor_conv2d(x, wp, stride=1, padding=1, channels=C)   # == conv2d(b(x), b(w))
    c = gm.xnor_gemm(gm.pack_signs(a), gm.pack_signs(b), k)      # == b(a) @ b(b).T

b(v) is +1 where v >= 0 and -1 elsewhere (NaN included).  Signs are stored one bit each in
uint32 words, bit j (least significant first) of word w standing for element 32*w + j; a set
bit is +1, a clear bit -1, and the padding bits of a row's last word are 0.  The dot product
of two packed +-1 rows of length k is then k - 2 * popcount(a XOR b) summed over the words;
every kernel masks the last word, so padding bits never count, whatever they hold.

Convolutions pack the channels of each pixel (``pack_conv_input``: N x H x W x ceil(C/32)
words) and of each filter tap (``pack_conv_weight``: O x kh x kw x ceil(C/32)), so a tap is
ceil(C/32) XOR-popcounts.  Zero padding has no +-1 code: a padded pixel of the float
convolution contributes 0, which a -1 (or +1) bit would not.  The kernels therefore visit only
the taps whose input pixel lies inside the image and add channels - 2 * popcount for each: the
result equals conv2d(b(x), b(w)) with ordinary zero padding exactly, at the border too.  The
input is binarized and packed straight from NCHW floats; no float im2col matrix is made.  On
the cpu backend ``xnor_conv2d`` given float input packs it inside its own parallel pass, each
chunk of work the input rows it reads (no packed copy of the batch); the others pack first.

Results are int32, or float32 (exact: |value| <= C * kh * kw, far below 2**24 for any layer).
Every argument is checked here with errors that name it; the backends get valid input only.
"""
import numpy as np

from .array import Array, _as_array, _exact_native, _exact_natives
from .conv import _is_int, _pair, conv2d
from .creation import full
from .errors import DtypeError, ShapeError
from .memory import outlive_scopes
from .native import MAX_XNOR_BITS
from .normalization import batch_norm_forward

__all__ = ["pack_signs", "pack_conv_input", "pack_conv_weight", "xnor_gemm", "xnor_conv2d"]

_WORD_BITS = 32
_UINT32 = np.dtype(np.uint32)
_FLOAT32 = np.dtype(np.float32)
_INT32_MAX = 2**31 - 1       # every backend's kernels index their geometry in 32 bits
_CONV_LAYOUTS = {"x": ("N, C, H, W", "N, H, W, ceil(C/32)"),
                 "w": ("O, C, kh, kw", "O, kh, kw, ceil(C/32)")}
_RESULT_DTYPES = {"int32": np.dtype(np.int32), "float32": np.dtype(np.float32),
                  "single": np.dtype(np.float32)}


def words(n):
    """uint32 words holding n packed signs."""
    return (n + _WORD_BITS - 1) // _WORD_BITS


def _array(value, what, name, backend=None):
    """``value`` as an Array; array-likes (NumPy arrays, lists, numbers) are placed on
    ``backend`` where given (the operands' backend: an operand given as NumPy goes with x),
    else on the default backend."""
    try:
        return _as_array(value, backend)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what}: {name} must be an Array or array-like, got "
                        f"{type(value).__name__} ({exc})") from None


def _result_dtype(dtype, what):
    key = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if key not in _RESULT_DTYPES:
        raise DtypeError(f"{what}: dtype must be 'int32' or 'float32', got {dtype!r}")
    return _RESULT_DTYPES[key]


def _need_float32(a, what, name):
    if a.dtype != _FLOAT32:
        raise DtypeError(f"{what}: {name} must be single (float32) to be binarized, got "
                         f"{a.dtype}; convert with .astype('single')")


def _same_backend(what, **arrays):
    backends = [a._backend for a in arrays.values()]
    first = backends[0]
    if all(backend is first for backend in backends):
        return first
    from .errors import BackendMismatchError
    names = ", ".join(f"{name} on {a._backend.name!r}" for name, a in arrays.items())
    raise BackendMismatchError(f"{what}: operands live on two backends ({names}); "
                               f"move one with A.to({first.name!r})")


# ---- packing --------------------------------------------------------------------------------

def pack_signs(x, axis=-1):
    """Pack the signs of a single-precision Array along ``axis`` into uint32 words.

    The result has x's shape with that axis shortened to ceil(n/32) words: bit j of word w is
    1 where the element 32*w + j along the axis is >= 0 (NaN counts as negative, -0.0 as
    positive) and the padding bits of the last word are 0."""
    what = "pack_signs"
    x = _array(x, what, "x")
    _need_float32(x, what, "x")
    if x.ndim == 0:
        raise ShapeError(f"{what} needs at least one dimension, got a 0-d Array")
    if not _is_int(axis):
        raise TypeError(f"{what}: axis must be an integer, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"{what}: axis {axis!r} is out of range for a {x.ndim}-d Array "
                         f"of shape {x.shape}")
    axis = int(axis) % x.ndim
    backend = x._backend
    last = x.ndim - 1
    if axis == last:
        return Array._wrap(backend, backend.pack_signs(x._live))
    order = [d for d in range(x.ndim) if d != axis] + [axis]
    moved = x.permute(order)     # held: the kernel reads its buffer
    packed = Array._wrap(backend, backend.pack_signs(moved._live))
    back = list(range(last))
    back.insert(axis, last)
    return packed.permute(back)


def pack_conv_input(x, mean_abs=False, *, batch_norm=None):
    """The channel signs of each pixel of float32 N x C x H x W ``x`` as uint32
    N x H x W x ceil(C/32) words: the input layout of ``xnor_conv2d``, made in one pass.

    ``mean_abs=True`` also returns the mean over the channels of |x| (N x 1 x H x W, float32:
    XNOR-Net's A, whose box filter is K), computed in the same pass: ``(packed, mean)``.

    ``batch_norm=(running_mean, running_var, weight, bias, eps)`` packs (and averages) x
    batch-normalized with those evaluation statistics instead, folded into the same pass as
    ``xnor_conv2d``'s ``batch_norm`` is: bit for bit the separate batch norm's output packed
    (a BatchNorm1d in front of a binary linear layer: N x C x 1 x 1)."""
    fast = _pack_conv_input_fast(x, mean_abs, batch_norm)
    if fast is not None:
        return fast
    what = "pack_conv_input"
    x = _array(x, what, "x")
    _need_float32(x, what, "x")
    if x.ndim != 4:
        raise ShapeError(f"{what}: x must be 4-d (N, C, H, W), got shape {x.shape}")
    backend = x._backend
    bn = None
    if batch_norm is not None:
        *arrays, eps = _batch_norm_operands(what, backend, batch_norm, x.shape[1])
        bn = tuple(None if a is None else a._live for a in arrays) + (eps,)
    return _packed_input(backend, x._live, mean_abs, bn)


def _packed_input(backend, x, mean_abs, bn):
    """pack_conv_input's backend call on checked operands (``bn``: natives and eps, or None),
    as Arrays: packed, or (packed, mean) with ``mean_abs``."""
    if not mean_abs:
        return Array._wrap(backend, backend.pack_conv_input(x, bn=bn))
    packed, mean = backend.pack_conv_input(x, mean_abs=True, bn=bn)
    return Array._wrap(backend, packed), Array._wrap(backend, mean)


def _pack_conv_input_fast(x, mean_abs, batch_norm):
    """pack_conv_input's call for the arguments a binary linear layer passes on every call --
    a float32 N x C x H x W Array, a bool mean_abs, its batch norm's C-element float32 Arrays
    on that backend and a float eps -- checked with as few Python operations as that takes
    (the full checks cost twice the packing of a layer's rows at batch 1).  Returns None for
    anything else, which the full checks then take (and name what is wrong): both hand the
    backend the same arguments."""
    if type(x) is not Array or type(mean_abs) is not bool:
        return None
    xn = x._native
    if xn is None or xn.dtype != _FLOAT32 or len(xn.shape) != 4:
        return None
    backend = x._storage.backend
    bn = None
    if batch_norm is not None:
        bn = _batch_norm_natives(batch_norm, backend, xn.shape[1])
        if bn is None:
            return None
    return _packed_input(backend, xn, mean_abs, bn)


def _batch_norm_natives(batch_norm, backend, channels):
    """A short path's check of ``batch_norm``: (mean, var, weight, bias, eps) as the natives
    of C-element float32 Arrays on ``backend`` (weight and bias may be None) and a float
    eps >= 0, or None for anything else (then the full checks take the call)."""
    if type(batch_norm) is not tuple or len(batch_norm) != 5:
        return None
    mean, var, weight, shift, eps = batch_norm
    operands = _exact_natives((mean, var, weight, shift), backend, _FLOAT32, (channels,))
    if (operands is None or mean is None or var is None or type(eps) is not float
            or not 0.0 <= eps < float("inf")):
        return None
    return (*operands, eps)


def pack_conv_weight(w):
    """The signs of float32 O x C x kh x kw filters as uint32 O x kh x kw x ceil(C/32) words
    (each tap's channels packed): the weight layout of ``xnor_conv2d``."""
    what = "pack_conv_weight"
    w = _array(w, what, "w")
    _need_float32(w, what, "w")
    if w.ndim != 4:
        raise ShapeError(f"{what}: w must be 4-d (O, C, kh, kw), got shape {w.shape}")
    backend = w._backend
    channels_last = w.permute((0, 2, 3, 1))     # held: the kernel reads its buffer
    return Array._wrap(backend, backend.pack_signs(channels_last._live))


# ---- products -------------------------------------------------------------------------------

def _check_k(k, what):
    if not _is_int(k) or k < 1:
        raise ShapeError(f"{what}: k (the length of the +-1 vectors) must be a positive int, "
                         f"got {k!r}")
    if k > MAX_XNOR_BITS:
        raise ShapeError(f"{what}: k={k:,} is more than the kernels' {MAX_XNOR_BITS:,} (2**28) "
                         f"signs per product")
    return int(k)


def xnor_gemm(a, b, k=None, dtype="int32", *, row_scale=None, col_scale=None, bias=None):
    """Products of +-1 rows from their packed signs: out[m, n] = sum_i b(a)[m, i] b(b)[n, i].

    ``a`` (M x words) and ``b`` (N x words) are uint32 rows packed by ``pack_signs`` from
    vectors of length ``k`` (words = ceil(k/32)); float32 M x k and N x k Arrays are packed
    here first (k then defaults to their width).  Returns the M x N products as ``dtype``,
    'int32' (default) or 'float32', each k - 2 * popcount(a[m] ^ b[n]), exact for every k.

    An XNOR-Net linear layer's scaling runs with the products (float32 only): ``row_scale``
    (M values: K, per row of a), ``col_scale`` (N: alpha) and ``bias`` (N) make each result
    ((v * row_scale[m]) * col_scale[n]) + bias[n], rounded one operation at a time (no fused
    multiply-add), so equal to those float32 operations done one after another."""
    fast = _xnor_gemm_fast(a, b, k, dtype, row_scale, col_scale, bias)
    if fast is not None:
        return fast
    what = "xnor_gemm"
    a, b = _array(a, what, "a"), _array(b, what, "b")
    backend = _same_backend(what, a=a, b=b)
    out_dtype = _result_dtype(dtype, what)
    for name, arr in (("a", a), ("b", b)):
        if arr.ndim != 2:
            raise ShapeError(f"{what}: {name} must be 2-d (rows x packed words), got shape "
                             f"{arr.shape}")
    floats = [arr.dtype == _FLOAT32 for arr in (a, b)]
    if any(floats) and not all(floats):
        raise DtypeError(f"{what}: a is {a.dtype} and b is {b.dtype}; give both packed "
                         f"(uint32, from pack_signs) or both single (float32)")
    if all(floats):
        if a.shape[1] != b.shape[1]:
            raise ShapeError(f"{what}: a {a.shape} and b {b.shape} must have the same number "
                             f"of columns")
        if k is None:
            k = a.shape[1]
        if _check_k(k, what) != a.shape[1]:
            raise ShapeError(f"{what}: k={k} but the float rows have {a.shape[1]} columns")
        a, b = pack_signs(a), pack_signs(b)
    else:
        for name, arr in (("a", a), ("b", b)):
            if arr.dtype != _UINT32:
                raise DtypeError(f"{what}: {name} must hold packed signs (uint32, from "
                                 f"pack_signs) or single (float32) values, got {arr.dtype}")
        if k is None:
            raise ShapeError(f"{what}: k (the length of the +-1 vectors) is needed with packed "
                             f"rows; a has {a.shape[1]} words, so k is in "
                             f"{32 * a.shape[1] - 31}..{32 * a.shape[1]}")
        k = _check_k(k, what)
        if a.shape[1] != b.shape[1] or a.shape[1] != words(k):
            raise ShapeError(f"{what}: k={k} needs {words(k)} words per row, but a is {a.shape} "
                             f"and b is {b.shape}")
    factors = {}
    for name, value, size in (("row_scale", row_scale, a.shape[0]),
                              ("col_scale", col_scale, b.shape[0]), ("bias", bias, b.shape[0])):
        if value is None:
            continue
        v = _float_factor(what, backend, out_dtype, name, value)
        if v.size != size or (v.ndim != 1 and max(v.shape, default=0) != v.size):
            rows = "a's" if name == "row_scale" else "b's"
            raise ShapeError(f"{what}: {name} must hold one value per row of {rows} ({size}), "
                             f"got shape {v.shape}")
        factors[name] = (v if v.ndim == 1 else v.reshape(size))._live
    return Array._wrap(backend, backend.xnor_gemm(a._live, b._live, k, out_dtype, **factors))


def xnor_conv2d(x, w, stride=1, padding=0, *, channels=None, dtype="float32", pixel_scale=None,
                filter_scale=None, bias=None, batch_norm=None, residual=None):
    """conv2d(b(x), b(w), stride, padding) with ordinary zero padding, exactly.

    ``x`` is float32 N x C x H x W (binarized and packed here, in one pass) or packed
    N x H x W x ceil(C/32) uint32 from ``pack_conv_input``; ``w`` is float32 O x C x kh x kw
    or packed O x kh x kw x ceil(C/32) uint32 from ``pack_conv_weight``.  ``channels`` (C)
    is needed only when both are packed, and is checked against the float one otherwise: a
    packed operand keeps only its ceil(C/32) words a pixel or tap, so with one of each, pass
    the packed one's C as ``channels`` to have x's checked against it (nn.BinaryConv2d
    checks its in_channels).
    Returns N x O x OH x OW as ``dtype``, 'float32' (default) or 'int32'.

    XNOR-Net's scaling runs fused into the kernel's stores (float32 only): each result v
    becomes ((v * pixel_scale[n, oh, ow]) * filter_scale[o]) + bias[o], in that order and
    without fused multiply-adds, so it equals the same three float32 operations done one
    after another.  ``pixel_scale`` is N x OH x OW (or N x 1 x OH x OW: K), ``filter_scale``
    and ``bias`` hold O values (alpha and the layer's bias); any of them may be None.

    ``pixel_scale="window_mean"`` (float ``x`` only) makes K from x itself: the mean over each
    kernel window, the padding's zeros counted, of the channel mean of |x|.  The cpu backend
    makes it inside the convolution's pass (the channel means as it packs, then the window
    sums in tap order, divided by kh * kw: ``native.window_mean_numpy`` gives the same
    bits), OpenCL and CUDA in a kernel of their own between the packing and the convolution,
    to the same bits.  A binary layer's whole inference is then this one call.

    ``batch_norm=(running_mean, running_var, weight, bias, eps)`` (float ``x`` only; weight
    and bias may be None, the others are C-element float32 Arrays) batch-normalizes x with
    those evaluation statistics first: XNOR-Net's BatchNorm -> BinActiv -> BinConv as one
    call.  Every backend folds it into its packing, computing each value as its batch norm
    kernel does (((x - mean) * (inv_std * weight)) + bias, no fused multiply-add, bit for
    bit), so the result is the unfused one's.

    ``residual`` (float32, N x O x OH x OW, float results only) is added last, ((...) + bias)
    + residual: a residual block's addition, made as the results are stored (the same bits
    as adding it afterwards)."""
    fast = _xnor_conv2d_fast(x, w, stride, padding, channels, dtype, pixel_scale, filter_scale,
                             bias, batch_norm, residual)
    if fast is not None:
        return fast
    what = "xnor_conv2d"
    x, w = _array(x, what, "x"), _array(w, what, "w")
    backend = _same_backend(what, x=x, w=w)
    out_dtype = _result_dtype(dtype, what)
    # (each dtype and shape read once: this runs per layer call, often on small layers)
    x_dtype, w_dtype, x_shape, w_shape = x.dtype, w.dtype, x.shape, w.shape
    for name, arr_dtype, shape in (("x", x_dtype, x_shape), ("w", w_dtype, w_shape)):
        if arr_dtype != _FLOAT32 and arr_dtype != _UINT32:
            raise DtypeError(f"{what}: {name} must be single (float32) or packed signs "
                             f"(uint32), got {arr_dtype}")
        if len(shape) != 4:
            layout = _CONV_LAYOUTS[name][arr_dtype == _UINT32]
            raise ShapeError(f"{what}: {name} must be 4-d ({layout}), got shape {shape}")
    x_float, w_float = x_dtype == _FLOAT32, w_dtype == _FLOAT32
    known = {}
    if x_float:
        known["x"] = x_shape[1]
    if w_float:
        known["w"] = w_shape[1]
    if channels is not None:
        if not _is_int(channels) or channels < 1:
            raise ShapeError(f"{what}: channels must be a positive int, got {channels!r}")
        known["channels"] = int(channels)
    if not known:
        raise ShapeError(f"{what}: x and w are both packed, so channels= (C, the input "
                         f"channels the words hold) is needed")
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{name} says {c}" for name, c in known.items())
        raise ShapeError(f"{what}: the input channel counts disagree ({listed})")
    c = next(iter(known.values()))
    makes_k = isinstance(pixel_scale, str)
    if makes_k:
        if pixel_scale != "window_mean":
            raise ValueError(f"{what}: pixel_scale must be an Array, None or 'window_mean', "
                             f"got {pixel_scale!r}")
        if not x_float:
            raise DtypeError(f"{what}: pixel_scale='window_mean' makes K from the float "
                             f"input, but x is packed ({x_dtype}); give x as float32")
        if out_dtype != _FLOAT32:
            raise DtypeError(f"{what}: pixel_scale needs dtype='float32' results, got "
                             f"{out_dtype}")
    # float input goes as it is to a backend that packs it inside the convolution's own
    # pass, elsewhere through pack_conv_input first
    fuses = backend.xnor_conv2d_fuses_layer
    packs_itself = x_float and fuses
    if batch_norm is not None:
        if not x_float:
            raise DtypeError(f"{what}: batch_norm normalizes the float input, but x is packed "
                             f"({x_dtype}); give x as float32")
        batch_norm = _batch_norm_operands(what, backend, batch_norm, c)
        if not packs_itself:
            bn_mean, bn_var, bn_weight, bn_bias, bn_eps = batch_norm
            x = batch_norm_forward(x, bn_weight, bn_bias, bn_mean, bn_var, bn_eps,
                                   training=False).y
    if x_float and not packs_itself:
        if makes_k:
            xp, mean_abs = pack_conv_input(x, mean_abs=True)
        else:
            xp = pack_conv_input(x)
    else:
        xp = x
    wp = pack_conv_weight(w) if w_float else w
    xp_shape = xp.shape if xp is not x else x_shape
    wp_shape = wp.shape if wp is not w else w_shape
    for name, shape, packed in (("x", xp_shape, not packs_itself), ("w", wp_shape, True)):
        if packed and shape[3] != words(c):
            raise ShapeError(f"{what}: packed {name} {shape} has {shape[3]} words per pixel, "
                             f"but {c} channels need {words(c)}")
    in_hw = x_shape[2:4] if packs_itself else xp_shape[1:3]
    kernel = wp_shape[1:3]
    stride = _pair(stride, "stride", what, 1)
    padding = _pair(padding, "padding", what, 0)
    if min(kernel) < 1:
        raise ShapeError(f"{what}: the kernel {tuple(kernel)} is empty")
    if kernel[0] * kernel[1] * words(c) * 32 > MAX_XNOR_BITS:
        raise ShapeError(f"{what}: a {kernel[0]} x {kernel[1]} kernel of {c:,} channels is more "
                         f"than the kernels' {MAX_XNOR_BITS:,} (2**28) signs per output")
    out_hw = []
    for axis, size, k, s, p in zip(("height", "width"), in_hw, kernel, stride, padding):
        if max(s, size + 2 * p) > _INT32_MAX:
            raise ShapeError(f"{what}: the {axis} geometry (stride {s}, padded input {size} + "
                             f"2*{p}) is beyond the kernels' 32-bit indices (at most "
                             f"2**31 - 1)")
        if size + 2 * p < k:
            raise ShapeError(f"{what}: the kernel {axis} {k} is larger than the padded input "
                             f"{axis} {size} + 2*{p} = {size + 2 * p}; the output would be "
                             f"empty")
        out_hw.append((size + 2 * p - k) // s + 1)
    natives = {}
    if batch_norm is not None and packs_itself:
        natives.update(zip(("bn_mean", "bn_var", "bn_weight", "bn_bias"),
                           (None if a is None else a._live for a in batch_norm[:4])))
        natives["bn_eps"] = batch_norm[4]
    if makes_k:
        if packs_itself:
            natives["window_mean"] = True
            pixel_scale = None
        else:
            pixel_scale = window_mean(mean_abs, kernel, stride, padding)
    factors = {"pixel_scale": pixel_scale, "filter_scale": filter_scale, "bias": bias,
               "residual": residual}
    if any(v is not None for v in factors.values()):
        epilogue = _epilogue(what, backend, out_dtype, (xp_shape[0], wp_shape[0], *out_hw),
                             **factors)
        natives.update((name, a._live) for name, a in epilogue.items())
    added = None
    if not fuses and "residual" in natives:         # added after the kernel, as its own op
        del natives["residual"]
        added = epilogue["residual"]
    out = Array._wrap(backend, backend.xnor_conv2d(xp._live, wp._live, c, stride, padding,
                                                   tuple(out_hw), out_dtype, **natives))
    return out if added is None else out + added


def _int_pair(value, minimum):
    """stride / padding as (h, w) where it is a plain int or a 2-tuple of them >= minimum, else
    None (then xnor_conv2d's full checks take it, and name what is wrong)."""
    if type(value) is int:
        return (value, value) if minimum <= value <= _INT32_MAX else None
    if (type(value) is tuple and len(value) == 2 and type(value[0]) is int
            and type(value[1]) is int and minimum <= value[0] <= _INT32_MAX
            and minimum <= value[1] <= _INT32_MAX):
        return value
    return None


def _float_operand(value, backend, shape):
    """An epilogue or batch norm operand's buffer where it is a live float32 Array of exactly
    ``shape`` on ``backend``, else None."""
    return _exact_native(value, backend, _FLOAT32, shape)


def _xnor_gemm_fast(a, b, k, dtype, row_scale, col_scale, bias):
    """xnor_gemm's call for the arguments a binary linear layer passes on every call --
    packed uint32 rows of one backend, an int k that fits them, float32 factors of exactly
    one value per row -- with as few Python operations as that takes (the full checks were
    twice the kernel's time at batch 1).  Returns None for anything else, which the full
    checks then take (and name what is wrong): both hand the backend the same arguments."""
    if (type(a) is not Array or type(b) is not Array or type(k) is not int or k < 1
            or k > MAX_XNOR_BITS):
        return None
    an, bn = a._native, b._native
    if an is None or bn is None or type(dtype) is not str:
        return None
    backend = a._storage.backend
    out_dtype = _RESULT_DTYPES.get(dtype)
    if (out_dtype is None or b._storage.backend is not backend or an.dtype != _UINT32
            or bn.dtype != _UINT32 or len(an.shape) != 2 or len(bn.shape) != 2
            or an.shape[1] != words(k) or bn.shape[1] != an.shape[1]):
        return None
    factors = {}
    for name, value, size in (("row_scale", row_scale, an.shape[0]),
                              ("col_scale", col_scale, bn.shape[0]), ("bias", bias, bn.shape[0])):
        if value is not None:
            native = _float_operand(value, backend, (size,))
            if native is None:
                return None
            factors[name] = native
    if factors and out_dtype != _FLOAT32:
        return None
    return Array._wrap(backend, backend.xnor_gemm(an, bn, k, out_dtype, **factors))


def _xnor_conv2d_fast(x, w, stride, padding, channels, dtype, pixel_scale, filter_scale, bias,
                      batch_norm, residual):
    """xnor_conv2d's call for the arguments a layer passes on every call -- Arrays on one
    backend, float32 or packed x, packed w, int strides and paddings, operands of exactly
    the kernel's shapes -- checked with as few Python operations as that takes (a binary
    layer of ResNet-20 runs in tens of microseconds, so the general checks' ~6 us were a
    tenth of it).  Returns None for anything else, which the general path then checks in
    full (and names what is wrong): both hand the backend the same arguments."""
    call = _xnor_conv2d_call(x, w, stride, padding, channels, dtype, pixel_scale, filter_scale,
                             bias, batch_norm, residual)
    if call is None:
        return None
    backend, arguments, natives = call
    return Array._wrap(backend, backend.xnor_conv2d(*arguments, **natives))


def _xnor_conv2d_call(x, w, stride, padding, channels, dtype, pixel_scale, filter_scale, bias,
                      batch_norm, residual):
    """_xnor_conv2d_fast's checks: (backend, positional arguments, keyword natives) of the
    backend's xnor_conv2d call, or None.  (A binary layer keeps them as its inference plan:
    nn.BinaryConv2d.)"""
    if type(x) is not Array or type(w) is not Array:
        return None
    xn, wn = x._native, w._native
    if xn is None or wn is None:
        return None
    backend = x._storage.backend
    if w._storage.backend is not backend or type(dtype) is not str:
        return None
    out_dtype = _RESULT_DTYPES.get(dtype)
    stride, padding = _int_pair(stride, 1), _int_pair(padding, 0)
    if out_dtype is None or stride is None or padding is None or wn.dtype != _UINT32:
        return None
    xs, ws = xn.shape, wn.shape
    if len(xs) != 4 or len(ws) != 4:
        return None
    x_float = xn.dtype == _FLOAT32
    fuses = backend.xnor_conv2d_fuses_layer
    if x_float:
        if not fuses:
            return None
        c = xs[1]
        if channels is not None and (type(channels) is not int or channels < 1
                                     or channels != c):
            return None
        in_h, in_w = xs[2], xs[3]
    elif xn.dtype == _UINT32:
        if type(channels) is not int or channels < 1 or xs[3] != words(channels):
            return None
        c = channels
        in_h, in_w = xs[1], xs[2]
    else:
        return None
    kh, kw = ws[1], ws[2]
    if ws[3] != words(c) or kh < 1 or kw < 1 or kh * kw * ws[3] * 32 > MAX_XNOR_BITS:
        return None
    span_h, span_w = in_h + 2 * padding[0], in_w + 2 * padding[1]
    if span_h < kh or span_w < kw or span_h > _INT32_MAX or span_w > _INT32_MAX:
        return None
    out_hw = ((span_h - kh) // stride[0] + 1, (span_w - kw) // stride[1] + 1)
    n, o = xs[0], ws[0]
    natives = {}
    if pixel_scale is not None:
        if type(pixel_scale) is str:
            if pixel_scale != "window_mean" or not x_float:
                return None
            natives["window_mean"] = True
        else:
            natives["pixel_scale"] = _float_operand(pixel_scale, backend, (n,) + out_hw)
    if filter_scale is not None:
        natives["filter_scale"] = _float_operand(filter_scale, backend, (o,))
    if bias is not None:
        natives["bias"] = _float_operand(bias, backend, (o,))
    if residual is not None:
        if not fuses:               # (added as an operation of its own there)
            return None
        natives["residual"] = _float_operand(residual, backend, (n, o) + out_hw)
    if natives and (out_dtype != _FLOAT32 or any(v is None for v in natives.values())):
        return None
    if batch_norm is not None:
        operands = _batch_norm_natives(batch_norm, backend, c) if x_float else None
        if operands is None:
            return None
        natives.update(zip(("bn_mean", "bn_var", "bn_weight", "bn_bias", "bn_eps"), operands))
    return backend, (xn, wn, c, stride, padding, out_hw, out_dtype), natives


def _batch_norm_operands(what, backend, batch_norm, channels):
    """xnor_conv2d's (and pack_conv_input's) batch_norm as (mean, var, weight, bias, eps):
    C-element float32 Arrays on ``backend`` (weight and bias may be None) and a float
    eps >= 0."""
    if not isinstance(batch_norm, (tuple, list)) or len(batch_norm) != 5:
        raise TypeError(f"{what}: batch_norm must be (running_mean, running_var, weight, bias, "
                        f"eps), got {batch_norm!r}")
    *arrays, eps = batch_norm
    checked = []
    for name, value in zip(("running_mean", "running_var", "weight", "bias"), arrays):
        if value is None and name in ("weight", "bias"):
            checked.append(None)
            continue
        a = _array(value, what, f"batch_norm's {name}", backend)
        if a._backend is not backend:
            from .errors import BackendMismatchError
            raise BackendMismatchError(f"{what}: batch_norm's {name} is on "
                                       f"{a._backend.name!r} but x is on {backend.name!r}")
        if a.dtype != _FLOAT32:
            raise DtypeError(f"{what}: batch_norm's {name} must be single (float32), got "
                             f"{a.dtype}")
        if a.shape != (channels,):
            raise ShapeError(f"{what}: batch_norm's {name} must have shape ({channels},) for "
                             f"{channels} input channels, got {a.shape}")
        checked.append(a)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what}: batch_norm's eps must be a real number, got {eps!r}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"{what}: batch_norm's eps must be finite and >= 0, got {eps!r}")
    return (*checked, float(eps))


_BOXES = {}


def window_box(kernel, like):
    """The kh x kw averaging filter (one channel in, one out: every weight 1 / (kh * kw)) in
    ``like``'s dtype on its backend, made once per kernel size, dtype and backend instance
    (a conv2d with it is the mean over each window, XNOR-Net's K)."""
    key = (tuple(kernel), like.dtype, id(like._backend))
    box = _BOXES.get(key)
    if box is None or box._backend is not like._backend:
        kh, kw = kernel
        box = _BOXES[key] = outlive_scopes(full((1, 1, kh, kw), 1.0 / (kh * kw),
                                                dtype=like.dtype, backend=like.backend))
    return box


def window_mean(a, kernel, stride, padding):
    """XNOR-Net's K from ``a`` (N x 1 x H x W, the channel mean of |x|): its mean over each
    kernel window, the padding's zeros counted, on the convolution's output grid -- a
    one-channel conv2d with ``window_box``."""
    return conv2d(a, window_box(kernel, a), stride=stride, padding=padding)


def _float_factor(what, backend, out_dtype, name, value):
    """An epilogue operand as a float32 Array on ``backend`` (float32 results only)."""
    if out_dtype != _FLOAT32:
        raise DtypeError(f"{what}: {name} needs dtype='float32' results, got {out_dtype}")
    a = _array(value, what, name, backend)
    if a._backend is not backend:
        from .errors import BackendMismatchError
        raise BackendMismatchError(f"{what}: {name} is on {a._backend.name!r} but the "
                                   f"operands are on {backend.name!r}")
    if a.dtype != _FLOAT32:
        raise DtypeError(f"{what}: {name} must be single (float32), got {a.dtype}")
    return a


def _epilogue(what, backend, out_dtype, out_shape, **factors):
    """The given scale / bias factors as contiguous float32 Arrays of the kernel's shapes."""
    n, o, oh, ow = out_shape
    shapes = {"pixel_scale": ((n, oh, ow), (n, 1, oh, ow)), "filter_scale": ((o,),),
              "bias": ((o,),), "residual": ((n, o, oh, ow),)}
    given = {}
    for name, value in factors.items():
        if value is None:
            continue
        a = _float_factor(what, backend, out_dtype, name, value)
        wanted, shape = shapes[name], a.shape
        if shape not in wanted and not (name in ("filter_scale", "bias") and a.size == o):
            listed = " or ".join(str(s) for s in wanted)
            raise ShapeError(f"{what}: {name} must have shape {listed} for an output of "
                             f"shape {out_shape}, got {shape}")
        # (a reshape makes a new Array: skipped where the shape is already the kernel's, as
        # it is for every call a layer makes)
        given[name] = a if shape == wanted[0] else a.reshape(wanted[0])
    return given
