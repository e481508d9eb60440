"""Tune the gemm kernel (kernels/common/sgemm.h) for this machine's device.

    python -m gpumat.tune [--backend opencl|cuda] [--quick] [--sizes 512,1024,2048]

Builds each candidate set of defines, checks its results against NumPy on awkward shapes
(edges, transposes, beta) and drops wrong or unbuildable ones, times the rest on square
float32 products, and stores the fastest in the user cache directory (see gpumat/tuning.py;
$GPUMAT_TUNING_DIR overrides it).  gpumat uses the stored parameters from then on.  The
parameters in use before (tuned or shipped) are always a candidate and a finalist, so the
winner beat them in the tuner's own timings.  Timings are noisy on a shared machine: the best
of several interleaved runs counts.
"""
import argparse
import itertools
import math
import numbers
import random
import sys
import time

import numpy as np

from . import backends as _backends
from . import tuning


def _driver(backend):
    if backend.name == "opencl":
        from .backends import opencl_gemm
        return opencl_gemm
    if backend.name == "cuda":
        from .backends import cuda_gemm
        return cuda_gemm
    raise SystemExit(f"gpumat.tune: the {backend.name} backend has no tunable gemm kernel "
                     f"(use --backend opencl or cuda)")


def _is_cpu_device(backend):
    if backend.name != "opencl":
        return False
    from .backends.opencl import cl
    return bool(backend.cl_device.type & cl.device_type.CPU)


def _fits(p, cpu):
    accumulators = p["MWI"] * p["NWI"]
    if cpu:     # vector registers: keep the accumulator block within ~28 of them
        return 2 <= accumulators <= 28
    threads = p["WGM"] * p["WGN"]
    return accumulators * p["VW"] <= 64 and 64 <= threads <= 256


def candidates(backend, quick, base):
    """Parameter sets to try, the shipped/current ``base`` first."""
    cpu = _is_cpu_device(backend)
    if cpu:
        axes = {"MWI": [4, 6, 8, 12, 14], "NWI": [1, 2, 3, 4], "VW": [8, 16],
                "KWI": [1, 2, 4], "PACK_B": [0, 1]}
        fixed = {"WGM": 1, "WGN": 1, "USE_LOCAL": 0, "KWG": 16}
        if quick:
            axes = {"MWI": [4, 8], "NWI": [1, 2], "VW": [16], "KWI": [1], "PACK_B": [1]}
    else:
        axes = {"MWI": [1, 2, 4, 8], "NWI": [1, 2, 4, 8],
                "VW": [1] if backend.name == "cuda" else [1, 2, 4],
                "WGM": [8, 16, 32], "WGN": [8, 16, 32], "USE_LOCAL": [0, 1], "KWG": [16, 32],
                "PACK_B": [0, 1]}
        fixed = {"KWI": 1}
        if quick:
            axes = {"MWI": [2, 4], "NWI": [2, 4], "VW": [1], "WGM": [16], "WGN": [16],
                    "USE_LOCAL": [0, 1], "KWG": [16], "PACK_B": [0]}
    space = []
    for values in itertools.product(*axes.values()):
        p = dict(fixed, **dict(zip(axes, values)))
        if _fits(p, cpu):
            space.append(p)
    if not cpu and len(space) > 150:     # GPU spaces are large: a seeded sample
        space = random.Random(0).sample(space, 150)
    out = [dict(base)]
    for p in space:
        p = dict(base, **p)
        if p not in out:
            out.append(p)
    return out


def _upload(backend, x):
    return backend.from_numpy(np.ascontiguousarray(x))


def verify(backend, driver, params, rng):
    """True when ``params`` give NumPy's results (float rounding aside) on awkward shapes."""
    cases = [(67, 75, 43, False, False, 0.0, 1), (33, 129, 70, True, True, 0.5, 1),
             (5, 17, 1, False, True, -1.0, 3), (1, 1, 300, True, False, 2.0, 2),
             (261, 40, 33, False, False, 1.0, 2)]
    for M, N, K, ta, tb, beta, batch in cases:
        A = rng.standard_normal((batch,) + ((K, M) if ta else (M, K))).astype(np.float32)
        B = rng.standard_normal((batch,) + ((N, K) if tb else (K, N))).astype(np.float32)
        C = rng.standard_normal((batch, M, N)).astype(np.float32)
        opA = np.swapaxes(A, 1, 2) if ta else A
        opB = np.swapaxes(B, 1, 2) if tb else B
        ref = 1.25 * (opA.astype(np.float64) @ opB) + beta * C
        a, b = _upload(backend, A), _upload(backend, B)
        out = _upload(backend, C)
        try:
            driver.run(backend, a, b, out, M, N, K, batch, 1.25, beta, ta, tb, params=params)
            got = backend.to_numpy(out)
        finally:
            for x in (a, b, out):
                backend.free(x)
        tol = 1e-5 * (np.abs(opA).astype(np.float64) @ np.abs(opB) + abs(beta) * np.abs(C)) \
            * (K + 2) + 1e-6
        if not np.all(np.abs(got - ref) <= tol):
            return False
    return True


