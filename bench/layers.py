"""Layer tables of four published networks, and the GEMM shapes their layers lower to.

Each convolution lowers (im2col) to three GEMMs per batch of N images of H x W:

    forward          y  = W  @ cols      M = C_out          N = OH*OW*N   K = C_in*kh*kw
    backward-input   dc = W^T @ dy       M = C_in*kh*kw     N = OH*OW*N   K = C_out
    backward-weight  dW = dy @ cols^T    M = C_out          N = C_in*kh*kw  K = OH*OW*N

A fully connected layer is the 1x1 convolution of a 1x1 image, so the same three formulas
hold (forward M = out, N = batch, K = in).  Sources of the configurations:

* LeNet-5: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
  recognition" (1998): 32x32 input, C1 6@5x5, S2 2x2, C3 16@5x5, S4 2x2, C5 120@5x5, F6 84,
  output 10 (C3 taken fully connected to S2, as modern re-implementations do).
* AlexNet: Krizhevsky, Sutskever, Hinton (2012), in its one-tower form (groups = 1; the
  paper splits conv2, conv4, conv5 over two GPUs): 227x227 input, 96@11x11/4, max 3x3/2,
  256@5x5 pad 2, max 3x3/2, 384@3x3, 384@3x3, 256@3x3 (pad 1), max 3x3/2, fc 9216-4096-4096-1000.
* VGG16: Simonyan and Zisserman (2015), configuration D: 224x224, thirteen 3x3 pad-1
  convolutions (64, 64 | 128, 128 | 256 x3 | 512 x3 | 512 x3, a 2x2/2 max pool after each
  block), fc 25088-4096-4096-1000.
* ResNet-20: He, Zhang, Ren, Sun (2016), section 4.2 (CIFAR-10): 32x32, a 3x3 16 convolution,
  three stages of 3 basic blocks (two 3x3 convolutions each) with 16, 32, 64 channels on 32x32,
  16x16, 8x8 maps (the first convolution of stages 2 and 3 has stride 2; identity shortcuts,
  option A, add no convolution), global 8x8 average pool, fc 64-10.

Repeated identical layers are listed once with ``count`` (the benchmark times each shape once).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Conv:
    name: str
    c_in: int
    c_out: int
    size: int            # input height = width
    kernel: int
    stride: int = 1
    padding: int = 0
    count: int = 1       # how many identical layers the network has

    @property
    def out_size(self):
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def gemm_shapes(self, batch):
        """{pass: (M, N, K)} of the three GEMMs this layer lowers to for ``batch`` images."""
        columns = self.out_size ** 2 * batch
        patch = self.c_in * self.kernel ** 2
        return {"forward": (self.c_out, columns, patch),
                "backward-input": (patch, columns, self.c_out),
                "backward-weight": (self.c_out, patch, columns)}

    def flops(self, batch):
        """Multiply-adds times two of the forward pass (each backward pass costs the same)."""
        return 2 * self.c_out * self.out_size ** 2 * batch * self.c_in * self.kernel ** 2


def Linear(name, inputs, outputs, count=1):
    """A fully connected layer as the 1x1 convolution of a 1x1 image."""
    return Conv(name, inputs, outputs, 1, 1, count=count)


@dataclass(frozen=True)
class Pool:
    name: str
    channels: int
    size: int            # input height = width
    kernel: int
    stride: int
    padding: int = 0
    mode: str = "max"    # the network's own pooling; the benchmark times both max and avg

    @property
    def out_size(self):
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


NETWORKS = {
    "lenet": {
        "conv": [Conv("conv1", 1, 6, 32, 5), Conv("conv2", 6, 16, 14, 5),
                 Conv("conv3", 16, 120, 5, 5)],
        "fc": [Linear("fc1", 120, 84), Linear("fc2", 84, 10)],
        "pool": [Pool("pool1", 6, 28, 2, 2, mode="avg"), Pool("pool2", 16, 10, 2, 2, mode="avg")],
    },
    "alexnet": {
        "conv": [Conv("conv1", 3, 96, 227, 11, stride=4), Conv("conv2", 96, 256, 27, 5, padding=2),
                 Conv("conv3", 256, 384, 13, 3, padding=1),
                 Conv("conv4", 384, 384, 13, 3, padding=1),
                 Conv("conv5", 384, 256, 13, 3, padding=1)],
        "fc": [Linear("fc6", 9216, 4096), Linear("fc7", 4096, 4096), Linear("fc8", 4096, 1000)],
        "pool": [Pool("pool1", 96, 55, 3, 2), Pool("pool2", 256, 27, 3, 2),
                 Pool("pool5", 256, 13, 3, 2)],
    },
    "vgg16": {
        "conv": [Conv("conv1_1", 3, 64, 224, 3, padding=1),
                 Conv("conv1_2", 64, 64, 224, 3, padding=1),
                 Conv("conv2_1", 64, 128, 112, 3, padding=1),
                 Conv("conv2_2", 128, 128, 112, 3, padding=1),
                 Conv("conv3_1", 128, 256, 56, 3, padding=1),
                 Conv("conv3_2", 256, 256, 56, 3, padding=1, count=2),
                 Conv("conv4_1", 256, 512, 28, 3, padding=1),
                 Conv("conv4_2", 512, 512, 28, 3, padding=1, count=2),
                 Conv("conv5_1", 512, 512, 14, 3, padding=1, count=3)],
        "fc": [Linear("fc6", 25088, 4096), Linear("fc7", 4096, 4096), Linear("fc8", 4096, 1000)],
        "pool": [Pool("pool1", 64, 224, 2, 2), Pool("pool2", 128, 112, 2, 2),
                 Pool("pool3", 256, 56, 2, 2), Pool("pool4", 512, 28, 2, 2),
                 Pool("pool5", 512, 14, 2, 2)],
    },
    "resnet20": {
        "conv": [Conv("conv1", 3, 16, 32, 3, padding=1),
                 Conv("stage1", 16, 16, 32, 3, padding=1, count=6),
                 Conv("stage2_down", 16, 32, 32, 3, stride=2, padding=1),
                 Conv("stage2", 32, 32, 16, 3, padding=1, count=5),
                 Conv("stage3_down", 32, 64, 16, 3, stride=2, padding=1),
                 Conv("stage3", 64, 64, 8, 3, padding=1, count=5)],
        "fc": [Linear("fc", 64, 10)],
        "pool": [Pool("global_avg", 64, 8, 8, 8, mode="avg")],
    },
}


def layer(network, kind, name):
    """One layer of a network's table by name, e.g. layer('vgg16', 'conv', 'conv3_2')."""
    for entry in NETWORKS[network][kind]:
        if entry.name == name:
            return entry
    raise KeyError(f"{network} has no {kind} layer named {name!r}")
