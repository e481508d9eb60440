"""The opencl backend's elementwise, layout, indexing, random and bit-packing methods
(gpumat/backends/opencl_elementwise.py) against NumPy, at the backend level.

Every expectation is computed by NumPy (or gpumat.random.reference) from the same inputs.
"""
import itertools
import warnings
import zlib

import numpy as np
import pytest

pytest.importorskip("pyopencl")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from gpumat import random as gm_random  # noqa: E402
from gpumat.backends import base  # noqa: E402
from gpumat.backends import opencl_elementwise  # noqa: E402
from gpumat.backends.opencl import CLBuffer  # noqa: E402
from gpumat.errors import BackendUnavailableError  # noqa: E402

ALL_DTYPES = [np.dtype(t) for t in (np.bool_, np.uint8, np.int32, np.uint32, np.int64,
                                    np.uint64, np.float32, np.float64)]
SUPPORTED = {np.dtype(t) for t in ALL_DTYPES}
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
#: ops whose float results come from libm-like functions: compared to rounding, not bits
TRANSCENDENTAL = {"exp", "log", "sqrt", "tanh", "sin", "cos", "log1p", "expm1", "sigmoid",
                  "power", "divide", "reciprocal"}


@pytest.fixture(scope="module")
def backend():
    from gpumat.backends import opencl
    try:
        return opencl.create()
    except BackendUnavailableError as exc:
        pytest.skip(f"opencl unavailable: {exc}")


@pytest.fixture(scope="module")
def dtypes(backend):
    return [d for d in ALL_DTYPES if d != np.float64 or backend.supports_float64]


def up(backend, x):
    return backend.from_numpy(np.array(x, order="C", copy=True))


def down(backend, a):
    out = backend.to_numpy(a)
    backend.free(a)
    return out


