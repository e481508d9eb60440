"""The training loop and ``python -m gpumat train``: outputs, resuming, Ctrl-C, flat device
memory across epochs, and argument errors, on every backend and on real Fashion-MNIST."""
import json
import os
import subprocess
import sys

import gpumat as gm  # before NumPy (gpumat/_openblas.py)
import numpy as np
import pytest

from gpumat import nn
from gpumat.__main__ import main
from gpumat.nn import cli
from gpumat.nn import train as train_module
from gpumat.nn.data import DataLoader, Dataset, write_idx
from gpumat.nn.train import Progress, TrainingInterrupted, fit


def blobs(count, seed):
    """Two Gaussian blobs drawn as 1 x 8 x 8 uint8 images: class 1 is brighter."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    images = rng.normal(90 + 80 * labels[:, None, None, None], 30, (count, 1, 8, 8))
    return Dataset(np.clip(images, 0, 255).astype(np.uint8), labels, ["dark", "bright"])


def tiny_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(36, 2))


def setup(backend, epochs=3, seed=0):
    gm.seed(seed)
    model = tiny_model().to(backend)
    train = DataLoader(blobs(256, 1), 32, shuffle=True, normalize=(0.5, 0.25),
                       backend=backend, seed=seed)
    test = DataLoader(blobs(128, 2), 64, normalize=(0.5, 0.25), backend=backend)
    opt = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, nn.optim.CosineAnnealingLR(opt, epochs), train, test


def test_fit_writes_outputs_and_learns(backend, tmp_path, capsys):
    model, opt, sched, train, test = setup(backend)
    history = fit(model, opt, train, test, 3, sched, out_dir=tmp_path, info={"note": "x"})
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert history[-1]["test_top1"] > 0.9 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["lr"] < history[0]["lr"]                     # the schedule stepped
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["note"] == "x" and metrics["epochs"] == history
    assert metrics["best_test_top1"] == max(e["test_top1"] for e in history)
    for key in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5",
                "images_per_second", "device_bytes_in_use"):
        assert all(np.isfinite(e[key]) for e in history), key
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reloaded = tiny_model().to(backend)
    nn.load_into(reloaded, tmp_path / "model.npz")
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        np.testing.assert_array_equal(a.gather(), b.gather(), err_msg=name)
    out = capsys.readouterr().out
    assert "epoch 3/3: train loss" in out and "img/s" in out


def test_device_memory_is_flat_across_epochs(backend):
    model, opt, sched, train, test = setup(backend, epochs=4)
    history = fit(model, opt, train, test, 4, sched)
    in_use = [e["device_bytes_in_use"] for e in history]
    # epoch 1 creates the momentum buffers; after that nothing may accumulate
    assert in_use[1] == in_use[2] == in_use[3], in_use


def test_resume_continues_exactly(backend, tmp_path):
    model, opt, sched, train, test = setup(backend)
    straight = fit(model, opt, train, test, 3, sched)
    model, opt, sched, train, test = setup(backend)
    fit(model, opt, train, test, 1, sched, out_dir=tmp_path)
    model, opt, sched, train, test = setup(backend, seed=99)      # everything differs ...
    resumed = fit(model, opt, train, test, 3, sched, out_dir=tmp_path,
                  resume=tmp_path / "checkpoint.npz")              # ... until the resume
    assert len(resumed) == 3
    for a, b in zip(straight, resumed):
        for key in ("train_loss", "test_loss", "test_top1", "lr"):
            assert a[key] == b[key], (a["epoch"], key)


class Interrupting:
    """A loader that raises KeyboardInterrupt at a given step of a given epoch."""

    def __init__(self, loader, epoch, step):
        self.loader, self.epoch, self.step, self.epochs = loader, epoch, step, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.epochs += 1
        for i, batch in enumerate(self.loader):
            if self.epochs == self.epoch and i == self.step:
                raise KeyboardInterrupt
            yield batch

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


def test_ctrl_c_saves_a_checkpoint(backend, tmp_path, capsys):
    model, opt, sched, train, test = setup(backend)
    with pytest.raises(TrainingInterrupted) as caught:
        fit(model, opt, Interrupting(train, 2, 3), test, 3, sched, out_dir=tmp_path)
    assert caught.value.checkpoint == os.path.join(tmp_path, "checkpoint.npz")
    assert "restarts epoch 2" in capsys.readouterr().out
    state = nn.load_checkpoint(tmp_path / "checkpoint.npz", tiny_model().to(backend))
    assert state["epoch"] == 1 and state["extra"]["interrupted"]
    model2, opt2, sched2, train2, test2 = setup(backend)
    never = Interrupting(train2, 0, 0)          # the saved loader state is this class's
    history = fit(model2, opt2, never, test2, 3, sched2, out_dir=tmp_path,
                  resume=tmp_path / "checkpoint.npz")
    assert [e["epoch"] for e in history] == [1, 2, 3]


def test_divergence_stops_with_a_clear_error(backend):
    model, opt, sched, train, test = setup(backend)
    opt.param_groups[0]["lr"] = 1e30
    with pytest.raises(FloatingPointError, match="diverged; lower --lr"):
        fit(model, opt, train, test, 2)


def test_progress_bar_lines(capsys):
    import sys
    bar = Progress(10, "epoch 1/1", sys.stdout, lines=2)
    for step in range(1, 11):
        if bar.due(step):
            bar.update(step, "loss 1")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["epoch 1/1 [============>           ] 5/10 loss 1",
                     "epoch 1/1 [========================] 10/10 loss 1"]


def test_cli_trains_lenet5_on_fashion_mnist(backend, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "lenet5", "--dataset", "fashion-mnist", "--epochs", "1", "--batch-size",
            "64", "--limit-train", "1024", "--limit-test", "512", "--backend", backend, "--out",
            str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"on backend {backend!r}" in text and "61,706 parameters" in text
    assert "input 1x32x32" in text                  # 28 x 28 padded to LeNet-5's 32 x 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "lenet5" and metrics["backend"] == backend
    assert metrics["epochs"][0]["test_top1"] > 0.2   # 16 steps from scratch: above chance (10%)
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "model.npz", "checkpoint.npz",
                                                "curves.png"}
    assert main(argv[:5] + ["2"] + argv[6:] + ["--resume", str(out / "checkpoint.npz")]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2


def test_cli_trains_a_netdef(tmp_path, capsys):
    out = tmp_path / "run"
    netdef = os.path.join(os.path.dirname(nn.__file__), "netdefs", "lenet5.json")
    assert main(["train", "--netdef", netdef, "--dataset", "fashion-mnist", "--epochs", "1",
                 "--limit-train", "256", "--limit-test", "128", "--optimizer", "adam",
                 "--backend", "cpu", "--out", str(out)]) == 0
    assert "training lenet5 (61,706 parameters)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["train", "--dataset", "mnist"], "name a zoo model or give --netdef"),
    (["train", "lenet6"], "unknown model 'lenet6'"),
    (["train", "lenet5", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "lenet5", "--lr", "-1"], "--lr must be positive"),
])
def test_cli_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_reports_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"input_shape": [1, 28, 28], "output": "fc", "layers": [
        {"name": "fc", "type": "linear", "params": {"in_features": "784", "out_features": 10},
         "inputs": ["data"], "outputs": ["fc"]}]}))
    common = ["--dataset", "fashion-mnist", "--backend", "cpu", "--out", str(tmp_path / "run")]
    assert main(["train", "--netdef", str(bad)] + common) == 2
    assert "layer 0 'fc': params.in_features" in capsys.readouterr().err
    assert main(["train", "lenet5", "--resume", str(tmp_path / "none.npz")] + common) == 2
    assert "none.npz" in capsys.readouterr().err
    assert main(["train", "lenet5", "--data", str(tmp_path), "--no-download"] + common) == 2
    assert "fashion-mnist" in capsys.readouterr().err


# ------------------------------------------------------------------ resuming with new values

def stepped(backend="cpu", seed=0):
    """setup() with StepLR(1, 0.1): each epoch's lr is a tenth of the one before."""
    model, opt, _, train, test = setup(backend, seed=seed)
    return model, opt, nn.optim.StepLR(opt, 1, 0.1), train, test


