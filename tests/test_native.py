"""gpumat.native.pack_signs: the compiled kernel, its NumPy twin and a per-bit reference agree."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpumat.native as native

SHAPES = [(0,), (1,), (31,), (32,), (33,), (3, 97), (2, 3, 64), (5, 0), (0, 33), (4, 1, 65)]
LARGE_SHAPES = [(1000, 1000), (3, 100_003), (1, 1 << 20)]
SPECIAL_VALUES = np.array(
    [np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1.0, -1.0,
     np.finfo(np.float32).max, np.finfo(np.float32).min],
    dtype=np.float32,
)


def reference_pack_signs(x: np.ndarray) -> np.ndarray:
    """Bit by bit, written from the specification alone (no packbits, no views).

    Element 32*w + j goes to bit j of word w: pad each row to whole words with
    a negative number (bit 0), then OR in one bit position at a time.
    """
    n = x.shape[-1]
    words = (n + 31) // 32
    padded = np.full(x.shape[:-1] + (words * 32,), -1.0, dtype=np.float32)
    padded[..., :n] = x
    blocks = padded.reshape(x.shape[:-1] + (words, 32))
    out = np.zeros(x.shape[:-1] + (words,), dtype=np.uint64)
    for bit in range(32):
        # NumPy's >= is False for NaN and True for -0.0, as the spec asks.
        out |= (blocks[..., bit] >= 0).astype(np.uint64) << np.uint64(bit)
    return out.astype(np.uint32)


def scalar_pack_signs(values: list[float]) -> list[int]:
    """The same for one row, in plain Python integers."""
    words = [0] * ((len(values) + 31) // 32)
    for index, value in enumerate(values):
        if value >= 0.0:  # Python floats: NaN >= 0 is False, -0.0 >= 0 is True
            words[index // 32] |= 1 << (index % 32)
    return words


def make_input(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if x.size:
        # Scatter the special values over about a quarter of the positions.
        flat = x.reshape(-1)
        positions = rng.choice(flat.size, size=max(1, flat.size // 4), replace=False)
        flat[positions] = rng.choice(SPECIAL_VALUES, size=positions.size)
    return x


def require_native():
    if native.HAVE_NATIVE:
        return native._native
    message = f"gpumat._native is not built: {native.native_import_error}"
    if os.environ.get("GPUMAT_REQUIRE_NATIVE") == "1":
        pytest.fail(message)
    pytest.skip(message)


def assert_packed_equal(actual: np.ndarray, expected: np.ndarray, x: np.ndarray, context=""):
    where = f"input shape {x.shape}{' (' + context + ')' if context else ''}"
    assert isinstance(actual, np.ndarray), f"{type(actual)} for {where}"
    assert actual.dtype == np.uint32, f"dtype {actual.dtype} for {where}"
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} for {where}"
    mismatch = np.argwhere(actual != expected)
    assert mismatch.size == 0, (
        f"{len(mismatch)} words differ for {where}; first at "
        f"{tuple(mismatch[0])}: {actual[tuple(mismatch[0])]:#010x} != "
        f"{expected[tuple(mismatch[0])]:#010x}"
    )


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_numpy_twin_matches_reference(shape):
    x = make_input(shape, seed=len(shape) * 1000 + sum(shape))
    assert_packed_equal(native.pack_signs_numpy(x), reference_pack_signs(x), x)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_native_matches_reference(shape):
    module = require_native()
    x = make_input(shape, seed=7 + sum(shape))
    expected = reference_pack_signs(x)
    assert_packed_equal(module.pack_signs(x), expected, x)
    assert_packed_equal(native.pack_signs(x), expected, x)


@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
def test_large_native_and_twin_match_reference(shape):
    # Large enough to take the OpenMP-parallel path of the native kernel.
    x = make_input(shape, seed=sum(shape))
    expected = reference_pack_signs(x)
    assert_packed_equal(native.pack_signs_numpy(x), expected, x)
    if native.HAVE_NATIVE:
        assert_packed_equal(native._native.pack_signs(x), expected, x)


def test_output_shape_and_padding_bits_are_zero():
    # All non-negative: every real bit is 1, so any set padding bit shows up.
    for n in range(0, 100):
        x = np.ones((2, n), dtype=np.float32)
        packed = native.pack_signs(x)
        assert packed.shape == (2, (n + 31) // 32)
        total_set_bits = sum(bin(int(word)).count("1") for word in packed.reshape(-1))
        assert total_set_bits == 2 * n, f"n={n}: {total_set_bits} bits set, want {2 * n}"


def test_special_values_match_scalar_reference():
    rng = np.random.default_rng(1)
    for n in (1, 7, 31, 32, 33, 64, 100):
        x = rng.choice(SPECIAL_VALUES, size=n).astype(np.float32)
        expected = scalar_pack_signs(x.tolist())
        assert native.pack_signs(x).tolist() == expected, x
        assert native.pack_signs_numpy(x).tolist() == expected, x


def test_non_contiguous_and_readonly_inputs():
    base = make_input((6, 130), seed=3)
    views = {
        "transposed": base.T,
        "strided columns": base[:, ::3],
        "reversed rows": base[::-1],
        "fortran": np.asfortranarray(base),
    }
    readonly = base.copy()
    readonly.flags.writeable = False
    views["read-only"] = readonly
    for name, view in views.items():
        expected = reference_pack_signs(np.ascontiguousarray(view))
        assert_packed_equal(native.pack_signs(view), expected, view, name)
        assert_packed_equal(native.pack_signs_numpy(view), expected, view, name)


def test_result_is_independent_of_input():
    x = make_input((4, 70), seed=11)
    packed = native.pack_signs(x)
    expected = reference_pack_signs(x)
    assert packed.flags.c_contiguous
    assert not np.shares_memory(packed, x)
    x[...] = -x
    assert_packed_equal(packed, expected, x)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=np.float32,
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=70),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_property_pack_signs_matches_reference(x):
    expected = reference_pack_signs(x)
    assert_packed_equal(native.pack_signs(x), expected, x)
    assert_packed_equal(native.pack_signs_numpy(x), expected, x)


# --------------------------------------------------------------------------- errors


BAD_DTYPES = [np.float64, np.float16, np.int32, np.uint32, np.bool_, np.complex64]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("function", ["pack_signs", "pack_signs_numpy"])
def test_wrong_dtype_raises_type_error_naming_it(function, dtype):
    x = np.zeros((2, 40), dtype=dtype)
    with pytest.raises(TypeError, match=np.dtype(dtype).name):
        getattr(native, function)(x)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_native_module_rejects_wrong_dtype_itself(dtype):
    module = require_native()
    with pytest.raises(TypeError):
        module.pack_signs(np.zeros((2, 40), dtype=dtype))


@pytest.mark.parametrize("function", ["pack_signs", "pack_signs_numpy"])
def test_zero_dimensional_raises_value_error(function):
    with pytest.raises(ValueError, match="dimension"):
        getattr(native, function)(np.array(1.5, dtype=np.float32))


def test_native_module_rejects_bad_arrays_itself():
    module = require_native()
    with pytest.raises(ValueError):
        module.pack_signs(np.array(1.5, dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        module.pack_signs(np.zeros((4, 64), dtype=np.float32)[:, ::2])
    with pytest.raises(TypeError):
        module.pack_signs([1.0, -1.0])


def test_not_an_array_raises_type_error():
    with pytest.raises(TypeError):
        native.pack_signs([1.0, -1.0])


# --------------------------------------------------------------------------- fallback


def test_fallback_warns_exactly_once(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_fallback_warned", False)
    monkeypatch.setattr(native, "native_import_error", "ImportError: simulated for the test")
    x = make_input((3, 45), seed=5)
    expected = reference_pack_signs(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert_packed_equal(native.pack_signs(x), expected, x)
    fallback = [w for w in caught if issubclass(w.category, native.NativeFallbackWarning)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    message = str(fallback[0].message)
    assert "gpumat._native" in message and "simulated for the test" in message
    assert issubclass(native.NativeFallbackWarning, RuntimeWarning)


def test_module_imports_without_compiled_extension(tmp_path):
    # A fresh interpreter in which importing gpumat._native fails, as in a
    # checkout that was never built.
    script = textwrap.dedent(
        """
        import importlib.abc, sys, warnings
        import numpy as np

        class BlockNative(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "gpumat._native":
                    raise ImportError("blocked by the test")
                return None

        sys.meta_path.insert(0, BlockNative())
        import gpumat.native as native
        assert native.HAVE_NATIVE is False, native.HAVE_NATIVE
        assert "blocked by the test" in native.native_import_error, native.native_import_error
        assert native.openmp_threads() == 1
        x = np.array([[1.0, -2.0, float("nan"), -0.0]], dtype=np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = native.pack_signs(x)
            second = native.pack_signs(x)
        kinds = [w.category.__name__ for w in caught]
        assert kinds == ["NativeFallbackWarning"], kinds
        assert first.tolist() == second.tolist() == [[0b1001]], first
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def test_openmp_reporting():
    module = require_native()
    assert isinstance(module.has_openmp(), bool)
    threads = module.openmp_threads()
    assert isinstance(threads, int) and threads >= 1
    if not module.has_openmp():
        assert threads == 1
    assert native.openmp_threads() == threads
