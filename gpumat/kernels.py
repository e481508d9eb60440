"""Finds and reads the kernel sources (kernels/cuda, kernels/opencl, kernels/common, kernels/cpu).

Where they live depends on how gpumat was installed:
  1. $GPUMAT_KERNELS_DIR, when set (tests, or trying out edited kernels);
  2. <package dir>/kernels: an installed wheel, where CMake puts them;
  3. <package dir>/../kernels: a source checkout or an editable install.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["kernels_dir", "read_source", "source_digest", "include_dirs", "ENV_VAR"]

ENV_VAR = "GPUMAT_KERNELS_DIR"

_PACKAGE_DIR = Path(__file__).resolve().parent


def _default_places() -> list[tuple[str, Path]]:
    return [
        ("installed package", _PACKAGE_DIR / "kernels"),
        ("source checkout", _PACKAGE_DIR.parent / "kernels"),
    ]


def kernels_dir() -> Path:
    """The directory that holds cuda/, opencl/, common/ and cpu/.

    An explicitly set $GPUMAT_KERNELS_DIR that is not a directory is an error
    rather than a silent fall-through to another copy of the kernels.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if path.is_dir():
            return path.resolve()
        raise FileNotFoundError(
            f"{ENV_VAR} is set to {override!r}, which is not a directory"
        )
    for _, path in _default_places():
        if path.is_dir():
            return path.resolve()
    looked = "; ".join(f"{label}: {path}" for label, path in _default_places())
    raise FileNotFoundError(
        f"gpumat kernel sources not found; looked in {looked} "
        f"(set {ENV_VAR} to point at them)"
    )


@functools.lru_cache(maxsize=None)
def _read_cached(path: str, mtime_ns: int, size: int) -> str:
    # Keyed on mtime and size too, so an edited kernel is read afresh in a
    # long-lived process (an editable checkout) while repeats stay cheap.
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _resolve(relpath: str | os.PathLike[str]) -> Path:
    path = Path(relpath)
    if not path.is_absolute():
        path = kernels_dir() / path
    return path


def read_source(relpath: str | os.PathLike[str]) -> str:
    """Text of a kernel file, relative to kernels_dir() (e.g. "opencl/gemm.cl")."""
    path = _resolve(relpath)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"kernel source {str(relpath)!r} not found (looked for {path})"
        ) from None
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size)


def source_digest(
    relpath: str | os.PathLike[str], includes: Iterable[str | os.PathLike[str]] = ()
) -> str:
    """SHA-256 hex digest of a kernel's text and of the files it includes.

    Meant for cache keys: it changes when the kernel or any listed include
    changes.  Each part is length-prefixed so no two file lists collide.
    """
    digest = hashlib.sha256()
    for name in (relpath, *includes):
        text = read_source(name).encode("utf-8")
        label = str(name).encode("utf-8")
        digest.update(len(label).to_bytes(8, "little") + label)
        digest.update(len(text).to_bytes(8, "little") + text)
    return digest.hexdigest()


def include_dirs(subdir: str | None = None) -> list[str]:
    """Include paths for compiling kernels: [kernels/common, kernels/<subdir>].

    With no subdir only kernels/common is returned.
    """
    root = kernels_dir()
    dirs = [str(root / "common")]
    if subdir:
        dirs.append(str(root / subdir))
    return dirs
