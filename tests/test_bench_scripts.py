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
        assert (run["seed"], run["backend"], run["batch_size"], run["weight_decay"]) == (
            0, "cpu", 64, 0.0)
        assert 0.0 <= run["test_top1"] <= run["best_test_top1"] <= 1.0
        assert len(run["history"]) == 1
    xnor, float_run = report["runs"][1], report["runs"][0]
    assert xnor["param_bits"] < float_run["param_bits"] / 10     # binary weights: 1 bit each
    table = path.with_suffix(".md").read_text()
    cells = f"{100 * float_run['test_top1']:.2f}"
    assert "| fashion-mnist | lenet5 | 0.01 | " + cells in table

    assert experiments.main(["--summary", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert ("## fashion-mnist, 1 epochs, 256 training and 128 test images, batch 64, adam, "
            "no weight decay, seed 0, backend cpu") in summary
    assert report["command"] in summary and "| fashion-mnist | lenet5 | 0.01 | " in summary
    # a setting some of whose modes never ran (a run stopped early) says so in their cells
    partial = dict(float_run, lr=0.001)
    assert ("| fashion-mnist | lenet5 | 0.001 | " + cells + " | not run |"
            in experiments.markdown(report["runs"] + [partial]))


def _report(command, backend, runs, **arguments):
    """A binary-*.json report as binary_experiments.main writes it, with the fields the
    summary reads; ``arguments`` override the command line's defaults."""
    defaults = {"batch_size": 64, "seed": 0, "weight_decay": 0.0, "limit_test": None}
    return {"command": command, "backend": backend, "arguments": {**defaults, **arguments},
            "runs": runs}


def _run(top1, **fields):
    return {"dataset": "fashion-mnist", "model": "lenet5", "mode": "float", "lr": 0.01,
            "optimizer": "adam", "epochs": 1, "train_images": 256, "test_images": 128,
            "param_bits": 8192, "test_top1": top1, "best_test_top1": top1, **fields}


def test_summary_tables_hold_only_runs_of_one_setting(tmp_path):
    experiments = script("binary_experiments")
    # A record from before runs stored their seed, batch size, weight decay and backend: the
    # report's header has them.  Then the same model, lr and mode from another seed, test set
    # and backend, which used to replace its cell under the first run's heading.
    old = _report("python first", "cpu", [_run(0.5)])
    new = _report("python second --seed 7 --limit-test 32 --backend opencl", "opencl",
                  [_run(0.25, test_images=32, seed=7, backend="opencl", batch_size=64,
                        weight_decay=0.0)], seed=7, limit_test=32)
    same = _report("python third", "cpu", [_run(0.75, seed=0, backend="cpu", batch_size=64,
                                                weight_decay=0.0)])
    for name, report in [("binary-1.json", old), ("binary-2.json", new), ("binary-3.json", same)]:
        (tmp_path / name).write_text(json.dumps(report))
    summary = experiments.summarize(str(tmp_path))
    tables = summary.split("\n## ")[1:]
    assert [table.splitlines()[0] for table in tables] == [
        "fashion-mnist, 1 epochs, 256 training and 32 test images, batch 64, adam, "
        "no weight decay, seed 7, backend opencl",
        "fashion-mnist, 1 epochs, 256 training and 128 test images, batch 64, adam, "
        "no weight decay, seed 0, backend cpu"]
    assert "    python second" in tables[0] and "| fashion-mnist | lenet5 | 0.01 | 25.00 |" in tables[0]
    # the old record and the new one of the same setting share a table; the later one wins
    assert "    python first" in tables[1] and "    python third" in tables[1]
    assert "| fashion-mnist | lenet5 | 0.01 | 75.00 |" in tables[1]
    assert "seed 0 with" not in summary        # no claim about every run's seed any more


def test_summary_of_a_missing_directory_is_a_usage_error(tmp_path, capsys):
    experiments = script("binary_experiments")
    missing = tmp_path / "no" / "such"
    with pytest.raises(SystemExit) as caught:
        experiments.main(["--summary", "--out", str(missing)])
    assert caught.value.code == 2
    assert f"error: --out {missing}: no such directory" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("option", ["--limit-train", "--limit-test"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_limits_below_one_are_refused(option, value, capsys):
    experiments = script("binary_experiments")
    with pytest.raises(SystemExit) as caught:
        experiments.main([option, value, "--summary"])
    assert caught.value.code == 2
    assert f"argument {option}: must be at least 1, got {value}" in capsys.readouterr().err


def test_subset_refuses_limits_below_one():
    import numpy as np
    from gpumat.nn.data import Dataset
    experiments = script("binary_experiments")
    data = Dataset(np.zeros((10, 1, 2, 2), np.uint8), np.arange(10) % 2, ["a", "b"])
    assert len(experiments.subset(data, 3)) == 3 and experiments.subset(data, 99) is data
    with pytest.raises(ValueError, match="limit must be at least 1, got -3"):
        experiments.subset(data, -3)      # used to keep the first 7 images


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
