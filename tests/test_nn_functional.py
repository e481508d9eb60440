"""Every differentiable op of gpumat.nn.functional: forward and gradients against PyTorch
(float64 references), and a finite-difference gradient check, on every backend."""
import numpy as np
import pytest
import torch

import gpumat as gm
import gpumat.nn.functional as F
from gpumat import nn
from gpumat.nn.gradcheck import GradcheckError, gradcheck

RNG = np.random.default_rng(1234)


def host(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape)


def var(x, backend, dtype="double", requires_grad=True):
    return nn.Variable(gm.array(np.asarray(x).astype(dtype), backend=backend),
                       requires_grad=requires_grad)


def tensor(x):
    return torch.tensor(np.asarray(x, np.float64), requires_grad=True)


def check_against_torch(ours, theirs, inputs, backend, rtol=1e-4, atol=1e-5, dtype="single"):
    """Run ``ours`` on gpumat Variables and ``theirs`` on float64 torch tensors made from the
    same values; compare outputs and the gradients of sum(output * weights)."""
    variables = [var(x, backend, dtype) for x in inputs]
    tensors = [tensor(np.asarray(x).astype(dtype)) for x in inputs]
    out = ours(*variables)
    expected = theirs(*tensors)
    np.testing.assert_allclose(out.gather(), expected.detach().numpy(), rtol=rtol, atol=atol)
    weights = RNG.standard_normal(expected.shape)
    out.backward(gm.array(weights.astype(dtype), backend=backend))
    (expected * torch.tensor(weights)).sum().backward()
    for i, (v, t) in enumerate(zip(variables, tensors)):
        scale = max(1.0, float(np.abs(t.grad.numpy()).max(initial=0.0)))
        np.testing.assert_allclose(v.grad.gather(), t.grad.numpy(), rtol=rtol,
                                   atol=atol * scale, err_msg=f"gradient of input {i}")


# ---- arithmetic and shapes --------------------------------------------------------------------

BINARY = [(F.add, torch.add), (F.sub, torch.sub), (F.mul, torch.mul),
          (F.div, torch.div)]


@pytest.mark.parametrize("ours,theirs", BINARY, ids=["add", "sub", "mul", "div"])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((5, 1), (1, 7)),
                                    ((1,), (3, 2)), ((0, 3), (3,))])
def test_broadcasting_arithmetic(backend, ours, theirs, shapes):
    a, b = host(*shapes[0]), host(*shapes[1], low=0.5, high=2.0)
    check_against_torch(ours, theirs, [a, b], backend)


def test_arithmetic_with_python_numbers(backend):
    x = var(host(2, 3), backend)
    y = 2.0 - x * 3 + 1 / (x + 4) - (-x) ** 2
    y.backward(gm.ones(2, 3, dtype="double", backend=backend))
    t = tensor(x.gather())
    (2.0 - t * 3 + 1 / (t + 4) - (-t) ** 2).sum().backward()
    np.testing.assert_allclose(x.grad.gather(), t.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "tanh", "sigmoid", "relu", "relu6",
                                  "leaky_relu", "elu"])
def test_unary(backend, name):
    x = host(4, 7, low=0.1, high=3.0) if name in ("log", "sqrt") else host(4, 7, low=-7, high=7)
    theirs = {"relu6": torch.nn.functional.relu6, "leaky_relu": torch.nn.functional.leaky_relu,
              "elu": torch.nn.functional.elu, "sigmoid": torch.sigmoid}.get(
        name, getattr(torch, name, None))
    check_against_torch(getattr(F, name), theirs, [x], backend)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2), -1])
def test_sum_mean(backend, axis):
    x = host(3, 4, 5)
    dims = axis if axis is not None else (0, 1, 2)
    check_against_torch(lambda v: F.sum(v, axis), lambda t: t.sum(dim=dims), [x], backend)
    check_against_torch(lambda v: F.mean(v, axis, keepdims=True),
                        lambda t: t.mean(dim=dims, keepdim=True), [x], backend)


def test_shape_ops(backend):
    x = host(2, 3, 4)
    check_against_torch(lambda v: F.reshape(v, 4, 6) * 2, lambda t: t.reshape(4, 6) * 2, [x],
                        backend)
    check_against_torch(lambda v: F.flatten(v, 1), lambda t: t.flatten(1), [x], backend)
    check_against_torch(lambda v: F.permute(v, 2, 0, 1), lambda t: t.permute(2, 0, 1), [x],
                        backend)
    check_against_torch(lambda v: v[1, :, 1:3], lambda t: t[1, :, 1:3], [x], backend)
    check_against_torch(lambda v: v.T, lambda t: t.permute(2, 1, 0), [x], backend)


