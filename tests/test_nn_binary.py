"""Binarized layers and models (gpumat.nn.binary): forward against NumPy float64, the
straight-through gradients against the same estimators written with torch autograd, the
smooth parts (alpha, K) by finite differences, inference on packed bits equal to the training
forward, bit-packed model files, deployed sizes in nn.summary, and the binary model zoo, on
every backend."""
import argparse
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from numpy.lib.stride_tricks import sliding_window_view

import gpumat as gm
import gpumat.nn.functional as F
from gpumat import nn
from gpumat.nn import binary as B
from gpumat.nn import cli, models
from gpumat.nn.gradcheck import gradcheck
from gpumat.nn.serialization import (CheckpointError, load_checkpoint, load_into, load_state, save,
                                     save_checkpoint)

MODES = ("bwn", "dorefa", "xnor")
# (kernel, stride, padding): the box filter of K runs on avg_pool2d where the padding is at
# most half the kernel, and on a one-channel convolution otherwise (the third)
CONV_GEOMETRY = [((3, 3), 1, 1), ((3, 2), 2, 0), ((1, 1), 1, 1)]


def rng(seed=0):
    return np.random.default_rng(seed)


def on(backend, host, dtype=None, requires_grad=False):
    host = np.asarray(host)
    if dtype is not None:
        host = host.astype(dtype)
    return nn.Variable(gm.array(host, backend=backend), requires_grad=requires_grad)


def set_weights(layer, backend, weight, bias=None, dtype="float32"):
    layer.weight.data = gm.array(np.asarray(weight).astype(dtype), backend=backend)
    if bias is not None:
        layer.bias.data = gm.array(np.asarray(bias).astype(dtype), backend=backend)
    return layer


# ---- NumPy float64 references ------------------------------------------------------------------

