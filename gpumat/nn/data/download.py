"""Downloading the official dataset files with urllib: each mirror in turn, with a short timeout,
an MD5 check against the published checksum, and an atomic rename, so that a directory never
holds a partial or corrupt file under an official name.
"""
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError, DownloadError

#: Seconds to wait for a connection or for the next bytes before trying the next mirror.
TIMEOUT = 30


@dataclass(frozen=True)
class Resource:
    """Where a dataset's files are published: base URLs, tried in order, and each file's MD5."""
    mirrors: tuple
    md5: dict


# The MD5s are the published ones (the datasets' pages, torchvision's tables).  Fashion-MNIST's
# were also checked against Debian's dataset-fashion-mnist: its files are the same deflate
# streams in a rewritten gzip header, and rebuilding the upstream header reproduces these sums
# (tests/test_nn_data.py does it).
RESOURCES = {
    "mnist": Resource(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": Resource(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
             "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
             "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": Resource(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        md5={"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
             "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
}


def official_urls(name, filenames):
    """Every URL ``filenames`` of dataset ``name`` are published at, mirror by mirror."""
    return [mirror + filename for filename in filenames for mirror in RESOURCES[name].mirrors]


def file_md5(path):
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url, destination, timeout):
    """Stream ``url`` into the open file ``destination``; returns the hex MD5 of what came."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            destination.write(chunk)
    return digest.hexdigest()


def download_file(name, filename, directory, timeout=TIMEOUT):
    """Download ``filename`` of dataset ``name`` into ``directory``; returns its path.

    Mirrors are tried in order.  Raises :class:`DatasetError` if every mirror that answered sent
    data with the wrong MD5 (nothing is saved then), and :class:`DownloadError` if none answered.
    """
    expected = RESOURCES[name].md5[filename]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    failures, mismatches = [], []
    for url in official_urls(name, [filename]):
        print(f"gpumat: downloading {url} to {directory}", file=sys.stderr)
        # The temporary file sits in the target directory so that the rename is atomic.
        handle, partial = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
        try:
            with os.fdopen(handle, "wb") as destination:
                got = _fetch(url, destination, timeout)
            if got == expected:
                os.replace(partial, directory / filename)
                return directory / filename
            mismatches.append(f"{url} sent {os.path.getsize(partial)} bytes with MD5 {got}")
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts included
            failures.append((url, f"{type(error).__name__}: {error}"))
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    if mismatches:
        others = "".join(f"; {url}: {reason}" for url, reason in failures)
        raise DatasetError(f"{filename}: MD5 mismatch, expected {expected}: "
                           f"{'; '.join(mismatches)}{others}; nothing was saved")
    raise DownloadError(filename, failures)
