"""``python -m gpumat train``: train a zoo model or a JSON network definition on MNIST,
Fashion-MNIST or CIFAR-10 on the best backend (or the one named), from the command line.

    python -m gpumat train lenet5 --dataset fashion-mnist --epochs 10 --out runs/lenet5
    python -m gpumat train --netdef my_net.json --dataset mnist --optimizer adam --lr 1e-3
    python -m gpumat train lenet5 --dataset fashion-mnist --out runs/lenet5 \\
        --resume runs/lenet5/checkpoint.npz --epochs 20
    python -m gpumat train resnet20 --binary xnor --dataset cifar10     # binarized variant

``--binary MODE`` ("bwn", "dorefa" or "xnor"; see gpumat.nn.binary) trains the binarized
variant of LeNet-5, lenet_tf or a CIFAR ResNet (every layer binary but the first
convolution and the last linear layer); the run is named ``<model>-<mode>``.  A ``--netdef``
file names its binary layers itself (``binary_conv2d``, ``binary_linear``; the shipped
``lenet5_xnor.json`` is LeNet-5's XNOR-Net).  Resuming checks that the model is the one
the checkpoint was written by, binary mode included.  A resumed run continues with the
checkpoint's learning rate and seed unless ``--lr`` or ``--seed`` is given: ``--lr`` becomes the
schedule's base from the step the checkpoint reached (e.g. lower after a divergence), and a
``--seed`` other than the checkpoint's draws the remaining epochs' shuffles, augmentation and
dropout from it (the same seed continues exactly as the uninterrupted run would have).

Images are scaled to [0, 1] and normalised with the dataset's mean and std, and zero-padded
to the model's input size (28 x 28 digits become 32 x 32 for LeNet-5 and the CIFAR ResNets).
CIFAR-10 trains with random 4-pixel crops and horizontal flips unless ``--no-augment``
(``--augment`` turns them on for the others, with 2-pixel crops for 28 x 28 images).
"""
import argparse
import math
import os
import platform
import sys
import time

import gpumat as gm

from . import models, netdef, optim
from .binary import MODES as BINARY_MODES
from .data import DataLoader, load_dataset
from .train import MODEL, fit

DATASETS = ("fashion-mnist", "mnist", "cifar10")
DEFAULT_LR = {"sgd": 0.02, "adam": 1e-3}


def add_arguments(parser):
    parser.add_argument("model", nargs="?", help="a zoo model: " + ", ".join(models.names()))
    parser.add_argument("--netdef", metavar="FILE",
                        help="a JSON network definition to train instead of a zoo model")
    parser.add_argument("--binary", choices=BINARY_MODES, default=None, metavar="MODE",
                        help="train the binarized variant: bwn (binary weights), dorefa "
                             "(binary weights, one scale), xnor (binary weights and "
                             "activations); for " + ", ".join(models.binary_names()))
    parser.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    parser.add_argument("--data", metavar="DIR",
                        help="where the dataset files are (default: $GPUMAT_DATA, the user "
                             "cache, Debian's /usr/share/datasets; downloaded if missing)")
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading missing dataset files")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float,
                        help="learning rate (default: sgd 0.02, adam 1e-3; with --resume, the "
                             "checkpoint's)")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--schedule", default="cosine", choices=("cosine", "step", "none"),
                        help="per-epoch learning-rate schedule (step: x0.1 every third of "
                             "the epochs)")
    parser.add_argument("--warmup", type=int, default=0, help="epochs of linear warm-up")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    augment = parser.add_mutually_exclusive_group()
    augment.add_argument("--augment", dest="augment", action="store_true", default=None,
                         help="random crops (4 pixels of padding; 2 for 28 x 28 images) and "
                              "horizontal flips while training (the default for CIFAR-10)")
    augment.add_argument("--no-augment", dest="augment", action="store_false",
                         help="no random crops and flips")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpu", "opencl", "cuda"))
    parser.add_argument("--seed", type=int,
                        help="seed of the weights, shuffles, augmentation and dropout (default: "
                             "0; with --resume, the checkpoint's)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where metrics.json, model.npz, checkpoint.npz and curves.png go "
                             "(default: runs/<model>-<dataset>)")
    parser.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint.npz")
    parser.add_argument("--limit-train", type=int, metavar="N",
                        help="use only the first N training images (quick runs)")
    parser.add_argument("--limit-test", type=int, metavar="N",
                        help="use only the first N test images")


