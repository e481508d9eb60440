"""The errors of gpumat.nn.data (malformed data files, datasets that cannot be found,
failed downloads), and the label check every reader makes before it returns a file's labels."""
import numpy as np

from ...errors import GpumatError


class DatasetError(GpumatError, ValueError):
    """A data file that is malformed, truncated or of the wrong size, or a download whose
    checksum is wrong; the message names the file and what is wrong with it."""


class DatasetNotFoundError(GpumatError, FileNotFoundError):
    """A dataset that is neither on disk nor downloadable; the message names every directory
    searched, the files expected there, the official URLs, and how to point gpumat at a copy."""


class DownloadError(GpumatError, OSError):
    """Every mirror of a file failed (offline, refused, timed out, HTTP error).

    ``attempts`` lists ``(url, reason)`` for each mirror tried.  ``load_dataset`` turns this into
    a :class:`DatasetNotFoundError` that also says where it looked."""

    def __init__(self, filename, attempts):
        reasons = "; ".join(f"{url}: {reason}" for url, reason in attempts)
        # Not passed to OSError as its filename: that would turn the message into "[Errno None]".
        super().__init__(f"could not download {filename}: {reasons}")
        self.attempts = list(attempts)


def check_labels(path, labels, classes):
    """``labels`` (integers), unless one lies outside 0 .. classes - 1: then a DatasetError
    naming the file, the first such label and its record."""
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise DatasetError(f"{path}: label {labels[bad[0]]} of record {bad[0]} is outside "
                           f"0..{classes - 1}")
    return labels
