"""Embedding lookup: rows of a (V, D) table at integer indices, with a checked range."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Function


class Embedding(Function):
    """(weight (V, D), indices (...) int) -> (..., D). Backward adds each position's gradient
    into its row (repeated indices accumulate); ``padding_idx``'s row gets no gradient."""

    def __init__(self, padding_idx: int | None = None):
        self.padding_idx = padding_idx

    def forward(self, weight, indices):
        if indices.dtype.kind not in "iu":
            raise TypeError(f"embedding: indices must be integer token ids, got dtype "
                            f"{indices.dtype} (shape {tuple(indices.shape)})")
        vocab = weight.shape[0]
        if indices.size:
            bad = (indices < 0) | (indices >= vocab)
            if bool(bad.any()):  # one host sync per batch: a wrong id must never read garbage
                where = tuple(int(i) for i in np.argwhere(backend.to_numpy(bad))[0])
                raise IndexError(f"embedding: index {int(indices[where])} at position {where} "
                                 f"of indices with shape {tuple(indices.shape)} is out of range "
                                 f"for a vocabulary of size {vocab} (num_embeddings); valid "
                                 f"indices are 0..{vocab - 1}")
        self.save(indices)
        self.weight_shape, self.weight_dtype = weight.shape, weight.dtype
        return weight[indices]

    def backward(self, gy):
        (indices,) = self.saved
        xp = backend.xp_of(gy)
        gw = xp.zeros(self.weight_shape, gy.dtype)
        rows, grads = indices.reshape(-1), gy.reshape(-1, self.weight_shape[1])
        if backend.is_gpu_array(gw):
            import cupyx  # GPU only

            cupyx.scatter_add(gw, rows, grads)  # atomics: repeated ids accumulate
        else:
            np.add.at(gw, rows, grads)
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return gw.astype(self.weight_dtype, copy=False), None


def embedding(indices, weight, padding_idx: int | None = None):
    return Embedding(padding_idx).apply(weight, indices)
