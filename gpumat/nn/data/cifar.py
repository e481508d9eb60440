"""CIFAR-10 in both official formats: the binary version (``cifar-10-batches-bin``) and the
Python pickle version (``cifar-10-batches-py``), as directories or as the official archives.

Images come out as uint8 N x 3 x 32 x 32 (channels R, G, B; rows top to bottom), labels as
int64.  Where both formats are present the binary one is read.

The pickle version is read with :func:`pickle.load`, which can run arbitrary code: load only
files you trust (gpumat checks the official archive's MD5 when it downloads it itself).
"""
import gzip
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DatasetError, check_labels

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32
RECORD_SIZE = 1 + PIXELS     # the binary format: one label byte, then the R, G and B planes


def read_cifar_binary(path):
    """``(images, labels)`` of one binary batch file (``data_batch_1.bin``, ``test_batch.bin``)."""
    raw = Path(path).read_bytes()
    if not raw or len(raw) % RECORD_SIZE:
        raise DatasetError(f"{path}: a CIFAR-10 binary batch is whole records of {RECORD_SIZE} "
                           f"bytes (1 label byte + {PIXELS} pixel bytes), but the file has "
                           f"{len(raw)} bytes")
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD_SIZE)
    labels = check_labels(path, records[:, 0].astype(np.int64), len(CLASSES))
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, *IMAGE_SHAPE)
    return images, labels


def _check_pickle_labels(path, values, count):
    """The ``count`` labels of a pickle batch as int64, each checked to be an integer in
    0..9 before any conversion: casting to int64 first would truncate a float such as 6.9 to
    the valid label 6, and fail with a bare OverflowError on an integer past int64."""
    labels = np.asarray(values, dtype=object)     # each label as pickled (int, float, ...)
    if labels.shape != (count,):
        raise DatasetError(f"{path}: {count} images but b'labels' has shape {labels.shape}")
    for index, label in enumerate(labels):
        # bool is an int subclass, but True is no label.
        if (isinstance(label, bool) or not isinstance(label, (int, np.integer))
                or not 0 <= label < len(CLASSES)):
            raise DatasetError(f"{path}: label {label!r} of record {index} is not an integer in "
                               f"0..{len(CLASSES) - 1}")
    return labels.astype(np.int64)


def _unpickle(path):
    try:
        with open(path, "rb") as file:
            # encoding="bytes": the official files were pickled by Python 2.
            return pickle.load(file, encoding="bytes")
    except OSError:
        raise
    except Exception as error:  # garbage makes pickle fail in many ways (EOF, key, import...)
        raise DatasetError(f"{path}: not a CIFAR-10 pickle file "
                           f"({type(error).__name__}: {error})") from error


def read_cifar_pickle(path):
    """``(images, labels)`` of one pickle batch file (``data_batch_1``, ``test_batch``): a dict
    with ``b"data"``, uint8 N x 3072, and ``b"labels"``, N integers in 0..9.  Trusted files
    only."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{path}: a CIFAR-10 pickle batch is a dict with keys b'data' and "
                           f"b'labels'; found {found}")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DatasetError(f"{path}: b'data' should be uint8 N x {PIXELS}, "
                           f"found {data.dtype} of shape {data.shape}")
    labels = _check_pickle_labels(path, batch[b"labels"], len(data))
    return np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE), labels


def _read_binary_names(path):
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _read_pickle_names(path):
    meta = _unpickle(path)
    if not isinstance(meta, dict) or b"label_names" not in meta:
        raise DatasetError(f"{path}: expected a dict with key b'label_names'")
    return [name.decode() for name in meta[b"label_names"]]


@dataclass(frozen=True)
class Format:
    """One of CIFAR-10's official formats: its directory, archive and file names, and readers."""
    name: str
    directory: str
    archive: str
    train: tuple
    test: tuple
    meta: str
    read_batch: Callable     # path -> (images, labels)
    read_names: Callable     # meta file path -> class names

    def files(self, split):
        return self.train if split == "train" else self.test


BINARY = Format("binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
                "batches.meta.txt", read_cifar_binary, _read_binary_names)
PYTHON = Format("python", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "batches.meta", read_cifar_pickle, _read_pickle_names)
#: Binary first: it needs no pickle.
FORMATS = (BINARY, PYTHON)


def extract_archive(archive):
    """Extract an official CIFAR-10 archive's batch files next to it; returns the batches
    directory (``cifar-10-batches-bin`` or ``-py``).

    Only the known batch and meta files are written, each to a temporary name first and then
    renamed, so an interrupted extraction never leaves a partial file under a real name and a
    hostile archive cannot write elsewhere.
    """
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {member.name.removeprefix("./"): member
                       for member in tar.getmembers() if member.isfile()}
            for fmt in FORMATS:
                batches = [f"{fmt.directory}/{name}" for name in fmt.train + fmt.test]
                if all(name in members for name in batches):
                    break
            else:
                raise DatasetError(f"{archive}: not a CIFAR-10 archive: it has neither "
                                   f"{BINARY.directory}/ nor {PYTHON.directory}/ with all six "
                                   f"batches ({len(members)} files: "
                                   f"{', '.join(sorted(members)[:8])})")
            meta = f"{fmt.directory}/{fmt.meta}"
            wanted = batches + ([meta] if meta in members else [])
            target = archive.parent / fmt.directory
            target.mkdir(exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=target) as staging:
                for name in wanted:
                    staged = Path(staging) / Path(name).name
                    with tar.extractfile(members[name]) as source, open(staged, "wb") as out:
                        shutil.copyfileobj(source, out)
                    os.replace(staged, target / staged.name)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DatasetError(f"{archive}: not a readable .tar.gz archive ({error})") from error
    return target


def find_cifar10(location, split):
    """``(format, batches directory)`` of the split at ``location``, or None.

    ``location`` may be a batches directory itself, a directory holding ``cifar-10-batches-bin``
    or ``cifar-10-batches-py``, one holding an official archive (extracted here, next to it),
    or the archive file.
    """
    location = Path(location)
    if location.is_file():
        return find_cifar10(extract_archive(location), split)
    for fmt in FORMATS:
        for directory in (location, location / fmt.directory):
            if all((directory / name).is_file() for name in fmt.files(split)):
                return fmt, directory
    for fmt in FORMATS:
        if (location / fmt.archive).is_file():
            return find_cifar10(extract_archive(location / fmt.archive), split)
    return None


def read_cifar10(fmt, directory, split):
    """``(images, labels, class names)`` of a split from a batches directory of format ``fmt``;
    the class names come from the meta file when there is one."""
    parts = [fmt.read_batch(Path(directory) / name) for name in fmt.files(split)]
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    meta = Path(directory) / fmt.meta
    classes = fmt.read_names(meta) if meta.is_file() else list(CLASSES)
    if len(classes) != len(CLASSES):
        raise DatasetError(f"{meta}: {len(classes)} class names, CIFAR-10 has {len(CLASSES)}: "
                           f"{classes}")
    return images, labels, classes
