"""AlexNet in torchvision's layout (``torchvision.models.alexnet``; 61,100,840 parameters).

features (convolutions, indices as torchvision's: 0, 3, 6, 8, 10 are the Conv2d layers) ->
avgpool (AdaptiveAvgPool2d(6)) -> flatten -> classifier (Dropout, Linear, ReLU, Dropout, Linear,
ReLU, Linear: Linear layers at 1, 4, 6). A torchvision state dict loads by name unchanged.

Input size: at 224x224 (the default; any of 223-254) the features are 6x6. Smaller inputs
(63-222) give a smaller feature map, pooled to its own size instead of being replicated up to
6x6, so ``classifier.1`` then has 256*s*s inputs (s = the feature side) and, only for those sizes,
its shape differs from torchvision's. Larger feature maps must be multiples of 6: the adaptive pool
here has no overlapping windows, so e.g. 256 (7x7) is refused when building.
"""
from __future__ import annotations

from mpinet import nn
from mpinet.ops import shape as shape_ops

from ._common import check_positive, conv_out, pooled_side


class AlexNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.5,
                 pooled: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * pooled * pooled, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        # x: (N, C, H, W) -> (N, 256, s, s) -> (N, 256, p, p) -> (N, 256*p*p) -> (N, num_classes)
        x = self.avgpool(self.features(x))
        return self.classifier(shape_ops.flatten(x, 1))


def feature_side(input_size: int) -> int:
    """Side of AlexNet's last feature map for a square input (6 for 224)."""
    s = conv_out(input_size, 11, stride=4, padding=2)
    s = conv_out(s, 3, stride=2)
    s = conv_out(s, 5, padding=2)
    s = conv_out(s, 3, stride=2)
    return conv_out(s, 3, stride=2)


def alexnet(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
            dropout: float = 0.5) -> AlexNet:
    """AlexNet (torchvision's "one weird trick" variant) for ``input_size`` square images."""
    num_classes = check_positive("alexnet", "num_classes", num_classes)
    in_channels = check_positive("alexnet", "in_channels", in_channels)
    input_size = check_positive("alexnet", "input_size", input_size)
    side = feature_side(input_size)
    if side < 1:
        raise ValueError(f"alexnet: input_size {input_size} is too small (the feature map "
                         f"vanishes); use input_size >= 63, or a CIFAR-sized model such as "
                         f"resnet18 with stem='cifar'")
    model = AlexNet(in_channels, num_classes, dropout,
                    pooled=pooled_side("alexnet", side, 6, input_size))
    model.input_shape = (in_channels, input_size, input_size)
    return model