def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def np_conv2d(x, w, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return np.einsum("nchwij,ocij->nohw", windows, w)


def np_binary_weight(w, mode):
    flat = w.reshape(w.shape[0], -1)
    alpha = np.abs(flat).mean(axis=1, keepdims=True) if mode != "dorefa" else np.abs(flat).mean()
    return (np_sign(flat) * alpha).reshape(w.shape)


def np_binary_conv(x, w, b, mode, kernel, stride, padding):
    wb = np_binary_weight(w, mode)
    if mode != "xnor":
        y = np_conv2d(x, wb, stride, padding)
    else:
        a = np.abs(x).mean(axis=1, keepdims=True)
        box = np.full((1, 1) + kernel, 1.0 / (kernel[0] * kernel[1]))
        y = np_conv2d(np_sign(x), wb, stride, padding) * np_conv2d(a, box, stride, padding)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def np_binary_linear(x, w, b, mode):
    wb = np_binary_weight(w, mode)
    if mode != "xnor":
        y = x @ wb.T
    else:
        y = (np_sign(x) @ wb.T) * np.abs(x).mean(axis=1, keepdims=True)
    return y if b is None else y + b


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ---- the same estimators in torch autograd -------------------------------------------------------

def torch_ste_sign(x, approx=False):
    """b(x) forward; hard-tanh STE (or ApproxSign's 2 - 2|x|) backward."""
    hard = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    if approx:
        surrogate = torch.where(x.abs() <= 1, 2 * x - x * x.abs(), hard)
    else:
        surrogate = torch.clamp(x, -1, 1)
    return surrogate + (hard - surrogate).detach()


def torch_binary_weight(w, mode):
    flat = w.reshape(w.shape[0], -1)
    alpha = flat.abs().mean(dim=1, keepdim=True) if mode != "dorefa" else flat.abs().mean()
    return (torch_ste_sign(flat) * alpha).reshape(w.shape)


def torch_binary_conv(x, w, b, mode, kernel, stride, padding, approx=False):
    wb = torch_binary_weight(w, mode)
    if mode != "xnor":
        return TF.conv2d(x, wb, b, stride, padding)
    a = x.abs().mean(dim=1, keepdim=True)
    box = torch.full((1, 1) + kernel, 1.0 / (kernel[0] * kernel[1]), dtype=x.dtype)
    k = TF.conv2d(a, box, None, stride, padding)
    y = TF.conv2d(torch_ste_sign(x, approx), wb, None, stride, padding) * k
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def torch_binary_linear(x, w, b, mode, approx=False):
    wb = torch_binary_weight(w, mode)
    if mode != "xnor":
        return TF.linear(x, wb, b)
    y = TF.linear(torch_ste_sign(x, approx), wb) * x.abs().mean(dim=1, keepdim=True)
    return y if b is None else y + b


def compare_gradients(layer, theirs, x_host, backend, seed=1):
    """Run ``layer`` (double precision) and ``theirs`` (torch, float64) on ``x_host``;
    compare outputs and the gradients of sum(y * g) for the input, weight and bias."""
    x = on(backend, x_host, "float64", requires_grad=True)
    y = layer(x)
    xt = torch.tensor(x_host, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(layer.weight.gather(), requires_grad=True)
    bt = None if layer.bias is None else torch.tensor(layer.bias.gather(), requires_grad=True)
    yt = theirs(xt, wt, bt)
    np.testing.assert_allclose(y.gather(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng(seed).standard_normal(yt.shape)
    y.backward(gm.array(g, backend=backend))
    (yt * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(x.grad.gather(), xt.grad.numpy(), rtol=1e-9, atol=1e-12,
                               err_msg="input gradient")
    np.testing.assert_allclose(layer.weight.grad.gather(), wt.grad.numpy(), rtol=1e-9,
                               atol=1e-12, err_msg="weight gradient")
    if bt is not None:
        np.testing.assert_allclose(layer.bias.grad.gather(), bt.grad.numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg="bias gradient")


def conv_layer(backend, mode, kernel, stride, padding, cin=3, cout=4, bias=True, seed=0,
               dtype="float32", approx_sign=False):
    layer = nn.BinaryConv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias,
                            mode=mode, approx_sign=approx_sign)
    r = rng(seed)
    w = r.standard_normal(layer.weight.shape) * 0.7      # some |w| > 1: the STE's clip acts
    b = r.standard_normal(cout) if bias else None
    return set_weights(layer, backend, w, b, dtype)


def linear_layer(backend, mode, fin=37, fout=5, bias=True, seed=0, dtype="float32",
                 approx_sign=False):
    layer = nn.BinaryLinear(fin, fout, bias=bias, mode=mode, approx_sign=approx_sign)
    r = rng(seed)
    w = r.standard_normal((fout, fin)) * 0.7
    b = r.standard_normal(fout) if bias else None
    return set_weights(layer, backend, w, b, dtype)


# ---- the sign and its estimators ---------------------------------------------------------------

@pytest.mark.parametrize("approx", [False, True])
def test_binary_sign_and_its_estimators(backend, approx):
    host = np.array([[-2.5, -1.0, -0.5, -0.0, 0.0, 0.25, 0.999, 1.0, 3.0]])
    x = on(backend, host, "float64", requires_grad=True)
    y = B.binary_sign(x, approx_sign=approx)
    np.testing.assert_array_equal(y.gather(), [[-1, -1, -1, 1, 1, 1, 1, 1, 1]])   # b(0) = +1
    g = rng(3).standard_normal(host.shape)
    y.backward(gm.array(g, backend=backend))
    magnitude = np.abs(host)
    expected = g * (np.maximum(2 - 2 * magnitude, 0) if approx else (magnitude <= 1))
    np.testing.assert_allclose(x.grad.gather(), expected, rtol=1e-12)
    xt = torch.tensor(host, requires_grad=True)
    (torch_ste_sign(xt, approx) * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(x.grad.gather(), xt.grad.numpy(), rtol=1e-12)
    assert B.sign(gm.array(np.float32([-1, 0, 2]), backend=backend)).gather().tolist() == \
        [-1, 1, 1]


@pytest.mark.parametrize("per_filter", [True, False])
def test_binarize_weight_exact_alpha_gradient(backend, per_filter):
    """The alpha part of the weight gradient by finite differences: binarize_weight minus
    the STE part (the sign times a constant alpha) is locally b(W) * (alpha(W) - alpha0),
    whose derivative is exact, and whose backward is ours minus the STE's."""
    w_host = rng(5).standard_normal((3, 2, 2, 2)) * 0.8
    w = on(backend, w_host, "float64", requires_grad=True)
    flat = np.abs(w_host.reshape(3, -1))
    alpha0 = flat.mean(axis=1) if per_filter else np.full(3, flat.mean())
    alpha0 = gm.array(alpha0.reshape(3, 1, 1, 1), backend=backend)

    def smooth_part(w):
        return B.binarize_weight(w, per_filter) - B.binary_sign(w) * alpha0

    gradcheck(smooth_part, [w], eps=1e-6, atol=1e-8, rtol=1e-6)
    # and the whole against torch's autograd on the same STE
    out = B.binarize_weight(w, per_filter)
    wt = torch.tensor(w_host, requires_grad=True)
    theirs = torch_binary_weight(wt, "bwn" if per_filter else "dorefa")
    np.testing.assert_allclose(out.gather(), theirs.detach().numpy(), rtol=1e-12)
    g = rng(6).standard_normal(w_host.shape)
    w.grad = None
    out.backward(gm.array(g, backend=backend))
    (theirs * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(w.grad.gather(), wt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_k_is_differentiable(backend):
    """A = mean_c |x| and K = its box filter, by finite differences (smooth away from 0)."""
    x = on(backend, rng(7).standard_normal((2, 3, 5, 4)), "float64", requires_grad=True)
    gradcheck(B.channel_mean_abs, [x], atol=1e-8, rtol=1e-6)
    for kernel, stride, padding in CONV_GEOMETRY:
        def k_of(x, kernel=pair(kernel), stride=pair(stride), padding=pair(padding)):
            return B._window_mean(B.channel_mean_abs(x), kernel, stride, padding,
                                  differentiable=True)
        gradcheck(k_of, [x], atol=1e-8, rtol=1e-6)
    v = on(backend, rng(8).standard_normal((3, 9)), "float64", requires_grad=True)
    gradcheck(B.channel_mean_abs, [v], atol=1e-8, rtol=1e-6)


# ---- the layers: forward, gradients ------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geometry", CONV_GEOMETRY, ids=["3x3s1p1", "3x2s2p0", "1x1p1"])
def test_conv_forward_matches_numpy(backend, mode, geometry):
    kernel, stride, padding = geometry
    layer = conv_layer(backend, mode, kernel, stride, padding)
    x = rng(2).standard_normal((2, 3, 7, 6)).astype(np.float32)
    y = layer(on(backend, x))
    expected = np_binary_conv(x.astype(np.float64), layer.weight.gather().astype(np.float64),
                              layer.bias.gather().astype(np.float64), mode, pair(kernel),
                              pair(stride), pair(padding))
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.gather(), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("mode", MODES)
def test_linear_forward_matches_numpy(backend, mode):
    layer = linear_layer(backend, mode)
    x = rng(2).standard_normal((4, 37)).astype(np.float32)
    y = layer(on(backend, x))
    expected = np_binary_linear(x.astype(np.float64), layer.weight.gather().astype(np.float64),
                                layer.bias.gather().astype(np.float64), mode)
    np.testing.assert_allclose(y.gather(), expected, rtol=2e-5, atol=2e-5)


CONV_CASES = [(mode, False) for mode in MODES] + [("xnor", True)]


@pytest.mark.parametrize("mode,approx", CONV_CASES,
                         ids=["bwn", "dorefa", "xnor", "xnor-approx_sign"])
@pytest.mark.parametrize("geometry", CONV_GEOMETRY, ids=["3x3s1p1", "3x2s2p0", "1x1p1"])
def test_conv_gradients_match_torch_ste(backend, mode, approx, geometry):
    kernel, stride, padding = geometry
    layer = conv_layer(backend, mode, kernel, stride, padding, dtype="float64",
                       approx_sign=approx)
    x = rng(4).standard_normal((2, 3, 6, 5)) * 1.2

    def theirs(xt, wt, bt):
        return torch_binary_conv(xt, wt, bt, mode, pair(kernel), pair(stride), pair(padding),
                                 approx)

    compare_gradients(layer, theirs, x, backend)


@pytest.mark.parametrize("mode,approx", CONV_CASES,
                         ids=["bwn", "dorefa", "xnor", "xnor-approx_sign"])
def test_linear_gradients_match_torch_ste(backend, mode, approx):
    layer = linear_layer(backend, mode, dtype="float64", approx_sign=approx)
    x = rng(4).standard_normal((3, 37)) * 1.2
    compare_gradients(layer, lambda xt, wt, bt: torch_binary_linear(xt, wt, bt, mode, approx),
                      x, backend)


@pytest.mark.parametrize("mode", MODES)
def test_layer_smooth_parts_by_finite_differences(backend, mode):
    """Within a layer, the gradient through alpha and K (and the bias) by finite differences:
    the layer minus the same computation with alpha and K frozen is locally smooth."""
    kernel, stride, padding = (3, 3), 1, 1
    layer = conv_layer(backend, mode, kernel, stride, padding, cin=2, cout=3, dtype="float64")
    x = on(backend, rng(9).standard_normal((1, 2, 4, 4)), requires_grad=True)
    w = layer.weight
    w_host = w.gather()
    per_filter = mode != "dorefa"
    flat = np.abs(w_host.reshape(3, -1))
    alpha0 = gm.array((flat.mean(axis=1) if per_filter else np.full(3, flat.mean()))
                      .reshape(3, 1, 1, 1), backend=backend)
    k0 = gm.array(np_conv2d(np.abs(x.gather()).mean(axis=1, keepdims=True),
                            np.full((1, 1, 3, 3), 1 / 9), (1, 1), (1, 1)), backend=backend)

    def smooth_part(x, w, b):
        full = layer(x)
        if mode != "xnor":
            frozen = F.conv2d(x, B.binary_sign(w) * alpha0, None, stride, padding)
        else:
            frozen = F.conv2d(B.binary_sign(x), B.binary_sign(w) * alpha0, None, stride,
                              padding) * k0
        return full - frozen

    gradcheck(smooth_part, [x, w, layer.bias], atol=1e-8, rtol=1e-6)


def test_layer_parameters_interchange_with_torch():
    conv = nn.BinaryConv2d(3, 8, 3, padding=1, bias=True)
    reference = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert [(k, tuple(v.shape)) for k, v in conv.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in reference.state_dict().items()]
    linear = nn.BinaryLinear(10, 4)
    assert list(linear.state_dict()) == ["weight"] and linear.weight.shape == (4, 10)
    conv.load_state_dict({k: v.detach() for k, v in reference.state_dict().items()})
    np.testing.assert_array_equal(conv.weight.gather(), reference.weight.detach().numpy())
    assert "mode='xnor'" in repr(conv) and "approx_sign" not in repr(conv)
    with pytest.raises(ValueError, match="mode must be one of 'bwn', 'dorefa', 'xnor'"):
        nn.BinaryConv2d(3, 8, 3, mode="ternary")
    with pytest.raises(ValueError, match="approx_sign .* only mode='xnor'"):
        nn.BinaryLinear(3, 8, mode="bwn", approx_sign=True)


# ---- inference ----------------------------------------------------------------------------------

def eval_matches_training(layer, x_host, backend):
    x = on(backend, x_host.astype(np.float32))
    layer.train()
    expected = layer(x).gather()
    layer.eval()
    with nn.no_grad():
        got = layer(x)
    assert not got.requires_grad
    np.testing.assert_allclose(got.gather(), expected, rtol=1e-5, atol=1e-5)
    return got


@pytest.mark.parametrize("mode", MODES)
def test_eval_equals_training_forward(backend, mode):
    for kernel, stride, padding in CONV_GEOMETRY:
        layer = conv_layer(backend, mode, kernel, stride, padding, cin=35, cout=6)
        eval_matches_training(layer, rng(1).standard_normal((2, 35, 6, 7)), backend)
    layer = linear_layer(backend, mode, fin=70)
    eval_matches_training(layer, rng(1).standard_normal((3, 70)), backend)


def count_calls(monkeypatch, names):
    calls = {name: 0 for name in names}
    for name in names:
        original = getattr(gm, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(gm, name, spy)
    return calls


def test_eval_runs_the_packed_kernels(backend, monkeypatch):
    calls = count_calls(monkeypatch, ["xnor_conv2d", "xnor_gemm", "pack_conv_weight"])
    conv = conv_layer(backend, "xnor", (3, 3), 1, 1, cin=40, cout=5)
    eval_matches_training(conv, rng(2).standard_normal((2, 40, 5, 5)), backend)
    linear = linear_layer(backend, "xnor", fin=45)
    eval_matches_training(linear, rng(2).standard_normal((2, 45)), backend)
    assert calls["xnor_conv2d"] == 1 and calls["xnor_gemm"] == 1
    with nn.no_grad():                          # the packed weight is cached
        conv(on(backend, rng(3).standard_normal((1, 40, 5, 5)).astype(np.float32)))
    assert calls["xnor_conv2d"] == 2 and calls["pack_conv_weight"] == 1


def test_packed_path_on_every_geometry(backend, monkeypatch):
    """Inference packs, calls xnor_conv2d / xnor_gemm and scales as documented, for every
    kernel size, stride and padding of the training-mode tests."""
    calls = count_calls(monkeypatch, ["xnor_conv2d", "xnor_gemm"])
    for kernel, stride, padding in CONV_GEOMETRY:
        conv = conv_layer(backend, "xnor", kernel, stride, padding, cin=33, cout=4)
        eval_matches_training(conv, rng(2).standard_normal((2, 33, 6, 5)), backend)
    linear = linear_layer(backend, "xnor", fin=65)
    eval_matches_training(linear, rng(2).standard_normal((3, 65)), backend)
    assert calls == {"xnor_conv2d": len(CONV_GEOMETRY), "xnor_gemm": 1}


def test_inference_cache_follows_the_weights(backend):
    layer = conv_layer(backend, "xnor", (3, 3), 1, 1, cin=4, cout=3)
    x = on(backend, rng(1).standard_normal((1, 4, 5, 5)).astype(np.float32))
    layer.eval()
    with nn.no_grad():
        first = layer(x).gather()
    other = {"weight": -layer.weight.gather(), "bias": layer.bias.gather()}
    layer.load_state_dict(other)                     # a new Array: the cache is rebuilt
    with nn.no_grad():
        np.testing.assert_allclose(layer(x).gather() - 2 * other["bias"].reshape(1, -1, 1, 1),
                                   -first, rtol=1e-5, atol=1e-5)
    # a training step changes the weight in place; the training forward drops the cache
    layer.train()
    opt = nn.optim.SGD(layer.parameters(), lr=0.5)
    F.sum(layer(x) * layer(x)).backward()
    opt.step()
    layer.eval()
    with nn.no_grad():
        after = layer(x).gather()
    layer.clear_cache()
    layer.train()
    expected = layer(x).gather()
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    # eval mode while recording a graph (fine-tuning with frozen batch norm) is differentiable
    layer.eval()
    layer.zero_grad()
    F.sum(layer(x)).backward()
    assert layer.weight.grad is not None


class PlanSpy:
    """Counts the gm-level calls (the layers' full inference path) and the backend-level
    calls (every inference call, the plans' included) of a binary layer's kernels."""

    def __init__(self, monkeypatch, backend, gm_name, backend_name):
        self.full = self.kernel = 0
        original = getattr(gm, gm_name)
        monkeypatch.setattr(gm, gm_name, lambda *a, **k: self._count("full") or original(*a, **k))
        instance = gm.backends.get(backend)
        method = getattr(instance, backend_name)
        monkeypatch.setattr(instance, backend_name,
                            lambda *a, **k: self._count("kernel") or method(*a, **k))

    def _count(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def calls(self):
        return self.full, self.kernel


def fresh(layer, *args, **kwargs):
    """layer's output by its full inference path (the plan dropped with the cache first)."""
    layer.clear_cache()
    return layer(*args, **kwargs).gather()


def test_conv_inference_plan_repeats_the_full_path(backend, monkeypatch):
    """A BinaryConv2d makes its last fused inference call again (_ConvPlan) without the
    Python checks, bit for bit the full path, and falls back to the full path -- which makes
    a new plan -- whenever anything the call was made from changed."""
    spy = PlanSpy(monkeypatch, backend, "xnor_conv2d", "xnor_conv2d")
    conv = conv_layer(backend, "xnor", (3, 3), 1, 1, cin=20, cout=5).eval()
    bn = trained_batch_norm(backend, 20, 3).eval()
    x = on(backend, rng(4).standard_normal((2, 20, 7, 6)).astype(np.float32))
    r = on(backend, rng(5).standard_normal((2, 5, 7, 6)).astype(np.float32))
    with nn.no_grad():
        want = fresh(conv, x, batch_norm=bn, residual=r)
        assert spy.calls() == (1, 1) and conv._plan is not None
        for _ in range(2):                                      # the plan: no full path
            np.testing.assert_array_equal(conv(x, batch_norm=bn, residual=r).gather(), want)
        assert spy.calls() == (1, 3)

        def changed(expect_full, **kwargs):
            """The call after a change: full path or plan as expected, the full path's bits
            either way, and a plan that the next identical call uses."""
            before = spy.calls()
            got = conv(**kwargs).gather()
            assert spy.calls() == (before[0] + expect_full, before[1] + 1)
            np.testing.assert_array_equal(got, fresh(conv, **kwargs))
            again = spy.calls()
            np.testing.assert_array_equal(conv(**kwargs).gather(), got)
            assert spy.calls() == (again[0], again[1] + 1)
            return got

        changed(True, x=x, batch_norm=bn)                       # no residual now
        changed(True, x=x)                                      # no batch norm
        changed(True, x=x[:1], batch_norm=bn, residual=r[:1])   # another batch size
        call = dict(x=x, batch_norm=bn, residual=r)
        changed(True, **call)
        bn.running_mean = gm.array(rng(6).standard_normal(20).astype(np.float32),
                                   backend=backend)            # a new Array
        changed(True, **call)
        bn.running_var[:] = 2.5                                 # in place: read at the call
        assert not np.array_equal(changed(False, **call), want)
        bn.eps = 0.25
        changed(True, **call)
        conv.load_state_dict({"weight": -conv.weight.gather(), "bias": conv.bias.gather()})
        changed(True, **call)
        conv.stride = (2, 1)
        conv.padding = (0, 1)
        changed(True, x=x, batch_norm=bn)
        other = trained_batch_norm(backend, 20, 8).eval()       # another module
        changed(True, x=x, batch_norm=other)
    # recording a graph: the training path (no packed kernels, no plan)
    before = spy.calls()
    out = conv(x, batch_norm=other)
    assert out.requires_grad and spy.calls() == before
    # batch norm in training mode: not folded, applied first (no plan for that call)
    other.train()
    with nn.no_grad():
        conv(x, batch_norm=other)
    assert spy.calls() == (before[0] + 1, before[1] + 1)
    # training mode drops the plan with the cache
    conv.train()
    conv(x)
    assert conv._plan is None


def test_linear_inference_plan_repeats_the_full_path(backend, monkeypatch):
    """A BinaryLinear makes its last inference calls (packing, product) again (_LinearPlan),
    bit for bit the full path, and takes the full path again after a change."""
    spy = PlanSpy(monkeypatch, backend, "pack_conv_input", "pack_conv_input")
    layer = linear_layer(backend, "xnor", fin=45, fout=6).eval()
    bn = trained_batch_norm(backend, 45, 3, nn.BatchNorm1d).eval()
    x = on(backend, rng(4).standard_normal((3, 45)).astype(np.float32))
    with nn.no_grad():
        separate = layer(bn(x)).gather()
        want = fresh(layer, x, batch_norm=bn)
        np.testing.assert_array_equal(want, separate)
        before = spy.calls()
        for _ in range(2):
            np.testing.assert_array_equal(layer(x, batch_norm=bn).gather(), want)
        assert spy.calls() == (before[0], before[1] + 2)
        bn.running_mean[:] = 0.5                               # in place: read at the call
        got = layer(x, batch_norm=bn).gather()
        assert spy.calls() == (before[0], before[1] + 3)
        np.testing.assert_array_equal(got, fresh(layer, x, batch_norm=bn))
        for kwargs in (dict(x=x[1:]), dict(x=x), dict(x=x, batch_norm=bn)):
            before = spy.calls()
            got = layer(**kwargs).gather()
            assert spy.calls() == (before[0] + 1, before[1] + 1)     # the full path
            np.testing.assert_array_equal(got, fresh(layer, **kwargs))
        layer.bias.data = gm.array(np.ones(6, np.float32), backend=backend)
        before = spy.calls()
        got = layer(x, batch_norm=bn).gather()
        assert spy.calls() == (before[0] + 1, before[1] + 1)
        np.testing.assert_array_equal(got, fresh(layer, x, batch_norm=bn))


def test_plans_stay_out_of_summaries_and_double_data(backend):
    """nn.summary traces a model whose layers hold plans with every batch norm listed, and
    float64 layers (no packed kernels) make none."""
    model = models.lenet5(binary="xnor").to(backend).eval()
    x = gm.array(rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32), backend=backend)
    with nn.no_grad():
        first = model(x).gather()
        assert model.conv2._plan is not None and model.fc1._plan is not None
        np.testing.assert_array_equal(model(x).gather(), first)
    text = str(nn.summary(model, (1, 32, 32)))
    assert all(name in text for name in ("bn2", "bn3", "bn4"))
    layer = conv_layer(backend, "xnor", (3, 3), 1, 1, cin=4, cout=3, dtype="float64").eval()
    with nn.no_grad():
        layer(on(backend, rng(2).standard_normal((1, 4, 5, 5)), "float64"))
    assert layer._plan is None


@pytest.mark.parametrize("mode", MODES)
def test_inference_sees_weights_written_in_place(backend, mode):
    """An optimizer step (or weight.data[...] = v) writes the weight's buffer in place: the
    inference cache and plan see it (the storage's version), with no training forward in
    between -- e.g. an evaluation between backward() and step()."""
    for layer, shape in [(conv_layer(backend, mode, (3, 3), 1, 1, cin=6, cout=4), (2, 6, 5, 5)),
                         (linear_layer(backend, mode, fin=40, fout=6), (3, 40))]:
        x = on(backend, rng(7).standard_normal(shape).astype(np.float32))
        opt = nn.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9)
        for _ in range(2):
            layer.train()
            opt.zero_grad()
            F.sum(layer(x) ** 2).backward()
            layer.eval()
            with nn.no_grad():
                layer(x)
                before = layer(x).gather()              # cache and plan made
            opt.step()
            with nn.no_grad():
                after = layer(x).gather()
                np.testing.assert_array_equal(after, fresh(layer, x))
            assert not np.array_equal(after, before)
        with nn.no_grad():
            layer(x)
            layer.weight.data[0] = -layer.weight.data[0]
            np.testing.assert_array_equal(layer(x).gather(), fresh(layer, x))


# ---- serialization ------------------------------------------------------------------------------

def test_sign_bits_layout_matches_pack_signs():
    values = rng(3).standard_normal((5, 70)).astype(np.float32)
    values[0, :3] = [0.0, -0.0, np.float32(-1e-30)]
    packed = B.pack_sign_bits(values)
    assert packed.dtype == np.uint32 and packed.shape == (5, 3)
    np.testing.assert_array_equal(packed, gm.pack_signs(gm.array(values, backend="cpu"))
                                  .gather())
    np.testing.assert_array_equal(B.unpack_sign_bits(packed, 70), np_sign(values))


@pytest.mark.parametrize("mode", MODES)
def test_bit_packed_model_files(backend, mode, tmp_path):
    gm.seed(0)
    model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1),
                          nn.BatchNorm2d(64),
                          nn.BinaryConv2d(64, 64, 3, padding=1, mode=mode),
                          nn.Flatten(),
                          nn.BinaryLinear(64 * 4 * 4, 32, bias=True, mode=mode)).to(backend)
    save(model, tmp_path / "binary.npz")
    stored = load_state(tmp_path / "binary.npz")
    alphas = 64 if mode != "dorefa" else 1
    assert stored["2.weight_bits"].dtype == np.uint32
    assert stored["2.weight_bits"].shape == (64, 18)                  # 576 signs per filter
    assert stored["2.weight_alpha"].shape == (alphas,)
    assert stored["4.weight_bits"].shape == (32, 32) and "4.bias" in stored
    assert "2.weight" not in stored and "4.weight" not in stored
    # the binary layers' weights take ~1/32 of their float size
    float_layers = nn.Sequential(model[2], model[3], model[4])
    save(float_layers.state_dict(), tmp_path / "float.npz")
    save(float_layers, tmp_path / "packed.npz")
    ratio = os.path.getsize(tmp_path / "float.npz") / os.path.getsize(tmp_path / "packed.npz")
    assert ratio > 20, ratio
    # loading restores W = sign * alpha: same signs, mean |W| = alpha, same inference
    fresh = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64),
                          nn.BinaryConv2d(64, 64, 3, padding=1, mode=mode), nn.Flatten(),
                          nn.BinaryLinear(64 * 4 * 4, 32, bias=True, mode=mode)).to(backend)
    load_into(fresh, tmp_path / "binary.npz")
    for i in (2, 4):
        ours, theirs = model[i].weight.gather(), fresh[i].weight.gather()
        np.testing.assert_array_equal(np_sign(theirs), np_sign(ours))
        flat = np.abs(ours.reshape(ours.shape[0], -1)).astype(np.float64)
        expected = flat.mean(axis=1) if mode != "dorefa" else np.full(ours.shape[0], flat.mean())
        np.testing.assert_allclose(np.abs(theirs.reshape(ours.shape[0], -1)),
                                   np.repeat(expected[:, None], flat.shape[1], 1), rtol=1e-6)
    x = on(backend, rng(4).standard_normal((2, 1, 4, 4)).astype(np.float32))
    model.eval()
    fresh.eval()
    with nn.no_grad():
        np.testing.assert_allclose(fresh(x).gather(), model(x).gather(), rtol=1e-5, atol=1e-5)


def test_bit_packed_files_refuse_what_does_not_fit(tmp_path):
    """The bits alone fit any weight with as many words a filter: the file keeps the weight's
    shape and loading checks it, and a file that lacks a part or holds an impossible scale is
    a CheckpointError naming the file and the layer; the model stays loadable after one."""
    path = tmp_path / "c33.npz"
    save(nn.Sequential(nn.ReLU(), nn.BinaryConv2d(33, 5, 3)), path)
    assert load_state(path)["1.weight_shape"].tolist() == [5, 33, 3, 3]
    for wrong in (nn.BinaryConv2d(34, 5, 3), nn.BinaryConv2d(11, 5, (3, 9))):
        with pytest.raises(CheckpointError, match=r"c33\.npz: 1: BinaryConv2d: the file's "
                           r"bit-packed weight is 5x33x3x3 but the layer's is 5x"):
            load_into(nn.Sequential(nn.ReLU(), wrong), path)
    save(nn.BinaryLinear(33, 4), tmp_path / "l33.npz")
    with pytest.raises(CheckpointError, match="is 4x33 but the layer's is 4x40"):
        load_into(nn.BinaryLinear(40, 4), tmp_path / "l33.npz")
    # a file written before the shape was stored: the word count is all there is to check
    model = nn.Sequential(nn.ReLU(), nn.BinaryConv2d(33, 5, 3))
    stored = load_state(path)
    old = {k: v for k, v in stored.items() if not k.endswith("weight_shape")}
    save(old, tmp_path / "old.npz")
    load_into(model, tmp_path / "old.npz")
    np.testing.assert_array_equal(np_sign(model[1].weight.gather()).reshape(5, -1),
                                  B.unpack_sign_bits(stored["1.weight_bits"], 297))
    with pytest.raises(CheckpointError, match=r"weight_bits of a 5x33x3x5 weight must be "
                       r"uint32 of shape \(5, 16\)"):
        load_into(nn.Sequential(nn.ReLU(), nn.BinaryConv2d(33, 5, (3, 5))), tmp_path / "old.npz")
    # parts missing or impossible
    for change, message in [(lambda d: d.pop("1.weight_alpha"), "no weight_alpha"),
                            (lambda d: d.__setitem__("1.weight_alpha", -d["1.weight_alpha"]),
                             "finite and >= 0"),
                            (lambda d: d["1.weight_alpha"].__setitem__(2, np.nan),
                             "finite and >= 0")]:
        broken = {k: np.array(v) for k, v in stored.items()}
        change(broken)
        save(broken, tmp_path / "broken.npz")
        with pytest.raises(CheckpointError, match=message):
            load_into(model, tmp_path / "broken.npz")
    load_into(model, path)
    np.testing.assert_array_equal(np_sign(model[1].weight.gather()).reshape(5, -1),
                                  B.unpack_sign_bits(stored["1.weight_bits"], 297))


def test_checkpoints_keep_the_latent_weights(tmp_path):
    gm.seed(1)
    model = models.lenet5(binary="xnor")
    opt = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    save_checkpoint(tmp_path / "ckpt.npz", model, opt, epoch=1)
    stored = load_state(tmp_path / "ckpt.npz")
    assert "conv2.weight" in stored and "conv2.weight_bits" not in stored
    fresh = models.lenet5(binary="xnor")
    load_checkpoint(tmp_path / "ckpt.npz", fresh, nn.optim.SGD(fresh.parameters(), lr=0.01,
                                                                 momentum=0.9))
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        np.testing.assert_array_equal(a.gather(), b.gather(), err_msg=name)
    # a float model's file (bwn keeps the float layout) loads into a binary one as it is
    float_model = models.lenet5()
    save(float_model, tmp_path / "float.npz")
    bwn = models.lenet5(binary="bwn")
    load_into(bwn, tmp_path / "float.npz")
    np.testing.assert_array_equal(bwn.conv2.weight.gather(), float_model.conv2.weight.gather())


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: nn.optim.SGD(ps, lr=0.01, momentum=0.9), lambda ps: nn.optim.Adam(ps)],
    ids=["sgd", "adam"])
def test_state_made_inside_a_scope_outlives_it(backend, make_optimizer):
    """A first training step and a first packed inference inside gm.scope() make the
    optimizer's buffers, the layers' inference caches and K's box filter; the scope must not
    release them, or the model and optimizer are unusable after it."""
    gm.seed(2)
    model = models.lenet5(binary="xnor").to(backend)
    opt = make_optimizer(model.parameters())
    x = on(backend, rng(6).standard_normal((2, 1, 32, 32)).astype(np.float32))
    labels = gm.array(np.array([1, 2]), backend=backend)

    def step():
        model.train()
        loss = nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        with nn.no_grad():
            return model(x).gather()

    with gm.scope():
        step()
    after = step()
    assert np.isfinite(after).all()


def test_resuming_needs_the_same_binary_mode(tmp_path):
    # bwn and dorefa keep the float layout, so only the saved configuration tells them apart
    # from each other and from the float model: resuming into the wrong one must fail, not
    # train on silently as another network
    save_checkpoint(tmp_path / "ckpt.npz", models.lenet5(binary="bwn"), epoch=1)
    for other, shown in ((models.lenet5(), r"LeNet5\(activation='relu'\)"),
                         (models.lenet5(binary="dorefa"), r"LeNet5\(.*binary='dorefa'\)")):
        before = [p.gather().copy() for p in other.parameters()]
        with pytest.raises(CheckpointError, match=r"ckpt.npz: the checkpoint was written by a "
                                                  r"different model: the model is LeNet5\(.*"
                                                  r"binary='bwn'\) in the checkpoint but "
                                                  + shown + " in this model"):
            load_checkpoint(tmp_path / "ckpt.npz", other)
        for a, p in zip(before, other.parameters()):
            np.testing.assert_array_equal(a, p.gather())       # left as it was
    load_checkpoint(tmp_path / "ckpt.npz", models.lenet5(binary="bwn"))
    # a user's own model: the layer itself tells
    def net(binary):
        conv = nn.BinaryConv2d(1, 4, 3, mode=binary) if binary else nn.Conv2d(1, 4, 3,
                                                                              bias=False)
        return nn.Sequential(conv, nn.ReLU())
    save_checkpoint(tmp_path / "own.npz", net("bwn"))
    with pytest.raises(CheckpointError, match=r"own.npz: .* module '0' is BinaryConv2d\(1, 4, "
                                              r".*mode='bwn'\) in the checkpoint but "
                                              r"Conv2d\(1, 4, .*\) in this model"):
        load_checkpoint(tmp_path / "own.npz", net(None))
    with pytest.raises(CheckpointError, match=r"module '0' .*mode='dorefa'\) in this model"):
        load_checkpoint(tmp_path / "own.npz", net("dorefa"))
    # modules without parameters count too: ReLU and Tanh hold the same (no) entries
    with pytest.raises(CheckpointError, match=r"module '1' is ReLU\(\) in the checkpoint but "
                                              r"Tanh\(\) in this model"):
        load_checkpoint(tmp_path / "own.npz", nn.Sequential(net("bwn")[0], nn.Tanh()))
    with pytest.raises(CheckpointError, match="the checkpoint's model has 3 modules, this one 4"):
        load_checkpoint(tmp_path / "own.npz", nn.Sequential(net("bwn")[0], nn.ReLU(),
                                                            nn.Identity()))


# ---- summary ------------------------------------------------------------------------------------

def test_summary_counts_binary_weights_as_bits():
    def bits(model):
        return nn.summary(model, (1, 32, 32), quiet=True)

    full = bits(models.lenet5())
    assert full.param_bits == 32 * 61_706
    assert [r.param_bits for r in full.rows if r.params] == [32 * r.params for r in full.rows
                                                             if r.params]
    bwn = bits(models.lenet5(binary="bwn"))
    assert bwn.total_params == 61_706                 # the published counts are unchanged
    rows = {r.name: r.param_bits for r in bwn.rows}
    assert rows["conv1"] == 32 * 156 and rows["fc3"] == 32 * 850
    assert rows["conv2"] == 2_400 + 32 * 16 + 32 * 16          # 1-bit weights, alphas, bias
    assert rows["fc1"] == 48_000 + 32 * 120 + 32 * 120
    assert rows["fc2"] == 10_080 + 32 * 84 + 32 * 84
    assert bwn.param_bits == sum(rows.values()) == 106_752
    dorefa = bits(models.lenet5(binary="dorefa"))
    assert dorefa.row("conv2").param_bits == 2_400 + 32 + 32 * 16
    assert dorefa.param_bits == 99_808
    assert bwn.row("conv2").flops == full.row("conv2").flops
    text = str(bwn)
    assert "Model size:           106,752 bits (13.03 KiB; parameters, binary weights 1 bit " \
           "each)" in text.splitlines()
    assert "BinaryConv2d" in text and "BinaryLinear" in text
    # the XNOR variant's batch norms, folded into the binary layers in inference, are traced
    # as written: a row each, their parameters counted
    xnor = bits(models.lenet5(binary="xnor"))
    assert [r.name for r in xnor.rows] == ["conv1", "act1", "pool1", "bn2", "conv2", "act2",
                                           "pool2", "flatten", "bn3", "fc1", "act3", "bn4",
                                           "fc2", "act4", "fc3"]
    assert sum(r.params for r in xnor.rows) == xnor.total_params == 61_706 + 2 * (6 + 400 + 120)
    assert xnor.param_bits == sum(r.param_bits for r in xnor.rows)
    # ... and their layers, called with batch_norm= (and residual= in the ResNets), are
    # counted as the float layers are
    for name in ("conv2", "fc1", "fc2"):
        assert xnor.row(name).flops == full.row(name).flops > 0
    assert xnor.total_flops == full.total_flops == 416_520
    resnets = [nn.summary(models.resnet_cifar(1, binary=b), (3, 32, 32), quiet=True)
               for b in (None, "xnor")]
    assert resnets[1].total_flops == resnets[0].total_flops
    assert all(r.flops > 0 for r in resnets[1].rows if r.type == "BinaryConv2d")


# ---- a batch norm folded into the binary convolution ----------------------------------------------

def trained_batch_norm(backend, channels, seed, kind=nn.BatchNorm2d):
    """A BatchNorm2d (or ``kind``) with non-trivial running statistics and affine
    parameters."""
    bn = kind(channels).to(backend)
    r = rng(seed)
    bn.running_mean = gm.array(r.standard_normal(channels).astype(np.float32), backend=backend)
    bn.running_var = gm.array(r.uniform(0.2, 3.0, channels).astype(np.float32),
                              backend=backend)
    bn.weight.data = gm.array(r.standard_normal(channels).astype(np.float32), backend=backend)
    bn.bias.data = gm.array(r.standard_normal(channels).astype(np.float32), backend=backend)
    return bn


def check_folded_call(layer, bn, x, calls):
    """layer(x, batch_norm=bn) in eval mode: under no_grad one folded call (``calls``: the
    batch_norm operand of each patched op call) and bit for bit layer(bn(x)); recording a
    graph, the two modules in turn, differentiable, the same values."""
    layer.eval()
    bn.eval()
    with nn.no_grad():
        want = layer(bn(x)).gather()
        calls.clear()
        got = layer(x, batch_norm=bn).gather()
    assert len(calls) == 1 and calls[0] is not None          # one call, folded
    np.testing.assert_array_equal(got, want)
    calls.clear()
    out = layer(x, batch_norm=bn)
    assert calls == [] and out.requires_grad
    np.testing.assert_allclose(out.gather(), want, rtol=1e-5, atol=1e-5)


def check_trained_pair(pairs, x):
    """Training: layer(x, batch_norm=bn) and layer(bn(x)) on two identical (layer, bn) pairs
    give the same gradients and running statistics."""
    (l1, b1), (l2, b2) = pairs
    F.sum(l1(x, batch_norm=b1) ** 2).backward()
    F.sum(l2(b2(x)) ** 2).backward()
    for p, q in [(l1.weight, l2.weight), (b1.weight, b2.weight), (b1.bias, b2.bias)]:
        np.testing.assert_array_equal(p.grad.gather(), q.grad.gather())
    np.testing.assert_array_equal(b1.running_mean.gather(), b2.running_mean.gather())
    np.testing.assert_array_equal(b1.running_var.gather(), b2.running_var.gather())


def test_conv_with_batch_norm_equals_the_two_calls(backend, monkeypatch):
    """layer(x, batch_norm=bn) == layer(bn(x)): in inference bit for bit (the normalization
    then runs inside gm.xnor_conv2d, on cpu in the packing pass), in training with the same
    values, running statistics and gradients."""
    calls = []
    original = gm.xnor_conv2d
    monkeypatch.setattr(gm, "xnor_conv2d",
                        lambda *a, **k: calls.append(k.get("batch_norm")) or original(*a, **k))
    for kernel, stride, padding in CONV_GEOMETRY:
        conv = conv_layer(backend, "xnor", kernel, stride, padding, cin=20, cout=5)
        bn = trained_batch_norm(backend, 20, 3)
        x = on(backend, rng(4).standard_normal((2, 20, 7, 6)).astype(np.float32))
        check_folded_call(conv, bn, x, calls)
    # training: bn updates its statistics and both get gradients, as with two calls
    pairs = []
    for _ in range(2):
        conv = conv_layer(backend, "xnor", (3, 3), 1, 1, cin=6, cout=3, seed=7)
        bn = trained_batch_norm(backend, 6, 8)
        pairs.append((conv, bn))
    x = on(backend, rng(9).standard_normal((3, 6, 5, 5)).astype(np.float32))
    check_trained_pair(pairs, x)
    # a bwn layer has no packed input path: bn runs on its own, same values
    conv = conv_layer(backend, "bwn", (3, 3), 1, 1, cin=6, cout=3).eval()
    bn = trained_batch_norm(backend, 6, 8).eval()
    with nn.no_grad():
        np.testing.assert_array_equal(conv(x, batch_norm=bn).gather(), conv(bn(x)).gather())


def test_linear_with_batch_norm_equals_the_two_calls(backend, monkeypatch):
    """layer(x, batch_norm=bn) == layer(bn(x)) for a BinaryLinear and a BatchNorm1d: in
    inference bit for bit (the normalization folded into the packing of the layer's rows, one
    gm.pack_conv_input call), in training with the same values, statistics and gradients."""
    calls = []
    original = gm.pack_conv_input
    monkeypatch.setattr(gm, "pack_conv_input",
                        lambda *a, **k: calls.append(k.get("batch_norm")) or original(*a, **k))
    for n, fin in [(9, 40), (1, 37), (17, 400)]:
        layer = linear_layer(backend, "xnor", fin=fin, fout=6, seed=fin)
        bn = trained_batch_norm(backend, fin, fin + 1, nn.BatchNorm1d)
        x_host = rng(fin + 2).standard_normal((n, fin)).astype(np.float32)
        x_host[::2] = bn.running_mean.gather()                  # normalized zeros
        x = on(backend, x_host)
        check_folded_call(layer, bn, x, calls)
    # training: bn updates its statistics and both get gradients, as with two calls
    pairs = [(linear_layer(backend, "xnor", fin=12, fout=4, seed=3),
              trained_batch_norm(backend, 12, 4, nn.BatchNorm1d)) for _ in range(2)]
    x = on(backend, rng(5).standard_normal((6, 12)).astype(np.float32))
    check_trained_pair(pairs, x)
    # a bwn layer, and a BatchNorm2d, are not folded: bn runs on its own, same values
    layer = linear_layer(backend, "bwn", fin=12, fout=4).eval()
    bn = trained_batch_norm(backend, 12, 8, nn.BatchNorm1d).eval()
    with nn.no_grad():
        np.testing.assert_array_equal(layer(x, batch_norm=bn).gather(),
                                      layer(bn(x)).gather())
    layer = linear_layer(backend, "xnor", fin=12, fout=4).eval()
    assert not layer._folds(trained_batch_norm(backend, 12, 8).eval(), x)


@pytest.mark.parametrize("mode", MODES)
def test_conv_with_residual_equals_the_sum(backend, mode):
    """layer(x, residual=r) == layer(x) + r: in inference bit for bit (xnor adds it in the
    kernel's stores), in training with the same gradients, r's included."""
    conv = conv_layer(backend, mode, (3, 3), 1, 1, cin=6, cout=4, seed=2)
    x = on(backend, rng(3).standard_normal((2, 6, 5, 5)).astype(np.float32))
    r = on(backend, rng(4).standard_normal((2, 4, 5, 5)).astype(np.float32),
           requires_grad=True)
    conv.eval()
    with nn.no_grad():
        np.testing.assert_array_equal(conv(x, residual=r).gather(), (conv(x) + r).gather())
    conv.train()
    F.sum(conv(x, residual=r) ** 2).backward()
    grads = conv.weight.grad.gather(), r.grad.gather()
    conv.zero_grad()
    r.grad = None
    F.sum((conv(x) + r) ** 2).backward()
    np.testing.assert_array_equal(conv.weight.grad.gather(), grads[0])
    np.testing.assert_array_equal(r.grad.gather(), grads[1])
    # a frozen layer in eval mode takes its inference path even with gradients on; a
    # residual that records still gets its addition recorded (and its gradient)
    conv.eval()
    for p in conv.parameters():
        p.requires_grad = False
    r.grad = None
    out = conv(x, residual=r)
    assert out.requires_grad
    F.sum(out).backward()
    np.testing.assert_array_equal(r.grad.gather(), np.ones((2, 4, 5, 5), np.float32))


def test_inference_checks_what_the_packed_kernels_cannot(backend):
    """The packed weight holds ceil(C / 32) words a tap, so the kernels cannot tell 33 or 64
    input channels from 40: the layer checks its in_channels in inference as in training
    (a plan present or not), and a residual the kernel cannot add as it stores (broadcast,
    float64, a number) is added afterwards, as in training."""
    conv = conv_layer(backend, "xnor", (3, 3), 1, 1, cin=40, cout=4).eval()
    with nn.no_grad():
        conv(on(backend, rng(1).standard_normal((2, 40, 5, 5)).astype(np.float32)))
        assert conv._plan is not None
        for channels in (33, 64):
            x = on(backend, rng(2).standard_normal((2, channels, 5, 5)).astype(np.float32))
            with pytest.raises(gm.ShapeError, match=f"x has {channels} channels but the layer "
                               "takes 40"):
                conv(x)
    conv = conv_layer(backend, "xnor", (3, 3), 1, 1, cin=8, cout=4, seed=3)
    x = on(backend, rng(4).standard_normal((2, 8, 5, 5)).astype(np.float32))
    for residual in (on(backend, rng(5).standard_normal((1, 4, 1, 1)).astype(np.float32)),
                     1.5, on(backend, rng(6).standard_normal((2, 4, 5, 5)), "float64")):
        with nn.no_grad():
            conv.train()
            want = conv(x, residual=residual)
            conv.eval()
            got = conv(x, residual=residual)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got.gather(), want.gather(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet_cifar1", "lenet5"])
def test_binary_models_fold_their_batch_norms_exactly(backend, name, monkeypatch):
    """The XNOR blocks' BatchNorm -> BinaryConv2d (-> + shortcut) run as one call in
    inference, and the network's output is bit for bit the one with every batch norm and
    residual addition run on its own."""
    make, size = BINARY_MODELS[name]
    gm.seed(1)
    model = make("xnor").to(backend)
    for module in model.modules():               # running statistics away from 0 / 1
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean = gm.array(rng(2).standard_normal(module.num_features)
                                           .astype(np.float32) * 0.1, backend=backend)
    model.eval()
    x = gm.array(rng(5).standard_normal((2, model.input_shape[0], size, size))
                 .astype(np.float32), backend=backend)
    folded = []
    original = nn.BinaryConv2d._folds           # (BinaryLinear's too: one method, in _Binary)
    for cls in (nn.BinaryConv2d, nn.BinaryLinear):
        monkeypatch.setattr(cls, "_folds",
                            lambda self, bn, v: folded.append(bn) or original(self, bn, v))
    with nn.no_grad():
        fused = model(x).gather()
        kinds = {type(bn) for bn in folded}
        assert kinds == ({nn.BatchNorm2d, nn.BatchNorm1d} if name == "lenet5"
                         else {nn.BatchNorm2d})
        # every batch norm and residual addition on its own
        conv_forward, linear_forward = nn.BinaryConv2d.forward, nn.BinaryLinear.forward

        def unfused(self, v, batch_norm=None, residual=None):
            y = conv_forward(self, v if batch_norm is None else batch_norm(v))
            return y if residual is None else y + residual

        def unfused_linear(self, v, batch_norm=None):
            return linear_forward(self, v if batch_norm is None else batch_norm(v))
        monkeypatch.setattr(nn.BinaryConv2d, "forward", unfused)
        monkeypatch.setattr(nn.BinaryLinear, "forward", unfused_linear)
        separate = model(x).gather()
    np.testing.assert_array_equal(fused, separate)


# ---- models -------------------------------------------------------------------------------------

BINARY_MODELS = {"lenet5": (lambda b: models.lenet5(binary=b), 32),
                 "lenet_tf": (lambda b: models.lenet_tf(binary=b), 28),
                 "resnet_cifar1": (lambda b: models.resnet_cifar(1, binary=b), 8),
                 "resnet_cifar1_B": (lambda b: models.resnet_cifar(1, shortcut="B", binary=b),
                                     8)}


def binary_layers(model):
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.BinaryConv2d, nn.BinaryLinear))]


