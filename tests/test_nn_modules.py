"""Modules and layers: registration, state_dict interchange with PyTorch, modes, parity of
every layer with its torch.nn twin, gradient checks, initialisers."""
import math

import numpy as np
import pytest
import torch

import gpumat as gm
import gpumat.nn.functional as F
from gpumat import nn
from gpumat.nn import init
from gpumat.nn.gradcheck import gradcheck
from torch_parity import assert_matches_torch

RNG = np.random.default_rng(99)

# (our layer, the torch layer, input shape)
LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1),
             lambda: torch.nn.Conv2d(3, 5, 3, stride=2, padding=1), (2, 3, 9, 9)),
    "conv_dilated_nobias": (lambda: nn.Conv2d(4, 2, (3, 2), dilation=(2, 1), bias=False),
                            lambda: torch.nn.Conv2d(4, 2, (3, 2), dilation=(2, 1), bias=False),
                            (1, 4, 8, 7)),
    "depthwise": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4),
                  lambda: torch.nn.Conv2d(4, 8, 3, padding=1, groups=4), (2, 4, 5, 5)),
    "linear": (lambda: nn.Linear(7, 3), lambda: torch.nn.Linear(7, 3), (5, 7)),
    "bn2d": (lambda: nn.BatchNorm2d(3), lambda: torch.nn.BatchNorm2d(3), (4, 3, 5, 5)),
    "bn1d": (lambda: nn.BatchNorm1d(6), lambda: torch.nn.BatchNorm1d(6), (8, 6)),
    "lrn": (lambda: nn.LocalResponseNorm(5, 1e-3, 0.75, 2.0),
            lambda: torch.nn.LocalResponseNorm(5, 1e-3, 0.75, 2.0), (2, 8, 3, 3)),
    "maxpool": (lambda: nn.MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1),
                (2, 3, 7, 7)),
    "avgpool": (lambda: nn.AvgPool2d(2), lambda: torch.nn.AvgPool2d(2), (2, 3, 6, 6)),
    "adaptive": (lambda: nn.AdaptiveAvgPool2d((1, 1)),
                 lambda: torch.nn.AdaptiveAvgPool2d((1, 1)), (2, 3, 4, 5)),
    "relu": (nn.ReLU, torch.nn.ReLU, (3, 4)),
    "leaky": (lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2), (3, 4)),
    "relu6": (nn.ReLU6, torch.nn.ReLU6, (3, 4)),
    "elu": (nn.ELU, torch.nn.ELU, (3, 4)),
    "tanh": (nn.Tanh, torch.nn.Tanh, (3, 4)),
    "sigmoid": (nn.Sigmoid, torch.nn.Sigmoid, (3, 4)),
    "softmax": (lambda: nn.Softmax(1), lambda: torch.nn.Softmax(1), (3, 4)),
    "logsoftmax": (lambda: nn.LogSoftmax(1), lambda: torch.nn.LogSoftmax(1), (3, 4)),
    "flatten": (nn.Flatten, torch.nn.Flatten, (2, 3, 4)),
    "identity": (nn.Identity, torch.nn.Identity, (2, 3)),
    "dropout_eval": (lambda: nn.Dropout(0.5).eval(), lambda: torch.nn.Dropout(0.5).eval(),
                     (4, 5)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_torch(backend, name):
    make, make_torch, shape = LAYERS[name]
    gm.use(backend)
    try:
        ours, theirs = make(), make_torch()
    finally:
        gm.use("auto")
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    x = RNG.uniform(-2, 2, shape).astype(np.float32)
    assert_matches_torch(ours, theirs, shape, backend, passes=2, data=x)   # 2: BN's stats move


@pytest.mark.parametrize("name", ["conv", "depthwise", "linear", "bn2d", "bn1d", "lrn",
                                  "maxpool", "avgpool", "adaptive"])
def test_layer_gradcheck(backend, name):
    make, _, shape = LAYERS[name]
    gm.use(backend)
    try:
        layer = make()
    finally:
        gm.use("auto")
    for p in layer.parameters():               # check in double precision
        p.data = p.data.astype("double")
    x = nn.Variable(gm.array(RNG.uniform(-2, 2, shape), backend=backend), requires_grad=True)
    assert gradcheck(lambda v, *params: layer(v), [x] + layer.parameters(), max_elements=30)


def test_batch_norm_eval_uses_running_statistics(backend):
    gm.use(backend)
    try:
        bn = nn.BatchNorm2d(2, momentum=None)     # cumulative average
    finally:
        gm.use("auto")
    tbn = torch.nn.BatchNorm2d(2, momentum=None)
    for _ in range(3):
        x = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32) * 3 + 1
        bn(gm.array(x, backend=backend))
        tbn(torch.from_numpy(x))
    assert int(bn.num_batches_tracked.item()) == 3
    bn.eval()
    tbn.eval()
    x = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(bn(gm.array(x, backend=backend)).gather(),
                               tbn(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_registration_and_traversal():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.bn = nn.BatchNorm2d(3)
            self.scale = 2.0                      # a plain attribute

        def forward(self, x):
            return F.relu(self.bn(self.conv(x))) * self.scale

    model = nn.Sequential(Block(), nn.Flatten(), nn.Linear(12, 2))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.conv.weight", "0.conv.bias", "0.bn.weight", "0.bn.bias", "2.weight",
                     "2.bias"]
    assert [n for n, _ in model.named_buffers()] == ["0.bn.running_mean", "0.bn.running_var",
                                                     "0.bn.num_batches_tracked"]
    assert list(model.state_dict()) == names[:4] + [n for n, _ in model.named_buffers()] + \
        names[4:]
    assert [n for n, _ in model.named_modules()] == ["", "0", "0.conv", "0.bn", "1", "2"]
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    assert len(model) == 3 and isinstance(model[1], nn.Flatten)
    assert "(conv): Conv2d(2, 3, kernel_size=(3, 3)" in repr(model)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        model[2].weight = np.zeros((2, 12))
    shared = nn.Linear(3, 3)
    tied = nn.Sequential(shared, shared)
    assert len(tied.parameters()) == 2            # each shared Parameter once


def test_state_dict_round_trip_and_errors(backend):
    gm.use(backend)
    try:
        a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    finally:
        gm.use("auto")
    weight = b.weight
    b.load_state_dict(a.state_dict())
    assert b.weight is weight                       # the Parameter object is kept
    np.testing.assert_array_equal(b.weight.gather(), a.weight.gather())
    snapshot = a.state_dict()
    before = snapshot["weight"].gather()
    a.weight.data = a.weight.data * 2               # training later does not change snapshots
    np.testing.assert_array_equal(snapshot["weight"].gather(), before)
    with pytest.raises(KeyError, match="missing: bias"):
        b.load_state_dict({"weight": np.zeros((3, 4))})
    with pytest.raises(KeyError, match="unexpected: extra"):
        b.load_state_dict(dict(a.state_dict(), extra=np.zeros(1)))
    with pytest.raises(ValueError, match=r"weight has shape \(4, 3\)"):
        b.load_state_dict({"weight": np.zeros((4, 3)), "bias": np.zeros(3)})
    missing, unexpected = b.load_state_dict({"bias": np.ones(3)}, strict=False)
    assert missing == ["weight"] and unexpected == []
    np.testing.assert_array_equal(b.bias.gather(), np.ones(3, np.float32))


def test_module_to_moves_parameters_and_buffers(backend):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).to("cpu")
    params = model.parameters()
    model.to(backend)
    assert model.parameters() == params
    assert all(p.backend == backend for p in params)
    assert all(b.backend == backend for b in model.buffers())


