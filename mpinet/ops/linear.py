"""Fully connected layer math: y = x @ w.T + b (PyTorch's weight layout, (out, in))."""
from __future__ import annotations

from .. import backend
from ..autograd import Function
from ._util import writable_out


class Linear(Function):
    """x (..., in), w (out, in), optional b (out,) -> y (..., out)."""

    def forward(self, x, w, b=None):
        if w.ndim != 2:
            raise ValueError(f"linear: weight must be 2-D (out_features, in_features), "
                             f"got shape {tuple(w.shape)}")
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"linear: input's last dimension must equal in_features="
                             f"{w.shape[1]} (weight {tuple(w.shape)}), got input shape "
                             f"{tuple(x.shape)}")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"linear: bias must have shape ({w.shape[0]},) to match weight "
                             f"{tuple(w.shape)}, got {tuple(b.shape)}")
        self.save(x, w)
        self.has_bias = b is not None
        # astype: NumPy's bf16 matmul (ml_dtypes) returns float32; keep the compute dtype.
        y = (x @ w.T).astype(x.dtype, copy=False)
        if b is not None:
            y += b  # in place: y is a fresh array, saves a temporary of the output's size
        return y

    def backward(self, gy):
        x, w = self.saved
        out_features, in_features = w.shape
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            gx = (gy @ w).astype(x.dtype, copy=False)  # (..., out) @ (out, in) -> (..., in)
        # Fold leading axes into one batch axis: (M, out).T @ (M, in) -> (out, in).
        gy2 = gy.reshape(-1, out_features)
        xp = backend.xp_of(gy)
        if self.needs_input_grad[1]:
            # Straight into the weight's zeroed gradient buffer when the dtypes allow.
            out = writable_out(self.grad_destination(1), gy2.dtype) if x.dtype == gy2.dtype \
                else None
            gw = xp.matmul(gy2.T, x.reshape(-1, in_features), out=out).astype(w.dtype,
                                                                                copy=False)
        if self.has_bias and self.needs_input_grad[2]:
            gb = gy2.sum(axis=0, out=writable_out(self.grad_destination(2), gy2.dtype))
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def linear(x, w, b=None):
    """y = x @ w.T + b for x (N, in) or (..., in), w (out, in), b (out,) or None."""
    return Linear().apply(x, w) if b is None else Linear().apply(x, w, b)