def test_cat(backend):
    a, b, c = host(2, 3, 4, 4), host(2, 1, 4, 4), host(2, 5, 4, 4)
    check_against_torch(lambda *v: F.cat(v, axis=1), lambda *t: torch.cat(t, dim=1),
                        [a, b, c], backend)


def test_matmul_and_linear(backend):
    a, b = host(5, 7), host(7, 3)
    check_against_torch(F.matmul, torch.matmul, [a, b], backend)
    x, w, bias = host(6, 7), host(4, 7), host(4)
    check_against_torch(F.linear, torch.nn.functional.linear, [x, w, bias], backend)


def test_products_check_dtypes(backend):
    x, w = var(host(2, 3), backend, "single"), var(host(4, 3), backend, "double")
    with pytest.raises(TypeError, match="share one float dtype"):
        F.linear(x, w)
    with pytest.raises(ValueError, match="matching inner dimensions"):
        F.matmul(x, x)


def test_differentiable_indexing_rejects_index_arrays(backend):
    x = var(host(4), backend)
    with pytest.raises(IndexError, match="slices"):
        x[[0, 0]]


def test_pow_needs_a_number(backend):
    x = var(host(3), backend)
    with pytest.raises(TypeError, match="exponent"):
        F.pow(x, x)


# ---- convolution and pooling -------------------------------------------------------------------

CONV_CASES = [
    dict(x=(2, 3, 7, 7), w=(4, 3, 3, 3), stride=1, padding=1, dilation=1, groups=1),
    dict(x=(1, 1, 5, 11), w=(2, 1, 5, 2), stride=(2, 3), padding=(2, 0), dilation=1, groups=1),
    dict(x=(3, 4, 9, 9), w=(6, 2, 3, 3), stride=2, padding=1, dilation=2, groups=2),
    dict(x=(2, 5, 6, 6), w=(5, 1, 3, 3), stride=1, padding=1, dilation=1, groups=5),
    dict(x=(2, 3, 4, 4), w=(7, 3, 1, 1), stride=1, padding=0, dilation=1, groups=1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"x{c['x']}w{c['w']}g{c['groups']}")
def test_conv2d(backend, case):
    geometry = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    x, w, b = host(*case["x"]), host(*case["w"]), host(case["w"][0])
    check_against_torch(lambda *v: F.conv2d(*v, **geometry),
                        lambda *t: torch.nn.functional.conv2d(*t, **geometry),
                        [x, w, b], backend, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kernel,stride,padding,ceil", [(2, None, 0, False), (3, 2, 1, False),
                                                        (3, 2, 0, True), ((2, 3), 1, (1, 1), False)])
def test_pooling(backend, kernel, stride, padding, ceil):
    x = host(2, 3, 9, 8)
    check_against_torch(lambda v: F.max_pool2d(v, kernel, stride, padding, ceil),
                        lambda t: torch.nn.functional.max_pool2d(t, kernel, stride, padding,
                                                                 ceil_mode=ceil), [x], backend)
    check_against_torch(lambda v: F.avg_pool2d(v, kernel, stride, padding, ceil),
                        lambda t: torch.nn.functional.avg_pool2d(t, kernel, stride, padding,
                                                                 ceil_mode=ceil), [x], backend)


@pytest.mark.parametrize("size", [1, (2, 2), (3, 5), (5, 3), (7, 7), (6, 4)])
def test_adaptive_avg_pool(backend, size):
    x = host(2, 3, 6, 7)
    check_against_torch(lambda v: F.adaptive_avg_pool2d(v, size),
                        lambda t: torch.nn.functional.adaptive_avg_pool2d(t, size), [x], backend)


