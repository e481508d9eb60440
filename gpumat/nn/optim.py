"""Optimizers (SGD with momentum, Nesterov and weight decay; Adam) and learning-rate
schedules (step, multi-step, cosine, linear warm-up), with PyTorch's update rules, so the
same hyper-parameters train the same way.

    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = optim.CosineAnnealingLR(opt, T_max=epochs)
    ...; opt.zero_grad(); loss.backward(); opt.step()      # per batch
    sched.step()                                           # per epoch

Each step is one fused kernel per parameter (``gm.sgd_update`` / ``gm.adam_update``) that
updates the Parameter's Array and its state buffers in place; the buffers follow their
Parameter to the backend it lives on at each step (``model.to(...)`` between steps).
``state_dict`` / ``load_state_dict`` capture hyper-parameters, step counts and momentum
buffers for resuming.
"""
import math

import gpumat as gm
from gpumat.memory import outlive_scopes

from .autograd import no_grad
from .module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "MultiStepLR",
           "CosineAnnealingLR", "WarmupLR"]


class Optimizer:
    """Base class: ``param_groups`` is a list of dicts holding "params" and the group's
    hyper-parameters (``lr`` & co, which schedules change); ``state`` maps each Parameter to
    its per-parameter buffers."""

    defaults = {}

    def __init__(self, params, **hyper):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            group = dict(group)
            group["params"] = list(group["params"])
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: can only optimise Parameters, got "
                                    f"{type(p).__name__}")
            for key, value in hyper.items():
                group.setdefault(key, value)
            self._check(group)
            self.param_groups.append(group)
        self.state = {}

    def _check(self, group):
        if not group["lr"] >= 0:       # NaN too
            raise ValueError(f"{type(self).__name__}: invalid learning rate {group['lr']}")

    def zero_grad(self):
        """Forget the gradients (they accumulate across backward calls otherwise)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        state = self.state.setdefault(p, {})
                        _follow(p, state)
                        self._update(p, p.grad, state, group)

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    # ---- resuming -----------------------------------------------------------------------------
    def _indices(self):
        index = {}
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(p, len(index))
        return index

    def state_dict(self):
        """{"state": {parameter index: {name: Array or number}}, "param_groups": [hyper-
        parameters with "params" as indices]} (PyTorch's layout)."""
        index = self._indices()
        groups = [dict(g, params=[index[p] for p in g["params"]]) for g in self.param_groups]
        state = {index[p]: dict(s) for p, s in self.state.items() if p in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state has "
                             f"groups of sizes {[len(g['params']) for g in groups]}, this "
                             f"optimizer {[len(g['params']) for g in self.param_groups]}")
        by_index = {i: p for p, i in self._indices().items()}
        name = type(self).__name__
        loaded = []           # checked whole before anything changes: a refused state
        for group, saved in zip(self.param_groups, groups):      # leaves this one as it was
            for key in _TORCH_UNSUPPORTED:
                if saved.get(key):
                    raise ValueError(f"{name}.load_state_dict: the saved state uses torch's "
                                     f"{key}=True, which gpumat's {name} does not implement")
            group = dict(group, **{_TORCH_NAMES.get(k, k): v for k, v in saved.items()
                                   if k != "params" and k not in _TORCH_ONLY + _TORCH_UNSUPPORTED})
            self._check(group)
            loaded.append(group)
        state = {}
        for i, buffers in state_dict["state"].items():
            p = by_index[int(i)]
            state[p] = {k: _step(v, name) if k == "step" else _like(v, p)
                        for k, v in buffers.items() if v is not None}
        for group, new in zip(self.param_groups, loaded):
            group.update(new)       # the same dicts: schedules hold them
        self.state = state
        for buffers in state.values():
            outlive_scopes(buffers)


# torch's optimizer state_dicts (their layout is this module's) hold a few more group keys:
# how torch runs the step, which says nothing of the values; names of its own; and options
# gpumat lacks, refused where set rather than silently dropped
_TORCH_ONLY = ("foreach", "fused", "differentiable", "capturable")
_TORCH_NAMES = {"decoupled_weight_decay": "decoupled"}
_TORCH_UNSUPPORTED = ("amsgrad", "maximize")


def _step(value, name):
    """A saved step count as an int (torch keeps it as a 0-d float tensor)."""
    number = value.item() if hasattr(value, "item") else value
    if isinstance(number, bool) or not float(number).is_integer() or number < 0:
        raise ValueError(f"{name}.load_state_dict: a saved step count must be a whole number "
                         f">= 0, got {value!r}")
    return int(number)


def _like(value, p):
    """A saved buffer on the parameter's backend (numbers stay numbers)."""
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, gm.Array):
        return value.to(p.backend)
    return gm.array(value, backend=p.backend).astype(p.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule:
    g += weight_decay * p;  buf = momentum * buf + (1 - dampening) * g (buf = g at first);
    g = g + momentum * buf if nesterov else buf;  p -= lr * g."""

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _check(self, group):
        super()._check(group)
        if not group["momentum"] >= 0 or not group["weight_decay"] >= 0:
            raise ValueError(f"SGD: momentum and weight_decay must be non-negative, got "
                             f"{group['momentum']} and {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0")

    def _update(self, p, grad, state, group):
        momentum = group["momentum"]
        buf = state.get("momentum_buffer")
        first = momentum != 0 and buf is None
        if first:
            buf = state["momentum_buffer"] = outlive_scopes(
                gm.empty(*p.shape, dtype=p.dtype, backend=p.backend))
        gm.sgd_update(p.data, grad, buf, group["lr"], momentum, group["dampening"],
                      group["weight_decay"], group["nesterov"], first)


class Adam(Optimizer):
    """Adam (Kingma & Ba), torch.optim.Adam's rule: m, v moving averages of g and g^2 with
    bias correction; ``weight_decay`` adds an L2 term to g (Adam), or with ``decoupled``
    shrinks p directly (AdamW)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         decoupled=decoupled)

    def _check(self, group):
        super()._check(group)
        b1, b2 = group["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {group['betas']}")
        if not group["eps"] >= 0 or not group["weight_decay"] >= 0:
            raise ValueError(f"Adam: eps and weight_decay must be non-negative, got "
                             f"{group['eps']} and {group['weight_decay']}")

    def _update(self, p, grad, state, group):
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = outlive_scopes(
                gm.zeros(*p.shape, dtype=p.dtype, backend=p.backend),
                gm.zeros(*p.shape, dtype=p.dtype, backend=p.backend))
        step = state.get("step", 0) + 1
        b1, b2 = group["betas"]
        gm.adam_update(p.data, grad, state["exp_avg"], state["exp_avg_sq"], step,
                       group["lr"], b1, b2, group["eps"], group["weight_decay"],
                       group["decoupled"])
        state["step"] = step          # counted once the update was made (it may be refused)


