"""Dropout layer: active in training mode, the identity in eval mode."""
from __future__ import annotations

from ..ops import dropout as dropout_ops
from .module import Module


class Dropout(Module):
    """Inverted dropout with probability ``p``.

    ``rng``: an ``mpinet.ops.dropout.DropoutGenerator`` of its own, or None for that module's
    default generator (seeded by ``mpinet.nn.init.manual_seed`` and saved in checkpoints).
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p}")
        if rng is not None and not isinstance(rng, dropout_ops.DropoutGenerator):
            raise TypeError(f"Dropout: rng must be an mpinet.ops.dropout.DropoutGenerator or "
                            f"None, got {type(rng).__name__}")
        self.p, self.rng = p, rng

    def forward(self, x):
        return dropout_ops.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"
