"""gpumat.nn.data: IDX and CIFAR-10 files in their exact formats, the real Fashion-MNIST files,
where datasets are looked for, downloads from a local HTTP server, and the DataLoader's batches,
augmentation, reproducibility and worker thread on every backend."""
import functools
import gc
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import gpumat as gm
from gpumat.nn.data import (DataLoader, Dataset, DatasetError, DatasetNotFoundError,
                            DownloadError, dataset_dirs, download_file, load_dataset, read_idx,
                            write_idx)
from gpumat.nn.data import download as download_module
from gpumat.nn.data import loader as loader_module
from gpumat.nn.data.cifar import CLASSES as CIFAR_CLASSES
from gpumat.nn.data.cifar import find_cifar10

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def data_env(monkeypatch, tmp_path):
    """No GPUMAT_DATA, and a user cache directory of our own; returns that cache's datasets dir."""
    monkeypatch.delenv("GPUMAT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gpumat" / "datasets"


# ------------------------------------------------------------------ the real Fashion-MNIST files

def _fashion_dir():
    if not all((FASHION_DIR / name).is_file() for name in FASHION_FILES):
        pytest.fail(f"the Fashion-MNIST files are missing from {FASHION_DIR}; install them with "
                    f"`apt-get install dataset-fashion-mnist` (CI does)")
    return FASHION_DIR


def _parse_idx_by_hand(path):
    """An IDX reader written independently of gpumat's: struct for the header, raw bytes."""
    raw = gzip.decompress(path.read_bytes())
    zero, code, ndim = struct.unpack_from(">HBB", raw)
    assert (zero, code) == (0, 0x08), f"{path}: unexpected magic {raw[:4].hex()}"
    shape = struct.unpack_from(f">{ndim}I", raw, 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def fashion_train():
    return load_dataset("fashion-mnist", root=_fashion_dir(), split="train", download=False)


def test_fashion_mnist_train_matches_an_independent_parse(fashion_train):
    images = _parse_idx_by_hand(FASHION_DIR / "train-images-idx3-ubyte.gz")
    labels = _parse_idx_by_hand(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    data = fashion_train
    assert (data.name, data.split, len(data)) == ("fashion-mnist", "train", 60000)
    assert data.images.shape == (60000, 1, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert data.labels[0] == labels[0]
    np.testing.assert_array_equal(data.labels, labels)
    np.testing.assert_array_equal(data.images[:, 0], images)
    assert np.bincount(data.labels).tolist() == [6000] * 10
    assert data.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                            "Shirt", "Sneaker", "Bag", "Ankle boot"]


def test_fashion_mnist_normalisation_constants_match_the_training_images(fashion_train):
    # From the histogram of the 47 million pixels: exact, and without a float copy of them all.
    counts = np.bincount(fashion_train.images.ravel(), minlength=256)
    values = np.arange(256) / 255.0
    mean = counts @ values / counts.sum()
    std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
    assert fashion_train.mean == (round(mean, 4),) and fashion_train.std == (round(std, 4),)


def test_fashion_mnist_is_found_in_the_debian_directory_without_a_root(data_env):
    _fashion_dir()
    test = load_dataset("fashion-mnist", split="test", download=False)
    assert test.path == FASHION_DIR and len(test) == 10000
    np.testing.assert_array_equal(
        test.labels, _parse_idx_by_hand(FASHION_DIR / "t10k-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(
        test.images[:, 0], _parse_idx_by_hand(FASHION_DIR / "t10k-images-idx3-ubyte.gz"))


# Debian's files hold the upstream deflate streams in a gzip header rewritten by
# strip-nondeterminism (no file name, the packaging time as mtime), so their own MD5s differ from
# the published ones.  Putting back the upstream header -- the file name and the mtime the files
# were gzipped at (found by search, 2017-08-31 10:50 UTC) -- must give the published MD5 exactly.
_UPSTREAM_MTIME = {"train": 1504176606, "t10k": 1504176627}


@pytest.mark.parametrize("filename", FASHION_FILES)
def test_fashion_mnist_md5_table_matches_the_real_files(filename):
    debian = (_fashion_dir() / filename).read_bytes()
    assert debian[:4] == b"\x1f\x8b\x08\x00", f"{filename}: Debian's gzip header changed"
    mtime = _UPSTREAM_MTIME[filename.split("-")[0]]
    upstream = (b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + debian[8:10]
                + filename.removesuffix(".gz").encode() + b"\0" + debian[10:])
    expected = download_module.RESOURCES["fashion-mnist"].md5[filename]
    assert hashlib.md5(upstream).hexdigest() == expected
    assert gzip.decompress(upstream) == gzip.decompress(debian)


# ------------------------------------------------------------------ IDX

IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_bytes(array, code):
    """The exact bytes of an IDX file, built from the format's description."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(IDX_DTYPES[code]).tobytes()


@pytest.mark.parametrize("code", sorted(IDX_DTYPES))
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 1, 7, 3), (3, 0, 2), (0,), ()])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip_in_the_exact_format(tmp_path, code, shape, compress):
    rng = np.random.default_rng(code)
    native = np.dtype(IDX_DTYPES[code]).newbyteorder("=")
    if native.kind == "f":
        array = rng.standard_normal(shape).astype(native)
        array.flat[:2] = [np.inf, np.nan][:array.size]
    else:
        info = np.iinfo(native)
        array = rng.integers(info.min, info.max, shape, endpoint=True).astype(native)
        array.flat[:2] = [info.min, info.max][:array.size]
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == compress
    assert (gzip.decompress(raw) if compress else raw) == _idx_bytes(array, code)
    back = read_idx(path)
    assert back.dtype == native and back.shape == shape and back.flags.writeable
    np.testing.assert_array_equal(back.view(f"u{native.itemsize}"),
                                  array.view(f"u{native.itemsize}"))  # bit for bit, NaN too


def test_idx_compression_is_decided_by_content_not_name(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    gzip_named_raw = write_idx(tmp_path / "raw-despite-name.gz", array, compress=False)
    raw_named_gzip = write_idx(tmp_path / "gzip-despite-name.idx", array, compress=True)
    assert gzip_named_raw.read_bytes()[:2] == b"\0\0"
    assert raw_named_gzip.read_bytes()[:2] == b"\x1f\x8b"
    for path in (gzip_named_raw, raw_named_gzip):
        np.testing.assert_array_equal(read_idx(path), array)


def test_write_idx_rejects_dtypes_idx_lacks(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x.idx", np.zeros(3, np.int64))


_GOOD = _idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)


@pytest.mark.parametrize("content, message", [
    (b"", "not an IDX file.*empty"),
    (b"\x00\x00", "not an IDX file.*00 00"),
    (b"\x01\x00\x08\x02" + _GOOD[4:], "not an IDX file.*01 00 08 02"),
    (b"\x00\x00\x0a\x02" + _GOOD[4:], "not an IDX file.*00 00 0a 02"),
    (_GOOD[:10], "truncated IDX header: 2 dimensions need 12 header bytes, the file has 10"),
    (_GOOD[:-1], r"truncated IDX data or a damaged header: shape \(3, 4\) of uint8 needs 12 "
                 r"bytes.*has 11"),
    (_GOOD + b"\0\0", r"size mismatch: shape \(3, 4\).*has 14 \(2 too many\)"),
    (gzip.compress(_GOOD)[:-12], "damaged gzip data"),
    (b"\x1f\x8b" + b"not deflate at all", "damaged gzip data"),
])
def test_malformed_idx_files_raise_dataset_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken-file.idx"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as caught:
        read_idx(path)
    assert isinstance(caught.value, ValueError) and str(path) in str(caught.value)


def _idx_header(code, shape):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


@pytest.mark.parametrize("content, message", [
    # more elements than NumPy can index, though none are stored: a zero among the sizes
    (_idx_header(0x08, (0, 2 ** 32 - 1, 2 ** 32 - 1)),
     r"dimensions \(0, 4294967295, 4294967295\) of uint8 are too large for any array"),
    (_idx_header(0x0E, (2 ** 32 - 1,) * 4) + b"x",
     r"dimensions \(4294967295, 4294967295, 4294967295, 4294967295\) of float64 are too large"),
    # 2 GiB by the header, 3 bytes in the file
    (_idx_header(0x08, (2 ** 31,)) + b"abc",
     r"truncated IDX data or a damaged header: shape \(2147483648,\) of uint8 needs 2147483648 "
     r"bytes after the header, the file has 3"),
])
def test_absurd_idx_dimensions_are_refused_without_allocating(tmp_path, content, message):
    path = tmp_path / "absurd.idx"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=message) as caught:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(caught.value) and peak < 2 ** 20


def test_idx_read_as_labels_or_images_reports_the_wrong_header(tmp_path):
    labels = np.arange(12, dtype=np.uint8) % 10
    path = tmp_path / "labels.idx"
    # A labels file whose header says 3 dimensions: the first 8 labels become two sizes.
    path.write_bytes(b"\0\0\x08\x03" + _idx_bytes(labels, 0x08)[4:])
    with pytest.raises(DatasetError, match=r"labels.idx: expected IDX data with 1 dimension, but "
                                           r"the header says 3 dimensions: \(12, 66051, "):
        read_idx(path, np.uint8, ndim=1)
    write_idx(path, labels.astype(np.int32))
    with pytest.raises(DatasetError, match=r"labels.idx: expected IDX elements of uint8, but the "
                                           r"header says int32 \(shape \(12,\)\)"):
        read_idx(path, np.uint8, ndim=1)
    np.testing.assert_array_equal(read_idx(path, np.int32, ndim=1), labels)


# ------------------------------------------------------------------ MNIST-like directories

def _write_mnist(directory, split, count, seed=0, compress=True, label_offset=0):
    """Tiny MNIST-format files; returns (images N x 28 x 28, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = ((np.arange(count) + label_offset) % 10).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if compress else ""
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_a_root_directory(data_env, tmp_path, compress):
    images, labels = _write_mnist(tmp_path / "data" / "mnist", "test", 9, compress=compress)
    data = load_dataset("mnist", root=tmp_path / "data", split="test", download=False)
    assert (data.name, data.split, len(data), data.path) == ("mnist", "test", 9,
                                                             tmp_path / "data" / "mnist")
    np.testing.assert_array_equal(data.images, images[:, None])
    np.testing.assert_array_equal(data.labels, labels)
    assert data.labels.dtype == np.int64
    assert data.classes == [str(digit) for digit in range(10)]
    assert (data.mean, data.std) == ((0.1307,), (0.3081,))


def test_search_order_gpumat_data_subdir_then_gpumat_data_then_cache(data_env, tmp_path,
                                                                     monkeypatch):
    base = tmp_path / "mine"
    monkeypatch.setenv("GPUMAT_DATA", str(base))
    assert dataset_dirs("fashion_mnist") == [base / "fashion-mnist", base,
                                             data_env / "fashion-mnist", FASHION_DIR]
    assert dataset_dirs("mnist", root=tmp_path / "r") == [tmp_path / "r" / "mnist", tmp_path / "r"]
    _write_mnist(data_env / "mnist", "train", 4, label_offset=3)
    assert load_dataset("mnist", download=False).labels[0] == 3
    _write_mnist(base, "train", 4, label_offset=2)
    assert load_dataset("mnist", download=False).labels[0] == 2
    _write_mnist(base / "mnist", "train", 4, label_offset=1)
    assert load_dataset("mnist", download=False).labels[0] == 1


def test_a_root_is_the_only_place_searched(data_env, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMAT_DATA", str(tmp_path / "env"))
    _write_mnist(tmp_path / "env" / "mnist", "train", 3)
    _write_mnist(data_env / "mnist", "train", 3)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("mnist", root=tmp_path / "empty", download=False)
    message = str(caught.value)
    assert str(tmp_path / "empty" / "mnist") in message and str(tmp_path / "env") not in message
    assert str(data_env) not in message


def test_mnist_files_that_do_not_fit_together(data_env, tmp_path):
    directory = tmp_path / "mnist"
    _write_mnist(directory, "train", 5)
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DatasetError, match="holds 5 images but .*holds 4 labels"):
        load_dataset("mnist", root=tmp_path, download=False)
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 10, 3], np.uint8))
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz: label 10 of record 3 is "
                                           "outside 0..9"):
        load_dataset("mnist", root=tmp_path, download=False)
    write_idx(directory / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.float32))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: expected IDX elements of "
                                           "uint8, but the header says float32"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_mnist_labels_with_a_wrong_header_say_so(data_env, tmp_path):
    directory = tmp_path / "mnist"
    _, labels = _write_mnist(directory, "test", 12)
    # The labels' header claims 3 dimensions (magic 00 00 08 03), the rest of the file unchanged.
    path = directory / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0\0\x08\x03" + gzip.decompress(path.read_bytes())[4:]))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: expected IDX data with 1 "
                                           r"dimension, but the header says 3 dimensions"):
        load_dataset("mnist", root=tmp_path, split="test", download=False)
    write_idx(path, np.zeros((12, 28, 28), np.uint8))        # the images file, as labels
    with pytest.raises(DatasetError, match=r"expected IDX data with 1 dimension, but the header "
                                           r"says 3 dimensions: \(12, 28, 28\)"):
        load_dataset("mnist", root=tmp_path, split="test", download=False)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", np.zeros((12, 784), np.uint8))
    write_idx(path, labels)
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: expected IDX data with 3 "
                                           r"dimensions, but the header says 2 dimensions"):
        load_dataset("mnist", root=tmp_path, split="test", download=False)


