"""Exception classes of gpumat: each subclasses the builtin a user would catch."""


class GpumatError(Exception):
    """Base of every gpumat-specific error."""


class ShapeError(GpumatError, ValueError):
    """Operands whose shapes do not fit the operation; the message names the shapes."""


class DtypeError(GpumatError, TypeError):
    """A dtype gpumat or the chosen device does not support; the message names it."""


class BackendMismatchError(GpumatError, ValueError):
    """Arrays living on two different backends were combined in one operation."""


class BackendUnavailableError(GpumatError, RuntimeError):
    """The requested backend cannot be used here; the message carries the reason."""


class DeviceMemoryError(GpumatError, MemoryError):
    """A device allocation failed; the message names the requested size and the backend."""


class KernelBuildError(GpumatError, RuntimeError):
    """A kernel failed to compile; ``build_log`` holds the compiler's log."""

    def __init__(self, message, build_log=""):
        super().__init__(f"{message}\n--- build log ---\n{build_log}" if build_log else message)
        self.build_log = build_log


class ReleasedArrayError(GpumatError, RuntimeError):
    """An Array was used after ``release()`` (or after its ``gm.scope`` freed it)."""
