"""The Array type: construction, properties, dtypes, conversions, save/load."""
import numpy as np
import pytest

import gpumat as gm
from conftest import assert_same

DTYPES = ["bool", "uint8", "int32", "uint32", "int64", "uint64", "float32", "float64"]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 3), (1, 1, 1), (4, 3, 2, 5), (1009,)]


def host_data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_bit_exact(backend, shape, dtype):
    x = host_data(shape, dtype)
    a = gm.array(x, backend=backend)
    assert a.shape == shape and a.dtype == np.dtype(dtype) and a.ndim == len(shape)
    assert a.size == x.size and a.backend == backend and isinstance(a.device, str)
    got = a.gather()
    assert got.dtype == x.dtype and got.tobytes() == x.tobytes()


def test_non_contiguous_numpy_input(backend):
    x = np.arange(60, dtype=np.float32).reshape(6, 10)[::2, 7:1:-3]
    assert_same(gm.array(x, backend=backend), x)
    assert_same(gm.array(x.T, backend=backend), x.T)


def test_python_data_defaults(backend):
    assert gm.array([1.5, 2], backend=backend).dtype == np.float32
    assert gm.array([1, 2], backend=backend).dtype == np.int64
    assert gm.array([True, False], backend=backend).dtype == np.bool_
    assert gm.array(np.float64(2.5), backend=backend).dtype == np.float64
    assert gm.array([1, 2], dtype="double", backend=backend).dtype == np.float64


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_astype_matches_numpy(backend, src, dst):
    x = host_data((5, 7), src)
    if src.startswith("float"):
        x = (x * 40).astype(src)
        if dst in ("uint8", "uint32", "uint64", "int32"):
            x = np.abs(x)           # float -> unsigned of negatives is undefined in C and NumPy
    assert_same(gm.array(x, backend=backend).astype(dst), x.astype(dst))


def test_matlab_dtype_names(backend):
    assert gm.zeros(2, dtype="single", backend=backend).dtype == np.float32
    assert gm.zeros(2, dtype="double", backend=backend).dtype == np.float64
    assert gm.zeros(2, dtype="logical", backend=backend).dtype == np.bool_


@pytest.mark.parametrize("bad", ["int16", "float16", "complex64", "int8"])
def test_unsupported_dtype_is_a_type_error_naming_it(backend, bad):
    with pytest.raises(TypeError, match=np.dtype(bad).name):
        gm.zeros(3, dtype=bad, backend=backend)
    with pytest.raises(TypeError, match=np.dtype(bad).name):
        gm.array(np.zeros(3, bad), backend=backend)


def test_creation_functions(backend):
    assert_same(gm.zeros(3, 4, backend=backend), np.zeros((3, 4), np.float32))
    assert_same(gm.zeros((3, 4), backend=backend), np.zeros((3, 4), np.float32))
    assert_same(gm.ones(2, 3, dtype="int32", backend=backend), np.ones((2, 3), np.int32))
    assert_same(gm.full((2, 2), 7.5, backend=backend), np.full((2, 2), 7.5, np.float32))
    assert_same(gm.full(2, 3, value=-1, dtype="int64", backend=backend), np.full((2, 3), -1))
    assert gm.empty(4, 0, backend=backend).shape == (4, 0)
    for n, m, k in [(3, None, 0), (4, 6, 1), (5, 2, -2), (1, 1, 0), (0, 3, 0)]:
        assert_same(gm.eye(n, m, k, backend=backend), np.eye(n, m, k, dtype=np.float32))


@pytest.mark.parametrize("args", [(5,), (2, 11), (1, 2, 0.25), (10, 0, -3), (0,), (3, 3)])
def test_arange(backend, args):
    expected = np.arange(*args)
    if expected.dtype.kind == "f":
        expected = expected.astype(np.float32)
    assert_same(gm.arange(*args, backend=backend), expected)


@pytest.mark.parametrize("args", [(2**63, 2**63 + 3), (2**64 - 1, 2**64 - 8, -3), (0, 4),
                                  (2**63 - 2, 2**63 + 2)])
def test_arange_uint64_beyond_int64(backend, args):
    assert_same(gm.arange(*args, dtype="uint64", backend=backend),
                np.arange(*args, dtype=np.uint64))


@pytest.mark.parametrize("a,b,step", [(1, 5, 1), (0, 1, 0.25), (5, 1, -2), (3, 2, 1), (0, 0.3, 0.1)])
def test_colon_is_inclusive(backend, a, b, step):
    n = int(np.floor((b - a) / step + 1e-10)) + 1
    expected = a + step * np.arange(max(n, 0))
    got = gm.colon(a, b, step, backend=backend)
    assert_same(got, expected.astype(got.dtype), rtol=1e-6)
    if n > 0 and abs(expected[-1] - b) < 1e-9:
        assert abs(got.gather()[-1] - b) < 1e-6


@pytest.mark.parametrize("num", [0, 1, 2, 7, 100])
def test_linspace(backend, num):
    assert_same(gm.linspace(-1, 3, num, backend=backend), np.linspace(-1, 3, num, dtype=np.float32))
    assert_same(gm.linspace(0, 1, num, dtype="double", backend=backend), np.linspace(0, 1, num))


