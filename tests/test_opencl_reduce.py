"""opencl reductions, cumsum, sort, flatnonzero and matmul against NumPy, at the backend level.

Every expectation is computed by NumPy (float64 where precision matters); inputs are uploaded
with backend.from_numpy and results fetched with backend.to_numpy.  Module tunables of
opencl_reduce are shrunk in some tests so the multi-stage paths run on small inputs too.
"""
import numpy as np
import pytest

pytest.importorskip("pyopencl")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from gpumat.errors import BackendUnavailableError  # noqa: E402

DTYPES = [np.dtype(t) for t in (np.bool_, np.uint8, np.int32, np.uint32, np.int64, np.uint64,
                                np.float32, np.float64)]
OPS = ["sum", "prod", "max", "min", "any", "all", "argmax", "argmin"]
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def backend():
    from gpumat.backends import opencl
    import gpumat.backends.opencl_reduce  # noqa: F401  (adds the methods)
    try:
        device = opencl._choose_device()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    return opencl.OpenCLBackend(device)


@pytest.fixture
def module():
    import gpumat.backends.opencl_reduce as module
    return module


def _skip_f64(backend, *dtypes):
    if not backend.supports_float64 and any(np.dtype(d) == np.float64 for d in dtypes):
        pytest.skip("device has no float64")


def make(rng, shape, dtype, nan=0.0, ties=False):
    """Random data of ``dtype``: few distinct values with ``ties``, NaNs at rate ``nan``."""
    return np.array(_make(rng, shape, np.dtype(dtype), nan, ties), order="C")


def _make(rng, shape, dtype, nan, ties):
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if ties:
            lo, hi = max(info.min, -3), 4
        else:
            lo, hi = info.min, info.max
        return rng.integers(lo, hi, size=shape, dtype=dtype, endpoint=False)
    x = np.asarray(rng.integers(-3, 4, size=shape) if ties else rng.standard_normal(shape),
                   dtype=dtype)
    if nan:
        x[rng.random(shape) < nan] = np.nan
    return x


def upload(backend, x):
    return backend.from_numpy(np.array(x, order="C"))


def run(backend, method, x, *args):
    return getattr(backend, method)(upload(backend, x), *args)


# ---- reductions -----------------------------------------------------------------------------

def expected_reduce(op, x, axis, keepdims):
    with np.errstate(all="ignore"):
        if op in ("argmax", "argmin"):
            return np.asarray(getattr(np, op)(x, axis=axis, keepdims=keepdims)).astype(np.int64)
        return np.asarray(getattr(np, op)(x, axis=axis, keepdims=keepdims))


def check_reduce(backend, op, x, axis, keepdims=False):
    got = backend.to_numpy(backend.reduce(op, upload(backend, x), axis, keepdims))
    want = expected_reduce(op, x, axis, keepdims)
    assert got.shape == want.shape, (op, x.shape, axis)
    assert got.dtype == want.dtype, (op, x.dtype, got.dtype, want.dtype)
    if x.dtype.kind == "f" and op in ("sum", "prod"):
        wide = x.astype(np.float64)
        with np.errstate(all="ignore"):
            ref = np.asarray(getattr(np, op)(wide, axis=axis, keepdims=keepdims))
            if op == "sum":
                scale = np.sum(np.abs(wide), axis=axis, keepdims=keepdims)
                count = x.size if axis is None else x.shape[axis]
                eps = np.finfo(x.dtype).eps
                tol = scale * eps * (8 + 4 * np.log2(count + 2)) + 1e-300
            else:
                tol = np.abs(ref) * np.finfo(x.dtype).eps * 4 * (x.size + 4)
        same = (got == ref) | (np.isnan(got) & np.isnan(ref))
        close = np.abs(got.astype(np.float64) - ref) <= tol
        assert np.all(same | close), (op, x.shape, axis, got, ref)
    elif x.dtype.kind == "f":
        np.testing.assert_array_equal(got, want)       # NaNs compare equal here
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_reduce_every_op_dtype_axis(backend, op, dtype):
    _skip_f64(backend, dtype)
    rng = np.random.default_rng(1)
    for ties in (False, True):
        x = make(rng, (5, 7, 3), dtype, nan=0.05 if ties else 0.0, ties=ties)
        if op == "prod" and dtype.kind == "f":
            x = (rng.random((5, 7, 3)) + 0.5).astype(dtype)
        for axis in (None, 0, 1, 2):
            for keepdims in (False, True):
                check_reduce(backend, op, x, axis, keepdims)


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
       dtype=st.sampled_from(DTYPES), op=st.sampled_from(OPS), keepdims=st.booleans(),
       ties=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_reduce_property(backend, shape, dtype, op, keepdims, ties, seed, data):
    _skip_f64(backend, dtype)
    axis = data.draw(st.sampled_from([None] + list(range(len(shape)))))
    rng = np.random.default_rng(seed)
    x = make(rng, shape, dtype, nan=0.1 if ties else 0.0, ties=ties)
    if op == "prod" and dtype.kind == "f":
        x = (rng.random(shape) + 0.5).astype(dtype)
    empty = x.size == 0 if axis is None else shape[axis] == 0
    if empty and op in ("max", "min", "argmax", "argmin"):
        return   # the Array layer rejects these before the backend sees them
    check_reduce(backend, op, x, axis, keepdims)