def test_module_list_slices_are_module_lists():
    layers = nn.ModuleList([nn.ReLU(), nn.Linear(2, 3), nn.Tanh()])
    part = layers[1:]
    assert isinstance(part, nn.ModuleList) and len(part) == 2 and part[0] is layers[1]
    assert [n for n, _ in part.named_parameters()] == ["0.weight", "0.bias"]


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(TypeError, match="kernel_size"):
        nn.Conv2d(3, 4, "3")
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): expected an input of 4-d"):
        nn.BatchNorm2d(3)(gm.zeros(2, 3))
    with pytest.raises(ValueError, match="p must be"):
        nn.Dropout(1.5)
    # geometry refused when the layer is made (a 0 kernel divided by zero in its initializer)
    for kwargs, message in [(dict(kernel_size=0), "kernel_size must be at least 1, got 0"),
                            (dict(kernel_size=(3, 0)), r"kernel_size must be at least 1"),
                            (dict(kernel_size=-1), "kernel_size must be at least 1"),
                            (dict(kernel_size=3, stride=0), "stride must be at least 1"),
                            (dict(kernel_size=3, padding=-1), "padding must be at least 0"),
                            (dict(kernel_size=3, dilation=(1, 0)), "dilation must be at least")]:
        with pytest.raises(ValueError, match=f"Conv2d: {message}"):
            nn.Conv2d(3, 3, **kwargs)
    x = gm.ones(2, 3, 4, 5)
    with pytest.raises(gm.ShapeError, match="start_dim 4 is out of range for a 4-d input"):
        nn.Flatten(4)(x)
    with pytest.raises(gm.ShapeError, match="start_dim -5 is out of range"):
        nn.functional.flatten(x, -5)
    assert nn.functional.flatten(x, -1).shape == (2, 3, 4, 5)
    assert nn.functional.flatten(x, -4).shape == (120,)