def test_dataset_refuses_labels_that_are_not_integers():
    images = np.zeros((2, 1, 2, 2), np.uint8)
    with pytest.raises(DatasetError, match="dataset 'custom': labels must be integers, got float64"):
        Dataset(images, np.array([1.0, 6.9]), CIFAR_CLASSES)


def test_unknown_dataset_and_split(data_env):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*mnist, fashion-mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be one of.*'valid'"):
        load_dataset("mnist", split="valid")


# ------------------------------------------------------------------ CIFAR-10

TRAIN_BATCH_SIZES = (7, 3, 5, 2, 4)   # records per data_batch_i; the test batch has 6


def _cifar_batch(rng, count):
    return (rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, count).astype(np.int64))


def _cifar_content(seed=0):
    """{batch file stem: (images, labels)} for data_batch_1..5 and test_batch."""
    rng = np.random.default_rng(seed)
    content = {f"data_batch_{i}": _cifar_batch(rng, count)
               for i, count in enumerate(TRAIN_BATCH_SIZES, 1)}
    content["test_batch"] = _cifar_batch(rng, 6)
    return content


def _write_cifar_binary(parent, content, meta=True):
    directory = parent / "cifar-10-batches-bin"
    directory.mkdir(parents=True, exist_ok=True)
    for stem, (images, labels) in content.items():
        # One record: the label byte, then the red, green and blue planes, each 32 rows of 32.
        records = [bytes([label]) + image[0].tobytes() + image[1].tobytes() + image[2].tobytes()
                   for image, label in zip(images, labels)]
        (directory / f"{stem}.bin").write_bytes(b"".join(records))
    if meta:
        (directory / "batches.meta.txt").write_text("\n".join(CIFAR_CLASSES) + "\n\n")
    return directory


