"""JSON network definitions: the shipped LeNet-5 and residual example against torch on every
backend, the DAG evaluation, dump/load round trips, and an error naming the layer and field
for every kind of malformed definition."""
import copy
import json
import re

import numpy as np
import pytest
import torch

import gpumat as gm
from gpumat import nn
from gpumat.nn import models, netdef
from gpumat.nn.netdef import NetDefError
from gpumat.nn.serialization import load_into, save
from torch_parity import assert_matches_torch


def lenet_description():
    return json.loads(netdef.shipped("lenet5").read_text())


def build(name, backend):
    """A shipped network with weights that do not depend on the tests run before."""
    gm.seed(3)
    return netdef.load(netdef.shipped(name)).to(backend)


# ---- the shipped definitions ------------------------------------------------------------------

def test_lenet5_has_61706_parameters():
    model = netdef.load(netdef.shipped("lenet5"))
    assert sum(p.size for p in model.parameters()) == 61706
    assert list(model.state_dict()) == [f"{layer}.{kind}" for layer in
                                        ("conv1", "conv2", "fc1", "fc2", "fc3")
                                        for kind in ("weight", "bias")]
    assert model.input_shape == (1, 32, 32)
    assert model.fc1.weight.shape == (120, 400)


def test_lenet5_matches_torch(backend):
    model = build("lenet5", backend)
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10))
    layers = {"conv1": 0, "conv2": 3, "fc1": 7, "fc2": 9, "fc3": 11}
    names = {f"{layer}.{kind}": f"{index}.{kind}" for layer, index in layers.items()
             for kind in ("weight", "bias")}
    assert_matches_torch(model, twin, (3, 1, 32, 32), backend, names, seed=7)


