"""2-d pooling for the array-module backends (NumPy on cpu, CuPy on cuda when its own kernels
are not loaded), attached to ``ArrayModuleBackend`` at import.

Vectorised over the kh * kw window offsets: offset (i, j) of every window at once is one
strided slice of the input padded so that every window, ceil_mode overhang included, lies
inside it.  Max pooling pads with -inf, which never beats the running maximum (so padding is
never picked), and applies torch's update rule ``v > best or isnan(v)`` in window scan order,
so ties go to the first maximum and the last NaN wins, exactly as torch's loops do.  The
backward passes visit the offsets in reverse scan order, which adds each input position's
contributions in increasing output order, the order torch's scatter loops use.
"""
import numpy as np

from .array_module import ArrayModuleBackend


def _padded(xp, x, fill, padding, extent):
    """``x`` (N, C, H, W) inside an (N, C, *extent) array filled with ``fill``, placed at
    offset ``padding``; ``x`` itself when no padding is needed."""
    n, c, h, w = x.shape
    (ph, pw), (hp, wp) = padding, extent
    if (ph, pw) == (0, 0) and (hp, wp) == (h, w):
        return x
    out = xp.full((n, c, hp, wp), fill, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _extent(size, kernel, stride, pad, out):
    """Padded length along one axis that holds every window (with ceil_mode overhang)."""
    return max(size + 2 * pad, (out - 1) * stride + kernel)


def _window_slices(i, j, stride, out_hw):
    (sh, sw), (oh, ow) = stride, out_hw
    return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh),
            slice(j, j + sw * (ow - 1) + 1, sw))


def _avg_divisor(xp, size, kernel, stride, pad, out, count_include_pad):
    """torch's avg-pool divisor factor along one axis, per output position (int64)."""
    start = np.arange(out, dtype=np.int64) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    if count_include_pad:
        return xp.asarray(end - start)
    return xp.asarray(np.minimum(end, size) - np.maximum(start, 0))


def _pool2d(self, x, mode, kernel, stride, padding, ceil_mode, count_include_pad, out_hw,
            return_indices=True):
    xp = self.xp
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    extent = (_extent(h, kh, sh, ph, oh), _extent(w, kw, sw, pw, ow))
    if mode == "max":
        padded = _padded(xp, x, -np.inf, padding, extent)
        row0 = np.arange(oh, dtype=np.int64) * sh - ph      # window starts, input coordinates
        col0 = np.arange(ow, dtype=np.int64) * sw - pw
        best = xp.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
        index = None
        if return_indices:
            # torch's initial index: the window's first in-bounds position
            first = np.maximum(row0, 0)[:, None] * w + np.maximum(col0, 0)[None, :]
            index = xp.broadcast_to(xp.asarray(first), best.shape).copy()
        with np.errstate(invalid="ignore"):
            for i in range(kh):
                for j in range(kw):
                    v = padded[_window_slices(i, j, stride, out_hw)]
                    take = (v > best) | xp.isnan(v)
                    best = xp.where(take, v, best)
                    if return_indices:
                        pos = (row0 + i)[:, None] * w + (col0 + j)[None, :]
                        index = xp.where(take, xp.asarray(pos), index)
        out = self._new(lambda: best, best.shape, x.dtype)
        return out, (self._new(lambda: index, index.shape, np.int64) if return_indices
                     else None)
    if mode != "avg":
        raise ValueError(f"pool2d: unknown mode {mode!r}")
    padded = _padded(xp, x, 0, padding, extent)
    total = xp.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            total += padded[_window_slices(i, j, stride, out_hw)]
    divisor = (_avg_divisor(xp, h, kh, sh, ph, oh, count_include_pad)[:, None]
               * _avg_divisor(xp, w, kw, sw, pw, ow, count_include_pad)[None, :])
    with np.errstate(all="ignore"):
        out = total / divisor.astype(x.dtype)
    return self._new(lambda: out.astype(x.dtype, copy=False), out.shape, x.dtype), None


def _pool2d_backward(self, grad_out, indices, input_shape, mode, kernel, stride, padding,
                     count_include_pad, out_hw):
    xp = self.xp
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    extent = (_extent(h, kh, sh, ph, oh), _extent(w, kw, sw, pw, ow))
    dtype = grad_out.dtype
    grad = xp.zeros((n, c) + extent, dtype=dtype)
    if mode == "max":
        row0 = np.arange(oh, dtype=np.int64) * sh - ph
        col0 = np.arange(ow, dtype=np.int64) * sw - pw
        zero = xp.zeros((), dtype=dtype)
        for i in reversed(range(kh)):
            rows = row0 + i
            for j in reversed(range(kw)):
                cols = col0 + j
                valid = (((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :])
                if not valid.any():
                    continue
                pos = rows[:, None] * w + cols[None, :]
                # padding positions can alias real flat indices, hence the validity mask
                hit = (indices == xp.asarray(pos)) & xp.asarray(valid)
                grad[_window_slices(i, j, stride, out_hw)] += xp.where(hit, grad_out, zero)
    elif mode == "avg":
        divisor = (_avg_divisor(xp, h, kh, sh, ph, oh, count_include_pad)[:, None]
                   * _avg_divisor(xp, w, kw, sw, pw, ow, count_include_pad)[None, :])
        with np.errstate(all="ignore"):
            delta = (grad_out / divisor.astype(dtype)).astype(dtype, copy=False)
        for i in reversed(range(kh)):
            for j in reversed(range(kw)):
                grad[_window_slices(i, j, stride, out_hw)] += delta
    else:
        raise ValueError(f"pool2d_backward: unknown mode {mode!r}")
    return self._new(lambda: grad[:, :, ph:ph + h, pw:pw + w].copy(), tuple(input_shape), dtype)


ArrayModuleBackend.pool2d = _pool2d
ArrayModuleBackend.pool2d_backward = _pool2d_backward
