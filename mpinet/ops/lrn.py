"""Local response normalisation across channels (AlexNet, GoogLeNet v1, Caffe's LRN layer).

For x (N, C, ...), with a window of ``size`` channels around each channel c,
    s[c] = k + alpha / size * sum_{c' = c - (size-1)//2}^{c + size//2} x[c']^2
    y[c] = x[c] * s[c] ** -beta
channels outside [0, C) count as zero. This is ONNX's LRN and Caffe's ACROSS_CHANNELS LRN (which
requires an odd size), and PyTorch's LocalResponseNorm for odd sizes (for even sizes PyTorch
centres the window one channel lower).

Backward: with t[c'] = gy[c'] * x[c'] * s[c'] ** (-beta - 1),
    gx[c] = gy[c] * s[c] ** -beta - 2 * alpha * beta / size * x[c] * sum_{c': c in window(c')} t[c']
where the second sum runs over the mirrored window [c - size//2, c + (size-1)//2].
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Function


def _compute_dtype(x):
    """float64 stays float64; everything else computes in float32 (bf16/fp16 included)."""
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def channel_window_sum(a, before: int, after: int):
    """out[:, c] = sum of a[:, c - before .. c + after] (channels outside [0, C) are zero)."""
    xp = backend.xp_of(a)
    out = xp.zeros_like(a)
    channels = a.shape[1]
    for d in range(-before, after + 1):
        if abs(d) >= channels:
            continue
        if d >= 0:
            out[:, :channels - d] += a[:, d:]
        else:
            out[:, -d:] += a[:, :channels + d]
    return out


class LocalResponseNorm(Function):
    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        if x.ndim < 3:
            raise ValueError(f"local_response_norm: expected input (N, C, ...) with at least 3 "
                             f"dimensions, got {tuple(x.shape)}")
        cdt = _compute_dtype(x)
        xc = x.astype(cdt, copy=False)
        n = self.size
        s = channel_window_sum(xc * xc, (n - 1) // 2, n // 2)
        s *= cdt.type(self.alpha / n)
        s += cdt.type(self.k)
        scale = s ** cdt.type(-self.beta)
        self.save(xc, s, scale)
        return (xc * scale).astype(x.dtype, copy=False)

    def backward(self, gy):
        xc, s, scale = self.saved
        cdt = xc.dtype
        n = self.size
        g = gy.astype(cdt, copy=False)
        t = g * xc * scale / s                                     # gy * x * s^(-beta-1)
        back = channel_window_sum(t, n // 2, (n - 1) // 2)         # the mirrored window
        gx = g * scale - cdt.type(2 * self.alpha * self.beta / n) * xc * back
        return (gx.astype(gy.dtype, copy=False),)


def local_response_norm(x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
    """LRN across channels of x (N, C, ...); see the module docstring for the formula."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    return LocalResponseNorm(int(size), float(alpha), float(beta), float(k)).apply(x)