# ---- normalisation, dropout, softmax, losses ------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6), (2, 1, 1, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(backend, shape, training):
    c = shape[1]
    mean0, var0 = host(c), host(c, low=0.5, high=2.0)
    rm, rv = gm.array(mean0.astype("float32"), backend=backend), \
        gm.array(var0.astype("float32"), backend=backend)
    trm, trv = torch.tensor(mean0), torch.tensor(var0)
    x, w, b = host(*shape, low=-3, high=5), host(c), host(c)
    check_against_torch(
        lambda *v: F.batch_norm(v[0], rm, rv, v[1], v[2], training, 0.1, 1e-5),
        lambda *t: torch.nn.functional.batch_norm(t[0], trm, trv, t[1], t[2], training, 0.1,
                                                  1e-5), [x, w, b], backend)
    np.testing.assert_allclose(rm.gather(), trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv.gather(), trv.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_needs_two_values_per_channel(backend):
    with pytest.raises(ValueError, match="more than one value"):
        F.batch_norm(var(host(1, 3), backend), None, None, training=True)


@pytest.mark.parametrize("size", [5, 4, 1, 2])
def test_local_response_norm(backend, size):
    x = host(2, 7, 3, 4, low=-2, high=2)
    check_against_torch(lambda v: F.local_response_norm(v, size, 1e-2, 0.75, 2.0),
                        lambda t: torch.nn.functional.local_response_norm(t, size, 1e-2, 0.75,
                                                                          2.0), [x], backend)


def test_dropout(backend):
    gm.seed(7)
    x = var(np.ones((200, 50)), backend, dtype="single")
    y = F.dropout(x, 0.3, training=True)
    values = y.gather()
    kept = values != 0
    assert 0.65 < kept.mean() < 0.75
    np.testing.assert_allclose(values[kept], 1 / 0.7, rtol=1e-6)
    y.backward(gm.ones(200, 50, backend=backend))
    np.testing.assert_array_equal(x.grad.gather(), values)
    assert F.dropout(x, 0.3, training=False) is x
    gm.seed(7)
    np.testing.assert_array_equal(F.dropout(x, 0.3).gather(), values)   # reproducible
    # p = 1 drops everything (torch: zeros, and zero gradients)
    x.grad = None
    y = nn.Dropout(1.0)(x)
    np.testing.assert_array_equal(y.gather(), np.zeros((200, 50)))
    y.backward(gm.ones(200, 50, backend=backend))
    np.testing.assert_array_equal(x.grad.gather(), np.zeros((200, 50)))


def test_losses_of_an_empty_batch(backend):
    """The mean over no samples is NaN, as torch's; the sum 0."""
    logits = var(np.zeros((0, 4)), backend, dtype="single")
    target = gm.array(np.zeros(0, np.int64), backend=backend)
    for loss in (F.cross_entropy, F.nll_loss):
        assert np.isnan(loss(logits, target).item())
        assert loss(logits, target, reduction="sum").item() == 0.0


@pytest.mark.parametrize("axis", [1, 0])
def test_softmax(backend, axis):
    x = host(4, 6, low=-5, high=5)
    check_against_torch(lambda v: F.softmax(v, axis), lambda t: torch.softmax(t, axis), [x],
                        backend)
    check_against_torch(lambda v: F.log_softmax(v, axis), lambda t: torch.log_softmax(t, axis),
                        [x], backend)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(backend, smoothing, reduction):
    logits = host(9, 5, low=-20, high=20)
    target = RNG.integers(0, 5, 9)
    check_against_torch(
        lambda v: F.cross_entropy(v, gm.array(target, backend=backend), smoothing, reduction),
        lambda t: torch.nn.functional.cross_entropy(t, torch.tensor(target),
                                                    label_smoothing=smoothing,
                                                    reduction=reduction), [logits], backend)


def test_cross_entropy_is_stable_for_huge_logits(backend):
    logits = var(np.array([[1e4, -1e4, 0.0], [0.0, 3e4, -3e4]]), backend, dtype="single")
    loss = F.cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), (0 + 6e4) / 2, rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_losses_with_classes_masked_by_minus_inf(backend, smoothing):
    # masking classes with a -inf logit is common: a masked class that is not the target
    # leaves the loss finite (torch), a NaN logit makes its row NaN, a masked target gives inf
    x = np.array([[0.0, -np.inf, 1, 2, 3], [1, 2, -np.inf, -np.inf, 0],
                  [np.nan, 0, 0, 0, 0], [-np.inf, 0, 0, 0, 1]], np.float32)
    target = np.array([0, 4, 1, 0])
    tx, tt = torch.tensor(x), torch.tensor(target)
    for reduction in ("none", "sum"):
        got = F.cross_entropy(gm.array(x, backend=backend), target, smoothing, reduction)
        expected = torch.nn.functional.cross_entropy(tx, tt, reduction=reduction,
                                                     label_smoothing=smoothing).numpy()
        np.testing.assert_allclose(got.gather(), expected, rtol=1e-6)
        got = F.nll_loss(gm.array(x, backend=backend), target, reduction)
        expected = torch.nn.functional.nll_loss(tx, tt, reduction=reduction).numpy()
        np.testing.assert_allclose(got.gather(), expected, rtol=1e-6)
    finite = F.cross_entropy(gm.array(x[:2], backend=backend), target[:2], smoothing)
    assert np.isfinite(finite.item()) == (smoothing == 0.0)


