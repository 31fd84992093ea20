"""Activations: relu, leaky_relu, prelu, sigmoid, tanh, gelu, softmax, log_softmax.

On CuPy arrays the backward passes of relu/sigmoid/tanh and both passes of gelu go through one
fused kernel each (mpinet.kernels.activation); the plain ``xp`` code below is the reference for them
and stays correct on NumPy and CuPy alike.

GELU is the exact form x * Phi(x) (PyTorch's default, approximate='none'). NumPy has no erf, so
Phi comes from a Chebyshev expansion of the scaled complementary error function that is fitted
at import time against Python's ``math.erfc`` (no tabulated constants, no scipy): relative
error below 1e-13 in float64 and below 1e-7 with the shorter float32 expansion, including the
far negative tail where 1 + erf(x) would cancel. ``gelu``'s backward is the exact derivative
Phi(x) + x * phi(x), so numerical gradients of the forward agree with it to ~1e-10.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, kernels
from ..autograd import Function
from ._util import lift


def _compute_dtype(x):
    """Half-precision inputs are computed in float32 (exp and polynomials overflow in fp16)."""
    return x.dtype if x.dtype.itemsize >= 4 else np.dtype(np.float32)


# ---- ReLU family ----------------------------------------------------------------------------
def relu_array(x):
    """max(x, 0) of a raw array (NaN stays NaN); shared by the ops that fuse a ReLU in."""
    if backend.is_gpu_array(x):
        return kernels.activation.relu(x)  # 16-byte vectors per thread where the layout allows
    return np.maximum(x, 0)


def relu_grad(y, gy):
    """The gradient before a ReLU from its output y: gy where y > 0, else 0 (y > 0 exactly where
    the input was, so the output is what backward keeps and the input may be freed)."""
    if backend.is_gpu_array(y):
        return kernels.activation.relu_backward(y, gy)
    return gy * (y > 0)


class ReLU(Function):
    def forward(self, x):
        y = relu_array(x)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return (relu_grad(y, gy),)


class AddReLU(Function):
    """relu(a + b) for a and b of one shape: a residual connection and the ReLU after it in one
    op (one kernel each way on the GPU instead of two, one autograd node instead of two)."""

    def forward(self, a, b):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"add_relu: operands must have one shape and dtype, got "
                             f"{tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}; use "
                             f"relu(a + b) to broadcast")
        if backend.is_gpu_array(a):
            y = kernels.elementwise.add(a, b, relu_after=True)
        else:
            y = np.maximum(a + b, 0)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        g = relu_grad(y, gy)
        return g, g  # the engine copies before accumulating, so one array may serve both


class LeakyReLU(Function):
    def __init__(self, negative_slope: float):
        self.slope = negative_slope

    def forward(self, x):
        xp = backend.xp_of(x)
        self.save(x)
        return xp.where(x > 0, x, x * lift(self.slope, x))

    def backward(self, gy):
        (x,) = self.saved
        xp = backend.xp_of(gy)
        return (xp.where(x > 0, gy, gy * lift(self.slope, gy)),)


class PReLU(Function):
    """y = x if x > 0 else w * x, with one slope per channel (axis 1) or one for all."""

    def forward(self, x, w):
        xp = backend.xp_of(x)
        self.save(x, w)
        return xp.where(x > 0, x, _channel_view(w, x) * x)

    def backward(self, gy):
        x, w = self.saved
        xp = backend.xp_of(gy)
        wb = _channel_view(w, x)
        gx = gw = None
        if self.needs_input_grad[0]:
            gx = xp.where(x > 0, gy, wb * gy)
        if self.needs_input_grad[1]:
            negative_part = xp.where(x > 0, 0, x * gy)
            if w.size == 1:
                gw = negative_part.sum().reshape(w.shape).astype(w.dtype)
            else:  # sum over every axis but the channel axis 1
                axes = (0,) + tuple(range(2, x.ndim))
                gw = negative_part.sum(axis=axes).reshape(w.shape).astype(w.dtype)
        return gx, gw


def _channel_view(w, x):
    """PReLU's weight shaped to broadcast over x: (C,) -> (1, C, 1, ...); a single slope as is."""
    if w.size == 1:
        return w.reshape(()).astype(x.dtype, copy=False)
    if x.ndim < 2 or x.shape[1] != w.size:
        raise ValueError(f"prelu: weight has {w.size} slopes (one per channel), so the input "
                         f"must be (N, {w.size}, ...); got shape {tuple(x.shape)}")
    return w.reshape((1, w.size) + (1,) * (x.ndim - 2)).astype(x.dtype, copy=False)


# ---- sigmoid, tanh --------------------------------------------------------------------------
class Sigmoid(Function):
    def forward(self, x):
        xp = backend.xp_of(x)
        # exp of -|x| only: never overflows, and each branch is the accurate form for its sign.
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        if backend.is_gpu_array(y):
            return (kernels.activation.sigmoid_backward(y, gy),)
        return (gy * y * (1 - y),)