def _follow(p, state):
    """Move ``p``'s state Arrays (momentum buffers, Adam's moments) to the backend ``p`` lives
    on now, where the model was moved (``model.to(...)``) after they were made: a step then
    goes on from the same values there, as it would have on the old backend."""
    backend = p.data._backend
    for name, value in state.items():
        if isinstance(value, gm.Array) and value._backend is not backend:
            state[name] = outlive_scopes(value.to(backend.name))


# ---- learning-rate schedules ------------------------------------------------------------------

class LRScheduler:
    """Sets each group's lr to ``lr_at(base_lr, t)`` where t counts ``step()`` calls (call it
    once per epoch, or once per batch for per-iteration schedules)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def lr_at(self, base_lr, t):
        raise NotImplementedError

    def _apply(self):
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


class StepLR(LRScheduler):
    """lr * gamma ** (t // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        return base_lr * self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    """lr * gamma ** (number of milestones <= t)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.milestones, self.gamma = sorted(milestones), gamma
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        return base_lr * self.gamma ** sum(1 for m in self.milestones if m <= t)


class CosineAnnealingLR(LRScheduler):
    """eta_min + (lr - eta_min) * (1 + cos(pi * t / T_max)) / 2; past T_max the cosine
    rises again, as PyTorch's does (set T_max to the number of steps you run)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        c = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return self.eta_min + (base_lr - self.eta_min) * c


class WarmupLR(LRScheduler):
    """A linear warm-up from ``start_factor * lr`` to lr over ``warmup`` steps, then the
    schedule ``after`` (built on the same optimizer, e.g. ``CosineAnnealingLR(opt, 90)``)
    counted from the end of the warm-up, or a constant lr when ``after`` is None."""

    def __init__(self, optimizer, warmup, after=None, start_factor=0.1):
        if warmup < 0 or not 0 < start_factor <= 1:
            raise ValueError(f"WarmupLR: warmup must be >= 0 and start_factor in (0, 1], got "
                             f"{warmup} and {start_factor}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("WarmupLR: the schedule after the warm-up must drive the same "
                             "optimizer")
        self.warmup, self.start_factor, self.after = warmup, start_factor, after
        super().__init__(optimizer)

    def lr_at(self, base_lr, t):
        if t < self.warmup:
            return base_lr * (self.start_factor + (1 - self.start_factor) * t / self.warmup)
        return base_lr if self.after is None else self.after.lr_at(base_lr, t - self.warmup)
