"""RNN, LSTM and GRU layers with PyTorch's interface, parameter names and weight layouts.

    lstm = nn.LSTM(input_size=32, hidden_size=64, num_layers=2, bidirectional=True,
                   batch_first=True)
    out, (h_n, c_n) = lstm(x)                     # x (N, T, 32) -> out (N, T, 128)
    out, (h_n, c_n) = lstm(x, lengths=lengths)    # padded batch: padded steps change nothing

Parameters per layer k and direction (suffix "_reverse" for the backward direction), exactly
torch's: weight_ih_l{k} (G*H, in), weight_hh_l{k} (G*H, H), bias_ih_l{k}, bias_hh_l{k} (G*H,)
with G = 4 (LSTM, gates i, f, g, o), 3 (GRU, gates r, z, n), 1 (RNN). A torch state dict
(as NumPy arrays) loads with ``load_state_dict``.

Shapes (batch_first=False): x (T, N, in), h0/c0 (num_layers * D, N, H), out (T, N, D * H),
h_n/c_n (num_layers * D, N, H); batch_first=True swaps T and N of x and out only, as torch.
``lengths`` (N,) ints in [1, T]: outputs past a sequence's end are 0 and h_n/c_n are taken at
its last valid step (torch's pack_padded_sequence semantics).

Per layer and direction: one matmul projects the inputs of all steps (T*N rows at once), then
one op (mpinet.ops.recurrent.Recurrence) loops over the steps: a recurrent matmul and one fused
cell step each (one kernel on the GPU), and in backward the weight gradients of all steps as one
matmul. The step count is read from each batch, so it may differ from batch to batch.
"""
from __future__ import annotations

import math

import numpy as np

