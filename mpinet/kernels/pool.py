"""Max pooling: one launch each way instead of ~6 elementwise launches per window offset.
Forward keeps the winning input position (h * W + w within its (n, c) plane, int32) per output;
backward gathers, for each input element, the gradients of the outputs it won, in a fixed
order (deterministic, no atomics). Ties go to the first position in the window (row-major), a
NaN wins over numbers, as in PyTorch."""
from __future__ import annotations

import numpy as np

from ._compile import check_float, contiguous, cp, elementwise_kernel, io_view

_POOL_GEOM = ("int32 H, int32 W, int32 OH, int32 OW, int32 kh, int32 kw, int32 sh, int32 sw, "
              "int32 ph, int32 pw")


def _pool_args(x_shape, geom):
    n, c, h, w = x_shape
    if n * c * h * w >= 2**31:
        raise ValueError(f"max_pool2d: input {tuple(x_shape)} has {n * c * h * w} elements; the "
                         f"fused kernels index with 32 bits (at most 2**31 - 1): split the batch")
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = geom
    return [np.int32(v) for v in (h, w, oh, ow, kh, kw, sh, sw, ph, pw)]


def max_pool2d_forward(x, kernel, stride, padding, out_hw):
    """y (N, C, OH, OW) and the argmax positions (int32, h * W + w) of max pooling x (N, C, H, W).
    kernel/stride/padding/out_hw: (h, w) pairs, already validated (mpinet.ops.pool)."""
    xp = cp()
    check_float("max_pool2d", x)
    x = contiguous(xp, x)
    args = _pool_args(x.shape, (kernel, stride, padding, out_hw))
    k = elementwise_kernel(
        "maxpool_fwd", "raw X x, " + _POOL_GEOM, "X y, int32 arg",
        "typedef mpn_acc<X>::type A; "
        "int ow = i % OW; int t = i / OW; int oh = t % OH; int nc = t / OH; "
        "int h0 = oh * sh - ph, w0 = ow * sw - pw; "
        "A best = A(0); int at = -1; "
        "for (int r = 0; r < kh; ++r) { int h = h0 + r; if (h < 0 || h >= H) continue; "
        "  for (int c = 0; c < kw; ++c) { int w = w0 + c; if (w < 0 || w >= W) continue; "
        "    A v = mpn_ld<A>(x[((long long)nc * H + h) * W + w]); "
        "    if (at < 0 || v > best || (isnan(v) && !isnan(best))) { best = v; at = h * W + w; } "
        "  } } "
        "mpn_put(y, best); arg = at;")
    shape = tuple(x.shape[:2]) + tuple(out_hw)
    y = xp.empty(shape, dtype=x.dtype)
    arg = xp.empty(shape, dtype=xp.int32)
    k(io_view(x), *args, io_view(y), arg)
    return y, arg


def max_pool2d_backward(gy, arg, x_shape, kernel, stride, padding):
    """gx (N, C, H, W) of max pooling, from gy (N, C, OH, OW) and forward's argmax positions."""
    xp = cp()
    check_float("max_pool2d_backward", gy)
    gy = contiguous(xp, gy)
    out_hw = tuple(gy.shape[2:])
    args = _pool_args(x_shape, (kernel, stride, padding, out_hw))
    k = elementwise_kernel(
        "maxpool_bwd", "raw G gy, raw int32 arg, " + _POOL_GEOM, "G gx",
        "typedef mpn_acc<G>::type A; "
        "int w = i % W; int t = i / W; int h = t % H; int nc = t / H; "
        "int me = h * W + w; "
        # outputs whose window [o*s - p, o*s - p + k) contains this row / column
        "int lo_h = h + ph - kh + 1, lo_w = w + pw - kw + 1; "
        "int oh0 = lo_h <= 0 ? 0 : (lo_h + sh - 1) / sh; "
        "int ow0 = lo_w <= 0 ? 0 : (lo_w + sw - 1) / sw; "
        "int oh1 = min(OH - 1, (h + ph) / sh), ow1 = min(OW - 1, (w + pw) / sw); "
        "A acc = A(0); "
        "for (int oh = oh0; oh <= oh1; ++oh) for (int ow = ow0; ow <= ow1; ++ow) { "
        "  long long o = ((long long)nc * OH + oh) * OW + ow; "
        "  if (arg[o] == me) acc += mpn_ld<A>(gy[o]); } "
        "mpn_put(gx, acc);")
    gx = xp.empty(tuple(x_shape), dtype=gy.dtype)
    k(io_view(gy), arg, *args, io_view(gx))
    return gx
