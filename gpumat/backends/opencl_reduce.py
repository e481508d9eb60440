"""Reductions, scans, sort, stream compaction and matmul for the opencl backend.

Importing this module adds ``reduce``, ``cumsum``, ``sort``, ``flatnonzero`` and ``matmul`` to
``OpenCLBackend``.  The kernels live in kernels/opencl/{reduce,scan,sort,compact,matmul}.cl
(matmul shares kernels/common/gemm_tiled.h with the cuda build).  Every kernel variant (op,
dtypes, work-group size) is a set of preprocessor defines; its kernel objects are built once
per backend and kept in a dict, and shapes travel as scalar kernel arguments, so a call costs
a dict lookup and a few enqueues.

Every array is viewed as (outer, R, inner) around the axis being reduced, scanned or sorted;
a kernel then needs only those three numbers, whatever the rank.

- reduce: tiles of outputs per work-group, a short strided serial fold per work-item, a
  local-memory tree; long axes (or few outputs) are cut into chunks whose partials are reduced
  again (two or more stages).  Integer sums and products accumulate in unsigned types (NumPy's
  wrap-around); arg-reductions carry (value, index) pairs under a total order.
- cumsum: one serial work-item per line when lines are many or short; otherwise a blocked
  scan (block sums by the reduce kernel, a scan of those, then per-block local scans).
- sort: bitonic network over (key, index) pairs, each line padded to a power of two; the
  index breaks ties, so the result is the stable order.
- flatnonzero: per-chunk counts (reduce), their prefix sums (cumsum), then a scatter kernel.
- matmul: the tiled GEMM of kernels/common/gemm_tiled.h over a broadcast batch; float32 and
  float64 operands go to the tuned kernel of opencl_gemm.py (kernels/common/sgemm.h) instead.
"""
import itertools
import math

import numpy as np

from .. import dtypes as _dtypes
from .opencl import LaunchKernel, OpenCLBackend, cl

_I32 = np.int32
_I64 = np.int64
_INT64 = np.dtype(np.int64)
_BOOL = np.dtype(np.bool_)

# ---- tunables (module attributes so tests can force every code path on small inputs) --------
#: Work-group size cap; the device's limit (and each kernel's) may lower it.
WORK_GROUP_SIZE = 256
#: Longest serial run per work-item in a float sum/prod before the axis is split into chunks
#: reduced in a further stage (keeps float sums pairwise-accurate).
FLOAT_SERIAL_MAX = 64
#: The same bound for exact operations (integer sums, max/min, any/all): only for speed.
EXACT_SERIAL_MAX = 512
#: Elements per work-item in the local-memory scans of cumsum and flatnonzero.
SCAN_VALUES_PER_ITEM = 8
#: Tiles of WG * SCAN_VALUES_PER_ITEM elements per block in blocked scans and compaction.
SCAN_TILES_PER_BLOCK = 4
#: cumsum runs one serial work-item per line when lines are at most this long ...
SCAN_SERIAL_MAX_LENGTH = 2048
#: ... or when there are at least this many lines per compute unit (enough parallelism).
SCAN_LINES_PER_COMPUTE_UNIT = 64
#: matmul tile sizes (kernels/common/gemm_tiled.h defines): 4-byte types, 8-byte types, and
#: matrices with fewer than GEMM_SMALL_BELOW rows or columns.
GEMM_TILES = {"TILE_M": 128, "TILE_N": 128, "TILE_K": 16, "WPT_M": 8, "WPT_N": 8}
GEMM_TILES_WIDE = {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16, "WPT_M": 8, "WPT_N": 8}
GEMM_TILES_SMALL = {"TILE_M": 32, "TILE_N": 32, "TILE_K": 16, "WPT_M": 4, "WPT_N": 4}
GEMM_SMALL_BELOW = 64

_OP_CODES = {"sum": 1, "prod": 2, "max": 3, "min": 4, "any": 5, "all": 6, "argmax": 7,
             "argmin": 8, "count": 9}
