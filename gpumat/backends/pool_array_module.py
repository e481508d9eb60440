"""2-d pooling for the array-module backends (NumPy on cpu, CuPy on cuda when its own kernels
are not loaded), attached to ``ArrayModuleBackend`` at import.

Vectorised over the kh * kw window offsets: offset (i, j) of every window at once is one
strided slice of the input padded so that every window, ceil_mode overhang included, lies
inside it.  Max pooling pads with -inf, which never beats the running maximum (so padding is
never picked), and applies torch's update rule ``v > best or isnan(v)`` in window scan order,
so ties go to the first maximum and the last NaN wins, exactly as torch's loops do, tracking
the winning window offset (int32) and turning it into flat positions once at the end; without
indices it is a running ``maximum`` (which propagates NaN as that rule does).  The backward
passes visit the offsets in reverse scan order, which adds each input position's
contributions in increasing output order, the order torch's scatter loops use.

When stride >= kernel on both axes (on NumPy; ``FORCE_GENERIC`` turns it off for tests) no
two windows overlap, and backward needs no additions: max is a zero-fill plus one scatter of
the gradients to their (distinct) index positions, avg copies each output's share into its
stride cell.  Foreign indices (outside their output's window) are dropped on every path.
"""
import numpy as np

from .array_module import ArrayModuleBackend

#: tests set this to run the generic (overlapping-window) backward for every geometry
FORCE_GENERIC = False


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


def _big_tiles(shape, kernel, stride, padding, out_hw):
    """Whether windows tile the input without padding, gaps or ceil_mode overhang and are
    big enough (global pooling, 8x8) that one reduction over a reshaped view beats a loop
    over the offsets."""
    return (tuple(stride) == tuple(kernel) and tuple(padding) == (0, 0)
            and kernel[0] * kernel[1] >= 16 and out_hw[0] * kernel[0] <= shape[-2]
            and out_hw[1] * kernel[1] <= shape[-1])


def _tiles(x, kernel, out_hw):
    """(N, C, OH, kh, OW, kw) view of the windows of ``x`` (stride == kernel, no padding;
    floor mode drops the remainder rows and columns)."""
    n, c = x.shape[:2]
    (kh, kw), (oh, ow) = kernel, out_hw
    return x[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)


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
        big = _big_tiles(x.shape, kernel, stride, padding, out_hw) and xp is np
        if not return_indices and big:
            cells = _tiles(x, kernel, out_hw)
            best = cells.max(axis=(3, 5))              # NaN propagates, as torch's rule
            zero = best == 0
            if zero.any():
                # a maximum of 0 is the window's first zero, sign included (first max wins)
                flat = cells.transpose(0, 1, 2, 4, 3, 5).reshape(best.shape + (-1,))
                first = np.take_along_axis(flat, (flat == 0).argmax(axis=-1)[..., None], -1)
                best = np.where(zero, first[..., 0], best)
            return self._new(lambda: best, best.shape, x.dtype), None
        if not return_indices:
            # the value alone: np.maximum propagates NaN exactly as torch's rule does, keeps
            # its second argument (the earlier maximum) on a tie of signed zeros, and
            # padding (-inf) never beats a real value
            best = padded[_window_slices(0, 0, stride, out_hw)].copy()
            for i in range(kh):
                for j in range(kw):
                    if i or j:
                        xp.maximum(padded[_window_slices(i, j, stride, out_hw)], best,
                                   out=best)
            out = self._new(lambda: best, best.shape, x.dtype)
            return out, None
        best = xp.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
        # the winning window offset i * kw + j (-1: none yet), turned into positions at the end
        which = xp.full((n, c, oh, ow), -1, dtype=np.int32)
        with np.errstate(invalid="ignore"):
            for i in range(kh):
                for j in range(kw):
                    v = padded[_window_slices(i, j, stride, out_hw)]
                    take = v > best
                    take |= xp.isnan(v)
                    xp.copyto(best, v, where=take)
                    xp.copyto(which, np.int32(i * kw + j), where=take)
        # torch's initial index: the window's first in-bounds position
        first = np.maximum(row0, 0)[:, None] * w + np.maximum(col0, 0)[None, :]
        offset_pos = (np.arange(kh, dtype=np.int64)[:, None] * w
                      + np.arange(kw, dtype=np.int64)[None, :]).reshape(-1)
        start = xp.asarray(row0[:, None] * w + col0[None, :])
        index = xp.where(which < 0, xp.asarray(first),
                         start + xp.asarray(offset_pos)[xp.maximum(which, 0)])
        out = self._new(lambda: best, best.shape, x.dtype)
        return out, (self._new(lambda: index, index.shape, np.int64) if return_indices
                     else None)
    if mode != "avg":
        raise ValueError(f"pool2d: unknown mode {mode!r}")
    if _big_tiles(x.shape, kernel, stride, padding, out_hw) and xp is np:
        total = _tiles(x, kernel, out_hw).sum(axis=(3, 5))
    else:
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


