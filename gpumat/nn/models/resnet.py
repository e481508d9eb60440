"""Residual networks (He et al., 2015): torchvision's ImageNet ResNet-18/34/50 and the
paper's CIFAR-10 ResNets (6n + 2 layers).

One ``ResNet`` class builds both: a stem (7x7 stride-2 convolution and a max pool for
ImageNet, one 3x3 convolution for CIFAR), stages of residual blocks (``layer1``,
``layer2``, ...; every stage after the first halves the resolution), global average
pooling and ``fc``.  Names and layouts are torchvision's, so state_dicts interchange.

Binarized variants (``binary="bwn" | "dorefa" | "xnor"``, basic blocks only; see
``gpumat.nn.binary``): every convolution of the blocks (and of option-B projections)
becomes binary; the stem convolution and ``fc`` stay full precision.  "bwn" and "dorefa"
keep the float blocks as they are (float activations; the same state_dict keys and shapes).
"xnor" binarizes the activations too, which needs centred inputs (a sign after a ReLU is +1
everywhere), so its blocks take XNOR-Net's order, BatchNorm -> BinActiv -> BinConv, in
pre-activation form: out = conv1(bn1(x)); out = conv2(bn2(out)); out + shortcut(x), the
signs inside the binary convolutions being the non-linearity (no ReLU in the blocks; the
stem keeps its BatchNorm and ReLU).  bn1 normalises the block input (in_channels), bn2
conv1's output.  An option-B projection becomes BatchNorm -> BinaryConv 1x1 -> BatchNorm.
"""
import gpumat as gm

from .. import functional as F
from ..layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from ..autograd import Variable, is_grad_enabled
from ..module import Module, Sequential
from ._common import check_binary, check_choice, conv_layer, kaiming_init_

__all__ = ["BasicBlock", "Bottleneck", "BottleneckV1", "ZeroPadShortcut", "ResNet", "resnet18",
           "resnet34", "resnet50", "resnet_cifar", "resnet20", "resnet32", "resnet44",
           "resnet56"]


def conv3x3(in_channels, out_channels, stride=1, binary=None):
    return conv_layer(binary, in_channels, out_channels, 3, stride=stride, padding=1,
                      bias=False)


def conv1x1(in_channels, out_channels, stride=1, binary=None):
    return conv_layer(binary, in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(Module):
    """Two 3x3 convolutions with batch norm; the first carries the stride.
    out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut being
    ``downsample`` where the shape changes and the identity elsewhere.

    ``binary``: binary convolutions of that mode; "bwn" and "dorefa" keep this order,
    "xnor" is the pre-activation XNOR block out = conv2(bn2(conv1(bn1(x)))) + shortcut(x)
    (see the module docstring)."""

    expansion = 1

    def __init__(self, in_channels, channels, stride=1, downsample=None, binary=None):
        super().__init__()
        self.binary = check_binary(binary, "BasicBlock")
        xnor = self.binary == "xnor"
        if xnor:
            self.bn1 = BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride, binary)
        if not xnor:
            self.bn1 = BatchNorm2d(channels)
            self.relu = ReLU()
        else:
            self.bn2 = BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, binary=binary)
        if not xnor:
            self.bn2 = BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x):
        if self.binary == "xnor":
            # conv(x, batch_norm=bn, residual=r) is conv(bn(x)) + r; in inference the binary
            # convolution folds the normalization into its packing pass and adds r as it
            # stores its results
            shortcut = x if self.downsample is None else self.downsample(x)
            return self.conv2(self.conv1(x, batch_norm=self.bn1), batch_norm=self.bn2,
                              residual=shortcut)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(Module):
    """1x1 (reduce to ``channels``) -> 3x3 -> 1x1 (expand to 4 x ``channels``), each with
    batch norm, plus the shortcut.  The stride is on the 3x3 convolution, as torchvision's
    "ResNet v1.5"; ``stride_in_1x1 = True`` (``BottleneckV1``) puts it on the first 1x1, as
    the paper and its Caffe models did, which costs fewer multiply-adds (the 1x1 runs at the
    reduced resolution) and is slightly less accurate."""

    expansion = 4
    stride_in_1x1 = False

    def __init__(self, in_channels, channels, stride=1, downsample=None):
        super().__init__()
        first, middle = (stride, 1) if self.stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, channels, first)
        self.bn1 = BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, middle)
        self.bn2 = BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = BatchNorm2d(channels * self.expansion)
        self.relu = ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BottleneckV1(Bottleneck):
    """The paper's bottleneck: the stride on the first 1x1 convolution."""

    stride_in_1x1 = True


