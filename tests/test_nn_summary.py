"""nn.summary: per-layer shapes, parameters and multiply-adds against the published figures,
the shape rules against real forward passes, and a model left exactly as it was."""
import threading

import numpy as np
import pytest

import gpumat as gm
import gpumat.nn.models as models
from gpumat import nn
from gpumat.errors import ShapeError
from gpumat.nn.module import Module
from gpumat.nn.summary import ModelSummary, summary

import test_nn_models
from test_nn_models import SMALL_INPUT, build

fast_init = test_nn_models.fast_init                    # the fixture, shared


def quiet(model, shape, **options):
    return summary(model, shape, quiet=True, **options)


def on_cpu(make):
    """Built on the cpu backend: the large models' weights stay on the host."""
    return build(make, "cpu")


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_lenet5_rows_and_totals(activation):
    s = quiet(models.lenet5(activation=activation), (1, 32, 32))
    pool = "MaxPool2d" if activation == "relu" else "AvgPool2d"
    act = "ReLU" if activation == "relu" else "Tanh"
    assert [(r.name, r.type, r.output_shape, r.params, r.flops) for r in s.rows] == [
        ("conv1", "Conv2d", (1, 6, 28, 28), 156, 28 * 28 * 6 * 25),
        ("act1", act, (1, 6, 28, 28), 0, 0),
        ("pool1", pool, (1, 6, 14, 14), 0, 0),
        ("conv2", "Conv2d", (1, 16, 10, 10), 2_416, 10 * 10 * 16 * 150),
        ("act2", act, (1, 16, 10, 10), 0, 0),
        ("pool2", pool, (1, 16, 5, 5), 0, 0),
        ("flatten", "Flatten", (1, 400), 0, 0),
        ("fc1", "Linear", (1, 120), 48_120, 48_000),
        ("act3", act, (1, 120), 0, 0),
        ("fc2", "Linear", (1, 84), 10_164, 10_080),
        ("act4", act, (1, 84), 0, 0),
        ("fc3", "Linear", (1, 10), 850, 840)]
    assert s.total_params == s.trainable_params == 61_706
    assert s.total_flops == 416_520
    assert s.param_bytes == 4 * 61_706 and s.buffer_bytes == 0
    assert s.activation_bytes == 4 * sum(np.prod(r.output_shape) for r in s.rows)
    assert s.input_shape == (1, 1, 32, 32) and s.output_shape == (1, 10)
    assert s.rows[0].input_shape == (1, 1, 32, 32) and s.row("fc1").input_shape == (1, 400)


def test_table_text_and_printing(capsys):
    s = summary(models.lenet5(), (1, 32, 32))
    printed = capsys.readouterr().out
    assert printed.strip() == str(s).strip()
    lines = str(s).splitlines()
    assert lines[1].split() == ["Layer", "Type", "Output", "shape", "Params", "MACs",
                                "Activations"]
    assert any(line.split()[:4] == ["fc1", "Linear", "1x120", "48,120"] for line in lines)
    assert "Total params:         61,706 (241.04 KiB)" in lines
    assert "Multiply-adds:        416,520 (416.52 K; conv and linear, batch of 1)" in lines
    assert repr(s) == "ModelSummary(LeNet5, input 1x1x32x32, 61,706 params, 416,520 MACs, " \
                      "12 layer calls)"
    assert isinstance(s, ModelSummary)


def test_batch_size_scales_shapes_and_costs():
    one, four = quiet(models.resnet20(), (3, 32, 32)), \
        quiet(models.resnet20(), (3, 32, 32), batch_size=4)
    assert four.rows[0].output_shape == (4, 16, 32, 32)
    assert four.total_flops == 4 * one.total_flops
    assert four.activation_bytes == 4 * one.activation_bytes
    assert four.total_params == one.total_params == 269_722
    # the paper's ResNet-20: 0.27 M parameters, 41 M multiply-adds
    assert one.total_flops == 40_551_040
    with pytest.raises(ValueError, match="batch_size"):
        quiet(models.resnet20(), (3, 32, 32), batch_size=0)
    with pytest.raises(ValueError, match="without the batch axis"):
        quiet(models.resnet20(), (3, 0, 32))


