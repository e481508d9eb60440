"""``nn.summary``: a model's layers with their output shapes, parameters, multiply-adds and
activation memory, from one traced forward pass.

    s = nn.summary(models.resnet50(), (3, 224, 224))     # prints the table
    s.total_params, s.total_flops, s.activation_bytes     # 25557032, 4.09e9, ...
    for row in s.rows: print(row.name, row.output_shape)

How it works.  ``summary`` runs the model's ``forward`` once, under ``no_grad`` and in
evaluation mode, on a batch of zeros, while ``Module.__call__`` is temporarily replaced by a
tracer (for the calling thread only; other threads' calls pass straight through).  The
Python code of composite modules runs as written, so residual additions, concatenations and
any other glue in a ``forward`` behave as in training.  A *leaf* module (one without
sub-modules) of a known layer type is not run: its output shape (and its cost) follows from
its hyper-parameters, with the same argument checks the layer makes, and a batch of zeros of
that shape (or the input itself, for shape-preserving layers) stands in for its output.  So
no convolution or matrix product is computed: a summary of VGG-16 at 224 x 224 takes ~5 ms
on any backend, where running its layers (15.5 G multiply-adds, a 115 MB im2col buffer for
the first convolutions) took 0.3 s on the cpu backend and 0.7 s on PoCL on the 2-core
machine this was written on, and would take longer on a slower device or not fit a small
one.  Leaf modules of other types (including subclasses that override ``forward``) run for
real, and count 0 multiply-adds; ``shapes_only=False`` runs every layer, which the tests use
to check the shape rules against the real layers.  (A module class that overrides
``__call__`` itself is not seen by the tracer: it runs as written and gets no row.)

Conventions.
  * ``input_shape`` is one sample's shape, without the batch axis (``(3, 32, 32)``, or
    ``784`` for a flat input); ``batch_size`` (default 1) is prepended, and every shape,
    FLOP count and activation size is for that batch.
  * One row per leaf-module *call*: a module called twice (torchvision's ResNet blocks call
    their ``relu`` twice) has two rows, and its parameters are counted on the first.
    ``total_params`` counts every parameter of the model once, including any held by a
    composite module or by a leaf that was never called.
  * FLOPs are multiply-adds (MACs) of convolutions and fully connected layers only:
    a convolution costs (output elements) x (in_channels / groups) x kh x kw, a linear layer
    (batch) x in x out; bias additions, batch norm, pooling, activations, residual
    additions and concatenations count 0.  This is the convention of the published figures
    (ResNet-50's "4.1 GFLOPs", VGG-16's 15.5 G).
  * ``activation_bytes`` sums the outputs of every leaf call (what a forward pass produces,
    roughly what training keeps for backward); ``param_bytes`` and ``buffer_bytes`` are the
    parameters' and buffers' storage.
  * ``param_bits`` (per row and in total; the table's "Model size" line) is the size of the
    parameters of the deployed model: each parameter at its dtype's width (32 bits for
    single precision), except the weights of binary layers (``gpumat.nn.binary``), which
    count 1 bit each plus a 32-bit scale per filter (the ``_parameter_bits`` hook of a module
    gives its own parameters' bits).  Buffers are not included, as in ``param_bytes``.
    Binary layers' multiply-adds are counted like their float twins' (as XNOR-popcount
    operations in "xnor" mode).
  * The model's modes are restored afterwards and no gradient is recorded, so ``summary``
    leaves a model exactly as it found it.
"""
import contextlib
import math
import threading
from dataclasses import dataclass

import gpumat as gm

from ..array import Array
from ..conv import _prepare as _conv_geometry
from ..errors import ShapeError
from ..pooling import _geometry as _pool_geometry
from ..pooling import _output_hw as _pool_output_hw
from . import binary as B
from . import layers as L
from .autograd import Variable, no_grad
from .module import Module

__all__ = ["summary", "ModelSummary", "LayerSummary", "parameter_bits"]


@dataclass(frozen=True)
class LayerSummary:
    """One call of a leaf module: its dotted name, type, input and output shapes, the
    parameters it holds (0 on repeated calls), its multiply-adds, its output's bytes and its
    parameters' deployed size in bits (0 on repeated calls)."""

    name: str
    type: str
    input_shape: tuple
    output_shape: tuple
    params: int
    flops: int
    activation_bytes: int
    param_bits: int = 0