def _disjoint_backward(xp, values, n, c, h, w, extent, stride, padding, out_hw, dtype):
    """The input gradient from ``values`` (N, C, OH, sh, OW, sw): the gradient of every
    position of every output's stride cell (zero outside the window).  For stride >= kernel
    the cells tile the padded input without overlap, so this is a copy, not a scatter-add."""
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, out_hw
    full_h, full_w = max(extent[0], oh * sh), max(extent[1], ow * sw)
    if (full_h, full_w) == (oh * sh, ow * sw):
        full = values.reshape((n, c, full_h, full_w))
    else:
        full = xp.zeros((n, c, full_h, full_w), dtype=dtype)
        cells = full[:, :, :oh * sh, :ow * sw]
        cells.shape = (n, c, oh, sh, ow, sw)         # a view: splitting axes never copies
        cells[...] = values
    return xp.ascontiguousarray(full[:, :, ph:ph + h, pw:pw + w])


def _window_owner(h, w, kernel, stride, padding, out_hw):
    """(H, W) int64: the flat oh * OW + ow of the output whose window holds each input
    position, -1 where none does (windows must not overlap: stride >= kernel)."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    rows = np.arange(h, dtype=np.int64) + ph
    cols = np.arange(w, dtype=np.int64) + pw
    orow = np.where((rows % sh < kh) & (rows // sh < oh), rows // sh, -1)
    ocol = np.where((cols % sw < kw) & (cols // sw < ow), cols // sw, -1)
    return np.where((orow[:, None] >= 0) & (ocol[None, :] >= 0),
                    orow[:, None] * ow + ocol[None, :], -1).reshape(-1)


def _backward_disjoint(xp, grad_out, indices, input_shape, mode, kernel, stride, padding,
                       count_include_pad, out_hw, extent):
    """Backward for stride >= kernel (no two windows overlap): each input position gets at
    most one output's gradient, so max is a zero-fill plus a scatter to distinct positions
    (plain assignment, deterministic) and avg a copy of each output's share into its cell."""
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    dtype = grad_out.dtype
    if mode == "max":
        idx = xp.asarray(indices)
        # which output's window holds each input position (-1: none): an index outside its
        # own output's window (or its plane) contributes nothing
        owner = _window_owner(h, w, kernel, stride, padding, out_hw)
        if idx.size and 0 <= int(idx.min()) and int(idx.max()) < h * w:
            ok = owner[idx] == np.arange(oh * ow, dtype=np.int64).reshape(oh, ow)
        else:
            inside = (idx >= 0) & (idx < h * w)
            ok = inside & (owner[xp.where(inside, idx, 0)]
                           == np.arange(oh * ow, dtype=np.int64).reshape(oh, ow))
        target = idx + (xp.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
        grad = xp.zeros(n * c * h * w, dtype=dtype)
        if ok.all():
            grad[target.ravel()] = grad_out.ravel()
        else:
            grad[target[ok]] = grad_out[ok]
        return grad.reshape(input_shape)
    divisor = (_avg_divisor(xp, h, kh, sh, ph, oh, count_include_pad)[:, None]
               * _avg_divisor(xp, w, kw, sw, pw, ow, count_include_pad)[None, :])
    with np.errstate(all="ignore"):
        delta = (grad_out / divisor.astype(dtype)).astype(dtype, copy=False)
    if (sh, sw) == (kh, kw) and kh * kw >= 16:
        # big cells (global pooling): one broadcast copy beats kh * kw strided ones
        values = xp.broadcast_to(delta[:, :, :, None, :, None], (n, c, oh, sh, ow, sw))
    else:
        if (sh, sw) == (kh, kw):
            values = xp.empty((n, c, oh, sh, ow, sw), dtype=dtype)
        else:
            values = xp.zeros((n, c, oh, sh, ow, sw), dtype=dtype)
        for i in range(kh):
            for j in range(kw):
                values[:, :, :, i, :, j] = delta
    return _disjoint_backward(xp, values, n, c, h, w, extent, stride, padding, out_hw, dtype)


def _pool2d_backward(self, grad_out, indices, input_shape, mode, kernel, stride, padding,
                     count_include_pad, out_hw):
    xp = self.xp
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    extent = (_extent(h, kh, sh, ph, oh), _extent(w, kw, sw, pw, ow))
    dtype = grad_out.dtype
    if xp is np and sh >= kh and sw >= kw and mode in ("max", "avg") and not FORCE_GENERIC:
        result = _backward_disjoint(xp, grad_out, indices, input_shape, mode, kernel, stride,
                                    padding, count_include_pad, out_hw, extent)
        return self._new(lambda: result, tuple(input_shape), dtype)
    grad = xp.zeros((n, c) + extent, dtype=dtype)
    if mode == "max":
        row0 = np.arange(oh, dtype=np.int64) * sh - ph
        col0 = np.arange(ow, dtype=np.int64) * sw - pw
        zero = xp.zeros((), dtype=dtype)
        # each output's window offset i * kw + j of its index (-1: outside its window or
        # plane, which contributes nothing); an in-window index always names a real position
        idx = xp.asarray(indices)
        row = idx // w
        di = row - xp.asarray(row0)[:, None]
        dj = idx - row * w - xp.asarray(col0)[None, :]
        ok = (idx >= 0) & (idx < h * w) & (di >= 0) & (di < kh) & (dj >= 0) & (dj < kw)
        which = xp.where(ok, di * kw + dj, -1).astype(np.int32)
        for i in reversed(range(kh)):
            for j in reversed(range(kw)):
                hit = which == i * kw + j
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
