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

#: Activations of Backend.bias_act / act_backward, by kernel code (kernels/common/activations.h).
ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "relu6": 3, "elu": 4}


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

    def gemm(self, a, b, c, alpha, beta, trans_a, trans_b):
        """BLAS gemm on 3-d float natives of one dtype (gpumat/blas.py checks the arguments):
        alpha * op(a) @ op(b) + beta * c, op = swap of the last two axes where trans_*; the
        batch sizes of a and b are equal or 1; ``c`` is None or a native of the result's
        shape (batch, M, N), never written; beta == 0 never reads it (NaNs in c vanish)."""
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

    # ---- binarized (XNOR-popcount) kernels (gpumat/binary.py checks the arguments) --------
    # A packed row: ceil(n/32) uint32 words in pack_signs' layout; a set bit stands for +1,
    # a clear bit for -1.  Kernels mask the last word, so its padding bits never count.
    def pack_conv_input(self, x, mean_abs=False, bn=None):
        """Channel signs of float32 NCHW ``x`` packed per pixel: uint32 (N, H, W, ceil(C/32)),
        bit j of word w of pixel (n, h, w') is x[n, 32*w + j, h, w'] >= 0.  ``mean_abs``: also
        the float32 (N, 1, H, W) mean over channels of |x| from the same pass, as a tuple.
        ``bn`` = (mean, var, weight, bias, eps) (C-element buffers, weight and bias may be
        None): of x batch-normalized first, each value as the batch norm kernel computes its
        evaluation output (xnor_conv2d's bn_* fold)."""
        raise NotImplementedError

    def xnor_gemm(self, a, b, k, out_dtype, row_scale=None, col_scale=None, bias=None):
        """(M, N) ``out_dtype`` (int32 or float32) products of the +-1 rows of uint32 ``a``
        (M, ceil(k/32)) and ``b`` (N, ceil(k/32)): k - 2 * popcount(a[m] ^ b[n]).  Optional
        float32 ``row_scale`` (M,), ``col_scale`` (N,) and ``bias`` (N,) (float32 results
        only) make each value ((v * row_scale[m]) * col_scale[n]) + bias[n], in that order
        and without fused multiply-adds."""
        raise NotImplementedError

    #: True where ``xnor_conv2d`` runs a whole XNOR-Net layer's inference itself: it takes
    #: the float32 (N, C, H, W) input as ``xp`` (binarizing and packing it on the way),
    #: ``window_mean=True`` (XNOR-Net's K made from that input, as the pixel scale: the
    #: window sums of the channel means of |x| in tap order divided by kh * kw,
    #: native.window_mean_numpy's bits), ``bn_mean`` / ``bn_var`` / ``bn_weight`` /
    #: ``bn_bias`` / ``bn_eps`` (an evaluation batch norm applied to that input first, bit
    #: for bit as its batch_norm_forward computes it) and ``residual``; cpu in one parallel
    #: pass, OpenCL and CUDA in two launches.  gm.xnor_conv2d hands those over as they are
    #: there, and elsewhere runs batch_norm_forward, pack_conv_input (with a box-filter
    #: conv2d for K) and the residual addition around the kernel
    xnor_conv2d_fuses_layer = False

    def xnor_conv2d(self, xp, wp, channels, stride, padding, out_hw, out_dtype,
                    pixel_scale=None, filter_scale=None, bias=None, window_mean=False,
                    bn_mean=None, bn_var=None, bn_weight=None, bn_bias=None, bn_eps=1e-5,
                    residual=None):
        """conv2d(b(x), b(w)) with zero padding, exactly, from packed ``xp`` (N, H, W, Wc) and
        ``wp`` (O, kh, kw, Wc), Wc = ceil(channels/32): out (N, O, OH, OW) of ``out_dtype``
        (int32 or float32) sums channels - 2 * popcount(xp[pixel] ^ wp[o, i, j]) over the taps
        whose input pixel lies inside the image (outside ones are zeros, contributing 0).
        Optional float32 ``pixel_scale`` (N, OH, OW), ``filter_scale`` (O,), ``bias`` (O,)
        and ``residual`` (N, O, OH, OW) (float32 results only) turn each value v into
        (((v * pixel_scale) * filter_scale) + bias) + residual as it is stored, in that order
        and without fused multiply-adds."""
        raise NotImplementedError

    # ---- pooling (gpumat/pooling.py checks the arguments and computes out_hw) -------------
    def pool2d(self, x, mode, kernel, stride, padding, ceil_mode, count_include_pad, out_hw,
               return_indices=True):
        """2-d pooling of contiguous float NCHW ``x`` with torch's semantics; ``mode`` is
        'max' or 'avg'; kernel, stride, padding and out_hw are (height, width) int pairs.
        Returns (out N x C x OH x OW, int64 flat h*W+w indices of the maxima or None); indices
        are None for 'avg' and when ``return_indices`` is false."""
        raise NotImplementedError

    def pool2d_backward(self, grad_out, indices, input_shape, mode, kernel, stride, padding,
                        count_include_pad, out_hw):
        """Gradient of pool2d with respect to x (shape ``input_shape``, grad_out's dtype);
        ``indices`` is the forward's int64 indices for 'max', None for 'avg'."""
        raise NotImplementedError

    # ---- convolution (gpumat/conv.py checks the arguments and computes out_hw) ------------
    # x is contiguous float NCHW; kernel, stride, padding, dilation and out_hw are
    # (height, width) int pairs; out_hw is the (OH, OW) of the convolution, both >= 1.
    def im2col(self, x, kernel, stride, padding, dilation, out_hw):
        """(N, C*kh*kw, OH*OW) columns of ``x``: row (c, i, j), column (oh, ow) holds
        x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], zero outside the input."""
        raise NotImplementedError

    def col2im(self, cols, input_shape, kernel, stride, padding, dilation, out_hw):
        """im2col's adjoint: an NCHW native of ``input_shape`` where each pixel is the sum
        of the entries of ``cols`` that im2col would copy from it."""
        raise NotImplementedError

    def depthwise_conv2d(self, x, w, stride, padding, dilation, multiplier, out_hw):
        """Convolution with groups == C: ``w`` is (C*multiplier, 1, kh, kw), output channel
        o reads input channel o // multiplier; returns N x C*multiplier x OH x OW."""
        raise NotImplementedError

    def depthwise_conv2d_backward_input(self, grad_out, w, input_shape, stride, padding,
                                        dilation, multiplier, out_hw):
        """Gradient of depthwise_conv2d with respect to x (shape ``input_shape``)."""
        raise NotImplementedError

    def depthwise_conv2d_backward_weight(self, grad_out, x, weight_shape, stride, padding,
                                         dilation, multiplier, out_hw):
        """Gradient of depthwise_conv2d with respect to w (shape ``weight_shape``)."""
        raise NotImplementedError

    # ---- activations (gpumat/activations.py checks the arguments) -------------------------
    # x, grad and y are contiguous float natives of one dtype; ``act`` is one of ACTIVATIONS
    # and ``param`` the negative slope (leaky_relu) or alpha (elu), else ignored.
    def bias_act(self, x, b, axis, act, param):
        """act(x + b broadcast along ``axis``) in one pass; ``b`` is 1-d with x.shape[axis]
        elements, or None for the activation alone."""
        raise NotImplementedError

    def act_backward(self, grad, x, act, param):
        """grad * act'(x), with torch's value at the kinks and for NaN."""
        raise NotImplementedError

    def bias_grad(self, grad, axis):
        """Sum of ``grad`` over every axis but ``axis`` (1-d, grad.shape[axis] elements)."""
        raise NotImplementedError

    def softmax(self, x, axis, log):
        """softmax (log_softmax when ``log``) along ``axis``, max-subtracted."""
        raise NotImplementedError

    def softmax_backward(self, grad, y, axis, log):
        """Gradient of softmax / log_softmax given its output ``y``."""
        raise NotImplementedError

    # ---- batch normalisation (gpumat/normalization.py checks the arguments) ---------------
    # x and grad are contiguous float natives of one dtype with ndim >= 2, seen as
    # (N, C, inner) with C = shape[1] and M = N * inner values per channel; weight, bias,
    # mean, var and inv_std are 1-d natives of C elements of that dtype; weight / bias None
    # stand for 1 / 0.
    def batch_norm_forward(self, x, weight, bias, mean, var, eps):
        """(y, mean, var, inv_std) with inv_std = 1 / sqrt(var + eps) and
        y = (x - mean) * (inv_std * weight) + bias per channel.  Training when ``mean`` and
        ``var`` are None (M >= 1 when C >= 1): the batch's mean and biased variance, accurate
        for a large mean with a small spread (never a one-pass sum of squares in x's
        precision).  Evaluation otherwise: the given natives are returned as they are."""
        raise NotImplementedError

    def batch_norm_backward(self, grad, x, mean, inv_std, weight, training, input_grad,
                            param_grads):
        """(dx, dweight, dbias), each None unless asked for (``input_grad``,
        ``param_grads``).  With xhat = (x - mean) * inv_std: dbias = sum(grad) and
        dweight = sum(grad * xhat) per channel; dx = weight * inv_std * (grad - dbias / M -
        xhat * dweight / M) when ``training`` (M >= 1), else grad * weight * inv_std."""
        raise NotImplementedError

    # ---- fused optimizer updates (gpumat/optimizers.py checks the arguments) --------------
    # p, g and the state buffers are contiguous float natives of one dtype and shape; the
    # updates write p and the buffers *in place* (the Array layer made them private first).
    def sgd_update(self, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
        """One SGD step (kernels/common/optimizers.h): buf is read and written only when
        momentum != 0, and set to the decayed gradient when ``first``."""
        raise NotImplementedError

    def adam_update(self, p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                    step_size, bias2_sqrt):
        """One Adam (AdamW when ``decoupled``) step with the host-computed bias corrections
        step_size = lr / (1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t)."""
        raise NotImplementedError


def gemm_dims(a_shape, b_shape, trans_a, trans_b):
    """(batch, M, N, K) of Backend.gemm's 3-d operands, op = transpose where trans_*."""
    M, K = (a_shape[2], a_shape[1]) if trans_a else (a_shape[1], a_shape[2])
    N = b_shape[1] if trans_b else b_shape[2]
    return max(a_shape[0], b_shape[0]), M, N, K


def batch_norm_dims(shape):
    """(N, C, inner) of the N x C x ... shape of a batch-norm input."""
    return int(shape[0]), int(shape[1]), int(np.prod(shape[2:], dtype=np.int64))


#: batch-norm reductions on opencl and cuda (kernels/common/batchnorm.h) walk rows at least
#: this long row by row, shorter ones value by value ...
BATCH_NORM_ROW_WALK = 256
#: ... and give each work-group at least this many values of its channel
BATCH_NORM_MIN_CHUNK = 8192


def batch_norm_chunks(channels, per_channel, target_groups):
    """How many work-groups (chunks) share each channel of a batch-norm reduction: enough
    for ``target_groups`` groups in all where the channels alone are fewer, none smaller
    than BATCH_NORM_MIN_CHUNK values, at most 4096."""
    if channels == 0 or channels >= target_groups:
        return 1
    wanted = -(-target_groups // channels)
    return max(1, min(wanted, per_channel // BATCH_NORM_MIN_CHUNK, 4096))


_FLOAT_SUFFIX = {np.dtype(np.float32): "_f32", np.dtype(np.float64): "_f64"}


def float_kernel_suffix(backend, dtype, what):
    """'_f32' or '_f64', the suffix of a float kernel's entry point; a DtypeError naming the
    operation for any other dtype, or for float64 on a device without double precision."""
    from ..errors import DtypeError
    dtype = np.dtype(dtype)
    suffix = _FLOAT_SUFFIX.get(dtype)
    if suffix is None:
        raise DtypeError(f"{backend.name} {what} needs float32 or float64 input, got {dtype}")
    if dtype == np.float64 and not backend.supports_float64:
        raise DtypeError(f"{backend.name} {what}: the device {backend.device!r} does not "
                         f"support double precision (float64)")
    return suffix


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