class Tanh(Function):
    def forward(self, x):
        xp = backend.xp_of(x)
        y = xp.tanh(x)  # saturates to +-1, no overflow
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        if backend.is_gpu_array(y):
            return (kernels.activation.tanh_backward(y, gy),)
        return (gy * (1 - y * y),)


# ---- GELU (exact) ---------------------------------------------------------------------------
# erfc(z) = exp(-z^2) * g(t) / (1 + 2z) for z >= 0, with t = (z - K) / (z + K) in [-1, 1).
# g is smooth on [-1, 1] (it tends to a constant as z -> inf), so a short Chebyshev series in t
# represents it to full precision on all of z >= 0 (Weideman's mapping of the half line).
_K = 2.0


def _erfcx(z: float) -> float:
    """exp(z^2) * erfc(z) for z >= 0 in float64 (fitting only, scalar Python)."""
    if z < 25.0:
        return math.erfc(z) * math.exp(z * z)
    # Asymptotic series; at z >= 25 eleven terms are exact to double precision.
    total, term = 1.0, 1.0
    for n in range(1, 12):
        term *= -(2 * n - 1) / (2 * z * z)
        total += term
    return total / (z * math.sqrt(math.pi))


def _fit_erfc_series(n_terms: int) -> np.ndarray:
    """Chebyshev coefficients of g(t) = (1 + 2z) erfcx(z), interpolated at n Chebyshev nodes."""
    t = np.cos(np.pi * (np.arange(n_terms) + 0.5) / n_terms)
    z = _K * (1 + t) / (1 - t)
    g = np.array([(1 + 2 * zi) * _erfcx(zi) for zi in z])
    return np.polynomial.chebyshev.chebfit(t, g, n_terms - 1)


# 24 terms: < 1e-13 relative error (float64); 12 terms: < 2e-8 (float32 and below).
_ERFC_SERIES = {8: _fit_erfc_series(24), 4: _fit_erfc_series(12)}


def _erfc_nonneg(z, xp):
    """erfc(z) for z >= 0 (array), relative accuracy kept in the far tail."""
    coeffs = _ERFC_SERIES[8 if z.dtype.itemsize >= 8 else 4]
    t = (z - _K) / (z + _K)
    # Clenshaw recurrence for sum_k c_k T_k(t).
    b1 = xp.zeros_like(z)
    b2 = xp.zeros_like(z)
    two_t = 2 * t
    for c in coeffs[:0:-1]:
        b1, b2 = two_t * b1 - b2 + z.dtype.type(c), b1
    g = t * b1 - b2 + z.dtype.type(coeffs[0])
    return xp.exp(-z * z) * g / (1 + 2 * z)


def normal_cdf(x):
    """Phi(x), the standard normal CDF, elementwise on a NumPy/CuPy float array."""
    xp = backend.xp_of(x)
    tail = 0.5 * _erfc_nonneg(xp.abs(x) * x.dtype.type(1 / math.sqrt(2)), xp)  # Phi(-|x|)
    return xp.where(x >= 0, 1 - tail, tail)


class GELU(Function):
    def forward(self, x):
        self.save(x)
        if backend.is_gpu_array(x):
            return kernels.activation.gelu_forward(x)
        xc = x.astype(_compute_dtype(x), copy=False)
        return (xc * normal_cdf(xc)).astype(x.dtype, copy=False)

    def backward(self, gy):
        (x,) = self.saved
        if backend.is_gpu_array(x):
            return (kernels.activation.gelu_backward(x, gy),)
        xp = backend.xp_of(x)
        xc = x.astype(_compute_dtype(x), copy=False)
        pdf = xp.exp(-0.5 * xc * xc) * xc.dtype.type(1 / math.sqrt(2 * math.pi))
        return ((gy * (normal_cdf(xc) + xc * pdf)).astype(gy.dtype, copy=False),)