def test_reduce_empty_axis_identity(backend):
    for op in ("sum", "prod", "any", "all"):
        for dtype in (np.float32, np.int32, np.bool_, np.uint8):
            x = np.zeros((3, 0, 4), dtype)
            for axis in (None, 0, 1, 2):
                for keepdims in (False, True):
                    check_reduce(backend, op, x, axis, keepdims)


def test_reduce_multistage_forced(backend, module, monkeypatch):
    """One element per work-item per stage: many chunks and several stages even here."""
    monkeypatch.setattr(module, "FLOAT_SERIAL_MAX", 1)
    monkeypatch.setattr(module, "EXACT_SERIAL_MAX", 1)
    rng = np.random.default_rng(2)
    for dtype in DTYPES:
        if dtype == np.float64 and not backend.supports_float64:
            continue
        for shape in [(70001,), (3, 2039, 5), (1100, 3)]:
            x = make(rng, shape, dtype, nan=0.001, ties=True)
            for op in OPS:
                if op == "prod" and dtype.kind == "f":
                    continue
                for axis in [None] + list(range(len(shape))):
                    check_reduce(backend, op, x, axis)


def test_reduce_arg_nan_and_ties_large(backend):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 50, 1_000_003).astype(np.float32)
    for op in ("argmax", "argmin", "max", "min"):
        check_reduce(backend, op, x, None)               # ties: first index
    x[[777_777, 12_345, 999_999]] = np.nan
    for op in ("argmax", "argmin", "max", "min", "sum", "any", "all"):
        check_reduce(backend, op, x, None)               # first NaN
    y = x[:1009 * 991].reshape(1009, 991)
    for op in ("argmax", "argmin", "max", "min"):
        for axis in (0, 1):
            check_reduce(backend, op, y, axis)


def test_sum_large_float_accuracy(backend):
    ones = np.ones(10**7, np.float32)
    got = backend.to_numpy(backend.reduce("sum", upload(backend, ones), None, False))
    assert got.dtype == np.float32 and float(got) == 1e7
    rng = np.random.default_rng(4)
    x = rng.random(10**7).astype(np.float32)
    got = float(backend.to_numpy(backend.reduce("sum", upload(backend, x), None, False)))
    ref = float(np.sum(x, dtype=np.float64))
    assert abs(got - ref) <= 1e-5 * ref
    y = rng.standard_normal((2003, 1009)).astype(np.float32)
    for axis in (None, 0, 1):
        check_reduce(backend, "sum", y, axis)


