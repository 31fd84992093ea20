"""Helpers shared by ops: broadcasting gradients back, lifting Python scalars, shape checks."""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from ..autograd import Variable


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1)
    grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def lift(value, like):
    """Turn a Python/NumPy scalar into a 0-d array on ``like``'s device and dtype.

    Keeps ``x * 0.5`` in x's dtype (a float64 scalar must not promote float32 activations).
    """
    if isinstance(value, Variable):
        return value
    ref = like.data if isinstance(like, Variable) else like
    xp = backend.xp_of(ref)
    if isinstance(value, numbers.Number):
        return xp.asarray(value, dtype=ref.dtype)
    return xp.asarray(value)


_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def writable_out(dest, dtype):
    """``dest`` (a leaf's zeroed gradient buffer, from Function.grad_destination) if an op that
    computes in ``dtype`` can write its result there with ``out=``, else None (let it allocate).
    float32/float64 only: NumPy computes bfloat16 matmuls and sums in another dtype.
    An op that passes it as ``out=`` must return the array the call returns (that very
    ``dest``), per the contract in Function's docstring."""
    if dest is None or dtype not in _OUT_DTYPES or dest.dtype != dtype:
        return None
    return dest


def check_ndim(op: str, name: str, x, ndim: int, layout: str) -> None:
    """Raise a ValueError naming the op, the argument, the expected layout and the actual shape."""
    if x.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
