"""Recurrent cells and layers as ops: the cell steps, a whole layer direction over a sequence
(``Recurrence``), and the plumbing (split a sequence into steps, stack steps).

The gate math is written out forward and backward once (PyTorch's gate order and formulas, so
weights copy over from torch.nn.LSTM/GRU unchanged):

  LSTM: g = x W_ih^T + b_ih + h W_hh^T + b_hh, split (i, f, g, o):
        c' = sigmoid(f) c + sigmoid(i) tanh(g);  h' = sigmoid(o) tanh(c')
  GRU:  gx = x W_ih^T + b_ih, gh = h W_hh^T + b_hh, split (r, z, n):
        r = sigmoid(gx_r + gh_r); z = sigmoid(gx_z + gh_z); n = tanh(gx_n + r gh_n)
        h' = (1 - z) n + z h

The NumPy functions ``*_reference`` are the specification; on CuPy arrays one fused kernel each
way takes their place (mpinet.kernels.recurrent). ``lstm_cell``/``gru_cell`` are single steps
as autograd ops (nn.LSTMCell, hand-written loops); ``recurrence`` runs a layer direction over
all steps as one op (nn.LSTM/GRU/RNN), the input projections of all steps being one matmul
done before it.

Variable length: ``mask`` (N, 1) is 1 for sequences still running at this step and 0 past their
end. Past the end the state is carried unchanged and the step's output is 0, so padded steps
change nothing (outputs zero, final state = the state at each sequence's last valid step; run
in reverse, a sequence starts from the initial state at its own last step, as packed sequences
do in PyTorch).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Function
from ..kernels import recurrent as kernels


def _sigmoid(x):
    xp = backend.xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _compute(x):
    """Half-precision gate math runs in float32."""
    return x.astype(np.float32, copy=False) if x.dtype.itemsize < 4 else x


def lstm_cell_reference(gx, gh, c_prev, h_prev, mask):
    """The LSTM cell on raw arrays, from the input part gx and the recurrent part gh of the
    pre-activations (both (N, 4H)): (h, c, out, saved) with saved = what backward needs."""
    g = _compute(gx) + _compute(gh)
    hidden = c_prev.shape[1]
    xp = backend.xp_of(g)
    # sigmoid(x) = (1 + tanh(x / 2)) / 2: one tanh over all four gates (no overflow, no
    # branches), then the cell-input gate's own tanh.
    acts = xp.tanh(g * g.dtype.type(0.5))
    acts += 1
    acts *= g.dtype.type(0.5)
    i, f, o = acts[:, :hidden], acts[:, hidden:2 * hidden], acts[:, 3 * hidden:]
    gg = xp.tanh(g[:, 2 * hidden:3 * hidden])
    c_prev_c = _compute(c_prev)
    c_new = f * c_prev_c + i * gg
    tc = xp.tanh(c_new)
    h_new = o * tc
    if mask is None:
        h, c, out = h_new, c_new, h_new.copy()
    else:
        m = mask.astype(h_new.dtype, copy=False)
        h = m * h_new + (1 - m) * _compute(h_prev)
        c = m * c_new + (1 - m) * c_prev_c
        out = m * h_new
    return h, c, out, (i, f, gg, o, tc, c_prev_c)


def lstm_cell_backward_reference(saved, mask, gh, gc, gout):
    """Gradients (d g, d c_prev, d h_prev-through-the-carry) of lstm_cell_reference; d g is the
    gradient of both gx and gh (they are summed)."""
    i, f, gg, o, tc, c_prev = saved
    xp = backend.xp_of(i)
    gh, gc, gout = _compute(gh), _compute(gc), _compute(gout)
    if mask is None:
        dh_new, dc_carry, dh_carry = gh + gout, gc, None
        dc = gc
    else:
        m = mask.astype(i.dtype, copy=False)
        dh_new = m * (gh + gout)
        dc = m * gc
        dc_carry, dh_carry = (1 - m) * gc, (1 - m) * gh
    dc = dc + dh_new * o * (1 - tc * tc)
    dg = xp.concatenate([dc * gg * i * (1 - i), dc * c_prev * f * (1 - f),
                         dc * i * (1 - gg * gg), dh_new * tc * o * (1 - o)], axis=1)
    dc_prev = dc * f + (dc_carry if mask is not None else 0)
    return dg, dc_prev, dh_carry


def _lstm_step(gx, gh, c_prev, h_prev, mask, out=None, h_out=None):
    """One LSTM step on raw arrays: the GPU kernel for CuPy arrays, else the reference. The GPU
    kernel writes the step's output and next state straight into ``out`` and ``h_out`` where
    they fit (the reference returns its own arrays: the caller compares and copies)."""
    if backend.is_gpu_array(gx):
        return kernels.lstm_cell_forward(gx, gh, c_prev, h_prev, mask, out, h_out)
    return lstm_cell_reference(gx, gh, c_prev, h_prev, mask)


def _lstm_step_backward(saved, mask, gh, gc, gout, dg=None):
    if backend.is_gpu_array(gh):
        return kernels.lstm_cell_backward(saved, mask, gh, gc, gout, dg)
    return lstm_cell_backward_reference(saved, mask, gh, gc, gout)


def _gru_step(gx, gh, h_prev, mask, out=None, h_out=None):
    if backend.is_gpu_array(gx):
        return kernels.gru_cell_forward(gx, gh, h_prev, mask, out, h_out)
    return gru_cell_reference(gx, gh, h_prev, mask)


def _gru_step_backward(saved, mask, gh_state, gout, dgx=None, dgh=None):
    if backend.is_gpu_array(gh_state):
        return kernels.gru_cell_backward(saved, mask, gh_state, gout, dgx, dgh)
    return gru_cell_backward_reference(saved, mask, gh_state, gout)


class LSTMCell(Function):
    """(gx, gh (N, 4H) input and recurrent pre-activations, c_prev (N, H), h_prev (N, H)
    [, mask (N, 1)]) -> (h, c, out): the next state and this step's output (zero where masked).
    The sum gx + gh happens inside (one kernel fewer per step on the GPU)."""

    def forward(self, gx, gh, c_prev, h_prev, mask=None):
        if gx.shape != gh.shape or gx.ndim != 2 or gx.shape[1] != 4 * c_prev.shape[1] \
                or c_prev.shape != h_prev.shape:
            raise ValueError(f"lstm_cell: expected gx and gh (N, 4H), c and h (N, H); got "
                             f"{tuple(gx.shape)}, {tuple(gh.shape)}, {tuple(c_prev.shape)}, "
                             f"{tuple(h_prev.shape)}")
        self.dtype = gx.dtype
        self.mask = mask
        h, c, out, saved = _lstm_step(gx, gh, c_prev, h_prev, mask)
        self.save(*saved)
        return (h.astype(self.dtype, copy=False), c.astype(self.dtype, copy=False),
                out.astype(self.dtype, copy=False))

    def backward(self, gh, gc, gout):
        dg, dc_prev, dh_carry = _lstm_step_backward(self.saved, self.mask, gh, gc, gout)
        def cast(a):
            return None if a is None else a.astype(self.dtype, copy=False)

        dg = cast(dg)
        grads = (dg, dg, cast(dc_prev), cast(dh_carry))  # gx and gh: the same gradient
        return grads + ((None,) if self.mask is not None else ())


def gru_cell_reference(gx, gh, h_prev, mask):
    """The GRU cell on raw arrays: (h, out, saved)."""
    gx, gh, h_prev_c = _compute(gx), _compute(gh), _compute(h_prev)
    hidden = h_prev.shape[1]
    xp = backend.xp_of(gx)
    r = _sigmoid(gx[:, :hidden] + gh[:, :hidden])
    z = _sigmoid(gx[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
    ghn = gh[:, 2 * hidden:]
    n = xp.tanh(gx[:, 2 * hidden:] + r * ghn)
    h_new = (1 - z) * n + z * h_prev_c
    if mask is None:
        h, out = h_new, h_new.copy()
    else:
        m = mask.astype(h_new.dtype, copy=False)
        h = m * h_new + (1 - m) * h_prev_c
        out = m * h_new
    return h, out, (r, z, n, ghn, h_prev_c)


def gru_cell_backward_reference(saved, mask, gh_state, gout):
    """Gradients (d gx, d gh, d h_prev through the cell's own use of it) of gru_cell_reference."""
    r, z, n, ghn, h_prev = saved
    xp = backend.xp_of(r)
    gh_state, gout = _compute(gh_state), _compute(gout)
    if mask is None:
        dh_new, carry = gh_state + gout, 0
    else:
        m = mask.astype(r.dtype, copy=False)
        dh_new, carry = m * (gh_state + gout), (1 - m) * gh_state
    dn = dh_new * (1 - z) * (1 - n * n)
    dz = dh_new * (h_prev - n) * z * (1 - z)
    dr = dn * ghn * r * (1 - r)
    dgx = xp.concatenate([dr, dz, dn], axis=1)
    dgh = xp.concatenate([dr, dz, dn * r], axis=1)
    return dgx, dgh, dh_new * z + carry


class GRUCell(Function):
    """(gx (N, 3H), gh (N, 3H), h_prev (N, H)[, mask (N, 1)]) -> (h, out)."""

    def forward(self, gx, gh, h_prev, mask=None):
        if gx.shape != gh.shape or gx.ndim != 2 or gx.shape[1] != 3 * h_prev.shape[1]:
            raise ValueError(f"gru_cell: expected gx and gh (N, 3H), h (N, H); got "
                             f"{tuple(gx.shape)}, {tuple(gh.shape)}, {tuple(h_prev.shape)}")
        self.dtype, self.mask = gx.dtype, mask
        h, out, saved = _gru_step(gx, gh, h_prev, mask)
        self.save(*saved)
        return h.astype(self.dtype, copy=False), out.astype(self.dtype, copy=False)

    def backward(self, gh_state, gout):
        dgx, dgh, dh_prev = _gru_step_backward(self.saved, self.mask, gh_state, gout)
        grads = tuple(a.astype(self.dtype, copy=False) for a in (dgx, dgh, dh_prev))
        return grads + ((None,) if self.mask is not None else ())


class Recurrence(Function):
    """One recurrent layer in one direction over a whole sequence, as one op.

    Inputs: gx (T, N, G*H) the input projections of all steps (one matmul, done before),
    h0 (N, H), w_hh (G*H, H), [b_hh (G*H,)], [c0 (N, H) for the LSTM]. Outputs: out (T, N, H)
    (zero at masked steps), h_T, [c_T] (the state after the last valid step; run ``reverse``,
    after step 0). ``masks``: None or T arrays (N, 1) of 1 (running) / 0 (past the end).

    Per step the forward runs one recurrent matmul and one cell step (one fused kernel on the
    GPU); the backward walks the steps in reverse with one cell-backward and one matmul per
    step, and computes the weight gradients of all steps at the end as one matmul over the
    stacked step gradients (T*N rows), with no autograd node per step.
    """

    def __init__(self, mode: str, reverse: bool = False, masks=None, has_bias: bool = True):
        if mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
            raise ValueError(f"recurrence: unknown mode {mode!r}")
        self.mode, self.reverse, self.masks, self.has_bias = mode, reverse, masks, has_bias

    def _order(self, steps: int):
        return range(steps - 1, -1, -1) if self.reverse else range(steps)

    def forward(self, gx, h0, w_hh, *rest):
        b_hh = rest[0] if self.has_bias else None
        c = rest[-1] if self.mode == "LSTM" else None
        xp = backend.xp_of(gx)
        steps, _, hidden = gx.shape[0], gx.shape[1], w_hh.shape[1]
        if h0.shape != (gx.shape[1], hidden) or w_hh.shape[0] != gx.shape[2]:
            raise ValueError(f"recurrence: gx {tuple(gx.shape)}, h0 {tuple(h0.shape)} and w_hh "
                             f"{tuple(w_hh.shape)} do not fit (T, N, G*H), (N, H), (G*H, H)")
        dtype = gx.dtype
        outs = xp.empty((steps,) + h0.shape, dtype)
        h_prevs = xp.empty((steps,) + h0.shape, dtype)  # for the weight gradient
        saved = [None] * steps
        per_step_bias = b_hh
        if b_hh is not None and self.mode != "GRU":
            # LSTM and RNN add b_hh straight to the pre-activations: once for all steps here
            # instead of once per step (the GRU's n gate multiplies its part by r: per step).
            gx = gx + b_hh.astype(dtype, copy=False)
            per_step_bias = None
        h = h0
        order = list(self._order(steps))
        for k, t in enumerate(order):
            mask = None if self.masks is None else self.masks[t]
            if k == 0:
                h_prevs[t] = h
            # GPU: the kernel writes the next state straight into its h_prevs slot.
            h_slot = h_prevs[order[k + 1]] if k + 1 < steps else None
            gh = (h @ w_hh.T).astype(dtype, copy=False)
            if per_step_bias is not None:
                gh += per_step_bias
            slot = outs[t]
            if self.mode == "LSTM":
                h, c, out, saved[t] = _lstm_step(gx[t], gh, c, h, mask, slot, h_slot)
                c = c.astype(dtype, copy=False)
            elif self.mode == "GRU":
                h, out, saved[t] = _gru_step(gx[t], gh, h, mask, slot, h_slot)
            else:
                pre = gx[t] + gh
                h_new = xp.tanh(pre) if self.mode == "RNN_TANH" else xp.maximum(pre, 0)
                saved[t] = h_new
                if mask is None:
                    h, out = h_new, h_new
                else:
                    m = mask.astype(dtype, copy=False)
                    h, out = m * h_new + (1 - m) * h, m * h_new
            h = h.astype(dtype, copy=False)
            if out is not slot:  # (the GPU kernels write into the slots themselves)
                outs[t] = out
            if h_slot is not None and h is not h_slot:
                h_slot[...] = h
        self.save(h_prevs, saved, w_hh)
        return (outs, h, c) if self.mode == "LSTM" else (outs, h)

    def backward(self, g_out, g_h, g_c=None):
        h_prevs, saved, w_hh = self.saved
        xp = backend.xp_of(g_out)
        dtype = g_out.dtype
        steps = g_out.shape[0]
        w = w_hh.astype(dtype, copy=False)
        d_gx = xp.empty((steps,) + (g_out.shape[1], w_hh.shape[0]), dtype)
        d_gh = xp.empty_like(d_gx) if self.mode == "GRU" else d_gx  # the same for LSTM, RNN
        dh, dc = g_h, g_c
        for t in reversed(list(self._order(steps))):
            mask = None if self.masks is None else self.masks[t]
            slot = d_gx[t]
            if self.mode == "LSTM":
                dg, dc, dh_carry = _lstm_step_backward(saved[t], mask, dh, dc, g_out[t], slot)
                if dg is not slot:
                    d_gx[t] = dg
                dh = (d_gx[t] @ w).astype(dtype, copy=False)
                if dh_carry is not None:
                    dh += dh_carry
                dc = dc.astype(dtype, copy=False)
            elif self.mode == "GRU":
                slot_h = d_gh[t]
                dgx, dgh, dh_direct = _gru_step_backward(saved[t], mask, dh, g_out[t], slot,
                                                         slot_h)
                if dgx is not slot:
                    d_gx[t] = dgx
                if dgh is not slot_h:
                    d_gh[t] = dgh
                dh = (d_gh[t] @ w).astype(dtype, copy=False) + dh_direct.astype(dtype, copy=False)
            else:
                h_new = saved[t]
                if mask is None:
                    dh_new, carry = dh + g_out[t], None
                else:
                    m = mask.astype(dtype, copy=False)
                    dh_new, carry = m * (dh + g_out[t]), (1 - m) * dh
                d_gx[t] = dh_new * (1 - h_new * h_new) if self.mode == "RNN_TANH" \
                    else dh_new * (h_new > 0)
                dh = (d_gx[t] @ w).astype(dtype, copy=False)
                if carry is not None:
                    dh += carry
        flat = d_gh.reshape(-1, d_gh.shape[2])                            # (T*N, G*H)
        d_w = (flat.T @ h_prevs.reshape(-1, h_prevs.shape[2])).astype(w_hh.dtype, copy=False)
        grads = [d_gx, dh.astype(dtype, copy=False), d_w]
        if self.has_bias:
            grads.append(flat.sum(axis=0).astype(w_hh.dtype, copy=False))
        if self.mode == "LSTM":
            grads.append(dc)
        return tuple(grads)


class SplitSteps(Function):
    """(T, ...) -> T arrays (...): a sequence into its steps, one node (its backward stacks)."""

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        return tuple(x[t] for t in range(x.shape[0]))

    def backward(self, *gys):
        xp = backend.xp_of(gys[0])
        return (xp.stack(gys, axis=0),)


class StackSteps(Function):
    """T arrays (...) -> (T, ...)."""

    def forward(self, *xs):
        return backend.xp_of(xs[0]).stack(xs, axis=0)

    def backward(self, gy):
        return tuple(gy[t] for t in range(gy.shape[0]))


def lstm_cell(gx, gh, c_prev, h_prev, mask=None):
    """One LSTM step from the input projection gx and the recurrent projection gh."""
    return LSTMCell().apply(gx, gh, c_prev, h_prev) if mask is None else \
        LSTMCell().apply(gx, gh, c_prev, h_prev, mask)


def gru_cell(gx, gh, h_prev, mask=None):
    return GRUCell().apply(gx, gh, h_prev) if mask is None else \
        GRUCell().apply(gx, gh, h_prev, mask)


def recurrence(mode: str, gx, h0, w_hh, b_hh=None, c0=None, reverse: bool = False,
               masks=None):
    """A whole recurrent layer direction (see Recurrence): (out, h_T) or, for "LSTM",
    (out, h_T, c_T)."""
    inputs = [gx, h0, w_hh] + ([b_hh] if b_hh is not None else []) + \
        ([c0] if mode == "LSTM" else [])
    return Recurrence(mode, reverse, masks, has_bias=b_hh is not None).apply(*inputs)


def split_steps(x):
    """A (T, ...) Variable as a tuple of T Variables (...)."""
    out = SplitSteps().apply(x)
    return out if isinstance(out, tuple) else (out,)


def stack_steps(xs):
    return StackSteps().apply(*xs)


def step_masks(lengths, steps: int, batch: int, xp, dtype):
    """(T, N, 1) masks from lengths (N,): 1 where t < lengths[n]. Refuses lengths that do not
    fit the padded batch, naming the argument and the shapes."""
    lengths = backend.to_numpy(lengths) if backend.is_gpu_array(lengths) else np.asarray(lengths)
    if lengths.ndim != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape ({batch},) (one length per sequence of the "
                         f"batch), got shape {lengths.shape}")
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.size and (lengths.max() > steps or lengths.min() < 1):
        bad = int(lengths.max()) if lengths.max() > steps else int(lengths.min())
        raise ValueError(f"lengths must lie in [1, {steps}] for a padded sequence of {steps} "
                         f"steps (input shape has T={steps}), got length {bad} in lengths of "
                         f"shape {lengths.shape}")
    masks = (np.arange(steps)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]
    return xp.asarray(masks)
