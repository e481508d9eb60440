"""conv2d forward, backward-input and backward-weight (float32, NCHW, groups 1) on layers of
LeNet-5, AlexNet, VGG16 and ResNet-20 (layers.py) against PyTorch: torch.nn.functional.conv2d
and torch.nn.grad.conv2d_input / conv2d_weight on the CPU (as many threads as NumPy and PoCL
get), and cuDNN through PyTorch on a GPU.  GFLOP/s counts 2 * C_out * OH * OW * N * C_in *
kh * kw for every pass.  A pass whose gpumat function does not exist is skipped with a note.
"""
import pytest

import harness
import gpumat as gm
from layers import NETWORKS, layer

if not hasattr(gm, "conv2d"):
    pytest.skip("gpumat has no conv2d (yet)", allow_module_level=True)

LAYERS = {
    "quick": [("lenet", "conv1", 8), ("lenet", "conv2", 8), ("resnet20", "stage1", 8),
              ("resnet20", "stage3_down", 8), ("alexnet", "conv3", 1)],
    "full": [(net, conv.name, batch) for net, batch in
             (("lenet", 64), ("resnet20", 32), ("alexnet", 8), ("vgg16", 1))
             for conv in NETWORKS[net]["conv"]],
}
PASSES = {"forward": "conv2d", "backward-input": "conv2d_backward_input",
          "backward-weight": "conv2d_backward_weight"}


def _cases():
    return [pytest.param((net, name, batch, step), id=f"{net}-{name}-b{batch}-{step}")
            for net, name, batch in LAYERS[harness.PRESET] for step in PASSES]


def _gpumat(impl, conv, step, x_host, w_host, dy_host):
    function = getattr(gm, PASSES[step], None)
    if function is None:
        pytest.skip(f"gpumat has no {PASSES[step]} (yet)")
    x, w, dy = harness.upload(impl, x_host, w_host, dy_host)
    geometry = dict(stride=conv.stride, padding=conv.padding)
    if step == "forward":
        return lambda: function(x, w, **geometry)
    if step == "backward-input":
        return lambda: function(dy, w, x_host.shape, **geometry)
    return lambda: function(dy, x, w_host.shape, **geometry)


def _torch(impl, conv, step, x_host, w_host, dy_host):
    torch = impl.module
    device = "cuda" if impl.name == "torch-cuda" else "cpu"
    x, w, dy = (torch.from_numpy(a).to(device) for a in (x_host, w_host, dy_host))
    geometry = dict(stride=conv.stride, padding=conv.padding)
    if step == "forward":
        return lambda: torch.nn.functional.conv2d(x, w, **geometry)
    if step == "backward-input":
        return lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, **geometry)
    return lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, **geometry)


@pytest.mark.parametrize("impl", harness.implementations("conv"), ids=str)
@pytest.mark.parametrize("case", _cases())
def test_conv2d(benchmark, case, impl):
    net, name, batch, step = case
    conv = layer(net, "conv", name)
    generator = harness.rng()
    x_host = harness.host((batch, conv.c_in, conv.size, conv.size), generator, -0.5)
    w_host = harness.host((conv.c_out, conv.c_in, conv.kernel, conv.kernel), generator, -0.5)
    dy_host = harness.host((batch, conv.c_out, conv.out_size, conv.out_size), generator, -0.5)
    if impl.role == "gpumat":
        call = _gpumat(impl, conv, step, x_host, w_host, dy_host)
        sync = harness.gpumat_sync(impl.backend)
    else:
        call = _torch(impl, conv, step, x_host, w_host, dy_host)
        sync = impl.module.cuda.synchronize if impl.name == "torch-cuda" else harness.no_sync
    label = f"{net}.{name} b{batch} {step}"
    harness.time_case(benchmark, call, sync, suite="conv", case=label, panel=step,
                      x=f"{net}.{name} b{batch}", impl=impl, unit="GFLOP/s",
                      work=float(conv.flops(batch)), network=net, layer=name, batch=batch)
