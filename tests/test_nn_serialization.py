"""Model files and training checkpoints: bit-exact round trips, the .npz format (no pickle),
atomic writes, the _save_arrays/_load_arrays hook, clear errors, and resuming a run
bit-for-bit on every backend."""
import json
import os
import zipfile

import numpy as np
import pytest
import torch

import gpumat as gm
import gpumat.nn.functional as F
from gpumat import nn
from gpumat.nn import optim
from gpumat.nn.serialization import (CheckpointError, atomic_write, load_checkpoint, load_into,
                                     load_state, save, save_checkpoint)


class TinyNet(nn.Module):
    """Conv, batch norm (an int64 0-d buffer), dropout (the random generator matters)."""

    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(width * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x))))
        return self.fc(self.drop(F.flatten(x, 1)))


def tiny_net(backend, width=4):
    return TinyNet(width).to(backend)


def batch(step, backend):
    rng = np.random.default_rng(1000 + step)
    x = gm.array(rng.standard_normal((6, 1, 8, 8)).astype(np.float32), backend=backend)
    labels = gm.array(rng.integers(0, 5, 6), backend=backend)
    return x, labels


def train(model, optimizer, scheduler, steps, backend):
    """Losses of ``steps`` training steps, counted from the scheduler's position."""
    losses = []
    for _ in range(steps):
        x, labels = batch(scheduler.last_epoch, backend)
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.data.gather())
    return np.array(losses)


def bits(a):
    """The raw bytes of an array (so -0.0 != 0.0 and NaN == NaN)."""
    a = np.ascontiguousarray(a)
    return a.dtype, a.shape, a.tobytes()


def host_state(module):
    return {k: v.gather() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert bits(a[k]) == bits(b[k]), k


# ---- model files ----------------------------------------------------------------------------

def test_save_load_round_trip_is_bit_exact(backend, tmp_path):
    model = tiny_net(backend)
    sgd = optim.SGD(model.parameters(), lr=0.1)
    train(model, sgd, optim.StepLR(sgd, 1), 2, backend)           # running statistics move
    weight = model.fc.weight.gather()
    weight.flat[:5] = [np.nan, np.inf, -0.0, 1e-45, -np.inf]     # denormal, signed zero, ...
    model.fc.weight.data = gm.array(weight, backend=backend)
    path = tmp_path / "model.npz"
    save(model, path)

    stored = load_state(path)
    assert_same_state(stored, host_state(model))
    assert stored["bn.num_batches_tracked"].dtype == np.int64
    assert stored["bn.num_batches_tracked"].shape == ()
    assert int(stored["bn.num_batches_tracked"]) == 2

    fresh = tiny_net(backend)
    assert load_into(fresh, path) == ([], [])
    assert_same_state(host_state(fresh), host_state(model))
    assert fresh.bn.num_batches_tracked.backend == backend


def test_file_is_a_plain_npz_with_pytorch_names(tmp_path):
    model = tiny_net("cpu")
    path = tmp_path / "weights.gm"                   # the name is used as given
    save(model, path)
    assert path.exists() and not (tmp_path / "weights.gm.npz").exists()
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.files)
        metadata = json.loads(archive["__gpumat__"].tobytes().decode("utf-8"))
    assert keys[1:] == list(model.state_dict())
    assert metadata == {"kind": "state_dict", "format": "gpumat", "version": 1}
    # PyTorch reads it through NumPy: same names, same layouts
    twin = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(1, 4, 3, padding=1),
                                "bn": torch.nn.BatchNorm2d(4), "fc": torch.nn.Linear(64, 5)})
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in load_state(path).items()})
    np.testing.assert_array_equal(twin["fc"].weight.detach().numpy(), model.fc.weight.gather())


def test_save_a_state_dict_and_load_a_foreign_npz(backend, tmp_path):
    model = tiny_net(backend)
    state = {k: v.gather() for k, v in model.state_dict().items()}
    save(state, tmp_path / "from_numpy.npz")                 # NumPy arrays
    save(model.state_dict(), tmp_path / "from_arrays.npz")   # gm.Arrays
    assert_same_state(load_state(tmp_path / "from_numpy.npz"),
                      load_state(tmp_path / "from_arrays.npz"))
    np.savez(tmp_path / "foreign.npz", **state)              # no gpumat metadata
    fresh = tiny_net(backend)
    load_into(fresh, tmp_path / "foreign.npz")
    assert_same_state(host_state(fresh), state)


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.npz"
    save(tiny_net("cpu"), path)
    before = path.read_bytes()

    def write(file):
        file.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]             # no temporary left behind


