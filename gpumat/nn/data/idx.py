"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST, gzip-compressed or raw.

An IDX file is a magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the elements in C order, big-endian.  Whether a file is gzip-compressed is
decided by its first two bytes (1f 8b), not by its name, so renamed or unpacked copies read too.
"""
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ...errors import DtypeError
from .errors import DatasetError

#: IDX dtype code -> the big-endian NumPy dtype of the elements.
DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {(dtype.kind, dtype.itemsize): code for code, dtype in DTYPES.items()}

GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path):
    """The contents of ``path``, decompressed when it starts with the gzip magic number."""
    with open(path, "rb") as file:
        compressed = file.read(2) == GZIP_MAGIC
        file.seek(0)
        if not compressed:
            return file.read()
        try:
            with gzip.GzipFile(fileobj=file) as unpacked:
                return unpacked.read()
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise DatasetError(f"{path}: damaged gzip data ({error})") from error


def _dimensions(count):
    return f"{count} dimension{'' if count == 1 else 's'}"


def read_idx(path, dtype=None, ndim=None):
    """The array stored in the IDX file ``path`` (gzip or raw), in native byte order.

    ``dtype`` and ``ndim``, when given, are what the caller needs (uint8 and 1 for labels):
    a header that says otherwise is reported as such, rather than read on and misreported as
    truncated data once its extra "dimensions" have swallowed the first elements.

    Raises :class:`DatasetError` naming the file for a wrong magic number, element type or
    number of dimensions, a truncated header, dimensions no array can have, truncated data,
    and data longer than its dimensions say; nothing is allocated from the header's sizes.
    """
    data = _read_bytes(path)
    magic = data[:4]
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in DTYPES:
        codes = " ".join(f"{code:02x}" for code in DTYPES)
        raise DatasetError(f"{path}: not an IDX file: its magic number is "
                           f"{magic.hex(' ') or 'empty'}, expected 00 00 <dtype code> <ndim> "
                           f"with a dtype code in {codes}")
    found_dtype, found_ndim = DTYPES[magic[2]], magic[3]
    header_size = 4 + 4 * found_ndim
    if len(data) < header_size:
        raise DatasetError(f"{path}: truncated IDX header: {found_ndim} dimensions need "
                           f"{header_size} header bytes, the file has {len(data)}")
    shape = struct.unpack(f">{found_ndim}I", data[4:header_size])
    if ndim is not None and found_ndim != ndim:
        raise DatasetError(f"{path}: expected IDX data with {_dimensions(ndim)}, but the header "
                           f"says {_dimensions(found_ndim)}: {shape}")
    if dtype is not None and found_dtype.newbyteorder("=") != np.dtype(dtype):
        raise DatasetError(f"{path}: expected IDX elements of {np.dtype(dtype).name}, but the "
                           f"header says {found_dtype.name} (shape {shape})")
    # NumPy refuses such a shape even with a zero among the sizes; say why here instead.
    if math.prod(size for size in shape if size) * found_dtype.itemsize > np.iinfo(np.intp).max:
        raise DatasetError(f"{path}: IDX header dimensions {shape} of {found_dtype.name} are "
                           f"too large for any array: a damaged header")
    count = math.prod(shape)
    expected, found = count * found_dtype.itemsize, len(data) - header_size
    if found < expected:
        raise DatasetError(f"{path}: truncated IDX data or a damaged header: shape {shape} of "
                           f"{found_dtype.name} needs {expected} bytes after the header, the "
                           f"file has {found}")
    if found > expected:
        raise DatasetError(f"{path}: IDX size mismatch: shape {shape} of {found_dtype.name} "
                           f"needs {expected} bytes after the header, the file has {found} "
                           f"({found - expected} too many)")
    elements = np.frombuffer(data, found_dtype, count=count, offset=header_size)
    # astype copies: the result is writable and native-endian, not a view of the bytes.
    return elements.astype(found_dtype.newbyteorder("=")).reshape(shape)


def write_idx(path, array, compress=None):
    """Write ``array`` to ``path`` as an IDX file; gzip-compressed when ``compress`` is true, or,
    with ``compress=None``, when the name ends in ``.gz``.  Returns the path.

    The dtype must be one IDX has: uint8, int8, int16, int32, float32 or float64.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_OF.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise DtypeError(f"IDX files hold uint8, int8, int16, int32, float32 or float64, "
                         f"not {array.dtype}")
    if any(size >= 2 ** 32 for size in array.shape):
        raise DatasetError(f"IDX dimensions are uint32; shape {array.shape} does not fit")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    with open(path, "wb") as file:
        if compress:
            # mtime=0: the same array always gives the same bytes.
            with gzip.GzipFile(fileobj=file, mode="wb", mtime=0) as packed:
                packed.write(payload)
        else:
            file.write(payload)
    return path
