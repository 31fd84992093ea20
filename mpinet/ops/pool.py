"""2-D pooling (NCHW): max, average (count_include_pad=True), global average, adaptive average.

Windows are visited one kernel offset at a time: offset (i, j) meets the strided slice
``xpad[:, :, i::stride, j::stride]`` (one element per output), so forward and backward are
kh*kw vectorised passes with no Python loop over batch or pixels and no scatter (np.add.at).
The same code runs on NumPy and CuPy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, kernels
from ..autograd import Function
from ._util import check_ndim
from .conv import pair, tap


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad_lo: tuple[int, int]   # top, left (the user's padding)
    pad_hi: tuple[int, int]   # bottom, right: the padding, or more where ceil_mode needs it
    out: tuple[int, int]

    def padded(self, x, value=0):
        """x: (N, C, H, W) -> (N, C, pad_lo + H + pad_hi, ...), border = ``value``."""
        if self.pad_lo == (0, 0) and self.pad_hi == (0, 0):
            return x
        xp = backend.xp_of(x)
        n, c, h, w = x.shape
        (th, tw), (bh, bw) = self.pad_lo, self.pad_hi
        out = xp.full((n, c, th + h + bh, tw + w + bw), value, dtype=x.dtype)
        out[:, :, th:th + h, tw:tw + w] = x
        return out

    def zeros_padded(self, x_shape, dtype, xp):
        n, c, h, w = x_shape
        return xp.zeros((n, c, self.pad_lo[0] + h + self.pad_hi[0],
                         self.pad_lo[1] + w + self.pad_hi[1]), dtype=dtype)

    def crop(self, gpad, x_shape):
        """The inverse of ``padded`` for gradients: drop the border."""
        if self.pad_lo == (0, 0) and self.pad_hi == (0, 0):
            return gpad
        (th, tw), (h, w) = self.pad_lo, x_shape[2:]
        return backend.xp_of(gpad).ascontiguousarray(gpad[:, :, th:th + h, tw:tw + w])

    def windows(self):
        """(offset index k, (row slice, column slice)) for each kernel offset, row-major."""
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, (tap(i, sh, oh), tap(j, sw, ow))

    def window_sizes(self, in_hw):
        """Per-output divisor (OH, OW) counting padding but not the ceil_mode overhang
        (PyTorch's count_include_pad=True), or None when every window is kh*kw."""
        counts = []
        for n, k, s, p, o in zip(in_hw, self.kernel, self.stride, self.pad_lo, self.out,
                                 strict=True):
            start = np.arange(o) * s - p
            counts.append(np.minimum(start + k, n + p) - start)
        if all((c == k).all() for c, k in zip(counts, self.kernel, strict=True)):
            return None
        return np.outer(counts[0], counts[1])


def _geometry(op: str, x, kernel_size, stride, padding, ceil_mode: bool) -> PoolGeometry:
    """Validated window geometry for pooling x: (N, C, H, W), with PyTorch's output sizes."""
    check_ndim(op, "input", x, 4, "(N, C, H, W)")
    kernel = pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None else pair(stride, "stride", op, 1)
    padding = pair(padding, "padding", op, 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size "
                         f"{kernel} (a window must not lie entirely in the padding)")
    out, pad_hi = [], []
    for n, k, s, p in zip(x.shape[2:], kernel, stride, padding, strict=True):
        span = n + 2 * p - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= n + p:
            o -= 1  # the last window must start inside the input or the left padding
        out.append(o)
        pad_hi.append(max(p, (o - 1) * s + k - n - p))
    if min(out) <= 0:
        raise ValueError(f"{op}: output size {tuple(out)} is not positive for input "
                         f"{tuple(x.shape)}, kernel {kernel}, stride {stride}, padding "
                         f"{padding}; use a larger input or a smaller kernel")
    return PoolGeometry(kernel, stride, padding, tuple(pad_hi), tuple(out))


class MaxPool2d(Function):
    """Forward is a chain of elementwise maxima over the kh*kw offset slices. Backward finds,
    per offset, the outputs whose maximum sits there (equality with y, exact since y is one of
    the values) and not at an earlier offset: ties go to the first, as in PyTorch. This beats
    tracking an argmax in forward (masked copies are ~10x slower than arithmetic on NumPy), and
    the arrays it keeps (input, output) are usually alive anyway as neighbours' saved tensors.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        self.options = (kernel_size, stride, padding, ceil_mode)

    def forward(self, x):
        xp = backend.xp_of(x)
        geom = _geometry("max_pool2d", x, *self.options)
        self.geom, self.x_shape = geom, x.shape
        self.fused = backend.is_gpu_array(x)
        if self.fused:  # one kernel each way (the loop below launches ~6 per window offset)
            y, arg = kernels.pool.max_pool2d_forward(x, geom.kernel, geom.stride, geom.pad_lo,
                                                     geom.out)
            self.save(arg)
            return y
        xpad = geom.padded(x, value=-float("inf"))  # padding never wins, like PyTorch
        y = None
        for _, (rows, cols) in geom.windows():
            if y is None:
                y = xpad[:, :, rows, cols].copy()
            else:
                xp.maximum(y, xpad[:, :, rows, cols], out=y)
        self.save(xpad, y)
        return y

    def backward(self, gy):
        if self.fused:
            (arg,) = self.saved
            g = self.geom
            return (kernels.pool.max_pool2d_backward(gy, arg, self.x_shape, g.kernel, g.stride,
                                                     g.pad_lo),)
        xp = backend.xp_of(gy)
        xpad, y = self.saved
        gpad = self.geom.zeros_padded(self.x_shape, gy.dtype, xp)
        taken = xp.zeros(y.shape, dtype=bool)  # outputs whose maximum was already routed
        for _, (rows, cols) in self.geom.windows():
            hit = xpad[:, :, rows, cols] == y
            hit &= ~taken
            taken |= hit
            gpad[:, :, rows, cols] += gy * hit
        return (self.geom.crop(gpad, self.x_shape),)


class AvgPool2d(Function):
    """Average over each window, padding counted as zeros (PyTorch's count_include_pad=True)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        self.options = (kernel_size, stride, padding, ceil_mode)

    def forward(self, x):
        xp = backend.xp_of(x)
        geom = _geometry("avg_pool2d", x, *self.options)
        xpad = geom.padded(x)
        y = None
        for _, (rows, cols) in geom.windows():
            window = xpad[:, :, rows, cols]
            if y is None:
                y = window.copy()
            else:
                y += window
        self.geom, self.x_shape = geom, x.shape
        self.scale = self._scale(geom, x.shape, y.dtype, xp)
        y *= self.scale
        return y

    @staticmethod
    def _scale(geom, x_shape, dtype, xp):
        """1 / window size: a scalar, or (OH, OW) where ceil_mode clips the last windows."""
        sizes = geom.window_sizes(x_shape[2:])
        if sizes is None:
            return dtype.type(1.0 / (geom.kernel[0] * geom.kernel[1]))
        return xp.asarray(1.0 / sizes, dtype=dtype)

    def backward(self, gy):
        xp = backend.xp_of(gy)
        share = gy * self.scale
        gpad = self.geom.zeros_padded(self.x_shape, gy.dtype, xp)
        for _, (rows, cols) in self.geom.windows():
            gpad[:, :, rows, cols] += share
        return (self.geom.crop(gpad, self.x_shape),)


class GlobalAvgPool2d(Function):
    def forward(self, x):
        check_ndim("global_avg_pool2d", "input", x, 4, "(N, C, H, W)")
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        xp = backend.xp_of(gy)
        n, c, h, w = self.x_shape
        share = gy * gy.dtype.type(1.0 / (h * w))
        # A real array, not a broadcast view: consumers (cuDNN dgrad) expect dense NCHW.
        return (xp.ascontiguousarray(xp.broadcast_to(share[:, :, None, None], self.x_shape)),)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
    """Max over kh*kw windows; x (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2p - kh) // s + 1
    (rounded up with ``ceil_mode``, as in PyTorch).

    ``stride`` defaults to ``kernel_size``. The gradient goes to the window's maximum (the first
    one on ties); padding is -inf, so it never wins.
    """
    return MaxPool2d(kernel_size, stride, padding, ceil_mode).apply(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
    """Mean over kh*kw windows, zero padding included in the count (count_include_pad=True;
    with ``ceil_mode`` a window overhanging the padded input divides by its clipped size)."""
    return AvgPool2d(kernel_size, stride, padding, ceil_mode).apply(x)


def global_avg_pool2d(x):
    """(N, C, H, W) -> (N, C): the mean over all spatial positions."""
    return GlobalAvgPool2d().apply(x)


def adaptive_avg_pool2d(x, output_size):
    """(N, C, H, W) -> (N, C, oh, ow) when oh divides H and ow divides W (exact, no overlap).

    ``output_size``: int or (oh, ow); None in a position keeps that input size. The general
    (non-divisible, overlapping-window) case is not supported and raises.
    """
    check_ndim("adaptive_avg_pool2d", "input", x, 4, "(N, C, H, W)")
    h, w = x.shape[2], x.shape[3]
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    oh, ow = (h if output_size[0] is None else output_size[0],
              w if output_size[1] is None else output_size[1])
    if not (isinstance(oh, int) and isinstance(ow, int)) or oh < 1 or ow < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive ints (or None), "
                         f"got {output_size!r}")
    if h % oh or w % ow:
        raise ValueError(f"adaptive_avg_pool2d: input size ({h}, {w}) is not divisible by "
                         f"output size ({oh}, {ow}); only the divisible case is supported: "
                         f"resize the input or choose an output size that divides it")
    return avg_pool2d(x, (h // oh, w // ow))
