"""2-d pooling methods of the opencl backend: kernels/opencl/pool2d.cl (the shared
kernels/common/pool2d.h), one work-item per output element forward and one per input element
backward (a gather, so no atomics).  Attached to ``OpenCLBackend`` at import
(``opencl.create()`` imports us).

Row launches (two-dimensional: columns along dimension 0, rows of planes along dimension 1,
so no integer division per element) run the rest:

  * backward with stride >= kernel on both axes (windows never overlap, the common 2x2/2
    case): the scatter kernels, one work-item per output writing its whole stride cell (its
    gradient at its argmax / over its window, zeros elsewhere), after a zero-fill only when
    some input positions lie in no cell;
  * other backward with kernel <= 2 * stride (at most two covering windows per axis, e.g.
    3x3/2): the gather row kernels, four predicated candidates in output order and each
    input column's first covering output from a small cached table;
  * anything else backward, and global (1 x 1 output) forward: the flat one-dimensional
    kernels; other forwards: the row kernels (``FORWARD_PATH``).

``BACKWARD_PATH`` ("auto", "flat", "gather", "scatter") and ``FORWARD_PATH`` ("auto", "flat",
"rows") force a path for tests; a forced path that does not apply to the geometry falls back
to the next one down the list above.  Every path gives bit-identical results."""
import numpy as np

from .. import errors
from .base import float_kernel_suffix
from .opencl import OpenCLBackend, cl
from .opencl_elementwise import LOCAL_SIZE, _common_kernel, _grid, _live

_SOURCE = "opencl/pool2d.cl"

#: "auto", "flat", "gather" or "scatter"; see the module docstring (tests force each path)
BACKWARD_PATH = "auto"
#: "auto" (row kernels, flat ones for 1 x 1 outputs), "rows" or "flat"
FORWARD_PATH = "auto"
#: work-items per work-group of the row launches
_ROW_GROUP = 256
_MAX_ROW_GROUPS = 65535


def _suffix(self, dtype, what):
    return float_kernel_suffix(self, dtype, what)


def _geometry_args(planes, h, w, out_hw, kernel, stride, padding):
    return tuple(np.int64(v) for v in (planes, h, w, out_hw[0], out_hw[1], kernel[0],
                                       kernel[1], stride[0], stride[1], padding[0], padding[1]))


def _dummy_indices(self):
    """A one-element int64 buffer for the indices argument when they are not stored."""
    buf = getattr(self, "_pool_dummy_indices", None)
    if buf is None:
        buf = self._pool_dummy_indices = self.empty((1,), np.int64)
        self._bytes_in_use -= buf.nbytes      # backend-owned scratch, not user memory
    return buf


