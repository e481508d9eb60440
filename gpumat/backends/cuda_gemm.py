"""gemm for the cuda backend: kernels/cuda/sgemm.cu, the register-blocked kernel of
kernels/common/sgemm.h with VW=1 (the OpenCL build of the same source runs on PoCL in CI).

Importing this module adds ``gemm`` to ``CUDABackend``.  ``A @ B`` on cuda stays on CuPy's
matmul (cuBLAS), which this kernel does not beat; ``gm.gemm`` and the tuner use the kernel.
Parameters come from gpumat.tuning like the opencl ones (device key: name, sm and driver).
"""
import numpy as np

from .. import tuning
from .base import gemm_dims
from .cuda import CUDABackend, cupy

_FLOAT_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

#: PACK_B pays only when each B panel is reused by enough row blocks (on PoCL: 3x faster at
#: 2048^3, up to 4x slower for 32-64 rows); a transposed B is always packed.
PACK_B_MIN_ROWS = 256

def _cdiv(a, b):
    return -(-a // b)


def device_key(backend):
    driver = cupy.cuda.runtime.driverGetVersion()
    return f"cuda | {backend.device} | driver {driver}"


def parameters(backend):
    entry = backend.__dict__.get("_gemm_params")
    if entry is None:
        name = backend._props["name"]
        name = name.decode() if isinstance(name, bytes) else name
        entry = backend._gemm_params = tuning.lookup(
            device_key(backend), name, ("NVIDIA",), "cuda",
            max_group=backend._props.get("maxThreadsPerBlock"),
            local_bytes=backend._props.get("sharedMemPerBlock"))
    return entry


def reset(backend):
    backend.__dict__.pop("_gemm_params", None)


def _functions(backend, dtype, params):
    defines = {k: int(params[k]) for k in tuning.KEYS if k not in ("PACK_B", "VW")}
    defines["REAL"] = _FLOAT_TYPES[np.dtype(dtype)]
    module = backend.module("cuda/sgemm.cu", defines)
    return module.get_function("sgemm"), module.get_function("gemm_pack_b")


def run(backend, a, b, out, M, N, K, batch, alpha, beta, trans_a=False, trans_b=False,
        a_sb=None, b_sb=None, params=None):
    """As opencl_gemm.run, on cupy arrays (contiguous)."""
    if M == 0 or N == 0 or batch == 0:
        return out
    params = dict(parameters(backend)[0] if params is None else params, VW=1)
    sgemm, pack = _functions(backend, out.dtype, params)
    real = out.dtype.type
    i64 = np.int64
    mwi, nb = params["MWI"], params["NWI"]
    wgm, wgn = params["WGM"], params["WGN"]
    a_sb = M * K if a_sb is None else a_sb
    b_sb = K * N if b_sb is None else b_sb
    packed = None
    with backend.cuda_device:
        if K == 0:
            a, b = out, out
            a_sm = a_sk = a_sb = b_sb = ldb = b_ps = 0
        else:
            a_sm, a_sk = (1, M) if trans_a else (K, 1)
            b_sk, b_sn = (1, K) if trans_b else (N, 1)
            if trans_b or (params.get("PACK_B") and M >= PACK_B_MIN_ROWS):
                n_pad = _cdiv(N, nb) * nb
                b_batch = 1 if b_sb == 0 else batch
                packed = cupy.empty((b_batch, K, n_pad), out.dtype)
                block = (256, 1, 1)
                pack((_cdiv(n_pad, 256), K, b_batch), block,
                     (b, packed, i64(N), i64(K), i64(0), i64(b_sk), i64(b_sn), i64(b_sb),
                      i64(K * n_pad)))
                b, ldb, b_ps = packed, nb, K * nb
                b_sb = 0 if b_sb == 0 else K * n_pad
            else:
                ldb, b_ps = N, nb
        grid = (_cdiv(_cdiv(M, mwi), wgm), _cdiv(_cdiv(N, nb), wgn), batch)
        sgemm(grid, (wgm, wgn, 1),
              (a, b, out, i64(M), i64(N), i64(K), real(alpha), real(beta), i64(0), i64(a_sm),
               i64(a_sk), i64(mwi * a_sm), i64(a_sb), i64(0), i64(ldb), i64(b_ps), i64(b_sb),
               i64(0), i64(N), i64(M * N)))
    return out


def _gemm(self, a, b, c, alpha, beta, trans_a, trans_b):
    ba, bb = a.shape[0], b.shape[0]
    batch, M, N, K = gemm_dims(a.shape, b.shape, trans_a, trans_b)
    if c is not None and beta != 0:
        out = self.copy(c)
    else:
        out = self.empty((batch, M, N), a.dtype)
        beta = 0.0
    return run(self, cupy.ascontiguousarray(a), cupy.ascontiguousarray(b), out, M, N, K,
               batch, alpha, beta, trans_a, trans_b, a_sb=0 if ba == 1 else M * K,
               b_sb=0 if bb == 1 else K * N)


CUDABackend.gemm = _gemm
