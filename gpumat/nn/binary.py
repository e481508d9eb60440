"""Binarized layers: ``BinaryConv2d`` and ``BinaryLinear`` with the three schemes compared in
the Warsaw thesis, trained through straight-through estimators and run on packed bits
(XNOR-popcount kernels) in inference.

    conv = nn.BinaryConv2d(64, 128, 3, padding=1, mode="xnor")
    y = conv(x)                         # training: float ops, STE gradients
    conv.eval()
    with nn.no_grad():
        y = conv(x)                     # inference: packed signs, gm.xnor_conv2d

Modes (``b(v) = +1 if v >= 0 else -1``, zero maps to +1 as the kernels' bit packing does):

* ``"bwn"`` (binary-weight networks, BinaryConnect / XNOR-Net's weights): W' = b(W) * alpha
  with alpha = mean |W| per output filter (over in x kh x kw); the input stays float.
* ``"dorefa"``: the same with one alpha = mean |W| over the whole weight (DoReFa-Net's 1-bit
  weights).
* ``"xnor"``: binary weights and activations (XNOR-Net):
  out = conv(b(x), b(W)) * K * alpha, where A = mean over channels of |x| and K is A
  averaged over each kernel window (a kh x kw box filter with the convolution's stride and
  padding, zeros counted): one channel mean, then one box filter, no per-window sums.  For
  ``BinaryLinear`` K is mean |x| per sample.  alpha is per output filter, as in "bwn".  The
  product runs on the +-1 values and is scaled afterwards, in training as in inference:
  its sums are then exact integers, as the packed kernels' are, so an output whose sum is 0
  is exactly 0 on both paths and the next binary layer sees the same signs.

Gradients (``Function`` s written once on gpumat ops, so training runs on every backend):

* the activation sign uses the straight-through estimator of hard-tanh: the gradient passes
  where |x| <= 1 and is 0 elsewhere; ``approx_sign=True`` uses Bi-Real Net's ApproxSign
  instead, 2 - 2|x| for |x| <= 1 and 0 elsewhere (it shapes only the activation sign, so it
  needs ``mode="xnor"``);
* the weights: the gradient reaches the latent real-valued weights (which the optimizer
  updates) through the same clipped STE for b(W), as in XNOR-Net's update rule;
* alpha and K are treated as the differentiable functions of W and x they are and carry
  their exact gradients: d alpha / dW_i = b(W_i) / n, d|x| / dx = sign(x).  So, with g the
  gradient reaching the effective weight b(W) * alpha, a weight's gradient is
  g_i * alpha * [|W_i| <= 1] + b(W_i) * mean_j(g_j * b(W_j)) over its filter (all of W for
  "dorefa").

Inference.  In ``eval()`` mode, when no gradient is being recorded (``no_grad()``, as
``nn.evaluate`` and ``nn.summary`` run; an eval-mode forward that records a graph, e.g. to
fine-tune with frozen batch norm, takes the training path, which computes the same values):

* ``"xnor"`` packs the input's signs (``gm.pack_conv_input``, which also gives the channel
  mean of |x| in the same pass -- for the linear layer, of each sample's row) and runs
  ``gm.xnor_conv2d`` / ``gm.xnor_gemm`` on the cached packed weight, which scale by K and
  alpha and add the bias as they make their results (the training forward's operations in
  its order): a linear layer is two calls, packing and the product.
  The convolution layer is one call (``gm.xnor_conv2d(x, ..., pixel_scale="window_mean")``:
  packing, the channel means, K and the products; on cpu in one native parallel pass, on
  OpenCL and CUDA in two launches); K there sums the window in tap order where training's
  box-filter convolution has its own order, so the two agree to float32 rounding of K.
  ``conv(x, batch_norm=bn, residual=r)`` (= conv(bn(x)) + r; the XNOR ResNet blocks and
  LeNets call their layers so) also folds the batch norm in front into that call's packing
  and adds r as its results are stored, bit for bit the separate operations;
  ``linear(x, batch_norm=bn)`` likewise folds a BatchNorm1d into the packing of its rows
  (``gm.pack_conv_input(..., batch_norm=...)``).  Neither folds inside ``nn.summary``'s
  trace, which lists the batch norms as written;
* ``"bwn"`` / ``"dorefa"`` keep the float input, so they run the float convolution / product
  with the cached b(W) * alpha (the packed path needs binary activations).

The cache (packed weight, alpha) is built by the first inference call and rebuilt when the
weight's Array changes (``load_state_dict``, ``to``, an out-of-place update), when its
buffer is written in place (an optimizer step, ``weight.data[...] = v``: the storage's
version counts such writes), and after any forward that took the training path.  Only a
write that bypasses gpumat (into the backend's buffer itself) goes unseen: call
``clear_cache()`` after one.  Double-precision data have no packed kernels: their inference
runs the float ops on the cached binarized weight.

Plans.  An "xnor" layer's inference call also leaves a plan: the backend call it made, with
its arguments checked.  The next call makes that call again directly where nothing it was
made from changed (eval mode, no graph, no summary trace, the same batch norm module, an
input of the same shape, dtype and backend, every weight, bias and statistics Array the same
one with the same buffer -- values written into them in place are read, and a weight
written in place rebuilds the cache),
and otherwise takes the full path, which makes a new plan.  At batch 1 that halves the
Python around each kernel (ResNet-20's binary convolutions: 24 -> 15 us a call on cpu).

Serialization.  ``nn.save`` stores a binary layer's weight bit-packed: ``weight_bits``
(uint32 words, bit j of word w = [W[o, 32 w + j] >= 0] over each filter's in x kh x kw values
flattened, the layout of ``gm.pack_signs``) and ``weight_alpha`` (float32, one per filter, or
one for "dorefa"), about 32 times smaller than float, with ``weight_shape`` (the latent
weight's shape: the bits alone fit every weight with as many words a filter, 33 x 3 x 3 as
well as 34 x 3 x 3).  ``nn.load_into`` checks the shape (files without one: the word count)
and restores the latent weight W = b * alpha, whose signs and mean |W| (so whose inference
outputs) are those saved; what does not fit is a CheckpointError naming the file and layer.
Checkpoints (``save_checkpoint``) keep the full-precision latent weights, so resuming
training is exact.  A file holding a float ``weight`` (a float model's, PyTorch's) loads as
it is.
"""
import math

