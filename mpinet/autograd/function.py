"""Function: one differentiable op, forward and backward written once with ``xp``.

Subclass and implement::

    class Square(Function):
        def forward(self, x):            # raw arrays in, raw array(s) out
            self.save(x)                 # keep only what backward needs
            return x * x
        def backward(self, gy):          # one gradient per output, one result per input
            (x,) = self.saved
            return 2 * x * gy,

    y = Square().apply(x)                # Variables (or arrays) in, Variable(s) out

``backward`` returns a tuple with one entry per input: an array, or None where that input needs
no gradient (``self.needs_input_grad[i]`` says which inputs do, so work can be skipped).
Options (stride, axis, ...) go to ``__init__``; a Function instance is used for one call.

Writing a gradient in place (optional; the contract every op that does it keeps):
  * ``self.grad_destination(i)`` in backward returns input i's own ``.grad`` array when that
    input is a leaf whose gradient buffer its owner has just zeroed (``Variable.mark_grad_zeroed``:
    e.g. a parameter's view into a FlatParameters gradient buffer), else None.
  * A backward may write input i's whole gradient into that array (``out=`` of a matmul or a
    sum, a cuDNN weight-gradient, a cast) and must then return THAT VERY ARRAY (the same object,
    not a reshaped view of it or a copy) as input i's gradient. Autograd recognises it by
    identity and skips its add. Anything else it returns is added into ``.grad``: had the
    backward also written the destination, the gradient would count twice.
  * It must not write the destination partially, or write it and return None.
  * Returning a fresh array instead is always correct (autograd then adds it).
"""
from __future__ import annotations

import itertools
import weakref

from . import mode
from .variable import Variable, as_variable


# Creation order of recorded nodes. Every consumer of a node's output is recorded after that
# node, so visiting nodes from the newest down is a valid reverse topological order: the one
# PyTorch's autograd uses. Unlike ordering by depth, it runs the cast of a master weight (a
# shallow node, recorded right before its layer) right after that layer's backward, so the
# weight's gradient is final and its allreduce can start while backprop goes on.
_sequence = itertools.count()


class Function:
    inputs: tuple[Variable, ...] | None = None
    needs_input_grad: tuple[bool, ...] = ()
    saved: tuple = ()
    sequence: int = 0

    def forward(self, *xs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *gys):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def save(self, *arrays) -> None:
        """Keep arrays for backward (freed after backward unless the graph is retained)."""
        self.saved = arrays

    @property
    def name(self) -> str:
        return type(self).__name__

    def apply(self, *inputs):
        """Run forward on the inputs' data and, if any input requires grad, record the node."""
        variables = tuple(as_variable(x) for x in inputs)
        record = mode.is_grad_enabled() and any(v.requires_grad for v in variables)
        self.needs_input_grad = tuple(record and v.requires_grad for v in variables)
        ys = self.forward(*(v.data for v in variables))
        single = not isinstance(ys, tuple)
        outputs = tuple(Variable(y, requires_grad=record) for y in ((ys,) if single else ys))
        if record:
            self.inputs = variables
            self.sequence = next(_sequence)
            for out in outputs:
                out.creator = self
            # Weak references: the graph must not keep outputs (activations) alive by itself;
            # an output nobody uses again simply contributes no gradient.
            self.outputs = tuple(weakref.ref(out) for out in outputs)
            self.output_meta = tuple((out.shape, out.dtype) for out in outputs)
        else:
            self.saved = ()
        return outputs[0] if single else outputs

    def grad_destination(self, index: int):
        """Where backward may write input ``index``'s gradient directly, or None.

        That is the input's own ``.grad`` when the input is a leaf whose gradient buffer was
        just zeroed (``mark_grad_zeroed``), e.g. a parameter's view into the flat gradient
        buffer, and the input appears once among this Function's inputs. A backward that
        writes the whole gradient there must return that very array (identity, not an equal
        view): autograd then skips the add it would otherwise launch, and would add any other
        array on top of what was written. The caller must still check that shape, dtype and
        layout suit it (``mpinet.ops._util.writable_out``); returning a different array
        without writing the destination is always correct.
        """
        v = self.inputs[index]
        grad = v.grad
        if grad is None or v._grad_zeroed is not grad or v.creator is not None:
            return None
        if sum(u is v for u in self.inputs) != 1:  # two outputs into one buffer: accumulate
            return None
        return grad

    def release(self) -> None:
        """Drop inputs and saved arrays once backward has run (frees activation memory)."""
        self.inputs = None
        self.saved = ()