class ModelSummary:
    """What ``summary`` returns: ``rows`` (LayerSummary per leaf call) and the totals;
    ``str()`` is the table."""

    def __init__(self, model_name, input_shape, output_shape, rows, total_params,
                 trainable_params, param_bytes, buffer_bytes, input_bytes, param_bits=None):
        self.model_name = model_name
        # the deployed parameters' size: binary layers' weights at 1 bit (see the docstring)
        self.param_bits = 8 * param_bytes if param_bits is None else param_bits
        self.input_shape, self.output_shape = input_shape, output_shape
        self.rows = rows
        self.total_params, self.trainable_params = total_params, trainable_params
        self.param_bytes, self.buffer_bytes, self.input_bytes = param_bytes, buffer_bytes, \
            input_bytes
        self.total_flops = sum(r.flops for r in rows)
        self.activation_bytes = sum(r.activation_bytes for r in rows)

    @property
    def non_trainable_params(self):
        return self.total_params - self.trainable_params

    def row(self, name):
        """The first row of the module called ``name``."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r} in the summary of {self.model_name}")

    def __repr__(self):
        return (f"ModelSummary({self.model_name}, input {_shape_text(self.input_shape)}, "
                f"{self.total_params:,} params, {self.total_flops:,} MACs, {len(self.rows)} "
                f"layer calls)")

    def __str__(self):
        header = ("Layer", "Type", "Output shape", "Params", "MACs", "Activations")
        body = [(r.name, r.type, _shape_text(r.output_shape), f"{r.params:,}",
                 f"{r.flops:,}", _bytes_text(r.activation_bytes)) for r in self.rows]
        widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
        right = (False, False, False, True, True, True)

        def line(cells):
            return "  ".join(c.rjust(w) if r else c.ljust(w)
                             for c, w, r in zip(cells, widths, right)).rstrip()

        rule = "-" * len(line(header))
        batch = self.input_shape[0] if self.input_shape else 1
        totals = [
            f"{self.model_name}: input {_shape_text(self.input_shape)} "
            f"({_bytes_text(self.input_bytes)}), output {_shape_text(self.output_shape)}",
            f"Total params:         {self.total_params:,} ({_bytes_text(self.param_bytes)})",
            f"Trainable params:     {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Buffers:              {_bytes_text(self.buffer_bytes)}",
            f"Model size:           {self.param_bits:,} bits "
            f"({_bytes_text(-(-self.param_bits // 8))}; parameters, binary weights 1 bit each)",
            f"Multiply-adds:        {self.total_flops:,} ({_scaled(self.total_flops)}; conv "
            f"and linear, batch of {batch})",
            f"Activations:          {_bytes_text(self.activation_bytes)} (outputs of every "
            f"layer call, batch of {batch})",
        ]
        return "\n".join([rule, line(header), rule] + [line(b) for b in body]
                         + [rule] + totals + [rule])


def _shape_text(shape):
    if isinstance(shape, list):
        return ", ".join(_shape_text(s) for s in shape)
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _bytes_text(count):
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def _scaled(count):
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


# ---- output shapes of the known layers, from their hyper-parameters ---------------------------
# Each rule takes (layer, input shape) and returns (output shape, multiply-adds), raising the
# errors the layer itself would for a wrong input.

def _four_d(layer, shape):
    if len(shape) != 4:
        raise ShapeError(f"{type(layer).__name__}: the input must be 4-d (N, C, H, W), got "
                         f"shape {shape}")


def _conv_rule(layer, shape):
    _four_d(layer, shape)
    w = layer.weight.shape
    geometry, groups = _conv_geometry("Conv2d", shape, w, layer.stride, layer.padding,
                                      layer.dilation, layer.groups)
    out = (shape[0], w[0]) + geometry.out_hw
    return out, math.prod(out) * w[1] * w[2] * w[3]


def _linear_rule(layer, shape):
    if len(shape) != 2 or shape[1] != layer.in_features:
        raise ShapeError(f"Linear({layer.in_features}, {layer.out_features}): the input must "
                         f"be N x {layer.in_features}, got shape {shape}")
    return (shape[0], layer.out_features), shape[0] * layer.in_features * layer.out_features


def _pool_rule(layer, shape):
    _four_d(layer, shape)
    what = type(layer).__name__
    kernel, stride, padding = _pool_geometry(what, layer.kernel_size, layer.stride,
                                             layer.padding)
    out_hw = _pool_output_hw(what, shape, kernel, stride, padding, layer.ceil_mode)
    return shape[:2] + out_hw, 0


def _adaptive_rule(layer, shape):
    _four_d(layer, shape)
    size = layer.output_size
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ShapeError(f"AdaptiveAvgPool2d: output_size must be positive, got {size}")
    return shape[:2] + out_hw, 0


def _global_pool_rule(layer, shape):
    _four_d(layer, shape)
    return shape[:2] + (1, 1), 0


def _batch_norm_rule(layer, shape):
    if len(shape) not in layer.expected_ndim or shape[1] != layer.num_features:
        raise ValueError(f"{type(layer).__name__}({layer.num_features}): expected an input of "
                         f"{' or '.join(f'{n}-d' for n in layer.expected_ndim)} with "
                         f"{layer.num_features} channels on axis 1, got shape {shape}")
    return shape, 0


def _flatten_rule(layer, shape):
    ndim = max(len(shape), 1)
    if not -ndim <= layer.start_dim < ndim:
        return None, 0          # the forward runs, and names the problem (F.flatten)
    start = layer.start_dim % ndim
    return shape[:start] + (math.prod(shape[start:]),), 0


def _same_shape_rule(layer, shape):
    return shape, 0


_RULES = {L.Conv2d: _conv_rule, L.Linear: _linear_rule, B.BinaryConv2d: _conv_rule,
          B.BinaryLinear: _linear_rule, L.MaxPool2d: _pool_rule,
          L.AvgPool2d: _pool_rule, L.AdaptiveAvgPool2d: _adaptive_rule,
          L.GlobalAvgPool2d: _global_pool_rule, L.BatchNorm1d: _batch_norm_rule,
          L.BatchNorm2d: _batch_norm_rule, L.Flatten: _flatten_rule}
_RULES.update(dict.fromkeys(
    (L.Identity, L.ReLU, L.ReLU6, L.LeakyReLU, L.ELU, L.Tanh, L.Sigmoid, L.Softmax,
     L.LogSoftmax, L.Dropout, L.LocalResponseNorm), _same_shape_rule))


def _rule_for(layer):
    """The shape rule of ``layer``'s class or the nearest base class that has one, provided
    the class computes what that base does (it does not override ``forward``)."""
    cls = type(layer)
    for base in cls.__mro__:
        rule = _RULES.get(base)
        if rule is not None:
            return rule if cls.forward is base.forward else None
    return None


# ---- deployed size -------------------------------------------------------------------------------

def _own_parameter_bits(module):
    """(Parameter, bits) of ``module``'s own parameters: a binary layer's ``_parameter_bits``
    hook where it has one, else the dtype's width per element."""
    hook = getattr(module, "_parameter_bits", None)
    bits = hook() if callable(hook) else {}
    return [(p, bits.get(name, p.size * p.dtype.itemsize * 8))
            for name, p in module._parameters.items() if p is not None]


