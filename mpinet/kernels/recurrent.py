"""Recurrent cells: one elementwise kernel per cell step, each way (LSTM, GRU).

The CPU reference (and the specification) is mpinet.ops.recurrent: lstm_cell_reference /
lstm_cell_backward_reference and the GRU pair; mpinet.ops.recurrent calls these functions
instead when its arrays are CuPy arrays. What the fusion buys: the LSTM step's gate math is
~20 elementwise NumPy-style operations (each a kernel launch and a trip through memory) in one
launch; the input projection of all steps is one matmul before the loop (mpinet.nn.recurrent).

Layouts (PyTorch's gate order): LSTM pre-activations gx + gh (N, 4H) as [i | f | g | o] (the
input and recurrent projections, summed in the kernel), GRU (N, 3H) as [r | z | n]. One thread
per (n, j) element of the (N, H) state; it reads its 4 (3) gate values at n * G*H + k*H + j.
Dtypes, loads and stores as every kernel family (``_compile``: float32 math for float32, float16
and bfloat16 arrays, float64 for float64; bfloat16 travels as its uint16 bit pattern).

Saved for backward (the ``saved`` tuples are opaque to the caller):
  LSTM: acts (N, 4H) activated gates [sigmoid i | sigmoid f | tanh g | sigmoid o] and
        tanh(c') (N, H) in the compute type, and c_prev as given;
  GRU:  acts (N, 4H) [r | z | n | h W_hn^T + b_hn] in the compute type, and h_prev as given.
"""
from __future__ import annotations

import numpy as np

from . import _compile

# The cells' own helper on top of the shared dtype header.
PREAMBLE = _compile.ELEMENTWISE_PREAMBLE + r"""
template <typename A> __device__ __forceinline__ A rec_sigmoid(A x) {
    return A(1) / (A(1) + exp(-x)); }  // exp(-x) = inf gives 0: no NaN for large |x|
"""

_LSTM_FWD = r"""
typedef mpn_acc<C>::type A;
const ptrdiff_t n = i / H, j = i % H, row = n * 4 * H;
const A ig = rec_sigmoid<A>(mpn_ld<A>(gx[row + j]) + mpn_ld<A>(gh[row + j]));
const A fg = rec_sigmoid<A>(mpn_ld<A>(gx[row + H + j]) + mpn_ld<A>(gh[row + H + j]));
const A gt = tanh(mpn_ld<A>(gx[row + 2 * H + j]) + mpn_ld<A>(gh[row + 2 * H + j]));
const A og = rec_sigmoid<A>(mpn_ld<A>(gx[row + 3 * H + j]) + mpn_ld<A>(gh[row + 3 * H + j]));
const A cp = mpn_ld<A>(c_prev);
const A cn = fg * cp + ig * gt;
const A t = tanh(cn);
const A hn = og * t;
const A m = has_mask ? mpn_ld<A>(mask[n]) : A(1);
mpn_put(h, m * hn + (A(1) - m) * mpn_ld<A>(h_prev));
mpn_put(c, m * cn + (A(1) - m) * cp);
mpn_put(out, m * hn);
acts[row + j] = ig; acts[row + H + j] = fg; acts[row + 2 * H + j] = gt;
acts[row + 3 * H + j] = og;
tc = t;
"""

_LSTM_BWD = r"""
typedef mpn_acc<C>::type A;
const ptrdiff_t n = i / H, j = i % H, row = n * 4 * H;
const A ig = acts[row + j], fg = acts[row + H + j], gt = acts[row + 2 * H + j];
const A og = acts[row + 3 * H + j];
const A t = tc;
const A m = has_mask ? mpn_ld<A>(mask[n]) : A(1);
const A ghv = mpn_ld<A>(gh), gcv = mpn_ld<A>(gc), gov = mpn_ld<A>(gout);
const A dhn = m * (ghv + gov);
const A dc = m * gcv + dhn * og * (A(1) - t * t);
mpn_put(dg[row + j], dc * gt * ig * (A(1) - ig));
mpn_put(dg[row + H + j], dc * mpn_ld<A>(c_prev) * fg * (A(1) - fg));
mpn_put(dg[row + 2 * H + j], dc * ig * (A(1) - gt * gt));
mpn_put(dg[row + 3 * H + j], dhn * t * og * (A(1) - og));
mpn_put(dc_prev, dc * fg + (A(1) - m) * gcv);
mpn_put(dh_carry, (A(1) - m) * ghv);
"""