def test_reduce_large_integers(backend):
    rng = np.random.default_rng(5)
    for dtype in (np.int32, np.uint8, np.uint64, np.int64, np.bool_):
        x = make(rng, (1_000_003,), dtype)
        for op in ("sum", "max", "min", "argmax", "argmin", "any", "all"):
            check_reduce(backend, op, x, None)


# ---- cumsum ---------------------------------------------------------------------------------

def check_cumsum(backend, x, axis):
    got = backend.to_numpy(run(backend, "cumsum", x, axis))
    want = np.cumsum(x, axis=axis)
    assert got.shape == want.shape and got.dtype == want.dtype, (x.shape, axis, got.dtype)
    if x.dtype.kind == "f":
        wide = x.astype(np.float64)
        ref = np.cumsum(wide, axis=axis)
        scale = np.cumsum(np.abs(wide), axis=axis)
        count = x.size if axis is None else max(x.shape[axis], 1)
        tol = scale * np.finfo(x.dtype).eps * (8 + 2 * np.sqrt(count)) + 1e-300
        same = (got == ref) | (np.isnan(got) & np.isnan(ref))
        assert np.all(same | (np.abs(got - ref) <= tol)), (x.shape, axis)
    else:
        np.testing.assert_array_equal(got, want)


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_cumsum_property(backend, shape, dtype, seed, data):
    _skip_f64(backend, dtype)
    axis = data.draw(st.sampled_from([None] + list(range(len(shape)))))
    x = make(np.random.default_rng(seed), shape, dtype, nan=0.05)
    check_cumsum(backend, x, axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cumsum_every_dtype_and_axis(backend, dtype):
    _skip_f64(backend, dtype)
    x = make(np.random.default_rng(6), (4, 13, 3), dtype)
    for axis in (None, 0, 1, 2):
        check_cumsum(backend, x, axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cumsum_blocked_forced(backend, module, monkeypatch, dtype):
    """The blocked scan, with several levels of block sums, on small inputs."""
    _skip_f64(backend, dtype)
    monkeypatch.setattr(module, "SCAN_SERIAL_MAX_LENGTH", 0)
    monkeypatch.setattr(module, "SCAN_LINES_PER_COMPUTE_UNIT", 10**9)
    monkeypatch.setattr(module, "SCAN_TILES_PER_BLOCK", 1)
    monkeypatch.setattr(module, "SCAN_VALUES_PER_ITEM", 1)
    rng = np.random.default_rng(7)
    for shape, axis in [((70_001,), 0), ((3, 1031, 2), 1), ((1, 5), 1), ((2, 300_007), 1)]:
        check_cumsum(backend, make(rng, shape, dtype, nan=1e-5), axis)


def test_cumsum_long_lines(backend):
    rng = np.random.default_rng(8)
    check_cumsum(backend, rng.integers(-9, 10, 1_000_003).astype(np.int32), 0)
    check_cumsum(backend, np.ones(1_000_003, np.float32), 0)
    check_cumsum(backend, rng.random(1_000_003).astype(np.float32), 0)
    check_cumsum(backend, rng.random((2, 600_001)).astype(np.float32), 1)
    check_cumsum(backend, rng.integers(0, 255, (1001, 1003)).astype(np.uint8), 0)


# ---- sort -----------------------------------------------------------------------------------

def expected_sort(x, axis, descending):
    """Stable order; NaN last ascending, NaN first descending (ties in original order)."""
    if not descending:
        idx = np.argsort(x, axis=axis, kind="stable")
    else:
        if x.dtype.kind == "f":
            nan = np.isnan(x)
            with np.errstate(invalid="ignore"):
                key = np.where(nan, 0, -x)
            idx = np.argsort(key, axis=axis, kind="stable")
            nan_sorted = np.take_along_axis(nan, idx, axis=axis)
            idx = np.take_along_axis(idx, np.argsort(~nan_sorted, axis=axis, kind="stable"),
                                     axis=axis)
        else:
            idx = np.argsort(~x, axis=axis, kind="stable")     # ~ reverses integer order
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def check_sort(backend, x, axis, descending):
    values, indices = run(backend, "sort", x, axis, descending)
    values, indices = backend.to_numpy(values), backend.to_numpy(indices)
    want_values, want_indices = expected_sort(x, axis, descending)
    assert values.dtype == x.dtype and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(values, want_values)
    if x.dtype.kind == "f":    # -0.0 and 0.0 keep their sign: the very elements moved
        np.testing.assert_array_equal(np.signbit(values), np.signbit(want_values))


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40),
       dtype=st.sampled_from(DTYPES), descending=st.booleans(), ties=st.booleans(),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_sort_property(backend, shape, dtype, descending, ties, seed, data):
    _skip_f64(backend, dtype)
    axis = data.draw(st.sampled_from(list(range(len(shape)))))
    x = make(np.random.default_rng(seed), shape, dtype, nan=0.1, ties=ties)
    check_sort(backend, x, axis, descending)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("descending", [False, True])
def test_sort_every_dtype(backend, dtype, descending):
    _skip_f64(backend, dtype)
    rng = np.random.default_rng(9)
    for shape in [(1,), (2,), (7, 5), (3, 600, 2), (1024,), (1025,), (3, 2, 700)]:
        for ties in (False, True):
            x = make(rng, shape, dtype, nan=0.1, ties=ties)
            if dtype.kind == "f":
                x.flat[:: 7] = -0.0
            for axis in range(len(shape)):
                check_sort(backend, x, axis, descending)


def test_sort_extremes(backend):
    x = np.array([0, 2**64 - 1, 2**63, 1, 2**63 - 1, 2**64 - 1], np.uint64)
    y = np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max, -1], np.int64)
    z = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, np.nan, -np.inf], np.float32)
    for a in (x, y, z):
        for descending in (False, True):
            check_sort(backend, a, 0, descending)


