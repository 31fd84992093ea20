"""Variable and Parameter: an array plus what autograd needs to walk back through it."""
from __future__ import annotations

from typing import Callable

from .. import backend


class Variable:
    """A node of the define-by-run graph.

    ``data`` is a NumPy or CuPy array. ``grad`` is a plain array of the same shape (autograd here
    is first-order: gradients are not themselves differentiated). ``creator`` is the Function that
    produced this variable, None for leaves (inputs and parameters).
    """

    __array_priority__ = 200  # make `ndarray + Variable` call Variable.__radd__

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Variable):
            raise TypeError("Variable(data) got a Variable; use it directly or pass its .data")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self.name = name
        self.creator = None  # the Function that produced this variable
        self._grad_ready_hooks: list[Callable[["Variable"], None]] = []
        # The .grad array while it is known to hold zeros (set by mark_grad_zeroed, e.g. from
        # FlatParameters.zero_grad; cleared by the first accumulation in a backward). While it is
        # the current .grad, a backward may write this leaf's gradient straight into it
        # (Function.grad_destination) instead of autograd adding a fresh array into it.
        self._grad_zeroed = None

    # ---- array-like surface -------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def xp(self):
        return backend.xp_of(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        label = f" name={self.name!r}" if self.name else ""
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}{label})"

    def numpy(self):
        """A host NumPy array (a CPU-GPU sync point on GPU)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return self.numpy().item()

    def detach(self) -> "Variable":
        """The same data, cut from the graph."""
        return Variable(self.data)

    # ---- autograd -----------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` that requires grad."""
        from .graph import backward  # noqa: PLC0415 - graph imports Variable

        backward(self, grad, retain_graph=retain_graph)

    def register_grad_ready_hook(self, hook: Callable[["Variable"], None]) -> Callable[[], None]:
        """Call ``hook(self)`` in each backward pass the moment this leaf's gradient is final.

        "Final" means every use of this leaf in the graph has sent its gradient, so ``self.grad``
        will not change again in this pass. Data parallelism starts the allreduce from here while
        backprop continues. Returns a function that removes the hook.
        """
        self._grad_ready_hooks.append(hook)
        return lambda: self._grad_ready_hooks.remove(hook)

    def zero_grad(self) -> None:
        self.grad = None

    def mark_grad_zeroed(self) -> None:
        """Declare that ``.grad`` now holds zeros (its owner just zeroed it in place), so the next
        backward may overwrite it instead of adding into it (see Function.grad_destination).

        Part of the write-in-place contract: call it only right after zeroing this very
        ``.grad`` array in place; the mark holds for that array until the next backward
        accumulates into it (rebinding ``.grad`` to another array voids it)."""
        self._grad_zeroed = self.grad

    # ---- operators (implemented in mpinet.ops; imported lazily to keep layering) -----------
    def __add__(self, other):
        from ..ops import arith
        return arith.add(self, other)

    def __radd__(self, other):
        from ..ops import arith
        return arith.add(other, self)

    def __sub__(self, other):
        from ..ops import arith
        return arith.sub(self, other)

    def __rsub__(self, other):
        from ..ops import arith
        return arith.sub(other, self)

    def __mul__(self, other):
        from ..ops import arith
        return arith.mul(self, other)

    def __rmul__(self, other):
        from ..ops import arith
        return arith.mul(other, self)

    def __truediv__(self, other):
        from ..ops import arith
        return arith.div(self, other)

    def __rtruediv__(self, other):
        from ..ops import arith
        return arith.div(other, self)

    def __neg__(self):
        from ..ops import arith
        return arith.neg(self)

    def __pow__(self, exponent):
        from ..ops import arith
        return arith.pow(self, exponent)

    def __matmul__(self, other):
        from ..ops import arith
        return arith.matmul(self, other)

    def __rmatmul__(self, other):
        from ..ops import arith
        return arith.matmul(other, self)

    def __getitem__(self, index):
        from ..ops import shape
        return shape.getitem(self, index)

    def reshape(self, *shape_):
        from ..ops import shape
        return shape.reshape(self, shape_[0] if len(shape_) == 1 and isinstance(shape_[0], (tuple, list)) else shape_)

    def transpose(self, *axes):
        from ..ops import shape
        return shape.transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))

    @property
    def T(self):
        return self.transpose()

    def sum(self, axis=None, keepdims: bool = False):
        from ..ops import arith
        return arith.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False):
        from ..ops import arith
        return arith.mean(self, axis=axis, keepdims=keepdims)


class Parameter(Variable):
    """A learnable leaf: always requires grad; owned by a layer, updated by an optimizer."""

    def __init__(self, data, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)


def as_variable(x) -> Variable:
    """Wrap a raw array or scalar as a constant Variable (no grad); pass Variables through."""
    if isinstance(x, Variable):
        return x
    return Variable(x)
