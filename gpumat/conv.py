"""Two-dimensional convolution of NCHW Arrays with PyTorch's semantics, by im2col and GEMM.

    y = gm.conv2d(x, w, bias, stride=1, padding=0, dilation=1, groups=1)

``x`` is N x C x H x W, ``w`` is O x (C / groups) x kh x kw, ``y`` is N x O x OH x OW with
OH = (H + 2 ph - dh (kh - 1) - 1) // sh + 1 (likewise OW).  Lowering, per image and group:
y = W (O/g x C/g*kh*kw) @ im2col(x), run as *one* batched matmul over the images and groups
(the weight broadcast over the batch).  Two shapes skip the column matrix: 1x1 kernels with
stride 1 and no padding are a plain reshape and matmul, and depthwise convolutions (groups ==
C > 1, O a multiple of C) run a direct kernel, one work-item per output element, instead of
C tiny GEMMs.  The gradients follow the same paths:

    grad_x = col2im(W^T @ grad_y)                    conv2d_backward_input
    grad_w = sum over images of grad_y @ cols^T      conv2d_backward_weight
    grad_b = grad_y summed over N, H, W              conv2d_backward_bias

On cpu, ungrouped passes first ask the backend's direct kernels (``conv2d_direct`` and its
gradient twins, gpumat/backends/cpu_conv.py: no column matrix at all), which decline the
layers that im2col + BLAS does faster; everything below is then the way.
Ungrouped products run through ``backend.conv_gemm`` where the backend has it (opencl, cpu):
one launch over the batch that reads W^T and grad_y^T in place (strides, packing or BLAS
transpose flags) instead of permute copies.  With stride 1 and a weight much smaller than x,
grad_x is instead the forward convolution of grad_y with the flipped, channel-swapped weight
(im2col + GEMM beat GEMM + col2im).

Stride, padding, dilation and kernel sizes are an int or an (height, width) pair.  Every
argument is checked here, with errors that name it; the backends get valid input only.
"""
import numbers

import numpy as np

from .array import Array, _as_array, _check_backend_dtype, _operands, matmul
from .errors import DtypeError, ShapeError

__all__ = ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
           "im2col", "col2im"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ---- argument checks ------------------------------------------------------------------------

def _is_int(v):
    # plain ints (the common case) skip the ABC check
    return type(v) is int or (isinstance(v, numbers.Integral)
                              and not isinstance(v, (bool, np.bool_)))


def _pair(value, name, what, minimum):
    """An int or a 2-sequence of ints as an (height, width) tuple, each >= minimum."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(_is_int(v) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{what}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        need = "positive" if minimum == 1 else "non-negative"
        raise ShapeError(f"{what}: {name} must be {need}, got {value!r}")
    return pair


def _shape4(shape, name, what):
    if not (isinstance(shape, (tuple, list)) and len(shape) == 4
            and all(_is_int(v) for v in shape)):
        raise ShapeError(f"{what}: {name} must be a 4-tuple of ints (N, C, H, W), got {shape!r}")
    shape = tuple(int(v) for v in shape)
    if min(shape) < 0:
        raise ShapeError(f"{what}: {name} has a negative dimension: {shape}")
    return shape


def _check_ndim(a, name, ndim, layout, what):
    if a.ndim != ndim:
        raise ShapeError(f"{what}: {name} must be {ndim}-d ({layout}), got shape {a.shape}")


def _check_dtypes(what, **arrays):
    """Every named Array is float32 or float64, and all share one dtype."""
    for name, a in arrays.items():
        if a.dtype not in _FLOATS:
            raise DtypeError(f"{what}: {name} must be single (float32) or double (float64), "
                             f"got {a.dtype}")
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} is {dt}" for name, dt in dtypes.items())
        raise DtypeError(f"{what}: dtypes differ ({listed}); convert with .astype(...)")
    first = next(iter(arrays.values()))
    _check_backend_dtype(first._backend, first.dtype)


def _arrays(what, **values):
    """The named values as Arrays on one backend (NumPy data is uploaded there)."""
    names = list(values)
    converted, backend = _operands(tuple(values.values()), what)
    return backend, {n: _as_array(v, backend) for n, v in zip(names, converted)}


class _Geometry:
    """The checked hyper-parameters of one convolution and its output size."""

    __slots__ = ("kernel", "stride", "padding", "dilation", "out_hw")

    def __init__(self, what, input_hw, kernel, stride, padding, dilation):
        self.kernel = _pair(kernel, "kernel_size", what, 1)
        self.stride = _pair(stride, "stride", what, 1)
        self.padding = _pair(padding, "padding", what, 0)
        self.dilation = _pair(dilation, "dilation", what, 1)
        out = []
        for axis, size, k, s, p, d in zip(("height", "width"), input_hw, self.kernel,
                                          self.stride, self.padding, self.dilation):
            span = d * (k - 1) + 1
            if size + 2 * p < span:
                raise ShapeError(
                    f"{what}: the kernel {axis} {k} with dilation {d} spans {span} pixels, more "
                    f"than the padded input {axis} {size} + 2*{p} = {size + 2 * p}; the output "
                    f"would be empty")
            out.append((size + 2 * p - span) // s + 1)
        self.out_hw = tuple(out)

    def args(self):
        return self.kernel, self.stride, self.padding, self.dilation, self.out_hw

    @property
    def pointwise(self):
        """1x1 kernel, stride 1, no padding: the columns are the input itself."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)


