"""The cpu backend: NumPy/BLAS, plus gpumat's native module for the kernels NumPy lacks."""
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
        cpu = platform.processor() or platform.machine()
        return f"host CPU ({cpu}), NumPy {np.__version__}"

    def _alloc(self, make, shape, dtype):
        try:
            return make()
        except MemoryError as exc:
            raise DeviceMemoryError(_oom_message("cpu", shape, dtype, exc)) from None

    def pack_signs(self, a):
        return self._track(native.pack_signs(a))


def _oom_message(backend, shape, dtype, exc):
    if shape is not None and dtype is not None:
        nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
        size = f"{nbytes:,} bytes ({tuple(shape)} {np.dtype(dtype)})"
    else:
        size = "an array"
    return f"{backend}: out of memory allocating {size}: {exc}"


def create():
    return CPUBackend()
