"""Command line:

    python -m gpumat train MODEL --dataset fashion-mnist ...   train a network (gpumat/nn/cli.py)
    python -m gpumat demo                                      check gpumat's kernels vs NumPy
    python -m gpumat info                                      backends and devices
"""
import argparse
import sys
import time

import numpy as np


def _info(args):
    import gpumat as gm
    for name, info in gm.backends().items():
        state = info["device"] if info["available"] else f"unavailable: {info['reason']}"
        print(f"{name:7s} {state}")
    print(f"default: {gm.default_backend()}")
    print(f"BLAS threads: {gm._openblas.describe()}")
    return 0


def _demo(args):
    import gpumat as gm
    if args.backend != "auto":
        gm.use(args.backend)
    print("gpumat", gm.__version__)
    _info(args)
    backend = gm.default_backend()
    n = args.size
    gm.seed(42)
    print(f"\nrunning on backend '{backend}' ({n}x{n} single; warm times, gather included):")
    results = []

    def step(label, fn, reference):
        gm.seed(42)
        fn()                            # the first call builds (or loads) the kernels
        gm.seed(42)
        start = time.perf_counter()
        out = fn()
        host = out.gather() if isinstance(out, gm.Array) else out
        seconds = time.perf_counter() - start
        ref = reference()
        err = float(np.max(np.abs(np.asarray(host, np.float64) - ref))) if np.size(ref) else 0.0
        scale = float(np.max(np.abs(ref))) if np.size(ref) else 1.0
        where = out.backend if isinstance(out, gm.Array) else backend
        ok = err <= 1e-4 * max(scale, 1.0)
        results.append(ok)
        print(f"  {label:38s} on {where:6s} {seconds * 1e3:8.2f} ms   max |err| vs NumPy "
              f"{err:.2e}  {'ok' if ok else 'MISMATCH'}")
        return out

    host = gm.rand(n, n, backend="cpu").gather()
    gm.seed(42)
    A = step("rand(n, n) = the cpu generator's numbers", lambda: gm.rand(n, n),
             lambda: host.astype(np.float64))
    B = gm.randn(n, n)
    a, b = A.gather().astype(np.float64), B.gather().astype(np.float64)
    step("exp(A) * B + 1 (elementwise)", lambda: gm.exp(A) * B + 1, lambda: np.exp(a) * b + 1)
    step("sigmoid(B + A[0]) (broadcasting)", lambda: gm.sigmoid(B + A[0]),
         lambda: 1 / (1 + np.exp(-(b + a[0]))))
    step("A @ B (GEMM)", lambda: A @ B, lambda: a @ b)
    step("sum(A, axis=0) (reduction)", lambda: gm.sum(A, axis=0), lambda: a.sum(0))
    step("argmax(B, axis=1)", lambda: gm.argmax(B, axis=1), lambda: np.argmax(b, 1))
    step("sort(B[:, 0])", lambda: gm.sort(B[:, 0]), lambda: np.sort(b[:, 0]))
    step("B[B > 1] (logical mask)", lambda: B[B > 1], lambda: b[b > 1])
    step("repmat(A[0:2, :], 3, 1)", lambda: gm.repmat(A[0:2, :], 3, 1), lambda: np.tile(a[0:2], (3, 1)))
    step("pack_signs(B) (bit packing)", lambda: gm.pack_signs(B).astype("double"),
         lambda: _pack_reference(B.gather()).astype(np.float64))
    print("\nmemory in use: " + ", ".join(f"{k}: {v['bytes_in_use']:,} B"
                                           for k, v in gm.memory_info().items()))
    if not all(results):
        print("some results did not match NumPy", file=sys.stderr)
        return 1
    print("all results match NumPy")
    return 0


def _pack_reference(x):
    n = x.shape[-1]
    words = (n + 31) // 32
    bits = np.zeros(x.shape[:-1] + (words * 32,), np.uint64)
    bits[..., :n] = x >= 0
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    return (bits.reshape(x.shape[:-1] + (words, 32)) * weights).sum(-1).astype(np.uint32)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpumat")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run gpumat's kernels on the best backend and check them")
    demo.add_argument("--backend", default="auto", choices=["auto", "cuda", "opencl", "cpu"])
    demo.add_argument("--size", type=int, default=512)
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="list backends and devices")
    info.set_defaults(func=_info)
    from .nn import cli as train_cli
    train = sub.add_parser("train", help="train a CNN on MNIST, Fashion-MNIST or CIFAR-10",
                           description=train_cli.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train_cli.add_arguments(train)
    train.set_defaults(func=lambda a: _train(a, train))
    args = parser.parse_args(argv)
    return args.func(args)


def _train(args, parser):
    from .errors import GpumatError
    from .nn import cli as train_cli
    from .nn.train import TrainingDiverged, TrainingInterrupted
    try:
        return train_cli.run(args, parser)
    except TrainingInterrupted:
        return 130
    except (GpumatError, FileNotFoundError, TrainingDiverged) as exc:   # no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