def _write_cifar_python(parent, content, label_names=CIFAR_CLASSES):
    directory = parent / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    for stem, (images, labels) in content.items():
        batch = {b"batch_label": stem.encode(), b"labels": [int(v) for v in labels],
                 b"data": images.reshape(len(images), 3072),
                 b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
        (directory / stem).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [name.encode() for name in label_names],
            b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return directory


def _expected(content, split):
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return (np.concatenate([content[s][0] for s in stems]),
            np.concatenate([content[s][1] for s in stems]))


def _archive(directory, archive_path, extra=()):
    """A .tar.gz holding ``directory`` under its own name, plus ``(name, bytes)`` extras."""
    with tarfile.open(archive_path, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
        for name, payload in extra:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive_path


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("writer", [_write_cifar_binary, _write_cifar_python])
def test_cifar10_formats_read_planes_as_rgb(data_env, tmp_path, split, writer):
    content = _cifar_content()
    writer(tmp_path / "cifar10", content)
    data = load_dataset("cifar10", root=tmp_path, split=split, download=False)
    images, labels = _expected(content, split)
    assert data.images.shape == (len(labels), 3, 32, 32) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.classes == list(CIFAR_CLASSES) and data.mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_binary_record_layout_byte_by_byte(tmp_path):
    content = _cifar_content()
    directory = _write_cifar_binary(tmp_path, content)
    raw = (directory / "data_batch_1.bin").read_bytes()
    data = load_dataset("cifar10", root=tmp_path, download=False)
    for record, (channel, row, col) in enumerate([(0, 0, 0), (1, 5, 30), (2, 31, 31),
                                                  (0, 17, 3), (2, 0, 9), (1, 31, 0), (0, 8, 8)]):
        start = record * 3073
        assert data.labels[record] == raw[start]
        assert data.images[record, channel, row, col] == raw[start + 1 + 1024 * channel
                                                             + 32 * row + col]


def test_cifar10_directory_layouts_and_format_preference(tmp_path):
    binary, python = _cifar_content(1), _cifar_content(2)
    bin_dir = _write_cifar_binary(tmp_path, binary)
    assert find_cifar10(bin_dir, "test")[1] == bin_dir               # the batches dir itself
    assert find_cifar10(tmp_path, "test")[1] == bin_dir              # its parent
    assert find_cifar10(tmp_path / "nothing-here", "test") is None
    _write_cifar_python(tmp_path, python, label_names=[f"c{i}" for i in range(10)])
    fmt, directory = find_cifar10(tmp_path, "train")
    assert (fmt.name, directory) == ("binary", bin_dir)              # binary wins: no pickle
    data = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", download=False)
    np.testing.assert_array_equal(data.images, _expected(python, "train")[0])
    assert data.classes == [f"c{i}" for i in range(10)]             # from batches.meta


@pytest.mark.parametrize("writer, archive_name", [(_write_cifar_binary, "cifar-10-binary.tar.gz"),
                                                  (_write_cifar_python, "cifar-10-python.tar.gz")])
def test_cifar10_archives_are_extracted_next_to_themselves(tmp_path, writer, archive_name):
    content = _cifar_content(3)
    source = writer(tmp_path / "source", content)
    home = tmp_path / "home"
    home.mkdir()
    archive = _archive(source, home / archive_name,
                       extra=[(f"{source.name}/../../escaped.bin", b"x" * 3073)])
    data = load_dataset("cifar10", root=home, split="test", download=False)
    np.testing.assert_array_equal(data.images, content["test_batch"][0])
    assert (home / source.name / "test_batch" if "python" in archive_name
            else home / source.name / "test_batch.bin").is_file()
    assert not (tmp_path / "escaped.bin").exists() and not list(home.rglob("*escaped*"))
    assert not list(home.rglob(".extract-*"))
    archive.unlink()                                   # the extracted directory is reused
    assert len(load_dataset("cifar10", root=home, download=False)) == sum(TRAIN_BATCH_SIZES)
    other = _archive(source, tmp_path / "elsewhere.tar.gz")   # an archive given as the root
    assert len(load_dataset("cifar10", root=other, split="test", download=False)) == 6


def test_cifar10_archive_without_the_batches(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hello")
    archive = _archive(tmp_path / "stuff", tmp_path / "cifar-10-binary.tar.gz")
    with pytest.raises(DatasetError, match="not a CIFAR-10 archive.*stuff/readme.txt"):
        find_cifar10(archive, "train")
    archive.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(DatasetError, match="cifar-10-binary.tar.gz: not a readable .tar.gz archive"):
        find_cifar10(tmp_path, "train")


def test_malformed_cifar10_files(tmp_path):
    content = _cifar_content()
    bin_dir = _write_cifar_binary(tmp_path / "b", content)
    test_file = bin_dir / "test_batch.bin"
    test_file.write_bytes(test_file.read_bytes()[:-5])
    with pytest.raises(DatasetError, match=r"test_batch.bin: .*records of 3073 bytes.*has 18433"):
        load_dataset("cifar10", root=tmp_path / "b", split="test", download=False)
    test_file.write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(DatasetError, match="test_batch.bin: label 12 of record 0 is outside 0..9"):
        load_dataset("cifar10", root=tmp_path / "b", split="test", download=False)
    py_dir = _write_cifar_python(tmp_path / "p", content)
    cases = [({b"labels": [1]}, "dict with keys b'data' and b'labels'; found \\[b'labels'\\]"),
             ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [1, 2]},
              r"b'data' should be uint8 N x 3072, found uint8 of shape \(2, 3071\)"),
             ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]},
              r"2 images but b'labels' has shape \(1,\)")]
    for batch, message in cases:
        (py_dir / "test_batch").write_bytes(pickle.dumps(batch))
        with pytest.raises(DatasetError, match=message):
            load_dataset("cifar10", root=tmp_path / "p", split="test", download=False)
    (py_dir / "test_batch").write_bytes(b"definitely not a pickle")
    with pytest.raises(DatasetError, match="test_batch: not a CIFAR-10 pickle file"):
        load_dataset("cifar10", root=tmp_path / "p", split="test", download=False)