def sample(dtype, n, rng, special=True):
    """n values of ``dtype`` including the edge values of its kind."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = max(info.min, -1000), min(info.max, 1000)
        x = rng.integers(low, high, n, dtype=np.int64, endpoint=True).astype(dtype)
        if special:
            edges = np.array([0, 1, info.max, info.min, info.max - 1, 2, 7], dtype=dtype)
            if dtype.kind == "i":
                edges = np.concatenate([edges, np.array([-1, -2, -7], dtype)])
            k = min(n, edges.size)
            x[:k] = edges[:k]
        return x
    x = (rng.standard_normal(n) * 10).astype(dtype)
    if special:
        edges = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, -2.5, 2.5, np.nan, np.inf,
                          -np.inf, 1e30, -1e-30, 3.0], dtype=dtype)
        k = min(n, edges.size)
        x[:k] = edges[:k]
    return x


def assert_same(actual, expected, approx=False):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    if approx and expected.dtype.kind == "f":
        tol = 2e-6 if expected.dtype == np.float32 else 1e-13
        np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, equal_nan=True)
    else:
        np.testing.assert_array_equal(actual, expected)


# ---- NumPy reference of Backend.map (the semantics of base.py / array_module.py) ----------

def _dummy(kind):
    return np.empty(0, kind) if isinstance(kind, np.dtype) else kind(0)


def map_dtypes(op, kinds):
    """(out_dtype, compute_dtype) the Array layer passes for operands of ``kinds`` (np.dtype
    for arrays, bool/int/float for Python scalars); None where NumPy has no such loop or
    gpumat no such dtype."""
    dummies = [_dummy(k) for k in kinds]
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if op == "where":
                out = np.result_type(*dummies[1:])
                compute = out
            elif op == "clip":
                out = compute = np.result_type(*dummies)
            elif op == "sigmoid":
                out = compute = np.exp(dummies[0]).dtype
            else:
                out = np.dtype(getattr(np, base.MAP_OPS[op][1])(*dummies).dtype)
                compute = np.result_type(*dummies) if out == np.bool_ else out
    except (TypeError, np.exceptions.DTypePromotionError):
        return None
    if out not in SUPPORTED or compute not in SUPPORTED:
        return None
    return np.dtype(out), np.dtype(compute)


def np_map(op, args, out_dtype, compute):
    def cast(x, dtype):
        return np.asarray(x, dtype=dtype) if not isinstance(x, np.ndarray) else x.astype(dtype)

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if op == "where":
            cond, a, b = args
            return np.where(cast(cond, np.bool_), cast(a, out_dtype),
                            cast(b, out_dtype)).astype(out_dtype)
        args = [cast(x, compute) for x in args]
        if op == "sigmoid":
            x = args[0]
            e = np.exp(-np.abs(x))
            out = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        elif op == "clip":
            out = np.minimum(np.maximum(args[0], args[1]), args[2])
        else:
            out = getattr(np, base.MAP_OPS[op][1])(*args)
        return np.asarray(out).astype(out_dtype)


def run_map(backend, op, args, kinds=None):
    """Run op through the backend and NumPy; None when the dtype combination has no loop."""
    if kinds is None:
        kinds = [a.dtype if isinstance(a, np.ndarray) else type(a) for a in args]
    dts = map_dtypes(op, kinds)
    if dts is None:
        return None
    out_dtype, compute = dts
    if compute == np.float64 and not backend.supports_float64:
        return None
    expected = np_map(op, args, out_dtype, compute)
    natives = [up(backend, a) if isinstance(a, np.ndarray) else a for a in args]
    actual = down(backend, backend.map(op, natives, out_dtype, compute))
    for a in natives:
        if isinstance(a, CLBuffer):
            backend.free(a)
    return actual, expected


def operands_for(op, dtype, n, rng):
    arity = base.MAP_OPS[op][0]
    if op == "power" and dtype.kind in "iu":
        return [sample(dtype, n, rng), rng.integers(0, 7, n).astype(dtype)]
    if op == "where":
        return [sample(np.bool_, n, rng), sample(dtype, n, rng), sample(dtype, n, rng)]
    if op == "clip":
        x = sample(dtype, n, rng)
        lo = sample(dtype, n, rng, special=False)
        return [x, lo, np.maximum(lo, sample(dtype, n, rng, special=False))]
    if arity == 1:
        return [sample(dtype, n, rng)]
    a, b = sample(dtype, n, rng), sample(dtype, n, rng)
    return [a, b[::-1].copy()]


FLOAT_FUNCTIONS = {"exp", "log", "sqrt", "tanh", "sin", "cos", "log1p", "expm1", "sigmoid",
                   "divide", "reciprocal", "floor", "ceil", "round", "isnan", "isinf",
                   "isfinite"}


@pytest.mark.parametrize("op", sorted(base.MAP_OPS))
def test_map_every_op_every_dtype(backend, dtypes, op):
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    ran = 0
    if op in FLOAT_FUNCTIONS:
        # integer inputs only add a cast in front (covered by the astype tests)
        dtypes = [d for d in dtypes if d.kind == "f" or d.name in ("int32", "bool")]
    for dtype in dtypes:
        args = operands_for(op, dtype, 61, rng)
        result = run_map(backend, op, args)
        if result is None:
            continue
        ran += 1
        assert_same(*result, approx=op in TRANSCENDENTAL)
    assert ran or op in ("sigmoid",), f"{op} ran for no dtype"


@pytest.mark.parametrize("op", ["add", "subtract", "multiply", "floor_divide", "mod",
                                "maximum", "minimum", "power", "less", "equal",
                                "logical_and", "bitwise_and"])
def test_map_integer_edges(backend, op):
    """Division and remainder by zero, MIN // -1, wrapping overflow: NumPy's results."""
    for dtype in (np.int32, np.int64, np.uint8, np.uint32, np.uint64):
        dtype = np.dtype(dtype)
        info = np.iinfo(dtype)
        vals = np.array(sorted({0, 1, 2, 3, 7, info.max, info.min, info.max - 1}
                               | ({-1, -2, -7, info.min + 1} if dtype.kind == "i" else set())),
                        dtype=dtype)
        a, b = (x.ravel() for x in np.meshgrid(vals, vals))
        if op == "power":
            b = np.abs(b % 9).astype(dtype)
        result = run_map(backend, op, [a, b])
        if result is not None:
            assert_same(*result)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["floor_divide", "mod", "maximum", "minimum", "power"])
