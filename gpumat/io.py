"""Saving and loading Arrays as .npy files (bit-exact, readable by numpy.load)."""
import os

import numpy as np

from .array import Array
from .creation import array


def save(path, a):
    """Write ``a`` (an Array or array-like) to ``path`` in NumPy's .npy format."""
    data = a.gather() if isinstance(a, Array) else np.asarray(a)
    path = os.fspath(path)
    with open(path, "wb") as f:          # np.save(path) would append .npy to other suffixes
        np.save(f, data, allow_pickle=False)


def load(path, backend=None):
    """Read a .npy file onto ``backend``; the dtype is kept exactly."""
    data = np.load(os.fspath(path), allow_pickle=False)
    return array(data, backend=backend)
