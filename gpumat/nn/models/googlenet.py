"""GoogLeNet's Inception block (Szegedy et al., 2014) in torchvision's layout, and a small
GoogLeNet-style network for 32 x 32 images."""
from .. import functional as F
from ..layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear,
                      MaxPool2d, ReLU)
from ..module import Module, Sequential
from ._common import check_choice, kaiming_init_

__all__ = ["BasicConv2d", "Inception", "GoogLeNetLite", "googlenet_lite"]


class BasicConv2d(Module):
    """Convolution (no bias) -> batch norm (eps 1e-3) -> ReLU: torchvision's GoogLeNet unit,
    with its names ``conv`` and ``bn``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                           padding=padding, bias=False)
        self.bn = BatchNorm2d(out_channels, eps=0.001)
        self.relu = ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Inception(Module):
    """Four branches on the same input, concatenated along the channels:
    ``branch1`` 1x1; ``branch2`` 1x1 reduce -> 3x3; ``branch3`` 1x1 reduce -> "5x5";
    ``branch4`` 3x3 max pool (stride 1) -> 1x1 projection.  Output channels:
    ch1x1 + ch3x3 + ch5x5 + pool_proj, at the input's resolution.

    The "5x5" branch uses a 3x3 kernel by default, as torchvision does (its GoogLeNet, and
    so its state dicts, have always had 3x3 there); ``branch3_kernel=5`` gives the paper's
    5x5.  Parameter names match torchvision's Inception (``branch2.1.conv.weight``, ...)."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj,
                 branch3_kernel=3):
        super().__init__()
        check_choice(branch3_kernel, (3, 5), "branch3_kernel", "Inception")
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = Sequential(BasicConv2d(in_channels, ch3x3red, 1),
                                  BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = Sequential(BasicConv2d(in_channels, ch5x5red, 1),
                                  BasicConv2d(ch5x5red, ch5x5, branch3_kernel,
                                              padding=branch3_kernel // 2))
        self.branch4 = Sequential(MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                  BasicConv2d(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x):
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return F.cat([branch(x) for branch in branches], axis=1)


# (name, Inception arguments) or a max pool that halves the resolution
_LITE_BLOCKS = (
    ("inception3a", (64, 32, 48, 64, 8, 16, 16)),           # -> 128 channels, 32 x 32
    ("inception3b", (128, 64, 64, 96, 16, 48, 32)),         # -> 240
    ("maxpool3", None),                                     # -> 16 x 16
    ("inception4a", (240, 96, 48, 104, 8, 24, 32)),         # -> 256
    ("inception4b", (256, 128, 64, 128, 16, 48, 48)),       # -> 352
    ("maxpool4", None),                                     # -> 8 x 8
    ("inception5a", (352, 128, 80, 160, 16, 48, 48)),       # -> 384
)


class GoogLeNetLite(Module):
    """A small GoogLeNet for 32 x 32 images: a 3x3 stem (64 channels), five Inception blocks
    with GoogLeNet's branch proportions at about half its widths, max pools after the
    second and fourth (32 -> 16 -> 8 pixels), global average pooling, dropout 0.2 and fc.
    584,202 parameters (10 classes) and 0.2 G multiply-adds per image; any input of 8 x 8 or more
    works (global pooling)."""

    def __init__(self, num_classes=10, in_channels=3, dropout=0.2):
        super().__init__()
        self.input_shape = (in_channels, 32, 32)
        self.conv1 = BasicConv2d(in_channels, 64, 3, padding=1)
        for name, arguments in _LITE_BLOCKS:      # torchvision's names: inception3a, ...
            setattr(self, name, MaxPool2d(3, 2, ceil_mode=True) if arguments is None
                    else Inception(*arguments))
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.flatten = Flatten()
        self.dropout = Dropout(dropout)
        self.fc = Linear(self.inception5a.out_channels, num_classes)
        kaiming_init_(self)

    def forward(self, x):
        x = self.conv1(x)
        for name, _ in _LITE_BLOCKS:
            x = getattr(self, name)(x)
        return self.fc(self.dropout(self.flatten(self.avgpool(x))))


def googlenet_lite(num_classes=10, in_channels=3):
    """A small GoogLeNet-style network for 32 x 32 images; see ``GoogLeNetLite``."""
    return GoogLeNetLite(num_classes, in_channels)