class SignLinear(nn.Linear):
    """Stands in for issue 5's binary layers: stores its weight as packed sign bits."""

    def _save_arrays(self, arrays):
        weight = arrays.pop("weight")
        return dict(arrays, weight_bits=np.packbits(weight.ravel() > 0))

    def _load_arrays(self, arrays):
        count = self.weight.size
        signs = np.unpackbits(arrays.pop("weight_bits"))[:count].astype(np.float32)
        return dict(arrays, weight=(2 * signs - 1).reshape(self.weight.shape))


def test_modules_can_store_their_own_encoding(backend, tmp_path):
    model = nn.Sequential(nn.Linear(4, 16), SignLinear(16, 24)).to(backend)
    weight = np.where(np.random.default_rng(0).random((24, 16)) > 0.5, 1, -1).astype(np.float32)
    model[1].weight.data = gm.array(weight, backend=backend)
    save(model, tmp_path / "binary.npz")
    stored = load_state(tmp_path / "binary.npz")
    assert list(stored) == ["0.weight", "0.bias", "1.bias", "1.weight_bits"]
    assert stored["1.weight_bits"].dtype == np.uint8 and stored["1.weight_bits"].size == 48
    fresh = nn.Sequential(nn.Linear(4, 16), SignLinear(16, 24)).to(backend)
    load_into(fresh, tmp_path / "binary.npz")
    assert_same_state(host_state(fresh), host_state(model))


# ---- errors ---------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match="nowhere.npz: no such gpumat model"):
        load_into(tiny_net("cpu"), path)
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_checkpoint(path, tiny_net("cpu"))


def test_files_that_are_not_gpumat_files(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(CheckpointError, match="notes.npz: not a gpumat model or checkpoint"):
        load_state(text)
    np.save(tmp_path / "array.npy", np.ones(3))
    with pytest.raises(CheckpointError, match="array.npy: .*not a zip archive"):
        load_state(tmp_path / "array.npy")
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:    # PyTorch's layout
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="model.pt: .*'archive/data.pkl' is not a NumPy "
                                              "array .*PyTorch"):
        load_state(tmp_path / "model.pt")
    np.savez(tmp_path / "pickled.npz", evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled.npz: not a readable .npz file"):
        load_state(tmp_path / "pickled.npz")
    np.savez(tmp_path / "future.npz", __gpumat__=np.frombuffer(
        b'{"format": "gpumat", "version": 99, "kind": "checkpoint"}', np.uint8))
    with pytest.raises(CheckpointError, match="future.npz: written in gpumat file format "
                                              "version 99"):
        load_state(tmp_path / "future.npz")
    np.savez(tmp_path / "other.npz", __gpumat__=np.frombuffer(b"\xff\xfe", np.uint8))
    with pytest.raises(CheckpointError, match="other.npz: the __gpumat__ entry is not UTF-8"):
        load_state(tmp_path / "other.npz")


def test_a_different_architecture_names_every_problem(tmp_path):
    path = tmp_path / "net.npz"
    save(tiny_net("cpu", width=4), path)
    with pytest.raises(CheckpointError, match=r"net.npz: does not fit TinyNet .*shape "
                                              r"mismatch: conv.weight is \(4, 1, 3, 3\) in the "
                                              r"file but \(8, 1, 3, 3\) in the model"):
        load_into(tiny_net("cpu", width=8), path)
    other = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match=r"net.npz: does not fit Sequential .*missing "
                                              r"0.weight, 0.bias; unexpected conv.weight"):
        load_into(other, path)
    # not strict: names may differ, shapes of shared names may not
    model = tiny_net("cpu")
    save({"fc.bias": np.ones(5, np.float32)}, tmp_path / "part.npz")
    missing, unexpected = load_into(model, tmp_path / "part.npz", strict=False)
    assert "fc.weight" in missing and unexpected == []
    np.testing.assert_array_equal(model.fc.bias.gather(), np.ones(5))
    save({"fc.bias": np.ones(6, np.float32)}, tmp_path / "bad.npz")
    with pytest.raises(CheckpointError, match="fc.bias is"):
        load_into(model, tmp_path / "bad.npz", strict=False)