def test_map_float_edges(backend, op, dtype):
    """Signed zeros, infinities and NaN in NumPy's floor_divide / remainder / max / min."""
    dtype = np.dtype(dtype)
    if dtype == np.float64 and not backend.supports_float64:
        pytest.skip("no fp64")
    vals = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 7.0, -7.0, 0.3, np.inf, -np.inf,
                     np.nan, 1e-30, 3e30], dtype=dtype)
    a, b = (x.ravel() for x in np.meshgrid(vals, vals))
    actual, expected = run_map(backend, op, [a, b])
    assert_same(actual, expected, approx=op == "power")
    if op in ("floor_divide", "mod"):   # the sign of zero results matters here
        zero = expected == 0
        np.testing.assert_array_equal(np.signbit(actual[zero]), np.signbit(expected[zero]))


def test_map_round_half_even_sign_nan(backend, dtypes):
    for dtype in (d for d in dtypes if d.kind == "f"):
        x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 0.49999997, np.nan, -0.0, np.inf],
                     dtype=dtype)
        for op in ("round", "sign", "floor", "ceil", "abs", "negative", "isnan", "isinf",
                   "isfinite", "sigmoid"):
            actual, expected = run_map(backend, op, [x])
            assert_same(actual, expected, approx=op == "sigmoid")


def test_map_sigmoid_extremes(backend):
    x = np.array([-1e4, -100, -90, -20, 0, 20, 90, 100, 1e4, np.nan], np.float32)
    actual, expected = run_map(backend, "sigmoid", [x])
    assert np.all(np.isfinite(actual[:-1])) and np.isnan(actual[-1])
    assert_same(actual, expected, approx=True)


@pytest.mark.parametrize("op", ["add", "less", "where", "clip", "power", "floor_divide"])
def test_map_python_scalars(backend, dtypes, op):
    """NEP 50 weak scalars on either side (each dtype/kind/side is its own build, so a spread
    of dtypes)."""
    rng = np.random.default_rng(7)
    scalars = {"b": [True, False], "i": [3, 0, 1], "u": [3, 1], "f": [2.5, -0.5]}
    for dtype in [d for d in dtypes if d.name in ("bool", "uint8", "int64", "float32")]:
        x = sample(dtype, 37, rng)
        if op == "power" and dtype.kind in "iu":
            x = np.abs(x % 5).astype(dtype)
        for kind in "bif":
            for s in scalars[kind]:
                if op == "where":
                    cases = [[x.astype(bool), s, x], [s, x, x[::-1].copy()]]
                elif op == "clip":
                    cases = [[x, s, x.max().item()]]
                elif op == "power":
                    cases = [[x, s]] if not (isinstance(s, float) and dtype.kind == "b") else []
                else:
                    cases = [[x, s], [s, x]]
                for args in cases:
                    try:
                        result = run_map(backend, op, args)
                    except OverflowError:
                        continue
                    if result is not None:
                        assert_same(*result, approx=op in TRANSCENDENTAL)


def test_map_mixed_dtypes(backend, dtypes):
    rng = np.random.default_rng(3)
    pairs = list(itertools.product(dtypes, repeat=2))
    for da, db in pairs[::5]:   # a spread of the 64 pairs: each pair is its own build
        a, b = sample(da, 23, rng), sample(db, 23, rng)[::-1].copy()
        for op in ("add", "less"):
            result = run_map(backend, op, [a, b])
            if result is not None:
                assert_same(*result)


@SETTINGS
@given(data=st.data())
def test_map_broadcasting(backend, dtypes, data):
    op = data.draw(st.sampled_from(["add", "subtract", "multiply", "maximum", "greater",
                                    "where", "clip", "exp", "negative", "mod"]))
    arity = base.MAP_OPS[op][0]
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=arity, max_dims=5,
                                                         min_side=0, max_side=4))
    dtype = data.draw(st.sampled_from([d for d in dtypes if d.kind != "b"]))
    if op == "exp" and dtype.kind != "f":
        dtype = np.dtype(np.float32)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    args = []
    for k, shape in enumerate(shapes.input_shapes):
        size = int(np.prod(shape))
        kind = np.bool_ if op == "where" and k == 0 else dtype
        args.append(sample(kind, size, rng).reshape(shape))
    if op == "clip":
        args[2] = np.maximum(args[2], args[1].max(initial=0))
    result = run_map(backend, op, args)
    assert result is not None
    assert_same(*result, approx=op in TRANSCENDENTAL)