# the published counts: parameters, and multiply-adds at 224 x 224
def test_alexnet_counts(fast_init):
    s = quiet(on_cpu(lambda: models.alexnet(num_classes=10, batch_norm=True)), (3, 224, 224))
    assert s.total_params == 58_325_066                  # the AlexNet with BN, 10 classes
    assert s.row("features.0").output_shape == (1, 96, 55, 55)
    assert s.row("avgpool").output_shape == (1, 256, 6, 6)
    plain = quiet(on_cpu(models.alexnet), (3, 224, 224))
    assert plain.total_params == 61_100_840
    assert plain.total_flops == 714_188_480              # torchvision's 0.71 GFLOPS


def test_vgg16_counts(fast_init):
    s = quiet(on_cpu(models.vgg16), (3, 224, 224))
    assert s.total_params == 138_357_544
    assert s.total_flops == 15_470_264_320               # the published 15.5 G
    assert s.row("features.30").output_shape == (1, 512, 7, 7)
    assert s.row("classifier.0").params == 25088 * 4096 + 4096


@pytest.mark.parametrize("name, params, macs, published", [
    ("resnet18", 11_689_512, 1_814_073_344, 1.8e9),
    ("resnet34", 21_797_672, 3_663_761_408, 3.6e9),
    ("resnet50", 25_557_032, 4_089_184_256, 4.1e9),
])
def test_resnet_counts(fast_init, name, params, macs, published):
    """The multiply-adds of He et al.'s table (1.8, 3.6 and 3.8 G) within a few per cent.
    ResNet-50 is 4.09 G here because torchvision's bottleneck strides in its 3x3
    convolution ("v1.5"), so the first 1x1 of each down-sampling block runs at the higher
    resolution; with the paper's stride on that 1x1 it is 3.86 G (next test), which the
    paper's table gives as 3.8.  (The issue's "ResNet-50 about 3.8 and ResNet-34 about 3.6"
    are those table entries.)"""
    s = quiet(on_cpu(lambda: models.get(name)), (3, 224, 224))
    assert (s.total_params, s.total_flops) == (params, macs)
    assert abs(s.total_flops - published) / published < 0.03
    assert s.row("conv1").output_shape == (1, 64, 112, 112)
    assert s.row("maxpool").output_shape == (1, 64, 56, 56)
    assert s.rows[-1].name == "fc" and s.output_shape == (1, 1000)


def test_resnet50_rows_and_paper_bottleneck(fast_init):
    s = quiet(on_cpu(models.resnet50), (3, 224, 224))
    assert s.row("layer1.0.conv3").output_shape == (1, 256, 56, 56)
    assert s.row("layer2.0.conv1").output_shape == (1, 128, 56, 56)     # v1.5: full size
    assert s.row("layer2.0.conv2").output_shape == (1, 128, 28, 28)
    assert s.row("layer2.0.downsample.0").output_shape == (1, 512, 28, 28)
    assert s.row("layer4.2.bn3").output_shape == (1, 2048, 7, 7)
    relu_calls = [r for r in s.rows if r.name == "layer1.0.relu"]
    assert len(relu_calls) == 3                          # one module, three calls
    v1 = quiet(on_cpu(lambda: models.resnet50(stride_in_1x1=True)), (3, 224, 224))
    assert v1.row("layer2.0.conv1").output_shape == (1, 128, 28, 28)
    assert v1.total_flops == 3_857_973_248
    assert abs(v1.total_flops - 3.8e9) / 3.8e9 < 0.03


