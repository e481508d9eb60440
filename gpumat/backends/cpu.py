"""The cpu backend: NumPy/BLAS, plus gpumat's native module for the kernels NumPy lacks.

Pooling, im2col / col2im, the fused activations and batch normalisation run in the native
module (kernels/cpu/) when it is built, and otherwise, after one NativeFallbackWarning, on
their NumPy twins: the array-module methods this class inherits
(gpumat/backends/*_array_module.py), which give the same values, bit for bit except the bias
gradient (accumulated in float64 natively), elu (libm's exp against NumPy's), average
pooling over big tiles (NumPy sums those in another order) and batch norm's statistics and
gradient sums (both accumulated in float64, in other orders: the values computed from them
may differ in the last bits).  Basic-indexing results and concatenations of at least
NATIVE_COPY elements are copied natively too (kernels/cpu/copy.hpp), bit for bit.  The native
kernels split their work over one pool of threads that sleep between calls
(kernels/cpu/thread_pool.hpp; parallel.hpp for the one-pass kernels), so results do not
depend on the thread count.  Freed native results wait in a small cache for the next result
of their size (kernels/cpu/array_checks.hpp), counted in memory_info()'s bytes_held.
"""
import functools
import os
import platform

import numpy as np

from .. import _openblas, native
from ..errors import DeviceMemoryError
from .array_module import ArrayModuleBackend
from .base import ACTIVATIONS, numpy_key
from .cpu_columns import ColumnCache

#: the native max pooling tracks positions in int32: larger planes take the NumPy path
_NATIVE_PLANE_LIMIT = 2 ** 31

