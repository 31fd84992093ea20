"""Linear regression and the multi-layer perceptron.

Both flatten their input first, so they take feature vectors (N, F) and images (N, C, H, W) alike;
``input_shape`` records which one the model was built for (``model.summary(model.input_shape)``).
"""
from __future__ import annotations

import math

from mpinet import nn
from mpinet.ops import shape as shape_ops

from ._common import check_positive


class LinearRegression(nn.Module):
    """y = x W^T + b: one Linear layer (Keras' ``Dense(units)`` regression model).

    Parameters: ``linear.weight`` (out_features, in_features), ``linear.bias`` (out_features,).
    """

    def __init__(self, in_features: int, out_features: int = 1):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        # x: (N, F) or (N, C, H, W) -> (N, out_features)
        if x.ndim > 2:
            x = shape_ops.flatten(x, 1)
        return self.linear(x)


def linear_regression(in_features: int, out_features: int = 1,
                      input_shape: tuple | None = None) -> LinearRegression:
    """A linear regression model with ``in_features`` inputs and ``out_features`` targets.

    ``input_shape`` (without batch) defaults to ``(in_features,)``; pass e.g. (1, 8, 8) for images.
    """
    in_features = check_positive("linear_regression", "in_features", in_features)
    out_features = check_positive("linear_regression", "out_features", out_features)
    model = LinearRegression(in_features, out_features)
    model.input_shape = _checked_input_shape("linear_regression", in_features, input_shape)
    return model


def mlp(in_features: int, hidden: tuple = (256, 128), num_classes: int = 10,
        dropout: float = 0.0, batchnorm: bool = False,
        input_shape: tuple | None = None, activation: str = "relu") -> nn.Sequential:
    """Flatten -> [Linear -> (BatchNorm1d) -> ReLU -> (Dropout)] per hidden width -> Linear.

    ``activation``: any name of ``nn.ACTIVATIONS`` instead of ReLU (e.g. "gelu", "mish"; on the
    CLI ``--model-opt activation=mish``).

    Layers are one Sequential, numbered in order: with ``batchnorm=False, dropout=0`` and
    hidden=(256, 128) they are 0 Flatten, 1 Linear, 2 ReLU, 3 Linear, 4 ReLU, 5 Linear.
    ``input_shape`` (without batch) defaults to ``(in_features,)``.
    """
    in_features = check_positive("mlp", "in_features", in_features)
    num_classes = check_positive("mlp", "num_classes", num_classes)
    hidden = tuple(check_positive("mlp", "hidden width", h) for h in hidden)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"mlp: dropout must be in [0, 1), got {dropout!r}")
    nn.get_activation(activation)  # an unknown name fails here, before any layer is built
    layers = [nn.Flatten(1)]
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.get_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    model.input_shape = _checked_input_shape("mlp", in_features, input_shape)
    return model


def _checked_input_shape(model: str, in_features: int, input_shape) -> tuple:
    if input_shape is None:
        return (in_features,)
    input_shape = tuple(int(d) for d in input_shape)
    if math.prod(input_shape) != in_features:
        raise ValueError(f"{model}: input_shape {input_shape} has {math.prod(input_shape)} "
                         f"features but in_features is {in_features}; make them agree")
    return input_shape
