"""LeNet-5 and a small fast CNN for small images (8x8 digits, 28x28 MNIST/Fashion-MNIST).

Both are ``features`` (convolutions) -> flatten -> ``classifier`` (fully connected), the layout of
torchvision's AlexNet/VGG, so names read the same across the zoo (``features.0.weight``, ...).
"""
from __future__ import annotations

from mpinet import nn
from mpinet.ops import shape as shape_ops

from ._common import check_positive, conv_out


class ConvClassifier(nn.Module):
    """features -> flatten -> classifier."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x):
        # x: (N, C, H, W) -> features (N, C', H', W') -> (N, C'*H'*W') -> (N, num_classes)
        return self.classifier(shape_ops.flatten(self.features(x), 1))


def lenet5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> ConvClassifier:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling.

    conv5x5(6) -> pool2 -> conv5x5(16) -> pool2 -> fc120 -> fc84 -> fc(num_classes).
    Inputs smaller than 32 (e.g. 28x28 MNIST) get padding 2 in the first convolution, the usual
    way to keep LeNet's 32x32 geometry; the first FC layer's width follows the input size
    (16*5*5 = 400 for 28 and 32).
    """
    in_channels = check_positive("lenet5", "in_channels", in_channels)
    num_classes = check_positive("lenet5", "num_classes", num_classes)
    input_size = check_positive("lenet5", "input_size", input_size)
    pad = 2 if input_size < 32 else 0
    side = conv_out(input_size, 5, padding=pad) // 2
    side = conv_out(side, 5) // 2
    if side < 1:
        raise ValueError(f"lenet5: input_size {input_size} is too small (its feature map "
                         f"vanishes); use input_size >= 12, or small_cnn for tiny images")
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    )
    classifier = nn.Sequential(
        nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    model = ConvClassifier(features, classifier)
    model.input_shape = (in_channels, input_size, input_size)
    return model


def small_cnn(in_channels: int = 1, num_classes: int = 10, input_size: int = 8,
              width: int = 32, batchnorm: bool = True, dropout: float = 0.0) -> ConvClassifier:
    """A small fast CNN: two stages of [conv3x3 -> (BN) -> ReLU] x2 -> maxpool2, then fc128 -> fc.

    Stage widths are ``width`` and ``2 * width``; 3x3 convolutions keep the size, so the features
    are (2*width, input_size // 4, input_size // 4): 2x2 for 8x8 digits, 7x7 for 28x28 images.
    """
    in_channels = check_positive("small_cnn", "in_channels", in_channels)
    num_classes = check_positive("small_cnn", "num_classes", num_classes)
    input_size = check_positive("small_cnn", "input_size", input_size)
    width = check_positive("small_cnn", "width", width)
    if input_size < 4:
        raise ValueError(f"small_cnn: input_size must be >= 4 (two 2x2 poolings), got {input_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"small_cnn: dropout must be in [0, 1), got {dropout!r}")

    def conv_bn_relu(cin: int, cout: int) -> list:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)
        return [conv, nn.BatchNorm2d(cout), nn.ReLU()] if batchnorm else [conv, nn.ReLU()]

    features = nn.Sequential(
        *conv_bn_relu(in_channels, width), *conv_bn_relu(width, width), nn.MaxPool2d(2),
        *conv_bn_relu(width, 2 * width), *conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2),
    )
    side = input_size // 2 // 2
    head = [nn.Dropout(dropout)] if dropout > 0 else []
    head += [nn.Linear(2 * width * side * side, 128), nn.ReLU()]
    head += [nn.Dropout(dropout)] if dropout > 0 else []
    head += [nn.Linear(128, num_classes)]
    model = ConvClassifier(features, nn.Sequential(*head))
    model.input_shape = (in_channels, input_size, input_size)
    return model
