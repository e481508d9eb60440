"""BLAS-style matrix products: ``gemm``, C' = alpha * op(A) @ op(B) + beta * C.

On opencl this runs the tuned register-blocked kernel of kernels/common/sgemm.h (its
parameters come from ``python -m gpumat.tune``, see gpumat/tuning.py); on cpu and cuda the
array module's matmul (OpenBLAS, cuBLAS).  ``A @ B`` of float Arrays uses the same kernel on
opencl.
"""
import numbers

import numpy as np

from .array import Array, _as_array, _check_backend_dtype, _operands
from .errors import DtypeError, ShapeError

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def gemm(A, B, C=None, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """``alpha * op(A) @ op(B) + beta * C`` as a new Array; op(X) is X, or X with its last two
    axes swapped where ``trans_a`` / ``trans_b``.

    A and B are float32 (single) or float64 (double) Arrays of one dtype, 2-d, or 3-d for a
    batch of products: a batch of size 1 (or a 2-d operand) is used for every entry of the
    other's batch.  C (optional, same dtype) broadcasts to the result's shape (M, N) or
    (batch, M, N); it is read only when beta != 0 and is never modified."""
    values = (A, B) if C is None else (A, B, C)
    arrays, backend = _operands(values, "gemm")
    A, B = _as_array(arrays[0], backend), _as_array(arrays[1], backend)
    C = None if C is None else _as_array(arrays[2], backend)
    for name, x in (("A", A), ("B", B)) + ((("C", C),) if C is not None else ()):
        if x.dtype not in _FLOATS:
            raise DtypeError(f"gemm: {name} must be single (float32) or double (float64), "
                             f"got {x.dtype} (shape {x.shape}); convert with .astype('single')")
    if A.dtype != B.dtype or (C is not None and C.dtype != A.dtype):
        got = f"A {A.dtype}, B {B.dtype}" + (f", C {C.dtype}" if C is not None else "")
        raise DtypeError(f"gemm: A, B and C must share one dtype, got {got}")
    for name, x in (("A", A), ("B", B)):
        if x.ndim not in (2, 3):
            raise ShapeError(f"gemm: {name} must be 2-d or 3-d (a batch of matrices), got "
                             f"shape {x.shape}")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise TypeError(f"gemm: {name} must be a real number, got {v!r}")
    _check_backend_dtype(backend, A.dtype)
    trans_a, trans_b = bool(trans_a), bool(trans_b)
    a3 = A if A.ndim == 3 else A.reshape((1,) + A.shape)
    b3 = B if B.ndim == 3 else B.reshape((1,) + B.shape)
    M, K = (a3.shape[2], a3.shape[1]) if trans_a else (a3.shape[1], a3.shape[2])
    K_b, N = (b3.shape[2], b3.shape[1]) if trans_b else (b3.shape[1], b3.shape[2])
    if K != K_b:
        raise ShapeError(
            f"gemm: inner dimensions differ: op(A) is {M}x{K} (A {A.shape}, trans_a={trans_a})"
            f" and op(B) is {K_b}x{N} (B {B.shape}, trans_b={trans_b})")
    ba, bb = a3.shape[0], b3.shape[0]
    if ba != bb and ba != 1 and bb != 1:
        raise ShapeError(f"gemm: batch sizes of A {A.shape} and B {B.shape} differ ({ba} != "
                         f"{bb}) and neither is 1")
    batch = max(ba, bb)
    out_shape = (M, N) if A.ndim == 2 and B.ndim == 2 else (batch, M, N)
    c3 = None
    if C is not None:
        try:
            full = np.broadcast_shapes(C.shape, out_shape)
        except ValueError:
            full = None
        if full != tuple(out_shape):
            raise ShapeError(f"gemm: C of shape {C.shape} does not broadcast to the result's "
                             f"shape {out_shape} (A {A.shape}, B {B.shape})")
    if C is not None and beta != 0:
        c3 = C if C.shape == out_shape else C.broadcast_to(out_shape)
        if c3.ndim == 2:
            c3 = c3.reshape((1,) + out_shape)
    native = backend.gemm(a3._live, b3._live, None if c3 is None else c3._live, float(alpha),
                          float(beta), trans_a, trans_b)
    if tuple(native.shape) != tuple(out_shape):
        native = backend.reshape(native, out_shape)
    return Array._wrap(backend, native)


def matmul_2d(A, B, trans_a=False, trans_b=False):
    """``op(A) @ op(B)`` for two 2-d float Arrays of one dtype on one backend whose inner
    dimensions the caller has already checked (the layer library's products, run a few times
    per step, skip ``gemm``'s argument handling)."""
    backend = A._backend
    a, b = A._live, B._live
    out = backend.gemm(backend.reshape(a, (1,) + a.shape), backend.reshape(b, (1,) + b.shape),
                       None, 1.0, 0.0, trans_a, trans_b)
    return Array._wrap(backend, backend.reshape(out, tuple(out.shape[1:])))


def gemm_parameters(backend=None):
    """(parameters, source) of the gemm kernel on ``backend`` (default: the current one);
    ``(None, reason)`` where the backend runs no tunable kernel."""
    from . import backends as _backends
    b = _backends.get(backend) if backend is not None else _backends.default()
    if b.name == "opencl":
        from .backends import opencl_gemm
        return opencl_gemm.parameters(b)
    return None, f"the {b.name} backend uses its array library's matmul"