_ARG_OPS = ("argmax", "argmin")

#: Element types by the names of kernels/common/dialect.h, which mean the same in OpenCL C and
#: CUDA, so these defines would build the same sources for cuda too.
_TYPES = {np.dtype(np.bool_): "u8", np.dtype(np.uint8): "u8", np.dtype(np.int32): "int",
          np.dtype(np.uint32): "u32", np.dtype(np.int64): "i64", np.dtype(np.uint64): "u64",
          np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: Unsigned twin of each integer type: integer accumulators wrap instead of overflowing
#: (signed overflow is undefined in C), which reproduces NumPy's modular integer arithmetic.
_UNSIGNED = {"u8": "u8", "int": "u32", "u32": "u32", "i64": "u64", "u64": "u64"}
_LOWEST = {"u8": "0", "int": "(-2147483647-1)", "u32": "0", "i64": "(-(i64)(~(u64)0>>1)-1)",
           "u64": "0", "float": "(-INFINITY)", "double": "(-INFINITY)"}
_HIGHEST = {"u8": "255", "int": "2147483647", "u32": "(~(u32)0)", "i64": "((i64)(~(u64)0>>1))",
            "u64": "(~(u64)0)", "float": "INFINITY", "double": "INFINITY"}


def _cdiv(a, b):
    return -(-a // b)


def _pow2_floor(n):
    return 1 << (int(n).bit_length() - 1)


def _pow2_ceil(n):
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _ctype(dtype):
    return _TYPES[np.dtype(dtype)]


def _split(shape, axis):
    """(outer, R, inner) of ``shape`` around ``axis``."""
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:])
    return outer, int(shape[axis]), inner


class _State:
    """Per-backend cache of kernel objects and device facts."""

    def __init__(self, backend):
        device = backend.cl_device
        self.kernels = {}
        self.fast = {}     # short keys (op, types) -> what _kernels returned, for hot paths
        self.wg_cap = {}   # relpath -> work-group size every kernel of it accepts
        self.wg = min(WORK_GROUP_SIZE, _pow2_floor(backend.max_work_group_size))
        self.compute_units = max(1, int(device.max_compute_units))
        self.is_gpu = bool(device.type & cl.device_type.GPU)
        # enough groups to keep every compute unit busy when outputs are few
        self.target_groups = self.compute_units * (8 if self.is_gpu else 4)


def _state(backend):
    state = backend.__dict__.get("_reduce_state")
    if state is None:
        state = backend._reduce_state = _State(backend)
    return state


def _kernels(backend, relpath, defines, signatures, wg):
    """Kernel objects of ``relpath`` built with ``defines`` (+ WG), scalar argument types set.

    Returns (kernels by name, work-group size).  Should a kernel accept fewer work-items than
    ``wg`` on this device, the program is rebuilt with a smaller WG."""
    state = _state(backend)
    wg = min(wg, state.wg_cap.get(relpath, wg))
    key = (relpath, wg, tuple(sorted(defines.items())))
    kernels = state.kernels.get(key)
    if kernels is not None:
        return kernels, wg
    program = backend.program(relpath, dict(defines, WG=wg))
    kernels = {}
    limit = wg
    for name, signature in signatures.items():
        kernel = LaunchKernel(program, name)
        kernel.set_scalar_arg_dtypes(signature)
        kernels[name] = kernel
        limit = min(limit, kernel.get_work_group_info(
            cl.kernel_work_group_info.WORK_GROUP_SIZE, backend.cl_device))
    if limit < wg:
        state.wg_cap[relpath] = _pow2_floor(limit)
        return _kernels(backend, relpath, defines, signatures, _pow2_floor(limit))
    state.kernels[key] = kernels
    return kernels, wg


# ---- reductions ---------------------------------------------------------------------------

_REDUCE_FIRST_SIG = [None, None, None, _I64, _I64, _I64, _I64, _I64, _I32, _I32]
_REDUCE_NEXT_SIG = [None, None, None, None, _I64, _I64, _I64, _I64, _I64, _I32, _I32]