import numpy as np

import gpumat as gm

from ..array import Array
from ..binary import (_batch_norm_natives, _float_operand, _xnor_conv2d_call, window_box,
                      window_mean)
from ..errors import ShapeError
from ..memory import outlive_scopes
from . import functional as F
from .serialization import CheckpointError
from .autograd import Function, Variable, is_grad_enabled
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear

__all__ = ["BinaryConv2d", "BinaryLinear", "MODES", "binary_sign", "binarize_weight",
           "weight_scale", "channel_mean_abs", "sign", "pack_sign_bits",
           "unpack_sign_bits"]

MODES = ("bwn", "dorefa", "xnor")
_FLOAT32 = np.dtype(np.float32)


def is_tracing():
    """nn.summary.is_tracing, imported on the first call (summary imports this module), which
    rebinds this name to it."""
    global is_tracing
    from .summary import is_tracing
    return is_tracing()


def sign(x):
    """b(x) = +1 where x >= 0, else -1, in x's dtype (an Array; no gradient)."""
    return (x >= 0).astype(x.dtype) * 2 - 1


# ---- the differentiable pieces ----------------------------------------------------------------

class BinarySign(Function):
    """b(x) forward; the hard-tanh straight-through estimator (or ApproxSign) backward."""

    def __init__(self, approx):
        self.approx = approx

    def forward(self, x):
        if self.recording:
            self.x = x
        return sign(x)

    def backward(self, grad):
        magnitude = gm.abs(self.x)
        if self.approx:                 # Bi-Real Net: d/dx of the piecewise quadratic
            return grad * gm.maximum(2 - 2 * magnitude, 0)
        return grad * (magnitude <= 1)


def binary_sign(x, approx_sign=False):
    """b(x) with a straight-through gradient: passed where |x| <= 1 (``approx_sign``: scaled
    by 2 - 2|x| there, Bi-Real Net's ApproxSign)."""
    return BinarySign.apply(x, approx=bool(approx_sign))


class BinarizeWeight(Function):
    """W' = b(W) * alpha, alpha = mean |W| per output filter (axis 0) or over all of W."""

    def __init__(self, per_filter):
        self.per_filter = per_filter

    def forward(self, w):
        flat = w.reshape(w.shape[0] if self.per_filter else 1, -1)
        signs = sign(flat)
        alpha = gm.abs(flat).mean(axis=1, keepdims=True)
        if self.recording:
            self.flat, self.signs, self.alpha, self.shape = flat, signs, alpha, w.shape
        return (signs * alpha).reshape(w.shape)

    def backward(self, grad):
        g = grad.reshape(self.flat.shape)
        through_sign = g * self.alpha * (gm.abs(self.flat) <= 1)
        through_alpha = self.signs * (g * self.signs).mean(axis=1, keepdims=True)
        return (through_sign + through_alpha).reshape(self.shape)