def test_checkpoint_errors(tmp_path):
    model = tiny_net("cpu")
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save(model, tmp_path / "weights.npz")
    with pytest.raises(CheckpointError, match="weights.npz: not a gpumat checkpoint .*holds a "
                                              "model state_dict"):
        load_checkpoint(tmp_path / "weights.npz", model)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, sgd, epoch=1)
    with pytest.raises(CheckpointError, match=r"ckpt.npz: the checkpoint was written by a "
                                              r"different model: module 'conv' is "
                                              r"Conv2d\(1, 4, .* in the checkpoint but "
                                              r"Conv2d\(1, 8, .* in this model"):
        load_checkpoint(path, tiny_net("cpu", width=8))
    # a checkpoint from before configurations were saved: the entries are still checked
    old = tmp_path / "old.npz"
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    metadata = json.loads(members["__gpumat__"].tobytes().decode("utf-8"))
    del metadata["modules"]
    members["__gpumat__"] = np.frombuffer(json.dumps(metadata).encode("utf-8"), np.uint8)
    np.savez(old, **members)
    with pytest.raises(CheckpointError, match="old.npz: does not fit TinyNet"):
        load_checkpoint(old, tiny_net("cpu", width=8))
    load_checkpoint(old, tiny_net("cpu"))
    with pytest.raises(CheckpointError, match="ckpt.npz: the checkpoint's optimizer is SGD, this "
                                              "one is Adam"):
        load_checkpoint(path, model, optim.Adam(model.parameters()))
    with pytest.raises(CheckpointError, match="ckpt.npz: the checkpoint holds no scheduler "
                                              "state, but a scheduler"):
        load_checkpoint(path, model, sgd, optim.StepLR(sgd, 2))
    reordered = optim.SGD(model.parameters()[::-1], lr=0.1)
    with pytest.raises(CheckpointError, match="ckpt.npz: the checkpoint's optimizer has "
                                              "parameters of shapes"):
        load_checkpoint(path, model, reordered)
    untouched = tiny_net("cpu")
    before = host_state(untouched)
    with pytest.raises(CheckpointError, match="holds no scheduler"):   # checked before loading
        load_checkpoint(path, untouched, optim.SGD(untouched.parameters(), lr=0.1),
                        optim.StepLR(optim.SGD(untouched.parameters(), lr=0.1), 2))
    assert_same_state(host_state(untouched), before)
    with pytest.raises(TypeError, match="save_checkpoint: the loader must have state_dict"):
        save_checkpoint(tmp_path / "x.npz", model, loader=[1, 2, 3])
    with pytest.raises(TypeError, match="extra/when holds a set"):
        save_checkpoint(tmp_path / "x.npz", model, extra={"when": {1, 2}})
    assert not (tmp_path / "x.npz").exists()


# ---- checkpoints ----------------------------------------------------------------------------

class CountingLoader:
    """Stands in for gpumat.nn.data.DataLoader: state_dict / load_state_dict of plain data."""

    def __init__(self):
        self.epoch, self.seed = 0, 7

    def state_dict(self):
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state):
        self.epoch, self.seed = state["epoch"], state["seed"]