def test_models_binarize_all_but_the_first_and_last_layers():
    expected = {"lenet5": ["conv2", "fc1", "fc2"], "lenet_tf": ["conv2", "fc1"]}
    for name, layers in expected.items():
        for mode in MODES:
            model = models.get(name, binary=mode)
            assert binary_layers(model) == layers, (name, mode)
            assert all(getattr(model, n).mode == mode for n in layers)
            assert isinstance(model.conv1, nn.Conv2d) and not binary_layers(model.conv1)
        assert not binary_layers(models.get(name))
    resnet = models.resnet20(binary="bwn")
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] == "conv1" and binary_layers(resnet) == convs[1:] and len(convs) == 19
    assert type(resnet.fc) is nn.Linear
    # bwn and dorefa keep the float layout (state_dicts interchange); xnor adds batch norms
    for name in ("lenet5", "lenet_tf", "resnet20"):
        keys = {k: v.shape for k, v in models.get(name).state_dict().items()}
        assert {k: v.shape for k, v in models.get(name, binary="bwn").state_dict().items()} \
            == keys
    xnor = models.lenet5(binary="xnor")
    assert [n for n, _ in xnor.named_children()][:6] == ["conv1", "act1", "pool1", "bn2",
                                                         "conv2", "act2"]
    block = models.resnet20(binary="xnor").layer2[0]
    assert [n for n, _ in block.named_children()] == ["bn1", "conv1", "bn2", "conv2",
                                                      "downsample"]
    assert block.bn1.num_features == 16 and block.bn2.num_features == 32
    with pytest.raises(ValueError, match="binary must be one of"):
        models.lenet5(binary="xor")
    with pytest.raises(ValueError, match="BasicBlock only"):
        models.ResNet(models.Bottleneck, (1, 1), widths=(8, 16), binary="bwn")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(BINARY_MODELS))
