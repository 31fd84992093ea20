"""Embedding: a learned vector per token id (torch.nn.Embedding's names and N(0, 1) init)."""
from __future__ import annotations

import numpy as np

from ..autograd import Variable
from ..ops import embedding as embedding_ops
from . import init
from .module import Module


class Embedding(Module):
    """indices (...) int64 in [0, num_embeddings) -> (..., embedding_dim); weight (V, D)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(f"Embedding: num_embeddings and embedding_dim must be >= 1, got "
                             f"{num_embeddings}, {embedding_dim}")
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"Embedding: padding_idx {padding_idx} is outside the vocabulary "
                             f"of {num_embeddings}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        table = init.generator().standard_normal((num_embeddings, embedding_dim),
                                                 dtype=np.float32)
        if self.padding_idx is not None:
            table[self.padding_idx] = 0
        self.weight = init._param(table)

    def forward(self, indices):
        if isinstance(indices, Variable):
            indices = indices.data
        return embedding_ops.embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"
