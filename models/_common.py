"""Helpers the model families share: re-initialising weights in place, checking input sizes.

Re-initialising writes ``param.data`` instead of assigning a new Parameter: assigning would move
the parameter to the end of its layer's registry (``bias`` before ``weight``), and state-dict order
is kept identical to torchvision's.
"""
from __future__ import annotations

import numpy as np

from mpinet import backend
from mpinet.autograd import Parameter
from mpinet.nn import init


def kaiming_normal_(param: Parameter, mode: str = "fan_out") -> None:
    """He-normal for ReLU nets; torchvision's ResNet/VGG use mode="fan_out"."""
    param.data = init.kaiming_normal(tuple(param.shape), mode=mode, dtype=param.dtype).data


def kaiming_uniform_(param: Parameter, a: float = 0.0) -> None:
    """U(+-sqrt(6 / ((1 + a^2) fan_in))); torchvision's SqueezeNet uses a=0."""
    param.data = init.kaiming_uniform(tuple(param.shape), a=a, dtype=param.dtype).data


def normal_(param: Parameter, std: float) -> None:
    """N(0, std^2), drawn in float32 from the shared seeded generator (VGG's 102M-weight
    classifier.0 would need 0.8 GB as a float64 draw)."""
    draw = init.generator().standard_normal(tuple(param.shape), dtype=np.float32) * np.float32(std)
    param.data = backend.to_device(draw.astype(param.dtype, copy=False))


def constant_(param: Parameter, value: float) -> None:
    param.data = init.constant(tuple(param.shape), value, dtype=param.dtype).data


def check_positive(model: str, name: str, value: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{model}: {name} must be a positive integer, got {value!r}")
    return int(value)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution or (floor-mode) pooling window."""
    return (size + 2 * padding - kernel) // stride + 1


def pooled_side(model: str, side: int, target: int, input_size: int) -> int:
    """The grid the adaptive average pool before the classifier produces.

    torchvision pools to ``target`` (7 for VGG, 6 for AlexNet). A smaller feature map pools to its
    own size (nothing to replicate); a larger one must be a multiple of ``target``, because
    AdaptiveAvgPool2d here supports only exact, non-overlapping windows.
    """
    if side < target:
        return side
    if side % target:
        raise ValueError(f"{model}: input_size {input_size} gives a {side}x{side} feature map, "
                         f"which AdaptiveAvgPool2d({target}) cannot pool exactly (only whole "
                         f"multiples of {target} are supported); use an input_size whose "
                         f"feature map is a multiple of {target} (e.g. 224) or smaller than it")
    return target


def init_conv_bn_(model) -> None:
    """torchvision's ResNet/U-Net initialisation: He-normal (fan_out) conv weights, batch-norm
    weight 1 and bias 0, for every Conv2d and BatchNorm2d inside ``model``."""
    from mpinet import nn

    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            constant_(m.weight, 1.0)
            constant_(m.bias, 0.0)
