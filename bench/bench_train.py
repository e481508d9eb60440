"""Training steps of whole networks (gpumat.nn) against PyTorch with the same model, batch,
loss and optimizer: LeNet-5 at batch 64 and ResNet-20 (CIFAR, 32 x 32) at batch 32, each
step = forward, softmax cross-entropy, backward, SGD with momentum.  The rate unit is
thousands of images per second (kimg/s): the harness's "work" for a case is its batch in
units of 1e-6 GImages.  Both sides start from the same weights (ours, loaded into torch),
so they run the same arithmetic, and cycle through the same BATCHES pre-uploaded batches:
each timed step sees new data, as in training (a step repeated on one batch would let a
cache of the last lowering serve the next step's forward).
"""
import numpy as np
import pytest

import harness

try:
    import gpumat.nn as nn
    import gpumat.nn.functional as F
    from gpumat.nn import models
except ImportError as exc:      # a gpumat without the layer library
    pytest.skip(f"gpumat.nn is not available ({exc})", allow_module_level=True)

import gpumat as gm

# (network, batch, input shape); the quick preset is the LeNet-5 batch-64 figure
CASES = {"quick": [("lenet5", 64, (1, 32, 32)), ("resnet20", 32, (3, 32, 32))],
         "full": [("lenet5", 64, (1, 32, 32)), ("lenet5", 256, (1, 32, 32)),
                  ("resnet20", 32, (3, 32, 32)), ("resnet20", 128, (3, 32, 32))]}
LR, MOMENTUM = 0.01, 0.9
BATCHES = 4


def _ours(name):
    return models.lenet5() if name == "lenet5" else models.resnet_cifar(3)


def _torch_lenet(torch):
    """The PyTorch tutorial's LeNet-5, with gpumat.nn.models.lenet5's parameter names."""
    tnn, tf = torch.nn, torch.nn.functional

    class LeNet5(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = tnn.Conv2d(1, 6, 5), tnn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = (tnn.Linear(400, 120), tnn.Linear(120, 84),
                                            tnn.Linear(84, 10))

        def forward(self, x):
            x = tf.max_pool2d(tf.relu(self.conv1(x)), 2)
            x = tf.max_pool2d(tf.relu(self.conv2(x)), 2).flatten(1)
            return self.fc3(tf.relu(self.fc2(tf.relu(self.fc1(x)))))

    return LeNet5()


def _torch_resnet20(torch):
    """He et al.'s CIFAR ResNet-20 with the parameter-free option-A shortcut (strided
    subsampling, zero channels split before and after), as gpumat.nn.models.resnet_cifar
    builds it, with its parameter names."""
    tnn, tf = torch.nn, torch.nn.functional

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.pad = cout - cin
            self.stride = stride

        def forward(self, x):
            out = tf.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x
            if self.stride != 1 or self.pad:
                before = self.pad // 2
                shortcut = tf.pad(x[:, :, ::self.stride, ::self.stride],
                                  (0, 0, 0, 0, before, self.pad - before))
            return tf.relu(out + shortcut)

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            layers, cin = [], 16
            for cout, stride in ((16, 1), (32, 2), (64, 2)):
                blocks = []
                for i in range(3):
                    blocks.append(Block(cin, cout, stride if i == 0 else 1))
                    cin = cout
                layers.append(tnn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = layers
            self.fc = tnn.Linear(64, 10)

        def forward(self, x):
            x = tf.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(tf.adaptive_avg_pool2d(x, 1).flatten(1))

    return ResNet()


def _implementations():
    impls = [i for i in harness.implementations("conv") if i.role == "gpumat"
             or i.name.startswith("torch")]
    return impls


def _cases():
    return [pytest.param(c, id=f"{c[0]}-b{c[1]}") for c in CASES[harness.PRESET]]


@pytest.mark.parametrize("impl", _implementations(), ids=str)
@pytest.mark.parametrize("case", _cases())
def test_training_step(benchmark, case, impl):
    name, batch, shape = case
    generator = harness.rng()
    x_hosts = [generator.standard_normal((batch,) + shape).astype(np.float32)
               for _ in range(BATCHES)]
    y_hosts = [generator.integers(0, 10, batch) for _ in range(BATCHES)]
    step = [0]

    def next_batch(xs, ys):
        i = step[0] = (step[0] + 1) % BATCHES
        return xs[i], ys[i]

    gm.seed(0)
    model = _ours(name)
    if impl.role == "gpumat":
        model.to(impl.backend)
        uploaded = harness.upload(impl, *x_hosts, *y_hosts)
        xs, ys = uploaded[:BATCHES], uploaded[BATCHES:]
        optimizer = nn.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def call():
            x, y = next_batch(xs, ys)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        sync = harness.gpumat_sync(impl.backend)
    else:
        torch = impl.module
        device = "cuda" if impl.name == "torch-cuda" else "cpu"
        theirs = (_torch_lenet if name == "lenet5" else _torch_resnet20)(torch)
        theirs.load_state_dict({k: torch.from_numpy(np.array(v.gather()))
                                for k, v in model.state_dict().items()})
        theirs.to(device)
        xs = [torch.from_numpy(x).to(device) for x in x_hosts]
        ys = [torch.from_numpy(y).to(device) for y in y_hosts]
        optimizer = torch.optim.SGD(theirs.parameters(), lr=LR, momentum=MOMENTUM)
        loss_fn = torch.nn.functional.cross_entropy

        def call():
            x, y = next_batch(xs, ys)
            optimizer.zero_grad()
            loss = loss_fn(theirs(x), y)
            loss.backward()
            optimizer.step()
        sync = torch.cuda.synchronize if device == "cuda" else harness.no_sync
    harness.time_case(benchmark, call, sync, suite="train", case=f"{name} b{batch}",
                      panel=name, x=batch, impl=impl, unit="kimg/s", work=batch * 1e6)