class _ReduceVariant:
    """Types and defines of one (op, input dtype) reduction."""

    __slots__ = ("op", "out_dtype", "part_dtype", "defines", "float_fold", "is_arg")

    def __init__(self, op, in_dtype):
        in_dtype = np.dtype(in_dtype)
        in_t = _ctype(in_dtype)
        if op in ("sum", "prod"):
            out = _dtypes.reduction_result(op, in_dtype)
            part = out
            acc = _ctype(out) if out.kind == "f" else _UNSIGNED[_ctype(out)]
            identity = "0" if op == "sum" else "1"
        elif op in ("max", "min", "argmax", "argmin"):
            out = _INT64 if op in _ARG_OPS else in_dtype
            part = in_dtype
            acc = in_t
            identity = (_LOWEST if op in ("max", "argmax") else _HIGHEST)[acc]
        elif op in ("any", "all"):
            out = part = _BOOL
            acc = "u8"
            identity = "0" if op == "any" else "1"
        elif op == "count":
            out = part = _INT64
            acc = "u64"
            identity = "0"
        else:
            raise ValueError(f"unknown reduction {op!r}")
        self.op = op
        self.is_arg = op in _ARG_OPS
        self.out_dtype = np.dtype(out)
        self.part_dtype = np.dtype(part)
        is_float = acc in ("float", "double")
        # a float sum/prod loses accuracy in long serial runs; other reductions are exact
        self.float_fold = is_float and op in ("sum", "prod")
        self.defines = {"OP": _OP_CODES[op], "IN_T": in_t, "ACC_T": acc,
                        "PART_T": _ctype(part), "IS_FLOAT": int(is_float),
                        "IDENTITY": identity}


_VARIANTS = {}


def _variant(op, dtype):
    key = (op, np.dtype(dtype))
    v = _VARIANTS.get(key)
    if v is None:
        v = _VARIANTS[key] = _ReduceVariant(op, dtype)
    return v


def _plan(wg, target_groups, R, n_out, inner, serial_max, chunk_len=None):
    """Work split of one reduction stage: (tj, n_tiles, chunk_len, n_chunks).

    tj outputs share a work-group of WG items, WG / tj per output.  With inner > 1, adjacent
    items take adjacent outputs (coalesced reads), so tj starts at min(inner, 32).  Short axes
    move items from the axis to further outputs.  The axis is cut into chunks so no item folds
    more than ``serial_max`` elements, and into more chunks when the outputs alone would not
    occupy the device."""
    tj = 1 if inner == 1 else min(32, _pow2_ceil(inner), wg)
    tr = wg // tj
    run = R if chunk_len is None else min(R, chunk_len)
    while tr > 1 and run < 4 * tr and tj < n_out:
        tr //= 2
        tj *= 2
    n_tiles = _cdiv(n_out, tj)
    if chunk_len is None:
        chunks = max(1, _cdiv(R, tr * serial_max))
        if n_tiles < target_groups:
            chunks = max(chunks, min(_cdiv(target_groups, n_tiles), _cdiv(R, tr * 16)))
        # chunks of at least two elements: every stage shrinks the axis, so stages end
        chunk_len = max(2, _cdiv(R, chunks))
    return tj, n_tiles, chunk_len, max(1, _cdiv(R, chunk_len))


def _serial_max(variant):
    return FLOAT_SERIAL_MAX if variant.float_fold else EXACT_SERIAL_MAX


def _reduce_kernels(backend, variant):
    state = _state(backend)
    entry = state.fast.get(variant)     # variants are interned by _variant
    if entry is None:
        entry = state.fast[variant] = _kernels(
            backend, "opencl/reduce.cl", variant.defines,
            {"reduce_first": _REDUCE_FIRST_SIG, "reduce_next": _REDUCE_NEXT_SIG}, state.wg)
    return entry


