"""A character-level LSTM language model: embedding -> LSTM -> linear over the vocabulary.

    net = build_model("char-lstm", vocab_size=98, hidden_size=256)
    logits = net(tokens)              # tokens (N, T) int64 -> logits (N, vocab_size, T)

The logits keep the class axis second, (N, V, T), so ``cross_entropy(logits, next_tokens)`` with
next_tokens (N, T) is the mean next-character loss in nats (bits per character = loss / ln 2),
and Model.fit trains it like any classifier. ``generate`` samples text one character at a time,
carrying the LSTM state (mpinet.sample wraps it with the text vocabulary).
"""
from __future__ import annotations

import numpy as np

from mpinet import backend, nn
from mpinet.autograd import Variable, no_grad
from mpinet.ops import activation as act
from mpinet.ops import shape as shape_ops

from ._common import check_positive


class CharLSTM(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_size: int = 256,
                 num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("embed_dim", embed_dim),
                        ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_positive("char-lstm", name, v)
        self.vocab_size = vocab_size
        self.input_shape = (16,)  # (T,) token ids; any length works, 16 is summary()'s
        self.input_dtype = np.int64
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens, lengths=None):
        out, _ = self.lstm(self.embed(tokens), lengths=lengths)  # (N, T, H)
        return shape_ops.transpose(self.head(out), (0, 2, 1))    # (N, V, T)

    def generate(self, prompt_ids, length: int, temperature: float = 1.0, seed: int = 0):
        """``length`` more token ids after ``prompt_ids`` (see ``generate``), carrying the LSTM
        state from step to step."""
        state = None

        def next_logits(tokens):  # the new tokens only: the state holds the rest
            nonlocal state
            seq, state = self.lstm(self.embed(backend.to_device(tokens)), state)
            return self.head(seq[:, -1])

        return generate(self, next_logits, prompt_ids, length, temperature, seed,
                        feed_all=False)


def generate(model, next_logits, prompt_ids, length: int, temperature: float, seed: int,
             feed_all: bool):
    """Sample ``length`` token ids after ``prompt_ids`` (1-D, at least one id) from
    softmax(logits / temperature) with a seeded NumPy generator (temperature 0: greedy).

    ``next_logits(tokens (1, t))`` returns the (1, V) logits of the next token: given all
    tokens so far (``feed_all``) or only the ones not seen yet (a recurrent model's state)."""
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    if prompt.size == 0:
        raise ValueError("generate: the prompt needs at least one token")
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    ids = list(prompt[0])
    fresh = prompt
    try:
        with no_grad():
            for _ in range(length):
                tokens = np.array([ids], dtype=np.int64) if feed_all else fresh
                logits = next_logits(tokens).numpy().astype(np.float64)[0]
                if temperature == 0:
                    nxt = int(logits.argmax())
                else:
                    p = act.softmax(Variable(logits / temperature)).data
                    nxt = int(rng.choice(len(p), p=p / p.sum()))
                ids.append(nxt)
                fresh = np.array([[nxt]], dtype=np.int64)
    finally:
        model.train(was_training)
    return np.array(ids[prompt.shape[1]:], dtype=np.int64)


def char_lstm(vocab_size: int = 98, embed_dim: int = 64, hidden_size: int = 256,
              num_layers: int = 1, dropout: float = 0.0) -> CharLSTM:
    return CharLSTM(vocab_size, embed_dim, hidden_size, num_layers, dropout)
