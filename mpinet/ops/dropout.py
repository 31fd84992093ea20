"""Inverted dropout: in training, zero each element with probability p and scale the rest by
1 / (1 - p), so evaluation is the identity.

Where the masks come from: a ``DropoutGenerator``, counter-based. Element ``i`` of the n-th
call's mask is kept when the top 24 bits of ``keyed_bits((seed, n), i)`` (mpinet.random)
are >= round(p * 2**24). So a mask is a pure function of (seed, n, i):
  * NumPy and the GPU kernel (mpinet.kernels.dropout.dropout) give bit-identical masks;
  * the generator's whole state is the pair (seed, n): it is saved in checkpoints and restored
    exactly, on the GPU too (CuPy's curand state cannot be read back);
  * the pair lives in a 2-element uint64 array beside the data and the GPU advances n itself,
    so a CUDA graph of a training step draws fresh masks at every replay (masks drawn on the host
    would be baked into the graph and repeat forever).

The generator and its state live in mpinet.random. ``rng=None`` uses the default generator
(``default_generator()`` here, ``mpinet.random.dropout_generator()``; ``manual_seed`` reseeds
it); a layer may bring its own ``DropoutGenerator``.
"""
from __future__ import annotations

import numpy as np

from .. import backend, kernels
from ..autograd import Function
from ..random import DropoutGenerator, seed_dropout as manual_seed  # noqa: F401 - public here
from ..random import dropout_generator as default_generator

_KEEP_BITS = 24  # a mask element compares 24 random bits with round(p * 2**24)


def keep_threshold(p: float) -> int:
    """Elements whose top 24 random bits are >= this value are kept."""
    return int(round(p * (1 << _KEEP_BITS)))


def _drop(generator: DropoutGenerator, x, p: float):
    """Draw ``generator``'s next mask for ``x`` and apply it: (x * mask, mask), both in x's
    dtype, the mask 1 / (1 - p) where kept and 0 where dropped. 0 < p < 1."""
    threshold, scale = keep_threshold(p), 1.0 / (1.0 - p)
    if backend.is_gpu_array(x):
        return kernels.dropout.dropout(x, generator.state_on_device_of(x), threshold, scale)
    bits = generator.next_bits(x.size).reshape(x.shape)
    keep = (bits >> np.uint64(64 - _KEEP_BITS)) >= np.uint64(threshold)
    mask = keep.astype(x.dtype) * x.dtype.type(scale)
    return x * mask, mask


class Dropout(Function):
    def __init__(self, p: float, generator: DropoutGenerator):
        self.p, self.generator = p, generator

    def forward(self, x):
        y, mask = _drop(self.generator, x, self.p)
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
        from .arith import mul

        return mul(x, 0.0)
    return Dropout(p, rng if rng is not None else default_generator()).apply(x)