def test_binary_lenet5_is_the_zoo_model(backend):
    """lenet5_xnor.json builds models.lenet5(binary="xnor")'s layers under the same names:
    one state_dict, the same outputs and gradients in training, the same packed-kernel
    outputs in eval mode."""
    model = netdef.load(netdef.shipped("lenet5_xnor")).to(backend)
    zoo = models.lenet5(binary="xnor").to(backend)
    layers = [(n, type(m), m.extra_repr()) for n, m in model.named_modules() if n]
    assert layers == [(n, type(m), m.extra_repr()) for n, m in zoo.named_modules() if n]
    gm.seed(5)
    model.load_state_dict(models.lenet5(binary="xnor").state_dict())
    zoo.load_state_dict(model.state_dict())
    x = gm.array(np.random.default_rng(6).standard_normal((4, 1, 32, 32)).astype(np.float32),
                 backend=backend)
    labels = gm.array(np.arange(4), backend=backend)
    grads = []
    for net in (model, zoo):
        net.train()
        nn.functional.cross_entropy(net(x), labels).backward()
        grads.append({n: p.grad.gather() for n, p in net.named_parameters()})
    assert len(grads[1]) == 16                  # 8 layers' weights and biases
    for name, grad in grads[1].items():
        np.testing.assert_allclose(grads[0][name], grad, rtol=1e-5, atol=1e-6, err_msg=name)
    with nn.no_grad():
        outs = [net.eval()(x).gather() for net in (model, zoo)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


class TorchResnetTiny(torch.nn.Module):
    """resnet_tiny.json written by hand: a residual block and two concatenated branches."""

    def __init__(self):
        super().__init__()
        conv, bn = torch.nn.Conv2d, torch.nn.BatchNorm2d
        self.conv1, self.bn1 = conv(3, 8, 3, padding=1, bias=False), bn(8)
        self.block_conv1, self.block_bn1 = conv(8, 8, 3, padding=1, bias=False), bn(8)
        self.block_conv2, self.block_bn2 = conv(8, 8, 3, padding=1, bias=False), bn(8)
        self.branch1x1, self.branch3x3 = conv(8, 4, 1), conv(8, 4, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        relu = torch.relu
        a = relu(self.bn1(self.conv1(x)))
        b = self.block_bn2(self.block_conv2(relu(self.block_bn1(self.block_conv1(a)))))
        y = torch.nn.functional.max_pool2d(relu(b + a), 2)
        y = relu(torch.cat([self.branch1x1(y), self.branch3x3(y)], 1))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_resnet_tiny_matches_torch(backend):
    model = build("resnet_tiny", backend)
    types = [layer["type"] for layer in model.description["layers"]]
    assert "add" in types and "concat" in types
    assert_matches_torch(model, TorchResnetTiny(), (3, 3, 16, 16), backend, seed=7)


def test_loading_has_no_side_effects():
    """The shape check runs in evaluation mode: statistics and the generator stay put."""
    counters = []
    for check in (False, True):
        gm.seed(11)
        model = netdef.load(netdef.shipped("resnet_tiny"), check=check)
        counters.append(gm.random.GLOBAL.get_state()["counter"])
    assert counters[0] == counters[1]
    assert model.training and model.bn1.training
    assert int(model.bn1.num_batches_tracked.item()) == 0
    np.testing.assert_array_equal(model.bn1.running_mean.gather(), np.zeros(8))


def test_shipped_files_are_in_canonical_form():
    for name in ("lenet5", "lenet5_xnor", "resnet_tiny"):
        path = netdef.shipped(name)
        assert netdef.dumps(netdef.load(path)) == path.read_text(), name
    with pytest.raises(FileNotFoundError, match="no shipped network definition 'lenet'; "
                                                "shipped: lenet5, lenet5_xnor, resnet_tiny"):
        netdef.shipped("lenet")


# ---- the DAG ----------------------------------------------------------------------------------

def test_layers_run_in_dependency_order(backend):
    description = json.loads(netdef.shipped("resnet_tiny").read_text())
    shuffled = copy.deepcopy(description)
    shuffled["layers"] = shuffled["layers"][::-1]
    a = netdef.load(description).to(backend).eval()
    b = netdef.load(shuffled).to(backend).eval()
    b.load_state_dict(a.state_dict())
    x = gm.array(np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32), backend=backend)
    np.testing.assert_array_equal(a(x).gather(), b(x).gather())


def test_a_blob_can_feed_several_layers_and_the_input_be_renamed():
    description = {"input": "image", "layers": [
        {"name": "double", "type": "add", "inputs": ["image", "image"], "outputs": ["twice"]},
        {"name": "both", "type": "concat", "params": {"axis": 0},
         "inputs": ["twice", "image", "twice"], "outputs": ["stack"]}], "output": "stack"}
    model = netdef.load(description)
    out = model(gm.array(np.array([[1.0, 2.0]], np.float32)))
    np.testing.assert_array_equal(out.gather(), [[2, 4], [1, 2], [2, 4]])
    assert list(model.state_dict()) == []


def test_unused_layers_warn_and_are_not_evaluated():
    description = lenet_description()
    description["layers"].append(    # would fail the shape check if it ran
        {"name": "aux", "type": "linear", "params": {"in_features": 7, "out_features": 2},
         "inputs": ["relu3"], "outputs": ["aux"]})
    with pytest.warns(UserWarning, match="layers 12 'aux' do not lead to the output 'fc3'"):
        model = netdef.load(description)
    assert "aux.weight" in model.state_dict()
    assert model(gm.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_dump_and_load_round_trip(backend, tmp_path):
    model = netdef.load(netdef.shipped("resnet_tiny")).to(backend)
    path = tmp_path / "copy.json"
    netdef.dump(model, path)
    again = netdef.load(path)
    assert again.description == model.description
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    save(model, tmp_path / "weights.npz")             # weights travel apart from the definition
    load_into(again, tmp_path / "weights.npz")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        np.testing.assert_array_equal(a.gather(), b.gather(), err_msg=name)
    netdef.dump(lenet_description(), tmp_path / "from_dict.json")
    assert netdef.load(tmp_path / "from_dict.json").description == lenet_description()
    with pytest.raises(TypeError, match="expected a NetDefModule or a definition dict, got "
                                        "Linear"):
        netdef.dump(netdef.LAYER_TYPES["linear"].build(2, 3), tmp_path / "x.json")


# ---- errors -----------------------------------------------------------------------------------

def mutate(change):
    description = lenet_description()
    change(description)
    return description


def layer(description, name):
    return next(entry for entry in description["layers"] if entry["name"] == name)


def set_param(name, key, value, kind=None):
    def change(d):
        entry = layer(d, name)
        if kind is not None:
            entry["type"] = kind
        entry.setdefault("params", {})[key] = value
    return change


KNOWN = ", ".join(sorted(netdef.LAYER_TYPES))
CONV_PARAMS = "in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias"

# (change to LeNet-5's definition, the error message expected after the file name)
MALFORMED = {
    "kernel_size_string": (set_param("conv2", "kernel_size", "5"),
                           "layer 3 'conv2': params.kernel_size must be a positive int or a "
                           "pair of positive ints, got \"5\""),
    "kernel_size_triple": (set_param("conv2", "kernel_size", [5, 5, 5]),
                           "layer 3 'conv2': params.kernel_size must be a positive int or a "
                           "pair of positive ints, got [5, 5, 5]"),
    "bool_for_int": (set_param("fc1", "in_features", True),
                     "layer 7 'fc1': params.in_features must be a positive int, got true"),
    "float_for_int": (set_param("conv1", "out_channels", 6.0),
                      "layer 0 'conv1': params.out_channels must be a positive int, got 6.0"),
    "negative_padding": (set_param("conv1", "padding", -1),
                         "layer 0 'conv1': params.padding must be a non-negative int or a pair "
                         "of non-negative ints, got -1"),
    "unknown_param": (set_param("conv2", "kernel", 5),
                      f"layer 3 'conv2': unknown conv2d parameter 'kernel' (did you mean "
                      f"'kernel_size'?); accepted: {CONV_PARAMS}"),
    "param_of_paramless": (set_param("relu1", "inplace", True),
                           "layer 1 'relu1': unknown relu parameter 'inplace'; accepted: none"),
    "missing_param": (lambda d: layer(d, "conv2")["params"].pop("in_channels"),
                      "layer 3 'conv2': missing required conv2d parameter 'in_channels'"),
    "unknown_type": (lambda d: layer(d, "conv2").__setitem__("type", "conv"),
                     f"layer 3 'conv2': unknown type \"conv\" (did you mean 'conv2d'?); known "
                     f"types: {KNOWN}"),
    "missing_type": (lambda d: layer(d, "conv2").pop("type"),
                     "layer 3 'conv2': missing required field 'type'"),
    "missing_name": (lambda d: d["layers"][3].pop("name"),
                     "layer 3: missing required field 'name'"),
    "dotted_name": (lambda d: layer(d, "conv2").__setitem__("name", "block.conv"),
                    "layer 3 'block.conv': name must be a non-empty string without dots"),
    "unknown_layer_field": (lambda d: layer(d, "fc2").__setitem__("input", ["relu3"]),
                            "layer 9 'fc2': unknown field 'input' (did you mean 'inputs'?); "
                            "accepted: name, type, params, inputs, outputs, comment"),
    "params_not_object": (lambda d: layer(d, "fc2").__setitem__("params", [120, 84]),
                          "layer 9 'fc2': params must be a JSON object, got [120, 84]"),
    "inputs_string": (lambda d: layer(d, "fc2").__setitem__("inputs", "relu3"),
                      "layer 9 'fc2': inputs must be a non-empty list of blob names (strings), "
                      "got \"relu3\""),
    "two_outputs": (lambda d: layer(d, "fc2").__setitem__("outputs", ["a", "b"]),
                    "layer 9 'fc2': outputs must list exactly 1 blob name (every layer "
                    "produces one output), got [\"a\", \"b\"]"),
    "two_inputs": (lambda d: layer(d, "fc2").__setitem__("inputs", ["relu3", "fc1"]),
                   "layer 9 'fc2': type linear takes exactly 1 input, got [\"relu3\", \"fc1\"]"),
    "add_one_input": (lambda d: d["layers"].insert(12, {
        "name": "sum", "type": "add", "inputs": ["fc3"], "outputs": ["sum"]}),
                      "layer 12 'sum': type add takes at least 2 inputs, got [\"fc3\"]"),
    "unknown_blob": (lambda d: layer(d, "relu2").__setitem__("inputs", ["conv_2"]),
                     "layer 4 'relu2': input 'conv_2' is not produced by any layer nor the "
                     "network input (did you mean 'conv2'?); known blobs: data, conv1, "),
    "duplicate_name": (lambda d: layer(d, "relu2").__setitem__("name", "relu1"),
                       "layer 4 'relu1': the name is already used by layer 1 'relu1'"),
    "duplicate_output": (lambda d: layer(d, "relu2").__setitem__("outputs", ["relu1"]),
                         "layer 4 'relu2': output 'relu1' is already produced by layer 1 "
                         "'relu1' (each blob is produced once"),
    "output_is_input": (lambda d: layer(d, "relu1").__setitem__("outputs", ["data"]),
                        "layer 1 'relu1': output 'data' is the network input's name"),
    "cycle": (lambda d: layer(d, "conv2").__setitem__("inputs", ["relu2"]),
              "the layers form a cycle: layer 3 'conv2' <- layer 4 'relu2' <- layer 3 'conv2'"),
    "unknown_output": (lambda d: d.__setitem__("output", "fc4"),
                       "output 'fc4' is not produced by any layer (did you mean 'fc3'?)"),
    "missing_output": (lambda d: d.pop("output"), "missing required field 'output'"),
    "unknown_field": (lambda d: d.__setitem__("layer", []),
                      "unknown field 'layer' (did you mean 'layers'?); accepted: name, "
                      "comment, input, input_shape, layers, output"),
    "empty_layers": (lambda d: d.__setitem__("layers", []),
                     "layers must be a non-empty list, got []"),
    "bad_input_shape": (lambda d: d.__setitem__("input_shape", [1, "32", 32]),
                        "input_shape must be a list of positive ints (one sample's shape, e.g. "
                        "[1, 32, 32]), got [1, \"32\", 32]"),
    "layer_not_object": (lambda d: d["layers"].__setitem__(2, "pool1"),
                         "layer 2: a layer is a JSON object, got \"pool1\""),
    "constructor_error": (set_param("conv2", "groups", 4),
                          "layer 3 'conv2': Conv2d: in_channels (6) and out_channels (16) must "
                          "both be divisible by groups (4)"),
    "binary_mode": (lambda d: layer(d, "conv2").update(type="binary_conv2d", params={
        "in_channels": 6, "out_channels": 16, "kernel_size": 5, "mode": "xnr"}),
                    'layer 3 \'conv2\': params.mode must be "bwn" or "dorefa" or "xnor", got '
                    '"xnr"'),
    "binary_dilation": (set_param("conv2", "dilation", 2, kind="binary_conv2d"),
                        "layer 3 'conv2': unknown binary_conv2d parameter 'dilation'; "
                        "accepted: in_channels, out_channels, kernel_size, stride, padding, "
                        "bias, mode, approx_sign"),
    "binary_linear_sign": (set_param("fc1", "approx_sign", "yes", kind="binary_linear"),
                           "layer 7 'fc1': params.approx_sign must be true or false, got "
                           "\"yes\""),
    "shape_mismatch": (set_param("fc1", "in_features", 256),
                       "layer 7 'fc1': .* (its inputs have shapes (1, 400) for input_shape "
                       "[1, 32, 32])"),
}


# dump checks a dict's fields and graph; these need the layers built, which load does
FOUND_BY_BUILDING = {"constructor_error", "shape_mismatch"}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_definition_names_the_layer_and_field(case, tmp_path):
    change, message = MALFORMED[case]
    path = tmp_path / "net.json"
    path.write_text(json.dumps(mutate(change)))
    pattern = re.escape(message).replace(re.escape(".*"), ".*")
    with pytest.raises(NetDefError, match="^" + re.escape(str(path)) + ": " + pattern):
        netdef.load(path)
    with pytest.raises(NetDefError, match="^" + pattern):      # a dict: no file name
        netdef.load(mutate(change))
    if case in FOUND_BY_BUILDING:
        return
    with pytest.raises(NetDefError, match="^" + pattern):
        netdef.dump(mutate(change), tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_shape_check_can_be_skipped():
    model = netdef.load(mutate(set_param("fc1", "in_features", 256)), check=False)
    with pytest.raises(ValueError):
        model(gm.zeros(1, 1, 32, 32))


def test_file_level_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n "layers": [1, 2,],\n "output": "y"}')
    with pytest.raises(NetDefError, match=r"bad.json: invalid JSON at line 2, column \d+: "):
        netdef.load(bad)
    twice = tmp_path / "twice.json"
    twice.write_text('{"layers": [], "layers": [], "output": "y"}')
    with pytest.raises(NetDefError, match="twice.json: the key 'layers' appears twice"):
        netdef.load(twice)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(NetDefError, match="list.json: a network definition is a JSON object, "
                                          "got list"):
        netdef.load(listed)
    with pytest.raises(FileNotFoundError, match="missing.json: no such network definition"):
        netdef.load(tmp_path / "missing.json")
