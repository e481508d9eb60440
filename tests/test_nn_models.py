"""The model zoo: every model builds, runs forward and backward on every backend, keeps
torchvision's names, and its building blocks (LeNet-5, the ResNet blocks, the option-A
shortcut, the Inception block) compute what the same network written with torch.nn computes,
outputs and every gradient, given the same weights."""
import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import gpumat as gm
import gpumat.nn.functional as F
import gpumat.nn.models as models
from gpumat import nn
from gpumat.nn import init
from torch_parity import assert_matches_torch, close

RNG = np.random.default_rng(2024)

# the spatial size each model is exercised at: the smallest (or a small) one its layout takes
SMALL_INPUT = {"lenet5": 32, "lenet_tf": 28, "alexnet": 63, "vgg11": 32, "vgg16": 32,
               "resnet20": 16, "resnet32": 8, "resnet44": 8, "resnet56": 8, "resnet18": 32,
               "resnet34": 32, "resnet50": 32, "googlenet_lite": 16, "mobilenet_lite": 16}
# the 60-140 M parameter models, whose builds take seconds even with fast_init
LARGE = {"alexnet", "vgg11", "vgg16"}


@pytest.fixture
def fast_init(monkeypatch):
    """Initial weights from a small block of random numbers (uniform or normal, as asked)
    tiled over each tensor: gm's host generator takes ~15 s to draw VGG's 120 M classifier
    weights, while what these tests check is the layout, the counts and that forward and
    backward run, for which tiled random values do as well."""
    rng = np.random.default_rng(0)
    uniform, normal = rng.random(4099, np.float32), rng.standard_normal(4099, np.float32)

    def fill(target, block, low, scale):
        values = np.resize((block * scale + low).astype(target.dtype), target.shape)
        target.data = gm.array(values, backend=target.backend)
        return target

    monkeypatch.setattr(init, "uniform_",
                        lambda target, a=0.0, b=1.0: fill(target, uniform, a, b - a))
    monkeypatch.setattr(init, "normal_",
                        lambda target, mean=0.0, std=1.0: fill(target, normal, mean, std))


def build(make, backend, seed=0):
    """A model built by ``make`` on ``backend`` (its default while building, so the weights
    go there once), from gm's generator seeded with ``seed``: every backend and every test
    order gets the same weights."""
    gm.seed(seed)
    previous = gm.default_backend()
    gm.use(backend)
    try:
        return make().to(backend)
    finally:
        gm.use(previous)


# ---- the same networks written with torch.nn ----------------------------------------------------

class TorchLeNet5(torch.nn.Module):
    """The PyTorch tutorial's Net (and its tanh / average-pooling twin)."""

    def __init__(self, activation):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = torch.nn.Linear(400, 120), torch.nn.Linear(120, 84)
        self.fc3 = torch.nn.Linear(84, 10)
        self.act = torch.relu if activation == "relu" else torch.tanh
        self.pool = TF.max_pool2d if activation == "relu" else TF.avg_pool2d

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)), 2)
        x = self.pool(self.act(self.conv2(x)), 2)
        x = self.act(self.fc1(torch.flatten(x, 1)))
        return self.fc3(self.act(self.fc2(x)))


def torch_conv_bn(cin, cout, kernel, stride=1):
    return (torch.nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            torch.nn.BatchNorm2d(cout))


