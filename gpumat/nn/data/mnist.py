"""MNIST and Fashion-MNIST on disk: the IDX image and label files of each split.

Both datasets use the same four file names; a directory holds a split when it has that
split's two files, gzip-compressed (the official ``.gz`` names) or unpacked (without ``.gz``).
"""
from pathlib import Path

import numpy as np

from .errors import DatasetError, check_labels
from .idx import read_idx

_PREFIX = {"train": "train", "test": "t10k"}
CLASS_COUNT = 10     # in both datasets: labels are 0..9


def file_names(split):
    """The official (gzip) file names of a split: images then labels."""
    prefix = _PREFIX[split]
    return (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")


def find_mnist(directory, split):
    """``(images path, labels path)`` of the split in ``directory``, or None where either is
    missing.  The official ``.gz`` name is preferred to an unpacked copy."""
    paths = []
    for name in file_names(split):
        candidates = [Path(directory) / name, Path(directory) / name.removesuffix(".gz")]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            return None
        paths.append(found)
    return tuple(paths)


def read_mnist(images_path, labels_path):
    """uint8 images N x 1 x H x W and int64 labels N from an IDX pair, checked to fit together
    and the labels to be classes 0..9 (MNIST's and Fashion-MNIST's ten)."""
    images = read_idx(images_path, np.uint8, ndim=3)
    labels = read_idx(labels_path, np.uint8, ndim=1)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels")
    return images[:, None], check_labels(labels_path, labels.astype(np.int64), CLASS_COUNT)
