"""The cuda backend: CuPy arrays, CuPy for the NumPy-like long tail, and gpumat's own kernels
from kernels/cuda (compiled once per device and defines through cupy.RawModule) for the named
entry points: bit packing and the shared random generator here; gemm, convolution, pooling and
the binary kernels in later layers."""
import threading

import numpy as np

from .. import kernels as _kernels
from ..errors import BackendUnavailableError, DeviceMemoryError, KernelBuildError
from .array_module import ArrayModuleBackend

try:
    import cupy
    _IMPORT_ERROR = None
except Exception as exc:    # ImportError, or a CUDA library missing at import
    cupy = None
    _IMPORT_ERROR = exc

_BLOCK = 256


class CUDABackend(ArrayModuleBackend):
    name = "cuda"
    stable_kind = None

    def __init__(self, device_id=0):
        super().__init__()
        self.xp = cupy
        self.device_id = device_id
        self.cuda_device = cupy.cuda.Device(device_id)
        self._props = cupy.cuda.runtime.getDeviceProperties(device_id)
        self._modules = {}
        self._lock = threading.Lock()

    @property
    def device(self):
        name = self._props["name"]
        name = name.decode() if isinstance(name, bytes) else name
        major, minor = self._props["major"], self._props["minor"]
        return f"{name} (cuda:{self.device_id}, sm_{major}{minor})"

    # ---- memory ---------------------------------------------------------------------------
    def _alloc(self, make, shape, dtype):
        try:
            return make()
        except cupy.cuda.memory.OutOfMemoryError as first:
            cupy.get_default_memory_pool().free_all_blocks()
            try:
                return make()
            except cupy.cuda.memory.OutOfMemoryError:
                from .cpu import _oom_message
                raise DeviceMemoryError(_oom_message("cuda", shape, dtype, first)) from None

    def to_numpy(self, a):
        return cupy.asnumpy(a)

    def memory_info(self):
        pool = cupy.get_default_memory_pool()
        held = int(pool.total_bytes()) - int(pool.used_bytes())
        return {"bytes_in_use": self._bytes_in_use, "bytes_held": max(held, 0)}

    def free(self, a):
        super().free(a)
        # CuPy returns the block to its pool once the last reference goes; gpumat's Array
        # drops its reference right after this call.

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()

    # ---- our kernels ----------------------------------------------------------------------
    def module(self, relpath, defines=None):
        """cupy.RawModule for kernels/<relpath>, built once per defines (CuPy caches cubins
        on disk keyed by source, options and architecture)."""
        defines = tuple(sorted((defines or {}).items()))
        key = (relpath, defines)
        mod = self._modules.get(key)
        if mod is None:
            with self._lock:
                mod = self._modules.get(key)
                if mod is None:
                    source = _kernels.read_source(relpath)
                    options = tuple(f"-I{d}" for d in _kernels.include_dirs("cuda")) + \
                        tuple(f"-D{k}={v}" for k, v in defines) + ("--std=c++17",)
                    mod = cupy.RawModule(code=source, options=options)
                    try:
                        mod.compile()
                    except cupy.cuda.compiler.CompileException as exc:
                        raise KernelBuildError(f"cuda: building {relpath} failed",
                                               exc.get_message()) from None
                    self._modules[key] = mod
        return mod

    def _launch(self, relpath, name, n, args):
        if n == 0:
            return
        kernel = self.module(relpath).get_function(name)
        grid = (min((n + _BLOCK - 1) // _BLOCK, 65535 * 32),)
        with self.cuda_device:
            kernel(grid, (_BLOCK,), args)

    def random(self, kind, shape, dtype, seed, counter, low=0, span=1):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        if kind == "integers":
            out = self.empty(shape, np.int64)
            self._launch("cuda/random.cu", "random_integers_i64", n,
                         (out, np.int64(n), np.uint64(seed), np.uint64(counter),
                          np.int64(low), np.uint64(span)))
            if dtype != np.int64:
                converted = self.astype(out, dtype)
                self.free(out)
                out = converted
            return out
        suffix = "f64" if dtype == np.float64 else "f32"
        out = self.empty(shape, dtype)
        self._launch("cuda/random.cu", f"random_{kind}_{suffix}", n,
                     (out, np.int64(n), np.uint64(seed), np.uint64(counter)))
        return out

    def pack_signs(self, a):
        n = a.shape[-1]
        words = (n + 31) // 32
        rows = a.size // n if n else int(np.prod(a.shape[:-1], dtype=np.int64))
        out = self.empty(a.shape[:-1] + (words,), np.uint32)
        self._launch("cuda/pack_signs.cu", "pack_signs_f32", rows * words,
                     (cupy.ascontiguousarray(a), out, np.int64(rows), np.int64(n), np.int64(words)))
        return out


def create():
    if cupy is None:
        raise BackendUnavailableError(
            f"cupy is not installed or failed to import ({_IMPORT_ERROR}); "
            f"pip install 'gpumat[cuda]' (cupy-cuda13x, or cupy-cuda12x for CUDA 12 drivers)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:   # CUDARuntimeError: no driver, insufficient driver, no device
        raise BackendUnavailableError(f"no usable CUDA driver/device: {exc}") from None
    if count == 0:
        raise BackendUnavailableError("the CUDA driver reports no devices")
    from . import cuda_conv  # noqa: F401  (adds im2col, col2im, depthwise kernels)
    from . import cuda_pool  # noqa: F401  (adds the pool2d kernels)
    from . import cuda_activations  # noqa: F401  (bias + activation, softmax kernels)
    from . import cuda_gemm  # noqa: F401  (adds the gemm kernel)
    from . import cuda_optimizers  # noqa: F401  (fused SGD / Adam updates)
    from . import cuda_batchnorm  # noqa: F401  (batch-norm statistics, maps and gradients)
    from . import cuda_xnor  # noqa: F401  (pack_conv_input, xnor_gemm, xnor_conv2d)
    backend = CUDABackend(0)
    try:       # a device can be listed yet unusable (e.g. all busy in exclusive mode)
        backend.free(backend.from_numpy(np.zeros(1, np.float32)))
    except Exception as exc:
        raise BackendUnavailableError(f"CUDA device 0 is not usable: {exc}") from None
    return backend
