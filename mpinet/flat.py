"""One flat buffer for all parameters and one for all gradients (llm.c style).

After ``FlatParameters(params)``, every ``p.data`` is a view into ``flat.data`` and every
``p.grad`` a view into ``flat.grad``. Then:
  * an optimizer updates all parameters with one fused kernel over ``flat.data``;
  * a gradient bucket for communication is a slice of ``flat.grad``, not a copy;
  * autograd accumulates into the views in place (graph._accumulate_leaf adds into an existing
    grad), so gradients land directly in the communication buffer; after ``zero_grad`` the
    views are marked zeroed (``Variable.mark_grad_zeroed``), so an op's backward may write a
    gradient straight into its view (``Function.grad_destination``; the contract is in
    ``mpinet.autograd.function``).
Below both mpinet.nn and mpinet.optim (it needs only Parameter and a cast kernel).
Parameters are laid out in the given order; data parallelism passes them in reverse so that the
last layers (whose gradients are ready first) come first in the buffer.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .autograd import Parameter
from .kernels.elementwise import cast_into


# Every parameter starts on a 256-byte boundary: cuDNN refuses misaligned operand pointers
# (CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER, seen on H100 with a conv weight placed after a
# 10-element bias) and vector loads want 16 bytes at least. The gaps hold zeros, get zero
# gradients, and every optimizer leaves a zero parameter with a zero gradient at zero.
ALIGN_BYTES = 256


def _aligned(count: int, itemsize: int) -> int:
    per = max(1, ALIGN_BYTES // itemsize)
    return -(-count // per) * per


class FlatParameters:
    def __init__(self, params: list[Parameter]):
        if not params:
            raise ValueError("FlatParameters: got no parameters")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"FlatParameters needs one dtype for all parameters, got "
                            f"{sorted(str(d) for d in dtypes)}; keep master weights fp32")
        self.params = list(params)
        xp = backend.xp_of(params[0].data)
        self.dtype = params[0].dtype
        self.offsets: list[int] = []  # start of each parameter in the flat buffers
        total = 0
        for p in self.params:
            self.offsets.append(total)
            total += _aligned(p.size, self.dtype.itemsize)
        self.size = total
        self.data = xp.zeros(total, self.dtype)  # zeros: the alignment gaps must stay zero
        self.grad = xp.zeros(total, self.dtype)
        self._cast_buffers: dict = {}  # dtype -> (flat buffer, {id(param): view}): cast_copies
        for p, start in zip(self.params, self.offsets, strict=True):
            view = self.data[start:start + p.size]
            view[...] = p.data.reshape(-1)
            p.data = view.reshape(p.shape)
            had_grad = p.grad is not None
            if had_grad:
                self.grad[start:start + p.size] = p.grad.reshape(-1)
            p.grad = self.grad[start:start + p.size].reshape(p.shape)
            if not had_grad:
                p.mark_grad_zeroed()

    def cast_copies(self, dtype) -> dict:
        """Every parameter cast to ``dtype`` in one pass: {id(parameter): its cast copy}.

        Mixed precision casts each layer's master weight when the layer runs (one launch per
        weight and step: ~50 for ResNet-50, each costing host time). This casts the whole flat
        buffer at once into a second flat buffer kept for the purpose; the copies are views into
        it, valid until the next call. The caller must call again whenever the parameters may
        have changed (``amp.autocast(params=...)`` does, at the start of every forward pass).
        """
        dtype = np.dtype(dtype)
        cached = self._cast_buffers.get(dtype)
        if cached is None:
            xp = backend.xp_of(self.data)
            buffer = xp.empty(self.size, dtype)
            views = {id(p): buffer[start:start + p.size].reshape(p.shape)
                     for p, start in zip(self.params, self.offsets, strict=True)}
            cached = self._cast_buffers[dtype] = (buffer, views)
        buffer, views = cached
        cast_into(buffer, self.data)
        return views

    def zero_grad(self) -> None:
        """Zero the gradient buffer in place (the per-parameter views stay valid). The next
        backward may then write each first gradient straight into its view (no add)."""
        self.grad.fill(0)
        for p in self.params:
            p.mark_grad_zeroed()

    def zero_grad_slice(self, start: int, stop: int, params) -> None:
        """Zero flat.grad[start:stop], which holds exactly the gradients of ``params``."""
        self.grad[start:stop] = 0
        for p in params:
            p.mark_grad_zeroed()

    def check_views(self) -> None:
        """Raise if code replaced a parameter's data or grad instead of writing into it."""
        for p in self.params:
            for what, arr, buf in (("data", p.data, self.data), ("grad", p.grad, self.grad)):
                base = arr.base if arr is not None else None
                ok = base is not None and (base is buf or getattr(base, "base", None) is buf)
                if not ok:
                    raise RuntimeError(f"parameter {p.name!r}: .{what} no longer views the flat "
                                       f"buffer; update it in place (p.{what}[...] = ...)")
