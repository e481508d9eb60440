"""The model zoo by name, for the command line and the trainer: ``get(name, **options)``
builds a model, ``names()`` lists them, ``spec(name)`` tells what a model takes.

Binarized variants are an option, not extra names: ``get("resnet20", binary="xnor")`` (and
``python -m gpumat train resnet20 --binary xnor``) for the models whose ``spec(name).binary``
is true (``binary_names()``: LeNet-5, lenet_tf and the CIFAR ResNets).  So ``names()`` stays
one entry per architecture and the binary mode combines with every other option."""
from dataclasses import dataclass
from typing import Callable, Tuple

from .alexnet import alexnet
from .googlenet import googlenet_lite
from .lenet import lenet5, lenet_tf
from .mobilenet import mobilenet_lite
from .resnet import resnet18, resnet20, resnet32, resnet34, resnet44, resnet50, resnet56
from .vgg import vgg11, vgg16

__all__ = ["ModelSpec", "get", "names", "spec", "binary_names"]


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: the builder, the (height, width) of the images it is laid out for, the
    channels it takes unless told otherwise (``in_channels=``), and one line about it.
    Every builder takes ``num_classes`` and ``in_channels``; those with ``binary`` true also
    ``binary=`` ("bwn", "dorefa" or "xnor": the binarized variant)."""

    name: str
    build: Callable
    input_size: Tuple[int, int]
    in_channels: int
    description: str
    binary: bool = False

    def input_shape(self, in_channels=None):
        """(channels, height, width) of one input image."""
        return (self.in_channels if in_channels is None else in_channels,) + self.input_size


_SPECS = {s.name: s for s in (
    ModelSpec("lenet5", lenet5, (32, 32), 1, "LeNet-5 (conv 6-16, fc 120-84), 61.7 K params",
              binary=True),
    ModelSpec("lenet_tf", lenet_tf, (28, 28), 1,
              "TensorFlow's Deep MNIST net (conv 32-64, fc 1024, dropout), 3.3 M params",
              binary=True),
    ModelSpec("alexnet", alexnet, (224, 224), 3,
              "AlexNet, torchvision layout (batch_norm=, local_response_norm=), 61 M params"),
    ModelSpec("vgg11", vgg11, (224, 224), 3, "VGG-11 (batch_norm=), 133 M params"),
    ModelSpec("vgg16", vgg16, (224, 224), 3, "VGG-16 (batch_norm=), 138 M params"),
    ModelSpec("resnet20", resnet20, (32, 32), 3, "CIFAR ResNet-20 (option A), 0.27 M params",
              binary=True),
    ModelSpec("resnet32", resnet32, (32, 32), 3, "CIFAR ResNet-32 (option A), 0.46 M params",
              binary=True),
    ModelSpec("resnet44", resnet44, (32, 32), 3, "CIFAR ResNet-44 (option A), 0.66 M params",
              binary=True),
    ModelSpec("resnet56", resnet56, (32, 32), 3, "CIFAR ResNet-56 (option A), 0.85 M params",
              binary=True),
    ModelSpec("resnet18", resnet18, (224, 224), 3, "ResNet-18, 11.7 M params, 1.8 G MACs"),
    ModelSpec("resnet34", resnet34, (224, 224), 3, "ResNet-34, 21.8 M params, 3.7 G MACs"),
    ModelSpec("resnet50", resnet50, (224, 224), 3, "ResNet-50 (v1.5), 25.6 M params, 4.1 G MACs"),
    ModelSpec("googlenet_lite", googlenet_lite, (32, 32), 3,
              "small GoogLeNet (5 Inception blocks) for 32 x 32, 0.58 M params"),
    ModelSpec("mobilenet_lite", mobilenet_lite, (32, 32), 3,
              "small MobileNet (7 depthwise-separable blocks, width=) for 32 x 32, 0.54 M params"),
)}


def names():
    """The zoo's model names, in a stable order (small to large within each family)."""
    return list(_SPECS)


def spec(name):
    """The ``ModelSpec`` of ``name`` (KeyError listing the names if unknown)."""
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; the zoo has {', '.join(_SPECS)}") from None


def binary_names():
    """The models that have binarized variants (``get(name, binary=mode)``)."""
    return [name for name, s in _SPECS.items() if s.binary]


def get(name, **options):
    """Build model ``name`` with ``options`` (``num_classes``, ``in_channels`` and the
    builder's own, such as ``batch_norm``, or ``binary`` for ``binary_names()``)."""
    entry = spec(name)
    if options.get("binary") is None:
        options.pop("binary", None)
    elif not entry.binary:
        raise ValueError(f"model {name!r} has no binarized variant (binary="
                         f"{options['binary']!r}); those that do: {', '.join(binary_names())}")
    return entry.build(**options)
