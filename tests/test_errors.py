"""Every error path names the problem and leaves the library usable."""
import numpy as np
import pytest

import gpumat as gm
from gpumat import backends as registry


def test_shape_mismatch_names_both_shapes(backend):
    a, b = gm.zeros(3, 4, backend=backend), gm.zeros(5, backend=backend)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5,\)"):
        a + b
    with pytest.raises(gm.ShapeError, match=r"\(3, 4\).*\(5,\)"):
        a @ b
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 4\)"):
        a @ a


def test_unsupported_dtype_operations(backend):
    b = gm.array([True, False], backend=backend)
    with pytest.raises(TypeError, match="bool"):
        -b
    with pytest.raises(TypeError, match="bool"):
        b - b
    with pytest.raises(TypeError, match="logical"):
        b @ b
    with pytest.raises(TypeError, match="object"):
        gm.array(np.array([object()]), backend=backend)


def test_scalar_overflow_is_reported(backend):
    a = gm.zeros(2, dtype="int32", backend=backend)
    with pytest.raises(OverflowError, match="int32"):
        a + 2 ** 40


def test_two_backends_in_one_op_names_both(gpu_backend):
    a = gm.ones(3, backend="cpu")
    b = gm.ones(3, backend=gpu_backend)
    with pytest.raises(gm.BackendMismatchError, match=f"'cpu'.*'{gpu_backend}'|'{gpu_backend}'.*'cpu'"):
        a + b
    with pytest.raises(ValueError, match="cpu"):
        gm.cat(0, a, b)
    c = gm.zeros(3, backend=gpu_backend)
    with pytest.raises(ValueError, match="cpu"):
        c[0:2] = gm.ones(2, backend="cpu")
    assert (a.to(gpu_backend) + b).gather().tolist() == [2.0, 2.0, 2.0]


def test_unavailable_backend_carries_the_reason(monkeypatch):
    monkeypatch.setitem(registry._failures, "cuda", "no CUDA driver (test)")
    monkeypatch.delitem(registry._instances, "cuda", raising=False)
    with pytest.raises(gm.BackendUnavailableError, match="no CUDA driver \\(test\\)"):
        gm.zeros(3, backend="cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        gm.use("cuda")
    assert gm.backends()["cuda"] == {"available": False, "device": None,
                                     "reason": "no CUDA driver (test)"}


def test_every_unavailable_backend_reports_a_reason():
    for name, info in gm.backends().items():
        assert info["available"] or (isinstance(info["reason"], str) and info["reason"])
        assert not info["available"] or info["device"]
    assert gm.backends()["cpu"]["available"]


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="'tpu'"):
        gm.zeros(2, backend="tpu")


def test_use_and_environment(monkeypatch):
    before = gm.default_backend()
    try:
        assert gm.use("cpu") == "cpu"
        assert gm.zeros(2).backend == "cpu"
        assert gm.use("auto") == [n for n, i in gm.backends().items() if i["available"]][0]
    finally:
        gm.use(before)
    monkeypatch.setenv("GPUMAT_BACKEND", "cpu")
    monkeypatch.setattr(registry, "_default", None)
    assert gm.default_backend() == "cpu"


@pytest.mark.parametrize("chosen", ["0:99", "abc"])
def test_an_unavailable_chosen_opencl_device_is_said(chosen):
    # 'auto' went on to the cpu backend without a word when the device set was not there
    import os
    import subprocess
    import sys
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import gpumat as gm\n"
            "print(gm.rand(2).backend)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, GPUMAT_OPENCL_DEVICE=chosen,
                                                  GPUMAT_BACKEND="auto"))
    if registry.available("cuda"):       # 'auto' stops at cuda, before opencl is looked at
        assert result.returncode == 0 and result.stdout.strip() == "cuda", result.stderr
        return
    assert result.returncode != 0
    assert "GPUMAT_OPENCL_DEVICE" in result.stderr and repr(chosen) in result.stderr
    assert "'auto' goes on to the next backend" in result.stderr


def test_out_of_memory_then_keeps_working(backend):
    with pytest.raises(MemoryError, match="bytes"):
        gm.zeros(2 ** 22, 2 ** 22, backend=backend)       # 64 TiB of single
    with pytest.raises(gm.DeviceMemoryError, match=backend):
        gm.empty(2 ** 40, dtype="double", backend=backend)
    # past what a size can say (NumPy: "array is too big"), and a random draw's own scratch
    for make in (lambda: gm.zeros(2 ** 32, 2 ** 32, backend=backend),
                 lambda: gm.zeros(2 ** 62, 2, backend=backend),
                 lambda: gm.rand(2 ** 40, backend=backend)):
        with pytest.raises(gm.DeviceMemoryError, match=f"{backend}.*bytes"):
            make()
    a = gm.ones(1000, backend=backend)
    assert (a * 2).sum().item() == 2000


def test_kernel_build_failure_carries_the_log(gpu_backend):
    backend = registry.get(gpu_backend)
    if gpu_backend == "opencl":
        with pytest.raises(gm.KernelBuildError) as info:
            backend.build("__kernel void broken(__global float* x) { x[0] = undefined_name; }",
                          name="broken.cl")
    else:
        import cupy
        with pytest.raises(gm.KernelBuildError) as info:
            mod = cupy.RawModule(code="extern \"C\" __global__ void k() { undefined_name; }")
            try:
                mod.compile()
            except cupy.cuda.compiler.CompileException as exc:
                raise gm.KernelBuildError("cuda: building k failed", exc.get_message())
    assert isinstance(info.value, RuntimeError)
    assert "undefined_name" in info.value.build_log and "undefined_name" in str(info.value)
    assert (gm.ones(2, backend=gpu_backend) + 1).gather().tolist() == [2.0, 2.0]


def test_float64_refused_where_the_device_lacks_it(gpu_backend, monkeypatch):
    backend = registry.get(gpu_backend)
    monkeypatch.setattr(backend, "supports_float64", False)
    with pytest.raises(TypeError, match="double precision"):
        gm.zeros(3, dtype="double", backend=gpu_backend)
    a = gm.ones(3, dtype="int32", backend=gpu_backend)
    with pytest.raises(TypeError, match="double precision"):
        a / a              # int32 / int32 is float64 in NumPy's rules
    with pytest.raises(TypeError, match="double precision"):
        gm.array(np.zeros(2), backend=gpu_backend)


def test_axis_errors(backend):
    a = gm.zeros(2, 3, backend=backend)
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        gm.sum(a, axis=2)
    with pytest.raises(TypeError, match="axis must be an integer"):
        gm.sum(a, axis=1.5)


def test_bad_shapes_in_constructors(backend):
    with pytest.raises(ValueError, match="negative dimension"):
        gm.zeros(3, -1, backend=backend)
    with pytest.raises(TypeError, match="integers"):
        gm.zeros(2.5, backend=backend)
