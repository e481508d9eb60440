"""JSON network definitions (Sukiyaki2's style): a network as a list of layers wired by
named blobs into a DAG, built into a ``NetDefModule``.

    {"name": "lenet5", "input_shape": [1, 32, 32],
     "layers": [
       {"name": "conv1", "type": "conv2d",
        "params": {"in_channels": 1, "out_channels": 6, "kernel_size": 5},
        "inputs": ["data"], "outputs": ["conv1"]},
       {"name": "relu1", "type": "relu", "inputs": ["conv1"], "outputs": ["relu1"]},
       ...],
     "output": "fc3"}

    model = netdef.load("net.json")        # or a dict, or netdef.load(netdef.shipped("lenet5"))
    netdef.dump(model, "copy.json")

The network: ``layers`` (required, a non-empty list), ``output`` (required, the blob the
network returns), ``input`` (the network input's blob name, "data" by default),
``input_shape`` (one sample's shape, e.g. [C, H, W]; when given, ``load`` runs a batch of one
through the network so a shape mismatch is reported at the layer that has it), ``name`` and
``comment`` (free text).  Each layer: ``name`` (unique, no dots: parameters are named
``<name>.weight`` etc.), ``type`` (a key of ``LAYER_TYPES``), ``params`` (the layer's
constructor arguments, PyTorch's names; optional), ``inputs`` (blob names) and ``outputs``
(one blob name: every layer produces one blob, and each blob is produced once), and
``comment``.  ``binary_conv2d`` and ``binary_linear`` are gpumat.nn.binary's layers
(``mode``: "bwn", "dorefa" or "xnor", default "xnor"; ``approx_sign``; no bias unless
``"bias": true``).  Layers may be listed in any order; they run in a topological order (the
listed order where it is one).  ``add`` sums its inputs (residual connections), ``concat``
joins them along ``axis`` (inception branches).  Layers that do not lead to the output are
built (their parameters stay in the state_dict) but skipped, with a warning.

Every malformed definition raises ``NetDefError`` naming the file, the layer (index and
name) and the field, e.g. ``net.json: layer 3 'conv2': params.kernel_size must be a positive
int or a pair of positive ints, got "5"``.
"""
import copy
import difflib
import heapq
import json
import os
import warnings
from pathlib import Path

import gpumat as gm

from . import binary as B
from . import functional as F
from . import layers as L
from ..errors import GpumatError
from .autograd import no_grad
from .module import Module
from .serialization import atomic_write

__all__ = ["NetDefError", "NetDefModule", "Add", "Concat", "LAYER_TYPES", "load", "dump",
           "dumps", "shipped"]

SHIPPED_DIR = Path(__file__).with_name("netdefs")


class NetDefError(GpumatError, ValueError):
    """A malformed network definition; the message names the file, layer and field."""


class Add(Module):
    """The element-wise sum of its inputs (a residual connection)."""

    def forward(self, *inputs):
        total = inputs[0]
        for x in inputs[1:]:
            total = F.add(total, x)
        return total


class Concat(Module):
    """Its inputs joined along ``axis`` (1: channels)."""

    def __init__(self, axis=1):
        super().__init__()
        self.axis = axis

    def forward(self, *inputs):
        return F.cat(inputs, self.axis)

    def extra_repr(self):
        return f"axis={self.axis}"


# ---- the schema ---------------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_or_pair(test):
    return lambda v: test(v) or (isinstance(v, list) and len(v) == 2 and all(map(test, v)))


_positive = lambda v: _is_int(v) and v >= 1           # noqa: E731
_non_negative = lambda v: _is_int(v) and v >= 0       # noqa: E731

# name -> (what the message says a value must be, the test)
KINDS = {
    "int": ("an int", _is_int),
    "positive int": ("a positive int", _positive),
    "size": ("a positive int or a pair of positive ints", _int_or_pair(_positive)),
    "optional size": ("a positive int, a pair of positive ints or null",
                      lambda v: v is None or _int_or_pair(_positive)(v)),
    "padding": ("a non-negative int or a pair of non-negative ints",
                _int_or_pair(_non_negative)),
    "number": ("a number", _is_number),
    "positive number": ("a positive number", lambda v: _is_number(v) and v > 0),
    "optional number": ("a number or null", lambda v: v is None or _is_number(v)),
    "probability": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "binary mode": (" or ".join(f'"{m}"' for m in B.MODES), lambda v: v in B.MODES),
}

