"""The backward walk: reverse topological order over the recorded graph, with grad-ready hooks."""
from __future__ import annotations

import heapq

from .function import Function
from .variable import Variable


def _reachable_functions(root: Variable) -> list[Function]:
    seen: set[int] = set()
    order: list[Function] = []
    stack = [root.creator] if root.creator is not None else []
    while stack:
        func = stack.pop()
        if id(func) in seen:
            continue
        seen.add(id(func))
        if func.inputs is None:
            raise RuntimeError(
                f"backward through {func.name} a second time: its graph was freed by the first "
                f"backward; call backward(retain_graph=True) the first time if you need two passes")
        order.append(func)
        stack.extend(v.creator for v in func.inputs if v.creator is not None)
    return order


def _accumulate_leaf(leaf: Variable, grad) -> None:
    # Identity, by contract: a backward that wrote into grad_destination returns that very
    # array; any other array is added, so an op that wrote AND returned a copy would double it.
    if grad is leaf.grad:  # the op wrote it in place (Function.grad_destination)
        leaf._grad_zeroed = None
        return
    leaf._grad_zeroed = None
    if leaf.grad is None:
        # Copy: a backward may hand the same array to several inputs (e.g. add), and the leaf's
        # grad must be its own so later in-place updates (accumulation, scaling) stay local.
        leaf.grad = grad.copy()
    else:
        leaf.grad += grad  # in place: a grad may be a view into a flat communication buffer


def backward(root: Variable, grad=None, retain_graph: bool = False) -> None:
    """Backpropagate from ``root`` into every leaf that requires grad.

    Each leaf's hooks fire as soon as its last use has delivered its gradient, in reverse
    topological order, while the walk continues: that is what lets data parallelism start a
    bucket's allreduce before backprop is over.
    """
    if not root.requires_grad:
        raise RuntimeError(f"backward from {root!r}, which does not require grad: no input of "
                           f"the computation requires grad (or it ran under no_grad())")
    xp = root.xp
    if grad is None:
        if root.size != 1:
            raise RuntimeError(f"backward from a non-scalar output of shape {root.shape} needs an "
                               f"explicit grad of that shape (or reduce it, e.g. loss.mean())")
        grad = xp.ones_like(root.data)
    elif tuple(grad.shape) != tuple(root.shape):
        raise ValueError(f"backward grad has shape {tuple(grad.shape)}, output has {root.shape}")

    if root.creator is None:  # a leaf is its own gradient's only source
        _accumulate_leaf(root, grad)
        _fire(root)
        return

    functions = _reachable_functions(root)
    # pending[id(leaf)]: uses of that leaf whose gradient has not arrived yet.
    pending: dict[int, int] = {}
    for func in functions:
        for v in func.inputs:
            if v.creator is None and v.requires_grad:
                pending[id(v)] = pending.get(id(v), 0) + 1

    # Gradients of non-leaf variables: id -> (variable, grad). Holding the variable keeps it
    # alive (and its id unique) after its consumer's release() dropped the last other reference.
    grads: dict[int, tuple] = {id(root): (root, grad)}
    # Max-heap on creation order (Function.sequence): the newest recorded node first.
    heap = [(-root.creator.sequence, 0, root.creator)]
    queued = {id(root.creator)}
    counter = 1
    while heap:
        _, _, func = heapq.heappop(heap)
        outputs = [ref() for ref in func.outputs]
        gys = [grads.pop(id(out), (None, None))[1] if out is not None else None
               for out in outputs]
        if any(g is not None for g in gys):
            gys = [g if g is not None else out_zeros(out, func, i) for i, (g, out) in
                   enumerate(zip(gys, outputs, strict=True))]
            gxs = func.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if len(gxs) != len(func.inputs):
                raise RuntimeError(f"{func.name}.backward returned {len(gxs)} gradients for "
                                   f"{len(func.inputs)} inputs")
        else:  # nothing flows through this node; still count its uses of leaves
            gxs = (None,) * len(func.inputs)

        for x, gx in zip(func.inputs, gxs, strict=True):
            if not x.requires_grad:
                continue
            if gx is not None and tuple(gx.shape) != tuple(x.shape):
                raise RuntimeError(f"{func.name}.backward gave a gradient of shape "
                                   f"{tuple(gx.shape)} for an input of shape {x.shape}")
            if x.creator is None:
                if gx is not None:
                    _accumulate_leaf(x, gx)
                pending[id(x)] -= 1
                if pending[id(x)] == 0:
                    _fire(x)
            else:
                if gx is not None:
                    previous = grads.get(id(x))
                    grads[id(x)] = (x, gx if previous is None else previous[1] + gx)
                if id(x.creator) not in queued:
                    queued.add(id(x.creator))
                    heapq.heappush(heap, (-x.creator.sequence, counter, x.creator))
                    counter += 1
        if not retain_graph:
            func.release()


def out_zeros(out, func: Function, index: int):
    """Zero gradient for an output that received none (multi-output functions)."""
    shape, dtype = func.output_meta[index]
    return func.inputs[0].xp.zeros(shape, dtype)


def _fire(leaf: Variable) -> None:
    for hook in list(leaf._grad_ready_hooks):
        hook(leaf)
