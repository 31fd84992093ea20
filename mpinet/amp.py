"""Mixed precision: compute in bf16/fp16 while parameters (the master weights) stay fp32.

Inside ``autocast("bf16")`` the compute-heavy layers (Linear, Conv2d, ConvTranspose2d) cast their
float inputs and weights to the compute dtype through ``autocast_inputs``; the cast's backward
casts the gradient back, so every parameter's ``.grad`` is fp32 like the parameter. Losses,
softmax and normalisation statistics stay in fp32. fp16 additionally needs dynamic loss scaling
(``mpinet.optim.LossScaler``) because its range underflows small gradients.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np

from .autograd import Function, Variable
from .kernels.elementwise import cast_into

_state = threading.local()

_NAMES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": None, "float32": None, "none": None, None: None}


def resolve_dtype(name):
    """'bf16' | 'fp16' | 'fp32'/None -> a NumPy dtype (or None for full precision)."""
    if name not in _NAMES:
        raise ValueError(f"precision must be one of 'fp32', 'bf16', 'fp16', got {name!r}")
    kind = _NAMES[name]
    if kind == "bfloat16":
        from .backend import bfloat16

        return bfloat16()
    return None if kind is None else np.dtype(kind)


@dataclass(frozen=True)
class Precision:
    """A training precision, turned into dtypes once (at compile), not re-parsed every step.

    ``compute_dtype``: what matmul/conv run in under autocast (None: full fp32);
    ``param_dtype``: the master weights' and gradients' dtype (always fp32 here);
    ``loss_scaling``: fp16's dynamic loss scaling (its range underflows small gradients).
    """

    name: str  # 'fp32', 'bf16' or 'fp16'
    compute_dtype: object = None
    param_dtype: np.dtype = np.dtype(np.float32)
    loss_scaling: bool = False

    @classmethod
    def parse(cls, precision) -> "Precision":
        """'fp32'/'bf16'/'fp16' (or their long names, or None) -> Precision; a Precision as is."""
        if isinstance(precision, Precision):
            return precision
        dtype = resolve_dtype(precision)  # validates the name
        if dtype is None:
            return cls("fp32")
        half = dtype == np.dtype(np.float16)
        return cls("fp16" if half else "bf16", dtype, loss_scaling=half)


def compute_dtype():
    """The active autocast dtype, or None outside autocast."""
    return getattr(_state, "dtype", None)


@contextlib.contextmanager
def autocast(precision="bf16", params=None):
    """Run the enclosed forward pass with matmul/conv in ``precision`` ('bf16', 'fp16', 'fp32'
    or a ``Precision``).

    ``params``: the model's ``FlatParameters``. Its weights are then cast once, in one pass, on
    entry, and each layer takes its cast copy from there instead of casting its own weight (one
    launch instead of one per weight). Only for a forward pass in which no parameter changes
    (not the data-parallel "forward" mode, which updates layers as it goes).
    """
    previous = compute_dtype(), getattr(_state, "copies", None)
    _state.dtype = (precision.compute_dtype if isinstance(precision, Precision)
                    else resolve_dtype(precision))
    _state.copies = (params.cast_copies(_state.dtype)
                     if params is not None and _state.dtype is not None else None)
    try:
        yield
    finally:
        _state.dtype, _state.copies = previous


class Cast(Function):
    """x in ``dtype``; ``copy``: x's value in ``dtype`` already computed (a weight's copy from
    ``FlatParameters.cast_copies``), returned as is."""

    def __init__(self, dtype, copy=None):
        self.dtype = dtype
        self.copy = copy

    def forward(self, x):
        self.in_dtype = x.dtype
        if self.copy is not None:
            return self.copy
        return x.astype(self.dtype)

    def backward(self, gy):
        dest = self.grad_destination(0)  # a master weight's zeroed gradient buffer, if any
        if dest is not None and dest.dtype == self.in_dtype and dest.shape == gy.shape:
            cast_into(dest, gy)  # straight into it: one kernel instead of a cast and an add
            return (dest,)
        return (gy.astype(self.in_dtype),)


def cast(x: Variable, dtype) -> Variable:
    """Differentiable dtype conversion (the gradient comes back in the input's dtype)."""
    if x.dtype == dtype:
        return x
    copies = getattr(_state, "copies", None)
    copy = copies.get(id(x)) if copies else None
    if copy is not None and copy.dtype == dtype:
        return Cast(dtype, copy).apply(x)
    return Cast(dtype).apply(x)


def autocast_inputs(*xs):
    """Cast float Variables to the autocast dtype when one is active; else return them as-is."""
    dtype = compute_dtype()
    if dtype is None:
        return xs
    return tuple(cast(x, dtype) if x is not None and x.dtype.kind == "f" else x for x in xs)
