"""The opencl backend: PyOpenCL buffers and gpumat's own kernels from kernels/opencl.

This module holds the device plumbing (context, queue, pooled memory, program cache, launch
helper); the kernel families live beside it in ``opencl_elementwise.py`` (maps, copies,
indexing, random, bit packing) and ``opencl_reduce.py`` (reductions, scans, sort, find,
matmul), which add their methods to ``OpenCLBackend``.
"""
import math
import os
import threading

import numpy as np

from .. import kernels as _kernels
from ..errors import BackendUnavailableError, DeviceMemoryError, KernelBuildError
from .base import Backend

try:
    import pyopencl as cl
    import pyopencl.tools as cl_tools
    _IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a broken ICD loader raising at import
    cl = None
    _IMPORT_ERROR = exc

#: OpenCL C type of each dtype gpumat supports.
CL_TYPES = {
    np.dtype(np.bool_): "uchar", np.dtype(np.uint8): "uchar", np.dtype(np.int32): "int",
    np.dtype(np.uint32): "uint", np.dtype(np.int64): "long", np.dtype(np.uint64): "ulong",
    np.dtype(np.float32): "float", np.dtype(np.float64): "double",
}

#: the by-value argument types of gpumat's kernels, by their OpenCL C names
_SCALAR_ARGS = {"char": np.int8, "uchar": np.uint8, "short": np.int16, "ushort": np.uint16,
                "int": np.int32, "uint": np.uint32, "long": np.int64, "ulong": np.uint64,
                "float": np.float32, "double": np.float64,
                # kernels/common/dialect.h's typedefs, as the argument info names them
                "i64": np.int64, "u64": np.uint64, "u32": np.uint32, "u8": np.uint8}


def scalar_arg_dtypes(kernel):
    """The list pyopencl's ``set_scalar_arg_dtypes`` takes for ``kernel`` (None for memory
    arguments), from the argument info its program was built with (-cl-kernel-arg-info);
    None where that info is missing or an argument is neither a buffer nor a plain scalar."""
    try:
        dtypes = []
        for i in range(kernel.num_args):
            if (kernel.get_arg_info(i, cl.kernel_arg_info.ADDRESS_QUALIFIER)
                    != cl.kernel_arg_address_qualifier.PRIVATE):
                dtypes.append(None)         # __global, __local or __constant memory
                continue
            dtype = _SCALAR_ARGS.get(kernel.get_arg_info(i, cl.kernel_arg_info.TYPE_NAME))
            if dtype is None:
                return None
            dtypes.append(dtype)
    except cl.Error:
        return None
    return dtypes


class CLBuffer:
    """A C-contiguous device array: a (possibly pooled) cl buffer plus shape and dtype.

    Zero-size arrays hold ``data=None``: OpenCL cannot create empty buffers, and no kernel is
    launched over them.
    """

    __slots__ = ("data", "shape", "dtype", "size", "nbytes")

    def __init__(self, data, shape, dtype):
        self.data = data
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.size = math.prod(self.shape)
        self.nbytes = self.size * self.dtype.itemsize

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"CLBuffer(shape={self.shape}, dtype={self.dtype})"


def _choose_device():
    """The device named by GPUMAT_OPENCL_DEVICE ('platform:device' indices), else the first
    GPU, else the first device of any type."""
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:
        raise BackendUnavailableError(
            f"no OpenCL platform found ({exc}); install an ICD, e.g. apt-get install "
            f"pocl-opencl-icd") from None
    if not platforms:
        raise BackendUnavailableError(
            "no OpenCL platform found; install an ICD, e.g. apt-get install pocl-opencl-icd")
    wanted = os.environ.get("GPUMAT_OPENCL_DEVICE")
    if wanted:
        try:
            p, d = (int(v) for v in wanted.split(":"))
            return platforms[p].get_devices()[d]
        except (ValueError, IndexError, cl.Error) as exc:
            raise BackendUnavailableError(
                f"GPUMAT_OPENCL_DEVICE={wanted!r} names no device ({exc})") from None
    devices = []
    for platform in platforms:
        try:
            devices.extend(platform.get_devices())
        except cl.Error:
            continue
    if not devices:
        raise BackendUnavailableError("OpenCL platforms exist but expose no device")
    gpus = [d for d in devices if d.type & cl.device_type.GPU]
    return (gpus or devices)[0]


