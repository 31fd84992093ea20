"""Dropout: the mask bits of mpinet.random.keyed_bits((seed, calls), i), computed in-kernel
from the generator's device state [seed, calls], which a second one-thread kernel advances.
Nothing is read on the host, so the pair captures into a CUDA graph and each replay draws a
fresh mask."""
from __future__ import annotations

import numpy as np

from ._compile import ELEMENTWISE_PREAMBLE, check_float, elementwise_kernel, io_view, like

_SPLITMIX = r"""
__device__ __forceinline__ unsigned long long mpn_splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
"""


def dropout(x, state, threshold: int, scale: float):
    """(y, mask): mask = scale where the element's top 24 random bits are >= threshold, else 0,
    rounded to x's dtype; y = x * mask. ``state``: (2,) uint64 [seed, calls], advanced by one."""
    check_float("dropout", x)
    if state.shape != (2,) or state.dtype != np.uint64:
        raise ValueError(f"dropout: state must be a (2,) uint64 array, got {state.shape} "
                         f"{state.dtype}")
    k = elementwise_kernel(
        "dropout", "X x, raw uint64 state, uint64 threshold, float64 scale", "X y, X mask",
        "typedef mpn_acc<X>::type A; "
        "unsigned long long key = mpn_splitmix64(mpn_splitmix64(state[0]) ^ state[1]); "
        "unsigned long long bits = mpn_splitmix64(key ^ (unsigned long long)i); "
        "mpn_put(mask, (bits >> 40) >= threshold ? A(scale) : A(0)); "  # top 24 bits
        "mpn_put(y, mpn_ld<A>(x) * mpn_ld<A>(mask));",  # the rounded mask, as backward uses
        preamble=ELEMENTWISE_PREAMBLE + _SPLITMIX)
    advance = elementwise_kernel("dropout_advance", "", "raw uint64 state", "state[1] += 1ull;",
                                 preamble="")
    y, mask = k(io_view(x), state, np.uint64(threshold), np.float64(scale))
    advance(state, size=1)
    return like(y, x), like(mask, x)
