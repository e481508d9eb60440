"""The Warsaw thesis's comparison of binarization schemes: float vs bwn vs dorefa vs xnor
(gpumat.nn.binary) on Fashion-MNIST (and CIFAR-10 where its files are present), for LeNet-5
and the CIFAR ResNets resnet_cifar(n) with n = 2 and 3 (6n + 2 = 14 and 20 layers; n = 5,
ResNet-32, on request), each at two learning rates; the figure is the test top-1 accuracy
after the last epoch (the best epoch's is kept too).

    python bench/binary_experiments.py                          # the whole table (hours)
    python bench/binary_experiments.py --models lenet5 --epochs 1 --limit-train 512
    python bench/binary_experiments.py --models lenet5 resnet14 resnet20 resnet32 \\
        --datasets fashion-mnist cifar10 --lrs 0.01 0.001 --epochs 20

Every run trains through ``gpumat.nn.train.fit`` with the command line's recipe (images
scaled to [0, 1], normalised with the dataset's mean and std, zero-padded to the model's
32 x 32; CIFAR-10 with random 4-pixel crops and flips; a cosine learning-rate schedule over
the epochs), Adam by default (as XNOR-Net trained), from the same seed for every mode.
In each binary model every convolution and linear layer is binary except the first
convolution and the last linear layer (see gpumat.nn.models).

It prints a markdown table (one row per dataset, model and learning rate, one column per
mode) and the deployed model sizes (nn.summary's bits: binary weights 1 bit each), and
writes everything, with each epoch's history, to ``bench/results/binary/`` as JSON after
every run, so an interrupted experiment keeps what it finished.  ``--summary`` trains
nothing and gathers every experiment there into one file, ``summary.md``.  Benchmarks
assert nothing.
"""
import argparse
import glob
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # run from a checkout without installing

import gpumat as gm                                 # noqa: E402
from gpumat import nn                               # noqa: E402
from gpumat.nn import models, optim                 # noqa: E402
from gpumat.nn.data import DataLoader, Dataset, load_dataset  # noqa: E402
from gpumat.nn.train import fit                     # noqa: E402

MODES = ("float", "bwn", "dorefa", "xnor")
RESNET_DEPTHS = {"resnet8": 1, "resnet14": 2, "resnet20": 3, "resnet32": 5, "resnet44": 7}
MODELS = ("lenet5",) + tuple(RESNET_DEPTHS)
DEFAULT_MODELS = ("lenet5", "resnet14", "resnet20")
DATASETS = ("fashion-mnist", "cifar10")
RESULTS = os.path.join(HERE, "results", "binary")


def build(name, mode, classes, channels):
    """The model ``name`` in ``mode`` ("float" or a binary mode) and its input shape."""
    binary = None if mode == "float" else mode
    if name == "lenet5":
        model = models.lenet5(classes, in_channels=channels, binary=binary)
    else:
        model = models.resnet_cifar(RESNET_DEPTHS[name], classes, channels, binary=binary)
    return model, model.input_shape


def subset(dataset, limit):
    """The first ``limit`` images of ``dataset`` (all of them for None).  A limit below 1 is
    refused: slicing ``[:limit]`` with a negative one would keep almost every image."""
    if limit is not None and limit < 1:
        raise ValueError(f"subset: the limit must be at least 1, got {limit}")
    if limit is None or limit >= len(dataset):
        return dataset
    return Dataset(dataset.images[:limit], dataset.labels[:limit], dataset.classes,
                   dataset.name, dataset.split, dataset.mean, dataset.std, dataset.path)