@pytest.mark.parametrize("n", [0, 1, 2, 31, 257, 1_000_003])
def test_map_sizes(backend, n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    assert_same(*run_map(backend, "add", [a, b]))
    assert_same(*run_map(backend, "multiply", [a, 3.0]))
    assert_same(*run_map(backend, "less", [a, b]))
    c = a.reshape(n, 1) if n < 3000 else a[:1000].reshape(1000, 1)
    assert_same(*run_map(backend, "subtract", [c, b[:7]]))


def test_map_zero_dim(backend):
    for op, args in [("add", [np.array(2.5, np.float32), np.array(1.0, np.float32)]),
                     ("negative", [np.array(3, np.int64)]),
                     ("add", [np.array(2, np.int32), np.arange(5, dtype=np.int32)])]:
        assert_same(*run_map(backend, op, args))


# ---- creation -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (3, 5), (2, 0, 3), (1_000_003,)])
def test_full(backend, dtypes, shape):
    for dtype in dtypes:
        for value in ([True, False] if dtype.kind == "b" else
                      [0, 1, 255, 7] if dtype.kind == "u" else
                      [0, -1, 123] if dtype.kind == "i" else [0.0, -2.5, np.inf, np.nan]):
            if shape == (1_000_003,) and value not in (1, -2.5, True):
                continue
            actual = down(backend, backend.full(shape, value, dtype))
            assert_same(actual, np.full(shape, value, dtype))


def np_arange(start, step, n, dtype):
    dtype = np.dtype(dtype)
    floating = dtype.kind in "fb" or isinstance(start, float) or isinstance(step, float)
    wide = np.float64 if floating else np.int64
    with np.errstate(all="ignore"):
        return (start + step * np.arange(n, dtype=wide)).astype(dtype)


@pytest.mark.parametrize("start,step,n", [(0, 1, 0), (0, 1, 1), (3, 2, 17), (-5, 3, 100),
                                          (0.1, 0.3, 1001), (1.5, -0.25, 33), (10, -1, 20),
                                          (0, 1, 1_000_003)])
def test_arange(backend, dtypes, start, step, n):
    for dtype in dtypes:
        if dtype.kind == "u" and (start < 0 or step < 0):
            continue
        if n > 10_000 and dtype.name not in ("float32", "int32", "float64"):
            continue
        actual = down(backend, backend.arange(start, step, n, dtype))
        assert_same(actual, np_arange(start, step, n, dtype))


# ---- layout ---------------------------------------------------------------------------------

def test_copy_and_astype_every_pair(backend, dtypes):
    rng = np.random.default_rng(11)
    for src, dst in itertools.product(dtypes, repeat=2):
        x = sample(src, 53, rng)
        if src.kind == "f" and dst.kind in "iub":
            # float -> integer is defined by NumPy only for in-range values
            x = np.where(np.isfinite(x), x, 3.0).astype(src)
            if dst.kind in "iu":
                info = np.iinfo(dst)
                lo = 0 if dst.kind == "u" else max(info.min, -1e6)
                x = np.clip(x, lo, min(info.max, 1e6)).astype(src)
        a = up(backend, x)
        with np.errstate(all="ignore"):
            expected = x.astype(dst)
        assert_same(down(backend, backend.astype(a, dst)), expected)
        if src == dst:
            assert_same(down(backend, backend.copy(a)), x)
        backend.free(a)


def test_astype_large(backend):
    x = np.random.default_rng(1).standard_normal(1_000_003).astype(np.float32) * 100
    a = up(backend, x)
    assert_same(down(backend, backend.astype(a, np.int32)), x.astype(np.int32))
    assert_same(down(backend, backend.copy(a)), x)
    assert_same(down(backend, backend.astype(up(backend, x[:0]), np.int64)), x[:0].astype(np.int64))


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=0, max_dims=6, min_side=0, max_side=5), data=st.data())
def test_permute(backend, shape, data):
    axes = data.draw(st.permutations(range(len(shape))))
    x = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    a = up(backend, x)
    assert_same(down(backend, backend.permute(a, axes)), np.transpose(x, axes).copy())
    backend.free(a)


def test_permute_many_dims(backend):
    """More than 8 non-collapsible dims after collapsing: split into several launches."""
    shape = (2, 3, 2, 2, 3, 2, 2, 2, 3, 2, 2)
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    axes = tuple(reversed(range(len(shape))))
    a = up(backend, x)
    assert_same(down(backend, backend.permute(a, axes)), np.transpose(x, axes).copy())
    axes = (0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9)
    assert_same(down(backend, backend.permute(a, axes)), np.transpose(x, axes).copy())