_GRU_FWD = r"""
typedef mpn_acc<C>::type A;
const ptrdiff_t n = i / H, j = i % H, row = n * 3 * H, srow = n * 4 * H;
const A r = rec_sigmoid<A>(mpn_ld<A>(gx[row + j]) + mpn_ld<A>(gh[row + j]));
const A z = rec_sigmoid<A>(mpn_ld<A>(gx[row + H + j]) + mpn_ld<A>(gh[row + H + j]));
const A ghn = mpn_ld<A>(gh[row + 2 * H + j]);
const A nn = tanh(mpn_ld<A>(gx[row + 2 * H + j]) + r * ghn);
const A hp = mpn_ld<A>(h_prev);
const A hn = (A(1) - z) * nn + z * hp;
const A m = has_mask ? mpn_ld<A>(mask[n]) : A(1);
mpn_put(h, m * hn + (A(1) - m) * hp);
mpn_put(out, m * hn);
acts[srow + j] = r; acts[srow + H + j] = z; acts[srow + 2 * H + j] = nn;
acts[srow + 3 * H + j] = ghn;
"""

_GRU_BWD = r"""
typedef mpn_acc<C>::type A;
const ptrdiff_t n = i / H, j = i % H, row = n * 3 * H, srow = n * 4 * H;
const A r = acts[srow + j], z = acts[srow + H + j], nn = acts[srow + 2 * H + j];
const A ghn = acts[srow + 3 * H + j];
const A m = has_mask ? mpn_ld<A>(mask[n]) : A(1);
const A gs = mpn_ld<A>(gh_state), go = mpn_ld<A>(gout);
const A dhn = m * (gs + go);
const A dn = dhn * (A(1) - z) * (A(1) - nn * nn);
const A dz = dhn * (mpn_ld<A>(h_prev) - nn) * z * (A(1) - z);
const A dr = dn * ghn * r * (A(1) - r);
mpn_put(dgx[row + j], dr); mpn_put(dgx[row + H + j], dz); mpn_put(dgx[row + 2 * H + j], dn);
mpn_put(dgh[row + j], dr); mpn_put(dgh[row + H + j], dz); mpn_put(dgh[row + 2 * H + j], dn * r);
mpn_put(dh_prev, dhn * z + (A(1) - m) * gs);
"""


# name -> (input parameters, output parameters, body): CuPy ElementwiseKernel declarations. One
# thread per element of the non-raw (N, H) arrays; raw arrays are indexed by the body.
KERNELS = {
    "lstm_cell_fwd": ("raw G gx, raw G gh, C c_prev, C h_prev, raw M mask, int32 H, "
                      "int32 has_mask", "C h, C c, C out, raw S acts, S tc", _LSTM_FWD),
    "lstm_cell_bwd": ("raw S acts, S tc, C c_prev, raw M mask, C gh, C gc, C gout, int32 H, "
                      "int32 has_mask", "raw G dg, C dc_prev, C dh_carry", _LSTM_BWD),
    "gru_cell_fwd": ("raw G gx, raw G gh, C h_prev, raw M mask, int32 H, int32 has_mask",
                     "C h, C out, raw S acts", _GRU_FWD),
    "gru_cell_bwd": ("raw S acts, C h_prev, raw M mask, C gh_state, C gout, int32 H, "
                     "int32 has_mask", "raw G dgx, raw G dgh, C dh_prev", _GRU_BWD),
}


def _kernel(name: str):
    in_params, out_params, body = KERNELS[name]
    return _compile.elementwise_kernel(name, in_params, out_params, body, preamble=PREAMBLE)


_io = _compile.io_view


def _compute_dtype(a):
    return np.dtype(np.float64) if a.dtype == np.float64 else np.dtype(np.float32)


def _mask_arg(mask, like):
    """The (N,) mask as the kernel reads it, and the has_mask flag."""
    cp = _compile.cp()
    if mask is None:
        return cp.zeros(1, dtype=_compute_dtype(like)), np.int32(0)
    return _io(cp.ascontiguousarray(mask.reshape(-1))), np.int32(1)


def _empty(shape, like):
    return _compile.cp().empty(shape, dtype=like.dtype)


