"""DataLoader: a dataset in batches of gpumat Arrays, shuffled, padded, augmented and normalised
on the host by one background thread while the consumer works on the previous batch.

Threads: the worker thread only runs NumPy (indexing, augmentation, normalisation into contiguous
float arrays).  The device upload of batch i+1 happens in the consuming thread, just before batch
i is handed out, because a backend such as OpenCL must not be driven from two threads at once.
"""
import queue
import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ... import backends as _backends
from ... import dtypes as _dtypes
from ...creation import array as _to_array
from .errors import DatasetError

QUEUE_DEPTH = 2            # host batches the worker may have ready ahead of the consumer
THREAD_NAME = "gpumat-DataLoader-prefetch"
_POLL_SECONDS = 0.05       # how often a worker blocked on a full queue looks for a stop request
_END = object()            # the worker's last item


def _pad(images, height, width):
    """Images zero-padded to height x width, centred (an odd extra row or column goes last)."""
    count, channels, h, w = images.shape
    top, left = (height - h) // 2, (width - w) // 2
    out = np.zeros((count, channels, height, width), images.dtype)
    out[:, :, top:top + h, left:left + w] = images
    return out


def _random_crop(images, padding, rng):
    """Each image padded by ``padding`` zeros on every side, then cropped back to its size at
    an offset of its own, uniform in [0, 2 * padding] along each axis."""
    count, _, h, w = images.shape
    padded = _pad(images, h + 2 * padding, w + 2 * padding)
    rows = rng.integers(0, 2 * padding + 1, count)
    cols = rng.integers(0, 2 * padding + 1, count)
    # Every h x w window as a view (count, C, offsets, offsets, h, w); picking one per image
    # with separated advanced indices puts the image axis first: count x C x h x w.
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))
    return windows[np.arange(count), :, rows, cols]


def _random_hflip(images, rng):
    """Each image mirrored left-right with probability 1/2 (a new array; the input is kept)."""
    flip = rng.random(len(images)) < 0.5
    return np.where(flip[:, None, None, None], images[..., ::-1], images)


def _produce(source, out, stop):
    """The worker thread: every item of ``source``, then ``_END``, onto the queue ``out``; an
    exception goes onto the queue instead, for the consumer to raise.  Ends early on ``stop``."""
    try:
        for item in source:
            if not _put(out, item, stop):
                return
        _put(out, _END, stop)
    except Exception as error:
        _put(out, error, stop)


def _put(out, item, stop):
    """Put ``item`` on ``out`` unless ``stop`` is set first; True when it went in."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            pass
    return False


class _Prefetcher:
    """An iterator of host batches run by one background thread, QUEUE_DEPTH items ahead;
    iterating yields them and raises the worker's exception, ``close()`` stops the thread."""

    def __init__(self, source):
        self._queue = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        # daemon: even a loader nobody closes can never keep the process alive.
        self._thread = threading.Thread(target=_produce, args=(source, self._queue, self._stop),
                                        name=THREAD_NAME, daemon=True)
        self._thread.start()

    def __iter__(self):
        while (item := self._queue.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self):
        self._stop.set()
        # Emptying the queue wakes a worker blocked on a full one now rather than at its next poll.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


