"""LeNet-5 in its classic PyTorch form, and TensorFlow's "Deep MNIST" convolutional net.

Both keep PyTorch's parameter names (``conv1.weight``, ``fc1.bias``, ...: the names of the
PyTorch tutorial's ``Net``), and hold their activations and poolings as modules so that
``nn.summary`` lists every step.

Binarized variants (``binary="bwn" | "dorefa" | "xnor"``, see ``gpumat.nn.binary``): every
convolution and fully connected layer becomes binary except the first convolution and the
last linear layer, which stay full precision, as usual.  "bwn" and "dorefa" keep the float
layout exactly (same modules, same state_dict keys, so a float model's weights load
straight in).  "xnor" binarizes the activations too, and a sign is only informative on
centred data: a binary layer fed by a ReLU would see +1 everywhere.  So each binary layer
gets XNOR-Net's block order, BatchNorm -> (BinActiv -> BinConv, inside the binary layer) ->
activation -> pooling: a BatchNorm (``bn2``, ``bn3``, ... named after the layer it feeds)
is inserted before each binary layer, and nothing else changes.
"""
from .. import init
from ..layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Dropout, Flatten, MaxPool2d, ReLU,
                      Tanh)
from ..autograd import is_grad_enabled
from ..module import Module
from ..summary import is_tracing
from ._common import check_binary, check_choice, conv_layer, linear_layer

__all__ = ["LeNet5", "LeNetTF", "lenet5", "lenet_tf"]


class _MaybeNormalised(Module):
    """A model whose "xnor" variant puts a BatchNorm before each binary layer."""

    binary = None

    def _norm_before(self, name, channels, flat=False):
        """Register BatchNorm ``name`` (feeding a binary layer) in the "xnor" variant only, so
        the other variants keep the float model's modules and summary rows."""
        if self.binary == "xnor":
            setattr(self, name, (BatchNorm1d if flat else BatchNorm2d)(channels))

    def _act_pool(self, act, pool, x):
        """pool(act(x)), the tutorial's order.  In inference (eval mode, no gradient taped)
        a ReLU before a max pooling runs after it instead, on a quarter of the elements:
        max pooling and ReLU commute exactly (both keep NaN, and ReLU turns every zero and
        negative into +0.0 either way), so the result is the same bit for bit.  (``summary``
        still lists the written order.)"""
        if (not self.training and isinstance(act, ReLU) and isinstance(pool, MaxPool2d)
                and not is_grad_enabled() and not is_tracing()):
            return act(pool(x))
        return pool(act(x))

    def _normed(self, name, layer, x):
        """layer(BatchNorm ``name``(x)) where the variant has it (the binary convolution or
        linear layer folds it into its packing pass in inference), else layer(x)."""
        norm = self._modules.get(name)
        return layer(x) if norm is None else layer(x, batch_norm=norm)


class LeNet5(_MaybeNormalised):
    """conv 5x5 (6) -> pool 2 -> conv 5x5 (16) -> pool 2 -> fc 400-120-84-num_classes on a
    32 x 32 image: 61,706 parameters for 10 classes (156 + 2,416 + 48,120 + 10,164 + 850).

    ``activation="relu"`` is the PyTorch tutorial's network (ReLU, max pooling).
    ``activation="tanh"`` is closer to LeCun et al. (1998): tanh and 2 x 2 average pooling,
    LeNet-5's "subsampling".  The 1998 net also scaled each subsampled map by a trainable
    coefficient, connected C3 to only some S2 maps and ended in RBF units; here, as in most
    modern renderings, pooling has no parameters, C3 is fully connected and the output is a
    plain linear layer, so both forms have the same parameters and state_dict keys.  Each
    convolution is followed by its activation, then the pooling (the tutorial's order).

    ``binary`` (None, "bwn", "dorefa", "xnor"): conv2, fc1 and fc2 become binary (conv1 and
    fc3 stay float); "xnor" adds ``bn2`` (BatchNorm2d(6)), ``bn3`` (BatchNorm1d(400)) and
    ``bn4`` (BatchNorm1d(120)) before them (see the module docstring)."""

    def __init__(self, num_classes=10, activation="relu", in_channels=1, binary=None):
        super().__init__()
        check_choice(activation, ("relu", "tanh"), "activation", "LeNet5")
        self.binary = check_binary(binary, "LeNet5")
        act = ReLU if activation == "relu" else Tanh
        pool = (lambda: MaxPool2d(2)) if activation == "relu" else (lambda: AvgPool2d(2))
        self.activation = activation
        self.input_shape = (in_channels, 32, 32)
        self.conv1 = conv_layer(None, in_channels, 6, 5)
        self.act1, self.pool1 = act(), pool()
        self._norm_before("bn2", 6)
        self.conv2 = conv_layer(binary, 6, 16, 5, bias=True)
        self.act2, self.pool2 = act(), pool()
        self.flatten = Flatten()
        self._norm_before("bn3", 16 * 5 * 5, flat=True)
        self.fc1 = linear_layer(binary, 16 * 5 * 5, 120)
        self.act3 = act()
        self._norm_before("bn4", 120, flat=True)
        self.fc2 = linear_layer(binary, 120, 84)
        self.act4 = act()
        self.fc3 = linear_layer(None, 84, num_classes)

    def forward(self, x):
        x = self._act_pool(self.act1, self.pool1, self.conv1(x))
        x = self._act_pool(self.act2, self.pool2, self._normed("bn2", self.conv2, x))
        x = self.act3(self._normed("bn3", self.fc1, self.flatten(x)))
        return self.fc3(self.act4(self._normed("bn4", self.fc2, x)))

    def extra_repr(self):
        text = f"activation={self.activation!r}"
        return text + (f", binary={self.binary!r}" if self.binary else "")


