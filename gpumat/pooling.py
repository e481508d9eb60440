"""2-d max and average pooling, forward and backward, with PyTorch's exact semantics.

    y, idx = gm.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    dx = gm.max_pool2d_backward(dy, idx, x.shape, 3, stride=2, padding=1)

Inputs are NCHW (or CHW, treated as one image) single or double Arrays.  What "PyTorch's
semantics" means here, rule by rule (torch.nn.functional.max_pool2d / avg_pool2d):

  * output size per axis: ``floor((size + 2*pad - kernel) / stride) + 1``, rounded up instead
    with ``ceil_mode``, where a last window that would start past the input and its left
    padding is dropped; ``pad <= kernel // 2``; an output size below 1 is an error;
  * max pooling never picks a padding position (padding counts as -inf); the first maximum in
    window scan order (row by row) wins ties; a NaN wins over everything, and among NaNs the
    last one scanned does (torch's ``val > max || isnan(val)``); a window of -inf values
    reports its first in-bounds position;
  * indices are int64 flat positions ``h * W + w`` within the input plane (torch's
    ``return_indices`` format);
  * average pooling divides by the window clipped to the padded input (so windows that hang
    over the far edge in ``ceil_mode`` count only up to the padding) when
    ``count_include_pad``, else by the number of real input positions in the window;
  * backward passes are the gradients torch's autograd gives for these forwards.
    ``max_pool2d_backward`` routes each output gradient to the input position its index names;
    the kernels gather (each input position sums the outputs whose window covers it, in output
    order) or, where windows cannot overlap (stride >= kernel), scatter each output to its
    own positions, so they need no atomics and are deterministic; an index outside its
    output's window (never produced by the forward) contributes nothing.

Argument checking happens here; the backends (``Backend.pool2d`` / ``pool2d_backward``)
receive normalised ``(kh, kw)``-style tuples and the output size.
"""
import numpy as np

from .array import Array
from .errors import DtypeError, ShapeError

__all__ = ["max_pool2d", "avg_pool2d", "global_avg_pool2d", "max_pool2d_backward",
           "avg_pool2d_backward", "global_avg_pool2d_backward", "pool2d_output_size"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ---- argument handling ----------------------------------------------------------------------

def _pair(value, name, func):
    """An int or a 1- or 2-sequence of ints as a (height, width) tuple of Python ints."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{func}: {name} must be an int or a pair of ints, "
                        f"got {value!r}") from None
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or not all(isinstance(v, (int, np.integer))
                                  and not isinstance(v, (bool, np.bool_)) for v in items):
        raise TypeError(f"{func}: {name} must be an int or a pair of ints, got {value!r}")
    return (int(items[0]), int(items[1]))


def _geometry(func, kernel_size, stride, padding):
    """Normalised and checked (kernel, stride, padding) pairs."""
    kernel = _pair(kernel_size, "kernel_size", func)
    # torch also reads an empty stride sequence as "same as the kernel"
    empty = isinstance(stride, (tuple, list)) and len(stride) == 0
    stride = kernel if stride is None or empty else _pair(stride, "stride", func)
    padding = _pair(padding, "padding", func)
    if min(kernel) <= 0:
        raise ValueError(f"{func}: kernel_size must be positive, got {kernel}")
    if min(stride) <= 0:
        raise ValueError(f"{func}: stride must be positive, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"{func}: padding must be non-negative, got {padding}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{func}: padding should be at most half of kernel_size, got "
                         f"padding={padding} and kernel_size={kernel}")
    # the kernels index in 64 bits: a window's area (the average's divisor) must fit
    for name, pair in (("kernel_size", kernel), ("stride", stride), ("padding", padding)):
        if max(pair) > _MAX_EXTENT:
            raise ValueError(f"{func}: {name} {pair} is too large (at most {_MAX_EXTENT} "
                             f"along an axis)")
    return kernel, stride, padding


_MAX_EXTENT = 2**31 - 1


def pool2d_output_size(size, kernel, stride, pad, ceil_mode):
    """PyTorch's pooling output length along one axis (may be < 1: the caller rejects it)."""
    numerator = size + 2 * pad - kernel + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1          # floor division, also for negative numerators
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1                           # the last window must start inside input or left pad
    return out


def _output_hw(func, shape, kernel, stride, padding, ceil_mode):
    height, width = shape[-2], shape[-1]
    out_hw = (pool2d_output_size(height, kernel[0], stride[0], padding[0], ceil_mode),
              pool2d_output_size(width, kernel[1], stride[1], padding[1], ceil_mode))
    if min(out_hw) < 1:
        raise ShapeError(f"{func}: input of size {tuple(shape)} with kernel_size={kernel}, "
                         f"stride={stride}, padding={padding}, ceil_mode={bool(ceil_mode)} "
                         f"gives output size {out_hw}, which is too small")
    return out_hw


def _as_input(x, func, name="input"):
    if not isinstance(x, Array):
        from .creation import array
        x = array(x)
    if x.ndim not in (3, 4):
        raise ShapeError(f"{func}: {name} must be 4-d NCHW (or 3-d CHW), got shape "
                         f"{tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise DtypeError(f"{func}: {name} must be single (float32) or double (float64), "
                         f"got {x.dtype}")
    shape = tuple(x.shape)
    if min(shape[-3:]) == 0:
        raise ShapeError(f"{func}: {name} of shape {shape} has an empty channel, height or "
                         f"width dimension (only the batch may be empty)")
    return x


def _as_nchw(x):
    """(4-d view, whether the input was 3-d)."""
    return (x.reshape((1,) + tuple(x.shape)), True) if x.ndim == 3 else (x, False)


def _input_shape(input_shape, func):
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"{func}: input_shape must be a sequence of ints, "
                        f"got {input_shape!r}") from None
    if len(shape) not in (3, 4) or min(shape) < 0:
        raise ShapeError(f"{func}: input_shape must be a 4-d NCHW (or 3-d CHW) shape, "
                         f"got {shape}")
    if min(shape[-3:]) == 0:
        raise ShapeError(f"{func}: input_shape {shape} has an empty channel, height or width "
                         f"dimension")
    return shape