@pytest.mark.parametrize("tiled", [False, True])
def test_permute_large(backend, tiled, monkeypatch):
    """Both the strided copy and the tiled transpose kernel (used on GPUs), with ragged tiles
    and batch dims."""
    monkeypatch.setattr(opencl_elementwise, "TILED_TRANSPOSE", tiled)
    x = np.random.default_rng(2).standard_normal((1009, 991)).astype(np.float32)
    a = up(backend, x)
    assert_same(down(backend, backend.permute(a, (1, 0))), x.T.copy())
    y = x.reshape(1009, 991, 1)
    assert_same(down(backend, backend.permute(backend.reshape(a, y.shape), (2, 1, 0))),
                np.transpose(y, (2, 1, 0)).copy())
    assert_same(down(backend, backend.astype(backend.permute(a, (1, 0)), np.float64)),
                x.T.astype(np.float64))
    z = np.arange(3 * 40 * 2 * 50, dtype=np.int32).reshape(3, 40, 2, 50)
    c = up(backend, z)
    for axes in [(0, 3, 2, 1), (2, 3, 0, 1), (3, 1, 2, 0), (1, 0, 3, 2)]:
        assert_same(down(backend, backend.permute(c, axes)), np.transpose(z, axes).copy())


def test_grid_stride_loops(backend, monkeypatch):
    """Launches capped to a few work-groups along grid dims 1 and 2 still cover every row,
    tile and batch (devices limit those dims to 65535 groups)."""
    monkeypatch.setattr(opencl_elementwise, "_MAX_GROUPS", 2)
    monkeypatch.setattr(opencl_elementwise, "TILED_TRANSPOSE", True)
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((37, 5, 300)).astype(np.float32), rng.standard_normal((5, 1))
    assert_same(*run_map(backend, "add", [a, b.astype(np.float32)]))
    z = np.arange(5 * 70 * 3 * 90, dtype=np.float32).reshape(5, 70, 3, 90)
    c = up(backend, z)
    for axes in [(0, 3, 2, 1), (2, 3, 0, 1), (3, 0, 1, 2)]:
        assert_same(down(backend, backend.permute(c, axes)), np.transpose(z, axes).copy())


@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=1, max_dims=5, min_side=0,
                                                max_side=4))
def test_broadcast_to(backend, shapes):
    shape = shapes.input_shapes[0]
    target = shapes.result_shape
    x = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    a = up(backend, x)
    assert_same(down(backend, backend.broadcast_to(a, target)),
                np.broadcast_to(x, target).copy())
    backend.free(a)


@SETTINGS
@given(data=st.data())
def test_concatenate(backend, dtypes, data):
    ndim = data.draw(st.integers(1, 4))
    base_shape = data.draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=0,
                                            max_side=4))
    axis = data.draw(st.integers(0, ndim - 1))
    count = data.draw(st.integers(1, 4))
    out_dtype = data.draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    arrays = []
    for _ in range(count):
        shape = list(base_shape)
        shape[axis] = data.draw(st.integers(0, 4))
        in_dtype = data.draw(st.sampled_from(dtypes))
        x = sample(in_dtype, int(np.prod(shape)), rng, special=False).reshape(shape)
        if in_dtype.kind == "f" and out_dtype.kind == "u":
            x = np.abs(x)
        arrays.append(x)
    natives = [up(backend, x) for x in arrays]
    expected = np.concatenate([x.astype(out_dtype) for x in arrays], axis=axis)
    assert_same(down(backend, backend.concatenate(natives, axis, out_dtype)), expected)


# ---- indexing -------------------------------------------------------------------------------

def backend_key(backend, key, shape):
    """A NumPy key in the normalised form of Backend.getitem: slices from slice.indices,
    non-negative ints, index arrays as int64 natives."""
    if not isinstance(key, tuple):
        key = (key,)
    out, axis = [], 0
    for k in key:
        if k is None:
            out.append(None)
            continue
        dim = shape[axis]
        axis += 1
        if isinstance(k, slice):
            out.append(slice(*k.indices(dim)))
        elif isinstance(k, np.ndarray):
            out.append(up(backend, np.where(k < 0, k + dim, k).astype(np.int64)))
        else:
            out.append(k + dim if k < 0 else k)
    return tuple(out)


