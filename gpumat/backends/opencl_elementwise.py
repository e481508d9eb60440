"""Elementwise, layout, indexing, random and bit-packing methods of the opencl backend.

Everything that touches each element once goes through one strided n-d kernel family
(kernels/opencl/elementwise.cl): the output and up to three inputs are each an element
offset plus per-dimension element strides (0 = broadcast) over a common iteration shape.
The host first drops size-1 dimensions and merges neighbours that are contiguous for every
operand, so the common cases (same-shape maps, casts, copies, scalar broadcasts) run as a
1-d pass without index arithmetic, and 2-d problems (row/column broadcasts) as a 2-d grid
without index division.  Casts, permutes, broadcasts, concatenation and basic indexing are
strided copies (on GPUs a transposing copy goes through a tiled local-memory kernel);
advanced indexing gathers or scatters through an int64 array of flat element offsets built
with the same kernel.  Each operand signature (dtypes, scalar inputs, dims) is one program
holding every op of its family, built once by ``OpenCLBackend.program``; kernel objects are
kept in a per-backend dict, so a repeated op costs one dict lookup plus the launch, and
shapes and strides travel as by-value long8 arguments, never as uploads.

The methods are attached to ``OpenCLBackend`` at import (``opencl.create()`` imports us).
Kernel objects are shared, so one backend must not launch from several threads at once
(pyopencl sets a kernel's arguments and enqueues it in two steps).

Documented choices where NumPy has no defined answer:
  * integer ``power`` with a negative exponent (NumPy raises) gives C's truncated result:
    1 for base 1, +-1 for base -1, 0 otherwise;
  * integer ``divide`` (NumPy has no such loop) truncates like C, x / 0 == 0;
  * ``setitem`` with repeated advanced indices writes one of the competing values
    (NumPy writes the last one);
  * float -> integer casts of out-of-range values or NaN are undefined, as in NumPy
    (float -> unsigned goes through int64, so -1.0 -> 255 as NumPy gives on x86);
  * ``arange`` on a device without fp64 computes float64 on the host and uploads.
"""
import numpy as np

from .. import errors
from .base import MAP_OPS
from .opencl import CLBuffer, LaunchKernel, OpenCLBackend, cl

#: Most iteration dimensions one launch handles (one long8 of strides per operand); arrays
#: that stay wider after collapsing are split into several launches over the leading dims.
MAX_DIMS = 8
#: Work-group size of the elementwise launches (global sizes are rounded up to it).
LOCAL_SIZE = 256
#: Most work-groups a launch puts along grid dimensions 1 and 2 (CUDA-based OpenCL drivers
#: allow no more); the kernels loop over the rest.
_MAX_GROUPS = 65535

_SOURCE = "opencl/elementwise.cl"
_KIND_CODE = {"b": 0, "u": 1, "i": 2, "f": 3}
_UNSIGNED_TYPE = {"uchar": "uchar", "uint": "uint", "int": "uint", "long": "ulong",
                  "ulong": "ulong", "float": "float", "double": "double"}
_BOOL = np.dtype(np.bool_)
_INT64 = np.dtype(np.int64)
_UINT8 = np.dtype(np.uint8)

#: ops that only exist for floating compute dtypes
_FLOAT_ONLY = frozenset({"exp", "log", "sqrt", "tanh", "sin", "cos", "log1p", "expm1",
                         "sigmoid"})
#: binary ops with swapped operands: op(a, b) == _MIRRORED[op](b, a), exactly
_MIRRORED = {op: op for op in ("add", "multiply", "equal", "not_equal", "logical_and",
                               "logical_or", "logical_xor", "bitwise_and", "bitwise_or",
                               "bitwise_xor")}
_MIRRORED.update(less="greater", greater="less", less_equal="greater_equal",
                 greater_equal="less_equal")
