"""Optimizers and schedules follow torch.optim's trajectories; state_dict resumes exactly."""
import numpy as np
import pytest
import torch

import gpumat as gm
from gpumat import nn
from gpumat.nn import optim
from conftest import TESTED

RNG = np.random.default_rng(5)

SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9,
                                                             nesterov=True),
             dict(lr=0.01, momentum=0.5, dampening=0.3, weight_decay=1e-2),
             dict(lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True)]
ADAM_CASES = [dict(lr=1e-2), dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)]


def run_both(backend, make_ours, make_theirs, steps=6):
    """The same parameters and gradient sequence through our optimizer and torch's."""
    shapes = [(3, 4), (5,)]
    start = [RNG.standard_normal(s) for s in shapes]
    grads = [[RNG.standard_normal(s) for s in shapes] for _ in range(steps)]
    ours = [nn.Parameter(gm.array(v.astype(np.float32), backend=backend)) for v in start]
    theirs = [torch.tensor(v.astype(np.float32), requires_grad=True) for v in start]
    opt, topt = make_ours(ours), make_theirs(theirs)
    for step in grads:
        for p, pt, g in zip(ours, theirs, step):
            p.grad = gm.array(g.astype(np.float32), backend=backend)
            pt.grad = torch.tensor(g.astype(np.float32))
        opt.step()
        topt.step()
    for p, pt in zip(ours, theirs):
        np.testing.assert_allclose(p.gather(), pt.detach().numpy(), rtol=1e-5, atol=1e-6)
    return opt, ours


@pytest.mark.parametrize("hyper", SGD_CASES, ids=str)
def test_sgd_matches_torch(backend, hyper):
    run_both(backend, lambda ps: optim.SGD(ps, **hyper), lambda ps: torch.optim.SGD(ps, **hyper))


@pytest.mark.parametrize("hyper", ADAM_CASES, ids=str)
def test_adam_matches_torch(backend, hyper):
    run_both(backend, lambda ps: optim.Adam(ps, **hyper), lambda ps: torch.optim.Adam(ps, **hyper))


def test_adamw_matches_torch(backend):
    run_both(backend, lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1, decoupled=True),
             lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_state_dict_resumes_exactly(backend, kind):
    make = (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)) if kind == "sgd" else \
        (lambda ps: optim.Adam(ps, lr=0.01))
    grads = [RNG.standard_normal(4).astype(np.float32) for _ in range(6)]

    def train(params, opt, gs):
        for g in gs:
            params[0].grad = gm.array(g, backend=backend)
            opt.step()

    straight = [nn.Parameter(gm.ones(4, backend=backend))]
    train(straight, make(straight), grads)
    first = [nn.Parameter(gm.ones(4, backend=backend))]
    opt = make(first)
    train(first, opt, grads[:3])
    saved = {"state": {i: {k: (v.gather() if isinstance(v, gm.Array) else v)
                           for k, v in s.items()} for i, s in opt.state_dict()["state"].items()},
             "param_groups": opt.state_dict()["param_groups"]}
    resumed = [nn.Parameter(gm.array(first[0].gather(), backend=backend))]
    opt2 = make(resumed)
    opt2.load_state_dict(saved)
    train(resumed, opt2, grads[3:])
    np.testing.assert_array_equal(resumed[0].gather(), straight[0].gather())


TORCH_STATES = {
    "sgd-momentum": (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
                     lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9)),
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.05),                 # momentum_buffer None
            lambda ps: optim.SGD(ps, lr=0.05)),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
             lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-2)),
    # made as plain Adam here: the loaded state's decoupled_weight_decay makes it AdamW
    "adamw": (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
              lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1)),
}


@pytest.mark.parametrize("kind", list(TORCH_STATES))
def test_a_torch_optimizer_state_goes_on_as_torch_would(backend, kind):
    # the layout is torch's: its state_dict (step as a 0-d float tensor, buffers that are
    # None, keys of its own) loads, and the next steps follow torch's trajectory
    make_theirs, make_ours = TORCH_STATES[kind]
    start = RNG.standard_normal(5).astype(np.float32)
    grads = [RNG.standard_normal(5).astype(np.float32) for _ in range(6)]
    pt = torch.tensor(start, requires_grad=True)
    topt = make_theirs([pt])
    for g in grads[:3]:
        pt.grad = torch.tensor(g)
        topt.step()
    saved = topt.state_dict()
    saved = {"param_groups": saved["param_groups"],
             "state": {i: {k: v.numpy() if isinstance(v, torch.Tensor) else v
                           for k, v in s.items()} for i, s in saved["state"].items()}}
    p = nn.Parameter(gm.array(pt.detach().numpy(), backend=backend))
    opt = make_ours([p])
    opt.load_state_dict(saved)
    for g in grads[3:]:
        p.grad, pt.grad = gm.array(g, backend=backend), torch.tensor(g)
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.gather(), pt.detach().numpy(), rtol=1e-5, atol=1e-6)
    if kind.startswith("adam"):
        assert opt.state[p]["step"] == 6 and type(opt.state[p]["step"]) is int


