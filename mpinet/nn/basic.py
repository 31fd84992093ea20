"""Shape-only layers (Flatten, Identity) and the layer error message every layer uses."""
from __future__ import annotations

from ..ops import shape as shape_ops
from .module import Module


def layer_name(module: Module) -> str:
    """'features.0 (Conv2d)' inside a model; just 'Conv2d' for a layer used on its own."""
    kind = type(module).__name__
    return kind if module.path == kind else f"{module.path} ({kind})"


def input_error(module: Module, expected: str, x) -> ValueError:
    """The ValueError for a wrong input: names the layer, the expected and the actual shape.

    e.g. "features.0 (Linear): expected input (N, 784), got (8, 1, 28, 28)".
    """
    return ValueError(f"{layer_name(module)}: expected input {expected}, got "
                      f"{tuple(x.shape)}")


class Identity(Module):
    """Returns its input unchanged (a placeholder, e.g. for a removed classifier head)."""

    def forward(self, x):
        return x


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...) for start_dim=1."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        if x.ndim <= self.start_dim:
            raise input_error(self, f"with more than {self.start_dim} dimensions to flatten "
                              f"from dim {self.start_dim}", x)
        return shape_ops.flatten(x, self.start_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}"