#: map ops with a native same-shape kernel, by their codes in kernels/cpu/arith.hpp
ARITH_OPS = {"add": 0, "subtract": 1, "multiply": 2, "divide": 3}
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class CPUBackend(ArrayModuleBackend):
    name = "cpu"
    xp = np

    def __init__(self):
        super().__init__()
        self._columns = ColumnCache()

    @property
    def device(self):
        return f"{cpu_name()} ({os.cpu_count()} threads), NumPy {np.__version__}"

    def _alloc(self, make, shape, dtype):
        try:
            return make()
        except MemoryError as exc:
            raise DeviceMemoryError(_oom_message("cpu", shape, dtype, exc)) from None
        except ValueError as exc:
            if "array is too big" not in str(exc):      # NumPy: more bytes than an intp
                raise
            raise DeviceMemoryError(_oom_message("cpu", shape, dtype, exc)) from None

    def memory_info(self):
        info = super().memory_info()
        # remembered convolution columns, and freed native results kept for reuse
        info["bytes_held"] = self._columns.nbytes + native.buffer_cache_bytes()
        return info

    # ---- products -------------------------------------------------------------------------
    #: 2-d products of at most this many multiply-adds (a small network's dense layers) run
    #: in the native module on the calling thread: BLAS would run them on its threads, which
    #: then spin for a long while after each call on the core the convolutions' threads need
    #: (LeNet-5, 2 cores, another process busy on one: 7.2 ms a step with BLAS's threads,
    #: 3.1 ms without)
    SMALL_GEMM = 1 << 23
    #: ... and whose op(b) has at most this many elements (copied into cache-sized rows;
    #: past L2 BLAS's blocking wins: 64 x 1024 x 512 ran at 32 GFLOP/s natively, 200 in BLAS)
    SMALL_GEMM_B = 1 << 18

    def gemm(self, a, b, c, alpha, beta, trans_a, trans_b):
        kernels = native.kernels()
        work = a.shape[1] * a.shape[2] * (b.shape[1] if trans_b else b.shape[2])
        if (kernels is None or a.shape[0] != 1 or b.shape[0] != 1
                or b.shape[1] * b.shape[2] > self.SMALL_GEMM_B or work > self.SMALL_GEMM):
            blas_product(a.dtype, work)
            return super().gemm(a, b, c, alpha, beta, trans_a, trans_b)
        m = a.shape[2] if trans_a else a.shape[1]
        n = b.shape[1] if trans_b else b.shape[2]
        c2 = None if c is None or beta == 0 else c[0]
        out = self._run(lambda: kernels.gemm(a[0], b[0], c2, alpha, beta, trans_a, trans_b),
                        (m, n), a.dtype)
        return out.reshape((1, m, n))

    def matmul(self, a, b, out_dtype):
        if a.ndim >= 2 and b.ndim >= 2:
            blas_product(np.dtype(out_dtype), a.shape[-2] * a.shape[-1] * b.shape[-1])
        return super().matmul(a, b, out_dtype)

    # ---- elementwise arithmetic -----------------------------------------------------------
    #: elements from which a same-shape float add / subtract / multiply / divide runs in the
    #: native module (kernels/cpu/arith.hpp), split over its threads: NumPy's loop runs on one
    #: thread (ResNet-20's residual additions at batch 32, 2 MiB each: 163-226 us, natively
    #: 68-80 us on 2 cores, where reading and writing that much memory takes about as long)
    NATIVE_ARITH = 1 << 15

    def map(self, op, args, out_dtype, compute_dtype):
        code = ARITH_OPS.get(op)
        if code is not None and len(args) == 2:
            a, b = args
            if (type(a) is np.ndarray and type(b) is np.ndarray and a.shape == b.shape
                    and a.size >= self.NATIVE_ARITH and a.dtype == b.dtype == out_dtype
                    == compute_dtype and a.dtype in _NATIVE_FLOATS
                    and a.flags.c_contiguous and b.flags.c_contiguous):
                kernels = native.kernels()
                if kernels is not None:
                    return self._run(lambda: kernels.arith(a, b, code), a.shape, a.dtype)
        return super().map(op, args, out_dtype, compute_dtype)

    def pack_signs(self, a):
        return self._track(native.pack_signs(a))

    def global_avg_pool2d(self, x):
        """The mean of each plane of NCHW x, (N, C, 1, 1), summed in float64: natively (split
        over the threads), else by NumPy.  (NumPy's own float32 mean over short rows ran at a
        tenth of torch's speed on ResNet's 8 x 8 planes.)"""
        kernels = native.kernels()
        shape = x.shape[:2] + (1, 1)
        if kernels is None:       # (sums from +0.0, as the kernel's: a plane of -0.0 gives +0.0)
            size = x.shape[2] * x.shape[3]

            def twin():
                with np.errstate(invalid="ignore"):       # inf - inf: NaN, as natively
                    return (x.sum(axis=(2, 3), dtype=np.float64, keepdims=True, initial=0.0)
                            / size).astype(x.dtype)
            return self._new(twin, shape, x.dtype)
        return self._run(lambda: kernels.pool2d_global_avg(x), shape, x.dtype)

    # ---- copies ---------------------------------------------------------------------------
    #: elements from which a strided copy (a basic-indexing result, a concatenation) runs in
    #: the native module, split over its threads: NumPy copies a strided view element by
    #: element on one thread (x[:, :, ::2, ::2] of a 32 x 16 x 32 x 32 batch: 62-67 us, natively
    #: 21-32 us on 2 cores; a contiguous 2 MiB copy 96 vs 37 us)
    NATIVE_COPY = 1 << 15

    def getitem(self, a, key):
        kernels = native.kernels() if a.size >= self.NATIVE_COPY else None
        if kernels is None or not _copyable(a.dtype):
            return super().getitem(a, key)
        view = a[numpy_key(key)]
        if not np.may_share_memory(view, a):     # a fresh array already (index arrays)
            return self._new(lambda: view, np.shape(view), view.dtype)
        if view.size < self.NATIVE_COPY:
            return self._new(lambda: np.array(view, copy=True), view.shape, view.dtype)
        return self._run(lambda: kernels.copy_strided(view), view.shape, view.dtype)

    def concatenate(self, arrays, axis, dtype):
        kernels = native.kernels()
        total = sum(x.size for x in arrays)
        if (kernels is None or total < self.NATIVE_COPY or not _copyable(np.dtype(dtype))
                or any(x.dtype != dtype for x in arrays) or arrays[0].ndim == 0):
            return super().concatenate(arrays, axis, dtype)
        return self._run(lambda: kernels.concatenate(list(arrays), axis), None, dtype)

    def _run(self, make, shape, dtype):
        """The natives a native-module call returns, counted (out of memory translated)."""
        return self._track(self._alloc(make, shape, dtype))

    # ---- pooling --------------------------------------------------------------------------
    def pool2d(self, x, mode, kernel, stride, padding, ceil_mode, count_include_pad, out_hw,
               return_indices=True):
        kernels = native.kernels()
        if (kernels is None or mode not in ("max", "avg")
                or x.shape[2] * x.shape[3] >= _NATIVE_PLANE_LIMIT):
            return super().pool2d(x, mode, kernel, stride, padding, ceil_mode,
                                  count_include_pad, out_hw, return_indices)
        shape = x.shape[:2] + tuple(out_hw)
        if mode == "avg":
            return self._run(lambda: kernels.pool2d_avg(x, kernel, stride, padding, out_hw,
                                                        count_include_pad),
                             shape, x.dtype), None
        out, index = self._alloc(lambda: kernels.pool2d_max(x, kernel, stride, padding, out_hw,
                                                            return_indices), shape, x.dtype)
        return self._track(out), (None if index is None else self._track(index))

    def pool2d_backward(self, grad_out, indices, input_shape, mode, kernel, stride, padding,
                        count_include_pad, out_hw):
        kernels = native.kernels()
        if kernels is None or mode not in ("max", "avg"):
            return super().pool2d_backward(grad_out, indices, input_shape, mode, kernel,
                                           stride, padding, count_include_pad, out_hw)
        input_hw = tuple(input_shape[2:])
        if mode == "max":
            make = lambda: kernels.pool2d_max_backward(grad_out, indices, input_hw, kernel,
                                                       stride, padding)
        else:
            make = lambda: kernels.pool2d_avg_backward(grad_out, input_hw, kernel, stride,
                                                       padding, count_include_pad)
        return self._run(make, tuple(input_shape), grad_out.dtype)

    # ---- convolution lowering -------------------------------------------------------------
    #: im2col takes shared=True (gpumat/conv.py's own lowering, see cpu_columns.py)
    shares_columns = True

    def im2col(self, x, kernel, stride, padding, dilation, out_hw, shared=False):
        """Backend.im2col; with ``shared`` (gpumat/conv.py's lowering) the columns of an
        input lowered before (the forward pass's, for the weight gradient) are reused: a
        read-only result, valid until the next shared lowering of an input of that shape
        in this thread (see cpu_columns.py)."""
        kernels = native.kernels()
        if kernels is None:
            return super().im2col(x, kernel, stride, padding, dilation, out_hw)
        if not shared:
            return self._run(lambda: kernels.im2col(x, kernel, stride, padding, dilation,
                                                    out_hw), None, x.dtype)
        geometry = (tuple(kernel), tuple(stride), tuple(padding), tuple(dilation),
                    tuple(out_hw))
        n, c = x.shape[:2]
        shape = (n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1])
        lower = lambda x, out: kernels.im2col(x, kernel, stride, padding, dilation, out_hw,
                                              out=out)
        return self._track(self._alloc(lambda: self._columns.columns(
            x, geometry, shape, lower, kernels.same_bytes), shape, x.dtype))

    def col2im(self, cols, input_shape, kernel, stride, padding, dilation, out_hw):
        kernels = native.kernels()
        if kernels is None:
            return super().col2im(cols, input_shape, kernel, stride, padding, dilation, out_hw)
        return self._run(lambda: kernels.col2im(cols, tuple(input_shape), kernel, stride,
                                                padding, dilation, out_hw),
                         tuple(input_shape), cols.dtype)

    # ---- activations ----------------------------------------------------------------------
    def bias_act(self, x, b, axis, act, param):
        kernels = native.kernels()
        code = ACTIVATIONS.get(act)
        if kernels is None or code is None:
            return super().bias_act(x, b, axis, act, param)
        return self._run(lambda: kernels.bias_act(x, b, axis, code, param), x.shape, x.dtype)

    def act_backward(self, grad, x, act, param):
        kernels = native.kernels()
        code = ACTIVATIONS.get(act)
        if kernels is None or code is None:
            return super().act_backward(grad, x, act, param)
        return self._run(lambda: kernels.act_backward(grad, x, code, param), grad.shape,
                         grad.dtype)

    def bias_grad(self, grad, axis):
        kernels = native.kernels()
        if kernels is None:
            return super().bias_grad(grad, axis)
        return self._run(lambda: kernels.bias_grad(grad, axis), (grad.shape[axis],),
                         grad.dtype)

    # ---- batch normalisation ----------------------------------------------------------------
    def batch_norm_forward(self, x, weight, bias, mean, var, eps):
        kernels = native.kernels()
        if kernels is None:
            return super().batch_norm_forward(x, weight, bias, mean, var, eps)
        y, batch_mean, batch_var, inv_std = self._alloc(
            lambda: kernels.batch_norm_forward(x, weight, bias, mean, var, eps), x.shape,
            x.dtype)
        if mean is None:
            mean, var = self._track(batch_mean), self._track(batch_var)
        return self._track(y), mean, var, self._track(inv_std)

    def batch_norm_backward(self, grad, x, mean, inv_std, weight, training, input_grad,
                            param_grads):
        kernels = native.kernels()
        if kernels is None:
            return super().batch_norm_backward(grad, x, mean, inv_std, weight, training,
                                               input_grad, param_grads)
        results = self._alloc(lambda: kernels.batch_norm_backward(
            grad, x, mean, inv_std, weight, training, input_grad, param_grads), x.shape,
            x.dtype)
        return tuple(None if r is None else self._track(r) for r in results)


def blas_product(dtype, work):
    """Before NumPy's BLAS multiplies floats: ``work`` multiply-adds a product (warns once
    where OpenBLAS's threads will then spin on the native kernels' cores, see _openblas)."""
    if dtype.kind in "fc":
        _openblas.check_product(work)


def _copyable(dtype):
    """Whether the native copies move this dtype's elements (plain 1, 2, 4 or 8-byte words)."""
    return dtype.itemsize in (1, 2, 4, 8) and dtype.kind in "biuf"


@functools.lru_cache(maxsize=None)
def cpu_name():
    """The processor's marketing name where the OS tells it, else its architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _oom_message(backend, shape, dtype, exc):
    if shape is not None and dtype is not None:
        nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
        size = f"{nbytes:,} bytes ({tuple(shape)} {np.dtype(dtype)})"
    else:
        size = "an array"
    return f"{backend}: out of memory allocating {size}: {exc}"


def create():
    from . import conv_array_module  # noqa: F401  (adds im2col, col2im, depthwise)
    from . import cpu_conv  # noqa: F401  (adds the direct convolutions)
    from . import cpu_xnor  # noqa: F401  (adds the XNOR-popcount kernels)
    return CPUBackend()
