"""A small MobileNet (Howard et al., 2017) for 32 x 32 images: depthwise-separable blocks,
each a 3x3 depthwise convolution and a 1x1 pointwise one, both batch-normalised."""
from collections import OrderedDict

from ..layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, ReLU
from ..module import Module, Sequential
from ._common import kaiming_init_

__all__ = ["conv_bn_relu", "DepthwiseSeparable", "MobileNetLite", "mobilenet_lite"]


def conv_bn_relu(in_channels, out_channels, kernel_size, stride=1, groups=1):
    """Sequential(Conv2d (no bias, "same" padding), BatchNorm2d, ReLU): names 0, 1, 2 as
    torchvision's Conv2dNormActivation."""
    return Sequential(Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                             padding=kernel_size // 2, groups=groups, bias=False),
                      BatchNorm2d(out_channels), ReLU())


class DepthwiseSeparable(Sequential):
    """``depthwise``: a 3x3 convolution per channel (groups = channels, carrying the
    stride), then ``pointwise``: a 1x1 convolution mixing the channels; each followed by
    batch norm and ReLU.  9C + C x out weights instead of a full 3x3 convolution's 9 C x out."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(OrderedDict(
            depthwise=conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
            pointwise=conv_bn_relu(in_channels, out_channels, 1)))


# (output channels, stride) of each block after the 32-channel stem
_LITE_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


def _scaled(channels, width):
    return max(8, int(round(channels * width)))


class MobileNetLite(Module):
    """A 3x3 stem (32 channels), seven depthwise-separable blocks (64, 128, 128, 256, 256,
    512, 512 channels; three of them stride 2: 32 -> 4 pixels), global average pooling and
    fc.  ``width`` scales every channel count (MobileNet's width multiplier; at least 8).
    543,050 parameters (10 classes) and 23 M multiply-adds per 32 x 32 image at width 1."""

    def __init__(self, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"MobileNetLite: width must be positive, got {width!r}")
        self.input_shape = (in_channels, 32, 32)
        previous = _scaled(32, width)
        layers = [conv_bn_relu(in_channels, previous, 3)]
        for channels, stride in _LITE_BLOCKS:
            layers.append(DepthwiseSeparable(previous, _scaled(channels, width), stride))
            previous = _scaled(channels, width)
        self.features = Sequential(*layers)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.flatten = Flatten()
        self.fc = Linear(previous, num_classes)
        kaiming_init_(self)

    def forward(self, x):
        return self.fc(self.flatten(self.avgpool(self.features(x))))


def mobilenet_lite(num_classes=10, in_channels=3, width=1.0):
    """A small MobileNet for 32 x 32 images; see ``MobileNetLite``."""
    return MobileNetLite(num_classes, in_channels, width)