@pytest.mark.parametrize("labels, bad", [
    ([3, 6.9, 1], "label 6.9 of record 1"),        # was truncated to 6
    ([3, 4.0, 1], "label 4.0 of record 1"),
    ([2 ** 70, 1, 2], "label 1180591620717411303424 of record 0"),   # was an OverflowError
    ([1, 2, -1], "label -1 of record 2"),
    ([1, 10, 2], "label 10 of record 1"),
    ([True, 1, 2], "label True of record 0"),
    ([1, "2", 3], "label '2' of record 1"),
])
def test_cifar10_pickle_labels_must_be_integers_in_the_class_range(tmp_path, labels, bad):
    py_dir = _write_cifar_python(tmp_path, _cifar_content())
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}
    (py_dir / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=f"test_batch: {bad} is not an integer in 0..9"):
        load_dataset("cifar10", root=tmp_path, split="test", download=False)
    batch[b"labels"] = np.array([9, 0, 5], np.uint8)        # integers of any width are fine
    (py_dir / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    data = load_dataset("cifar10", root=tmp_path, split="test", download=False)
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [9, 0, 5]


# ------------------------------------------------------------------ downloads

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """(directory, base URL) of an HTTP server on 127.0.0.1 serving that directory."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def _unused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _mirror_table(monkeypatch, name, mirrors, files):
    """Point dataset ``name`` at ``mirrors`` with the MD5s of the given {file name: path}."""
    md5 = {filename: hashlib.md5(path.read_bytes()).hexdigest() for filename, path in files.items()}
    monkeypatch.setitem(download_module.RESOURCES, name,
                        download_module.Resource(mirrors=tuple(mirrors), md5=md5))
    return md5


def test_mnist_download_falls_back_to_the_next_mirror(data_env, tmp_path, http_root, monkeypatch):
    served, url = http_root
    images, labels = _write_mnist(served, "train", 6)
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    dead = f"http://127.0.0.1:{_unused_port()}/"
    _mirror_table(monkeypatch, "mnist", [dead, url], {n: served / n for n in names})
    data = load_dataset("mnist", root=tmp_path / "data", split="train")
    target = tmp_path / "data" / "mnist"
    assert data.path == target and sorted(p.name for p in target.iterdir()) == sorted(names)
    np.testing.assert_array_equal(data.images[:, 0], images)
    np.testing.assert_array_equal(data.labels, labels)
    for name in names:
        assert (target / name).read_bytes() == (served / name).read_bytes()


def test_downloads_go_to_gpumat_data_or_else_the_cache(data_env, tmp_path, http_root,
                                                       monkeypatch):
    served, url = http_root
    _write_mnist(served, "test", 3)
    names = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    _mirror_table(monkeypatch, "fashion-mnist", [url], {n: served / n for n in names})
    # An empty root stands in for the Debian directory, which would otherwise be found first.
    assert load_dataset("fashion-mnist", root=tmp_path / "r",
                        split="test").path == tmp_path / "r" / "fashion-mnist"
    _mirror_table(monkeypatch, "mnist", [url], {n: served / n for n in names})
    monkeypatch.setenv("GPUMAT_DATA", str(tmp_path / "env"))
    assert load_dataset("mnist", split="test").path == tmp_path / "env" / "mnist"
    monkeypatch.delenv("GPUMAT_DATA")
    assert load_dataset("mnist", split="test").path == data_env / "mnist"


def test_cifar10_download_fetches_the_binary_archive(data_env, tmp_path, http_root, monkeypatch):
    served, url = http_root
    content = _cifar_content(4)
    source = _write_cifar_binary(tmp_path / "source", content)
    _archive(source, served / "cifar-10-binary.tar.gz")
    _mirror_table(monkeypatch, "cifar10", [url],
                  {"cifar-10-binary.tar.gz": served / "cifar-10-binary.tar.gz"})
    data = load_dataset("cifar10", split="test")
    np.testing.assert_array_equal(data.labels, content["test_batch"][1])
    assert (data_env / "cifar10" / "cifar-10-binary.tar.gz").is_file()
    assert data.path == data_env / "cifar10"


def test_md5_mismatch_saves_nothing(data_env, tmp_path, http_root, monkeypatch):
    served, url = http_root
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    monkeypatch.setitem(download_module.RESOURCES, "mnist", download_module.Resource(
        mirrors=(url,), md5={"t10k-labels-idx1-ubyte.gz": "0" * 32}))
    got = hashlib.md5(b"tampered").hexdigest()
    message = (f"MD5 mismatch, expected {'0' * 32}: {url}t10k-labels-idx1-ubyte.gz sent 8 bytes "
               f"with MD5 {got}")
    with pytest.raises(DatasetError, match=message):
        download_file("mnist", "t10k-labels-idx1-ubyte.gz", tmp_path / "target")
    assert list((tmp_path / "target").iterdir()) == []        # no partial or .part file left


def test_offline_error_names_dataset_dirs_files_urls_and_options(data_env, tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{_unused_port()}/mnist/"
    real = download_module.RESOURCES["mnist"]
    monkeypatch.setitem(download_module.RESOURCES, "mnist",
                        download_module.Resource(mirrors=(dead,), md5=real.md5))
    monkeypatch.setenv("GPUMAT_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("mnist", split="test")
    error = caught.value
    assert isinstance(error, FileNotFoundError) and isinstance(error.__cause__, DownloadError)
    message = str(error)
    for expected in ["dataset 'mnist' (test split) not found", "the download failed",
                     str(tmp_path / "env" / "mnist"), str(tmp_path / "env"),
                     str(data_env / "mnist"), "t10k-images-idx3-ubyte.gz",
                     "t10k-labels-idx1-ubyte.gz", f"{dead}t10k-images-idx3-ubyte.gz",
                     "Connection refused", "--data DIR", "GPUMAT_DATA"]:
        assert expected in message, f"{expected!r} missing from:\n{message}"
    assert list((tmp_path / "env" / "mnist").iterdir()) == []


@pytest.mark.parametrize("name, urls", [
    ("mnist", ["https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
               "http://yann.lecun.com/exdb/mnist/train-labels-idx1-ubyte.gz"]),
    ("fashion-mnist", ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
                       "train-labels-idx1-ubyte.gz", "apt-get install dataset-fashion-mnist"]),
    ("cifar10", ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                 "cifar-10-batches-bin/{data_batch_1.bin, data_batch_2.bin",
                 "cifar-10-batches-py/{data_batch_1,", "cifar-10-python.tar.gz"]),
])
def test_not_found_without_download_lists_the_official_urls(data_env, tmp_path, name, urls):
    with pytest.raises(DatasetNotFoundError, match="download=False") as caught:
        load_dataset(name, root=tmp_path, download=False)
    for expected in urls + [str(tmp_path / name), "--data DIR", "GPUMAT_DATA"]:
        assert expected in str(caught.value), f"{expected!r} missing from:\n{caught.value}"


def test_a_silent_server_times_out(tmp_path, monkeypatch):
    with socket.socket() as silent:              # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setitem(download_module.RESOURCES, "mnist", download_module.Resource(
            mirrors=(f"http://127.0.0.1:{silent.getsockname()[1]}/",), md5={"f.gz": "0" * 32}))
        with pytest.raises(DownloadError, match="could not download f.gz: .*timed out") as caught:
            download_file("mnist", "f.gz", tmp_path, timeout=0.2)
    assert len(caught.value.attempts) == 1 and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ DataLoader

def _prefetch_threads():
    return [thread for thread in threading.enumerate()
            if thread.name == loader_module.THREAD_NAME and thread.is_alive()]


def _numbered(count, channels=1, size=4):
    """Images whose every pixel is the sample's index (mod 256), and labels = index."""
    index = np.arange(count)
    images = np.broadcast_to((index % 256).astype(np.uint8)[:, None, None, None],
                             (count, channels, size, size)).copy()
    return images, index


def _epoch(loader):
    return [(x.gather(), y.gather()) for x, y in loader]


@pytest.mark.parametrize("count, batch, drop_last, sizes", [
    (10, 3, False, [3, 3, 3, 1]), (10, 3, True, [3, 3, 3]), (9, 3, False, [3, 3, 3]),
    (9, 3, True, [3, 3, 3]), (2, 5, False, [2]), (2, 5, True, []), (1, 1, False, [1])])
def test_batch_counts(backend, count, batch, drop_last, sizes):
    loader = DataLoader(_numbered(count), batch, drop_last=drop_last, backend=backend)
    assert len(loader) == len(sizes)
    batches = list(loader)
    assert [len(y.gather()) for _, y in batches] == sizes
    for x, y in batches:
        assert (x.backend, y.backend, x.dtype, y.dtype) == (backend, backend, "float32", "int64")


@pytest.mark.parametrize("prefetch", [True, False])
def test_plain_batches_are_pixels_over_255(backend, prefetch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 2, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 11).astype(np.uint8)
    batches = _epoch(DataLoader((images, labels), 4, backend=backend, prefetch=prefetch))
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)