def _check_groups(groups, what):
    if not _is_int(groups):
        raise TypeError(f"{what}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ShapeError(f"{what}: groups must be positive, got {groups}")
    return int(groups)


def _check_channels(in_channels, weight_shape, groups, what, input_name="x"):
    out_channels, group_channels = weight_shape[:2]
    if in_channels != groups * group_channels:
        raise ShapeError(
            f"{what}: {input_name} has {in_channels} channels but the weight {weight_shape} "
            f"with groups={groups} expects groups * w.shape[1] = {groups * group_channels}")
    if out_channels % groups:
        raise ShapeError(f"{what}: the weight's {out_channels} output channels are not a "
                         f"multiple of groups={groups}")


def _prepare(what, input_shape, weight_shape, stride, padding, dilation, groups,
             input_name="x"):
    groups = _check_groups(groups, what)
    geometry = _Geometry(what, input_shape[2:], weight_shape[2:], stride, padding, dilation)
    _check_channels(input_shape[1], weight_shape, groups, what, input_name)
    return geometry, groups


def _depthwise(input_shape, groups):
    return groups > 1 and groups == input_shape[1]


# ---- convolution ----------------------------------------------------------------------------

def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d: N x C x H x W input, O x C/groups x kh x kw weight,
    optional bias of O; returns N x O x OH x OW."""
    what = "conv2d"
    values = {"x": x, "w": w} if bias is None else {"x": x, "w": w, "bias": bias}
    backend, arrays = _arrays(what, **values)
    x, w, bias = arrays["x"], arrays["w"], arrays.get("bias")
    _check_ndim(x, "x", 4, "N, C, H, W", what)
    _check_ndim(w, "w", 4, "O, C/groups, kh, kw", what)
    _check_dtypes(what, **arrays)
    geometry, groups = _prepare(what, x.shape, w.shape, stride, padding, dilation, groups)
    n, c, h, width = x.shape
    o = w.shape[0]
    if bias is not None and bias.shape != (o,):
        raise ShapeError(f"{what}: bias must have shape ({o},) for {o} output channels, got "
                         f"{bias.shape}")
    oh, ow = geometry.out_hw
    if _depthwise(x.shape, groups):
        y = Array._wrap(backend, backend.depthwise_conv2d(
            x._live, w._live, geometry.stride, geometry.padding, geometry.dilation, o // c,
            geometry.out_hw))
    else:
        # the direct kernel adds the bias as it stores its results (the same bits)
        y = _direct(backend, groups, "conv2d_direct", x._live, w._live, geometry.stride,
                    geometry.padding, geometry.dilation, geometry.out_hw,
                    None if bias is None else bias._live)
        if y is not None:
            return y
        y = _gemm_forward(backend, x, w, geometry, groups).reshape(n, o, oh, ow)
    if bias is not None:
        # one pass of the backend's bias kernel (on cpu split over the native threads)
        y = Array._wrap(backend, backend.bias_act(y._live, bias._live, 1, "identity", 0.0))
    return y


def _direct(backend, groups, method, *args):
    """The backend's direct kernel for an ungrouped convolution pass (``method``: cpu's
    conv2d_direct and its gradient twins, gpumat/backends/cpu_conv.py) as an Array, or None
    where there is none or it declines the layer (im2col + GEMM is then the way)."""
    direct = getattr(backend, method, None)
    if direct is None or groups != 1:
        return None
    out = direct(*args)
    return None if out is None else Array._wrap(backend, out)


def _weight_matrix(w, groups):
    """The weight as (O, C*kh*kw), or (groups, O/groups, C/groups*kh*kw) when grouped."""
    o = w.shape[0]
    k = w.size // o
    return w.reshape(o, k) if groups == 1 else w.reshape(groups, o // groups, k)


def _columns(backend, x, geometry, groups):
    """(N, C*kh*kw, L) columns of x, or (N, groups, C/groups*kh*kw, L) when grouped."""
    n, c, h, width = x.shape
    if geometry.pointwise:          # stride 1, no padding: the input already is the matrix
        cols = x.reshape(n, c, h * width)
    else:
        # cpu: read-only columns, which the weight gradient reuses from the forward pass
        shared = {"shared": True} if getattr(backend, "shares_columns", False) else {}
        cols = Array._wrap(backend, backend.im2col(x._live, *geometry.args(), **shared))
    if groups > 1:
        cols = cols.reshape(n, groups, cols.shape[1] // groups, cols.shape[2])
    return cols


def _direct_gemm(backend, groups):
    """Whether the backend runs the convolution's products itself (``backend.conv_gemm``:
    opencl, cpu): one launch over the batch with operands read in place (a transposed operand
    through strides, packing or BLAS flags, no permute copies); on opencl with gemm parameters
    for short products."""
    return groups == 1 and hasattr(backend, "conv_gemm")


def _gemm_forward(backend, x, w, geometry, groups):
    cols = _columns(backend, x, geometry, groups)
    if _direct_gemm(backend, groups):
        n, k, length = cols.shape
        o = w.shape[0]
        # (O, K) @ (K, L) for every image: y comes out N x O x L, NCHW already
        y = Array._wrap(backend, backend.conv_gemm(w._live, cols._live, o, length, k, n,
                                                   a_sb=0, b_sb=k * length))
        cols.release()
        return y
    # (O, K) @ (N, K, L) or (G, O/G, K/G) @ (N, G, K/G, L): one matmul, weight broadcast
    y = matmul(_weight_matrix(w, groups), cols)
    cols.release()
    return y


# ---- gradients ------------------------------------------------------------------------------

def _check_grad_out(grad_out, input_shape, out_channels, geometry, what):
    expected = (input_shape[0], out_channels) + geometry.out_hw
    if grad_out.shape != expected:
        raise ShapeError(f"{what}: grad_out has shape {grad_out.shape}, but the convolution "
                         f"of an input {input_shape} gives {expected}")


def _swap_last(m):
    """``m`` with its last two axes swapped (materialised)."""
    order = list(range(m.ndim))
    order[-2:] = order[-1], order[-2]
    return m.permute(order)


def conv2d_backward_input(grad_out, w, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its input (of shape ``input_shape``), given the
    gradient ``grad_out`` of its output and the weight ``w``."""
    what = "conv2d_backward_input"
    backend, arrays = _arrays(what, grad_out=grad_out, w=w)
    grad_out, w = arrays["grad_out"], arrays["w"]
    input_shape = _shape4(input_shape, "input_shape", what)
    _check_ndim(grad_out, "grad_out", 4, "N, O, OH, OW", what)
    _check_ndim(w, "w", 4, "O, C/groups, kh, kw", what)
    _check_dtypes(what, **arrays)
    geometry, groups = _prepare(what, input_shape, w.shape, stride, padding, dilation, groups,
                                "input_shape")
    o = w.shape[0]
    _check_grad_out(grad_out, input_shape, o, geometry, what)
    n, c, h, width = input_shape
    if _depthwise(input_shape, groups):
        return Array._wrap(backend, backend.depthwise_conv2d_backward_input(
            grad_out._live, w._live, input_shape, geometry.stride, geometry.padding,
            geometry.dilation, o // c, geometry.out_hw))
    grad_x = _direct(backend, groups, "conv2d_direct_backward_input", grad_out._live, w._live,
                     input_shape, geometry.stride, geometry.padding, geometry.dilation)
    if grad_x is not None:
        return grad_x
    if _as_forward_conv(input_shape, w.shape, geometry, groups):
        return _backward_input_by_forward(grad_out, w, geometry)
    length = geometry.out_hw[0] * geometry.out_hw[1]
    grad = grad_out.reshape(n, o, length) if groups == 1 else \
        grad_out.reshape(n, groups, o // groups, length)
    k = c * w.shape[2] * w.shape[3]
    if _direct_gemm(backend, groups):     # W^T read through strides, not copied
        cols = Array._wrap(backend, backend.conv_gemm(w._live, grad._live, k, length, o, n,
                                                      a_sb=0, b_sb=o * length, trans_a=True))
    else:
        cols = matmul(_swap_last(_weight_matrix(w, groups)), grad)
    cols = cols.reshape(n, k, length)
    if geometry.pointwise:
        return cols.reshape(input_shape)
    grad_x = Array._wrap(backend, backend.col2im(cols._live, input_shape, *geometry.args()))
    cols.release()
    return grad_x


#: the forward-convolution route of conv2d_backward_input pays for flipping and transposing
#: the weight (a permute copy, slow on opencl) only when the weight is this many times smaller
#: than grad_x, and for its extra products only when grad_x has at most this many times the
#: pixels of grad_out (padding about "same")
BACKWARD_INPUT_WEIGHT_RATIO = 16
BACKWARD_INPUT_AREA_RATIO = 1.25


def _as_forward_conv(input_shape, weight_shape, geometry, groups):
    """Whether the input gradient runs as a forward convolution of grad_out: ungrouped,
    stride 1, a kernel larger than 1x1, padding at most the kernel's span - 1 (so the
    transposed convolution's padding is not negative), and the ratios above."""
    if groups != 1 or geometry.stride != (1, 1) or geometry.kernel == (1, 1):
        return False
    if not all(p <= d * (k - 1) for k, p, d in zip(geometry.kernel, geometry.padding,
                                                   geometry.dilation)):
        return False
    n, c, h, width = input_shape
    oh, ow = geometry.out_hw
    weight_size = weight_shape[0] * weight_shape[1] * weight_shape[2] * weight_shape[3]
    return (weight_size * BACKWARD_INPUT_WEIGHT_RATIO <= n * c * h * width
            and h * width <= BACKWARD_INPUT_AREA_RATIO * oh * ow)


def _backward_input_by_forward(grad_out, w, geometry):
    """Stride 1: grad_x = conv2d(grad_out, w flipped in space with in/out channels swapped,
    padding d (k - 1) - p, same dilation), whose im2col + GEMM is far cheaper than the GEMM +
    col2im scatter-sum (col2im gathers kh * kw taps per pixel; im2col copies).  Every pixel
    of grad_x sums the same products as col2im, in a different order (float rounding)."""
    flipped = w.permute(1, 0, 2, 3)[:, :, ::-1, ::-1]
    padding = tuple(d * (k - 1) - p for k, p, d in zip(geometry.kernel, geometry.padding,
                                                       geometry.dilation))
    grad_x = conv2d(grad_out, flipped, padding=padding, dilation=geometry.dilation)
    flipped.release()
    return grad_x


def conv2d_backward_weight(grad_out, x, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of conv2d with respect to its weight (of shape ``weight_shape``), given the
    gradient ``grad_out`` of its output and the input ``x``."""
    what = "conv2d_backward_weight"
    backend, arrays = _arrays(what, grad_out=grad_out, x=x)
    grad_out, x = arrays["grad_out"], arrays["x"]
    weight_shape = _shape4(weight_shape, "weight_shape", what)
    _check_ndim(grad_out, "grad_out", 4, "N, O, OH, OW", what)
    _check_ndim(x, "x", 4, "N, C, H, W", what)
    _check_dtypes(what, **arrays)
    geometry, groups = _prepare(what, x.shape, weight_shape, stride, padding, dilation, groups)
    o = weight_shape[0]
    _check_grad_out(grad_out, x.shape, o, geometry, what)
    n, c = x.shape[:2]
    if _depthwise(x.shape, groups):
        return Array._wrap(backend, backend.depthwise_conv2d_backward_weight(
            grad_out._live, x._live, weight_shape, geometry.stride, geometry.padding,
            geometry.dilation, o // c, geometry.out_hw))
    if n == 0:                      # no images: nothing to sum
        return Array._wrap(backend, backend.full(weight_shape, 0, x.dtype))
    grad_w = _direct(backend, groups, "conv2d_direct_backward_weight", grad_out._live, x._live,
                     weight_shape, geometry.stride, geometry.padding, geometry.dilation)
    if grad_w is not None:
        return grad_w
    length = geometry.out_hw[0] * geometry.out_hw[1]
    cols = _columns(backend, x, geometry, groups)
    grad = grad_out.reshape(n, o, length) if groups == 1 else \
        grad_out.reshape(n, groups, o // groups, length)
    if _direct_gemm(backend, groups):
        # per image cols (K x L) @ grad^T (L x O), grad^T packed by the gemm (small: O rows),
        # then the sum over the images and one transpose of the K x O result
        k = cols.shape[1]
        per_image = Array._wrap(backend, backend.conv_gemm(
            cols._live, grad._live, k, o, length, n, a_sb=k * length, b_sb=o * length,
            trans_b=True))
        cols.release()
        if hasattr(backend, "batch_sum_transpose"):     # one launch for both (opencl)
            grad_w = Array._wrap(backend, backend.batch_sum_transpose(per_image._live))
            per_image.release()
            return grad_w.reshape(weight_shape)
        total = per_image.sum(axis=0) if n > 1 else per_image.reshape(k, o)
        return _swap_last(total).reshape(weight_shape)
    # per image (and group) grad @ cols^T, then the sum over the images.  One operand must be
    # transposed (materialised); the smaller one is: grad_out (O/g rows) is usually much
    # smaller than the columns (C/g * kh * kw rows), and then (cols @ grad^T)^T is computed.
    if grad.shape[-2] < cols.shape[-2]:
        per_image = matmul(cols, _swap_last(grad))
        cols.release()
        return _swap_last(per_image.sum(axis=0)).reshape(weight_shape)
    per_image = matmul(grad, _swap_last(cols))
    cols.release()
    return per_image.sum(axis=0).reshape(weight_shape)


def conv2d_backward_bias(grad_out):
    """Gradient of conv2d with respect to its bias: grad_out summed over N, H and W."""
    what = "conv2d_backward_bias"
    backend, arrays = _arrays(what, grad_out=grad_out)
    grad_out = arrays["grad_out"]
    _check_ndim(grad_out, "grad_out", 4, "N, O, OH, OW", what)
    _check_dtypes(what, grad_out=grad_out)
    n, o, oh, ow = grad_out.shape
    return grad_out.reshape(n, o, oh * ow).sum(axis=2).sum(axis=0)


# ---- the lowering itself --------------------------------------------------------------------

def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """The (N, C*kh*kw, OH*OW) column matrix of NCHW ``x``: row c*kh*kw + i*kw + j, column
    oh*OW + ow holds x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (zero in the padding)."""
    what = "im2col"
    backend, arrays = _arrays(what, x=x)
    x = arrays["x"]
    _check_ndim(x, "x", 4, "N, C, H, W", what)
    _check_dtypes(what, x=x)
    geometry = _Geometry(what, x.shape[2:], kernel_size, stride, padding, dilation)
    return Array._wrap(backend, backend.im2col(x._live, *geometry.args()))


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """im2col's adjoint: an NCHW Array of ``input_shape`` where each pixel sums the entries of
    ``cols`` that im2col copies from it (overlapping windows add up)."""
    what = "col2im"
    backend, arrays = _arrays(what, cols=cols)
    cols = arrays["cols"]
    input_shape = _shape4(input_shape, "input_shape", what)
    _check_ndim(cols, "cols", 3, "N, C*kh*kw, OH*OW", what)
    _check_dtypes(what, cols=cols)
    geometry = _Geometry(what, input_shape[2:], kernel_size, stride, padding, dilation)
    n, c = input_shape[:2]
    expected = (n, c * geometry.kernel[0] * geometry.kernel[1],
                geometry.out_hw[0] * geometry.out_hw[1])
    if cols.shape != expected:
        raise ShapeError(f"{what}: cols has shape {cols.shape}, but an input {input_shape} "
                         f"with this geometry gives columns {expected}")
    return Array._wrap(backend, backend.col2im(cols._live, input_shape, *geometry.args()))