#: ops built in a program of their own (the rest share the unary or binary program)
_OWN_FAMILY = frozenset({"where", "clip", "arange", "index_axpy", "transpose"})
#: both dims of a transpose at least this long before the tiled kernel pays
_TILE_MIN = 16
#: use the tiled transpose kernel: None = on GPUs and accelerators only (on CPU devices such
#: as PoCL the plain strided copy is about 4x faster: caches do the tiling, while work-group
#: barriers are expensive there); True / False force it (the tests force it on)
TILED_TRANSPOSE = None


# ---- small helpers ------------------------------------------------------------------------

def _contiguous_strides(shape):
    strides = [0] * len(shape)
    step = 1
    for axis in range(len(shape) - 1, -1, -1):
        strides[axis] = step
        step *= shape[axis]
    return strides


def _broadcast_strides(shape, target):
    """Element strides that view a contiguous array of ``shape`` as ``target`` (NumPy
    broadcasting: aligned on the right, stride 0 where the array has size 1 or no axis)."""
    shape = tuple(shape)
    while len(shape) > len(target) and shape[0] == 1:
        shape = shape[1:]
    own = _contiguous_strides(shape)
    lead = len(target) - len(shape)
    if lead < 0:
        raise errors.ShapeError(f"cannot broadcast shape {shape} to {tuple(target)}")
    out = [0] * lead
    for size, stride, want in zip(shape, own, target[lead:]):
        if size == want:
            out.append(stride if size != 1 else 0)
        elif size == 1:
            out.append(0)
        else:
            raise errors.ShapeError(f"cannot broadcast shape {shape} to {tuple(target)}")
    return out


def _conversion(src, dst):
    """Name of the elementwise.cl macro converting a ``src`` value to ``dst``."""
    if src == dst:
        return "CVT_SAME"
    if dst.kind == "b":
        return "CVT_BOOL"
    if src.kind == "f" and dst.kind == "u":
        return "CVT_F2U64" if dst.itemsize == 8 else "CVT_F2U"
    return "CVT_CAST"


def _scalar(value, dtype):
    """A Python (or NumPy) scalar as a NumPy scalar of ``dtype``, the way NumPy casts it
    (bool as 0/1 uint8, the kernel's storage type)."""
    try:
        out = np.asarray(value, dtype=dtype)
    except OverflowError:   # a Python int beyond the dtype: wrap like an integer cast
        out = np.asarray(int(value) & ((1 << 64) - 1), dtype=np.uint64).astype(dtype)
    if dtype == _BOOL:
        out = out.astype(_UINT8)
    return out.reshape(()).item()


def _collapse(shape, strides_list):
    """Drop size-1 dims and merge neighbours contiguous for every operand.

    Returns (shape, [strides per operand]) with at least one dim; None if empty."""
    dims = []
    for axis, size in enumerate(shape):
        if size == 0:
            return None
        if size != 1:
            dims.append(axis)
    out_shape = []
    out_strides = [[] for _ in strides_list]
    for axis in dims:
        size = shape[axis]
        if out_shape:
            inner = [s[axis] for s in strides_list]
            if all(o[-1] == st * size for o, st in zip(out_strides, inner)):
                out_shape[-1] *= size
                for o, st in zip(out_strides, inner):
                    o[-1] = st
                continue
        out_shape.append(size)
        for o, s in zip(out_strides, strides_list):
            o.append(s[axis])
    if not out_shape:
        return [1], [[0] for _ in strides_list]
    return out_shape, out_strides


# ---- kernel variants ---------------------------------------------------------------------

def _family(op):
    """The program of elementwise.cl holding ``op``'s kernel (ops of a family share one
    build per operand signature)."""
    if op in _OWN_FAMILY:
        return op
    return "unary" if op == "copy" or MAP_OPS[op][0] == 1 else "binary"


