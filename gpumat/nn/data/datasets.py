"""load_dataset: MNIST, Fashion-MNIST and CIFAR-10, found on disk or downloaded, as a Dataset of
uint8 NCHW images and int64 labels with the class names and per-channel normalisation constants.

Where ``load_dataset`` looks when no ``root`` is given, in order:

1. ``$GPUMAT_DATA/<name>``, then ``$GPUMAT_DATA`` itself;
2. the user cache directory, ``platformdirs.user_cache_dir("gpumat")/datasets/<name>``;
3. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's dataset-fashion-mnist).

With ``root`` (the ``--data DIR`` option of gpumat's tools) it looks only in ``root/<name>`` and
``root``.  MNIST and Fashion-MNIST share their file names, so a directory searched for both
should hold only one of them: use the ``<name>`` subdirectories.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from . import cifar, mnist
from .download import download_file, official_urls
from .errors import DatasetError, DatasetNotFoundError, DownloadError


@dataclass(frozen=True)
class _Info:
    classes: tuple
    mean: tuple      # per channel, of the training images scaled to [0, 1]
    std: tuple
    system_dirs: tuple = ()   # where a distribution's package installs it
    package: str = ""         # ... and that package


INFO = {
    "mnist": _Info(tuple("0123456789"), (0.1307,), (0.3081,)),
    "fashion-mnist": _Info(("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                            "Shirt", "Sneaker", "Bag", "Ankle boot"),
                           (0.2860,), (0.3530,), ("/usr/share/datasets/fashion-mnist",),
                           "dataset-fashion-mnist"),
    "cifar10": _Info(cifar.CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
NAMES = tuple(INFO)
SPLITS = ("train", "test")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10"}


class Dataset:
    """Images (uint8 N x C x H x W, NumPy) and their int64 labels, with ``classes`` (names by
    label), ``name``, ``split``, the normalisation constants ``mean`` and ``std`` (one per
    channel, for images scaled to [0, 1]; None where unknown) and ``path`` (where it was read).
    """

    def __init__(self, images, labels, classes, name="custom", split="train", mean=None,
                 std=None, path=None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DatasetError(f"dataset {name!r}: images must be uint8 N x C x H x W, "
                               f"got {images.dtype} of shape {images.shape}")
        if labels.shape != (len(images),):
            raise DatasetError(f"dataset {name!r}: {len(images)} images need labels of shape "
                               f"({len(images)},), got {labels.shape}")
        if labels.dtype.kind not in "iu":
            # astype(int64) would truncate a label such as 6.9 to a valid 6 without a word.
            raise DatasetError(f"dataset {name!r}: labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        outside = (labels < 0) | (labels >= len(classes))
        if outside.any():
            raise DatasetError(f"dataset {name!r}: label {labels[outside][0]} is not one of the "
                               f"{len(classes)} classes (0..{len(classes) - 1})")
        self.images, self.labels, self.classes = images, labels, list(classes)
        self.name, self.split, self.path = name, split, path
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return (f"Dataset({self.name!r}, split={self.split!r}, images={self.images.shape}, "
                f"classes={len(self.classes)}, path={str(self.path)!r})")


def canonical_name(name):
    """'fashion_mnist', 'CIFAR-10' and the like -> the name used everywhere else."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in INFO:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(NAMES)}")
    return key


def dataset_dirs(name, root=None):
    """The directories ``load_dataset`` searches for ``name``, in order (see the module doc)."""
    name = canonical_name(name)
    if root is not None:
        return [Path(root) / name, Path(root)]
    dirs = []
    if os.environ.get("GPUMAT_DATA"):
        dirs += [Path(os.environ["GPUMAT_DATA"]) / name, Path(os.environ["GPUMAT_DATA"])]
    dirs.append(_cache_dir(name))
    return dirs + [Path(d) for d in INFO[name].system_dirs]


def _cache_dir(name):
    return Path(platformdirs.user_cache_dir("gpumat")) / "datasets" / name


def _download_dir(name, root):
    """Where a download goes: the ``<name>`` subdirectory of ``root`` or ``$GPUMAT_DATA`` (the
    user's data directory), else of the cache.  Always one of :func:`dataset_dirs`."""
    base = root if root is not None else os.environ.get("GPUMAT_DATA")
    return Path(base) / name if base else _cache_dir(name)


def _download_names(name, split):
    # CIFAR-10's binary archive holds both splits and reads without pickle.
    return [cifar.BINARY.archive] if name == "cifar10" else list(mnist.file_names(split))


def _expected_files(name, split):
    if name != "cifar10":
        return " and ".join(mnist.file_names(split)) + " (or the same unpacked, without .gz)"
    layouts = [f"{fmt.directory}/{{{', '.join(fmt.files(split))}}}" for fmt in cifar.FORMATS]
    archives = " or ".join(fmt.archive for fmt in cifar.FORMATS)
    return f"{' or '.join(layouts)}, or the archive {archives}"


def _read(name, directory, split):
    """``(images, labels, classes)`` of the split when ``directory`` holds it, else None."""
    if name == "cifar10":
        found = cifar.find_cifar10(directory, split)
        return None if found is None else cifar.read_cifar10(*found, split)
    found = mnist.find_mnist(directory, split)
    return None if found is None else (*mnist.read_mnist(*found), INFO[name].classes)


def _not_found(name, split, searched, why):
    lines = [f"dataset {name!r} ({split} split) not found; {why}.",
             "searched these directories, in order:",
             *(f"  {directory}" for directory in searched),
             f"expected there: {_expected_files(name, split)}",
             "official URLs:",
             *(f"  {url}" for url in official_urls(name, _download_names(name, split))),
             "download the files into one of those directories, or tell gpumat where they are "
             "with the --data DIR option or the GPUMAT_DATA environment variable"]
    if INFO[name].package:
        lines.append(f"(on Debian/Ubuntu: apt-get install {INFO[name].package})")
    return DatasetNotFoundError("\n".join(lines))


def load_dataset(name, root=None, split="train", download=True):
    """The ``split`` ('train' or 'test') of dataset ``name`` ('mnist', 'fashion-mnist',
    'cifar10') as a :class:`Dataset`.

    Searches :func:`dataset_dirs`; when the data is in none of them and ``download`` is true,
    downloads the official files (checking their MD5) into ``root/<name>``,
    ``$GPUMAT_DATA/<name>`` or the cache.  Raises :class:`DatasetNotFoundError` (a
    FileNotFoundError) naming the directories, file names and URLs when that fails too, and
    :class:`DatasetError` (a ValueError) for malformed files.
    """
    name = canonical_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    searched = dataset_dirs(name, root)
    for directory in searched:
        found = _read(name, directory, split)
        if found is not None:
            break
    else:
        if not download:
            raise _not_found(name, split, searched, "download=False, so nothing was downloaded")
        directory = _download_dir(name, root)
        try:
            for filename in _download_names(name, split):
                download_file(name, filename, directory)
        except DownloadError as error:
            raise _not_found(name, split, searched, f"the download failed: {error}") from error
        found = _read(name, directory, split)
    info = INFO[name]
    images, labels, classes = found
    return Dataset(images, labels, classes, name=name, split=split, mean=info.mean,
                   std=info.std, path=directory)
