"""A character-level Transformer language model (decoder only, causal self-attention).

    net = build_model("char-transformer", vocab_size=98, embed_dim=64, num_layers=2)
    logits = net(tokens)              # tokens (N, T) int64, T <= max_len -> (N, vocab_size, T)

Token and learned position embeddings, then ``num_layers`` pre-norm blocks (LayerNorm ->
causal MultiheadAttention -> residual; LayerNorm -> Linear -> GELU -> Linear -> residual), a final
LayerNorm and a linear head. Same output layout and training as "char-lstm"; ``generate``
recomputes the (at most max_len) context for every new character.
"""
from __future__ import annotations

import numpy as np

from mpinet import backend, nn
from mpinet.ops import shape as shape_ops

from ._common import check_positive
from .char_lstm import generate


class Block(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, mlp_ratio * embed_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * embed_dim, embed_dim)

    def forward(self, x):                                   # (N, T, E)
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False, is_causal=True)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class CharTransformer(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int = 64, num_heads: int = 4,
                 num_layers: int = 2, max_len: int = 256, mlp_ratio: int = 4):
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("embed_dim", embed_dim),
                        ("num_heads", num_heads), ("num_layers", num_layers),
                        ("max_len", max_len), ("mlp_ratio", mlp_ratio)):
            check_positive("char-transformer", name, v)
        if embed_dim % num_heads:
            raise ValueError(f"char-transformer: embed_dim ({embed_dim}) must be a multiple of "
                             f"num_heads ({num_heads})")
        self.vocab_size, self.max_len = vocab_size, max_len
        self.input_shape, self.input_dtype = (16,), np.int64  # summary(): 16 token ids
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.position = nn.Embedding(max_len, embed_dim)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio)
                                      for _ in range(num_layers)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size)

    def forward(self, tokens, lengths=None):
        # lengths: accepted for the sequence-batch protocol; causal attention never looks at
        # later (padded) positions, so the valid positions' outputs ignore the padding.
        steps = int(tokens.shape[1])
        if steps > self.max_len:
            raise ValueError(f"char-transformer: sequences of {steps} tokens (input shape "
                             f"{tuple(tokens.shape)}) exceed max_len={self.max_len}; build it "
                             f"with a larger max_len or use a shorter --seq-len")
        ids = tokens.data if hasattr(tokens, "data") else tokens
        positions = backend.xp_of(ids).arange(steps)[None, :]
        x = self.embed(tokens) + self.position(positions)      # (N, T, E)
        logits = self.head(self.norm(self.blocks(x)))          # (N, T, V)
        return shape_ops.transpose(logits, (0, 2, 1))          # (N, V, T)

    def generate(self, prompt_ids, length: int, temperature: float = 1.0, seed: int = 0):
        """``length`` more token ids after ``prompt_ids`` (see models.char_lstm.generate)."""
        def next_logits(tokens):
            context = tokens[:, -self.max_len:]
            return self(backend.to_device(context))[:, :, -1]  # (1, V)

        return generate(self, next_logits, prompt_ids, length, temperature, seed, feed_all=True)


def char_transformer(vocab_size: int = 98, embed_dim: int = 64, num_heads: int = 4,
                     num_layers: int = 2, max_len: int = 256,
                     mlp_ratio: int = 4) -> CharTransformer:
    return CharTransformer(vocab_size, embed_dim, num_heads, num_layers, max_len, mlp_ratio)
