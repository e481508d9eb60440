"""The check every nn parity test makes: a gpumat module and its torch.nn twin, given the same
weights, compute the same outputs, input gradient, parameter gradients and state."""
import numpy as np
import torch

import gpumat as gm
from gpumat import nn


def to_torch_state(module, names=None):
    """``module``'s state_dict as torch tensors, keys renamed through ``names`` (ours ->
    theirs) where given."""
    names = names or {}
    return {names.get(k, k): torch.from_numpy(np.array(v.gather()))
            for k, v in module.state_dict().items()}


def close(ours, theirs, rtol, atol, what):
    """assert_allclose with ``atol`` relative to the reference's largest magnitude (the
    gradients of different layers span orders of magnitude)."""
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol * scale, err_msg=what)


def assert_matches_torch(ours, theirs, shape, backend, names=None, rtol=1e-4, atol=1e-4,
                         seed=0, passes=1, data=None):
    """Load ``ours``'s weights into ``theirs`` (strictly: the names agree, through ``names``
    where they differ), run both ``passes`` times on one batch (batch norm's running
    statistics move each time), then compare the output, the gradients of sum(output * w)
    for random w, and the state afterwards.

    The data come from a generator seeded here (or ``data``), not a shared one, so a test
    sees the same numbers whatever ran before it: a ReLU input or a max-pool tie within
    float32 rounding makes the gradients differ legitimately, and fixed data keep such a
    case from coming and going with the test order."""
    names = names or {}
    rng = np.random.default_rng(seed)
    theirs.load_state_dict(to_torch_state(ours, names))
    x = rng.standard_normal(shape).astype(np.float32) if data is None else data
    xv = nn.Variable(gm.array(x, backend=backend), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    for _ in range(passes):
        y, yt = ours(xv), theirs(xt)
        close(y.gather(), yt, rtol, atol, "output")
    weights = rng.standard_normal(yt.shape).astype(np.float32)
    y.backward(gm.array(weights, backend=backend))
    (yt * torch.from_numpy(weights)).sum().backward()
    close(xv.grad.gather(), xt.grad, rtol, atol, "input gradient")
    torch_parameters = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        close(p.grad.gather(), torch_parameters[names.get(name, name)].grad, rtol, atol,
              f"gradient of {name}")
    expected = theirs.state_dict()
    for key, value in ours.state_dict().items():        # running statistics included
        close(value.gather(), expected[names.get(key, key)], rtol, atol, key)
