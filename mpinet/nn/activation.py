"""Activation layers; all but PReLU hold no parameters."""
from __future__ import annotations

from ..ops import activation as act
from . import init as _init  # PReLU's argument is called ``init``, as in PyTorch
from .basic import input_error
from .module import Module


class ReLU(Module):
    def forward(self, x):
        return act.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return act.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class PReLU(Module):
    """Learned negative slope: one shared (num_parameters=1) or one per channel (axis 1)."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        super().__init__()
        if num_parameters < 1:
            raise ValueError(f"PReLU: num_parameters must be >= 1, got {num_parameters}")
        self.num_parameters = num_parameters
        self.weight = _init.constant((num_parameters,), init)

    def forward(self, x):
        if self.num_parameters > 1 and (x.ndim < 2 or x.shape[1] != self.num_parameters):
            raise input_error(self, f"(N, {self.num_parameters}, ...)", x)
        return act.prelu(x, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class Sigmoid(Module):
    def forward(self, x):
        return act.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return act.tanh(x)


class GELU(Module):
    """Exact GELU, x * Phi(x) (PyTorch's default approximate='none')."""

    def forward(self, x):
        return act.gelu(x)


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return act.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return act.log_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
