"""gpumat.nn.models: the model zoo, built from gpumat.nn layers with PyTorch's (and, where
torchvision has the model, torchvision's) parameter names and layouts, so state_dicts
interchange with PyTorch.

    from gpumat.nn import models
    model = models.resnet20()                     # CIFAR-10 ResNet-20, 3 x 32 x 32 input
    model = models.get("lenet5", num_classes=10)  # by name, as the command line does
    models.names()                                # every name get() knows
    models.spec("lenet_tf").input_shape()         # (1, 28, 28)
    model = models.resnet20(binary="xnor")        # binarized (also "bwn", "dorefa")

Families: LeNet-5 and TensorFlow's Deep MNIST net (``lenet``), AlexNet (``alexnet``), VGG
(``vgg``), ImageNet and CIFAR ResNets (``resnet``), the Inception block and a small
GoogLeNet (``googlenet``), a small MobileNet (``mobilenet``).  Every model records the
(channels, height, width) it is laid out for as ``model.input_shape``.  LeNet-5, lenet_tf and
the CIFAR ResNets take ``binary=`` for their binarized variants (``binary_names()``; the
layers are in ``gpumat.nn.binary``).
"""
from .alexnet import ALEXNET_WIDTHS, AlexNet, alexnet
from .googlenet import BasicConv2d, GoogLeNetLite, Inception, googlenet_lite
from .lenet import LeNet5, LeNetTF, lenet5, lenet_tf
from .mobilenet import DepthwiseSeparable, MobileNetLite, conv_bn_relu, mobilenet_lite
from .registry import ModelSpec, binary_names, get, names, spec
from .resnet import (BasicBlock, Bottleneck, BottleneckV1, ResNet, ZeroPadShortcut, resnet18,
                     resnet20, resnet32, resnet34, resnet44, resnet50, resnet56, resnet_cifar)
from .vgg import VGG, VGG_CONFIGS, vgg11, vgg16

__all__ = ["ALEXNET_WIDTHS", "AlexNet", "alexnet", "BasicConv2d", "GoogLeNetLite", "Inception",
           "googlenet_lite", "LeNet5", "LeNetTF", "lenet5", "lenet_tf", "DepthwiseSeparable",
           "MobileNetLite", "conv_bn_relu", "mobilenet_lite", "ModelSpec", "binary_names",
           "get", "names", "spec", "BasicBlock", "Bottleneck", "BottleneckV1", "ResNet",
           "ZeroPadShortcut", "resnet18", "resnet20", "resnet32", "resnet34", "resnet44",
           "resnet50", "resnet56", "resnet_cifar", "VGG", "VGG_CONFIGS", "vgg11", "vgg16"]
