"""Launch arithmetic shared by the OpenCL and CUDA XNOR launchers (opencl_xnor.py,
cuda_xnor.py), whose kernels are one source, kernels/common/xnor.h: how much a launch pads
its work, how xnor_gemm runs as a 1 x 1 convolution of one image, the flags of the
packing kernel and of the convolution's epilogue, and the launches before the convolution
in a whole layer's call."""
import numpy as np

#: xnor_pack_conv_input_fused's flags (kernels/common/xnor.h)
PACK_MEAN, PACK_AFFINE, PACK_WEIGHT, PACK_BIAS = 1, 2, 4, 8


def pack_flags(mean, bn):
    """(flags, (mean, bn_mean, inv_std, bn_weight, bn_bias)) of xnor_pack_conv_input_fused
    for the mean output ``mean`` (or None) and the batch norm ``bn`` = (mean, inv_std,
    weight, bias) (or None; weight and bias may be None): absent operands are None."""
    flags = PACK_MEAN if mean is not None else 0
    if bn is None:
        return flags, (mean, None, None, None, None)
    bn_mean, inv_std, weight, bias = bn
    flags |= PACK_AFFINE | (PACK_WEIGHT if weight is not None else 0) | (
        PACK_BIAS if bias is not None else 0)
    return flags, (mean, bn_mean, inv_std, weight, bias)


def epilogue_factors(pixel_scale, filter_scale, bias, residual):
    """xnor_conv2d's epilogue operands with their flag bits (kernels/common/xnor.h)."""
    return ((1, pixel_scale), (2, filter_scale), (4, bias), (8, residual))


def cdiv(a, b):
    return -(-a // b)


def padded_work(pixels, filters, defines):
    """Output slots a launch over ``pixels`` x ``filters`` outputs computes: pixels in blocks
    of XNOR_WG x XNOR_PB, filters in blocks of XNOR_NV vectors of XNOR_VW (1 without)."""
    block = defines["XNOR_WG"] * defines["XNOR_PB"]
    per_item = defines["XNOR_NV"] * defines.get("XNOR_VW", 1)
    return cdiv(pixels, block) * block * cdiv(filters, per_item) * per_item


def gemm_roles(m, n, defines_for):
    """Whose rows play the filters in xnor_gemm's 1 x 1 convolution of a (m rows) and b
    (n rows), 'a' or 'b': the one that pads the launch less (ties: 'a', so the stores run
    along b's rows, the pixels).  ``defines_for(filters)`` gives a launch's defines."""
    a_filters = padded_work(n, m, defines_for(m))      # pixels = b's rows
    b_filters = padded_work(m, n, defines_for(n))      # pixels = a's rows
    return "a" if a_filters <= b_filters else "b"


def gemm_operands(a, b, m, n, roles):
    """(input, filters, pixels, filter count, output strides (image, filter, pixel)) of the
    1 x 1 convolution computing the m x n product of ``a`` and ``b`` with ``roles``."""
    if roles == "a":            # filters = a's rows, pixels = b's rows
        return b, a, n, m, (0, n, 1)
    return a, b, m, n, (0, 1, n)  # filters = b's rows, pixels = a's rows


def fold_batch_norm(backend, bn):
    """The packing kernel's batch norm operands (mean, inv_std, weight, bias) for ``bn`` =
    (mean, var, weight, bias, eps) or None, and the temporaries (inv_std) for the caller to
    free once the packing is enqueued: (None, []) without one."""
    if bn is None:
        return None, []
    mean, var, weight, bias, eps = bn
    inv_std = backend.batch_norm_inv_std(var, eps)
    return (mean, inv_std, weight, bias), [inv_std]


#: xnor_conv2d's epilogue flag (kernels/common/xnor.h) that, with the pixel-scale flag,
#: makes K inside the convolution from the channel means given as its pixel_scale
WINDOW_MEAN = 16


def layer_input(backend, x, window_mean, bn, pack):
    """The launches before the convolution in a whole XNOR-Net layer's call
    (``xnor_conv2d_fuses_layer``) from float32 ``x`` (N, C, H, W): inv_std for the batch
    norm ``bn`` = (mean, var, weight, bias, eps) or None, and the packing with that batch
    norm folded in and, with ``window_mean``, the channel means -- from which the
    convolution makes K itself (:data:`WINDOW_MEAN`): two launches a layer.  ``pack(x, out,
    mean_abs, (mean, inv_std, weight, bias) or None)`` is the backend's packing launcher and
    returns the means (or None).  Returns (packed input, the means or None, the temporaries
    for the caller to free)."""
    n, c, h, w = x.shape
    packed = backend.empty((n, h, w, cdiv(c, 32)), np.uint32)
    folded, temporaries = fold_batch_norm(backend, bn)
    temporaries.append(packed)
    means = pack(x, packed, window_mean, folded)
    if window_mean:
        temporaries.append(means)
    return packed, means if window_mean else None, temporaries