def binarize_weight(weight, per_filter=True):
    """b(W) * mean|W| (per output filter, or one mean over all of W), differentiable: the
    clipped STE through b and the exact gradient through the mean."""
    return BinarizeWeight.apply(weight, per_filter=bool(per_filter))


class WeightScale(Function):
    """alpha = mean |W| per output filter (a vector of out) or over all of W (one value)."""

    def __init__(self, per_filter):
        self.per_filter = per_filter

    def forward(self, w):
        flat = w.reshape(w.shape[0] if self.per_filter else 1, -1)
        if self.recording:
            self.flat, self.shape = flat, w.shape
        return gm.abs(flat).mean(axis=1)

    def backward(self, grad):
        n = self.flat.shape[1]
        return (sign(self.flat) * (grad.reshape(-1, 1) * (1.0 / n))).reshape(self.shape)


def weight_scale(weight, per_filter=True):
    """alpha = mean |W| per output filter (or over all of W), with its exact gradient."""
    return WeightScale.apply(weight, per_filter=bool(per_filter))


class ChannelMeanAbs(Function):
    """A = mean over axis 1 of |x| (kept as a size-1 axis): XNOR-Net's A for a convolution,
    its K for a fully connected layer."""

    def forward(self, x):
        if self.recording:
            self.x = x
        return gm.abs(x).mean(axis=1, keepdims=True)

    def backward(self, grad):
        return grad * gm.sign(self.x) * (1.0 / self.x.shape[1])


def channel_mean_abs(x):
    """mean over channels (axis 1) of |x|, keeping the axis, with its exact gradient."""
    return ChannelMeanAbs.apply(x)


def _window_mean(a, kernel, stride, padding, differentiable):
    """K: the mean of ``a`` (N x 1 x H x W) over each kernel window, zeros of the padding
    counted, on the convolution's output grid: a one-channel convolution with a box filter
    (average pooling with count_include_pad gives the same, but its kernels are built for
    small windows: on the cpu backend the convolution is 1.5-4x faster at these shapes)."""
    if differentiable:
        return F.conv2d(a, window_box(kernel, a.data if isinstance(a, Variable) else a), None,
                        stride, padding)
    return window_mean(a, kernel, stride, padding)


# ---- the layers ---------------------------------------------------------------------------------

def _check_mode(mode, approx_sign, owner):
    if mode not in MODES:
        raise ValueError(f"{owner}: mode must be one of {', '.join(map(repr, MODES))}, got "
                         f"{mode!r}")
    if approx_sign and mode != "xnor":
        raise ValueError(f"{owner}: approx_sign shapes the gradient of the activations' sign, "
                         f"which only mode='xnor' binarizes (got mode={mode!r})")
    return mode