def _launch_reduce(kernels, wg, queue, first, src, src_index, out_value, out_index, n_out,
                   inner, R, plan, write_value):
    tj, n_tiles, chunk_len, chunks = plan
    size = (n_tiles * chunks * wg,)
    if first:
        kernels["reduce_first"](queue, size, (wg,), src, out_value, out_index, n_out, inner, R,
                                chunk_len, chunks, tj, write_value)
    else:
        kernels["reduce_next"](queue, size, (wg,), src, src_index, out_value, out_index, n_out,
                               inner, R, chunk_len, chunks, tj, write_value)


def _reduce_lines(backend, variant, x, outer, R, inner, out):
    """Reduce native ``x`` viewed as (outer, R, inner) over R into ``out`` (outer * inner
    elements of variant.out_dtype), in as many stages as the plan needs."""
    state = _state(backend)
    kernels, wg = _reduce_kernels(backend, variant)
    queue = backend.queue
    n_out = outer * inner
    is_arg = variant.is_arg
    src, src_index, first = x.data, None, True
    temporaries = []
    try:
        while True:
            plan = _plan(wg, state.target_groups, R, n_out, inner, _serial_max(variant))
            chunks = plan[3]
            if chunks == 1:
                if is_arg:
                    _launch_reduce(kernels, wg, queue, first, src, src_index, None, out.data,
                                   n_out, inner, R, plan, 0)
                else:
                    _launch_reduce(kernels, wg, queue, first, src, src_index, out.data, None,
                                   n_out, inner, R, plan, 1)
                return out
            part = backend.empty((outer, chunks, inner), variant.part_dtype)
            temporaries.append(part)
            part_index = None
            if is_arg:
                part_index = backend.empty((outer, chunks, inner), _INT64)
                temporaries.append(part_index)
            _launch_reduce(kernels, wg, queue, first, src, src_index, part.data,
                           part_index.data if is_arg else None, n_out, inner, R, plan, 1)
            src, src_index, first = part.data, part_index.data if is_arg else None, False
            R = chunks
    finally:
        # the queue is in order: pooled memory handed back now is reused only by later work
        for t in temporaries:
            backend.free(t)


def _reduce_chunks(backend, variant, x, outer, R, inner, chunk_len):
    """One stage only: the (outer, ceil(R / chunk_len), inner) partial results of every
    chunk of ``chunk_len`` elements along R (block sums for scans, counts for compaction)."""
    state = _state(backend)
    kernels, wg = _reduce_kernels(backend, variant)
    plan = _plan(wg, state.target_groups, R, outer * inner, inner, _serial_max(variant),
                 chunk_len)
    part = backend.empty((outer, plan[3], inner), variant.part_dtype)
    _launch_reduce(kernels, wg, backend.queue, True, x.data, None, part.data, None,
                   outer * inner, inner, R, plan, 1)
    return part


def _reduce(self, op, a, axis, keepdims):
    variant = _variant(op, a.dtype)
    if axis is None:
        outer, R, inner = 1, a.size, 1
        shape = (1,) * a.ndim if keepdims else ()
    else:
        outer, R, inner = _split(a.shape, axis)
        shape = a.shape[:axis] + ((1,) if keepdims else ()) + a.shape[axis + 1:]
    out = self.empty(shape, variant.out_dtype)
    if out.size == 0:
        return out
    return _reduce_lines(self, variant, a, outer, R, inner, out)


# ---- cumsum -------------------------------------------------------------------------------

_SCAN_SERIAL_SIG = [None, None, _I64, _I64, _I64]
_SCAN_BLOCKS_SIG = [None, None, None, _I64, _I64, _I64, _I64]


def _scan_kernels(backend, in_dtype, out_dtype):
    state = _state(backend)
    key = ("scan", in_dtype, out_dtype, SCAN_VALUES_PER_ITEM)
    entry = state.fast.get(key)
    if entry is None:
        entry = state.fast[key] = _build_scan_kernels(backend, in_dtype, out_dtype)
    return entry