def test_resume_with_a_new_lr_rescales_the_schedule(tmp_path):
    checkpoint = tmp_path / "checkpoint.npz"
    model, opt, sched, train, test = stepped()
    fit(model, opt, train, test, 1, sched, out_dir=tmp_path)
    model, opt, sched, train, test = stepped()
    history = fit(model, opt, train, test, 2, sched, out_dir=tmp_path, resume=checkpoint,
                  lr=0.02)
    # epoch 2 is the schedule's step 1, from the new base
    assert [e["lr"] for e in history] == pytest.approx([0.1, 0.002])
    model, opt, sched, train, test = stepped()
    history = fit(model, opt, train, test, 3, sched, resume=checkpoint)   # the new base stays
    assert [e["lr"] for e in history] == pytest.approx([0.1, 0.002, 0.0002])
    with pytest.raises(ValueError, match="lr and seed replace a resumed checkpoint's"):
        fit(model, opt, train, test, 1, lr=0.1)


def test_resume_with_a_seed(tmp_path):
    checkpoint = tmp_path / "checkpoint.npz"
    model, opt, sched, train, test = setup("cpu")
    straight = [e["train_loss"] for e in fit(model, opt, train, test, 2, sched)]
    model, opt, sched, train, test = setup("cpu")
    fit(model, opt, train, test, 1, sched, out_dir=tmp_path)
    model, opt, sched, train, test = setup("cpu", seed=99)
    same = fit(model, opt, train, test, 2, sched, resume=checkpoint, seed=0)
    assert [e["train_loss"] for e in same] == straight      # the checkpoint's seed: exact
    model, opt, sched, train, test = setup("cpu", seed=99)
    other = fit(model, opt, train, test, 2, sched, resume=checkpoint, seed=7)
    assert train.state_dict()["seed"] == 7
    assert other[0]["train_loss"] == straight[0] and other[1]["train_loss"] != straight[1]


