"""All of mpinet's randomness in one room: seeds, keyed counter streams, generator state.

Who draws from what:
  * Parameter initialisation: one seeded NumPy Generator (``init_generator()``), drawn on the host
    so initial weights are identical on CPU and GPU and on every rank for the same seed.
  * The sampler's shuffle and the augmentation's crops and flips: ``keyed_*``, pure functions of
    (key..., counter) with no running state — the same on every rank, at every world size,
    after a resume, with or without a prefetch thread running ahead, and across NumPy versions.
    Each user keys its own stream (``SHUFFLE_STREAM``, ``AUGMENT_STREAM``) so one seed gives
    independent draws.
  * Dropout masks: a ``DropoutGenerator`` whose whole state is (seed, calls so far); mask n is
    ``keyed_bits((seed, n), i)``, computed by NumPy here or by a CUDA kernel with the same bits.
    ``dropout_generator()`` is the default one that layers without their own use.
``manual_seed`` seeds the init generator and the default dropout generator; ``rng_states`` /
``set_rng_states`` are what a checkpoint saves and restores of this process's randomness.

The mixer is splitmix64's finalizer (Steele, Lea, Flood, "Fast splittable pseudorandom number
generators", 2014; Java's SplittableRandom), a strong 64-bit avalanche hash: plenty for
shuffling, augmentation and dropout, not for cryptography.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import backend

_MASK64 = (1 << 64) - 1

# Key words that keep the keyed streams of one seed apart.
SHUFFLE_STREAM = 0x5348554646  # "SHUFF": the sampler's epoch order
AUGMENT_STREAM = 0x4155474D  # "AUGM": augmentation's crops and flips
DIHEDRAL_STREAM = 0x44494845  # "DIHE": the microscopy preset's flips and rotations (data/presets)


# ---- keyed streams: a pure function of (key..., counter) ---------------------------------
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


# ---- dropout's counter-based generator ----------------------------------------------------
class DropoutGenerator:
    """Counter-based source of dropout masks: its state is (seed, calls so far).

    ``state``: (2,) uint64 array [seed, calls], on the device of the arrays it last served (it
    moves there on first use). Written in place, never rebound, while it stays on one device:
    a captured CUDA graph keeps reading the same array (and the GPU kernel advances ``calls``
    itself, so each replay draws a fresh mask). How bits become a mask is mpinet.ops.dropout's.
    """

    def __init__(self, seed: int = 0):
        self.state = np.array([int(seed) & _MASK64, 0], dtype=np.uint64)

    def manual_seed(self, seed: int) -> None:
        self.set_state({"seed": int(seed), "calls": 0})

    def get_state(self) -> dict:
        """{"seed": int, "calls": int}; reads the device (a synchronisation) on the GPU."""
        seed, calls = (int(v) for v in backend.to_numpy(self.state))
        return {"seed": seed, "calls": calls}

    def set_state(self, state: dict) -> None:
        values = np.array([int(state["seed"]) & _MASK64, int(state["calls"]) & _MASK64],
                          dtype=np.uint64)
        if backend.is_gpu_array(self.state):
            self.state.set(values)  # in place: see the class docstring
        else:
            self.state[...] = values

    def next_bits(self, size: int) -> np.ndarray:
        """(size,) uint64: the next call's bits ``keyed_bits((seed, calls), range(size))`` on the
        host; advances the call count."""
        if backend.is_gpu_array(self.state):
            self.state = backend.to_numpy(self.state)
        seed, calls = int(self.state[0]), int(self.state[1])
        self.state[1] += np.uint64(1)
        return keyed_bits((seed, calls), np.arange(size))

    def state_on_device_of(self, x):
        """The state array on ``x``'s GPU (moved there once; a kernel reads and advances it)."""
        if not backend.is_gpu_array(self.state) or self.state.device.id != x.device.id:
            import cupy

            with x.device:
                self.state = cupy.asarray(backend.to_numpy(self.state))
        return self.state


# ---- process-wide generators, seeding, checkpointed state ---------------------------------
_init = np.random.default_rng(0)
_dropout = DropoutGenerator(0)


def init_generator() -> np.random.Generator:
    """The generator layers draw their initial weights from (``manual_seed`` replaces it)."""
    return _init


def dropout_generator() -> DropoutGenerator:
    """The dropout generator of layers that bring none of their own."""
    return _dropout


def seed_dropout(seed: int) -> None:
    """Reseed the default dropout generator (restarting its call count)."""
    _dropout.manual_seed(seed)


def manual_seed(seed: int) -> None:
    """Reseed the generator layers draw initial weights from, and dropout's default generator."""
    global _init
    _init = np.random.default_rng(seed)
    seed_dropout(seed)


def rng_states() -> dict:
    """This process's RNG states that training draws from, as JSON-able data: the init
    generator (layers built after a resume) and dropout's default generator (on CPU or GPU).
    The keyed streams have no state beyond their seeds (saved by the sampler and transform).

    Not captured: generators passed to individual layers (``Dropout(rng=...)``).
    """
    return {"init": _init.bit_generator.state, "dropout": _dropout.get_state()}


def set_rng_states(states: dict) -> None:
    """Restore ``rng_states()`` (this rank's: ``checkpoint.load`` picks the rank's entry)."""
    if "init" in states:
        _init.bit_generator.state = states["init"]
    if "dropout" in states:
        if "calls" in states["dropout"]:
            _dropout.set_state(states["dropout"])
        else:  # a NumPy generator's state, written before dropout masks were counter-based
            warnings.warn("checkpoint: the dropout generator state is from an older mpinet and "
                          "was not restored; dropout masks after this resume differ from an "
                          "uninterrupted run's", stacklevel=2)
