"""The cpu backend's convolution columns, remembered from a forward pass for the weight
gradient that lowers the same input again.

conv2d and conv2d_backward_weight both run im2col on the layer's input; the second finds
the first one's columns here instead of copying them out again (on LeNet-5 about a tenth of
a training step).  An entry is found by the *bytes* of the input, not by its identity: it
keeps a copy of the input and serves only an input that still holds exactly those bytes, so
a write into the input in between (setitem, an in-place optimiser update) can never get
stale columns.

There is one entry per input shape, dtype and geometry (a network's layers), and it owns two
buffers that every later miss overwrites in place: fresh buffers on every miss, kept alive
across a training step, fragment the heap enough that glibc hands memory back to the kernel
and every large allocation of the step page-faults again (measured: 3000 faults, +50% time
per LeNet step).  So the columns handed out are only valid until the next lowering of that
shape in the same thread: gpumat/conv.py uses them at once and drops them (each thread has
its own entries).  They are read-only to their users.  At most MAX_BYTES are held per thread,
the least recently used entries going first; ``clear()`` frees them.
"""
import threading
from collections import OrderedDict

import numpy as np

#: bytes of columns and input copies one thread keeps at most
MAX_BYTES = 64 << 20


class ColumnCache:
    def __init__(self):
        self._local = threading.local()

    @property
    def _entries(self):
        entries = getattr(self._local, "entries", None)
        if entries is None:
            entries = self._local.entries = OrderedDict()   # key -> (input copy, columns)
        return entries

    @property
    def nbytes(self):
        """Bytes held by the calling thread's entries."""
        return sum(copy.nbytes + cols.nbytes for copy, cols in self._entries.values())

    def columns(self, x, geometry, shape, lower, same_bytes):
        """The columns (of ``shape``) of native ``x`` for ``geometry`` (a hashable tuple),
        read-only and valid until the next call for the same input shape in this thread.
        ``lower(x, out)`` writes them into ``out``."""
        entries = self._entries
        key = (x.shape, x.dtype, geometry)
        entry = entries.get(key)
        if entry is not None:
            copy, cols = entry
            entries.move_to_end(key)
            if same_bytes(x, copy):
                return cols
            np.copyto(copy, x)
        else:
            cols = np.empty(shape, x.dtype)
            if x.nbytes + cols.nbytes <= MAX_BYTES:
                entries[key] = (x.copy(), cols)
                while self.nbytes > MAX_BYTES:
                    entries.popitem(last=False)
        cols.flags.writeable = True
        lower(x, cols)
        cols.flags.writeable = False
        return cols

    def clear(self):
        """Free the calling thread's entries."""
        self._entries.clear()