@pytest.mark.parametrize("name", models.names())
def test_shape_rules_match_real_layers(name, fast_init):
    """Every zoo model at a small input: the rows computed from hyper-parameters equal those
    of a real forward pass (shapes_only=False runs every layer)."""
    model = on_cpu(lambda: models.get(name, num_classes=10))
    size = SMALL_INPUT[name]
    shape = (model.input_shape[0], size, size)
    fast, real = quiet(model, shape, batch_size=2), \
        quiet(model, shape, batch_size=2, shapes_only=False)
    assert fast.rows == real.rows
    assert fast.output_shape == real.output_shape == (2, 10)
    assert fast.total_params == sum(p.size for p in model.parameters())
    assert sum(r.params for r in fast.rows) == fast.total_params


def test_summary_on_every_backend(backend):
    model = build(lambda: models.resnet_cifar(1, in_channels=1), backend)
    s = quiet(model, (1, 32, 32))
    assert s.rows[0].output_shape == (1, 16, 32, 32) and s.output_shape == (1, 10)
    s = quiet(build(models.lenet5, backend), (1, 32, 32), shapes_only=False)
    assert s.total_flops == 416_520


def test_model_left_as_it_was(backend):
    model = build(lambda: models.resnet_cifar(1), backend)
    model.layer2.eval()                                  # a mix of modes
    model.fc.weight.grad = gm.ones(*model.fc.weight.shape, backend=backend)
    before = {k: v.gather().copy() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    call = Module.__call__
    quiet(model, (3, 32, 32), shapes_only=False)         # real layers, batch norm included
    quiet(model, (3, 32, 32))
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.gather(), before[k], err_msg=k)
    assert (model.fc.weight.grad.gather() == 1).all()
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert Module.__call__ is call
    with pytest.raises(ShapeError, match=r"Linear\(400, 120\)"):
        quiet(models.lenet5(), (1, 28, 28))               # 28 x 28 needs lenet_tf
    assert Module.__call__ is call                        # restored after an error too


class Scale(Module):
    """A leaf of a type summary has no rule for: it runs for real."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(gm.ones(1, channels, 1, 1) * 2)

    def forward(self, x):
        return x * self.weight


class ConvTwice(nn.Conv2d):
    """A Conv2d subclass that computes something else: it must not get Conv2d's rule."""

    def forward(self, x):
        y = super().forward(x)
        return nn.functional.cat([y, y], axis=1)


class Shared(Module):
    def __init__(self):
        super().__init__()
        self.scale = Scale(3)
        self.conv = ConvTwice(3, 2, 3)
        self.linear = nn.Linear(4 * 3 * 3, 5)
        self.extra = nn.Parameter(gm.zeros(5))           # held by the composite itself

    def forward(self, x):
        x = self.conv(self.scale(self.scale(x)))
        return self.linear(x.flatten(1)) + self.extra


def test_unknown_layers_shared_modules_and_composite_parameters():
    s = quiet(Shared(), (3, 5, 5), batch_size=2)
    assert [(r.name, r.type, r.output_shape, r.params) for r in s.rows] == [
        ("scale", "Scale", (2, 3, 5, 5), 3), ("scale", "Scale", (2, 3, 5, 5), 0),
        ("conv", "ConvTwice", (2, 4, 3, 3), 2 * 3 * 9 + 2), ("linear", "Linear", (2, 5), 185)]
    assert s.total_params == 3 + 56 + 185 + 5             # "extra" is in no row
    assert s.row("conv").flops == 0                       # a forward of its own: unknown cost
    assert s.output_shape == (2, 5)
    leaf = quiet(nn.Linear(6, 3), 6)
    assert [(r.name, r.output_shape, r.flops) for r in leaf.rows] == [("Linear", (1, 3), 18)]


class Probe(Module):
    """Calls a module from another thread while summary traces this one."""

    def forward(self, x):
        other = nn.Linear(2, 1)

        def work():
            self.seen = other(gm.ones(1, 2, backend=other.weight.backend)).gather()

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        self.expected = other.weight.gather().sum() + other.bias.gather()
        return x


def test_other_threads_are_not_traced():
    probe = Probe()
    s = quiet(probe, (3,))
    assert [r.name for r in s.rows] == ["Probe"]         # the probe itself, a leaf
    np.testing.assert_allclose(probe.seen.ravel(), probe.expected, rtol=1e-6)   # computed
