"""Elementwise maximum of two arrays (Caffe's Eltwise MAX, ONNX's Max), with broadcasting.

The gradient goes to the larger operand; on ties to the first one (as Caffe's Eltwise MAX, whose
forward keeps the earlier bottom unless a later one is strictly larger).
"""
from __future__ import annotations

from .. import backend
from ..autograd import Function
from ._util import unbroadcast


class Maximum(Function):
    def forward(self, a, b):
        xp = backend.xp_of(a, b)
        self.first = a >= b                    # where a wins (ties included)
        self.shapes = (a.shape, b.shape)
        return xp.maximum(a, b)

    def backward(self, gy):
        sa, sb = self.shapes
        ga = unbroadcast(gy * self.first, sa) if self.needs_input_grad[0] else None
        gb = unbroadcast(gy * ~self.first, sb) if self.needs_input_grad[1] else None
        return ga, gb


def maximum(a, b):
    """max(a, b) elementwise; a and b broadcast against each other."""
    return Maximum().apply(a, b)