def I(*values):  # noqa: E743 - an index array
    return np.array(values, dtype=np.int64)


GETITEM_KEYS = [
    (2,), (slice(None),), (slice(None, None, -1),), (slice(4, 1, -2),), (slice(3, 3),),
    (slice(5, 1),), (None,), (1, None, slice(None, None, 2), -1), (None, 0),
    (slice(1, None), 2, slice(None, 2)), (-1, -2, -3), (slice(None, None, -3), None, None),
    # advanced: adjacent arrays (their dims replace them in place)
    (I(0, 2, 4),), (slice(None), I(5, 0, 1)), (slice(None), I(1, 2), I(3, 4)),
    (slice(None), I(0, 1).reshape(2, 1), I(1, 2, 3)), (1, I(0, 2)), (slice(1, 3), 2, I(3, 1)),
    # advanced: separated (their dims go first)
    (I(0, 1), slice(None), I(2, 3)), (I(0, 1), slice(None), 3), (0, slice(None), I(1, 2, 3)),
    (I(4, 3), None, I(1, 1)), (I(1,), slice(None, None, -1), I(2,)),
    (slice(None), None, I(0, 3), slice(2, 6, 3)),
    # broadcasting, repeats and empty index arrays
    (I(0, 0, 4), I(5, 5, 5)), (I(), slice(None)), (I(1, 2)[:0].reshape(0, 1), I(0, 1, 2)),
    (slice(None, None, -1), slice(None, None, -1), I(0, 6, 2)),
]


@pytest.mark.parametrize("key", GETITEM_KEYS, ids=[str(i) for i in range(len(GETITEM_KEYS))])
def test_getitem(backend, key):
    x = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    a = up(backend, x)
    expected = x[key].copy()
    actual = down(backend, backend.getitem(a, backend_key(backend, key, x.shape)))
    assert_same(np.asarray(actual), np.asarray(expected))


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
       data=st.data())
def test_getitem_basic_hypothesis(backend, shape, data):
    key = data.draw(hnp.basic_indices(shape, allow_ellipsis=False, allow_newaxis=True))
    x = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    a = up(backend, x)
    actual = down(backend, backend.getitem(a, backend_key(backend, key, shape)))
    assert_same(actual, np.asarray(x[key]).copy())
    backend.free(a)


def test_getitem_dtypes(backend, dtypes):
    rng = np.random.default_rng(5)
    for dtype in dtypes:
        x = sample(dtype, 60, rng).reshape(3, 4, 5)
        a = up(backend, x)
        for key in [(slice(None, None, -1), 1), (I(2, 0), slice(None), I(4, 1)), (None, 1, 2, 3)]:
            actual = down(backend, backend.getitem(a, backend_key(backend, key, x.shape)))
            assert_same(actual, np.asarray(x[key]).copy())


SETITEM_KEYS = [
    (2,), (slice(None, None, -2),), (slice(3, 3),), (1, slice(1, 5, 2), None, -1),
    (I(0, 3),), (slice(None), I(5, 1, 0)), (I(0, 4), slice(None), I(6, 2)),
    (1, I(0, 2), slice(2, None)), (slice(None, None, -1), I(0, 1).reshape(2, 1), I(1, 2, 3)),
    (I(),),
]


@pytest.mark.parametrize("key", SETITEM_KEYS, ids=[str(i) for i in range(len(SETITEM_KEYS))])
def test_setitem(backend, key):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32)
    target_shape = x[key].shape
    values = [2.5, np.float32(-1.0), rng.standard_normal(target_shape).astype(np.float32)]
    if len(target_shape) >= 1:   # a value broadcast along the leading dims
        values.append(rng.standard_normal(target_shape[-1:]).astype(np.float32))
    for value in values:
        expected = x.copy()
        expected[key] = value
        a = up(backend, x)
        native = up(backend, value) if isinstance(value, np.ndarray) else value
        backend.setitem(a, backend_key(backend, key, x.shape), native)
        assert_same(down(backend, a), expected)