def test_sort_large(backend):
    rng = np.random.default_rng(10)
    x = rng.integers(0, 1000, 1_000_000).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = np.nan
    for descending in (False, True):
        check_sort(backend, x, 0, descending)
    check_sort(backend, rng.integers(0, 5, (100_000, 11)).astype(np.int32), 1, False)
    check_sort(backend, rng.integers(0, 5, (3000, 37)).astype(np.uint8), 0, True)


# ---- flatnonzero ----------------------------------------------------------------------------

def check_flatnonzero(backend, x):
    got = backend.to_numpy(run(backend, "flatnonzero", x))
    want = np.flatnonzero(x).astype(np.int64)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=30),
       dtype=st.sampled_from(DTYPES), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       seed=st.integers(0, 2**32 - 1))
def test_flatnonzero_property(backend, shape, dtype, density, seed):
    _skip_f64(backend, dtype)
    rng = np.random.default_rng(seed)
    x = make(rng, shape, dtype, nan=0.05)
    x[rng.random(shape) >= density] = 0
    check_flatnonzero(backend, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flatnonzero_large(backend, dtype):
    _skip_f64(backend, dtype)
    rng = np.random.default_rng(11)
    x = make(rng, (1_000_003,), dtype, nan=0.01)
    x[rng.random(x.shape) < 0.7] = 0
    if dtype.kind == "f":
        x[::1000] = -0.0
    check_flatnonzero(backend, x)
    check_flatnonzero(backend, np.zeros(100_000, dtype))
    check_flatnonzero(backend, np.ones(100_001, dtype))


# ---- matmul ---------------------------------------------------------------------------------

def check_matmul(backend, a, b, out_dtype):
    got = backend.to_numpy(backend.matmul(backend.from_numpy(a), backend.from_numpy(b),
                                          np.dtype(out_dtype)))
    with np.errstate(all="ignore"):
        want = np.matmul(a.astype(out_dtype), b.astype(out_dtype))
    assert got.shape == want.shape and got.dtype == want.dtype, (a.shape, b.shape, got.shape)
    if np.dtype(out_dtype).kind == "f":
        K = a.shape[-1]
        wide = np.matmul(np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64)))
        rtol = 1e-6 if np.dtype(out_dtype) == np.float32 else 1e-14
        tol = wide * rtol * (4 + np.sqrt(K)) + 1e-30
        exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
        assert np.all(np.abs(got - exact) <= tol), (a.shape, b.shape)
    else:
        np.testing.assert_array_equal(got, want)


