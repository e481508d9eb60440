"""Activation layers (gpumat/activations.py), forward and backward, on the outputs of conv
layers from layers.py and on a 1000-class softmax, against PyTorch on the CPU (and on a GPU)
and NumPy's one-liners.  GB/s counts the bytes read and written once per element: 8 for a
forward (x in, y out; the bias is negligible), 12 for a backward (grad and x in, dx out).
A function gpumat does not have (yet) is skipped with a note.
"""
import numpy as np
import pytest

import harness
import gpumat as gm
from layers import layer

if not hasattr(gm, "relu"):
    pytest.skip("gpumat has no activations (yet)", allow_module_level=True)

# (network, conv layer whose output is activated, batch)
MAPS = {"quick": [("resnet20", "stage1", 8), ("alexnet", "conv1", 1), ("vgg16", "conv1_2", 1)],
        "full": [("resnet20", "stage1", 32), ("alexnet", "conv1", 8), ("vgg16", "conv1_2", 4),
                 ("vgg16", "conv4_2", 4)]}
STEPS = {"relu": 8, "relu backward": 12, "bias_relu": 8, "softmax": 8}


def _cases():
    cases = []
    for net, name, batch in MAPS[harness.PRESET]:
        conv = layer(net, "conv", name)
        shape = (batch, conv.c_out, conv.out_size, conv.out_size)
        for step in ("relu", "relu backward", "bias_relu"):
            cases.append(pytest.param((step, f"{net}.{name} b{batch}", shape),
                                      id=f"{net}-{name}-b{batch}-{step.replace(' ', '-')}"))
    batch = 64 if harness.PRESET == "quick" else 256
    cases.append(pytest.param(("softmax", f"{batch}x1000 logits", (batch, 1000)),
                              id=f"softmax-{batch}x1000"))
    return cases


NEEDS = {"relu": "relu", "relu backward": "relu_backward", "bias_relu": "bias_relu",
         "softmax": "softmax"}


@pytest.mark.parametrize("impl", harness.implementations("act"), ids=str)
@pytest.mark.parametrize("case", _cases())
def test_activation(benchmark, case, impl):
    step, where, shape = case
    generator = harness.rng()
    x_host = harness.host(shape, generator, -0.5)
    g_host = harness.host(shape, generator, -0.5)
    b_host = harness.host((shape[1],), generator, -0.5)
    if impl.role == "gpumat":
        function = getattr(gm, NEEDS[step], None)
        if function is None:
            pytest.skip(f"gpumat has no {NEEDS[step]} (yet)")
        x, g, b = harness.upload(impl, x_host, g_host, b_host)
        call = {"relu": lambda: function(x), "relu backward": lambda: function(g, x),
                "bias_relu": lambda: function(x, b), "softmax": lambda: function(x, axis=-1)}[step]
        sync = harness.gpumat_sync(impl.backend)
    elif impl.name == "numpy":
        bias = b_host.reshape((1, -1) + (1,) * (len(shape) - 2))

        def softmax():
            e = np.exp(x_host - x_host.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        call = {"relu": lambda: np.maximum(x_host, 0),
                "relu backward": lambda: np.where(x_host > 0, g_host, 0),
                "bias_relu": lambda: np.maximum(x_host + bias, 0), "softmax": softmax}[step]
        sync = harness.no_sync
    else:
        torch = impl.module
        device = "cuda" if impl.name == "torch-cuda" else "cpu"
        x, g, b = (torch.from_numpy(a).to(device) for a in (x_host, g_host, b_host))
        bias = b.reshape((1, -1) + (1,) * (len(shape) - 2))
        functional = torch.nn.functional
        call = {"relu": lambda: functional.relu(x),
                "relu backward": lambda: torch.ops.aten.threshold_backward(g, x, 0),
                "bias_relu": lambda: functional.relu(x + bias),
                "softmax": lambda: functional.softmax(x, dim=-1)}[step]
        sync = torch.cuda.synchronize if impl.name == "torch-cuda" else harness.no_sync
    elements = int(np.prod(shape))
    harness.time_case(benchmark, call, sync, suite="act", case=f"{where} {step}", panel=step,
                      x=where, impl=impl, unit="GB/s", work=float(STEPS[step] * elements),
                      elements=elements)
