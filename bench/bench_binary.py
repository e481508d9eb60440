"""Binarized convolution (gm.xnor_conv2d) against float conv2d on the same backend and shapes.

Layers: ResNet-20's binarizable 3x3 convolutions (16, 32 and 64 channels; its first layer
stays float in binary networks) and a 256-channel 14x14 3x3 layer (ResNet-18/34's conv4_x).
Each gpumat backend appears twice: ``gpumat-<backend>`` runs the XNOR-popcount kernel on
float input (binarizing and packing it is part of the timed call; the weights are packed once
beforehand, as a binary layer in eval mode keeps them), ``float-<backend>`` runs gm.conv2d
on the same float input and weights.  torch.nn.functional.conv2d on the CPU (and cuDNN on a
GPU) is the float conv users would pick instead.  GOP/s counts 2 * C_out * OH * OW * N *
C_in * kh * kw for both, so a ratio of rates is a ratio of speeds; the table's
``<backend>/float-<backend>`` column is the speed-up the issue's targets are about.

Where the time goes: ``packed-<backend>`` times the XNOR kernel alone, on input already
binarized and packed (what a layer pays when the previous layer emits bits), in the same
cases; ``<backend>/packed-<backend>`` below 1 is the share of the layer that binarizing and
packing its float input costs.  (bench/binary_profile.py does the same per layer of whole
networks.)

End to end (``*-eval`` cases): a binary network in eval mode (every conv but the first, and
every linear but the last, in XNOR mode) against its float twin, thousands of images per
second, at a throughput batch and at batch 1 (one image at a time: latency, where the Python
around each kernel counts most).  Each model runs as the library runs it: the XNOR blocks fold the batch norm in
front of each binary convolution into its packing and add the residual in its stores (cpu in
one native pass, OpenCL in three launches), while the float model runs its batch norms,
activations and additions as layers of their own (bench/binary_profile.py shows the split).
"""
import pytest

import harness
import gpumat as gm
from layers import Conv, layer

if not hasattr(gm, "xnor_conv2d"):
    pytest.skip("gpumat has no xnor_conv2d (yet)", allow_module_level=True)

WIDE = Conv("conv4_x", 256, 256, 14, 3, padding=1, count=2)
LAYERS = {
    "quick": [("resnet20", "stage1", 32), ("resnet20", "stage2_down", 32),
              ("resnet20", "stage2", 32), ("resnet20", "stage3_down", 32),
              ("resnet20", "stage3", 32), ("resnet18", "conv4_x", 8)],
}
LAYERS["full"] = LAYERS["quick"] + [("resnet20", "stage1", 128), ("resnet18", "conv4_x", 32)]
MODELS = {"quick": [("lenet5", 256, (1, 32, 32)), ("resnet20", 32, (1, 32, 32)),
                   ("lenet5", 1, (1, 32, 32)), ("resnet20", 1, (1, 32, 32))]}
MODELS["full"] = MODELS["quick"] + [("resnet20", 128, (1, 32, 32))]


def _conv(net, name):
    return WIDE if (net, name) == ("resnet18", "conv4_x") else layer(net, "conv", name)


def implementations():
    found = []
    for impl in harness.implementations("conv"):
        if impl.role == "gpumat":
            found.append(impl)
            for kind in ("float", "packed"):
                found.append(harness.Implementation(f"{kind}-{impl.backend}", impl.device,
                                                    "peer", impl.backend))
        else:
            found.append(impl)
    return found


IMPLEMENTATIONS = implementations()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=str)
@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c[0]}-{c[1]}-b{c[2]}")
                                  for c in LAYERS[harness.PRESET]])
def test_binary_conv(benchmark, case, impl):
    net, name, batch = case
    conv = _conv(net, name)
    generator = harness.rng()
    x_host = harness.host((batch, conv.c_in, conv.size, conv.size), generator, -0.5)
    w_host = harness.host((conv.c_out, conv.c_in, conv.kernel, conv.kernel), generator, -0.5)
    geometry = dict(stride=conv.stride, padding=conv.padding)
    if impl.name.startswith("torch"):
        torch = impl.module
        device = "cuda" if impl.name == "torch-cuda" else "cpu"
        x, w = (torch.from_numpy(a).to(device) for a in (x_host, w_host))
        call = lambda: torch.nn.functional.conv2d(x, w, **geometry)   # noqa: E731
        sync = torch.cuda.synchronize if device == "cuda" else harness.no_sync
    else:
        x, w = harness.upload(impl, x_host, w_host)
        sync = harness.gpumat_sync(impl.backend)
        kind = impl.name.split("-")[0]
        if impl.role == "gpumat" or kind == "packed":
            packed = gm.pack_conv_weight(w)
            if kind == "packed":
                x = gm.pack_conv_input(x)
            call = lambda: gm.xnor_conv2d(x, packed, channels=conv.c_in,  # noqa: E731
                                          dtype="float32", **geometry)
        else:
            call = lambda: gm.conv2d(x, w, **geometry)                 # noqa: E731
    harness.time_case(benchmark, call, sync, suite="binary", case=f"{net}.{name} b{batch}",
                      panel="3x3 convolution", x=f"{net}.{name} b{batch}", impl=impl,
                      unit="GOP/s", work=float(conv.flops(batch)), network=net, layer=name,
                      batch=batch)


def _model(name, binary):
    from gpumat.nn import models
    if name == "lenet5":
        return models.lenet5(binary=binary)
    return models.resnet_cifar(3, 10, 1, binary=binary)


@pytest.mark.parametrize("impl", [i for i in IMPLEMENTATIONS
                                  if not i.name.startswith(("torch", "packed"))],
                         ids=str)
@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c[0]}-b{c[1]}")
                                  for c in MODELS[harness.PRESET]])
def test_binary_model_eval(benchmark, case, impl):
    from gpumat import nn
    name, batch, image = case
    try:
        model = _model(name, "xnor" if impl.role == "gpumat" else None)
    except TypeError as exc:
        pytest.skip(f"gpumat.nn.models.{name} has no binary option (yet): {exc}")
    model.to(impl.backend)
    model.eval()
    (x,) = harness.upload(impl, harness.host((batch,) + image, harness.rng(), -0.5))
    sync = harness.gpumat_sync(impl.backend)

    def call():
        with nn.no_grad():
            model(x)

    harness.time_case(benchmark, call, sync, suite="binary", case=f"{name} b{batch} eval",
                      panel="inference", x=f"{name} b{batch}", impl=impl, unit="kimg/s",
                      work=batch * 1e6, network=name, batch=batch)