def test_shuffle_sees_every_sample_once_differs_by_epoch_and_reproduces(backend):
    data = _numbered(50)
    loader = DataLoader(data, 8, shuffle=True, backend=backend, seed=3)
    epochs = [_epoch(loader) for _ in range(3)]
    orders = []
    for batches in epochs:
        y = np.concatenate([b[1] for b in batches])
        x = np.concatenate([b[0] for b in batches])
        assert sorted(y.tolist()) == list(range(50))
        np.testing.assert_array_equal(x[:, 0, 0, 0] * 255, y)      # images follow their labels
        orders.append(y.tolist())
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(50))
    again = DataLoader(data, 8, shuffle=True, backend=backend, seed=3)
    assert [np.concatenate([b[1] for b in _epoch(again)]).tolist() for _ in range(3)] == orders
    other = DataLoader(data, 8, shuffle=True, backend=backend, seed=4)
    assert np.concatenate([b[1] for b in _epoch(other)]).tolist() != orders[0]


def test_normalisation_per_channel_and_from_the_dataset(backend):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    reference = ((images / 255.0 - np.array(mean)[:, None, None])
                 / np.array(std)[:, None, None])
    dataset = Dataset(images, np.arange(6) % 10, CIFAR_CLASSES, mean=mean, std=std)
    for normalize in [(mean, std), True]:
        (x, _), = _epoch(DataLoader(dataset, 6, normalize=normalize, backend=backend))
        np.testing.assert_allclose(x, reference, rtol=0, atol=2e-6)
    (x, _), = _epoch(DataLoader((images[:, :1], np.zeros(6, int)), 6, normalize=(0.5, 0.25),
                                backend=backend, dtype="double" if backend == "cpu" else "single"))
    np.testing.assert_allclose(x, (images[:, :1] / 255.0 - 0.5) / 0.25, rtol=0, atol=2e-6)


