"""Run gpumat's benchmark suites with pytest-benchmark, then tabulate, save and plot them.

    python bench/run.py [--full] [--backends cpu,opencl] [--suite sgemm,conv,pool,act,sushi2,train,binary]
                        [--out bench/results] [--stat min|median] [-- extra pytest arguments]
    python bench/run.py --report bench/results/bench-quick-<date>.json   (tables + PNGs again)

Suites (files bench/bench_<suite>.py, which the test suite never collects):
  sgemm   square SGEMM and the GEMMs of LeNet-5 / AlexNet / VGG16 / ResNet-20 layers
          vs NumPy's BLAS, CLBlast (same OpenCL device) and cuBLAS (CuPy, TF32 off)
  conv    conv2d forward, backward-input, backward-weight on those layers vs PyTorch (CPU, cuDNN)
  pool    max and avg pooling, forward and backward, on those layers vs PyTorch
  act     relu (+ backward), bias_relu and softmax on conv outputs vs PyTorch and NumPy
  sushi2  the four tasks of the Sushi2 paper's Table 1 vs NumPy
  train   LeNet-5 and ResNet-20 training steps (gpumat.nn) vs PyTorch, in kimages/s
  binary  XNOR-popcount conv (gm.xnor_conv2d) vs float conv2d on the same backend and layers,
          and binary vs float networks in eval mode

Prints one table per suite: GFLOP/s or GB/s from the best time of each benchmark's rounds
(--stat median for the median), and the ratio of each gpumat backend to each peer measured in
this same run.  Saves the rows (min, median, mean, stddev, rounds) with device names, git
commit and date as JSON under --out, and draws one PNG per suite there.  The quick preset
takes a few minutes on a 2-core machine; --full runs every layer and squares up to 4096.
Exit status is pytest's: 0 when every benchmark ran (or was skipped with a reason).
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (HERE, ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

SUITES = {
    # suite: (file, gpumat functions it needs; the suite is skipped with a note without them)
    "sgemm": ("bench_sgemm.py", []),            # gm.gemm when present, else A @ B
    "conv": ("bench_conv.py", ["conv2d"]),
    "pool": ("bench_pool.py", ["max_pool2d", "avg_pool2d"]),
    "act": ("bench_act.py", ["relu"]),
    "sushi2": ("bench_sushi2.py", []),
    "train": ("bench_train.py", []),           # gpumat.nn training steps vs PyTorch
    "binary": ("bench_binary.py", ["xnor_conv2d"]),   # XNOR conv vs float conv, same backend
}


class _Outcomes:
    """pytest plugin: remembers every skipped or failed benchmark and why."""

    def __init__(self):
        self.skipped, self.failed = [], []

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.skipped.append((report.nodeid, reason))
        elif report.failed:
            self.failed.append(report.nodeid)


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:                     # noqa: BLE001
        return None


def _rows(raw, stat="min"):
    """One row per benchmark: what was timed, on what, and its rate from the ``stat`` time."""
    rows = []
    for bench in raw.get("benchmarks", []):
        info, stats = bench["extra_info"], bench["stats"]
        if "suite" not in info:
            continue
        row = dict(info)
        row.update(median_s=stats["median"], min_s=stats["min"], mean_s=stats["mean"],
                   stddev_s=stats["stddev"], rounds=stats["rounds"], test=bench["fullname"])
        row["rate"] = info["work"] / stats[stat] / 1e9
        row["rate_from"] = stat
        rows.append(row)
    # ratios against every peer timed on the same case in this same run
    by_case = {}
    for row in rows:
        by_case.setdefault((row["suite"], row["case"]), []).append(row)
    for group in by_case.values():
        peers = {r["implementation"]: r["rate"] for r in group if r["role"] == "peer"}
        for row in group:
            row["ratio_to"] = {peer: row["rate"] / rate for peer, rate in peers.items()
                               if peer != row["implementation"]}
    return rows


def _short(implementation):
    return implementation.replace("gpumat-", "")


def _table(suite, rows):
    """The suite's rows as text: one line per case, a rate column per implementation, then
    one ratio column per (gpumat backend, peer) pair."""
    cases, impls = [], []
    for row in rows:
        if row["case"] not in cases:
            cases.append(row["case"])
        if row["implementation"] not in impls:
            impls.append(row["implementation"])
    impls.sort(key=lambda name: (not name.startswith("gpumat-"), 0))
    gpumat = [i for i in impls if i.startswith("gpumat-")]
    peers = [i for i in impls if not i.startswith("gpumat-")]
    # a peer tied to one backend (the binary suite's float- and packed-<backend>) is
    # compared with that backend only
    own = ("float-", "packed-")
    pairs = [(g, p) for g in gpumat for p in peers
             if not p.startswith(own) or p.split("-", 1)[1] == _short(g)]
    cell = {(r["case"], r["implementation"]): r for r in rows}
    case_width = max(len(c) for c in cases) + 1
    rate_width = [max(9, len(i) + 1) for i in impls]
    ratio_names = [f"{_short(g)}/{p}" for g, p in pairs]
    ratio_width = [max(8, len(n) + 1) for n in ratio_names]
    header = f"{'case':<{case_width}}{'unit':<9}" + "".join(
        f"{i:>{w}}" for i, w in zip(impls, rate_width)) + "".join(
        f"{n:>{w}}" for n, w in zip(ratio_names, ratio_width))
    lines = [header, "-" * len(header)]
    for case in cases:
        unit = next(r["unit"] for r in rows if r["case"] == case)
        line = f"{case:<{case_width}}{unit:<9}"
        for impl, w in zip(impls, rate_width):
            row = cell.get((case, impl))
            line += f"{row['rate']:>{w}.2f}" if row else f"{'-':>{w}}"
        for (g, p), w in zip(pairs, ratio_width):
            row = cell.get((case, g))
            ratio = row["ratio_to"].get(p) if row else None
            line += f"{ratio:>{w - 1}.2f}x" if ratio is not None else f"{'-':>{w}}"
        lines.append(line)
    return "\n".join(lines)


def _plot(suite, rows, path, title, stat, devices):
    """One PNG per suite: rate vs size (or vs layer), one line per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    panels = []
    for row in rows:
        if row["panel"] not in panels:
            panels.append(row["panel"])
    impls = sorted({r["implementation"] for r in rows},
                   key=lambda name: (not name.startswith("gpumat-"), name))
    widths = [1.0 if all(isinstance(r["x"], (int, float)) for r in rows if r["panel"] == p)
              else max(0.8, 0.2 * len({r["x"] for r in rows if r["panel"] == p}))
              for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 4.2 * sum(widths)), 5.6),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    # one colour and marker per implementation, the same in every suite's plot
    style = {"gpumat-cpu": ("C0", "o"), "gpumat-opencl": ("C1", "s"), "gpumat-cuda": ("C4", "P"),
             "numpy": ("C2", "^"), "torch-cpu": ("C3", "D"), "clblast": ("C9", "v"),
             "cublas": ("C5", "X"), "torch-cuda": ("C6", "*")}
    for ax, panel in zip(axes[0], panels):
        panel_rows = [r for r in rows if r["panel"] == panel]
        numeric = all(isinstance(r["x"], (int, float)) for r in panel_rows)
        labels = []             # categorical x: the case labels in run order
        for r in panel_rows:
            if not numeric and r["x"] not in labels:
                labels.append(r["x"])
        for impl in impls:
            color, marker = style.get(impl, (None, "o"))
            points = [r for r in panel_rows if r["implementation"] == impl]
            if not points:
                continue
            if numeric:
                points.sort(key=lambda r: r["x"])
                xs = [r["x"] for r in points]
            else:
                xs = [labels.index(r["x"]) for r in points]
                order = sorted(range(len(xs)), key=xs.__getitem__)
                xs, points = [xs[i] for i in order], [points[i] for i in order]
            ax.plot(xs, [r["rate"] for r in points], marker=marker, color=color, label=impl,
                    markersize=5,
                    linewidth=1.4 if impl.startswith("gpumat-") else 1.0,
                    linestyle="-" if impl.startswith("gpumat-") else "--")
        units = sorted({r["unit"] for r in panel_rows})
        ax.set_ylabel(" / ".join(units) + f" (from the {stat} time)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        low, high = ax.get_ylim()
        few_decades = math.log10(high / low) < 1.5     # then label 2, 3, 5 x 10^k too

        def minor_label(value, _, few_decades=few_decades):
            mantissa = round(value / 10 ** math.floor(math.log10(value)))
            return f"{value:g}" if few_decades and mantissa in (2, 3, 5) else ""
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(minor_label))
        if numeric:
            ax.set_xscale("log", base=2)
            ticks = sorted({r["x"] for r in panel_rows})
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(t) for t in ticks])
            xlabels = {"sgemm": "matrix size n (n x n x n)", "train": "batch"}
            ax.set_xlabel(xlabels.get(suite, "size"))
        else:
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles),
               fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.96))
    fig.text(0.01, 0.005, "\n".join(f"{k}: {v}" for k, v in devices.items()), fontsize=6.5,
             va="bottom", family="monospace")
    fig.tight_layout(rect=(0, 0.03 + 0.018 * len(devices), 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every layer, squares up to 4096")
    parser.add_argument("--backends", default=None,
                        help="comma list of gpumat backends (default: every available one)")
    parser.add_argument("--suite", default=",".join(SUITES),
                        help=f"comma list of suites (default: {','.join(SUITES)})")
    parser.add_argument("--out", default=str(HERE / "results"), help="where JSON and PNGs go")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="which time the rates come from (default min: on a shared machine "
                             "the median picks up other processes' load; the JSON keeps both)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    parser.add_argument("--report", metavar="JSON", default=None,
                        help="run nothing: print the tables of a saved result and redraw its PNGs")
    args = parser.parse_args(argv)
    if args.report:
        record = json.loads(pathlib.Path(args.report).read_text())
        if record.get("rate_from") != args.stat:
            record["rows"], record["rate_from"] = _rerate(record, args.stat), args.stat
        stem = pathlib.Path(args.report).stem
        prefix = f"bench-{record['preset']}-"
        stamp = stem[len(prefix):] if stem.startswith(prefix) else stem
        out = pathlib.Path(args.out) if "--out" in argv else pathlib.Path(args.report).parent
        out.mkdir(parents=True, exist_ok=True)
        return _report(record, out, stamp, plot=not args.no_plot, status=0)

    preset = "full" if args.full else "quick"
    os.environ["GPUMAT_BENCH_PRESET"] = preset
    os.environ["CUPY_TF32"] = "0"            # cuBLAS without TF32, before CuPy loads
    if args.backends:
        os.environ["GPUMAT_BENCH_BACKENDS"] = args.backends
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")

    import gpumat as gm
    import harness

    notes, files = [], []
    for suite in suites:
        filename, needs = SUITES[suite]
        missing = [f for f in needs if not hasattr(gm, f)]
        if missing:
            notes.append(f"suite {suite} skipped: gpumat has no {', '.join(missing)} (yet)")
            continue
        if suite == "sgemm" and not hasattr(gm, "gemm"):
            notes.append("sgemm: gpumat has no gm.gemm (yet); its rows time A @ B instead")
        files.append(str(HERE / filename))
        for impl in harness.implementations(suite):   # fills harness.notes() for absent peers
            pass
    backends = harness.gpumat_backends()
    if args.backends:
        absent = [b for b in args.backends.split(",") if b not in backends]
        if absent:
            notes.append(f"backend(s) {', '.join(absent)} unavailable: "
                         + "; ".join(f"{b}: {gm.backends().get(b, {}).get('reason')}"
                                     for b in absent))
    notes += harness.notes()
    for note in notes:
        print(f"note: {note}")
    if not files:
        print("nothing to run")
        return 0

    import pytest
    outcomes = _Outcomes()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = pathlib.Path(tmp) / "raw.json"
        pytest_args = files + ["-q", "-rs", "-p", "no:cacheprovider",
                               "-o", "python_files=bench_*.py",
                               "--rootdir", str(ROOT), "--benchmark-quiet",
                               f"--benchmark-json={raw_path}"] + extra
        print(f"pytest {' '.join(pytest_args)}", flush=True)
        status = int(pytest.main(pytest_args, plugins=[outcomes]))
        raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}

    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = _rows(raw, args.stat)
    now = datetime.datetime.now(datetime.timezone.utc)
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    devices = {f"gpumat-{b}": gm.backends.get(b).device for b in backends}
    for row in rows:
        devices.setdefault(row["implementation"], row["device"])
    record = {
        "date": now.isoformat(timespec="seconds"), "commit": commit, "dirty": dirty,
        "preset": preset, "suites": suites, "rate_from": args.stat,
        "blas_threads": gm._openblas.describe(),
        "command": " ".join(["python bench/run.py"] + argv + (["--"] + extra if extra else [])),
        "host": platform.node(), "python": platform.python_version(), "threads": harness.THREADS,
        "load_average_before": load_before, "load_average_after": load_after,
        "versions": {m: _version(m) for m in ("numpy", "torch", "pyopencl", "pyclblast", "cupy",
                                               "pytest_benchmark")},
        "devices": devices, "notes": notes,
        "skipped": [{"test": t, "reason": r} for t, r in outcomes.skipped],
        "failed": outcomes.failed, "pytest_status": status,
        "machine_info": raw.get("machine_info", {}), "rows": rows,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y-%m-%dT%H%M")
    json_path = out / f"bench-{preset}-{stamp}.json"
    json_path.write_text(json.dumps(record, indent=1))

    return _report(record, out, stamp, plot=not args.no_plot, status=status,
                   written=[json_path])


def _rerate(record, stat):
    """The record's rows with rates (and ratios) recomputed from the ``stat`` time."""
    raw = {"benchmarks": [{"extra_info": {k: v for k, v in row.items()
                                          if k not in ("median_s", "min_s", "mean_s", "stddev_s",
                                                       "rounds", "test", "rate", "rate_from",
                                                       "ratio_to")},
                           "stats": {"median": row["median_s"], "min": row["min_s"],
                                     "mean": row["mean_s"], "stddev": row["stddev_s"],
                                     "rounds": row["rounds"]},
                           "fullname": row["test"]} for row in record["rows"]]}
    return _rows(raw, stat)


def _report(record, out, stamp, plot=True, status=0, written=()):
    """Print the record's tables and draw its PNGs into ``out``."""
    written = list(written)
    rows, stat = record["rows"], record["rate_from"]
    load = record.get("load_average_before"), record.get("load_average_after")
    print(f"\ngpumat benchmarks, {record['preset']} preset, {record['date']}, commit "
          f"{record['commit']}{' (+ uncommitted changes)' if record['dirty'] else ''}, "
          f"{record['threads']} host threads"
          + (f", 1-min load average {load[0][0]:.1f} before / {load[1][0]:.1f} after"
             if all(load) else ""))
    for name, device in record["devices"].items():
        print(f"  {name:14s} {device}")
    for suite in record["suites"]:
        suite_rows = [r for r in rows if r["suite"] == suite]
        if not suite_rows:
            continue
        print(f"\n[{suite}] rate from the {stat} time; a/b = a's rate over b's, same run")
        print(_table(suite, suite_rows))
        if plot:
            png = pathlib.Path(out) / f"{suite}-{record['preset']}-{stamp}.png"
            title = (f"gpumat {suite} ({record['preset']} preset) - {record['date']} - commit "
                     f"{record['commit']}{'+' if record['dirty'] else ''}")
            _plot(suite, suite_rows, png, title, stat,
                  {i: record["devices"][i]
                   for i in sorted({r["implementation"] for r in suite_rows})})
            written.append(png)
    if record.get("skipped"):
        reasons = {}
        for skipped in record["skipped"]:
            reasons.setdefault(skipped["reason"], []).append(skipped["test"])
        print("\nskipped:")
        for reason, tests in reasons.items():
            print(f"  {len(tests)} x {reason}")
    for path in written:
        path = pathlib.Path(path).resolve()
        print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