# ---- softmax, log_softmax -------------------------------------------------------------------
class Softmax(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        xp = backend.xp_of(x)
        xc = x.astype(_compute_dtype(x), copy=False)
        e = xp.exp(xc - xc.max(axis=self.axis, keepdims=True))  # largest term is exp(0) = 1
        y = (e / e.sum(axis=self.axis, keepdims=True)).astype(x.dtype, copy=False)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        # d softmax: y * (gy - <gy, y>) along the axis.
        return (y * (gy - (gy * y).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        y = log_softmax_array(x, self.axis)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        xp = backend.xp_of(y)
        return (gy - xp.exp(y) * gy.sum(axis=self.axis, keepdims=True),)


def log_softmax_array(x, axis: int):
    """Stable log-softmax of a raw array: (x - max) - log(sum(exp(x - max)))."""
    xp = backend.xp_of(x)
    xc = x.astype(_compute_dtype(x), copy=False)
    shifted = xc - xc.max(axis=axis, keepdims=True)
    return (shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))).astype(
        x.dtype, copy=False)


# ---- public functions -----------------------------------------------------------------------
def relu(x):
    return ReLU().apply(x)


def add_relu(a, b):
    """relu(a + b) for two Variables of one shape and dtype (see AddReLU)."""
    return AddReLU().apply(a, b)


def leaky_relu(x, negative_slope: float = 0.01):
    return LeakyReLU(negative_slope).apply(x)


def prelu(x, w):
    """PReLU with w of shape (C,) for x (N, C, ...), or w of shape (1,) shared by all."""
    return PReLU().apply(x, w)


def sigmoid(x):
    return Sigmoid().apply(x)


def tanh(x):
    return Tanh().apply(x)


def gelu(x):
    """Exact GELU x * Phi(x) (PyTorch's GELU(approximate='none'))."""
    return GELU().apply(x)


def softmax(x, axis: int = -1):
    return Softmax(axis).apply(x)


def log_softmax(x, axis: int = -1):
    return LogSoftmax(axis).apply(x)


# ---- ELU, SiLU, Softplus, Hardswish, ReLU6, Mish, tanh-GELU ------------------------------------
class _Pointwise(Function):
    """y = f(x) elementwise, with f'(x) computed alongside in the forward pass (>= float32).

    Subclasses define ``value_and_slope(x) -> (f(x), f'(x))``; backward is gy * f'(x).
    """

    def forward(self, x):
        xc = x.astype(_compute_dtype(x), copy=False)
        y, slope = self.value_and_slope(xc)
        self.save(slope)
        return y.astype(x.dtype, copy=False)

    def backward(self, gy):
        (slope,) = self.saved
        return ((gy * slope).astype(gy.dtype, copy=False),)

    def value_and_slope(self, x):
        raise NotImplementedError


def _sigmoid_array(x):
    xp = backend.xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus_array(x):
    """log(1 + e^x) without overflow."""
    xp = backend.xp_of(x)
    return xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(x, 0)


class ELU(_Pointwise):
    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def value_and_slope(self, x):
        xp = backend.xp_of(x)
        a = x.dtype.type(self.alpha)
        em1 = xp.expm1(xp.minimum(x, 0))
        return xp.where(x > 0, x, a * em1), xp.where(x > 0, x.dtype.type(1), a * (em1 + 1))


class SiLU(_Pointwise):
    """x * sigmoid(x) (swish)."""

    def value_and_slope(self, x):
        s = _sigmoid_array(x)
        return x * s, s * (1 + x * (1 - s))


class Softplus(_Pointwise):
    """log(1 + exp(beta x)) / beta, linear where beta x > threshold (torch's Softplus)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        if beta <= 0:
            raise ValueError(f"softplus: beta must be > 0, got {beta}")
        self.beta, self.threshold = beta, threshold

    def value_and_slope(self, x):
        xp = backend.xp_of(x)
        bx = x * x.dtype.type(self.beta)
        linear = bx > self.threshold
        y = xp.where(linear, x, _softplus_array(bx) / x.dtype.type(self.beta))
        return y, xp.where(linear, x.dtype.type(1), _sigmoid_array(bx))


class Hardswish(_Pointwise):
    """x * relu6(x + 3) / 6."""

    def value_and_slope(self, x):
        xp = backend.xp_of(x)
        y = x * xp.clip(x + 3, 0, 6) / 6
        slope = xp.where(x < -3, 0, xp.where(x > 3, 1, (2 * x + 3) / 6)).astype(x.dtype)
        return y, slope


class ReLU6(_Pointwise):
    """min(max(x, 0), 6)."""

    def value_and_slope(self, x):
        xp = backend.xp_of(x)
        return xp.clip(x, 0, 6), ((x > 0) & (x < 6)).astype(x.dtype)


class Mish(_Pointwise):
    """x * tanh(softplus(x))."""

    def value_and_slope(self, x):
        xp = backend.xp_of(x)
        t = xp.tanh(_softplus_array(x))
        return x * t, t + x * (1 - t * t) * _sigmoid_array(x)


class GELUTanh(_Pointwise):
    """GELU's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (torch's GELU(approximate='tanh'))."""

    def value_and_slope(self, x):
        xp = backend.xp_of(x)
        k = x.dtype.type(math.sqrt(2 / math.pi))
        c = x.dtype.type(0.044715)
        t = xp.tanh(k * (x + c * x * x * x))
        slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x)
        return 0.5 * x * (1 + t), slope


def elu(x, alpha: float = 1.0):
    return ELU(alpha).apply(x)


def silu(x):
    return SiLU().apply(x)


def softplus(x, beta: float = 1.0, threshold: float = 20.0):
    return Softplus(beta, threshold).apply(x)


def hardswish(x):
    return Hardswish().apply(x)


def relu6(x):
    return ReLU6().apply(x)


def mish(x):
    return Mish().apply(x)


def gelu_tanh(x):
    """GELU with the tanh approximation (torch's gelu(x, approximate='tanh'))."""
    return GELUTanh().apply(x)
