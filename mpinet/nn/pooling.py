"""Pooling and upsampling layers (no parameters): MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
GlobalAvgPool2d, Upsample."""
from __future__ import annotations

from ..ops import pool as pool_ops
from ..ops import upsample as upsample_ops
from .conv import check_input, layer_error
from .module import Module


class _Op(Module):
    """A parameter-free layer around one op; op errors are re-raised naming the layer."""

    def _run(self, op, x, *args, **kwargs):
        check_input(self, x)
        try:
            return op(x, *args, **kwargs)
        except ValueError as e:
            raise layer_error(self, str(e)) from None


class _Pool2d(_Op):
    op = None  # the pooling op, set by subclasses

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = kernel_size if stride is None else stride
        self.ceil_mode = ceil_mode

    def forward(self, x):
        return self._run(type(self).op, x, self.kernel_size, self.stride, self.padding,
                         self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + (", ceil_mode=True" if self.ceil_mode else ""))


class MaxPool2d(_Pool2d):
    """Max pooling; padding is -inf. stride defaults to kernel_size."""

    op = pool_ops.max_pool2d


class AvgPool2d(_Pool2d):
    """Average pooling, zero padding counted (PyTorch's count_include_pad=True)."""

    op = pool_ops.avg_pool2d


class AdaptiveAvgPool2d(_Op):
    """(N, C, H, W) -> (N, C, oh, ow); exact only when oh divides H and ow divides W."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return self._run(pool_ops.adaptive_avg_pool2d, x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class GlobalAvgPool2d(_Op):
    """(N, C, H, W) -> (N, C): the spatial mean."""

    def forward(self, x):
        return self._run(pool_ops.global_avg_pool2d, x)


class Upsample(_Op):
    """Nearest or bilinear upsampling by ``scale_factor`` (or to ``size``), PyTorch's formulas."""

    def __init__(self, scale_factor=2, mode: str = "nearest", align_corners: bool = False,
                 size=None):
        super().__init__()
        if mode not in upsample_ops.MODES:
            raise ValueError(f"Upsample: mode must be one of {upsample_ops.MODES}, got {mode!r}")
        self.scale_factor, self.mode, self.align_corners, self.size = (
            scale_factor, mode, align_corners, size)

    def forward(self, x):
        return self._run(upsample_ops.upsample, x, self.scale_factor, self.mode,
                         self.align_corners, size=self.size)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        corners = ", align_corners=True" if self.align_corners else ""
        return f"{what}, mode={self.mode!r}{corners}"
