"""Multi-head attention with torch.nn.MultiheadAttention's parameters and masks.

    attn = nn.MultiheadAttention(embed_dim=64, num_heads=4, batch_first=True)
    out, weights = attn(x, x, x, is_causal=True)          # self-attention, no peeking ahead

Parameters: in_proj_weight (3E, E) and in_proj_bias (3E,) (query, key, value projections
stacked, as torch), out_proj.weight (E, E), out_proj.bias (E,).
Masks (torch's conventions): ``attn_mask`` (L, S) or (N * heads, L, S), boolean (True = may not
attend) or float (added to the scores); ``key_padding_mask`` (N, S) boolean (True = padding);
``is_causal=True`` forbids attending to later positions. ``weights`` are the attention
probabilities averaged over heads, (N, L, S) (or per head with average_attn_weights=False).
"""
from __future__ import annotations

import math

import numpy as np

from .. import amp
from ..autograd import Variable
from ..ops import linear as linear_ops
from ..ops import shape as shape_ops
from ..ops.activation import softmax
from . import init
from .linear import Linear
from .module import Module


class MultiheadAttention(Module):
    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True,
                 batch_first: bool = False):
        super().__init__()
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be a positive "
                             f"multiple of num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.head_dim = embed_dim // num_heads
        # torch: xavier_uniform on the stacked (3E, E) projection, zero biases.
        bound = math.sqrt(6.0 / (embed_dim + 3 * embed_dim))
        self.in_proj_weight = init.uniform((3 * embed_dim, embed_dim), bound)
        self.in_proj_bias = init.constant((3 * embed_dim,), 0.0) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        if bias:
            self.out_proj.bias = init.constant((embed_dim,), 0.0)

    def _project(self, x, which: int):
        e = self.embed_dim
        w = self.in_proj_weight[which * e:(which + 1) * e]
        b = None if self.in_proj_bias is None else self.in_proj_bias[which * e:(which + 1) * e]
        x, w, b = amp.autocast_inputs(x, w, b)  # under autocast: the compute dtype
        return linear_ops.linear(x, w, b)

    def _heads(self, x, n: int, length: int):
        """(N, L, E) -> (N, heads, L, head_dim)."""
        return shape_ops.transpose(x.reshape(n, length, self.num_heads, self.head_dim),
                                   (0, 2, 1, 3))

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.ndim != 3 or t.shape[-1] != self.embed_dim:
                raise ValueError(f"{self.path}: {name} must be 3-D with last dimension "
                                 f"embed_dim={self.embed_dim}, got shape {tuple(t.shape)}")
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (shape_ops.transpose(t, (1, 0, 2)) for t in (query, key, value))
        n, length, source = int(query.shape[0]), int(query.shape[1]), int(key.shape[1])
        if tuple(key.shape[:2]) != tuple(value.shape[:2]) or int(key.shape[0]) != n:
            raise ValueError(f"{self.path}: key and value must be (N, S, E) for query (N, L, E); "
                             f"got query {tuple(query.shape)}, key {tuple(key.shape)}, value "
                             f"{tuple(value.shape)} (batch-first)")
        q = self._heads(self._project(query, 0), n, length)
        k = self._heads(self._project(key, 1), n, source)
        v = self._heads(self._project(value, 2), n, source)
        scores = (q @ shape_ops.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(self.head_dim))
        bias = self._mask_bias(attn_mask, key_padding_mask, is_causal, n, length, source,
                               scores.xp, scores.dtype)
        if bias is not None:
            scores = scores + bias
        probs = softmax(scores, axis=-1)                          # (N, heads, L, S)
        out = shape_ops.transpose(probs @ v, (0, 2, 1, 3)).reshape(n, length, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = shape_ops.transpose(out, (1, 0, 2))
        if not need_weights:
            return out, None
        weights = probs.mean(axis=1) if average_attn_weights else probs
        return out, weights

    def _mask_bias(self, attn_mask, key_padding_mask, is_causal, n, length, source, xp, dtype):
        """One additive (N, heads, L, S)-broadcastable array of 0 and -inf (or given floats)."""
        bias = None

        def add(term):
            nonlocal bias
            bias = term if bias is None else bias + term

        if is_causal:
            add(xp.asarray(np.where(np.triu(np.ones((length, source), bool), k=1), -np.inf, 0)
                           .astype(dtype)))
        if attn_mask is not None:
            m = attn_mask.data if isinstance(attn_mask, Variable) else xp.asarray(attn_mask)
            if m.shape == (n * self.num_heads, length, source):
                m = m.reshape(n, self.num_heads, length, source)
            elif m.shape != (length, source):
                raise ValueError(f"{self.path}: attn_mask must have shape ({length}, {source}) "
                                 f"or ({n * self.num_heads}, {length}, {source}), got "
                                 f"{tuple(m.shape)}")
            add(xp.where(m, -np.inf, 0).astype(dtype) if m.dtype == bool else m.astype(dtype))
        if key_padding_mask is not None:
            m = xp.asarray(key_padding_mask.data if isinstance(key_padding_mask, Variable)
                           else key_padding_mask)
            if m.shape != (n, source):
                raise ValueError(f"{self.path}: key_padding_mask must have shape ({n}, {source}) "
                                 f"(N, S), got {tuple(m.shape)}")
            m = xp.where(m, -np.inf, 0).astype(dtype) if m.dtype == bool else m.astype(dtype)
            add(m[:, None, None, :])
        return bias

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
