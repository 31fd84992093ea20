"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016) in torchvision's layout.

Parameter names equal ``torchvision.models.squeezenet1_0/1_1``'s: ``features.<i>`` holds the stem
convolution (index 0) and the Fire modules (``features.3.squeeze``, ``.expand1x1``,
``.expand3x3``) at torchvision's indices; ``classifier`` is Dropout, ``classifier.1`` the final
1x1 convolution to ``num_classes``, ReLU, AdaptiveAvgPool2d(1). A torchvision state dict loads by
name unchanged. Initialisation is torchvision's: Kaiming-uniform (a=0) for convolutions, N(0, 0.01)
for the final one, biases 0.

Any input from 32x32 up works (the global pooling adapts); 224 is the reference size.
"""
from __future__ import annotations

from mpinet import nn
from mpinet.ops import shape as shape_ops

from ._common import check_positive, constant_, kaiming_uniform_, normal_


class Fire(nn.Module):
    """squeeze 1x1 -> ReLU -> [expand 1x1 -> ReLU || expand 3x3 -> ReLU] concatenated on
    channels."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int,
                 expand3x3_planes: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU()

    def forward(self, x):
        # x: (N, inplanes, H, W) -> (N, expand1x1_planes + expand3x3_planes, H, W)
        x = self.squeeze_activation(self.squeeze(x))
        return shape_ops.concat([self.expand1x1_activation(self.expand1x1(x)),
                                 self.expand3x3_activation(self.expand3x3(x))], axis=1)


def _pool() -> nn.MaxPool2d:
    # torchvision pools with ceil_mode=True (keeps a partial last window: 55 -> 27, not 26).
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    def __init__(self, version: str = "1_0", in_channels: int = 3, num_classes: int = 1000,
                 dropout: float = 0.5):
        super().__init__()
        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 96, kernel_size=7, stride=2), nn.ReLU(), _pool(),
                Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), _pool(),
                Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256), _pool(),
                Fire(512, 64, 256, 256),
            )
        elif version == "1_1":
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 64, kernel_size=3, stride=2), nn.ReLU(), _pool(),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), _pool(),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), _pool(),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
            )
        else:
            raise ValueError(f"SqueezeNet: version must be '1_0' or '1_1', got {version!r}")
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), final_conv, nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))
        for _, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    normal_(m.weight, 0.01)
                else:
                    kaiming_uniform_(m.weight, a=0.0)
                constant_(m.bias, 0.0)

    def forward(self, x):
        # x: (N, C, H, W) -> (N, 512, h, w) -> (N, num_classes, 1, 1) -> (N, num_classes)
        return shape_ops.flatten(self.classifier(self.features(x)), 1)


def _squeezenet(version: str, num_classes: int, in_channels: int, input_size: int,
                dropout: float) -> SqueezeNet:
    name = f"squeezenet{version}"
    num_classes = check_positive(name, "num_classes", num_classes)
    in_channels = check_positive(name, "in_channels", in_channels)
    input_size = check_positive(name, "input_size", input_size)
    if input_size < 32:
        raise ValueError(f"{name}: input_size must be >= 32 (a stride-2 stem and three "
                         f"stride-2 poolings), got {input_size}")
    model = SqueezeNet(version, in_channels, num_classes, dropout)
    model.input_shape = (in_channels, input_size, input_size)
    return model


def squeezenet1_0(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                  dropout: float = 0.5) -> SqueezeNet:
    return _squeezenet("1_0", num_classes, in_channels, input_size, dropout)


def squeezenet1_1(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                  dropout: float = 0.5) -> SqueezeNet:
    return _squeezenet("1_1", num_classes, in_channels, input_size, dropout)
