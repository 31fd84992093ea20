"""Broadcasting arithmetic, reductions, matmul and elementwise math."""
from __future__ import annotations

from .. import backend, kernels
from ..autograd import Function, Variable
from ._util import lift, unbroadcast


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        if backend.is_gpu_array(a) and backend.is_gpu_array(b) and a.shape == b.shape:
            # 16-byte vectors per thread (residual connections)
            return kernels.elementwise.add(a, b)
        return a + b

    def backward(self, gy):
        sa, sb = self.shapes
        return unbroadcast(gy, sa), unbroadcast(gy, sb)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, gy):
        sa, sb = self.shapes
        return unbroadcast(gy, sa), unbroadcast(-gy, sb)


class Mul(Function):
    def forward(self, a, b):
        self.save(a, b)
        return a * b

    def backward(self, gy):
        a, b = self.saved
        ga = unbroadcast(gy * b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(gy * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save(a, b)
        return a / b

    def backward(self, gy):
        a, b = self.saved
        ga = unbroadcast(gy / b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return (-gy,)


class Pow(Function):
    """x ** p for a constant scalar exponent p."""

    def __init__(self, exponent: float):
        self.exponent = exponent

    def forward(self, x):
        self.save(x)
        return x ** self.exponent

    def backward(self, gy):
        (x,) = self.saved
        p = self.exponent
        return (gy * p * x ** (p - 1),)


class Exp(Function):
    def forward(self, x):
        xp = backend.xp_of(x)
        y = xp.exp(x)
        self.save(y)
        return y

    def backward(self, gy):
        (y,) = self.saved
        return (gy * y,)


class Log(Function):
    def forward(self, x):
        xp = backend.xp_of(x)
        self.save(x)
        return xp.log(x)

    def backward(self, gy):
        (x,) = self.saved
        return (gy / x,)


class Sum(Function):
    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        xp = backend.xp_of(gy)
        return (xp.broadcast_to(_restore_reduced_axes(gy, self.in_shape, self.axis, self.keepdims),
                                self.in_shape).copy(),)


class Mean(Function):
    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        y = x.mean(axis=self.axis, keepdims=self.keepdims)
        self.count = x.size // max(y.size, 1) if x.size else 1
        return y

    def backward(self, gy):
        xp = backend.xp_of(gy)
        g = _restore_reduced_axes(gy, self.in_shape, self.axis, self.keepdims) / self.count
        return (xp.broadcast_to(g, self.in_shape).astype(gy.dtype, copy=True),)


def _restore_reduced_axes(gy, in_shape, axis, keepdims):
    """Reshape a reduction's gradient so it broadcasts back over the reduced axes."""
    if keepdims or axis is None:
        return gy.reshape((1,) * len(in_shape)) if axis is None else gy
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = sorted(a % len(in_shape) for a in axes)
    shape = list(gy.shape)
    for a in axes:
        shape.insert(a, 1)
    return gy.reshape(shape)


class MatMul(Function):
    """a @ b for 2-D a (M, K) and b (K, N), or batched (..., M, K) @ (..., K, N)."""

    def forward(self, a, b):
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: inner dimensions differ: {tuple(a.shape)} @ "
                             f"{tuple(b.shape)}")
        self.save(a, b)
        return a @ b

    def backward(self, gy):
        a, b = self.saved
        xp = backend.xp_of(gy)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(gy @ xp.swapaxes(b, -1, -2), a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(xp.swapaxes(a, -1, -2) @ gy, b.shape)
        return ga, gb


def add(a, b):
    return Add().apply(lift(a, b), lift(b, a))


def sub(a, b):
    return Sub().apply(lift(a, b), lift(b, a))


def mul(a, b):
    return Mul().apply(lift(a, b), lift(b, a))


def div(a, b):
    return Div().apply(lift(a, b), lift(b, a))


def neg(x):
    return Neg().apply(x)


def pow(x, exponent: float):
    return Pow(exponent).apply(x)


def exp(x):
    return Exp().apply(x)


def log(x):
    return Log().apply(x)


def sum(x, axis=None, keepdims: bool = False):
    return Sum(axis, keepdims).apply(x)


def mean(x, axis=None, keepdims: bool = False):
    return Mean(axis, keepdims).apply(x)


def matmul(a, b):
    return MatMul().apply(a, b)


def _install_variable_methods() -> None:
    """Attach the arithmetic operators and reductions to Variable (Chainer's arrangement:
    autograd defines the node, the ops give it operators, so autograd never imports ops).
    Runs when this module is imported; ``import mpinet`` imports it (mpinet.ops)."""
    Variable.__add__ = lambda self, other: add(self, other)
    Variable.__radd__ = lambda self, other: add(other, self)
    Variable.__sub__ = lambda self, other: sub(self, other)
    Variable.__rsub__ = lambda self, other: sub(other, self)
    Variable.__mul__ = lambda self, other: mul(self, other)
    Variable.__rmul__ = lambda self, other: mul(other, self)
    Variable.__truediv__ = lambda self, other: div(self, other)
    Variable.__rtruediv__ = lambda self, other: div(other, self)
    Variable.__neg__ = lambda self: neg(self)
    Variable.__pow__ = lambda self, exponent: pow(self, exponent)
    Variable.__matmul__ = lambda self, other: matmul(self, other)
    Variable.__rmatmul__ = lambda self, other: matmul(other, self)

    def variable_sum(self, axis=None, keepdims: bool = False):
        return sum(self, axis=axis, keepdims=keepdims)

    def variable_mean(self, axis=None, keepdims: bool = False):
        return mean(self, axis=axis, keepdims=keepdims)

    Variable.sum, Variable.mean = variable_sum, variable_mean


_install_variable_methods()
