"""``Module`` (a layer owning parameters, buffers and sub-modules), ``Parameter`` and the
containers ``Sequential`` and ``ModuleList``.

Attribute assignment registers things in definition order, so parameter names and their
order match PyTorch's for the same class layout (``features.0.weight``, ``bn1.running_mean``,
...).  ``state_dict()`` maps those names to Arrays; ``load_state_dict`` takes Arrays, NumPy
arrays or anything ``numpy.asarray`` reads (a PyTorch tensor, say) and keeps each Parameter
object, so an optimizer built before loading still updates the model.
"""
from collections import OrderedDict

import numpy as np

import gpumat as gm

from ..array import Array
from ..errors import GpumatError, ShapeError
from .autograd import Variable

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "StateDictError"]


class StateDictError(GpumatError, KeyError):
    """A state_dict whose names do not match the model's; the message lists them."""

    def __str__(self):                  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class Parameter(Variable):
    """A leaf Variable that a Module owns and an optimizer updates (requires a gradient)."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, backend={self.backend!r})"


def _as_array_like(value, like, name):
    """``value`` converted to ``like``'s backend and dtype (the thing it replaces)."""
    if isinstance(value, Variable):
        value = value.data
    if isinstance(value, Array):
        out = value.to(like.backend)
    else:
        host = np.asarray(value)
        if host.dtype.kind not in "biuf":
            raise TypeError(f"load_state_dict: {name} holds data of dtype {host.dtype}")
        out = gm.array(np.asarray(host, order="C"), backend=like.backend)   # keeps 0-d
    if out.shape != like.shape:
        raise ShapeError(f"load_state_dict: {name} has shape {out.shape} in the state, but the "
                         f"model's has shape {like.shape}")
    return out if out.dtype == like.dtype else out.astype(like.dtype)


class Module:
    """Base class of layers and models: subclasses set parameters and sub-modules as
    attributes in ``__init__`` and implement ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        parameters, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, (Parameter, Module)):
            for table in (parameters, buffers, modules):
                table.pop(name, None)
            self.__dict__.pop(name, None)
            (parameters if isinstance(value, Parameter) else modules)[name] = value
        elif name in parameters or name in modules:
            if value is not None:
                kind = "parameter" if name in parameters else "sub-module"
                raise TypeError(f"cannot assign a {type(value).__name__} to {kind} {name!r} of "
                                f"{type(self).__name__} (use a Parameter, a Module or None)")
            (parameters if name in parameters else modules)[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Array):
                raise TypeError(f"buffer {name!r} of {type(self).__name__} must be a gm.Array "
                                f"or None, got {type(value).__name__}")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """A state Array that is saved in ``state_dict`` but not trained (running
        statistics); None registers the name without a value."""
        if array is not None and not isinstance(array, Array):
            raise TypeError(f"register_buffer: {name} must be a gm.Array or None, got "
                            f"{type(array).__name__}")
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    def register_parameter(self, name, parameter):
        """Register ``parameter`` (a Parameter, or None for an absent one such as a bias)."""
        if parameter is not None and not isinstance(parameter, Parameter):
            raise TypeError(f"register_parameter: {name} must be a Parameter or None")
        self.__dict__.pop(name, None)
        self._parameters[name] = parameter

    def add_module(self, name, module):
        if not isinstance(module, Module):
            raise TypeError(f"add_module: {name} must be a Module, got {type(module).__name__}")
        self._modules[name] = module

    # ---- traversal ----------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(name, module) for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return ((name, m) for name, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def _named(self, table, prefix=""):
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, value in getattr(module, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{module_name}.{name}" if module_name else name), value

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) in registration order, each shared Parameter once."""
        return self._named("_parameters", prefix)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        return self._named("_buffers", prefix)

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    # ---- modes --------------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (batch statistics, dropout on) for this module and its children."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (running statistics, dropout off)."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, backend):
        """Move every parameter and buffer to ``backend`` (Parameter objects are kept)."""
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = p.data.to(backend)
                    p.grad = None if p.grad is None else p.grad.to(backend)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = b.to(backend)
        return self

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self):
        """OrderedDict of dotted names to Arrays: every parameter and buffer, with PyTorch's
        names and layouts.  The Arrays share storage with the model (copy-on-write), so the
        dict is a snapshot that later training does not change."""
        state = OrderedDict()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    state[prefix + name] = p.data.reshape(p.shape)
            for name, b in module._buffers.items():
                if b is not None:
                    state[prefix + name] = b.reshape(b.shape)
        return state

    def load_state_dict(self, state, strict=True):
        """Copy ``state`` (name -> Array / ndarray / tensor) into the model, converting to
        each entry's backend and dtype.  With ``strict``, missing or unexpected names are an
        error that lists them.  Returns (missing, unexpected) names."""
        own = OrderedDict()
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    own[prefix + name] = (module, name, True)
            for name, b in module._buffers.items():
                if b is not None:
                    own[prefix + name] = (module, name, False)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected: " + ", ".join(unexpected))
            raise StateDictError(f"load_state_dict into {type(self).__name__}: "
                                 + "; ".join(parts))
        # convert (and so check) every entry before changing any: a bad entry leaves the
        # model as it was
        converted = {}
        for key, (module, name, is_parameter) in own.items():
            if key in state:
                current = module._parameters[name].data if is_parameter else \
                    module._buffers[name]
                converted[key] = _as_array_like(state[key], current, key)
        for key, value in converted.items():
            module, name, is_parameter = own[key]
            if is_parameter:
                module._parameters[name].data = value
            else:
                module._buffers[name] = value
        return missing, unexpected

    # ---- calling ------------------------------------------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def __call__(self, *inputs, **kwargs):
        inputs = tuple(Variable(x) if isinstance(x, Array) else x for x in inputs)
        return self.forward(*inputs, **kwargs)

    def extra_repr(self):
        """The hyper-parameters shown in repr (subclasses override)."""
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ")
                 for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; ``Sequential(a, b)`` names them "0", "1" (PyTorch's names),
    ``Sequential(OrderedDict(conv=..., relu=...))`` by the dict's keys."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, index):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of modules whose parameters are registered ("0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __getitem__(self, index):
        items = list(self._modules.values())
        return ModuleList(items[index]) if isinstance(index, slice) else items[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
