"""The cpu backend's XNOR-popcount kernels for binarized networks (gpumat/binary.py checks the
arguments): ``pack_conv_input``, ``xnor_gemm`` and ``xnor_conv2d``.

They run in the native module (kernels/cpu/xnor.hpp): the input's channel signs are packed
straight from NCHW floats (by ``xnor_conv2d`` itself when given them: each chunk of its
parallel pass packs the rows it reads, so the float input is read once and no packed copy of
the batch is made), and the products are XOR + popcount over 32 signs a word,
vectorised for the CPU's instruction set (AVX-512 VPOPCNTDQ, AVX-512BW, AVX2 or a portable
baseline, picked at run time; GPUMAT_CPU_ISA caps it, ``kernels().set_xnor_isa`` changes it)
and split over the native thread pool (GPUMAT_NUM_THREADS) where the work pays for it.
Without the module (after the usual NativeFallbackWarning) their NumPy twins in
gpumat/native.py give the same values.
"""
import numpy as np

from .. import native
from .cpu import CPUBackend


#: the native module's names of the result dtypes (np.dtype.name is a slow property)
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32"}


def _words(bits):
    return (bits + 31) // 32


def _pack_conv_input(self, x, mean_abs=False, bn=None):
    """The packed signs (N, H, W, ceil(C/32)) uint32; with mean_abs, (packed, mean): mean
    float32 (N, 1, H, W) the mean of |x| over the channels, from the same pass (a float32
    sum in channel order divided by C).  ``bn`` = (mean, var, weight, bias, eps) (weight and
    bias may be None): of x batch-normalized with those evaluation statistics (natively in
    the same pass; the NumPy twins run the batch norm first, to the same bits)."""
    n, c, h, w = x.shape
    shape = (n, h, w, _words(c))
    kernels = native.kernels()
    if bn is not None:
        if kernels is not None:
            results = self._alloc(lambda: kernels.pack_conv_input(x, mean_abs, *bn), shape,
                                  np.uint32)
            return (self._track(results[0]), self._track(results[1])) if mean_abs \
                else self._track(results)
        bn_mean, bn_var, bn_weight, bn_bias, bn_eps = bn
        y, _, _, inv_std = self.batch_norm_forward(x, bn_weight, bn_bias, bn_mean, bn_var,
                                                   bn_eps)
        try:
            return _pack_conv_input(self, y, mean_abs)
        finally:                    # temporaries: counted out again right away
            self.free(y)
            self.free(inv_std)
    if not mean_abs:
        if kernels is None:
            return self._run(lambda: native.pack_conv_input_numpy(x), shape, np.uint32)
        return self._run(lambda: kernels.pack_conv_input(x), shape, np.uint32)
    make = ((lambda: native.pack_conv_input_numpy(x, True)) if kernels is None
            else (lambda: kernels.pack_conv_input(x, True)))
    packed, mean = self._alloc(make, shape, np.uint32)
    return self._track(packed), self._track(mean)


def _xnor_gemm(self, a, b, k, out_dtype, row_scale=None, col_scale=None, bias=None):
    out_dtype = np.dtype(out_dtype)
    shape = (a.shape[0], b.shape[0])
    kernels = native.kernels()
    if kernels is None:
        return self._run(lambda: native.xnor_gemm_numpy(a, b, k, out_dtype, row_scale,
                                                        col_scale, bias), shape, out_dtype)
    return self._run(lambda: kernels.xnor_gemm(a, b, int(k), _DTYPE_NAMES[out_dtype],
                                               row_scale, col_scale, bias), shape, out_dtype)


def _xnor_conv2d(self, xp, wp, channels, stride, padding, out_hw, out_dtype, pixel_scale=None,
                 filter_scale=None, bias=None, window_mean=False, bn_mean=None, bn_var=None,
                 bn_weight=None, bn_bias=None, bn_eps=1e-5, residual=None):
    """The binary convolution; pixel_scale (N, OH, OW), filter_scale (O,) and bias (O,)
    (float32, float32 output only, each optional) fuse ((y * pixel_scale) * filter_scale)
    + bias into the kernel's stores, bit-identical to that float32 NumPy expression.  ``xp``
    may be the float32 (N, C, H, W) input: the native kernel packs it chunk by chunk inside
    its own parallel pass, and with window_mean also makes the pixel scale K from it there,
    and with bn_mean & co. batch-normalizes its values first (the NumPy twins do all of it
    beforehand, to the same bits); residual (N, O, OH, OW) is added last, as results are
    stored."""
    out_dtype = np.dtype(out_dtype)
    stride, padding, out_hw = tuple(stride), tuple(padding), tuple(out_hw)
    shape = (xp.shape[0], wp.shape[0]) + out_hw
    if channels == 0:
        # no channel: every v is 0 (as conv2d's and the other backends'), the epilogue run on
        # the zeros; K, the mean |x| over no channel, is NaN
        def nothing():
            out = np.zeros(shape, out_dtype)
            if out_dtype != np.float32:
                return out
            scale = np.full((shape[0],) + out_hw, np.nan, np.float32) if window_mean \
                else pixel_scale
            return native._apply_scales(out, scale, filter_scale, bias, residual)
        return self._run(nothing, shape, out_dtype)
    kernels = native.kernels()
    if kernels is None:
        if xp.dtype == np.float32:
            if bn_mean is not None:     # a temporary: counted out again right away
                xp, _, _, inv_std = self.batch_norm_forward(xp, bn_weight, bn_bias, bn_mean,
                                                            bn_var, bn_eps)
                self.free(xp)
                self.free(inv_std)
            if window_mean:
                xp, mean = native.pack_conv_input_numpy(xp, True)
                pixel_scale = native.window_mean_numpy(mean, wp.shape[1:3], stride, padding,
                                                       out_hw)
            else:
                xp = native.pack_conv_input_numpy(xp)
        return self._run(lambda: native.xnor_conv2d_numpy(
            xp, wp, channels, stride, padding, out_hw, out_dtype, pixel_scale, filter_scale,
            bias, residual), shape, out_dtype)
    return self._run(lambda: kernels.xnor_conv2d(xp, wp, int(channels), stride, padding, out_hw,
                                                 _DTYPE_NAMES[out_dtype], pixel_scale,
                                                 filter_scale, bias, window_mean, bn_mean,
                                                 bn_var, bn_weight, bn_bias, bn_eps,
                                                 residual),
                     shape, out_dtype)


CPUBackend.pack_conv_input = _pack_conv_input
CPUBackend.xnor_gemm = _xnor_gemm
CPUBackend.xnor_conv2d = _xnor_conv2d
CPUBackend.xnor_conv2d_fuses_layer = True
