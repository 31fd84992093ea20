"""Ops that exist only to be seen by the ONNX exporter's trace.

An eval-mode forward pass leaves no trace of a Dropout layer (it is the identity there), yet an
imported model must drop out again when trained. ``DropoutMark`` is that identity recorded as
an op carrying the ratio; the exporter writes it as an ONNX Dropout node (the identity in
inference), and the importer puts it back in eval mode, so a round trip keeps the node.
"""
from __future__ import annotations

from ..autograd import Function


class DropoutMark(Function):
    def __init__(self, p: float):
        self.p = float(p)

    def forward(self, x):
        return x

    def backward(self, gy):
        return (gy,)


def dropout_mark(x, p: float):
    return DropoutMark(p).apply(x)
