"""The native module's one-pass kernels (activations, pooling, batch norm, im2col / col2im)
run their loops on the thread pool (kernels/cpu/parallel.hpp): each unit of work is computed
the same way whichever chunk it falls in, so results must not depend on the thread count.

Every case is large enough to be split (above kParallelThreshold) and has a unit count
(elements, planes, channels, rows) that no chunk count divides evenly; its results with 1, 2,
3 and 7 threads must be bitwise equal, and equal to a NumPy reference where one is cheap to
state here (the per-op suites check every op against NumPy or torch in depth).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpumat import native

NATIVE = native.kernels()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native module is not built")

THREAD_COUNTS = (1, 2, 3, 7)
RELU = 1      # gpumat.backends.base.ACTIVATIONS["relu"]
ELU = 4


@pytest.fixture
def restore_threads():
    threads = NATIVE.native_threads()
    yield
    NATIVE.set_native_threads(threads)


def _data(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[::97] = 0.0                   # the kinks and signed zeros, spread over every chunk
    flat[1::101] = -0.0
    flat[2::1009] = np.nan
    return x


def _cases():
    x = _data((7, 13, 37, 41), 0)                      # 7 * 13 planes, 138k elements
    g = _data((7, 13, 37, 41), 1)
    b = _data((13,), 2)
    rows = _data((1021, 131), 3)                       # (rows, channels): bias along rows
    pooled_shape = (7, 13, 18, 20)
    gp = _data(pooled_shape, 4)
    idx = NATIVE.pool2d_max(x, (2, 2), (2, 2), (0, 0), pooled_shape[2:], True)[1]
    mean, var = _data((13,), 5), np.abs(_data((13,), 6)) + 0.5
    inv_std = (1.0 / np.sqrt(var + 1e-5)).astype(np.float32)
    conv = _data((3, 11, 29, 31), 7)
    cols = NATIVE.im2col(conv, (3, 3), (1, 1), (1, 1), (1, 1), (29, 31))
    return {
        "relu": lambda: NATIVE.bias_act(x, None, 1, RELU, 0.0),
        "elu + bias (N, C, H, W)": lambda: NATIVE.bias_act(x, b, 1, ELU, 1.0),
        "relu + bias (rows, C)": lambda: NATIVE.bias_act(rows, rows[0].copy(), 1, RELU, 0.0),
        "relu backward": lambda: NATIVE.act_backward(g, x, RELU, 0.0),
        "bias grad": lambda: NATIVE.bias_grad(g, 1),
        "max pool 2x2": lambda: NATIVE.pool2d_max(x, (2, 2), (2, 2), (0, 0), (18, 20), True),
        "max pool 3x3 s2 p1": lambda: NATIVE.pool2d_max(x, (3, 3), (2, 2), (1, 1), (19, 21),
                                                        False),
        "avg pool 3x3 s2 p1": lambda: NATIVE.pool2d_avg(x, (3, 3), (2, 2), (1, 1), (19, 21),
                                                        False),
        "global average pool": lambda: NATIVE.pool2d_global_avg(x),
        "max pool backward": lambda: NATIVE.pool2d_max_backward(gp, idx, (37, 41), (2, 2),
                                                                (2, 2), (0, 0)),
        "avg pool backward": lambda: NATIVE.pool2d_avg_backward(gp, (37, 41), (2, 2), (2, 2),
                                                                (0, 0), True),
        "batch norm, training": lambda: NATIVE.batch_norm_forward(x, b, mean, None, None,
                                                                  1e-5),
        "batch norm, evaluation": lambda: NATIVE.batch_norm_forward(x, b, mean, mean, var,
                                                                    1e-5),
        "batch norm (rows, C)": lambda: NATIVE.batch_norm_forward(rows, None, None, None,
                                                                  None, 1e-5),
        "batch norm backward": lambda: NATIVE.batch_norm_backward(g, x, mean, inv_std, b,
                                                                  True, True, True),
        "im2col": lambda: NATIVE.im2col(conv, (3, 3), (1, 1), (1, 1), (1, 1), (29, 31)),
        "col2im": lambda: NATIVE.col2im(cols, conv.shape, (3, 3), (1, 1), (1, 1), (1, 1),
                                        (29, 31)),
    }


CASES = _cases() if NATIVE is not None else {}


def _bits(result):
    """Every array of a result (tuples flattened, None kept) as raw bytes."""
    parts = result if isinstance(result, tuple) else (result,)
    return [None if p is None else (np.asarray(p).dtype.str, np.asarray(p).shape,
                                    np.ascontiguousarray(p).tobytes()) for p in parts]


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_do_not_depend_on_the_thread_count(name, restore_threads):
    results = {}
    for threads in THREAD_COUNTS:
        NATIVE.set_native_threads(threads)
        results[threads] = _bits(CASES[name]())
    for threads in THREAD_COUNTS[1:]:
        assert results[threads] == results[1], f"{name}: {threads} threads differ from 1"


def test_split_loops_match_numpy(restore_threads):
    """The split loops still compute the right thing (a few ops with one-line references)."""
    NATIVE.set_native_threads(3)
    x = _data((7, 13, 37, 41), 0)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(NATIVE.bias_act(x, None, 1, RELU, 0.0), np.maximum(x, 0))
        g = _data((7, 13, 37, 41), 1)
        np.testing.assert_array_equal(NATIVE.act_backward(g, x, RELU, 0.0),
                                      np.where(x <= 0, np.float32(0), g))
    # (NaN replaced: NumPy's max and torch's pooling rule pick different NaNs)
    y = np.nan_to_num(_data((7, 13, 36, 40), 8))
    out, _ = NATIVE.pool2d_max(y, (2, 2), (2, 2), (0, 0), (18, 20), False)
    np.testing.assert_array_equal(out, y.reshape(7, 13, 18, 2, 20, 2).max(axis=(3, 5)))


def test_bad_input_to_a_split_loop_raises_and_leaves_it_usable(restore_threads):
    """A refused call to a kernel that splits its loop names the problem, and the next call
    (split again, on the same threads) still works."""
    NATIVE.set_native_threads(2)
    x = _data((7, 13, 37, 41), 0)
    with pytest.raises(ValueError, match="bias"):
        NATIVE.bias_act(x, np.zeros(12, np.float32), 1, RELU, 0.0)   # wrong bias length
    np.testing.assert_array_equal(NATIVE.bias_act(np.nan_to_num(x), None, 1, RELU, 0.0),
                                  np.maximum(np.nan_to_num(x), 0))
