"""A dynamic graph: a recurrent net whose loop length is decided by each batch's data.

mpinet records the graph while the Python code runs (define-by-run, as PyTorch), so a plain
``for`` loop over however many steps this batch has is differentiable as it stands: no padding,
no fixed unrolling. The task: read a sequence of 2 to 12 numbers and output their sum.

    python -m examples.dynamic_rnn                 # from the repository root, ~10 s
    python -m examples.dynamic_rnn --steps 200

It prints the mean squared error before and after training on fresh sequences.
"""
from __future__ import annotations

import argparse

import numpy as np

from mpinet import nn
from mpinet.autograd import Variable, no_grad
from mpinet.ops import loss as loss_ops
from mpinet.ops.activation import tanh
from mpinet.optim import Adam


class LoopRNN(nn.Module):
    """h_t = tanh(W_x x_t + W_h h_{t-1}); y = W_o h_T. The loop runs x.shape[1] times."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(1, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):                       # x (N, T): T differs from batch to batch
        h = Variable(np.zeros((x.shape[0], self.hidden), np.float32))
        for t in range(x.shape[1]):             # the data decides how long the graph is
            h = tanh(self.inp(x[:, t:t + 1]) + self.rec(h))
        return self.out(h)


def batch(rng, size: int = 32):
    length = int(rng.integers(2, 13))           # a new sequence length for every batch
    x = rng.uniform(-1, 1, (size, length)).astype(np.float32)
    return x, x.sum(axis=1, keepdims=True)


def evaluate(net, rng, batches: int = 20) -> float:
    with no_grad():
        return float(np.mean([loss_ops.mse(net(Variable(x)), y).item()
                              for x, y in (batch(rng) for _ in range(batches))]))


def main(argv=None) -> tuple[float, float]:
    p = argparse.ArgumentParser(description="train a data-dependent-length RNN to sum numbers")
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args(argv)
    nn.init.manual_seed(0)
    net = LoopRNN()
    opt = Adam(net.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    before = evaluate(net, np.random.default_rng(1))
    for _ in range(args.steps):
        x, y = batch(rng)
        loss = loss_ops.mse(net(Variable(x)), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = evaluate(net, np.random.default_rng(1))
    print(f"mean squared error on fresh sequences of 2-12 numbers: {before:.3f} before, "
          f"{after:.4f} after {args.steps} steps")
    return before, after


if __name__ == "__main__":
    main()