def test_default_initialisation_matches_torch_bounds():
    gm.seed(3)
    conv = nn.Conv2d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 9)
    w = conv.weight.gather()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.mean()) < 0.1 * bound
    assert np.abs(conv.bias.gather()).max() <= bound


def test_initialisers():
    gm.seed(0)
    p = nn.Parameter(gm.zeros(400, 300))
    init.xavier_uniform_(p)
    assert np.abs(p.gather()).max() <= math.sqrt(6 / 700)
    init.xavier_normal_(p)
    np.testing.assert_allclose(p.gather().std(), math.sqrt(2 / 700), rtol=0.02)
    init.kaiming_normal_(p, nonlinearity="relu")
    np.testing.assert_allclose(p.gather().std(), math.sqrt(2 / 300), rtol=0.02)
    init.kaiming_uniform_(p, nonlinearity="relu", mode="fan_out")
    assert np.abs(p.gather()).max() <= math.sqrt(3) * math.sqrt(2 / 400)
    init.trunc_normal_(p, std=0.1)
    values = p.gather()
    assert np.abs(values).max() <= 0.2
    # a normal truncated at 2 sigma has std 0.8796 sigma
    np.testing.assert_allclose(values.std(), 0.1 * 0.8796, rtol=0.03)
    init.constant_(p, 0.25)
    assert (p.gather() == 0.25).all()
    gm.seed(5)
    a = init.normal_(nn.Parameter(gm.zeros(3, 3, backend="cpu"))).gather()
    gm.seed(5)
    b = init.normal_(nn.Parameter(gm.zeros(3, 3))).gather()
    np.testing.assert_array_equal(a, b)        # the same numbers on every backend
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(nn.Parameter(gm.zeros(3)))


def test_load_state_dict_keeps_0d_buffers_and_is_all_or_nothing(backend):
    gm.use(backend)
    try:
        bn = nn.BatchNorm2d(2)
    finally:
        gm.use("auto")
    torch_state = torch.nn.BatchNorm2d(2).state_dict()
    torch_state["num_batches_tracked"] += 5
    bn.load_state_dict({k: v.numpy() for k, v in torch_state.items()})
    assert bn.num_batches_tracked.shape == () and int(bn.num_batches_tracked.item()) == 5
    bad = {k: v.numpy() for k, v in torch_state.items()}
    bad["weight"] = np.full(2, 7.0, np.float32)
    bad["running_var"] = np.ones(3, np.float32)           # wrong shape, after weight
    with pytest.raises(ValueError, match="running_var has shape"):
        bn.load_state_dict(bad)
    np.testing.assert_array_equal(bn.weight.gather(), np.ones(2))   # nothing was loaded