def _check_grad(grad_out, func, expected_shape):
    if not isinstance(grad_out, Array):
        from .creation import array
        grad_out = array(grad_out)
    if grad_out.dtype not in _FLOATS:
        raise DtypeError(f"{func}: grad_out must be single (float32) or double (float64), "
                         f"got {grad_out.dtype}")
    if tuple(grad_out.shape) != tuple(expected_shape):
        raise ShapeError(f"{func}: grad_out has shape {tuple(grad_out.shape)}, but the "
                         f"forward pass gives {tuple(expected_shape)}")
    return grad_out


def _to_backend(x, backend):
    from .array import from_numpy
    return from_numpy(np.asarray(x), backend)


# ---- forward --------------------------------------------------------------------------------

def _pool(x, func, mode, kernel_size, stride, padding, ceil_mode, count_include_pad,
          return_indices):
    x = _as_input(x, func)
    kernel, stride, padding = _geometry(func, kernel_size, stride, padding)
    out_hw = _output_hw(func, x.shape, kernel, stride, padding, ceil_mode)
    x4, squeezed = _as_nchw(x)
    backend = x4._backend
    out, indices = backend.pool2d(x4._live, mode, kernel, stride, padding, bool(ceil_mode),
                                  bool(count_include_pad), out_hw,
                                  return_indices=return_indices)
    out = Array._wrap(backend, out)
    indices = Array._wrap(backend, indices) if indices is not None else None
    if squeezed:
        out = out.reshape(tuple(out.shape[1:]))
        indices = indices.reshape(tuple(indices.shape[1:])) if indices is not None else None
    return out, indices


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, return_indices=False):
    """Max pooling over the last two axes of an NCHW (or CHW) Array, as
    ``torch.nn.functional.max_pool2d``; with ``return_indices`` also the int64 flat
    ``h * W + w`` position of each maximum in its input plane."""
    out, indices = _pool(x, "max_pool2d", "max", kernel_size, stride, padding, ceil_mode,
                         True, bool(return_indices))
    return (out, indices) if return_indices else out


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """Average pooling over the last two axes of an NCHW (or CHW) Array, as
    ``torch.nn.functional.avg_pool2d`` (no ``divisor_override``)."""
    out, _ = _pool(x, "avg_pool2d", "avg", kernel_size, stride, padding, ceil_mode,
                   count_include_pad, False)
    return out