def test_binary_models_forward_backward(backend, name, mode):
    make, size = BINARY_MODELS[name]
    gm.seed(0)
    model = make(mode).to(backend)
    x = gm.array(rng(5).standard_normal((2, model.input_shape[0], size, size))
                 .astype(np.float32), backend=backend)
    y = model(x)
    assert y.shape == (2, 10)
    F.cross_entropy(y, np.array([3, 7])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, pname
        assert np.isfinite(p.grad.gather()).all(), pname
    model.eval()
    with nn.no_grad():
        assert np.isfinite(model(x).gather()).all()


@pytest.mark.parametrize("mode", MODES)
def test_a_few_steps_reduce_the_loss(backend, mode):
    gm.seed(0)
    model = models.lenet5(binary=mode).to(backend)
    r = rng(11)
    labels = r.integers(0, 10, 16)
    x_host = r.standard_normal((16, 1, 32, 32)).astype(np.float32) * 0.5
    x_host += labels[:, None, None, None] / 5.0             # learnable: the brightness
    x = gm.array(x_host, backend=backend)
    opt = nn.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    assert losses[-1] < 0.85 * losses[0], losses


# ---- registry and command line -----------------------------------------------------------------

def test_registry_and_command_line_select_binary_variants():
    assert models.binary_names() == ["lenet5", "lenet_tf", "resnet20", "resnet32", "resnet44",
                                     "resnet56"]
    model = models.get("resnet20", binary="dorefa", num_classes=4)
    assert binary_layers(model) and model.fc.out_features == 4
    assert not binary_layers(models.get("lenet5", binary=None))
    with pytest.raises(ValueError, match="'mobilenet_lite' has no binarized variant.*lenet5"):
        models.get("mobilenet_lite", binary="xnor")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["lenet5", "--binary", "xnor"])
    cli._check(args, parser)
    assert args.binary == "xnor"
    for argv in (["mobilenet_lite", "--binary", "xnor"], ["--netdef", "x.json", "--binary", "bwn"]):
        with pytest.raises(SystemExit):
            cli._check(parser.parse_args(argv), parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["lenet5", "--binary", "ternary"])


