"""Pieces shared by the model families: torchvision's weight initialisation, argument checks
and the binarized (``binary=``) variants' layer choice."""
from .. import init
from ..binary import MODES as BINARY_MODES
from ..binary import BinaryConv2d, BinaryLinear
from ..layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear


def kaiming_init_(model, linear_std=None):
    """torchvision's initialisation of its convolutional nets (VGG, ResNet, ...): He normal
    with fan_out for convolutions and zero biases, BatchNorm scale 1 and shift 0, and Linear
    layers N(0, linear_std^2) with zero biases (None keeps Linear's default)."""
    for m in model.modules():
        if isinstance(m, Conv2d):
            init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, (BatchNorm1d, BatchNorm2d)) and m.weight is not None:
            init.ones_(m.weight)
            init.zeros_(m.bias)
        elif isinstance(m, Linear) and linear_std is not None:
            init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                init.zeros_(m.bias)
    return model


def check_choice(value, choices, name, owner):
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


def check_binary(binary, owner):
    """``binary`` checked: None (full precision) or one of "bwn", "dorefa", "xnor"."""
    if binary is None:
        return None
    return check_choice(binary, BINARY_MODES, "binary", owner)


def conv_layer(binary, in_channels, out_channels, kernel_size, **options):
    """A Conv2d, or a BinaryConv2d of mode ``binary`` with the same parameters."""
    if binary is None:
        return Conv2d(in_channels, out_channels, kernel_size, **options)
    return BinaryConv2d(in_channels, out_channels, kernel_size, mode=binary, **options)


def linear_layer(binary, in_features, out_features, bias=True):
    """A Linear, or a BinaryLinear of mode ``binary`` with the same parameters."""
    if binary is None:
        return Linear(in_features, out_features, bias=bias)
    return BinaryLinear(in_features, out_features, bias=bias, mode=binary)