class LaunchKernel:
    """A cl.Kernel whose launches are atomic: pyopencl sets a kernel's arguments on the kernel
    object and then enqueues it, so two Python threads launching one cached kernel could each
    enqueue with the other's arguments (wrong values, no error: four threads adding their own
    scalars to one Array got another thread's in 5 of 1200 results).  Every kernel the
    backend caches is one of these; a launch costs about 1.3 us more (a lock and a call).
    Anything else (set_scalar_arg_dtypes, get_arg_info, ...) is the kernel's own."""

    __slots__ = ("kernel", "_lock")

    def __init__(self, program, name):
        self.kernel = cl.Kernel(program, name)
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self.kernel(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kernel, name)


class OpenCLBackend(Backend):
    name = "opencl"

    def __init__(self, device):
        self.cl_device = device
        self.context = cl.Context([device])
        self.queue = cl.CommandQueue(self.context)
        self.pool = cl_tools.MemoryPool(cl_tools.ImmediateAllocator(self.queue))
        self.supports_float64 = bool(device.double_fp_config)
        #: float32 / and sqrt correctly rounded (OpenCL's default allows 2.5 and 3 ulp): the
        #: batch norm's inv_std, the channel means and XNOR-Net's K then have the cpu
        #: backend's bits on a GPU too.  Not asked of CPU devices: PoCL compiles / and sqrt to
        #: the processor's own correctly rounded instructions anyway (the bit-for-bit tests
        #: pass there without it), so their kernels stay as built and measured before
        self.exact_divide_sqrt = bool(
            device.single_fp_config & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT
            and not device.type & cl.device_type.CPU)
        self.max_alloc = int(device.max_mem_alloc_size)
        self.max_work_group_size = int(device.max_work_group_size)
        self._bytes_in_use = 0
        self._programs = {}
        self._lock = threading.Lock()

    @property
    def device(self):
        d = self.cl_device
        return f"{d.name.strip()} ({d.platform.name.strip()}, OpenCL)"

    # ---- memory ---------------------------------------------------------------------------
    def _allocate(self, nbytes, shape, dtype):
        if nbytes == 0:
            return None
        if nbytes > self.max_alloc:
            raise DeviceMemoryError(
                f"opencl: cannot allocate {nbytes:,} bytes ({tuple(shape)} {np.dtype(dtype)}): "
                f"the device {self.cl_device.name.strip()!r} allows at most "
                f"{self.max_alloc:,} bytes per buffer")
        try:
            return self.pool.allocate(nbytes)
        except cl.Error as first:
            # give cached blocks back to the driver and try once more before giving up
            self.pool.free_held()
            try:
                return self.pool.allocate(nbytes)
            except cl.Error:
                raise DeviceMemoryError(
                    f"opencl: out of device memory allocating {nbytes:,} bytes "
                    f"({tuple(shape)} {np.dtype(dtype)}): {first}") from None

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        out = CLBuffer(self._allocate(nbytes, shape, dtype), shape, dtype)
        self._bytes_in_use += out.nbytes
        return out

    def from_numpy(self, x):
        out = self.empty(x.shape, x.dtype)
        if out.nbytes:
            cl.enqueue_copy(self.queue, out.data, np.ascontiguousarray(x))
        return out

    def to_numpy(self, a):
        host = np.empty(a.shape, a.dtype)
        if a.nbytes:
            cl.enqueue_copy(self.queue, host, a.data)
        return host

    def free(self, a):
        if a.data is not None:
            self._bytes_in_use -= a.nbytes
            a.data.release()
            a.data = None

    def memory_info(self):
        held = int(self.pool.managed_bytes) - int(self.pool.active_bytes)
        return {"bytes_in_use": self._bytes_in_use, "bytes_held": max(held, 0)}

    def synchronize(self):
        self.queue.finish()

    def reshape(self, a, shape):
        return CLBuffer(a.data, shape, a.dtype)

    # ---- programs -------------------------------------------------------------------------
    def program(self, relpath, defines=None):
        """Build (once per device and defines) the program in kernels/<relpath>."""
        defines = tuple(sorted((defines or {}).items()))
        key = (relpath, defines)
        prog = self._programs.get(key)
        if prog is None:
            with self._lock:
                prog = self._programs.get(key)
                if prog is None:
                    source = _kernels.read_source(relpath)
                    prog = self.build(source, dict(defines), name=relpath)
                    self._programs[key] = prog
        return prog

    def build(self, source, defines=None, name="<source>"):
        """Compile OpenCL C ``source``; a failure raises KernelBuildError with the build log."""
        # the argument info lets typed_kernel declare each kernel's scalar argument types
        options = [f"-I{d}" for d in _kernels.include_dirs("opencl")] + ["-cl-kernel-arg-info"]
        if self.exact_divide_sqrt:
            options.append("-cl-fp32-correctly-rounded-divide-sqrt")
        if self.supports_float64:
            options.append("-DGPUMAT_ENABLE_FP64")
        for k, v in (defines or {}).items():
            options.append(f"-D{k}={v}")
        try:
            return cl.Program(self.context, source).build(options=options)
        except cl.Error as exc:     # pyopencl puts the compiler's log in the message
            raise KernelBuildError(
                f"opencl: building {name} for {self.device} failed "
                f"(options: {' '.join(options)})", str(exc)) from None

    def typed_kernel(self, program, name):
        """Kernel ``name`` of ``program`` with its scalar argument types declared: pyopencl then
        packs scalars itself (0.6 us for a launch's nine arguments on PoCL here) instead of
        taking each NumPy scalar through its generic path (6 us apiece)."""
        kernel = LaunchKernel(program, name)
        dtypes = scalar_arg_dtypes(kernel)
        if dtypes is not None:
            kernel.set_scalar_arg_dtypes(dtypes)
        return kernel

    def launch(self, kernel, global_size, local_size, *args):
        """Enqueue ``kernel``; an empty global size launches nothing."""
        if any(int(g) == 0 for g in global_size):
            return None
        return kernel(self.queue, tuple(int(g) for g in global_size),
                      None if local_size is None else tuple(int(l) for l in local_size), *args)

    def cl_type(self, dtype):
        return CL_TYPES[np.dtype(dtype)]


def create():
    if cl is None:
        raise BackendUnavailableError(
            f"pyopencl is not installed or failed to import ({_IMPORT_ERROR}); "
            f"pip install 'gpumat[opencl]'")
    device = _choose_device()
    if device.max_work_group_size < 256:
        raise BackendUnavailableError(
            f"the OpenCL device {device.name.strip()!r} allows work-groups of at most "
            f"{device.max_work_group_size} items; gpumat's OpenCL kernels need 256")
    # the kernel families register their methods on import
    from . import opencl_elementwise, opencl_reduce  # noqa: F401
    from . import opencl_pool  # noqa: F401
    from . import opencl_conv  # noqa: F401
    from . import opencl_gemm  # noqa: F401  (adds gemm; matmul routes floats to it)
    from . import opencl_activations  # noqa: F401
    from . import opencl_optimizers  # noqa: F401
    from . import opencl_batchnorm  # noqa: F401
    from . import opencl_xnor  # noqa: F401  (pack_conv_input, xnor_gemm, xnor_conv2d)
    return OpenCLBackend(device)
