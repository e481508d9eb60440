"""Convolution entry points (im2col, col2im, depthwise) for the NumPy/CuPy backends.

Importing this module adds them to ``ArrayModuleBackend``, so cpu runs them on NumPy and cuda
on CuPy until ``cuda_conv`` replaces them with the shared kernels.  Each is vectorised over
pixels, batch and channels: im2col is one copy of a strided view of the zero-padded input,
and the others loop in Python only over the kh * kw kernel taps, each tap one strided slice.
"""
import numpy as np

from .array_module import ArrayModuleBackend
from .cpu import CPUBackend, blas_product


def _tap(start, stride, count):
    """The slice of a padded axis that kernel tap ``start`` reads for ``count`` outputs."""
    return slice(start, start + stride * (count - 1) + 1, stride)


def _padded(xp, x, padding):
    ph, pw = padding
    if not (ph or pw):
        return x
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _taps(kernel, stride, dilation, out_hw):
    """(i, j, row slice, column slice) for every kernel tap, row-major."""
    for i in range(kernel[0]):
        rows = _tap(i * dilation[0], stride[0], out_hw[0])
        for j in range(kernel[1]):
            yield i, j, rows, _tap(j * dilation[1], stride[1], out_hw[1])


def _crop(padded, input_shape, padding):
    ph, pw = padding
    return padded[:, :, ph:ph + input_shape[2], pw:pw + input_shape[3]]


def _im2col(self, x, kernel, stride, padding, dilation, out_hw):
    xp = self.xp
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    shape = (n, c * kh * kw, oh * ow)

    def make():
        src = xp.ascontiguousarray(_padded(xp, x, padding))
        # every window at once: a read-only (n, c, kh, kw, oh, ow) view of the padded input,
        # which stays inside it because OH, OW were sized so that the last window fits; one
        # copy of the view (contiguous writes) beats kh * kw copies into strided slots
        s0, s1, s2, s3 = src.strides
        windows = xp.lib.stride_tricks.as_strided(
            src, (n, c, kh, kw, oh, ow), (s0, s1, dh * s2, dw * s3, sh * s2, sw * s3))
        return xp.ascontiguousarray(windows).reshape(shape)
    return self._new(make, shape, x.dtype)


def _col2im(self, cols, input_shape, kernel, stride, padding, dilation, out_hw):
    xp = self.xp
    n, c, h, w = input_shape
    (kh, kw), (oh, ow), (ph, pw) = kernel, out_hw, padding

    def make():
        blocks = cols.reshape(n, c, kh, kw, oh, ow)
        padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
        # one tap's slice never repeats a pixel, so += adds each contribution once; taps go in
        # the kernels' (kh, kw) order
        for i, j, rows, columns in _taps(kernel, stride, dilation, out_hw):
            padded[:, :, rows, columns] += blocks[:, :, i, j]
        return _crop(padded, input_shape, padding)
    return self._new(make, tuple(input_shape), cols.dtype)


def _depthwise_conv2d(self, x, w, stride, padding, dilation, multiplier, out_hw):
    xp = self.xp
    n, c = x.shape[:2]
    kernel = w.shape[2:]
    shape = (n, c * multiplier) + tuple(out_hw)

    def make():
        src = _padded(xp, x, padding)
        taps = w.reshape(c, multiplier, kernel[0], kernel[1])
        out = xp.zeros((n, c, multiplier) + tuple(out_hw), x.dtype)
        product = xp.empty_like(out)        # one scratch buffer for every tap
        for i, j, rows, columns in _taps(kernel, stride, dilation, out_hw):
            xp.multiply(src[:, :, None, rows, columns], taps[None, :, :, i, j, None, None],
                        out=product)
            out += product
        return out.reshape(shape)
    return self._new(make, shape, x.dtype)


def _depthwise_conv2d_backward_input(self, grad_out, w, input_shape, stride, padding, dilation,
                                     multiplier, out_hw):
    xp = self.xp
    n, c, h, width = input_shape
    kernel = w.shape[2:]
    ph, pw = padding

    def make():
        grad = grad_out.reshape((n, c, multiplier) + tuple(out_hw))
        taps = w.reshape(c, multiplier, kernel[0], kernel[1])
        padded = xp.zeros((n, c, h + 2 * ph, width + 2 * pw), grad_out.dtype)
        for i, j, rows, columns in _taps(kernel, stride, dilation, out_hw):
            padded[:, :, rows, columns] += xp.einsum("ncmhw,cm->nchw", grad, taps[:, :, i, j])
        return _crop(padded, input_shape, padding)
    return self._new(make, tuple(input_shape), grad_out.dtype)


def _depthwise_conv2d_backward_weight(self, grad_out, x, weight_shape, stride, padding,
                                      dilation, multiplier, out_hw):
    xp = self.xp
    n, c = x.shape[:2]
    kernel = tuple(weight_shape[2:])

    def make():
        src = _padded(xp, x, padding)
        grad = grad_out.reshape((n, c, multiplier) + tuple(out_hw))
        out = xp.empty((c, multiplier) + kernel, grad_out.dtype)
        for i, j, rows, columns in _taps(kernel, stride, dilation, out_hw):
            out[:, :, i, j] = xp.einsum("ncmhw,nchw->cm", grad, src[:, :, rows, columns])
        return out.reshape(tuple(weight_shape))
    return self._new(make, tuple(weight_shape), grad_out.dtype)


def _matrices(a, rows, cols, batch_stride, transposed):
    """``a`` as op(A) matrices: one (rows x cols) matrix when ``batch_stride`` is 0, else a
    batch of them; ``transposed`` reads A stored cols x rows (a view, no copy)."""
    shape = (cols, rows) if transposed else (rows, cols)
    m = a.reshape(shape if batch_stride == 0 else (-1,) + shape)
    return m.swapaxes(-1, -2) if transposed else m


def _conv_gemm(self, a, b, M, N, K, batch, a_sb, b_sb, trans_a=False, trans_b=False):
    """(batch, M, N) = op(A[z]) @ op(B[z]) (see OpenCLBackend.conv_gemm): one matmul of views,
    so BLAS reads a transposed operand with its transpose flag instead of a permute copy."""
    xp = self.xp
    shape = (batch, M, N)
    blas_product(a.dtype, M * N * K)

    def make():
        if batch == 0 or M == 0 or N == 0:
            return xp.zeros(shape, a.dtype)
        with np.errstate(all="ignore"):     # overflow gives inf silently, as on the devices
            out = xp.matmul(_matrices(a, M, K, a_sb, trans_a), _matrices(b, K, N, b_sb, trans_b))
        return out.reshape(shape)
    return self._new(make, shape, a.dtype)


ArrayModuleBackend.im2col = _im2col
ArrayModuleBackend.col2im = _col2im
ArrayModuleBackend.depthwise_conv2d = _depthwise_conv2d
ArrayModuleBackend.depthwise_conv2d_backward_input = _depthwise_conv2d_backward_input
ArrayModuleBackend.depthwise_conv2d_backward_weight = _depthwise_conv2d_backward_weight
#: the cpu backend only: CuPy keeps the matmul path until measured on a GPU
CPUBackend.conv_gemm = _conv_gemm
