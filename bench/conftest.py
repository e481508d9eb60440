"""pytest setup for the benchmark files (bench_*.py); the test suite (tests/) never loads it."""
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE, HERE.parent):          # `import harness, layers` and an uninstalled gpumat
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import harness  # noqa: E402


def pytest_report_header(config):
    return (f"gpumat bench: preset {harness.PRESET}, backends "
            f"{','.join(harness.gpumat_backends())}, {harness.THREADS} host threads")