def global_avg_pool2d(x):
    """The mean of each H x W plane: NCHW -> N x C x 1 x 1 (CHW -> C x 1 x 1), as
    ``torch.nn.functional.adaptive_avg_pool2d(x, 1)``.  Runs on the reduction kernels (the cpu
    backend: a native kernel summing each plane in float64)."""
    from .array import mean
    x = _as_input(x, "global_avg_pool2d")
    shape = tuple(x.shape)
    planes = shape[:-2]
    backend = x._backend
    dedicated = getattr(backend, "global_avg_pool2d", None)      # the cpu backend's kernel
    if dedicated is not None:
        x4, _ = _as_nchw(x)
        return Array._wrap(backend, dedicated(x4._live)).reshape(planes + (1, 1))
    flat = x.reshape(planes + (shape[-2] * shape[-1],))
    return mean(flat, axis=flat.ndim - 1, keepdims=True).reshape(planes + (1, 1))


# ---- backward -------------------------------------------------------------------------------

def _pool_backward(func, mode, grad_out, indices, input_shape, kernel_size, stride, padding,
                   ceil_mode, count_include_pad):
    input_shape = _input_shape(input_shape, func)
    kernel, stride, padding = _geometry(func, kernel_size, stride, padding)
    out_hw = _output_hw(func, input_shape, kernel, stride, padding, ceil_mode)
    expected = input_shape[:-2] + out_hw
    grad_out = _check_grad(grad_out, func, expected)
    backend = grad_out._backend
    squeezed = len(input_shape) == 3
    shape4 = (1,) + input_shape if squeezed else input_shape
    grad4 = grad_out.reshape((1,) + expected) if squeezed else grad_out
    index_native = None
    if mode == "max":
        if not isinstance(indices, Array):
            indices = _to_backend(indices, backend)
        if indices.dtype != np.int64:
            raise DtypeError(f"{func}: indices must be int64 (as max_pool2d returns them), "
                             f"got {indices.dtype}")
        if tuple(indices.shape) != expected:
            raise ShapeError(f"{func}: indices have shape {tuple(indices.shape)}, but the "
                             f"forward pass gives {expected}")
        if indices._backend is not backend:
            from .errors import BackendMismatchError
            raise BackendMismatchError(
                f"{func}: grad_out is on {backend.name} but indices are on "
                f"{indices._backend.name}")
        index_native = (indices.reshape((1,) + expected) if squeezed else indices)._live
    native = backend.pool2d_backward(grad4._live, index_native, shape4, mode, kernel, stride,
                                     padding, bool(count_include_pad), out_hw)
    grad_in = Array._wrap(backend, native)
    return grad_in.reshape(input_shape) if squeezed else grad_in


def max_pool2d_backward(grad_out, indices, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False):
    """Gradient of ``max_pool2d`` with respect to its input: each output gradient is added at
    the input position ``indices`` names (the ``return_indices`` output of the forward)."""
    return _pool_backward("max_pool2d_backward", "max", grad_out, indices, input_shape,
                          kernel_size, stride, padding, ceil_mode, True)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True):
    """Gradient of ``avg_pool2d`` with respect to its input."""
    return _pool_backward("avg_pool2d_backward", "avg", grad_out, None, input_shape,
                          kernel_size, stride, padding, ceil_mode, count_include_pad)


def global_avg_pool2d_backward(grad_out, input_shape):
    """Gradient of ``global_avg_pool2d``: each plane gets its output gradient / (H * W)."""
    from .array import map_op
    func = "global_avg_pool2d_backward"
    input_shape = _input_shape(input_shape, func)
    grad_out = _check_grad(grad_out, func, input_shape[:-2] + (1, 1))
    scaled = map_op("divide", grad_out, float(input_shape[-2] * input_shape[-1]))
    return scaled.broadcast_to(input_shape)
