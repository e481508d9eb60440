"""VGG (Simonyan & Zisserman, 2014) in torchvision's layout: ``features`` (3x3 convolutions,
optionally batch-normalised, and 2x2 max pools), ``avgpool`` (adaptive, to 7 x 7) and
``classifier`` (fc 25088-4096-4096-num_classes with ReLU and dropout)."""
from ..layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear,
                      MaxPool2d, ReLU)
from ..module import Module, Sequential
from ._common import kaiming_init_

__all__ = ["VGG", "VGG_CONFIGS", "vgg11", "vgg16"]

# output channels of each 3x3 convolution, "M" for a 2x2 max pool (the paper's A and D)
VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
         "M"),
}


class VGG(Module):
    """VGG from a ``config`` (channel counts and "M" for max pools).  State dict keys are
    torchvision's (``features.0.weight``, ``classifier.6.bias``; the ``_bn`` variants put a
    BatchNorm2d after each convolution).  Initialised as torchvision: He normal (fan_out)
    convolutions, N(0, 0.01) fully connected weights, zero biases.  VGG-16 has 138,357,544
    parameters for 1000 classes.  Inputs of 32 x 32 and up work (the adaptive pool
    replicates smaller maps to 7 x 7)."""

    def __init__(self, config, num_classes=1000, batch_norm=False, in_channels=3,
                 dropout=0.5):
        super().__init__()
        self.input_shape = (in_channels, 224, 224)
        layers, previous = [], in_channels
        for item in config:
            if item == "M":
                layers.append(MaxPool2d(2, 2))
                continue
            layers.append(Conv2d(previous, item, 3, padding=1))
            if batch_norm:
                layers.append(BatchNorm2d(item))
            layers.append(ReLU())
            previous = item
        self.features = Sequential(*layers)
        self.avgpool = AdaptiveAvgPool2d((7, 7))
        self.flatten = Flatten()
        self.classifier = Sequential(
            Linear(previous * 7 * 7, 4096), ReLU(), Dropout(dropout),
            Linear(4096, 4096), ReLU(), Dropout(dropout),
            Linear(4096, num_classes))
        kaiming_init_(self, linear_std=0.01)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(self.flatten(x))


def vgg11(num_classes=1000, batch_norm=False, in_channels=3):
    """VGG-11 (configuration A) for 224 x 224 images."""
    return VGG(VGG_CONFIGS[11], num_classes, batch_norm, in_channels)


def vgg16(num_classes=1000, batch_norm=False, in_channels=3):
    """VGG-16 (configuration D) for 224 x 224 images: 138,357,544 parameters."""
    return VGG(VGG_CONFIGS[16], num_classes, batch_norm, in_channels)