from .. import amp
from ..ops import dropout as dropout_ops
from ..ops import linear as linear_ops
from ..ops import recurrent as rec
from ..ops import shape as shape_ops
from . import init
from .basic import input_error
from .module import Module

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class _RecurrentBase(Module):
    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if int(v) < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 1, got {v}")
        if not 0 <= dropout < 1:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        gates = _GATES[self.mode] * hidden_size
        bound = 1.0 / math.sqrt(hidden_size)  # torch: every weight and bias U(-1/sqrt(H), ..)
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes(layer):
                setattr(self, f"weight_ih{suffix}", init.uniform((gates, layer_in), bound))
                setattr(self, f"weight_hh{suffix}", init.uniform((gates, hidden_size), bound))
                if bias:
                    setattr(self, f"bias_ih{suffix}", init.uniform((gates,), bound))
                    setattr(self, f"bias_hh{suffix}", init.uniform((gates,), bound))

    def _suffixes(self, layer: int):
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def _weights(self, suffix: str):
        b_ih = getattr(self, f"bias_ih{suffix}") if self.bias else None
        b_hh = getattr(self, f"bias_hh{suffix}") if self.bias else None
        return getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}"), b_ih, b_hh

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x, hx=None, lengths=None):
        if x.ndim != 3 or x.shape[2] != self.input_size:
            layout = "(N, T, {})" if self.batch_first else "(T, N, {})"
            raise input_error(self, layout.format(self.input_size), x)
        if self.batch_first:
            x = shape_ops.transpose(x, (1, 0, 2))
        steps, batch = int(x.shape[0]), int(x.shape[1])
        masks = None
        if lengths is not None:
            masks = rec.step_masks(lengths, steps, batch, x.xp, np.dtype(np.float32)
                                   if x.dtype.itemsize < 4 else x.dtype)
            masks = [masks[t] for t in range(steps)]
        h0, c0 = self._initial_states(hx, batch, x)
        finals_h, finals_c = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * self.num_directions + d
                out, h, c = self._run_direction(layer_input, suffix, h0[k],
                                                None if c0 is None else c0[k],
                                                masks, reverse=d == 1)
                outputs.append(out)  # (T, N, H)
                finals_h.append(h)
                finals_c.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else shape_ops.concat(outputs, axis=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = dropout_ops.dropout(layer_input, self.dropout, True)
        out = shape_ops.transpose(layer_input, (1, 0, 2)) if self.batch_first else layer_input
        h_n = rec.stack_steps(finals_h)
        if self.mode == "LSTM":
            return out, (h_n, rec.stack_steps(finals_c))
        return out, h_n

    def _initial_states(self, hx, batch: int, x):
        """Per (layer, direction) initial states: tuples of Variables or arrays (N, H)."""
        expected = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if hx is None:
            zeros = x.xp.zeros(expected[1:], dtype=amp.compute_dtype() or x.dtype)
            return [zeros] * expected[0], ([zeros] * expected[0] if self.mode == "LSTM" else None)
        states = hx if self.mode == "LSTM" else (hx,)
        if self.mode == "LSTM" and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError(f"{self.path}: hx must be a tuple (h0, c0) for an LSTM")
        for name, s in zip(("h0", "c0"), states, strict=False):
            if tuple(s.shape) != expected:
                raise ValueError(f"{self.path}: {name} must have shape {expected} (num_layers * "
                                 f"num_directions, N, hidden_size), got {tuple(s.shape)}")
        split = [rec.split_steps(s) for s in states]
        return split[0], (split[1] if self.mode == "LSTM" else None)

    def _run_direction(self, x, suffix: str, h, c, masks, reverse: bool):
        """One layer in one direction over x (T, N, in): (out (T, N, H), h, c)."""
        w_ih, w_hh, b_ih, b_hh = self._weights(suffix)
        x, w_ih, w_hh, b_ih, b_hh = amp.autocast_inputs(x, w_ih, w_hh, b_ih, b_hh)
        projected = linear_ops.linear(x, w_ih, b_ih)       # (T, N, G*H): all steps, one matmul
        results = rec.recurrence(self.mode, projected, h, w_hh, b_hh,
                                 c if self.mode == "LSTM" else None, reverse, masks)
        return results if self.mode == "LSTM" else (results[0], results[1], None)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, batch_first={self.batch_first}")


class LSTM(_RecurrentBase):
    """Long short-term memory (gates i, f, g, o as torch). forward(x, (h0, c0)=None,
    lengths=None) -> (out, (h_n, c_n))."""

    mode = "LSTM"


class GRU(_RecurrentBase):
    """Gated recurrent unit (gates r, z, n as torch). forward(x, h0=None, lengths=None) ->
    (out, h_n)."""

    mode = "GRU"


class RNN(_RecurrentBase):
    """Elman RNN, h' = tanh (or relu) of x W_ih^T + b_ih + h W_hh^T + b_hh.
    forward(x, h0=None, lengths=None) -> (out, h_n)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        # Before Module.__init__ (the base reads it): set past Module's attribute registry.
        object.__setattr__(self, "mode", "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
        self.nonlinearity = nonlinearity


class _CellBase(Module):
    """One step of a recurrent layer, for hand-written loops (torch's LSTMCell/GRUCell names:
    weight_ih (G*H, in), weight_hh (G*H, H), bias_ih, bias_hh (G*H,))."""

    gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be >= 1, "
                             f"got {input_size}, {hidden_size}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        bound = 1.0 / math.sqrt(hidden_size)
        rows = self.gates * hidden_size
        self.weight_ih = init.uniform((rows, input_size), bound)
        self.weight_hh = init.uniform((rows, hidden_size), bound)
        self.bias_ih = init.uniform((rows,), bound) if bias else None
        self.bias_hh = init.uniform((rows,), bound) if bias else None

    def _projections(self, x, h):
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise input_error(self, f"(N, {self.input_size})", x)
        x, w_ih, w_hh, b_ih, b_hh = amp.autocast_inputs(x, self.weight_ih, self.weight_hh,
                                                         self.bias_ih, self.bias_hh)
        if h is None:
            h = x.xp.zeros((x.shape[0], self.hidden_size), dtype=x.dtype)
        return linear_ops.linear(x, w_ih, b_ih), linear_ops.linear(h, w_hh, b_hh), h


class LSTMCell(_CellBase):
    """forward(x (N, in), (h, c) or None) -> (h', c')."""

    gates = 4

    def forward(self, x, hx=None):
        h, c = (None, None) if hx is None else hx
        gx, gh, h = self._projections(x, h)
        if c is None:
            c = x.xp.zeros(h.shape, dtype=h.dtype)
        h2, c2, _ = rec.lstm_cell(gx, gh, c, h)
        return h2, c2


class GRUCell(_CellBase):
    """forward(x (N, in), h or None) -> h'."""

    gates = 3

    def forward(self, x, h=None):
        gx, gh, h = self._projections(x, h)
        return rec.gru_cell(gx, gh, h)[0]
