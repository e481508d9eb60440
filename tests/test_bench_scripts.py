"""The binary-network scripts in bench/ run end to end on a few real Fashion-MNIST images and
write what they promise (the experiment table and its summary, the per-layer profile), so the
committed results stay reproducible with their commands."""
import importlib.util
import json
from pathlib import Path

import pytest

import gpumat as gm

BENCH = Path(__file__).resolve().parent.parent / "bench"


def script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_backend():
    before = gm.default_backend()
    yield
    gm.use(before)


def test_binary_experiments_and_their_summary(tmp_path, keep_backend, capsys):
    experiments = script("binary_experiments")
    args = ["--datasets", "fashion-mnist", "--models", "lenet5", "--modes", "float", "xnor",
            "--lrs", "0.01", "--epochs", "1", "--limit-train", "256", "--limit-test", "128",
            "--backend", "cpu", "--out", str(tmp_path)]
    assert experiments.main(args) == 0
    (path,) = tmp_path.glob("binary-*.json")
    report = json.loads(path.read_text())
    assert [(r["model"], r["mode"], r["lr"]) for r in report["runs"]] == [
        ("lenet5", "float", 0.01), ("lenet5", "xnor", 0.01)]
    for run in report["runs"]:
        assert run["train_images"] == 256 and run["test_images"] == 128
        assert 0.0 <= run["test_top1"] <= run["best_test_top1"] <= 1.0
        assert len(run["history"]) == 1
    xnor, float_run = report["runs"][1], report["runs"][0]
    assert xnor["param_bits"] < float_run["param_bits"] / 10     # binary weights: 1 bit each
    table = path.with_suffix(".md").read_text()
    cells = f"{100 * float_run['test_top1']:.2f}"
    assert "| fashion-mnist | lenet5 | 0.01 | " + cells in table

    assert experiments.main(["--summary", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "## fashion-mnist, 1 epochs, 256 training images, adam" in summary
    assert report["command"] in summary and "| fashion-mnist | lenet5 | 0.01 | " in summary
    # a setting some of whose modes never ran (a run stopped early) says so in their cells
    partial = dict(float_run, lr=0.001)
    assert ("| fashion-mnist | lenet5 | 0.001 | " + cells + " | not run |"
            in experiments.markdown(report["runs"] + [partial]))


def test_binary_profile_accounts_for_every_layer(tmp_path, keep_backend, capsys):
    profile = script("binary_profile")
    assert profile.main(["--models", "lenet5", "--batch", "4", "--rounds", "2", "--backend",
                         "cpu", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("profile-*.json")
    lenet = json.loads(path.read_text())["models"]["lenet5"]
    assert lenet["batch"] == 4
    float_rows, xnor_rows = lenet["float"]["by_kind_s"], lenet["xnor"]["by_kind_s"]
    assert "binary layers (BinaryConv2d)" in xnor_rows and "binary layers (BinaryLinear)" in xnor_rows
    # XNOR-Net's batch norms run inside the binary layers' calls (all of LeNet-5's are folded)
    assert "batch norm" not in xnor_rows and "batch norm" not in float_rows
    assert not any(k.startswith("binary") for k in float_rows)
    for mode in ("float", "xnor"):
        assert lenet[mode]["whole_s"] > 0
        assert all(seconds >= 0 for seconds in lenet[mode]["by_kind_s"].values())
    assert "lenet5, batch 4: float" in path.with_suffix(".md").read_text()
    # the timing wrappers come off again: the model is left as it was
    import numpy as np
    from gpumat.nn import models
    model = models.lenet5(binary="xnor").eval()
    x = gm.array(np.zeros((2, 1, 32, 32), np.float32), backend="cpu")
    profile.profile(model, x, gm.backends.get("cpu").synchronize, 1)
    assert not [n for n, m in model.named_modules() if "forward" in vars(m)]