_CONV = {"in_channels": "positive int", "out_channels": "positive int",
         "kernel_size": "size", "stride": "size", "padding": "padding", "dilation": "size",
         "groups": "positive int", "bias": "bool"}
_POOL = {"kernel_size": "size", "stride": "optional size", "padding": "padding",
         "ceil_mode": "bool"}
# binary layers (gpumat.nn.binary): no bias by default, no dilation or groups
_BINARY = {"mode": "binary mode", "approx_sign": "bool", "bias": "bool"}
_BATCH_NORM = {"num_features": "positive int", "eps": "positive number",
               "momentum": "optional number", "affine": "bool", "track_running_stats": "bool"}


class LayerType:
    """A layer type: the Module class it builds, its parameters (name -> a KINDS key), the
    required ones, and how many inputs it takes (``min_inputs``..``max_inputs``)."""

    def __init__(self, build, params=None, required=(), min_inputs=1, max_inputs=1):
        self.build, self.params, self.required = build, dict(params or {}), tuple(required)
        self.min_inputs, self.max_inputs = min_inputs, max_inputs


LAYER_TYPES = {
    "conv2d": LayerType(L.Conv2d, _CONV, ("in_channels", "out_channels", "kernel_size")),
    "linear": LayerType(L.Linear, {"in_features": "positive int",
                                   "out_features": "positive int", "bias": "bool"},
                        ("in_features", "out_features")),
    "binary_conv2d": LayerType(B.BinaryConv2d, dict(
        {k: v for k, v in _CONV.items() if k not in ("dilation", "groups")}, **_BINARY),
        ("in_channels", "out_channels", "kernel_size")),
    "binary_linear": LayerType(B.BinaryLinear, dict(
        {"in_features": "positive int", "out_features": "positive int"}, **_BINARY),
        ("in_features", "out_features")),
    "relu": LayerType(L.ReLU),
    "relu6": LayerType(L.ReLU6),
    "leaky_relu": LayerType(L.LeakyReLU, {"negative_slope": "number"}),
    "elu": LayerType(L.ELU, {"alpha": "number"}),
    "tanh": LayerType(L.Tanh),
    "sigmoid": LayerType(L.Sigmoid),
    "softmax": LayerType(L.Softmax, {"dim": "int"}),
    "log_softmax": LayerType(L.LogSoftmax, {"dim": "int"}),
    "max_pool2d": LayerType(L.MaxPool2d, _POOL, ("kernel_size",)),
    "avg_pool2d": LayerType(L.AvgPool2d, dict(_POOL, count_include_pad="bool"),
                            ("kernel_size",)),
    "adaptive_avg_pool2d": LayerType(L.AdaptiveAvgPool2d, {"output_size": "size"},
                                     ("output_size",)),
    "global_avg_pool2d": LayerType(L.GlobalAvgPool2d),
    "batch_norm1d": LayerType(L.BatchNorm1d, _BATCH_NORM, ("num_features",)),
    "batch_norm2d": LayerType(L.BatchNorm2d, _BATCH_NORM, ("num_features",)),
    "dropout": LayerType(L.Dropout, {"p": "probability"}),
    "flatten": LayerType(L.Flatten, {"start_dim": "int"}),
    "local_response_norm": LayerType(L.LocalResponseNorm, {
        "size": "positive int", "alpha": "number", "beta": "number", "k": "number"},
        ("size",)),
    "identity": LayerType(L.Identity),
    "add": LayerType(Add, min_inputs=2, max_inputs=None),
    "concat": LayerType(Concat, {"axis": "int"}, min_inputs=2, max_inputs=None),
}

_NETWORK_FIELDS = ("name", "comment", "input", "input_shape", "layers", "output")
_LAYER_FIELDS = ("name", "type", "params", "inputs", "outputs", "comment")


