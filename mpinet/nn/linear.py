"""Fully connected layer (PyTorch's parameter names and default initialisation)."""
from __future__ import annotations

from .. import amp
from ..ops import linear as linear_ops
from . import init
from .basic import input_error
from .module import Module


class Linear(Module):
    """y = x @ weight.T + bias; x (N, in_features) or (..., in_features).

    weight (out_features, in_features): Kaiming-uniform(a=sqrt(5)); bias (out_features,):
    U(+-1/sqrt(in_features)), both as PyTorch. Under ``amp.autocast`` the matmul runs in the
    compute dtype while the parameters stay fp32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: in_features and out_features must be positive, got "
                             f"{in_features} and {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = init.kaiming_uniform((out_features, in_features))
        self.bias = init.bias_for((out_features, in_features), out_features) if bias else None

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise input_error(self, f"(N, {self.in_features})", x)
        x, w, b = amp.autocast_inputs(x, self.weight, self.bias)
        return linear_ops.linear(x, w, b)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
