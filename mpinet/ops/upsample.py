"""Nearest and bilinear upsampling (NCHW), with PyTorch's index formulas.

Both modes are separable and linear in x, so each is a pair of small interpolation matrices:
``y = A_h @ x @ A_w.T`` with A_h (OH, H), A_w (OW, W), and the gradient is the adjoint
``gx = A_h.T @ gy @ A_w``. Two batched BLAS matmuls each way, identical on NumPy and CuPy,
and no scatter-add in backward. A row of A holds one 1 (nearest) or the two linear weights.

Source coordinate of output index ``o`` along an axis of input size ``n`` (PyTorch's rules;
``scale`` is 1/scale_factor when a scale factor is given, else n/out):
  nearest:                      src = min(floor(o * scale), n - 1)
  bilinear, align_corners=True:  src = o * (n - 1) / (out - 1)           (0 when out == 1)
  bilinear, align_corners=False: src = max((o + 0.5) * scale - 0.5, 0)
then i0 = floor(src), i1 = min(i0 + 1, n - 1), weights (1 - (src - i0), src - i0).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import backend
from ..autograd import Function
from ._util import check_ndim

MODES = ("nearest", "bilinear")


@functools.lru_cache(maxsize=256)
def interpolation_matrix(n_in: int, n_out: int, mode: str, align_corners: bool,
                         scale_factor: float | None) -> np.ndarray:
    """(n_out, n_in) float64 matrix mapping an axis of length n_in to n_out (host, cached)."""
    out = np.arange(n_out, dtype=np.float64)
    scale = 1.0 / scale_factor if scale_factor else n_in / n_out
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        if scale_factor and float(scale_factor).is_integer():
            src = rows // int(scale_factor)  # exact; float 1/s could floor k*s to k-1
        else:
            src = np.minimum(np.floor(out * scale).astype(np.int64), n_in - 1)
        matrix[rows, src] = 1.0
        return matrix
    if align_corners:
        src = out * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((out + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    matrix[rows, i0] += 1.0 - frac  # += : i0 == i1 at the last input index
    matrix[rows, i1] += frac
    return matrix


class Upsample(Function):
    def __init__(self, out_hw, mode: str, align_corners: bool, scale_factors):
        self.out_hw, self.mode, self.align_corners = out_hw, mode, align_corners
        self.scale_factors = scale_factors  # (sh, sw) or (None, None) when a size was given

    def _matrices(self, x_shape, dtype, xp):
        # bf16 has no BLAS matmul: interpolate such inputs in fp32 and cast back.
        compute = dtype if dtype in (np.float16, np.float32, np.float64) else np.dtype(np.float32)
        ah, aw = (xp.asarray(interpolation_matrix(n, m, self.mode, self.align_corners, s),
                             dtype=compute)
                  for n, m, s in zip(x_shape[2:], self.out_hw, self.scale_factors, strict=True))
        return ah, aw, compute

    def forward(self, x):
        xp = backend.xp_of(x)
        self.x_shape = x.shape
        ah, aw, compute = self._matrices(x.shape, x.dtype, xp)
        y = xp.matmul(ah, xp.matmul(x.astype(compute, copy=False), aw.T))  # (N, C, OH, OW)
        return y.astype(x.dtype, copy=False)

    def backward(self, gy):
        xp = backend.xp_of(gy)
        ah, aw, compute = self._matrices(self.x_shape, gy.dtype, xp)
        gx = xp.matmul(ah.T, xp.matmul(gy.astype(compute, copy=False), aw))  # (N, C, H, W)
        return (gx.astype(gy.dtype, copy=False),)


def _scale_pair(scale_factor):
    factors = (scale_factor, scale_factor) if not isinstance(scale_factor, (tuple, list)) \
        else tuple(scale_factor)
    if len(factors) != 2 or not all(isinstance(f, (int, float)) and f > 0 for f in factors):
        raise ValueError(f"upsample: scale_factor must be a positive number or a pair of them, "
                         f"got {scale_factor!r}")
    return tuple(float(f) for f in factors)


def upsample(x, scale_factor=2, mode: str = "nearest", align_corners: bool = False, size=None):
    """Upsample x: (N, C, H, W) -> (N, C, floor(H*sh), floor(W*sw)), or to ``size`` (OH, OW).

    ``mode`` is "nearest" or "bilinear"; ``align_corners`` applies to bilinear only (as in
    PyTorch's F.interpolate). Given ``size``, ``scale_factor`` is ignored.
    """
    check_ndim("upsample", "input", x, 4, "(N, C, H, W)")
    if mode not in MODES:
        raise ValueError(f"upsample: mode must be one of {MODES}, got {mode!r}")
    if mode == "nearest" and align_corners:
        raise ValueError("upsample: align_corners=True only applies to mode='bilinear'")
    h, w = x.shape[2], x.shape[3]
    if size is not None:
        out_hw = (size, size) if isinstance(size, int) else tuple(size)
        factors = (None, None)
    else:
        factors = _scale_pair(scale_factor)
        out_hw = (math.floor(h * factors[0]), math.floor(w * factors[1]))
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ValueError(f"upsample: output size {out_hw} for input {tuple(x.shape)} must be "
                         f"two positive ints; check scale_factor/size")
    return Upsample(tuple(int(v) for v in out_hw), mode, bool(align_corners), factors).apply(x)