def _json(value):
    """``value`` as the file would spell it (``"5"`` for a string, ``[3, 3]``, ``null``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _suggest(word, choices):
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Parser:
    """Checks a description and finds the evaluation order; every error goes through
    ``fail`` so it names the source and the place."""

    def __init__(self, source):
        self.source = source

    def fail(self, where, message):
        prefix = f"{self.source}: " if self.source else ""
        raise NetDefError(f"{prefix}{where + ': ' if where else ''}{message}")

    def check_keys(self, where, entry, accepted, required, what):
        unknown = [k for k in entry if k not in accepted]
        if unknown:
            self.fail(where, f"unknown {what} {unknown[0]!r}{_suggest(unknown[0], accepted)}; "
                             f"accepted: {', '.join(accepted) or 'none'}")
        for key in required:
            if key not in entry:
                self.fail(where, f"missing required {what} {key!r}")

    def blob_names(self, where, field, value, count=None):
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) and v for v in value):
            self.fail(where, f"{field} must be a non-empty list of blob names (strings), got "
                             f"{_json(value)}")
        if count is not None and len(value) != count:
            self.fail(where, f"{field} must list exactly {count} blob name (every layer "
                             f"produces one output), got {_json(value)}")
        return value

    def network(self, description):
        """The description's fields, checked, in the canonical order."""
        if not isinstance(description, dict):
            self.fail("", f"a network definition is a JSON object, got "
                          f"{type(description).__name__}")
        self.check_keys("", description, _NETWORK_FIELDS, ("layers", "output"), "field")
        for key in ("name", "comment", "input", "output"):
            if key in description and not (isinstance(description[key], str)
                                           and description[key]):
                self.fail("", f"{key} must be a non-empty string, got "
                              f"{_json(description[key])}")
        shape = description.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and shape
                                      and all(map(_positive, shape))):
            self.fail("", f"input_shape must be a list of positive ints (one sample's shape, "
                          f"e.g. [1, 32, 32]), got {_json(shape)}")
        layers = description["layers"]
        if not isinstance(layers, list) or not layers:
            self.fail("", f"layers must be a non-empty list, got {_json(layers)}")
        normal = {k: copy.deepcopy(description[k]) for k in _NETWORK_FIELDS if k in description}
        normal["layers"] = [self.layer(i, entry) for i, entry in enumerate(layers)]
        return normal

    def layer(self, index, entry):
        where = f"layer {index}"
        if not isinstance(entry, dict):
            self.fail(where, f"a layer is a JSON object, got {_json(entry)}")
        name = entry.get("name")
        if isinstance(name, str) and name:
            where = f"layer {index} {name!r}"
        self.check_keys(where, entry, _LAYER_FIELDS, ("name", "type", "inputs", "outputs"),
                        "field")
        if not isinstance(name, str) or not name or "." in name:
            self.fail(where, f"name must be a non-empty string without dots (parameters are "
                             f"named <layer name>.weight), got {_json(name)}")
        kind = entry["type"]
        if kind not in LAYER_TYPES:
            self.fail(where, f"unknown type {_json(kind)}{_suggest(kind, LAYER_TYPES)}; known "
                             f"types: {', '.join(sorted(LAYER_TYPES))}")
        spec = LAYER_TYPES[kind]
        params = entry.get("params", {})
        if not isinstance(params, dict):
            self.fail(where, f"params must be a JSON object, got {_json(params)}")
        self.check_keys(where, params, tuple(spec.params), spec.required,
                        f"{kind} parameter")
        for key, value in params.items():
            description, test = KINDS[spec.params[key]]
            if not test(value):
                self.fail(where, f"params.{key} must be {description}, got {_json(value)}")
        inputs = self.blob_names(where, "inputs", entry["inputs"])
        if len(inputs) < spec.min_inputs or (spec.max_inputs is not None
                                            and len(inputs) > spec.max_inputs):
            wanted = (f"exactly {spec.min_inputs}" if spec.min_inputs == spec.max_inputs
                      else f"at least {spec.min_inputs}")
            self.fail(where, f"type {kind} takes {wanted} "
                             f"input{'s' if spec.min_inputs > 1 else ''}, got {_json(inputs)}")
        self.blob_names(where, "outputs", entry["outputs"], count=1)
        return {k: copy.deepcopy(entry[k]) for k in _LAYER_FIELDS if k in entry}

    def graph(self, description):
        """(evaluation order as layer indices, indices of the layers the output needs)."""
        layers = description["layers"]
        where = [f"layer {i} {layer['name']!r}" for i, layer in enumerate(layers)]
        network_input = description.get("input", "data")
        producer, names = {}, {}
        for i, layer in enumerate(layers):
            if layer["name"] in names:
                self.fail(where[i], f"the name is already used by {where[names[layer['name']]]}")
            names[layer["name"]] = i
            blob = layer["outputs"][0]
            if blob == network_input:
                self.fail(where[i], f"output {blob!r} is the network input's name")
            if blob in producer:
                self.fail(where[i], f"output {blob!r} is already produced by "
                                    f"{where[producer[blob]]} (each blob is produced once; "
                                    f"give this layer's output its own name)")
            producer[blob] = i
        known = [network_input, *producer]
        for i, layer in enumerate(layers):
            for blob in layer["inputs"]:
                if blob != network_input and blob not in producer:
                    self.fail(where[i], f"input {blob!r} is not produced by any layer nor the "
                                        f"network input{_suggest(blob, known)}; known blobs: "
                                        f"{', '.join(known)}")
        output = description["output"]
        if output != network_input and output not in producer:
            self.fail("", f"output {output!r} is not produced by any layer{_suggest(output, known)}"
                          f"; known blobs: {', '.join(known)}")
        feeds = [[producer[b] for b in layer["inputs"] if b in producer] for layer in layers]
        return self.order(feeds, where), self.needed(feeds, producer.get(output))

    def order(self, feeds, where):
        """Kahn's algorithm, taking the earliest listed ready layer first."""
        waiting = [len(set(f)) for f in feeds]
        consumers = [[] for _ in feeds]
        for i, f in enumerate(feeds):
            for j in set(f):
                consumers[j].append(i)
        ready = [i for i, n in enumerate(waiting) if n == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in consumers[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) < len(feeds):
            # every unscheduled layer waits on another unscheduled one: walk back to a cycle
            stuck = set(range(len(feeds))) - set(order)
            path, i = [], min(stuck)
            while i not in path:
                path.append(i)
                i = min(j for j in feeds[i] if j in stuck)
            cycle = path[path.index(i):] + [i]
            self.fail("", "the layers form a cycle: " + " <- ".join(where[j] for j in cycle)
                      + " (a <- b: a takes b's output)")
        return order

    @staticmethod
    def needed(feeds, output_layer):
        needed, stack = set(), [] if output_layer is None else [output_layer]
        while stack:
            i = stack.pop()
            if i not in needed:
                needed.add(i)
                stack.extend(feeds[i])
        return needed


class NetDefModule(Module):
    """A network built from a definition: one sub-module per layer, named by the layer (so
    state_dict keys are ``<layer name>.weight``), evaluated over the blob DAG."""

    def __init__(self, description, check=True, source=None):
        super().__init__()
        parser = _Parser(source)
        normal = parser.network(description)
        order, needed = parser.graph(normal)
        layers = normal["layers"]
        for i, layer in enumerate(layers):
            spec = LAYER_TYPES[layer["type"]]
            params = {k: tuple(v) if isinstance(v, list) else v
                      for k, v in layer.get("params", {}).items()}
            try:
                module = spec.build(**params)
            except (ValueError, TypeError) as error:
                parser.fail(f"layer {i} {layer['name']!r}", str(error))
            self.add_module(layer["name"], module)
        unused = [f"{i} {layers[i]['name']!r}" for i in range(len(layers)) if i not in needed]
        if unused:
            warnings.warn(f"{source + ': ' if source else ''}layers {', '.join(unused)} do not "
                          f"lead to the output {normal['output']!r}; they are built but never "
                          f"evaluated", UserWarning, stacklevel=3)
        schedule = [i for i in order if i in needed]
        last_use = {}
        for step, i in enumerate(schedule):
            for blob in layers[i]["inputs"]:
                last_use[blob] = step
        object.__setattr__(self, "_netdef", {
            "description": normal, "input": normal.get("input", "data"),
            "output": normal["output"],
            # (layer index, sub-module name, input blobs, output blob, blobs to free after)
            "plan": [(i, layers[i]["name"], tuple(layers[i]["inputs"]), layers[i]["outputs"][0],
                      [b for b, s in last_use.items() if s == step and b != normal["output"]])
                     for step, i in enumerate(schedule)]})
        if check and self.input_shape is not None:
            self._check_shapes(parser)

    @property
    def description(self):
        """The definition (checked, fields in the canonical order) as a new dict."""
        return copy.deepcopy(self._netdef["description"])

    @property
    def input_shape(self):
        """One sample's shape, or None when the definition does not give it."""
        shape = self._netdef["description"].get("input_shape")
        return None if shape is None else tuple(shape)

    def _run(self, x, parser=None):
        blobs = {self._netdef["input"]: x}
        for index, name, inputs, output, free in self._netdef["plan"]:
            arguments = [blobs[b] for b in inputs]
            if parser is None:
                blobs[output] = self._modules[name](*arguments)
            else:
                try:
                    blobs[output] = self._modules[name](*arguments)
                except (ValueError, TypeError) as error:
                    shapes = ", ".join(str(tuple(a.shape)) for a in arguments)
                    parser.fail(f"layer {index} {name!r}", f"{error} (its inputs have shapes "
                                f"{shapes} for input_shape {list(self.input_shape)})")
            for blob in free:
                del blobs[blob]
        return blobs[self._netdef["output"]]

    def forward(self, x):
        return self._run(x)

    def _check_shapes(self, parser):
        """Run a batch of one zeros through the network (evaluation mode: no statistics
        change, no random numbers drawn) so a shape mismatch names its layer."""
        backend = next((p.backend for p in self.parameters()), None)
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with no_grad():
                self._run(gm.zeros(1, *self.input_shape, backend=backend), parser)
        finally:
            for m, mode in modes:
                object.__setattr__(m, "training", mode)

    def extra_repr(self):
        name = self._netdef["description"].get("name")
        return f"name={name!r}" if name else ""


def _read(path):
    path = os.fspath(path)

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        for k in keys:
            if keys.count(k) > 1:
                raise NetDefError(f"{path}: the key {k!r} appears twice in one JSON object")
        return dict(pairs)

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such network definition file") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise NetDefError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: "
                          f"{error.msg}") from None


