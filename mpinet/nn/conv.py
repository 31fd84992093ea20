"""Convolution layers: Conv2d and ConvTranspose2d (PyTorch's parameter names, layouts and init)."""
from __future__ import annotations

from .. import amp
from ..ops import conv as conv_ops
from . import init
from .module import Module


def layer_error(layer: Module, message: str) -> ValueError:
    """A ValueError that starts with the layer's path and type, e.g. "features.0 (Conv2d): ..."."""
    return ValueError(f"{layer.path} ({type(layer).__name__}): {message}")


def check_input(layer: Module, x, channels: int | None = None) -> None:
    """Refuse anything but a 4-D (N, C, H, W) input with ``channels`` channels (if given)."""
    c = "C" if channels is None else channels
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        raise layer_error(layer, f"expected input (N, {c}, H, W), got {tuple(x.shape)}")


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: options, parameters, validation, repr."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                 bias, weight_shape_of):
        super().__init__()
        name = type(self).__name__
        for what, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")
        geom = conv_ops.ConvGeometry.of(name, stride, padding, dilation, groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels={in_channels} and out_channels={out_channels} "
                             f"must both be divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = conv_ops.pair(kernel_size, "kernel_size", name, 1)
        self.stride, self.padding, self.dilation, self.groups = (
            geom.stride, geom.padding, geom.dilation, geom.groups)
        self._geom = geom  # validated once: each call skips re-parsing (host time on GPU)
        shape = weight_shape_of(in_channels, out_channels, groups) + self.kernel_size
        # PyTorch's defaults: kaiming_uniform(a=sqrt(5)) weight, U(+-1/sqrt(fan_in)) bias.
        self.weight = init.kaiming_uniform(shape)
        self.bias = init.bias_for(shape, out_channels) if bias else None

    def _call_op(self, function, x):
        """Run the op's Function on (x, weight[, bias]) after autocast; errors name the layer."""
        check_input(self, x, self.in_channels)
        x, w, b = amp.autocast_inputs(x, self.weight, self.bias)
        try:
            return function.apply(x, w) if b is None else function.apply(x, w, b)
        except ValueError as e:  # name the layer, not just the op
            raise layer_error(self, str(e)) from None

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}",
                 f"stride={self.stride}"]
        if self.padding != (0, 0):
            parts.append(f"padding={self.padding}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)


class Conv2d(_ConvNd):
    """2-D convolution. weight (out, in/groups, kh, kw), bias (out,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, lambda cin, cout, g: (cout, cin // g))

    def forward(self, x):
        # x: (N, in, H, W) -> (N, out, OH, OW)
        return self._call_op(conv_ops.Conv2d(self._geom), x)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution. weight (in, out/groups, kh, kw), bias (out,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, lambda cin, cout, g: (cin, cout // g))
        self.output_padding = conv_ops.pair(output_padding, "output_padding",
                                            "ConvTranspose2d", 0)

    def forward(self, x):
        # x: (N, in, H, W) -> (N, out, OH, OW),
        # OH = (H-1)*stride - 2*padding + dilation*(kh-1) + output_padding + 1
        return self._call_op(conv_ops.ConvTranspose2d(self._geom, self.output_padding), x)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra + (f", output_padding={self.output_padding}"
                        if self.output_padding != (0, 0) else "")