def _kernel(self, key, op, out_dtype, tc, inputs, ndim, index32, mode):
    """The kernel for one variant, built on first use (``inputs``: (dtype, conversion,
    is_scalar) per input)."""
    try:
        cache = self._elementwise_kernels
    except AttributeError:
        cache = self._elementwise_kernels = {}
    knl = cache.get(key)
    if knl is not None:
        return knl
    tc_type = self.cl_type(tc)
    defines = {
        f"FAMILY_{_family(op)}": 1, "NIN": len(inputs), "NDIM": ndim,
        "TOUT": self.cl_type(out_dtype), "TC": tc_type,
        "UTC": _UNSIGNED_TYPE[tc_type], "TC_KIND": _KIND_CODE[tc.kind], "TC_BYTES": tc.itemsize,
        "CVTOUT_TC": _conversion(tc, out_dtype), "CVTOUT_BOOL": _conversion(_BOOL, out_dtype),
    }
    if index32:
        defines["INDEX32"] = 1
    for flag in (mode or "").split():      # GATHER / SCATTER, ROW_LOOP
        defines[flag] = 1
    arg_types = [None, np.int64]
    for k, (dtype, conversion, is_scalar) in enumerate(inputs):
        defines[f"T{k}"] = self.cl_type(dtype)
        defines[f"CVT{k}"] = conversion
        if is_scalar:
            defines[f"SCALAR{k}"] = 1
            arg_types.append(_UINT8 if dtype == _BOOL else dtype)
        else:
            arg_types += [None, np.int64]
    arg_types.append(np.int64)
    if ndim:
        n_strided = sum(1 for _, _, is_scalar in inputs if not is_scalar)
        arg_types += [None] * (2 + n_strided)
    # distinct dtypes can share a build (bool and uint8 are both uchar): one kernel object
    # per program and op, since pyopencl makes a new one on every retrieval
    build_key = ("build", tuple(sorted(defines.items())), op)
    knl = cache.get(build_key)
    if knl is None:
        program = self.program(_SOURCE, defines)
        knl = LaunchKernel(program, "ew_" + op)
        knl.set_scalar_arg_dtypes(arg_types)
        cache[build_key] = knl
    cache[key] = knl
    return knl


def _kernel_for(self, op, out_dtype, tc, inputs, ndim, index32, mode):
    signature = tuple((item[4], item[5], item[0] == "scalar") for item in inputs)
    key = (op, out_dtype, tc, signature, ndim, index32, mode)
    return _kernel(self, key, op, out_dtype, tc, signature, ndim, index32, mode)


