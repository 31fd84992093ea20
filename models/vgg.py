"""VGG-11 and VGG-16, with and without batch norm, in torchvision's layout.

Parameter names equal ``torchvision.models.vgg11/vgg11_bn/vgg16/vgg16_bn``'s: ``features.<i>`` is
built from the same configuration lists ('A' = VGG-11, 'D' = VGG-16) in the same order (conv,
[BN], ReLU per entry; MaxPool2d for 'M'), then ``avgpool`` (AdaptiveAvgPool2d(7)) and
``classifier`` (Linear 0, ReLU, Dropout, Linear 3, ReLU, Dropout, Linear 6). A torchvision state
dict loads by name unchanged. Initialisation is torchvision's: convolutions He-normal (fan_out),
biases 0, BN weight 1 / bias 0, Linear weights N(0, 0.01).

Input size: at 224x224 (the default) the features are 7x7. Inputs whose feature map is smaller
(input_size // 32 < 7, e.g. 1x1 for 32x32 CIFAR images) pool to their own size instead of being
replicated up to 7x7, so ``classifier.0`` has 512*s*s inputs, and only for those sizes its shape
differs from torchvision's. Larger feature maps must be multiples of 7 (224, 448, ...): the
adaptive pool here has no overlapping windows, so e.g. 256 (8x8) is refused when building.
"""
from __future__ import annotations

from mpinet import nn
from mpinet.ops import shape as shape_ops

from ._common import check_positive, constant_, kaiming_normal_, normal_, pooled_side

# torchvision's configuration lists: channel counts of 3x3 convolutions, "M" for a 2x2 max pool.
CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def make_features(cfg: list, in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5,
                 pooled: int = 7):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled * pooled, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for _, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                kaiming_normal_(m.weight, mode="fan_out")
                constant_(m.bias, 0.0)
            elif isinstance(m, nn.BatchNorm2d):
                constant_(m.weight, 1.0)
                constant_(m.bias, 0.0)
            elif isinstance(m, nn.Linear):
                normal_(m.weight, 0.01)
                constant_(m.bias, 0.0)

    def forward(self, x):
        # x: (N, C, H, W) -> (N, 512, s, s) -> (N, 512, p, p) -> (N, 512*p*p) -> (N, num_classes)
        x = self.avgpool(self.features(x))
        return self.classifier(shape_ops.flatten(x, 1))


def _vgg(name: str, cfg: str, batch_norm: bool, num_classes: int, in_channels: int,
         input_size: int, dropout: float) -> VGG:
    num_classes = check_positive(name, "num_classes", num_classes)
    in_channels = check_positive(name, "in_channels", in_channels)
    input_size = check_positive(name, "input_size", input_size)
    side = input_size
    for v in CFGS[cfg]:
        side = side // 2 if v == "M" else side
    if side < 1:
        raise ValueError(f"{name}: input_size {input_size} is too small (five 2x2 poolings "
                         f"need at least 32)")
    model = VGG(make_features(CFGS[cfg], in_channels, batch_norm), num_classes, dropout,
                pooled=pooled_side(name, side, 7, input_size))
    model.input_shape = (in_channels, input_size, input_size)
    return model


def vgg11(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
          dropout: float = 0.5) -> VGG:
    return _vgg("vgg11", "A", False, num_classes, in_channels, input_size, dropout)


def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
             dropout: float = 0.5) -> VGG:
    return _vgg("vgg11_bn", "A", True, num_classes, in_channels, input_size, dropout)


def vgg16(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
          dropout: float = 0.5) -> VGG:
    return _vgg("vgg16", "D", False, num_classes, in_channels, input_size, dropout)


def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
             dropout: float = 0.5) -> VGG:
    return _vgg("vgg16_bn", "D", True, num_classes, in_channels, input_size, dropout)
