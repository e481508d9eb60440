"""SGEMM C = A @ B (float32, row-major) on square sizes and on the GEMMs that the conv and fc
layers of LeNet-5, AlexNet, VGG16 and ResNet-20 lower to (see layers.py), against NumPy's
BLAS, CLBlast (pyclblast, same OpenCL context and queue) and cuBLAS (CuPy, TF32 off).

The GEMMs are timed as training runs them, on row-major operands stored the way the layer
holds them: forward A @ B; backward-input A^T @ B (A = the weight, stored C_out x patch);
backward-weight A @ B^T (B = the columns, stored patch x columns).  gpumat runs
``gm.gemm(A, B, trans_a=, trans_b=)`` where it exists, else ``A.T @ B`` / ``A @ B.T``; NumPy
multiplies the transposed views, CLBlast and cuBLAS get the transpose flags.
"""
import pytest

import harness
import gpumat as gm
from layers import NETWORKS

SQUARES = {"quick": [128, 256, 512, 1024], "full": [128, 256, 512, 1024, 2048, 4096]}
# (network, batch, layer names or None for every conv and fc layer)
LAYER_SETS = {
    "quick": [("lenet", 8, ["conv1", "conv2"]), ("resnet20", 8, ["stage1", "stage2", "stage3"])],
    "full": [("lenet", 64, None), ("resnet20", 32, None), ("alexnet", 8, None),
             ("vgg16", 1, None)],
}


def _cases():
    cases = [pytest.param(("square", f"{n}^3", n, n, n, n, False, False), id=f"square-{n}")
             for n in SQUARES[harness.PRESET]]
    for network, batch, names in LAYER_SETS[harness.PRESET]:
        for layer in NETWORKS[network]["conv"] + NETWORKS[network]["fc"]:
            if names is not None and layer.name not in names:
                continue
            for step, (m, n, k) in layer.gemm_shapes(batch).items():
                label = f"{network}.{layer.name} b{batch} {step}"
                trans = (step == "backward-input", step == "backward-weight")
                cases.append(pytest.param(("layers", label, label, m, n, k) + trans,
                                          id=f"{network}-{layer.name}-b{batch}-{step}"))
    return cases


def _gpumat_call(a, b, trans_a, trans_b):
    if hasattr(gm, "gemm"):
        return lambda: gm.gemm(a, b, trans_a=trans_a, trans_b=trans_b), "gm.gemm"
    left, right = (a.T if trans_a else a), (b.T if trans_b else b)
    return lambda: left @ right, "A @ B"


@pytest.mark.parametrize("impl", harness.implementations("sgemm"), ids=str)
@pytest.mark.parametrize("case", _cases())
def test_sgemm(benchmark, case, impl):
    panel, label, x, m, n, k, trans_a, trans_b = case
    generator = harness.rng()
    # stored operands: A is (K, M) when transposed, B is (N, K) when transposed
    a_host = harness.host((k, m) if trans_a else (m, k), generator)
    b_host = harness.host((n, k) if trans_b else (k, n), generator)
    entry = "pyclblast.gemm" if impl.name == "clblast" else "matmul"
    if impl.role == "gpumat":
        a, b = harness.upload(impl, a_host, b_host)
        call, entry = _gpumat_call(a, b, trans_a, trans_b)
        sync = harness.gpumat_sync(impl.backend)
    elif impl.name == "numpy":
        left, right = (a_host.T if trans_a else a_host), (b_host.T if trans_b else b_host)
        call, sync = (lambda: left @ right), harness.no_sync
    elif impl.name == "clblast":
        import pyopencl.array as cla
        queue = gm.backends.get("opencl").queue      # gpumat's own context and queue
        a, b = cla.to_device(queue, a_host), cla.to_device(queue, b_host)
        c = cla.empty(queue, (m, n), a_host.dtype)
        queue.finish()
        pyclblast = impl.module
        a_ld, b_ld = a_host.shape[1], b_host.shape[1]    # row-major leading dimensions

        def call():
            pyclblast.gemm(queue, m, n, k, a, b, c, a_ld=a_ld, b_ld=b_ld, c_ld=n,
                           a_transp=trans_a, b_transp=trans_b)
        sync = queue.finish
    elif impl.name == "cublas":
        cupy = impl.module
        a, b = cupy.asarray(a_host), cupy.asarray(b_host)
        left, right = (a.T if trans_a else a), (b.T if trans_b else b)
        call, sync = (lambda: left @ right), cupy.cuda.get_current_stream().synchronize
    else:
        pytest.skip(f"{impl.name} has no SGEMM here")
    try:
        harness.time_case(benchmark, call, sync, suite="sgemm", case=label, panel=panel, x=x,
                          impl=impl, unit="GFLOP/s", work=2.0 * m * n * k, m=m, n=n, k=k,
                          trans_a=trans_a, trans_b=trans_b, entry=entry)
    except Exception as exc:           # a missing/changed entry point: report, don't fail the run
        if impl.role == "gpumat" and entry == "gm.gemm":
            pytest.skip(f"gm.gemm(A, B, trans_a=, trans_b=) failed: {type(exc).__name__}: {exc}")
        raise