def test_pad_to_centres_on_black(backend):
    images = np.full((3, 1, 28, 28), 255, np.uint8)
    (x, _), = _epoch(DataLoader((images, np.zeros(3, int)), 3, pad_to=32, backend=backend))
    assert x.shape == (3, 1, 32, 32)
    assert (x[:, :, 2:30, 2:30] == 1).all() and x.sum() == 3 * 28 * 28
    (x, _), = _epoch(DataLoader((images[:, :, :5, :4], np.zeros(3, int)), 3, pad_to=(8, 7),
                                normalize=(0.25, 0.5), backend=backend))
    inside = np.zeros((8, 7), bool)
    inside[1:6, 1:5] = True                        # odd extra rows and columns go last
    np.testing.assert_allclose(x[:, 0][:, inside], 1.5)
    np.testing.assert_allclose(x[:, 0][:, ~inside], -0.5)  # black, normalised


def _coordinate_images(count, size):
    """Every image: pixel (row, col) = row * size + col + 1 (0 is left for padding)."""
    grid = (np.arange(size)[:, None] * size + np.arange(size)[None, :] + 1).astype(np.uint8)
    return np.broadcast_to(grid, (count, 1, size, size)).copy(), grid


def test_random_crop_shifts_each_image_by_its_own_offset(backend):
    padding, size = 2, 6
    images, grid = _coordinate_images(64, size)
    padded = np.pad(grid, padding)
    (x, _), = _epoch(DataLoader((images, np.zeros(64, int)), 64, random_crop=padding,
                                backend=backend))
    pixels = np.rint(x[:, 0] * 255).astype(np.uint8)
    offsets = set()
    for image in pixels:
        matches = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if np.array_equal(image, padded[dy:dy + size, dx:dx + size])]
        assert len(matches) == 1, f"not a crop of the padded image:\n{image}"
        offsets.add(matches[0])
    assert len(offsets) > 10                   # 25 offsets, 64 draws: a per-image choice


