"""U-Net (Ronneberger et al. 2015) for image segmentation, with batch norm and same-padding.

Encoder: ``inc`` (double conv to ``base_width`` channels), then ``downs.<i>`` (2x2 max pool +
double conv, doubling the width) ``depth`` times. Decoder: ``ups.<i>`` (2x2 stride-2 transposed
convolution halving the width, concatenation with the encoder's skip connection of the same size,
double conv), then ``head`` (1x1 convolution to ``num_classes``). A double conv is
[3x3 conv -> BatchNorm2d -> ReLU] x2, a Sequential (``inc.0.weight``, ``inc.1.running_mean``, ...).

Input (N, in_channels, H, W) with H and W divisible by 2**depth; output (N, num_classes, H, W)
logits, for ``loss.cross_entropy`` with (N, H, W) integer labels. base_width=64, depth=4 is the
paper's network (31M parameters); small widths (8-16) train fast on synthetic shapes.
"""
from __future__ import annotations

from mpinet import nn
from mpinet.ops import shape as shape_ops

from ._common import check_positive, init_conv_bn_


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(),
    )


class Down(nn.Module):
    """(N, C, H, W) -> max pool -> (N, C, H/2, W/2) -> double conv -> (N, 2C, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = double_conv(in_channels, out_channels)

    def forward(self, x):
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Upsample 2x with a transposed conv (C -> C/2), concat the skip (C/2), double conv to C/2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = double_conv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x, skip):
        # x: (N, C, h, w) -> (N, C/2, 2h, 2w); skip: (N, C/2, 2h, 2w) -> cat (N, C, 2h, 2w)
        return self.conv(shape_ops.concat([skip, self.up(x)], axis=1))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_width: int = 64,
                 depth: int = 4):
        super().__init__()
        self.depth = depth
        widths = [base_width * 2 ** i for i in range(depth + 1)]  # e.g. 64, 128, 256, 512, 1024
        self.inc = double_conv(in_channels, widths[0])
        self.downs = nn.Sequential(*[Down(widths[i], widths[i + 1]) for i in range(depth)])
        self.ups = nn.Sequential(*[Up(widths[i + 1], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        init_conv_bn_(self)

    def forward(self, x):
        # x: (N, C, H, W) -> (N, num_classes, H, W)
        multiple = 2 ** self.depth
        if x.ndim != 4 or x.shape[2] % multiple or x.shape[3] % multiple:
            raise ValueError(f"{self.path} (UNet): expected input (N, C, H, W) with H and W "
                             f"divisible by 2**depth = {multiple}, got {tuple(x.shape)}; "
                             f"pad or crop the images, or lower depth")
        x = self.inc(x)
        skips = [x]
        for down in self.downs.children():
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottom of the U is x itself
        for up in self.ups.children():
            x = up(x, skips.pop())
        return self.head(x)


def unet(num_classes: int = 2, in_channels: int = 1, input_size: int = 64, base_width: int = 64,
         depth: int = 4) -> UNet:
    """A U-Net producing per-pixel logits (N, num_classes, H, W)."""
    num_classes = check_positive("unet", "num_classes", num_classes)
    in_channels = check_positive("unet", "in_channels", in_channels)
    input_size = check_positive("unet", "input_size", input_size)
    base_width = check_positive("unet", "base_width", base_width)
    depth = check_positive("unet", "depth", depth)
    if input_size % 2 ** depth:
        raise ValueError(f"unet: input_size {input_size} must be divisible by 2**depth = "
                         f"{2 ** depth}; pick another size or a smaller depth")
    model = UNet(in_channels, num_classes, base_width, depth)
    model.input_shape = (in_channels, input_size, input_size)
    return model