def test_to_and_gather(backend):
    x = host_data((3, 4), "float32")
    a = gm.array(x, backend=backend)
    b = a.to("cpu")
    assert b.backend == "cpu"
    assert_same(b, x)
    assert_same(b.to(backend), x)
    assert gm.gather(a).tobytes() == x.tobytes()
    assert np.asarray(a).tobytes() == x.tobytes()


def test_item_bool_len_iter(backend):
    a = gm.array([[1.0, 2.0], [3.0, 4.0]], backend=backend)
    assert a[1, 0].item() == 3.0 and float(a[0, 1]) == 2.0 and len(a) == 2
    assert [row.gather().tolist() for row in a] == [[1.0, 2.0], [3.0, 4.0]]
    assert bool(gm.array([1], backend=backend)) is True
    with pytest.raises(ValueError, match="ambiguous"):
        bool(a)
    with pytest.raises(ValueError, match="size 1"):
        a.item()


def test_repr_shows_values_dtype_and_backend(backend):
    text = repr(gm.array([1.5, 2.5], backend=backend))
    assert "1.5" in text and "float32" in text and backend in text


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_bit_exact(backend, tmp_path, dtype):
    x = host_data((3, 5, 2), dtype)
    if dtype.startswith("float"):
        x.flat[0] = np.nan
        x.flat[1] = -0.0
    path = tmp_path / "a.npy"
    gm.save(path, gm.array(x, backend=backend))
    assert np.load(path).tobytes() == x.tobytes() and np.load(path).dtype == x.dtype
    b = gm.load(path, backend=backend)
    assert b.backend == backend and b.gather().tobytes() == x.tobytes()


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d not in ("bool", "uint8")])
def test_big_endian_data_keeps_its_values(backend, tmp_path, dtype):
    # files and buffers written big-endian (network order, FITS, .npy from other machines)
    # hold the same values: Arrays take them and keep them in native order
    x = host_data((3, 5), dtype)
    swapped = x.astype(x.dtype.newbyteorder(">" if np.little_endian else "<"))
    path = tmp_path / "swapped.npy"
    np.save(path, swapped)
    for a in (gm.array(swapped, backend=backend), gm.load(path, backend=backend)):
        assert a.dtype == x.dtype and a.gather().dtype.isnative
        assert a.gather().tobytes() == x.tobytes()
    b = gm.zeros(3, 5, dtype=swapped.dtype, backend=backend)
    assert b.dtype == x.dtype
    b[1:] = swapped[1:]
    assert b.gather()[1:].tobytes() == x[1:].tobytes()
    assert_same(gm.array(x, backend=backend) + swapped, x + swapped)


def _npy_header(tmp_path, name, shape, data=b""):
    import io
    from numpy.lib import format as npy_format
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    path = tmp_path / name
    path.write_bytes(buffer.getvalue() + data)
    return path


def test_load_checks_the_file_before_reading(backend, tmp_path):
    # each of these raised something that did not name the file or the problem: a pickle
    # complaint for text, a <U1 dtype for an .npz, a bare 4 TiB MemoryError for a header
    # declaring 2**40 elements in a 200-byte file
    np.savez(tmp_path / "archive.npz", a=np.ones(3))
    (tmp_path / "notes.txt").write_text("hello world")
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    np.save(tmp_path / "half.npy", np.ones(3, np.float16))
    whole = tmp_path / "whole.npy"
    np.save(whole, np.arange(6, dtype=np.float32))
    (tmp_path / "cut.npy").write_bytes(whole.read_bytes()[:-4])
    cases = [("archive.npz", ValueError, "is not a .npy file"),
             ("notes.txt", ValueError, "is not a .npy file"),
             ("text.npy", TypeError, "cannot hold: dtype <U1"),
             ("half.npy", TypeError, "cannot hold: dtype float16"),
             ("cut.npy", ValueError, r"truncated or corrupt.*\(6,\).*24 bytes.*20 bytes"),
             (_npy_header(tmp_path, "huge.npy", (2**40,), bytes(16)).name, ValueError,
              r"\(1099511627776,\) of float32 \(4,398,046,511,104 bytes\)"),
             (_npy_header(tmp_path, "square.npy", (2**32, 2**32)).name, ValueError,
              "truncated or corrupt")]
    for name, error, message in cases:
        with pytest.raises(error, match=f"load: .*{name}.*{message}"):
            gm.load(tmp_path / name, backend=backend)
    assert gm.load(whole, backend=backend).gather().tolist() == list(range(6))
    fortran = tmp_path / "fortran.npy"
    x = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    np.save(fortran, x)
    assert_same(gm.load(fortran, backend=backend), x)


def test_save_keeps_the_given_file_name(backend, tmp_path):
    path = tmp_path / "weights.bin"
    gm.save(path, gm.ones(2, backend=backend))
    assert path.exists() and np.load(path).tolist() == [1.0, 1.0]


def test_gpu_array_falls_back_to_cpu_with_one_warning(monkeypatch):
    from gpumat import backends as registry
    monkeypatch.setattr(registry, "default_gpu", lambda: None)
    registry._warned.discard("gpu_array-fallback")
    with pytest.warns(RuntimeWarning, match="no GPU backend"):
        a = gm.gpu_array([1.0, 2.0])
    assert a.backend == "cpu"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gm.gpu_array([3.0]).backend == "cpu"


def test_gpu_array_uses_a_gpu_backend_when_present(gpu_backend):
    a = gm.gpu_array(np.ones(3, np.float32))
    assert a.backend in ("cuda", "opencl")