def test_hflip_mirrors_about_half_of_the_images(backend):
    images, grid = _coordinate_images(64, 5)
    (x, _), = _epoch(DataLoader((images, np.zeros(64, int)), 64, hflip=True, backend=backend))
    pixels = np.rint(x[:, 0] * 255).astype(np.uint8)
    flipped = [np.array_equal(image, grid[:, ::-1]) for image in pixels]
    kept = [np.array_equal(image, grid) for image in pixels]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54
    np.testing.assert_array_equal(images[:, 0], np.broadcast_to(grid, (64, 5, 5)))  # untouched


def test_prefetch_changes_nothing_and_uploads_in_the_consumer_thread(backend, monkeypatch):
    uploads = []
    real_upload = loader_module._to_array

    def recording_upload(*args, **kwargs):
        uploads.append(threading.current_thread())
        return real_upload(*args, **kwargs)

    monkeypatch.setattr(loader_module, "_to_array", recording_upload)
    images, grid = _coordinate_images(40, 6)
    options = dict(shuffle=True, pad_to=8, random_crop=3, hflip=True, normalize=(0.1, 0.2),
                   backend=backend, seed=11)
    with_thread = DataLoader((images, np.arange(40)), 7, prefetch=True, **options)
    without = DataLoader((images, np.arange(40)), 7, prefetch=False, **options)
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(_epoch(with_thread), _epoch(without), strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert uploads and set(uploads) == {threading.main_thread()}


def test_resume_from_state_dict_gives_the_same_batches(backend):
    images, _ = _coordinate_images(30, 6)
    options = dict(shuffle=True, random_crop=2, hflip=True, backend=backend, seed=5)
    first = DataLoader((images, np.arange(30)), 8, **options)
    _epoch(first)
    state = first.state_dict()
    assert state == {"epoch": 1, "seed": 5}
    expected = _epoch(first)
    resumed = DataLoader((images, np.arange(30)), 8, **dict(options, seed=0))
    resumed.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(_epoch(resumed), expected, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match=r"missing \['seed'\]"):
        resumed.load_state_dict({"epoch": 3})


def test_abandoned_iteration_stops_the_worker(backend):
    loader = DataLoader(_numbered(100), 2, backend=backend)
    assert not _prefetch_threads()
    for _ in loader:
        assert len(_prefetch_threads()) == 1
        break
    assert not _prefetch_threads()
    iterator = iter(loader)
    next(iterator)
    del iterator
    gc.collect()
    assert not _prefetch_threads()
    with pytest.raises(KeyError, match="in the loop body"):
        for _ in loader:
            raise KeyError("in the loop body")
    assert not _prefetch_threads()


def test_worker_exceptions_reach_the_consumer(backend, monkeypatch):
    loader = DataLoader(_numbered(20), 4, backend=backend)
    real_make_batch = loader._make_batch
    calls = []

    def failing_make_batch(images, labels, rng):
        calls.append(threading.current_thread())
        if len(calls) == 3:
            raise RuntimeError("augmentation failed on batch 3")
        return real_make_batch(images, labels, rng)

    monkeypatch.setattr(loader, "_make_batch", failing_make_batch)
    seen = []
    with pytest.raises(RuntimeError, match="augmentation failed on batch 3"):
        for _, y in loader:
            seen.append(y.gather().tolist())
    assert seen == [[0, 1, 2, 3]]     # batch 2 was uploaded, waiting, when batch 3 failed
    assert threading.main_thread() not in calls and not _prefetch_threads()


def test_default_backend_is_taken_when_the_epoch_starts():
    (x, y), = DataLoader(_numbered(3), 3)
    assert x.backend == y.backend == gm.default_backend()


def test_real_fashion_mnist_batches(backend):
    test = load_dataset("fashion-mnist", root=_fashion_dir(), split="test", download=False)
    loader = DataLoader(test, 1000, shuffle=True, normalize=True, pad_to=32, backend=backend)
    total, count, labels = 0.0, 0, []
    for x, y in loader:
        assert x.shape[1:] == (1, 32, 32)
        total += float(gm.sum(x).gather())
        count += x.shape[0]
        labels.append(y.gather())
    assert count == 10000
    np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.sort(test.labels))
    pixels = np.pad(test.images / 255.0, ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.testing.assert_allclose(total / pixels.size, (pixels.mean() - 0.2860) / 0.3530, rtol=1e-4)


@pytest.mark.parametrize("data, kwargs, error, message", [
    ((np.zeros((0, 1, 2, 2), np.uint8), np.zeros(0, int)), {}, DatasetError, "no samples"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.zeros(2, int)), {}, DatasetError,
     "3 images but 2 labels"),
    (_numbered(3), {"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
    (_numbered(3), {"batch_size": 2.5}, ValueError, "got 2.5"),
    (_numbered(3), {"normalize": ((0.1, 0.2), 0.3)}, ValueError,
     "mean has 2 values for 1 channels"),
    (_numbered(3), {"normalize": (0.1, 0.0)}, ValueError, "std must be positive"),
    (_numbered(3), {"normalize": True}, ValueError, "normalize=True needs a Dataset"),
    (_numbered(3), {"pad_to": 3}, ValueError, "pad_to 3 x 3 is smaller than the images, 4 x 4"),
    (_numbered(3), {"random_crop": -1}, ValueError, "random_crop padding must be >= 0"),
    (_numbered(3), {"seed": -2}, ValueError, "seed must be a non-negative integer"),
    (_numbered(3), {"dtype": "int32"}, TypeError, "dtype must be single or double"),
    ((np.zeros((3, 1, 2, 2), np.int32), np.zeros(3, int)), {}, TypeError,
     "images must be uint8 or float"),
    ((np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3)), {}, TypeError,
     "labels must be a vector of integers"),
    ("images.npy", {}, TypeError, "a Dataset or an \\(images, labels\\) pair, not str"),
])
def test_loader_argument_errors(data, kwargs, error, message):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(error, match=message):
        DataLoader(data, **kwargs)
