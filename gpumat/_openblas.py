"""OpenBLAS's idle threads, and gpumat's native kernels next to them.

After each multithreaded call, OpenBLAS's worker threads keep spinning for 2**28 CPU cycles
(about 0.1 s) before they sleep.  The cpu backend's native kernels (convolutions, pooling,
batch norm, the binary kernels) split their work over a thread pool of their own, one thread
per core, so for that long every core but the caller's is shared with a spinning OpenBLAS
thread.  Measured on 2 cores (float LeNet-5, batch 256, eval: its 5 x 5 conv on 5 x 5 planes
is one BLAS product per call): 3.8 ms a forward pass with OpenBLAS's default, 2.4 ms with
2**18 cycles (~0.1 ms), while back-to-back products (numpy matmul of 128 to 512 squares) did
not change.

OpenBLAS reads OPENBLAS_THREAD_TIMEOUT (n: spin 2**n cycles, 4 <= n <= 30) once, when it is
loaded -- when NumPy is first imported.  So ``import gpumat`` sets it to VALUE where nobody has
set it and NumPy is not loaded yet.  Where NumPy came first, OpenBLAS's default stands for the
rest of the process: the cpu backend then warns once (BlasSpinWarning) the first time it hands
a product big enough for OpenBLAS's threads to BLAS.

This module must not import NumPy (gpumat/__init__.py imports it before anything else).
"""
import os
import sys
import warnings

VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
VALUE = "18"

#: products of at most this many multiply-adds run on OpenBLAS's calling thread alone
#: (its GEMM_MULTITHREAD_THRESHOLD, 4 x 65536), so they wake no worker to spin afterwards
SINGLE_THREADED_WORK = 4 * 65536


class BlasSpinWarning(RuntimeWarning):
    """NumPy was imported before gpumat, with OPENBLAS_THREAD_TIMEOUT unset: OpenBLAS's idle
    threads spin for ~0.1 s after each multithreaded product, on the cores gpumat's native
    kernels use."""


def configure(environ=os.environ, modules=sys.modules):
    """Set the variable where that still has an effect; returns who decided its value:
    'gpumat', 'user' (set beforehand) or 'too late' (NumPy, hence OpenBLAS, already loaded)."""
    if VARIABLE in environ:
        return "user"
    if "numpy" in modules:
        return "too late"
    environ[VARIABLE] = VALUE
    return "gpumat"


STATE = configure()
_warned = False


def describe():
    """One line for ``python -m gpumat info`` and the benchmarks' JSON."""
    if STATE == "too late":
        return (f"{VARIABLE} unset and NumPy imported before gpumat: OpenBLAS's idle threads "
                "spin for its default 2**28 cycles (~0.1 s) after each multithreaded product")
    return f"{VARIABLE}={os.environ.get(VARIABLE, '')} (set by {STATE})"


def check_product(work):
    """Warn once when the cpu backend gives BLAS a product of ``work`` multiply-adds that
    OpenBLAS will split over threads left spinning at its default timeout."""
    global _warned
    if _warned or STATE != "too late" or work <= SINGLE_THREADED_WORK:
        return
    if (os.cpu_count() or 1) < 2 or not _numpy_uses_openblas():
        return
    _warned = True
    warnings.warn(
        "NumPy was imported before gpumat with OPENBLAS_THREAD_TIMEOUT unset, so OpenBLAS's "
        "idle threads spin for ~0.1 s after each multithreaded product, on the cores gpumat's "
        "native kernels run on (float LeNet-5 inference on 2 cores: 1.6x slower).  Import "
        f"gpumat before NumPy, or set {VARIABLE}={VALUE} in the environment.",
        BlasSpinWarning, stacklevel=_caller_level())


def _caller_level():
    """warnings.warn's stacklevel, from its caller, of the first frame outside gpumat."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _numpy_uses_openblas():
    try:
        import numpy
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:         # an older NumPy, or a build without that record
        return False
    return "openblas" in str(blas).lower()
