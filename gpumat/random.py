"""Counter-based random numbers that are identical on every backend.

Element ``i`` of a draw is ``mix64(key + (counter + i) * GAMMA)`` (SplitMix64's output
function), where ``key = mix64(seed)`` and ``counter`` advances by the number of elements
drawn.  Kernels (kernels/common/random.h) compute the same 64-bit integers, so
``gm.rand(3, 4)`` and ``gm.randi`` give the same numbers on cpu, opencl and cuda after the
same ``gm.seed``, bit for bit; ``gm.randn`` (Box-Muller on those uniforms) agrees to a few
float32 ulps, since log, sqrt and cos are each device's own (in float32, 18% of draws differ
by 1 ulp between cpu and PoCL).
This module holds the generator state and the NumPy reference implementation.
"""
import threading

import numpy as np

GAMMA = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64_int(z):
    """SplitMix64 output function on a Python int (used for the key)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def raw_bits(key, counter, n):
    """uint64 array of the n raw draws starting at ``counter``."""
    z = (np.arange(n, dtype=np.uint64) + np.uint64(counter & _MASK)) * np.uint64(GAMMA)
    z += np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def reference(kind, n, dtype, key, counter, low=0, span=1):
    """NumPy reference of every RANDOM_KINDS draw (flat, length n)."""
    dtype = np.dtype(dtype)
    z = raw_bits(key, counter, n)
    if kind == "uniform":
        if dtype == np.float64:
            return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
        return ((z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)).astype(dtype)
    if kind == "normal":
        if dtype == np.float64:
            u1 = ((z >> np.uint64(32)).astype(np.float64) + 1.0) * 2.0 ** -32
            u2 = (z & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0 ** -32
            return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        f = np.float32
        u1 = ((z >> np.uint64(40)).astype(f) + f(1)) * f(2.0 ** -24)
        u2 = (z & np.uint64(0xFFFFFF)).astype(f) * f(2.0 ** -24)
        return (np.sqrt(f(-2) * np.log(u1)) * np.cos(f(2 * np.pi) * u2)).astype(dtype)
    if kind == "integers":
        offs = ((z >> np.uint64(32)) * np.uint64(span)) >> np.uint64(32)
        return (np.int64(low) + offs.astype(np.int64)).astype(dtype)
    raise ValueError(f"unknown random kind {kind!r}")


class Generator:
    """Global generator state: seed-derived key plus a counter of numbers drawn."""

    def __init__(self, seed=0):
        self._lock = threading.Lock()
        self.seed(seed)

    def seed(self, seed):
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        with self._lock:
            self._seed = seed
            self.key = mix64_int(seed * GAMMA + 0x6A09E667F3BCC909)
            self.counter = 0

    def take(self, n):
        """Reserve n draws; returns (key, first counter)."""
        with self._lock:
            start = self.counter
            self.counter += int(n)
            return self.key, start

    def give_back(self, key, start, n):
        """Undo ``take(n)`` that returned (key, start) and whose numbers were never made (the
        draw failed: out of memory, a bad argument found late), so that a failed call leaves
        the stream where it was. Nothing happens if the generator was reseeded or drew again
        since: the stream then went on without those numbers."""
        with self._lock:
            if self.key == key and self.counter == start + int(n):
                self.counter = start

    def get_state(self):
        return {"seed": self._seed, "counter": self.counter}

    def set_state(self, state):
        self.seed(state["seed"])
        self.counter = int(state["counter"])


GLOBAL = Generator(0)