def _images_labels_stats(data):
    """``(images, labels, (mean, std))`` of a Dataset-like object or an (images, labels) pair."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, data.labels, (getattr(data, "mean", None), getattr(data, "std", None))
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], (None, None)
    raise TypeError(f"DataLoader takes a Dataset or an (images, labels) pair, "
                    f"not {type(data).__name__}")


def _per_channel(values, channels, what):
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size not in (1, channels):
        raise ValueError(f"normalize: {what} has {values.size} values for {channels} channels")
    return np.broadcast_to(values, channels).reshape(1, channels, 1, 1)


class DataLoader:
    """Batches ``(x, y)`` of a Dataset, or of an ``(images, labels)`` pair, as gpumat Arrays:
    x float N x C x H x W, y int64 N, both on ``backend``.

    - images: uint8 N x C x H x W (or N x H x W, one channel), scaled by 1/255; float images
      are taken as they are.  Labels: N integers.
    - batch_size: samples per batch; the last batch is smaller, or dropped with ``drop_last``.
    - shuffle: a new order every epoch, drawn from (seed, epoch): each epoch differs, and a
      run is reproducible.  Augmentation draws from the same generator.
    - normalize: None, ``(mean, std)`` (scalars or one per channel, for pixels in [0, 1]), or
      True for the Dataset's own ``mean`` and ``std``.
    - pad_to: a size or (height, width): images are zero-padded to it, centred (28 x 28
      MNIST to 32 x 32 for LeNet-5).
    - random_crop: a padding p: each image is padded by p zeros on every side and cropped
      back to its size at a random offset of its own.
    - hflip: each image is mirrored left-right with probability 1/2.
    - backend: a gpumat backend name; None means the default backend when an epoch starts.
    - dtype: of x, 'single' or 'double'.
    - prefetch: prepare batches in a background thread (two ahead) and upload one ahead.

    Padding is black (pixel 0, the background of MNIST-like images) and normalisation comes
    after it, so padded pixels normalise exactly like black ones.  ``state_dict()`` and
    ``load_state_dict()`` resume a run at an epoch boundary.
    """

    def __init__(self, data, batch_size, shuffle=False, drop_last=False, normalize=None,
                 pad_to=None, random_crop=None, hflip=False, backend=None, dtype="single",
                 seed=0, prefetch=True):
        images, labels, stats = _images_labels_stats(data)
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or not (images.dtype == np.uint8 or images.dtype.kind == "f"):
            raise _dtypes.DtypeError(f"DataLoader: images must be uint8 or float N x C x H x W, "
                                     f"got {images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise _dtypes.DtypeError(f"DataLoader: labels must be a vector of integers, got "
                                     f"{labels.dtype} of shape {labels.shape}")
        if len(images) != len(labels):
            raise DatasetError(f"DataLoader: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise DatasetError("DataLoader: the dataset has no samples")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, "
                             f"got {batch_size!r}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.hflip, self.prefetch = hflip, prefetch
        self.pad_to = self._check_pad_to(pad_to)
        self.random_crop = int(random_crop or 0)
        if self.random_crop < 0:
            raise ValueError(f"DataLoader: random_crop padding must be >= 0, got {random_crop}")
        if backend is not None:
            _backends.get(backend)     # an unknown or unavailable backend fails here, not later
        self.backend = backend
        self.dtype = _dtypes.normalize(dtype)
        if not _dtypes.is_float(self.dtype):
            raise _dtypes.DtypeError(f"DataLoader: dtype must be single or double, not {dtype}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"DataLoader: seed must be a non-negative integer, got {seed!r}")
        self.seed, self.epoch = int(seed), 0
        self._divisor, self._offset = self._normalisation(normalize, stats)

    def _check_pad_to(self, pad_to):
        if pad_to is None:
            return None
        height, width = (pad_to, pad_to) if np.isscalar(pad_to) else pad_to
        if height < self.images.shape[2] or width < self.images.shape[3]:
            raise ValueError(f"DataLoader: pad_to {height} x {width} is smaller than the images, "
                             f"{self.images.shape[2]} x {self.images.shape[3]}")
        return int(height), int(width)

    def _normalisation(self, normalize, stats):
        """x = images / divisor - offset, per channel: (pixels / 255 - mean) / std in one pass
        (the offset is None without normalisation, where x is exactly pixels / 255)."""
        channels = self.images.shape[1]
        scale = 255.0 if self.images.dtype == np.uint8 else 1.0
        if normalize is None or normalize is False:
            return self.dtype.type(scale), None
        if normalize is True:
            if stats[0] is None or stats[1] is None:
                raise ValueError("DataLoader: normalize=True needs a Dataset with mean and std; "
                                 "pass normalize=(mean, std) instead")
            normalize = stats
        mean, std = normalize
        mean = _per_channel(mean, channels, "mean")
        std = _per_channel(std, channels, "std")
        if (std <= 0).any():
            raise ValueError(f"DataLoader: normalize std must be positive, got {std.ravel()}")
        return (scale * std).astype(self.dtype), (mean / std).astype(self.dtype)

    def __len__(self):
        """Batches per epoch."""
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def state_dict(self):
        """What resuming at an epoch boundary needs: the next epoch's number and the seed."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state):
        missing = {"epoch", "seed"} - set(state)
        if missing:
            raise ValueError(f"DataLoader.load_state_dict: missing {sorted(missing)} in {state!r}")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

    def __iter__(self):
        """One epoch of batches; starting it advances ``epoch``."""
        backend = _backends.get(self.backend)
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        host_batches = self._host_batches(rng)
        if not self.prefetch:
            return (self._upload(batch, backend) for batch in host_batches)
        return self._prefetched(host_batches, backend)

    def _host_batches(self, rng):
        """The epoch's batches as NumPy ``(x, y)``.  Runs in the worker thread: NumPy only."""
        order = rng.permutation(len(self.labels)) if self.shuffle else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = start + self.batch_size
            index = slice(start, stop) if order is None else order[start:stop]
            yield self._make_batch(self.images[index], self.labels[index], rng)

    def _make_batch(self, images, labels, rng):
        if self.pad_to is not None:
            images = _pad(images, *self.pad_to)
        if self.random_crop:
            images = _random_crop(images, self.random_crop, rng)
        if self.hflip:
            images = _random_hflip(images, rng)
        x = np.empty(images.shape, self.dtype)
        np.divide(images, self._divisor, out=x)
        if self._offset is not None:
            x -= self._offset
        return x, labels.astype(np.int64)

    @staticmethod
    def _upload(batch, backend):
        x, y = batch
        return _to_array(x, backend=backend), _to_array(y, backend=backend)

    def _prefetched(self, host_batches, backend):
        worker = _Prefetcher(host_batches)
        try:
            ahead = None
            for batch in worker:
                uploaded = self._upload(batch, backend)     # batch i+1, before i is handed out
                if ahead is not None:
                    yield ahead
                ahead = uploaded
            if ahead is not None:
                yield ahead
        finally:
            # Runs on exhaustion, break, an exception in the loop body, or garbage collection.
            worker.close()
