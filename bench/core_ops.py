"""Sushi2's Table 1 tasks on every available gpumat backend, side by side with NumPy.

    python bench/core_ops.py [--repeats 20] [--backends cpu,opencl]

Prints one table (median milliseconds and speed relative to NumPy measured in the same run)
and saves JSON under bench/results/.  Figures are never assertions; they are what this
machine measured.  The full kernel harness (SGEMM, convolution, pooling) comes with the
kernel issue.
"""
import argparse
import datetime
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import gpumat as gm  # noqa: E402

TASKS = {
    "add 1000x1000": (lambda a, b, c, d: a + b, lambda a, b, c, d: a + b),
    "log 1000x1000": (lambda a, b, c, d: gm.log(a), lambda a, b, c, d: np.log(a)),
    "1000x100 @ 100x10": (lambda a, b, c, d: c @ d, lambda a, b, c, d: c @ d),
    "1000x1000 @ 1000x1000": (lambda a, b, c, d: a @ b, lambda a, b, c, d: a @ b),
}


def median_seconds(fn, repeats, sync=lambda: None):
    fn()
    sync()                      # warm-up: kernel builds and pools are not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backends", default=None, help="comma list (default: all available)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    names = [n for n, info in gm.backends().items() if info["available"]]
    if args.backends:
        names = [n for n in args.backends.split(",") if n in names]
    rng = np.random.default_rng(0)
    host = (rng.random((1000, 1000), np.float32) + 0.5, rng.random((1000, 1000), np.float32),
            rng.random((1000, 100), np.float32), rng.random((100, 10), np.float32))
    rows = []
    for task, (ours, reference) in TASKS.items():
        numpy_s = median_seconds(lambda: reference(*host), args.repeats)
        rows.append({"task": task, "implementation": "numpy", "device": "host CPU",
                     "ms": numpy_s * 1e3, "speed_vs_numpy": 1.0})
        for name in names:
            backend = gm.backends.get(name)
            arrays = [gm.array(x, backend=name) for x in host]
            s = median_seconds(lambda: ours(*arrays), args.repeats, backend.synchronize)
            rows.append({"task": task, "implementation": f"gpumat-{name}", "device": backend.device,
                         "ms": s * 1e3, "speed_vs_numpy": numpy_s / s})
    print(f"{'task':24s} {'implementation':16s} {'ms':>10s} {'vs NumPy':>9s}")
    for r in rows:
        print(f"{r['task']:24s} {r['implementation']:16s} {r['ms']:10.3f} {r['speed_vs_numpy']:8.2f}x")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    record = {"benchmark": "core_ops", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "commit": commit, "host": platform.node(), "cpu": gm.backends.get("cpu").device,
              "numpy": np.__version__, "repeats": args.repeats, "rows": rows}
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"core_ops-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
