"""gpumat.nn.data: MNIST, Fashion-MNIST and CIFAR-10 from their official files (found on disk or
downloaded and checked), and a DataLoader that batches, augments and prefetches them onto a
gpumat backend.

    from gpumat.nn.data import DataLoader, load_dataset
    train = load_dataset("fashion-mnist", split="train")          # uint8 N x 1 x 28 x 28
    for x, y in DataLoader(train, 128, shuffle=True, normalize=True):
        ...                                                        # float32 x, int64 y Arrays
"""
from .cifar import extract_archive, find_cifar10, read_cifar10, read_cifar_binary, read_cifar_pickle
from .datasets import NAMES, Dataset, canonical_name, dataset_dirs, load_dataset
from .download import RESOURCES, download_file, file_md5, official_urls
from .errors import DatasetError, DatasetNotFoundError, DownloadError
from .idx import read_idx, write_idx
from .loader import DataLoader
from .mnist import find_mnist, read_mnist

__all__ = ["DataLoader", "Dataset", "DatasetError", "DatasetNotFoundError", "DownloadError",
           "NAMES", "RESOURCES", "canonical_name", "dataset_dirs", "download_file",
           "extract_archive", "file_md5", "find_cifar10", "find_mnist", "load_dataset",
           "official_urls", "read_cifar10", "read_cifar_binary", "read_cifar_pickle", "read_idx",
           "read_mnist", "write_idx"]
