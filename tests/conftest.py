"""Shared fixtures: the suite runs once per available backend.

GPUMAT_REQUIRE_BACKENDS=opencl,cuda makes a missing backend an error instead of a smaller
matrix (CI sets it for opencl, so PoCL tests can never silently vanish);
GPUMAT_TEST_BACKENDS=cuda restricts the run to the named backends.
"""
import os

import gpumat as gm  # before NumPy, so that OpenBLAS's idle threads sleep soon (gpumat/_openblas.py)
import numpy as np
import pytest

_REPORT = gm.backends()
AVAILABLE = [name for name, info in _REPORT.items() if info["available"]]


def _names(var):
    return [n.strip() for n in os.environ.get(var, "").split(",") if n.strip()]


def pytest_sessionstart(session):
    missing = [n for n in _names("GPUMAT_REQUIRE_BACKENDS") if n not in AVAILABLE]
    if missing:
        reasons = "; ".join(f"{n}: {_REPORT[n]['reason']}" for n in missing)
        pytest.exit(f"required backends unavailable: {reasons}", returncode=3)


def pytest_report_header(config):
    return [f"gpumat backends: {name} -> "
            + (info["device"] if info["available"] else f"unavailable ({info['reason']})")
            for name, info in _REPORT.items()]


TESTED = [n for n in AVAILABLE if not _names("GPUMAT_TEST_BACKENDS")
          or n in _names("GPUMAT_TEST_BACKENDS")]


@pytest.fixture(params=TESTED)
def backend(request):
    """Name of each backend under test."""
    return request.param


@pytest.fixture(params=[n for n in TESTED if n != "cpu"] or [pytest.param(
        None, marks=pytest.mark.skip(reason="no GPU backend available here"))])
def gpu_backend(request):
    return request.param


def assert_same(result, expected, rtol=1e-6, atol=0.0, check_dtype=True):
    """A gpumat result equals a NumPy reference: shape, dtype and values (NaN where NaN)."""
    assert isinstance(result, gm.Array), f"expected a gm.Array, got {type(result).__name__}"
    expected = np.asarray(expected)
    got = result.gather()
    assert got.shape == expected.shape, f"shape {got.shape} != expected {expected.shape}"
    if check_dtype:
        assert got.dtype == expected.dtype, f"dtype {got.dtype} != expected {expected.dtype}"
    if expected.dtype.kind == "f" or got.dtype.kind == "f":
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                                   rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, expected)


def float_tolerance(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


@pytest.fixture(scope="module")
def ocl():
    """The opencl backend object, for the tests of its kernels at the backend level (skipped
    where it is unavailable: CI requires it with GPUMAT_REQUIRE_BACKENDS)."""
    try:
        return gm.backends.get("opencl")
    except gm.BackendUnavailableError as exc:
        pytest.skip(f"opencl backend unavailable: {exc}")