MATMUL_SHAPES = [
    ((3, 4), (4, 5)), ((1, 1), (1, 1)), ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,)),
    ((0, 3), (3, 2)), ((3, 0), (0, 2)), ((2, 3), (3, 0)), ((0,), (0,)), ((5, 0), (0,)),
    ((2, 1, 3, 4), (5, 4, 6)), ((5, 4, 6), (6,)), ((6,), (2, 6, 3)), ((7, 1, 3), (1, 3, 2)),
    ((2, 3, 1, 2, 5), (3, 1, 5, 4)), ((2, 1, 3, 1, 4, 5), (1, 2, 1, 3, 5, 3)),
    ((13, 17), (17, 19)), ((31, 1), (1, 37)), ((1, 131), (131, 1)), ((129, 67), (67, 131)),
    ((257, 129), (129, 300)), ((3, 0, 4), (3, 4, 5)), ((1, 2000), (2000, 3)),
]


@pytest.mark.parametrize("a_shape,b_shape", MATMUL_SHAPES, ids=str)
def test_matmul_shapes(backend, a_shape, b_shape):
    rng = np.random.default_rng(12)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    check_matmul(backend, a, b, np.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matmul_dtypes(backend, dtype):
    _skip_f64(backend, dtype)
    rng = np.random.default_rng(13)
    for a_shape, b_shape in [((67, 45), (45, 71)), ((2, 1, 3, 4), (5, 4, 6)), ((9,), (9, 2)),
                             ((130, 3), (3, 129))]:
        a, b = make(rng, a_shape, dtype), make(rng, b_shape, dtype)
        check_matmul(backend, a, b, dtype)   # integers wrap as in NumPy


@pytest.mark.parametrize("a_dtype,b_dtype,out_dtype", [
    (np.int32, np.float32, np.float32), (np.uint8, np.int32, np.int32),
    (np.float32, np.float64, np.float64), (np.bool_, np.float32, np.float32),
    (np.int64, np.uint8, np.int64), (np.uint8, np.uint8, np.float64),
    (np.int32, np.int32, np.bool_)], ids=str)
def test_matmul_casts_inputs(backend, a_dtype, b_dtype, out_dtype):
    _skip_f64(backend, a_dtype, b_dtype, out_dtype)
    rng = np.random.default_rng(14)
    a = make(rng, (70, 33), a_dtype, ties=True)
    b = make(rng, (33, 65), b_dtype, ties=True)
    check_matmul(backend, a, b, out_dtype)


@SETTINGS
@given(m=st.integers(0, 70), k=st.integers(0, 40), n=st.integers(0, 70),
       a_batch=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3),
       b_batch=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3),
       a_vector=st.booleans(), b_vector=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matmul_property(backend, m, k, n, a_batch, b_batch, a_vector, b_vector, seed):
    # make the batch shapes broadcastable: each dimension is equal or 1 in one of them
    length = min(len(a_batch), len(b_batch))
    b_batch = list(b_batch)
    for i in range(1, length + 1):
        if a_batch[-i] != b_batch[-i] and a_batch[-i] != 1:
            b_batch[-i] = 1
    a_shape = (k,) if a_vector else tuple(a_batch) + (m, k)
    b_shape = (k,) if b_vector else tuple(b_batch) + (k, n)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    check_matmul(backend, a, b, np.float32)


def test_matmul_large(backend):
    rng = np.random.default_rng(15)
    a = rng.standard_normal((300, 517)).astype(np.float32)
    b = rng.standard_normal((517, 389)).astype(np.float32)
    check_matmul(backend, a, b, np.float32)
    check_matmul(backend, rng.integers(-100, 100, (3, 129, 65)).astype(np.int32),
                 rng.integers(-100, 100, (65, 70)).astype(np.int32), np.int32)