def _build_scan_kernels(backend, in_dtype, out_dtype):
    out_t = _ctype(out_dtype)
    acc = out_t if np.dtype(out_dtype).kind == "f" else _UNSIGNED[out_t]
    defines = {"IN_T": _ctype(in_dtype), "ACC_T": acc, "OUT_T": out_t,
               "VPT": SCAN_VALUES_PER_ITEM}
    return _kernels(backend, "opencl/scan.cl", defines,
                    {"scan_serial": _SCAN_SERIAL_SIG, "scan_blocks": _SCAN_BLOCKS_SIG},
                    _state(backend).wg)


def _cumsum_lines(backend, x, outer, R, inner, out):
    """Inclusive sums of native ``x`` viewed as (outer, R, inner) along R into ``out``."""
    state = _state(backend)
    kernels, wg = _scan_kernels(backend, x.dtype, out.dtype)
    queue = backend.queue
    lines = outer * inner
    if (R <= SCAN_SERIAL_MAX_LENGTH
            or lines >= SCAN_LINES_PER_COMPUTE_UNIT * state.compute_units):
        local = min(wg, 64)
        kernels["scan_serial"](queue, (_cdiv(lines, local) * local,), (local,), x.data,
                               out.data, lines, inner, R)
        return out
    block_len = wg * SCAN_VALUES_PER_ITEM * SCAN_TILES_PER_BLOCK
    n_blocks = _cdiv(R, block_len)
    temporaries = []
    block_incl = None
    try:
        if n_blocks > 1:
            sums = _reduce_chunks(backend, _variant("sum", x.dtype), x, outer, R, inner,
                                  block_len)
            temporaries.append(sums)
            incl = backend.empty(sums.shape, out.dtype)
            temporaries.append(incl)
            _cumsum_lines(backend, sums, outer, n_blocks, inner, incl)
            block_incl = incl.data
        kernels["scan_blocks"](queue, (lines * n_blocks * wg,), (wg,), x.data, out.data,
                               block_incl, inner, R, block_len, n_blocks)
    finally:
        for t in temporaries:
            backend.free(t)
    return out


def _cumsum(self, a, axis):
    out_dtype = _dtypes.reduction_result("sum", a.dtype)
    if axis is None:
        out = self.empty((a.size,), out_dtype)
        outer, R, inner = 1, a.size, 1
    else:
        out = self.empty(a.shape, out_dtype)
        outer, R, inner = _split(a.shape, axis)
    if out.size == 0:
        return out
    return _cumsum_lines(self, a, outer, R, inner, out)


# ---- sort ---------------------------------------------------------------------------------

_SORT_SIGS = {
    "sort_local_first": [None, None, None, _I64, _I64, _I64, _I64, _I32, _I64],
    "sort_local": [None, None, _I64, _I64, _I64],
    "sort_global_step": [None, None, _I64, _I64, _I64, _I64, _I64],
    "sort_scatter": [None, None, None, None, _I64, _I64, _I64, _I32],
}


