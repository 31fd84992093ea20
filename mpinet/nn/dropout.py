"""Dropout layer: active in training mode, the identity in eval mode."""
from __future__ import annotations

from ..ops import dropout as dropout_ops
from .module import Module


class Dropout(Module):
    """Inverted dropout with probability ``p``.

    ``rng``: a NumPy Generator (mask drawn on the host, reproducible across CPU and GPU), a
    device generator, or None for mpinet.ops.dropout's default generators (see that module).
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p}")
        self.p, self.rng = p, rng

    def forward(self, x):
        return dropout_ops.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"