def _launch(self, op, tc, out, out_offset, out_strides, shape, inputs, mode=None):
    """Run ``out[view] = op(inputs)`` over the iteration ``shape``.

    ``out_strides`` are element strides of the output view (from ``out_offset``); the
    inputs come from ``_array_input`` / ``_scalar_input``; ``tc`` is the compute dtype.
    Nothing is launched for an empty shape."""
    arrays = [k for k, item in enumerate(inputs) if item[0] == "array"]
    collapsed = _collapse(shape, [out_strides] + [inputs[k][3] for k in arrays])
    if collapsed is None:
        return
    dims, strides = collapsed
    if len(dims) > MAX_DIMS:
        # split: one launch per index of the leading dims
        lead = len(dims) - MAX_DIMS
        for index in np.ndindex(*dims[:lead]):
            shift = [sum(i * s for i, s in zip(index, st[:lead])) for st in strides]
            sub_inputs = list(inputs)
            for j, k in enumerate(arrays):
                kind, buf, offset, _, dtype, conversion = inputs[k]
                sub_inputs[k] = (kind, buf, offset + shift[j + 1], strides[j + 1][lead:],
                                 dtype, conversion)
            _launch(self, op, tc, out, out_offset + shift[0], strides[0][lead:],
                    dims[lead:], sub_inputs, mode)
        return
    if op == "copy" and not mode and len(inputs) == 1 and arrays and len(dims) >= 2:
        if _launch_transpose(self, tc, out, out_offset, dims, strides, inputs[0]):
            return
    contiguous = len(dims) == 1 and all(st[0] == 1 for st in strides)
    ndim = 0 if contiguous else len(dims)
    if ndim:
        inner = dims[-1]
        rows = 1
        for d in dims[:-1]:
            rows *= d
        index32 = ndim > 2 and rows < 2 ** 31
        local0 = _local_sizes(inner)
        local = (local0, LOCAL_SIZE // local0)
        groups1 = -(-rows // local[1])
        if groups1 > _MAX_GROUPS:
            groups1 = _MAX_GROUPS
            mode = (mode or "") + " ROW_LOOP"      # the kernel loops over further rows
    else:
        rows = dims[0]
        index32 = False
    knl = _kernel_for(self, op, out.dtype, tc, inputs, ndim, index32, mode)
    args = [_live(out), out_offset]
    for item in inputs:
        if item[0] == "array":
            args += [_live(item[1]), item[2]]
        else:
            args.append(item[1])
    args.append(rows)
    if not ndim:
        knl(self.queue, (-(-rows // LOCAL_SIZE) * LOCAL_SIZE,), (LOCAL_SIZE,), *args)
        return
    # long8 rows, innermost dim first: shape, then the strides of every strided operand
    meta = np.zeros((1 + len(strides), 8), np.int64)
    meta[0, :ndim] = dims[::-1]
    for row, st in enumerate(strides, start=1):
        meta[row, :ndim] = st[::-1]
    args += list(meta)
    knl(self.queue, (-(-inner // local[0]) * local[0], groups1 * local[1]), local, *args)


def _launch_transpose(self, tc, out, out_offset, dims, strides, source):
    """The tiled kernel for a copy whose input-contiguous dim is not the output's innermost
    one (permute's common case); False when the copy has another shape."""
    enabled = TILED_TRANSPOSE
    if enabled is None:
        enabled = self.__dict__.get("_tiled_transpose")
        if enabled is None:
            kind = self.cl_device.type
            enabled = bool(kind & (cl.device_type.GPU | cl.device_type.ACCELERATOR))
            self._tiled_transpose = enabled
    if not enabled:
        return False
    out_strides, in_strides = strides
    last = len(dims) - 1
    if out_strides[last] != 1 or in_strides[last] == 1 or dims[last] < _TILE_MIN:
        return False
    across = [j for j in range(last) if in_strides[j] == 1 and dims[j] >= _TILE_MIN]
    if not across:
        return False
    j = across[-1]
    order = [last, j] + [d for d in range(last - 1, -1, -1) if d != j]   # innermost first
    batches = 1
    for d in order[2:]:
        batches *= dims[d]
    ndim = len(dims)
    transposed = ("array", source[1], source[2], [in_strides[d] for d in order],
                  source[4], source[5])
    knl = _kernel_for(self, "transpose", out.dtype, tc, [transposed], ndim,
                      ndim > 3 and batches < 2 ** 31, None)
    meta = np.zeros((3, 8), np.int64)
    meta[0, :ndim] = [dims[d] for d in order]
    meta[1, :ndim] = [out_strides[d] for d in order]
    meta[2, :ndim] = [in_strides[d] for d in order]
    tiles0 = -(-dims[last] // 32)
    tiles1 = -(-dims[j] // 32)
    knl(self.queue, (tiles0 * 32, min(tiles1, _MAX_GROUPS) * 8, min(batches, _MAX_GROUPS)),
        (32, 8, 1),
        out.data, out_offset, _live(source[1]), source[2], batches, meta[0], meta[1], meta[2])
    return True


def _local_sizes(inner):
    """Work-group width along the innermost dim (the rest of the group spans rows).

    Only three shapes, because CPU runtimes such as PoCL compile a kernel once per
    work-group shape: a width covering short rows without wasting most of the group, and
    LOCAL_SIZE for long rows."""
    if inner > 64:
        return LOCAL_SIZE
    return 32 if inner > 8 else 4


def _live(a):
    """``a``'s buffer; a freed native (``data`` None, nonzero size) raises instead of handing
    the kernel a null pointer, which crashes the process on CPU devices."""
    data = a.data
    if data is None and a.size:
        raise errors.ReleasedArrayError(
            f"opencl: a released array ({a.shape} {a.dtype}) was passed to a kernel")
    return data


def _array_input(a, offset, strides, target, conversion=None):
    """An input operand: native ``a`` read at ``offset`` + index * ``strides``."""
    return ("array", a, offset, strides, a.dtype, conversion or _conversion(a.dtype, target))


def _scalar_input(value, target, as_bool=False):
    """A by-value input, converted on the host to ``target`` (0/1 of it when ``as_bool``)."""
    if as_bool:
        value = bool(value)
    return ("scalar", _scalar(value, target), None, None, target, "CVT_SAME")


# ---- creation -----------------------------------------------------------------------------

def _full(self, shape, value, dtype):
    dtype = np.dtype(dtype)
    out = self.empty(shape, dtype)
    if out.size:
        _launch(self, "copy", dtype, out, 0, [1], [out.size],
                [_scalar_input(value, dtype)])
    return out


def _arange(self, start, step, n, dtype):
    dtype = np.dtype(dtype)
    n = int(n)
    floating = (dtype.kind in "fb" or isinstance(start, (float, np.floating))
                or isinstance(step, (float, np.floating)))
    wide = np.dtype(np.float64) if floating else _INT64
    if wide == np.float64 and not self.supports_float64:
        # NumPy's rule is float64 arithmetic; without fp64 on the device the host does it
        host = (start + step * np.arange(n, dtype=np.float64)).astype(dtype)
        return self.from_numpy(host)
    out = self.empty((n,), dtype)
    if n:
        if wide == _INT64:
            start, step = _wrap_int64(start), _wrap_int64(step)
        _launch(self, "arange", wide, out, 0, [1], [n],
                [_scalar_input(start, wide), _scalar_input(step, wide)])
    return out


def _wrap_int64(value):
    value = int(value) & ((1 << 64) - 1)
    return value - (1 << 64) if value >= 1 << 63 else value


# ---- layout -------------------------------------------------------------------------------

def _copy(self, a):
    out = self.empty(a.shape, a.dtype)
    if a.nbytes:
        cl.enqueue_copy(self.queue, out.data, _live(a), byte_count=a.nbytes)
    return out


def _astype(self, a, dtype):
    dtype = np.dtype(dtype)
    if dtype == a.dtype:
        return _copy(self, a)
    out = self.empty(a.shape, dtype)
    if out.size:
        _launch(self, "copy", dtype, out, 0, [1], [a.size],
                [_array_input(a, 0, [1], dtype)])
    return out


def _copy_into(self, out, out_offset, out_strides, shape, a, a_offset, a_strides):
    """Strided copy (with a cast to out.dtype) of a view of ``a`` into a view of ``out``."""
    _launch(self, "copy", out.dtype, out, out_offset, out_strides, shape,
            [_array_input(a, a_offset, a_strides, out.dtype)])


def _permute(self, a, axes):
    axes = [int(x) for x in axes]
    shape = [a.shape[x] for x in axes]
    own = _contiguous_strides(a.shape)
    out = self.empty(shape, a.dtype)
    if out.size:
        _copy_into(self, out, 0, _contiguous_strides(shape), shape, a, 0, [own[x] for x in axes])
    return out


def _broadcast_to(self, a, shape):
    shape = [int(s) for s in shape]
    out = self.empty(shape, a.dtype)
    if out.size:
        _copy_into(self, out, 0, _contiguous_strides(shape), shape, a, 0,
                   _broadcast_strides(a.shape, shape))
    return out


def _concatenate(self, arrays, axis, dtype):
    dtype = np.dtype(dtype)
    arrays = list(arrays)
    axis = int(axis)
    shape = list(arrays[0].shape)
    shape[axis] = sum(x.shape[axis] for x in arrays)
    out = self.empty(shape, dtype)
    strides = _contiguous_strides(shape)
    position = 0
    for x in arrays:
        if x.size:
            _copy_into(self, out, position * strides[axis], strides, list(x.shape), x, 0,
                       _contiguous_strides(x.shape))
        position += x.shape[axis]
    return out


# ---- elementwise --------------------------------------------------------------------------

def _map(self, op, args, out_dtype, compute_dtype):
    if op in _MIRRORED and len(args) == 2 and not isinstance(args[0], CLBuffer):
        # scalar first: swap into the variant that is probably built already
        op, args = _MIRRORED[op], (args[1], args[0])
    out_dtype = np.dtype(out_dtype)
    compute = out_dtype if op == "where" else np.dtype(compute_dtype)  # as the cpu reference
    shape = None
    same = True
    for a in args:
        if isinstance(a, CLBuffer):
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                same = False
    knl = None
    if same:
        # the hot path: one contiguous 1-d pass, its kernel found by one dict lookup
        try:
            cache = self._elementwise_kernels
        except AttributeError:
            cache = self._elementwise_kernels = {}
        fast_key = (op, out_dtype, compute,
                    tuple(a.dtype if isinstance(a, CLBuffer) else None for a in args))
        knl = cache.get(fast_key)
        if shape is None:
            shape = ()
    else:
        shape = tuple(np.broadcast_shapes(*[a.shape for a in args if isinstance(a, CLBuffer)]))
    if knl is None:
        _check_op(op, compute, args)
    out = self.empty(shape, out_dtype)
    n = out.size
    if n == 0:
        return out
    if knl is not None:
        cl_args = [out.data, 0]
        for k, a in enumerate(args):
            if isinstance(a, CLBuffer):
                cl_args += (_live(a), 0)
            else:
                cl_args.append(_scalar(bool(a) if op == "where" and k == 0 else a, compute))
        cl_args.append(n)
        knl(self.queue, (-(-n // LOCAL_SIZE) * LOCAL_SIZE,), (LOCAL_SIZE,), *cl_args)
    elif same:
        inputs = _map_inputs(op, args, compute, shape, True)
        _launch(self, op, compute, out, 0, [1], [n], inputs)
        cache[fast_key] = _kernel_for(self, op, out_dtype, compute, inputs, 0, False, None)
    else:
        inputs = _map_inputs(op, args, compute, shape, False)
        _launch(self, op, compute, out, 0, _contiguous_strides(shape), list(shape), inputs)
    return out


def _check_op(op, compute, args):
    """Reject what no kernel exists for, before anything is allocated."""
    if op not in MAP_OPS:
        raise ValueError(f"unknown elementwise op {op!r}")
    arity = MAP_OPS[op][0]
    if len(args) != arity:
        raise TypeError(f"{op} takes {arity} operands, got {len(args)}")
    if op in _FLOAT_ONLY and compute.kind != "f":
        raise errors.DtypeError(f"{op} needs a floating compute dtype, got {compute}")
    if op.startswith("bitwise_") and compute.kind == "f" or op == "invert" and compute.kind == "f":
        raise errors.DtypeError(f"{op} needs an integer or bool compute dtype, got {compute}")


def _map_inputs(op, args, compute, shape, same):
    inputs = []
    for k, a in enumerate(args):
        as_bool = op == "where" and k == 0
        if isinstance(a, CLBuffer):
            conversion = _conversion(a.dtype, _BOOL if as_bool else compute)
            if as_bool and conversion == "CVT_SAME":
                conversion = "CVT_CAST"   # bool storage is already 0/1
            strides = [1] if same else _broadcast_strides(a.shape, shape)
            inputs.append(_array_input(a, 0, strides, compute, conversion))
        else:
            inputs.append(_scalar_input(a, compute, as_bool))
    return inputs


# ---- indexing -----------------------------------------------------------------------------

class _IndexPlan:
    """A normalised key resolved against an array: the indexed view as offset + strided
    dims, plus the advanced-index arrays and where their broadcast dims go."""

    __slots__ = ("offset", "shape", "data_strides", "index_strides", "arrays", "index_shape")

    def __init__(self, a, key):
        if not isinstance(key, tuple):
            key = (key,)
        consumed = sum(1 for k in key if k is not None)
        if consumed > len(a.shape):
            raise IndexError(f"too many indices ({consumed}) for an array of shape {a.shape}")
        key = list(key) + [slice(0, d, 1) for d in a.shape[consumed:]]
        own = _contiguous_strides(a.shape)
        advanced = any(isinstance(k, CLBuffer) for k in key)
        offset = 0
        basic = []             # (size, stride) of the basic output dims, in key order
        arrays = []            # (native, axis stride)
        positions = []         # key positions of the advanced entries (ints too, if any)
        insert_at = None       # where in `basic` the broadcast index dims go
        axis = 0
        for position, k in enumerate(key):
            if k is None:
                basic.append((1, 0))
                continue
            size, stride = a.shape[axis], own[axis]
            axis += 1
            if isinstance(k, CLBuffer):
                arrays.append((k, stride))
            elif isinstance(k, slice):
                start, stop, step = k.start, k.stop, k.step
                if start is None or stop is None or step is None:
                    start, stop, step = k.indices(size)
                length = len(range(start, stop, step))
                if length:
                    offset += start * stride
                basic.append((length, stride * step))
                continue
            else:
                index = int(k)
                if index < 0:
                    index += size
                offset += index * stride
                if not advanced:
                    continue
            # an advanced entry (NumPy counts integers as advanced when arrays are present)
            positions.append(position)
            if insert_at is None:
                insert_at = len(basic)
        self.offset = offset
        self.arrays = arrays
        if not arrays:
            self.shape = [s for s, _ in basic]
            self.data_strides = [st for _, st in basic]
            self.index_strides = None
            self.index_shape = None
            return
        if positions[-1] - positions[0] + 1 != len(positions):
            insert_at = 0      # separated advanced indices: their dims go first
        index_shape = list(np.broadcast_shapes(*[x.shape for x, _ in arrays]))
        before, after = basic[:insert_at], basic[insert_at:]
        self.index_shape = index_shape
        self.shape = [s for s, _ in before] + index_shape + [s for s, _ in after]
        zeros = [0] * len(index_shape)
        self.data_strides = [st for _, st in before] + zeros + [st for _, st in after]
        self.index_strides = ([0] * len(before) + _contiguous_strides(index_shape)
                              + [0] * len(after))

    def offsets(self, backend, avoid=None):
        """int64 native of flat element offsets, shape ``index_shape``: sum of index * stride
        over the index arrays.  Returns (native, owned) -- owned natives must be freed."""
        arrays = self.arrays
        shape = self.index_shape
        if (len(arrays) == 1 and arrays[0][1] == 1 and list(arrays[0][0].shape) == shape
                and arrays[0][0].data is not avoid):
            return arrays[0][0], False
        total = None
        contiguous = _contiguous_strides(shape)
        for index, stride in arrays:
            nxt = backend.empty(shape, _INT64)
            addend = (_array_input(total, 0, contiguous, _INT64) if total is not None
                      else _scalar_input(0, _INT64))
            _launch(backend, "index_axpy", _INT64, nxt, 0, contiguous, shape,
                    [_array_input(index, 0, _broadcast_strides(index.shape, shape), _INT64),
                     _scalar_input(stride, _INT64), addend])
            if total is not None:
                backend.free(total)
            total = nxt
        return total, True


def _getitem(self, a, key):
    plan = _IndexPlan(a, key)
    out = self.empty(plan.shape, a.dtype)
    if out.size == 0:
        return out
    strides = _contiguous_strides(plan.shape)
    if not plan.arrays:
        _copy_into(self, out, 0, strides, plan.shape, a, plan.offset, plan.data_strides)
        return out
    offsets, owned = plan.offsets(self)
    _launch(self, "copy", a.dtype, out, 0, strides, plan.shape,
            [_array_input(offsets, 0, plan.index_strides, _INT64),
             _array_input(a, plan.offset, plan.data_strides, a.dtype)], mode="GATHER")
    if owned:
        self.free(offsets)
    return out


def _setitem(self, a, key, value):
    plan = _IndexPlan(a, key)
    shape = plan.shape
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return
    temporary = None
    if isinstance(value, CLBuffer):
        if value.data is a.data and value.data is not None:
            # the value aliases the destination: NumPy reads it completely before writing
            value = temporary = _copy(self, value)
        source = _array_input(value, 0, _broadcast_strides(value.shape, shape), a.dtype)
    else:
        source = _scalar_input(value, a.dtype)
    if not plan.arrays:
        _launch(self, "copy", a.dtype, a, plan.offset, plan.data_strides, shape, [source])
    else:
        offsets, owned = plan.offsets(self, avoid=a.data)
        _launch(self, "copy", a.dtype, a, plan.offset, plan.data_strides, shape,
                [_array_input(offsets, 0, plan.index_strides, _INT64), source], mode="SCATTER")
        if owned:
            self.free(offsets)
    if temporary is not None:
        self.free(temporary)


# ---- random -------------------------------------------------------------------------------

def _grid(self, n):
    """Global size for the grid-stride kernels of common/*.h: one work-item per element
    (rounded up to whole work-groups), which both GPUs and PoCL's work-group vectoriser
    prefer to fewer items that loop."""
    return -(-n // LOCAL_SIZE) * LOCAL_SIZE


def _common_kernel(self, relpath, name):
    try:
        cache = self._elementwise_kernels
    except AttributeError:
        cache = self._elementwise_kernels = {}
    key = (relpath, name)
    knl = cache.get(key)
    if knl is None:
        knl = self.typed_kernel(self.program(relpath), name)
        cache[key] = knl
    return knl


def _random(self, kind, shape, dtype, seed, counter, low=0, span=1):
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    key = np.uint64(int(seed) & ((1 << 64) - 1))
    start = np.uint64(int(counter) & ((1 << 64) - 1))
    if kind in ("uniform", "normal"):
        native = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
        name = f"random_{kind}_{'f64' if native == np.float64 else 'f32'}"
        extra = ()
    elif kind == "integers":
        native = _INT64
        name = "random_integers_i64"
        extra = (np.int64(_wrap_int64(low)), np.uint64(int(span)))
    else:
        raise ValueError(f"unknown random kind {kind!r}")
    out = self.empty(shape, native)
    if n:
        knl = _common_kernel(self, "opencl/random.cl", name)
        knl(self.queue, (_grid(self, n),), (LOCAL_SIZE,), out.data, np.int64(n), key, start,
            *extra)
    if native != dtype:
        cast = _astype(self, out, dtype)
        self.free(out)
        out = cast
    return out


# ---- kernel entry points ------------------------------------------------------------------

def _pack_signs(self, a):
    if a.dtype != np.float32:
        raise errors.DtypeError(f"pack_signs needs float32 input, got {a.dtype}")
    shape = a.shape if a.shape else (1,)
    n = shape[-1]
    words = -(-n // 32)
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    out = self.empty(tuple(shape[:-1]) + (words,), np.uint32)
    total = rows * words
    if total:
        knl = _common_kernel(self, "opencl/pack_signs.cl", "pack_signs_f32")
        knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(a), out.data,
            np.int64(rows), np.int64(n), np.int64(words))
    return out


OpenCLBackend.full = _full
OpenCLBackend.arange = _arange
OpenCLBackend.copy = _copy
OpenCLBackend.astype = _astype
OpenCLBackend.permute = _permute
OpenCLBackend.broadcast_to = _broadcast_to
OpenCLBackend.concatenate = _concatenate
OpenCLBackend.map = _map
OpenCLBackend.getitem = _getitem
OpenCLBackend.setitem = _setitem
OpenCLBackend.random = _random
OpenCLBackend.pack_signs = _pack_signs