def test_command_line_trains_a_binary_model(tmp_path, monkeypatch, capsys):
    """``python -m gpumat train lenet5 --binary xnor`` end to end on a few synthetic images."""
    from gpumat.nn.data import Dataset
    r = rng(12)
    labels = r.integers(0, 10, 64)
    images = r.integers(0, 255, (64, 1, 28, 28)).astype(np.uint8)
    data = Dataset(images, labels, [str(i) for i in range(10)], "fashion-mnist", "train",
                   (0.5,), (0.25,))
    monkeypatch.setattr(cli, "load_dataset", lambda *args, **kwargs: data)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["lenet5", "--binary", "xnor", "--epochs", "1", "--batch-size",
                              "32", "--backend", "cpu", "--out", str(tmp_path)])
    assert cli.run(args, parser) == 0
    out = capsys.readouterr().out
    assert "training lenet5-xnor" in out
    assert (tmp_path / "metrics.json").exists()
    stored = load_state(tmp_path / "model.npz")
    assert "conv2.weight_bits" in stored and "conv1.weight" in stored
    kib = (tmp_path / "model.npz").stat().st_size / 1024
    assert f"metrics, model ({kib:,.1f} KiB) and curves in {tmp_path}/" in out
    assert kib < 241 / 4                     # the float LeNet-5's weights alone are 241 KiB