def at_least_one(text):
    """argparse type of the --limit-* options: an integer >= 1 (see :func:`subset`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def loaders(args, dataset_name, train, test, input_shape):
    height, width = input_shape[1:]
    h, w = train.images.shape[2:]
    pad = (height, width) if (h, w) != (height, width) else None
    augment = dataset_name == "cifar10"
    common = dict(batch_size=args.batch_size, normalize=True, pad_to=pad, backend=args.backend)
    return (DataLoader(train, shuffle=True, seed=args.seed, random_crop=4 if augment else None,
                       hflip=augment, **common),
            DataLoader(test, **common))


def optimizer(args, model, lr):
    if args.optimizer == "adam":
        opt = optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    else:
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                        weight_decay=args.weight_decay)
    return opt, optim.CosineAnnealingLR(opt, args.epochs)


def load(args, name):
    """(train, test) of dataset ``name``, or None (with a note) when its files are missing."""
    try:
        train = load_dataset(name, args.data, "train", download=args.download)
        test = load_dataset(name, args.data, "test", download=args.download)
    except FileNotFoundError as error:
        print(f"skipping {name}: its files are not here ({str(error).splitlines()[0]}); "
              f"--data DIR or --download", file=sys.stderr)
        return None
    return subset(train, args.limit_train), subset(test, args.limit_test)


def run_one(args, dataset_name, data, model_name, mode, lr):
    train, test = data
    gm.seed(args.seed)
    model, input_shape = build(model_name, mode, len(train.classes), train.images.shape[1])
    model.to(args.backend)
    train_loader, test_loader = loaders(args, dataset_name, train, test, input_shape)
    opt, schedule = optimizer(args, model, lr)
    size = nn.summary(model, input_shape, quiet=True)
    label = f"{dataset_name} {model_name} {mode} lr {lr:g}"
    print(f"\n== {label}: {size.total_params:,} parameters, "
          f"{size.param_bits / 8 / 1024:.1f} KiB deployed", flush=True)
    out_dir = None
    if args.save_runs:
        out_dir = os.path.join(args.out, "runs", f"{model_name}-{mode}-{dataset_name}-lr{lr:g}")
    started = time.perf_counter()
    history = fit(model, opt, train_loader, test_loader, args.epochs, schedule, out_dir,
                  info={"model": f"{model_name}-{mode}", "dataset": dataset_name,
                        "backend": args.backend})
    return {"dataset": dataset_name, "model": model_name, "mode": mode, "lr": lr,
            "optimizer": args.optimizer, "weight_decay": args.weight_decay,
            "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
            "backend": args.backend, "train_images": len(train), "test_images": len(test),
            "parameters": size.total_params, "param_bits": size.param_bits,
            "test_top1": history[-1]["test_top1"],
            "best_test_top1": max(e["test_top1"] for e in history),
            "train_loss": history[-1]["train_loss"],
            "seconds": time.perf_counter() - started, "history": history}


def markdown(results):
    """The accuracy table (final test top-1 %, best epoch's in parentheses when higher) and
    the model sizes, in markdown."""
    modes = [m for m in MODES if any(r["mode"] == m for r in results)]
    cell = {(r["dataset"], r["model"], r["lr"], r["mode"]): r for r in results}
    keys = []
    for r in results:
        key = (r["dataset"], r["model"], r["lr"])
        if key not in keys:
            keys.append(key)
    lines = ["| dataset | model | lr | " + " | ".join(modes) + " |",
             "|---|---|---|" + "---|" * len(modes)]
    for dataset, model, lr in keys:
        cells = []
        for mode in modes:
            r = cell.get((dataset, model, lr, mode))
            if r is None:
                cells.append("not run")
                continue
            text = f"{100 * r['test_top1']:.2f}"
            if r["best_test_top1"] > r["test_top1"]:
                text += f" ({100 * r['best_test_top1']:.2f})"
            cells.append(text)
        lines.append(f"| {dataset} | {model} | {lr:g} | " + " | ".join(cells) + " |")
    sizes = {}
    for r in results:
        sizes.setdefault(r["model"], {})[r["mode"]] = r["param_bits"] / 8 / 1024
    lines += ["", "| model | " + " | ".join(f"{m} size (KiB)" for m in modes) + " |",
              "|---|" + "---|" * len(modes)]
    for model, by_mode in sizes.items():
        lines.append(f"| {model} | " + " | ".join(
            f"{by_mode[m]:.1f}" if m in by_mode else "" for m in modes) + " |")
    return "\n".join(lines)


def setting(run, report):
    """What the figures of ``run`` (one record of ``report``) depend on besides its model,
    learning rate and mode: only runs with the same setting are comparable in one table.

    Records written before runs stored their batch size, seed, weight decay and backend take
    them from their report's header, which has always held the command's arguments and the
    backend it ran on (those committed before then all say batch 64, seed 0, no weight decay:
    the argparse defaults, and backend cpu)."""
    arguments = report["arguments"]
    return (run["dataset"], run["epochs"], run["train_images"], run["test_images"],
            run.get("batch_size", arguments["batch_size"]), run["optimizer"],
            run.get("weight_decay", arguments["weight_decay"]),
            run.get("seed", arguments["seed"]), run.get("backend", report["backend"]))


def summarize(directory):
    """One markdown file of every experiment in ``directory``'s binary-*.json: a table per
    :func:`setting`, headed by everything its runs share, the runs of later files replacing
    earlier ones of the same model, learning rate and mode, each table under the commands
    that produced it.  Returns the text (also written to ``directory``/summary.md)."""
    settings = {}
    for path in sorted(glob.glob(os.path.join(directory, "binary-*.json"))):
        with open(path) as f:
            report = json.load(f)
        for run in report["runs"]:
            key = setting(run, report)
            entry = settings.setdefault(key, {"runs": {}, "commands": []})
            entry["runs"][(run["model"], run["lr"], run["mode"])] = run
            if report["command"] not in entry["commands"]:
                entry["commands"].append(report["command"])
    parts = ["# Float vs binary networks (gpumat.nn.binary)", "",
             "Test top-1 (%) after the last epoch (the best epoch's in parentheses where "
             "higher); every run with a cosine schedule, and the runs of a table share "
             "everything its heading says.  Written by "
             "`python bench/binary_experiments.py --summary` from the JSON files beside it.",
             ""]
    for key, entry in sorted(settings.items()):
        dataset, epochs, train_images, test_images, batch, opt, decay, seed, backend = key
        runs = sorted(entry["runs"].values(),
                      key=lambda r: (MODELS.index(r["model"]), -r["lr"], MODES.index(r["mode"])))
        decay_text = f"weight decay {decay:g}" if decay else "no weight decay"
        parts += [f"## {dataset}, {epochs} epochs, {train_images:,} training and "
                  f"{test_images:,} test images, batch {batch}, {opt}, {decay_text}, seed {seed}, "
                  f"backend {backend}", ""]
        parts += [f"    {command}" for command in entry["commands"]] + [""]
        parts += [markdown(runs), ""]
    text = "\n".join(parts)
    with open(os.path.join(directory, "summary.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS,
                        help="those whose files are missing are skipped (default: both)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS,
                        help="lenet5 and resnet<6n+2> = resnet_cifar(n) (default: lenet5 "
                             "resnet14 resnet20)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-2, 1e-3],
                        help="learning rates (default: 0.01 0.001)")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit-train", type=at_least_one, metavar="N",
                        help="use only the first N training images (quick runs)")
    parser.add_argument("--limit-test", type=at_least_one, metavar="N",
                        help="use only the first N test images")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpu", "opencl", "cuda"))
    parser.add_argument("--data", metavar="DIR", help="where the dataset files are")
    parser.add_argument("--download", action="store_true",
                        help="download missing dataset files (default: skip the dataset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=RESULTS, help=f"results directory (default {RESULTS})")
    parser.add_argument("--save-runs", action="store_true",
                        help="also keep each run's model, checkpoint and curves under "
                             "OUT/runs/")
    parser.add_argument("--summary", action="store_true",
                        help="train nothing: gather every experiment in OUT, an existing "
                             "directory, into OUT/summary.md")
    args = parser.parse_args(argv)
    if args.summary:
        # An error, not a new empty directory: a summary of nothing is a mistyped --out.
        if not os.path.isdir(args.out):
            parser.error(f"--out {args.out}: no such directory; --summary gathers the "
                         f"binary-*.json files already in it")
        print(summarize(args.out))
        return 0
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be at least 1")
    args.backend = gm.use(args.backend)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    path = os.path.join(args.out, f"binary-{stamp}.json")
    report = {"started": stamp, "backend": args.backend,
              "device": gm.backends()[args.backend]["device"], "host": platform.node(),
              "gpumat": gm.__version__, "command": " ".join(["python"] + sys.argv),
              "arguments": vars(args), "runs": []}
    for dataset_name in args.datasets:
        data = load(args, dataset_name)
        if data is None:
            continue
        for model_name in args.models:
            for lr in args.lrs:
                for mode in args.modes:
                    result = run_one(args, dataset_name, data, model_name, mode, lr)
                    report["runs"].append(result)
                    with open(path + ".tmp", "w") as f:
                        json.dump(report, f, indent=2)
                    os.replace(path + ".tmp", path)
    if not report["runs"]:
        print("nothing ran (no dataset found)", file=sys.stderr)
        return 1
    table = markdown(report["runs"])
    report["table"] = table
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    with open(path[:-len(".json")] + ".md", "w") as f:
        f.write(f"{report['command']}\n\n{table}\n")
    print(f"\nTest top-1 (%) after {args.epochs} epoch(s), {args.optimizer}, backend "
          f"{args.backend}" + (f", {args.limit_train} training images" if args.limit_train
                               else "") + ":\n")
    print(table)
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