def test_setitem_dtypes_and_scalars(backend, dtypes):
    rng = np.random.default_rng(4)
    for dtype in dtypes:
        x = sample(dtype, 24, rng).reshape(4, 6)
        for key, value in [((slice(None), 2), 1), ((I(3, 0), slice(1, None, 2)), True),
                           ((slice(None, None, -1), I(5)), sample(dtype, 4, rng).reshape(4, 1)),
                           ((slice(None),), sample(dtype, 6, rng))]:
            expected = x.copy()
            expected[key] = value
            a = up(backend, x)
            native = up(backend, value) if isinstance(value, np.ndarray) else value
            backend.setitem(a, backend_key(backend, key, x.shape), native)
            assert_same(down(backend, a), expected)


def test_setitem_aliasing_value(backend):
    """a[::-1] = a: the value shares the destination's memory (via reshape)."""
    x = np.arange(40, dtype=np.int32).reshape(5, 8)
    a = up(backend, x)
    view = backend.reshape(a, (5, 8))
    backend.setitem(a, (slice(4, -1, -1),), view)
    assert_same(down(backend, a), x[::-1].copy())


def test_setitem_large(backend):
    x = np.zeros(1_000_003, np.float32)
    a = up(backend, x)
    backend.setitem(a, (slice(1, None, 3),), 7.0)
    x[1::3] = 7.0
    assert_same(down(backend, a), x)


# ---- random ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (1_000_003,)])
@pytest.mark.parametrize("seed,counter", [(0, 0), (12345, 987654321),
                                          (2 ** 64 - 1, 2 ** 64 - 3)])
def test_random(backend, dtypes, shape, seed, counter):
    n = int(np.prod(shape))
    key = gm_random.mix64_int(seed)
    cases = [("uniform", np.float32, {}), ("normal", np.float32, {}),
             ("integers", np.int64, {"low": -5, "span": 11}),
             ("integers", np.int32, {"low": 0, "span": 2 ** 32}),
             ("integers", np.uint8, {"low": 3, "span": 1}),
             ("integers", np.int64, {"low": -(2 ** 31), "span": 2 ** 32 - 1})]
    if backend.supports_float64:
        cases += [("uniform", np.float64, {}), ("normal", np.float64, {})]
    for kind, dtype, extra in cases:
        expected = gm_random.reference(kind, n, dtype, key, counter, **extra).reshape(shape)
        actual = down(backend, backend.random(kind, shape, dtype, key, counter, **extra))
        assert_same(actual, expected, approx=kind == "normal")


# ---- pack_signs -----------------------------------------------------------------------------

def np_pack_signs(x):
    n = x.shape[-1]
    words = -(-n // 32)
    with np.errstate(invalid="ignore"):
        bits = (x >= 0).astype(np.uint64)
    pad = np.zeros(x.shape[:-1] + (words * 32 - n,), np.uint64)
    bits = np.concatenate([bits, pad], axis=-1).reshape(x.shape[:-1] + (words, 32))
    return (bits << np.arange(32, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 100])
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_pack_signs(backend, n, lead):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(lead + (n,)).astype(np.float32)
    specials = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, -np.nan], np.float32)
    flat = x.reshape(-1)
    flat[: min(flat.size, specials.size)] = specials[: flat.size]
    a = up(backend, x)
    assert_same(down(backend, backend.pack_signs(a)), np_pack_signs(x))


def test_pack_signs_large(backend):
    x = np.random.default_rng(0).standard_normal((1000, 1003)).astype(np.float32)
    assert_same(down(backend, backend.pack_signs(up(backend, x))), np_pack_signs(x))


def test_launches_from_several_threads_keep_their_own_arguments(ocl):
    """pyopencl sets a kernel's arguments on the shared kernel object, then enqueues it:
    without OpenCLBackend's LaunchKernel, threads launching one cached kernel took each
    other's scalars and buffers (wrong values, no error)."""
    import sys
    import threading

    import gpumat as gm
    bad, interval = [], sys.getswitchinterval()

    def work(tid):
        a = gm.array(np.full(1000 + tid, tid + 1, np.float32), backend="opencl")
        b = gm.array(np.full(1000 + tid, 10 * (tid + 1), np.float32), backend="opencl")
        for step in range(150):
            s = float(tid * 1000 + step)
            if not np.all((a + s).gather() == tid + 1 + s):
                bad.append(("add", tid, step))
            if not np.all((a * b).gather() == 10 * (tid + 1) ** 2):
                bad.append(("mul", tid, step))
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert bad == []
