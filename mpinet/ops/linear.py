"""Fully connected layer math: y = x @ w.T + b (PyTorch's weight layout, (out, in)).

The matrix products go through ``xp.matmul`` (BLAS on CPU, cuBLAS on GPU), except while a CUDA
graph is being captured: CuPy refuses every cuBLAS call during capture, so there the three
products run as cuDNN 1x1 convolutions of (M, in, 1, 1) images (fprop, dgrad and wgrad are
exactly x @ w.T, gy @ w and gy.T @ x), which capture like any cuDNN call.
"""
from __future__ import annotations

from .. import backend, kernels
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
        self.via_cudnn = _capturing_on_gpu(x, w)
        if self.via_cudnn:
            x2 = x.reshape(-1, w.shape[1], 1, 1)                          # (M, in, 1, 1)
            y = kernels.cudnn.conv_fprop(x2, w.reshape(*w.shape, 1, 1))   # (M, out, 1, 1)
            y = y.reshape(*x.shape[:-1], w.shape[0])
        else:
            # astype: NumPy's bf16 matmul (ml_dtypes) returns float32; keep the compute dtype.
            y = (x @ w.T).astype(x.dtype, copy=False)
        if b is not None:
            y += b  # in place: y is a fresh array, saves a temporary of the output's size
        return y

    def backward(self, gy):
        x, w = self.saved
        out_features, in_features = w.shape
        gx = gw = gb = None
        # Fold leading axes into one batch axis: (M, out).T @ (M, in) -> (out, in).
        gy2 = gy.reshape(-1, out_features)
        xp = backend.xp_of(gy)
        # Straight into the weight's zeroed gradient buffer when the dtypes allow.
        gw_out = writable_out(self.grad_destination(1), gy2.dtype) if x.dtype == gy2.dtype \
            else None
        if self.via_cudnn and gy.dtype == w.dtype:
            w4, gy4 = w.reshape(*w.shape, 1, 1), gy2.reshape(*gy2.shape, 1, 1)
            x4 = x.reshape(-1, in_features, 1, 1)
            if self.needs_input_grad[0]:
                gx = kernels.cudnn.conv_dgrad(gy4, w4, x4.shape).reshape(x.shape)
            if self.needs_input_grad[1]:
                out4 = None if gw_out is None else gw_out.reshape(w4.shape)
                gw = kernels.cudnn.conv_wgrad(x4, gy4, w4.shape, out=out4)
                # Written into the destination: hand back that very array, so autograd knows
                # (an equal view would be added into it again, doubling the gradient).
                gw = gw_out if gw is out4 else gw.reshape(w.shape).astype(w.dtype, copy=False)
        else:
            if self.needs_input_grad[0]:
                gx = (gy @ w).astype(x.dtype, copy=False)  # (..., out) @ (out, in) -> (..., in)
            if self.needs_input_grad[1]:
                gw = xp.matmul(gy2.T, x.reshape(-1, in_features), out=gw_out).astype(
                    w.dtype, copy=False)
        if self.has_bias and self.needs_input_grad[2]:
            gb = gy2.sum(axis=0, out=writable_out(self.grad_destination(2), gy2.dtype))
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def _capturing_on_gpu(x, w) -> bool:
    """True when the products must avoid cuBLAS: a CUDA graph is being captured (see above)."""
    if not backend.is_gpu_array(x) or not backend.is_capturing():
        return False
    if x.dtype != w.dtype or not kernels.cudnn.supports(x.dtype):
        raise TypeError(f"linear inside a CUDA-graph capture: input {x.dtype} and weight "
                        f"{w.dtype} must share one of {sorted(kernels.cudnn.SUPPORTED_DTYPES)} "
                        f"(the capture runs the products through cuDNN)")
    return True


def linear(x, w, b=None):
    """y = x @ w.T + b for x (N, in) or (..., in), w (out, in), b (out,) or None."""
    return Linear().apply(x, w) if b is None else Linear().apply(x, w, b)
