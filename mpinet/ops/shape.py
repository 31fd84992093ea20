"""Shape ops: reshape, flatten, transpose, indexing, concat."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Function, Variable


class Reshape(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {tuple(x.shape)} ({x.size} elements) "
                             f"into {self.shape}") from None

    def backward(self, gy):
        return (gy.reshape(self.in_shape),)


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = None if axes is None else tuple(axes)

    def forward(self, x):
        axes = self.axes or tuple(reversed(range(x.ndim)))
        self.inverse = tuple(int(i) for i in np.argsort(axes))
        return x.transpose(axes)

    def backward(self, gy):
        return (gy.transpose(self.inverse),)


class GetItem(Function):
    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.in_shape, self.in_dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        xp = backend.xp_of(gy)
        gx = xp.zeros(self.in_shape, self.in_dtype)
        # add.at accumulates repeated indices (fancy indexing may pick an element twice).
        xp.add.at(gx, self.index, gy)
        return (gx,)


class Concat(Function):
    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, *xs):
        xp = backend.xp_of(*xs)
        self.sizes = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        xp = backend.xp_of(gy)
        splits = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(xp.split(gy, splits, axis=self.axis))


def reshape(x, shape):
    return Reshape(shape).apply(x)


def flatten(x, start_dim: int = 1):
    """(N, d1, d2, ...) -> (N, d1*d2*...) for start_dim=1."""
    return reshape(x, tuple(x.shape[:start_dim]) + (-1,))


def transpose(x, axes=None):
    return Transpose(axes).apply(x)


def getitem(x, index):
    return GetItem(index).apply(x)


def concat(xs, axis: int = 1):
    if len(xs) == 0:
        raise ValueError("concat: got an empty list of inputs")
    return Concat(axis).apply(*xs)


def _install_variable_methods() -> None:
    """Attach indexing, reshape, transpose and .T to Variable (see arith._install_variable_methods:
    autograd never imports ops). Runs when this module is imported."""

    def variable_reshape(self, *shape_):
        """``v.reshape(2, 3)`` or ``v.reshape((2, 3))``."""
        single = len(shape_) == 1 and isinstance(shape_[0], (tuple, list))
        return reshape(self, shape_[0] if single else shape_)

    def variable_transpose(self, *axes):
        """``v.transpose()`` reverses the axes; ``v.transpose(1, 0)`` or ``((1, 0))`` permutes."""
        single = len(axes) == 1 and isinstance(axes[0], (tuple, list))
        return transpose(self, axes[0] if single else (axes or None))

    Variable.__getitem__ = lambda self, index: getitem(self, index)
    Variable.reshape = variable_reshape
    Variable.transpose = variable_transpose
    Variable.T = property(lambda self: transpose(self))


_install_variable_methods()