def _check(args, parser):
    if (args.model is None) == (args.netdef is None):
        parser.error("name a zoo model or give --netdef FILE (exactly one)")
    if args.model is not None and args.model not in models.names():
        parser.error(f"unknown model {args.model!r}; choose from {', '.join(models.names())}")
    binary = getattr(args, "binary", None)
    if binary is not None:
        if args.netdef is not None:
            parser.error("--binary selects a zoo model's binarized variant; a --netdef file "
                         "names its binary layers itself (types binary_conv2d and binary_linear, "
                         "e.g. gpumat/nn/netdefs/lenet5_xnor.json)")
        if args.model not in models.binary_names():
            parser.error(f"--binary: {args.model!r} has no binarized variant; choose from "
                         f"{', '.join(models.binary_names())}")
    for name in ("epochs", "batch_size", "limit_train", "limit_test"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("warmup", "seed"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name} must be at least 0, got {value}")
    # the optimizer would refuse these only after the data loaded, and NaN not at all
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be positive and finite, got {args.lr}")
    for name in ("momentum", "weight_decay"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"--{name.replace('_', '-')} must be finite and at least 0, "
                         f"got {value}")
    if not 0 <= args.label_smoothing <= 1:
        parser.error(f"--label-smoothing must be in [0, 1], got {args.label_smoothing}")


def _check_out(out, parser):
    """``--out`` (or the default run directory) must be creatable: a regular file at it or
    above it would fail only after the data loaded and the model was built."""
    existing = out
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not os.path.isdir(existing):
        where = "" if existing == out else f": {existing}"
        parser.error(f"--out {out}{where} is a file, not a directory")


def _check_images(args, train, test):
    """Refuse images with no pixels, and test images of another size than the training ones:
    the padding and the model's input check are derived from the training split, so a
    different test split would fail only after a whole epoch, with nothing saved."""
    for data in (train, test):
        if 0 in data.images.shape[1:]:
            raise SystemExit(f"error: the {args.dataset} {data.split} images in {data.path} "
                             f"are {_size(data)}: there is nothing to train on")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise SystemExit(f"error: the {args.dataset} training images are {_size(train)} but its "
                         f"test images are {_size(test)} ({train.path}, {test.path}); both "
                         f"splits must have one size")


def _size(dataset):
    channels, height, width = dataset.images.shape[1:]
    return f"{height}x{width}" + ("" if channels == 1 else f" with {channels} channels")


def _build_model(args, dataset):
    """The model and the (channels, height, width) it takes."""
    channels = dataset.images.shape[1]
    if args.netdef is not None:
        model = netdef.load(args.netdef)
        shape = tuple(model.input_shape)
        if shape[0] != channels:
            raise SystemExit(f"error: {args.netdef} takes {shape[0]}-channel input but "
                             f"{args.dataset} images have {channels}")
        return model, shape
    entry = models.spec(args.model)
    model = models.get(args.model, num_classes=len(dataset.classes), in_channels=channels,
                       binary=getattr(args, "binary", None))
    return model, (channels,) + tuple(entry.input_size)


def _loaders(args, train, test, input_shape):
    height, width = input_shape[1:]
    h, w = train.images.shape[2:]
    if (h, w) != (height, width) and (h > height or w > width):
        raise SystemExit(f"error: the model takes {height}x{width} images but {args.dataset} "
                         f"has {h}x{w}")
    pad = (height, width) if (h, w) != (height, width) else None
    augment = args.dataset == "cifar10" if args.augment is None else args.augment
    crop = (4 if h >= 32 else 2) if augment else None
    common = dict(batch_size=args.batch_size, normalize=True, pad_to=pad, backend=args.backend)
    train_loader = DataLoader(train, shuffle=True, drop_last=False, seed=args.seed or 0,
                              random_crop=crop, hflip=augment, **common)
    test_loader = DataLoader(test, **common)
    return train_loader, test_loader


def _subset(dataset, limit):
    if limit is None or limit >= len(dataset):
        return dataset
    from .data import Dataset
    return Dataset(dataset.images[:limit], dataset.labels[:limit], dataset.classes,
                   dataset.name, dataset.split, dataset.mean, dataset.std, dataset.path)


def _optimizer(args, model, epochs):
    # when resuming without --lr, the checkpoint's lr replaces this default
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if args.optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=lr, momentum=args.momentum,
                        weight_decay=args.weight_decay, nesterov=args.momentum > 0)
    else:
        opt = optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    after = None
    span = max(epochs - args.warmup, 1)
    if args.schedule == "cosine":
        after = optim.CosineAnnealingLR(opt, span)
    elif args.schedule == "step":
        after = optim.StepLR(opt, max(span // 3, 1), 0.1)
    if args.warmup:
        return opt, optim.WarmupLR(opt, args.warmup, after)
    return opt, after


def _command_line():
    """How this run was started, as a user would type it again."""
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) == "__main__.py":
        argv[0:1] = ["python", "-m", "gpumat"]
    elif argv and os.path.basename(argv[0]) == "cli.py":
        argv[0:1] = ["python", "-m", "gpumat.nn.cli"]
    return " ".join(argv)


def run(args, parser=None):
    parser = parser or argparse.ArgumentParser()
    _check(args, parser)
    name = args.model or os.path.splitext(os.path.basename(args.netdef))[0]
    if getattr(args, "binary", None):
        name = f"{name}-{args.binary}"
    out = args.out or os.path.join("runs", f"{name}-{args.dataset}")
    _check_out(out, parser)
    backend = gm.use(args.backend)
    args.backend = backend
    if args.resume is None:     # resuming, an lr or seed not given stays None: the checkpoint's
        args.lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
        args.seed = args.seed or 0
    gm.seed(args.seed or 0)
    download = not args.no_download
    train = _subset(load_dataset(args.dataset, args.data, "train", download), args.limit_train)
    test = _subset(load_dataset(args.dataset, args.data, "test", download), args.limit_test)
    _check_images(args, train, test)
    model, input_shape = _build_model(args, train)
    model.to(backend)
    train_loader, test_loader = _loaders(args, train, test, input_shape)
    optimizer, scheduler = _optimizer(args, model, args.epochs)
    device = gm.backends()[backend]["device"]
    params = sum(p.size for p in model.parameters())
    print(f"gpumat {gm.__version__}: training {name} ({params:,} parameters) on "
          f"{args.dataset} ({len(train):,} train / {len(test):,} test images, input "
          f"{'x'.join(map(str, input_shape))}) on backend {backend!r}: {device}")
    if args.resume is None:
        lr = f"lr {optimizer.param_groups[0]['lr']:g}"
    else:
        lr = "the checkpoint's lr" if args.lr is None else f"base lr {args.lr:g}"
    print(f"{args.optimizer} {lr}, batch {args.batch_size}, {args.epochs} epochs, schedule "
          f"{args.schedule}; writing to {out}/")
    info = {"model": name, "dataset": args.dataset, "backend": backend, "device": device,
            "parameters": params, "gpumat": gm.__version__, "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": _command_line(),
            "arguments": {k: v for k, v in vars(args).items() if k != "func"}}
    replace = {"lr": args.lr, "seed": args.seed} if args.resume is not None else {}
    history = fit(model, optimizer, train_loader, test_loader, args.epochs, scheduler, out,
                  resume=args.resume, label_smoothing=args.label_smoothing, info=info, **replace)
    if history:
        best = max(e["test_top1"] for e in history)
        model_file = os.path.join(out, MODEL)
        size = (f" ({os.path.getsize(model_file) / 1024:,.1f} KiB)"
                if os.path.exists(model_file) else "")
        print(f"done: final test top-1 {100 * history[-1]['test_top1']:.2f}% (best "
              f"{100 * best:.2f}%); metrics, model{size} and curves in {out}/")
    return 0


if __name__ == "__main__":      # python -m gpumat.nn.cli ... is python -m gpumat train ...
    from gpumat.__main__ import main
    sys.exit(main(["train"] + sys.argv[1:]))
