"""Saving and loading Arrays as .npy files (bit-exact, readable by numpy.load)."""
import os

import numpy as np
from numpy.lib import format as npy_format

from . import dtypes as _dtypes
from .array import Array
from .creation import array
from .errors import DtypeError


def save(path, a):
    """Write ``a`` (an Array or array-like) to ``path`` in NumPy's .npy format."""
    data = a.gather() if isinstance(a, Array) else np.asarray(a)
    path = os.fspath(path)
    with open(path, "wb") as f:          # np.save(path) would append .npy to other suffixes
        np.save(f, data, allow_pickle=False)


def load(path, backend=None):
    """Read a .npy file onto ``backend``; the dtype is kept exactly.

    The header is checked before anything is read or allocated: a file that is not a .npy
    file (an .npz archive, text), a dtype gpumat does not hold, or a shape the file is too
    short for (truncated, or a corrupt header declaring 2**40 elements) is a ValueError
    (DtypeError for the dtype) that names the file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            version = npy_format.read_magic(f)
            read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                           else npy_format.read_array_header_2_0)     # 2.0 and 3.0
            shape, _, dtype = read_header(f)
        except ValueError as exc:
            raise ValueError(f"load: {path!r} is not a .npy file ({exc})") from None
        try:
            if dtype.hasobject or dtype.kind not in "biuf":
                raise DtypeError(f"dtype {dtype} is not supported by gpumat")
            _dtypes.normalize(dtype)
        except DtypeError as exc:
            raise DtypeError(f"load: {path!r} holds data gpumat cannot hold: {exc}") from None
        count = 1
        for n in shape:
            count *= n
        declared = count * dtype.itemsize
        present = os.fstat(f.fileno()).st_size - f.tell()
        if present < declared:
            raise ValueError(f"load: {path!r} is truncated or corrupt: its header declares "
                             f"shape {shape} of {dtype} ({declared:,} bytes), the file holds "
                             f"{present:,} bytes of data")
        f.seek(0)
        data = npy_format.read_array(f, allow_pickle=False)
    return array(data, backend=backend)