def test_optimizer_hyper_parameters_are_checked(backend):
    p = nn.Parameter(gm.ones(2, backend=backend))
    for bad in (dict(eps=-1.0), dict(weight_decay=-0.5), dict(lr=float("nan")),
                dict(eps=float("nan"))):
        with pytest.raises(ValueError, match="Adam"):
            optim.Adam([p], **bad)
    with pytest.raises(ValueError, match="SGD"):
        optim.SGD([p], lr=0.1, momentum=float("nan"))
    pt = torch.tensor([1.0, 2.0], requires_grad=True)
    saved = torch.optim.Adam([pt], amsgrad=True).state_dict()
    opt = optim.Adam([p])
    with pytest.raises(ValueError, match="amsgrad"):
        opt.load_state_dict(saved)
    saved = torch.optim.Adam([pt]).state_dict()
    saved["param_groups"][0]["eps"] = -1.0
    with pytest.raises(ValueError, match="eps"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["eps"] == 1e-8           # a refused state changes nothing
    saved = {"state": {0: {"step": 2.5}}, "param_groups": torch.optim.Adam([pt]).state_dict()[
        "param_groups"]}
    with pytest.raises(ValueError, match="whole number"):
        opt.load_state_dict(saved)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_state_follows_a_model_moved_to_another_backend(backend, kind):
    """model.to(other) between steps: the optimizer moves its state Arrays along and goes on
    from the same values (the torch trajectory, as without the move); a step a kernel
    refuses leaves Adam's step count as it was."""
    others = [b for b in TESTED if b != backend] or [backend]
    make_ours = (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9)) if kind == "sgd" else \
        (lambda ps: optim.Adam(ps, lr=1e-2))
    make_theirs = (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)) if kind == "sgd" \
        else (lambda ps: torch.optim.Adam(ps, lr=1e-2))
    start = RNG.standard_normal(6).astype(np.float32)
    grads = [RNG.standard_normal(6).astype(np.float32) for _ in range(5)]
    p = nn.Parameter(gm.array(start, backend=backend))
    pt = torch.tensor(start, requires_grad=True)
    opt, topt = make_ours([p]), make_theirs([pt])
    for i, g in enumerate(grads):
        where = others[0] if i in (2, 3) else backend
        p.data = p.data.to(where)                    # what Module.to does to its Parameters
        p.grad = gm.array(g, backend=where)
        pt.grad = torch.tensor(g)
        opt.step()
        topt.step()
        assert all(v.backend == where for v in opt.state[p].values() if isinstance(v, gm.Array))
    np.testing.assert_allclose(p.gather(), pt.detach().numpy(), rtol=1e-5, atol=1e-6)
    if kind == "adam":
        p.grad = gm.array(np.ones(5, np.float32), backend=p.backend)     # wrong shape
        with pytest.raises(gm.ShapeError):
            opt.step()
        assert opt.state[p]["step"] == len(grads)


def test_zero_grad_and_parameters_without_gradients(backend):
    p, q = nn.Parameter(gm.ones(2, backend=backend)), nn.Parameter(gm.ones(2, backend=backend))
    opt = optim.SGD([p, q], lr=1.0)
    p.grad = gm.ones(2, backend=backend)
    opt.step()                       # q has no gradient: left alone
    np.testing.assert_array_equal(p.gather(), [0, 0])
    np.testing.assert_array_equal(q.gather(), [1, 1])
    opt.zero_grad()
    assert p.grad is None


def test_param_groups(backend):
    p, q = nn.Parameter(gm.ones(1, backend=backend)), nn.Parameter(gm.ones(1, backend=backend))
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1)
    p.grad = q.grad = gm.ones(1, backend=backend)
    opt.step()
    np.testing.assert_allclose([p.item(), q.item()], [0.9, 0.5])


def test_optimizer_errors():
    p = nn.Parameter(gm.ones(1))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="invalid learning rate"):
        optim.Adam([p], lr=-1)
    with pytest.raises(TypeError, match="only optimise Parameters"):
        optim.SGD([gm.ones(1)], lr=0.1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(1.0, 0.9))


SCHEDULES = [
    (lambda o: optim.StepLR(o, 3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    (lambda o: optim.MultiStepLR(o, [2, 5], 0.1),
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], 0.1)),
    (lambda o: optim.CosineAnnealingLR(o, 7, 0.001),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, 0.001)),
]


@pytest.mark.parametrize("index", range(len(SCHEDULES)))
def test_schedules_match_torch(index):
    ours, theirs = SCHEDULES[index]
    opt = optim.SGD([nn.Parameter(gm.ones(1))], lr=0.1)
    topt = torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.1)
    s, ts = ours(opt), theirs(topt)
    for _ in range(10):
        np.testing.assert_allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-12)
        topt.step()
        s.step()
        ts.step()


def test_warmup_then_cosine():
    opt = optim.SGD([nn.Parameter(gm.ones(1))], lr=1.0)
    s = optim.WarmupLR(opt, 4, after=optim.CosineAnnealingLR(opt, 10), start_factor=0.2)
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        s.step()
    np.testing.assert_allclose(lrs[:5], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(lrs[4 + 5], 0.5)          # cosine half-way
    np.testing.assert_allclose(lrs[14], 0.0, atol=1e-12)
    state = s.state_dict()
    opt2 = optim.SGD([nn.Parameter(gm.ones(1))], lr=1.0)
    s2 = optim.WarmupLR(opt2, 4, after=optim.CosineAnnealingLR(opt2, 10), start_factor=0.2)
    s2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
