"""Every kernels/cuda/*.cu compiles with nvcc for Ampere (sm_80) and Hopper (sm_90).

CI machines have nvcc but rarely a GPU, so this is what keeps the CUDA
sources honest there; their logic runs through the shared OpenCL build.
The file list is taken when the tests are collected, and an empty list is a
failure: it would mean the kernels were moved or lost, not that all is well.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gpumat.kernels import include_dirs, kernels_dir

ARCHITECTURES = ["sm_80", "sm_90"]
NVCC_TIMEOUT_S = 300


def _cuda_dir() -> Path | None:
    try:
        return kernels_dir() / "cuda"
    except FileNotFoundError:
        return None


CUDA_DIR = _cuda_dir()
CUDA_SOURCES = sorted(CUDA_DIR.glob("*.cu")) if CUDA_DIR is not None else []


def test_cuda_sources_exist():
    assert CUDA_DIR is not None, "gpumat.kernels.kernels_dir() found no kernel directory"
    assert CUDA_SOURCES, f"no *.cu files found in {CUDA_DIR}"


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        pytest.skip("nvcc is not on PATH")
    return path


def _xnor_builds():
    """The defines the cuda backend builds xnor.cu with (cuda_xnor.conv_defines: one build per
    power of two of filters a launch keeps), so that CI compiles what would run."""
    from gpumat.backends import cuda_xnor
    builds, filters = [], 1
    while filters <= cuda_xnor.DEFINES["XNOR_NV"]:
        builds.append(cuda_xnor.conv_defines(filters))
        filters *= 2
    return builds


XNOR_BUILDS = _xnor_builds()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: path.name)
def test_cuda_source_compiles(nvcc, source, architecture, tmp_path):
    _compile(nvcc, source, architecture, tmp_path, {})


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("defines", XNOR_BUILDS, ids=lambda d: f"NV{d['XNOR_NV']}")
def test_xnor_compiles_as_the_backend_builds_it(nvcc, defines, architecture, tmp_path):
    _compile(nvcc, CUDA_DIR / "xnor.cu", architecture, tmp_path, defines)


def _compile(nvcc, source, architecture, tmp_path, defines):
    # -cubin runs ptxas too, which catches what -ptx alone would not
    # (shared memory over the limit, register-file misuse).
    output = tmp_path / f"{source.stem}.{architecture}.cubin"
    command = [nvcc, "-cubin", f"-arch={architecture}", "-std=c++17"]
    for directory in include_dirs("cuda"):
        command += ["-I", directory]
    command += [f"-D{name}={value}" for name, value in sorted(defines.items())]
    command += [str(source), "-o", str(output)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=NVCC_TIMEOUT_S, cwd=tmp_path
    )
    assert result.returncode == 0, (
        f"nvcc failed (rc={result.returncode}) for {source.name} on {architecture}\n"
        f"command: {' '.join(command)}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    assert output.is_file() and output.stat().st_size > 0, f"nvcc wrote no {output.name}"
