"""Where the time goes when a binary network runs inference: each layer of a model in eval
mode, float against its XNOR-Net twin (gpumat.nn.models, ``binary="xnor"``), on one backend.

    python bench/binary_profile.py                              # LeNet-5 b256 and ResNet-20 b32
    python bench/binary_profile.py --models resnet20 --batch 128 --backend opencl

Every leaf module's forward is timed on its own (the backend synchronised after each, the
minimum over ``--rounds`` passes), summed per kind of layer: the float layers a binary network
keeps (the first convolution and its batch norm, the last linear layer), the layers that
binarization replaces (convolution / linear -> the XNOR kernels with their fused scaling),
the batch norms XNOR-Net adds before each binary layer, and the rest (activations, pooling,
the residual additions in "other", which is the whole pass minus its timed leaves).  The
whole-pass time is measured separately, without the per-layer synchronisation.

It prints one table per model and writes them, with the raw figures, to
``bench/results/binary/profile-<date>-<backend>.{json,md}``.  Benchmarks assert nothing.
"""
import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # run from a checkout without installing

import gpumat as gm    # noqa: E402  (before NumPy: OpenBLAS's threads, gpumat/_openblas.py)
import numpy as np                                  # noqa: E402
from gpumat import nn                               # noqa: E402
from gpumat.nn import models                        # noqa: E402

RESULTS = os.path.join(HERE, "results", "binary")
MODELS = {"lenet5": (lambda binary: models.lenet5(binary=binary), 256),
          "resnet20": (lambda binary: models.resnet_cifar(3, 10, 1, binary=binary), 32)}


def kind(name, module, first_conv, last_linear):
    """The row a leaf module's time is added to."""
    cls = type(module).__name__
    if cls in ("BinaryConv2d", "BinaryLinear"):
        return f"binary layers ({cls})"
    if name in (first_conv, last_linear):
        return f"float first conv / last linear ({cls})"
    if cls in ("Conv2d", "Linear"):
        return f"conv / linear ({cls})"
    if cls.startswith("BatchNorm"):
        return "batch norm"
    return "activations, pooling, flatten"


def profile(model, x, sync, rounds):
    """(seconds per row kind, whole-pass seconds): minimum over ``rounds`` passes."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not m._modules]
    convs = [n for n, m in leaves if type(m).__name__ in ("Conv2d", "BinaryConv2d")]
    linears = [n for n, m in leaves if type(m).__name__ in ("Linear", "BinaryLinear")]
    rows = {n: kind(n, m, convs[0], linears[-1]) for n, m in leaves}
    best = {}
    originals = {}
    for name, module in leaves:
        originals[name] = module.forward

        def timed(*args, _name=name, _forward=module.forward, **kwargs):
            start = time.perf_counter()
            out = _forward(*args, **kwargs)
            sync()
            best[_name] = min(best.get(_name, float("inf")), time.perf_counter() - start)
            return out
        object.__setattr__(module, "forward", timed)
    try:
        with nn.no_grad():
            for _ in range(rounds):
                model(x)
                sync()
    finally:
        for name, module in leaves:
            object.__delattr__(module, "forward")
    whole = float("inf")
    with nn.no_grad():
        for _ in range(rounds):
            start = time.perf_counter()
            model(x)
            sync()
            whole = min(whole, time.perf_counter() - start)
    by_kind = {}
    for name, seconds in best.items():
        by_kind[rows[name]] = by_kind.get(rows[name], 0.0) + seconds
    by_kind["other (residual additions, Python between layers)"] = max(
        0.0, whole - sum(best.values()))
    return by_kind, whole


def table(name, batch, results):
    kinds = []
    for by_kind, _ in results.values():
        kinds += [k for k in by_kind if k not in kinds]
    (f_kinds, f_whole), (b_kinds, b_whole) = results["float"], results["xnor"]
    lines = [f"{name}, batch {batch}: float {1e3 * f_whole:.2f} ms, xnor {1e3 * b_whole:.2f} ms "
             f"per batch -> xnor is {f_whole / b_whole:.2f}x the float speed", "",
             "| layers | float (us) | share | xnor (us) | share |", "|---|---|---|---|---|"]
    # shares are of the rows' sum: the leaves timed one by one, each followed by a
    # synchronisation, plus "other"
    f_total, b_total = sum(f_kinds.values()), sum(b_kinds.values())

    def cell(seconds, total):
        return "- | -" if seconds is None else f"{1e6 * seconds:.0f} | {100 * seconds / total:.0f}%"
    for k in kinds:
        lines.append(f"| {k} | {cell(f_kinds.get(k), f_total)} | "
                     f"{cell(b_kinds.get(k), b_total)} |")
    lines += ["", "(In the xnor model a BatchNorm feeding a binary layer, and a residual "
                  "block's addition after a binary convolution, run inside that layer's call in "
                  "inference -- BinaryConv2d(x, batch_norm=bn, residual=r), "
                  "BinaryLinear(x, batch_norm=bn) -- so they are timed with the binary layers; "
                  "the float model runs them on their own.)"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, help="batch size (default: 256 LeNet, 32 ResNet)")
    parser.add_argument("--backend", default="cpu", choices=("auto", "cpu", "opencl", "cuda"))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    backend = gm.use(args.backend)
    sync = gm.backends.get(backend).synchronize
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    report = {"started": stamp, "backend": backend, "device": gm.backends()[backend]["device"],
              "host": platform.node(), "gpumat": gm.__version__,
              "command": " ".join(["python"] + sys.argv), "models": {}}
    texts = []
    for name in args.models:
        build, default_batch = MODELS[name]
        batch = args.batch or default_batch
        x = gm.array(np.random.default_rng(0).standard_normal((batch, 1, 32, 32))
                     .astype(np.float32), backend=backend)
        results = {}
        for mode in ("float", "xnor"):
            gm.seed(0)
            model = build(None if mode == "float" else mode).to(backend).eval()
            results[mode] = profile(model, x, sync, args.rounds)
        text = table(name, batch, results)
        print(text + "\n", flush=True)
        texts.append(text)
        report["models"][name] = {"batch": batch, **{
            mode: {"whole_s": whole, "by_kind_s": by_kind}
            for mode, (by_kind, whole) in results.items()}}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"profile-{stamp}-{backend}")  # (two backends' runs of
                                                                  # one second stay apart)
    with open(path + ".json", "w") as f:
        json.dump(report, f, indent=2)
    with open(path + ".md", "w") as f:
        f.write(f"{report['command']}  (backend {backend}: {report['device']})\n\n"
                + "\n\n".join(texts) + "\n")
    print(f"saved {path}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
