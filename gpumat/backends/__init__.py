"""Backend registry: lazy import by name, availability with reasons, and the default choice.

A backend module is imported only when first asked for, so a missing pyopencl or cupy never
breaks the cpu path (tinygrad's pattern).  ``backends()`` reports every backend with either its
device or the exact reason it cannot be used.
"""
import importlib
import os
import sys
import threading
import types
import warnings

from ..errors import BackendUnavailableError

NAMES = ("cuda", "opencl", "cpu")          # also the 'auto' preference order
GPU_NAMES = ("cuda", "opencl")
_MODULES = {"cpu": ".cpu", "opencl": ".opencl", "cuda": ".cuda"}

_lock = threading.RLock()
_instances = {}
_failures = {}
_default = None
_warned = set()


def warn_once(key, message, category=RuntimeWarning, stacklevel=3):
    """Emit a warning the first time ``key`` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, category, stacklevel=stacklevel)


def _create(name):
    module = importlib.import_module(_MODULES[name], __name__)
    return module.create()      # raises BackendUnavailableError with the reason


def get(name):
    """The backend instance called ``name`` ('auto' resolves to the default)."""
    if name is None:
        return default()
    if not isinstance(name, str):
        if hasattr(name, "name") and name.name in _MODULES:
            return name
        raise TypeError(f"backend must be a name like 'cpu', got {name!r}")
    name = name.lower()
    if name == "auto":
        return _auto()
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(NAMES)} or 'auto'")
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _failures:
            raise BackendUnavailableError(f"backend {name!r} is unavailable: {_failures[name]}")
        try:
            backend = _create(name)
        except BackendUnavailableError as exc:
            _failures[name] = str(exc)
            raise BackendUnavailableError(f"backend {name!r} is unavailable: {exc}") from None
        except Exception as exc:  # an import error deep inside a vendor package, say
            _failures[name] = f"{type(exc).__name__}: {exc}"
            raise BackendUnavailableError(
                f"backend {name!r} is unavailable: {_failures[name]}") from exc
        _instances[name] = backend
        return backend


def available(name):
    try:
        get(name)
        return True
    except BackendUnavailableError:
        return False


def _auto():
    for name in NAMES:
        if available(name):
            return get(name)
        # a device chosen on purpose that cannot be had is said, not passed over in silence
        chosen = os.environ.get("GPUMAT_OPENCL_DEVICE") if name == "opencl" else None
        if chosen:
            warn_once(f"auto-skips-{name}",
                      f"gpumat: the opencl device chosen with GPUMAT_OPENCL_DEVICE is "
                      f"unavailable ({_failures.get(name)}); 'auto' goes on to the next "
                      f"backend", stacklevel=4)
    raise BackendUnavailableError("no backend is available (not even cpu)")


def default():
    global _default
    with _lock:
        if _default is None:
            _default = _from_environment()
        return _default


def _from_environment():
    requested = os.environ.get("GPUMAT_BACKEND", "auto").strip() or "auto"
    return get(requested)


def use(name):
    """Make ``name`` ('cuda', 'opencl', 'cpu' or 'auto') the default backend; returns it."""
    global _default
    backend = get(name)
    with _lock:
        _default = backend
    return backend


def default_gpu():
    """The first available GPU backend, or None."""
    for name in GPU_NAMES:
        if available(name):
            return get(name)
    return None


def report():
    """{name: {'available': bool, 'device': str|None, 'reason': str|None}} for every backend."""
    out = {}
    for name in NAMES:
        try:
            backend = get(name)
            out[name] = {"available": True, "device": backend.device, "reason": None}
        except BackendUnavailableError:
            out[name] = {"available": False, "device": None, "reason": _failures.get(name)}
    return out


def loaded():
    """Backends instantiated so far (for memory_info)."""
    with _lock:
        return dict(_instances)


class _CallableModule(types.ModuleType):
    """``gm.backends()`` reports every backend, while ``gm.backends.get('opencl')`` and
    ``import gpumat.backends.opencl`` keep working: one name, no shadowing."""

    def __call__(self):
        return report()


sys.modules[__name__].__class__ = _CallableModule