def parameter_bits(module):
    """The deployed size in bits of every parameter of ``module`` and its sub-modules, each
    shared Parameter once (binary layers' weights 1 bit each plus their scales)."""
    seen, total = set(), 0
    for m in module.modules():
        for p, bits in _own_parameter_bits(m):
            if id(p) not in seen:
                seen.add(id(p))
                total += bits
    return total


# ---- tracing ----------------------------------------------------------------------------------

def _shapes(value):
    """(shape or list of shapes, bytes) of a module's output."""
    if isinstance(value, (Variable, Array)):
        return tuple(value.shape), value.size * value.dtype.itemsize
    if isinstance(value, (tuple, list)):
        parts = [_shapes(v) for v in value]
        return [p[0] for p in parts], sum(p[1] for p in parts)
    return (), 0


class _Tracer:
    def __init__(self, model, shapes_only):
        self.names = {}
        for name, m in model.named_modules():
            self.names.setdefault(id(m), name or type(m).__name__)
        self.shapes_only = shapes_only
        self.counted = set()
        self.rows = []

    def call(self, module, inputs, kwargs):
        inputs = tuple(Variable(x) if isinstance(x, Array) else x for x in inputs)
        if any(True for _ in module.children()):
            return module.forward(*inputs, **kwargs)
        rule = _rule_for(module)
        x = inputs[0] if len(inputs) == 1 else None
        out_shape, flops = None, 0
        if rule is not None and isinstance(x, Variable):
            out_shape, flops = rule(module, tuple(x.shape))
        # keyword arguments (a binary layer's batch_norm= / residual=) run the forward even
        # for shapes only: the batch norm it applies first is a row of its own
        if out_shape is not None and self.shapes_only and not kwargs:
            output = x if out_shape == x.shape else Variable(
                gm.zeros(out_shape, dtype=x.dtype, backend=x.backend))
        else:
            output = module.forward(*inputs, **kwargs)
        params = bits = 0
        if id(module) not in self.counted:
            self.counted.add(id(module))
            params = sum(p.size for p in module.parameters())
            bits = parameter_bits(module)
        out_shape, out_bytes = _shapes(output)
        in_shape = _shapes(inputs[0])[0] if len(inputs) == 1 else [_shapes(v)[0] for v in inputs]
        name = self.names.get(id(module), f"<unregistered {type(module).__name__}>")
        self.rows.append(LayerSummary(name, type(module).__name__, in_shape, out_shape,
                                      params, int(flops), int(out_bytes), int(bits)))
        return output


