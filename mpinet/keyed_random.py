"""Counter-based random numbers: a pure function of (key..., counter), defined in this file.

Why not a NumPy Generator: the sample order and the augmentation of a sample must be the same
on every rank, at every world size, after a resume, with or without a prefetch thread running
ahead, and across NumPy versions. Hashing the key with the sample index gives exactly that, with
no running state to save (the "state" is the seed). Dropout masks use the same function
(mpinet.ops.dropout), computed by a CUDA kernel on the GPU with the same bits as here.

The mixer is splitmix64's finalizer (Steele, Lea, Flood, "Fast splittable pseudorandom number
generators", 2014; Java's SplittableRandom), a strong 64-bit avalanche hash: plenty for
shuffling, augmentation and dropout, not for cryptography.
"""
from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def keyed_bits(key: tuple[int, ...], counters) -> np.ndarray:
    """64 random bits per counter: (len(counters),) uint64, a pure function of key and counter."""
    state = np.zeros(1, dtype=np.uint64)
    for k in key:  # chain the key words: (1, 2) and (2, 1) give different streams
        state = _splitmix64(state ^ np.array([int(k) & _MASK64], dtype=np.uint64))
    counters = np.asarray(counters, dtype=np.int64).astype(np.uint64)
    return _splitmix64(state ^ counters)


def keyed_uniform(key: tuple[int, ...], counters) -> np.ndarray:
    """Uniform float64 in [0, 1) per counter (53 random bits each)."""
    return (keyed_bits(key, counters) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keyed_permutation(key: tuple[int, ...], n: int) -> np.ndarray:
    """A permutation of range(n) as int64: sort the indices by their hash (ties by index)."""
    return np.argsort(keyed_bits(key, np.arange(n)), kind="stable").astype(np.int64)
