"""2-d max and average pooling, forward and backward (float32, NCHW), on the pooling layers of
LeNet-5, AlexNet, VGG16 and ResNet-20 (layers.py), every layer timed in both modes, against
PyTorch (torch.nn.functional.max_pool2d / avg_pool2d and aten's *_backward ops) on the CPU and
on a GPU.  GB/s counts the bytes a kernel must move once: input + output forward (max pooling
without its indices), grad_out + int64 indices + grad_in for max backward, grad_out + grad_in
for avg backward.
"""
import pytest

import harness
import gpumat as gm
from layers import NETWORKS, layer

if not (hasattr(gm, "max_pool2d") and hasattr(gm, "avg_pool2d")):
    pytest.skip("gpumat has no max_pool2d / avg_pool2d (yet)", allow_module_level=True)

LAYERS = {
    "quick": [("lenet", "pool1", 8), ("alexnet", "pool1", 1), ("vgg16", "pool2", 1),
              ("resnet20", "global_avg", 8)],
    "full": [(net, pool.name, batch) for net, batch in
             (("lenet", 64), ("resnet20", 32), ("alexnet", 8), ("vgg16", 4))
             for pool in NETWORKS[net]["pool"]],
}
STEPS = ["max forward", "max backward", "avg forward", "avg backward"]
FUNCTIONS = {"max forward": "max_pool2d", "max backward": "max_pool2d_backward",
             "avg forward": "avg_pool2d", "avg backward": "avg_pool2d_backward"}


def _cases():
    return [pytest.param((net, name, batch, step),
                         id=f"{net}-{name}-b{batch}-{step.replace(' ', '-')}")
            for net, name, batch in LAYERS[harness.PRESET] for step in STEPS]


def _bytes(pool, batch, step):
    plane_in, plane_out = pool.size ** 2, pool.out_size ** 2
    elements_in, elements_out = batch * pool.channels * plane_in, batch * pool.channels * plane_out
    if step == "max backward":
        return 4 * elements_out + 8 * elements_out + 4 * elements_in
    return 4 * (elements_in + elements_out)


def _gpumat(impl, pool, step, x_host, dy_host):
    function = getattr(gm, FUNCTIONS[step], None)
    if function is None:
        pytest.skip(f"gpumat has no {FUNCTIONS[step]} (yet)")
    x, dy = harness.upload(impl, x_host, dy_host)
    geometry = (pool.kernel, pool.stride, pool.padding)
    if step == "max forward":
        return lambda: gm.max_pool2d(x, *geometry)
    if step == "avg forward":
        return lambda: gm.avg_pool2d(x, *geometry)
    if step == "avg backward":
        return lambda: gm.avg_pool2d_backward(dy, x_host.shape, *geometry)
    _, indices = gm.max_pool2d(x, *geometry, return_indices=True)
    gm.backends.get(impl.backend).synchronize()
    return lambda: gm.max_pool2d_backward(dy, indices, x_host.shape, *geometry)


def _torch(impl, pool, step, x_host, dy_host):
    torch = impl.module
    device = "cuda" if impl.name == "torch-cuda" else "cpu"
    x, dy = (torch.from_numpy(a).to(device) for a in (x_host, dy_host))
    k, s, p = [pool.kernel] * 2, [pool.stride] * 2, [pool.padding] * 2
    functional, aten = torch.nn.functional, torch.ops.aten
    if step == "max forward":
        return lambda: functional.max_pool2d(x, k, s, p)
    if step == "avg forward":
        return lambda: functional.avg_pool2d(x, k, s, p)
    if step == "avg backward":
        return lambda: aten.avg_pool2d_backward(dy, x, k, s, p, False, True, None)
    _, indices = functional.max_pool2d(x, k, s, p, return_indices=True)
    return lambda: aten.max_pool2d_with_indices_backward(dy, x, k, s, p, [1, 1], False, indices)


@pytest.mark.parametrize("impl", harness.implementations("pool"), ids=str)
@pytest.mark.parametrize("case", _cases())
def test_pool2d(benchmark, case, impl):
    net, name, batch, step = case
    pool = layer(net, "pool", name)
    generator = harness.rng()
    x_host = harness.host((batch, pool.channels, pool.size, pool.size), generator, -0.5)
    dy_host = harness.host((batch, pool.channels, pool.out_size, pool.out_size), generator, -0.5)
    if impl.role == "gpumat":
        call = _gpumat(impl, pool, step, x_host, dy_host)
        sync = harness.gpumat_sync(impl.backend)
    else:
        call = _torch(impl, pool, step, x_host, dy_host)
        sync = impl.module.cuda.synchronize if impl.name == "torch-cuda" else harness.no_sync
    label = f"{net}.{name} b{batch} {step}"
    harness.time_case(benchmark, call, sync, suite="pool", case=label, panel=step,
                      x=f"{net}.{name} b{batch}", impl=impl, unit="GB/s",
                      work=float(_bytes(pool, batch, step)), network=net, layer=name, batch=batch,
                      kernel=pool.kernel, stride=pool.stride)
