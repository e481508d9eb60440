"""The cpu backend's direct convolutions, and the rule that picks them over im2col + BLAS.

conv2d (groups = 1) and its two gradients run either as im2col + BLAS GEMMs + col2im
(gpumat/conv.py's lowering) or as the native module's direct kernels
(kernels/cpu/direct_conv.hpp): no column matrix, vectorised for the CPU's instruction set
(AVX-512, AVX2 + FMA or SSE2, picked at run time), split over the batch on a pool of threads
that sleep between calls.  ``conv2d_direct`` and its gradient twins return None where the
direct kernel should not run -- no native module (after the usual NativeFallbackWarning), or a
layer that BLAS does faster -- and gpumat/conv.py then lowers as before.

Environment (read once, at the first call): GPUMAT_NUM_THREADS (else OMP_NUM_THREADS, else
the usable CPUs) sets the pool's threads; GPUMAT_CPU_ISA=baseline|avx2|avx512 caps the
instruction set (``kernels().set_direct_conv_isa`` at run time); GPUMAT_POOL_LINGER_US (default
500) is how long a worker watches for the next pass before it sleeps -- 0 for a machine
shared with other busy processes.  ``kernels().native_threads()`` and
``kernels().direct_conv_isa()`` say what is in use.
"""
from .. import native
from .cpu import CPUBackend

#: tests and benchmarks: None (the rule), True (direct whenever possible) or False (never)
FORCE = None

#: weights (out_channels * channels * kh * kw) from which a layer counts as big
BIG_LAYER = 1 << 19
#: ... and for the weight gradient
BIG_WEIGHT_GRADIENT = 1 << 17


def prefers_direct(kind, batch, channels, out_channels, kernel, out_hw, pointwise, threads):
    """Whether the direct kernel should run a pass (``kind``: forward, backward_input or
    backward_weight) of one layer rather than im2col + BLAS.

    Measured on 2 cores with AVX-512 (float32, each path in its own process so that neither
    meets the other's spinning threads), the direct kernels win 1.4-3x on every layer of
    LeNet-5 (batch 64) and ResNet-20 (32 and 128), on AlexNet's conv1 (batch 8) and on
    VGG16's third block at batch 8, and lose where this declines them:
      * 1x1 convolutions over more than 64 channels (256 -> 256 on 14 x 14: 0.8x): BLAS
        multiplies those without any im2col either;
      * one image (VGG16 at batch 1: 0.4-0.5x from conv2_1 on): the direct kernels split
        the batch over threads, BLAS splits the product; one image stays direct only for
        small layers with a real reduction (VGG16 conv1_2: 1.7x);
      * fewer than 16 output pixels per image in the forward and input passes (LeNet's
        5x5-on-5x5 conv3: 0.4x), where a vector along the pixels is mostly empty;
      * big layers with small planes: AlexNet conv3-5 (13 x 13, 0.6-0.7x), VGG16 conv4 and
        conv5 at batch 8 (0.7-0.9x); and for the weight gradient already from 128K weights
        (128 channels on 28 x 28: 0.6-1.0x) unless the planes are tiny, where BLAS's
        per-image products are the slow ones (LeNet conv3: direct 9x faster).
    """
    if FORCE is not None:
        return FORCE
    taps = channels * kernel[0] * kernel[1]
    pixels = out_hw[0] * out_hw[1]
    weights = out_channels * taps
    if pointwise:
        return channels <= 64
    if batch < 2 and threads > 1:
        return weights <= 1 << 16 and taps >= 64
    if kind == "backward_weight":
        return weights < BIG_WEIGHT_GRADIENT or pixels < 64
    return pixels >= 16 and (weights < BIG_LAYER or pixels >= 1024)


def _runs_direct(kind, batch, channels, out_channels, kernel, stride, padding, out_hw):
    """The native module when its direct kernel should run this pass, else None."""
    kernels = native.kernels()
    if kernels is None or _portable(kernels):
        return None
    pointwise = tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and not any(padding)
    if not prefers_direct(kind, batch, channels, out_channels, tuple(kernel), tuple(out_hw),
                          pointwise, kernels.native_threads()):
        return None
    return kernels


def _portable(kernels):
    """A build without vector types (neither GCC nor Clang): plain loops, slower than BLAS."""
    return FORCE is None and kernels.direct_conv_isa() == "portable"


def _conv2d_direct(self, x, w, stride, padding, dilation, out_hw, bias=None):
    """The convolution, with ``bias`` (O values, or None) added as the kernel stores its
    results: the bits of adding it afterwards, without that pass over the output."""
    kernels = _runs_direct("forward", x.shape[0], x.shape[1], w.shape[0], w.shape[2:], stride,
                           padding, out_hw)
    if kernels is None:
        return None
    shape = (x.shape[0], w.shape[0]) + tuple(out_hw)
    return self._run(lambda: kernels.conv2d_direct(x, w, stride, padding, dilation, bias),
                     shape, x.dtype)


def _conv2d_direct_backward_input(self, grad_out, w, input_shape, stride, padding, dilation):
    kernels = _runs_direct("backward_input", input_shape[0], input_shape[1], w.shape[0],
                           w.shape[2:], stride, padding, grad_out.shape[2:])
    if kernels is None:
        return None
    return self._run(lambda: kernels.conv2d_direct_backward_input(
        grad_out, w, tuple(input_shape), stride, padding, dilation), tuple(input_shape),
        grad_out.dtype)


def _conv2d_direct_backward_weight(self, grad_out, x, weight_shape, stride, padding, dilation):
    kernels = _runs_direct("backward_weight", x.shape[0], x.shape[1], weight_shape[0],
                           weight_shape[2:], stride, padding, grad_out.shape[2:])
    if kernels is None:
        return None
    return self._run(lambda: kernels.conv2d_direct_backward_weight(
        grad_out, x, tuple(weight_shape[2:]), stride, padding, dilation), tuple(weight_shape),
        grad_out.dtype)


CPUBackend.conv2d_direct = _conv2d_direct
CPUBackend.conv2d_direct_backward_input = _conv2d_direct_backward_input
CPUBackend.conv2d_direct_backward_weight = _conv2d_direct_backward_weight