def measure(backend, driver, params, n, reps, check=False, rng=None):
    """Best GFLOP/s of ``reps`` n x n x n float32 products (None when the result is wrong)."""
    rng = rng or np.random.default_rng(1)
    A = rng.random((n, n), dtype=np.float32)
    B = rng.random((n, n), dtype=np.float32)
    a, b = _upload(backend, A), _upload(backend, B)
    out = backend.empty((1, n, n), np.float32)
    try:
        driver.run(backend, a, b, out, n, n, n, 1, 1.0, 0.0, params=params)
        backend.synchronize()
        if check:
            got = backend.to_numpy(out)[0]
            if not np.allclose(got, A.astype(np.float64) @ B, rtol=1e-4, atol=1e-4 * n):
                return None
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            driver.run(backend, a, b, out, n, n, n, 1, 1.0, 0.0, params=params)
            backend.synchronize()
            best = min(best, time.perf_counter() - t0)
    finally:
        for x in (a, b, out):
            backend.free(x)
    return 2.0 * n ** 3 / best / 1e9


def tune(backend_name="opencl", quick=False, sizes=None, max_candidates=None, reps=3,
         save=True, log=print):
    """Search, verify, time and (``save``) store the winner; returns a result dict."""
    for what, values in (("sizes", sizes or [1]), ("max_candidates", [max_candidates or 1]),
                         ("reps", [reps])):
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
               for v in values):
            raise ValueError(f"tune: {what} must be positive integers, got {values!r}")
    backend = _backends.get(backend_name)
    driver = _driver(backend)
    sizes = list(sizes or ([512] if quick else [512, 1024, 2048]))
    base, source = driver.parameters(backend)
    pool = candidates(backend, quick, base)
    if max_candidates:
        pool = pool[:max_candidates]
    key = driver.device_key(backend)
    log(f"gpumat.tune: {backend.device}\n  key: {key}\n  current parameters ({source}): "
        f"{base}\n  {len(pool)} candidates, sizes {sizes}")
    rng = np.random.default_rng(0)
    scored = []
    rejected = 0
    for i, p in enumerate(pool):
        try:
            ok = verify(backend, driver, p, rng)
        except Exception as exc:     # build failure, launch failure (work-group too big)
            log(f"  [{i + 1}/{len(pool)}] {p}: rejected ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:100]})")
            rejected += 1
            continue
        if not ok:
            log(f"  [{i + 1}/{len(pool)}] {p}: rejected (wrong results)")
            rejected += 1
            continue
        rate = measure(backend, driver, p, sizes[0], reps, check=True)
        if rate is None:
            log(f"  [{i + 1}/{len(pool)}] {p}: rejected (wrong results at {sizes[0]})")
            rejected += 1
            continue
        scored.append((rate, p))
        log(f"  [{i + 1}/{len(pool)}] {p}: {rate:.1f} GFLOP/s at {sizes[0]}")
    if not scored:
        raise RuntimeError("gpumat.tune: every candidate failed; nothing stored")
    # The larger sizes only for the best few (they cost the most time).  Finalists are timed
    # in interleaved rounds, best of the rounds, so a burst of load from other processes
    # hurts every candidate alike instead of whichever ran during it.
    scored.sort(key=lambda t: -t[0])
    finalists = [p for _, p in scored[:max(1, min(len(scored), 3 if quick else 6))]]
    if base not in finalists and any(p == base for _, p in scored):
        finalists.append(base)
    best = [[0.0] * len(sizes) for _ in finalists]
    for round_ in range(max(1, reps)):
        for s_i, n in enumerate(sizes):
            for f_i, p in enumerate(finalists):
                if best[f_i] is None:
                    continue
                rate = measure(backend, driver, p, n, 1, check=(round_ == 0 and n <= 1024))
                if rate is None:
                    log(f"  finalist {p}: rejected (wrong results at {n})")
                    best[f_i] = None
                else:
                    best[f_i][s_i] = max(best[f_i][s_i], rate)
    results = []
    for p, rates in zip(finalists, best):
        if rates is None:
            continue
        score = math.exp(sum(math.log(r) for r in rates) / len(rates))
        results.append((score, rates, p))
        log(f"  finalist {p}: " + ", ".join(f"{n}: {r:.1f}" for n, r in zip(sizes, rates))
            + f" GFLOP/s (geometric mean {score:.1f})")
    results.sort(key=lambda t: -t[0])
    score, rates, winner = results[0]
    out = {"device": backend.device, "key": key, "params": winner, "gflops": dict(
        zip(map(str, sizes), (round(r, 1) for r in rates))), "rejected": rejected,
        "tested": len(pool)}
    if save:
        path = tuning.save_tuned(key, winner, device=backend.device,
                                 gflops=out["gflops"], tuned=time.strftime("%Y-%m-%d %H:%M"))
        driver.reset(backend)
        out["file"] = str(path)
        log(f"gpumat.tune: stored {winner} in {path}")
    return out


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _sizes(text):
    try:
        return [_positive(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive sizes such as 512,1024, got {text!r}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpumat.tune", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["opencl", "cuda"], default=None,
                        help="backend to tune (default: cuda where available, else opencl)")
    parser.add_argument("--quick", action="store_true", help="a small space, size 512 only")
    parser.add_argument("--sizes", type=_sizes, default=None,
                        help="comma-separated square sizes to time (default 512,1024,2048)")
    parser.add_argument("--max-candidates", type=_positive, default=None,
                        help="try at most this many candidates (the current parameters first)")
    parser.add_argument("--reps", type=_positive, default=3,
                        help="timed runs per size (best counts)")
    parser.add_argument("--dry-run", action="store_true", help="search but store nothing")
    args = parser.parse_args(argv)
    name = args.backend
    if name is None:
        name = "cuda" if _backends.available("cuda") else "opencl"
    tune(name, quick=args.quick, sizes=args.sizes, max_candidates=args.max_candidates,
         reps=args.reps, save=not args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
