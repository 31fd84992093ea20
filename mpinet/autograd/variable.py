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
        from .graph import backward

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

    # ---- operators ----------------------------------------------------------------------
    # + - * / ** @, unary -, [], reshape, transpose, .T, sum and mean are attached to this
    # class by the ops that implement them (mpinet/ops/arith.py and shape.py, installed when
    # mpinet.ops is imported, which `import mpinet` does): autograd never imports ops.


class Parameter(Variable):
    """A learnable leaf: always requires grad; owned by a layer, updated by an optimizer."""

    def __init__(self, data, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)


def as_variable(x) -> Variable:
    """Wrap a raw array or scalar as a constant Variable (no grad); pass Variables through."""
    if isinstance(x, Variable):
        return x
    return Variable(x)