_patch_lock = threading.Lock()
_patch_depth = 0
_original_call = None
_current = threading.local()


def is_tracing():
    """Whether this thread is inside ``summary``'s traced forward pass (models keep their
    written layer order then: see LeNet5's inference-only reordering)."""
    return getattr(_current, "tracer", None) is not None


def _traced_call(module, *inputs, **kwargs):
    tracer = getattr(_current, "tracer", None)
    if tracer is None:
        return _original_call(module, *inputs, **kwargs)
    return tracer.call(module, inputs, kwargs)


@contextlib.contextmanager
def _tracing(tracer):
    """Route this thread's ``Module.__call__`` through ``tracer`` (other threads' calls keep
    their usual path); nests, and restores ``Module.__call__`` when the last one exits."""
    global _patch_depth, _original_call
    with _patch_lock:
        if _patch_depth == 0:
            _original_call = Module.__dict__["__call__"]
            Module.__call__ = _traced_call
        _patch_depth += 1
    previous = getattr(_current, "tracer", None)
    _current.tracer = tracer
    try:
        yield tracer
    finally:
        _current.tracer = previous
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                Module.__call__ = _original_call


def _sample_shape(input_shape):
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"summary: input_shape must be one sample's shape (positive ints, "
                         f"without the batch axis), got {input_shape!r}")
    return shape


def summary(model, input_shape, backend=None, batch_size=1, dtype=None, shapes_only=True,
            quiet=False):
    """Trace one forward pass of ``model`` on zeros of shape (batch_size,) + input_shape and
    return a ``ModelSummary`` (and print its table unless ``quiet``).  ``backend`` and
    ``dtype`` default to those of the model's first parameter (else gpumat's default backend
    and single precision).  See the module's docstring for what is counted and how."""
    if not isinstance(model, Module):
        raise TypeError(f"summary: model must be a gpumat.nn.Module, got {type(model).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"summary: batch_size must be a positive int, got {batch_size!r}")
    shape = (batch_size,) + _sample_shape(input_shape)
    parameters, buffers = model.parameters(), model.buffers()
    first = parameters[0] if parameters else None
    if backend is None and first is not None:
        backend = first.backend
    if dtype is None:
        dtype = first.dtype if first is not None else "single"
    x = gm.zeros(shape, dtype=dtype, backend=backend)
    modes = [(m, m.training) for m in model.modules()]
    tracer = _Tracer(model, shapes_only)
    try:
        model.eval()
        with no_grad(), _tracing(tracer):
            output = model(x)
    finally:
        for m, training in modes:
            object.__setattr__(m, "training", training)
    result = ModelSummary(
        type(model).__name__, shape, _shapes(output)[0], tracer.rows,
        total_params=sum(p.size for p in parameters),
        trainable_params=sum(p.size for p in parameters if p.requires_grad),
        param_bytes=sum(p.size * p.dtype.itemsize for p in parameters),
        buffer_bytes=sum(b.size * b.dtype.itemsize for b in buffers),
        input_bytes=x.size * x.dtype.itemsize, param_bits=parameter_bits(model))
    if not quiet:
        print(result)
    return result
