"""gemm for the opencl backend: the register-blocked kernel of kernels/common/sgemm.h.

Importing this module adds ``gemm`` to ``OpenCLBackend``; ``matmul`` (opencl_reduce.py) hands
float32/float64 operands to :func:`matmul_float` here.  The kernel's parameters (tile sizes,
vector width, work-group shape, B packing) come from gpumat.tuning: the winner of
``python -m gpumat.tune`` for this device, else shipped defaults.

Transposed A is read through strides (its elements are broadcast, never vector-loaded);
B is copied into K x NB panels (gemm_pack_b) when PACK_B is set or when it is transposed, so
the kernel's vector loads stay unit-stride; unpacked, the column block that crosses the N edge
takes the kernel's guarded path.
"""
import numpy as np

from .. import tuning
from .base import gemm_dims
from .opencl import LaunchKernel, OpenCLBackend, cl

_I64 = np.int64
_FLOAT_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

#: PACK_B pays only when each B panel is reused by enough row blocks (on PoCL: 3x faster at
#: 2048^3, up to 4x slower for 32-64 rows); a transposed B is always packed.
PACK_B_MIN_ROWS = 256

def _cdiv(a, b):
    return -(-a // b)


def device_key(backend):
    d = backend.cl_device
    return (f"opencl | {d.platform.name.strip()} | {d.name.strip()} | "
            f"{d.driver_version.strip()}")


def _lookup(backend):
    d = backend.cl_device
    kind = "gpu" if d.type & cl.device_type.GPU else ("cpu" if d.type & cl.device_type.CPU
                                                      else "gpu")
    return tuning.lookup(device_key(backend), d.name.strip(),
                         (d.platform.name, d.vendor, d.platform.vendor), kind,
                         max_group=d.max_work_group_size, local_bytes=d.local_mem_size)


def parameters(backend):
    """(parameters, source) the gemm of ``backend`` uses (cached; see :func:`reset`)."""
    entry = backend.__dict__.get("_gemm_params")
    if entry is None:
        entry = backend._gemm_params = _lookup(backend)
    return entry


def reset(backend):
    """Forget cached parameters and kernels (after the tuner stored new ones)."""
    backend.__dict__.pop("_gemm_params", None)
    backend.__dict__.pop("_gemm_kernels", None)


def _for_dtype(params, dtype):
    """float64 keeps the register budget in bytes: half the vector width."""
    p = dict(params)
    if np.dtype(dtype) == np.float64:
        p["VW"] = max(1, p["VW"] // 2)
    return p


def kernels(backend, dtype, params):
    """(sgemm kernel, gemm_pack_b kernel) for ``dtype`` built with ``params``."""
    real = _FLOAT_TYPES[np.dtype(dtype)]
    defines = {k: int(params[k]) for k in tuning.KEYS if k != "PACK_B"}
    defines["REAL"] = real
    key = tuple(sorted(defines.items()))
    cache = backend.__dict__.setdefault("_gemm_kernels", {})
    entry = cache.get(key)
    if entry is None:
        program = backend.program("opencl/sgemm.cl", defines)
        sgemm = LaunchKernel(program, "sgemm")
        sgemm.set_scalar_arg_dtypes([None] * 3 + [_I64] * 3 + [np.dtype(dtype).type] * 2
                                    + [_I64] * 12)
        pack = LaunchKernel(program, "gemm_pack_b")
        pack.set_scalar_arg_dtypes([None] * 2 + [_I64] * 7)
        entry = cache[key] = (sgemm, pack)
    return entry


def run(backend, a, b, out, M, N, K, batch, alpha, beta, trans_a=False, trans_b=False,
        a_sb=None, b_sb=None, params=None):
    """out[z] = alpha * op(A[z]) @ op(B[z]) + beta * out[z] for z < batch.

    ``a``/``b``/``out`` are contiguous CLBuffers; A[z] starts at element z * a_sb (0: one A
    for every batch entry, default M * K), likewise B; out is (batch, M, N) contiguous and is
    read only when beta != 0."""
    if M == 0 or N == 0 or batch == 0:
        return out
    dtype = out.dtype
    params = _for_dtype(parameters(backend)[0] if params is None else params, dtype)
    sgemm, pack = kernels(backend, dtype, params)
    mwi, nb = params["MWI"], params["NWI"] * params["VW"]
    wgm, wgn = params["WGM"], params["WGN"]
    a_sb = M * K if a_sb is None else a_sb
    b_sb = K * N if b_sb is None else b_sb
    queue = backend.queue
    if K == 0:       # nothing to read: a and b may be empty buffers
        a_data = b_data = out.data
        a_sm = a_sk = a_sb = b_sb = 0
        ldb, b_ps, packed = 0, 0, None
    else:
        a_data, b_data = a.data, b.data
        a_sm, a_sk = (1, M) if trans_a else (K, 1)
        b_sk, b_sn = (1, K) if trans_b else (N, 1)
        packed = None
        if trans_b or (params.get("PACK_B") and M >= PACK_B_MIN_ROWS):
            n_pad = _cdiv(N, nb) * nb
            b_batch = 1 if b_sb == 0 else batch
            packed = backend.empty((b_batch, K, n_pad), dtype)
            pack(queue, (n_pad, K, b_batch), None, b.data, packed.data, N, K, 0, b_sk, b_sn,
                 b_sb, K * n_pad)
            b_data, ldb, b_ps = packed.data, nb, K * nb
            b_sb = 0 if b_sb == 0 else K * n_pad
        else:
            ldb, b_ps = N, nb
    try:
        grid = (_cdiv(_cdiv(M, mwi), wgm) * wgm, _cdiv(_cdiv(N, nb), wgn) * wgn, batch)
        sgemm(queue, grid, (wgm, wgn, 1), a_data, b_data, out.data, M, N, K, alpha, beta,
              0, a_sm, a_sk, mwi * a_sm, a_sb, 0, ldb, b_ps, b_sb, 0, N, M * N)
    finally:
        if packed is not None:
            backend.free(packed)
    return out


def _gemm(self, a, b, c, alpha, beta, trans_a, trans_b):
    """Backend.gemm: a, b are (batch, rows, cols) with batch equal or 1; c None or the
    output's shape (already broadcast by the caller)."""
    dtype = np.dtype(a.dtype)
    ba, bb = a.shape[0], b.shape[0]
    batch, M, N, K = gemm_dims(a.shape, b.shape, trans_a, trans_b)
    if c is not None and beta != 0:
        out = self.copy(c)
    else:
        out = self.empty((batch, M, N), dtype)
        beta = 0.0
    return run(self, a, b, out, M, N, K, batch, alpha, beta, trans_a, trans_b,
               a_sb=0 if ba == 1 else M * K, b_sb=0 if bb == 1 else K * N)


def matmul_float(backend, a, b, out_dtype):
    """numpy.matmul of float32/float64 CLBuffers through sgemm, or None where the batch
    broadcast is not 'equal batches or a single matrix' (the caller falls back)."""
    if a.dtype != out_dtype or b.dtype != out_dtype or out_dtype not in _FLOAT_TYPES:
        return None
    a_shape = (1,) + a.shape if a.ndim == 1 else a.shape
    b_shape = b.shape + (1,) if b.ndim == 1 else b.shape
    M, K = a_shape[-2:]
    N = b_shape[-1]
    batch_a, batch_b = a_shape[:-2], b_shape[:-2]
    batch_shape = tuple(np.broadcast_shapes(batch_a, batch_b))
    batch = int(np.prod(batch_shape, dtype=np.int64))
    strides = []
    for shape, matrix in ((batch_a, M * K), (batch_b, K * N)):
        if tuple((1,) * (len(batch_shape) - len(shape)) + tuple(shape)) == batch_shape:
            strides.append(matrix)
        elif int(np.prod(shape, dtype=np.int64)) == 1:
            strides.append(0)
        else:
            return None
    out_shape = batch_shape + (() if a.ndim == 1 else (M,)) + (() if b.ndim == 1 else (N,))
    out = backend.empty(out_shape, out_dtype)
    if out.size == 0:
        return out
    if batch == 1:
        strides = [0, 0]
    return run(backend, a, b, out, M, N, K, batch, 1.0, 0.0, a_sb=strides[0],
               b_sb=strides[1])


OpenCLBackend.gemm = _gemm
