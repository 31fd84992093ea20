"""ResNet-18/34/50 (He et al. 2016) in torchvision's layout.

Parameter and buffer names equal ``torchvision.models.resnet18/34/50``'s: ``conv1``, ``bn1``,
``layer<k>.<i>.conv1`` / ``bn1`` / ... / ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN),
``fc``.
A torchvision state dict loads by name unchanged (``num_batches_tracked`` included). Bottleneck
is torchvision's "v1.5": the stride sits on the 3x3 convolution.

Stems: ``stem="imagenet"`` is torchvision's 7x7 stride-2 convolution + 3x3 stride-2 max pool
(for 224x224); ``stem="cifar"`` is a 3x3 stride-1 convolution and no pooling (``maxpool`` becomes
Identity, so names do not change) for 32x32 images; ``conv1.weight`` is then (64, C, 3, 3).
Initialisation is torchvision's: convolutions He-normal (fan_out), BN weight 1 / bias 0, fc
PyTorch's Linear default; ``zero_init_residual=True`` zeroes each block's last BN weight.

Every ReLU is fused into the op before it: into the batch norm (``fuse_relu=True``) where it
follows one, into the residual addition (``add_relu``) at the end of each block. Same values as
torchvision's separate ReLU modules (which have no parameters, so names do not change), ~100
fewer kernel launches and autograd nodes per ResNet-50 step.
"""
from __future__ import annotations

from mpinet import nn
from mpinet.ops import activation as act_ops
from mpinet.ops import shape as shape_ops

from ._common import check_positive, constant_, init_conv_bn_


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1-projected) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, fuse_relu=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        if downsample is not None:
            self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        # x: (N, inplanes, H, W) -> (N, planes, H/stride, W/stride)
        identity = self.downsample(x) if "downsample" in self._modules else x
        out = self.bn1(self.conv1(x))                      # BN + ReLU
        out = self.bn2(self.conv2(out))
        return act_ops.add_relu(out, identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), with a shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes, fuse_relu=True)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, fuse_relu=True)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        if downsample is not None:
            self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x):
        # x: (N, inplanes, H, W) -> (N, 4*planes, H/stride, W/stride)
        identity = self.downsample(x) if "downsample" in self._modules else x
        out = self.bn1(self.conv1(x))                      # BN + ReLU
        out = self.bn2(self.conv2(out))                    # BN + ReLU
        out = self.bn3(self.conv3(out))
        return act_ops.add_relu(out, identity)


class ResNet(nn.Module):
    def __init__(self, block, layers: list, num_classes: int = 1000, in_channels: int = 3,
                 stem: str = "imagenet", zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = conv3x3(in_channels, 64)
        else:
            raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(64, fuse_relu=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet"
                        else nn.Identity())
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        init_conv_bn_(self)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity.
            for _, m in self.named_modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    constant_(m.last_bn().weight, 0.0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        # x: (N, C, H, W) -> stem (N, 64, H/4, W/4) imagenet or (N, 64, H, W) cifar
        x = self.maxpool(self.bn1(self.conv1(x)))         # BN + ReLU
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # (N, 512*expansion, h, w) -> (N, 512*expansion, 1, 1) -> (N, num_classes)
        return self.fc(shape_ops.flatten(self.avgpool(x), 1))


_DEPTHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def _resnet(name: str, num_classes: int, in_channels: int, input_size: int, stem,
            zero_init_residual: bool) -> ResNet:
    num_classes = check_positive(name, "num_classes", num_classes)
    in_channels = check_positive(name, "in_channels", in_channels)
    input_size = check_positive(name, "input_size", input_size)
    if stem is None:
        stem = "cifar" if input_size <= 64 else "imagenet"
    # imagenet stem: /32 overall; cifar stem: /8. Smaller inputs reach 1x1 early but still run.
    block, layers = _DEPTHS[name]
    model = ResNet(block, layers, num_classes, in_channels, stem, zero_init_residual)
    model.input_shape = (in_channels, input_size, input_size)
    return model


def resnet18(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, stem=None,
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-18. ``stem=None`` picks "cifar" for input_size <= 64, else "imagenet"."""
    return _resnet("resnet18", num_classes, in_channels, input_size, stem, zero_init_residual)


def resnet34(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, stem=None,
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-34. ``stem=None`` picks "cifar" for input_size <= 64, else "imagenet"."""
    return _resnet("resnet34", num_classes, in_channels, input_size, stem, zero_init_residual)


def resnet50(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, stem=None,
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-50. ``stem=None`` picks "cifar" for input_size <= 64, else "imagenet"."""
    return _resnet("resnet50", num_classes, in_channels, input_size, stem, zero_init_residual)