OPTIMIZERS = {
    "sgd_momentum": lambda params: optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": lambda params: optim.Adam(params, lr=0.01, betas=(0.8, 0.99)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_is_bit_exact(backend, tmp_path, name):
    k = 3
    gm.seed(42)
    model = tiny_net(backend)
    optimizer = OPTIMIZERS[name](model.parameters())
    scheduler = optim.StepLR(optimizer, step_size=2, gamma=0.5)
    loader = CountingLoader()
    first = train(model, optimizer, scheduler, k, backend)
    loader.epoch = 5
    history = {"loss": [float(v) for v in first], "best": float(first.min())}
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, scheduler, epoch=k, extra=history, loader=loader)
    continued = train(model, optimizer, scheduler, k, backend)

    gm.seed(999)                                 # a different init and generator position
    fresh = tiny_net(backend)
    fresh_optimizer = OPTIMIZERS[name](fresh.parameters())
    fresh_scheduler = optim.StepLR(fresh_optimizer, step_size=2, gamma=0.5)
    fresh_loader = CountingLoader()
    info = load_checkpoint(path, fresh, fresh_optimizer, fresh_scheduler, loader=fresh_loader)
    assert info == {"epoch": k, "extra": history}
    assert (fresh_loader.epoch, fresh_loader.seed) == (5, 7)
    assert fresh_scheduler.last_epoch == k
    resumed = train(fresh, fresh_optimizer, fresh_scheduler, k, backend)

    assert bits(resumed) == bits(continued), (resumed, continued)
    assert_same_state(host_state(fresh), host_state(model))
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_optimizer_state_round_trips_exactly(tmp_path):
    model = tiny_net("cpu")
    adam = optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    train(model, adam, optim.StepLR(adam, 1, 0.9), 2, "cpu")
    save_checkpoint(tmp_path / "c.npz", model, adam)
    other = optim.Adam(model.parameters(), lr=0.5)
    load_checkpoint(tmp_path / "c.npz", model, other)
    saved, loaded = adam.state_dict(), other.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]   # betas a tuple again, lr exact
    assert isinstance(loaded["param_groups"][0]["betas"], tuple)
    assert list(loaded["state"]) == list(saved["state"])     # integer parameter indices
    for index, buffers in saved["state"].items():
        assert loaded["state"][index]["step"] == buffers["step"] == 2
        for key in ("exp_avg", "exp_avg_sq"):
            assert bits(loaded["state"][index][key].gather()) == bits(buffers[key].gather())


def test_checkpoint_moves_between_backends(backend, tmp_path):
    gm.seed(5)
    model = tiny_net(backend)
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, sgd, optim.StepLR(sgd, 1), 2, backend)
    save_checkpoint(tmp_path / "c.npz", model, sgd, extra={"backend": backend})
    on_cpu = tiny_net("cpu")
    cpu_sgd = optim.SGD(on_cpu.parameters(), lr=0.1, momentum=0.9)
    assert load_checkpoint(tmp_path / "c.npz", on_cpu, cpu_sgd)["extra"] == {"backend": backend}
    assert_same_state(host_state(on_cpu), host_state(model))
    assert load_state(tmp_path / "c.npz").keys() == model.state_dict().keys()
    for p, q in zip(model.parameters(), on_cpu.parameters()):
        assert bits(cpu_sgd.state[q]["momentum_buffer"].gather()) == \
            bits(sgd.state[p]["momentum_buffer"].gather())
        assert cpu_sgd.state[q]["momentum_buffer"].backend == "cpu"


def test_generator_state_is_restored(tmp_path):
    model = tiny_net("cpu")
    gm.seed(3)
    gm.rand(10)
    save_checkpoint(tmp_path / "c.npz", model)
    expected = gm.rand(4).gather()
    gm.seed(8)
    load_checkpoint(tmp_path / "c.npz", model)
    np.testing.assert_array_equal(gm.rand(4).gather(), expected)


def test_extra_keeps_its_structure(tmp_path):
    model = tiny_net("cpu")
    extra = {"history": [{"epoch": 1, "top1": 0.5}], "pair": (1, 2.5), "note": None,
             "by_epoch": {3: "x"}, "tagged": {"__array__": "not an array"},
             "float32": np.float32(0.25), "curve": np.arange(4, dtype=np.int32)}
    save_checkpoint(tmp_path / "c.npz", model, epoch=None, extra=extra)
    info = load_checkpoint(tmp_path / "c.npz", model)
    curve = info["extra"].pop("curve")
    assert bits(curve) == bits(np.arange(4, dtype=np.int32))
    assert info == {"epoch": None, "extra": {
        "history": [{"epoch": 1, "top1": 0.5}], "pair": (1, 2.5), "note": None,
        "by_epoch": {3: "x"}, "tagged": {"__array__": "not an array"}, "float32": 0.25}}