class LeNetTF(_MaybeNormalised):
    """TensorFlow's "Deep MNIST for experts" net on 28 x 28 digits: conv 5x5x32 (padding 2)
    -> ReLU -> max pool 2 -> conv 5x5x64 (padding 2) -> ReLU -> max pool 2 -> fc 3136-1024
    -> ReLU -> dropout 0.5 -> fc 1024-num_classes (3,274,634 parameters for 10 classes).

    Weights start from a normal with std 0.1 truncated at 2 std, biases at 0.1, as the
    tutorial's ``weight_variable`` and ``bias_variable``.  The flattened features are in
    PyTorch's C x H x W order (TensorFlow's were H x W x C), which only permutes fc1's
    input columns.

    ``binary`` (None, "bwn", "dorefa", "xnor"): conv2 and fc1 become binary (conv1 and fc2
    stay float); "xnor" adds ``bn2`` (BatchNorm2d(32)) and ``bn3`` (BatchNorm1d(3136))
    before them (see the module docstring)."""

    def __init__(self, num_classes=10, in_channels=1, binary=None):
        super().__init__()
        self.binary = check_binary(binary, "LeNetTF")
        self.input_shape = (in_channels, 28, 28)
        self.conv1 = conv_layer(None, in_channels, 32, 5, padding=2)
        self.relu1, self.pool1 = ReLU(), MaxPool2d(2)
        self._norm_before("bn2", 32)
        self.conv2 = conv_layer(binary, 32, 64, 5, padding=2, bias=True)
        self.relu2, self.pool2 = ReLU(), MaxPool2d(2)
        self.flatten = Flatten()
        self._norm_before("bn3", 7 * 7 * 64, flat=True)
        self.fc1 = linear_layer(binary, 7 * 7 * 64, 1024)
        self.relu3 = ReLU()
        self.dropout = Dropout(0.5)
        self.fc2 = linear_layer(None, 1024, num_classes)
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
            init.trunc_normal_(layer.weight, std=0.1)
            init.constant_(layer.bias, 0.1)

    def forward(self, x):
        x = self._act_pool(self.relu1, self.pool1, self.conv1(x))
        x = self._act_pool(self.relu2, self.pool2, self._normed("bn2", self.conv2, x))
        x = self.dropout(self.relu3(self._normed("bn3", self.fc1, self.flatten(x))))
        return self.fc2(x)

    def extra_repr(self):
        return f"binary={self.binary!r}" if self.binary else ""


def lenet5(num_classes=10, activation="relu", in_channels=1, binary=None):
    """LeNet-5 for 32 x 32 images (pad 28 x 28 digits by 2); see ``LeNet5`` (``binary``:
    None, "bwn", "dorefa" or "xnor")."""
    return LeNet5(num_classes, activation, in_channels, binary)


def lenet_tf(num_classes=10, in_channels=1, binary=None):
    """TensorFlow's Deep MNIST net for 28 x 28 images; see ``LeNetTF`` (``binary``: None,
    "bwn", "dorefa" or "xnor")."""
    return LeNetTF(num_classes, in_channels, binary)