class ZeroPadShortcut(Module):
    """The paper's option A shortcut for the CIFAR ResNets, with no parameters: the identity
    subsampled by ``stride`` (every other pixel) and zero channels added to reach
    ``out_channels``, split between both sides (as the common PyTorch CIFAR ResNets do, so
    their trained weights give the same outputs here).  Differentiable: the gradient of the
    kept pixels passes through, the padding gets none."""

    def __init__(self, in_channels, out_channels, stride=2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"ZeroPadShortcut: cannot shrink {in_channels} channels to "
                             f"{out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self._zeros = {}      # (shape, dtype, backend) -> the zero channels: read, never written

    def _pad(self, shape, dtype, backend):
        """Zeros of ``shape``, made once per shape, dtype and backend (the batch's size may
        vary): a fresh pair of zero arrays per call cost as much as the copies around them."""
        key = (shape, dtype, backend)
        pad = self._zeros.get(key)
        if pad is None:
            if len(self._zeros) >= 8:
                self._zeros.clear()
            pad = self._zeros[key] = gm.zeros(shape, dtype=dtype, backend=backend)
        return pad

    def forward(self, x):
        # nothing to record (inference): the same operations on the Array, without the
        # autograd Functions around them (a third of this module's time at batch 1)
        recorded = is_grad_enabled() and isinstance(x, Variable) and x.requires_grad
        data = x if recorded or not isinstance(x, Variable) else x.data
        if self.stride != 1:
            data = data[:, :, ::self.stride, ::self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            n, _, h, w = data.shape
            before = extra // 2
            pads = [self._pad((n, size, h, w), data.dtype, x.backend)
                    for size in (before, extra - before)]
            parts = [pads[0], data, pads[1]] if before else [data, pads[1]]
            data = F.cat(parts, axis=1) if recorded else gm.cat(1, *parts)
        return data if recorded else Variable._make(data, False)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class ResNet(Module):
    """A residual network: ``block`` (BasicBlock or Bottleneck), ``layers`` blocks per
    stage with ``widths`` channels (x block.expansion), an ImageNet or CIFAR ``stem``, and
    shortcuts of ``shortcut`` type where the shape changes: "B" a 1x1 convolution with batch
    norm (torchvision's ``downsample``), "A" zero padding (``ZeroPadShortcut``, no
    parameters).  Initialised as torchvision (He normal fan_out convolutions, BN 1 and 0).
    ``binary`` ("bwn", "dorefa", "xnor"; BasicBlock only) binarizes every convolution but
    the stem's (see the module docstring)."""

    def __init__(self, block, layers, num_classes=1000, in_channels=3,
                 widths=(64, 128, 256, 512), stem="imagenet", shortcut="B", binary=None):
        super().__init__()
        check_choice(stem, ("imagenet", "cifar"), "stem", "ResNet")
        self.shortcut = check_choice(shortcut, ("A", "B"), "shortcut", "ResNet")
        self.binary = check_binary(binary, "ResNet")
        if binary is not None and not issubclass(block, BasicBlock):
            raise ValueError(f"ResNet: binary={binary!r} is available with BasicBlock only, "
                             f"not {block.__name__}")
        if len(layers) != len(widths):
            raise ValueError(f"ResNet: {len(layers)} stages of blocks but {len(widths)} widths")
        if stem == "imagenet":
            self.input_shape = (in_channels, 224, 224)
            self.conv1 = Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.input_shape = (in_channels, 32, 32)
            self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = BatchNorm2d(widths[0])
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None
        self._channels = widths[0]
        self.stages = len(layers)
        for i, (count, width) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", self._stage(block, width, count, 1 if i == 0 else 2))
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.flatten = Flatten()
        self.fc = Linear(widths[-1] * block.expansion, num_classes)
        kaiming_init_(self)

    def _stage(self, block, width, count, stride):
        out_channels = width * block.expansion
        downsample = None
        binary = self.binary
        if stride != 1 or self._channels != out_channels:
            if self.shortcut == "B":
                projection = [conv1x1(self._channels, out_channels, stride, binary),
                              BatchNorm2d(out_channels)]
                if binary == "xnor":
                    projection.insert(0, BatchNorm2d(self._channels))
                downsample = Sequential(*projection)
            else:
                downsample = ZeroPadShortcut(self._channels, out_channels, stride)
        extra = {} if binary is None else {"binary": binary}
        blocks = [block(self._channels, width, stride, downsample, **extra)]
        blocks += [block(out_channels, width, **extra) for _ in range(count - 1)]
        self._channels = out_channels
        return Sequential(*blocks)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes=1000, in_channels=3):
    """ResNet-18 for 224 x 224 images: 11,689,512 parameters, 1.81 G multiply-adds."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes=1000, in_channels=3):
    """ResNet-34 for 224 x 224 images: 21,797,672 parameters, 3.66 G multiply-adds
    (the paper's table: 3.6)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes=1000, in_channels=3, stride_in_1x1=False):
    """ResNet-50 for 224 x 224 images: 25,557,032 parameters; 4.09 G multiply-adds
    with torchvision's bottleneck (stride on the 3x3), 3.86 G with the paper's
    (``stride_in_1x1=True``; the paper's table says 3.8)."""
    return ResNet(BottleneckV1 if stride_in_1x1 else Bottleneck, (3, 4, 6, 3), num_classes,
                  in_channels)


def resnet_cifar(n, num_classes=10, in_channels=3, shortcut="A", binary=None):
    """The paper's CIFAR-10 ResNet with 6n + 2 layers: a 3x3 convolution (16 channels), three
    stages of n basic blocks with 16, 32 and 64 channels (on 32, 16 and 8 pixel maps),
    global average pooling and fc.  ``shortcut="A"`` (the paper's CIFAR choice) pads the
    identity with zeros where the channels double, so n = 3 (ResNet-20) has 269,722
    parameters; "B" uses 1x1 projections there instead.  ``binary`` ("bwn", "dorefa",
    "xnor") binarizes every convolution but the first (see the module docstring); ``fc``
    stays full precision."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"resnet_cifar: n must be a positive int (6n + 2 layers), got {n!r}")
    return ResNet(BasicBlock, (n, n, n), num_classes, in_channels, widths=(16, 32, 64),
                  stem="cifar", shortcut=shortcut, binary=binary)


def resnet20(num_classes=10, in_channels=3, shortcut="A", binary=None):
    return resnet_cifar(3, num_classes, in_channels, shortcut, binary)


def resnet32(num_classes=10, in_channels=3, shortcut="A", binary=None):
    return resnet_cifar(5, num_classes, in_channels, shortcut, binary)


def resnet44(num_classes=10, in_channels=3, shortcut="A", binary=None):
    return resnet_cifar(7, num_classes, in_channels, shortcut, binary)


def resnet56(num_classes=10, in_channels=3, shortcut="A", binary=None):
    return resnet_cifar(9, num_classes, in_channels, shortcut, binary)