class _Binary:
    """What both binary layers share: the mode, the inference cache and the bit-packed
    serialization hooks.  Mixed into Conv2d and Linear, whose parameters they keep."""

    mode = "xnor"
    approx_sign = False

    # ---- helpers of both paths
    @property
    def per_filter(self):
        return self.mode != "dorefa"

    def _binary_weight(self):
        return binarize_weight(self.weight, self.per_filter)

    def _signs_and_scale(self, x):
        """(b(x), b(W), alpha) for "xnor", differentiable.  The product runs on the +-1
        values, whose sums are exact integers in floating point (as the packed kernels'),
        and is scaled afterwards: an output whose sum is 0 is exactly 0 on either path, so
        the next layer's signs agree between training and inference."""
        return (binary_sign(x, self.approx_sign), binary_sign(self.weight),
                weight_scale(self.weight, self.per_filter))

    def _records(self, x):
        """Whether a forward on ``x`` would record a graph (then it takes the training
        path, which is differentiable)."""
        if not is_grad_enabled():
            return False
        return any(isinstance(v, Variable) and v.requires_grad
                   for v in (x, self.weight, self.bias))

    #: the batch norm a forward's ``batch_norm`` may fold into this layer's packing in
    #: inference, and the input's rank it then takes (BinaryConv2d: 2d on N x C x H x W)
    _folded_norm, _folded_ndim = BatchNorm2d, 4

    def _folds(self, batch_norm, x):
        """Whether batch_norm(x) can run inside this layer's inference call (forward's
        ``batch_norm``; forward asks only where this layer infers, see _inference): xnor
        packed kernels on float32 input of the layer's rank, the batch norm of its kind over
        x's channels (axis 1) in eval mode with running statistics, nothing that would
        record a graph (with gradients enabled, neither layer's parameters need one), and
        not inside nn.summary's trace (which lists the layers as written)."""
        data = x.data if isinstance(x, Variable) else x
        if (self.mode != "xnor" or not isinstance(batch_norm, self._folded_norm)
                or batch_norm.training or batch_norm.running_mean is None
                or not isinstance(data, gm.Array) or data.dtype != np.float32
                or data.ndim != self._folded_ndim or data.shape[1] != batch_norm.num_features
                or is_tracing()):
            return False
        if is_grad_enabled() and any(isinstance(p, Variable) and p.requires_grad
                                     for p in (batch_norm.weight, batch_norm.bias)):
            return False
        return self._cached()["packed"] is not None

    def _fold_or_apply(self, x, batch_norm):
        """forward's (x, batch_norm, inference): ``batch_norm`` kept for this layer's
        inference call where it folds into it, else applied to x here (and None)."""
        inference = self._inference(x)
        if batch_norm is not None and not (inference and self._folds(batch_norm, x)):
            x = batch_norm(x)
            batch_norm = None
            inference = self._inference(x)
        return x, batch_norm, inference

    @staticmethod
    def _statistics(batch_norm):
        """The (running_mean, running_var, weight, bias, eps) a folded batch norm hands the
        packing (straight from the module's tables: this runs on every inference call)."""
        parameters, buffers = batch_norm._parameters, batch_norm._buffers
        weight, shift = parameters["weight"], parameters["bias"]
        return (buffers["running_mean"], buffers["running_var"],
                None if weight is None else weight.data, None if shift is None else shift.data,
                batch_norm.eps)

    def _inference(self, x):
        """Whether this call runs the inference path (eval mode, nothing recorded)."""
        if self.training or self._records(x):
            self.clear_cache()
            return False
        return True

    def clear_cache(self):
        """Drop the cached inference weights (rebuilt on the next inference call), and the
        inference plan made from them."""
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_plan", None)

    def _cached(self):
        """The inference weights for the weight as it is now: ``weight`` (b(W) * alpha for
        bwn/dorefa, b(W) for xnor), ``alpha`` and ``packed`` (the packed signs, or None);
        rebuilt when the weight's Array (or its storage) is not the one they were made from."""
        data = self.weight.data
        cache = self.__dict__.get("_cache")
        if (cache is not None and cache["data"] is data and cache["native"] is data._native
                and cache["version"] == data._storage.version):
            return cache
        o = data.shape[0]
        flat = data.reshape(o if self.per_filter else 1, -1)
        alpha = gm.abs(flat).mean(axis=1, keepdims=True)                # o x 1 or 1 x 1
        signs = sign(flat)
        packed = self._packed_kernels(data)
        cache = {"data": data, "native": data._native, "version": data._storage.version,
                 "alpha": alpha.reshape(-1),
                 # bwn/dorefa: b(W) * alpha; xnor: b(W), scaled after the product
                 "weight": signs.reshape(data.shape) if self.mode == "xnor"
                 else (signs * alpha).reshape(data.shape),
                 "packed": self._pack_weight(data) if packed else None}
        outlive_scopes(cache["alpha"], cache["weight"], cache["packed"])
        object.__setattr__(self, "_cache", cache)
        return cache

    def _packed_kernels(self, data):
        raise NotImplementedError

    # ---- nn.save / nn.load_into hooks (see gpumat.nn.serialization)
    def _save_arrays(self, arrays):
        weight = arrays.pop("weight", None)
        if weight is None:
            return arrays
        flat = np.asarray(weight, np.float64).reshape(weight.shape[0], -1)
        alpha = np.abs(flat).mean(axis=1) if self.per_filter else np.abs(flat).mean().reshape(1)
        out = {"weight_bits": pack_sign_bits(flat),
               "weight_alpha": alpha.astype(np.float32),
               "weight_shape": np.asarray(weight.shape, np.int64)}
        out.update(arrays)
        return out

    def _load_arrays(self, arrays):
        if "weight_bits" not in arrays:
            return arrays               # a float weight (a float model's file, PyTorch's)
        name = type(self).__name__
        if "weight_alpha" not in arrays:
            raise CheckpointError(f"{name}: the file holds weight_bits but no weight_alpha (a "
                                  f"bit-packed weight needs its scale)")
        bits = np.asarray(arrays.pop("weight_bits"))
        alpha = np.asarray(arrays.pop("weight_alpha"), np.float32).reshape(-1, 1)
        saved = arrays.pop("weight_shape", None)
        shape = tuple(self.weight.shape)
        text = "x".join(map(str, shape))
        if saved is not None and tuple(int(v) for v in np.asarray(saved).ravel()) != shape:
            # (the bits alone cannot tell a 33 x 3 x 3 filter from a 34 x 3 x 3 one: both
            # are 10 words)
            raise CheckpointError(f"{name}: the file's bit-packed weight is "
                                  f"{'x'.join(str(int(v)) for v in np.asarray(saved).ravel())} "
                                  f"but the layer's is {text}")
        count = math.prod(shape[1:])
        words = -(-count // 32)
        if bits.dtype != np.uint32 or bits.shape != (shape[0], words):
            raise CheckpointError(f"{name}: weight_bits of a {text} weight must be uint32 of "
                                  f"shape ({shape[0]}, {words}), got {bits.dtype} {bits.shape}")
        if alpha.shape[0] not in (1, shape[0]):
            raise CheckpointError(f"{name}: weight_alpha must hold 1 or {shape[0]} values, got "
                                  f"{alpha.shape[0]}")
        if not np.all(alpha >= 0) or not np.all(np.isfinite(alpha)):
            raise CheckpointError(f"{name}: weight_alpha (mean |W|) must be finite and >= 0, "
                                  f"got {alpha.ravel()[:8]}")
        signs = unpack_sign_bits(bits, count)
        weight = (signs * alpha).reshape(shape).astype(self.weight.dtype)
        return dict(arrays, weight=weight)

    # ---- nn.summary
    def _parameter_bits(self):
        """Bits of this layer's own parameters in a deployed model: 1 per weight plus a
        32-bit alpha per filter (one for "dorefa"), the bias at its float width."""
        alphas = self.weight.shape[0] if self.per_filter else 1
        bits = {"weight": self.weight.size + 32 * alphas}
        if self.bias is not None:
            bits["bias"] = self.bias.size * self.bias.dtype.itemsize * 8
        return bits


def pack_sign_bits(flat):
    """Host packing of a 2-d array's signs along its last axis into uint32 words, as
    ``gm.pack_signs`` lays them out: bit j of word w is 1 where flat[:, 32 w + j] >= 0."""
    flat = np.asarray(flat)
    rows, count = flat.shape
    words = -(-count // 32)
    bits = np.zeros((rows, words * 32), np.bool_)
    bits[:, :count] = flat >= 0
    packed = np.packbits(bits, axis=1, bitorder="little")             # rows x 4 words bytes
    return packed.view("<u4").astype(np.uint32).reshape(rows, words)


def unpack_sign_bits(packed, count):
    """The +-1 (float32) values of ``count`` signs per row packed by ``pack_sign_bits``."""
    packed = np.ascontiguousarray(np.asarray(packed, np.uint32).astype("<u4"))
    bits = np.unpackbits(packed.view(np.uint8), axis=1, bitorder="little")[:, :count]
    return bits.astype(np.float32) * 2 - 1


class _Plan:
    """A binary layer's last fused inference call, kept to be made again without the layer's
    and the gm functions' Python checks: at batch 1 those took about as long as the kernels
    (13 of 24 us a convolution in ResNet-20).  ``input`` tells whether nothing the plan was
    made from changed -- the layer still in eval mode with no graph recorded and no summary
    traced, the same batch norm module (still in eval mode, the same eps), an input of the
    same shape, dtype and backend, and every Array the call reads (the layer's weight, whose
    cache holds the packed signs and alpha, its bias, the batch norm's statistics and affine
    parameters) still the same Array with the same buffer; where something did, forward takes
    its full path (which makes a new plan).  So a plan sees what the weight cache sees:
    values written in place into those buffers are read at the call, and the layer's
    ``clear_cache()`` drops the plan with the cache."""

    __slots__ = ("backend", "shape", "cache", "batch_norm", "eps", "watched", "geometry")

    def __init__(self, layer, backend, shape, batch_norm):
        self.backend, self.shape = backend, shape
        self.cache = layer.__dict__["_cache"]
        self.batch_norm = batch_norm
        self.eps = None if batch_norm is None else batch_norm.eps
        self.watched = tuple((a, None if a is None else a._native)
                             for a in self._current(layer, batch_norm))
        self.geometry = self._geometry(layer)

    @staticmethod
    def _geometry(layer):
        return None

    @staticmethod
    def _current(layer, batch_norm):
        """Every Array the call reads but its input (and a residual), as the modules hold
        them now (None where a parameter is absent)."""
        parameters = layer._parameters
        bias = parameters.get("bias")
        arrays = [parameters["weight"].data, None if bias is None else bias.data]
        if batch_norm is not None:
            arrays += _Binary._statistics(batch_norm)[:4]
        return arrays

    def input(self, layer, x, batch_norm):
        """x's native where the plan still holds for this call, else None."""
        cache = self.cache
        if (layer.training or batch_norm is not self.batch_norm or layer.mode != "xnor"
                or is_grad_enabled() or layer.__dict__["_cache"] is not cache
                or cache["version"] != cache["data"]._storage.version or is_tracing()):
            return None
        if batch_norm is not None and (batch_norm.training or batch_norm.eps != self.eps):
            return None
        data = x.data if type(x) is Variable else x
        if type(data) is not Array:
            return None
        xn = data._native
        if (xn is None or data._storage.backend is not self.backend or xn.shape != self.shape
                or xn.dtype != _FLOAT32):
            return None
        for (array, native), current in zip(self.watched, self._current(layer, batch_norm)):
            if current is not array or (array is not None and array._native is not native):
                return None
        if self.geometry is not None and self.geometry != self._geometry(layer):
            return None
        return xn


class _ConvPlan(_Plan):
    """BinaryConv2d's plan: gm.xnor_conv2d's backend call with its checked arguments (a
    residual, where the call had one, of the output's shape each time)."""

    __slots__ = ("arguments", "natives", "residual_shape")

    def __init__(self, layer, batch_norm, call):
        backend, arguments, natives = call
        super().__init__(layer, backend, arguments[0].shape, batch_norm)
        natives = dict(natives)
        residual = natives.pop("residual", None)
        self.residual_shape = None if residual is None else residual.shape
        self.arguments = arguments[1:]
        self.natives = natives

    @staticmethod
    def _geometry(layer):
        return (layer.stride, layer.padding)

    def run(self, layer, x, batch_norm, residual):
        """forward(x, batch_norm, residual) by the plan, or None where it does not hold."""
        xn = self.input(layer, x, batch_norm)
        if xn is None:
            return None
        if residual is None:
            if self.residual_shape is not None:
                return None
            out = self.backend.xnor_conv2d(xn, *self.arguments, **self.natives)
        else:
            r = residual.data if type(residual) is Variable else residual
            if type(r) is not Array or self.residual_shape is None:
                return None
            rn = r._native
            if (rn is None or r._storage.backend is not self.backend
                    or rn.shape != self.residual_shape or rn.dtype != _FLOAT32):
                return None
            out = self.backend.xnor_conv2d(xn, *self.arguments, residual=rn, **self.natives)
        return Variable._make(Array._wrap(self.backend, out), False)


class _LinearPlan(_Plan):
    """BinaryLinear's plan: gm.pack_conv_input's and gm.xnor_gemm's backend calls with their
    checked arguments (the rows packed as N x C x 1 x 1 images with K = mean |x| per row,
    then the scaled product), as _infer makes them."""

    __slots__ = ("features", "words", "packed", "bn", "factors")

    def __init__(self, layer, backend, shape, batch_norm, bn, packed, factors):
        super().__init__(layer, backend, shape, batch_norm)
        self.features = shape[1]
        self.words = packed.shape[1]
        self.packed, self.bn, self.factors = packed, bn, factors

    def run(self, layer, x, batch_norm):
        """forward(x, batch_norm) by the plan, or None where it does not hold."""
        xn = self.input(layer, x, batch_norm)
        if xn is None:
            return None
        backend, n = self.backend, xn.shape[0]
        signs, mean = backend.pack_conv_input(backend.reshape(xn, (n, self.features, 1, 1)),
                                              mean_abs=True, bn=self.bn)
        owned = Array._wrap(backend, signs), Array._wrap(backend, mean)   # freed as results
        out = backend.xnor_gemm(backend.reshape(signs, (n, self.words)), self.packed,
                                self.features, _FLOAT32, row_scale=backend.reshape(mean, (n,)),
                                **self.factors)
        del owned
        return Variable._make(Array._wrap(backend, out), False)


class BinaryConv2d(_Binary, Conv2d):
    """A 2-d convolution with binary weights ("bwn", "dorefa") or binary weights and inputs
    ("xnor"); see the module docstring for the maths.  ``weight`` (out x in x kh x kw) and
    ``bias`` are named and laid out as Conv2d's (and torch's), so state_dicts interchange
    with a float model of the same shapes: the weight is the latent real-valued one.  No
    dilation or groups."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False,
                 mode="xnor", approx_sign=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, bias=bias)
        self.mode = _check_mode(mode, approx_sign, "BinaryConv2d")
        self.approx_sign = bool(approx_sign)
        self.clear_cache()

    def forward(self, x, batch_norm=None, residual=None):
        """This layer on ``x``, or on ``batch_norm(x)`` where a BatchNorm2d is given, plus
        ``residual`` (of the output's shape) where given: the same values as the separate
        calls, conv(bn(x)) + residual.  In inference (eval mode, the batch norm too and with
        running statistics, nothing recorded) an "xnor" layer runs all of it in one
        gm.xnor_conv2d call: the normalization folded into its packing pass, the residual
        added as its results are stored -- XNOR-Net's BatchNorm -> BinActiv -> BinConv and a
        residual block's addition, without writing the normalized input or the sum's
        operand out."""
        plan = self.__dict__.get("_plan")
        if plan is not None:
            y = plan.run(self, x, batch_norm, residual)
            if y is not None:
                return y
        x, batch_norm, inference = self._fold_or_apply(x, batch_norm)
        if inference:
            data = x.data if isinstance(x, Variable) else x
            added = residual.data if isinstance(residual, Variable) else residual
            if residual is None or self._records(residual) or not self._fits(added, data):
                # (a residual that broadcasts, of another dtype or a number is added after,
                # as in training)
                y = Variable._make(self._infer(data, batch_norm), False)
                return y if residual is None else y + residual
            return Variable._make(self._infer(data, batch_norm, added), False)
        y = self._training_forward(x)
        return y if residual is None else y + residual

    def _fits(self, residual, x):
        """Whether ``residual`` is a float32 Array on x's backend of exactly this layer's
        output shape for x: the residual its inference call adds as it stores."""
        if (type(residual) is not Array or type(x) is not Array or x.ndim != 4
                or residual.dtype != np.float32 or residual._backend is not x._backend):
            return False
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return residual.shape == (n, self.out_channels, (h + 2 * ph - kh) // sh + 1,
                                  (w + 2 * pw - kw) // sw + 1)

    def _training_forward(self, x):
        if self.mode != "xnor":
            return F.conv2d(x, self._binary_weight(), self.bias, self.stride, self.padding)
        x_signs, w_signs, alpha = self._signs_and_scale(x)
        y = F.conv2d(x_signs, w_signs, None, self.stride, self.padding)
        k = _window_mean(channel_mean_abs(x), self.kernel_size, self.stride, self.padding,
                         differentiable=True)
        y = y * k * alpha.reshape(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y

    def _packed_kernels(self, data):
        return self.mode == "xnor" and data.dtype == np.float32

    def _pack_weight(self, data):
        return gm.pack_conv_weight(data)

    def _infer(self, x, batch_norm=None, residual=None):
        """The inference output for Array x (batch_norm: a BatchNorm2d that forward checked
        with _folds, or None; residual: an Array added to the result, or None)."""
        if x.ndim != 4:
            raise ShapeError(f"BinaryConv2d: the input must be N x C x H x W, got {x.shape}")
        if x.shape[1] != self.in_channels:
            # (the packed weight holds ceil(C / 32) words a tap: the kernels cannot tell 33
            # channels from 40)
            raise ShapeError(f"BinaryConv2d: x has {x.shape[1]} channels but the layer takes "
                             f"{self.in_channels} (in_channels)")
        cache = self._cached()
        bias = self.bias
        if bias is not None:
            bias = bias.data
        if self.mode == "xnor" and cache["packed"] is not None and x.dtype == np.float32:
            # x's signs packed with its channel mean |x| taken in the same pass (of the batch
            # norm's output where one is folded in), K made from that, and the kernel scaling
            # by K and alpha, adding the bias and the residual as it stores (the training
            # path's order of operations): one call (cpu: one native pass; OpenCL, CUDA:
            # two launches)
            statistics = None if batch_norm is None else self._statistics(batch_norm)
            y = gm.xnor_conv2d(x, cache["packed"], stride=self.stride, padding=self.padding,
                               pixel_scale="window_mean", filter_scale=cache["alpha"],
                               bias=bias, batch_norm=statistics, residual=residual)
            if not is_grad_enabled() and not is_tracing():
                # the next calls make the same backend call through _ConvPlan (forward)
                call = _xnor_conv2d_call(x, cache["packed"], self.stride, self.padding, None,
                                         "float32", "window_mean", cache["alpha"], bias,
                                         statistics, residual)
                if call is not None:
                    object.__setattr__(self, "_plan", _ConvPlan(self, batch_norm, call))
            return y
        y = self._infer_unpacked(x, cache, bias)
        return y if residual is None else y + residual

    def _infer_unpacked(self, x, cache, bias):
        """bwn / dorefa (float input), and xnor on double data: float operations on the
        cached binarized weight."""
        if self.mode != "xnor":
            return gm.conv2d(x, cache["weight"], bias, stride=self.stride, padding=self.padding)
        k = _window_mean(gm.abs(x).mean(axis=1, keepdims=True), self.kernel_size, self.stride,
                         self.padding, differentiable=False)
        y = gm.conv2d(sign(x), cache["weight"], None, stride=self.stride, padding=self.padding)
        y = y * k * cache["alpha"].reshape(1, -1, 1, 1)
        return y if bias is None else y + bias.reshape(1, -1, 1, 1)

    def extra_repr(self):
        text = super().extra_repr() + f", mode={self.mode!r}"
        return text + (", approx_sign=True" if self.approx_sign else "")


class BinaryLinear(_Binary, Linear):
    """A fully connected layer with binary weights ("bwn", "dorefa") or binary weights and
    inputs ("xnor", K = mean |x| per sample); ``weight`` is out x in as Linear's."""

    def __init__(self, in_features, out_features, bias=False, mode="xnor", approx_sign=False):
        super().__init__(in_features, out_features, bias=bias)
        self.mode = _check_mode(mode, approx_sign, "BinaryLinear")
        self.approx_sign = bool(approx_sign)
        self.clear_cache()

    _folded_norm, _folded_ndim = BatchNorm1d, 2

    def forward(self, x, batch_norm=None):
        """This layer on ``x``, or on ``batch_norm(x)`` where a BatchNorm1d is given: the same
        values as the two calls.  In inference (eval mode, the batch norm too and with
        running statistics, nothing recorded) an "xnor" layer folds the normalization into
        the packing of its input (XNOR-Net's BatchNorm -> BinActiv -> BinLinear without
        writing the normalized input out)."""
        plan = self.__dict__.get("_plan")
        if plan is not None:
            y = plan.run(self, x, batch_norm)
            if y is not None:
                return y
        x, batch_norm, inference = self._fold_or_apply(x, batch_norm)
        if inference:
            return Variable._make(self._infer(x.data if isinstance(x, Variable) else x,
                                              batch_norm), False)
        if self.mode != "xnor":
            return F.linear(x, self._binary_weight(), self.bias)
        x_signs, w_signs, alpha = self._signs_and_scale(x)
        y = F.linear(x_signs, w_signs) * channel_mean_abs(x) * alpha
        return y if self.bias is None else y + self.bias

    def _packed_kernels(self, data):
        return self.mode == "xnor" and data.dtype == np.float32

    def _pack_weight(self, data):
        return gm.pack_signs(data)

    def _infer(self, x, batch_norm=None):
        """The inference output for Array x (batch_norm: a BatchNorm1d that forward checked
        with _folds, or None)."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ShapeError(f"BinaryLinear: the input must be N x {self.in_features}, got "
                             f"{x.shape}")
        cache = self._cached()
        bias = None if self.bias is None else self.bias.data
        if self.mode != "xnor":
            y = F.linear(x, cache["weight"], bias).data
            return y
        if cache["packed"] is not None and x.dtype == np.float32:
            # the signs packed with K = mean |x| per sample taken in the same pass (each
            # sample a 1 x 1 image of in_features channels; of the batch norm's output where
            # one is folded in), then the products scaled by K and alpha, and the bias added,
            # as they are made (the training path's order)
            n = x.shape[0]
            statistics = None if batch_norm is None else self._statistics(batch_norm)
            packed, k = gm.pack_conv_input(x.reshape(n, self.in_features, 1, 1),
                                           mean_abs=True, batch_norm=statistics)
            y = gm.xnor_gemm(packed.reshape(n, packed.shape[3]), cache["packed"],
                             self.in_features, dtype="float32", row_scale=k.reshape(n),
                             col_scale=cache["alpha"], bias=bias)
            self._plan_from(x, batch_norm, statistics, cache, bias)
            return y
        k = gm.abs(x).mean(axis=1, keepdims=True)
        y = F.linear(sign(x), cache["weight"]).data
        y = y * k * cache["alpha"].reshape(1, -1)
        return y if bias is None else y + bias

    def _plan_from(self, x, batch_norm, statistics, cache, bias):
        """Keep this call's arguments as the layer's plan (_LinearPlan) where no graph is
        recorded and no summary traced, and the short argument paths took them all."""
        if is_grad_enabled() or is_tracing():
            return
        backend = x._storage.backend
        bn = None
        if statistics is not None:
            bn = _batch_norm_natives(statistics, backend, self.in_features)
            if bn is None:
                return
        packed = cache["packed"]
        factors = {"col_scale": _float_operand(cache["alpha"], backend, (packed.shape[0],))}
        if bias is not None:
            factors["bias"] = _float_operand(bias, backend, (packed.shape[0],))
        if (packed._native is None or packed._storage.backend is not backend
                or any(v is None for v in factors.values())):
            return
        object.__setattr__(self, "_plan", _LinearPlan(self, backend, x._native.shape,
                                                      batch_norm, bn, packed._native, factors))

    def extra_repr(self):
        text = super().extra_repr() + f", mode={self.mode!r}"
        return text + (", approx_sign=True" if self.approx_sign else "")
