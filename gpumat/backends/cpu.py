"""The cpu backend: NumPy/BLAS, plus gpumat's native module for the kernels NumPy lacks."""
import functools
import os
import platform

import numpy as np

from .. import native
from ..errors import DeviceMemoryError
from .array_module import ArrayModuleBackend


class CPUBackend(ArrayModuleBackend):
    name = "cpu"
    xp = np

    @property
    def device(self):
        return f"{cpu_name()} ({os.cpu_count()} threads), NumPy {np.__version__}"

    def _alloc(self, make, shape, dtype):
        try:
            return make()
        except MemoryError as exc:
            raise DeviceMemoryError(_oom_message("cpu", shape, dtype, exc)) from None

    def pack_signs(self, a):
        return self._track(native.pack_signs(a))


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
    return CPUBackend()
