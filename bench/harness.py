"""What the benchmark files share: the preset, the implementations and how one case is timed.

The bench_*.py files are pytest-benchmark modules; ``python bench/run.py`` runs them and turns
their JSON into tables, ratios and plots.  Settings come from the environment so the files
also run under a bare ``pytest bench/bench_sgemm.py``:

    GPUMAT_BENCH_PRESET    quick (default) or full
    GPUMAT_BENCH_BACKENDS  comma list of gpumat backends (default: every available one)

An implementation is a gpumat backend ("gpumat-opencl") or a peer library ("numpy",
"clblast", "cublas", "torch-cpu", "torch-cuda"), each used only where it is installed and its
device exists.  Timing rules: inputs are made and uploaded before timing; one warm-up call
(kernel builds, CLBlast's compile, allocator pools) is excluded; every timed call ends with
the device synchronised; nothing asserts on a time.
"""
import importlib
import os
import time
from dataclasses import dataclass, field

os.environ["CUPY_TF32"] = "0"   # cuBLAS in plain FP32 (read when CuPy is imported)

import gpumat as gm  # before NumPy: OpenBLAS's idle threads then sleep soon (gpumat/_openblas.py)
import numpy as np

PRESET = os.environ.get("GPUMAT_BENCH_PRESET", "quick")
if PRESET not in ("quick", "full"):
    raise ValueError(f"GPUMAT_BENCH_PRESET must be quick or full, got {PRESET!r}")

# Per benchmark: aim for about BUDGET seconds of timed calls, within [MIN, MAX] rounds.
ROUND_BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = {"quick": (1.0, 5, 60), "full": (1.0, 5, 200)}[PRESET]

THREADS = os.cpu_count() or 1


def _import(name):
    try:
        return importlib.import_module(name), None
    except Exception as exc:            # noqa: BLE001 - any import failure means "absent"
        return None, f"{name} is not importable ({type(exc).__name__}: {exc})"


def gpumat_backends():
    """The gpumat backends to time: GPUMAT_BENCH_BACKENDS, else every available one."""
    report = gm.backends()
    available = [name for name, info in report.items() if info["available"]]
    wanted = os.environ.get("GPUMAT_BENCH_BACKENDS")
    if not wanted:
        return available
    return [name for name in wanted.split(",") if name in available]


@dataclass
class Implementation:
    name: str
    device: str
    role: str                      # "gpumat" (what is measured) or "peer" (what it is compared to)
    backend: str = None            # gpumat backend, or the one whose device the peer shares
    module: object = field(default=None, repr=False)

    def __str__(self):
        return self.name


_NOTES = []          # why an implementation is missing, printed once by run.py


def notes():
    return list(_NOTES)


def _note(text):
    if text not in _NOTES:
        _NOTES.append(text)


def cpu_label():
    try:
        from gpumat.backends.cpu import cpu_name
        return f"{cpu_name()} ({THREADS} threads)"
    except Exception:                   # noqa: BLE001 - only a label
        import platform
        return f"{platform.processor() or 'host CPU'} ({THREADS} threads)"


def _torch():
    torch, reason = _import("torch")
    if torch is not None:
        torch.set_num_threads(THREADS)   # the same cores NumPy's BLAS and PoCL use
    return torch, reason


def implementations(suite):
    """Every implementation available for ``suite`` (sgemm, conv, pool, act, sushi2)."""
    found = []
    backends = gpumat_backends()
    for name in backends:
        found.append(Implementation(f"gpumat-{name}", gm.backends.get(name).device, "gpumat", name))
    if suite in ("sgemm", "act", "sushi2"):
        found.append(Implementation("numpy", f"{cpu_label()}, NumPy {np.__version__} BLAS",
                                    "peer", "cpu"))
    if suite == "sgemm":
        if "opencl" in backends:
            pyclblast, reason = _import("pyclblast")
            if pyclblast is None:
                _note(f"clblast peer skipped: {reason}; pip install pyclblast")
            else:
                found.append(Implementation("clblast", gm.backends.get("opencl").device, "peer",
                                            "opencl", pyclblast))
        if "cuda" in backends:
            cupy, reason = _import("cupy")
            if cupy is not None:
                found.append(Implementation("cublas", gm.backends.get("cuda").device, "peer",
                                            "cuda", cupy))
        else:
            _note("cublas peer skipped: no cuda backend in this run")
    if suite in ("conv", "pool", "act"):
        torch, reason = _torch()
        if torch is None:
            _note(f"torch peers skipped: {reason}")
        else:
            threads = torch.get_num_threads()
            label = f"{cpu_label()}, torch {torch.__version__} with {threads} threads"
            found.append(Implementation("torch-cpu", label, "peer", "cpu", torch))
            if "cuda" in backends and torch.cuda.is_available():
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
                found.append(Implementation("torch-cuda", f"{torch.cuda.get_device_name()} "
                                            f"(cuDNN {torch.backends.cudnn.version()})", "peer",
                                            "cuda", torch))
            elif "cuda" in backends:
                _note("cuDNN peer skipped: torch has no CUDA build or sees no GPU")
            else:
                _note("cuDNN peer skipped: no cuda backend in this run")
    return found


def gpumat_sync(name):
    return gm.backends.get(name).synchronize


def no_sync():
    return None


def upload(impl, *host_arrays):
    """Host arrays as gpumat Arrays on the implementation's backend, the upload finished."""
    arrays = [gm.array(np.ascontiguousarray(x), backend=impl.backend) for x in host_arrays]
    gm.backends.get(impl.backend).synchronize()
    return arrays


def time_case(benchmark, call, sync, *, suite, case, panel, x, impl, unit, work, **extra):
    """Time ``call`` (which must not wait for the device) followed by ``sync``.

    ``work`` is the case's floating-point operations (unit GFLOP/s) or bytes moved (GB/s);
    ``panel`` and ``x`` place the point in the suite's plot (x a number or a label)."""
    call()
    sync()                                  # warm-up, not timed
    start = time.perf_counter()
    call()
    sync()
    once = time.perf_counter() - start
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(once, 1e-9))))

    def timed():
        call()
        sync()

    benchmark.group = f"{suite} {case}"
    benchmark.extra_info.update(suite=suite, case=case, panel=panel, x=x,
                                implementation=impl.name, role=impl.role, device=impl.device,
                                unit=unit, work=work, preset=PRESET, **extra)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)


def rng(seed=0):
    return np.random.default_rng(seed)


def host(shape, generator, offset=0.0):
    return (generator.random(shape, dtype=np.float32) + np.float32(offset))
