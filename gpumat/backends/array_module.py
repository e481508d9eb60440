"""A backend on top of a NumPy-compatible array module (NumPy for cpu, CuPy for cuda).

Both libraries already implement NumPy's semantics, so one class serves both; the subclasses
add what differs (device description, memory accounting, our own kernels for the named entry
points).  Because cpu runs this code on every CI run, the logic cuda relies on is tested even
on machines without a GPU.
"""
import numpy as np

from .. import random as _random
from .base import MAP_OPS, Backend, numpy_key


class ArrayModuleBackend(Backend):
    xp = np
    #: the argsort ``kind`` that asks for a stable sort (CuPy always sorts stably and
    #: accepts only None)
    stable_kind = "stable"

    def __init__(self):
        self._bytes_in_use = 0

    # ---- memory ---------------------------------------------------------------------------
    def _track(self, a):
        self._bytes_in_use += a.nbytes
        return a

    def empty(self, shape, dtype):
        return self._track(self._alloc(lambda: self.xp.empty(shape, dtype), shape, dtype))

    def _alloc(self, make, shape, dtype):
        """Run an allocating call; subclasses turn out-of-memory into DeviceMemoryError."""
        return make()

    def from_numpy(self, x):
        return self._track(self._alloc(lambda: self.xp.array(x, copy=True), x.shape, x.dtype))

    def to_numpy(self, a):
        return np.array(a, copy=True) if self.xp is np else self.xp.asnumpy(a)

    def free(self, a):
        self._bytes_in_use -= a.nbytes

    def memory_info(self):
        return {"bytes_in_use": self._bytes_in_use, "bytes_held": 0}

    def _new(self, make, shape=None, dtype=None):
        """Wrap a call that creates a new array so it is counted (and OOM is translated)."""
        return self._track(self._contiguous(self._alloc(make, shape, dtype)))

    def _contiguous(self, x):
        # not xp.ascontiguousarray: it turns 0-d results into 1-d ones
        x = self.xp.asarray(x)
        return x if x.flags.c_contiguous else x.copy()

    # ---- creation -------------------------------------------------------------------------
    def full(self, shape, value, dtype):
        return self._new(lambda: self.xp.full(shape, value, dtype), shape, dtype)

    def arange(self, start, step, n, dtype):
        xp = self.xp
        wide = np.float64 if np.dtype(dtype).kind in "fb" else np.int64
        if np.dtype(dtype) == np.uint64:
            # start may be past int64; uint64 arithmetic wraps modulo 2**64, so a negative
            # step is its complement
            wide = np.uint64
            start, step = np.uint64(int(start) % 2**64), np.uint64(int(step) % 2**64)
        return self._new(lambda: (start + step * xp.arange(n, dtype=wide)).astype(dtype),
                         (n,), dtype)

    def random(self, kind, shape, dtype, seed, counter, low=0, span=1):
        n = int(np.prod(shape, dtype=np.int64))
        # made inside _new: the reference's own scratch (uint64 counters) may not fit either
        return self._new(lambda: self.xp.asarray(_random.reference(
            kind, n, dtype, seed, counter, low, span).reshape(shape)), shape, dtype)

    # ---- layout ---------------------------------------------------------------------------
    def reshape(self, a, shape):
        return a.reshape(shape)

    def copy(self, a):
        return self._new(lambda: a.copy(), a.shape, a.dtype)

    def astype(self, a, dtype):
        return self._new(lambda: a.astype(dtype), a.shape, dtype)

    def permute(self, a, axes):
        return self._new(lambda: self.xp.transpose(a, axes).copy(), None, a.dtype)

    def broadcast_to(self, a, shape):
        return self._new(lambda: self.xp.broadcast_to(a, shape).copy(), shape, a.dtype)

    def concatenate(self, arrays, axis, dtype):
        return self._new(lambda: self.xp.concatenate([x.astype(dtype, copy=False) for x in arrays],
                                                     axis=axis), None, dtype)

    # ---- elementwise ----------------------------------------------------------------------
    def _cast_arg(self, x, dtype):
        if isinstance(x, (bool, int, float)):
            return self.xp.asarray(x, dtype=dtype)
        return x.astype(dtype, copy=False)

    def map(self, op, args, out_dtype, compute_dtype):
        xp = self.xp
        if op == "where":
            cond, a, b = args
            cond = self._cast_arg(cond, np.bool_)
            return self._new(lambda: xp.where(cond, self._cast_arg(a, out_dtype),
                                              self._cast_arg(b, out_dtype)).astype(out_dtype, copy=False))
        args = [self._cast_arg(x, compute_dtype) for x in args]
        with np.errstate(all="ignore"):
            if op == "sigmoid":
                x = args[0]
                # exp of -|x| never overflows: the stable two-sided form
                e = xp.exp(-xp.abs(x))
                make = lambda: xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(out_dtype, copy=False)
            elif op == "clip":
                x, lo, hi = args
                make = lambda: xp.minimum(xp.maximum(x, lo), hi).astype(out_dtype, copy=False)
            else:
                ufunc = getattr(xp, MAP_OPS[op][1])
                make = lambda: ufunc(*args).astype(out_dtype, copy=False)
            out = self._alloc(make, None, out_dtype)
        return self._track(self._contiguous(out))

    # ---- reductions -----------------------------------------------------------------------
    def reduce(self, op, a, axis, keepdims):
        xp = self.xp
        func = getattr(xp, op)
        with np.errstate(all="ignore"):
            if op in ("argmax", "argmin"):
                out = func(a, axis=axis, keepdims=keepdims) if axis is not None else func(a)
                if axis is None and keepdims:
                    out = out.reshape((1,) * a.ndim)
                out = out.astype(np.int64, copy=False)
            else:
                out = func(a, axis=axis, keepdims=keepdims)
        return self._new(lambda: xp.asarray(out))

    def cumsum(self, a, axis):
        return self._new(lambda: self.xp.cumsum(a, axis=axis))

    def matmul(self, a, b, out_dtype):
        return self._new(lambda: self.xp.matmul(a.astype(out_dtype, copy=False),
                                                b.astype(out_dtype, copy=False)))

    def gemm(self, a, b, c, alpha, beta, trans_a, trans_b):
        xp = self.xp
        op_a = xp.swapaxes(a, -1, -2) if trans_a else a
        op_b = xp.swapaxes(b, -1, -2) if trans_b else b
        dtype = a.dtype.type

        def compute():
            # a kernel entry point: overflow gives inf silently, as the device kernels do
            with np.errstate(all="ignore"):
                out = xp.matmul(op_a, op_b)
                if alpha != 1:
                    out *= dtype(alpha)
                if c is not None and beta != 0:
                    out += dtype(beta) * c
            return xp.ascontiguousarray(out)
        return self._new(compute)

    def sort(self, a, axis, descending):
        xp = self.xp
        if not descending:
            idx = xp.argsort(a, axis=axis, kind=self.stable_kind)   # NumPy puts NaN last
        elif a.dtype.kind in "biu":
            idx = xp.argsort(~a, axis=axis, kind=self.stable_kind)  # ~ reverses order, no overflow
        else:
            # two stable passes: by -x, then NaN-first; ties keep their original order
            with np.errstate(invalid="ignore"):
                idx = xp.argsort(xp.where(xp.isnan(a), 0, -a), axis=axis, kind=self.stable_kind)
            finite_first = ~xp.isnan(xp.take_along_axis(a, idx, axis=axis))
            idx = xp.take_along_axis(idx, xp.argsort(finite_first, axis=axis, kind=self.stable_kind),
                                     axis=axis)
        vals = xp.take_along_axis(a, idx, axis=axis)
        return (self._track(self._contiguous(vals)),
                self._track(self._contiguous(idx.astype(np.int64, copy=False))))

    # ---- indexing -------------------------------------------------------------------------
    def getitem(self, a, key):
        key = numpy_key(key)
        return self._new(lambda: self.xp.array(a[key], copy=True))

    def setitem(self, a, key, value):
        a[numpy_key(key)] = value

    def flatnonzero(self, a):
        return self._new(lambda: self.xp.flatnonzero(a).astype(np.int64))

    # ---- kernel entry points --------------------------------------------------------------
    def pack_signs(self, a):
        raise NotImplementedError


from . import pool_array_module  # noqa: E402,F401  (attaches pool2d / pool2d_backward)
from . import activations_array_module  # noqa: E402,F401  (bias_act, softmax, ...)
from . import optimizers_array_module  # noqa: E402,F401  (fused SGD / Adam updates)
from . import batchnorm_array_module  # noqa: E402,F401  (batch_norm_forward / _backward)