# ------------------------------------------------------------------ Ctrl-C between epochs

def test_ctrl_c_in_the_evaluation_replays_the_epoch_with_its_schedule(tmp_path):
    checkpoint = tmp_path / "checkpoint.npz"
    model, opt, sched, train, test = stepped()
    with pytest.raises(TrainingInterrupted):
        fit(model, opt, train, Interrupting(test, 2, 0), 3, sched, out_dir=tmp_path)
    state = nn.load_checkpoint(checkpoint, tiny_model())
    assert state["epoch"] == 1 and [e["epoch"] for e in state["extra"]["history"]] == [1]
    model, opt, sched, train, test = stepped()
    history = fit(model, opt, train, test, 3, sched, out_dir=tmp_path, resume=checkpoint)
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert [e["lr"] for e in history] == pytest.approx([0.1, 0.01, 0.001])


def test_ctrl_c_in_an_epochs_save_keeps_that_epoch(tmp_path, monkeypatch, capsys):
    model, opt, sched, train, test = stepped()
    straight = fit(model, opt, train, test, 3, sched)
    saves = []

    def interrupt_the_second(*args):
        saves.append(args)
        if len(saves) == 2:
            raise KeyboardInterrupt
        real_save_epoch(*args)

    real_save_epoch = train_module._save_epoch
    monkeypatch.setattr(train_module, "_save_epoch", interrupt_the_second)
    model, opt, sched, train, test = stepped()
    with pytest.raises(TrainingInterrupted):
        fit(model, opt, train, test, 3, sched, out_dir=tmp_path)
    assert "interrupted after epoch 2" in capsys.readouterr().out
    monkeypatch.undo()
    model, opt, sched, train, test = stepped()
    history = fit(model, opt, train, test, 3, sched, out_dir=tmp_path,
                  resume=tmp_path / "checkpoint.npz")
    assert [e["epoch"] for e in history] == [1, 2, 3]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    for a, b in zip(straight, history):                 # as if never interrupted
        for key in ("train_loss", "test_loss", "lr"):
            assert a[key] == b[key], (a["epoch"], key)


# ------------------------------------------------------------------ the command line

QUICK = ["train", "lenet5", "--dataset", "fashion-mnist", "--limit-train", "128",
         "--limit-test", "64", "--backend", "cpu", "--schedule", "none"]


