"""The wheel carries everything an installed gpumat needs: the compiled module
and the kernel sources, found from site-packages rather than from a checkout.

Builds a wheel of this checkout (pip, with build isolation: scikit-build-core
and nanobind come from the package index), installs it into a fresh virtual
environment and checks it from a directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNELS = REPO_ROOT / "kernels"


def checkout_kernel_files() -> list[str]:
    """Kernel files of the checkout, relative to kernels/, as the wheel must hold them."""
    return sorted(
        path.relative_to(KERNELS).as_posix()
        for path in KERNELS.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in path.parts)
        and path.suffix != ".pyc"
    )


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, (
        f"command failed (rc={result.returncode}): {' '.join(map(str, command))}\n"
        f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
    )
    return result


def clean_environment() -> dict[str, str]:
    # Nothing that would point the inner Python back at the checkout.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "GPUMAT_KERNELS_DIR", "VIRTUAL_ENV")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheelhouse), str(REPO_ROOT)],
        timeout=600,
        env=clean_environment(),
    )
    wheels = list(wheelhouse.glob("gpumat-*.whl"))
    assert len(wheels) == 1, f"expected one gpumat wheel, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    env = clean_environment()
    # The outer interpreter may itself be a virtual environment whose base has
    # no numpy; then make the outer numpy visible without downloading one.
    probe = subprocess.run([str(python), "-c", "import numpy"], capture_output=True, env=env)
    if probe.returncode != 0:
        import numpy

        site_packages = run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            timeout=60, env=env,
        ).stdout.strip()
        Path(site_packages, "_outer_numpy.pth").write_text(
            str(Path(numpy.__file__).resolve().parents[1]) + "\n"
        )
    run(
        [str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", str(wheel)],
        timeout=300,
        env=env,
    )
    return python


def test_wheel_contains_native_module_and_kernels(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        contents = {name: archive.read(name) for name in names if name.startswith("gpumat/kernels/")}
    expected = checkout_kernel_files()
    assert expected, f"the checkout has no kernel files under {KERNELS}"
    missing = [rel for rel in expected if f"gpumat/kernels/{rel}" not in names]
    assert not missing, f"kernel files missing from {wheel.name}: {missing}"
    for rel in expected:
        assert contents[f"gpumat/kernels/{rel}"] == (KERNELS / rel).read_bytes(), (
            f"gpumat/kernels/{rel} in the wheel differs from the checkout"
        )
    ext_suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert f"gpumat/_native{ext_suffix}" in names, sorted(n for n in names if "_native" in n)
    for module in ("gpumat/native.py", "gpumat/kernels.py"):
        assert module in names, f"{module} missing from {wheel.name}"
    # every module and data file of the package, subpackages (gpumat/nn/models, ...) and the
    # shipped network definitions (gpumat/nn/netdefs/*.json) included
    package_files = sorted(p.relative_to(REPO_ROOT).as_posix()
                           for p in (REPO_ROOT / "gpumat").rglob("*")
                           if p.suffix in (".py", ".json") and "__pycache__" not in p.parts)
    assert "gpumat/nn/netdefs/lenet5.json" in package_files
    missing = [rel for rel in package_files if rel not in names]
    assert not missing, f"package files missing from {wheel.name}: {missing}"


def test_installed_wheel_finds_its_own_kernels_and_native(venv_python, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = textwrap.dedent(
        """
        import json, sys, sysconfig
        from pathlib import Path
        import numpy as np
        import gpumat.kernels, gpumat.native

        values = [1.5, -2.0, 0.0, -0.0, float("nan"), float("inf"), float("-inf")] * 6
        x = np.array([values, [-v for v in values]], dtype=np.float32)
        report = {
            "site_packages": [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]],
            "kernels_dir": str(gpumat.kernels.kernels_dir()),
            "native_file": getattr(getattr(gpumat.native, "_native", None), "__file__", None),
            "have_native": gpumat.native.HAVE_NATIVE,
            "native_import_error": gpumat.native.native_import_error,
            "packed": gpumat.native.pack_signs(x).tolist(),
            "rows": x.tolist(),
            "sys_path": sys.path,
        }
        print(json.dumps(report))
        """
    )
    result = run([str(venv_python), "-c", script], timeout=120, cwd=outside, env=clean_environment())
    report = json.loads(result.stdout.strip().splitlines()[-1])
    context = json.dumps(report, indent=1)

    site_packages = [Path(p).resolve() for p in report["site_packages"]]
    kernels = Path(report["kernels_dir"]).resolve()
    assert any(kernels.is_relative_to(sp) for sp in site_packages), context
    assert not kernels.is_relative_to(REPO_ROOT), context

    for rel in checkout_kernel_files():
        installed = kernels / rel
        assert installed.is_file(), f"{rel} missing from {kernels}"
        assert installed.read_bytes() == (KERNELS / rel).read_bytes(), f"{rel} differs"

    assert report["have_native"] is True, context
    native_file = Path(report["native_file"]).resolve()
    assert any(native_file.is_relative_to(sp) for sp in site_packages), context

    # Independent reference: bit j of word w is set iff element 32*w + j >= 0.
    for row, words in zip(report["rows"], report["packed"]):
        expected = [0] * ((len(row) + 31) // 32)
        for index, value in enumerate(row):
            if value >= 0:  # json round-trips NaN as NaN, and NaN >= 0 is False
                expected[index // 32] |= 1 << (index % 32)
        assert words == expected, context