def _row_launches(columns, rows):
    """(first row, global size, local size) of each launch of a row kernel over ``columns``
    x ``rows`` work-items (one per element; several launches where the rows exceed the
    dimension-1 work-group limit some drivers have)."""
    local0 = min(-(-columns // 16) * 16, _ROW_GROUP)
    local1 = max(1, _ROW_GROUP // local0)
    global0 = -(-columns // local0) * local0
    chunk = _MAX_ROW_GROUPS * local1
    for row0 in range(0, rows, chunk):
        count = min(chunk, rows - row0)
        yield row0, (global0, -(-count // local1) * local1), (local0, local1)


def _column_table(self, w, out_w, kernel_w, stride_w, pad_w):
    """The cached device table [first covering output column] * W + [one past the last] * W
    (int64) of input columns, for the backward row kernels."""
    cache = getattr(self, "_pool_column_tables", None)
    if cache is None:
        cache = self._pool_column_tables = {}
    key = (w, out_w, kernel_w, stride_w, pad_w)
    table = cache.get(key)
    if table is None:
        col = np.arange(w, dtype=np.int64)
        t = col + pad_w - kernel_w
        first = np.where(t < 0, 0, t // stride_w + 1)
        end = np.minimum((col + pad_w) // stride_w + 1, out_w)
        host = np.concatenate([first, np.maximum(end, first)]).astype(np.int64)
        if len(cache) >= 64:
            for old in cache.values():
                self.free(old)
                self._bytes_in_use += old.nbytes
            cache.clear()
        table = cache[key] = self.from_numpy(host)
        self._bytes_in_use -= table.nbytes    # backend-owned scratch, not user memory
    return table


def _pool2d(self, x, mode, kernel, stride, padding, ceil_mode, count_include_pad, out_hw,
            return_indices=True):
    suffix = _suffix(self, x.dtype, "pool2d")
    n, c, h, w = x.shape
    planes = n * c
    out = self.empty((n, c) + tuple(out_hw), x.dtype)
    total = out.size
    geometry = _geometry_args(planes, h, w, out_hw, kernel, stride, padding)
    rows = FORWARD_PATH == "rows" or (FORWARD_PATH == "auto" and tuple(out_hw) != (1, 1))
    launches = list(_row_launches(out_hw[1], planes * out_hw[0])) if rows else ()
    if mode == "max":
        indices = self.empty(out.shape, np.int64) if return_indices else None
        if total:
            index_buf = indices.data if return_indices else _dummy_indices(self).data
            store = np.int64(1 if return_indices else 0)
            if rows:
                knl = _common_kernel(self, _SOURCE, "max_pool2d_forward_rows" + suffix)
                for row0, global_size, local_size in launches:
                    knl(self.queue, global_size, local_size, _live(x), out.data, index_buf,
                        store, np.int64(row0), *geometry)
            else:
                knl = _common_kernel(self, _SOURCE, "max_pool2d_forward" + suffix)
                knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(x), out.data,
                    index_buf, store, *geometry)
        return out, indices
    if mode != "avg":
        raise ValueError(f"pool2d: unknown mode {mode!r}")
    if total:
        include = np.int64(1 if count_include_pad else 0)
        if rows:
            knl = _common_kernel(self, _SOURCE, "avg_pool2d_forward_rows" + suffix)
            for row0, global_size, local_size in launches:
                knl(self.queue, global_size, local_size, _live(x), out.data, include,
                    np.int64(row0), *geometry)
        else:
            knl = _common_kernel(self, _SOURCE, "avg_pool2d_forward" + suffix)
            knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(x), out.data,
                include, *geometry)
    return out, None


def _pool2d_backward(self, grad_out, indices, input_shape, mode, kernel, stride, padding,
                     count_include_pad, out_hw):
    suffix = _suffix(self, grad_out.dtype, "pool2d_backward")
    n, c, h, w = input_shape
    grad_in = self.empty(tuple(input_shape), grad_out.dtype)
    total = grad_in.size
    geometry = _geometry_args(n * c, h, w, out_hw, kernel, stride, padding)
    if mode not in ("max", "avg"):
        raise ValueError(f"pool2d_backward: unknown mode {mode!r}")
    if mode == "max" and (indices is None or np.dtype(indices.dtype) != np.int64):
        raise errors.DtypeError("opencl pool2d_backward: max mode needs int64 indices")
    if not total:
        return grad_in
    rows_ok = kernel[0] <= 2 * stride[0] and kernel[1] <= 2 * stride[1]
    if BACKWARD_PATH == "flat" or not rows_ok:
        if mode == "max":
            knl = _common_kernel(self, _SOURCE, "max_pool2d_backward" + suffix)
            knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(grad_out),
                _live(indices), grad_in.data, *geometry)
        else:
            knl = _common_kernel(self, _SOURCE, "avg_pool2d_backward" + suffix)
            knl(self.queue, (_grid(self, total),), (LOCAL_SIZE,), _live(grad_out),
                grad_in.data, np.int64(1 if count_include_pad else 0), *geometry)
        return grad_in
    if BACKWARD_PATH in ("auto", "scatter") and stride[0] >= kernel[0] \
            and stride[1] >= kernel[1]:
        # windows never overlap: one work-item per output writes its whole stride cell
        oh, ow = out_hw
        if oh * stride[0] - padding[0] < h or ow * stride[1] - padding[1] < w:
            cl.enqueue_fill_buffer(self.queue, grad_in.data, np.zeros(1, grad_in.dtype), 0,
                                   grad_in.nbytes)       # positions in no window's cell
        if mode == "max":
            knl = _common_kernel(self, _SOURCE, "max_pool2d_backward_scatter" + suffix)
            head = (_live(grad_out), _live(indices), grad_in.data)
        else:
            knl = _common_kernel(self, _SOURCE, "avg_pool2d_backward_scatter" + suffix)
            head = (_live(grad_out), grad_in.data, np.int64(1 if count_include_pad else 0))
        for row0, global_size, local_size in _row_launches(ow, n * c * oh):
            knl(self.queue, global_size, local_size, *head, np.int64(row0), *geometry)
        return grad_in
    # the row kernels handle up to two covering windows per axis (kernel <= 2 * stride)
    table = _column_table(self, w, out_hw[1], kernel[1], stride[1], padding[1])
    if mode == "max":
        knl = _common_kernel(self, _SOURCE, "max_pool2d_backward_rows" + suffix)
        head = (_live(grad_out), _live(indices), grad_in.data, table.data)
    else:
        knl = _common_kernel(self, _SOURCE, "avg_pool2d_backward_rows" + suffix)
        head = (_live(grad_out), grad_in.data, table.data,
                np.int64(1 if count_include_pad else 0))
    for row0, global_size, local_size in _row_launches(w, n * c * h):
        knl(self.queue, global_size, local_size, *head, np.int64(row0), *geometry)
    return grad_in


OpenCLBackend.pool2d = _pool2d
OpenCLBackend.pool2d_backward = _pool2d_backward
