"""The four tasks of the Sushi2 paper's Table 1 (float32) on every gpumat backend against
NumPy: 1000x1000 + 1000x1000, elementwise log of 1000x1000, 1000x100 @ 100x10 and
1000x1000 @ 1000x1000.  Elementwise tasks report GB/s (bytes read + written once), products
GFLOP/s (2 m n k).
"""
import numpy as np
import pytest

import harness
import gpumat as gm

TASKS = {
    # name: (panel, operands (shape, offset), gpumat call, numpy call, unit, work)
    "add 1000x1000": ("elementwise", [((1000, 1000), 0.0), ((1000, 1000), 0.0)],
                      lambda a, b: a + b, lambda a, b: a + b, "GB/s", 3 * 4e6),
    "log 1000x1000": ("elementwise", [((1000, 1000), 0.5)], gm.log, np.log, "GB/s", 2 * 4e6),
    "1000x100 @ 100x10": ("matmul", [((1000, 100), 0.0), ((100, 10), 0.0)],
                          lambda a, b: a @ b, lambda a, b: a @ b, "GFLOP/s", 2.0 * 1000 * 100 * 10),
    "1000x1000 @ 1000x1000": ("matmul", [((1000, 1000), 0.0), ((1000, 1000), 0.0)],
                              lambda a, b: a @ b, lambda a, b: a @ b, "GFLOP/s", 2.0 * 1000 ** 3),
}


@pytest.mark.parametrize("impl", harness.implementations("sushi2"), ids=str)
@pytest.mark.parametrize("task", list(TASKS), ids=lambda t: t.replace(" ", ""))
def test_sushi2(benchmark, task, impl):
    panel, operands, ours, reference, unit, work = TASKS[task]
    generator = harness.rng()
    hosts = [harness.host(shape, generator, offset) for shape, offset in operands]
    if impl.role == "gpumat":
        arrays = harness.upload(impl, *hosts)
        call, sync = (lambda: ours(*arrays)), harness.gpumat_sync(impl.backend)
    else:
        call, sync = (lambda: reference(*hosts)), harness.no_sync
    harness.time_case(benchmark, call, sync, suite="sushi2", case=task, panel=panel, x=task,
                      impl=impl, unit=unit, work=work)