class TorchBasicBlock(torch.nn.Module):
    """torchvision's BasicBlock; shortcut "B" a 1x1 projection, "A" zero padding."""

    def __init__(self, cin, cout, stride=1, shortcut=None):
        super().__init__()
        self.conv1, self.bn1 = torch_conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = torch_conv_bn(cout, cout, 3)
        self.shortcut, self.stride, self.extra = shortcut, stride, cout - cin
        if shortcut == "B":
            self.downsample = torch.nn.Sequential(*torch_conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.shortcut == "B":
            identity = self.downsample(x)
        elif self.shortcut == "A":
            identity = TF.pad(x[:, :, ::self.stride, ::self.stride],
                              (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        else:
            identity = x
        return torch.relu(out + identity)


class TorchBottleneck(torch.nn.Module):
    """torchvision's Bottleneck (v1.5: the stride on the 3x3), with a projection."""

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.bn1 = torch_conv_bn(cin, width, 1)
        self.conv2, self.bn2 = torch_conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = torch_conv_bn(width, 4 * width, 1)
        self.downsample = torch.nn.Sequential(*torch_conv_bn(cin, 4 * width, 1, stride))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class TorchCifarResNet(torch.nn.Module):
    """He et al.'s CIFAR ResNet with 6n + 2 layers and option-A shortcuts."""

    def __init__(self, n, num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = torch_conv_bn(3, 16, 3)
        cin = 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if i and not j else 1
                blocks.append(TorchBasicBlock(cin, width, stride,
                                              "A" if stride != 1 or cin != width else None))
                cin = width
            setattr(self, f"layer{i + 1}", torch.nn.Sequential(*blocks))
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(TF.adaptive_avg_pool2d(x, 1), 1))


class TorchBasicConv2d(torch.nn.Module):
    def __init__(self, cin, cout, kernel, padding=0):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.bn = torch.nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TorchInception(torch.nn.Module):
    """torchvision's Inception block."""

    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, kernel=3):
        super().__init__()
        self.branch1 = TorchBasicConv2d(cin, ch1x1, 1)
        self.branch2 = torch.nn.Sequential(TorchBasicConv2d(cin, ch3x3red, 1),
                                           TorchBasicConv2d(ch3x3red, ch3x3, 3, 1))
        self.branch3 = torch.nn.Sequential(TorchBasicConv2d(cin, ch5x5red, 1),
                                           TorchBasicConv2d(ch5x5red, ch5x5, kernel, kernel // 2))
        self.branch4 = torch.nn.Sequential(torch.nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                           TorchBasicConv2d(cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


# ---- parity with PyTorch ------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_lenet5_matches_torch(backend, activation):
    ours = build(lambda: models.lenet5(activation=activation), backend)
    assert_matches_torch(ours, TorchLeNet5(activation), (2, 1, 32, 32), backend)


def _host(value):
    """A module's output (a Variable, or an Array) as a NumPy array."""
    return np.asarray(getattr(value, "data", value))


@pytest.mark.parametrize("name, binary", [("lenet5", None), ("lenet5", "xnor"),
                                          ("lenet_tf", None), ("lenet_tf", "bwn")])
def test_lenet_inference_pools_before_its_relus_with_the_same_bits(backend, name, binary,
                                                                   monkeypatch):
    """In eval mode without a tape the LeNets run ReLU after max pooling (on a quarter of
    the elements): the outputs are those of the tutorial's order bit for bit -- inputs
    with NaN, signed zeros and ties included -- and with a tape the tutorial's order runs."""
    model = build(lambda: getattr(models, name)(binary=binary), backend)
    size = SMALL_INPUT[name]
    x = RNG.integers(-2, 3, (3, 1, size, size)).astype(np.float32)
    x[0, 0, ::5, ::3] = np.nan
    x[1, 0, ::2] = -0.0
    x = gm.array(x, backend=backend)
    model.eval()
    seen = []                        # the smallest value each pool is given
    for pool in (model.pool1, model.pool2):
        forward = pool.forward

        def watched(value, _forward=forward):
            seen.append(float(np.nanmin(_host(value))))
            return _forward(value)
        monkeypatch.setattr(pool, "forward", watched)
    with nn.no_grad():
        swapped = _host(model(x))
    assert min(seen) < 0             # the pools ran first, on the convolutions' outputs
    original = type(model)._act_pool
    monkeypatch.setattr(type(model), "_act_pool",
                        lambda self, act, pool, value: pool(act(value)))
    with nn.no_grad():
        assert _host(model(x)).tobytes() == swapped.tobytes()
    monkeypatch.setattr(type(model), "_act_pool", original)
    seen.clear()
    model(x)                         # with a tape: the tutorial's order ...
    assert min(seen) >= 0            # ... the pools see ReLU's outputs


@pytest.mark.parametrize("stride, cin, cout", [(1, 4, 4), (2, 4, 8)])
def test_basic_block_matches_torch(backend, stride, cin, cout):
    shortcut = "B" if stride != 1 else None
    downsample = None if shortcut is None else nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    ours = build(lambda: models.BasicBlock(cin, cout, stride, downsample), backend)
    assert_matches_torch(ours, TorchBasicBlock(cin, cout, stride, shortcut), (2, cin, 6, 6), backend)


def test_bottleneck_matches_torch(backend):
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    ours = build(lambda: models.Bottleneck(8, 4, 2, downsample), backend)
    assert ours.conv1.stride == (1, 1) and ours.conv2.stride == (2, 2)   # v1.5
    assert_matches_torch(ours, TorchBottleneck(8, 4, 2), (2, 8, 6, 6), backend)


def test_option_a_shortcut_block_matches_torch(backend):
    ours = build(lambda: models.BasicBlock(4, 8, 2, models.ZeroPadShortcut(4, 8, 2)), backend)
    assert ours.downsample.parameters() == []
    assert_matches_torch(ours, TorchBasicBlock(4, 8, 2, "A"), (2, 4, 7, 7), backend)


def test_cifar_resnet_matches_torch(backend):
    ours = build(lambda: models.resnet_cifar(1), backend)            # ResNet-8
    assert_matches_torch(ours, TorchCifarResNet(1), (4, 3, 8, 8), backend, rtol=1e-3, atol=1e-4)


def test_torch_weights_load_into_ours(backend):
    """The other direction: a torch state_dict (0-d num_batches_tracked included) loads."""
    theirs = TorchCifarResNet(1).eval()
    ours = build(lambda: models.resnet_cifar(1), backend).eval()
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    close(ours(gm.array(x, backend=backend)).gather(), theirs(torch.from_numpy(x)), 1e-4, 1e-5,
          "output")


@pytest.mark.parametrize("kernel", [3, 5])
def test_inception_block_matches_torch(backend, kernel):
    arguments = (6, 4, 3, 5, 2, 3, 3)
    ours = build(lambda: models.Inception(*arguments, branch3_kernel=kernel), backend)
    assert ours.out_channels == 4 + 5 + 3 + 3
    assert_matches_torch(ours, TorchInception(*arguments, kernel=kernel), (2, 6, 5, 5), backend)


def test_zero_pad_shortcut_gradient(backend):
    shortcut = models.ZeroPadShortcut(3, 8, 2)
    x = nn.Variable(gm.array(RNG.standard_normal((2, 3, 5, 5)), backend=backend),
                    requires_grad=True)
    y = shortcut(x)
    assert y.shape == (2, 8, 3, 3)
    host = y.gather()
    np.testing.assert_array_equal(host[:, 2:5], x.gather()[:, :, ::2, ::2])
    assert not host[:, :2].any() and not host[:, 5:].any()
    g = RNG.standard_normal(y.shape)
    y.backward(gm.array(g, backend=backend))
    expected = np.zeros((2, 3, 5, 5))
    expected[:, :, ::2, ::2] = g[:, 2:5]
    np.testing.assert_array_equal(x.grad.gather(), expected)
    # nothing to record (no_grad, or an input without gradient): the same values, no graph
    for recording in (False, True):
        with contextlib.nullcontext() if recording else nn.no_grad():
            for v in (x, nn.Variable(x.data), x.data):
                if recording and v is x:
                    continue                    # records a graph: checked above
                out = shortcut(v)
                assert not out.requires_grad and out.creator is None
                np.testing.assert_array_equal(out.gather(), host)
    with pytest.raises(ValueError, match="cannot shrink"):
        models.ZeroPadShortcut(8, 4)


# ---- every model, every backend -----------------------------------------------------------------

@pytest.mark.parametrize("name", models.names())
def test_model_forward_backward(backend, name, fast_init):
    model = build(lambda: models.get(name, num_classes=10), backend)
    size = SMALL_INPUT[name]
    x = gm.array(RNG.standard_normal((2, model.input_shape[0], size, size)).astype(np.float32),
                 backend=backend)
    y = model(x)
    assert y.shape == (2, 10) and y.backend == backend
    F.cross_entropy(y, np.array([3, 7])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, pname
        assert np.isfinite(p.grad.gather()).all(), pname
    model.eval()
    with nn.no_grad():
        assert np.isfinite(model(x).gather()).all()


def test_registry(fast_init):
    assert models.names() == ["lenet5", "lenet_tf", "alexnet", "vgg11", "vgg16", "resnet20",
                              "resnet32", "resnet44", "resnet56", "resnet18", "resnet34",
                              "resnet50", "googlenet_lite", "mobilenet_lite"]
    assert models.spec("lenet5").input_shape() == (1, 32, 32)
    assert models.spec("lenet_tf").input_shape() == (1, 28, 28)
    assert models.spec("resnet20").input_shape() == (3, 32, 32)
    assert models.spec("resnet20").input_shape(in_channels=1) == (1, 32, 32)
    assert models.spec("resnet50").input_size == (224, 224)
    for name in models.names():
        spec = models.spec(name)
        assert spec.name == name and spec.description
        if name not in LARGE:                          # (their builds take seconds)
            model = models.get(name, num_classes=7, in_channels=2)
            assert model.input_shape == spec.input_shape(2), name
            if spec.input_size[0] <= 32:              # the 224 x 224 ones pool adaptively
                x = gm.zeros((2,) + model.input_shape, backend="cpu")
                assert model.to("cpu")(x).shape == (2, 7), name
    depth = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
    for name, n in depth.items():
        assert len(models.get(name).layer1) == n
    with pytest.raises(KeyError, match="unknown model 'resnet1'.*lenet5"):
        models.get("resnet1")


def count(model):
    return sum(p.size for p in model.parameters())


def test_lenet_layouts():
    model = models.lenet5()
    assert [(n, p.shape) for n, p in model.named_parameters()] == [
        ("conv1.weight", (6, 1, 5, 5)), ("conv1.bias", (6,)), ("conv2.weight", (16, 6, 5, 5)),
        ("conv2.bias", (16,)), ("fc1.weight", (120, 400)), ("fc1.bias", (120,)),
        ("fc2.weight", (84, 120)), ("fc2.bias", (84,)), ("fc3.weight", (10, 84)),
        ("fc3.bias", (10,))]
    assert isinstance(model.pool1, nn.MaxPool2d) and isinstance(model.act1, nn.ReLU)
    tanh = models.lenet5(activation="tanh", num_classes=5, in_channels=3)
    assert isinstance(tanh.pool1, nn.AvgPool2d) and isinstance(tanh.act1, nn.Tanh)
    assert tanh.conv1.weight.shape == (6, 3, 5, 5) and tanh.fc3.weight.shape == (5, 84)
    with pytest.raises(ValueError, match="activation must be one of 'relu', 'tanh'"):
        models.lenet5(activation="sigmoid")
    gm.seed(0)
    tf = models.lenet_tf()
    assert count(tf) == 3_274_634
    assert tf.fc1.weight.shape == (1024, 7 * 7 * 64) and tf.dropout.p == 0.5
    for layer in (tf.conv1, tf.conv2, tf.fc1, tf.fc2):
        w = layer.weight.gather()
        assert np.abs(w).max() <= 0.2 + 1e-6          # truncated at 2 std
        assert (layer.bias.gather() == np.float32(0.1)).all()
    np.testing.assert_allclose(tf.fc1.weight.gather().std(), 0.1 * 0.8796, rtol=0.02)


def test_alexnet_layouts(fast_init):
    plain = models.alexnet(num_classes=10)
    assert count(plain) == 57_044_810
    assert [k for k in plain.state_dict() if k.endswith("weight")] == [
        "features.0.weight", "features.3.weight", "features.6.weight", "features.8.weight",
        "features.10.weight", "classifier.1.weight", "classifier.4.weight",
        "classifier.6.weight"]                        # torchvision's keys
    assert count(models.alexnet()) == 61_100_840      # torchvision's alexnet()
    bn = models.alexnet(num_classes=10, batch_norm=True)
    assert count(bn) == 58_325_066                    # the AlexNet with batch norm
    assert [type(m).__name__ for m in bn.features][:5] == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d"]
    assert [c.out_channels for c in bn.features if isinstance(c, nn.Conv2d)] == \
        list(models.ALEXNET_WIDTHS["paper"])
    assert sum(isinstance(m, nn.Dropout) for m in bn.classifier) == 2
    assert not any(isinstance(m, nn.BatchNorm1d) for m in bn.modules())
    assert count(models.alexnet(10, batch_norm=True, widths="torchvision")) == 57_047_114
    lrn = models.alexnet(num_classes=10, local_response_norm=True)
    assert count(lrn) == 58_322_314                   # the 2012 widths, no BN
    assert [type(m).__name__ for m in lrn.features][:4] == [
        "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]
    with pytest.raises(ValueError, match="widths must be"):
        models.alexnet(widths="wide")


def test_vgg_layouts(fast_init):
    vgg16 = models.vgg16()
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert [k for k in vgg16.state_dict() if k.endswith("weight")] == \
        [f"features.{i}.weight" for i in convs] + [f"classifier.{i}.weight" for i in (0, 3, 6)]
    assert count(vgg16) == 138_357_544
    assert count(models.vgg11()) == 132_863_336
    bn = models.vgg11(num_classes=10, batch_norm=True)
    assert [type(m).__name__ for m in bn.features][:4] == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert bn.classifier[6].weight.shape == (10, 4096)


def test_resnet_layouts(fast_init):
    r18 = models.resnet18()
    state = r18.state_dict()
    assert len(state) == 122 and count(r18) == 11_689_512
    assert list(state)[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                               "bn1.running_var", "bn1.num_batches_tracked"]
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert "layer2.0.downsample.1.running_var" in state and "layer1.0.downsample.0.weight" \
        not in state
    assert list(state)[-2:] == ["fc.weight", "fc.bias"]
    r50 = models.resnet50(num_classes=10)
    assert len(r50.state_dict()) == 320
    assert r50.layer1[0].downsample[0].weight.shape == (256, 64, 1, 1)
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)
    v1 = models.resnet50(stride_in_1x1=True)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert count(v1) == 25_557_032
    r20 = models.resnet20()
    assert count(r20) == 269_722 and r20.maxpool is None
    assert isinstance(r20.layer2[0].downsample, models.ZeroPadShortcut)
    assert r20.layer1[0].downsample is None
    b = models.resnet_cifar(3, shortcut="B", in_channels=1)
    assert isinstance(b.layer3[0].downsample, nn.Sequential) and b.conv1.in_channels == 1
    assert count(b) == 269_722 - 2 * 16 * 9 + (16 * 32 + 64) + (32 * 64 + 128)
    with pytest.raises(ValueError, match="shortcut must be one of"):
        models.resnet_cifar(3, shortcut="C")
    with pytest.raises(ValueError, match="n must be a positive int"):
        models.resnet_cifar(0)


def test_lite_layouts():
    g = models.googlenet_lite()
    assert count(g) == 584_202
    assert "inception3a.branch2.1.conv.weight" in g.state_dict()      # torchvision's names
    assert g.inception3a.branch3[1].conv.kernel_size == (3, 3)
    m = models.mobilenet_lite()
    assert count(m) == 543_050
    depthwise = m.features[2].depthwise[0]
    assert depthwise.groups == depthwise.in_channels == 64 and depthwise.stride == (2, 2)
    assert m.features[2].pointwise[0].kernel_size == (1, 1)
    half = models.mobilenet_lite(width=0.5)
    assert half.fc.in_features == 256 and count(half) < count(m) / 3
    with pytest.raises(ValueError, match="width must be positive"):
        models.mobilenet_lite(width=0)


def test_torchvision_initialisation():
    gm.seed(4)
    model = models.resnet20()
    conv = model.layer3[1].conv2.weight.gather()              # 64 x 64 x 3 x 3
    np.testing.assert_allclose(conv.std(), np.sqrt(2 / (64 * 9)), rtol=0.03)   # fan_out
    assert (model.bn1.weight.gather() == 1).all() and not model.bn1.bias.gather().any()
    from gpumat.nn.models._common import kaiming_init_
    layer = kaiming_init_(nn.Sequential(nn.Linear(300, 200)), linear_std=0.01)[0]
    np.testing.assert_allclose(layer.weight.gather().std(), 0.01, rtol=0.03)
    assert not layer.bias.gather().any()