def test_nll_and_mse(backend):
    logp = np.log(RNG.dirichlet(np.ones(4), size=6))
    target = RNG.integers(0, 4, 6)
    check_against_torch(lambda v: F.nll_loss(v, gm.array(target, backend=backend)),
                        lambda t: torch.nn.functional.nll_loss(t, torch.tensor(target)),
                        [logp], backend)
    a, b = host(3, 4), host(3, 4)
    check_against_torch(F.mse_loss, torch.nn.functional.mse_loss, [a, b], backend)


def test_loss_errors(backend):
    logits = var(host(3, 4), backend)
    with pytest.raises(ValueError, match="out of range for 4 classes"):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        F.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="prediction has shape"):
        F.mse_loss(logits, var(host(4, 3), backend))


def test_topk_accuracy(backend):
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.3]])
    target = np.array([1, 2, 0, 2])
    x = gm.array(logits, backend=backend)
    assert F.top1(x, target) == 2 / 4          # rows 0 and 3 (a tie counts for the target)
    assert F.topk_correct(x, target, 2) == 3   # row 2 too: class 0 is second
    assert F.top5(x, target) == 1.0
    ranks = (-logits).argsort(1)
    assert F.topk_correct(x, target, 1) == sum(ranks[i, 0] == target[i] for i in (0, 1, 2)) + 1
    logits[0, 2] = logits[1, 1] = np.nan          # a NaN anywhere in a row makes it a miss
    assert F.topk_correct(gm.array(logits, backend=backend), target, 5) == 2


# ---- finite differences: every op in double precision ------------------------------------------

GRADCHECK_CASES = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [(3, 4), (2, 4), (2,)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [(1, 2, 5, 5),
                                                                       (3, 2, 3, 3), (3,)]),
    "depthwise": (lambda x, w: F.conv2d(x, w, padding=1, groups=2), [(1, 2, 4, 4), (2, 1, 3, 3)]),
    "max_pool": (lambda x: F.max_pool2d(x, 3, 2, 1), [(1, 2, 5, 5)]),
    "avg_pool": (lambda x: F.avg_pool2d(x, 2, 1, ceil_mode=True), [(1, 2, 4, 3)]),
    "adaptive": (lambda x: F.adaptive_avg_pool2d(x, (2, 3)), [(1, 2, 5, 4)]),
    "global": (lambda x: F.global_avg_pool2d(x), [(2, 3, 2, 3)]),
    "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                   [(3, 2, 2, 2), (2,), (2,)]),
    "lrn": (lambda x: F.local_response_norm(x, 3, 0.1, 0.75, 1.0), [(1, 5, 2, 2)]),
    "tanh_sigmoid": (lambda x: F.tanh(x) * F.sigmoid(x), [(3, 5)]),
    "softmax": (lambda x: F.softmax(x, 1) + F.log_softmax(x, 0), [(3, 4)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([2, 0, 1]), 0.2), [(3, 4)]),
    "cat_getitem": (lambda a, b: F.cat([a, b[:, 1:]], axis=1).sum(axis=(0, 2)), [(2, 2, 3),
                                                                                 (2, 3, 3)]),
    "div_sqrt_log": (lambda a, b: F.log(F.sqrt(a * a + 1) / (b * b + 2)), [(3, 3), (3,)]),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck(backend, name):
    function, shapes = GRADCHECK_CASES[name]
    inputs = [var(host(*s), backend) for s in shapes]
    assert gradcheck(function, inputs)


def test_gradcheck_catches_a_wrong_backward(backend):
    class Wrong(nn.Function):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, grad):
            return grad * self.x        # missing the factor 2

    with pytest.raises(GradcheckError, match="element"):
        gradcheck(lambda x: Wrong.apply(x), [var(host(3), backend)])