def _destination(out, shape, like):
    """``out`` if the kernel can write there (the caller's slot, e.g. one step of the layer's
    output), else a new array: it must have the shape and the dtype of ``like`` and be
    C-contiguous."""
    if out is not None and out.shape == shape and out.dtype == like.dtype \
            and out.flags.c_contiguous:
        return out
    return _empty(shape, like)


def _contiguous(*arrays):
    cp = _compile.cp()
    return tuple(_compile.contiguous(cp, a) for a in arrays)


def lstm_cell_forward(gx, gh, c_prev, h_prev, mask, out=None, h_out=None):
    """As mpinet.ops.recurrent.lstm_cell_reference: (h, c, out, saved); the step's output and
    next state are written into ``out`` and ``h_out`` where they fit (see _destination)."""
    cp = _compile.cp()
    gx, gh, c_prev, h_prev = _contiguous(gx, gh, c_prev, h_prev)
    n, hidden = c_prev.shape
    h, c = _destination(h_out, (n, hidden), c_prev), _empty((n, hidden), c_prev)
    out = _destination(out, (n, hidden), c_prev)
    acts = cp.empty((n, 4 * hidden), dtype=_compute_dtype(c_prev))
    tc = cp.empty((n, hidden), dtype=acts.dtype)
    m, has_mask = _mask_arg(mask, c_prev)
    _kernel("lstm_cell_fwd")(_io(gx), _io(gh), _io(c_prev), _io(h_prev), m, np.int32(hidden),
                             has_mask, _io(h), _io(c), _io(out), acts, tc)
    return h, c, out, (acts, tc, c_prev)


def lstm_cell_backward(saved, mask, gh, gc, gout, dg=None):
    """As lstm_cell_backward_reference: (dg (N, 4H), dc_prev, dh_carry or None); dg is
    written into ``dg`` where it fits."""
    acts, tc, c_prev = saved
    gh, gc, gout = _contiguous(gh, gc, gout)
    n, hidden = c_prev.shape
    dg = _destination(dg, (n, 4 * hidden), gh)
    dc_prev, dh_carry = _empty((n, hidden), gh), _empty((n, hidden), gh)
    m, has_mask = _mask_arg(mask, c_prev)
    _kernel("lstm_cell_bwd")(acts, tc, _io(c_prev), m, _io(gh), _io(gc), _io(gout),
                             np.int32(hidden), has_mask, _io(dg), _io(dc_prev), _io(dh_carry))
    return dg, dc_prev, dh_carry if mask is not None else None


def gru_cell_forward(gx, gh, h_prev, mask, out=None, h_out=None):
    """As gru_cell_reference: (h, out, saved); the output and the next state written into
    ``out`` and ``h_out`` where they fit."""
    cp = _compile.cp()
    gx, gh, h_prev = _contiguous(gx, gh, h_prev)
    n, hidden = h_prev.shape
    h = _destination(h_out, (n, hidden), h_prev)
    out = _destination(out, (n, hidden), h_prev)
    acts = cp.empty((n, 4 * hidden), dtype=_compute_dtype(h_prev))
    m, has_mask = _mask_arg(mask, h_prev)
    _kernel("gru_cell_fwd")(_io(gx), _io(gh), _io(h_prev), m, np.int32(hidden), has_mask,
                            _io(h), _io(out), acts)
    return h, out, (acts, h_prev)


def gru_cell_backward(saved, mask, gh_state, gout, dgx=None, dgh=None):
    """As gru_cell_backward_reference: (dgx (N, 3H), dgh (N, 3H), dh_prev); dgx and dgh are
    written into the given arrays where they fit."""
    acts, h_prev = saved
    gh_state, gout = _contiguous(gh_state, gout)
    n, hidden = h_prev.shape
    dgx = _destination(dgx, (n, 3 * hidden), gh_state)
    dgh = _destination(dgh, (n, 3 * hidden), gh_state)
    dh_prev = _empty((n, hidden), gh_state)
    m, has_mask = _mask_arg(mask, h_prev)
    _kernel("gru_cell_bwd")(acts, _io(h_prev), m, _io(gh_state), _io(gout), np.int32(hidden),
                            has_mask, _io(dgx), _io(dgh), _io(dh_prev))
    return dgx, dgh, dh_prev