def load(path_or_dict, check=True):
    """A ``NetDefModule`` built from a definition: a path to a JSON file, or a dict.  With
    ``check`` and an ``input_shape`` in the definition, a batch of one is run through it so
    shape mismatches are reported here, at their layer."""
    if isinstance(path_or_dict, dict):
        return NetDefModule(path_or_dict, check=check)
    path = os.fspath(path_or_dict)
    return NetDefModule(_read(path), check=check, source=path)


def dumps(module_or_description):
    """The definition as JSON text: one line per layer, so diffs stay readable."""
    if isinstance(module_or_description, NetDefModule):
        normal = module_or_description.description
    elif isinstance(module_or_description, dict):
        parser = _Parser("")
        normal = parser.network(module_or_description)
        parser.graph(normal)
    else:
        raise TypeError(f"dump: expected a NetDefModule or a definition dict, got "
                        f"{type(module_or_description).__name__}")
    lines = []
    for key, value in normal.items():
        if key == "layers":
            rows = ",\n".join(f"    {json.dumps(layer)}" for layer in value)
            lines.append(f'  "layers": [\n{rows}\n  ]')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def dump(module_or_description, path):
    """Write a NetDefModule's definition, or a definition dict, to ``path`` as JSON that
    ``load`` reads back to the same network (replaced atomically).  A dict's fields and
    graph are checked first; errors only building the layers finds (a constructor's, a
    shape mismatch) are reported by ``load``."""
    text = dumps(module_or_description)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def shipped(name):
    """The path of a definition shipped with gpumat (``shipped("lenet5")``)."""
    path = SHIPPED_DIR / f"{name}.json"
    if not path.is_file():
        names = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))
        raise FileNotFoundError(f"no shipped network definition {name!r}; shipped: "
                                f"{', '.join(names)}")
    return path
