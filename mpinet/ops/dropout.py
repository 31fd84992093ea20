"""Inverted dropout: in training, zero each element with probability p and scale the rest by
1 / (1 - p), so evaluation is the identity.

Where the masks come from: a ``DropoutGenerator``, counter-based. Element ``i`` of the n-th
call's mask is kept when the top 24 bits of ``keyed_bits((seed, n), i)`` (mpinet.keyed_random)
are >= round(p * 2**24). So a mask is a pure function of (seed, n, i):
  * NumPy and the GPU kernel (mpinet.kernels.dropout.dropout) give bit-identical masks;
  * the generator's whole state is the pair (seed, n): it is saved in checkpoints and restored
    exactly, on the GPU too (CuPy's curand state cannot be read back);
  * the pair lives in a 2-element uint64 array beside the data and the GPU advances n itself,
    so a CUDA graph of a training step draws fresh masks at every replay (masks drawn on the host
    would be baked into the graph and repeat forever).

``rng=None`` uses this module's default generator (``default_generator()``; ``manual_seed``
reseeds it); a layer may bring its own ``DropoutGenerator``.
"""
from __future__ import annotations

import numpy as np

from .. import backend, kernels
from ..autograd import Function
from ..keyed_random import keyed_bits

_MASK64 = (1 << 64) - 1
_KEEP_BITS = 24  # a mask element compares 24 random bits with round(p * 2**24)


def keep_threshold(p: float) -> int:
    """Elements whose top 24 random bits are >= this value are kept."""
    return int(round(p * (1 << _KEEP_BITS)))


class DropoutGenerator:
    """Counter-based source of dropout masks: its state is (seed, calls so far).

    ``state``: (2,) uint64 array [seed, calls], on the device of the arrays it last served (it
    moves there on first use). Written in place, never rebound, while it stays on one device:
    a captured CUDA graph keeps reading the same array.
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

    def drop(self, x, p: float):
        """Draw the next mask for ``x`` and apply it: (x * mask, mask), both in x's dtype, the
        mask 1 / (1 - p) where kept and 0 where dropped. 0 < p < 1."""
        threshold, scale = keep_threshold(p), 1.0 / (1.0 - p)
        if backend.is_gpu_array(x):
            return kernels.dropout.dropout(x, self._state_on_gpu(x), threshold, scale)
        if backend.is_gpu_array(self.state):
            self.state = backend.to_numpy(self.state)
        seed, calls = int(self.state[0]), int(self.state[1])
        self.state[1] += np.uint64(1)
        bits = keyed_bits((seed, calls), np.arange(x.size)).reshape(x.shape)
        keep = (bits >> np.uint64(64 - _KEEP_BITS)) >= np.uint64(threshold)
        mask = keep.astype(x.dtype) * x.dtype.type(scale)
        return x * mask, mask

    def _state_on_gpu(self, x):
        if not backend.is_gpu_array(self.state) or self.state.device.id != x.device.id:
            import cupy  # noqa: PLC0415 - GPU only

            with x.device:
                self.state = cupy.asarray(backend.to_numpy(self.state))
        return self.state


_default = DropoutGenerator(0)


def default_generator() -> DropoutGenerator:
    return _default


def manual_seed(seed: int) -> None:
    """Reseed the default dropout generator (restarting its call count)."""
    _default.manual_seed(seed)


class Dropout(Function):
    def __init__(self, p: float, generator: DropoutGenerator):
        self.p, self.generator = p, generator

    def forward(self, x):
        y, mask = self.generator.drop(x, self.p)
        self.save(mask)
        return y

    def backward(self, gy):
        (mask,) = self.saved
        return (gy * mask,)


def dropout(x, p: float = 0.5, training: bool = True, rng: DropoutGenerator | None = None):
    """Inverted dropout; the identity (x itself) when not training or p == 0.

    ``rng``: a DropoutGenerator, or None for the default generator.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p}")
    if rng is not None and not isinstance(rng, DropoutGenerator):
        raise TypeError(f"dropout: rng must be an mpinet.ops.dropout.DropoutGenerator or None, "
                        f"got {type(rng).__name__} (masks come from a counter-based generator "
                        f"so CPU and GPU agree and checkpoints restore them)")
    if not training or p == 0.0:
        return x
    if p == 1.0:  # everything dropped; 1 / (1 - p) would be inf
        from .arith import mul  # noqa: PLC0415

        return mul(x, 0.0)
    return Dropout(p, rng if rng is not None else _default).apply(x)