def _sort(self, a, axis, descending):
    values = self.empty(a.shape, a.dtype)
    indices = self.empty(a.shape, _INT64)
    if a.size == 0:
        return values, indices
    if a.ndim == 0:
        outer, R, inner = 1, 1, 1
    else:
        outer, R, inner = _split(a.shape, axis)
    state = _state(self)
    defines = {"KEY_T": _ctype(a.dtype), "IS_FLOAT": int(a.dtype.kind == "f"),
               "DESCENDING": int(bool(descending))}
    kernels, wg = _kernels(self, "opencl/sort.cl", defines, _SORT_SIGS, state.wg)
    queue = self.queue
    lines = outer * inner
    P = _pow2_ceil(R)
    log2_P = P.bit_length() - 1
    tile = 2 * wg
    n_pad = _cdiv(lines * P, tile) * tile
    # rows that need no padding or transposing are sorted in the output buffers themselves
    in_place = inner == 1 and P == R and n_pad == lines * R
    if in_place:
        keys, index = values, indices
    else:
        keys, index = self.empty((n_pad,), a.dtype), self.empty((n_pad,), _INT64)
    try:
        half = (n_pad // 2,)
        kernels["sort_local_first"](queue, half, (wg,), a.data, keys.data, index.data, lines,
                                    inner, R, P, log2_P, min(P, tile))
        k = 2 * tile
        while k <= P:
            j = k // 2
            while j >= tile:
                kernels["sort_global_step"](queue, half, (wg,), keys.data, index.data,
                                            n_pad // 2, R, P, k, j)
                j //= 2
            kernels["sort_local"](queue, half, (wg,), keys.data, index.data, R, P, k)
            k *= 2
        if not in_place:
            n = lines * R
            kernels["sort_scatter"](queue, (_cdiv(n, wg) * wg,), (wg,), keys.data, index.data,
                                    values.data, indices.data, n, inner, R, log2_P)
    finally:
        if not in_place:
            self.free(keys)
            self.free(index)
    return values, indices


# ---- flatnonzero --------------------------------------------------------------------------

_COMPACT_SIG = [None, None, None, _I64, _I64]


def _flatnonzero(self, a):
    n = a.size
    if n == 0:
        return self.empty((0,), _INT64)
    state = _state(self)
    kernels, wg = _kernels(self, "opencl/compact.cl",
                           {"IN_T": _ctype(a.dtype), "VPT": SCAN_VALUES_PER_ITEM},
                           {"compact_scatter": _COMPACT_SIG}, state.wg)
    chunk_len = wg * SCAN_VALUES_PER_ITEM * SCAN_TILES_PER_BLOCK
    counts = _reduce_chunks(self, _variant("count", a.dtype), a, 1, n, 1, chunk_len)
    n_chunks = counts.size
    incl = self.empty((n_chunks,), _INT64)
    try:
        _cumsum_lines(self, counts, 1, n_chunks, 1, incl)
        total = np.empty(1, _INT64)
        cl.enqueue_copy(self.queue, total, incl.data, src_offset=(n_chunks - 1) * 8)
        out = self.empty((int(total[0]),), _INT64)
        if out.size:
            kernels["compact_scatter"](self.queue, (n_chunks * wg,), (wg,), a.data, out.data,
                                       incl.data, n, chunk_len)
    finally:
        self.free(counts)
        self.free(incl)
    return out


# ---- matmul -------------------------------------------------------------------------------

_GEMM_SIG = [None, None, None] + [_I64] * 16


def _gemm_threads(tiles):
    return (tiles["TILE_M"] // tiles["WPT_M"]) * (tiles["TILE_N"] // tiles["WPT_N"])


def _gemm_local_bytes(tiles, itemsize):
    return (tiles["TILE_K"] * (tiles["TILE_M"] + 1) + tiles["TILE_K"] * tiles["TILE_N"]) * itemsize


def _gemm_kernel(backend, a_dtype, b_dtype, out_dtype, small):
    """(kernel, threads, TILE_M, TILE_N) for one type combination and size class."""
    state = _state(backend)
    key = ("gemm", np.dtype(a_dtype), np.dtype(b_dtype), np.dtype(out_dtype), small)
    entry = state.kernels.get(key)
    if entry is not None:
        return entry
    c_t = _ctype(out_dtype)
    kind = np.dtype(out_dtype).kind
    wide = c_t in ("i64", "u64", "double")
    acc = c_t if kind == "f" else ("u64" if wide else "u32")
    itemsize = 8 if wide else 4
    candidates = [GEMM_TILES_SMALL]
    if not small:
        candidates.insert(0, GEMM_TILES_WIDE if wide else GEMM_TILES)
    local_mem = int(backend.cl_device.local_mem_size)
    for tiles in candidates:
        threads = _gemm_threads(tiles)
        if (threads > backend.max_work_group_size
                or _gemm_local_bytes(tiles, itemsize) > local_mem) and tiles is not candidates[-1]:
            continue
        defines = dict(tiles, A_T=_ctype(a_dtype), B_T=_ctype(b_dtype), C_T=c_t, ACC_T=acc,
                       OUT_IS_BOOL=int(kind == "b"))
        kernel = LaunchKernel(backend.program("opencl/matmul.cl", defines), "gemm_tiled")
        kernel.set_scalar_arg_dtypes(_GEMM_SIG)
        limit = kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE,
                                           backend.cl_device)
        if limit >= threads or tiles is candidates[-1]:
            break
    entry = state.kernels[key] = (kernel, threads, tiles["TILE_M"], tiles["TILE_N"])
    return entry


def _batch_dims(batch, a_batch, b_batch, a_matrix, b_matrix):
    """(size, a stride, b stride) per batch dimension in elements, broadcast dimensions with
    stride 0, size-1 dimensions dropped and mergeable neighbours merged."""
    def strides(shape, matrix):
        shape = (1,) * (len(batch) - len(shape)) + tuple(shape)
        out, step = [0] * len(shape), matrix
        for d in range(len(shape) - 1, -1, -1):
            out[d] = step if shape[d] != 1 else 0
            step *= shape[d]
        return out

    sa, sb = strides(a_batch, a_matrix), strides(b_batch, b_matrix)
    dims = []
    for size, da, db in zip(batch, sa, sb):
        if size == 1:
            continue
        if dims:
            ps, pa, pb = dims[-1]
            if pa == da * size and pb == db * size:
                dims[-1] = (ps * size, da, db)
                continue
        dims.append((size, da, db))
    return dims


def _matmul(self, a, b, out_dtype):
    out_dtype = np.dtype(out_dtype)
    if out_dtype.kind == "f":   # the tuned register-blocked kernel (opencl_gemm.py)
        from .opencl_gemm import matmul_float
        out = matmul_float(self, a, b, out_dtype)
        if out is not None:
            return out
    a_shape = (1,) + a.shape if a.ndim == 1 else a.shape
    b_shape = b.shape + (1,) if b.ndim == 1 else b.shape
    M, K = a_shape[-2:]
    N = b_shape[-1]
    batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    out_shape = batch + (() if a.ndim == 1 else (M,)) + (() if b.ndim == 1 else (N,))
    out = self.empty(out_shape, out_dtype)
    if out.size == 0:
        return out
    # tiles much larger than the matrices would mostly compute padding
    small = M < GEMM_SMALL_BELOW or N < GEMM_SMALL_BELOW
    kernel, threads, tile_m, tile_n = _gemm_kernel(self, a.dtype, b.dtype, out_dtype, small)
    dims = _batch_dims(batch, a_shape[:-2], b_shape[:-2], M * K, K * N)
    # the kernel splits its batch index over three dimensions; the host loops over the rest
    outer_dims, dims = dims[:-3], [(1, 0, 0)] * (3 - len(dims[-3:])) + dims[-3:]
    tiles_m, tiles_n = _cdiv(M, tile_m), _cdiv(N, tile_n)
    kernel_batch = dims[0][0] * dims[1][0] * dims[2][0]
    size = (kernel_batch * tiles_m * tiles_n * threads,)
    a_data = a.data if a.size else None
    b_data = b.data if b.size else None
    matrices = kernel_batch * M * N
    for n_call, position in enumerate(itertools.product(*(range(d[0]) for d in outer_dims))):
        a_off = sum(p * d[1] for p, d in zip(position, outer_dims))
        b_off = sum(p * d[2] for p, d in zip(position, outer_dims))
        kernel(self.queue, size, (threads,), a_data, b_data, out.data, M, N, K, tiles_m,
               tiles_n, dims[1][0], dims[2][0], dims[0][1], dims[1][1], dims[2][1],
               dims[0][2], dims[1][2], dims[2][2], a_off, b_off, n_call * matrices)
    return out


OpenCLBackend.reduce = _reduce
OpenCLBackend.cumsum = _cumsum
OpenCLBackend.sort = _sort
OpenCLBackend.flatnonzero = _flatnonzero
OpenCLBackend.matmul = _matmul
