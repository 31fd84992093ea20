"""Inverted dropout: in training, zero each element with probability p and scale the rest by
1 / (1 - p), so evaluation is the identity.

Where the random mask comes from:
  * ``rng`` a ``numpy.random.Generator``: the mask is drawn on the host from it (and copied to
    the GPU for CuPy inputs), so the same seed gives the same mask on CPU and GPU (tests).
  * ``rng`` any other generator with ``random(shape, dtype)`` (e.g. ``cupy.random.default_rng``):
    drawn from it where it lives.
  * ``rng`` None: NumPy inputs use this module's host generator, CuPy inputs draw on the device
    from CuPy's global generator (``cupy.random``), which avoids a host-to-device copy per call.
    ``manual_seed(seed)`` reseeds both.
"""
from __future__ import annotations

import sys

import numpy as np

from .. import backend
from ..autograd import Function

_host_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the default dropout generators (host NumPy, and CuPy's if cupy is in use)."""
    global _host_rng
    _host_rng = np.random.default_rng(seed)
    cupy = sys.modules.get("cupy")  # seed the device generator only if cupy is already loaded
    if cupy is not None:
        cupy.random.seed(seed)


def _uniform(shape, rng, on_gpu: bool):
    """Uniform [0, 1) float32 samples of ``shape`` on the input's device."""
    if rng is None:
        if on_gpu:
            return sys.modules["cupy"].random.random_sample(shape, dtype=np.float32)
        rng = _host_rng
    u = rng.random(shape, dtype=np.float32)
    if on_gpu and not backend.is_gpu_array(u):
        return sys.modules["cupy"].asarray(u)  # host-drawn mask: one host-to-device copy
    if not on_gpu and backend.is_gpu_array(u):
        return backend.to_numpy(u)
    return u


class Dropout(Function):
    def __init__(self, p: float, rng=None):
        self.p, self.rng = p, rng

    def forward(self, x):
        on_gpu = backend.is_gpu_array(x)
        keep = _uniform(x.shape, self.rng, on_gpu) >= np.float32(self.p)
        # Store the scaled mask in x's dtype: backward is then a single multiply.
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self.save(mask)
        return x * mask

    def backward(self, gy):
        (mask,) = self.saved
        return (gy * mask,)


def dropout(x, p: float = 0.5, training: bool = True, rng=None):
    """Inverted dropout; the identity (x itself) when not training or p == 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:  # everything dropped; 1 / (1 - p) would be inf
        from .arith import mul  # noqa: PLC0415

        return mul(x, 0.0)
    return Dropout(p, rng).apply(x)