def test_cli_resume_trains_at_the_lr_and_seed_given(tmp_path, capsys):
    out = tmp_path / "run"
    checkpoint = str(out / "checkpoint.npz")
    assert main(QUICK + ["--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(QUICK + ["--epochs", "2", "--lr", "0.0001", "--resume", checkpoint,
                         "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sgd base lr 0.0001," in text and "continuing at learning rate 0.0001" in text
    assert main(QUICK + ["--epochs", "3", "--seed", "3", "--resume", checkpoint,
                         "--out", str(out)]) == 0
    assert "sgd the checkpoint's lr," in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["lr"] for e in metrics["epochs"]] == [0.02, 0.0001, 0.0001]
    assert metrics["arguments"]["lr"] is None and metrics["arguments"]["seed"] == 3
    loader = DataLoader(blobs(8, 0), 4)
    nn.load_checkpoint(checkpoint, nn.models.get("lenet5", num_classes=10), loader=loader)
    assert loader.seed == 3


def test_cli_resume_with_nothing_left_to_train(tmp_path, capsys):
    run, again = tmp_path / "run", tmp_path / "r3"
    assert main(QUICK + ["--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(QUICK + ["--epochs", "1", "--resume", str(run / "checkpoint.npz"),
                         "--out", str(again)]) == 0
    text = capsys.readouterr().out
    assert "nothing left to train: the checkpoint holds 1 epoch(s) of the 1 asked for" in text
    assert "epoch 1/1" not in text                              # no training
    assert {p.name for p in again.iterdir()} == {"metrics.json", "model.npz", "checkpoint.npz",
                                                  "curves.png"}
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert json.loads((again / "metrics.json").read_text())["epochs"] == epochs


@pytest.mark.parametrize("option,value,message", [
    ("--limit-train", "-5", "--limit-train must be at least 1, got -5"),
    ("--limit-test", "-5", "--limit-test must be at least 1, got -5"),
    ("--warmup", "-2", "--warmup must be at least 0, got -2"),
    ("--seed", "-1", "--seed must be at least 0, got -1"),
    ("--label-smoothing", "2", "--label-smoothing must be in [0, 1], got 2.0"),
    ("--momentum", "-1", "--momentum must be finite and at least 0, got -1.0"),
    ("--weight-decay", "nan", "--weight-decay must be finite and at least 0, got nan"),
    ("--lr", "nan", "--lr must be positive and finite, got nan"),
    ("--lr", "inf", "--lr must be positive and finite, got inf"),
])
def test_cli_refuses_bad_values_before_loading_data(option, value, message, monkeypatch,
                                                    capsys):
    monkeypatch.setattr(cli, "load_dataset", lambda *args: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as caught:
        main(["train", "lenet5", "--backend", "cpu", option, value])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_an_out_that_is_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_dataset", lambda *args: pytest.fail("the data was loaded"))
    existing = tmp_path / "metrics.json"
    existing.write_text("{}")
    for out, message in ((existing, f"--out {existing} is a file, not a directory"),
                         (existing / "run", f"--out {existing / 'run'}: {existing} is a file")):
        with pytest.raises(SystemExit) as caught:
            main(["train", "lenet5", "--backend", "cpu", "--out", str(out)])
        assert caught.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_module_runs_as_the_train_command():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    done = subprocess.run([sys.executable, "-m", "gpumat.nn.cli", "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m gpumat train") and "--resume" in done.stdout


def write_mnist(directory, split, count, size):
    """MNIST-format IDX files of ``count`` images of ``size`` (height, width)."""
    images = np.random.default_rng(0).integers(0, 256, (count,) + size, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz",
              (np.arange(count) % 10).astype(np.uint8))


@pytest.mark.parametrize("train_size,test_size,message", [
    ((32, 32), (28, 28), "the mnist training images are 32x32 but its test images are 28x28"),
    ((0, 0), (0, 0), "the mnist train images in .* are 0x0: there is nothing to train on"),
    ((28, 28), (0, 0), "the mnist test images in .* are 0x0: there is nothing to train on"),
])
def test_cli_refuses_images_it_cannot_train_on(tmp_path, capsys, train_size, test_size,
                                               message):
    write_mnist(tmp_path / "mnist", "train", 8, train_size)
    write_mnist(tmp_path / "mnist", "test", 4, test_size)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=message):
        main(["train", "lenet5", "--dataset", "mnist", "--data", str(tmp_path), "--no-download",
              "--epochs", "1", "--backend", "cpu", "--out", str(out)])
    assert "epoch 1/1" not in capsys.readouterr().out and not out.exists()
