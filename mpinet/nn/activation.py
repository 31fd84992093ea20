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


class ELU(Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return act.elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SiLU(Module):
    def forward(self, x):
        return act.silu(x)


class Softplus(Module):
    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        return act.softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class Hardswish(Module):
    def forward(self, x):
        return act.hardswish(x)


class ReLU6(Module):
    def forward(self, x):
        return act.relu6(x)


class Mish(Module):
    def forward(self, x):
        return act.mish(x)


class GELUTanh(Module):
    """GELU, tanh approximation (torch's GELU(approximate='tanh'))."""

    def forward(self, x):
        return act.gelu_tanh(x)


# Activation names (for models and configs that choose one by string): name -> layer class.
ACTIVATIONS = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "prelu": PReLU, "sigmoid": Sigmoid, "tanh": Tanh,
    "gelu": GELU, "gelu_tanh": GELUTanh, "elu": ELU, "silu": SiLU, "swish": SiLU,
    "softplus": Softplus, "hardswish": Hardswish, "relu6": ReLU6, "mish": Mish,
}


def get_activation(name: str, **opts) -> Module:
    """A new activation layer by name (see ACTIVATIONS), e.g. get_activation("elu", alpha=0.5)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](**opts)
