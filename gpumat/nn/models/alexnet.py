"""AlexNet in torchvision's layout (``features`` / ``avgpool`` / ``classifier``), with the
batch-normalised and the original 2012 (local response normalisation) variants."""
from ..layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear,
                      LocalResponseNorm, MaxPool2d, ReLU)
from ..module import Module, Sequential

__all__ = ["AlexNet", "alexnet", "ALEXNET_WIDTHS"]

# output channels of the five convolutions
ALEXNET_WIDTHS = {
    "torchvision": (64, 192, 384, 256, 256),    # torchvision's (Krizhevsky's 2014 variant)
    "paper": (96, 256, 384, 384, 256),          # Krizhevsky et al. 2012, both GPUs' halves joined
}


def _widths(widths, batch_norm, local_response_norm):
    if widths is None:
        widths = "paper" if batch_norm or local_response_norm else "torchvision"
    if isinstance(widths, str):
        if widths not in ALEXNET_WIDTHS:
            raise ValueError(f"AlexNet: widths must be one of {', '.join(ALEXNET_WIDTHS)} or "
                             f"five channel counts, got {widths!r}")
        return ALEXNET_WIDTHS[widths]
    widths = tuple(widths)
    if len(widths) != 5 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"AlexNet: widths must be five positive channel counts, got {widths}")
    return widths


class AlexNet(Module):
    """Five convolutions (11x11 stride 4, 5x5, three 3x3; max pools 3/2 after the first,
    second and fifth), adaptive average pooling to 6 x 6, then dropout-fc 4096-ReLU-dropout-
    fc 4096-ReLU-fc num_classes.  Parameter names are torchvision's (``features.0.weight``,
    ``classifier.1.weight``, ...); with ``batch_norm`` or ``local_response_norm`` the
    ``features`` indices shift, as in torchvision's ``vgg*_bn``.

    ``batch_norm=True`` puts a BatchNorm2d between each convolution and its ReLU, and none
    on the fully connected layers, which keep their dropout (the classifier is unchanged, so
    it can be compared with or initialised from the plain model's).  This is the common
    "AlexNet with batch norm" and the form whose size the issue gives: 58,325,066
    parameters for 10 classes.  That count pins the layout down: it is the 2012 paper's
    widths (96-256-384-384-256; 58,322,314 parameters without BN) plus 2 x 1,376 BN
    parameters.  torchvision's widths (64-192-384-256-256) give 57,044,810 without BN and
    57,047,114 with BN after each convolution; BatchNorm1d on the two hidden FC layers would
    add 16,384 more, which the count rules out.  So ``widths`` defaults to ``"paper"`` when
    ``batch_norm`` or ``local_response_norm`` is set and to ``"torchvision"`` otherwise;
    pass ``widths="torchvision"`` (or five channel counts) to choose.

    ``local_response_norm=True`` is the 2012 form: ReLU -> LRN -> max pool after the first
    two convolutions, with the paper's n = 5, k = 2, beta = 0.75 and alpha = 1e-4 on the
    sum of squares (torch's LocalResponseNorm averages over the window, so its alpha is
    5 x 1e-4).  The convolutions keep torchvision's padding (2 on the first), so 224 x 224
    inputs give the 55 x 55 first maps of the paper's 227 x 227."""

    def __init__(self, num_classes=1000, batch_norm=False, local_response_norm=False,
                 in_channels=3, widths=None, dropout=0.5):
        super().__init__()
        widths = _widths(widths, batch_norm, local_response_norm)
        self.input_shape = (in_channels, 224, 224)
        layers = []
        previous = in_channels
        geometry = [(11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
        for i, (width, (kernel, stride, padding)) in enumerate(zip(widths, geometry)):
            layers.append(Conv2d(previous, width, kernel, stride=stride, padding=padding))
            if batch_norm:
                layers.append(BatchNorm2d(width))
            layers.append(ReLU())
            if local_response_norm and i < 2:
                layers.append(LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
            if i in (0, 1, 4):
                layers.append(MaxPool2d(3, 2))
            previous = width
        self.features = Sequential(*layers)
        self.avgpool = AdaptiveAvgPool2d((6, 6))
        self.flatten = Flatten()
        self.classifier = Sequential(
            Dropout(dropout), Linear(previous * 6 * 6, 4096), ReLU(),
            Dropout(dropout), Linear(4096, 4096), ReLU(),
            Linear(4096, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(self.flatten(x))


def alexnet(num_classes=1000, batch_norm=False, local_response_norm=False, in_channels=3,
            widths=None):
    """AlexNet for 224 x 224 images; see ``AlexNet`` for the variants and their widths."""
    return AlexNet(num_classes, batch_norm, local_response_norm, in_channels, widths)
