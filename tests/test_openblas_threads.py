"""gpumat keeps OpenBLAS's idle threads from spinning on the native kernels' cores
(gpumat/_openblas.py): the variable it sets, when it can, the warning when it cannot, and --
in fresh interpreters, since OpenBLAS reads the variable once -- that OpenBLAS obeys it."""
import os
import subprocess
import sys
import textwrap

import pytest

import gpumat as gm
from gpumat import _openblas

VARIABLE = _openblas.VARIABLE


def test_configure_sets_the_variable_only_before_numpy_and_never_over_the_users():
    env = {}
    assert _openblas.configure(env, {}) == "gpumat"
    assert env == {VARIABLE: _openblas.VALUE}
    env = {VARIABLE: "25"}
    assert _openblas.configure(env, {}) == "user"
    assert env == {VARIABLE: "25"}
    env = {}
    assert _openblas.configure(env, {"numpy": object()}) == "too late"
    assert env == {}


def _run(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_import_order_decides_and_only_big_float_products_warn_once():
    done = _run("""
        import gpumat as gm, os
        print(os.environ["OPENBLAS_THREAD_TIMEOUT"], gm._openblas.STATE)
    """)
    assert done.stdout.split() == [_openblas.VALUE, "gpumat"]

    # NumPy first: too late to set; big float products warn once, from the caller's line
    done = _run("""
        import inspect, warnings
        import numpy as np
        import gpumat as gm
        warnings.simplefilter("always")
        small = gm.array(np.ones((64, 64), np.float32), backend="cpu")
        ints = gm.array(np.ones((300, 300), np.int32), backend="cpu")
        big = gm.array(np.ones((300, 300), np.float32), backend="cpu")
        with warnings.catch_warnings(record=True) as caught:
            small @ small                       # one OpenBLAS thread: no spinning after it
            ints @ ints                         # NumPy's own loops, not BLAS
            first = big @ big; line = inspect.currentframe().f_lineno
            gm.gemm(big, big)
        assert float(first[0, 0]) == 300.0
        print(gm._openblas.STATE, len(caught))
        for w in caught:
            print(w.category.__name__, w.filename == "<string>", w.lineno == line)
    """)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["too", "late", "1"]
    assert lines[1].split() == ["BlasSpinWarning", "True", "True"]
    assert issubclass(gm.BlasSpinWarning, RuntimeWarning)

    # a convolution lowered to im2col + BLAS warns too
    done = _run("""
        import warnings
        import numpy as np
        import gpumat as gm
        from gpumat.backends import cpu_conv
        cpu_conv.FORCE = False                  # im2col + BLAS, not the direct kernel
        x = gm.array(np.ones((2, 64, 9, 9), np.float32), backend="cpu")
        w = gm.array(np.ones((64, 64, 3, 3), np.float32), backend="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = gm.conv2d(x, w)
        assert float(y[0, 0, 0, 0]) == 576.0
        print([w.category.__name__ for w in caught])
    """)
    assert done.stdout.split() == ["['BlasSpinWarning']"]

    # the user's value stands, and nothing warns
    done = _run("""
        import warnings
        warnings.simplefilter("error")
        import numpy as np
        import gpumat as gm, os
        big = gm.array(np.ones((300, 300), np.float32), backend="cpu")
        big @ big
        print(os.environ["OPENBLAS_THREAD_TIMEOUT"], gm._openblas.STATE)
    """, **{VARIABLE: "21"})
    assert done.stdout.split() == ["21", "user"]


def _idle_cpu_share(first_import):
    """The share of a 0.08 s sleep that the process spends on CPU right after a big
    multithreaded product: OpenBLAS's spinning workers, if they spin."""
    done = _run(f"""
        import time
        import {first_import}
        import numpy as np
        import gpumat
        a = np.ones((512, 512), np.float32)
        for _ in range(3):
            a @ a
        start_cpu, start = time.process_time(), time.perf_counter()
        time.sleep(0.08)
        print((time.process_time() - start_cpu) / (time.perf_counter() - start))
    """)
    return float(done.stdout)


def test_openblas_idle_threads_sleep_when_gpumat_came_first():
    import numpy as np
    if (os.cpu_count() or 1) < 2 or not _openblas._numpy_uses_openblas():
        pytest.skip(f"NumPy's BLAS here is not a multithreaded OpenBLAS "
                    f"({os.cpu_count()} CPUs): nothing spins")
    assert np.show_config(mode="dicts")   # (the check above read this record)
    spinning = _idle_cpu_share("numpy")   # OpenBLAS's default: its workers spin ~0.1 s
    quiet = _idle_cpu_share("gpumat")     # gpumat's 2**18 cycles: they sleep within ~0.1 ms
    assert quiet < 0.2, quiet
    assert spinning > 0.3, spinning
